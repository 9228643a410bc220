//! Frames: the unit every byte on an smr connection travels in.
//!
//! ```text
//! offset size field
//!      0    4 length    payload bytes after the header, padding excluded (u32 LE)
//!      4    4 crc32c    CRC32C of header bytes 8..24 followed by the payload
//!      8    1 kind      FrameKind
//!      9    1 flags     must be 0 (reserved for compression and the like)
//!     10    2 reserved  must be 0
//!     12    4 aux       kind-specific; for Raft frames the archive's length (blobs follow it)
//!     16    8 group     the Raft group the frame belongs to (0 for connection-level frames)
//!     24    … payload, then zero padding up to a multiple of 8
//! ```
//!
//! Every frame occupies a multiple of 8 bytes so that, in a receive buffer that starts 8-aligned,
//! every payload starts 8-aligned and an rkyv archive in it can be validated and read in place.
//! The length is checked against `frame_bytes_max` from the first 24 bytes, before any buffer
//! grows for it; the CRC covers the kind, aux and group, so a frame cannot be misrouted silently.
//!
//! ## Raft messages
//!
//! A `Raft` frame carries one message: `aux` is its archive's length, `group` its group, and the
//! payload is the archive, zero padding to a multiple of 8, then the message's blobs (entry data,
//! snapshot chunk) back to back. Large messages travel this way, so that their blobs go from the
//! sender's buffers to the kernel without a copy.
//!
//! A `RaftBatch` frame (protocol version 2) carries many small messages under one header and one
//! CRC: `aux` is the number of records (at least 1), `group` is 0, and the payload is the records
//! back to back, each starting 8-aligned:
//!
//! ```text
//! offset size field
//!      0    4 body_bytes     bytes of the body after this header, padding excluded (u32 LE)
//!      4    4 archive_bytes  the archive's length, as `aux` of a Raft frame (u32 LE)
//!      8    8 group          the message's Raft group (u64 LE)
//!     16    … body: exactly the payload a Raft frame would carry, then zero padding to 8
//! ```
//!
//! The frame's CRC covers every record; the receiver checks it before reading any record, checks
//! every record's length against what is left of the frame, validates each archive before
//! reading it, and requires the records to fill the payload exactly, in number `aux`.

use thiserror::Error;

/// Bytes of the fixed frame header.
pub const FRAME_HEADER_BYTES: usize = 24;
/// Every frame's size on the wire is a multiple of this.
pub const FRAME_ALIGN: usize = 8;
/// Bytes of the header of one record in a `RaftBatch` frame.
pub const RECORD_HEADER_BYTES: usize = 16;

/// What a frame carries. Unknown kinds are garbage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Handshake: the dialer's version, cluster, node ids and challenge.
    Hello = 1,
    /// Handshake: the acceptor's identity, challenge and proof.
    HelloReply = 2,
    /// Handshake: the dialer's proof.
    Auth = 3,
    /// Handshake refused; the payload names the reason. The sender closes after it.
    Refuse = 4,
    /// Keepalive on an idle peer connection. Empty.
    Ping = 5,
    /// One Raft message (an rkyv archive followed by its blobs).
    Raft = 16,
    /// Several small Raft messages, one record each (protocol version 2).
    RaftBatch = 17,
    /// A client request.
    ClientRequest = 32,
    /// A response to a client request.
    ClientResponse = 33,
}

impl FrameKind {
    /// Decodes the kind byte.
    ///
    /// # Errors
    /// [`FrameError::UnknownKind`] for any other byte.
    pub fn from_u8(byte: u8) -> Result<FrameKind, FrameError> {
        Ok(match byte {
            1 => FrameKind::Hello,
            2 => FrameKind::HelloReply,
            3 => FrameKind::Auth,
            4 => FrameKind::Refuse,
            5 => FrameKind::Ping,
            16 => FrameKind::Raft,
            17 => FrameKind::RaftBatch,
            32 => FrameKind::ClientRequest,
            33 => FrameKind::ClientResponse,
            other => return Err(FrameError::UnknownKind(other)),
        })
    }
}

/// A decoded, range-checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload bytes, padding excluded.
    pub length: u32,
    pub crc: u32,
    pub kind: FrameKind,
    pub aux: u32,
    pub group: u64,
}

impl FrameHeader {
    /// Bytes the whole frame occupies on the wire: header, payload and padding.
    #[inline]
    pub fn frame_bytes(&self) -> usize {
        frame_bytes(self.length as usize)
    }
}

/// Bytes a frame with `payload_bytes` of payload occupies on the wire.
#[inline]
pub fn frame_bytes(payload_bytes: usize) -> usize {
    FRAME_HEADER_BYTES + payload_bytes.next_multiple_of(FRAME_ALIGN)
}

/// Why bytes are not a valid frame. Every one of these closes the connection.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {bytes} bytes exceeds frame_bytes_max {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("reserved header bits set")]
    Reserved,
    #[error("crc mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    Crc { expected: u32, actual: u32 },
    #[error("frame kind {0:?} not expected here")]
    UnexpectedKind(FrameKind),
    #[error("connection closed in the middle of a frame")]
    Truncated,
}

#[inline]
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[inline]
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(le)
}

/// Decodes and range-checks a header from the first [`FRAME_HEADER_BYTES`] of `bytes`.
///
/// Returns `Ok(None)` when fewer bytes than a header are present. Checks the length against
/// `frame_bytes_max` here, before the caller grows any buffer for the frame.
///
/// # Errors
/// Oversize frame, unknown kind or reserved bits set.
#[inline]
pub fn decode_header(bytes: &[u8], frame_bytes_max: usize) -> Result<Option<FrameHeader>, FrameError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let length = u32_at(bytes, 0);
    let total = frame_bytes(length as usize);
    if total > frame_bytes_max {
        return Err(FrameError::TooLarge { bytes: total, max: frame_bytes_max });
    }
    let kind = FrameKind::from_u8(bytes[8])?;
    if bytes[9] != 0 || bytes[10] != 0 || bytes[11] != 0 {
        return Err(FrameError::Reserved);
    }
    Ok(Some(FrameHeader { length, crc: u32_at(bytes, 4), kind, aux: u32_at(bytes, 12), group: u64_at(bytes, 16) }))
}

/// Decodes one whole frame from the start of `bytes`: header, CRC and padding.
///
/// Returns `Ok(None)` while the frame is incomplete, else the header and the frame's size on
/// the wire; the payload is `bytes[FRAME_HEADER_BYTES..][..header.length]`.
///
/// # Errors
/// Any [`FrameError`] but `Truncated` and `UnexpectedKind`.
#[inline]
pub fn decode_frame(bytes: &[u8], frame_bytes_max: usize) -> Result<Option<(FrameHeader, usize)>, FrameError> {
    let Some(header) = decode_header(bytes, frame_bytes_max)? else {
        return Ok(None);
    };
    let total = header.frame_bytes();
    if bytes.len() < total {
        return Ok(None);
    }
    let payload_end = FRAME_HEADER_BYTES + header.length as usize;
    let actual =
        crc32c::crc32c_append(crc32c::crc32c(&bytes[8..FRAME_HEADER_BYTES]), &bytes[FRAME_HEADER_BYTES..payload_end]);
    if actual != header.crc {
        return Err(FrameError::Crc { expected: header.crc, actual });
    }
    // Padding is part of no field; insisting on zeros keeps the encoding canonical.
    if bytes[payload_end..total].iter().any(|&b| b != 0) {
        return Err(FrameError::Reserved);
    }
    Ok(Some((header, total)))
}

/// Writes the header of a frame whose payload has CRC-relevant bytes `payload_parts`, in order.
///
/// The CRC is computed over the header's bytes 8..24 and then every part, so a payload that is
/// scattered over several buffers (an archive and its blobs) needs no gathering copy.
#[inline]
pub fn write_header<'a>(
    header: &mut [u8; FRAME_HEADER_BYTES],
    kind: FrameKind,
    aux: u32,
    group: u64,
    payload_parts: impl IntoIterator<Item = &'a [u8]>,
) {
    header[8] = kind as u8;
    header[9..12].fill(0);
    header[12..16].copy_from_slice(&aux.to_le_bytes());
    header[16..24].copy_from_slice(&group.to_le_bytes());
    let mut crc = crc32c::crc32c(&header[8..FRAME_HEADER_BYTES]);
    let mut length: usize = 0;
    for part in payload_parts {
        crc = crc32c::crc32c_append(crc, part);
        length += part.len();
    }
    let length = u32::try_from(length).expect("frame payload length fits u32: callers check frame_bytes_max first");
    header[0..4].copy_from_slice(&length.to_le_bytes());
    header[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// A decoded record header of a `RaftBatch` frame (lengths not yet checked against the frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Bytes of the record's body: archive, padding, blobs; the record's own padding excluded.
    pub body_bytes: u32,
    pub archive_bytes: u32,
    pub group: u64,
}

impl RecordHeader {
    /// Decodes the record header at the start of `bytes`, `None` when fewer bytes remain.
    #[inline]
    pub fn decode(bytes: &[u8]) -> Option<RecordHeader> {
        if bytes.len() < RECORD_HEADER_BYTES {
            return None;
        }
        Some(RecordHeader { body_bytes: u32_at(bytes, 0), archive_bytes: u32_at(bytes, 4), group: u64_at(bytes, 8) })
    }
}

/// Writes the header of one record of a `RaftBatch` frame.
#[inline]
pub fn write_record_header(header: &mut [u8; RECORD_HEADER_BYTES], body_bytes: u32, archive_bytes: u32, group: u64) {
    header[0..4].copy_from_slice(&body_bytes.to_le_bytes());
    header[4..8].copy_from_slice(&archive_bytes.to_le_bytes());
    header[8..16].copy_from_slice(&group.to_le_bytes());
}

/// Appends one complete frame (header, payload, padding) to `out`.
///
/// # Errors
/// [`FrameError::TooLarge`] when the frame would exceed `frame_bytes_max`; `out` is unchanged.
pub fn encode_frame(
    out: &mut Vec<u8>,
    kind: FrameKind,
    aux: u32,
    group: u64,
    payload: &[u8],
    frame_bytes_max: usize,
) -> Result<(), FrameError> {
    let total = frame_bytes(payload.len());
    if total > frame_bytes_max {
        return Err(FrameError::TooLarge { bytes: total, max: frame_bytes_max });
    }
    let mut header = [0u8; FRAME_HEADER_BYTES];
    write_header(&mut header, kind, aux, group, [payload]);
    out.reserve(total);
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    out.resize(out.len() + (total - FRAME_HEADER_BYTES - payload.len()), 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    #[test]
    fn frame_round_trips_with_padding() {
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::Raft, 7, 42, b"hello", MAX).unwrap();
        assert_eq!(out.len(), 32);
        let (header, total) = decode_frame(&out, MAX).unwrap().unwrap();
        assert_eq!(total, 32);
        assert_eq!((header.kind, header.aux, header.group, header.length), (FrameKind::Raft, 7, 42, 5));
        assert_eq!(&out[FRAME_HEADER_BYTES..][..5], b"hello");
    }

    #[test]
    fn oversize_length_is_refused_from_the_header_alone() {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        header[8] = FrameKind::Raft as u8;
        assert!(matches!(decode_header(&header, MAX), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::ClientRequest, 1, 2, b"some payload bytes", MAX).unwrap();
        for bit in 0..out.len() * 8 {
            let mut corrupt = out.clone();
            corrupt[bit / 8] ^= 1 << (bit % 8);
            // A flip in the length makes the frame look incomplete or oversize; anything else
            // is an error. It is never accepted as the original frame.
            assert!(!matches!(decode_frame(&corrupt, MAX), Ok(Some(_))), "bit {bit} flipped and frame still accepted");
        }
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..2000), aux: u32, group: u64) {
            let mut out = Vec::new();
            encode_frame(&mut out, FrameKind::ClientResponse, aux, group, &payload, MAX).unwrap();
            prop_assert_eq!(out.len() % FRAME_ALIGN, 0);
            let (header, total) = decode_frame(&out, MAX).unwrap().unwrap();
            prop_assert_eq!(total, out.len());
            prop_assert_eq!((header.aux, header.group), (aux, group));
            prop_assert_eq!(&out[FRAME_HEADER_BYTES..][..header.length as usize], &payload[..]);
            // Every strict prefix is incomplete, never an error.
            for cut in [0, 1, FRAME_HEADER_BYTES - 1, FRAME_HEADER_BYTES, out.len() - 1] {
                prop_assert_eq!(decode_frame(&out[..cut.min(out.len() - 1)], MAX), Ok(None));
            }
        }

        #[test]
        fn decode_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame(&bytes, 4096);
        }
    }
}
