//! The connections kilnd serves: a Unix stream that knows its peer — `SO_PEERCRED` and `SO_PEERGROUPS`, read
//! at accept — and that takes one file descriptor passed with `SCM_RIGHTS` on the connection's first bytes,
//! before HTTP/2 starts. `kiln image import` opens its source itself and passes it that way
//! ([`crate::client::connect_passing`]), so the kernel resolved the path with the caller's rights, in the
//! caller's mount namespace; `Images.Import` with `source_fd` then takes it ([`Peer::take_passed_fd`]).
//!
//! Why on the connection itself, and only on its first read: HTTP/2 gives no place for ancillary data, but a
//! stream socket delivers a descriptor with the bytes it was sent with, and the client's first bytes are the
//! HTTP/2 preface, which the server reads before any request. So the descriptor is in place before the
//! request that uses it arrives, it can only come from the peer whose credentials the connection carries,
//! and no side channel (a second socket, tokens, expiry) is needed. Later reads are plain reads: descriptors
//! sent after the first bytes are closed by the kernel unread. More than one descriptor is refused (all
//! closed); one that no request takes is closed with the connection.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt};

use crate::source::Access;
use crate::sys::{self, creds::Creds};

/// Who is at the other end of a connection, and the descriptor it passed, if any. Every request of the
/// connection carries it in its extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
    /// Supplementary groups as of `connect` (empty when the kernel could not say).
    pub groups: Arc<Vec<u32>>,
    passed: Arc<Mutex<Option<OwnedFd>>>,
}

impl Peer {
    fn of(io: &UnixStream) -> Peer {
        let cred = io.peer_cred().ok();
        Peer {
            uid: cred.map(|c| c.uid()),
            gid: cred.map(|c| c.gid()),
            pid: cred.and_then(|c| c.pid()),
            groups: Arc::new(sys::sock::peer_groups(io).unwrap_or_default()),
            passed: Arc::new(Mutex::new(None)),
        }
    }

    /// The descriptor passed on this connection; the first request to ask takes it.
    pub fn take_passed_fd(&self) -> Option<OwnedFd> {
        self.passed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// `uid=… gid=… pid=…` for the log line of a mutating call.
    pub fn describe(&self) -> String {
        match (self.uid, self.gid) {
            (Some(u), Some(g)) => format!("uid={u} gid={g} pid={}", self.pid.map_or(-1, i64::from)),
            _ => "unknown".into(),
        }
    }

    /// Whose rights an import for this peer reads with: kilnd's own for root (and for kilnd's own uid), the
    /// peer's for everyone else. `None` when the kernel gave no credentials.
    pub fn import_access(&self) -> Option<Access> {
        let (uid, gid) = (self.uid?, self.gid?);
        if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
            return Some(Access::Own);
        }
        let creds = Creds { uid, gid, groups: self.groups.to_vec() };
        Some(Access::Caller { creds, pid: self.pid })
    }
}

/// A served connection. See the module docs.
pub struct PeerStream {
    io: UnixStream,
    first_read: bool,
    peer: Peer,
}

impl PeerStream {
    pub fn new(io: UnixStream) -> PeerStream {
        let peer = Peer::of(&io);
        PeerStream { io, first_read: true, peer }
    }

    fn keep(&self, mut fds: Vec<OwnedFd>) {
        match fds.len() {
            0 => {}
            1 => *self.peer.passed.lock().unwrap_or_else(|p| p.into_inner()) = fds.pop(),
            n => tracing::warn!(peer = %self.peer.describe(), count = n, "more than one descriptor passed; all closed"),
        }
    }
}

/// kilnd's incoming connections on `listener`.
pub fn incoming(listener: UnixListener) -> impl Stream<Item = io::Result<PeerStream>> {
    tokio_stream::wrappers::UnixListenerStream::new(listener).map(|r| r.map(PeerStream::new))
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.first_read || buf.remaining() == 0 {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        loop {
            ready!(this.io.poll_read_ready(cx))?;
            let dst = buf.initialize_unfilled();
            match this.io.try_io(Interest::READABLE, || sys::sock::recv_with_fds(&this.io, dst)) {
                Ok(got) => {
                    buf.advance(got.bytes);
                    this.first_read = false;
                    this.keep(got.fds);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
