//! Expected conditions, returned as values without changing any state.

use crate::conf_change::ConfChangeError;
use crate::config::ConfigError;
use crate::types::{GroupId, Index, NodeId};

/// Why the core refused a request. None of these is a bug: each is a condition the caller is
/// expected to meet and handle (redirect, retry, back off, report).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("proposal of {bytes} bytes is larger than proposal_bytes_max ({max})")]
    ProposalTooLarge { bytes: u64, max: u64 },
    #[error("busy: {uncommitted_bytes} bytes uncommitted, uncommitted_bytes_max is {max}")]
    Busy { uncommitted_bytes: u64, max: u64 },
    #[error("leadership transfer to {target} in progress")]
    TransferInProgress { target: NodeId },
    #[error("a membership change is already in progress (entry {index} not yet committed)")]
    ConfChangeInProgress { index: Index },
    #[error("invalid membership change: {0}")]
    ConfChange(#[from] ConfChangeError),
    #[error("node {0} is not a voter of this group")]
    NotVoter(NodeId),
    #[error("{pending} reads pending, pending_reads_max is {max}")]
    TooManyPendingReads { pending: usize, max: u32 },
    #[error("message for group {group}, node {to} reached group {expected_group}, node {expected_node}")]
    Misaddressed { group: GroupId, to: NodeId, expected_group: GroupId, expected_node: NodeId },
    #[error("snapshot at {index} is outside the log (first {first}, applied {applied})")]
    SnapshotOutOfRange { index: Index, first: Index, applied: Index },
    #[error("cannot compact through {index}: limit is {limit} (the latest snapshot, durable and committed index)")]
    CompactOutOfRange { index: Index, limit: Index },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("restored state is inconsistent: {0}")]
    BadRestore(&'static str),
}
