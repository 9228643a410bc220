//! The small shared vocabulary of smr: identifiers, log entries, persistent state, snapshots.
//!
//! These types are the contract between the Raft core, the durable log (`smr-log`), the
//! transport (`smr-net`) and the runtime. They carry no behaviour beyond cheap accessors.

use bytes::Bytes;

/// A cluster's identity: every segment, handshake and snapshot names it, so that data or peers of
/// another cluster are refused by name.
pub type ClusterId = u64;
/// A replica's identity inside one cluster. `0` is never a valid node id.
pub type NodeId = u64;
/// A Raft term. Terms start at 1; term 0 belongs to the empty log before any election.
pub type Term = u64;
/// A log position. Index 0 is the empty prefix; the first real entry has index 1.
pub type Index = u64;
/// A Raft group (shard) on a node. One node may host many groups; every message, record and
/// metric carries one so that nothing assumes a single group.
pub type GroupId = u64;
/// An opaque token chosen by the caller of `read_index`, handed back when the read is safe.
pub type ReadContext = u64;

/// What a log entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// A batch of client commands, opaque to the core (the sequencer's rkyv-archived batch).
    Normal = 0,
    /// The empty entry a new leader appends at the start of its term, so that it can commit
    /// entries of earlier terms (Raft §5.4.2, Figure 8) and serve reads (§6.4).
    Noop = 1,
    /// A membership change, encoded by [`crate::ConfChange::encode`]. Interpreted by the core.
    ConfChange = 2,
}

impl EntryKind {
    /// Decodes a kind byte read from the disk or the network.
    ///
    /// # Errors
    /// Returns the byte back when it names no kind.
    pub fn from_u8(byte: u8) -> Result<EntryKind, u8> {
        match byte {
            0 => Ok(EntryKind::Normal),
            1 => Ok(EntryKind::Noop),
            2 => Ok(EntryKind::ConfChange),
            other => Err(other),
        }
    }
}

/// One entry of the replicated log.
///
/// `data` is reference counted: the same bytes travel from the client connection through the
/// core to the log writer and to every follower without being copied. After recovery it may point
/// straight into a mapped log segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: Index,
    pub term: Term,
    pub kind: EntryKind,
    pub data: Bytes,
}

impl Entry {
    /// The bytes this entry counts for against byte limits (payload plus a fixed overhead that
    /// stands for the header every record carries on disk and on the wire).
    #[inline]
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// Per-entry overhead counted by byte limits, about the size of a log record header.
pub const ENTRY_OVERHEAD_BYTES: u64 = 32;

/// The state a replica must persist durably before it sends any message that depends on it.
///
/// Invariant: `term` and `vote` never go backwards on a node; a vote is only ever given for the
/// current term. `commit` is a hint: it may lag behind the real commit index (it may be written
/// lazily), but it never exceeds the real commit index nor the last index persisted in the same
/// or an earlier ready. Nothing depends on it for safety: membership follows the log itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
    pub commit: Index,
}

/// Membership: who votes and who only learns.
///
/// Invariant: the sets are sorted and free of duplicates; `voters` is never empty in a running
/// cluster; no node is both a voter (incoming or outgoing) and a learner.
/// While `voters_outgoing` is non-empty the cluster is in a joint configuration (C_old,new of
/// Raft §6 / thesis §4.3): every decision needs a majority of both `voters` and
/// `voters_outgoing`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfState {
    pub voters: Vec<NodeId>,
    pub voters_outgoing: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl ConfState {
    /// A simple (non-joint) configuration of the given voters.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> ConfState {
        let mut voters: Vec<NodeId> = voters.into_iter().collect();
        voters.sort_unstable();
        voters.dedup();
        ConfState { voters, voters_outgoing: Vec::new(), learners: Vec::new() }
    }

    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok() || self.voters_outgoing.binary_search(&id).is_ok()
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.binary_search(&id).is_ok()
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Every member, voters and learners, sorted, without duplicates.
    pub fn members(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> =
            self.voters.iter().chain(&self.voters_outgoing).chain(&self.learners).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// What a snapshot covers: the state machine after applying every entry up to `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    /// Membership as of `index`.
    pub conf: ConfState,
}
