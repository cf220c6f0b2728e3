//! `connect(address)`: a tonic channel to kilnd over its Unix socket, for the CLI and tests;
//! `connect_passing(address, fd)`: the same, with a file descriptor passed to kilnd on the connection's
//! first bytes (`SCM_RIGHTS`), for `Images.Import` with `source_fd` (see `server::peer`).
//!
//! May use: `api`, `config`, `sys`.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::error::ErrorKind;

/// Errors connecting to kilnd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Address(#[from] crate::config::Error),
    #[error("connecting to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    /// Nothing listens at the address: the usual first-hour mistake, said plainly.
    #[error(
        "kilnd is not running at unix://{path} ({why}); start it with `kilnd` (or `systemctl start kilnd.socket`), \
         or point --address / KILN_ADDRESS at its socket"
    )]
    NotRunning { path: PathBuf, why: &'static str },
}

impl Error {
    /// [`Error::NotRunning`] when the connection failed because no socket is there or nobody accepts on it.
    fn connecting(path: PathBuf, source: tonic::transport::Error) -> Error {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&source);
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                let why = match io.kind() {
                    std::io::ErrorKind::NotFound => Some("there is no socket there"),
                    std::io::ErrorKind::ConnectionRefused => Some("nothing accepts connections on that socket"),
                    _ => None,
                };
                if let Some(why) = why {
                    return Error::NotRunning { path, why };
                }
            }
            cause = c.source();
        }
        Error::Connect { path, source }
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Address(_) => ErrorKind::InvalidArgument,
            Error::Connect { .. } | Error::NotRunning { .. } => ErrorKind::FailedPrecondition,
        }
    }
}

/// Connects to kilnd at `address` (`unix:///path` or `/path`).
pub async fn connect(address: &str) -> Result<Channel, Error> {
    let path = crate::config::socket_path(address)?;
    let target = path.clone();
    // The URI is required by tonic but unused: every connection goes to the socket.
    Endpoint::from_static("http://kilnd.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let target = target.clone();
            async move { tokio::net::UnixStream::connect(target).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|source| Error::connecting(path, source))
}

/// Connects to kilnd at `address` and passes `fd` with the first bytes the connection sends (the HTTP/2
/// preface), so that a request on this channel can name it (`ImportImageRequest.source_fd`). The channel
/// must not be used for anything that needs a second connection: only the first one carries the descriptor.
pub async fn connect_passing(address: &str, fd: OwnedFd) -> Result<Channel, Error> {
    let path = crate::config::socket_path(address)?;
    let target = path.clone();
    let fd = Arc::new(Mutex::new(Some(fd)));
    Endpoint::from_static("http://kilnd.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let target = target.clone();
            let fd = fd.lock().unwrap_or_else(|p| p.into_inner()).take();
            async move { UnixStream::connect(target).await.map(|io| TokioIo::new(PassFd { io, fd })) }
        }))
        .await
        .map_err(|source| Error::connecting(path, source))
}

/// A client connection whose first write carries a descriptor.
struct PassFd {
    io: UnixStream,
    fd: Option<OwnedFd>,
}

impl AsyncRead for PassFd {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for PassFd {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(fd) = &this.fd else { return Pin::new(&mut this.io).poll_write(cx, buf) };
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = loop {
            ready!(this.io.poll_write_ready(cx))?;
            match this.io.try_io(Interest::WRITABLE, || crate::sys::sock::send_with_fd(&this.io, buf, fd)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        };
        this.fd = None;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
