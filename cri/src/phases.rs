//! Where the time of a pod's start and stop goes: RunPodSandbox,
//! CreateContainer, StartContainer and StopPodSandbox timed phase by phase
//! (the pod network's CNI ADD and DEL, the namespaces, the rootfs, the
//! spec, the shim's start, the OCI runtime's create and start, the store).
//!
//! A call's [`PhaseClock`] times each phase two ways:
//!
//! - a `tracing` span `phase{phase=…}` (DEBUG, target `carrackd::phases`)
//!   inside the call's `pod_lifecycle{rpc=… id=…}` span. carrackd's logger
//!   prints a span's close with its busy and idle time, and the clock logs
//!   one line per call with every phase's time and the total, so
//!   `RUST_LOG=info,carrackd::phases=debug` (text or `--log-format json`)
//!   shows where a slow pod start went;
//! - the Prometheus histogram `carrack_pod_start_phase_seconds{rpc,phase}`
//!   (`crate::telemetry`): one observation per call and phase it went
//!   through, the sum of the phase's occurrences (RunPodSandbox writes the
//!   store several times: one `db` observation), and `other`, the call's
//!   time in no phase (checks, lookups in memory, events, waits for the
//!   records lock: carrackd's own work between the phases).
//!
//! The OCI runtime's time is the shim's measure (spawn to exit of the
//! runtime binary, in the shim's create and start answers); `shim_call` is
//! the rest of those calls. So carrackd's own cost in a pod start is
//! everything but `network_add` (the CNI plugins) and `runtime_*`.
//!
//! This module knows nothing of the requests: the managers
//! (`crate::sandbox`, `crate::container`) say what each phase is.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::telemetry::Telemetry;

/// The calls timed phase by phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// RunPodSandbox.
    RunPodSandbox,
    /// CreateContainer.
    CreateContainer,
    /// StartContainer.
    StartContainer,
    /// StopPodSandbox.
    StopPodSandbox,
}

impl Rpc {
    /// The CRI method's name.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::RunPodSandbox => "RunPodSandbox",
            Rpc::CreateContainer => "CreateContainer",
            Rpc::StartContainer => "StartContainer",
            Rpc::StopPodSandbox => "StopPodSandbox",
        }
    }
}

/// A phase of a pod's start or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The store: reads and writes of the records (SQLite).
    Db,
    /// The pod's namespaces pinned (RunPodSandbox) or released
    /// (StopPodSandbox).
    Namespaces,
    /// The pod cgroup made.
    PodCgroup,
    /// The infra process of a shared PID namespace started or killed.
    Infra,
    /// The pod's files (hostname, hosts, resolv.conf, shm).
    PodFiles,
    /// The pod network's setup: the CNI chain's ADD (or the built-in
    /// bridge's).
    NetworkAdd,
    /// The pod network's teardown: the CNI chain's DEL.
    NetworkDel,
    /// The container's rootfs: the image's snapshot mounted (and shifted
    /// into a pod user namespace).
    Rootfs,
    /// The container's OCI spec generated and written.
    Spec,
    /// The container's shim started and connected.
    ShimStart,
    /// The shim's part of its create or start call: the call's time less
    /// the runtime's.
    ShimCall,
    /// The OCI runtime binary's `create`, as the shim timed it.
    RuntimeCreate,
    /// The OCI runtime binary's `start`, as the shim timed it.
    RuntimeStart,
    /// StopPodSandbox: the pod's containers killed and their exits
    /// recorded.
    StopContainers,
    /// The call's time in no other phase.
    Other,
}

/// How many phases there are.
const PHASES: usize = Phase::Other as usize + 1;

impl Phase {
    /// The phase's label.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Db => "db",
            Phase::Namespaces => "namespaces",
            Phase::PodCgroup => "pod_cgroup",
            Phase::Infra => "infra",
            Phase::PodFiles => "pod_files",
            Phase::NetworkAdd => "network_add",
            Phase::NetworkDel => "network_del",
            Phase::Rootfs => "rootfs",
            Phase::Spec => "spec",
            Phase::ShimStart => "shim_start",
            Phase::ShimCall => "shim_call",
            Phase::RuntimeCreate => "runtime_create",
            Phase::RuntimeStart => "runtime_start",
            Phase::StopContainers => "stop_containers",
            Phase::Other => "other",
        }
    }

    fn all() -> [Phase; PHASES] {
        [
            Phase::Db,
            Phase::Namespaces,
            Phase::PodCgroup,
            Phase::Infra,
            Phase::PodFiles,
            Phase::NetworkAdd,
            Phase::NetworkDel,
            Phase::Rootfs,
            Phase::Spec,
            Phase::ShimStart,
            Phase::ShimCall,
            Phase::RuntimeCreate,
            Phase::RuntimeStart,
            Phase::StopContainers,
            Phase::Other,
        ]
    }
}

/// Times the phases of one call; dropped, it records them (a failed or
/// cancelled call's too: its phases happened).
#[derive(Debug)]
pub struct PhaseClock<'a> {
    telemetry: &'a Telemetry,
    rpc: Rpc,
    span: tracing::Span,
    started: Instant,
    /// Per phase (by its discriminant), the time spent in it so far; None
    /// for a phase the call did not go through.
    spent: Mutex<[Option<Duration>; PHASES]>,
}

impl<'a> PhaseClock<'a> {
    /// Starts timing a call of `rpc`, recorded in `telemetry`.
    pub fn start(telemetry: &'a Telemetry, rpc: Rpc) -> PhaseClock<'a> {
        PhaseClock {
            telemetry,
            rpc,
            span: tracing::debug_span!(
                target: "carrackd::phases",
                "pod_lifecycle",
                rpc = rpc.name(),
                id = tracing::field::Empty
            ),
            started: Instant::now(),
            spent: Mutex::new([None; PHASES]),
        }
    }

    /// Names the sandbox or container the call is about, in its span.
    pub fn set_id(&self, id: &str) {
        self.span.record("id", id);
    }

    fn phase_span(&self, phase: Phase) -> tracing::Span {
        tracing::debug_span!(target: "carrackd::phases", parent: &self.span, "phase", phase = phase.name())
    }

    /// Adds `took` to `phase`'s time.
    fn add(&self, phase: Phase, took: Duration) {
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut spent[phase as usize];
        *slot = Some(slot.unwrap_or_default() + took);
    }

    /// Moves the OCI runtime's time, `runtime_nanos` as the shim measured
    /// it (0: not reported), out of the shim call just timed as
    /// [`Phase::ShimCall`] into `runtime` ([`Phase::RuntimeCreate`] or
    /// [`Phase::RuntimeStart`]).
    pub fn split_runtime(&self, runtime: Phase, runtime_nanos: u64) {
        if runtime_nanos == 0 {
            return;
        }
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        let shim = spent[Phase::ShimCall as usize].unwrap_or_default();
        let moved = shim.min(Duration::from_nanos(runtime_nanos));
        spent[Phase::ShimCall as usize] = Some(shim - moved);
        let slot = &mut spent[runtime as usize];
        *slot = Some(slot.unwrap_or_default() + moved);
    }

    /// Runs `f` as (part of) `phase`.
    pub fn time<T>(&self, phase: Phase, f: impl FnOnce() -> T) -> T {
        let span = self.phase_span(phase);
        let _in = span.enter();
        let started = Instant::now();
        let out = f();
        self.add(phase, started.elapsed());
        out
    }

    /// Awaits `fut` as (part of) `phase`.
    pub async fn time_async<F: Future>(&self, phase: Phase, fut: F) -> F::Output {
        let started = Instant::now();
        let out = fut.instrument(self.phase_span(phase)).await;
        self.add(phase, started.elapsed());
        out
    }

    /// Each phase the call went through with its time, `other` (the rest
    /// of the call's time) last, and the call's total.
    fn phases(&self) -> (Vec<(Phase, Duration)>, Duration) {
        let total = self.started.elapsed();
        let spent = *self.spent.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(Phase, Duration)> = Phase::all()
            .into_iter()
            .filter(|p| *p != Phase::Other)
            .filter_map(|p| spent[p as usize].map(|d| (p, d)))
            .collect();
        let timed: Duration = out.iter().map(|(_, d)| *d).sum();
        out.push((Phase::Other, total.saturating_sub(timed)));
        (out, total)
    }
}

impl Drop for PhaseClock<'_> {
    fn drop(&mut self) {
        let (phases, total) = self.phases();
        let rpc = self.rpc.name();
        for (phase, took) in &phases {
            self.telemetry.record_phase(rpc, phase.name(), *took);
        }
        if tracing::enabled!(target: "carrackd::phases", tracing::Level::DEBUG) {
            let list = phases
                .iter()
                .map(|(p, d)| format!("{}={:.3}ms", p.name(), d.as_secs_f64() * 1e3))
                .collect::<Vec<_>>()
                .join(" ");
            tracing::debug!(
                target: "carrackd::phases",
                parent: &self.span,
                total_ms = total.as_secs_f64() * 1e3,
                phases = list,
                "{rpc} timed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runtime's time moves out of the shim call, never more than the
    /// call took; an unreported one moves nothing.
    #[test]
    fn the_runtimes_time_is_split_out_of_the_shim_call() {
        let t = Telemetry::default();
        let clock = PhaseClock::start(&t, Rpc::CreateContainer);
        clock.add(Phase::ShimCall, Duration::from_millis(10));
        clock.split_runtime(Phase::RuntimeCreate, 7_000_000);
        let spent = |clock: &PhaseClock<'_>, p: Phase| clock.spent.lock().unwrap()[p as usize];
        assert_eq!(
            spent(&clock, Phase::ShimCall),
            Some(Duration::from_millis(3))
        );
        assert_eq!(
            spent(&clock, Phase::RuntimeCreate),
            Some(Duration::from_millis(7))
        );
        clock.split_runtime(Phase::RuntimeCreate, 0);
        assert_eq!(
            spent(&clock, Phase::ShimCall),
            Some(Duration::from_millis(3))
        );
        clock.split_runtime(Phase::RuntimeCreate, 9_000_000);
        assert_eq!(spent(&clock, Phase::ShimCall), Some(Duration::ZERO));
        assert_eq!(
            spent(&clock, Phase::RuntimeCreate),
            Some(Duration::from_millis(10))
        );
    }

    #[test]
    fn names_are_distinct_and_all_is_every_phase_in_order() {
        let all = Phase::all();
        for (i, p) in all.iter().enumerate() {
            assert_eq!(*p as usize, i, "{p:?}");
        }
        let mut names: Vec<_> = all.iter().map(|p| p.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), PHASES);
    }

    /// A phase met twice is one observation of the sum; `other` is the
    /// rest of the call; phases not met are not observed.
    #[test]
    fn a_call_records_each_phase_it_met_once_and_the_rest_as_other() {
        let t = Telemetry::default();
        {
            let clock = PhaseClock::start(&t, Rpc::RunPodSandbox);
            clock.add(Phase::Db, Duration::from_micros(300));
            clock.time(Phase::Namespaces, || ());
            clock.add(Phase::Db, Duration::from_micros(400));
            let (phases, total) = clock.phases();
            assert_eq!(phases[0], (Phase::Db, Duration::from_micros(700)));
            assert_eq!(phases[1].0, Phase::Namespaces);
            assert_eq!(phases[2].0, Phase::Other);
            assert_eq!(phases.len(), 3);
            let timed = phases[0].1 + phases[1].1;
            assert_eq!(phases[2].1, total.saturating_sub(timed));
        }
        let text = t.render(&Default::default());
        let count = |phase: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!(
                        "carrack_pod_start_phase_seconds_count{{rpc=\"RunPodSandbox\",phase=\"{phase}\"}} "
                    ))
                })
                .map(|v| v.to_owned())
        };
        assert_eq!(count("db").as_deref(), Some("1"), "{text}");
        assert_eq!(count("namespaces").as_deref(), Some("1"));
        assert_eq!(count("other").as_deref(), Some("1"));
        assert_eq!(count("network_add"), None);
    }
}
