//! Overlay mounts of a container rootfs: the image's snapshots as read-only
//! lower layers (topmost first) under the container's upper and work dirs.
//! It owns the choice of mount interface and the mounts themselves; the
//! snapshot directories are [`crate::snapshot`]'s.
//!
//! Two interfaces, chosen once per store by [`OverlayMethod::detect`]:
//!
//! - [`OverlayMethod::LowerdirAppend`]: the new mount API with one
//!   `lowerdir+` fsconfig parameter per layer (Linux 6.8+). No bound on the
//!   number of layers but overlayfs's own (500).
//! - [`OverlayMethod::OptionString`]: classic `mount(2)` with
//!   `lowerdir=a:b:…,upperdir=…,workdir=…`, which every kernel takes. The
//!   kernel copies at most one page of options, which absolute snapshot
//!   paths (about 90 bytes each under `/var/lib/carrack`) fill at around 40
//!   layers. A longer list names the layers through short symlinks
//!   (`<links>/0`, `<links>/1`, …) and is mounted from a thread whose
//!   working directory is `<links>` (`unshare(CLONE_FS)` keeps the rest of
//!   the process where it was), so each layer costs a few bytes: the
//!   relative-path trick containerd uses for long lower lists.
//!
//! The new API's single `lowerdir` string is no way out on older kernels:
//! fsconfig(2) copies a string value of at most 256 bytes.

use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{ImageError, IoContext};

/// How overlays are mounted on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayMethod {
    /// fsconfig(2) with one `lowerdir+` parameter per layer (Linux 6.8+).
    LowerdirAppend,
    /// mount(2) with an option string of at most one page; long layer lists
    /// through short relative names.
    OptionString,
}

impl fmt::Display for OverlayMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OverlayMethod::LowerdirAppend => "fsconfig lowerdir+, one parameter per layer",
            OverlayMethod::OptionString => {
                "mount(2) lowerdir= option string, short relative layer names past one page"
            }
        })
    }
}

/// What [`OverlayMethod::detect`] found.
#[derive(Debug, Clone)]
pub struct Detected {
    /// The method to use.
    pub method: OverlayMethod,
    /// Why: what the probe saw.
    pub reason: String,
}

impl OverlayMethod {
    /// Asks the kernel whether overlayfs takes `lowerdir+`: creates (and
    /// never mounts) a read-only overlay of two empty directories made for
    /// the probe under `scratch` and removed again. A kernel whose overlayfs
    /// predates the new mount API (before 6.5) accepts any parameter through
    /// its legacy adapter and refuses only at create, hence the create.
    /// Any refusal means [`OverlayMethod::OptionString`], which every kernel
    /// takes.
    pub fn detect(scratch: &Path) -> Detected {
        match probe_lowerdir_append(scratch) {
            Ok(()) => Detected {
                method: OverlayMethod::LowerdirAppend,
                reason: "the kernel's overlayfs takes lowerdir+ (Linux 6.8+)".into(),
            },
            Err(why) => Detected {
                method: OverlayMethod::OptionString,
                reason: format!("lowerdir+ refused: {why}"),
            },
        }
    }
}

/// Numbers the probe directories of this process.
static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn probe_lowerdir_append(scratch: &Path) -> Result<(), String> {
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = scratch.join(format!("tmp-overlay-probe-{}-{n}", std::process::id()));
    let lowers = [dir.join("a"), dir.join("b")];
    let made = lowers.iter().try_for_each(fs::create_dir_all);
    let result = made
        .map_err(|e| format!("creating {}: {e}", dir.display()))
        .and_then(|()| {
            let fc = FsContext::open().map_err(|e| e.to_string())?;
            for l in &lowers {
                fc.set_string("lowerdir+", l.as_os_str())
                    .map_err(|e| fc.explain(&format!("lowerdir+ {}", l.display()), e))?;
            }
            fc.create().map_err(|e| fc.explain("create", e))
        });
    let _ = fs::remove_dir_all(&dir);
    result
}

/// Where an overlay's writes go: a container rootfs's upper and work
/// directories. An overlay without them is read-only, and the kernel then
/// wants two lower layers at least.
#[derive(Debug, Clone, Copy)]
pub struct UpperDirs<'a> {
    /// The upper (writable) layer.
    pub upper: &'a Path,
    /// Overlayfs's work directory, on the upper layer's file system.
    pub work: &'a Path,
}

/// Mounts an overlay of `lowers` (topmost first) at `target`: with `upper`
/// a container's writable rootfs; without, a read-only view mounted
/// `nosuid`, `nodev` and `noexec` (an image volume).
/// [`OverlayMethod::OptionString`] may make short symlinks to the lowers in
/// `links` (a directory of the mount's own, created when needed; the
/// caller removes it with the upper and work dirs).
pub fn mount_overlay(
    method: OverlayMethod,
    lowers: &[PathBuf],
    upper: Option<UpperDirs<'_>>,
    target: &Path,
    links: &Path,
) -> Result<(), ImageError> {
    match method {
        OverlayMethod::LowerdirAppend => mount_lowerdir_append(lowers, upper, target),
        OverlayMethod::OptionString => mount_option_string(lowers, upper, target, links),
    }
}

fn cstr(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn mount_error(target: &Path, what: &str, e: impl fmt::Display) -> ImageError {
    ImageError::Mount {
        target: target.to_owned(),
        reason: format!("{what}: {e}"),
    }
}

// Constants of the new mount API (linux/mount.h).
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
/// fsmount(2)'s MOUNT_ATTR_RDONLY | NOSUID | NODEV | NOEXEC: a read-only view.
const READ_ONLY_VIEW_ATTRS: libc::c_uint = 0x1 | 0x2 | 0x4 | 0x8;

/// An overlay filesystem context of the new mount API.
struct FsContext(OwnedFd);

impl FsContext {
    fn open() -> io::Result<FsContext> {
        let name = cstr(b"overlay")?;
        // SAFETY: fsopen(2) with a NUL-terminated fs name; the returned fd
        // is checked before use.
        let raw = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new fd we own exclusively.
        Ok(FsContext(unsafe { OwnedFd::from_raw_fd(raw as i32) }))
    }

    fn set_string(&self, key: &str, value: &OsStr) -> io::Result<()> {
        let k = cstr(key.as_bytes())?;
        let v = cstr(value.as_bytes())?;
        // SAFETY: fsconfig(2) with a valid fs context fd and NUL-terminated
        // key and value strings that outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.0.as_raw_fd(),
                FSCONFIG_SET_STRING,
                k.as_ptr(),
                v.as_ptr(),
                0,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn create(&self) -> io::Result<()> {
        // SAFETY: fsconfig(2) CMD_CREATE takes no key or value.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.0.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_void>(),
                0,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// `what: error`, with the messages the kernel left on the context.
    fn explain(&self, what: &str, e: io::Error) -> String {
        let mut msgs = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            // SAFETY: reading into a valid buffer from an fd we own.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            msgs.push(String::from_utf8_lossy(&buf[..n as usize]).into_owned());
        }
        if msgs.is_empty() {
            format!("{what}: {e}")
        } else {
            format!("{what}: {e} ({})", msgs.join("; "))
        }
    }
}

fn mount_lowerdir_append(
    lowers: &[PathBuf],
    upper: Option<UpperDirs<'_>>,
    target: &Path,
) -> Result<(), ImageError> {
    let fail = |reason: String| ImageError::Mount {
        target: target.to_owned(),
        reason,
    };
    let fc = FsContext::open().map_err(|e| mount_error(target, "fsopen overlay", e))?;
    for l in lowers {
        fc.set_string("lowerdir+", l.as_os_str())
            .map_err(|e| fail(fc.explain(&format!("lowerdir+ {}", l.display()), e)))?;
    }
    let attrs = match upper {
        Some(u) => {
            fc.set_string("upperdir", u.upper.as_os_str())
                .map_err(|e| fail(fc.explain("upperdir", e)))?;
            fc.set_string("workdir", u.work.as_os_str())
                .map_err(|e| fail(fc.explain("workdir", e)))?;
            0
        }
        None => READ_ONLY_VIEW_ATTRS,
    };
    fc.create()
        .map_err(|e| fail(fc.explain("create overlay", e)))?;
    // SAFETY: fsmount(2) on a created fs context fd.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fc.0.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    if m < 0 {
        return Err(mount_error(target, "fsmount", io::Error::last_os_error()));
    }
    // SAFETY: `m` is a new mount fd we own exclusively.
    let mfd = unsafe { OwnedFd::from_raw_fd(m as i32) };
    let empty = cstr(b"").expect("no NUL");
    let t = cstr(target.as_os_str().as_bytes()).map_err(|e| mount_error(target, "target", e))?;
    // SAFETY: move_mount(2) from the detached mount fd to `target`, both
    // strings NUL-terminated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mfd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(mount_error(
            target,
            "move_mount",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The overlay option string for mount(2), and whether its lower layers
/// are named relative to the links directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionString {
    /// Every path absolute: mountable from anywhere.
    Absolute(String),
    /// Lower layer `i` (topmost first) is `i`, a symlink in the links
    /// directory, which must be the working directory of the mount.
    Relative(String),
}

/// Overlay's escapes in a path option: `\`, `,` (option separator) and `:`
/// (layer separator) are preceded by a backslash.
fn escape(path: &Path, out: &mut Vec<u8>) {
    for &b in path.as_os_str().as_bytes() {
        if matches!(b, b'\\' | b',' | b':') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

fn options_with(lowers: impl Iterator<Item = Vec<u8>>, upper: Option<UpperDirs<'_>>) -> Vec<u8> {
    let mut s = b"lowerdir=".to_vec();
    for (i, l) in lowers.enumerate() {
        if i > 0 {
            s.push(b':');
        }
        s.extend(l);
    }
    if let Some(u) = upper {
        s.extend_from_slice(b",upperdir=");
        escape(u.upper, &mut s);
        s.extend_from_slice(b",workdir=");
        escape(u.work, &mut s);
    }
    s
}

/// Builds the mount(2) options of an overlay: absolute paths when they fit
/// in `page_size` bytes with the terminating NUL, else relative layer
/// names; an error naming the layer count when even those do not fit.
pub fn option_string(
    lowers: &[PathBuf],
    upper: Option<UpperDirs<'_>>,
    page_size: usize,
) -> Result<OptionString, String> {
    let to_string =
        |v: Vec<u8>| String::from_utf8(v).map_err(|e| format!("an overlay path is not UTF-8: {e}"));
    let absolute = options_with(
        lowers.iter().map(|l| {
            let mut v = Vec::new();
            escape(l, &mut v);
            v
        }),
        upper,
    );
    if absolute.len() < page_size {
        return to_string(absolute).map(OptionString::Absolute);
    }
    let relative = options_with((0..lowers.len()).map(|i| i.to_string().into_bytes()), upper);
    if relative.len() < page_size {
        return to_string(relative).map(OptionString::Relative);
    }
    Err(format!(
        "{} lower layers do not fit in the {page_size}-byte mount options even as short names \
         (options of {} bytes)",
        lowers.len(),
        relative.len()
    ))
}

fn page_size() -> usize {
    // SAFETY: sysconf(3) has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}

fn mount_option_string(
    lowers: &[PathBuf],
    upper: Option<UpperDirs<'_>>,
    target: &Path,
    links: &Path,
) -> Result<(), ImageError> {
    // Relative paths below resolve against `links`: make ours absolute first.
    let absolute = |p: &Path| std::path::absolute(p).ctx(|| format!("resolve {}", p.display()));
    let lowers = lowers
        .iter()
        .map(|l| absolute(l))
        .collect::<Result<Vec<_>, _>>()?;
    let target = absolute(target)?;
    let dirs = match upper {
        Some(u) => Some((absolute(u.upper)?, absolute(u.work)?)),
        None => None,
    };
    let upper = dirs.as_ref().map(|(upper, work)| UpperDirs { upper, work });
    let options = option_string(&lowers, upper, page_size())
        .map_err(|e| mount_error(&target, "overlay options", e))?;
    use nix::mount::MsFlags;
    let flags = match upper {
        Some(_) => MsFlags::empty(),
        None => MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    };
    let mount = |data: &str| {
        nix::mount::mount(Some("overlay"), &target, Some("overlay"), flags, Some(data))
            .map_err(|e| mount_error(&target, "mount overlay", e))
    };
    match options {
        OptionString::Absolute(data) => mount(&data),
        OptionString::Relative(data) => {
            fs::create_dir_all(links).ctx(|| format!("create {}", links.display()))?;
            for (i, l) in lowers.iter().enumerate() {
                let link = links.join(i.to_string());
                match fs::remove_file(&link) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(ImageError::io(format!("remove {}", link.display()), e));
                    }
                    _ => {}
                }
                std::os::unix::fs::symlink(l, &link)
                    .ctx(|| format!("symlink {} to {}", link.display(), l.display()))?;
            }
            // A thread of its own with a private working directory: the
            // process's other threads keep theirs.
            std::thread::scope(|s| {
                s.spawn(|| {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
                        .map_err(|e| mount_error(&target, "unshare CLONE_FS", e))?;
                    nix::unistd::chdir(links).map_err(|e| {
                        mount_error(&target, &format!("chdir {}", links.display()), e)
                    })?;
                    mount(&data)
                })
                .join()
                .unwrap_or_else(|_| Err(mount_error(&target, "mount thread", "panicked")))
            })
        }
    }
}

/// Detaches the mount at `target`; not mounted is not an error.
pub fn unmount(target: &Path) -> Result<(), ImageError> {
    match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(mount_error(target, "umount", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(upper: &'static str, work: &'static str) -> Option<UpperDirs<'static>> {
        Some(UpperDirs {
            upper: Path::new(upper),
            work: Path::new(work),
        })
    }

    #[test]
    fn a_read_only_view_has_lower_layers_only() {
        let opts = option_string(&layers(2), None, 4096).unwrap();
        let want = format!(
            "lowerdir=/var/lib/carrack/snapshots/{:064x}:/var/lib/carrack/snapshots/{:064x}",
            0, 1
        );
        assert_eq!(opts, OptionString::Absolute(want));
    }

    fn layers(n: usize) -> Vec<PathBuf> {
        (0..n)
            .map(|i| PathBuf::from(format!("/var/lib/carrack/snapshots/{i:064x}")))
            .collect()
    }

    #[test]
    fn few_layers_get_absolute_paths_topmost_first() {
        let opts = option_string(&layers(2), dirs("/c/upper", "/c/work"), 4096).unwrap();
        let want = format!(
            "lowerdir=/var/lib/carrack/snapshots/{:064x}:/var/lib/carrack/snapshots/{:064x},\
             upperdir=/c/upper,workdir=/c/work",
            0, 1
        );
        assert_eq!(opts, OptionString::Absolute(want));
    }

    #[test]
    fn separators_in_paths_are_escaped() {
        let opts =
            option_string(&[PathBuf::from("/a:b,c\\d")], dirs("/u,p", "/w:k"), 4096).unwrap();
        assert_eq!(
            opts,
            OptionString::Absolute(r"lowerdir=/a\:b\,c\\d,upperdir=/u\,p,workdir=/w\:k".into())
        );
    }

    #[test]
    fn the_page_holds_the_options_and_their_nul() {
        let upper = dirs("/u", "/w");
        let len = |n| {
            let OptionString::Absolute(s) = option_string(&layers(n), upper, 1 << 20).unwrap()
            else {
                panic!("absolute under a large page");
            };
            s.len()
        };
        let one = len(1);
        assert!(matches!(
            option_string(&layers(1), upper, one + 1),
            Ok(OptionString::Absolute(_))
        ));
        assert!(matches!(
            option_string(&layers(1), upper, one),
            Ok(OptionString::Relative(_))
        ));
        // About 90 bytes a layer: 40 fit in a 4 KiB page, 50 do not.
        assert!(len(40) < 4096 && len(50) >= 4096);
    }

    #[test]
    fn many_layers_get_short_relative_names() {
        let opts = option_string(&layers(500), dirs("/u", "/w"), 4096).unwrap();
        let OptionString::Relative(s) = opts else {
            panic!("500 layers cannot be absolute: {opts:?}");
        };
        let lowers = s
            .strip_prefix("lowerdir=")
            .and_then(|s| s.strip_suffix(",upperdir=/u,workdir=/w"))
            .unwrap();
        let names: Vec<&str> = lowers.split(':').collect();
        assert_eq!(names.len(), 500);
        assert_eq!((names[0], names[499]), ("0", "499"));
        assert!(s.len() < 4096, "{}", s.len());
    }

    #[test]
    fn too_many_layers_for_a_page_are_an_error_naming_the_count() {
        let e = option_string(&layers(2000), dirs("/u", "/w"), 4096).unwrap_err();
        assert!(e.contains("2000 lower layers"), "{e}");
    }
}
