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

/// What a round asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum After {
    /// Nothing of its own left: another round only if work was delivered meanwhile.
    Done,
    /// Work is left over: another round.
    More,
    /// Let go now, pending work or not: the caller has something to do first (the rounds of
    /// the stages this round handed work to), and delivers again after.
    Yield,
}

impl From<bool> for After {
    fn from(more: bool) -> After {
        if more { After::More } else { After::Done }
    }
}

/// How a call that runs rounds ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ran {
    /// No work pending, or another thread holds the value and will run it.
    Idle,
    /// A round yielded ([`After::Yield`]): the caller must deliver again.
    Yielded,
    /// The value was taken out.
    Stopped,
}

impl<T> Combining<T> {
    pub(crate) fn new(value: T) -> Combining<T> {
        Combining { value: Mutex::new(Some(value)), pending: AtomicBool::new(false) }
    }

    /// Called after delivering work: runs `round` here, as often as work is pending, unless
    /// another thread holds the value (it then runs the rounds) or a round yields.
    pub(crate) fn deliver(&self, round: impl FnMut(&mut T) -> After) -> Result<Ran, Poisoned> {
        self.pending.store(true, Ordering::SeqCst);
        self.run_pending(round)
    }

    /// For the value's own thread: waits for the lock and runs one round whether or not work is
    /// pending (it was woken for a deadline, say), then goes on as [`Combining::deliver`].
    pub(crate) fn run_owned(&self, mut round: impl FnMut(&mut T) -> After) -> Result<Ran, Poisoned> {
        let mut guard = self.value.lock().map_err(|_| Poisoned)?;
        let Some(value) = guard.as_mut() else { return Ok(Ran::Stopped) };
        self.pending.store(false, Ordering::SeqCst);
        let after = round(value);
        drop(guard);
        if self.note(after) {
            return Ok(Ran::Yielded);
        }
        // Work delivered while this thread held the lock was left to it.
        self.run_pending(round)
    }

    /// The value, waiting for the lock (poisoned or not: for stopping it).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Option<T>> {
        self.value.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A guard that, if this thread unwinds from a panic while it lives, calls `on_unwind` (to
    /// fail the node), then takes the value out and drops it: a stage's channels then close, and
    /// the stages downstream of it end, rather than wait forever on a value no thread will run
    /// again.
    pub(crate) fn drop_on_unwind<F: FnMut()>(&self, on_unwind: F) -> DropOnUnwind<'_, T, F> {
        DropOnUnwind { combining: self, on_unwind }
    }

    fn run_pending(&self, mut round: impl FnMut(&mut T) -> After) -> Result<Ran, Poisoned> {
        while self.pending.load(Ordering::SeqCst) {
            let mut guard = match self.value.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::WouldBlock) => return Ok(Ran::Idle),
                Err(TryLockError::Poisoned(_)) => return Err(Poisoned),
            };
            let Some(value) = guard.as_mut() else { return Ok(Ran::Stopped) };
            self.pending.store(false, Ordering::SeqCst);
            let after = round(value);
            drop(guard);
            if self.note(after) {
                return Ok(Ran::Yielded);
            }
        }
        Ok(Ran::Idle)
    }

    /// Records what a round asked for, once the lock is let go: work left over stays pending.
    /// Returns whether the round yielded.
    fn note(&self, after: After) -> bool {
        if after != After::Done {
            self.pending.store(true, Ordering::SeqCst);
        }
        after == After::Yield
    }
}

/// See [`Combining::drop_on_unwind`].
pub(crate) struct DropOnUnwind<'a, T, F: FnMut()> {
    combining: &'a Combining<T>,
    on_unwind: F,
}

impl<T, F: FnMut()> Drop for DropOnUnwind<'_, T, F> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            (self.on_unwind)();
            drop(self.combining.lock().take());
        }
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

    fn round(consumer: &mut Consumer) -> After {
        consumer.rounds += 1;
        for _ in 0..consumer.per_round {
            let Ok(item) = consumer.items.try_recv() else { break };
            consumer.taken.push(item);
        }
        (!consumer.items.is_empty()).into()
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
                    assert_ne!(combining.run_owned(round).unwrap(), Ran::Stopped);
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

    /// A round that counts itself and asks for `after`.
    fn counting(after: After) -> impl FnMut(&mut u32) -> After {
        move |n| {
            *n += 1;
            after
        }
    }

    #[test]
    fn a_stopped_value_runs_no_more_rounds() {
        let combining = Combining::new(0u32);
        assert_eq!(combining.deliver(counting(After::Done)).unwrap(), Ran::Idle);
        assert_eq!(*combining.lock(), Some(1));
        combining.lock().take();
        assert_eq!(combining.deliver(|_| panic!("no round once stopped")).unwrap(), Ran::Stopped);
        assert_eq!(combining.run_owned(|_| panic!("no round once stopped")).unwrap(), Ran::Stopped);
    }

    #[test]
    fn a_round_that_yields_leaves_the_work_pending_for_the_next_delivery() {
        let combining = Combining::new(0u32);
        assert_eq!(combining.deliver(counting(After::Yield)).unwrap(), Ran::Yielded);
        // The work stays pending: a thread that finds the value idle runs a round for it.
        assert_eq!(combining.run_pending(counting(After::Done)).unwrap(), Ran::Idle);
        assert_eq!(*combining.lock(), Some(2));
    }

    #[test]
    fn a_round_that_panicked_is_reported_and_its_value_dropped_by_the_guard() {
        let combining = Arc::new(Combining::new(0u32));
        let panicking = Arc::clone(&combining);
        let result = std::thread::spawn(move || panicking.deliver(|_| panic!("a round panics"))).join();
        assert!(result.is_err());
        assert!(combining.deliver(|_| After::Done).is_err());
        assert!(combining.run_owned(|_| After::Done).is_err());
        assert_eq!(*combining.lock(), Some(0), "the value can still be taken out to stop it");
        // A thread that holds the guard drops the value as it unwinds.
        let guarded = Arc::clone(&combining);
        let told = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tell = Arc::clone(&told);
        let result = std::thread::spawn(move || {
            let _guard = guarded.drop_on_unwind(|| tell.store(true, Ordering::SeqCst));
            panic!("the owner's thread panics");
        })
        .join();
        assert!(result.is_err());
        assert!(told.load(Ordering::SeqCst), "the guard reports the panic");
        assert_eq!(*combining.lock(), None);
    }
}
