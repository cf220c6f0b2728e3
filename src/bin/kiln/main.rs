//! `kiln`: the command-line client. Daemonless verbs (`image inspect --image`, `unpack`) call the library
//! directly; one file per verb.

mod inspect;
mod unpack;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kiln", version, about = "Turn OCI images into ready-to-run OCI runtime bundles")]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `warn`, `kiln=debug`.
    #[arg(long, global = true, default_value = "warn", env = "KILN_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Unpack an image from an OCI layout into a runtime bundle (config.json + rootfs), no daemon.
    Unpack(unpack::Args),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Resolve an image in an OCI layout and print it as JSON (no daemon).
    Inspect(inspect::Args),
}

/// Prints `value` as pretty JSON on stdout. A closed pipe (`kiln … | head`) is not an error.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let result = serde_json::to_writer_pretty(&mut out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush());
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Image { command: ImageCommand::Inspect(args) } => inspect::run(args),
        Command::Unpack(args) => unpack::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line naming what was wrong; never a backtrace.
            eprintln!("kiln: {e}");
            ExitCode::FAILURE
        }
    }
}
