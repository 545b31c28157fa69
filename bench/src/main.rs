//! `cri-bench`: times the pod lifecycle through the CRI API on one or more
//! endpoints, interleaved, and reports medians and p90 per phase; and measures
//! a daemon's RSS with N pods running plus the memory of its per-container
//! shims.
//!
//! It talks gRPC directly (no crictl processes), so its times are the runtime's
//! own. `bench/pod-lifecycle.sh` starts the daemons and a registry around it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use carrack_bench::cri_client::{connect, named};
use carrack_bench::pods::{container_config, pod_config};
use carrack_bench::procs::{processes, pss_kib, rss_kib};
use carrack_bench::quantiles::{ms, percentile};
use carrack_proto::cri::{
    self, ContainerState, CreateContainerRequest, ImageSpec, PullImageRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest, image_service_client::ImageServiceClient,
    runtime_service_client::RuntimeServiceClient,
};
use clap::Parser;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "Pod lifecycle and memory benchmark over the CRI API")]
struct Args {
    /// CRI endpoints as NAME=unix:///path.sock (repeat; runs are interleaved).
    #[arg(long = "endpoint", required = true)]
    endpoints: Vec<String>,
    /// Image for the containers; pulled once per endpoint before timing.
    #[arg(long)]
    image: String,
    /// Lifecycles per endpoint.
    #[arg(long, default_value_t = 30)]
    iterations: usize,
    /// Pods kept running for the memory measurement (0: skip it).
    #[arg(long, default_value_t = 20)]
    pods: usize,
    /// PID of each daemon, NAME=PID, for its RSS.
    #[arg(long = "daemon-pid")]
    daemon_pids: Vec<String>,
    /// Process name of each endpoint's shims, NAME=comm (e.g. carrack-shim).
    #[arg(long = "shim-name")]
    shim_names: Vec<String>,
    /// Directory for the containers' logs.
    #[arg(long, default_value = "/tmp/cri-bench-logs")]
    log_dir: PathBuf,
    /// The cgroup driver of the daemons, which decides the form of each
    /// pod's cgroup parent, as kubelet's cgroupDriver does.
    #[arg(long, value_enum, default_value_t = CgroupDriver::Cgroupfs)]
    cgroup_driver: CgroupDriver,
}

/// How the bench names and removes each pod's cgroup parent.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CgroupDriver {
    /// A path below each hierarchy's root: `/cri-bench/pod-<tag>`.
    Cgroupfs,
    /// A systemd slice, `cribench-pod<tag>.slice` (in `cribench.slice`),
    /// as kubelet's `kubepods-besteffort-pod<uid>.slice`.
    Systemd,
}

impl CgroupDriver {
    /// The cgroup parent of the pod tagged `tag` (letters and digits).
    fn pod_parent(self, tag: &str) -> String {
        match self {
            CgroupDriver::Cgroupfs => format!("/cri-bench/pod-{tag}"),
            CgroupDriver::Systemd => format!("cribench-pod{tag}.slice"),
        }
    }

    /// Removes the pod cgroup `parent` once its pod is gone, as kubelet
    /// does: rmdir on cgroupfs, stopping the slice on systemd.
    fn remove_pod_parent(self, parent: &str) -> Result<()> {
        match self {
            CgroupDriver::Cgroupfs => {
                carrack_cgroups::Cgroup::open(parent, "cri-bench").and_then(|cg| cg.delete())
            }
            CgroupDriver::Systemd => carrack_cgroups::systemd::connect_and_stop(parent),
        }
        .with_context(|| format!("removing the pod cgroup {parent}"))
    }
}

struct Target {
    name: String,
    cgroup_driver: CgroupDriver,
    runtime: RuntimeServiceClient<Channel>,
    phases: BTreeMap<&'static str, Vec<Duration>>,
}

/// A running pod: its sandbox and container ids, and the pod cgroup the
/// bench asked for (removed after the pod, as kubelet removes the pod
/// cgroups it makes; containerd leaves it).
struct Pod {
    sandbox: String,
    container: String,
    cgroup_parent: String,
}

impl Target {
    fn record(&mut self, phase: &'static str, since: Instant) {
        self.phases.entry(phase).or_default().push(since.elapsed());
    }

    async fn start_pod(
        &mut self,
        tag: &str,
        image: &str,
        log_dir: &std::path::Path,
    ) -> Result<Pod> {
        let config = pod_config(tag, log_dir, &self.cgroup_driver.pod_parent(tag));
        let cgroup_parent = config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default();
        std::fs::create_dir_all(&config.log_directory)?;
        let t = Instant::now();
        let sandbox = self
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
        self.record("1 run pod", t);
        let t = Instant::now();
        let container = self
            .runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(container_config(
                    "sleeper",
                    image,
                    &["/bin/sleep", "3600"],
                    "sleeper.log",
                )),
                sandbox_config: Some(config),
            })
            .await
            .context("CreateContainer")?
            .into_inner()
            .container_id;
        self.record("2 create container", t);
        let t = Instant::now();
        self.runtime
            .start_container(StartContainerRequest {
                container_id: container.clone(),
            })
            .await
            .context("StartContainer")?;
        let status = self
            .runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: container.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .context("ContainerStatus without status")?;
        if status.state != ContainerState::ContainerRunning as i32 {
            bail!(
                "{}: container {container} not running after start: {status:?}",
                self.name
            );
        }
        self.record("3 start container", t);
        Ok(Pod {
            sandbox,
            container,
            cgroup_parent,
        })
    }

    async fn stop_pod(&mut self, pod: Pod) -> Result<()> {
        let t = Instant::now();
        self.runtime
            .stop_container(StopContainerRequest {
                container_id: pod.container.clone(),
                timeout: 0,
            })
            .await
            .context("StopContainer")?;
        self.runtime
            .remove_container(RemoveContainerRequest {
                container_id: pod.container,
            })
            .await
            .context("RemoveContainer")?;
        self.record("4 stop+remove container", t);
        let t = Instant::now();
        self.runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.sandbox.clone(),
            })
            .await
            .context("StopPodSandbox")?;
        self.runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.sandbox,
            })
            .await
            .context("RemovePodSandbox")?;
        self.record("5 stop+remove pod", t);
        // systemd's bus client blocks (it runs a runtime of its own).
        let driver = self.cgroup_driver;
        tokio::task::spawn_blocking(move || driver.remove_pod_parent(&pod.cgroup_parent)).await?
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut targets = Vec::new();
    for spec in &args.endpoints {
        let (name, uri) = spec
            .split_once('=')
            .with_context(|| format!("--endpoint '{spec}' must be NAME=unix:///path"))?;
        let channel = connect(uri).await?;
        let mut images = ImageServiceClient::new(channel.clone());
        images
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: args.image.clone(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None,
            })
            .await
            .with_context(|| format!("{name}: pulling {}", args.image))?;
        targets.push(Target {
            name: name.to_owned(),
            cgroup_driver: args.cgroup_driver,
            runtime: RuntimeServiceClient::new(channel),
            phases: BTreeMap::new(),
        });
    }

    // Warm-up: one lifecycle each, not recorded.
    for t in &mut targets {
        let pod = t.start_pod("warmup", &args.image, &args.log_dir).await?;
        t.stop_pod(pod).await?;
        t.phases.clear();
    }
    for i in 0..args.iterations {
        for t in &mut targets {
            let pod = t
                .start_pod(&format!("lc{i}"), &args.image, &args.log_dir)
                .await?;
            t.stop_pod(pod).await?;
        }
    }

    println!(
        "pod lifecycle, {} iterations each, interleaved (ms)",
        args.iterations
    );
    println!(
        "{:<26}{}",
        "phase",
        targets
            .iter()
            .map(|t| format!("{:>22}", t.name))
            .collect::<String>()
    );
    let phases: Vec<&'static str> = targets[0].phases.keys().copied().collect();
    let mut medians: BTreeMap<(&str, String), f64> = BTreeMap::new();
    for phase in &phases {
        let mut line = format!("{phase:<26}");
        for t in &targets {
            let mut v = t.phases[phase].clone();
            v.sort();
            let (p50, p90) = (percentile(&v, 0.5), percentile(&v, 0.9));
            medians.insert((phase, t.name.clone()), ms(p50));
            line += &format!("{:>22}", format!("p50 {:.1} p90 {:.1}", ms(p50), ms(p90)));
        }
        println!("{line}");
    }
    let start_sum = |name: &str| -> f64 {
        ["1 run pod", "2 create container", "3 start container"]
            .iter()
            .filter_map(|p| medians.get(&(*p, name.to_owned())))
            .sum()
    };
    for t in &targets {
        println!(
            "{}: pod start to Running (sum of medians) {:.1} ms",
            t.name,
            start_sum(&t.name)
        );
    }
    if targets.len() >= 2 {
        let base = &targets[1].name;
        for t in targets.iter().filter(|t| &t.name != base) {
            println!(
                "ratio {} / {}: start {:.2}",
                t.name,
                base,
                start_sum(&t.name) / start_sum(base)
            );
        }
    }

    if args.pods > 0 {
        println!("memory with {} pods running", args.pods);
        let mut figures = Vec::new();
        for t in &mut targets {
            let daemon = named(&args.daemon_pids, &t.name).and_then(|p| p.parse::<u32>().ok());
            let idle = daemon.and_then(rss_kib);
            let mut pods = Vec::new();
            for i in 0..args.pods {
                pods.push(
                    t.start_pod(&format!("mem{i}"), &args.image, &args.log_dir)
                        .await?,
                );
            }
            let busy = daemon.and_then(rss_kib);
            let shims = named(&args.shim_names, &t.name)
                .map(|c| processes(&c, ""))
                .unwrap_or_default();
            let (rss, pss): (u64, u64) = shims
                .iter()
                .map(|&p| (rss_kib(p).unwrap_or(0), pss_kib(p).unwrap_or(0)))
                .fold((0, 0), |(a, b), (r, p)| (a + r, b + p));
            let n = shims.len().max(1) as f64;
            println!(
                "{}: daemon RSS idle {:?} KiB, with pods {:?} KiB; {} shims, mean RSS {:.0} KiB, mean PSS {:.0} KiB",
                t.name,
                idle,
                busy,
                shims.len(),
                rss as f64 / n,
                pss as f64 / n
            );
            figures.push((
                t.name.clone(),
                MemoryFigures {
                    idle,
                    busy,
                    shim_rss: rss as f64 / n,
                    shim_pss: pss as f64 / n,
                    pods: args.pods,
                },
            ));
            for pod in pods {
                t.stop_pod(pod).await?;
            }
        }
        // Over the same base as the start-up ratio.
        if let Some((base, b)) = figures.get(1) {
            for (name, f) in figures.iter().filter(|(name, _)| name != base) {
                println!("{}", f.ratios_to(b, name, base));
            }
        }
    }
    Ok(())
}

/// What one endpoint's memory run measured.
struct MemoryFigures {
    idle: Option<u64>,
    busy: Option<u64>,
    shim_rss: f64,
    shim_pss: f64,
    pods: usize,
}

impl MemoryFigures {
    /// Per-container overhead: a shim's RSS plus the daemon's growth per pod.
    fn per_container(&self) -> Option<f64> {
        let growth = self.busy?.saturating_sub(self.idle?) as f64 / self.pods.max(1) as f64;
        Some(self.shim_rss + growth)
    }

    /// One line of ratios, `name` over `base`.
    fn ratios_to(&self, b: &MemoryFigures, name: &str, base: &str) -> String {
        let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
            _ => "n/a".to_owned(),
        };
        let kib = |v: Option<u64>| v.map(|v| v as f64);
        format!(
            "ratio {name} / {base}: daemon RSS idle {}, with pods {}; shim RSS {}, PSS {}; per-container overhead (shim RSS + daemon growth per pod) {}",
            ratio(kib(self.idle), kib(b.idle)),
            ratio(kib(self.busy), kib(b.busy)),
            ratio(Some(self.shim_rss), Some(b.shim_rss)),
            ratio(Some(self.shim_pss), Some(b.shim_pss)),
            ratio(self.per_container(), b.per_container()),
        )
    }
}
