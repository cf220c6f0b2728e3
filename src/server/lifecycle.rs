//! The daemon's shell around the services: one kilnd per root, the listening socket (inherited from systemd
//! or bound here, a stale one removed), and readiness notification.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::Error;
use crate::config::Config;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { path, source }
}

/// Holds `<root>/kilnd.lock` for the daemon's life: a second kilnd on the same root refuses to start.
pub struct RootLock(#[allow(dead_code)] Flock<File>);

pub fn lock_root(root: &Path) -> Result<RootLock, Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(root).map_err(io(root))?;
    let path = root.join("kilnd.lock");
    let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map(RootLock).map_err(|(_, errno)| Error::Io {
        path,
        source: std::io::Error::new(std::io::ErrorKind::WouldBlock, format!("another kilnd holds this root ({errno})")),
    })
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

/// The systemd-passed socket if there is one, else a new socket at the configured address (mode 0660,
/// group as configured). A socket file nobody answers on is stale and replaced; a live one means another
/// daemon is serving there, and kilnd refuses.
pub fn listen(config: &Config) -> Result<Listener, Error> {
    if let Some(fd) = crate::sys::listen_fds().into_iter().next() {
        return Ok(Listener::Inherited(StdUnixListener::from(fd)));
    }
    let path = config.socket_path().map_err(|e| Error::Io {
        path: PathBuf::from(&config.address),
        source: std::io::Error::other(e.to_string()),
    })?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
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
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    let listener = StdUnixListener::bind(&path).map_err(io(&path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).map_err(io(&path))?;
    if let Some(group) = &config.socket_group {
        let gid = nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .ok_or_else(|| Error::Io {
                path: path.clone(),
                source: std::io::Error::other(format!("no group {group:?}")),
            })?
            .gid;
        nix::unistd::chown(&path, None, Some(gid)).map_err(|e| Error::Io { path: path.clone(), source: e.into() })?;
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
