//! `kiln`: the command-line client. Daemonless verbs (`image inspect --image`, `unpack`) call the library
//! directly; the others talk to kilnd over its socket. One file per verb group.

mod bundle;
mod image;
mod inspect;
mod system;
mod unpack;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kiln", version, about = "Turn OCI images into ready-to-run OCI runtime bundles")]
struct Cli {
    /// kilnd's socket.
    #[arg(long, global = true, env = "KILN_ADDRESS", default_value = "unix:///run/kiln/kilnd.sock")]
    address: String,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
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
    /// Work with bundles prepared by kilnd.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// The daemon itself.
    System {
        #[command(subcommand)]
        command: SystemCommand,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Prepare a bundle from an image; prints its path (for `runc run --bundle`).
    Create(bundle::CreateArgs),
    /// Describe one bundle.
    Inspect { id: String },
    /// List bundles.
    Ls,
    /// Unmount and remove a bundle.
    Rm {
        id: String,
        /// Remove it even while a container runs on it (its writable layer goes from under it).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// List the images in kilnd's stores.
    Ls,
    /// Resolve an image and print it as JSON: `--image LAYOUT[:REF]` reads a layout directly (no daemon);
    /// a bare REF asks kilnd.
    Inspect(inspect::Args),
    /// Copy an OCI layout directory, oci-archive or docker-archive into kilnd's store.
    Import {
        /// The layout directory or archive file.
        source: String,
        /// The ref name to give it in the store; without it, every image keeps its name from the source.
        #[arg(long)]
        name: Option<String>,
        /// Which image of the source to take (a ref name, or a RepoTag for docker-archive).
        #[arg(long, default_value = "")]
        source_ref: String,
        /// Send the path for kilnd to look up, instead of opening the source here and passing it as a file
        /// descriptor (either way kilnd reads it with your rights).
        #[arg(long)]
        by_path: bool,
    },
    /// Unpack an image's layers into snapshots ahead of time.
    Pull {
        reference: String,
        #[arg(long)]
        platform: Option<String>,
    },
    /// Remove a ref name from kilnd's store.
    Rm { name: String },
}

#[derive(Subcommand)]
enum SystemCommand {
    /// Version, paths, snapshotter and disk use.
    Info,
    /// Remove what nothing refers to.
    Gc {
        #[arg(long)]
        dry_run: bool,
    },
}

/// How to reach kilnd.
pub struct Remote {
    pub address: String,
    pub json: bool,
}

impl Remote {
    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        Ok(kiln::client::connect(&self.address).await?)
    }
}

/// One progress line, redrawn in place on a terminal; silent otherwise.
pub struct Progress {
    on: bool,
}

impl Progress {
    pub fn new(json: bool) -> Progress {
        Progress { on: !json && std::io::stderr().is_terminal() }
    }
    pub fn show(&self, line: &str) {
        if self.on {
            eprint!("\r\x1b[K{line}");
            let _ = std::io::stderr().flush();
        }
    }
    pub fn finish(&self) {
        if self.on {
            eprint!("\r\x1b[K");
        }
    }
}

/// Prints `value` as pretty JSON on stdout. A closed pipe (`kiln … | head`) is not an error.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
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

/// A gRPC status prints as its message, with the code only when the message is empty.
fn describe(e: &anyhow::Error) -> String {
    match e.downcast_ref::<tonic::Status>() {
        Some(s) if s.message().is_empty() => format!("{:?}", s.code()),
        Some(s) => s.message().replace('\n', " "),
        None => kiln::error::report(e.as_ref()),
    }
}

fn remote_call(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let remote = Remote { address: cli.address, json: cli.json };
    let result = match cli.command {
        Command::Image { command } => match command {
            ImageCommand::Inspect(args) if args.image.is_some() => inspect::run(args),
            ImageCommand::Inspect(args) => {
                remote_call(image::inspect(&remote, args.reference.as_deref().unwrap_or(""), args.platform.as_deref()))
            }
            ImageCommand::Ls => remote_call(image::ls(&remote)),
            ImageCommand::Import { source, name, source_ref, by_path } => {
                remote_call(image::import(&remote, &source, name.as_deref().unwrap_or(""), &source_ref, by_path))
            }
            ImageCommand::Pull { reference, platform } => {
                remote_call(image::pull(&remote, &reference, platform.as_deref()))
            }
            ImageCommand::Rm { name } => remote_call(image::rm(&remote, &name)),
        },
        Command::Unpack(args) => unpack::run(args, remote.json),
        Command::Bundle { command } => match command {
            BundleCommand::Create(args) => remote_call(bundle::create(&remote, args)),
            BundleCommand::Inspect { id } => remote_call(bundle::inspect(&remote, &id)),
            BundleCommand::Ls => remote_call(bundle::ls(&remote)),
            BundleCommand::Rm { id, force } => remote_call(bundle::rm(&remote, &id, force)),
        },
        Command::System { command } => match command {
            SystemCommand::Info => remote_call(system::info(&remote)),
            SystemCommand::Gc { dry_run } => remote_call(system::gc(&remote, dry_run)),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line naming what was wrong; never a backtrace.
            eprintln!("kiln: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}
