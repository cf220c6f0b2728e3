//! `kilnd`: flags → config → tracing → serve. Exit 64 on a usage or configuration error, before binding.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use kiln::config::{Config, LogFormat, SnapshotterKind};
use kiln::server::{self, lifecycle};

#[derive(Parser)]
#[command(
    name = "kilnd",
    version,
    about = "kiln daemon: OCI runtime bundles over gRPC on a Unix socket",
    after_help = "Each flag overrides the same setting of --config; without either, the default shown applies."
)]
struct Flags {
    /// TOML configuration file; every field has a default (see the README's configuration section).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Content store, snapshots and metadata [default: /var/lib/kiln].
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Socket and bundles [default: /run/kiln].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// The socket to listen on [default: unix://STATE/kilnd.sock, i.e. unix:///run/kiln/kilnd.sock].
    #[arg(long, value_name = "unix:///PATH")]
    address: Option<String>,
    /// containerd's snapshots API socket; "" for none [default: unix://STATE/containerd-snapshots.sock].
    #[arg(long, value_name = "unix:///PATH")]
    snapshots_address: Option<String>,
    /// Serve metrics (OpenMetrics text, GET /metrics) on this loopback address or Unix socket; "" for none
    /// [default: none].
    #[arg(long, value_name = "tcp://127.0.0.1:PORT|unix:///PATH")]
    metrics_address: Option<String>,
    /// How snapshots are stored [default: overlayfs, or native where the kernel has no overlayfs].
    #[arg(long, value_parser = ["overlayfs", "native"])]
    snapshotter: Option<String>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `kiln=debug` [default: info].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log line format [default: text].
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
}

const EX_USAGE: u8 = 64;

fn config(flags: Flags) -> anyhow::Result<Config> {
    let mut c = Config::load(flags.config.as_deref())?;
    if let Some(r) = flags.root {
        c.root = r;
    }
    if let Some(s) = flags.state {
        let default_address = Config::default().address;
        if c.address == default_address {
            c.address = format!("unix://{}", s.join("kilnd.sock").display());
        }
        c.state = s;
    }
    if let Some(a) = flags.address {
        c.address = a;
    }
    // In the state directory, as kilnd.sock by default, however that was set — unless it was set itself.
    let d = Config::default();
    if c.snapshots_address == d.snapshots_address && c.state != d.state {
        c.snapshots_address = format!("unix://{}", c.state.join("containerd-snapshots.sock").display());
    }
    if let Some(a) = flags.snapshots_address {
        c.snapshots_address = a;
    }
    if let Some(a) = flags.metrics_address {
        c.metrics_address = a;
    }
    if let Some(s) = flags.snapshotter {
        c.snapshotter = s.parse::<SnapshotterKind>().map_err(anyhow::Error::msg)?;
    }
    if let Some(l) = flags.log_level {
        c.log.level = l;
    }
    if let Some(f) = flags.log_format {
        c.log.format = if f == "json" { LogFormat::Json } else { LogFormat::Text };
    }
    c.validate()?;
    Ok(c)
}

/// SIGTERM and SIGINT, held (blocked) from the first instruction of `main` until their handlers exist.
fn stop_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

fn main() -> ExitCode {
    // A stop that arrives while kilnd starts (recovery, binding its sockets: a client may already connect)
    // waits for the handlers instead of killing the daemon mid-repair, and cannot fall into the moment a
    // handler is being installed, where it would be lost and the daemon never stop.
    let _ = stop_signals().thread_block();
    let flags = match Flags::try_parse() {
        Ok(f) => f,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(EX_USAGE);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let config = match config(flags) {
        Ok(c) => c,
        Err(e) => {
            // Line breaks kept: a TOML error shows the line and a caret under the mistake.
            eprintln!("kilnd: {}", kiln::error::report_lines(e.as_ref()));
            return ExitCode::from(EX_USAGE);
        }
    };
    let filter = tracing_subscriber::EnvFilter::new(&config.log.level);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match config.log.format {
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init(),
        LogFormat::Text => {
            tracing_subscriber::fmt().with_ansi(ansi).with_env_filter(filter).with_writer(std::io::stderr).init()
        }
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        // Not a failure of this daemon but of how it was started: a usage error, said once and plainly.
        Err(e) if matches!(e.downcast_ref::<server::Error>(), Some(server::Error::Held { .. })) => {
            eprintln!("kilnd: {e}");
            ExitCode::from(EX_USAGE)
        }
        Err(e) => {
            // Logging is set up by now and writes to stderr: one record, in the configured format.
            tracing::error!("kilnd: {}", kiln::error::report(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft descriptor limit to the hard one (as Go programs do at start), and warns when
/// `limits.max_connections` would leave too few descriptors for the work itself.
fn descriptor_limit(config: &Config) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() { hard } else { soft };
    // Work needs descriptors too: layer extraction, the store, meta.redb, mounts. Each socket takes up to
    // max_connections.
    let sockets = if config.snapshots_address.is_empty() { 1 } else { 2 };
    let wanted = config.limits.max_connections as u64 * sockets + 256;
    if soft < wanted {
        tracing::warn!(
            nofile = soft,
            max_connections = config.limits.max_connections,
            "the descriptor limit leaves little room beside limits.max_connections; raise LimitNOFILE or lower it"
        );
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    descriptor_limit(&config);
    // Every worker thread belongs to an admitted request (limits.concurrent), so the pool never queues.
    let workers = config.limits.concurrent.total() + 16;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(workers)
        .enable_all()
        .build()
        .context("starting tokio")?;
    // The stop signals' handlers, then the signals let through (on this thread, which runs start-up and then
    // waits in block_on; the runtime's threads keep them blocked): one that came during start-up so far is
    // delivered now and drains the daemon as soon as it serves.
    let (mut term, mut int) = {
        use tokio::signal::unix::{signal, SignalKind};
        let _runtime = runtime.enter();
        (
            signal(SignalKind::terminate()).context("SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("SIGINT handler")?,
        )
    };
    stop_signals().thread_unblock().context("unblocking SIGTERM and SIGINT")?;
    // The reference grammar's regex (oci-client's) is compiled on first use, in the first registry pull (tens of
    // ms). It is not warmed here: compiled, it holds 13 MiB, which would more than double an idle kilnd's RSS
    // (23.9 → 10.7 MiB measured; issue 15's idle target is 20 MiB).
    let _lock = lifecycle::lock_root(&config.root, &config.state)?;
    let daemon = server::Daemon::new(config.clone()).context("preparing directories")?;
    let listeners = lifecycle::listen(&config)?;
    let socket_files = listeners.bound_files();
    let deadline = std::time::Duration::from_secs(config.shutdown_timeout_secs);
    let result = runtime.block_on(async move {
        let listener = listeners.kiln.into_tokio()?;
        let containerd = listeners.snapshots.map(lifecycle::Listener::into_tokio).transpose()?;
        let metrics = listeners.metrics.map(lifecycle::MetricsListener::into_tokio).transpose()?;
        // The signal handlers were installed before the sockets were bound: a SIGTERM as soon as a client can
        // connect (before READY=1, even) drains instead of killing.
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
            let _ = lifecycle::notify("STOPPING=1");
        };
        tracing::info!(
            root = %config.root.display(),
            state = %config.state.display(),
            address = %config.address,
            snapshots_address = %config.snapshots_address,
            snapshotter = config.snapshotter.name(),
            "kilnd serving"
        );
        lifecycle::notify("READY=1")?;
        Ok::<_, anyhow::Error>(server::serve(daemon, listener, containerd, metrics, shutdown).await?)
    });
    for p in socket_files {
        let _ = kiln::sys::host::remove_file(&p);
    }
    // Blocking work still running past the drain deadline (a stuck import, say) does not hold up exit.
    runtime.shutdown_timeout(deadline);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag says what it is for, and the defaults its help states are the embedded ones.
    #[test]
    fn flags_are_described_with_their_real_defaults() {
        let cmd = Flags::command();
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id != "help" && id != "version" {
                assert!(a.get_help().is_some(), "--{id} has no help");
            }
        }
        let help = cmd.clone().render_help().to_string();
        let d = Config::default();
        for shown in [
            format!("[default: {}]", d.root.display()),
            format!("[default: {}]", d.state.display()),
            format!("i.e. {}]", d.address),
            format!("[default: {},", d.snapshotter.name()),
            format!("[default: {}]", d.log.level),
            "[possible values: overlayfs, native]".to_string(),
        ] {
            assert!(help.contains(&shown), "kilnd --help lacks {shown:?}:\n{help}");
        }
    }
}
