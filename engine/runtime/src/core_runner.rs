//! Who runs the core stage's rounds: its own thread, or the transport thread that brings it work.
//!
//! The core stage is one value behind a lock. Its own thread sleeps until the next tick or
//! linger deadline, or until a stage rings its doorbell (the log writer's durable reports, the
//! apply stage's answers, a snapshot, a stop), and then runs a round.
//!
//! With `pipeline.inline_core` (the default), the transport's reader threads and the client
//! event loop run the round themselves, right after they hand over what they received, when
//! no other thread is running one. The core's thread then no longer waits on those channels,
//! so received work costs no wake-up of it. At one command outstanding, a write crosses three
//! such hand-offs on its way to commit: the client's request to the leader's core, the
//! follower's core, and the acknowledgement to the leader's core. On a small machine where
//! three nodes share two cores, each hand-off is a wake-up of a sleeping thread, tens of
//! microseconds of a scheduler that is busy anyway. Without it (dedicated cores, say), the
//! core's thread waits on every input and runs every round, as a pinned stage.
//!
//! No work is left behind: the stage sits in a [`Combining`] lock, whose deliverers never wait
//! for it and whose holder runs another round for work delivered while it held it.
//!
//! An inline round may open a batch whose hold ends before the core's thread means to wake.
//! Every round publishes its stage's next deadline, and an inline round rings the doorbell
//! when that deadline is earlier than the one the core's thread sleeps until.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select};
use smr_net::{ClientRequest, ClientServer, Inbound};

use crate::combining::Combining;
use crate::core_stage::CoreStage;
use crate::handoff::{Shared, SnapshotTaken};
use crate::log_runner::LogRunner;

/// How long a stopping node keeps serving proposals already made, so that their clients get
/// answers rather than `ShuttingDown`.
const DRAIN_MS_MAX: u64 = 2_000;
/// Exit code when a round panicked (as for any stage thread that panics).
const EXIT_CODE_PANIC: i32 = 70;

/// The core stage and who may run it. See the module docs.
pub(crate) struct CoreRunner {
    stage: Combining<CoreStage>,
    /// The log writer, when its rounds run inline.
    log: Option<Arc<LogRunner>>,
    /// Whether transport threads run rounds (`pipeline.inline_core`).
    inline: bool,
    busy_poll: bool,
    shared: Arc<Shared>,
    /// The core's inputs, for its thread to wait on (receivers are shared; rounds take).
    inbound: Receiver<Inbound>,
    clients: Receiver<ClientRequest>,
    snapshots: Receiver<SnapshotTaken>,
    wakes: Receiver<()>,
    /// Time origin of the two deadlines below (nanoseconds since it).
    epoch: Instant,
    /// The stage's next deadline, as of the last round.
    deadline_ns: AtomicU64,
    /// The deadline the core's thread sleeps until (`u64::MAX` while it is not sleeping).
    sleeping_until_ns: AtomicU64,
}

impl std::fmt::Debug for CoreRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreRunner").field("inline", &self.inline).finish()
    }
}

impl CoreRunner {
    /// `wakes` is the core's doorbell (`Shared::wake_core`).
    pub(crate) fn new(stage: CoreStage, wakes: Receiver<()>, inline: bool, busy_poll: bool) -> Arc<CoreRunner> {
        let epoch = Instant::now();
        let deadline = stage.next_deadline();
        Arc::new(CoreRunner {
            inbound: stage.inbound.clone(),
            clients: stage.clients.clone(),
            snapshots: stage.snapshots.clone(),
            shared: Arc::clone(&stage.shared),
            stage: Combining::new(stage),
            log: None,
            inline,
            busy_poll,
            wakes,
            epoch,
            deadline_ns: AtomicU64::new(nanos_since(epoch, deadline)),
            sleeping_until_ns: AtomicU64::new(u64::MAX),
        })
    }

    /// Runs the log writer's rounds inline after core rounds that queued log work (see
    /// `log_runner.rs`). Set before the node starts.
    pub(crate) fn set_log_runner(self: &mut Arc<Self>, log: Arc<LogRunner>) {
        Arc::get_mut(self).expect("set before the runner is shared").log = Some(log);
    }

    /// With `pipeline.inline_core`: has the peer readers and the client event loop call
    /// [`CoreRunner::arrived`] after they deliver. The hooks hold the runner, and the stage holds
    /// the transport that holds one of them: the cycle ends when the stage stops and is dropped.
    pub(crate) fn install_arrival_hooks(self: &Arc<Self>, clients: &ClientServer) {
        if !self.inline {
            return;
        }
        let on_inbound = Arc::clone(self);
        if let Some(stage) = self.stage.lock().as_ref() {
            stage.transport.on_inbound(move || on_inbound.arrived());
        }
        let on_requests = Arc::clone(self);
        clients.on_requests(move || on_requests.arrived());
    }

    /// Called by a transport thread once it has put work into one of the core's channels: runs
    /// the round here when no other thread is running one.
    pub(crate) fn arrived(&self) {
        loop {
            let mut log_due = false;
            let ran = self.stage.deliver(|stage| {
                let more = self.round(stage, false);
                log_due |= stage.take_log_queued();
                more
            });
            if ran.is_err() {
                self.shared.fail(EXIT_CODE_PANIC, "the core stage panicked".into());
                return;
            }
            // The log round, when this thread's core rounds queued log work; and once that is
            // durable, another core round here when the core must hear of it (the leader's own
            // entries count toward its commit), rather than a wake-up of the core's thread.
            if !(log_due && self.write_log()) {
                return;
            }
        }
    }

    /// Runs the log writer's round here (inline log rounds only). Returns whether the core
    /// should look at the durable token.
    fn write_log(&self) -> bool {
        self.log.as_ref().is_some_and(|log| log.arrived())
    }

    /// The core's own thread, until the node stops.
    pub(crate) fn run(&self) {
        let mut drain_until: Option<Instant> = None;
        loop {
            if self.shared.stopping() {
                let now = Instant::now();
                let until = *drain_until.get_or_insert(now + Duration::from_millis(DRAIN_MS_MAX));
                let mut guard = self.stage.lock();
                let serving = guard.as_ref().is_some_and(CoreStage::has_uncommitted_proposals);
                if !serving || now >= until {
                    let stage = guard.take();
                    drop(guard);
                    if let Some(stage) = stage {
                        stage.stop();
                    }
                    return;
                }
            }
            self.wait();
            // The core's thread waits for the lock rather than passing: only it reconciles
            // peers, and a round it was woken for (a deadline) must not be skipped.
            let mut log_due = false;
            let ran = self.stage.run_owned(|stage| {
                let more = self.round(stage, true);
                log_due |= stage.take_log_queued();
                more
            });
            if log_due && self.write_log() {
                self.shared.wake_core();
            }
            match ran {
                Ok(true) => {}
                Ok(false) => return,
                Err(super::combining::Poisoned) => {
                    // A round panicked on a transport thread. Stop the stage anyway (its queues
                    // closed, the transport shut down), so that the other stages end.
                    self.shared.fail(EXIT_CODE_PANIC, "the core stage panicked".into());
                    if let Some(stage) = self.stage.lock().take() {
                        stage.stop();
                    }
                    return;
                }
            }
        }
    }

    /// One round of the stage, on `on_core_thread` or not; publishes its next deadline, and
    /// rings the core's thread when that is earlier than the one it sleeps until.
    fn round(&self, stage: &mut CoreStage, on_core_thread: bool) -> bool {
        let more = stage.round(on_core_thread);
        let deadline_ns = nanos_since(self.epoch, stage.next_deadline());
        self.deadline_ns.store(deadline_ns, Ordering::SeqCst);
        if !on_core_thread && deadline_ns < self.sleeping_until_ns.load(Ordering::SeqCst) {
            self.shared.wake_core();
        }
        more
    }

    /// Blocks until an input arrives (those the core's thread waits on), the doorbell rings or
    /// the stage's next deadline passes.
    fn wait(&self) {
        if self.busy_poll {
            return;
        }
        let deadline_ns = self.deadline_ns.load(Ordering::SeqCst);
        self.sleeping_until_ns.store(deadline_ns, Ordering::SeqCst);
        // An inline round may have moved the deadline earlier just before the store above, and
        // not seen it: look again (the round stores the deadline before it reads ours).
        let deadline_ns = deadline_ns.min(self.deadline_ns.load(Ordering::SeqCst));
        let timeout = Duration::from_nanos(deadline_ns.saturating_sub(nanos_since(self.epoch, Instant::now())));
        let mut select = Select::new();
        let wakes = select.recv(&self.wakes);
        select.recv(&self.snapshots);
        if !self.inline {
            select.recv(&self.inbound);
            select.recv(&self.clients);
        }
        // `ready` takes nothing: the round does. Only the doorbell is emptied here.
        if let Ok(index) = select.ready_timeout(timeout)
            && index == wakes
        {
            let _ = self.wakes.try_recv();
        }
        self.sleeping_until_ns.store(u64::MAX, Ordering::SeqCst);
    }
}

fn nanos_since(epoch: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}
