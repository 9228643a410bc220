//! Simulated clients: each runs one operation at a time against the cluster, retries through
//! leader changes, gives up after a deadline, and records what it saw for the checkers.

use smr_raft::NodeId;

use crate::kv::{Key, Op, OpResult, Value};

/// What a client asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientOp {
    Write(Op),
    Read(Key),
}

/// What it got back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Written(OpResult),
    Read(Option<Value>),
}

/// One operation of the history: invoked at `invoke_us`, completed at `complete_us` with
/// `outcome`, or never known (`None`): it may or may not have taken effect.
#[derive(Clone, Debug)]
pub struct HistoryOp {
    pub client: u64,
    pub seq: u64,
    pub op: ClientOp,
    pub invoke_us: u64,
    pub complete: Option<(u64, Outcome)>,
}

/// A client's operation in flight.
#[derive(Clone, Debug)]
pub struct InFlight {
    pub seq: u64,
    pub op: ClientOp,
    pub history_index: usize,
    pub target: NodeId,
    pub attempt: u32,
    pub deadline_us: u64,
}

#[derive(Clone, Debug)]
pub struct SimClient {
    pub id: u64,
    pub next_seq: u64,
    pub leader_hint: Option<NodeId>,
    pub in_flight: Option<InFlight>,
    /// Sends no new operations (the liveness phase lets clients drain).
    pub stopped: bool,
}

/// How long one attempt may take before the client tries elsewhere.
pub const ATTEMPT_TIMEOUT_US: u64 = 300_000;

impl SimClient {
    pub fn new(id: u64) -> SimClient {
        SimClient { id, next_seq: 1, leader_hint: None, in_flight: None, stopped: false }
    }
}
