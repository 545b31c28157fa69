//! When each writable layer is walked next: the refresher's decisions,
//! kept apart from its I/O so that they can be tested with made-up clocks.
//!
//! A layer is due
//! - at once when it was never measured;
//! - one refresh interval after its last walk when something changed in it
//!   (an inotify event) or when it is not watched;
//! - [`FULL_EVERY`] intervals after its last walk otherwise, a safety net
//!   for what inotify does not report (writes through a shared mapping).
//!
//! And the budget: after a walk that took `d` the refresher rests
//! `d × (1 / MAX_DUTY − 1)` before the next, so walking never takes more
//! than [`MAX_DUTY`] of one CPU; on a node whose layers take longer than
//! that to walk, figures get older instead of the node getting slower.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Quiet, watched layers are walked every `FULL_EVERY` refresh intervals.
pub const FULL_EVERY: u32 = 6;

/// The share of one CPU that walking may take.
pub const MAX_DUTY: f64 = 0.25;

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// When the last walk started.
    walked_at: Option<Instant>,
    /// Something changed since the last walk started.
    dirty: bool,
    /// Every directory of the layer has a watch.
    watched: bool,
}

/// The walk schedule of every registered layer.
#[derive(Debug)]
pub struct Schedule {
    refresh: Duration,
    layers: HashMap<String, Entry>,
    /// No walk starts before this (the budget).
    rest_until: Option<Instant>,
}

impl Schedule {
    /// A schedule refreshing changed layers every `refresh`.
    pub fn new(refresh: Duration) -> Schedule {
        Schedule {
            refresh,
            layers: HashMap::new(),
            rest_until: None,
        }
    }

    /// Adds a layer, due at once.
    pub fn add(&mut self, id: &str) {
        self.layers.insert(id.to_owned(), Entry::default());
    }

    /// Forgets a layer.
    pub fn remove(&mut self, id: &str) {
        self.layers.remove(id);
    }

    /// Whether `id` is scheduled.
    pub fn contains(&self, id: &str) -> bool {
        self.layers.contains_key(id)
    }

    /// Something changed in `id`; true when it was not known to be dirty
    /// (its watches can go: one event is all the walk needs).
    pub fn touched(&mut self, id: &str) -> bool {
        match self.layers.get_mut(id) {
            Some(e) if !e.dirty => {
                e.dirty = true;
                e.watched = false;
                true
            }
            _ => false,
        }
    }

    /// Every layer may have changed (the event queue overflowed).
    pub fn touch_all(&mut self) {
        for e in self.layers.values_mut() {
            e.dirty = true;
            e.watched = false;
        }
    }

    /// A walk of `id` starts at `now`: what changes from here on is the
    /// next walk's.
    pub fn walk_started(&mut self, id: &str, now: Instant) {
        if let Some(e) = self.layers.get_mut(id) {
            e.walked_at = Some(now);
            e.dirty = false;
        }
    }

    /// The walk of `id` that started at `started` ended at `now`;
    /// `watched` says whether it left a watch on every directory.
    pub fn walk_ended(&mut self, id: &str, started: Instant, now: Instant, watched: bool) {
        if let Some(e) = self.layers.get_mut(id) {
            // An event during the walk dropped the watches again.
            e.watched = watched && !e.dirty;
        }
        let took = now.saturating_duration_since(started);
        self.rest_until = Some(now + took.mul_f64(1.0 / MAX_DUTY - 1.0));
    }

    fn due_at(&self, e: &Entry) -> Option<Instant> {
        let last = e.walked_at?;
        Some(if e.dirty || !e.watched {
            last + self.refresh
        } else {
            last + self.refresh * FULL_EVERY
        })
    }

    /// The layer to walk at `now`, if one is due and the budget allows: the
    /// most overdue (never measured first).
    pub fn next(&self, now: Instant) -> Option<String> {
        if self.rest_until.is_some_and(|r| r > now) {
            return None;
        }
        self.layers
            .iter()
            .map(|(id, e)| (self.due_at(e), id))
            .filter(|(due, _)| due.is_none_or(|d| d <= now))
            .min()
            .map(|(_, id)| id.clone())
    }

    /// How long the refresher may sleep from `now` (None: until an event).
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        let due = self
            .layers
            .values()
            .map(|e| self.due_at(e).unwrap_or(now))
            .min()?;
        let at = match self.rest_until {
            Some(r) if r > due => r,
            _ => due,
        };
        Some(at.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Duration = Duration::from_secs(10);

    /// Walks `id` from `at`, taking `took`, leaving it `watched`.
    fn walk(s: &mut Schedule, id: &str, at: Instant, took: Duration, watched: bool) -> Instant {
        s.walk_started(id, at);
        s.walk_ended(id, at, at + took, watched);
        at + took
    }

    #[test]
    fn new_layers_are_due_at_once_quiet_watched_ones_rarely() {
        let t0 = Instant::now();
        let mut s = Schedule::new(R);
        assert_eq!(s.wait(t0), None, "nothing to walk: wait for events");
        s.add("a");
        assert_eq!(s.next(t0).as_deref(), Some("a"));
        assert_eq!(s.wait(t0), Some(Duration::ZERO));
        walk(&mut s, "a", t0, Duration::ZERO, true);
        assert_eq!(s.next(t0 + R), None, "quiet and watched");
        assert_eq!(s.wait(t0), Some(R * FULL_EVERY));
        assert_eq!(s.next(t0 + R * FULL_EVERY).as_deref(), Some("a"));
    }

    #[test]
    fn a_change_is_walked_within_one_interval_of_the_last_walk() {
        let t0 = Instant::now();
        let mut s = Schedule::new(R);
        s.add("a");
        walk(&mut s, "a", t0, Duration::ZERO, true);
        // Long after the last walk: due at once.
        let later = t0 + R * 3;
        assert!(s.touched("a"));
        assert!(!s.touched("a"), "already dirty");
        assert_eq!(s.next(later).as_deref(), Some("a"));
        // Right after a walk: due one interval after it.
        walk(&mut s, "a", later, Duration::ZERO, true);
        s.touched("a");
        assert_eq!(s.next(later + R / 2), None);
        assert_eq!(s.wait(later + R / 2), Some(R / 2));
        assert_eq!(s.next(later + R).as_deref(), Some("a"));
    }

    #[test]
    fn unwatched_layers_are_walked_every_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(R);
        s.add("big");
        walk(&mut s, "big", t0, Duration::ZERO, false);
        assert_eq!(s.next(t0 + R - Duration::from_millis(1)), None);
        assert_eq!(s.next(t0 + R).as_deref(), Some("big"));
    }

    #[test]
    fn an_event_during_a_walk_keeps_the_layer_dirty() {
        let t0 = Instant::now();
        let mut s = Schedule::new(R);
        s.add("a");
        s.walk_started("a", t0);
        s.touched("a");
        s.walk_ended("a", t0, t0, true);
        assert_eq!(s.next(t0 + R).as_deref(), Some("a"));
    }

    #[test]
    fn the_most_overdue_goes_first_and_the_budget_spaces_walks() {
        let t0 = Instant::now();
        let mut s = Schedule::new(R);
        for id in ["a", "b"] {
            s.add(id);
            walk(&mut s, id, t0, Duration::ZERO, false);
        }
        s.walk_started("b", t0 - R);
        s.walk_ended("b", t0 - R, t0 - R, false);
        assert_eq!(s.next(t0 + R).as_deref(), Some("b"));
        // A walk of 100 ms: no other starts for 300 ms after it.
        let end = walk(&mut s, "b", t0 + R, Duration::from_millis(100), false);
        assert_eq!(s.next(end), None, "resting");
        assert_eq!(s.wait(end), Some(Duration::from_millis(300)));
        assert_eq!(
            s.next(end + Duration::from_millis(300)).as_deref(),
            Some("a")
        );
        s.touch_all();
        s.remove("a");
        assert!(!s.contains("a"));
        assert_eq!(s.next(end + R * 2).as_deref(), Some("b"));
    }
}
