//! Telling long library work that nobody wants its result any more.
//!
//! A [`Cancel`] is a flag someone else sets (kilnd: when the caller resets its stream or closes the connection)
//! and an optional deadline. Work checks it between steps it can undo — a blob not yet copied, a layer not yet
//! extracted — and stops with an error of kind [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled), leaving
//! the old state. [`Cancel::reader`] lets a long read stop in the middle.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A cancellation flag and deadline; [`Cancel::never`] for work nobody can cancel.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    flag: Option<Arc<AtomicBool>>,
    deadline: Option<Instant>,
    /// Flags set by the work itself (one part of it failed, the others stop), and what each means.
    also: Vec<(Arc<AtomicBool>, &'static str)>,
}

impl Cancel {
    /// Work that runs to its end.
    pub fn never() -> Cancel {
        Cancel::default()
    }

    /// Cancelled once `flag` is set or `deadline` has passed.
    pub fn new(flag: Arc<AtomicBool>, deadline: Option<Instant>) -> Cancel {
        Cancel { flag: Some(flag), deadline, also: Vec::new() }
    }

    /// This cancel, which also says `reason` once `flag` is set (by a part of the work that failed, so that the
    /// others stop).
    pub fn or(&self, flag: Arc<AtomicBool>, reason: &'static str) -> Cancel {
        let mut c = self.clone();
        c.also.push((flag, reason));
        c
    }

    /// Why the work should stop, if it should.
    pub fn reason(&self) -> Option<&'static str> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some("the caller's deadline passed");
        }
        if self.flag.as_ref().is_some_and(|f| f.load(Ordering::Relaxed)) {
            return Some("the caller went away");
        }
        self.also.iter().find(|(f, _)| f.load(Ordering::Relaxed)).map(|(_, reason)| *reason)
    }

    pub fn is_cancelled(&self) -> bool {
        self.reason().is_some()
    }

    /// `r`, failing its next read once this is cancelled.
    pub fn reader<R: Read>(&self, r: R) -> CancelRead<R> {
        CancelRead { inner: r, cancel: self.clone() }
    }
}

/// See [`Cancel::reader`].
#[derive(Debug)]
pub struct CancelRead<R> {
    inner: R,
    cancel: Cancel,
}

impl<R: Read> Read for CancelRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(reason) = self.cancel.reason() {
            return Err(io::Error::other(format!("cancelled: {reason}")));
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_flag_or_a_past_deadline_cancels_and_stops_reads() {
        assert!(!Cancel::never().is_cancelled());
        let flag = Arc::new(AtomicBool::new(false));
        let c = Cancel::new(flag.clone(), None);
        let mut r = c.reader(&b"abc"[..]);
        let mut buf = [0u8; 2];
        assert_eq!(r.read(&mut buf).unwrap(), 2);
        flag.store(true, Ordering::Relaxed);
        assert_eq!(c.reason(), Some("the caller went away"));
        assert!(r.read(&mut buf).unwrap_err().to_string().contains("went away"));
        let late = Cancel::new(Arc::new(AtomicBool::new(false)), Some(Instant::now()));
        assert_eq!(late.reason(), Some("the caller's deadline passed"));
    }

    #[test]
    fn every_flag_added_with_or_cancels_with_its_own_reason() {
        let (a, b) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let c = Cancel::never().or(a.clone(), "a failed").or(b.clone(), "b failed");
        assert_eq!(c.reason(), None);
        b.store(true, Ordering::Relaxed);
        assert_eq!(c.reason(), Some("b failed"));
        a.store(true, Ordering::Relaxed);
        assert_eq!(c.reason(), Some("a failed"));
    }
}
