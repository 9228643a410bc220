//! The contract between the engine and the service it replicates.

use std::io::{Read, Write};

use bytes::Bytes;
use smr_raft::{Index, Term};

use crate::batch::ArchivedBatch;

/// One committed batch, as the state machine sees it: read in place from the log.
#[derive(Debug)]
pub struct ApplyBatch<'a> {
    pub index: Index,
    pub term: Term,
    batch: &'a ArchivedBatch,
    /// `fresh[i]` is false for a command the session table already applied (a retry).
    fresh: &'a [bool],
}

impl<'a> ApplyBatch<'a> {
    pub(crate) fn new(index: Index, term: Term, batch: &'a ArchivedBatch, fresh: &'a [bool]) -> ApplyBatch<'a> {
        debug_assert_eq!(batch.commands.len(), fresh.len());
        ApplyBatch { index, term, batch, fresh }
    }

    /// Every command in the batch, fresh or not.
    pub fn len(&self) -> usize {
        self.fresh.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fresh.is_empty()
    }

    /// The commands to apply, in log order, with their position in the batch. Retries of
    /// commands already applied are left out: the engine answers them from the session table.
    pub fn commands(&self) -> impl Iterator<Item = (usize, &'a [u8])> + '_ {
        self.batch.commands.iter().enumerate().filter(|(i, _)| self.fresh[*i]).map(|(i, c)| (i, c.payload.as_slice()))
    }
}

/// One result per command of a batch, filled by position.
#[derive(Debug, Default)]
pub struct Results {
    slots: Vec<Option<Bytes>>,
}

impl Results {
    pub(crate) fn reset(&mut self, len: usize) {
        self.slots.clear();
        self.slots.resize(len, None);
    }

    /// Records the result of the command at `position`.
    ///
    /// # Panics
    /// If `position` is outside the batch: a bug in the state machine.
    pub fn set(&mut self, position: usize, result: Bytes) {
        self.slots[position] = Some(result);
    }

    pub(crate) fn take(&mut self, position: usize) -> Option<Bytes> {
        self.slots[position].take()
    }
}

/// A deterministic service replicated by smr.
///
/// Determinism is the whole contract: given the same sequence of batches, every replica must
/// reach the same state and produce the same results. So `apply` must not read clocks, random
/// numbers, the environment, or iterate hash maps in an order that depends on anything else.
pub trait StateMachine {
    /// Applies the fresh commands of one committed batch, in order, setting one result per
    /// command with [`Results::set`]. A command that is malformed for this state machine is not an
    /// error of the engine: answer it with an error result and change nothing.
    fn apply(&mut self, batch: &ApplyBatch<'_>, results: &mut Results);

    /// Answers a read-only query against the current state. The engine calls it only after a
    /// read barrier (ReadIndex or lease) has made the state current enough.
    fn query(&self, query: &[u8]) -> Bytes;

    /// Writes the whole state.
    ///
    /// # Errors
    /// Any I/O error of `out`.
    fn snapshot(&self, out: &mut dyn Write) -> std::io::Result<()>;

    /// The whole state as it is now, to be written by [`StateView::write`] on another thread
    /// while `apply` goes on. Called between two applies, so whatever it costs stalls every
    /// answer: a state machine that can freeze its state cheaply (copy-on-write, a persistent
    /// structure, a storage engine's snapshot) overrides it. The default writes the snapshot
    /// here and now.
    ///
    /// The view must write exactly what [`StateMachine::snapshot`] would have written at this
    /// point.
    ///
    /// # Errors
    /// Any I/O error of the snapshot written here.
    fn snapshot_view(&mut self) -> std::io::Result<Box<dyn StateView>> {
        let mut bytes = Vec::new();
        self.snapshot(&mut bytes)?;
        Ok(Box::new(WrittenState(bytes)))
    }

    /// Replaces the whole state with one written by [`StateMachine::snapshot`].
    ///
    /// # Errors
    /// A [`RestoreError`] when the input is unreadable or malformed; the state is then undefined
    /// and the caller must not serve from it.
    fn restore(&mut self, input: &mut dyn Read) -> Result<(), RestoreError>;

    /// A hash of the whole state, equal on replicas in equal states (for checks and `smr ctl`).
    fn state_hash(&self) -> u64;

    /// [`StateMachine::state_hash`] of the state as it is now, for a status request. Called
    /// between two applies. A state machine that can freeze its state cheaply overrides it to
    /// return [`StateHash::Later`], so that the walk over the whole state happens on another
    /// thread while `apply` goes on, rather than stalling every answer. The default hashes here
    /// and now.
    fn state_hash_later(&mut self) -> StateHash {
        StateHash::Now(self.state_hash())
    }

    /// Whether the engine may call this state machine from any of its threads (one call at a
    /// time, never two at once), rather than only from its apply thread. The runtime then runs
    /// an apply round on the thread that learned of the commit, when the apply stage is idle,
    /// instead of waking the apply thread (`pipeline.inline_core`). A state machine tied to one
    /// thread (thread-local state, a library that checks its caller's thread) returns false.
    fn any_thread(&self) -> bool {
        true
    }
}

/// A state hash for a status request: see [`StateMachine::state_hash_later`].
pub enum StateHash {
    /// Computed on the spot.
    Now(u64),
    /// The state is frozen: the function computes its hash on another thread.
    Later(StateHashLater),
    /// The state cannot be frozen cheaply at this moment (a former freeze's writes are still
    /// being merged back): ask again after the next applies.
    NotYet,
}

/// Computes the hash of a frozen state on another thread.
pub type StateHashLater = Box<dyn FnOnce() -> u64 + Send>;

impl std::fmt::Debug for StateHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateHash::Now(hash) => f.debug_tuple("Now").field(hash).finish(),
            StateHash::Later(_) => f.write_str("Later(..)"),
            StateHash::NotYet => f.write_str("NotYet"),
        }
    }
}

/// A state frozen by [`StateMachine::snapshot_view`], written on the snapshot thread.
pub trait StateView: Send {
    /// Writes the state as [`StateMachine::snapshot`] would have at the time the view was taken.
    ///
    /// # Errors
    /// Any I/O error of `out`.
    fn write(&self, out: &mut dyn Write) -> std::io::Result<()>;
}

/// The default view: the snapshot already written.
pub(crate) struct WrittenState(pub(crate) Vec<u8>);

impl StateView for WrittenState {
    fn write(&self, out: &mut dyn Write) -> std::io::Result<()> {
        out.write_all(&self.0)
    }
}

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("reading the snapshot failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed snapshot: {0}")]
    Malformed(String),
}
