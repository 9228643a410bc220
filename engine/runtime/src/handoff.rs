//! What the stages hand each other, and the little state they share.
//!
//! ```text
//!  clients ─► core ──LogWork──► log ──(durable token: atomic + wake)──► core
//!  peers   ─► core ──ApplyWork─► apply ──(applied index: atomic + wake)──► core
//!                                apply ──snapshot taken (try_send)──────► core
//!                      log ──Restore (waits for the answer)──► apply
//! ```
//!
//! Blocking sends go one way only (core → log, core → apply, log → apply), so no cycle of
//! stages can wait on each other: everything that flows back to the core is an atomic and a
//! wake-up that is dropped when one is already pending, or a `try_send` that may be retried.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded};
use smr_net::ClientRequest;
use smr_raft::{Entry, HardState, Index, Message, SnapshotChunk, Term};

use crate::directory::Directory;
use crate::snapshot::Snapshot;

/// Work for the log writer, in ready order.
#[derive(Debug)]
pub(crate) enum LogWork {
    /// Persist one ready: snapshot chunks, then entries, then the hard state (when `sync`).
    /// Once it is durable, the log writer sends its `messages` (the ready's persisted messages:
    /// acknowledgements and votes) itself, so that an acknowledgement leaves without a hand-off
    /// back to the core. A ready with nothing to write still comes here when it has messages
    /// and an earlier ready is not yet durable: its messages must wait for that one.
    Persist {
        queued: Instant,
        number: u64,
        chunks: Vec<SnapshotChunk>,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
        messages: Vec<Message>,
    },
    /// Drop the durable log through `index` (a snapshot covering it is saved).
    Compact { index: Index },
}

/// A client request waiting for its entry, or for a read index, or a membership change waiting
/// to commit. `enqueued` is when it was proposed (for the end-to-end histograms and timeouts).
#[derive(Debug)]
pub(crate) struct Waiting {
    pub(crate) request: ClientRequest,
    pub(crate) enqueued: Instant,
}

/// Work for the apply stage.
#[derive(Debug)]
pub(crate) enum ApplyWork {
    /// The entry at `index` was proposed here in `term`; `requests` are its commands' clients, in
    /// batch order (or the one admin request of a membership change).
    Proposed { index: Index, term: Term, requests: Vec<Waiting> },
    /// Entries through `index` are committed and durable here (`queued`: when the core sent it).
    Commit { index: Index, queued: Instant },
    /// Serve these reads once `index` is applied (`index` 0: stale reads, serve now).
    Read { index: Index, requests: Vec<Waiting> },
    /// Take a snapshot now (a follower needs one).
    SnapshotNow,
    /// Answer a status request: the core's part is in `status`; the apply stage adds the state
    /// hash at its applied index (see `ApplyStage::hash_for_status`).
    Status { status: serde_json::Value, request: ClientRequest },
    /// Replace the state with a snapshot received from the leader; answer on `done` once the
    /// state machine holds it.
    Restore { snapshot: Snapshot, done: Sender<Result<(), String>> },
}

/// Work queued for a stage that takes long (a snapshot to save and install, a compaction, a
/// state to restore): counted up by the sender before it queues the work, and down by the stage
/// once it has done it. While any is queued, the stage's rounds run on its own thread only
/// (`stage_runner.rs`).
#[derive(Debug, Default)]
pub(crate) struct HeavyWork(AtomicU64);

impl HeavyWork {
    pub(crate) fn queued(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn done(&self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }

    pub(crate) fn pending(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

/// Wakes the log writer's thread: the log's own waker when that thread sleeps in the log (its
/// I/O path keeps work in flight), else the doorbell its runner sleeps on (`stage_runner.rs`).
#[derive(Clone, Debug)]
pub(crate) enum LogBell {
    Waker(smr_log::LogWaker),
    Doorbell(Sender<()>),
}

impl LogBell {
    pub(crate) fn wake(&self) {
        match self {
            LogBell::Waker(waker) => waker.wake(),
            // Full: a ring is pending. Disconnected: the log stage has stopped.
            LogBell::Doorbell(doorbell) => {
                let _ = doorbell.try_send(());
            }
        }
    }
}

/// A snapshot the apply stage took and saved: the core hands the bytes to the Raft core.
#[derive(Debug)]
pub(crate) struct SnapshotTaken {
    pub(crate) index: Index,
    pub(crate) bytes: Bytes,
}

/// Why the node stopped on its own: an environmental failure with a distinct exit code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fatal {
    pub exit_code: i32,
    pub message: String,
}

/// State the stages share: a few atomics, the member directory (control plane), the wake-up
/// channel of the core.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) shutdown: AtomicBool,
    /// The highest ready number the log reports durable (every earlier one is too).
    pub(crate) durable_token: AtomicU64,
    /// The apply stage's applied index, stored once the answers of the entries applied are out.
    pub(crate) applied_index: AtomicU64,
    /// Set by the core while it holds a batch until the apply stage has answered the entries it
    /// proposed; the apply stage wakes the core when the applied index moves.
    pub(crate) core_waits_for_answers: AtomicBool,
    /// Bumped whenever `directory` changes.
    pub(crate) directory_generation: AtomicU64,
    pub(crate) directory: Mutex<Directory>,
    /// Exit code of the first fatal failure, 0 while none.
    pub(crate) fatal_code: AtomicI32,
    pub(crate) fatal: Mutex<Option<Fatal>>,
    /// The embedder's notifications, if any. Locked only on role and membership changes and on a
    /// fatal stop, never on the data path.
    pub(crate) events: Mutex<Option<Box<dyn crate::events::NodeEvents>>>,
    /// Wakes the core. Capacity 1: one pending wake-up is as good as many.
    core_wake: Sender<()>,
    /// Wakes the apply stage's thread when its rounds run inline (it then sleeps on this, not
    /// on its queue): for work handed over without a core round behind it. Set at start-up.
    apply_wake: OnceLock<Sender<()>>,
    /// Heavy work queued for the log writer (snapshot installs, compactions) and for the apply
    /// stage (restores).
    pub(crate) log_heavy: HeavyWork,
    pub(crate) apply_heavy: HeavyWork,
}

impl Shared {
    pub(crate) fn new(
        directory: Directory,
        events: Option<Box<dyn crate::events::NodeEvents>>,
    ) -> (Arc<Shared>, Receiver<()>) {
        let (core_wake, wakes) = bounded(1);
        let shared = Arc::new(Shared {
            shutdown: AtomicBool::new(false),
            durable_token: AtomicU64::new(0),
            applied_index: AtomicU64::new(0),
            core_waits_for_answers: AtomicBool::new(false),
            directory_generation: AtomicU64::new(1),
            directory: Mutex::new(directory),
            fatal_code: AtomicI32::new(0),
            fatal: Mutex::new(None),
            events: Mutex::new(events),
            core_wake,
            apply_wake: OnceLock::new(),
            log_heavy: HeavyWork::default(),
            apply_heavy: HeavyWork::default(),
        });
        (shared, wakes)
    }

    pub(crate) fn wake_core(&self) {
        // Full: a wake-up is already pending. Disconnected: the core has stopped.
        let _ = self.core_wake.try_send(());
    }

    /// Has [`Shared::wake_apply`] ring `doorbell`.
    pub(crate) fn set_apply_doorbell(&self, doorbell: Sender<()>) {
        let _ = self.apply_wake.set(doorbell);
    }

    /// Wakes the apply stage's thread when it sleeps on a doorbell; otherwise the work put in
    /// its queue wakes it.
    pub(crate) fn wake_apply(&self) {
        if let Some(doorbell) = self.apply_wake.get() {
            let _ = doorbell.try_send(());
        }
    }

    pub(crate) fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Records the first fatal failure and stops every stage.
    pub(crate) fn fail(&self, exit_code: i32, message: String) {
        tracing::error!(exit_code, "fatal: {message}");
        let mut fatal = self.fatal.lock().expect("no panics while holding the fatal slot");
        let first = fatal.is_none();
        if first {
            *fatal = Some(Fatal { exit_code, message });
            self.fatal_code.store(exit_code, Ordering::Release);
        }
        let notice = fatal.clone().filter(|_| first);
        drop(fatal);
        if let Some(notice) = notice {
            self.notify(|events| events.fatal(&notice));
        }
        self.shutdown.store(true, Ordering::Release);
        self.wake_core();
    }

    /// Calls the embedder's notifications, if any.
    pub(crate) fn notify(&self, call: impl FnOnce(&mut dyn crate::events::NodeEvents)) {
        let mut events = self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(events) = events.as_mut() {
            call(events.as_mut());
        }
    }

    pub(crate) fn directory(&self) -> Directory {
        self.directory.lock().expect("no panics while holding the directory").clone()
    }

    pub(crate) fn set_directory(&self, directory: Directory) {
        *self.directory.lock().expect("no panics while holding the directory") = directory;
        self.directory_generation.fetch_add(1, Ordering::AcqRel);
        self.wake_core();
    }
}
