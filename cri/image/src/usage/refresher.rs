//! The refresher thread: walks writable layers as [`Schedule`] says, keeps
//! an inotify watch on each directory of the layers it walked, and stores
//! the figures where [`WritableLayers`](super::WritableLayers) reads them.
//!
//! The first event of a layer marks it changed and removes its watches:
//! a container writing all the time costs one event per walk, not one per
//! write. The walk puts them back, each before its directory is read, so
//! no change between two walks goes unseen.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::schedule::Schedule;
use super::{Change, MAX_WATCHES_PER_LAYER, Shared, walk};

/// Changes to a directory's entries or to a file's data: what moves usage.
fn mask() -> WatchMask {
    WatchMask::MODIFY
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ONLYDIR
}

/// The watches of every layer.
struct Watches {
    inotify: Option<Inotify>,
    layer_of: HashMap<WatchDescriptor, String>,
    of_layer: HashMap<String, Vec<WatchDescriptor>>,
}

impl Watches {
    fn new() -> Watches {
        let inotify = Inotify::init()
            .inspect_err(|e| {
                tracing::warn!(error = %e, "inotify unavailable: every writable layer is walked each refresh interval")
            })
            .ok();
        Watches {
            inotify,
            layer_of: HashMap::new(),
            of_layer: HashMap::new(),
        }
    }

    /// Removes the watches of layer `id`.
    fn drop_layer(&mut self, id: &str) {
        let Some(wds) = self.of_layer.remove(id) else {
            return;
        };
        for wd in wds {
            self.layer_of.remove(&wd);
            if let Some(i) = &self.inotify {
                // Already gone with its directory: nothing to do.
                let _ = i.watches().remove(wd);
            }
        }
    }

    /// Replaces layer `id`'s watches with `wds` (those of its directories
    /// still there are the same descriptors).
    fn set_layer(&mut self, id: &str, wds: Vec<WatchDescriptor>) {
        let old = self.of_layer.remove(id).unwrap_or_default();
        for wd in old {
            if !wds.contains(&wd) {
                self.layer_of.remove(&wd);
                if let Some(i) = &self.inotify {
                    let _ = i.watches().remove(wd);
                }
            }
        }
        for wd in &wds {
            self.layer_of.insert(wd.clone(), id.to_owned());
        }
        if !wds.is_empty() {
            self.of_layer.insert(id.to_owned(), wds);
        }
    }

    /// Reads every queued event and marks the layers they name as changed
    /// (dropping their watches: one event is all the next walk needs).
    fn drain(&mut self, schedule: &mut Schedule) {
        let mut buffer = [0u8; 16 * 1024];
        let mut touched = Vec::new();
        let mut overflow = false;
        let Some(inotify) = self.inotify.as_mut() else {
            return;
        };
        loop {
            let events = match inotify.read_events(&mut buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reading inotify events: every writable layer counts as changed");
                    overflow = true;
                    break;
                }
            };
            for ev in events {
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    overflow = true;
                } else if let Some(id) = self.layer_of.get(&ev.wd) {
                    touched.push(id.clone());
                }
            }
        }
        if overflow {
            schedule.touch_all();
            let ids: Vec<String> = self.of_layer.keys().cloned().collect();
            for id in ids {
                self.drop_layer(&id);
            }
        }
        for id in touched {
            if schedule.touched(&id) {
                self.drop_layer(&id);
            }
        }
    }
}

/// The thread's body: until the handle is dropped.
pub(super) fn run(shared: &Shared, changes: Receiver<Change>, refresh: Duration) {
    let mut schedule = Schedule::new(refresh);
    let mut watches = Watches::new();
    while !shared.stop.load(Ordering::Relaxed) {
        while let Ok(change) = changes.try_recv() {
            match change {
                Change::Added(id) => schedule.add(&id),
                Change::Removed(id) => {
                    schedule.remove(&id);
                    watches.drop_layer(&id);
                }
            }
        }
        watches.drain(&mut schedule);
        let now = Instant::now();
        if let Some(id) = schedule.next(now) {
            refresh_layer(shared, &mut schedule, &mut watches, &id, now);
            continue;
        }
        wait(shared, &watches, schedule.wait(now));
    }
}

/// Walks layer `id` and stores its figure, unless it was removed or
/// registered again meanwhile.
fn refresh_layer(
    shared: &Shared,
    schedule: &mut Schedule,
    watches: &mut Watches,
    id: &str,
    now: Instant,
) {
    let found = {
        let layers = shared.layers.lock().unwrap_or_else(|e| e.into_inner());
        layers.get(id).map(|l| (l.upper.clone(), l.generation))
    };
    let Some((upper, generation)) = found else {
        schedule.remove(id);
        watches.drop_layer(id);
        return;
    };
    schedule.walk_started(id, now);
    let started_at = SystemTime::now();
    let mut wds = Vec::new();
    let mut watched = watches.inotify.is_some();
    let measured = walk::measure(&upper, &mut |fd| {
        if !watched {
            return;
        }
        let Some(inotify) = &watches.inotify else {
            return;
        };
        if wds.len() >= MAX_WATCHES_PER_LAYER {
            watched = false;
            return;
        }
        match inotify.watches().add(walk::fd_path(fd), mask()) {
            Ok(wd) => wds.push(wd),
            Err(e) => {
                tracing::debug!(layer = id, error = %e, "not watched: walked every interval");
                watched = false;
            }
        }
    });
    if !watched {
        // Partly watched is walked every interval anyway.
        if let Some(i) = &watches.inotify {
            for wd in wds.drain(..) {
                let _ = i.watches().remove(wd);
            }
        }
    }
    let stored = {
        let mut layers = shared.layers.lock().unwrap_or_else(|e| e.into_inner());
        match (layers.get_mut(id), measured) {
            (Some(l), Ok(mut usage)) if l.generation == generation => {
                usage.measured_at = Some(started_at);
                l.usage = Some(usage);
                true
            }
            (Some(l), Err(e)) if l.generation == generation => {
                tracing::debug!(layer = id, error = %e, "walking the writable layer");
                true
            }
            _ => false,
        }
    };
    if stored {
        watches.set_layer(id, wds);
        shared.measured.notify_all();
    } else if let Some(i) = &watches.inotify {
        for wd in wds {
            let _ = i.watches().remove(wd);
        }
    }
    schedule.walk_ended(id, now, Instant::now(), watched);
}

/// Sleeps until an inotify event, a change, the end, or `timeout`.
fn wait(shared: &Shared, watches: &Watches, timeout: Option<Duration>) {
    let timeout = match timeout {
        // Whole milliseconds, rounded up: waking early only loops again.
        Some(d) => {
            PollTimeout::try_from(d + Duration::from_micros(999)).unwrap_or(PollTimeout::MAX)
        }
        None => PollTimeout::NONE,
    };
    let mut fds = vec![PollFd::new(shared.wake.as_fd(), PollFlags::POLLIN)];
    if let Some(i) = &watches.inotify {
        fds.push(PollFd::new(i.as_fd(), PollFlags::POLLIN));
    }
    // EINTR and the like: the loop looks again.
    let _ = poll(&mut fds, timeout);
    // Empties the wake counter (nothing to read is fine).
    let _ = shared.wake.read();
}
