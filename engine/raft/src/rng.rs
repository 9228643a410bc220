//! The seeded pseudo-random number generator of smr: the core's election jitter, and elsewhere
//! (reconnect jitter, load generators, the simulator's seeding) wherever a random choice must
//! come from a seed its caller chose.

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast and well distributed. The point is not
/// quality but that every random choice comes from a seed, so a run can be replayed exactly. Not
/// for secrets: handshake nonces come from the kernel's CSPRNG.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.state)
    }

    /// A value in `[low, high)`, by modulo: its bias is below 2^-50 for the small ranges of
    /// jitter, and the core's elections depend on exactly this sequence (simulator replays).
    ///
    /// # Panics
    /// If the range is empty.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(high > low, "empty range {low}..{high}");
        low + self.next_u64() % (high - low)
    }

    /// Uniform in `0..bound` (`bound` > 0), without modulo bias (Lemire's method).
    ///
    /// # Panics
    /// If `bound` is 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "empty range 0..0");
        loop {
            let product = u128::from(self.next_u64()) * u128::from(bound);
            let low = product as u64;
            if low >= bound.wrapping_neg() % bound {
                return (product >> 64) as u64;
            }
        }
    }
}

/// One SplitMix64 output step: a good 64-bit mixer, also usable on its own (hashing a seed).
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_bounds_hold() {
        let (mut a, mut b) = (SplitMix64::new(7), SplitMix64::new(7));
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let v = a.range(10, 13);
            assert!((10..13).contains(&v));
            b.range(10, 13);
        }
    }

    #[test]
    fn below_stays_in_range_and_is_deterministic() {
        let (mut a, mut b) = (SplitMix64::new(7), SplitMix64::new(7));
        for _ in 0..10_000 {
            let x = a.below(100_000);
            assert!(x < 100_000);
            assert_eq!(x, b.below(100_000));
        }
    }
}
