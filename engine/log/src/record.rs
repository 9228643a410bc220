//! The on-disk record: a fixed 32-byte header followed by the payload, padded to 16 bytes.
//!
//! ```text
//! offset  size  field
//!      0     4  crc                CRC32C seeded with the segment's key, of bytes 4..32 of the
//!                                  header, then of the payload
//!      4     4  length             payload bytes, without padding
//!      8     8  index
//!     16     8  term
//!     24     1  kind               EntryKind as u8
//!     25     1  claim_segment_back how many segments before this one the durable frontier lies;
//!                                  0xFF = no claim
//!     26     2  tag                the top 16 bits of the salt of the segment's current use
//!     28     4  claim_offset_units offset of the durable frontier in that segment, in 16-byte units
//! ```
//!
//! Records start at 16-byte aligned offsets and the header is 32 bytes, so every payload starts
//! 16-byte aligned inside the mapping (the mapping itself is page aligned): that is the alignment
//! rkyv's archived types need to be read in place.
//!
//! The CRC covers index, term, kind and length, so a record that lands at the wrong place (a
//! misdirected write) or carries the wrong index is caught by the index check that follows the CRC
//! check, never accepted as the entry that should be there.
//!
//! The CRC is **seeded with the segment's key** ([`SegmentKey`]): its sequence and a random salt
//! drawn for each use of the file, both in the segment's header. A segment file is reused under a
//! new sequence once a compaction drops it (`segment.rs`), keeping the bytes of its earlier use:
//! its records, and client payloads, which anyone may fill with record images. Neither can carry
//! a CRC under a salt that was drawn after they were written, so they never read as records of
//! this use (by accident: one chance in 2^48, the tag and then the CRC). The tag is checked
//! before the CRC, so the bytes of an earlier use cost recovery no CRC over their payloads. A
//! record written to the wrong segment file fails its CRC too. A CRC with a secret seed is not a
//! MAC: whoever can read the raw bytes of one record of a use (the disk, a copy of the data
//! directory) can work the seed out and forge records of that use. The salt keeps out what a
//! client can send, not what a reader of the disk can write.
//!
//! The **durable-frontier claim** is how recovery tells a torn tail from corruption. Every record
//! states the position (segment, offset) up to which all earlier writes had been fsynced when it
//! was written. After a crash the unsynced writes may have reached the disk in any subset, so a
//! hole followed by valid records is normal in the unsynced tail. But if any valid record after a
//! bad position claims a frontier beyond it, the bad bytes had been fsynced: that is corruption.

use smr_raft::{Entry, EntryKind, Index, Term};

/// Size of a record header in bytes.
pub(crate) const RECORD_HEADER_BYTES: usize = 32;
/// Alignment of record starts and therefore of payloads.
pub(crate) const RECORD_ALIGN_BYTES: usize = 16;
/// `claim_segment_back` value meaning "this record makes no claim".
const CLAIM_NONE: u8 = 0xFF;

/// The record header as laid out on disk (little-endian fields). Encoding and decoding go
/// through explicit byte offsets, so this struct documents the layout and checks at compile time
/// that it has no padding.
#[repr(C)]
#[allow(dead_code)] // Never constructed: the layout check below is its purpose.
struct RecordHeaderLayout {
    crc: u32,
    length: u32,
    index: u64,
    term: u64,
    kind: u8,
    claim_segment_back: u8,
    tag: u16,
    claim_offset_units: u32,
}

const _: () = assert!(size_of::<RecordHeaderLayout>() == RECORD_HEADER_BYTES);
const _: () = assert!(RECORD_HEADER_BYTES.is_multiple_of(RECORD_ALIGN_BYTES));

/// What ties a record to one use of one segment file: the segment's sequence, and the salt drawn
/// at random when the file was made or reused for it (both in the segment's header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentKey {
    pub(crate) sequence: u64,
    pub(crate) salt: u64,
}

impl SegmentKey {
    /// The CRC state every record CRC of this segment starts from.
    fn crc_seed(self) -> u32 {
        crc32c::crc32c_append(crc32c::crc32c(&self.sequence.to_le_bytes()), &self.salt.to_le_bytes())
    }

    /// The `tag` every record header of this segment carries.
    pub(crate) fn tag(self) -> u16 {
        (self.salt >> 48) as u16
    }
}

/// A position in the global write order: segments are written in sequence order, and inside a
/// segment at increasing offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Position {
    pub(crate) sequence: u64,
    pub(crate) offset: u64,
}

/// A decoded record header whose CRC has not been checked yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub(crate) crc: u32,
    pub(crate) length: u32,
    pub(crate) index: Index,
    pub(crate) term: Term,
    pub(crate) kind: u8,
    pub(crate) claim_segment_back: u8,
    pub(crate) tag: u16,
    pub(crate) claim_offset_units: u32,
}

/// Bytes a record with `payload_bytes` of payload takes on disk, header and padding included.
#[inline]
pub(crate) fn record_bytes(payload_bytes: usize) -> usize {
    RECORD_HEADER_BYTES + payload_bytes.next_multiple_of(RECORD_ALIGN_BYTES)
}

/// Encodes the frontier claim relative to the record's own position. A frontier that cannot be
/// expressed (more than 254 segments back, or an offset beyond 64 GiB) is dropped: claiming less
/// is always safe, claiming more never is.
fn encode_claim(own: Position, frontier: Option<Position>) -> (u8, u32) {
    let Some(frontier) = frontier else {
        return (CLAIM_NONE, 0);
    };
    debug_assert!(frontier <= own, "a record cannot claim a frontier after itself");
    let back = own.sequence - frontier.sequence;
    let units = frontier.offset / RECORD_ALIGN_BYTES as u64;
    if back >= u64::from(CLAIM_NONE) || units > u64::from(u32::MAX) {
        return (CLAIM_NONE, 0);
    }
    // Rounding the offset down to 16 bytes claims at most 15 bytes less: still safe.
    (back as u8, units as u32)
}

impl RecordHeader {
    /// Decodes the 32 header bytes at the start of `bytes`.
    ///
    /// # Panics
    /// If `bytes` is shorter than a header (a caller bug: callers check the room first).
    pub(crate) fn decode(bytes: &[u8]) -> RecordHeader {
        let b = &bytes[..RECORD_HEADER_BYTES];
        RecordHeader {
            crc: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
            length: u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
            index: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            term: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            kind: b[24],
            claim_segment_back: b[25],
            tag: u16::from_le_bytes(b[26..28].try_into().expect("2 bytes")),
            claim_offset_units: u32::from_le_bytes(b[28..32].try_into().expect("4 bytes")),
        }
    }

    /// The durable frontier this record claims, given where the record itself lies.
    pub(crate) fn claim(&self, own: Position) -> Option<Position> {
        if self.claim_segment_back == CLAIM_NONE {
            return None;
        }
        let sequence = own.sequence.checked_sub(u64::from(self.claim_segment_back))?;
        let claim = Position { sequence, offset: u64::from(self.claim_offset_units) * RECORD_ALIGN_BYTES as u64 };
        // A claim beyond the record itself is nonsense (only a corrupt record could carry one,
        // and it would fail its CRC); ignore it rather than trust it.
        (claim <= own).then_some(claim)
    }
}

/// Appends `entry` encoded (header, payload, zero padding) to `out`.
///
/// It will be written at `offset` of the segment `key` names; `frontier` is the durable frontier
/// to claim.
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    entry: &Entry,
    key: SegmentKey,
    offset: u64,
    frontier: Option<Position>,
) {
    debug_assert_eq!(offset % RECORD_ALIGN_BYTES as u64, 0);
    let payload = &entry.data[..];
    let length = u32::try_from(payload.len()).expect("payload length checked against entry_bytes_max");
    let (back, units) = encode_claim(Position { sequence: key.sequence, offset }, frontier);
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&entry.index.to_le_bytes());
    out.extend_from_slice(&entry.term.to_le_bytes());
    out.push(entry.kind as u8);
    out.push(back);
    out.extend_from_slice(&key.tag().to_le_bytes());
    out.extend_from_slice(&units.to_le_bytes());
    out.extend_from_slice(payload);
    let padding = payload.len().next_multiple_of(RECORD_ALIGN_BYTES) - payload.len();
    out.extend_from_slice(&[0u8; RECORD_ALIGN_BYTES][..padding]);
    let crc = record_crc(key, &out[start + 4..start + RECORD_HEADER_BYTES], payload);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// CRC32C from the segment key's seed, of the header after its CRC field, then of the payload
/// (padding excluded).
#[inline]
fn record_crc(key: SegmentKey, header_tail: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(key.crc_seed(), header_tail), payload)
}

/// Why the bytes at a position are not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordFault {
    /// The 32 header bytes are all zero: never written (or zeroed).
    Zero,
    /// The header does not fit before the end of the segment.
    NoRoom,
    /// A length or kind that no writer produces, or another segment use's tag.
    Implausible,
    /// The CRC does not match (a torn or corrupt record, or one of the segment file's earlier
    /// use).
    Crc,
}

/// A record that passed its checks, found at `offset` of a segment's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ValidRecord {
    pub(crate) header: RecordHeader,
    pub(crate) kind: EntryKind,
    pub(crate) offset: u64,
    /// Offset just past the record's padding: where the next record starts.
    pub(crate) end: u64,
}

#[cfg(test)]
impl ValidRecord {
    /// The payload's byte range inside the segment.
    pub(crate) fn payload_range(&self) -> std::ops::Range<usize> {
        let start = self.offset as usize + RECORD_HEADER_BYTES;
        start..start + self.header.length as usize
    }
}

/// Checks the record at `offset` of `segment` (the whole segment's bytes; `key` is the
/// segment's). Lengths are checked against `entry_bytes_max` and the segment's end, and the tag
/// against the key, before anything is read past the header.
pub(crate) fn check_record(
    segment: &[u8],
    key: SegmentKey,
    offset: u64,
    entry_bytes_max: u64,
) -> Result<ValidRecord, RecordFault> {
    let start = offset as usize;
    let Some(header_bytes) = segment.get(start..start + RECORD_HEADER_BYTES) else {
        return Err(RecordFault::NoRoom);
    };
    if header_bytes.iter().all(|&b| b == 0) {
        return Err(RecordFault::Zero);
    }
    let header = RecordHeader::decode(header_bytes);
    let Ok(kind) = EntryKind::from_u8(header.kind) else {
        return Err(RecordFault::Implausible);
    };
    if header.tag != key.tag() || header.index == 0 || u64::from(header.length) > entry_bytes_max {
        return Err(RecordFault::Implausible);
    }
    let total = record_bytes(header.length as usize);
    let Some(record) = segment.get(start..start + total) else {
        return Err(RecordFault::Implausible);
    };
    let payload = &record[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + header.length as usize];
    if record_crc(key, &header_bytes[4..], payload) != header.crc {
        return Err(RecordFault::Crc);
    }
    Ok(ValidRecord { header, kind, offset, end: offset + total as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: SegmentKey = SegmentKey { sequence: 3, salt: 0x1234_5678_9abc_def0 };

    fn one(payload: &[u8], index: Index) -> Vec<u8> {
        let mut out = Vec::new();
        let entry = Entry { index, term: 7, kind: EntryKind::Normal, data: bytes::Bytes::copy_from_slice(payload) };
        encode_record(&mut out, &entry, KEY, 4096, Some(Position { sequence: 2, offset: 96 }));
        out
    }

    #[test]
    fn record_round_trips_with_aligned_padding_and_claim() {
        for len in [0usize, 1, 15, 16, 17, 100] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            let bytes = one(&payload, 9);
            assert_eq!(bytes.len(), record_bytes(len));
            assert_eq!(bytes.len() % RECORD_ALIGN_BYTES, 0);
            let record = check_record(&bytes, KEY, 0, 1 << 20).expect("valid");
            assert_eq!(record.header.index, 9);
            assert_eq!(record.header.term, 7);
            assert_eq!(&bytes[record.payload_range()], &payload[..]);
            let claim = record.header.claim(Position { sequence: 3, offset: 4096 });
            assert_eq!(claim, Some(Position { sequence: 2, offset: 96 }));
        }
    }

    #[test]
    fn crc_and_tag_cover_index_term_kind_and_length() {
        let bytes = one(b"hello", 9);
        for (at, flip) in [(4usize, 1u8), (8, 1), (16, 1), (24, 1), (25, 1), (26, 1), (28, 1), (32, 1)] {
            let mut bad = bytes.clone();
            bad[at] ^= flip;
            assert!(check_record(&bad, KEY, 0, 1 << 20).is_err(), "a flip at byte {at} must be caught");
        }
    }

    #[test]
    fn a_record_is_no_record_in_any_other_segment_or_use_of_its_file() {
        // Written to segment 3 in the use KEY: read in segment 4 (the file reused under a new
        // sequence) or 2 (a misdirected write), or in segment 3 with another salt, it is not a
        // record. A salt with other top bits fails the tag, before any CRC is computed.
        let bytes = one(b"hello", 9);
        assert!(check_record(&bytes, KEY, 0, 1 << 20).is_ok());
        for sequence in [2, 4, 3 + (1 << 32)] {
            let other = SegmentKey { sequence, ..KEY };
            assert_eq!(check_record(&bytes, other, 0, 1 << 20), Err(RecordFault::Crc), "sequence {sequence}");
        }
        let low_bits = SegmentKey { salt: KEY.salt ^ 1, ..KEY };
        assert_eq!(check_record(&bytes, low_bits, 0, 1 << 20), Err(RecordFault::Crc));
        let top_bits = SegmentKey { salt: KEY.salt ^ (1 << 63), ..KEY };
        assert_eq!(check_record(&bytes, top_bits, 0, 1 << 20), Err(RecordFault::Implausible));
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_payload() {
        let mut bytes = one(b"hello", 9);
        bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(check_record(&bytes, KEY, 0, 1 << 20), Err(RecordFault::Implausible));
    }

    #[test]
    fn zero_header_reads_as_unwritten() {
        assert_eq!(check_record(&[0u8; 64], KEY, 0, 1024), Err(RecordFault::Zero));
        assert_eq!(check_record(&[0u8; 16], KEY, 0, 1024), Err(RecordFault::NoRoom));
    }
}
