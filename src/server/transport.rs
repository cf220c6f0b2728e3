//! The connections kilnd accepts on its Unix socket: at most `limits.max_connections` at once, and none kept
//! open idle past `limits.idle_timeout_secs`.
//!
//! [`Incoming`] accepts, and closes at once any connection over the cap (after an HTTP/2 GOAWAY saying why);
//! when accept fails for want of file descriptors it pauses instead of spinning on the ready listener. Each
//! accepted [`Conn`] carries a [`ConnInfo`] into its requests' extensions (tonic's `Connected`), through which
//! admitted requests mark the connection busy ([`ConnInfo::busy`]). A connection that has had no busy request
//! for the idle timeout fails its next read or write, and hyper closes it: a caller that opens connections,
//! sends headers it never completes, or stops reading a finished stream holds them only that long. HTTP/2
//! keepalive (hyper's PINGs) ends connections whose peer stopped answering at all. What the client sends
//! reaches hyper through [`AuthorityRead`] (`authority.rs`), so that any `:authority` is accepted.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use super::authority::AuthorityRead;
use super::peer::{Peer, PeerStream};

/// What one connection's requests share.
#[derive(Debug)]
struct ConnState {
    busy: AtomicUsize,
    /// When `busy` last dropped to 0 (or the connection was accepted).
    idle_since: Mutex<Instant>,
}

/// The connection a request came on: who is at the other end (and the descriptor it passed), plus its busy
/// count.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: Peer,
    state: Arc<ConnState>,
}

impl ConnInfo {
    /// Marks the connection busy until the guard is dropped.
    pub fn busy(&self) -> BusyGuard {
        let _since = self.state.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        self.state.busy.fetch_add(1, Ordering::SeqCst);
        BusyGuard(self.state.clone())
    }
}

/// See [`ConnInfo::busy`].
#[derive(Debug)]
pub struct BusyGuard(Arc<ConnState>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut since = self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        if self.0.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            *since = Instant::now();
        }
    }
}

/// An accepted connection. Holds its slot of `max_connections` until hyper drops it.
pub struct Conn {
    io: AuthorityRead<PeerStream>,
    state: Arc<ConnState>,
    idle_timeout: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    /// `Ready` with an error once the connection has been idle for the timeout; otherwise registers the wakeup.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(timeout) = self.idle_timeout else { return Poll::Pending };
        let gone = || io::Error::new(io::ErrorKind::TimedOut, "connection idle past limits.idle_timeout_secs");
        if self.timed_out {
            return Poll::Ready(gone());
        }
        loop {
            let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let next = {
                let since = self.state.idle_since.lock().unwrap_or_else(|p| p.into_inner());
                if self.state.busy.load(Ordering::SeqCst) > 0 {
                    Instant::now() + timeout
                } else if since.elapsed() >= timeout {
                    self.timed_out = true;
                    tracing::debug!("closing a connection idle for {}s", timeout.as_secs());
                    return Poll::Ready(gone());
                } else {
                    *since + timeout
                }
            };
            timer.as_mut().reset(next.into());
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Poll::Ready(e) = self.poll_idle(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Poll::Ready(e) = self.poll_idle(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Poll::Ready(e) = self.poll_idle(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo { peer: self.io.get_ref().connect_info(), state: self.state.clone() }
    }
}

/// The HTTP/2 server preface (an empty SETTINGS frame) and a GOAWAY (last stream 0, ENHANCE_YOUR_CALM) whose
/// debug data says why: what a connection over the cap gets before it is closed.
fn refusal() -> Vec<u8> {
    const WHY: &[u8] = b"kilnd: too many connections (limits.max_connections)";
    let mut out = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let len = 8 + WHY.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&0xbu32.to_be_bytes());
    out.extend_from_slice(WHY);
    out
}

/// Accepts at most `max` connections at once from a Unix listener; see the module docs.
pub struct Incoming {
    listener: UnixListener,
    slots: Arc<Semaphore>,
    max: usize,
    idle_timeout: Option<Duration>,
    pause: Option<Pin<Box<Sleep>>>,
    refused: u64,
    last_warning: Option<Instant>,
}

impl Incoming {
    pub fn new(listener: UnixListener, max: usize, idle_timeout: Option<Duration>) -> Incoming {
        Incoming {
            listener,
            slots: Arc::new(Semaphore::new(max)),
            max,
            idle_timeout,
            pause: None,
            refused: 0,
            last_warning: None,
        }
    }

    /// At most one warning a second, with how many were refused since the last one.
    fn warn(&mut self, what: &str) {
        if self.last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!(refused = self.refused, max_connections = self.max, "{what}");
            self.last_warning = Some(Instant::now());
            self.refused = 0;
        }
    }
}

/// Accept errors that say the process or system is out of descriptors or memory: retrying at once would spin.
fn exhausted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(p) = this.pause.as_mut() {
            if p.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.pause = None;
        }
        // Bounded, so that a flood of connections over the cap cannot keep this task from yielding.
        for _ in 0..64 {
            match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) if exhausted(&e) => {
                    this.refused += 1;
                    this.warn(&format!("accept: {e}; pausing accepts for 100 ms"));
                    let mut p = Box::pin(tokio::time::sleep(Duration::from_millis(100)));
                    if p.as_mut().poll(cx).is_ready() {
                        continue;
                    }
                    this.pause = Some(p);
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => tracing::debug!(error = %e, "accept failed"),
                Poll::Ready(Ok((io, _))) => match this.slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let state =
                            Arc::new(ConnState { busy: AtomicUsize::new(0), idle_since: Mutex::new(Instant::now()) });
                        let conn = Conn {
                            io: AuthorityRead::new(PeerStream::new(io)),
                            state,
                            idle_timeout: this.idle_timeout,
                            timer: None,
                            timed_out: false,
                            _slot: slot,
                        };
                        return Poll::Ready(Some(Ok(conn)));
                    }
                    Err(_) => {
                        let _ = io.try_write(&refusal());
                        drop(io);
                        this.refused += 1;
                        this.warn("refused connections over limits.max_connections");
                    }
                },
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn refusal_frames() {
        let f = super::refusal();
        // SETTINGS: length 0, type 4, no flags, stream 0.
        assert_eq!(&f[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        // GOAWAY: type 7 on stream 0, last stream 0, ENHANCE_YOUR_CALM.
        let len = u32::from_be_bytes([0, f[9], f[10], f[11]]) as usize;
        assert_eq!(f[12], 7);
        assert_eq!(&f[18..22], &[0, 0, 0, 0]);
        assert_eq!(&f[22..26], &[0, 0, 0, 0xb]);
        assert_eq!(f.len(), 18 + len);
    }
}
