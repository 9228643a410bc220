//! A read-only summary of a replica, for operators (`smr ctl status`), metrics and debugging.

use crate::progress::ProgressState;
use crate::ready::Role;
use crate::replica::Replica;
use crate::types::{ConfState, Index, NodeId, Term};

/// How the leader is feeding one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    Probe,
    Replicate,
    Snapshot,
}

/// The leader's view of one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: NodeId,
    pub match_index: Index,
    pub next_index: Index,
    pub state: PeerState,
    pub inflight_appends: usize,
    pub inflight_bytes: u64,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
}

/// Everything an operator wants to see of one replica at a glance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub first_index: Index,
    pub last_index: Index,
    pub persisted_index: Index,
    pub commit_index: Index,
    pub applied_index: Index,
    pub snapshot_index: Index,
    pub log_bytes: u64,
    pub conf: ConfState,
    pub transfer_target: Option<NodeId>,
    /// Filled on the leader only.
    pub peers: Vec<PeerStatus>,
}

impl Replica {
    pub fn status(&self) -> Status {
        Status {
            id: self.config.id,
            role: self.role,
            term: self.term,
            leader: self.leader,
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            persisted_index: self.log.persisted_index(),
            commit_index: self.log.commit_index(),
            applied_index: self.applied,
            snapshot_index: self.snapshot_meta.index,
            log_bytes: self.log.bytes(),
            conf: self.conf.clone(),
            transfer_target: self.transfer.map(|(t, _)| t),
            peers: self
                .progress
                .iter()
                .map(|p| PeerStatus {
                    id: p.id,
                    match_index: p.match_index,
                    next_index: p.next_index,
                    state: match p.state {
                        ProgressState::Probe => PeerState::Probe,
                        ProgressState::Replicate => PeerState::Replicate,
                        ProgressState::Snapshot => PeerState::Snapshot,
                    },
                    inflight_appends: p.inflights.count(),
                    inflight_bytes: p.inflights.bytes(),
                    recent_active: p.recent_active,
                })
                .collect(),
        }
    }
}
