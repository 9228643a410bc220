//! Reconnect backoff: capped exponential delays with jitter from a seeded PRNG.
//!
//! No global RNG: the seed comes from the config, so two runs with the same seed wait the same
//! delays, and nodes with different ids (mixed into the seed) do not reconnect in lockstep.

use std::time::Duration;

use smr_raft::SplitMix64;

/// Delays between reconnect attempts: `min · 2^failures`, capped at `max`, each drawn uniformly
/// from the upper half of that value (so the cap still bounds it and no two nodes retry in step).
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    ms_min: u64,
    ms_max: u64,
    failures: u32,
    rng: SplitMix64,
}

impl Backoff {
    pub(crate) fn new(ms_min: u64, ms_max: u64, seed: u64) -> Backoff {
        assert!(ms_min >= 1 && ms_max >= ms_min, "backoff bounds checked by NetConfig::validate");
        Backoff { ms_min, ms_max, failures: 0, rng: SplitMix64::new(seed) }
    }

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.ms_min.saturating_mul(1u64 << self.failures.min(32)).min(self.ms_max);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let jitter = self.rng.next_u64() % (ceiling - half + 1);
        Duration::from_millis(half + jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_stay_under_the_cap() {
        let mut backoff = Backoff::new(10, 1000, 7);
        let delays: Vec<u64> = (0..20).map(|_| backoff.next_delay().as_millis() as u64).collect();
        assert!(delays[0] >= 5 && delays[0] <= 10, "{delays:?}");
        assert!(delays.iter().all(|&delay| delay <= 1000), "{delays:?}");
        assert!(delays[19] >= 500, "{delays:?}");
        backoff.reset();
        assert!(backoff.next_delay().as_millis() <= 10);
    }

    #[test]
    fn same_seed_same_delays() {
        let mut a = Backoff::new(10, 1000, 42);
        let mut b = Backoff::new(10, 1000, 42);
        for _ in 0..10 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
    }
}
