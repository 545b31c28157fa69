//! The CNI config in force, cached and kept fresh by an inotify watch on
//! each conf dir, so `status()` and pod setup do not list and parse the
//! directories on every call.
//!
//! The watch's queue is drained by the caller before the cache is used
//! (non-blocking reads of the inotify fd, no background thread): the
//! kernel queues an event before the `write`/`rename`/`unlink` that caused
//! it returns, so a config written just before a `status()` call is always
//! seen by that call. (The `notify` crate was not taken for this reason:
//! it delivers events from a thread of its own, which a call right after a
//! write can overtake.)
//!
//! A directory that cannot be watched (it does not exist yet, or inotify
//! is unavailable) makes every call re-read the directories, as before,
//! and the watch is tried again on each call, so a conf dir created later
//! is watched from then on. A removed or renamed conf dir drops its watch
//! and goes back to re-reading until it is back.

use std::path::PathBuf;
use std::sync::Mutex;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use crate::cni::ConfList;

#[derive(Debug)]
struct State {
    inotify: Option<Inotify>,
    /// The watch of each conf dir, when there is one.
    watches: Vec<Option<WatchDescriptor>>,
    /// The cache is valid unless an event came since it was read.
    fresh: bool,
    cached: Option<ConfList>,
}

/// Cached first CNI config of a list of conf dirs.
#[derive(Debug)]
pub struct ConfWatch {
    dirs: Vec<PathBuf>,
    state: Mutex<State>,
}

impl ConfWatch {
    /// Watches `dirs` (nothing is read until the first [`Self::current`]).
    pub fn new(dirs: &[PathBuf]) -> Self {
        let inotify = Inotify::init()
            .inspect_err(|e| tracing::warn!(error = %e, "inotify unavailable: CNI conf dirs are re-read per call"))
            .ok();
        Self {
            dirs: dirs.to_vec(),
            state: Mutex::new(State {
                inotify,
                watches: vec![None; dirs.len()],
                fresh: false,
                cached: None,
            }),
        }
    }

    /// The first valid config by name, or None when there is none.
    pub fn current(&self) -> Option<ConfList> {
        let mut st = self.state.lock().expect("conf watch lock");
        if st.drain() || !st.fresh {
            // Watches first, then the read: a change after the read is an
            // event for the next call.
            st.arm(&self.dirs);
            st.cached = ConfList::load_first(&self.dirs).ok();
            st.fresh = st.watches.iter().all(Option::is_some);
        }
        st.cached.clone()
    }
}

impl State {
    /// Reads every queued event; true when there was any (or the queue
    /// could not be read, which counts as a change).
    fn drain(&mut self) -> bool {
        let Some(ino) = self.inotify.as_mut() else {
            return true;
        };
        let mut changed = false;
        let mut buf = [0u8; 4096];
        let mut gone = Vec::new();
        loop {
            match ino.read_events(&mut buf) {
                Ok(events) => {
                    let mut any = false;
                    for e in events {
                        any = true;
                        if e.mask.intersects(
                            EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF,
                        ) {
                            gone.push(e.wd.clone());
                        }
                    }
                    if !any {
                        break;
                    }
                    changed = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the CNI conf dir watch");
                    changed = true;
                    break;
                }
            }
        }
        for wd in gone {
            for w in self.watches.iter_mut() {
                if w.as_ref() == Some(&wd) {
                    if let Some(ino) = self.inotify.as_mut() {
                        // Already gone with the directory, or renamed away.
                        let _ = ino.watches().remove(wd.clone());
                    }
                    *w = None;
                }
            }
        }
        changed
    }

    /// Adds the watches that are missing (directories that exist now).
    fn arm(&mut self, dirs: &[PathBuf]) {
        let Some(ino) = self.inotify.as_mut() else {
            return;
        };
        let mask = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MODIFY
            | WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::ATTRIB
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::ONLYDIR;
        for (dir, w) in dirs.iter().zip(self.watches.iter_mut()) {
            if w.is_none() {
                *w = ino.watches().add(dir, mask).ok();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"}]}"#;

    #[test]
    fn sees_a_config_appear_change_and_go_without_delay() {
        let d = tempfile::tempdir().unwrap();
        let w = ConfWatch::new(&[d.path().to_path_buf()]);
        assert!(w.current().is_none());
        let f = d.path().join("10-a.conflist");
        std::fs::write(&f, CONF).unwrap();
        assert_eq!(w.current().unwrap().name, "a");
        std::fs::write(&f, CONF.replace("\"a\"", "\"b\"")).unwrap();
        assert_eq!(w.current().unwrap().name, "b");
        std::fs::remove_file(&f).unwrap();
        assert!(w.current().is_none());
    }

    #[test]
    fn is_cached_while_nothing_changes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("10-a.conflist"), CONF).unwrap();
        let w = ConfWatch::new(&[d.path().to_path_buf()]);
        assert_eq!(w.current().unwrap().name, "a");
        assert!(w.state.lock().unwrap().fresh, "the dir is watched");
        assert_eq!(w.current().unwrap().name, "a");
    }

    #[test]
    fn a_conf_dir_made_later_is_read_and_then_watched() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("net.d");
        let w = ConfWatch::new(std::slice::from_ref(&dir));
        assert!(w.current().is_none());
        assert!(!w.state.lock().unwrap().fresh, "nothing to watch yet");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("10-a.conflist"), CONF).unwrap();
        assert_eq!(w.current().unwrap().name, "a");
        assert!(w.state.lock().unwrap().fresh);
        // The dir removed and made again: still followed.
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(w.current().is_none());
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("20-b.conflist"), CONF.replace("\"a\"", "\"b\"")).unwrap();
        assert_eq!(w.current().unwrap().name, "b");
    }
}
