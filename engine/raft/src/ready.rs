//! The work the core hands to its caller, and the contract for doing it.

use crate::message::Message;
use crate::types::{ConfState, Entry, HardState, Index, NodeId, ReadContext, SnapshotMeta, Term};

/// A batch of work produced by [`crate::Replica::ready`], numbered so that persistence can be
/// reported back asynchronously with [`crate::Replica::on_persisted`].
///
/// The caller does, in this order:
///
/// 1. Send `messages` at once (they depend on nothing unpersisted; the leader's appends to
///    followers go here, so replication runs in parallel with the leader's own disk write).
/// 2. Persist, in this order, `snapshot_chunks` (if any), then `entries` (truncating first any
///    existing entries at or after `entries[0].index`: a conflicting suffix), then `hard_state`.
///    These writes may be grouped with those of later readies under one fsync (group commit),
///    but readies must be persisted in the order of their numbers.
/// 3. Only AFTER all of that is durable, and every earlier ready too: send
///    `persisted_messages` and call `on_persisted(number)`. Votes and append acknowledgements
///    live there: sending one before the disk has what it promises can lose committed entries.
///
/// When `sync` is false the ready changed nothing durable except, perhaps, the commit hint in
/// `hard_state`; the commit hint may be written lazily (a lagging hint is safe), so such a
/// ready needs no fsync of its own and counts as durable once every earlier ready is.
///
/// `commit_index`, `read_states` and the notifications may be acted on at once.
#[derive(Debug, Default)]
pub struct Ready {
    /// Readies are numbered 1, 2, 3, ... on each replica; the numbering restarts with the process.
    pub number: u64,
    /// Term, vote and commit hint to persist, when any of them changed.
    pub hard_state: Option<HardState>,
    /// Whether this ready holds something that must be made durable (term, vote, entries or
    /// snapshot chunks) before `persisted_messages` go out.
    pub sync: bool,
    /// Chunks of a snapshot received from the leader, to be stored (see [`SnapshotChunk`]).
    pub snapshot_chunks: Vec<SnapshotChunk>,
    /// Entries to append durably. Their indexes are consecutive.
    pub entries: Vec<Entry>,
    /// Messages to send now.
    pub messages: Vec<Message>,
    /// Messages to send only after this ready is durable.
    pub persisted_messages: Vec<Message>,
    /// Entries up to here are committed AND durable on this replica: they may be applied.
    /// Never goes backwards.
    pub commit_index: Index,
    /// Linearizable reads that became safe: serve each once the state machine has applied at
    /// least `index`.
    pub read_states: Vec<ReadState>,
    /// Reads that cannot be served here (leadership lost, or the leader refused): the caller
    /// answers its client with an error or retries.
    pub failed_reads: Vec<ReadContext>,
    /// The leader needs a snapshot of the state machine to send to a follower whose entries
    /// were compacted away: take one and hand it over with `on_snapshot`.
    pub need_snapshot: bool,
    /// Set when this replica's role, term or known leader changed.
    pub role: Option<RoleState>,
    /// Set when the membership in force changed (the runtime connects to new peers here).
    pub conf: Option<ConfState>,
}

impl Ready {
    /// True when the ready carries nothing to persist (so `on_persisted` may be called at once).
    pub fn is_persist_empty(&self) -> bool {
        self.hard_state.is_none() && self.snapshot_chunks.is_empty() && self.entries.is_empty()
    }

    /// True when there is nothing at all to do.
    pub fn is_empty(&self) -> bool {
        self.is_persist_empty()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && self.read_states.is_empty()
            && self.failed_reads.is_empty()
            && !self.need_snapshot
            && self.role.is_none()
            && self.conf.is_none()
    }
}

/// A chunk of a snapshot streamed by the leader.
///
/// The caller appends `data` at `offset` of a pending snapshot for `meta` (the snapshot store,
/// with `meta.conf`, is the caller's: the log keeps only the base index and term). When `last`
/// is set the snapshot is complete, and BEFORE reporting the ready persisted, and before applying
/// anything from its own log again, the caller must install it: restore the state machine from
/// it, make it the durable base of the log, and discard every log entry (the core's view of the
/// log already starts after `meta.index`; its `commit_index` does not pass the old commit index
/// until the install is reported durable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub meta: SnapshotMeta,
    pub offset: u64,
    pub data: bytes::Bytes,
    pub last: bool,
}

/// A read that is safe to serve once `index` has been applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub context: ReadContext,
    pub index: Index,
}

/// A replica's role in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Role, term and the leader as this replica knows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleState {
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
}
