//! Swarm testing: each seed draws its own mix of faults and features, so that across many seeds
//! rare combinations get exercised without any one run being drowned in faults.

use crate::rng::SimRng;

/// Everything that shapes one simulated run. Times are in simulated microseconds.
#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: usize,
    pub tick_us: u64,
    /// Each node's clock runs up to this many thousandths fast or slow. Lease reads are safe
    /// only within the drift bound documented on `Config::lease_reads` (20 % with the ticks used
    /// here), so this stays well inside it.
    pub clock_skew_permille: u64,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub lease_reads: bool,
    /// Network: per-message loss and duplication probability, delay range.
    pub loss: f64,
    pub duplicate: f64,
    pub delay_us_min: u64,
    pub delay_us_max: u64,
    /// Disk: time from write to durable.
    pub fsync_us_min: u64,
    pub fsync_us_max: u64,
    /// Probability per fault step of each fault.
    pub crash_rate: f64,
    pub partition_rate: f64,
    pub one_way_partitions: bool,
    /// Whether membership changes (add, promote, remove) are proposed during the fault phase.
    pub membership_churn: bool,
    /// A replica snapshots and compacts once this many entries are applied past its snapshot.
    pub snapshot_entries: u64,
    pub clients: usize,
    pub keys: u64,
    /// Commands per proposed batch, at most.
    pub batch_commands_max: usize,
    /// Inflight appends per follower (pipelining window).
    pub inflight_appends_max: u32,
    pub snapshot_chunk_bytes_max: u64,
    /// Length of the fault phase and the budget of the liveness phase.
    pub fault_phase_us: u64,
    pub liveness_budget_us: u64,
}

impl Options {
    /// Draws the options of one run from its seed.
    pub fn from_seed(rng: &mut SimRng) -> Options {
        let nodes = *rng.pick(&[3usize, 3, 3, 5, 5, 7]).expect("non-empty");
        let lossy = rng.chance(0.6);
        let delay_us_min = rng.range(50, 500);
        let check_quorum = rng.chance(0.8);
        Options {
            nodes,
            tick_us: 10_000,
            clock_skew_permille: if rng.chance(0.5) { rng.range(0, 51) } else { 0 },
            election_ticks: 10,
            heartbeat_ticks: 2,
            pre_vote: rng.chance(0.8),
            check_quorum,
            lease_reads: check_quorum && rng.chance(0.4),
            loss: if lossy { rng.range(0, 31) as f64 / 100.0 } else { 0.0 },
            duplicate: if rng.chance(0.5) { rng.range(0, 11) as f64 / 100.0 } else { 0.0 },
            delay_us_min,
            delay_us_max: delay_us_min + rng.range(100, 20_000),
            fsync_us_min: 100,
            fsync_us_max: 100 + rng.range(100, 5_000),
            crash_rate: if rng.chance(0.7) { rng.range(1, 6) as f64 / 100.0 } else { 0.0 },
            partition_rate: if rng.chance(0.7) { rng.range(1, 8) as f64 / 100.0 } else { 0.0 },
            one_way_partitions: rng.chance(0.5),
            membership_churn: rng.chance(0.4),
            snapshot_entries: *rng.pick(&[8u64, 32, 128, 100_000]).expect("non-empty"),
            clients: rng.range(1, 6) as usize,
            keys: rng.range(1, 6),
            batch_commands_max: *rng.pick(&[1usize, 4, 64]).expect("non-empty"),
            inflight_appends_max: *rng.pick(&[1u32, 4, 64]).expect("non-empty"),
            snapshot_chunk_bytes_max: *rng.pick(&[16u64, 256, 1 << 20]).expect("non-empty"),
            fault_phase_us: 8_000_000,
            liveness_budget_us: 30_000_000,
        }
    }
}
