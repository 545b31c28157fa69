//! The content store: blobs addressed by their sha256 digest under
//! `<root>/content/sha256/<hex>`.
//!
//! A blob is written to `<root>/content/ingest/`, hashed and counted as it is
//! written, fsynced, and renamed into place only when its digest and size match
//! the descriptor, so a blob at its final path has always been verified. Half
//! written ingests are removed when their writer is dropped and when the store
//! opens. [`ContentStore::lock`] gives single-flight per digest: callers hold
//! the digest's lock while checking presence and downloading.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::error::{ImageError, IoContext};

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Content-addressed blob storage.
#[derive(Debug)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a digest is being fetched; others wanting it wait.
#[derive(Debug)]
pub struct BlobLock {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    crate::reference::validate_digest(digest).map_err(|reason| ImageError::InvalidManifest {
        what: "descriptor",
        digest: digest.to_owned(),
        reason,
    })?;
    Ok(&digest["sha256:".len()..])
}

impl ContentStore {
    /// Opens (creating) the store under `dir` and removes stale ingests.
    pub fn open(dir: &Path) -> Result<ContentStore, ImageError> {
        let blobs = dir.join("sha256");
        let ingest = dir.join("ingest");
        fs::create_dir_all(&blobs).ctx(|| format!("create {}", blobs.display()))?;
        if ingest.exists() {
            fs::remove_dir_all(&ingest).ctx(|| format!("clean {}", ingest.display()))?;
        }
        fs::create_dir_all(&ingest).ctx(|| format!("create {}", ingest.display()))?;
        Ok(ContentStore {
            blobs,
            ingest,
            inflight: Mutex::new(HashMap::new()),
        })
    }

    /// Where the blob `digest` lives (whether or not present).
    pub fn path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.blobs.join(digest_hex(digest)?))
    }

    /// The size of the blob if present.
    pub fn size(&self, digest: &str) -> Option<u64> {
        fs::metadata(self.path(digest).ok()?).ok().map(|m| m.len())
    }

    /// Takes the single-flight lock for `digest`.
    pub async fn lock(&self, digest: &str) -> BlobLock {
        let m = {
            let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, v| Arc::strong_count(v) > 1);
            map.entry(digest.to_owned()).or_default().clone()
        };
        BlobLock {
            _guard: m.lock_owned().await,
        }
    }

    /// Reads a present blob of at most `limit` bytes and re-checks its digest.
    pub fn read(&self, digest: &str, limit: u64) -> Result<Vec<u8>, ImageError> {
        let path = self.path(digest)?;
        let f = File::open(&path).ctx(|| format!("open blob {}", path.display()))?;
        let mut out = Vec::new();
        f.take(limit + 1)
            .read_to_end(&mut out)
            .ctx(|| format!("read blob {}", path.display()))?;
        if out.len() as u64 > limit {
            return Err(ImageError::TooLarge {
                what: "blob",
                digest: digest.to_owned(),
                size: out.len() as u64,
                limit,
            });
        }
        let actual = sha256_digest(&out);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                digest: digest.to_owned(),
                expected: digest.to_owned(),
                actual,
            });
        }
        Ok(out)
    }

    /// Stores `bytes`, which must hash to `digest`.
    pub fn write_bytes(&self, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
        if self.size(digest) == Some(bytes.len() as u64) {
            return Ok(());
        }
        let mut w = self.ingest(digest, Some(bytes.len() as u64))?;
        w.write(bytes)?;
        w.commit()
    }

    /// Starts writing the blob `digest` of `size` bytes (when known).
    pub fn ingest(&self, digest: &str, size: Option<u64>) -> Result<Ingest, ImageError> {
        let final_path = self.path(digest)?;
        let tmp = self.ingest.join(format!(
            "{}-{}-{:x}",
            digest_hex(digest)?,
            std::process::id(),
            rand_suffix()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .ctx(|| format!("create {}", tmp.display()))?;
        Ok(Ingest {
            digest: digest.to_owned(),
            size,
            written: 0,
            hasher: Sha256::new(),
            file: Some(file),
            tmp,
            final_path,
            committed: false,
        })
    }

    /// Stores whatever `reader` yields under its own digest, which is returned.
    pub fn write_stream(&self, mut reader: impl Read) -> Result<(String, u64), ImageError> {
        let tmp = self
            .ingest
            .join(format!("stream-{}-{:x}", std::process::id(), rand_suffix()));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .ctx(|| format!("create {}", tmp.display()))?;
        let result = (|| {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 256 << 10];
            let mut n_total = 0u64;
            loop {
                let n = reader
                    .read(&mut buf)
                    .ctx(|| "read archive entry".to_owned())?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n])
                    .ctx(|| format!("write {}", tmp.display()))?;
                n_total += n as u64;
            }
            file.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
            let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
            let dest = self.path(&digest)?;
            fs::rename(&tmp, &dest).ctx(|| format!("rename {} into place", tmp.display()))?;
            Ok((digest, n_total))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Removes the blob `digest` (no error when absent).
    pub fn delete(&self, digest: &str) -> Result<(), ImageError> {
        let p = self.path(digest)?;
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(ImageError::io(format!("remove {}", p.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// Digests of every stored blob.
    pub fn list(&self) -> Result<Vec<String>, ImageError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.blobs).ctx(|| format!("list {}", self.blobs.display()))? {
            let e = e.ctx(|| format!("list {}", self.blobs.display()))?;
            if let Some(n) = e.file_name().to_str() {
                out.push(format!("sha256:{n}"));
            }
        }
        Ok(out)
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (N.fetch_add(1, Ordering::Relaxed) << 48)
}

/// A blob being written; removed on drop unless committed.
#[derive(Debug)]
pub struct Ingest {
    digest: String,
    size: Option<u64>,
    written: u64,
    hasher: Sha256,
    file: Option<File>,
    tmp: PathBuf,
    final_path: PathBuf,
    committed: bool,
}

impl Ingest {
    /// Appends `chunk`; refuses to grow past the declared size.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        self.written += chunk.len() as u64;
        if let Some(size) = self.size
            && self.written > size
        {
            return Err(ImageError::DigestMismatch {
                digest: self.digest.clone(),
                expected: format!("{size} bytes"),
                actual: format!("more than {size} bytes"),
            });
        }
        self.hasher.update(chunk);
        let f = self.file.as_mut().expect("file present until commit");
        f.write_all(chunk)
            .ctx(|| format!("write {}", self.tmp.display()))
    }

    /// Verifies size and digest, fsyncs and renames the blob into place.
    pub fn commit(mut self) -> Result<(), ImageError> {
        if let Some(size) = self.size
            && self.written != size
        {
            return Err(ImageError::DigestMismatch {
                digest: self.digest.clone(),
                expected: format!("{size} bytes"),
                actual: format!("{} bytes", self.written),
            });
        }
        let actual = format!(
            "sha256:{}",
            hex::encode(std::mem::take(&mut self.hasher).finalize())
        );
        if actual != self.digest {
            return Err(ImageError::DigestMismatch {
                digest: self.digest.clone(),
                expected: self.digest.clone(),
                actual,
            });
        }
        let f = self.file.take().expect("file present until commit");
        f.sync_all()
            .ctx(|| format!("fsync {}", self.tmp.display()))?;
        drop(f);
        fs::rename(&self.tmp, &self.final_path)
            .ctx(|| format!("rename {} into place", self.tmp.display()))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_verifies_digest_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let d = sha256_digest(b"hello");
        let mut w = cs.ingest(&d, Some(5)).unwrap();
        w.write(b"hellp").unwrap();
        assert!(matches!(w.commit(), Err(ImageError::DigestMismatch { .. })));
        assert_eq!(cs.size(&d), None);
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
        let mut w = cs.ingest(&d, Some(4)).unwrap();
        assert!(w.write(b"hello").is_err());
        drop(w);
        cs.write_bytes(&d, b"hello").unwrap();
        assert_eq!(cs.read(&d, 10).unwrap(), b"hello");
        assert!(cs.read(&d, 3).is_err());
    }
}
