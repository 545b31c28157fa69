//! The `carrack-shim` binary: `start` (detach and wait until serving) and
//! `serve` (the shim itself; run by `start`).

use std::path::PathBuf;

use anyhow::Context;
use carrack_shim::daemon::{ServeConfig, serve, start};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "carrack-shim",
    version,
    about = "Per-container shim of the Carrack runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a detached shim for a container; prints its socket when it serves.
    Start(Common),
    /// Serve (what `start` runs in the background).
    Serve {
        #[command(flatten)]
        common: Common,
        /// Descriptor to report readiness on.
        #[arg(long)]
        ready_fd: Option<i32>,
    },
}

#[derive(Args)]
struct Common {
    /// Container id.
    #[arg(long)]
    id: String,
    /// Bundle directory (informational: Create names the bundle).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// OCI runtime binary.
    #[arg(long, default_value = "carrack-runtime")]
    runtime: PathBuf,
    /// The runtime's --root.
    #[arg(long)]
    runtime_root: Option<PathBuf>,
    /// Parent of the shim directories.
    #[arg(long, default_value = "/run/carrack/shims")]
    state_dir: PathBuf,
}

impl Common {
    fn config(&self) -> ServeConfig {
        ServeConfig {
            id: self.id.clone(),
            runtime: self.runtime.clone(),
            runtime_root: self.runtime_root.clone(),
            state_dir: self.state_dir.clone(),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Start(c) => {
            let socket =
                start(&c.config()).with_context(|| format!("starting the shim for {}", c.id))?;
            println!("{}", socket.display());
        }
        Cmd::Serve { common, ready_fd } => serve(&common.config(), ready_fd)?,
    }
    Ok(())
}
