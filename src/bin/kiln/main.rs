//! `kiln`: the command-line client. Daemonless verbs (`image inspect --image`, `unpack`) call the library
//! directly; the others talk to kilnd over its socket. One file per verb group.

mod bundle;
mod image;
mod inspect;
mod output;
mod progress;
mod system;
mod unpack;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

const DEFAULT_ADDRESS: &str = "unix:///run/kiln/kilnd.sock";

#[derive(Parser)]
#[command(name = "kiln", version, about = "Turn OCI images into ready-to-run OCI runtime bundles")]
struct Cli {
    /// kilnd's socket (for `image`, `bundle` and `system`; also accepted after them).
    #[arg(long, env = "KILN_ADDRESS", default_value = DEFAULT_ADDRESS, value_name = "unix:///PATH")]
    address: String,
    /// Machine-readable output (JSON on stdout).
    #[arg(long, global = true)]
    json: bool,
    /// How `image import` and `image pull` show progress: a bar on a terminal (auto), a bar (tty), a line
    /// a second on stderr (plain), or nothing (none).
    #[arg(long, global = true, value_enum, default_value = "auto", env = "KILN_PROGRESS")]
    progress: progress::Mode,
    /// Log filter (tracing EnvFilter syntax), e.g. `warn`, `kiln=debug`.
    #[arg(long, global = true, default_value = "warn", env = "KILN_LOG", value_name = "FILTER")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

/// `--address` after a daemon verb group (`kiln image ls --address …`); `kiln unpack` has none.
#[derive(clap::Args)]
struct RemoteOpts {
    /// kilnd's socket [default: the top-level --address, KILN_ADDRESS or unix:///run/kiln/kilnd.sock].
    #[arg(long = "address", id = "group_address", global = true, value_name = "unix:///PATH")]
    address: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Work with images in kilnd's stores (and inspect a layout directly).
    Image {
        #[command(flatten)]
        remote: RemoteOpts,
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Unpack an image from an OCI layout into a runtime bundle (config.json + rootfs), no daemon.
    Unpack(unpack::Args),
    /// Work with bundles prepared by kilnd.
    Bundle {
        #[command(flatten)]
        remote: RemoteOpts,
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// The daemon itself.
    System {
        #[command(flatten)]
        remote: RemoteOpts,
        #[command(subcommand)]
        command: SystemCommand,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Prepare a bundle from an image; prints its path (for `runc run --bundle`).
    Create(bundle::CreateArgs),
    /// Describe one bundle.
    Inspect {
        /// The bundle's id.
        id: String,
    },
    /// List bundles.
    Ls,
    /// Unmount and remove a bundle.
    Rm {
        /// The bundle's id.
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
        /// Which image of the source to take (a ref name, or a RepoTag for docker-archive) [default: every
        /// image, or its only one with --name].
        #[arg(long, default_value = "", hide_default_value = true)]
        source_ref: String,
        /// Send the path for kilnd to look up, instead of opening the source here and passing it as a file
        /// descriptor (either way kilnd reads it with your rights).
        #[arg(long)]
        by_path: bool,
    },
    /// Unpack an image's layers into snapshots ahead of time.
    Pull {
        /// The image: a ref name in kilnd's store (`name:tag`), `@sha256:…`, or a registry reference
        /// (`docker://NAME`, or a name whose first part is a host: `registry.example:5000/app:v1`,
        /// `localhost/app@sha256:…`), fetched from its registry when the store lacks it.
        reference: String,
        /// The platform to select from a multi-platform image, OS/ARCH[/VARIANT] [default: this host].
        #[arg(long)]
        platform: Option<String>,
        /// Only make the image present in the store (fetched from its registry if need be); unpack nothing.
        #[arg(long)]
        no_unpack: bool,
        /// Credentials for the reference's registry, instead of kilnd's auth file entry for it (not for its
        /// mirrors), for this pull only; kilnd neither logs nor keeps them, and ignores them when the image is
        /// already in the store. Without PASSWORD (`--creds USER`), the password is read from stdin's first line
        /// (`echo "$PW" | kiln image pull --creds USER REF`), which must not be a terminal: a password on the
        /// command line is visible to other users of this machine.
        #[arg(long, value_name = "USER[:PASSWORD]")]
        creds: Option<String>,
    },
    /// Remove a ref name from kilnd's store (its blobs go at the next `system gc`).
    Rm {
        /// The ref name.
        name: String,
    },
}

#[derive(Subcommand)]
enum SystemCommand {
    /// Version, paths, snapshotter and disk use.
    Info,
    /// Remove what nothing refers to.
    Gc {
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check committed snapshot chains against their layers (applied again from the verified blobs); exits 1
    /// when one is damaged and not repaired.
    Fsck {
        /// One image (a ref name or `@sha256:…`) [default: every unpacked image].
        reference: Option<String>,
        /// The platform to select from a multi-platform image, OS/ARCH[/VARIANT] [default: this host].
        #[arg(long)]
        platform: Option<String>,
        /// Remove a damaged chain and unpack it again.
        #[arg(long)]
        repair: bool,
    },
}

/// How to reach kilnd, and how to show its answers.
pub struct Remote {
    pub address: String,
    pub json: bool,
    pub progress: progress::Mode,
}

impl Remote {
    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        Ok(kiln::client::connect(&self.address).await?)
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
    let (json, progress) = (cli.json, cli.progress);
    let remote =
        |o: &RemoteOpts| Remote { address: o.address.clone().unwrap_or_else(|| cli.address.clone()), json, progress };
    let result = match cli.command {
        Command::Image { remote: r, command } => match (remote(&r), command) {
            (_, ImageCommand::Inspect(args)) if args.image.is_some() => inspect::run(args),
            (remote, ImageCommand::Inspect(args)) => {
                let reference = args.reference.as_deref().unwrap_or("");
                remote_call(image::inspect(&remote, reference, args.platform.as_deref(), args.verify))
            }
            (remote, ImageCommand::Ls) => remote_call(image::ls(&remote)),
            (remote, ImageCommand::Import { source, name, source_ref, by_path }) => {
                remote_call(image::import(&remote, &source, name.as_deref().unwrap_or(""), &source_ref, by_path))
            }
            (remote, ImageCommand::Pull { reference, platform, no_unpack, creds }) => image::creds(creds.as_deref())
                .and_then(|c| remote_call(image::pull(&remote, &reference, platform.as_deref(), no_unpack, c))),
            (remote, ImageCommand::Rm { name }) => remote_call(image::rm(&remote, &name)),
        },
        Command::Unpack(args) => unpack::run(args, json),
        Command::Bundle { remote: r, command } => match (remote(&r), command) {
            (remote, BundleCommand::Create(args)) => remote_call(bundle::create(&remote, args)),
            (remote, BundleCommand::Inspect { id }) => remote_call(bundle::inspect(&remote, &id)),
            (remote, BundleCommand::Ls) => remote_call(bundle::ls(&remote)),
            (remote, BundleCommand::Rm { id, force }) => remote_call(bundle::rm(&remote, &id, force)),
        },
        Command::System { remote: r, command } => match (remote(&r), command) {
            (remote, SystemCommand::Info) => remote_call(system::info(&remote)),
            (remote, SystemCommand::Gc { dry_run }) => remote_call(system::gc(&remote, dry_run)),
            (remote, SystemCommand::Fsck { reference, platform, repair }) => {
                remote_call(system::fsck(&remote, reference.as_deref(), platform.as_deref(), repair))
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag and argument of every verb says what it is for (a walk of clap's command tree).
    #[test]
    fn every_argument_of_every_verb_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && !cmd.is_hide_set() {
                missing.push(format!("{path}: the command"));
            }
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" || a.is_hide_set() {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path}: {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &path, missing);
                }
            }
        }
        let mut missing = Vec::new();
        let mut cmd = Cli::command();
        cmd.build();
        walk(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "undescribed: {missing:#?}");
    }

    /// `kiln unpack` works without a daemon: its help does not offer a socket.
    #[test]
    fn unpack_has_no_address() {
        let mut cmd = Cli::command();
        cmd.build();
        let unpack = cmd.find_subcommand("unpack").expect("unpack");
        assert!(unpack.get_arguments().all(|a| a.get_long() != Some("address")));
        let image = cmd.find_subcommand("image").expect("image");
        let ls = image.find_subcommand("ls").expect("image ls");
        assert!(ls.get_arguments().any(|a| a.get_long() == Some("address")), "daemon verbs take --address");
    }
}
