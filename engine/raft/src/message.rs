//! Messages exchanged between replicas of one Raft group.
//!
//! The core produces and consumes these as plain values. The transport (`smr-net`) owns their
//! wire encoding and validates every received field before it builds one.

use bytes::Bytes;

use crate::types::{Entry, GroupId, Index, NodeId, ReadContext, SnapshotMeta, Term};

/// One message from `from` to `to` in `group`, stamped with the sender's `term`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub group: GroupId,
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's current term; for `PreVote` the term the sender would campaign in, and for a
    /// granted `PreVoteResponse` that same proposed term.
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Would you vote for me in `term`? Changes no state on the receiver (thesis §9.6).
    PreVote {
        last_log_index: Index,
        last_log_term: Term,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// RequestVote RPC (§5.2). `leadership_transfer` is set when the leader asked this candidate
    /// to campaign (TimeoutNow), which lets it through a follower's leader lease (thesis §4.2.3).
    Vote {
        last_log_index: Index,
        last_log_term: Term,
        leadership_transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    /// AppendEntries RPC (§5.3). `entries` may be empty.
    Append {
        prev_log_index: Index,
        prev_log_term: Term,
        commit_index: Index,
        entries: Vec<Entry>,
    },
    /// Reply to `Append`.
    ///
    /// On success `index` is the last index the follower now holds matching the leader's log.
    /// On rejection `index` is the rejected `prev_log_index`, and `(hint_index, hint_term)` is the
    /// follower's last entry at or below it whose term is at most the leader's `prev_log_term`;
    /// the leader jumps straight there instead of stepping back one entry at a time.
    AppendResponse {
        success: bool,
        index: Index,
        hint_index: Index,
        hint_term: Term,
    },
    /// Leader liveness and commit propagation. `read_round` lets the leader confirm it is still
    /// leader for the ReadIndex requests waiting on that round (thesis §6.4).
    Heartbeat {
        commit_index: Index,
        read_round: u64,
    },
    HeartbeatResponse {
        read_round: u64,
    },
    /// One chunk of an InstallSnapshot (§7), `offset` bytes into the snapshot of `meta`.
    Snapshot {
        meta: SnapshotMeta,
        offset: u64,
        data: Bytes,
        last: bool,
    },
    /// Acknowledges every chunk of the snapshot at `snapshot_index` below `next_offset`.
    /// `reject` asks the leader to restart the transfer from offset 0.
    SnapshotResponse {
        snapshot_index: Index,
        next_offset: u64,
        reject: bool,
    },
    /// Campaign now, skipping the election timeout: the leader is handing over (thesis §3.10).
    TimeoutNow,
    /// A follower asks the leader for a read index on behalf of its own client.
    ReadIndex {
        context: ReadContext,
    },
    /// The leader's answer: reads for `context` are safe once the follower has applied `index`.
    /// `index == 0` means the leader could not serve it (for instance, it stepped down).
    ReadIndexResponse {
        context: ReadContext,
        index: Index,
    },
}

impl MessageBody {
    /// A short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "pre_vote",
            MessageBody::PreVoteResponse { .. } => "pre_vote_response",
            MessageBody::Vote { .. } => "vote",
            MessageBody::VoteResponse { .. } => "vote_response",
            MessageBody::Append { .. } => "append",
            MessageBody::AppendResponse { .. } => "append_response",
            MessageBody::Heartbeat { .. } => "heartbeat",
            MessageBody::HeartbeatResponse { .. } => "heartbeat_response",
            MessageBody::Snapshot { .. } => "snapshot",
            MessageBody::SnapshotResponse { .. } => "snapshot_response",
            MessageBody::TimeoutNow => "timeout_now",
            MessageBody::ReadIndex { .. } => "read_index",
            MessageBody::ReadIndexResponse { .. } => "read_index_response",
        }
    }

    /// Bytes this message counts for against flow-control limits.
    pub fn size_bytes(&self) -> u64 {
        match self {
            MessageBody::Append { entries, .. } => {
                64 + entries.iter().map(Entry::size_bytes).sum::<u64>()
            }
            MessageBody::Snapshot { data, .. } => 64 + data.len() as u64,
            _ => 64,
        }
    }
}
