//! `node-scale`: a full node, side by side on each runtime. N pods (each a
//! container that writes a few MiB in many files into its writable layer
//! and then sleeps) started all at once on the runtime's CNI network; then
//! kubelet's steady polling for a window, with the runtime's CPU (daemon
//! and shims) and memory, and the latency of each polled call; then every
//! pod stopped and removed at once, and what was left on the node.
//!
//! The runtimes run one after the other, each alone on the machine.
//! `bench/node-scale.sh` starts carrackd and containerd, their CNI
//! networks and a registry around it, and cleans up after it.

mod leftovers;
mod polling;
mod report;
mod start;
mod target;
mod teardown;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use carrack_bench::procs::{pss_kib, rss_kib};
use carrack_proto::cri::{ImageSpec, PullImageRequest};
use clap::Parser;

use leftovers::Held;
use report::Figures;
use start::{Payload, Pod};
use target::Target;

/// The command line.
#[derive(Parser)]
#[command(about = "A full node's pods, started at once and polled as kubelet does, per runtime")]
pub struct Args {
    /// CRI endpoints as NAME=unix:///path.sock (repeat; run one after the
    /// other; ratios are the first over the second).
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Image of the containers (with sh, head, tr, sleep); pulled first.
    #[arg(long)]
    image: String,
    /// Pods per runtime.
    #[arg(long, default_value_t = 250)]
    pods: usize,
    /// Files each container writes into its writable layer.
    #[arg(long, default_value_t = 200)]
    files: usize,
    /// Bytes in each file (200 × 20971 ≈ 4 MiB).
    #[arg(long, default_value_t = 20971)]
    file_bytes: usize,
    /// The polling window, seconds.
    #[arg(long, default_value_t = 120)]
    window_secs: u64,
    /// PLEG's relist period, seconds (ListPodSandbox + ListContainers).
    #[arg(long, default_value_t = 1)]
    relist_secs: u64,
    /// The stats period, seconds (ListPodSandboxStats, ListContainerStats,
    /// ImageFsInfo).
    #[arg(long, default_value_t = 10)]
    stats_secs: u64,
    /// Directory for the containers' logs.
    #[arg(long)]
    log_dir: PathBuf,
    /// PID of each daemon, NAME=PID.
    #[arg(long = "daemon-pid")]
    daemon_pids: Vec<String>,
    /// Process name of each runtime's shims, NAME=COMM.
    #[arg(long = "shim")]
    shims: Vec<String>,
    /// Each runtime's own directory, NAME=DIR: its shims' command lines
    /// name it, its mounts and pinned namespaces are under it.
    #[arg(long = "owner")]
    owners: Vec<String>,
    /// Each runtime's CNI bridge, NAME=IFNAME.
    #[arg(long = "bridge")]
    bridges: Vec<String>,
    /// Each runtime's CNI network name, NAME=NETWORK.
    #[arg(long = "network")]
    networks: Vec<String>,
    /// Each runtime's host-local data dir, NAME=DIR.
    #[arg(long = "ipam-dir")]
    ipam_dirs: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let payload = Payload {
        files: args.files,
        file_bytes: args.file_bytes,
    };
    println!(
        "node-scale: {} pods per runtime, started at once, each writing {} files of {} bytes; \
         polling {} s (relist every {} s, stats every {} s)",
        args.pods, args.files, args.file_bytes, args.window_secs, args.relist_secs, args.stats_secs
    );
    let mut names = Vec::new();
    let mut figures = Vec::new();
    let mut failed = None;
    for spec in &args.targets {
        let t = Target::connect(spec, &args).await?;
        eprintln!("node-scale: {}", t.name);
        let mut f = Figures::default();
        if let Err(e) = run(&t, &args, payload, &mut f).await {
            eprintln!("node-scale: {}: {e:#}", t.name);
            failed.get_or_insert(e);
        }
        names.push(t.name.clone());
        figures.push(f);
    }
    report::print(&names, &figures);
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One runtime's run; the pods it started are removed also when a step
/// fails.
async fn run(t: &Target, args: &Args, payload: Payload, f: &mut Figures) -> Result<()> {
    t.images
        .clone()
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: args.image.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .with_context(|| format!("pulling {}", args.image))?;
    let mut pods = Vec::new();
    let measured = measure(t, args, payload, &mut pods, f).await;
    eprintln!("node-scale: {}: removing {} pods", t.name, pods.len());
    let removed = teardown::remove_all(t, &pods).await;
    f.removal = removed.as_ref().ok().copied();
    let mut left = Held::count(t);
    // The pod cgroups themselves are the bench's (kubelet's) to remove,
    // and count only where they cannot be.
    left.cgroups += teardown::remove_pod_cgroups(&pods);
    f.left = Some(left);
    measured.and(removed.map(|_| ()))
}

async fn measure(
    t: &Target,
    args: &Args,
    payload: Payload,
    pods: &mut Vec<Pod>,
    f: &mut Figures,
) -> Result<()> {
    eprintln!("node-scale: {}: starting {} pods", t.name, args.pods);
    let started = start::start_all(t, args.pods, &args.image, payload, &args.log_dir, pods).await?;
    f.all_running = Some(started.all_running);
    f.start_calls = started.calls;
    let running = start::running(t, pods).await?;
    anyhow::ensure!(
        running == args.pods,
        "{}: {running} of {} containers running",
        t.name,
        args.pods
    );
    f.written = Some(start::wait_written(pods, Duration::from_secs(900)).await?);
    eprintln!("node-scale: {}: polling for {} s", t.name, args.window_secs);
    let polled = polling::poll(
        t,
        polling::Pattern {
            window: Duration::from_secs(args.window_secs),
            relist: Duration::from_secs(args.relist_secs),
            stats: Duration::from_secs(args.stats_secs),
        },
    )
    .await?;
    f.daemon_cpu = Some(polled.daemon_cpu);
    f.shim_cpu = Some(polled.shim_cpu);
    f.polled_calls = polled.calls;
    f.layers_right = Some(polling::writable_layers_at_least(t, payload.bytes()).await?);
    f.daemon_rss_kib = t.daemon_pid.and_then(rss_kib);
    let shims = t.shims();
    f.shims_pss_kib = Some((shims.iter().filter_map(|&p| pss_kib(p)).sum(), shims.len()));
    f.held = Some(Held::count(t));
    Ok(())
}
