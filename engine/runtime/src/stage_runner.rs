//! Who runs the log writer's and the apply stage's rounds: the thread whose core round handed
//! them work, when no other thread is running one (with `pipeline.inline_core`).
//!
//! After a core round, the thread that ran it (a peer reader, the client loop; see
//! `core_runner.rs`) runs the rounds of the stages that round handed work to, instead of waking
//! their threads: on the leader, the acknowledgement that commits an entry also applies it and
//! answers its clients, and a client's request is written to the leader's disk on the thread
//! that read it. Meanwhile, threads that hand a stage more work
//! find it taken and leave the work to the holder (the [`Combining`] lock), whose next round
//! takes all of it: for the log, one `fdatasync` for everything queued (group commit), as its
//! own thread did.
//!
//! Which stages run so:
//! - the log writer, on the `pwrite` path only: its round submits, writes, syncs and sends the
//!   acknowledgements, all within the call. The io_uring path keeps I/O in flight between calls
//!   and sleeps in the ring for completions, on its own thread.
//! - the apply stage, unless the state machine must stay on one thread
//!   ([`smr_apply::StateMachine::any_thread`]; the C ABI promises its callbacks the apply thread).
//!
//! Each stage keeps its thread for the rest: it sleeps on a doorbell, wakes at least every
//! `sleep_max` for its timed work (publishing metrics, request timeouts, snapshots), runs work
//! handed over without a round behind it, and takes the stage down once it has stopped. Work
//! that takes long ([`HeavyWork`]: a snapshot to save and install, a compaction, a state to
//! restore) is counted as it is queued; while any is, only the stage's thread runs the stage's
//! rounds, so that no peer reader or client loop is held up by it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::combining::{After, Combining, Poisoned, Ran};
use crate::handoff::{HeavyWork, Shared};

/// An inline round that took longer than this (a slow `fdatasync` while the disk is busy with
/// snapshots, say) sends the stage's rounds back to its own thread for [`SLOW_BACKOFF`]: a
/// peer reader held up that long stops hearing its leader (and the leader its followers'
/// acknowledgements) for as long, which costs pre-votes, or a leader's step-down under
/// CheckQuorum, at the election timeout.
const SLOW_ROUND: Duration = Duration::from_millis(10);
/// How long the stage's rounds stay on its own thread after a slow inline round.
const SLOW_BACKOFF: Duration = Duration::from_secs(1);

/// Exit code when a round panicked (as for any stage thread that panics).
const EXIT_CODE_PANIC: i32 = 70;

/// A stage whose rounds may run on any thread, one at a time.
pub(crate) trait InlineStage: Send {
    /// One round: takes the work queued and does it. Returns whether the core should run a
    /// round for what moved: the log's durable token, when a ready without persisted messages
    /// became durable; the applied index, when the core held its batch for the answers given.
    /// A failure fails the node and leaves the stage stopped.
    fn inline_round(&mut self) -> bool;
    /// Whether work is queued for another round.
    fn has_work(&self) -> bool;
    /// Whether the last round stopped at its time budget with work left, which the stage's
    /// own thread then takes on.
    fn cut_short(&self) -> bool {
        false
    }
    /// Whether the stage has nothing more to do: its input is closed, or it failed.
    fn stopped(&self) -> bool;
    /// Counts a round run inline (not by the stage's own thread).
    fn count_inline_round(&self);
    /// Counts an inline round slow enough to send the stage's rounds back to its own thread.
    fn count_slow_round(&self);
    /// Publishes the stage's metrics, once it has stopped.
    fn publish_now(&mut self);
}

/// What the core's runner calls after a core round that handed a stage work.
pub(crate) trait Arrived: Send + Sync {
    /// Runs the stage's round here unless another thread is running one. Returns whether the
    /// core should look (see [`InlineStage::inline_round`]).
    fn arrived(&self) -> bool;
}

/// A stage's thread body, and the runner the core's runner calls when the stage's rounds run
/// inline (`None`: they run on that thread only).
pub(crate) type StageThread = (Box<dyn FnOnce() + Send>, Option<Arc<dyn Arrived>>);

/// A stage whose rounds run inline: its runner, and a thread body that runs what is left.
pub(crate) fn inline_stage<T: InlineStage + 'static>(
    name: &'static str,
    stage: T,
    doorbell: (Sender<()>, Receiver<()>),
    sleep_max: Duration,
    shared: Arc<Shared>,
    heavy: fn(&Shared) -> &HeavyWork,
) -> StageThread {
    let runner = StageRunner::new(name, stage, doorbell, sleep_max, shared, heavy);
    let thread = Arc::clone(&runner);
    (Box::new(move || thread.run()), Some(runner))
}

/// A stage and who may run it. See the module docs.
pub(crate) struct StageRunner<T> {
    stage: Combining<T>,
    /// Rung to have the stage's thread look (its queue closing, work without a round behind it,
    /// heavy work).
    ring: Sender<()>,
    doorbell: Receiver<()>,
    /// Heavy work queued for this stage: while there is some, only the stage's thread runs its
    /// rounds.
    heavy: fn(&Shared) -> &HeavyWork,
    /// Until when (nanoseconds since `epoch`) the stage's rounds stay on its own thread, after
    /// a slow inline round.
    slow_until_ns: AtomicU64,
    epoch: Instant,
    /// How long the stage's thread sleeps at most.
    sleep_max: Duration,
    shared: Arc<Shared>,
    name: &'static str,
}

impl<T> std::fmt::Debug for StageRunner<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageRunner").field("stage", &self.name).finish()
    }
}

impl<T: InlineStage> StageRunner<T> {
    pub(crate) fn new(
        name: &'static str,
        stage: T,
        (ring, doorbell): (Sender<()>, Receiver<()>),
        sleep_max: Duration,
        shared: Arc<Shared>,
        heavy: fn(&Shared) -> &HeavyWork,
    ) -> Arc<StageRunner<T>> {
        Arc::new(StageRunner {
            stage: Combining::new(stage),
            ring,
            doorbell,
            heavy,
            slow_until_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            sleep_max,
            shared,
            name,
        })
    }

    /// The stage's own thread, until the stage stops.
    pub(crate) fn run(&self) {
        // If this thread panics, the stage is dropped with it, so that its queues close and the
        // stages after it end.
        let _guard = self.stage.drop_on_unwind(|| self.panicked());
        loop {
            let _ = self.doorbell.recv_timeout(self.sleep_max);
            let mut core_due = false;
            let ran = self.stage.run_owned(|stage| {
                core_due |= stage.inline_round();
                (!stage.stopped() && stage.has_work()).into()
            });
            if core_due {
                self.shared.wake_core();
            }
            match ran {
                Ok(Ran::Idle | Ran::Yielded) => {}
                Ok(Ran::Stopped) => return,
                Err(Poisoned) => {
                    // A round panicked on another thread: drop the stage, as above.
                    self.panicked();
                    drop(self.stage.lock().take());
                    return;
                }
            }
            let mut guard = self.stage.lock();
            if guard.as_ref().is_some_and(T::stopped) {
                if let Some(mut stage) = guard.take() {
                    stage.publish_now();
                }
                return;
            }
        }
    }

    fn panicked(&self) {
        self.shared.fail(EXIT_CODE_PANIC, format!("the {} stage panicked", self.name));
    }
}

impl<T: InlineStage> Arrived for StageRunner<T> {
    fn arrived(&self) -> bool {
        let now_ns = nanos(self.epoch.elapsed());
        if (self.heavy)(&self.shared).pending() || now_ns < self.slow_until_ns.load(Ordering::Relaxed) {
            // Work that takes long is queued, or the last inline round was slow: the stage's
            // thread runs the rounds, so that no peer reader or client loop is held up.
            let _ = self.ring.try_send(());
            return false;
        }
        let mut core_due = false;
        let ran = self.stage.deliver(|stage| {
            let started = Instant::now();
            stage.count_inline_round();
            core_due |= stage.inline_round();
            if started.elapsed() > SLOW_ROUND {
                let until = nanos(self.epoch.elapsed() + SLOW_BACKOFF);
                self.slow_until_ns.store(until, Ordering::Relaxed);
                stage.count_slow_round();
                // What is left goes to the stage's thread.
                let _ = self.ring.try_send(());
                return After::Yield;
            }
            if stage.cut_short() {
                // The rest of a long catch-up goes to the stage's thread too.
                let _ = self.ring.try_send(());
                return After::Yield;
            }
            (!stage.stopped() && stage.has_work()).into()
        });
        if ran.is_err() {
            self.panicked();
        }
        core_due
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use crossbeam_channel::bounded;

    use super::*;
    use crate::directory::Directory;

    /// A stage with `left` units of work, one per round, each round reporting itself cut short
    /// while work is left (as the apply stage's does at its time budget).
    struct Budgeted {
        left: usize,
        rounds: Arc<AtomicUsize>,
    }

    impl InlineStage for Budgeted {
        fn inline_round(&mut self) -> bool {
            self.rounds.fetch_add(1, Ordering::Relaxed);
            self.left = self.left.saturating_sub(1);
            false
        }
        fn has_work(&self) -> bool {
            self.left > 0
        }
        fn cut_short(&self) -> bool {
            self.left > 0
        }
        fn stopped(&self) -> bool {
            false
        }
        fn count_inline_round(&self) {}
        fn count_slow_round(&self) {}
        fn publish_now(&mut self) {}
    }

    #[test]
    fn a_round_cut_short_leaves_the_rest_to_the_stages_thread() {
        let (shared, _core_wakes) = Shared::new(Directory::default(), None);
        let rounds = Arc::new(AtomicUsize::new(0));
        let stage = Budgeted { left: 10, rounds: Arc::clone(&rounds) };
        let (ring, doorbell) = bounded(1);
        let doorbell_probe = doorbell.clone();
        let runner = StageRunner::new("test", stage, (ring, doorbell), Duration::from_secs(1), shared, |shared| {
            &shared.apply_heavy
        });
        runner.arrived();
        // One round here, then the thread that brought the work goes back to its own: the
        // stage's thread is rung for the other nine.
        assert_eq!(rounds.load(Ordering::Relaxed), 1);
        assert!(doorbell_probe.try_recv().is_ok(), "the stage's thread was not rung");
        runner.arrived();
        assert_eq!(rounds.load(Ordering::Relaxed), 2);
    }
}
