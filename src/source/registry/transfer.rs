//! How the registry source moves blobs: a bounded set of threads fetching one image's blobs at once, a
//! process-wide single flight per blob so that two pulls (or two images of one index) needing the same digest
//! at the same time download it once, and the retry policy (which failures are worth another request, and how
//! long to wait before it).
//!
//! The workers are scoped threads that each block on the [`Remote`]'s current-thread runtime; tokio lets
//! several threads `block_on` one such runtime (one of them drives the I/O, the others poll their own
//! futures), so the client, its connection pool and its token cache stay one. Progress goes back to the
//! calling thread over a channel: the [`Sink`] is not `Send`, and the order of commit does not change — the
//! caller writes the configs, then the documents, then the layers, the ref last.
//!
//! The flight is keyed by the store's path and the digest: the leader streams the blob into the store; a
//! follower waits (watching its own cancel), then tries again, which finds the blob in the store and costs no
//! request — or, if the leader failed (its caller went away, say), downloads it itself.
//!
//! May use: `store`, `digest`, `cancel`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::time::Duration;

use super::{Error, Remote};
use crate::cancel::Cancel;
use crate::digest::Digest;
use crate::store::{Descriptor, LayoutWriter};

/// Requests for one blob or document that may fail in a row, without a byte of progress between them.
pub(super) const MAX_ATTEMPTS: u32 = 5;
/// Requests for one blob in all (a registry that cuts every response after a few bytes ends too).
pub(super) const MAX_REQUESTS: u32 = 32;
/// The first wait before a retry; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a follower looks at its cancel while it waits for the leader.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// The wait before retry number `failures` (1 for the first retry).
pub(super) fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1 << shift).min(MAX_BACKOFF)
}

/// Whether another request may succeed where this one failed: the registry was busy or broken for a moment
/// (429, 5xx) or the connection failed or was cut. A stall is not retried (it has cost `read_timeout`
/// already), nor is anything the registry said on purpose (401/403/404) or a digest mismatch.
pub(super) fn retryable(e: &Error) -> bool {
    match e {
        Error::Server { status, .. } => *status == 429 || (500..=599).contains(status),
        Error::Unreachable { .. } => true,
        _ => false,
    }
}

/// One blob download in flight in this process; its leader says how it ended.
#[derive(Default)]
struct Flight {
    done: Mutex<Option<bool>>,
    cv: Condvar,
}

type Key = (PathBuf, Digest);

static FLIGHTS: LazyLock<Mutex<HashMap<Key, Arc<Flight>>>> = LazyLock::new(Default::default);

fn flights() -> std::sync::MutexGuard<'static, HashMap<Key, Arc<Flight>>> {
    FLIGHTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The leader's hold on a flight: dropping it (with [`Lead::finish`] or by a panic) ends the flight and
/// wakes the followers.
struct Lead {
    key: Key,
    flight: Arc<Flight>,
    ok: bool,
}

impl Drop for Lead {
    fn drop(&mut self) {
        flights().remove(&self.key);
        *self.flight.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.ok);
        self.flight.cv.notify_all();
    }
}

enum Join {
    Lead(Lead),
    Follow(Arc<Flight>),
}

fn join(store: &Path, digest: &Digest) -> Join {
    let key = (store.to_path_buf(), digest.clone());
    let mut map = flights();
    if let Some(f) = map.get(&key) {
        return Join::Follow(f.clone());
    }
    let flight = Arc::new(Flight::default());
    map.insert(key.clone(), flight.clone());
    Join::Lead(Lead { key, flight, ok: false })
}

impl Flight {
    /// Waits for the leader; `false` once `cancel` says so first.
    fn wait(&self, cancel: &Cancel) -> bool {
        let mut g = self.done.lock().unwrap_or_else(|p| p.into_inner());
        while g.is_none() {
            if cancel.is_cancelled() {
                return false;
            }
            g = self.cv.wait_timeout(g, FOLLOW_POLL).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }
}

/// How many downloads of `digest` into the store at `store` this process has in flight (0 or 1).
#[cfg(test)]
fn in_flight(store: &Path, digest: &Digest) -> usize {
    usize::from(flights().contains_key(&(store.to_path_buf(), digest.clone())))
}

impl Remote {
    /// `put()` — which writes `digest` into `dest` — once per process at a time: joins a write of the same
    /// digest already in flight, then tries again (the store has it now, or the other one failed). Returns
    /// what `put` returned (bytes written; 0 when the store had it, or another pull brought it). Besides
    /// saving the download, this keeps two writers of one digest off the store's one ingest file name.
    pub(super) fn joined(
        &self,
        dest: &LayoutWriter,
        digest: &Digest,
        cancel: &Cancel,
        mut put: impl FnMut() -> Result<u64, super::super::Error>,
    ) -> Result<u64, super::super::Error> {
        loop {
            match join(dest.store().path(), digest) {
                Join::Lead(mut lead) => {
                    let r = put();
                    lead.ok = r.is_ok();
                    return r;
                }
                Join::Follow(flight) => {
                    tracing::info!(%digest, "joining a download of the same blob in flight");
                    if !flight.wait(cancel) {
                        return Err(self.cancelled(cancel).into());
                    }
                }
            }
        }
    }

    /// Fetches `blobs` into `dest`, up to `self.parallel` at once, calling `done` on this thread with the
    /// bytes each one wrote as it lands. The first failure stops the workers from starting another blob and
    /// is returned once those already started have ended.
    pub(super) fn fetch_blobs(
        &self,
        dest: &LayoutWriter,
        blobs: &[Descriptor],
        cancel: &Cancel,
        done: &mut dyn FnMut(u64),
    ) -> Result<(), super::super::Error> {
        let workers = self.parallel.clamp(1, blobs.len().max(1));
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            for _ in 0..workers {
                let tx = tx.clone();
                let (next, stop) = (&next, &stop);
                s.spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let Some(desc) = blobs.get(next.fetch_add(1, Ordering::SeqCst)) else { break };
                        let r = self.joined(dest, &desc.digest, cancel, || self.blob(dest, desc, cancel));
                        if r.is_err() {
                            stop.store(true, Ordering::SeqCst);
                        }
                        if tx.send(r).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let mut first = None;
            for r in rx {
                match r {
                    Ok(written) => done(written),
                    Err(e) => {
                        stop.store(true, Ordering::SeqCst);
                        first.get_or_insert(e);
                    }
                }
            }
            first.map_or(Ok(()), Err)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(2), FIRST_BACKOFF * 2);
        assert_eq!(backoff(3), FIRST_BACKOFF * 4);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn busy_and_cut_are_retried_refusals_and_stalls_are_not() {
        let server =
            |status| Error::Server { registry: "r".into(), reference: "r/a".into(), status, detail: "".into() };
        assert!(retryable(&server(429)) && retryable(&server(503)) && retryable(&server(500)));
        assert!(!retryable(&server(400)) && !retryable(&server(404)));
        assert!(retryable(&Error::Unreachable { registry: "r".into(), detail: "reset".into() }));
        let stalled = Error::Stalled { registry: "r".into(), reference: "r/a".into(), what: "blob".into(), secs: 1 };
        assert!(!retryable(&stalled));
    }

    #[test]
    fn one_leader_per_digest_and_followers_wake_when_it_ends() {
        let store = Path::new("/nonexistent/store");
        let digest = Digest::sha256(b"flight");
        let Join::Lead(mut lead) = join(store, &digest) else { panic!("first is not the leader") };
        let Join::Follow(flight) = join(store, &digest) else { panic!("second leads too") };
        assert_eq!(in_flight(store, &digest), 1);
        let waiter = std::thread::spawn(move || flight.wait(&Cancel::never()));
        std::thread::sleep(Duration::from_millis(50));
        lead.ok = true;
        drop(lead);
        assert!(waiter.join().unwrap());
        assert_eq!(in_flight(store, &digest), 0);
        // A later download leads again.
        assert!(matches!(join(store, &digest), Join::Lead(_)));
    }

    #[test]
    fn a_follower_stops_waiting_when_cancelled() {
        let store = Path::new("/nonexistent/store2");
        let digest = Digest::sha256(b"flight2");
        let _lead = join(store, &digest);
        let Join::Follow(flight) = join(store, &digest) else { panic!("second leads too") };
        let flag = Arc::new(AtomicBool::new(true));
        assert!(!flight.wait(&Cancel::new(flag, None)));
    }
}
