//! Stats collected in the background (`stats_collection_seconds`), as
//! cAdvisor's housekeeping and CRI-O's `stats_collection_period` do: a pass
//! reads every pod's and container's cgroup and every pod's network
//! counters, and the stats calls answer from the last pass's samples
//! instead of reading some twenty files per pod at each call. kubelet asks
//! for the stats of every pod and every container every ten seconds; read
//! at the call, on a full node (250 pods) on two busy cores, those calls
//! took 50 to 140 ms, and a container's cgroup was read twice, once for
//! each list.
//!
//! A sample is at most one period old; its timestamps say when it was
//! read, and `usage_nano_cores` is the rate over the period. A pod or
//! container no pass has read yet (just started) is read at the first call
//! about it; the daemon's collector also reads those every second
//! ([`Pass::New`]), so that the first list after a burst of starts does
//! not read them all at once.
//!
//! The thread that runs the passes is the daemon's; this module keeps the
//! samples and knows how to take them.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::{ContainerSample, PodSample, Sampler, sampled};
use crate::store::{ContainerRecord, SandboxRecord, SandboxState};

/// Which pods and containers a pass reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// All of them: the samples are replaced (those of pods and containers
    /// gone since are dropped).
    All,
    /// Those without a sample yet.
    New,
}

/// The samples of the last passes, by pod and container id.
#[derive(Debug, Default)]
pub struct Collected {
    samples: Mutex<Samples>,
}

#[derive(Debug, Default)]
struct Samples {
    containers: HashMap<String, ContainerSample>,
    pods: HashMap<String, PodSample>,
}

impl Collected {
    fn lock(&self) -> std::sync::MutexGuard<'_, Samples> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Container `c`'s sample, or what `read` reads (then kept).
    pub(super) fn container(
        &self,
        c: &ContainerRecord,
        read: impl FnOnce() -> ContainerSample,
    ) -> ContainerSample {
        if let Some(s) = self.lock().containers.get(&c.id) {
            return s.clone();
        }
        let s = read();
        self.lock().containers.insert(c.id.clone(), s.clone());
        s
    }

    /// Pod `sb`'s sample, or what `read` reads (then kept).
    pub(super) fn pod(&self, sb: &SandboxRecord, read: impl FnOnce() -> PodSample) -> PodSample {
        if let Some(s) = self.lock().pods.get(&sb.id) {
            return s.clone();
        }
        let s = read();
        self.lock().pods.insert(sb.id.clone(), s.clone());
        s
    }

    /// Drops the samples of the removed pod or container `id`.
    pub(super) fn forget(&self, id: &str) {
        let mut s = self.lock();
        s.containers.remove(id);
        s.pods.remove(id);
    }

    /// The ids of the pods and of the containers with a sample.
    fn ids(&self) -> (HashSet<String>, HashSet<String>) {
        let s = self.lock();
        (
            s.pods.keys().cloned().collect(),
            s.containers.keys().cloned().collect(),
        )
    }
}

impl Sampler {
    /// One pass of the background collection over `sandboxes` (not those
    /// being made) and their created or running `containers`: all of them,
    /// or those without a sample. Nothing when this sampler reads at each
    /// call.
    pub fn collect(&self, sandboxes: &[SandboxRecord], containers: &[ContainerRecord], pass: Pass) {
        let Some(collected) = &self.collected else {
            return;
        };
        let (had_pods, had_containers) = match pass {
            Pass::All => Default::default(),
            Pass::New => collected.ids(),
        };
        let by_id: HashMap<&str, &SandboxRecord> =
            sandboxes.iter().map(|s| (s.id.as_str(), s)).collect();
        let pods: HashMap<String, PodSample> = sandboxes
            .iter()
            .filter(|s| s.state != SandboxState::Creating && !had_pods.contains(&s.id))
            .map(|s| (s.id.clone(), self.read_pod(s)))
            .collect();
        let read: HashMap<String, ContainerSample> = containers
            .iter()
            .filter(|c| sampled(c.state) && !had_containers.contains(&c.id))
            .map(|c| {
                let sb = by_id.get(c.sandbox_id.as_str()).copied();
                (c.id.clone(), self.read_container(c, sb))
            })
            .collect();
        let mut samples = collected.lock();
        match pass {
            Pass::All => {
                samples.pods = pods;
                samples.containers = read;
            }
            Pass::New => {
                samples.pods.extend(pods);
                samples.containers.extend(read);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ContainerState;

    fn sandbox(id: &str, state: SandboxState) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            name: id.into(),
            config: Default::default(),
            runtime_handler: String::new(),
            state,
            created_at: 0,
            // No such cgroup: its sample is empty, which is enough here.
            cgroup_path: format!("/carrack-test-nonexistent/{id}"),
            netns: String::new(),
            ipcns: String::new(),
            utsns: String::new(),
            ip: String::new(),
            additional_ips: Vec::new(),
            infra: None,
            userns: String::new(),
        }
    }

    fn container(id: &str, state: ContainerState) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            name: id.into(),
            sandbox_id: "p1".into(),
            config: Default::default(),
            image_id: String::new(),
            image_ref: String::new(),
            state,
            created_at: 0,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path: String::new(),
            bundle: "/nonexistent".into(),
            runtime_handler: String::new(),
            stop_signal: 15,
            resources: None,
            user: None,
        }
    }

    fn ids(c: &Collected) -> (Vec<String>, Vec<String>) {
        let (p, c) = c.ids();
        let mut p: Vec<String> = p.into_iter().collect();
        let mut c: Vec<String> = c.into_iter().collect();
        p.sort();
        c.sort();
        (p, c)
    }

    /// A full pass samples the pods (not those being made) and their
    /// sampled containers and drops what is gone; a pass over the new ones
    /// adds the unsampled and keeps the rest.
    #[test]
    fn passes_sample_what_exists_and_drop_what_is_gone() {
        let sm = Sampler::new(true);
        let collected = sm.collected.as_ref().unwrap();
        let pods = [
            sandbox("p1", SandboxState::Ready),
            sandbox("p2", SandboxState::Creating),
        ];
        let containers = [
            container("c1", ContainerState::Running),
            container("c2", ContainerState::Exited),
        ];
        sm.collect(&pods, &containers, Pass::All);
        assert_eq!(ids(collected), (vec!["p1".into()], vec!["c1".into()]));

        let pods = [
            sandbox("p1", SandboxState::Ready),
            sandbox("p3", SandboxState::Ready),
        ];
        let containers = [
            container("c1", ContainerState::Running),
            container("c3", ContainerState::Created),
        ];
        sm.collect(&pods, &containers, Pass::New);
        assert_eq!(
            ids(collected),
            (
                vec!["p1".into(), "p3".into()],
                vec!["c1".into(), "c3".into()]
            )
        );
        sm.forget("c1");
        sm.collect(&pods[1..], &containers[1..], Pass::All);
        assert_eq!(ids(collected), (vec!["p3".into()], vec!["c3".into()]));
    }

    /// A call answers from the sample while it lasts, reads only what has
    /// none; a sampler reading at each call keeps nothing.
    #[test]
    fn calls_answer_from_the_samples_and_read_only_the_missing() {
        let collected = Collected::default();
        let c = container("c1", ContainerState::Running);
        let reads = std::cell::Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            ContainerSample::default()
        };
        collected.container(&c, read);
        collected.container(&c, read);
        assert_eq!(reads.get(), 1);
        collected.forget("c1");
        collected.container(&c, read);
        assert_eq!(reads.get(), 2);

        let on_demand = Sampler::new(false);
        on_demand.collect(&[sandbox("p1", SandboxState::Ready)], &[c], Pass::All);
        assert!(on_demand.collected.is_none());
    }
}
