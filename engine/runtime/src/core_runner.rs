//! Who runs the core stage's rounds: its own thread, or the transport thread that brings it work.
//!
//! The core stage is one value behind a lock. Its own thread sleeps until the next tick or
//! linger deadline, or until its doorbell rings (the log writer's durable reports, the apply
//! stage's answers, a snapshot, a request submitted in-process, a stop), and then runs a round.
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

use crate::combining::{After, Combining, Poisoned, Ran};
use crate::core_stage::CoreStage;
use crate::handoff::{Shared, SnapshotTaken};
use crate::stage_runner::Arrived;

/// How long a stopping node keeps serving proposals already made, so that their clients get
/// answers rather than `ShuttingDown`.
const DRAIN_MS_MAX: u64 = 2_000;
/// Exit code when a round panicked (as for any stage thread that panics).
const EXIT_CODE_PANIC: i32 = 70;

/// The core stage and who may run it. See the module docs.
pub(crate) struct CoreRunner {
    stage: Combining<CoreStage>,
    /// The log writer and the apply stage, when their rounds run inline (`stage_runner.rs`).
    log: Option<Arc<dyn Arrived>>,
    apply: Option<Arc<dyn Arrived>>,
    /// Whether transport threads run rounds (`pipeline.inline_core`).
    inline: bool,
    busy_poll: bool,
    shared: Arc<Shared>,
    /// The core's doorbell.
    wakes: Receiver<()>,
    /// Time origin of the two deadlines below (nanoseconds since it).
    epoch: Instant,
    /// The stage's next deadline, as of the last round.
    deadline_ns: AtomicU64,
    /// The deadline the core's thread sleeps until; 0 while it is not sleeping (it then reads
    /// the deadline before it sleeps again, so no ring is needed).
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
            shared: Arc::clone(&stage.shared),
            stage: Combining::new(stage),
            log: None,
            apply: None,
            inline,
            busy_poll,
            wakes,
            epoch,
            deadline_ns: AtomicU64::new(nanos_since(epoch, deadline)),
            sleeping_until_ns: AtomicU64::new(0),
        })
    }

    /// Runs the log writer's and the apply stage's rounds inline after core rounds that handed
    /// them work (see `stage_runner.rs`). Set before the node starts.
    pub(crate) fn set_inline_stages(
        self: &mut Arc<Self>,
        log: Option<Arc<dyn Arrived>>,
        apply: Option<Arc<dyn Arrived>>,
    ) {
        let runner = Arc::get_mut(self).expect("set before the runner is shared");
        runner.log = log;
        runner.apply = apply;
    }

    /// With `pipeline.inline_core`: has the peer readers and the client event loop call
    /// [`CoreRunner::arrived`] after they deliver. The hooks hold the runner, and the stage holds
    /// the transport that holds one of them: the cycle ends when the core's thread stops the
    /// stage (or drops it, on a panic), and the client server's hook when the node shuts the
    /// client server down.
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
            let mut handed = Handed::default();
            let ran = self.stage.deliver(|stage| self.round_handing(stage, false, &mut handed));
            let ran = match ran {
                Ok(ran) => ran,
                Err(Poisoned) => {
                    self.shared.fail(EXIT_CODE_PANIC, "the core stage panicked".into());
                    return;
                }
            };
            // When the core must hear of what the log made durable (the leader's own entries
            // count toward its commit), or of answers it held a batch for, another core round
            // here rather than a wake-up of the core's thread; after a yield, the core's work
            // left pending too.
            let core_due = self.run_handed(handed);
            if !(core_due || ran == Ran::Yielded) {
                return;
            }
        }
    }

    /// A core round that yields as soon as it has handed another stage work, so that this
    /// thread runs that stage's round before it takes on more of the core's: a thread that
    /// kept finding new core work (a loaded leader's) would otherwise leave the log waiting.
    fn round_handing(&self, stage: &mut CoreStage, on_core_thread: bool, handed: &mut Handed) -> After {
        let more = self.round(stage, on_core_thread);
        handed.take(stage);
        if handed.any() { After::Yield } else { more.into() }
    }

    /// Runs the rounds of the stages a core round handed work to: the log writer first (the
    /// leader's own write counts toward the commit), then the apply stage. Returns whether the core
    /// should look at the log's durable token.
    fn run_handed(&self, handed: Handed) -> bool {
        let mut core_due = false;
        if handed.log
            && let Some(log) = &self.log
        {
            core_due |= log.arrived();
        }
        if handed.apply
            && let Some(apply) = &self.apply
        {
            core_due |= apply.arrived();
        }
        core_due
    }

    /// The core's own thread, until the node stops.
    pub(crate) fn run(&self) {
        // If this thread panics, the stage is dropped with it, so that its queues close and the
        // other stages end.
        let _guard = self.stage.drop_on_unwind(|| self.shared.fail(EXIT_CODE_PANIC, "the core stage panicked".into()));
        // The inputs this thread waits on, held only as long as it runs: once the stage has
        // stopped, the channels close and their senders get an error, not silence.
        let Some(inputs) = self.stage.lock().as_ref().map(Inputs::of) else { return };
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
            self.wait(&inputs);
            // The core's thread waits for the lock rather than passing: only it reconciles
            // peers, and a round it was woken for (a deadline) must not be skipped.
            let mut handed = Handed::default();
            let mut ran = self.stage.run_owned(|stage| self.round_handing(stage, true, &mut handed));
            loop {
                let core_due = self.run_handed(std::mem::take(&mut handed));
                match ran {
                    Ok(Ran::Idle) if !core_due => break,
                    Ok(Ran::Idle | Ran::Yielded) => {}
                    Ok(Ran::Stopped) => return,
                    Err(Poisoned) => {
                        // A round panicked on a transport thread. Stop the stage anyway (its
                        // queues closed, the transport shut down), so that the other stages end.
                        self.shared.fail(EXIT_CODE_PANIC, "the core stage panicked".into());
                        if let Some(stage) = self.stage.lock().take() {
                            stage.stop();
                        }
                        return;
                    }
                }
                if self.shared.stopping() {
                    // The outer loop drains and stops; work left pending waits for its rounds.
                    break;
                }
                ran = self.stage.deliver(|stage| self.round_handing(stage, true, &mut handed));
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
    fn wait(&self, inputs: &Inputs) {
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
        select.recv(&inputs.snapshots);
        if !self.inline {
            select.recv(&inputs.inbound);
            select.recv(&inputs.clients);
        }
        // `ready` takes nothing: the round does. Only the doorbell is emptied here.
        if let Ok(index) = select.ready_timeout(timeout)
            && index == wakes
        {
            let _ = self.wakes.try_recv();
        }
        self.sleeping_until_ns.store(0, Ordering::SeqCst);
    }
}

/// The core stage's input channels, which its thread waits on (rounds take from them).
struct Inputs {
    inbound: Receiver<Inbound>,
    clients: Receiver<ClientRequest>,
    snapshots: Receiver<SnapshotTaken>,
}

impl Inputs {
    fn of(stage: &CoreStage) -> Inputs {
        Inputs { inbound: stage.inbound.clone(), clients: stage.clients.clone(), snapshots: stage.snapshots.clone() }
    }
}

/// Which stages the core's rounds handed work to, for their inline rounds.
#[derive(Default)]
struct Handed {
    log: bool,
    apply: bool,
}

impl Handed {
    fn any(&self) -> bool {
        self.log || self.apply
    }

    fn take(&mut self, stage: &mut CoreStage) {
        self.log |= stage.take_log_queued();
        self.apply |= stage.take_apply_queued();
    }
}

fn nanos_since(epoch: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}
