//! The image file system's usage (blobs and snapshots), kept up to date on
//! the events that change it instead of walked per call: blobs and
//! snapshots are immutable once in place, so the store only changes when a
//! pull or an import adds some and when a removal or a collection deletes
//! some. After each, [`ImageFs::reconcile`] lists the two directories
//! (names only), stats each new blob, walks each new snapshot once, and
//! forgets what is gone.
//!
//! A snapshot's figure is kept in the database (`image_snapshot_usage`),
//! so that opening the store does not walk every image's files again;
//! snapshots without a row (made before this table existed) are walked
//! once when the store opens.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::FsUsage;
use crate::content::ContentStore;
use crate::error::ImageError;
use crate::metadata::Metadata;
use crate::snapshot::Snapshots;

/// Bytes and inodes of one blob or snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Allocated bytes.
    pub bytes: u64,
    /// Inodes.
    pub inodes: u64,
}

impl From<&FsUsage> for Footprint {
    fn from(u: &FsUsage) -> Self {
        Footprint {
            bytes: u.used_bytes,
            inodes: u.inodes_used,
        }
    }
}

#[derive(Debug, Default)]
struct Known {
    blobs: HashMap<String, Footprint>,
    snapshots: HashMap<String, Footprint>,
}

/// The image file system's usage.
#[derive(Debug)]
pub struct ImageFs {
    root: PathBuf,
    known: Mutex<Known>,
}

/// The store's parts [`ImageFs`] reads.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    /// Blobs.
    pub content: &'a ContentStore,
    /// Unpacked layers.
    pub snapshots: &'a Snapshots,
    /// Where snapshot figures are kept.
    pub db: &'a Metadata,
}

fn file_footprint(path: &Path) -> Option<Footprint> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).ok()?;
    Some(Footprint {
        bytes: m.blocks() * 512,
        inodes: 1,
    })
}

impl ImageFs {
    /// The usage of the store under `root`, from the recorded snapshot
    /// figures and the blobs present.
    pub fn open(root: &Path, parts: Parts<'_>) -> Result<ImageFs, ImageError> {
        let fs = ImageFs {
            root: root.to_owned(),
            known: Mutex::new(Known {
                blobs: HashMap::new(),
                snapshots: parts.db.snapshot_usages()?,
            }),
        };
        fs.reconcile(parts)?;
        Ok(fs)
    }

    /// Brings the figures in line with what is on disk after blobs or
    /// snapshots were added or deleted.
    pub fn reconcile(&self, parts: Parts<'_>) -> Result<(), ImageError> {
        let blobs: HashSet<String> = parts.content.list()?.into_iter().collect();
        let snapshots: HashSet<String> = parts.snapshots.list()?.into_iter().collect();
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.blobs.retain(|d, _| blobs.contains(d));
        for d in blobs {
            if !known.blobs.contains_key(&d)
                && let Some(f) = file_footprint(&parts.content.path(&d)?)
            {
                known.blobs.insert(d, f);
            }
        }
        let gone: Vec<String> = known
            .snapshots
            .keys()
            .filter(|c| !snapshots.contains(*c))
            .cloned()
            .collect();
        for c in gone {
            known.snapshots.remove(&c);
            parts.db.delete_snapshot_usage(&c)?;
        }
        for c in snapshots {
            if known.snapshots.contains_key(&c) {
                continue;
            }
            // A snapshot removed meanwhile is simply not counted.
            if let Ok(u) = super::walk::measure(&parts.snapshots.path(&c), &mut |_| {}) {
                let f = Footprint::from(&u);
                parts.db.put_snapshot_usage(&c, f)?;
                known.snapshots.insert(c, f);
            }
        }
        Ok(())
    }

    /// Blobs, snapshots and the store's own directories.
    pub fn usage(&self) -> FsUsage {
        let mut usage = FsUsage {
            path: self.root.clone(),
            measured_at: Some(SystemTime::now()),
            ..Default::default()
        };
        let dirs = ["content", "content/sha256", "content/ingest", "snapshots"];
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        for f in dirs
            .iter()
            .filter_map(|d| file_footprint(&self.root.join(d)))
            .chain(known.blobs.values().copied())
            .chain(known.snapshots.values().copied())
        {
            usage.used_bytes += f.bytes;
            usage.inodes_used += f.inodes;
        }
        usage
    }
}
