//! Checks a user's manifest on the host before anything boots: the syntax
//! with the hypervisor's own parser (`microvisor-core::manifest`, so the
//! messages and line numbers are the ones the hypervisor would print), then
//! which file each `image =` (and `ramdisk =`) means.
//!
//! An image is found in one of two places:
//! - a plain name (no `/`): a built guest (`target/kernel/.../release/NAME`)
//!   or a file of that name beside the manifest. When both exist the
//!   manifest is ambiguous and refused, naming both files (a built guest
//!   used to win silently);
//! - a name with a `/` (`./my-guest`, `../target/.../my-guest`): a path
//!   relative to the manifest's directory (or absolute), never a built guest.
//!
//! - `debian:vmlinux` and `debian:initramfs`: Debian's cloud kernel and the
//!   busybox initramfs xtask makes around Debian's static busybox, fetched
//!   with apt on first use (`linux.rs`, as scenarios' `[files]` specs of the
//!   same names); [`debian`] resolves them before anything is built.
//!
//! The bundle entry keeps the name as the manifest writes it; the hypervisor
//! ignores one leading `./`, so two images that differ only by it are
//! refused unless they are the same file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Parses `text` as the hypervisor will; `label` names the manifest in the
/// error (its path, or what made it).
pub fn syntax(text: &str, label: &str) -> Result<(), String> {
    microvisor_core::manifest::parse(text)
        .map(|_| ())
        .map_err(|e| format!("error: {label}: {e}"))
}

/// Whether `name` is a guest this repository builds (a file in `kdir`
/// named without `/` or `.`; the hypervisor itself is none).
fn built_in(kdir: &Path, name: &str) -> Option<PathBuf> {
    let p = kdir.join(name);
    (!name.contains(['/', '.']) && name != "microvisor" && p.is_file()).then_some(p)
}

/// The bundle spec of a user's file: `file:` and its absolute path. A
/// relative `file:` spec means a path below the repository's root (test
/// data), so a path relative to where the user is (`--manifest
/// my.manifest` in the guest's own crate, through its `./xtask`) must not
/// stay relative: it would be looked for in the SDK's clone.
fn file_spec(p: &Path) -> String {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    format!("file:{}", abs.display())
}

/// Each `image =` and `ramdisk =` value of a syntactically valid manifest
/// with its 1-based line number and key, in file order.
fn image_lines(text: &str) -> Vec<(usize, &'static str, String)> {
    text.split('\n')
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.split('#').next().unwrap_or("").trim();
            let (k, v) = l.split_once('=')?;
            let key = ["image", "ramdisk"].into_iter().find(|x| *x == k.trim())?;
            Some((i + 1, key, v.trim().to_string()))
        })
        .collect()
}

/// Fetches (on first use) the file each `debian:WHAT` image or ramdisk of
/// `text` names and adds it to `extra` (bundle name -> `file:PATH`), so
/// [`images`] takes it as given. Run before anything is built or booted:
/// where apt cannot get a package the error is one line naming the fix.
pub fn debian(text: &str, label: &str, extra: &mut BTreeMap<String, String>) -> Result<(), String> {
    for (line, what, img) in image_lines(text) {
        let Some(spec) = img.strip_prefix("debian:") else {
            continue;
        };
        let at = format!("error: {label} line {line}: {what} = {img}");
        crate::linux::check_spec(spec).map_err(|e| format!("{at}: {e}"))?;
        if extra.contains_key(&img) {
            continue;
        }
        let file = crate::linux::fetch_spec(spec).map_err(|e| {
            if e.contains("apt-get update") {
                format!("{at}: {e}")
            } else {
                format!(
                    "{at}: {e} (xtask fetches it with apt-get on Debian 12; elsewhere give a file: {what} = ./FILE)"
                )
            }
        })?;
        extra.insert(img.clone(), file_spec(&file));
    }
    Ok(())
}

/// Decides which file each image of `text` is, adding the ones that are not
/// built guests to `extra` (bundle name -> `file:PATH`). Entries already in
/// `extra` were given explicitly and are left as they are. `base` is the
/// manifest's directory (None: only built guests and absolute paths).
pub fn images(
    text: &str,
    label: &str,
    base: Option<&Path>,
    kdir: &Path,
    extra: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    // Bundle name without a leading "./" -> (as written, the file).
    let mut chosen: BTreeMap<String, (String, PathBuf)> = BTreeMap::new();
    for (line, what, img) in image_lines(text) {
        let file = if let Some(spec) = extra.get(&img) {
            PathBuf::from(spec.strip_prefix("file:").unwrap_or(spec))
        } else if img.contains('/') {
            let rel = img.strip_prefix("./").unwrap_or(&img);
            let p = match base {
                Some(b) => b.join(rel),
                None => PathBuf::from(rel),
            };
            if !p.is_file() {
                return Err(format!(
                    "error: {label} line {line}: {what} '{img}' is a path, and there is no file {}",
                    p.display()
                ));
            }
            extra.insert(img.clone(), file_spec(&p));
            p
        } else {
            let beside = base.map(|b| b.join(&img)).filter(|p| p.is_file());
            match (built_in(kdir, &img), beside) {
                (Some(b), Some(f)) => {
                    return Err(format!(
                        "error: {label} line {line}: {what} '{img}' is both the built guest {} and the file {}: rename the file, or write {what} = ./{img} to mean the file",
                        b.display(),
                        f.display()
                    ));
                }
                (Some(b), None) => b,
                (None, Some(f)) => {
                    extra.insert(img.clone(), file_spec(&f));
                    f
                }
                (None, None) => {
                    return Err(match base {
                        Some(b) => format!(
                            "error: {label} line {line}: {what} '{img}' is neither a built guest (a file in {}) nor a file {}",
                            kdir.display(),
                            b.join(&img).display()
                        ),
                        // No manifest file (`boot NAME`): no line to name.
                        None => format!(
                            "error: {label}: '{img}' is neither a file here nor a guest the SDK builds (those are the files in {}, e.g. hello, bare, threads); give your kernel's path, e.g. target/x86_64-unknown-none/debug/NAME",
                            kdir.display()
                        ),
                    });
                }
            }
        };
        let key = img.strip_prefix("./").unwrap_or(&img).to_string();
        if let Some((other, other_file)) = chosen.get(&key)
            && *other_file != file
        {
            return Err(format!(
                "error: {label} line {line}: {what} '{img}' and '{other}' name the same bundle file but different files ({} and {})",
                file.display(),
                other_file.display()
            ));
        }
        chosen.insert(key, (img, file));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory with a fake built-guest dir and a manifest dir.
    fn dirs(test: &str) -> (PathBuf, PathBuf) {
        let d = std::env::temp_dir().join(format!(
            "xtask-manifest-check-{}-{test}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        let (k, m) = (d.join("kernel"), d.join("m"));
        std::fs::create_dir_all(&k).unwrap();
        std::fs::create_dir_all(m.join("sub")).unwrap();
        for built in ["hello", "microvisor", "hello.d"] {
            std::fs::write(k.join(built), b"elf").unwrap();
        }
        (k, m)
    }

    fn check(text: &str, m: &Path, k: &Path) -> Result<BTreeMap<String, String>, String> {
        syntax(text, "my.manifest")?;
        let mut extra = BTreeMap::new();
        images(text, "my.manifest", Some(m), k, &mut extra).map(|()| extra)
    }

    #[test]
    fn syntax_errors_carry_the_hypervisors_message_and_line() {
        assert_eq!(
            syntax("[domain a]\nimage = hello\ncolour = blue\n", "x.manifest"),
            Err("error: x.manifest: manifest line 3: unknown key 'colour'".into())
        );
        assert_eq!(
            syntax(
                "[domain a]\nimage = hello\nmemory = 16M\nservice = true\n",
                "x.manifest"
            ),
            Err("error: x.manifest: manifest line 1: service = true needs privileged = true as well, in domain 'a'".into())
        );
        assert_eq!(
            syntax("[domain a]\nimage = hello\nmemory = 16M\n", "x"),
            Ok(())
        );
    }

    #[test]
    fn debian_images_are_named_by_their_line_and_given_ones_kept() {
        let mut extra = BTreeMap::new();
        let e = debian(
            "[domain a]\nimage = hello\nmemory = 16M\nramdisk = debian:kernel\n",
            "l.manifest",
            &mut extra,
        )
        .unwrap_err();
        assert!(
            e.starts_with(
                "error: l.manifest line 4: ramdisk = debian:kernel: debian:kernel names nothing"
            ),
            "{e}"
        );
        // Given already (a scenario's [files]): not fetched again.
        extra.insert("debian:vmlinux".into(), "file:/k".into());
        assert_eq!(
            debian(
                "[domain a]\nimage = debian:vmlinux\nmemory = 16M\n",
                "l",
                &mut extra
            ),
            Ok(())
        );
        assert_eq!(extra.len(), 1);
        assert_eq!(extra["debian:vmlinux"], "file:/k");
    }

    #[test]
    fn built_guests_files_and_paths() {
        let (k, m) = dirs("resolve");
        std::fs::write(m.join("mine"), b"elf").unwrap();
        std::fs::write(m.join("sub/deep"), b"elf").unwrap();
        let extra = check(
            "[domain a]\nimage = hello\nmemory = 16M\n[domain b]\nimage = mine # a file\nmemory = 16M\n[domain c]\nimage = sub/deep\nmemory = 16M\n",
            &m,
            &k,
        )
        .unwrap();
        // The built guest is packed by make_bundle; the others are files.
        assert_eq!(extra.len(), 2);
        assert_eq!(extra["mine"], format!("file:{}", m.join("mine").display()));
        assert_eq!(
            extra["sub/deep"],
            format!("file:{}", m.join("sub/deep").display())
        );
    }

    #[test]
    fn a_file_shadowing_a_built_guest_is_an_error_naming_both() {
        let (k, m) = dirs("shadow");
        std::fs::write(m.join("hello"), b"mine").unwrap();
        let e = check("[domain a]\nmemory = 16M\nimage = hello\n", &m, &k).unwrap_err();
        assert!(
            e.starts_with("error: my.manifest line 3: image 'hello' is both the built guest "),
            "{e}"
        );
        assert!(e.contains(&k.join("hello").display().to_string()), "{e}");
        assert!(e.contains(&m.join("hello").display().to_string()), "{e}");
        // `./hello` means the file.
        let extra = check("[domain a]\nmemory = 16M\nimage = ./hello\n", &m, &k).unwrap();
        assert_eq!(
            extra["./hello"],
            format!("file:{}", m.join("hello").display())
        );
        // But not beside the built `hello` in one bundle.
        let e = check(
            "[domain a]\nmemory = 16M\nimage = ./hello\n[domain b]\nmemory = 16M\nimage = hello\n",
            &m,
            &k,
        );
        assert!(e.is_err());
    }

    #[test]
    fn missing_images_say_where_they_were_looked_for() {
        let (k, m) = dirs("missing");
        let e = check("[domain a]\nimage = nope\nmemory = 16M\n", &m, &k).unwrap_err();
        assert!(
            e.starts_with("error: my.manifest line 2: image 'nope' is neither a built guest"),
            "{e}"
        );
        assert!(e.contains(&m.join("nope").display().to_string()), "{e}");
        // Build by-products and the hypervisor are no guests.
        assert!(check("[domain a]\nimage = microvisor\nmemory = 16M\n", &m, &k).is_err());
        assert!(check("[domain a]\nimage = hello.d\nmemory = 16M\n", &m, &k).is_err());
        let e = check("[domain a]\nimage = ./gone\nmemory = 16M\n", &m, &k).unwrap_err();
        assert!(e.contains("is a path, and there is no file"), "{e}");
    }

    /// `boot NAME` has no manifest of the user's: its error names no line
    /// (it named "line 2" of the generated one) and says what to give.
    #[test]
    fn a_missing_boot_image_names_no_manifest_line() {
        let (k, _) = dirs("boot-missing");
        let e = images(
            "[domain nosuch]\nimage = nosuch\nmemory = 32M\n",
            "boot nosuch",
            None,
            &k,
            &mut BTreeMap::new(),
        )
        .unwrap_err();
        assert!(
            e.starts_with(
                "error: boot nosuch: 'nosuch' is neither a file here nor a guest the SDK builds"
            ),
            "{e}"
        );
        assert!(!e.contains("line"), "{e}");
        assert!(e.contains("target/x86_64-unknown-none/debug/NAME"), "{e}");
    }

    /// A manifest named by a relative path (`./xtask run --manifest
    /// my.manifest` in a guest's crate) has a relative directory; its
    /// files must reach the bundle as absolute paths, since `file:` specs
    /// are otherwise read below the SDK's root (they were, and the run
    /// failed with "cannot read <SDK>/target/...").
    #[test]
    fn files_beside_a_relative_manifest_are_packed_by_absolute_path() {
        let (k, _) = dirs("relative");
        // Tests run in the xtask crate's directory: `src/` is relative to it.
        // A manifest in the current directory: its directory is "".
        let extra = check(
            "[domain a]\nimage = src/main.rs\nmemory = 16M\n",
            Path::new(""),
            &k,
        )
        .unwrap();
        let want = std::env::current_dir().unwrap().join("src/main.rs");
        assert_eq!(extra["src/main.rs"], format!("file:{}", want.display()));
        let extra = check(
            "[domain a]\nimage = main.rs\nmemory = 16M\n",
            Path::new("src"),
            &k,
        )
        .unwrap();
        assert_eq!(extra["main.rs"], format!("file:{}", want.display()));
    }

    #[test]
    fn explicit_images_are_kept() {
        let (k, m) = dirs("explicit");
        std::fs::write(m.join("hello"), b"mine").unwrap();
        let mut extra = BTreeMap::from([("hello".to_string(), "file:/x/hello".to_string())]);
        images(
            "[domain a]\nimage = hello\nmemory = 16M\n",
            "boot",
            Some(&m),
            &k,
            &mut extra,
        )
        .unwrap();
        assert_eq!(extra["hello"], "file:/x/hello");
    }
}

#[cfg(test)]
mod shipped {
    /// Every manifest the repository ships parses as the hypervisor parses
    /// it, and names only guests the workspace builds.
    #[test]
    fn example_manifests_are_valid() {
        let root = crate::root();
        let mut found = 0;
        let mut files = vec![root.join("examples/default.manifest")];
        for e in std::fs::read_dir(root.join("examples")).unwrap() {
            let dir = e.unwrap().path();
            if let Ok(rd) = std::fs::read_dir(&dir) {
                files.extend(
                    rd.filter_map(|f| f.ok().map(|f| f.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "manifest")),
                );
            }
        }
        let built: Vec<&str> = crate::build::KERNEL_PACKAGES.to_vec();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            super::syntax(&text, &f.display().to_string()).unwrap();
            for (_, _, img) in super::image_lines(&text) {
                // A package's own binary, the scenario guests' or an
                // example's extra binary (examples/counter's counter-client).
                let known = built.contains(&img.as_str())
                    || root
                        .join("tests/guests/src/bin")
                        .join(format!("{img}.rs"))
                        .is_file()
                    || built.iter().any(|p| {
                        root.join("examples")
                            .join(p)
                            .join("src/bin")
                            .join(format!("{img}.rs"))
                            .is_file()
                    });
                assert!(known, "{}: image {img} is not built here", f.display());
            }
            found += 1;
        }
        assert!(found >= 4, "only {found} manifests found");
    }
}
