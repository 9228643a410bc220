//! The client protocol: requests and responses inside `ClientRequest` / `ClientResponse` frames.
//!
//! A connection carries many requests at once; each has a request id chosen by the client, and
//! responses come back in any order. Commands carry a client session id and a sequence number
//! so that the state machine applies a retried command once; their payload is opaque here (its
//! encoding belongs to the state machine). The frame's `group` names the Raft group.
//!
//! ```text
//! request                                   response
//!  0 u64 request_id                          0 u64 request_id
//!  8 u8  op (1 command, 2 read, 3 admin)     8 u8  status (0 ok, 1 not leader, 2 busy,
//!  9 u8  consistency (read) / admin kind            3 too large, 4 timed out,
//! 10 u16 reserved, 0                                5 shutting down, 6 invalid request)
//! 12 u32 reserved, 0                         9 7×u8 reserved, 0
//! 16 u64 session id (command) / node (admin) 16 u64 leader id (not leader; 0 = unknown)
//! 24 u64 sequence (command) / learner (add)  24 …   ok: result; not leader: leader address
//! 32 …   payload (command, read) or                 (UTF-8, empty = unknown); invalid:
//!        node address (add node, UTF-8)             reason (UTF-8); else empty
//! ```
//!
//! Unused fields must be zero and trailing bytes must be empty where no payload is defined, so
//! every message has exactly one encoding.

use bytes::Bytes;
use smr_raft::{GroupId, NodeId};
use thiserror::Error;

use crate::batch::SendBatch;
use crate::frame::{FrameError, FrameKind};

/// Bytes of the fixed part of a request.
pub const REQUEST_HEADER_BYTES: usize = 32;
/// Bytes of the fixed part of a response.
pub const RESPONSE_HEADER_BYTES: usize = 24;
/// Longest node address or error text carried.
pub const TEXT_BYTES_MAX: usize = 1024;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Consistency {
    /// Linearizable through ReadIndex: a quorum confirms leadership, no log write.
    Linearizable = 0,
    /// Linearizable under the leader lease (bounded clock drift assumed).
    Lease = 1,
    /// Whatever this replica has applied; may be arbitrarily old.
    Stale = 2,
}

/// Operator requests for `smr ctl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminRequest {
    Status,
    Stats,
    AddNode { node_id: NodeId, address: String, learner: bool },
    RemoveNode { node_id: NodeId },
    TransferLeader { node_id: NodeId },
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestBody {
    /// A command to replicate and apply once per `(session_id, sequence)`.
    Command {
        session_id: u64,
        sequence: u64,
        payload: Bytes,
    },
    /// A read of the state machine; the payload is the state machine's query.
    Read {
        consistency: Consistency,
        payload: Bytes,
    },
    Admin(AdminRequest),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub request_id: u64,
    pub group: GroupId,
    pub body: RequestBody,
}

/// The outcome of a request. Every variant but `Ok` is an error the client can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    /// Done; the state machine's (or the admin command's) result.
    Ok(Bytes),
    /// Send it to the leader instead, if known.
    NotLeader { leader_id: Option<NodeId>, leader_address: Option<String> },
    /// Backpressure: nothing was done; retry later.
    Busy,
    /// The request is larger than the node accepts; do not retry as is.
    TooLarge,
    /// No outcome within the node's deadline: it may or may not have been applied; retry with
    /// the same session and sequence to get it applied once.
    TimedOut,
    /// The node is stopping; nothing more will be done here.
    ShuttingDown,
    /// The request is malformed or refers to something that does not exist.
    InvalidRequest(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub request_id: u64,
    pub body: ResponseBody,
}

/// Why bytes are not a valid request or response.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("message of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown op {0}")]
    Op(u8),
    #[error("unknown {what} {value}")]
    Field { what: &'static str, value: u64 },
    #[error("reserved field {0} is not zero")]
    Reserved(&'static str),
    #[error("text is not UTF-8 or longer than {TEXT_BYTES_MAX} bytes")]
    Text,
    #[error("unexpected trailing bytes")]
    Trailing,
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn text(bytes: &[u8]) -> Result<String, ProtoError> {
    if bytes.len() > TEXT_BYTES_MAX {
        return Err(ProtoError::Text);
    }
    std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| ProtoError::Text)
}

fn clip(text: &str) -> &[u8] {
    let mut end = text.len().min(TEXT_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text.as_bytes()[..end]
}

/// Appends `request` to `batch` as one frame.
///
/// # Errors
/// [`FrameError::TooLarge`]: the request does not fit `frame_bytes_max`; the batch is unchanged.
pub fn encode_request(batch: &mut SendBatch, request: &Request, frame_bytes_max: usize) -> Result<(), FrameError> {
    let mut header = [0u8; REQUEST_HEADER_BYTES];
    header[0..8].copy_from_slice(&request.request_id.to_le_bytes());
    let (op, sub, a, b, payload): (u8, u8, u64, u64, &[u8]) = match &request.body {
        RequestBody::Command { session_id, sequence, payload } => (1, 0, *session_id, *sequence, payload),
        RequestBody::Read { consistency, payload } => (2, *consistency as u8, 0, 0, payload),
        RequestBody::Admin(admin) => match admin {
            AdminRequest::Status => (3, 1, 0, 0, &[]),
            AdminRequest::Stats => (3, 2, 0, 0, &[]),
            AdminRequest::AddNode { node_id, address, learner } => (3, 3, *node_id, u64::from(*learner), clip(address)),
            AdminRequest::RemoveNode { node_id } => (3, 4, *node_id, 0, &[]),
            AdminRequest::TransferLeader { node_id } => (3, 5, *node_id, 0, &[]),
        },
    };
    header[8] = op;
    header[9] = sub;
    header[16..24].copy_from_slice(&a.to_le_bytes());
    header[24..32].copy_from_slice(&b.to_le_bytes());
    batch.push_frame_parts(FrameKind::ClientRequest, 0, request.group, &[&header, payload], frame_bytes_max)
}

/// Decodes the payload of a `ClientRequest` frame of `group`. Command and read payloads are
/// slices of `payload`, not copies.
///
/// # Errors
/// Any [`ProtoError`].
pub fn decode_request(group: GroupId, payload: &Bytes) -> Result<Request, ProtoError> {
    if payload.len() < REQUEST_HEADER_BYTES {
        return Err(ProtoError::Short(payload.len()));
    }
    if payload[10..16].iter().any(|&b| b != 0) {
        return Err(ProtoError::Reserved("request header"));
    }
    let request_id = u64_at(payload, 0);
    let (op, sub, a, b) = (payload[8], payload[9], u64_at(payload, 16), u64_at(payload, 24));
    let rest = payload.slice(REQUEST_HEADER_BYTES..);
    let no_args = |body: RequestBody| -> Result<RequestBody, ProtoError> {
        if a != 0 || b != 0 {
            return Err(ProtoError::Reserved("arguments"));
        }
        if !rest.is_empty() {
            return Err(ProtoError::Trailing);
        }
        Ok(body)
    };
    let body = match op {
        1 => {
            if sub != 0 {
                return Err(ProtoError::Reserved("command sub-kind"));
            }
            RequestBody::Command { session_id: a, sequence: b, payload: rest.clone() }
        }
        2 => {
            let consistency = match sub {
                0 => Consistency::Linearizable,
                1 => Consistency::Lease,
                2 => Consistency::Stale,
                other => {
                    return Err(ProtoError::Field { what: "consistency", value: u64::from(other) });
                }
            };
            if a != 0 || b != 0 {
                return Err(ProtoError::Reserved("read arguments"));
            }
            RequestBody::Read { consistency, payload: rest.clone() }
        }
        3 => {
            let node_only = |admin: AdminRequest| -> Result<RequestBody, ProtoError> {
                if a == 0 {
                    return Err(ProtoError::Field { what: "node id", value: 0 });
                }
                if b != 0 {
                    return Err(ProtoError::Reserved("admin argument"));
                }
                if !rest.is_empty() {
                    return Err(ProtoError::Trailing);
                }
                Ok(RequestBody::Admin(admin))
            };
            match sub {
                1 => no_args(RequestBody::Admin(AdminRequest::Status))?,
                2 => no_args(RequestBody::Admin(AdminRequest::Stats))?,
                3 => {
                    if a == 0 {
                        return Err(ProtoError::Field { what: "node id", value: 0 });
                    }
                    if b > 1 {
                        return Err(ProtoError::Field { what: "learner flag", value: b });
                    }
                    RequestBody::Admin(AdminRequest::AddNode { node_id: a, address: text(&rest)?, learner: b == 1 })
                }
                4 => node_only(AdminRequest::RemoveNode { node_id: a })?,
                5 => node_only(AdminRequest::TransferLeader { node_id: a })?,
                other => {
                    return Err(ProtoError::Field { what: "admin kind", value: u64::from(other) });
                }
            }
        }
        other => return Err(ProtoError::Op(other)),
    };
    Ok(Request { request_id, group, body })
}

/// Appends `response` to `batch` as one frame of `group`.
///
/// # Errors
/// [`FrameError::TooLarge`]: the result does not fit `frame_bytes_max`; the batch is unchanged.
pub fn encode_response(
    batch: &mut SendBatch,
    group: GroupId,
    response: &Response,
    frame_bytes_max: usize,
) -> Result<(), FrameError> {
    let mut header = [0u8; RESPONSE_HEADER_BYTES];
    header[0..8].copy_from_slice(&response.request_id.to_le_bytes());
    let (status, leader, payload): (u8, u64, &[u8]) = match &response.body {
        ResponseBody::Ok(result) => (0, 0, result),
        ResponseBody::NotLeader { leader_id, leader_address } => {
            (1, leader_id.unwrap_or(0), leader_address.as_deref().map(clip).unwrap_or_default())
        }
        ResponseBody::Busy => (2, 0, &[]),
        ResponseBody::TooLarge => (3, 0, &[]),
        ResponseBody::TimedOut => (4, 0, &[]),
        ResponseBody::ShuttingDown => (5, 0, &[]),
        ResponseBody::InvalidRequest(reason) => (6, 0, clip(reason)),
    };
    header[8] = status;
    header[16..24].copy_from_slice(&leader.to_le_bytes());
    batch.push_frame_parts(FrameKind::ClientResponse, 0, group, &[&header, payload], frame_bytes_max)
}

/// Decodes the payload of a `ClientResponse` frame. An `Ok` result is a slice of `payload`.
///
/// # Errors
/// Any [`ProtoError`].
pub fn decode_response(payload: &Bytes) -> Result<Response, ProtoError> {
    if payload.len() < RESPONSE_HEADER_BYTES {
        return Err(ProtoError::Short(payload.len()));
    }
    if payload[9..16].iter().any(|&b| b != 0) {
        return Err(ProtoError::Reserved("response header"));
    }
    let request_id = u64_at(payload, 0);
    let leader = u64_at(payload, 16);
    let rest = payload.slice(RESPONSE_HEADER_BYTES..);
    let status = payload[8];
    if status != 1 && leader != 0 {
        return Err(ProtoError::Reserved("leader id"));
    }
    let empty = |body: ResponseBody| {
        if rest.is_empty() { Ok(body) } else { Err(ProtoError::Trailing) }
    };
    let body = match status {
        0 => ResponseBody::Ok(rest.clone()),
        1 => ResponseBody::NotLeader {
            leader_id: (leader != 0).then_some(leader),
            leader_address: if rest.is_empty() { None } else { Some(text(&rest)?) },
        },
        2 => empty(ResponseBody::Busy)?,
        3 => empty(ResponseBody::TooLarge)?,
        4 => empty(ResponseBody::TimedOut)?,
        5 => empty(ResponseBody::ShuttingDown)?,
        6 => ResponseBody::InvalidRequest(text(&rest)?),
        other => {
            return Err(ProtoError::Field { what: "status", value: u64::from(other) });
        }
    };
    Ok(Response { request_id, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FRAME_HEADER_BYTES, decode_frame};
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    fn frame_payload(batch: &mut SendBatch) -> (u64, Bytes) {
        let bytes = Bytes::from(batch.to_vec());
        let (header, _) = decode_frame(&bytes, MAX).unwrap().unwrap();
        (header.group, bytes.slice(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.length as usize))
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        let payload = proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from);
        let body = prop_oneof![
            (any::<u64>(), any::<u64>(), payload.clone())
                .prop_map(|(session_id, sequence, payload)| RequestBody::Command { session_id, sequence, payload }),
            (0u8..3, payload).prop_map(|(consistency, payload)| RequestBody::Read {
                consistency: [Consistency::Linearizable, Consistency::Lease, Consistency::Stale][consistency as usize],
                payload
            }),
            Just(RequestBody::Admin(AdminRequest::Status)),
            Just(RequestBody::Admin(AdminRequest::Stats)),
            (1u64..100, "[a-z0-9.:]{0,40}", any::<bool>()).prop_map(|(node_id, address, learner)| {
                RequestBody::Admin(AdminRequest::AddNode { node_id, address, learner })
            }),
            (1u64..100).prop_map(|node_id| RequestBody::Admin(AdminRequest::RemoveNode { node_id })),
            (1u64..100).prop_map(|node_id| RequestBody::Admin(AdminRequest::TransferLeader { node_id })),
        ];
        (any::<u64>(), any::<u64>(), body).prop_map(|(request_id, group, body)| Request { request_id, group, body })
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        let body = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(|result| ResponseBody::Ok(Bytes::from(result))),
            (proptest::option::of(1u64..100), proptest::option::of("[a-z0-9.:]{1,40}"))
                .prop_map(|(leader_id, leader_address)| ResponseBody::NotLeader { leader_id, leader_address }),
            Just(ResponseBody::Busy),
            Just(ResponseBody::TooLarge),
            Just(ResponseBody::TimedOut),
            Just(ResponseBody::ShuttingDown),
            "[ -~]{0,80}".prop_map(ResponseBody::InvalidRequest),
        ];
        (any::<u64>(), body).prop_map(|(request_id, body)| Response { request_id, body })
    }

    proptest! {
        #[test]
        fn request_round_trips(request in arb_request()) {
            let mut batch = SendBatch::new();
            encode_request(&mut batch, &request, MAX).unwrap();
            let (group, payload) = frame_payload(&mut batch);
            prop_assert_eq!(decode_request(group, &payload).unwrap(), request);
        }

        #[test]
        fn response_round_trips(response in arb_response()) {
            let mut batch = SendBatch::new();
            encode_response(&mut batch, 4, &response, MAX).unwrap();
            let (_, payload) = frame_payload(&mut batch);
            prop_assert_eq!(decode_response(&payload).unwrap(), response);
        }

        #[test]
        fn decode_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let bytes = Bytes::from(bytes);
            let _ = decode_request(1, &bytes);
            let _ = decode_response(&bytes);
        }
    }

    #[test]
    fn nonzero_reserved_bytes_are_refused() {
        let mut batch = SendBatch::new();
        let request = Request { request_id: 1, group: 0, body: RequestBody::Admin(AdminRequest::Status) };
        encode_request(&mut batch, &request, MAX).unwrap();
        let (_, payload) = frame_payload(&mut batch);
        let mut bad = payload.to_vec();
        bad[12] = 1;
        assert_eq!(decode_request(0, &Bytes::from(bad)), Err(ProtoError::Reserved("request header")));
    }
}
