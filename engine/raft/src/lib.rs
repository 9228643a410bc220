//! # smr-raft: the Raft core
//!
//! A Raft replica as a value you feed, not a service you run. It **owns** the protocol state of
//! one replica of one group: term, vote, its view of the log, membership, the leader's progress
//! tracking, pending reads, snapshot transfer state.
//!
//! It **must never** do I/O, read a clock, start a thread or use a global random number
//! generator: time arrives as [`Replica::tick`] calls, randomness from a PRNG seeded through
//! [`Config::seed`], and all persistence and sending is handed out as numbered [`Ready`] work.
//! That is what lets the simulator (`smr-sim`) replay any failure from a seed, and the runtime
//! pin the same struct to a core. It depends on nothing heavier than `bytes` and `thiserror`.
//!
//! ## Using it
//!
//! ```text
//! loop {
//!     feed: replica.tick() | replica.step(msg) | replica.propose(batch) | replica.read_index(ctx)
//!     let rd = replica.ready();
//!     send rd.messages now;                       // leader appends go out before its own fsync
//!     persist rd.snapshot_chunks, rd.entries, rd.hard_state (group commit is fine);
//!     when durable: send rd.persisted_messages; replica.on_persisted(rd.number);
//!     apply entries through rd.commit_index; serve rd.read_states once applied; on_applied(i)
//! }
//! ```
//!
//! Implemented: elections with randomized timeouts, PreVote, CheckQuorum; batched, pipelined
//! replication with probe/replicate/snapshot flow control and conflict hints; the current-term
//! commit rule; ReadIndex and lease reads; leadership transfer; joint-consensus membership
//! changes with learners; snapshots streamed in chunks; in-memory log compaction.

mod conf_change;
mod config;
mod election;
mod error;
mod log;
mod membership;
mod message;
mod progress;
mod quorum;
mod read_index;
mod ready;
mod replica;
mod replication;
mod rng;
mod snapshot;
mod status;
mod transfer;
mod types;

pub use conf_change::{CONF_CHANGE_CONTEXT_BYTES_MAX, CONF_CHANGE_OPS_MAX, ConfChange, ConfChangeError, ConfChangeOp};
pub use config::{Config, ConfigError};
pub use error::Error;
pub use message::{Message, MessageBody};
pub use ready::{ReadState, Ready, Role, RoleState, SnapshotChunk};
pub use replica::{EntryId, Replica, Restore};
pub use rng::{SplitMix64, mix};
pub use status::{PeerState, PeerStatus, Status};
pub use types::{
    ClusterId, ConfState, ENTRY_OVERHEAD_BYTES, Entry, EntryKind, GroupId, HardState, Index, NodeId, ReadContext,
    SnapshotMeta, Term,
};
