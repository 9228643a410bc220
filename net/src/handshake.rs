//! The peer handshake: protocol version, cluster id, node ids, and proof of the cluster secret.
//!
//! ```text
//! dialer A                                             acceptor B
//!   Hello{magic, version, cluster, from A, to B, nonce_a,  ─►  check version, cluster, A known,
//!         settings}                                            A != B, A not connected, to == B
//!   ◄─  HelloReply{Hello{.., from B, to A, nonce_b}, proof_b}
//! check B's hello, proof_b, settings
//!   Auth{proof_a}  ─►                                          check proof_a, settings
//! proof_b = HMAC-SHA256(secret, "smr-net acceptor v1" ‖ hello_a ‖ hello_b)
//! proof_a = HMAC-SHA256(secret, "smr-net dialer v1"   ‖ hello_a ‖ hello_b)
//! ```
//!
//! Each proof covers both hellos, so both fresh nonces: a recorded handshake cannot be replayed,
//! and the distinct labels stop a proof from being reflected back to its author. `settings` is a
//! fingerprint of what every replica must agree on to apply the log alike (limits the state
//! machine checks, the sessions' window); replicas that differ there would diverge silently, so
//! a peer with another fingerprint is refused, by whichever side sees it first once the other has
//! proven it knows the secret (the dialer, between two nodes of this build). Proofs are
//! checked by `hmac`'s constant-time `verify_slice`. A refusal sends a `Refuse` frame naming the
//! reason, logs it, bumps its counter and changes nothing else. The whole exchange must finish
//! within `handshake_ms`.

use std::fmt;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use smr_raft::{ClusterId, NodeId};
use thiserror::Error;

use crate::config::NetConfig;
use crate::conn::{ConnError, FrameReader};
use crate::frame::{FrameKind, encode_frame};
use crate::stats::{Counters, bump};

/// The protocol version this build speaks. Version 2 added `RaftBatch` frames, which a
/// version 1 peer would take for garbage; version 3 added the settings fingerprint to the hello.
pub const PROTOCOL_VERSION: u16 = 3;
/// The oldest version this build accepts: an older peer cannot show its settings, and a
/// replica whose settings are not known to match must not join the log.
pub const PROTOCOL_VERSION_MIN: u16 = 3;

const MAGIC: [u8; 4] = *b"SMRP";
const HELLO_BYTES: usize = 72;
const PROOF_BYTES: usize = 32;
const NONCE_BYTES: usize = 32;
const LABEL_ACCEPTOR: &[u8] = b"smr-net acceptor v1";
const LABEL_DIALER: &[u8] = b"smr-net dialer v1";
/// Refusal texts are short diagnostics; longer ones are cut.
const REFUSE_TEXT_BYTES_MAX: usize = 200;

/// Who this node is, and the secret every member of its cluster shares.
#[derive(Clone)]
pub struct Identity {
    pub cluster_id: ClusterId,
    pub node_id: NodeId,
    /// The shared cluster secret. At least 16 bytes; never logged.
    pub secret: Vec<u8>,
    /// A fingerprint of the settings every replica must share (for a node, smr-runtime's
    /// `Config::replicated_settings`). A peer with another one is refused.
    pub settings: u64,
}

impl fmt::Debug for Identity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Identity")
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .field("secret", &"<redacted>")
            .field("settings", &format_args!("{:#018x}", self.settings))
            .finish()
    }
}

/// Why a handshake was refused; sent to the other side as one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RefuseReason {
    /// The other side speaks a protocol version older than [`PROTOCOL_VERSION_MIN`].
    Version = 1,
    /// Another cluster id.
    ForeignCluster = 2,
    /// A node id not in this node's peer list.
    UnknownNode = 3,
    /// A node id equal to ours, or one that already has a live connection here.
    DuplicateNode = 4,
    /// The hello was meant for another node id.
    WrongTarget = 5,
    /// The proof of the cluster secret does not verify.
    BadProof = 6,
    /// Bytes that are not a handshake message.
    Malformed = 7,
    /// The handshake did not finish within `handshake_ms`.
    Timeout = 8,
    /// The settings every replica must share differ (see [`Identity::settings`]).
    Settings = 9,
}

impl RefuseReason {
    fn from_u8(byte: u8) -> RefuseReason {
        match byte {
            1 => RefuseReason::Version,
            2 => RefuseReason::ForeignCluster,
            3 => RefuseReason::UnknownNode,
            4 => RefuseReason::DuplicateNode,
            5 => RefuseReason::WrongTarget,
            6 => RefuseReason::BadProof,
            8 => RefuseReason::Timeout,
            9 => RefuseReason::Settings,
            _ => RefuseReason::Malformed,
        }
    }

    pub(crate) fn counter(self, counters: &Counters) -> &AtomicU64 {
        match self {
            RefuseReason::Version => &counters.handshake_refused_version,
            RefuseReason::ForeignCluster => &counters.handshake_refused_foreign_cluster,
            RefuseReason::UnknownNode => &counters.handshake_refused_unknown_node,
            RefuseReason::DuplicateNode => &counters.handshake_refused_duplicate_node,
            RefuseReason::WrongTarget => &counters.handshake_refused_wrong_target,
            RefuseReason::BadProof => &counters.handshake_refused_bad_proof,
            RefuseReason::Malformed => &counters.handshake_refused_malformed,
            RefuseReason::Timeout => &counters.handshake_refused_timeout,
            RefuseReason::Settings => &counters.handshake_refused_settings,
        }
    }
}

/// How a handshake failed.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// We refused the other side.
    #[error("refused peer: {reason:?}: {detail}")]
    Refused { reason: RefuseReason, detail: String },
    /// The other side refused us.
    #[error("refused by peer: {reason:?}: {detail}")]
    RefusedByPeer { reason: RefuseReason, detail: String },
    #[error("connection failed during handshake: {0}")]
    Conn(#[from] ConnError),
}

/// The fixed-size hello both sides send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub cluster_id: ClusterId,
    pub from: NodeId,
    pub to: NodeId,
    pub nonce: [u8; NONCE_BYTES],
    /// The sender's [`Identity::settings`].
    pub settings: u64,
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut out = [0u8; HELLO_BYTES];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&self.version.to_le_bytes());
        // 6..8 reserved, zero.
        out[8..16].copy_from_slice(&self.cluster_id.to_le_bytes());
        out[16..24].copy_from_slice(&self.from.to_le_bytes());
        out[24..32].copy_from_slice(&self.to.to_le_bytes());
        out[32..64].copy_from_slice(&self.nonce);
        out[64..72].copy_from_slice(&self.settings.to_le_bytes());
        out
    }

    /// The version of a hello of any version, shorter ones included, so that an old peer is
    /// told its version is the problem rather than that its hello is malformed.
    fn version_of(bytes: &[u8]) -> Option<u16> {
        let version = bytes.get(4..6)?;
        (bytes[0..4] == MAGIC).then(|| u16::from_le_bytes([version[0], version[1]]))
    }

    /// Decodes a hello from the start of `bytes`.
    ///
    /// # Errors
    /// `None` when the bytes are too short, the magic is wrong or reserved bytes are set.
    pub fn decode(bytes: &[u8]) -> Option<Hello> {
        let bytes: &[u8; HELLO_BYTES] = bytes.get(..HELLO_BYTES)?.try_into().ok()?;
        if bytes[0..4] != MAGIC || bytes[6..8] != [0, 0] {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Some(Hello {
            version: u16::from_le_bytes([bytes[4], bytes[5]]),
            cluster_id: u64_at(8),
            from: u64_at(16),
            to: u64_at(24),
            nonce: bytes[32..64].try_into().expect("32 bytes"),
            settings: u64_at(64),
        })
    }
}

fn proof(secret: &[u8], label: &[u8], hello_dialer: &[u8], hello_acceptor: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(label);
    mac.update(hello_dialer);
    mac.update(hello_acceptor);
    mac
}

/// A fresh nonce from the kernel's CSPRNG. Handshake nonces must be unpredictable, so they do
/// not come from the seeded jitter PRNG.
fn nonce() -> Result<[u8; NONCE_BYTES], ConnError> {
    let mut nonce = [0u8; NONCE_BYTES];
    let mut filled = 0;
    while filled < NONCE_BYTES {
        // SAFETY: the pointer and length describe the unfilled tail of `nonce`, which getrandom
        // writes at most that many bytes into.
        let got = unsafe { libc::getrandom(nonce[filled..].as_mut_ptr().cast(), NONCE_BYTES - filled, 0) };
        if got < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(ConnError::Io(error));
            }
        } else {
            filled += got as usize;
        }
    }
    Ok(nonce)
}

fn send_frame(stream: &mut TcpStream, kind: FrameKind, payload: &[u8]) -> Result<(), ConnError> {
    let mut frame = Vec::with_capacity(payload.len() + 32);
    encode_frame(&mut frame, kind, 0, 0, payload, usize::MAX).map_err(ConnError::Frame)?;
    crate::nosignal::NoSignal(stream).write_all(&frame)?;
    Ok(())
}

/// Refuses the other side: logs, counts, tells it why (best effort) and returns the error.
fn refuse(stream: &mut TcpStream, counters: &Counters, reason: RefuseReason, detail: String) -> HandshakeError {
    bump(reason.counter(counters));
    if let Some(suppressed) = counters.log_limit.allow() {
        tracing::warn!(peer = ?stream.peer_addr().ok(), ?reason, %detail, suppressed, "peer handshake refused");
    }
    let mut payload = vec![reason as u8];
    let text = detail.as_bytes();
    payload.extend_from_slice(&text[..text.len().min(REFUSE_TEXT_BYTES_MAX)]);
    let _ = send_frame(stream, FrameKind::Refuse, &payload);
    HandshakeError::Refused { reason, detail }
}

fn refused_by_peer(payload: &[u8], counters: &Counters) -> HandshakeError {
    bump(&counters.handshake_refused_by_peer);
    let reason = RefuseReason::from_u8(payload.first().copied().unwrap_or(0));
    let text = payload.get(1..).unwrap_or_default();
    let detail = String::from_utf8_lossy(&text[..text.len().min(REFUSE_TEXT_BYTES_MAX)]).into_owned();
    if let Some(suppressed) = counters.log_limit.allow() {
        tracing::warn!(?reason, %detail, suppressed, "our handshake was refused by the peer");
    }
    HandshakeError::RefusedByPeer { reason, detail }
}

fn check_hello(identity: &Identity, hello: &Hello) -> Result<(), (RefuseReason, String)> {
    if hello.version < PROTOCOL_VERSION_MIN {
        return Err((
            RefuseReason::Version,
            format!("protocol version {} is older than {PROTOCOL_VERSION_MIN}", hello.version),
        ));
    }
    if hello.cluster_id != identity.cluster_id {
        return Err((
            RefuseReason::ForeignCluster,
            format!("cluster id {:#x} is not ours ({:#x})", hello.cluster_id, identity.cluster_id),
        ));
    }
    if hello.to != identity.node_id {
        return Err((
            RefuseReason::WrongTarget,
            format!("hello for node {} reached node {}", hello.to, identity.node_id),
        ));
    }
    if hello.from == identity.node_id {
        return Err((RefuseReason::DuplicateNode, format!("peer claims our own node id {}", hello.from)));
    }
    Ok(())
}

/// Checked once the other side has proven it knows the cluster secret, so that a stranger learns
/// nothing of our settings and is refused for its proof, whatever its settings.
fn check_settings(identity: &Identity, hello: &Hello) -> Result<(), (RefuseReason, String)> {
    if hello.settings != identity.settings {
        return Err((
            RefuseReason::Settings,
            format!(
                "node {} has replicated settings {:#018x}, node {} has {:#018x}: they must be equal on every \
                 replica (each node logs its own at start-up)",
                hello.from, hello.settings, identity.node_id, identity.settings
            ),
        ));
    }
    Ok(())
}

/// Runs the acceptor's side on a freshly accepted connection.
///
/// `admit(node)` says whether `node` may connect now: `Err(UnknownNode)` for a node outside the
/// peer list, `Err(DuplicateNode)` for one that already has a live connection, each with the
/// reason in words for the log line. It is asked
/// before any proof is sent; the caller asks again when it adopts the connection, since another
/// connection from the same node may have won in between.
///
/// # Errors
/// Any refusal (ours or theirs), I/O error or the `handshake_ms` deadline.
pub(crate) fn accept(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    identity: &Identity,
    config: &NetConfig,
    counters: &Counters,
    admit: impl Fn(NodeId) -> Result<(), (RefuseReason, &'static str)>,
) -> Result<NodeId, HandshakeError> {
    let deadline = Instant::now() + config.handshake();
    let (kind, payload) = match read(reader, stream, config, deadline) {
        Ok(frame) => frame,
        Err(ConnError::Deadline | ConnError::SlowFrame(_) | ConnError::Idle(_)) => {
            return Err(refuse(stream, counters, RefuseReason::Timeout, "no hello in time".into()));
        }
        Err(ConnError::Frame(error)) => {
            return Err(refuse(stream, counters, RefuseReason::Malformed, format!("bad frame: {error}")));
        }
        Err(error) => return Err(error.into()),
    };
    let hello_dialer = match (kind, Hello::decode(&payload)) {
        (FrameKind::Hello, Some(hello)) if payload.len() == HELLO_BYTES => hello,
        (FrameKind::Hello, _) if Hello::version_of(&payload).is_some_and(|v| v < PROTOCOL_VERSION_MIN) => {
            let version = Hello::version_of(&payload).unwrap_or_default();
            return Err(refuse(
                stream,
                counters,
                RefuseReason::Version,
                format!("protocol version {version} is older than {PROTOCOL_VERSION_MIN}"),
            ));
        }
        _ => {
            return Err(refuse(stream, counters, RefuseReason::Malformed, format!("expected a hello, got {kind:?}")));
        }
    };
    if let Err((reason, detail)) = check_hello(identity, &hello_dialer) {
        return Err(refuse(stream, counters, reason, detail));
    }
    if let Err((reason, why)) = admit(hello_dialer.from) {
        return Err(refuse(stream, counters, reason, format!("node {}: {why}", hello_dialer.from)));
    }
    let hello_acceptor = Hello {
        version: PROTOCOL_VERSION,
        cluster_id: identity.cluster_id,
        from: identity.node_id,
        to: hello_dialer.from,
        nonce: nonce()?,
        settings: identity.settings,
    };
    let dialer_bytes = hello_dialer.encode();
    let acceptor_bytes = hello_acceptor.encode();
    let mut reply = Vec::with_capacity(HELLO_BYTES + PROOF_BYTES);
    reply.extend_from_slice(&acceptor_bytes);
    reply.extend_from_slice(
        &proof(&identity.secret, LABEL_ACCEPTOR, &dialer_bytes, &acceptor_bytes).finalize().into_bytes(),
    );
    send_frame(stream, FrameKind::HelloReply, &reply)?;
    let (kind, payload) = match read(reader, stream, config, deadline) {
        Ok(frame) => frame,
        Err(ConnError::Deadline | ConnError::SlowFrame(_) | ConnError::Idle(_)) => {
            return Err(refuse(stream, counters, RefuseReason::Timeout, "no proof in time".into()));
        }
        Err(ConnError::Frame(error)) => {
            return Err(refuse(stream, counters, RefuseReason::Malformed, format!("bad frame: {error}")));
        }
        Err(error) => return Err(error.into()),
    };
    match kind {
        FrameKind::Auth if payload.len() == PROOF_BYTES => {}
        FrameKind::Refuse => return Err(refused_by_peer(&payload, counters)),
        _ => {
            return Err(refuse(stream, counters, RefuseReason::Malformed, format!("expected a proof, got {kind:?}")));
        }
    }
    if proof(&identity.secret, LABEL_DIALER, &dialer_bytes, &acceptor_bytes).verify_slice(&payload).is_err() {
        return Err(refuse(
            stream,
            counters,
            RefuseReason::BadProof,
            format!("node {} does not know the cluster secret", hello_dialer.from),
        ));
    }
    if let Err((reason, detail)) = check_settings(identity, &hello_dialer) {
        return Err(refuse(stream, counters, reason, detail));
    }
    Ok(hello_dialer.from)
}

/// Runs the dialer's side on a freshly connected stream to node `peer`.
///
/// # Errors
/// Any refusal (ours or theirs), I/O error or the `handshake_ms` deadline.
pub(crate) fn dial(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    identity: &Identity,
    peer: NodeId,
    config: &NetConfig,
    counters: &Counters,
) -> Result<(), HandshakeError> {
    let deadline = Instant::now() + config.handshake();
    let hello_dialer = Hello {
        version: PROTOCOL_VERSION,
        cluster_id: identity.cluster_id,
        from: identity.node_id,
        to: peer,
        nonce: nonce()?,
        settings: identity.settings,
    };
    let dialer_bytes = hello_dialer.encode();
    send_frame(stream, FrameKind::Hello, &dialer_bytes)?;
    let (kind, payload) = match read(reader, stream, config, deadline) {
        Ok(frame) => frame,
        Err(ConnError::Deadline | ConnError::SlowFrame(_) | ConnError::Idle(_)) => {
            return Err(refuse(stream, counters, RefuseReason::Timeout, "no hello reply in time".into()));
        }
        Err(ConnError::Frame(error)) => {
            return Err(refuse(stream, counters, RefuseReason::Malformed, format!("bad frame: {error}")));
        }
        Err(error) => return Err(error.into()),
    };
    let hello_acceptor = match kind {
        FrameKind::Refuse => return Err(refused_by_peer(&payload, counters)),
        FrameKind::HelloReply if payload.len() == HELLO_BYTES + PROOF_BYTES => Hello::decode(&payload),
        _ => None,
    };
    let Some(hello_acceptor) = hello_acceptor else {
        return Err(refuse(stream, counters, RefuseReason::Malformed, format!("expected a hello reply, got {kind:?}")));
    };
    if let Err((reason, detail)) = check_hello(identity, &hello_acceptor) {
        return Err(refuse(stream, counters, reason, detail));
    }
    if hello_acceptor.from != peer {
        return Err(refuse(
            stream,
            counters,
            RefuseReason::WrongTarget,
            format!("dialed node {peer}, node {} answered", hello_acceptor.from),
        ));
    }
    let acceptor_bytes = hello_acceptor.encode();
    if proof(&identity.secret, LABEL_ACCEPTOR, &dialer_bytes, &acceptor_bytes)
        .verify_slice(&payload[HELLO_BYTES..])
        .is_err()
    {
        return Err(refuse(
            stream,
            counters,
            RefuseReason::BadProof,
            format!("node {peer} does not know the cluster secret"),
        ));
    }
    if let Err((reason, detail)) = check_settings(identity, &hello_acceptor) {
        return Err(refuse(stream, counters, reason, detail));
    }
    let proof_dialer = proof(&identity.secret, LABEL_DIALER, &dialer_bytes, &acceptor_bytes).finalize().into_bytes();
    send_frame(stream, FrameKind::Auth, &proof_dialer)?;
    Ok(())
}

/// Reads one frame for the handshake through the connection's own [`FrameReader`], so that
/// bytes that arrive right after the handshake stay buffered for the connection.
fn read(
    reader: &mut FrameReader,
    stream: &TcpStream,
    config: &NetConfig,
    deadline: Instant,
) -> Result<(FrameKind, bytes::Bytes), ConnError> {
    let (header, payload) = reader.read_frame(stream, config.frame_receive_max(), deadline)?;
    Ok((header.kind, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_rejects_bad_magic() {
        let hello = Hello { version: 1, cluster_id: 7, from: 1, to: 2, nonce: [9; 32], settings: 0x5e77_1265 };
        let bytes = hello.encode();
        assert_eq!(Hello::decode(&bytes), Some(hello));
        let mut bad = bytes;
        bad[0] = b'X';
        assert_eq!(Hello::decode(&bad), None);
        assert_eq!(Hello::decode(&bytes[..HELLO_BYTES - 1]), None);
    }

    #[test]
    fn the_version_is_read_from_hellos_of_any_length() {
        let hello = Hello { version: 2, cluster_id: 7, from: 1, to: 2, nonce: [9; 32], settings: 0 };
        let bytes = hello.encode();
        assert_eq!(Hello::version_of(&bytes[..64]), Some(2), "a version 2 hello is 64 bytes");
        assert_eq!(Hello::version_of(&bytes[..6]), Some(2));
        assert_eq!(Hello::version_of(&bytes[..5]), None);
        assert_eq!(Hello::version_of(b"SMRX\x03\x00"), None);
    }

    #[test]
    fn a_hello_with_other_settings_is_refused_naming_both() {
        let identity = Identity { cluster_id: 7, node_id: 2, secret: vec![0; 16], settings: 0xaa };
        let hello = Hello { version: PROTOCOL_VERSION, cluster_id: 7, from: 1, to: 2, nonce: [9; 32], settings: 0xbb };
        assert_eq!(check_hello(&identity, &hello), Ok(()), "settings wait for the proof");
        let (reason, detail) = check_settings(&identity, &hello).unwrap_err();
        assert_eq!(reason, RefuseReason::Settings);
        assert!(detail.contains("0x00000000000000bb") && detail.contains("0x00000000000000aa"), "{detail}");
        assert_eq!(check_settings(&identity, &Hello { settings: 0xaa, ..hello }), Ok(()));
    }

    #[test]
    fn proofs_differ_by_role() {
        let a = proof(b"secret-secret-secret", LABEL_DIALER, b"x", b"y").finalize().into_bytes();
        let b = proof(b"secret-secret-secret", LABEL_ACCEPTOR, b"x", b"y").finalize().into_bytes();
        assert_ne!(a, b);
    }
}
