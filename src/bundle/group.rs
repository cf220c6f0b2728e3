//! Group commit: changes that arrive together share one commit, and each caller returns only once the commit
//! holding its change has ended. [`records`](super::records) puts every bundle record change through one, so
//! that 64 concurrent creates make a handful of durable `meta.redb` transactions instead of 64 in a queue
//! (redb runs one write transaction at a time, and each durable one ends in fsyncs).
//!
//! Leader and followers, no thread of its own: a caller queues its change, and the first caller to find no
//! commit running becomes the committer. It takes everything queued (its own change included), commits it with
//! the function it was given, hands each member its outcome and wakes the others; changes that arrived during
//! that commit are taken by the next committer, one of their own callers. A failed commit fails every member
//! of it with the same error ([`Failed::Commit`], shared through an `Arc`); a committer that panics fails its
//! members with [`Failed::Abandoned`] instead of leaving them waiting.
//!
//! May use: `std` only (the commit function brings the storage).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Why a change was not committed; `members` is how many changes the failed commit held.
#[derive(Debug)]
pub enum Failed<E> {
    /// The commit failed (the same error for every member).
    Commit { members: usize, source: Arc<E> },
    /// The committer panicked, or its commit function gave fewer outcomes than changes.
    Abandoned { members: usize },
}

/// One change's outcome.
type Outcome<Out, E> = Result<Out, Failed<E>>;

struct Queue<Op, Out, E> {
    next: u64,
    /// Changes not taken by a committer yet, with their tickets, in arrival order.
    waiting: Vec<(u64, Op)>,
    /// Outcomes not picked up by their callers yet.
    settled: HashMap<u64, Outcome<Out, E>>,
    committing: bool,
    commits: u64,
}

/// A group commit of changes `Op`, each committed to an outcome `Out`, or failed with a shared `E`.
pub struct GroupCommit<Op, Out, E> {
    queue: Mutex<Queue<Op, Out, E>>,
    settled: Condvar,
}

impl<Op, Out, E> std::fmt::Debug for GroupCommit<Op, Out, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").field("commits", &self.commits()).finish_non_exhaustive()
    }
}

impl<Op, Out, E> Default for GroupCommit<Op, Out, E> {
    fn default() -> Self {
        GroupCommit {
            queue: Mutex::new(Queue {
                next: 0,
                waiting: Vec::new(),
                settled: HashMap::new(),
                committing: false,
                commits: 0,
            }),
            settled: Condvar::new(),
        }
    }
}

/// The committer's batch: settles its members when dropped, so that a panic in the commit fails them instead
/// of leaving them (and every later change) waiting.
struct Lead<'a, Op, Out, E> {
    group: &'a GroupCommit<Op, Out, E>,
    tickets: Vec<u64>,
    /// The committer's own ticket: after a panic nobody waits for it, so it is not settled.
    own: u64,
    outcome: Option<Result<Vec<Out>, E>>,
}

impl<Op, Out, E> Drop for Lead<'_, Op, Out, E> {
    fn drop(&mut self) {
        let members = self.tickets.len();
        let mut q = self.group.lock();
        match self.outcome.take() {
            Some(Ok(outs)) => {
                let mut outs = outs.into_iter();
                for &t in &self.tickets {
                    q.settled.insert(t, outs.next().ok_or(Failed::Abandoned { members }));
                }
            }
            Some(Err(e)) => {
                let source = Arc::new(e);
                for &t in &self.tickets {
                    q.settled.insert(t, Err(Failed::Commit { members, source: source.clone() }));
                }
            }
            None => {
                for &t in self.tickets.iter().filter(|&&t| t != self.own) {
                    q.settled.insert(t, Err(Failed::Abandoned { members }));
                }
            }
        }
        q.committing = false;
        q.commits += 1;
        drop(q);
        self.group.settled.notify_all();
    }
}

impl<Op, Out, E> GroupCommit<Op, Out, E> {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Queue<Op, Out, E>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits `op`, in one commit with whatever other changes are queued when a commit starts, and returns
    /// its outcome once that commit has ended. `commit` is called (on this thread) only if this caller becomes
    /// the committer; it gets the batch in arrival order and must give one outcome per change, in that order,
    /// or fail the whole batch.
    pub fn submit(&self, op: Op, commit: impl FnOnce(Vec<Op>) -> Result<Vec<Out>, E>) -> Outcome<Out, E> {
        let mut commit = Some(commit);
        let mut q = self.lock();
        let me = q.next;
        q.next += 1;
        q.waiting.push((me, op));
        loop {
            if let Some(outcome) = q.settled.remove(&me) {
                return outcome;
            }
            // Not settled, so still queued (a commit that took it settles it before clearing `committing`):
            // this caller leads the next commit, which takes it. It leads at most once.
            if let Some(commit) = if q.committing { None } else { commit.take() } {
                q.committing = true;
                let (tickets, ops): (Vec<u64>, Vec<Op>) = std::mem::take(&mut q.waiting).into_iter().unzip();
                drop(q);
                let mut lead = Lead { group: self, tickets, own: me, outcome: None };
                lead.outcome = Some(commit(ops));
                drop(lead);
                q = self.lock();
                continue;
            }
            q = self.settled.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Commits made so far (each holding one or more changes).
    pub fn commits(&self) -> u64 {
        self.lock().commits
    }

    /// Changes queued for the next commit (for tests).
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// A stand-in for the storage: committed values, and a switch that fails the next commit.
    #[derive(Default)]
    struct Disk {
        rows: Mutex<Vec<u32>>,
        fail: AtomicBool,
    }

    impl Disk {
        fn commit(&self, batch: Vec<u32>) -> Result<Vec<u32>, String> {
            if self.fail.swap(false, Ordering::SeqCst) {
                return Err(format!("disk full ({} changes)", batch.len()));
            }
            let mut rows = self.rows.lock().unwrap();
            rows.extend(&batch);
            Ok(batch)
        }
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn many_threads_all_committed_in_fewer_commits() {
        let group = GroupCommit::<u32, u32, String>::new();
        let disk = Disk::default();
        std::thread::scope(|s| {
            for t in 0..64u32 {
                let (group, disk) = (&group, &disk);
                s.spawn(move || {
                    for i in 0..20 {
                        let v = t * 100 + i;
                        assert_eq!(group.submit(v, |b| disk.commit(b)).unwrap(), v);
                    }
                });
            }
        });
        let mut rows = disk.rows.into_inner().unwrap();
        rows.sort_unstable();
        let want: Vec<u32> = (0..64).flat_map(|t| (0..20).map(move |i| t * 100 + i)).collect();
        assert_eq!(rows, want, "every change committed exactly once");
        assert!(group.commits() <= 64 * 20);
        assert_eq!(group.waiting(), 0);
    }

    #[test]
    fn changes_queued_during_a_commit_share_the_next_one() {
        let group = GroupCommit::<u32, u32, String>::new();
        let disk = Disk::default();
        let (release, hold) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            let (g, d) = (&group, &disk);
            let first = s.spawn(move || {
                g.submit(0, |b| {
                    hold.recv().unwrap();
                    d.commit(b)
                })
            });
            wait_until("the first commit to start", || g.waiting() == 0 && g.lock().committing);
            let rest: Vec<_> = (1..=8).map(|v| s.spawn(move || g.submit(v, |b| d.commit(b)))).collect();
            wait_until("eight changes to queue", || g.waiting() == 8);
            release.send(()).unwrap();
            assert_eq!(first.join().unwrap().unwrap(), 0);
            for (v, h) in (1..=8).zip(rest) {
                assert_eq!(h.join().unwrap().unwrap(), v);
            }
        });
        assert_eq!(group.commits(), 2, "one commit for the first change, one for the eight queued behind it");
        assert_eq!(disk.rows.into_inner().unwrap().len(), 9);
    }

    #[test]
    fn a_failed_commit_fails_each_member_and_commits_none() {
        let group = GroupCommit::<u32, u32, String>::new();
        let disk = Disk::default();
        let (release, hold) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            let (g, d) = (&group, &disk);
            // The first commit succeeds (it writes without looking at the switch); the next one, of the five
            // changes queued behind it, fails.
            let first = s.spawn(move || {
                g.submit(0, |b| {
                    hold.recv().unwrap();
                    d.rows.lock().unwrap().extend(&b);
                    Ok(b)
                })
            });
            wait_until("the first commit to start", || g.waiting() == 0 && g.lock().committing);
            let rest: Vec<_> = (1..=5).map(|v| s.spawn(move || g.submit(v, |b| d.commit(b)))).collect();
            wait_until("five changes to queue", || g.waiting() == 5);
            d.fail.store(true, Ordering::SeqCst);
            release.send(()).unwrap();
            first.join().unwrap().unwrap();
            for h in rest {
                match h.join().unwrap() {
                    Err(Failed::Commit { members, source }) => {
                        assert_eq!(members, 5);
                        assert_eq!(*source, "disk full (5 changes)");
                    }
                    other => panic!("expected the batch's failure, got {other:?}"),
                }
            }
        });
        assert_eq!(disk.rows.into_inner().unwrap(), vec![0], "nothing of the failed batch was committed");
        // The group goes on after a failure.
        let d = Disk::default();
        assert_eq!(group.submit(7, |b| d.commit(b)).unwrap(), 7);
    }

    #[test]
    fn a_panicking_committer_fails_its_members_and_the_group_goes_on() {
        let group = GroupCommit::<u32, u32, String>::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            group.submit(1, |_| -> Result<Vec<u32>, String> { panic!("committer bug") })
        }));
        assert!(r.is_err());
        assert!(!group.lock().committing);
        assert!(group.lock().settled.is_empty(), "the panicking committer's own outcome is not kept");
        let short = group.submit(2, |_| Ok(Vec::new()));
        assert!(matches!(short, Err(Failed::Abandoned { members: 1 })), "{short:?}");
        assert_eq!(group.submit(3, Ok).unwrap(), 3);
    }
}
