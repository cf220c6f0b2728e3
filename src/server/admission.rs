//! Admission: how many requests of each kind run at once, what a request may wait on, and how it learns that
//! its caller is gone.
//!
//! Every kiln.v1 handler first takes a [`Ticket`] from [`Gates::admit`]: a slot of its kind, or
//! `RESOURCE_EXHAUSTED` at once when the kind is full — never a queue of blocked worker threads. The ticket
//! goes with the work onto a worker thread ([`run`], [`stream`]) and gives the slot back when the work ends,
//! not when the caller leaves. It also carries the caller's deadline (`grpc-timeout`) and a cancel flag that is
//! set when the caller is gone: hyper drops the handler's future (or the response stream) when the client
//! resets the stream or closes the connection, and tonic drops it when the deadline passes. Work checks the
//! flag between steps ([`Ticket::check`]) and undoes what it built.
//!
//! Progress of a streaming call goes through a `watch` channel: the worker overwrites the latest value and
//! never waits, so a caller that does not read its stream stalls only its own stream, never a lock holder.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;
use tonic::{Request, Status};

use super::transport::{BusyGuard, ConnInfo};
use crate::config::Concurrency;

/// The kinds of request that are bounded separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Create,
    Delete,
    Pull,
    Import,
    Gc,
    Read,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Create => "create",
            Kind::Delete => "delete",
            Kind::Pull => "pull",
            Kind::Import => "import",
            Kind::Gc => "gc",
            Kind::Read => "read",
        }
    }
}

/// One semaphore per [`Kind`], and when each last warned of a refusal (a flood is logged once a second).
#[derive(Debug)]
pub struct Gates {
    gates: [(Kind, Arc<Semaphore>, usize); 6],
    warned: Mutex<HashMap<&'static str, (Option<Instant>, u64)>>,
}

impl Gates {
    pub fn new(c: &Concurrency) -> Gates {
        let gate = |k, n: usize| (k, Arc::new(Semaphore::new(n)), n);
        Gates {
            gates: [
                gate(Kind::Create, c.create),
                gate(Kind::Delete, c.delete),
                gate(Kind::Pull, c.pull),
                gate(Kind::Import, c.import),
                gate(Kind::Gc, c.gc),
                gate(Kind::Read, c.read),
            ],
            warned: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for `method` (of `kind`), or `RESOURCE_EXHAUSTED` now. Marks the caller's connection busy for as
    /// long as the ticket lives (see [`super::transport`]'s idle timeout).
    pub fn admit<T>(&self, kind: Kind, method: &'static str, req: &Request<T>) -> Result<Ticket, Status> {
        let (_, sem, limit) =
            self.gates.iter().find(|(k, _, _)| *k == kind).ok_or_else(|| Status::internal("no gate"))?;
        let permit = sem.clone().try_acquire_owned().map_err(|_| {
            self.warn(method, *limit);
            crate::metrics::global().rpc(method, "ResourceExhausted", Duration::ZERO);
            Status::resource_exhausted(format!(
                "{method}: {limit} {} requests are in progress already (limits.concurrent.{}); try again later",
                kind.as_str(),
                kind.as_str()
            ))
        })?;
        let busy = req.extensions().get::<ConnInfo>().map(ConnInfo::busy);
        Ok(Ticket {
            _permit: permit,
            _busy: busy,
            cancel: Arc::new(AtomicBool::new(false)),
            deadline: deadline(req),
            method,
            started: Instant::now(),
        })
    }

    fn warn(&self, method: &'static str, limit: usize) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        let (last, refused) = warned.entry(method).or_insert((None, 0));
        *refused += 1;
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!(method, limit, refused = *refused, "refused: too many requests of this kind in progress");
            *last = Some(Instant::now());
            *refused = 0;
        }
    }

    /// Slots of `kind` free now (for tests and logs).
    pub fn available(&self, kind: Kind) -> usize {
        self.gates.iter().find(|(k, _, _)| *k == kind).map_or(0, |(_, s, _)| s.available_permits())
    }
}

/// The caller's deadline, from its `grpc-timeout` header (gRPC over HTTP/2: 1–8 digits and a unit).
fn deadline<T>(req: &Request<T>) -> Option<Instant> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_timeout(v).map(|d| Instant::now() + d)
}

fn parse_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// An admitted request: its slot, its connection's busy mark, its deadline and its cancel flag.
pub struct Ticket {
    _permit: OwnedSemaphorePermit,
    _busy: Option<BusyGuard>,
    cancel: Arc<AtomicBool>,
    deadline: Option<Instant>,
    method: &'static str,
    started: Instant,
}

impl Ticket {
    /// Counts the RPC's outcome (`crate::metrics`): the code it answers and its time since admission.
    fn record<T>(&self, r: &Result<T, Status>) {
        let code = match r {
            Ok(_) => "OK".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        crate::metrics::global().rpc(self.method, &code, self.started.elapsed());
    }

    /// Whether the caller is gone or its deadline has passed.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The same flag and deadline for library work that checks them itself.
    pub fn cancel(&self) -> crate::Cancel {
        crate::Cancel::new(self.cancel.clone(), self.deadline)
    }

    /// `CANCELLED` or `DEADLINE_EXCEEDED` when the work should stop here.
    pub fn check(&self) -> Result<(), Status> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Status::deadline_exceeded(format!("{}: the caller's deadline passed", self.method)));
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Status::cancelled(format!("{}: the caller went away", self.method)));
        }
        Ok(())
    }
}

/// Sets a cancel flag when dropped, unless disarmed: the handler's future or stream was dropped unfinished.
struct CancelOnDrop(Option<Arc<AtomicBool>>);

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs synchronous library work on a worker thread: the daemon's async boundary. The work does not start when
/// the caller left or its deadline passed while it waited for a thread.
pub async fn run<T: Send + 'static>(
    ticket: Ticket,
    f: impl FnOnce(&Ticket) -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    let mut on_drop = CancelOnDrop(Some(ticket.cancel.clone()));
    let r = tokio::task::spawn_blocking(move || {
        let r = ticket.check().and_then(|()| f(&ticket));
        ticket.record(&r);
        r
    })
    .await
    .map_err(|e| Status::internal(format!("worker failed: {e}")));
    on_drop.disarm();
    r?
}

/// Where streaming work reports progress: the latest value wins, and reporting never waits.
pub struct Reporter<T>(watch::Sender<Option<T>>);

impl<T> Reporter<T> {
    pub fn report(&self, value: T) {
        self.0.send_replace(Some(value));
    }
}

/// Runs streaming work on a worker thread. The stream yields the latest progress whenever the caller reads,
/// then the work's result; it ends with `DEADLINE_EXCEEDED` when the caller's deadline passes first (the
/// work is told through the ticket). Dropping it unfinished cancels the ticket.
pub fn stream<T: Clone + Send + Sync + 'static>(
    ticket: Ticket,
    work: impl FnOnce(&Ticket, &Reporter<T>) -> Result<T, Status> + Send + 'static,
) -> ProgressStream<T> {
    let (tx, rx) = watch::channel(None);
    let (done_tx, done_rx) = oneshot::channel();
    let cancel = ticket.cancel.clone();
    let deadline = ticket.deadline;
    let method = ticket.method;
    tokio::task::spawn_blocking(move || {
        let reporter = Reporter(tx);
        let result = ticket.check().and_then(|()| work(&ticket, &reporter));
        ticket.record(&result);
        // The slot goes back before the result is handed over (whether or not anybody reads it), so that a caller
        // who has seen the end can start the next request of this kind at once.
        drop(ticket);
        let _ = done_tx.send(result);
    });
    ProgressStream {
        progress: WatchStream::from_changes(rx),
        done: done_rx,
        deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
        cancel: CancelOnDrop(Some(cancel)),
        method,
        finished: false,
    }
}

/// See [`stream`].
pub struct ProgressStream<T> {
    progress: WatchStream<Option<T>>,
    done: oneshot::Receiver<Result<T, Status>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    cancel: CancelOnDrop,
    method: &'static str,
    finished: bool,
}

impl<T: Clone + Send + Sync + 'static> Stream for ProgressStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if let Poll::Ready(r) = Pin::new(&mut this.done).poll(cx) {
            this.finished = true;
            this.cancel.disarm();
            return Poll::Ready(Some(r.unwrap_or_else(|_| Err(Status::internal("worker ended without a result")))));
        }
        if let Some(d) = this.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                // The flag tells the work; the stream ends now.
                this.finished = true;
                return Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                    "{}: the caller's deadline passed",
                    this.method
                )))));
            }
        }
        loop {
            match Pin::new(&mut this.progress).poll_next(cx) {
                Poll::Ready(Some(Some(p))) => return Poll::Ready(Some(Ok(p))),
                Poll::Ready(Some(None)) => continue,
                // The worker is done; `done` is ready or about to be, and its waker is registered above.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_kind_refuses_at_once_and_frees_on_drop() {
        let gates = Gates::new(&Concurrency { gc: 1, ..Concurrency::default() });
        let first = gates.admit(Kind::Gc, "System.Gc", &Request::new(())).unwrap();
        let e = gates.admit(Kind::Gc, "System.Gc", &Request::new(())).err().unwrap();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("limits.concurrent.gc"), "{e:?}");
        // Other kinds are not affected.
        let _read = gates.admit(Kind::Read, "System.Info", &Request::new(())).unwrap();
        assert_eq!(gates.available(Kind::Gc), 0);
        drop(first);
        assert_eq!(gates.available(Kind::Gc), 1);
        gates.admit(Kind::Gc, "System.Gc", &Request::new(())).unwrap();
    }

    #[test]
    fn tickets_know_their_deadline_and_cancellation() {
        let gates = Gates::new(&Concurrency::default());
        let mut req = Request::new(());
        req.metadata_mut().insert("grpc-timeout", "1n".parse().unwrap());
        let t = gates.admit(Kind::Read, "System.Info", &req).unwrap();
        std::thread::sleep(Duration::from_millis(1));
        assert_eq!(t.check().unwrap_err().code(), tonic::Code::DeadlineExceeded);
        let t = gates.admit(Kind::Read, "System.Info", &Request::new(())).unwrap();
        assert!(t.check().is_ok());
        drop(CancelOnDrop(Some(t.cancel.clone())));
        assert_eq!(t.check().unwrap_err().code(), tonic::Code::Cancelled);
    }

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "5", "5s", "123456789S", "-1S", "1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }
}
