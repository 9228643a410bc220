//! The wire form of Raft messages: an rkyv archive of everything but the bulk bytes, followed by
//! the bulk bytes (entry data, snapshot chunk) as raw blobs.
//!
//! `smr-raft` knows nothing of rkyv; this module owns the mirror types and the conversion. On
//! receipt the archive is validated with bytecheck before any field is read, every field is
//! range-checked as it is converted, and each entry's data becomes a slice of the received frame
//! buffer: no copy between the socket and the core. The blobs are not covered by bytecheck (they
//! are opaque bytes) but by the frame CRC and by an exact length check: the archive's declared
//! lengths must add up to the blob region, byte for byte.
//!
//! A message travels in a `Raft` frame of its own ([`encode_message`]) or, when its blobs are
//! small, as one record of a `RaftBatch` frame shared with its neighbours
//! ([`encode_message_batched`], what peer links use; layout in [`crate::frame`]), so that a small
//! message costs one record header, not a frame header and a CRC call of its own.

use std::cell::RefCell;

use bytes::Bytes;
use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Serialize};
use smr_raft::{ConfState, Entry, EntryKind, GroupId, Message, MessageBody, NodeId, SnapshotMeta};
use thiserror::Error;

use crate::batch::{BLOB_COPY_BYTES_MAX, SendBatch};
use crate::frame::{FRAME_ALIGN, FrameError, FrameKind, RECORD_HEADER_BYTES, RecordHeader};

/// Entries per Append, members per configuration: a bound checked on decode so that a valid
/// archive cannot ask the conversion for an absurd allocation (the frame bound already limits
/// it, this makes the per-entry cost explicit).
pub const MEMBERS_MAX: usize = 4096;

thread_local! {
    /// The entry list of the last Append encoded on this thread, reused so that encoding an
    /// Append allocates nothing for it.
    static WIRE_ENTRIES: RefCell<Vec<WireEntry>> = const { RefCell::new(Vec::new()) };
}

/// Entries the scratch list may keep capacity for (about 100 KiB).
const WIRE_ENTRIES_KEPT_MAX: usize = 4096;

#[derive(Archive, Serialize, Debug)]
struct WireEntry {
    index: u64,
    term: u64,
    data_bytes: u32,
    kind: u8,
}

#[derive(Archive, Serialize, Debug)]
enum WireBody {
    PreVote {
        last_log_index: u64,
        last_log_term: u64,
    },
    PreVoteResponse {
        granted: bool,
    },
    Vote {
        last_log_index: u64,
        last_log_term: u64,
        leadership_transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    Append {
        prev_log_index: u64,
        prev_log_term: u64,
        commit_index: u64,
        entries: Vec<WireEntry>,
    },
    AppendResponse {
        success: bool,
        index: u64,
        hint_index: u64,
        hint_term: u64,
    },
    Heartbeat {
        commit_index: u64,
        read_round: u64,
    },
    HeartbeatResponse {
        read_round: u64,
    },
    Snapshot {
        index: u64,
        term: u64,
        voters: Vec<u64>,
        voters_outgoing: Vec<u64>,
        learners: Vec<u64>,
        offset: u64,
        data_bytes: u32,
        last: bool,
    },
    SnapshotResponse {
        snapshot_index: u64,
        next_offset: u64,
        reject: bool,
    },
    TimeoutNow,
    ReadIndex {
        context: u64,
    },
    ReadIndexResponse {
        context: u64,
        index: u64,
    },
}

#[derive(Archive, Serialize, Debug)]
struct WireMessage {
    from: u64,
    to: u64,
    term: u64,
    body: WireBody,
}

/// Why a Raft frame's payload is not a valid message. The connection is closed and counted.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("archive length {archive} exceeds payload {payload}")]
    ArchiveBounds { archive: usize, payload: usize },
    #[error("archive failed validation: {0}")]
    Invalid(String),
    #[error("blob lengths add up to {declared} bytes but the frame carries {actual}")]
    BlobBounds { declared: u64, actual: usize },
    #[error("entry kind {0} unknown")]
    EntryKind(u8),
    #[error("node id 0 in a message")]
    NodeZero,
    #[error("{0} are not sorted, unique and nonzero")]
    Members(&'static str),
    #[error("{what} count {count} exceeds {max}")]
    TooMany { what: &'static str, count: usize, max: usize },
    #[error("entry data of {0} bytes does not fit a frame length")]
    EntryTooLarge(usize),
    #[error("batch frame: {0}")]
    Records(&'static str),
}

/// Why a message could not be queued for sending.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("serialization failed: {0}")]
    Serialize(String),
}

fn blob_len(bytes: &Bytes) -> Result<u32, WireError> {
    u32::try_from(bytes.len()).map_err(|_| WireError::EntryTooLarge(bytes.len()))
}

fn to_wire(message: &Message) -> Result<WireMessage, WireError> {
    let body = match &message.body {
        MessageBody::PreVote { last_log_index, last_log_term } => {
            WireBody::PreVote { last_log_index: *last_log_index, last_log_term: *last_log_term }
        }
        MessageBody::PreVoteResponse { granted } => WireBody::PreVoteResponse { granted: *granted },
        MessageBody::Vote { last_log_index, last_log_term, leadership_transfer } => WireBody::Vote {
            last_log_index: *last_log_index,
            last_log_term: *last_log_term,
            leadership_transfer: *leadership_transfer,
        },
        MessageBody::VoteResponse { granted } => WireBody::VoteResponse { granted: *granted },
        MessageBody::Append { prev_log_index, prev_log_term, commit_index, entries } => WireBody::Append {
            prev_log_index: *prev_log_index,
            prev_log_term: *prev_log_term,
            commit_index: *commit_index,
            entries: {
                let mut wire_entries = WIRE_ENTRIES.with(|scratch| std::mem::take(&mut *scratch.borrow_mut()));
                wire_entries.clear();
                for entry in entries {
                    wire_entries.push(WireEntry {
                        index: entry.index,
                        term: entry.term,
                        data_bytes: blob_len(&entry.data)?,
                        kind: entry.kind as u8,
                    });
                }
                wire_entries
            },
        },
        MessageBody::AppendResponse { success, index, hint_index, hint_term } => WireBody::AppendResponse {
            success: *success,
            index: *index,
            hint_index: *hint_index,
            hint_term: *hint_term,
        },
        MessageBody::Heartbeat { commit_index, read_round } => {
            WireBody::Heartbeat { commit_index: *commit_index, read_round: *read_round }
        }
        MessageBody::HeartbeatResponse { read_round } => WireBody::HeartbeatResponse { read_round: *read_round },
        MessageBody::Snapshot { meta, offset, data, last } => WireBody::Snapshot {
            index: meta.index,
            term: meta.term,
            voters: meta.conf.voters.clone(),
            voters_outgoing: meta.conf.voters_outgoing.clone(),
            learners: meta.conf.learners.clone(),
            offset: *offset,
            data_bytes: blob_len(data)?,
            last: *last,
        },
        MessageBody::SnapshotResponse { snapshot_index, next_offset, reject } => {
            WireBody::SnapshotResponse { snapshot_index: *snapshot_index, next_offset: *next_offset, reject: *reject }
        }
        MessageBody::TimeoutNow => WireBody::TimeoutNow,
        MessageBody::ReadIndex { context } => WireBody::ReadIndex { context: *context },
        MessageBody::ReadIndexResponse { context, index } => {
            WireBody::ReadIndexResponse { context: *context, index: *index }
        }
    };
    Ok(WireMessage { from: message.from, to: message.to, term: message.term, body })
}

/// Appends `message` to `batch` as one Raft frame. Entry data and snapshot chunks are not
/// copied into the batch when they are large; the batch holds a reference to them.
///
/// # Errors
/// The message does not fit `frame_bytes_max` (the batch is unchanged) or has a field the wire
/// cannot carry (an entry over 4 GiB).
pub fn encode_message(batch: &mut SendBatch, message: &Message, frame_bytes_max: usize) -> Result<(), EncodeError> {
    let wire = to_wire(message)?;
    let (entries, snapshot): (&[Entry], Option<&Bytes>) = match &message.body {
        MessageBody::Append { entries, .. } => (entries, None),
        MessageBody::Snapshot { data, .. } => (&[], Some(data)),
        _ => (&[], None),
    };
    let blobs = entries.iter().map(|entry| &entry.data).chain(snapshot);
    let serialized = batch.push_archive_frame(FrameKind::Raft, message.group, blobs, frame_bytes_max, |buffer| {
        rkyv::api::high::to_bytes_in::<_, rancor::Error>(&wire, buffer).map(|_| ())
    });
    if let WireBody::Append { entries, .. } = wire.body {
        // Keep the scratch list for the next Append, unless one huge Append grew it.
        if entries.capacity() <= WIRE_ENTRIES_KEPT_MAX {
            WIRE_ENTRIES.with(|scratch| *scratch.borrow_mut() = entries);
        }
    }
    match serialized {
        Ok(Ok(())) => Ok(()),
        Ok(Err(frame)) => Err(EncodeError::Frame(frame)),
        Err(error) => Err(EncodeError::Serialize(error.to_string())),
    }
}

/// Appends `message` to `batch` the way a peer link sends it: a message whose blobs are all
/// small becomes a record of a `RaftBatch` frame shared with the small messages around it; any
/// other message gets a `Raft` frame of its own, with its large blobs left in place.
///
/// # Errors
/// As [`encode_message`].
pub fn encode_message_batched(
    batch: &mut SendBatch,
    message: &Message,
    frame_bytes_max: usize,
) -> Result<(), EncodeError> {
    let small = match &message.body {
        MessageBody::Append { entries, .. } => entries.iter().all(|entry| entry.data.len() <= BLOB_COPY_BYTES_MAX),
        MessageBody::Snapshot { data, .. } => data.len() <= BLOB_COPY_BYTES_MAX,
        _ => true,
    };
    if !small {
        return encode_message(batch, message, frame_bytes_max);
    }
    let wire = to_wire(message)?;
    let (entries, snapshot): (&[Entry], Option<&Bytes>) = match &message.body {
        MessageBody::Append { entries, .. } => (entries, None),
        MessageBody::Snapshot { data, .. } => (&[], Some(data)),
        _ => (&[], None),
    };
    let blobs = entries.iter().map(|entry| &entry.data).chain(snapshot);
    let serialized = batch.push_archive_record(message.group, blobs, frame_bytes_max, |buffer| {
        rkyv::api::high::to_bytes_in::<_, rancor::Error>(&wire, buffer).map(|_| ())
    });
    if let WireBody::Append { entries, .. } = wire.body
        && entries.capacity() <= WIRE_ENTRIES_KEPT_MAX
    {
        WIRE_ENTRIES.with(|scratch| *scratch.borrow_mut() = entries);
    }
    match serialized {
        Ok(Ok(())) => Ok(()),
        Ok(Err(frame)) => Err(EncodeError::Frame(frame)),
        Err(error) => Err(EncodeError::Serialize(error.to_string())),
    }
}

/// Decodes the payload of a `RaftBatch` frame whose header announced `records` records, handing
/// each message to `each` in order.
///
/// The frame's CRC must have been checked already. Every record's length is checked against
/// what is left of the payload before it is read, every archive is validated before any of its
/// fields is read, padding must be zero, and the records must fill the payload exactly, `records`
/// of them. Messages before a bad record may have been handed on already; the caller closes the
/// connection on any error.
///
/// # Errors
/// [`WireError::Records`] for a bad record structure, or any error of [`decode_message`].
pub fn decode_message_batch(payload: &Bytes, records: u32, mut each: impl FnMut(Message)) -> Result<(), WireError> {
    let records = records as usize;
    // Each record takes at least its header: a count beyond that is a lie, refused before the
    // caller sizes anything by it.
    if records == 0 || records > payload.len() / RECORD_HEADER_BYTES {
        return Err(WireError::Records("record count does not fit the frame"));
    }
    let mut at = 0;
    for _ in 0..records {
        let header = RecordHeader::decode(&payload[at..]).ok_or(WireError::Records("record header past the frame"))?;
        let body_start = at + RECORD_HEADER_BYTES;
        let body_end = body_start
            .checked_add(header.body_bytes as usize)
            .filter(|&end| end <= payload.len())
            .ok_or(WireError::Records("record body past the frame"))?;
        let record_end = body_end.next_multiple_of(FRAME_ALIGN);
        if record_end > payload.len() || payload[body_end..record_end].iter().any(|&byte| byte != 0) {
            return Err(WireError::Records("record padding missing or not zero"));
        }
        each(decode_message_in(header.group, header.archive_bytes, payload, body_start..body_end)?);
        at = record_end;
    }
    if at != payload.len() {
        return Err(WireError::Records("bytes after the last record"));
    }
    Ok(())
}

fn check_members(
    what: &'static str,
    members: &rkyv::vec::ArchivedVec<rkyv::rend::u64_le>,
) -> Result<Vec<NodeId>, WireError> {
    if members.len() > MEMBERS_MAX {
        return Err(WireError::TooMany { what, count: members.len(), max: MEMBERS_MAX });
    }
    let members: Vec<NodeId> = members.iter().map(|id| id.to_native()).collect();
    // ConfState's invariant, checked at the trust boundary: sorted, no duplicates, no node 0.
    if members.first() == Some(&0) || members.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(WireError::Members(what));
    }
    Ok(members)
}

fn check_conf(conf: ConfState) -> Result<ConfState, WireError> {
    let overlaps = |list: &[NodeId]| list.iter().any(|id| conf.learners.binary_search(id).is_ok());
    if overlaps(&conf.voters) || overlaps(&conf.voters_outgoing) {
        return Err(WireError::Members("learners that are also voters"));
    }
    Ok(conf)
}

/// Decodes the payload of a Raft frame of `group` whose archive is its first `archive_bytes`.
///
/// `payload` should be a slice of the received buffer: entry data and snapshot chunks come out
/// as sub-slices of it, with no copy. When the payload is not 8-aligned in memory (a buffer from
/// an allocator that does not align), the archive, and only the archive, is copied to validate.
///
/// # Errors
/// Any [`WireError`]; nothing is built from an archive that failed validation.
pub fn decode_message(group: GroupId, archive_bytes: u32, payload: &Bytes) -> Result<Message, WireError> {
    decode_message_in(group, archive_bytes, payload, 0..payload.len())
}

/// [`decode_message`] of the payload `buffer[range]`, without making a `Bytes` of it: entry
/// data are sliced from `buffer` directly, one reference count each.
fn decode_message_in(
    group: GroupId,
    archive_bytes: u32,
    buffer: &Bytes,
    range: std::ops::Range<usize>,
) -> Result<Message, WireError> {
    let payload_start = range.start;
    let payload = &buffer[range];
    let archive_len = archive_bytes as usize;
    if archive_len > payload.len() {
        return Err(WireError::ArchiveBounds { archive: archive_len, payload: payload.len() });
    }
    let blobs_start = archive_len.next_multiple_of(FRAME_ALIGN).min(payload.len());
    let archive_slice = &payload[..archive_len];
    let copied: AlignedVec<16>;
    let archive_slice = if (archive_slice.as_ptr() as usize).is_multiple_of(FRAME_ALIGN) {
        archive_slice
    } else {
        let mut aligned = AlignedVec::with_capacity(archive_len);
        aligned.extend_from_slice(archive_slice);
        copied = aligned;
        copied.as_slice()
    };
    let wire = rkyv::access::<ArchivedWireMessage, rancor::Error>(archive_slice)
        .map_err(|error| WireError::Invalid(error.to_string()))?;
    let blobs_len = payload.len() - blobs_start;
    let from = wire.from.to_native();
    let to = wire.to.to_native();
    if from == 0 || to == 0 {
        return Err(WireError::NodeZero);
    }
    let mut blob_offset: usize = 0;
    let mut take_blob = |bytes: u32| -> Result<Bytes, WireError> {
        let end = blob_offset
            .checked_add(bytes as usize)
            .filter(|&end| end <= blobs_len)
            .ok_or(WireError::BlobBounds { declared: blob_offset as u64 + u64::from(bytes), actual: blobs_len })?;
        let blob = buffer.slice(payload_start + blobs_start + blob_offset..payload_start + blobs_start + end);
        blob_offset = end;
        Ok(blob)
    };
    let body = match &wire.body {
        ArchivedWireBody::PreVote { last_log_index, last_log_term } => MessageBody::PreVote {
            last_log_index: last_log_index.to_native(),
            last_log_term: last_log_term.to_native(),
        },
        ArchivedWireBody::PreVoteResponse { granted } => MessageBody::PreVoteResponse { granted: *granted },
        ArchivedWireBody::Vote { last_log_index, last_log_term, leadership_transfer } => MessageBody::Vote {
            last_log_index: last_log_index.to_native(),
            last_log_term: last_log_term.to_native(),
            leadership_transfer: *leadership_transfer,
        },
        ArchivedWireBody::VoteResponse { granted } => MessageBody::VoteResponse { granted: *granted },
        ArchivedWireBody::Append { prev_log_index, prev_log_term, commit_index, entries } => {
            let mut decoded = Vec::with_capacity(entries.len());
            for entry in entries.iter() {
                let kind = EntryKind::from_u8(entry.kind).map_err(WireError::EntryKind)?;
                decoded.push(Entry {
                    index: entry.index.to_native(),
                    term: entry.term.to_native(),
                    kind,
                    data: take_blob(entry.data_bytes.to_native())?,
                });
            }
            MessageBody::Append {
                prev_log_index: prev_log_index.to_native(),
                prev_log_term: prev_log_term.to_native(),
                commit_index: commit_index.to_native(),
                entries: decoded,
            }
        }
        ArchivedWireBody::AppendResponse { success, index, hint_index, hint_term } => MessageBody::AppendResponse {
            success: *success,
            index: index.to_native(),
            hint_index: hint_index.to_native(),
            hint_term: hint_term.to_native(),
        },
        ArchivedWireBody::Heartbeat { commit_index, read_round } => {
            MessageBody::Heartbeat { commit_index: commit_index.to_native(), read_round: read_round.to_native() }
        }
        ArchivedWireBody::HeartbeatResponse { read_round } => {
            MessageBody::HeartbeatResponse { read_round: read_round.to_native() }
        }
        ArchivedWireBody::Snapshot { index, term, voters, voters_outgoing, learners, offset, data_bytes, last } => {
            MessageBody::Snapshot {
                meta: Box::new(SnapshotMeta {
                    index: index.to_native(),
                    term: term.to_native(),
                    conf: check_conf(ConfState {
                        voters: check_members("voters", voters)?,
                        voters_outgoing: check_members("voters_outgoing", voters_outgoing)?,
                        learners: check_members("learners", learners)?,
                    })?,
                }),
                offset: offset.to_native(),
                data: take_blob(data_bytes.to_native())?,
                last: *last,
            }
        }
        ArchivedWireBody::SnapshotResponse { snapshot_index, next_offset, reject } => MessageBody::SnapshotResponse {
            snapshot_index: snapshot_index.to_native(),
            next_offset: next_offset.to_native(),
            reject: *reject,
        },
        ArchivedWireBody::TimeoutNow => MessageBody::TimeoutNow,
        ArchivedWireBody::ReadIndex { context } => MessageBody::ReadIndex { context: context.to_native() },
        ArchivedWireBody::ReadIndexResponse { context, index } => {
            MessageBody::ReadIndexResponse { context: context.to_native(), index: index.to_native() }
        }
    };
    if blob_offset != blobs_len {
        return Err(WireError::BlobBounds { declared: blob_offset as u64, actual: blobs_len });
    }
    Ok(Message { group, from, to, term: wire.term.to_native(), body })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::frame::{FRAME_HEADER_BYTES, decode_frame};
    use proptest::prelude::*;

    const MAX: usize = 1 << 22;

    /// Encodes `message` alone in a frame and decodes it back, the way a receiver does.
    pub(crate) fn round_trip(message: &Message) -> Result<Message, WireError> {
        let mut batch = SendBatch::new();
        encode_message(&mut batch, message, MAX).unwrap();
        let bytes = Bytes::from(batch.to_vec());
        let (header, total) = decode_frame(&bytes, MAX).unwrap().unwrap();
        assert_eq!(total, bytes.len());
        let payload = bytes.slice(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.length as usize);
        decode_message(header.group, header.aux, &payload)
    }

    fn entry(index: u64, data_bytes: usize) -> Entry {
        Entry { index, term: 3, kind: EntryKind::Normal, data: Bytes::from(vec![index as u8; data_bytes]) }
    }

    pub(crate) fn arb_message() -> impl Strategy<Value = Message> {
        let entries = proptest::collection::vec(
            (any::<u64>(), any::<u64>(), 0u8..3, proptest::collection::vec(any::<u8>(), 0..1500)),
            0..6,
        )
        .prop_map(|entries| {
            entries
                .into_iter()
                .map(|(index, term, kind, data)| Entry {
                    index,
                    term,
                    kind: EntryKind::from_u8(kind).unwrap(),
                    data: Bytes::from(data),
                })
                .collect::<Vec<_>>()
        });
        let body = prop_oneof![
            (any::<u64>(), any::<u64>())
                .prop_map(|(last_log_index, last_log_term)| { MessageBody::PreVote { last_log_index, last_log_term } }),
            any::<bool>().prop_map(|granted| MessageBody::VoteResponse { granted }),
            (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
                |(last_log_index, last_log_term, leadership_transfer)| {
                    MessageBody::Vote { last_log_index, last_log_term, leadership_transfer }
                }
            ),
            (any::<u64>(), any::<u64>(), any::<u64>(), entries).prop_map(
                |(prev_log_index, prev_log_term, commit_index, entries)| MessageBody::Append {
                    prev_log_index,
                    prev_log_term,
                    commit_index,
                    entries
                }
            ),
            (any::<bool>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(success, index, hint_index, hint_term)| MessageBody::AppendResponse {
                    success,
                    index,
                    hint_index,
                    hint_term
                }
            ),
            (any::<u64>(), any::<u64>())
                .prop_map(|(commit_index, read_round)| { MessageBody::Heartbeat { commit_index, read_round } }),
            (
                any::<u64>(),
                proptest::collection::vec(1u64..10, 0..5),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..3000),
                any::<bool>()
            )
                .prop_map(|(index, voters, offset, data, last)| {
                    MessageBody::Snapshot {
                        meta: Box::new(SnapshotMeta {
                            index,
                            term: 2,
                            conf: ConfState {
                                // Valid memberships only: voters 1..=9 sorted, learners above.
                                learners: voters
                                    .iter()
                                    .map(|id| id + 10)
                                    .collect::<std::collections::BTreeSet<_>>()
                                    .into_iter()
                                    .collect(),
                                voters: voters
                                    .into_iter()
                                    .collect::<std::collections::BTreeSet<_>>()
                                    .into_iter()
                                    .collect(),
                                voters_outgoing: vec![],
                            },
                        }),
                        offset,
                        data: Bytes::from(data),
                        last,
                    }
                }),
            Just(MessageBody::TimeoutNow),
            (any::<u64>(), any::<u64>()).prop_map(|(context, index)| MessageBody::ReadIndexResponse { context, index }),
        ];
        (any::<u64>(), 1u64..u64::MAX, 1u64..u64::MAX, any::<u64>(), body)
            .prop_map(|(group, from, to, term, body)| Message { group, from, to, term, body })
    }

    #[test]
    fn append_entries_arrive_as_slices_of_the_frame() {
        let message = Message {
            group: 9,
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::Append {
                prev_log_index: 4,
                prev_log_term: 2,
                commit_index: 4,
                entries: vec![entry(5, 10), entry(6, 4096), entry(7, 0)],
            },
        };
        let mut batch = SendBatch::new();
        encode_message(&mut batch, &message, MAX).unwrap();
        let bytes = Bytes::from(batch.to_vec());
        let (header, _) = decode_frame(&bytes, MAX).unwrap().unwrap();
        let payload = bytes.slice(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.length as usize);
        let decoded = decode_message(header.group, header.aux, &payload).unwrap();
        assert_eq!(decoded, message);
        let MessageBody::Append { entries, .. } = &decoded.body else { unreachable!() };
        let frame_range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
        assert!(frame_range.contains(&(entries[1].data.as_ptr() as usize)), "entry data was copied");
    }

    #[test]
    fn message_larger_than_a_frame_is_refused_and_leaves_the_batch_unchanged() {
        let message = Message {
            group: 1,
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::Append {
                prev_log_index: 0,
                prev_log_term: 0,
                commit_index: 0,
                entries: vec![entry(1, 8192)],
            },
        };
        let mut batch = SendBatch::new();
        assert!(matches!(
            encode_message(&mut batch, &message, 4096),
            Err(EncodeError::Frame(FrameError::TooLarge { .. }))
        ));
        assert!(batch.is_empty());
        assert_eq!(batch.to_vec().len(), 0);
    }

    #[test]
    fn declared_blob_lengths_must_match_the_frame() {
        let message = Message {
            group: 1,
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::Append {
                prev_log_index: 0,
                prev_log_term: 0,
                commit_index: 0,
                entries: vec![entry(1, 2000)],
            },
        };
        let mut batch = SendBatch::new();
        encode_message(&mut batch, &message, MAX).unwrap();
        let bytes = Bytes::from(batch.to_vec());
        let (header, _) = decode_frame(&bytes, MAX).unwrap().unwrap();
        let payload = bytes.slice(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.length as usize);
        let short = payload.slice(..payload.len() - 1);
        assert!(matches!(decode_message(1, header.aux, &short), Err(WireError::BlobBounds { .. })));
        let mut long = payload.to_vec();
        long.push(0);
        assert!(matches!(decode_message(1, header.aux, &Bytes::from(long)), Err(WireError::BlobBounds { .. })));
    }

    #[test]
    fn membership_breaking_conf_state_invariants_is_refused() {
        let snapshot = |voters: Vec<u64>, learners: Vec<u64>| Message {
            group: 1,
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::Snapshot {
                meta: Box::new(SnapshotMeta {
                    index: 5,
                    term: 1,
                    conf: ConfState { voters, voters_outgoing: vec![], learners },
                }),
                offset: 0,
                data: Bytes::new(),
                last: true,
            },
        };
        assert!(round_trip(&snapshot(vec![1, 2, 3], vec![4])).is_ok());
        for (voters, learners) in
            [(vec![2, 1], vec![]), (vec![1, 1], vec![]), (vec![0, 1], vec![]), (vec![1, 2], vec![2])]
        {
            assert!(
                matches!(round_trip(&snapshot(voters.clone(), learners.clone())), Err(WireError::Members(_))),
                "{voters:?} {learners:?}"
            );
        }
    }

    /// Every message in a stream of Raft and RaftBatch frames, as a peer's reader decodes it.
    fn decode_stream(bytes: &Bytes) -> Vec<Message> {
        let mut messages = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let (header, total) = decode_frame(&bytes[at..], MAX).unwrap().unwrap();
            let payload = bytes.slice(at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + header.length as usize);
            match header.kind {
                FrameKind::Raft => messages.push(decode_message(header.group, header.aux, &payload).unwrap()),
                FrameKind::RaftBatch => decode_message_batch(&payload, header.aux, |m| messages.push(m)).unwrap(),
                kind => panic!("{kind:?}"),
            }
            at += total;
        }
        messages
    }

    #[test]
    fn small_messages_share_batch_frames_and_large_ones_get_their_own() {
        let append = |entries| Message {
            group: 4,
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::Append { prev_log_index: 0, prev_log_term: 0, commit_index: 0, entries },
        };
        let messages = vec![
            append(vec![entry(1, 64)]),
            append(vec![entry(2, 64), entry(3, 1024)]),
            append(vec![entry(4, 1025)]),
            append(vec![entry(5, 0)]),
            Message { group: 5, ..append(vec![entry(6, 10)]) },
        ];
        let mut batch = SendBatch::new();
        for message in &messages {
            encode_message_batched(&mut batch, message, MAX).unwrap();
        }
        // RaftBatch(2 records), Raft, RaftBatch(2 records, two groups).
        assert_eq!((batch.frames(), batch.messages()), (3, 5));
        let bytes = Bytes::from(batch.to_vec());
        assert_eq!(decode_stream(&bytes), messages);
        let MessageBody::Append { entries, .. } = &decode_stream(&bytes)[0].body else { unreachable!() };
        let frame_range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
        assert!(frame_range.contains(&(entries[0].data.as_ptr() as usize)), "entry data was copied");
    }

    #[test]
    fn a_record_that_does_not_fit_the_open_frame_starts_a_new_one() {
        let message = |index: u64| Message {
            group: 1,
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::Append {
                prev_log_index: 0,
                prev_log_term: 0,
                commit_index: 0,
                entries: (0..40).map(|offset| entry(index + offset, 100)).collect(),
            },
        };
        let mut batch = SendBatch::new();
        let frame_bytes_max = 8192;
        let messages: Vec<Message> = (0..4).map(|n| message(n * 100)).collect();
        for message in &messages {
            encode_message_batched(&mut batch, message, frame_bytes_max).unwrap();
        }
        assert_eq!((batch.frames(), batch.messages()), (4, 4));
        let too_large = Message {
            body: MessageBody::Append {
                prev_log_index: 0,
                prev_log_term: 0,
                commit_index: 0,
                entries: (0..100).map(|index| entry(index, 100)).collect(),
            },
            ..messages[0].clone()
        };
        let bytes_before = batch.bytes();
        assert!(matches!(
            encode_message_batched(&mut batch, &too_large, frame_bytes_max),
            Err(EncodeError::Frame(FrameError::TooLarge { .. }))
        ));
        assert_eq!((batch.bytes(), batch.frames(), batch.messages()), (bytes_before, 4, 4));
        let bytes = Bytes::from(batch.to_vec());
        assert!(bytes.len() <= 4 * frame_bytes_max);
        assert_eq!(decode_stream(&bytes), messages);
    }

    proptest! {
        #[test]
        fn batched_messages_round_trip_in_order(
            messages in proptest::collection::vec(arb_message(), 1..40),
            frame_bytes_max in prop_oneof![Just(MAX), Just(8192usize)],
        ) {
            let mut batch = SendBatch::new();
            let mut sent = Vec::new();
            for message in messages {
                if encode_message_batched(&mut batch, &message, frame_bytes_max).is_ok() {
                    sent.push(message);
                }
            }
            prop_assert_eq!(batch.messages(), sent.len());
            let bytes = Bytes::from(batch.to_vec());
            prop_assert_eq!(decode_stream(&bytes), sent);
        }

        #[test]
        fn decode_of_arbitrary_batch_payload_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), records in 0u32..40) {
            let _ = decode_message_batch(&Bytes::from(bytes), records, drop);
        }

        #[test]
        fn message_round_trips(message in arb_message()) {
            prop_assert_eq!(round_trip(&message).unwrap(), message);
        }

        #[test]
        fn several_messages_in_one_batch_decode_in_order(messages in proptest::collection::vec(arb_message(), 1..6)) {
            let mut batch = SendBatch::new();
            for message in &messages {
                encode_message(&mut batch, message, MAX).unwrap();
            }
            let bytes = Bytes::from(batch.to_vec());
            let mut at = 0;
            for message in &messages {
                let (header, total) = decode_frame(&bytes[at..], MAX).unwrap().unwrap();
                let payload = bytes.slice(at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + header.length as usize);
                prop_assert_eq!(&decode_message(header.group, header.aux, &payload).unwrap(), message);
                at += total;
            }
            prop_assert_eq!(at, bytes.len());
        }

        #[test]
        fn decode_of_arbitrary_payload_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), aux in 0u32..600) {
            let _ = decode_message(1, aux, &Bytes::from(bytes));
        }
    }
}
