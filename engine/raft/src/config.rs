//! Every knob and limit of one replica, validated once at start-up.

use crate::types::{GroupId, NodeId};

/// Configuration of one replica. Every limit has a name and a unit; [`Config::validate`] rejects
/// bad values and bad combinations with a message that names the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This replica's id; never 0.
    pub id: NodeId,
    /// The group this replica belongs to.
    pub group: GroupId,
    /// A follower that hears nothing from a leader for a random number of ticks in
    /// `[election_ticks, 2 * election_ticks)` starts an election.
    pub election_ticks: u32,
    /// The leader sends heartbeats every `heartbeat_ticks`. Must be well below `election_ticks`.
    pub heartbeat_ticks: u32,
    /// Run a PreVote round before a real election (thesis §9.6), so that a node rejoining from a
    /// partition cannot disrupt a healthy leader by bumping the term.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout steps down, and
    /// followers that heard from a leader within the minimum election timeout ignore votes.
    pub check_quorum: bool,
    /// Serve linearizable reads from a leader lease instead of a heartbeat round. The lease runs
    /// for `lease_ticks` from the moment the heartbeat that a quorum acknowledged was sent.
    ///
    /// Assumption, documented because safety rests on it: the clocks of the replicas advance at
    /// rates that differ by less than `(election_ticks - lease_ticks) / election_ticks`. With the
    /// defaults (10 and 8 ticks) that is a 20% drift bound, far above what real clocks do. Needs
    /// `check_quorum` (it is what stops followers from electing a new leader during the lease).
    pub lease_reads: bool,
    /// Length of the leader lease in ticks; must be below `election_ticks`.
    pub lease_ticks: u32,
    /// Most AppendEntries in flight to one follower in the replicate state (pipelining window).
    pub inflight_appends_max: u32,
    /// Most bytes of entries in flight to one follower.
    pub inflight_bytes_max: u64,
    /// Most bytes of entries in one AppendEntries message.
    pub append_bytes_max: u64,
    /// Largest single proposal (one batch) in bytes.
    pub proposal_bytes_max: u64,
    /// Most bytes of entries the leader holds that are not yet committed; beyond it proposals
    /// are refused as busy, which is the backpressure that reaches clients.
    pub uncommitted_bytes_max: u64,
    /// Largest chunk of an InstallSnapshot.
    pub snapshot_chunk_bytes_max: u64,
    /// Most snapshot chunks in flight to one follower.
    pub snapshot_chunks_inflight_max: u32,
    /// Most linearizable reads waiting on the leader at once.
    pub pending_reads_max: u32,
    /// Seed of the replica's PRNG (election jitter). Give each replica a different seed.
    pub seed: u64,
}

impl Config {
    /// Defaults suited to a tick of 10 ms: election timeout 100-200 ms, heartbeat 20 ms.
    pub fn new(id: NodeId, group: GroupId) -> Config {
        Config {
            id,
            group,
            election_ticks: 10,
            heartbeat_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            lease_reads: false,
            lease_ticks: 8,
            inflight_appends_max: 256,
            inflight_bytes_max: 64 << 20,
            append_bytes_max: 1 << 20,
            proposal_bytes_max: 8 << 20,
            uncommitted_bytes_max: 256 << 20,
            snapshot_chunk_bytes_max: 1 << 20,
            snapshot_chunks_inflight_max: 4,
            pending_reads_max: 65_536,
            seed: id,
        }
    }

    /// Checks every field and every combination.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first field that is wrong and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field: &'static str, reason: String| Err(ConfigError { field, reason });
        if self.id == 0 {
            return fail("id", "must not be 0 (0 means \"no node\")".into());
        }
        if self.heartbeat_ticks == 0 {
            return fail("heartbeat_ticks", "must be at least 1".into());
        }
        if self.election_ticks <= 2 * self.heartbeat_ticks {
            return fail(
                "election_ticks",
                format!(
                    "must be more than twice heartbeat_ticks ({}), got {}",
                    self.heartbeat_ticks, self.election_ticks
                ),
            );
        }
        if self.lease_reads && !self.check_quorum {
            return fail("lease_reads", "needs check_quorum = true".into());
        }
        if self.lease_reads && (self.lease_ticks == 0 || self.lease_ticks >= self.election_ticks) {
            return fail(
                "lease_ticks",
                format!(
                    "must be in 1..election_ticks ({}), got {}",
                    self.election_ticks, self.lease_ticks
                ),
            );
        }
        if self.inflight_appends_max == 0 {
            return fail("inflight_appends_max", "must be at least 1".into());
        }
        if self.append_bytes_max == 0 {
            return fail("append_bytes_max", "must be at least 1".into());
        }
        if self.inflight_bytes_max < self.append_bytes_max {
            return fail(
                "inflight_bytes_max",
                format!(
                    "must be at least append_bytes_max ({})",
                    self.append_bytes_max
                ),
            );
        }
        if self.proposal_bytes_max == 0 {
            return fail("proposal_bytes_max", "must be at least 1".into());
        }
        if self.uncommitted_bytes_max < self.proposal_bytes_max {
            return fail(
                "uncommitted_bytes_max",
                format!(
                    "must be at least proposal_bytes_max ({})",
                    self.proposal_bytes_max
                ),
            );
        }
        if self.snapshot_chunk_bytes_max == 0 {
            return fail("snapshot_chunk_bytes_max", "must be at least 1".into());
        }
        if self.snapshot_chunks_inflight_max == 0 {
            return fail("snapshot_chunks_inflight_max", "must be at least 1".into());
        }
        if self.pending_reads_max == 0 {
            return fail("pending_reads_max", "must be at least 1".into());
        }
        Ok(())
    }
}

/// A configuration field that is out of range or inconsistent with another.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid raft config: {field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}
