//! Who runs the log writer's rounds when its I/O path is synchronous: the thread that ran the
//! core's round that queued the work, when no other thread is writing.
//!
//! On the `pwrite` path (`log.io_mode = "fallback"`, or `"auto"` where io_uring would hand
//! every buffered write to a worker, as on ext4) the log writer's round is: submit what is
//! queued, `pwrite` it, `fdatasync`, send the acknowledgements. With `pipeline.inline_core`,
//! the thread that ran the core's round (a peer reader, the client loop) runs that log round
//! itself right after, when no other thread is running one, instead of waking the log writer's
//! thread: on a follower, an append then goes from the socket to the disk and its
//! acknowledgement back out on one thread, with no wake-up between. Meanwhile, other threads
//! that queue work find the log taken and leave it to the holder, whose next round covers all
//! of it with one `fdatasync` (group commit), as the log writer's thread did.
//!
//! The log writer's thread remains for the rest: it sleeps on a doorbell, wakes once per
//! metrics interval to publish (and to write anything left, which the combining lock makes
//! impossible but costs nothing to check), and takes the stage down once the core stops.
//!
//! The io_uring path keeps its writes and syncs in flight between calls and sleeps in the
//! ring for their completions; it is never run this way.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::combining::{Combining, Poisoned};
use crate::handoff::Shared;
use crate::log_stage::LogStage;

/// Exit code when a round panicked (as for any stage thread that panics).
const EXIT_CODE_PANIC: i32 = 70;

/// The log stage and who may run it. See the module docs.
#[derive(Debug)]
pub(crate) struct LogRunner {
    stage: Combining<LogStage>,
    /// Rung by the core to have the log's thread look (metrics, the core stopping).
    doorbell: Receiver<()>,
    /// How long the log's thread sleeps at most: the metrics publishing interval.
    sleep_max: Duration,
    shared: Arc<Shared>,
}

impl LogRunner {
    pub(crate) fn new(stage: LogStage, doorbell: Receiver<()>, sleep_max: Duration) -> Arc<LogRunner> {
        let shared = Arc::clone(&stage.shared);
        Arc::new(LogRunner { stage: Combining::new(stage), doorbell, sleep_max, shared })
    }

    /// Called by a thread that queued log work: writes it here when no other thread is.
    /// Returns whether the core should look at the durable token (see
    /// [`LogStage::inline_round`]).
    pub(crate) fn arrived(&self) -> bool {
        let mut core_due = false;
        let result = self.stage.deliver(|stage| {
            stage.metrics.counters().log_rounds_inline.bump();
            core_due |= stage.inline_round();
            !stage.stopped() && !stage.work.is_empty()
        });
        if result.is_err() {
            self.shared.fail(EXIT_CODE_PANIC, "the log stage panicked".into());
        }
        core_due
    }

    /// The log writer's own thread, until the stage stops.
    pub(crate) fn run(&self) {
        loop {
            let _ = self.doorbell.recv_timeout(self.sleep_max);
            let mut core_due = false;
            let ran = self.stage.run_owned(|stage| {
                core_due |= stage.inline_round();
                !stage.stopped() && !stage.work.is_empty()
            });
            if core_due {
                self.shared.wake_core();
            }
            match ran {
                Ok(true) => {}
                Ok(false) => return,
                Err(Poisoned) => {
                    self.shared.fail(EXIT_CODE_PANIC, "the log stage panicked".into());
                    return;
                }
            }
            let mut guard = self.stage.lock();
            if guard.as_ref().is_some_and(LogStage::stopped) {
                if let Some(mut stage) = guard.take() {
                    stage.publish_now();
                }
                return;
            }
        }
    }
}
