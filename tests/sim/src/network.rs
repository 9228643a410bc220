//! The simulated network between replicas: delay, loss, duplication, reordering (from variable
//! delay) and partitions, symmetric or one-way.

use std::collections::BTreeSet;

use smr_raft::NodeId;

use crate::options::Options;
use crate::rng::SimRng;

#[derive(Clone, Debug, Default)]
pub struct SimNetwork {
    /// Directed links that drop everything: `(from, to)`.
    blocked: BTreeSet<(NodeId, NodeId)>,
    pub loss: f64,
    pub duplicate: f64,
    pub delay_us_min: u64,
    pub delay_us_max: u64,
}

impl SimNetwork {
    pub fn new(options: &Options) -> SimNetwork {
        SimNetwork {
            blocked: BTreeSet::new(),
            loss: options.loss,
            duplicate: options.duplicate,
            delay_us_min: options.delay_us_min,
            delay_us_max: options.delay_us_max,
        }
    }

    /// The delays (one per copy delivered) of a message sent now from `from` to `to`; empty
    /// when it is lost or the link is cut.
    pub fn route(&self, rng: &mut SimRng, from: NodeId, to: NodeId) -> Vec<u64> {
        if self.blocked.contains(&(from, to)) || rng.chance(self.loss) {
            return Vec::new();
        }
        let mut delays = vec![rng.range(self.delay_us_min, self.delay_us_max + 1)];
        if rng.chance(self.duplicate) {
            delays.push(rng.range(self.delay_us_min, self.delay_us_max * 2 + 1));
        }
        delays
    }

    /// Splits `nodes` into two sides that cannot talk to each other.
    pub fn partition(&mut self, side_a: &[NodeId], side_b: &[NodeId]) {
        for &a in side_a {
            for &b in side_b {
                self.blocked.insert((a, b));
                self.blocked.insert((b, a));
            }
        }
    }

    /// Cuts one direction of one link.
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    pub fn is_partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }
}
