//! # smr-net: the transport between replicas and the client protocol
//!
//! It **owns** every byte smr puts on or takes off a TCP connection: the frame format
//! ([`frame`]), the wire form of Raft messages ([`wire`]), the peer handshake ([`handshake`]),
//! the per-peer connections with their queues, batching and reconnects ([`peer`]), the client
//! protocol ([`client_proto`]), the server side of client connections ([`server`]) and a
//! blocking client library ([`client`]).
//!
//! It **must never**:
//! - trust a byte it receives: every length is checked against a named limit of [`NetConfig`]
//!   before anything is allocated for it, every frame's CRC32C is checked, every Raft archive is
//!   validated with bytecheck before a field is read, and every field is range-checked as it is
//!   converted; garbage closes the connection and is counted;
//! - let one peer slow down another: each peer has its own bounded queue and its own threads,
//!   a full queue drops (Raft tolerates loss) and counts;
//! - grow memory without bound: every queue is bounded, no channel is unbounded;
//! - interpret commands: client payloads are opaque bytes, their encoding belongs to the state
//!   machine;
//! - decide anything about Raft: it moves [`smr_raft::Message`] values, the core decides;
//! - spin: idle threads block in the kernel (socket reads, channel receives with deadlines).
//!
//! Threads: the peer transport runs one accept thread, one thread per handshake in progress
//! (at most `handshakes_max`), and for each peer one link thread (dial or adopt a connection,
//! then write) and one reader thread per live connection. The runtime's net stage owns the
//! [`PeerTransport`] handle, calls [`PeerTransport::send`] (never blocks) and drains the bounded
//! inbound channel of [`Inbound`] batches.

pub mod batch;
pub mod client;
pub mod client_proto;
pub mod config;
mod conn;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod peer;
mod rng;
pub mod server;
mod stats;
pub mod wire;

pub use batch::SendBatch;
pub use client::{Client, ClientConfig, ClientError};
pub use client_proto::{
    AdminRequest, Consistency, ProtoError, Request, RequestBody, Response, ResponseBody,
    decode_request, decode_response, encode_request, encode_response,
};
pub use config::{ConfigError, NetConfig};
pub use conn::ConnError;
pub use frame::{FRAME_HEADER_BYTES, FrameError, FrameHeader, FrameKind};
pub use handshake::{Identity, PROTOCOL_VERSION, RefuseReason};
pub use peer::{Inbound, PeerTransport, SendError, StartError};
pub use server::{ClientRequest, ClientServer};
pub use stats::NetStats;
pub use wire::{EncodeError, WireError, decode_message, encode_message};
