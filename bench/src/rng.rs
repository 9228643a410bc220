//! The seeded PRNG of smr (`smr_raft::SplitMix64`): the key sequence is a function of `--seed`
//! alone.

pub use smr_raft::{SplitMix64, mix};
