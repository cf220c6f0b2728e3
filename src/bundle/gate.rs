//! A fair admission gate: at most `slots` holders at once, the others admitted in arrival order, each woken
//! alone when a slot is handed to it (no herd of waiters woken to find the slot taken).
//!
//! The engine puts the CPU-bound part of a bundle creation behind one
//! ([`super::engine::Engine::create`]): 64 concurrent creates on 2 cores otherwise run as 64 threads that take
//! turns on the same locks (the snapshot records' write transaction, the kernel's mount lock), and the
//! scheduler, not arrival, decides who finishes first. Behind the gate the work runs a few at a time, with fewer
//! context switches, and the callers finish in the order they came: the latency of the last one is close to the
//! latency of the average one.
//!
//! May use: `std` only.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;

struct Waiter {
    thread: Thread,
    /// Set, under the gate's lock, when a slot is handed to this waiter.
    admitted: AtomicBool,
}

struct State {
    free: usize,
    queue: VecDeque<Arc<Waiter>>,
}

/// At most `slots` holders of a [`Pass`] at once, admitted first come, first served.
pub struct Gate {
    slots: usize,
    state: Mutex<State>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("slots", &self.slots).finish_non_exhaustive()
    }
}

/// One slot of a [`Gate`], given back on drop (to the longest waiter, if there is one).
#[must_use = "the slot is given back when the pass is dropped"]
pub struct Pass<'a> {
    gate: &'a Gate,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        match st.queue.pop_front() {
            // The slot goes straight to the waiter: nobody arriving meanwhile can take it first.
            Some(w) => {
                w.admitted.store(true, Ordering::Release);
                w.thread.unpark();
            }
            None => st.free += 1,
        }
    }
}

impl Gate {
    /// A gate of `slots` (at least 1).
    pub fn new(slots: usize) -> Gate {
        let slots = slots.max(1);
        Gate { slots, state: Mutex::new(State { free: slots, queue: VecDeque::new() }) }
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing in the state can be left half-changed by a panic: every change is one statement.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a slot; callers that came earlier get theirs first.
    pub fn enter(&self) -> Pass<'_> {
        let me = {
            let mut st = self.lock();
            if st.free > 0 && st.queue.is_empty() {
                st.free -= 1;
                return Pass { gate: self };
            }
            let me = Arc::new(Waiter { thread: std::thread::current(), admitted: AtomicBool::new(false) });
            st.queue.push_back(me.clone());
            me
        };
        // `park` may return spuriously, or for an unpark meant for something else this thread waited on.
        while !me.admitted.load(Ordering::Acquire) {
            std::thread::park();
        }
        Pass { gate: self }
    }

    /// Holders now (for tests and metrics).
    pub fn held(&self) -> usize {
        self.slots - self.lock().free
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[test]
    fn never_more_holders_than_slots() {
        let gate = Gate::new(3);
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let _p = gate.enter();
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert_eq!(gate.held(), 0);
    }

    #[test]
    fn waiters_are_admitted_in_arrival_order() {
        let gate = Gate::new(1);
        let order = Mutex::new(Vec::new());
        let first = gate.enter();
        std::thread::scope(|s| {
            for i in 0..8 {
                let (gate, order) = (&gate, &order);
                s.spawn(move || {
                    let _p = gate.enter();
                    order.lock().unwrap().push(i);
                });
                // Each one queued before the next is started.
                while gate.lock().queue.len() < i + 1 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            drop(first);
        });
        assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
        assert_eq!(gate.held(), 0);
    }
}
