//! # smr-apply: the apply side of smr
//!
//! It **owns** the format of a replicated batch (an rkyv-archived [`Batch`] of client
//! [`Command`]s, one per Raft entry), the [`StateMachine`] trait a replicated service implements,
//! client sessions that make a retried command apply once ([`Sessions`]), the [`Applier`] that
//! ties those together with one snapshot format, and the built-in key-value state machine
//! ([`KvStore`]).
//!
//! It **must never** do I/O of its own, read a clock, or depend on anything that differs between
//! replicas: applying the same entries must give the same state and results everywhere. Batches
//! are validated once where they cross a trust boundary ([`batch::validate`]); apply then reads
//! them in place, without deserializing.

pub mod applier;
pub mod batch;
pub mod kv;
mod kv_map;
pub mod sessions;
pub mod state_machine;

pub use applier::{Applier, ApplyError, CommandOutcome, SnapshotWriter};
pub use batch::{ArchivedBatch, ArchivedCommand, Batch, BatchBuilder, BatchError, Command};
pub use kv::{KvCommand, KvConfig, KvResult, KvStore};
pub use sessions::{Decision, SessionConfig, Sessions};
pub use state_machine::{ApplyBatch, RestoreError, Results, StateHash, StateHashLater, StateMachine, StateView};
