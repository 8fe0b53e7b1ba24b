//! Debian's stock Linux kernel as a PV guest (issue 16): xtask fetches
//! Debian 12's cloud kernel package and Debian's `busybox-static` with
//! `apt-get download` (unpacked with `dpkg -x` into the per-user cache, never
//! installed, as `xen.rs` does for Xen), takes the ELF `vmlinux` out of the
//! kernel's bzImage on the host, and writes a small initramfs around busybox.
//! Where a package cannot be had, callers get one line saying why and skip.
//!
//! The bzImage is parsed with the x86 boot protocol's setup header: the
//! compressed kernel (`payload_offset`/`payload_length`, protocol 2.08 and
//! later) is an ELF image compressed with LZ4's legacy frame (the cloud
//! flavour) or XZ (the generic one), followed by its uncompressed size as a
//! little-endian u32 (the kernel build appends it to every payload).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's metapackage that depends on the newest cloud kernel.
pub const KERNEL_META: &str = "linux-image-cloud-amd64";
/// Debian's statically linked busybox (no shared libraries in the initramfs).
pub const BUSYBOX: &str = "busybox-static";
/// What the initramfs's /init prints once it runs (after mounting /proc).
pub const INIT_MARKER: &str = "microvisor-initramfs: /init running";
/// The line /init writes to /dev/kmsg right after [`INIT_MARKER`]: the
/// kernel prints it on the console with its printk timestamp, the time
/// `cargo xtask bench` reports for the boot (docs/linux.md).
pub const KMSG_MARKER: &str = "microvisor-initramfs: init marker in the kernel log";
/// Kernel command-line word that makes /init run a shell on the console
/// instead of powering off.
pub const SHELL_WORD: &str = "mvinit=shell";

/// Offset of `setup_sects` in a bzImage.
const SETUP_SECTS: usize = 0x1f1;
/// Offset of the setup header's magic, `HdrS`.
const HEADER_MAGIC: usize = 0x202;
/// Offset of the boot protocol version.
const PROTOCOL: usize = 0x206;
/// Offsets of `payload_offset` and `payload_length` (protocol 2.08+).
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The compressed kernel inside a bzImage, found through its setup header.
pub fn bzimage_payload(img: &[u8]) -> Result<&[u8], String> {
    if img.get(HEADER_MAGIC..HEADER_MAGIC + 4) != Some(b"HdrS") {
        return Err("not a bzImage (no HdrS setup header at 0x202)".into());
    }
    let version = le16(img, PROTOCOL).ok_or("bzImage truncated in its setup header")?;
    if version < 0x208 {
        return Err(format!(
            "bzImage boot protocol {}.{:02} predates payload_offset (2.08)",
            version >> 8,
            version & 0xff
        ));
    }
    // setup_sects = 0 means 4, for very old images; the protected-mode
    // code follows the boot sector and the setup sectors.
    let sects = match img[SETUP_SECTS] {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = (sects + 1) * 512;
    let offset = le32(img, PAYLOAD_OFFSET).ok_or("bzImage truncated in its setup header")?;
    let length = le32(img, PAYLOAD_LENGTH).ok_or("bzImage truncated in its setup header")?;
    let start = pm_start
        .checked_add(offset as usize)
        .ok_or("payload offset overflows")?;
    let end = start
        .checked_add(length as usize)
        .ok_or("payload length overflows")?;
    img.get(start..end).ok_or_else(|| {
        format!(
            "bzImage payload {start:#x}..{end:#x} runs past the image's {:#x} bytes",
            img.len()
        )
    })
}

/// A bzImage payload's compression, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// LZ4's legacy frame (magic 02 21 4c 18): Debian's cloud flavour.
    Lz4Legacy,
    /// XZ (fd 37 7a 58 5a 00): Debian's generic flavour.
    Xz,
    Gzip,
    Bzip2,
    Lzma,
    Lzo,
    Zstd,
}

/// Recognises a payload's compression by its magic bytes.
pub fn detect(payload: &[u8]) -> Option<Compression> {
    let magics: [(&[u8], Compression); 7] = [
        (&[0x02, 0x21, 0x4c, 0x18], Compression::Lz4Legacy),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Compression::Xz),
        (&[0x1f, 0x8b], Compression::Gzip),
        (b"BZh", Compression::Bzip2),
        (&[0x5d, 0x00, 0x00], Compression::Lzma),
        (&[0x89, b'L', b'Z', b'O'], Compression::Lzo),
        (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
    ];
    magics
        .iter()
        .find(|(m, _)| payload.starts_with(m))
        .map(|&(_, c)| c)
}

/// Largest block of LZ4's legacy frame once decompressed (8 MiB).
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// Magic of LZ4's legacy frame (also between concatenated frames).
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;

/// Decompresses a bzImage payload (LZ4 legacy or XZ) and checks it against
/// the size the kernel build appended.
pub fn decompress(payload: &[u8]) -> Result<Vec<u8>, String> {
    if payload.len() < 8 {
        return Err("bzImage payload is too short".into());
    }
    let (stream, trailer) = payload.split_at(payload.len() - 4);
    let size = u32::from_le_bytes(trailer.try_into().expect("4 bytes")) as usize;
    let out = match detect(payload) {
        Some(Compression::Lz4Legacy) => lz4_legacy(stream, size)?,
        Some(Compression::Xz) => {
            let mut out = Vec::with_capacity(size);
            xz2::read::XzDecoder::new(stream)
                .read_to_end(&mut out)
                .map_err(|e| format!("XZ payload does not decompress: {e}"))?;
            out
        }
        Some(other) => {
            return Err(format!(
                "bzImage payload is {other:?}: only LZ4 (Debian's cloud flavour) and XZ (the generic one) are decompressed here"
            ));
        }
        None => return Err("bzImage payload has no known compression magic".into()),
    };
    if out.len() != size {
        return Err(format!(
            "payload decompressed to {} bytes, the bzImage says {size}",
            out.len()
        ));
    }
    Ok(out)
}

/// LZ4's legacy frame: the magic, then blocks, each a little-endian u32
/// compressed size and an LZ4 block of at most 8 MiB once decompressed,
/// until the input ends (a repeated magic starts another frame). `hint`
/// presizes the output.
fn lz4_legacy(mut input: &[u8], hint: usize) -> Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::with_capacity(hint);
    while !input.is_empty() {
        let word = le32(input, 0).ok_or("LZ4 legacy frame cut inside a block size")?;
        input = &input[4..];
        if word == LZ4_LEGACY_MAGIC {
            continue;
        }
        let len = word as usize;
        let block = input.get(..len).ok_or_else(|| {
            format!(
                "LZ4 legacy block of {len} bytes runs past the payload ({} left)",
                input.len()
            )
        })?;
        input = &input[len..];
        let at = out.len();
        out.resize(at + LZ4_LEGACY_BLOCK, 0);
        let n = lz4_flex::block::decompress_into(block, &mut out[at..])
            .map_err(|e| format!("LZ4 block at output offset {at:#x}: {e}"))?;
        out.truncate(at + n);
    }
    Ok(out)
}

/// Takes the ELF vmlinux out of a bzImage and checks it is a Xen PV kernel
/// the hypervisor's own loader accepts (ELF notes included).
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, String> {
    let elf = decompress(bzimage_payload(bzimage)?)?;
    check_pv_elf(&elf)?;
    Ok(elf)
}

/// Checks that `elf` is an ELF image with Xen's PV notes, with the
/// hypervisor's own parser.
pub fn check_pv_elf(elf: &[u8]) -> Result<(), String> {
    if !elf.starts_with(b"\x7fELF") {
        return Err("the decompressed kernel is not an ELF image".into());
    }
    microvisor_core::elfimage::GuestImage::parse(elf)
        .map(|_| ())
        .map_err(|e| format!("the decompressed kernel is not a Xen PV ELF image: {e}"))
}

/// The newest cloud kernel package the apt index has: what the
/// `linux-image-cloud-amd64` metapackage's candidate depends on.
pub fn kernel_package() -> Result<String, String> {
    crate::toolchain::apt_candidate(KERNEL_META)?;
    let out = Command::new("apt-cache")
        .args(["depends", KERNEL_META])
        .output()
        .map_err(|_| format!("no apt-cache on this machine to fetch {KERNEL_META}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| kernel_dependency(l).map(str::to_string))
        .ok_or_else(|| format!("apt lists no kernel package that {KERNEL_META} depends on"))
}

/// The kernel package named by one line of `apt-cache depends`.
fn kernel_dependency(line: &str) -> Option<&str> {
    let name = line.trim().strip_prefix("Depends:")?.trim();
    (name.starts_with("linux-image-") && name.ends_with("-cloud-amd64")).then_some(name)
}

/// Downloads `package=version` with `apt-get download` and unpacks it with
/// `dpkg -x` into `root`.
fn unpack_deb(package: &str, version: &str, work: &Path, root: &Path) -> Result<(), String> {
    let ok = Command::new("apt-get")
        .args(["download", "-q", &format!("{package}={version}")])
        .current_dir(work)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return Err(format!("`apt-get download {package}` failed"));
    }
    let deb = std::fs::read_dir(work)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download produced no .deb")?;
    let ok = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(root)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let _ = std::fs::remove_file(&deb);
    if !ok {
        return Err(format!("dpkg -x {} failed", deb.display()));
    }
    Ok(())
}

/// Fetches `package` (its candidate version) once into the cache directory
/// `kind/<package>_<version>`, keeping only the file `make` writes there
/// (given the unpacked package's root); returns its path.
fn cached(
    kind: &str,
    package: &str,
    file: &str,
    make: impl FnOnce(&Path, &Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    let version = crate::toolchain::apt_candidate(package)?;
    let dir = crate::toolchain::cache_root().join(kind).join(format!(
        "{package}_{}",
        version.replace([':', '~', '+'], "_")
    ));
    let path = dir.join(file);
    if path.is_file() {
        return Ok(path);
    }
    eprintln!(
        "xtask: fetching Debian's {package} {version} into {}",
        dir.display()
    );
    let tmp = dir.with_file_name(format!(
        "{}.partial",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let root = tmp.join("root");
    unpack_deb(package, &version, &tmp, &root)?;
    make(&root, &tmp.join(file))?;
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)
        .map_err(|e| format!("cannot move {package} into {}: {e}", dir.display()))?;
    Ok(path)
}

/// The ELF vmlinux of Debian's newest cloud kernel, fetched and extracted
/// on first use (once per process: scenario workers ask together).
pub fn vmlinux() -> Result<PathBuf, String> {
    static FOUND: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let package = kernel_package()?;
            cached("linux", &package, "vmlinux", |root, out| {
                let boot = root.join("boot");
                let bz = std::fs::read_dir(&boot)
                    .map_err(|e| format!("{package} has no /boot: {e}"))?
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .find(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                    })
                    .ok_or_else(|| format!("{package} has no /boot/vmlinuz-*"))?;
                let img =
                    std::fs::read(&bz).map_err(|e| format!("cannot read {}: {e}", bz.display()))?;
                let elf = extract_vmlinux(&img).map_err(|e| format!("{}: {e}", bz.display()))?;
                std::fs::write(out, elf).map_err(|e| format!("cannot write {}: {e}", out.display()))
            })
        })
        .clone()
}

/// Debian's static busybox binary, fetched on first use.
pub fn busybox() -> Result<PathBuf, String> {
    static FOUND: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            cached("busybox", BUSYBOX, "busybox", |root, out| {
                let bin = root.join("bin/busybox");
                std::fs::copy(&bin, out)
                    .map(|_| ())
                    .map_err(|e| format!("{BUSYBOX} has no /bin/busybox: {e}"))
            })
        })
        .clone()
}

/// One file of an initramfs.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    /// Path without a leading `/`.
    pub name: &'a str,
    /// `st_mode`: file type and permissions.
    pub mode: u32,
    /// A device node's major and minor numbers.
    pub rdev: (u32, u32),
    /// A regular file's bytes, or a symbolic link's target.
    pub data: &'a [u8],
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// A cpio archive in the "newc" format (the one the kernel unpacks as its
/// initramfs and `microvisor-core::cpio` reads as the boot bundle): each
/// entry a `070701` header of thirteen 8-digit hex fields, the name with
/// its NUL padded to 4 bytes, the data padded to 4 bytes; then the
/// `TRAILER!!!` entry.
pub fn newc(nodes: &[Node]) -> Vec<u8> {
    let mut out = Vec::new();
    let trailer = Node {
        name: microvisor_core::cpio::TRAILER_NAME,
        mode: 0,
        rdev: (0, 0),
        data: &[],
    };
    for (i, n) in nodes.iter().chain(std::iter::once(&trailer)).enumerate() {
        let ino = if n.mode == 0 { 0 } else { i as u32 + 1 };
        let nlink = if n.mode & 0o170_000 == S_IFDIR { 2 } else { 1 };
        let fields = [
            ino,
            n.mode,
            0, // uid: root
            0, // gid
            nlink,
            0, // mtime
            n.data.len() as u32,
            0, // devmajor
            0, // devminor
            n.rdev.0,
            n.rdev.1,
            n.name.len() as u32 + 1,
            0, // check
        ];
        out.extend_from_slice(microvisor_core::cpio::NEWC_MAGIC);
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(n.name.as_bytes());
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(n.data);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

/// The initramfs's /init: mounts /proc, /sys and /dev, installs busybox's
/// applets, prints [`INIT_MARKER`] (and [`KMSG_MARKER`] through the kernel
/// log), then runs a shell on the console when
/// the kernel command line has [`SHELL_WORD`], else powers off at once.
pub fn init_script() -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /usr/bin /usr/sbin /sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
echo "{INIT_MARKER} (kernel $(uname -r))"
echo "{KMSG_MARKER}" > /dev/kmsg
for word in $(cat /proc/cmdline); do
    if [ "$word" = "{SHELL_WORD}" ]; then
        echo "microvisor-initramfs: shell (exit to power off)"
        setsid cttyhack sh
    fi
done
echo "microvisor-initramfs: poweroff"
poweroff -f
"#
    )
}

/// A directory of an initramfs.
fn dir_node(name: &str) -> Node<'_> {
    Node {
        name,
        mode: S_IFDIR | 0o755,
        rdev: (0, 0),
        data: &[],
    }
}

/// A newc archive around a static busybox binary: `/bin`, `/dev` with its
/// console, the `extra` nodes, `/proc`, `/sys`, `/bin/busybox`, `/bin/sh`
/// (a link to it) and `init` as `/init`.
fn busybox_archive(busybox: &[u8], init: &str, extra: &[Node]) -> Vec<u8> {
    let mut nodes = vec![
        dir_node("bin"),
        dir_node("dev"),
        // The kernel opens /dev/console for init before anything mounts
        // devtmpfs: the node must be in the archive (char 5:1).
        Node {
            name: "dev/console",
            mode: S_IFCHR | 0o600,
            rdev: (5, 1),
            data: &[],
        },
    ];
    nodes.extend_from_slice(extra);
    nodes.extend([
        dir_node("proc"),
        dir_node("sys"),
        Node {
            name: "bin/busybox",
            mode: S_IFREG | 0o755,
            rdev: (0, 0),
            data: busybox,
        },
        Node {
            name: "bin/sh",
            mode: S_IFLNK | 0o777,
            rdev: (0, 0),
            data: b"busybox",
        },
        Node {
            name: "init",
            mode: S_IFREG | 0o755,
            rdev: (0, 0),
            data: init.as_bytes(),
        },
    ]);
    newc(&nodes)
}

/// The initramfs around a static busybox binary.
pub fn initramfs_bytes(busybox: &[u8]) -> Vec<u8> {
    busybox_archive(busybox, &init_script(), &[])
}

/// The busybox initramfs, written into `target/linux/initramfs.cpio` on
/// first use.
pub fn initramfs() -> Result<PathBuf, String> {
    static MADE: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let bb = busybox()?;
        let bytes = std::fs::read(&bb).map_err(|e| format!("cannot read {}: {e}", bb.display()))?;
        let dir = crate::root().join("target/linux");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let out = dir.join("initramfs.cpio");
        std::fs::write(&out, initramfs_bytes(&bytes))
            .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
        Ok(out)
    })
    .clone()
}

/// Where Debian's kernel package keeps Xen's block front-end module, under
/// `lib/modules/<release>/`: `xen-blkfront` is a module in the cloud
/// flavour (`CONFIG_XEN_BLKDEV_FRONTEND=m`, no dependencies), ext4 is built
/// in.
pub const BLKFRONT_MODULE: &str = "kernel/drivers/block/xen-blkfront.ko";
/// What the root-disk initramfs's /init prints before it loads blkfront.
pub const ROOTDISK_MARKER: &str = "microvisor-initramfs: root on xvda";
/// The file the root file system's init writes, and its bytes.
pub const ROOTFS_FILE: &str = "/linux-blk/written-by-linux.txt";
pub const ROOTFS_TEXT: &str =
    "written by Linux through xen-blkfront and the service domain's blkback\n";
/// What the root file system's init prints once it runs from the disk.
pub const ROOTFS_MARKER: &str = "microvisor-rootfs: /sbin/init running from the ext4 disk";

/// Debian's `xen-blkfront.ko` from the package of the cloud kernel
/// [`vmlinux`] uses, fetched on first use (the package again: the kernel's
/// cache keeps only vmlinux).
pub fn blkfront_module() -> Result<PathBuf, String> {
    static FOUND: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let package = kernel_package()?;
            cached("linux-modules", &package, "xen-blkfront.ko", |root, out| {
                let modules = root.join("lib/modules");
                let ko = std::fs::read_dir(&modules)
                    .map_err(|e| format!("{package} has no /lib/modules: {e}"))?
                    .filter_map(|e| e.ok())
                    .map(|e| e.path().join(BLKFRONT_MODULE))
                    .find(|p| p.is_file())
                    .ok_or_else(|| format!("{package} has no {BLKFRONT_MODULE}"))?;
                std::fs::copy(&ko, out)
                    .map(|_| ())
                    .map_err(|e| format!("cannot copy {}: {e}", ko.display()))
            })
        })
        .clone()
}

/// The root-disk initramfs's /init: mounts /proc, /sys and /dev, loads
/// blkfront, waits for `/dev/xvda` (blkfront probes in the background once
/// the back-end connects), mounts it as ext4 on /newroot, moves /dev there
/// and switches root to its `/sbin/init`.
pub fn rootdisk_init_script() -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot /usr/bin /usr/sbin /sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
echo "{ROOTDISK_MARKER} (kernel $(uname -r))"
fail() {{
    echo "microvisor-initramfs: FAIL: $*"
    poweroff -f
}}
insmod /lib/modules/xen-blkfront.ko || fail "insmod xen-blkfront.ko"
n=0
while [ ! -b /dev/xvda ]; do
    n=$((n + 1))
    [ $n -le 600 ] || fail "no /dev/xvda after 600 polls"
    sleep 0.1
done
echo "microvisor-initramfs: /dev/xvda has $(cat /sys/block/xvda/size) sectors"
mount -t ext4 /dev/xvda /newroot || fail "mount -t ext4 /dev/xvda"
mount --move /dev /newroot/dev || fail "mount --move /dev"
umount /sys
umount /proc
exec switch_root /newroot /sbin/init
"#
    )
}

/// The root file system's `/sbin/init`: shows the root mount, writes
/// [`ROOTFS_TEXT`] to [`ROOTFS_FILE`], syncs, reads it back, remounts the
/// root read-only (the journal checkpointed: the image is clean for
/// `debugfs` and `e2fsck` on the host) and powers off.
pub fn rootfs_init_script() -> String {
    let dir = ROOTFS_FILE.rsplit_once('/').map_or("/", |(d, _)| d);
    let text = ROOTFS_TEXT.trim_end_matches('\n');
    format!(
        r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "{ROOTFS_MARKER}"
echo "microvisor-rootfs: $(grep ' / ' /proc/mounts)"
fail() {{
    echo "microvisor-rootfs: FAIL: $*"
    poweroff -f
}}
mkdir -p {dir} || fail "mkdir {dir}"
echo "{text}" > {ROOTFS_FILE} || fail "write {ROOTFS_FILE}"
sync || fail sync
echo "microvisor-rootfs: read back: $(cat {ROOTFS_FILE})"
mount -o remount,ro / || fail "remount / read-only"
echo "microvisor-rootfs: / read-only, poweroff"
poweroff -f
"#
    )
}

/// The root-disk initramfs around a static busybox and `xen-blkfront.ko`.
pub fn rootdisk_initramfs_bytes(busybox: &[u8], blkfront: &[u8]) -> Vec<u8> {
    busybox_archive(
        busybox,
        &rootdisk_init_script(),
        &[
            dir_node("lib"),
            dir_node("lib/modules"),
            Node {
                name: "lib/modules/xen-blkfront.ko",
                mode: S_IFREG | 0o644,
                rdev: (0, 0),
                data: blkfront,
            },
            dir_node("newroot"),
        ],
    )
}

/// The root-disk initramfs, written into `target/linux/rootdisk.cpio` on
/// first use.
pub fn rootdisk_initramfs() -> Result<PathBuf, String> {
    static MADE: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let read =
            |p: PathBuf| std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let bb = read(busybox()?)?;
        let ko = read(blkfront_module()?)?;
        let dir = crate::root().join("target/linux");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let out = dir.join("rootdisk.cpio");
        std::fs::write(&out, rootdisk_initramfs_bytes(&bb, &ko))
            .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
        Ok(out)
    })
    .clone()
}

/// e2fsprogs' programs the ext4 root disk needs on the host.
pub const E2FSPROGS: [&str; 4] = ["mkfs.ext4", "debugfs", "e2fsck", "dumpe2fs"];

/// The path of an e2fsprogs program (also looked for in /sbin and
/// /usr/sbin, which a user's `PATH` may lack).
fn e2fs_tool(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("no {name} on this machine (Debian's e2fsprogs has it)"))
}

/// Why the ext4 root disk cannot be made here (the packages or e2fsprogs
/// missing), if it cannot; fetches what it needs.
pub fn rootfs_unavailable() -> Option<String> {
    if let Some(e) = E2FSPROGS.iter().find_map(|t| e2fs_tool(t).err()) {
        return Some(e);
    }
    busybox()
        .err()
        .map(|e| format!("Debian's busybox unavailable: {e}"))
}

/// The directory `mkfs.ext4 -d` copies into the root file system: busybox,
/// its `sh` link, `/sbin/init` and the mount points; made fresh in
/// `target/linux/rootfs`.
fn rootfs_dir() -> Result<PathBuf, String> {
    let bb = busybox()?;
    let dir = crate::root().join("target/linux/rootfs");
    let err = |p: &Path, e: std::io::Error| format!("cannot make {}: {e}", p.display());
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["bin", "sbin", "dev", "proc", "sys"] {
        let p = dir.join(d);
        std::fs::create_dir_all(&p).map_err(|e| err(&p, e))?;
    }
    let p = dir.join("bin/busybox");
    std::fs::copy(&bb, &p).map_err(|e| err(&p, e))?;
    let p = dir.join("bin/sh");
    std::os::unix::fs::symlink("busybox", &p).map_err(|e| err(&p, e))?;
    // Busybox's applets are links to it, made here so the script needs no
    // --install on a disk it means to leave clean.
    for applet in [
        "mount", "umount", "echo", "grep", "mkdir", "cat", "sync", "poweroff",
    ] {
        let p = dir.join("bin").join(applet);
        std::os::unix::fs::symlink("busybox", &p).map_err(|e| err(&p, e))?;
    }
    let p = dir.join("sbin/init");
    std::fs::write(&p, rootfs_init_script()).map_err(|e| err(&p, e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).map_err(|e| err(&p, e))?;
    Ok(dir)
}

/// Makes `image` (`mib` MiB) the ext4 root disk: the root directory
/// [`rootfs_dir`] makes, partition-less.
pub fn make_rootfs_image(image: &Path, mib: u64) -> Result<(), String> {
    make_ext4_image(image, mib, &rootfs_dir()?)
}

/// Makes `image` (`mib` MiB) an ext4 file system holding a copy of `dir`
/// (`mkfs.ext4 -d`), the whole image the file system.
pub fn make_ext4_image(image: &Path, mib: u64, dir: &Path) -> Result<(), String> {
    let f = std::fs::File::create(image)
        .map_err(|e| format!("cannot create {}: {e}", image.display()))?;
    f.set_len(mib << 20)
        .map_err(|e| format!("cannot size {}: {e}", image.display()))?;
    drop(f);
    let out = Command::new(e2fs_tool("mkfs.ext4")?)
        .args(["-q", "-F", "-L", "mvroot", "-E", "root_owner=0:0", "-d"])
        .arg(dir)
        .arg(image)
        .output()
        .map_err(|e| format!("cannot run mkfs.ext4: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mkfs.ext4 -d {} {} failed: {}",
            dir.display(),
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The bytes of the file at `path` in the ext4 image, read with
/// `debugfs -R 'cat PATH'` (which reads the image as it is, without
/// replaying a journal).
pub fn read_ext4_file(image: &Path, path: &str) -> Result<Vec<u8>, String> {
    // debugfs prints nothing on stdout for a missing file: ask `stat` first.
    let run = |req: String| {
        Command::new(e2fs_tool("debugfs")?)
            .args(["-R", &req])
            .arg(image)
            .output()
            .map_err(|e| format!("cannot run debugfs: {e}"))
    };
    let stat = run(format!("stat {path}"))?;
    let said = String::from_utf8_lossy(&stat.stderr);
    if !stat.status.success() || !String::from_utf8_lossy(&stat.stdout).contains("Inode:") {
        return Err(format!(
            "{path} is not in the ext4 image {}: {}",
            image.display(),
            said.lines().last().unwrap_or("").trim()
        ));
    }
    Ok(run(format!("cat {path}"))?.stdout)
}

/// Checks the image as a file system left by a clean unmount (or a
/// read-only remount): `Err` if its journal still needs recovery
/// (`needs_recovery` among the features `dumpe2fs -h` lists), or with
/// `e2fsck -fn`'s report unless it finds the file system clean.
pub fn check_ext4(image: &Path) -> Result<(), String> {
    let out = Command::new(e2fs_tool("dumpe2fs")?)
        .arg("-h")
        .arg(image)
        .output()
        .map_err(|e| format!("cannot run dumpe2fs: {e}"))?;
    let header = String::from_utf8_lossy(&out.stdout);
    let features = header
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem features:"))
        .ok_or_else(|| {
            format!(
                "dumpe2fs -h finds no ext4 superblock in {}",
                image.display()
            )
        })?;
    if features.split_whitespace().any(|f| f == "needs_recovery") {
        return Err(format!(
            "the ext4 image {} needs journal recovery: the guest neither unmounted it nor remounted it read-only",
            image.display()
        ));
    }
    let out = Command::new(e2fs_tool("e2fsck")?)
        .arg("-fn")
        .arg(image)
        .output()
        .map_err(|e| format!("cannot run e2fsck: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let first: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(4)
        .collect();
    Err(format!(
        "e2fsck -fn finds the ext4 image {} not clean (exit {:?}): {}",
        image.display(),
        out.status.code(),
        first.join(" / ")
    ))
}

/// Checks a scenario's `debian:WHAT` file spec without fetching anything.
pub fn check_spec(what: &str) -> Result<(), String> {
    match what {
        "vmlinux" | "initramfs" | "rootdisk-initramfs" => Ok(()),
        _ => Err(format!(
            "debian:{what} names nothing: debian:vmlinux is Debian's cloud kernel, debian:initramfs the busybox initramfs, debian:rootdisk-initramfs the one that mounts xvda as its root"
        )),
    }
}

/// The file a `debian:WHAT` spec stands for, fetched (and made) on first
/// use; the error is the one line a skip prints.
pub fn fetch_spec(what: &str) -> Result<PathBuf, String> {
    check_spec(what)?;
    if what == "vmlinux" {
        vmlinux().map_err(|e| format!("Debian's cloud kernel unavailable: {e}"))
    } else if what == "rootdisk-initramfs" {
        rootdisk_initramfs()
            .map_err(|e| format!("Debian's busybox or xen-blkfront.ko unavailable: {e}"))
    } else {
        initramfs().map_err(|e| format!("Debian's busybox unavailable: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic bzImage: `sects` setup sectors, then the payload at
    /// `offset` into the protected-mode code.
    fn bzimage(sects: u8, version: u16, offset: u32, payload: &[u8]) -> Vec<u8> {
        let pm = (usize::from(if sects == 0 { 4 } else { sects }) + 1) * 512;
        let mut img = vec![0u8; pm + offset as usize + payload.len()];
        img[SETUP_SECTS] = sects;
        img[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        img[PROTOCOL..PROTOCOL + 2].copy_from_slice(&version.to_le_bytes());
        img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&offset.to_le_bytes());
        img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4]
            .copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let at = pm + offset as usize;
        img[at..].copy_from_slice(payload);
        img
    }

    #[test]
    fn payload_is_found_through_the_setup_header() {
        let img = bzimage(27, 0x20f, 0x2cc, b"payload!");
        assert_eq!(bzimage_payload(&img).unwrap(), b"payload!");
        // setup_sects = 0 stands for 4.
        let img = bzimage(0, 0x208, 16, b"old");
        assert_eq!(bzimage_payload(&img).unwrap(), b"old");
    }

    #[test]
    fn bad_headers_are_refused_with_the_reason() {
        let mut img = bzimage(4, 0x20f, 0, b"x");
        img[HEADER_MAGIC] = b'h';
        assert!(bzimage_payload(&img).unwrap_err().contains("HdrS"));
        let img = bzimage(4, 0x207, 0, b"x");
        assert!(bzimage_payload(&img).unwrap_err().contains("2.08"));
        let mut img = bzimage(4, 0x20f, 0, b"xyz");
        img.truncate(img.len() - 1);
        assert!(bzimage_payload(&img).unwrap_err().contains("runs past"));
        assert!(bzimage_payload(b"short").is_err());
        let mut img = bzimage(4, 0x20f, 0, b"x");
        img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(bzimage_payload(&img).is_err());
    }

    #[test]
    fn formats_are_told_apart_by_magic() {
        assert_eq!(
            detect(&[0x02, 0x21, 0x4c, 0x18, 0, 0]),
            Some(Compression::Lz4Legacy)
        );
        assert_eq!(detect(b"\xfd7zXZ\0\0"), Some(Compression::Xz));
        assert_eq!(detect(b"\x1f\x8b\x08"), Some(Compression::Gzip));
        assert_eq!(detect(b"BZh9"), Some(Compression::Bzip2));
        assert_eq!(detect(b"\x28\xb5\x2f\xfd"), Some(Compression::Zstd));
        assert_eq!(detect(b"\x89LZO"), Some(Compression::Lzo));
        assert_eq!(detect(b"\x5d\0\0\x80"), Some(Compression::Lzma));
        assert_eq!(detect(b"\x7fELF"), None);
        assert_eq!(detect(b""), None);
    }

    /// Bytes that compress, but not to nothing.
    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| ((i / 7) ^ (i % 13)) as u8).collect()
    }

    /// An LZ4 legacy payload of `data` in `block`-byte blocks, with the
    /// size trailer.
    fn lz4_payload(data: &[u8], block: usize) -> Vec<u8> {
        let mut p = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(block) {
            let c = lz4_flex::block::compress(chunk);
            p.extend_from_slice(&(c.len() as u32).to_le_bytes());
            p.extend_from_slice(&c);
        }
        p.extend_from_slice(&(data.len() as u32).to_le_bytes());
        p
    }

    #[test]
    fn lz4_legacy_payloads_decompress_across_blocks() {
        let data = sample(100_000);
        assert_eq!(decompress(&lz4_payload(&data, 30_000)).unwrap(), data);
        // A second frame's magic between blocks is skipped.
        let mut p = lz4_payload(&data[..50_000], 50_000);
        p.truncate(p.len() - 4);
        let second = lz4_payload(&data[50_000..], 50_000);
        p.extend_from_slice(&second[..second.len() - 4]);
        p.extend_from_slice(&(data.len() as u32).to_le_bytes());
        assert_eq!(decompress(&p).unwrap(), data);
    }

    #[test]
    fn broken_lz4_payloads_are_errors_not_panics() {
        let data = sample(20_000);
        let good = lz4_payload(&data, 8192);
        // A wrong size trailer.
        let mut p = good.clone();
        let n = p.len();
        p[n - 4..].copy_from_slice(&7u32.to_le_bytes());
        assert!(decompress(&p).unwrap_err().contains("says 7"));
        // Truncated in the middle of a block.
        let mut p = good[..good.len() / 2].to_vec();
        p.extend_from_slice(&(data.len() as u32).to_le_bytes());
        assert!(decompress(&p).is_err());
        // Every cut of the stream fails cleanly.
        for cut in (4..good.len() - 4).step_by(61) {
            let mut p = good[..cut].to_vec();
            p.extend_from_slice(&(data.len() as u32).to_le_bytes());
            assert!(decompress(&p).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn xz_payloads_decompress() {
        use std::io::Write;
        let data = sample(70_000);
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 6);
        enc.write_all(&data).unwrap();
        let mut p = enc.finish().unwrap();
        assert_eq!(detect(&p), Some(Compression::Xz));
        p.extend_from_slice(&(data.len() as u32).to_le_bytes());
        assert_eq!(decompress(&p).unwrap(), data);
        let n = p.len();
        p[n / 2] ^= 0xff;
        assert!(decompress(&p).is_err());
    }

    #[test]
    fn other_formats_are_named_in_the_error() {
        let e = decompress(b"\x1f\x8b\x08\0\0\0\0\0\x04\0\0\0").unwrap_err();
        assert!(e.contains("Gzip") && e.contains("LZ4"), "{e}");
    }

    #[test]
    fn the_elf_check_wants_an_elf_with_xen_notes() {
        assert!(
            check_pv_elf(b"MZ not an elf")
                .unwrap_err()
                .contains("not an ELF")
        );
        let e = check_pv_elf(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0").unwrap_err();
        assert!(e.contains("Xen PV"), "{e}");
    }

    /// Reads back a header field (0 = ino, 1 = mode, ... 9/10 = rdev) of
    /// every entry.
    fn fields(a: &[u8], field: usize) -> Vec<u32> {
        let mut v = Vec::new();
        let mut at = 0;
        loop {
            let hex = |k: usize| {
                let f = &a[at + 6 + 8 * k..at + 14 + 8 * k];
                u32::from_str_radix(std::str::from_utf8(f).unwrap(), 16).unwrap()
            };
            v.push(hex(field));
            let name = (at + 110 + hex(11) as usize).next_multiple_of(4);
            let next = (name + hex(6) as usize).next_multiple_of(4);
            if hex(6) == 0 && hex(1) == 0 {
                return v;
            }
            at = next;
        }
    }

    #[test]
    fn the_initramfs_is_newc_the_bundle_reader_accepts() {
        let a = initramfs_bytes(b"\x7fELF busybox bytes");
        let archive = microvisor_core::cpio::Archive::new(&a).expect("valid newc");
        assert_eq!(
            archive.get("bin/busybox"),
            Some(&b"\x7fELF busybox bytes"[..])
        );
        assert_eq!(archive.get("bin/sh"), Some(&b"busybox"[..]));
        let init = std::str::from_utf8(archive.get("init").unwrap()).unwrap();
        assert!(init.starts_with("#!/bin/busybox sh\n"));
        assert!(init.contains(INIT_MARKER) && init.contains("poweroff -f"));
        assert!(init.contains(&format!("echo \"{KMSG_MARKER}\" > /dev/kmsg")));
        assert!(init.contains(SHELL_WORD));
        let names: Vec<&str> = archive.entries().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "bin",
                "dev",
                "dev/console",
                "proc",
                "sys",
                "bin/busybox",
                "bin/sh",
                "init"
            ]
        );
        // Types and permissions, and the console's device number.
        let modes = fields(&a, 1);
        assert_eq!(
            modes,
            [
                0o40755, 0o40755, 0o20600, 0o40755, 0o40755, 0o100755, 0o120777, 0o100755, 0
            ]
        );
        assert_eq!(fields(&a, 9)[2], 5);
        assert_eq!(fields(&a, 10)[2], 1);
        // Every entry starts 4-byte aligned: the reader found them all.
        assert!(a.len().is_multiple_of(4));
    }

    #[test]
    fn the_rootdisk_initramfs_loads_blkfront_and_switches_to_xvda() {
        let a = rootdisk_initramfs_bytes(b"\x7fELF busybox", b"\x7fELF blkfront");
        let archive = microvisor_core::cpio::Archive::new(&a).expect("valid newc");
        assert_eq!(
            archive.get("lib/modules/xen-blkfront.ko"),
            Some(&b"\x7fELF blkfront"[..])
        );
        assert_eq!(archive.get("bin/busybox"), Some(&b"\x7fELF busybox"[..]));
        let names: Vec<&str> = archive.entries().map(|(n, _)| n).collect();
        for n in ["dev/console", "newroot", "proc", "sys", "bin/sh", "init"] {
            assert!(names.contains(&n), "{n} not in the initramfs");
        }
        let init = std::str::from_utf8(archive.get("init").unwrap()).unwrap();
        for step in [
            ROOTDISK_MARKER,
            "insmod /lib/modules/xen-blkfront.ko",
            "mount -t ext4 /dev/xvda /newroot",
            "mount --move /dev /newroot/dev",
            "exec switch_root /newroot /sbin/init",
        ] {
            assert!(init.contains(step), "{step:?} not in /init");
        }
        let root = rootfs_init_script();
        assert!(root.starts_with("#!/bin/sh\n") && root.contains(ROOTFS_MARKER));
        assert!(root.contains(&format!(
            "echo \"{}\" > {ROOTFS_FILE}",
            ROOTFS_TEXT.trim_end()
        )));
        assert!(root.contains("mount -o remount,ro /") && root.ends_with("poweroff -f\n"));
    }

    /// e2fsprogs (Debian: priority required; .ci/run installs it) round
    /// trip: a directory into an image, a file back out, a clean check, and
    /// a broken image found not clean.
    #[test]
    fn ext4_images_are_made_read_and_checked_with_e2fsprogs() {
        let tmp = std::env::temp_dir().join(format!("xtask-ext4-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let dir = tmp.join("root");
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/hello"), b"hello ext4\n").unwrap();
        let img = tmp.join("img");
        make_ext4_image(&img, 4, &dir).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 4 << 20);
        assert_eq!(read_ext4_file(&img, "/etc/hello").unwrap(), b"hello ext4\n");
        let e = read_ext4_file(&img, "/etc/absent").unwrap_err();
        assert!(e.contains("/etc/absent is not in the ext4 image"), "{e}");
        check_ext4(&img).unwrap();
        // A journal left needing recovery (as by a guest that powered off
        // with the file system mounted read-write) is refused.
        let clean = std::fs::read(&img).unwrap();
        let set = Command::new(e2fs_tool("debugfs").unwrap())
            .args(["-w", "-R", "feature needs_recovery"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(set.status.success());
        let e = check_ext4(&img).unwrap_err();
        assert!(e.contains("needs journal recovery"), "{e}");
        std::fs::write(&img, &clean).unwrap();
        check_ext4(&img).unwrap();
        // Zero the first block group's descriptors (block 2 of 1 KiB
        // blocks): e2fsck -n must object.
        let mut bytes = std::fs::read(&img).unwrap();
        bytes[2048..3072].fill(0);
        std::fs::write(&img, &bytes).unwrap();
        assert!(check_ext4(&img).unwrap_err().contains("not clean"));
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn the_kernel_package_is_read_from_apt_cache_depends() {
        assert_eq!(
            kernel_dependency("  Depends: linux-image-6.1.0-57-cloud-amd64"),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        assert_eq!(kernel_dependency("linux-image-cloud-amd64"), None);
        assert_eq!(kernel_dependency("  Recommends: firmware-linux-free"), None);
        assert_eq!(
            kernel_dependency("  Depends: linux-image-6.1.0-57-amd64"),
            None
        );
    }
}
