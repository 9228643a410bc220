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
//! ## How the runtime uses it
//!
//! ```no_run
//! # use std::net::TcpListener;
//! # use smr_net::*;
//! # fn core_step(_: smr_raft::Message) {}
//! let config = NetConfig::default();
//! config.validate()?;
//! let identity = Identity { cluster_id: 0xc1, node_id: 1, secret: b"shared cluster secret".to_vec(), settings: 0 };
//! let peers = [(2, "10.0.0.2:7000".parse()?), (3, "10.0.0.3:7000".parse()?)];
//! let (transport, inbound) =
//!     PeerTransport::start(config.clone(), identity, TcpListener::bind("0.0.0.0:7000")?, &peers)?;
//! let (clients, requests) = ClientServer::start(config, TcpListener::bind("0.0.0.0:7100")?, 4096)?;
//! // net stage loop: Ready's messages go out, received ones go to the core.
//! # let outgoing: Vec<smr_raft::Message> = Vec::new();
//! for message in outgoing {
//!     let _ = transport.send(message); // never blocks; a full queue drops and counts
//! }
//! for batch in inbound.try_iter() {
//!     for message in batch.messages {
//!         core_step(message);
//!     }
//! }
//! for request in requests.try_iter() {
//!     request.respond(ResponseBody::Busy); // or, later, the state machine's result
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Threads: the peer transport runs one accept thread, one thread per handshake in progress
//! (at most `handshakes_max`), and for each peer one link thread (dial or adopt the connection,
//! then batch and write what senders queued) and one reader thread per live connection. A
//! sender that finds its peer's link idle writes to the socket itself, without blocking (the
//! link's write side is taken with `try_lock`, never waited for). The client server runs one
//! event loop thread for every connection (at most `connections_max`); answers are written by
//! the thread that gives them. The runtime's core stage owns the [`PeerTransport`] and the log
//! writer a [`PeerSender`].
//!
//! Benchmarks: `cargo bench -p smr-net --bench net`. Fuzzing: see `net/fuzz/README.md`.

mod arrival;
pub mod batch;
pub mod client;
pub mod client_proto;
pub mod config;
mod conn;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
mod nosignal;
pub mod peer;
mod peer_writer;
mod poll;
mod rng;
pub mod server;
mod stats;
#[doc(hidden)]
pub mod test_ports;
pub mod wire;

pub use batch::SendBatch;
pub use client::{Client, ClientConfig, ClientError};
pub use client_proto::{
    AdminRequest, Consistency, ProtoError, Request, RequestBody, Response, ResponseBody, decode_request,
    decode_response, encode_request, encode_response,
};
pub use config::{ConfigError, NetConfig};
pub use conn::ConnError;
pub use frame::{FRAME_HEADER_BYTES, FrameError, FrameHeader, FrameKind};
pub use handshake::{Identity, PROTOCOL_VERSION, RefuseReason};
pub use peer::{Inbound, PeerSender, PeerTransport, SendError, StartError};
pub use server::{ClientRequest, ClientServer, LOCAL_CONNECTION, ResponseBatch};
pub use stats::{NetStats, StatsReader};
pub use wire::{EncodeError, WireError, decode_message, decode_message_batch, encode_message, encode_message_batched};
