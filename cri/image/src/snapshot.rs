//! Snapshots: one directory per unpacked layer under `<root>/snapshots/<hex>`,
//! named by the layer's chain id, and the overlay mounts that stack them into a
//! container rootfs.
//!
//! A snapshot is unpacked into `<root>/snapshots/tmp-…` and renamed to its
//! chain id only once complete and synced, so a snapshot at its final name is
//! always whole; leftovers of a crash or a failed pull are removed at open.
//!
//! Mounts use the new mount API with one `lowerdir+` parameter per layer
//! (kernel 6.8+), so the number of layers is not bounded by the one-page
//! limit of the classic `mount(2)` option string.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{ImageError, IoContext};

/// Chain ids for a list of diff ids: `chain[0] = diff[0]`,
/// `chain[i] = sha256(chain[i-1] + " " + diff[i])`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

/// The snapshot directory.
#[derive(Debug)]
pub struct Snapshots {
    dir: PathBuf,
}

/// A snapshot being unpacked; removed on drop unless committed.
#[derive(Debug)]
pub struct TmpSnapshot {
    /// Its directory.
    pub path: PathBuf,
    committed: bool,
}

impl Drop for TmpSnapshot {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn hex_of(chain_id: &str) -> &str {
    chain_id.strip_prefix("sha256:").unwrap_or(chain_id)
}

impl Snapshots {
    /// Opens (creating) `dir` and removes unfinished snapshots.
    pub fn open(dir: &Path) -> Result<Snapshots, ImageError> {
        fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        for e in fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))? {
            let e = e.ctx(|| format!("list {}", dir.display()))?;
            if e.file_name().to_string_lossy().starts_with("tmp-") {
                fs::remove_dir_all(e.path()).ctx(|| format!("remove {}", e.path().display()))?;
            }
        }
        Ok(Snapshots {
            dir: dir.to_owned(),
        })
    }

    /// The directory of snapshot `chain_id`.
    pub fn path(&self, chain_id: &str) -> PathBuf {
        self.dir.join(hex_of(chain_id))
    }

    /// Whether snapshot `chain_id` is complete.
    pub fn exists(&self, chain_id: &str) -> bool {
        self.path(chain_id).is_dir()
    }

    /// A fresh directory to unpack into.
    pub fn tmp(&self) -> Result<TmpSnapshot, ImageError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let path = self.dir.join(format!(
            "tmp-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).ctx(|| format!("create {}", path.display()))?;
        Ok(TmpSnapshot {
            path,
            committed: false,
        })
    }

    /// Flushes everything unpacked so far to disk (one `syncfs` for all the
    /// snapshots of a pull, before they are committed).
    pub fn sync(&self) -> Result<(), ImageError> {
        let dir = fs::File::open(&self.dir).ctx(|| format!("open {}", self.dir.display()))?;
        // SAFETY: syncfs(2) on a valid open directory fd.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(ImageError::io(
                format!("syncfs {}", self.dir.display()),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Renames `tmp` to `chain_id`; the caller has [`Snapshots::sync`]ed.
    pub fn commit(&self, mut tmp: TmpSnapshot, chain_id: &str) -> Result<(), ImageError> {
        let dest = self.path(chain_id);
        fs::rename(&tmp.path, &dest)
            .ctx(|| format!("rename {} to {}", tmp.path.display(), dest.display()))?;
        tmp.committed = true;
        Ok(())
    }

    /// Removes snapshot `chain_id` (no error when absent).
    pub fn remove(&self, chain_id: &str) -> Result<(), ImageError> {
        let p = self.path(chain_id);
        match fs::remove_dir_all(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(ImageError::io(format!("remove {}", p.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// Chain ids of every complete snapshot.
    pub fn list(&self) -> Result<Vec<String>, ImageError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).ctx(|| format!("list {}", self.dir.display()))? {
            let e = e.ctx(|| format!("list {}", self.dir.display()))?;
            let n = e.file_name().to_string_lossy().into_owned();
            if n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.push(format!("sha256:{n}"));
            }
        }
        Ok(out)
    }
}

fn cstr(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

// Constants of the new mount API (linux/mount.h).
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Reads the messages the kernel left on a filesystem context fd.
fn fs_context_log(fd: &OwnedFd) -> String {
    let mut msgs = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        // SAFETY: reading into a valid buffer from an fd we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        msgs.push(String::from_utf8_lossy(&buf[..n as usize]).into_owned());
    }
    msgs.join("; ")
}

fn fsconfig_string(fd: &OwnedFd, key: &str, value: &[u8]) -> io::Result<()> {
    let k = cstr(key.as_bytes())?;
    let v = cstr(value)?;
    // SAFETY: fsconfig(2) with a valid fs context fd and NUL-terminated key
    // and value strings that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fd.as_raw_fd(),
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

/// Mounts an overlay of `lowers` (topmost first) with `upper` and `work` at
/// `target`.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), ImageError> {
    let fail = |what: &str, e: io::Error, log: String| ImageError::Mount {
        target: target.to_owned(),
        reason: if log.is_empty() {
            format!("{what}: {e}")
        } else {
            format!("{what}: {e} ({log})")
        },
    };
    let name = cstr(b"overlay").expect("no NUL");
    // SAFETY: fsopen(2) with a NUL-terminated fs name; the returned fd is
    // checked before use.
    let raw = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
    if raw < 0 {
        return Err(fail(
            "fsopen overlay",
            io::Error::last_os_error(),
            String::new(),
        ));
    }
    // SAFETY: `raw` is a new fd we own exclusively.
    let fsfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    for l in lowers {
        fsconfig_string(&fsfd, "lowerdir+", l.as_os_str().as_bytes()).map_err(|e| {
            fail(
                &format!("lowerdir+ {}", l.display()),
                e,
                fs_context_log(&fsfd),
            )
        })?;
    }
    fsconfig_string(&fsfd, "upperdir", upper.as_os_str().as_bytes())
        .map_err(|e| fail("upperdir", e, fs_context_log(&fsfd)))?;
    fsconfig_string(&fsfd, "workdir", work.as_os_str().as_bytes())
        .map_err(|e| fail("workdir", e, fs_context_log(&fsfd)))?;
    // SAFETY: fsconfig(2) CMD_CREATE takes no key or value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fsfd.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(fail("create overlay", e, fs_context_log(&fsfd)));
    }
    // SAFETY: fsmount(2) on a created fs context fd.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fsfd.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
    if m < 0 {
        return Err(fail("fsmount", io::Error::last_os_error(), String::new()));
    }
    // SAFETY: `m` is a new mount fd we own exclusively.
    let mfd = unsafe { OwnedFd::from_raw_fd(m as i32) };
    let empty = cstr(b"").expect("no NUL");
    let t =
        cstr(target.as_os_str().as_bytes()).map_err(|e| fail("target path", e, String::new()))?;
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
        return Err(fail(
            "move_mount",
            io::Error::last_os_error(),
            String::new(),
        ));
    }
    Ok(())
}

/// Detaches the mount at `target`; not mounted is not an error.
pub fn unmount(target: &Path) -> Result<(), ImageError> {
    match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(ImageError::Mount {
            target: target.to_owned(),
            reason: format!("umount: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        let want = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{a} {b}").as_bytes()))
        );
        assert_eq!(c[1], want);
    }
}
