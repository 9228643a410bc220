//! Entry points of the fuzz targets (`net/fuzz`), shared with the corpus replay test so that
//! both exercise exactly the same code. Each takes arbitrary bytes and must never panic, hang
//! or allocate beyond the frame limit; where a decode succeeds, re-encoding must give a value
//! that decodes to the same thing (the codecs are canonical).

use bytes::Bytes;
use smr_raft::Message;

use crate::batch::SendBatch;
use crate::client_proto::{decode_request, decode_response, encode_request, encode_response};
use crate::frame::{FRAME_HEADER_BYTES, FrameKind, decode_frame};
use crate::wire::{decode_message, decode_message_batch, encode_message, encode_message_batched};

/// Frame limit the targets use: small, so that the fuzzer also reaches the oversize path.
pub const FUZZ_FRAME_BYTES_MAX: usize = 1 << 16;

/// Decodes as many frames as `data` holds, as a peer connection's reader would, including the
/// Raft messages of `Raft` and `RaftBatch` frames whose CRC holds.
pub fn frame_decoder(data: &[u8]) {
    let data = Bytes::copy_from_slice(data);
    let mut at = 0;
    while let Ok(Some((header, total))) = decode_frame(&data[at..], FUZZ_FRAME_BYTES_MAX) {
        assert!(total >= FRAME_HEADER_BYTES + header.length as usize && total <= FUZZ_FRAME_BYTES_MAX);
        let payload = data.slice(at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + header.length as usize);
        match header.kind {
            FrameKind::Raft => {
                let _ = decode_message(header.group, header.aux, &payload);
            }
            FrameKind::RaftBatch => {
                let _ = decode_message_batch(&payload, header.aux, drop);
            }
            _ => {}
        }
        at += total;
    }
}

/// Every Raft message in a stream of `Raft` and `RaftBatch` frames, in order.
fn decode_stream(bytes: &Bytes) -> Vec<Message> {
    let mut messages = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (header, total) =
            decode_frame(&bytes[at..], usize::MAX >> 2).expect("valid frame").expect("complete frame");
        let payload = bytes.slice(at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + header.length as usize);
        match header.kind {
            FrameKind::Raft => {
                messages.push(decode_message(header.group, header.aux, &payload).expect("valid message"))
            }
            FrameKind::RaftBatch => {
                decode_message_batch(&payload, header.aux, |message| messages.push(message)).expect("valid records");
            }
            kind => panic!("unexpected frame kind {kind:?}"),
        }
        at += total;
    }
    messages
}

/// The first 4 bytes are a `RaftBatch` frame's `aux` (the record count), the rest its payload.
/// Whatever decodes re-encodes, the way a link sends it, into frames that decode to the same
/// messages.
pub fn message_batch_decoder(data: &[u8]) {
    let Some((aux, payload)) = data.split_first_chunk::<4>() else {
        return;
    };
    let payload = Bytes::copy_from_slice(payload);
    let mut messages = Vec::new();
    if decode_message_batch(&payload, u32::from_le_bytes(*aux), |message| messages.push(message)).is_ok() {
        let mut batch = SendBatch::new();
        for message in &messages {
            encode_message_batched(&mut batch, message, usize::MAX >> 2).expect("a decoded message re-encodes");
        }
        assert_eq!(batch.messages(), messages.len());
        assert_eq!(decode_stream(&Bytes::from(batch.to_vec())), messages);
    }
}

/// The first 4 bytes are the frame's `aux` (the archive length), the rest its payload.
pub fn message_decoder(data: &[u8]) {
    let Some((aux, payload)) = data.split_first_chunk::<4>() else {
        return;
    };
    let payload = Bytes::copy_from_slice(payload);
    if let Ok(message) = decode_message(7, u32::from_le_bytes(*aux), &payload) {
        let mut batch = SendBatch::new();
        encode_message(&mut batch, &message, usize::MAX >> 2).expect("a decoded message re-encodes");
        let bytes = Bytes::from(batch.to_vec());
        let (header, _) = decode_frame(&bytes, usize::MAX >> 2).expect("valid frame").expect("complete frame");
        let again = bytes.slice(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.length as usize);
        assert_eq!(decode_message(7, header.aux, &again).as_ref(), Ok(&message));
    }
}

/// Client requests (and responses, which the client library decodes).
pub fn client_request_decoder(data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    if let Ok(request) = decode_request(3, &payload) {
        let mut batch = SendBatch::new();
        encode_request(&mut batch, &request, usize::MAX >> 2).expect("a decoded request re-encodes");
        let bytes = Bytes::from(batch.to_vec());
        let (header, _) = decode_frame(&bytes, usize::MAX >> 2).expect("valid frame").expect("complete frame");
        let again = bytes.slice(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.length as usize);
        assert_eq!(again, payload, "request encoding is canonical");
    }
    if let Ok(response) = decode_response(&payload) {
        let mut batch = SendBatch::new();
        encode_response(&mut batch, 3, &response, usize::MAX >> 2).expect("a decoded response re-encodes");
        let bytes = Bytes::from(batch.to_vec());
        let (header, _) = decode_frame(&bytes, usize::MAX >> 2).expect("valid frame").expect("complete frame");
        let again = bytes.slice(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.length as usize);
        assert_eq!(decode_response(&again).as_ref(), Ok(&response));
    }
}
