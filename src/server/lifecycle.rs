//! The daemon's shell around the services: one kilnd per root, the listening sockets — kilnd.sock and the
//! containerd snapshots API's (inherited from systemd or bound here, a stale one removed), and the metrics
//! listener (a loopback TCP port, or a Unix socket bound like the others) — and readiness notification.

use crate::sys::host;
use std::fs::File;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::Error;
use crate::config::{Config, MetricsEndpoint};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { path, source }
}

fn sys(path: &Path) -> impl FnOnce(crate::sys::SysError) -> Error {
    let path = path.to_path_buf();
    move |e| Error::Io { path, source: std::io::Error::other(e.to_string()) }
}

/// Holds `<root>/kilnd.lock` and `<state>/kilnd.lock` for the daemon's life: a second kilnd on the same root
/// or the same state directory refuses to start, before it has swept, mounted or removed anything (a
/// `kilnd --root /tmp/x` on a host whose kilnd uses the default state would otherwise sweep that daemon's
/// bundles as "no record").
pub struct RootLock(#[allow(dead_code)] Vec<Flock<File>>);

pub fn lock_root(root: &Path, state: &Path) -> Result<RootLock, Error> {
    use std::io::{Seek, Write};
    let mut held = Vec::new();
    for (dir, mode, what) in [(root, 0o700, "root"), (state, 0o711, "state directory")] {
        host::ensure_dir(dir, mode).map_err(sys(dir))?;
        let path = dir.join("kilnd.lock");
        let file = host::open_write(&path, nix::fcntl::OFlag::empty(), 0o600).map_err(sys(&path))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                // The holder wrote its pid into the file when it took the lock.
                let pid = host::read_to_string(&path).ok().and_then(|t| t.trim().parse::<u32>().ok());
                return Err(Error::Held { dir: dir.to_path_buf(), what, lock: path, pid });
            }
            Err((_, errno)) => return Err(sys(&path)(crate::sys::SysError::new("flock", "LOCK_EX|LOCK_NB", errno))),
        };
        // Ours now: say who holds it (the file stays; only the lock matters).
        lock.set_len(0).map_err(io(&path))?;
        lock.rewind().map_err(io(&path))?;
        writeln!(lock, "{}", std::process::id()).map_err(io(&path))?;
        held.push(lock);
    }
    Ok(RootLock(held))
}

/// Where the listener came from.
pub enum Listener {
    /// Passed by systemd socket activation; systemd owns the socket file.
    Inherited(StdUnixListener),
    /// Bound here; the file is removed at exit.
    Bound(StdUnixListener, PathBuf),
}

impl Listener {
    pub fn into_tokio(self) -> Result<tokio::net::UnixListener, Error> {
        let l = match self {
            Listener::Inherited(l) | Listener::Bound(l, _) => l,
        };
        l.set_nonblocking(true).map_err(io(Path::new("listener")))?;
        tokio::net::UnixListener::from_std(l).map_err(io(Path::new("listener")))
    }
}

/// The name a socket unit gives the containerd snapshots socket (`FileDescriptorName=` in
/// `systemd/kilnd-snapshots.socket`).
pub const SNAPSHOTS_FD_NAME: &str = "containerd-snapshots";

/// The metrics listener (`metrics_address`): never inherited from systemd.
pub enum MetricsListener {
    Tcp(std::net::TcpListener),
    /// Bound by [`bind`], like kilnd.sock.
    Unix(Listener),
}

impl MetricsListener {
    pub fn into_tokio(self) -> Result<super::metrics::Listener, Error> {
        Ok(match self {
            MetricsListener::Unix(l) => super::metrics::Listener::Unix(l.into_tokio()?),
            MetricsListener::Tcp(l) => {
                l.set_nonblocking(true).map_err(io(Path::new("metrics listener")))?;
                super::metrics::Listener::Tcp(
                    tokio::net::TcpListener::from_std(l).map_err(io(Path::new("metrics listener")))?,
                )
            }
        })
    }
}

/// kilnd's listeners: `kilnd.sock`, the containerd snapshots API's socket unless `snapshots_address` is
/// empty, and the metrics listener if `metrics_address` names one.
pub struct Listeners {
    pub kiln: Listener,
    pub snapshots: Option<Listener>,
    pub metrics: Option<MetricsListener>,
}

impl Listeners {
    /// The socket files bound here (removed at exit; systemd removes its own).
    pub fn bound_files(&self) -> Vec<PathBuf> {
        let metrics = match &self.metrics {
            Some(MetricsListener::Unix(l)) => Some(l),
            _ => None,
        };
        [Some(&self.kiln), self.snapshots.as_ref(), metrics]
            .into_iter()
            .flatten()
            .filter_map(|l| match l {
                Listener::Bound(_, p) => Some(p.clone()),
                Listener::Inherited(_) => None,
            })
            .collect()
    }
}

/// The systemd-passed sockets if there are any, else new sockets at the configured addresses. Of the passed
/// ones, the one named [`SNAPSHOTS_FD_NAME`] is the snapshots socket (bound here when none is so named) and
/// the first other one is kilnd.sock. See [`bind`] for what a socket bound here is like.
pub fn listen(config: &Config) -> Result<Listeners, Error> {
    let mut passed = crate::sys::listen_fds();
    let snapshots_fd = passed.iter().position(|(_, n)| n == SNAPSHOTS_FD_NAME).map(|i| passed.remove(i).0);
    let kiln = match passed.into_iter().next() {
        Some((fd, _)) => Listener::Inherited(StdUnixListener::from(fd)),
        None => {
            let path = config.socket_path().map_err(|e| Error::Io {
                path: PathBuf::from(&config.address),
                source: std::io::Error::other(e.to_string()),
            })?;
            bind(&path, config)?
        }
    };
    let snapshots_path = config.snapshots_socket_path().map_err(|e| Error::Io {
        path: PathBuf::from(&config.snapshots_address),
        source: std::io::Error::other(e.to_string()),
    })?;
    let snapshots = match (snapshots_fd, snapshots_path) {
        (Some(fd), _) => Some(Listener::Inherited(StdUnixListener::from(fd))),
        (None, Some(path)) => Some(bind(&path, config)?),
        (None, None) => None,
    };
    // Bound here, before readiness, so that a taken port or a live socket fails kilnd's start-up.
    let endpoint = config.metrics_endpoint().map_err(|e| Error::Io {
        path: PathBuf::from(&config.metrics_address),
        source: std::io::Error::other(e.to_string()),
    })?;
    let metrics = match endpoint {
        None => None,
        Some(MetricsEndpoint::Tcp(addr)) => Some(MetricsListener::Tcp(
            std::net::TcpListener::bind(addr)
                .map_err(|source| Error::Io { path: PathBuf::from(format!("metrics_address {addr}")), source })?,
        )),
        Some(MetricsEndpoint::Unix(path)) => Some(MetricsListener::Unix(bind(&path, config)?)),
    };
    Ok(Listeners { kiln, snapshots, metrics })
}

/// A new socket at `path` (mode 0660, group as configured), in a directory only root or kilnd's user can
/// change (else kilnd refuses to start, naming the directory). A socket file nobody answers on is stale and
/// replaced; a live one means another daemon is serving there, and kilnd refuses.
fn bind(path: &Path, config: &Config) -> Result<Listener, Error> {
    let path = path.to_path_buf();
    if let Some(parent) = path.parent() {
        host::create_dir_all(parent).map_err(sys(parent))?;
        // Whoever can write the socket's directory (or one above it) can swap the socket for their own and
        // receive every caller's requests.
        if let Some((dir, why)) = host::insecure_dir(parent, nix::unistd::geteuid().as_raw()) {
            return Err(Error::Io {
                path: dir,
                source: std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{why}: the socket's directory must be changeable only by root or kilnd's user"),
                ),
            });
        }
    }
    if let Ok(st) = host::lstat(&path) {
        if crate::sys::fs::file_type(&st) != nix::sys::stat::SFlag::S_IFSOCK {
            return Err(Error::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not a socket"),
            });
        }
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(Error::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "a daemon is already listening here"),
            });
        }
        host::remove_file(&path).map_err(sys(&path))?;
    }
    let listener = StdUnixListener::bind(&path).map_err(io(&path))?;
    host::chmod(&path, 0o660).map_err(sys(&path))?;
    if let Some(group) = &config.socket_group {
        let gid = nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .ok_or_else(|| Error::Io {
                path: path.clone(),
                source: std::io::Error::other(format!("no group {group:?}")),
            })?
            .gid;
        host::chown(&path, None, Some(gid.as_raw())).map_err(sys(&path))?;
    }
    Ok(Listener::Bound(listener, path))
}

/// `sd_notify(0, "READY=1")`: tells systemd (Type=notify) that the socket is being served. A no-op
/// without `NOTIFY_SOCKET`.
pub fn notify(state: &str) -> Result<(), Error> {
    let Some(addr) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(()) };
    let sock = std::os::unix::net::UnixDatagram::unbound().map_err(io(Path::new("NOTIFY_SOCKET")))?;
    let bytes = addr.as_encoded_bytes();
    let target = PathBuf::from(&addr);
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(io(&target))?;
        sock.send_to_addr(state.as_bytes(), &a).map_err(io(&target))?;
    } else {
        sock.send_to(state.as_bytes(), &target).map_err(io(&target))?;
    }
    Ok(())
}
