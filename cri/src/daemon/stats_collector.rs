//! The thread of the background stats collection
//! (`crate::stats::collection`): a pass over every pod and container every
//! `stats_collection_seconds`, and every second a pass over those started
//! since. It holds the daemon only while a pass runs and ends once the
//! daemon is gone.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::warn;

use super::Daemon;
use crate::stats::collection::Pass;

/// How often pods and containers without a sample are looked for.
const NEW_EVERY: Duration = Duration::from_secs(1);

impl Daemon {
    /// Starts the collection when `stats_collection_seconds` asks for one.
    pub fn start_stats_collection(self: &Arc<Self>) {
        let period = self.cfg.stats_collection_seconds;
        if period == 0 {
            return;
        }
        let daemon = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("stats-collector".into())
            .spawn(move || collect(daemon, Duration::from_secs(period)));
        if let Err(e) = spawned {
            warn!("stats collection: starting its thread: {e}; stats are read at each call");
        }
    }
}

/// Runs passes until the daemon is gone: all every `period`, the new ones
/// every second in between.
fn collect(daemon: Weak<Daemon>, period: Duration) {
    let mut next_all = Instant::now();
    loop {
        {
            let Some(d) = daemon.upgrade() else {
                return;
            };
            let pass = if Instant::now() >= next_all {
                next_all = Instant::now() + period;
                Pass::All
            } else {
                Pass::New
            };
            match (d.store.sandboxes(), d.store.containers()) {
                (Ok(sandboxes), Ok(containers)) => {
                    d.sampler.collect(&sandboxes, &containers, pass);
                }
                (Err(e), _) | (_, Err(e)) => warn!("stats collection: {e}"),
            }
        }
        // A period, not a wait for an event: the collection is a clock.
        std::thread::sleep(NEW_EVERY.min(next_all.saturating_duration_since(Instant::now())));
    }
}
