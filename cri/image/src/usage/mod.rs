//! Disk usage, kept as a cache that stays right so that the polled calls
//! (ContainerStats and its List form, PodSandboxStats, ImageFsInfo) read
//! figures instead of walking file trees: kubelet asks for every container
//! every ten seconds, and walking every writable layer each time is a walk
//! of the whole node.
//!
//! - The image file system ([`image_fs`]) changes only on pulls, imports,
//!   removals and collections: its figure is updated on those events.
//! - Container writable layers (the overlay upper dirs) change whenever
//!   their containers write. One background thread ([`refresher`]) walks
//!   them ([`walk`]) on a schedule ([`schedule`]) and keeps an inotify
//!   watch on each of their directories, so that a layer nobody writes to
//!   is not walked again: a layer is walked within one refresh interval
//!   (`refresh`, 10 s by default as kubelet's housekeeping and containerd's
//!   `stats_collect_period`) of a change inotify reports, every interval
//!   when it cannot be watched (more than [`MAX_WATCHES_PER_LAYER`]
//!   directories, no inotify watches left), and every
//!   [`schedule::FULL_EVERY`] intervals otherwise, for what inotify does not
//!   report (writes through a shared mapping). Walking takes at most
//!   [`schedule::MAX_DUTY`] of one CPU.
//!
//! Why not the alternatives:
//! - Walking every layer each interval (containerd's snapshot syncer) costs
//!   the same on a quiet node as on a busy one, and scales with the files
//!   of the whole node; here a quiet layer costs its watches.
//! - The kernel's own accounting, project quotas (what kubelet's
//!   `LocalStorageCapacityIsolationFSQuotaMonitoring` uses), gives exact
//!   figures without walking, but only on XFS, or ext4 made with the
//!   `project` feature, mounted with `prjquota`: neither the development
//!   hosts nor most nodes' `/var/lib` have it. It remains the better source
//!   where present.
//! - fanotify marks whole file systems: carrackd would be told of every
//!   write on `/var/lib`'s file system (the node's logs and databases
//!   too) and map each back to a layer by file handle. inotify on each
//!   layer directory is told of that layer's changes only, works on every
//!   kernel Carrack supports and, overlayfs writing through to the upper
//!   dir's files, sees what a container writes.

pub mod image_fs;
pub mod refresher;
pub mod schedule;
pub mod walk;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::FsUsage;

/// A layer with more directories than this is walked every interval
/// instead of being watched.
pub const MAX_WATCHES_PER_LAYER: usize = 1024;

/// One registered writable layer.
#[derive(Debug)]
struct Layer {
    upper: PathBuf,
    /// Tells a registration from a later one under the same id.
    generation: u64,
    /// The last figure, when measured.
    usage: Option<FsUsage>,
}

/// A change to the set of layers, for the refresher.
#[derive(Debug)]
enum Change {
    Added(String),
    Removed(String),
}

/// What the handle and the refresher share.
#[derive(Debug)]
struct Shared {
    layers: Mutex<HashMap<String, Layer>>,
    /// Notified when a figure is stored.
    measured: Condvar,
    /// Wakes the refresher (a change, or the end).
    wake: EventFd,
    stop: AtomicBool,
}

impl Shared {
    fn wake(&self) {
        // A full counter still wakes the reader.
        let _ = self.wake.write(1);
    }
}

/// The writable layers' usage, refreshed in the background.
#[derive(Debug)]
pub struct WritableLayers {
    shared: Arc<Shared>,
    changes: Sender<Change>,
    generations: AtomicU64,
}

impl WritableLayers {
    /// Starts the refresher thread; changed layers are walked again within
    /// `refresh`.
    pub fn start(refresh: Duration) -> std::io::Result<WritableLayers> {
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let shared = Arc::new(Shared {
            layers: Mutex::new(HashMap::new()),
            measured: Condvar::new(),
            wake,
            stop: AtomicBool::new(false),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("disk-usage".into())
            .spawn(move || refresher::run(&s, rx, refresh.max(Duration::from_millis(100))))?;
        Ok(WritableLayers {
            shared,
            changes: tx,
            generations: AtomicU64::new(0),
        })
    }

    fn layers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Layer>> {
        self.shared.layers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the layer of container `id` at `upper`, with a first figure
    /// when the caller knows it (an upper dir just made is empty).
    pub fn register(&self, id: &str, upper: PathBuf, known: Option<FsUsage>) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        self.layers().insert(
            id.to_owned(),
            Layer {
                upper,
                generation,
                usage: known,
            },
        );
        let _ = self.changes.send(Change::Added(id.to_owned()));
        self.shared.wake();
    }

    /// Forgets the layer of container `id`.
    pub fn unregister(&self, id: &str) {
        if self.layers().remove(id).is_some() {
            let _ = self.changes.send(Change::Removed(id.to_owned()));
            self.shared.wake();
        }
    }

    /// The last figure of container `id`'s layer: None when it is not
    /// registered, `Some(None)` when not measured yet.
    pub fn get(&self, id: &str) -> Option<Option<FsUsage>> {
        self.layers().get(id).map(|l| l.usage.clone())
    }

    /// The first figure of `id`'s layer from a walk that started after
    /// `after`, waiting up to `timeout` for it.
    pub fn measured_after(
        &self,
        id: &str,
        after: SystemTime,
        timeout: Duration,
    ) -> Option<FsUsage> {
        let deadline = Instant::now() + timeout;
        let mut layers = self.layers();
        loop {
            let usage = layers.get(id)?.usage.as_ref();
            if let Some(u) = usage.filter(|u| u.measured_at.is_some_and(|at| at > after)) {
                return Some(u.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            layers = self
                .shared
                .measured
                .wait_timeout(layers, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Every layer's last figure, summed, as the usage of `path`.
    pub fn total(&self, path: PathBuf) -> FsUsage {
        let mut total = FsUsage {
            path,
            measured_at: Some(SystemTime::now()),
            ..Default::default()
        };
        for u in self.layers().values().filter_map(|l| l.usage.as_ref()) {
            total.used_bytes += u.used_bytes;
            total.inodes_used += u.inodes_used;
            total.measured_at = total.measured_at.min(u.measured_at);
        }
        total
    }
}

impl Drop for WritableLayers {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake();
    }
}
