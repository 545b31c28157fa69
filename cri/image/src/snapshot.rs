//! Snapshots: one directory per unpacked layer under `<root>/snapshots/<hex>`,
//! named by the layer's chain id.
//!
//! A snapshot is unpacked into `<root>/snapshots/tmp-…` and renamed to its
//! chain id only once complete and synced, so a snapshot at its final name is
//! always whole; leftovers of a crash or a failed pull are removed at open.
//! The overlay mounts themselves are [`crate::overlay`]'s.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
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
