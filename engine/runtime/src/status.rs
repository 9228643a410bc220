//! `smr ctl status`: the state of one node as JSON.

use std::time::Instant;

use smr_raft::{PeerState, Replica, Role};

use crate::directory::Directory;

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::PreCandidate => "pre-candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

/// The replica's status, its cluster, and the member directory, as one JSON object.
/// The apply stage adds `applied_state_index`, and `state_hash` (the saver thread does, when the
/// state machine freezes its state for it), before answering.
pub(crate) fn status_json(
    replica: &Replica,
    cluster_id: u64,
    directory: &Directory,
    started: Instant,
    pipeline: &PipelineMode,
) -> serde_json::Value {
    let status = replica.status();
    let peers: Vec<serde_json::Value> = status
        .peers
        .iter()
        .map(|p| {
            serde_json::json!({
                "id": p.id,
                "match_index": p.match_index,
                "next_index": p.next_index,
                "state": match p.state { PeerState::Probe => "probe", PeerState::Replicate => "replicate", PeerState::Snapshot => "snapshot" },
                "inflight_appends": p.inflight_appends,
                "inflight_bytes": p.inflight_bytes,
                "recent_active": p.recent_active,
            })
        })
        .collect();
    let members: Vec<serde_json::Value> = directory
        .iter()
        .map(|(id, a)| serde_json::json!({"id": id, "peer_address": a.peer.to_string(), "client_address": a.client.to_string()}))
        .collect();
    serde_json::json!({
        "node_id": status.id,
        "cluster_id": format!("{cluster_id:#x}"),
        "role": role_name(status.role),
        "term": status.term,
        "leader": status.leader,
        "first_index": status.first_index,
        "last_index": status.last_index,
        "persisted_index": status.persisted_index,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "snapshot_index": status.snapshot_index,
        "log_bytes": status.log_bytes,
        "voters": status.conf.voters,
        "voters_outgoing": status.conf.voters_outgoing,
        "learners": status.conf.learners,
        "transfer_target": status.transfer_target,
        "peers": peers,
        "members": members,
        "uptime_ms": started.elapsed().as_millis() as u64,
        "log_io": pipeline.log_io,
        "inline_core": pipeline.inline_core,
        "inline_log": pipeline.inline_log,
        "inline_apply": pipeline.inline_apply,
    })
}

/// How this node's pipeline runs, as decided at start-up: reported in the status.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PipelineMode {
    /// The log's I/O path ("io_uring" or "pwrite+fdatasync").
    pub(crate) log_io: &'static str,
    /// Whether transport threads run the core's rounds (`pipeline.inline_core`).
    pub(crate) inline_core: bool,
    /// Whether the log writer's rounds run inline too (`stage_runner.rs`).
    pub(crate) inline_log: bool,
    /// Whether the apply stage's rounds run inline too (`stage_runner.rs`).
    pub(crate) inline_apply: bool,
}
