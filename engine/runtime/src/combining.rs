//! A value run by whichever thread brings it work, one round at a time (a combining lock).
//!
//! Threads that hand the value work (through channels of its own) call [`Combining::deliver`]
//! afterwards: it raises `pending` and tries the lock. Whoever holds the lock clears `pending`
//! before each round and looks at it again after it lets go, running another round if it was
//! raised meanwhile. So either the deliverer gets the lock and runs the round, or the holder's
//! next round sees the work: nothing delivered is left behind, and no deliverer ever waits for
//! the lock. Only the value's own thread waits for it ([`Combining::run_owned`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

/// A round panicked on some thread: the value may be half-updated.
#[derive(Debug)]
pub(crate) struct Poisoned;

/// See the module docs. `None` inside once the value is taken out (stopped).
#[derive(Debug)]
pub(crate) struct Combining<T> {
    value: Mutex<Option<T>>,
    /// Work was delivered since the last round began.
    pending: AtomicBool,
}

impl<T> Combining<T> {
    pub(crate) fn new(value: T) -> Combining<T> {
        Combining { value: Mutex::new(Some(value)), pending: AtomicBool::new(false) }
    }

    /// Called after delivering work: runs `round` here, as often as work is pending, unless
    /// another thread holds the value (it then runs the rounds). `round` returns whether work
    /// is left over for another round. Does nothing once the value is taken out.
    pub(crate) fn deliver(&self, round: impl FnMut(&mut T) -> bool) -> Result<(), Poisoned> {
        self.pending.store(true, Ordering::SeqCst);
        self.run_pending(round)
    }

    /// For the value's own thread: waits for the lock and runs one round whether or not work is
    /// pending (it was woken for a deadline, say), then goes on as [`Combining::deliver`].
    /// Returns false once the value is taken out.
    pub(crate) fn run_owned(&self, mut round: impl FnMut(&mut T) -> bool) -> Result<bool, Poisoned> {
        let mut guard = self.value.lock().map_err(|_| Poisoned)?;
        let Some(value) = guard.as_mut() else { return Ok(false) };
        self.pending.store(false, Ordering::SeqCst);
        let more = round(value);
        drop(guard);
        if more {
            self.pending.store(true, Ordering::SeqCst);
        }
        // Work delivered while this thread held the lock was left to it.
        self.run_pending(round)?;
        Ok(true)
    }

    /// The value, waiting for the lock (poisoned or not: for stopping it).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Option<T>> {
        self.value.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run_pending(&self, mut round: impl FnMut(&mut T) -> bool) -> Result<(), Poisoned> {
        while self.pending.load(Ordering::SeqCst) {
            let mut guard = match self.value.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::WouldBlock) => return Ok(()),
                Err(TryLockError::Poisoned(_)) => return Err(Poisoned),
            };
            let Some(value) = guard.as_mut() else { return Ok(()) };
            self.pending.store(false, Ordering::SeqCst);
            let more = round(value);
            drop(guard);
            if more {
                self.pending.store(true, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crossbeam_channel::{Receiver, bounded};

    use super::*;

    /// A consumer that takes at most `per_round` items a round, as the core stage does.
    struct Consumer {
        items: Receiver<u64>,
        taken: Vec<u64>,
        per_round: usize,
        rounds: usize,
    }

    fn round(consumer: &mut Consumer) -> bool {
        consumer.rounds += 1;
        for _ in 0..consumer.per_round {
            let Ok(item) = consumer.items.try_recv() else { break };
            consumer.taken.push(item);
        }
        !consumer.items.is_empty()
    }

    const THREADS: u64 = 4;
    const ITEMS: u64 = 5_000;

    /// `THREADS` producers each send `items` and deliver after each; with `owner_rounds`, the
    /// owner's thread runs that many rounds meanwhile, as the core's thread does on deadlines.
    /// Returns what was left in the channel once every producer had returned (with no owner
    /// running by then) and what was taken.
    fn produce(per_round: usize, owner_rounds: usize, items: u64) -> (usize, Vec<u64>) {
        let (tx, rx) = bounded(1 << 16);
        let combining = Arc::new(Combining::new(Consumer { items: rx, taken: Vec::new(), per_round, rounds: 0 }));
        let owner = {
            let combining = Arc::clone(&combining);
            std::thread::spawn(move || {
                for _ in 0..owner_rounds {
                    assert!(combining.run_owned(round).unwrap());
                    std::thread::yield_now();
                }
            })
        };
        let producers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (tx, combining) = (tx.clone(), Arc::clone(&combining));
                std::thread::spawn(move || {
                    for i in 0..items {
                        tx.send(thread * items + i).unwrap();
                        combining.deliver(round).unwrap();
                    }
                })
            })
            .collect();
        owner.join().unwrap();
        for producer in producers {
            producer.join().unwrap();
        }
        let consumer = combining.lock().take().unwrap();
        (consumer.items.len(), consumer.taken)
    }

    #[test]
    fn no_delivered_item_is_left_behind_once_every_deliverer_has_returned() {
        for per_round in [1, 3, 64] {
            // No owner: only the deliverers' own rounds can have taken the items.
            let (left, taken) = produce(per_round, 0, ITEMS);
            assert_eq!(left, 0, "per_round {per_round}: items left behind");
            assert_eq!(taken.len() as u64, THREADS * ITEMS);
        }
        // The end of a run is where an item can be stranded: many short runs.
        for run in 0..300 {
            let (left, _) = produce(1, 0, 2);
            assert_eq!(left, 0, "run {run}: items left behind");
        }
    }

    #[test]
    fn deliverers_and_the_owner_take_every_item_once() {
        for per_round in [1, 64] {
            let (left, mut taken) = produce(per_round, 500, ITEMS);
            assert_eq!(left, 0, "per_round {per_round}: items left behind");
            taken.sort_unstable();
            taken.dedup();
            assert_eq!(taken.len() as u64, THREADS * ITEMS, "per_round {per_round}: an item was lost or taken twice");
        }
    }

    #[test]
    fn a_stopped_value_runs_no_more_rounds() {
        let combining = Combining::new(0u32);
        combining
            .deliver(|n| {
                *n += 1;
                false
            })
            .unwrap();
        assert_eq!(*combining.lock(), Some(1));
        combining.lock().take();
        combining.deliver(|_| panic!("no round once stopped")).unwrap();
        assert!(!combining.run_owned(|_| panic!("no round once stopped")).unwrap());
    }

    #[test]
    fn a_round_that_panicked_is_reported_to_the_next_deliverer() {
        let combining = Arc::new(Combining::new(0u32));
        let panicking = Arc::clone(&combining);
        let result = std::thread::spawn(move || panicking.deliver(|_| panic!("a round panics"))).join();
        assert!(result.is_err());
        assert!(combining.deliver(|_| false).is_err());
        assert!(combining.run_owned(|_| false).is_err());
        assert_eq!(*combining.lock(), Some(0), "the value can still be taken out to stop it");
    }
}
