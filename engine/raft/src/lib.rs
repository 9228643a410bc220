//! # smr-raft: the Raft core
//!
//! A Raft replica as a value you feed, not a service you run. It **owns** the protocol state of
//! one replica of one group: term, vote, its view of the log, membership, the leader's progress
//! tracking, pending reads, snapshot transfer state.
//!
//! It **must never** do I/O, read a clock, start a thread or use a global random number
//! generator: time arrives as `tick()` calls, randomness from a PRNG seeded through [`Config`],
//! and all persistence and sending is handed out as numbered [`Ready`] work. That is what lets
//! the simulator (`smr-sim`) replay any failure from a seed, and the runtime pin the same struct
//! to a core. It depends on nothing heavier than `bytes` and `thiserror`.

mod config;
mod message;
mod ready;
mod types;

pub use config::{Config, ConfigError};
pub use message::{Message, MessageBody};
pub use ready::{ReadState, Ready, Role, RoleState, SnapshotChunk};
pub use types::{
    ConfState, ENTRY_OVERHEAD_BYTES, Entry, EntryKind, GroupId, HardState, Index, NodeId,
    ReadContext, SnapshotMeta, Term,
};
