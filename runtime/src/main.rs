//! The `carrack-runtime` command line: runc's sub-commands, flags, exit
//! codes and state JSON, over the carrack-runtime library.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use carrack_runtime::{CreateOptions, ExecOptions, Runtime};
use clap::{Parser, Subcommand};
use nix::sys::signal::Signal;

#[derive(Parser)]
#[command(
    name = "carrack-runtime",
    version,
    about = "Carrack's OCI runtime (runc-compatible command line)"
)]
struct Cli {
    /// State directory of the runtime.
    #[arg(long, global = true, default_value = "/run/carrack/runtime")]
    root: PathBuf,
    /// Log file (errors are written there as well as to stderr).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    /// Use the systemd cgroup driver.
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container: its init waits until `start`.
    Create {
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        preserve_fds: u32,
        /// Accepted for runc compatibility: carrack-runtime needs no pivot-less mode.
        #[arg(long)]
        no_pivot: bool,
        id: String,
    },
    /// Start a created container.
    Start { id: String },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to the container's init or, with --all, to all its processes.
    Kill {
        #[arg(long, short)]
        all: bool,
        id: String,
        signal: Option<String>,
    },
    /// Delete a container.
    Delete {
        #[arg(long, short)]
        force: bool,
        id: String,
    },
    /// Create, start, wait for and delete a container (or leave it with --detach).
    Run {
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        #[arg(long, short)]
        detach: bool,
        #[arg(long, default_value_t = 0)]
        preserve_fds: u32,
        id: String,
    },
    /// Run a new process in a running container.
    Exec {
        #[arg(long, short)]
        process: Option<PathBuf>,
        #[arg(long, short)]
        tty: bool,
        #[arg(long, short)]
        detach: bool,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        preserve_fds: u32,
        #[arg(long)]
        cwd: Option<PathBuf>,
        #[arg(long, short)]
        env: Vec<String>,
        id: String,
        /// The command and its arguments; options after the command are
        /// its own (`exec ID sh -c 'echo hi'`), as with runc.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List the container's processes.
    Ps {
        #[arg(long, short, default_value = "table")]
        format: String,
        id: String,
    },
    /// Freeze a container.
    Pause { id: String },
    /// Thaw a container.
    Resume { id: String },
    /// List containers.
    List {
        #[arg(long, short, default_value = "table")]
        format: String,
        #[arg(long, short)]
        quiet: bool,
    },
    /// Change a container's resources.
    Update {
        #[arg(long, short)]
        resources: PathBuf,
        id: String,
    },
    /// Print the container's statistics (with --stats, once).
    Events {
        #[arg(long)]
        stats: bool,
        id: String,
    },
    /// Print a default config.json for a bundle.
    Spec {
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
    },
    /// Print the OCI features this runtime supports.
    Features,
}

/// The environment variable that marks a runtime already running from its
/// sealed copy.
const SEALED: &str = "_CARRACK_RUNTIME_SEALED";

/// Re-executes the runtime from a copy of itself that a container process
/// cannot write through, so that one that reaches /proc/<pid>/exe of the
/// runtime (CVE-2019-5736) cannot overwrite the host binary: first a
/// detached read-only bind mount of the binary (no copy; opening it for
/// writing is EROFS), else a sealed memfd copy (kernels without
/// open_tree/mount_setattr). The bind costs two system calls where the
/// copy costs about half of a `run` here (3.5 MB copied and faulted in on
/// every create, exec and run).
fn reexec_sealed() -> anyhow::Result<()> {
    if std::env::var_os(SEALED).is_some() {
        return Ok(());
    }
    let args: Vec<std::ffi::CString> = std::env::args_os()
        .map(|a| std::ffi::CString::new(a.into_encoded_bytes()).expect("no NUL in argv"))
        .collect();
    let mut env: Vec<std::ffi::CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            std::ffi::CString::new(kv).ok()
        })
        .collect();
    env.push(std::ffi::CString::new(format!("{SEALED}=1")).expect("no NUL"));
    if let Ok(bind) = carrack_runtime::sys::detached_readonly_bind(c"/proc/self/exe") {
        // Returns only on failure; the memfd copy is the fallback then.
        let _ = nix::unistd::fexecve(&bind, &args, &env);
    }
    let copy = sealed_copy()?;
    let err = nix::unistd::fexecve(&copy, &args, &env).unwrap_err();
    bail!("re-executing from the sealed copy: {err}")
}

/// A sealed (immutable) memfd copy of the running binary.
fn sealed_copy() -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let mut exe = std::fs::File::open("/proc/self/exe").context("opening /proc/self/exe")?;
    let memfd = nix::sys::memfd::memfd_create(
        c"carrack-runtime",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
    )
    .context("memfd_create")?;
    let mut copy = std::fs::File::from(memfd);
    // Through a buffer, not std::io::copy: its sendfile/splice path can
    // leave page references behind that make F_SEAL_WRITE fail with EBUSY
    // for a moment (seen intermittently under load).
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = exe.read(&mut buf).context("reading the runtime binary")?;
        if n == 0 {
            break;
        }
        copy.write_all(&buf[..n])
            .context("copying the runtime binary")?;
    }
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // F_SEAL_WRITE fails with EBUSY while the kernel still holds an extra
    // reference on a page of the file (page migration under memory
    // pressure, for one); the kernel already waits a little, so a few more
    // tries are enough. No event says when the references are gone.
    let mut tries = 0;
    loop {
        // SAFETY: fcntl on our own memfd with the seal flags.
        if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        tries += 1;
        if err.raw_os_error() != Some(libc::EBUSY) || tries == 5 {
            bail!("sealing the runtime copy: {err}");
        }
        std::thread::yield_now();
    }
    Ok(copy)
}

fn log_error(cli: &Cli, err: &anyhow::Error) {
    let msg = format!("{err:#}");
    eprintln!("carrack-runtime: {msg}");
    if let Some(path) = &cli.log
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let time = chrono::Utc::now().to_rfc3339();
        let line = if cli.log_format == "json" {
            serde_json::json!({"level": "error", "msg": msg, "time": time}).to_string()
        } else {
            format!("time=\"{time}\" level=error msg=\"{msg}\"")
        };
        let _ = writeln!(f, "{line}");
    }
}

fn main() {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            log_error(&cli, &e);
            std::process::exit(1);
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<i32> {
    if matches!(
        cli.cmd,
        Cmd::Create { .. } | Cmd::Run { .. } | Cmd::Exec { .. }
    ) {
        reexec_sealed()?;
    }
    let rt = Runtime {
        systemd_cgroup: cli.systemd_cgroup,
        ..Runtime::new(cli.root.clone())
    };
    match &cli.cmd {
        Cmd::Create {
            bundle,
            pid_file,
            console_socket,
            preserve_fds,
            id,
            ..
        } => {
            rt.create(
                id,
                &CreateOptions {
                    bundle: bundle.clone(),
                    pid_file: pid_file.clone(),
                    console_socket: console_socket.clone(),
                    preserve_fds: *preserve_fds as i32,
                },
            )?;
        }
        Cmd::Start { id } => rt.start(id)?,
        Cmd::State { id } => println!("{}", serde_json::to_string_pretty(&rt.state(id)?)?),
        Cmd::Kill { all, id, signal } => {
            let sig = parse_signal(signal.as_deref().unwrap_or("SIGTERM"))?;
            rt.kill(id, sig, *all)?;
        }
        Cmd::Delete { force, id } => rt.delete(id, *force)?,
        Cmd::Run {
            bundle,
            pid_file,
            console_socket,
            detach,
            preserve_fds,
            id,
        } => {
            let opts = CreateOptions {
                bundle: bundle.clone(),
                pid_file: pid_file.clone(),
                console_socket: console_socket.clone(),
                preserve_fds: *preserve_fds as i32,
            };
            return Ok(rt.run(id, &opts, *detach)?);
        }
        Cmd::Exec {
            process,
            tty,
            detach,
            pid_file,
            console_socket,
            preserve_fds,
            cwd,
            env,
            id,
            args,
        } => {
            let process = match process {
                Some(p) => {
                    let bytes =
                        std::fs::read(p).with_context(|| format!("--process {}", p.display()))?;
                    serde_json::from_slice::<oci_spec::runtime::Process>(&bytes).with_context(
                        || format!("--process {}: not an OCI process JSON", p.display()),
                    )?
                }
                None => {
                    if args.is_empty() {
                        bail!("exec: give --process FILE or the command to run");
                    }
                    let state = rt.state(id)?;
                    let bundle = carrack_runtime::spec::Bundle::load(&state.bundle)?;
                    let mut p = bundle
                        .spec
                        .process()
                        .clone()
                        .context("the container's spec has no process")?;
                    p.set_args(Some(args.clone()));
                    p.set_terminal(Some(*tty));
                    if let Some(c) = cwd {
                        p.set_cwd(c.clone());
                    }
                    let mut e = p.env().clone().unwrap_or_default();
                    e.extend(env.iter().cloned());
                    p.set_env(Some(e));
                    p
                }
            };
            let code = rt.exec(
                id,
                &ExecOptions {
                    process: Some(process),
                    detach: *detach,
                    pid_file: pid_file.clone(),
                    console_socket: console_socket.clone(),
                    preserve_fds: *preserve_fds as i32,
                },
            )?;
            return Ok(if *detach { 0 } else { code });
        }
        Cmd::Ps { format, id } => {
            let pids = rt.pids(id)?;
            if format == "json" {
                println!("{}", serde_json::to_string(&pids)?);
            } else {
                println!("PID");
                for p in pids {
                    println!("{p}");
                }
            }
        }
        Cmd::Pause { id } => rt.pause(id)?,
        Cmd::Resume { id } => rt.resume(id)?,
        Cmd::List { format, quiet } => {
            let all = rt.list()?;
            if format == "json" {
                println!("{}", serde_json::to_string(&all)?);
            } else if *quiet {
                for s in all {
                    println!("{}", s.id);
                }
            } else {
                println!(
                    "{:<24} {:<8} {:<10} {:<40} CREATED",
                    "ID", "PID", "STATUS", "BUNDLE"
                );
                for s in all {
                    println!(
                        "{:<24} {:<8} {:<10} {:<40} {}",
                        s.id,
                        s.pid,
                        s.status,
                        s.bundle.display(),
                        s.created
                    );
                }
            }
        }
        Cmd::Update { resources, id } => {
            let bytes = if resources.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                b
            } else {
                std::fs::read(resources)
                    .with_context(|| format!("--resources {}", resources.display()))?
            };
            let r: oci_spec::runtime::LinuxResources = serde_json::from_slice(&bytes)
                .with_context(|| {
                    format!(
                        "--resources {}: not OCI linux.resources JSON",
                        resources.display()
                    )
                })?;
            rt.update(id, &r)?;
        }
        Cmd::Events { stats, id } => {
            if !stats {
                bail!(
                    "events: only --stats is supported; a stream of events is not implemented yet"
                );
            }
            println!("{}", rt.stats(id)?);
        }
        Cmd::Spec { bundle } => {
            let path = bundle.join("config.json");
            if path.exists() {
                bail!("{} exists already", path.display());
            }
            let mut spec = oci_spec::runtime::Spec::default();
            if let Some(p) = spec.process_mut() {
                p.set_terminal(Some(false));
                p.set_args(Some(vec!["sh".into()]));
            }
            std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
        }
        Cmd::Features => {
            let features = serde_json::json!({
                "ociVersionMin": "1.0.0",
                "ociVersionMax": "1.2.0",
                "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
                "mountOptions": ["ro","rw","nosuid","suid","nodev","dev","noexec","exec","sync","async","dirsync","remount","mand","nomand","noatime","atime","nodiratime","diratime","relatime","norelatime","strictatime","bind","rbind","private","rprivate","slave","rslave","shared","rshared","unbindable","runbindable","rro"],
                "linux": {
                    "namespaces": ["cgroup","ipc","mount","network","pid","user","uts","time"],
                    "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                    "cgroup": {"v1": true, "v2": true, "systemd": true, "systemdUser": false},
                    "seccomp": {
                        "enabled": true,
                        "actions": ["SCMP_ACT_ALLOW","SCMP_ACT_ERRNO","SCMP_ACT_KILL","SCMP_ACT_KILL_PROCESS","SCMP_ACT_KILL_THREAD","SCMP_ACT_LOG","SCMP_ACT_TRACE","SCMP_ACT_TRAP"],
                        "operators": ["SCMP_CMP_EQ","SCMP_CMP_GE","SCMP_CMP_GT","SCMP_CMP_LE","SCMP_CMP_LT","SCMP_CMP_MASKED_EQ","SCMP_CMP_NE"],
                        "archs": ["SCMP_ARCH_X86","SCMP_ARCH_X86_64","SCMP_ARCH_X32"],
                        "supportedFlags": ["SECCOMP_FILTER_FLAG_LOG","SECCOMP_FILTER_FLAG_SPEC_ALLOW","SECCOMP_FILTER_FLAG_TSYNC"]
                    },
                    "apparmor": {"enabled": carrack_runtime::apparmor::enabled()},
                    "selinux": {"enabled": false}
                }
            });
            println!("{}", serde_json::to_string_pretty(&features)?);
        }
    }
    Ok(0)
}

/// Parses a signal as runc does: a number, `KILL` or `SIGKILL`.
fn parse_signal(s: &str) -> anyhow::Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).with_context(|| format!("signal {s:?}: no such signal number"));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>()
        .with_context(|| format!("signal {s:?}: not a signal name"))
}
