//! Key choice: uniform, or zipfian (the YCSB generator of Gray et al., "Quickly generating
//! billion-record synthetic databases"): key 0 is the hottest, key `n - 1` the coldest. Every
//! draw comes from the caller's seeded [`SplitMix64`]; there is no global RNG.

use crate::rng::SplitMix64;

/// How keys are drawn from `0..keys`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    Uniform,
    /// Zipfian with exponent `theta` in (0, 1).
    Zipfian {
        theta: f64,
    },
}

/// Draws key numbers in `0..keys`.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    Uniform { keys: u64 },
    Zipfian(Zipfian),
}

impl KeyChooser {
    pub fn new(keys: u64, distribution: Distribution) -> KeyChooser {
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform { keys },
            Distribution::Zipfian { theta } => KeyChooser::Zipfian(Zipfian::new(keys, theta)),
        }
    }

    pub fn next(&self, rng: &mut SplitMix64) -> u64 {
        match self {
            KeyChooser::Uniform { keys } => rng.below(*keys),
            KeyChooser::Zipfian(zipfian) => zipfian.next(rng),
        }
    }
}

/// The zipfian generator; construction is O(keys) (the zeta sum), each draw O(1).
#[derive(Clone, Debug)]
pub struct Zipfian {
    keys: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
}

impl Zipfian {
    /// `keys` >= 1, `theta` in (0, 1).
    pub fn new(keys: u64, theta: f64) -> Zipfian {
        assert!(keys >= 1 && theta > 0.0 && theta < 1.0, "zipfian needs keys >= 1 and 0 < theta < 1");
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zeta_n = zeta(keys);
        let zeta_2 = zeta(2.min(keys));
        let eta = if keys < 2 { 0.0 } else { (1.0 - (2.0 / keys as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n) };
        Zipfian { keys, theta, alpha: 1.0 / (1.0 - theta), zeta_n, eta }
    }

    pub fn next(&self, rng: &mut SplitMix64) -> u64 {
        // A uniform double in [0, 1) from the top 53 bits.
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.keys - 1);
        }
        let key = (self.keys as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        key.min(self.keys - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipfian_is_skewed_as_expected_and_deterministic() {
        let keys = 1_000;
        let zipfian = Zipfian::new(keys, 0.99);
        let mut rng = SplitMix64::new(42);
        let mut counts = vec![0u64; keys as usize];
        let draws = 200_000;
        for _ in 0..draws {
            let key = zipfian.next(&mut rng);
            assert!(key < keys);
            counts[key as usize] += 1;
        }
        // P(k) = 1 / ((k+1)^theta * zeta(n)): about 13.4% for key 0 of 1,000 at theta 0.99.
        let expected = |k: u64| draws as f64 / ((k + 1) as f64).powf(0.99) / zipfian.zeta_n;
        for k in [0u64, 1] {
            let seen = counts[k as usize] as f64;
            assert!((seen / expected(k) - 1.0).abs() < 0.05, "key {k}: {seen} vs {}", expected(k));
        }
        let top_ten: u64 = counts[..10].iter().sum();
        assert!(top_ten as f64 > 0.35 * draws as f64, "top 10 keys got {top_ten} of {draws}");
        let bottom_half: u64 = counts[500..].iter().sum();
        assert!((bottom_half as f64) < 0.15 * draws as f64, "the colder half got {bottom_half}");
        // Same seed, same sequence.
        let (mut a, mut b) = (SplitMix64::new(9), SplitMix64::new(9));
        assert!((0..1_000).all(|_| zipfian.next(&mut a) == zipfian.next(&mut b)));
    }

    #[test]
    fn uniform_spreads_evenly() {
        let chooser = KeyChooser::new(10, Distribution::Uniform);
        let mut rng = SplitMix64::new(1);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[chooser.next(&mut rng) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_000..11_000).contains(&c)), "{counts:?}");
    }

    #[test]
    fn one_key_is_always_key_zero() {
        let mut rng = SplitMix64::new(3);
        let zipfian = Zipfian::new(1, 0.5);
        assert!((0..100).all(|_| zipfian.next(&mut rng) == 0));
    }
}
