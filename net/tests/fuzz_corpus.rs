//! Replays the checked-in seed corpus of the fuzz targets (`net/fuzz/corpus/<target>/*`)
//! through the same entry points the fuzz targets call, on the stable toolchain.
//!
//! The seeds are written by the ignored test below:
//! `cargo test -p smr-net --test fuzz_corpus -- --ignored write_seed_corpus`.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use smr_net::frame::{FRAME_HEADER_BYTES, FrameKind, decode_frame};
use smr_net::{
    AdminRequest, Consistency, Request, RequestBody, Response, ResponseBody, SendBatch, encode_message,
    encode_message_batched, encode_request, encode_response, fuzzing,
};
use smr_raft::{ConfState, Entry, EntryKind, Message, MessageBody, SnapshotMeta};

type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 4] = [
    ("frame_decoder", fuzzing::frame_decoder),
    ("message_decoder", fuzzing::message_decoder),
    ("message_batch_decoder", fuzzing::message_batch_decoder),
    ("client_request_decoder", fuzzing::client_request_decoder),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("corpus").join(target)
}

#[test]
fn checked_in_seed_corpus_replays_without_panics() {
    for (target, run) in TARGETS {
        let mut files = 0;
        for entry in fs::read_dir(corpus_dir(target)).unwrap_or_else(|error| panic!("{target}: {error}")) {
            let path = entry.unwrap().path();
            run(&fs::read(&path).unwrap());
            files += 1;
        }
        assert!(files >= 8, "{target}: only {files} seeds");
    }
}

fn messages() -> Vec<Message> {
    let entry = |index: u64, bytes: usize| Entry {
        index,
        term: 2,
        kind: if index.is_multiple_of(3) { EntryKind::Noop } else { EntryKind::Normal },
        data: Bytes::from(vec![index as u8; bytes]),
    };
    let message = |body| Message { group: 7, from: 1, to: 2, term: 2, body };
    vec![
        message(MessageBody::PreVote { last_log_index: 10, last_log_term: 1 }),
        message(MessageBody::VoteResponse { granted: true }),
        message(MessageBody::Vote { last_log_index: 10, last_log_term: 1, leadership_transfer: true }),
        message(MessageBody::Append { prev_log_index: 3, prev_log_term: 1, commit_index: 3, entries: vec![] }),
        message(MessageBody::Append {
            prev_log_index: 3,
            prev_log_term: 1,
            commit_index: 3,
            entries: vec![entry(4, 10), entry(5, 2000), entry(6, 0)],
        }),
        message(MessageBody::AppendResponse { success: false, index: 9, hint_index: 4, hint_term: 1 }),
        message(MessageBody::Heartbeat { commit_index: 8, read_round: 4 }),
        message(MessageBody::Snapshot {
            meta: Box::new(SnapshotMeta {
                index: 100,
                term: 2,
                conf: ConfState { voters: vec![1, 2, 3], voters_outgoing: vec![4], learners: vec![5] },
            }),
            offset: 4096,
            data: Bytes::from(vec![9u8; 300]),
            last: true,
        }),
        message(MessageBody::SnapshotResponse { snapshot_index: 100, next_offset: 4396, reject: false }),
        message(MessageBody::TimeoutNow),
        message(MessageBody::ReadIndex { context: 77 }),
        message(MessageBody::ReadIndexResponse { context: 77, index: 12 }),
    ]
}

fn requests() -> Vec<Request> {
    let request = |request_id, body| Request { request_id, group: 3, body };
    vec![
        request(1, RequestBody::Command { session_id: 5, sequence: 9, payload: Bytes::from_static(b"put key value") }),
        request(
            2,
            RequestBody::Read { consistency: Consistency::Linearizable, payload: Bytes::from_static(b"get key") },
        ),
        request(3, RequestBody::Read { consistency: Consistency::Stale, payload: Bytes::new() }),
        request(4, RequestBody::Admin(AdminRequest::Status)),
        request(5, RequestBody::Admin(AdminRequest::Stats)),
        request(
            6,
            RequestBody::Admin(AdminRequest::AddNode { node_id: 4, address: "10.0.0.4:7000".into(), learner: true }),
        ),
        request(7, RequestBody::Admin(AdminRequest::RemoveNode { node_id: 2 })),
        request(8, RequestBody::Admin(AdminRequest::TransferLeader { node_id: 3 })),
    ]
}

fn responses() -> Vec<Response> {
    let response = |request_id, body| Response { request_id, body };
    vec![
        response(1, ResponseBody::Ok(Bytes::from_static(b"result"))),
        response(2, ResponseBody::NotLeader { leader_id: Some(3), leader_address: Some("127.0.0.1:7003".into()) }),
        response(3, ResponseBody::NotLeader { leader_id: None, leader_address: None }),
        response(4, ResponseBody::Busy),
        response(5, ResponseBody::TimedOut),
        response(6, ResponseBody::InvalidRequest("unknown op 9".into())),
    ]
}

fn payload_of(frame: &[u8]) -> (u32, &[u8]) {
    let (header, _) = decode_frame(frame, 1 << 24).unwrap().unwrap();
    (header.aux, &frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.length as usize])
}

#[test]
#[ignore = "writes the seed corpus into the source tree"]
fn write_seed_corpus() {
    let mut seeds: Vec<(&str, String, Vec<u8>)> = Vec::new();
    let mut all_frames = SendBatch::new();
    for (n, message) in messages().iter().enumerate() {
        let mut batch = SendBatch::new();
        encode_message(&mut batch, message, 1 << 24).unwrap();
        encode_message(&mut all_frames, message, 1 << 24).unwrap();
        let frame = batch.to_vec();
        let (aux, payload) = payload_of(&frame);
        let mut seed = aux.to_le_bytes().to_vec();
        seed.extend_from_slice(payload);
        seeds.push(("message_decoder", format!("seed-{n:02}-{}", message.body.name()), seed));
        seeds.push(("frame_decoder", format!("seed-raft-{n:02}"), frame));
    }
    // RaftBatch frames: every message kind alone in one, all of them in one, and a stream of
    // several frames (messages with a blob over 1 KiB split it: they go in Raft frames).
    let batched = |messages: &[Message], frame_bytes_max: usize| {
        let mut batch = SendBatch::new();
        for message in messages {
            encode_message_batched(&mut batch, message, frame_bytes_max).unwrap();
        }
        batch.to_vec()
    };
    let kind_of = |frame: &[u8]| decode_frame(frame, 1 << 24).unwrap().unwrap().0.kind;
    // Messages with a blob over 1 KiB travel in Raft frames of their own.
    let small: Vec<Message> = messages()
        .into_iter()
        .filter(|message| kind_of(&batched(std::slice::from_ref(message), 1 << 24)) == FrameKind::RaftBatch)
        .collect();
    assert!(small.len() >= 10);
    let mut batch_seeds: Vec<(String, Vec<u8>)> = small
        .iter()
        .enumerate()
        .map(|(n, message)| {
            (format!("seed-{n:02}-{}", message.body.name()), batched(std::slice::from_ref(message), 1 << 24))
        })
        .collect();
    batch_seeds.push(("seed-all".into(), batched(&small, 1 << 24)));
    for (name, frame) in batch_seeds {
        let (aux, payload) = payload_of(&frame);
        assert_eq!(payload.len() + FRAME_HEADER_BYTES, frame.len(), "{name}: one frame");
        let mut seed = aux.to_le_bytes().to_vec();
        seed.extend_from_slice(payload);
        seeds.push(("message_batch_decoder", name.clone(), seed));
        seeds.push(("frame_decoder", format!("seed-batch-{}", name.trim_start_matches("seed-")), frame));
    }
    let mut mixed = messages();
    mixed.push(Message {
        group: 8,
        body: MessageBody::Append {
            prev_log_index: 6,
            prev_log_term: 2,
            commit_index: 6,
            entries: vec![Entry { index: 7, term: 2, kind: EntryKind::Normal, data: Bytes::from(vec![3u8; 5000]) }],
        },
        ..mixed[0].clone()
    });
    mixed.extend(messages());
    seeds.push(("frame_decoder", "seed-batch-stream".into(), batched(&mixed, 1 << 16)));
    for (n, request) in requests().iter().enumerate() {
        let mut batch = SendBatch::new();
        encode_request(&mut batch, request, 1 << 24).unwrap();
        encode_request(&mut all_frames, request, 1 << 24).unwrap();
        let frame = batch.to_vec();
        seeds.push(("client_request_decoder", format!("seed-request-{n:02}"), payload_of(&frame).1.to_vec()));
        seeds.push(("frame_decoder", format!("seed-request-{n:02}"), frame));
    }
    for (n, response) in responses().iter().enumerate() {
        let mut batch = SendBatch::new();
        encode_response(&mut batch, 3, response, 1 << 24).unwrap();
        let frame = batch.to_vec();
        seeds.push(("client_request_decoder", format!("seed-response-{n:02}"), payload_of(&frame).1.to_vec()));
    }
    let mut ping = SendBatch::new();
    ping.push_frame(FrameKind::Ping, 0, 0, &[], 1 << 20).unwrap();
    seeds.push(("frame_decoder", "seed-ping".into(), ping.to_vec()));
    let stream = all_frames.to_vec();
    seeds.push(("frame_decoder", "seed-stream-truncated".into(), stream[..stream.len() - 5].to_vec()));
    seeds.push(("frame_decoder", "seed-stream".into(), stream));
    for (target, name, bytes) in seeds {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), bytes).unwrap();
    }
}
