//! # smr-sim: the deterministic cluster simulator
//!
//! Runs a whole smr cluster (3, 5 or 7 replicas of the real `smr-raft` core) on one thread from
//! a `u64` seed, with simulated time, network and disk, and checks every safety property after
//! every step. It **owns** the fault model (loss, duplication, reordering, delay, partitions
//! both ways, crashes that lose unsynced writes and tear the tail, membership churn) and the
//! checkers (election safety, log matching, leader completeness, state machine safety,
//! committed-is-immutable, monotonic term/vote/commit, no lost acknowledged write,
//! linearizability of the client history, liveness after healing).
//!
//! It **must never** read a clock, use a global RNG, or iterate a hash map in an order that
//! depends on anything but the seed: the same seed must replay the same run, event for event
//! (checked through the trace hash).
//!
//! Replay one seed with `cargo run --release -p smr-sim -- --seed N`; with `SMR_SIM_DEBUG=1` a
//! liveness failure also dumps every replica's state.

pub mod checker;
pub mod client;
pub mod disk;
pub mod kv;
pub mod linearizability;
pub mod many;
pub mod network;
pub mod node;
pub mod options;
pub mod rng;
pub mod simulator;

pub use many::{Summary, replay_command, run_many};
pub use simulator::{Report, run, run_with};
