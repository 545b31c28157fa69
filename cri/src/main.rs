//! The `carrackd` binary: flags, config, logging, then [`carrackd::serve`].

use std::path::{Path, PathBuf};

use anyhow::Context;
use carrack_image::RegistryHostConfig;
use carrackd::config::Config;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "carrackd", version, about = "Carrack's CRI daemon")]
struct Args {
    /// The TOML config file (default: /etc/carrack/config.toml when it
    /// exists, else none: built-in defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Persistent state directory (config key `root`).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Volatile state directory (config key `state`).
    #[arg(long, global = true)]
    state: Option<PathBuf>,
    /// The CRI socket (config key `socket`).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// A registry host[:port] spoken to over plain HTTP (repeatable).
    #[arg(long = "registry-insecure", global = true)]
    registry_insecure: Vec<String>,
    /// The default runtime handler (config key `default_runtime`).
    #[arg(long, global = true)]
    default_runtime: Option<String>,
    /// The log's format on stderr: `text` (coloured only on a terminal)
    /// or `json` (one object a line, for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Cmd>,
}

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr at `RUST_LOG`'s levels (info by default): JSON lines, or
/// text with ANSI colours only when stderr is a terminal (not a file or
/// the journal, where escape codes are noise). A span's close is logged
/// with its busy and idle time: the phases of a pod's start and stop are
/// spans (`carrackd::phases`, at DEBUG).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let logger = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logger.json().init(),
        LogFormat::Text => logger.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        what: ConfigCmd,
    },
    /// Image commands for air-gapped nodes.
    Image {
        #[command(subcommand)]
        what: ImageCmd,
    },
    /// The built-in network, for uninstalling.
    Network {
        #[command(subcommand)]
        what: NetworkCmd,
    },
    /// The infra process of a pod that shares one PID namespace (started
    /// by carrackd itself; see carrackd::pod_infra).
    #[command(name = "pod-infra", hide = true)]
    PodInfra {
        /// The sandbox's state directory (names the process in `ps`).
        #[arg(long)]
        sandbox: PathBuf,
        /// The cgroups path of the infra's cgroup, entered first.
        #[arg(long)]
        cgroup: String,
        /// The pod's user namespace file, joined next.
        #[arg(long)]
        userns: Option<PathBuf>,
    },
    /// Checks this node (kernel features, cgroups, seccomp, binaries,
    /// directories) and says what is missing and how to fix it; exits 1
    /// when anything Carrack needs is missing.
    Check,
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Loads OCI archives (`skopeo copy … oci-archive:`, `ctr export`) or
    /// docker-archive tars (`docker save`) into the image store under the
    /// configured root; a running carrackd lists them at once.
    Import {
        /// The archive files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum NetworkCmd {
    /// Removes the built-in network's bridge (`network.builtin.bridge`)
    /// and its iptables chains, which carrackd keeps across restarts; pods
    /// still attached lose their network. Nothing to remove is no error.
    RemoveBuiltin,
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Prints the effective configuration as TOML, every key documented.
    Default,
}

/// The config file read when `--config` names none, if it exists: where the
/// installers put it, so that the systemd unit, `carrackd check` and
/// `carrackd image import` all see the operator's settings.
const DEFAULT_CONFIG: &str = "/etc/carrack/config.toml";

/// The config file to read: `--config`, else [`DEFAULT_CONFIG`] when
/// `default_exists`, else none.
fn config_file(arg: Option<&Path>, default_exists: bool) -> Option<&Path> {
    arg.or_else(|| default_exists.then_some(Path::new(DEFAULT_CONFIG)))
}

fn effective(args: &Args) -> anyhow::Result<Config> {
    let file = config_file(args.config.as_deref(), Path::new(DEFAULT_CONFIG).exists());
    let mut cfg = match file {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(s) = &args.state {
        cfg.set_state(s.clone());
    }
    if let Some(r) = &args.root {
        cfg.root = r.clone();
    }
    if let Some(s) = &args.socket {
        cfg.socket = s.clone();
    }
    if let Some(d) = &args.default_runtime {
        cfg.default_runtime = d.clone();
    }
    for host in &args.registry_insecure {
        let h = cfg
            .registries
            .hosts
            .entry(host.clone())
            .or_insert_with(RegistryHostConfig::default);
        h.insecure = true;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// `carrackd image import`: every archive into the store, each image's id
/// and names printed.
async fn import_images(cfg: &Config, files: &[PathBuf]) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.root)
        .with_context(|| format!("creating root {}", cfg.root.display()))?;
    let store = carrack_image::ImageStore::open(cfg.image_store_config())
        .await
        .context("opening the image store")?;
    for file in files {
        let images = store
            .import_archive(file)
            .await
            .with_context(|| format!("importing {}", file.display()))?;
        for image in images {
            let names = if image.repo_tags.is_empty() {
                "(no name)".to_owned()
            } else {
                image.repo_tags.join(", ")
            };
            println!("{} {names}", image.id);
        }
    }
    Ok(())
}

/// A single-threaded runtime for the one-shot subcommands.
fn current_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")
}

fn main() -> anyhow::Result<()> {
    // SAFETY: the process has one thread until tokio starts below.
    let notifier = unsafe { carrackd::sd_notify::Notifier::from_env() };
    let args = Args::parse();
    // Before anything else: the infra process needs a single-threaded
    // process and no config.
    if let Some(Cmd::PodInfra { cgroup, userns, .. }) = &args.command {
        match carrackd::pod_infra::run(cgroup, userns.as_deref()).context("pod-infra")? {}
    }
    let cfg = effective(&args)?;
    match args.command {
        Some(Cmd::Config {
            what: ConfigCmd::Default,
        }) => {
            print!("{}", cfg.to_documented_toml());
            return Ok(());
        }
        Some(Cmd::Image {
            what: ImageCmd::Import { files },
        }) => {
            let rt = current_thread_runtime()?;
            return rt.block_on(import_images(&cfg, &files));
        }
        Some(Cmd::Network {
            what: NetworkCmd::RemoveBuiltin,
        }) => {
            let rt = current_thread_runtime()?;
            let bridge = &cfg.network.builtin.bridge;
            return rt
                .block_on(carrack_network::builtin::remove_bridge(bridge))
                .with_context(|| format!("removing the built-in network's bridge {bridge}"));
        }
        Some(Cmd::PodInfra { .. }) => unreachable!("handled before the config is read"),
        Some(Cmd::Check) => {
            let (text, failed) = carrackd::check::render(&carrackd::check::check_node(&cfg));
            print!("{text}");
            std::process::exit(i32::from(failed));
        }
        None => {}
    }
    init_logging(args.log_format);
    let rt = tokio::runtime::Runtime::new().context("starting tokio")?;
    rt.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down (containers keep running)");
        };
        carrackd::serve(cfg, shutdown, &notifier).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_file_is_read_when_it_exists_and_none_is_named() {
        let named = Path::new("/tmp/mine.toml");
        assert_eq!(config_file(Some(named), true), Some(named));
        assert_eq!(config_file(Some(named), false), Some(named));
        assert_eq!(config_file(None, true), Some(Path::new(DEFAULT_CONFIG)));
        assert_eq!(config_file(None, false), None);
    }
}
