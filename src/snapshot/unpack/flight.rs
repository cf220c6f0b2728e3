//! Single-flight and the extraction bound of the unpacker: a [`Flight`] per ChainID being extracted, which
//! followers wait on and the leader finishes, and [`Slots`], a counting semaphore bounding extractions across
//! all requests.
//!
//! May use: the snapshot module's error type.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::super::Error;

pub(super) type FlightResult = std::result::Result<(), Arc<Error>>;

#[derive(Default)]
pub(super) struct Flight {
    result: Mutex<Option<FlightResult>>,
    done: Condvar,
    /// Other requests waiting on this flight: while there are any, the leader's own caller leaving does not
    /// stop it.
    pub(super) followers: AtomicUsize,
}

/// A follower's hold on a flight, counted in [`Flight::followers`].
pub(super) struct Follower(pub(super) Arc<Flight>);

impl Follower {
    pub(super) fn new(f: Arc<Flight>) -> Follower {
        f.followers.fetch_add(1, Ordering::SeqCst);
        Follower(f)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.followers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Flight {
    /// [`wait`](Self::wait), looking at `stop` every 100 ms; `None` once it says so.
    pub(super) fn wait_until(&self, stop: impl Fn() -> bool) -> Option<FlightResult> {
        let mut g = self.result.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = g.as_ref() {
                return Some(r.clone());
            }
            if stop() {
                return None;
            }
            g = self.done.wait_timeout(g, std::time::Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    pub(super) fn finish(&self, r: FlightResult) {
        let mut g = self.result.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(r);
        }
        self.done.notify_all();
    }
}

/// A counting semaphore bounding extractions across all requests.
pub(super) struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Slots {
    pub(super) fn new(n: usize) -> Slots {
        Slots { free: Mutex::new(n), cv: Condvar::new() }
    }

    pub(super) fn acquire(&self) -> SlotGuard<'_> {
        self.take();
        SlotGuard(self)
    }

    #[cfg(test)]
    pub(super) fn free(&self) -> usize {
        *self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) struct SlotGuard<'a>(&'a Slots);

impl Slots {
    fn release(&self) {
        *self.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.cv.notify_one();
    }

    fn take(&self) {
        let mut g = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *g == 0 {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        *g -= 1;
    }
}

/// An extraction whose layer bytes have not arrived (it follows a download) gives its slot to another while it
/// waits, and takes one again before it goes on: the bound is on extractions that work, not on ones a slow
/// registry holds up.
impl super::Pause for SlotGuard<'_> {
    fn waiting(&self) {
        self.0.release();
    }

    fn going_on(&self) {
        self.0.take();
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}
