//! Store paths: validation, resolution of relative paths and tree arithmetic.
//!
//! A canonical path is absolute (`/`-separated, starting with `/`), or a
//! special event name starting with `@` (`@introduceDomain`,
//! `@releaseDomain`). Xen allows only ASCII letters, digits and `-/_@` in a
//! path, forbids empty paths, doubled slashes and a trailing slash (except
//! for the root itself), and bounds the length. A path without a leading `/`
//! or `@` is relative to the caller's home, `/local/domain/<domid>`. Every
//! byte handed to [`canonicalize`] is untrusted: it reports `EINVAL` and never
//! panics.

use alloc::format;
use alloc::string::String;

use guest_abi::Errno;
use guest_abi::io::xenstore::{XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX};

/// The parent of every domain's home directory.
pub const DOMAIN_ROOT: &str = "/local/domain";

/// The special node whose watches fire when a domain is introduced.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";

/// The special node whose watches fire when a domain is released.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// The home directory of `domid`: `/local/domain/<domid>`.
#[must_use]
pub fn home_path(domid: u16) -> String {
    format!("{DOMAIN_ROOT}/{domid}")
}

/// A validated path, resolved to its absolute (or special) form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canonical {
    /// The absolute or special path.
    pub path: String,
    /// For a path that was given relative to the caller's home, the number of
    /// leading bytes (`/local/domain/<domid>/`) to strip to turn the absolute
    /// path back into the caller's relative spelling; 0 otherwise.
    pub relative_prefix: usize,
}

/// Whether every byte is one Xen permits in a path.
fn valid_chars(raw: &[u8]) -> bool {
    raw.iter()
        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'/' | b'_' | b'@'))
}

/// Length of a leading `/local/domain/<1-5 digits>/` in `path`, or 0.
fn domain_prefix_len(path: &str) -> usize {
    let Some(rest) = path.strip_prefix("/local/domain/") else {
        return 0;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if (1..=5).contains(&digits) && rest.as_bytes().get(digits) == Some(&b'/') {
        "/local/domain/".len() + digits + 1
    } else {
        0
    }
}

/// Validate `raw` as sent by domain `domid` and resolve it.
///
/// `allow_special` admits `@`-names (watches and permissions only).
/// `max_len`, when given, bounds the length of the path past any
/// `/local/domain/<id>/` prefix (Xen applies this quota to unprivileged
/// callers). Every failure is `EINVAL`.
pub fn canonicalize(
    raw: &[u8],
    domid: u16,
    allow_special: bool,
    max_len: Option<usize>,
) -> Result<Canonical, Errno> {
    if raw.is_empty() || !valid_chars(raw) {
        return Err(Errno::EINVAL);
    }
    // `valid_chars` admitted ASCII only, so this cannot fail.
    let text = core::str::from_utf8(raw).map_err(|_| Errno::EINVAL)?;
    let (path, relative_prefix) = match raw[0] {
        b'@' if !allow_special => return Err(Errno::EINVAL),
        b'/' | b'@' => (String::from(text), 0),
        _ => {
            if raw.len() > XENSTORE_REL_PATH_MAX {
                return Err(Errno::EINVAL);
            }
            let home = home_path(domid);
            let prefix = home.len() + 1;
            (format!("{home}/{text}"), prefix)
        }
    };
    if (path.len() > 1 && path.ends_with('/')) || path.contains("//") {
        return Err(Errno::EINVAL);
    }
    if path.len() > XENSTORE_ABS_PATH_MAX {
        return Err(Errno::EINVAL);
    }
    if let Some(max) = max_len
        && path.len() - domain_prefix_len(&path) > max
    {
        return Err(Errno::EINVAL);
    }
    Ok(Canonical {
        path,
        relative_prefix,
    })
}

/// Whether `path` names a special (`@`) node.
#[must_use]
pub fn is_special(path: &str) -> bool {
    path.starts_with('@')
}

/// The parent of a canonical path: `None` for the root; the root for a
/// top-level node and for special names (whose permissions Xen checks against
/// the root's when deciding which error to report).
#[must_use]
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    if is_special(path) {
        return Some("/");
    }
    match path.rfind('/') {
        Some(0) | None => Some("/"),
        Some(i) => Some(&path[..i]),
    }
}

/// The last component of a canonical, non-root path.
#[must_use]
pub fn basename(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// The path of child `name` of `parent`.
#[must_use]
pub fn child(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Whether `path` is `ancestor` or lies beneath it (every path lies beneath
/// the root, special names included, as in xenstored).
#[must_use]
pub fn is_child(path: &str, ancestor: &str) -> bool {
    if ancestor == "/" {
        return true;
    }
    match path.strip_prefix(ancestor) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Parse a domain id written in decimal (`0..=65535`, at most 5 digits).
pub fn parse_domid(raw: &[u8]) -> Result<u16, Errno> {
    parse_decimal(raw, 5)
        .and_then(|v| u16::try_from(v).ok())
        .ok_or(Errno::EINVAL)
}

/// Parse at most `max_digits` decimal digits (no sign, no blanks).
pub(crate) fn parse_decimal(raw: &[u8], max_digits: usize) -> Option<u64> {
    if raw.is_empty() || raw.len() > max_digits || raw.len() > 19 {
        return None;
    }
    raw.iter().try_fold(0u64, |acc, &c| {
        let d = c.checked_sub(b'0').filter(|d| *d <= 9)?;
        acc.checked_mul(10)?.checked_add(u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str, domid: u16) -> Result<String, Errno> {
        canonicalize(raw.as_bytes(), domid, false, Some(XENSTORE_REL_PATH_MAX)).map(|c| c.path)
    }

    #[test]
    fn absolute_paths_pass_through() {
        assert_eq!(canon("/", 1).unwrap(), "/");
        assert_eq!(canon("/a/b-c/d_e/f@g/09", 1).unwrap(), "/a/b-c/d_e/f@g/09");
    }

    #[test]
    fn relative_paths_resolve_against_home() {
        let c = canonicalize(b"device/vif/0", 7, false, None).unwrap();
        assert_eq!(c.path, "/local/domain/7/device/vif/0");
        assert_eq!(&c.path[c.relative_prefix..], "device/vif/0");
    }

    #[test]
    fn malformed_paths_are_einval() {
        for bad in [
            "", "/a/", "//", "/a//b", "a/", "/a b", "/a.b", "/\u{e9}", "/a\n",
        ] {
            assert_eq!(canon(bad, 1), Err(Errno::EINVAL), "{bad:?}");
        }
        assert_eq!(canonicalize(b"/a\0b", 1, false, None), Err(Errno::EINVAL));
    }

    #[test]
    fn special_names_need_permission_to_appear() {
        assert_eq!(canon("@releaseDomain", 1), Err(Errno::EINVAL));
        let c = canonicalize(b"@releaseDomain", 1, true, None).unwrap();
        assert_eq!(c.path, RELEASE_DOMAIN);
        assert_eq!(c.relative_prefix, 0);
    }

    #[test]
    fn length_limits() {
        let long_abs = format!("/{}", "a".repeat(XENSTORE_ABS_PATH_MAX));
        assert_eq!(
            canonicalize(long_abs.as_bytes(), 0, false, None),
            Err(Errno::EINVAL)
        );
        let ok_abs = format!("/{}", "a".repeat(XENSTORE_ABS_PATH_MAX - 1));
        assert!(canonicalize(ok_abs.as_bytes(), 0, false, None).is_ok());
        // The quota counts only what follows /local/domain/<id>/.
        let home_rel = format!("/local/domain/3/{}", "b".repeat(XENSTORE_REL_PATH_MAX));
        assert!(canon(&home_rel, 3).is_ok());
        let home_rel = format!("/local/domain/3/{}", "b".repeat(XENSTORE_REL_PATH_MAX + 1));
        assert_eq!(canon(&home_rel, 3), Err(Errno::EINVAL));
        let rel = "c".repeat(XENSTORE_REL_PATH_MAX + 1);
        assert_eq!(
            canonicalize(rel.as_bytes(), 3, false, None),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn tree_arithmetic() {
        assert_eq!(parent("/"), None);
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/a/b/c"), Some("/a/b"));
        assert_eq!(parent("@x"), Some("/"));
        assert_eq!(basename("/a/b/c"), "c");
        assert_eq!(child("/", "a"), "/a");
        assert_eq!(child("/a", "b"), "/a/b");
        assert!(is_child("/a/b", "/a"));
        assert!(is_child("/a", "/a"));
        assert!(!is_child("/ab", "/a"));
        assert!(is_child("/anything", "/"));
        assert!(is_child(RELEASE_DOMAIN, RELEASE_DOMAIN));
        assert!(!is_child(RELEASE_DOMAIN, INTRODUCE_DOMAIN));
    }

    #[test]
    fn domids() {
        assert_eq!(parse_domid(b"0"), Ok(0));
        assert_eq!(parse_domid(b"65535"), Ok(65535));
        for bad in [&b""[..], b"65536", b"-1", b"1x", b"000001", b" 1"] {
            assert_eq!(parse_domid(bad), Err(Errno::EINVAL), "{bad:?}");
        }
        assert_eq!(home_path(12), "/local/domain/12");
        assert_eq!(
            domain_prefix_len("/local/domain/12/x"),
            "/local/domain/12/".len()
        );
        assert_eq!(domain_prefix_len("/local/domain/12"), 0);
        assert_eq!(domain_prefix_len("/local/domain/123456/x"), 0);
    }
}
