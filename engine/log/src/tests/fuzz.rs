//! Property tests: whatever bytes the disk returns, decoding and recovery never panic and never
//! allocate from an unchecked length; records round-trip.

use std::path::Path;

use proptest::prelude::*;
use smr_raft::{Entry, EntryKind};

use crate::IoMode;
use crate::record::{Position, SegmentKey, check_record, encode_record, record_bytes};
use crate::recovery::{SegmentImage, recover};
use crate::segment::{Fill, SEGMENT_HEADER_BYTES, encode_header};
use crate::state::DurableState;
use crate::tests::crash::crash_config;

/// The key of segment `sequence` in these tests.
fn key(sequence: u64) -> SegmentKey {
    SegmentKey { sequence, salt: 0x0123_4567_89ab_cdef ^ sequence.rotate_right(7) }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn records_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..600), index in 1u64..u64::MAX, term in any::<u64>()) {
        let mut out = Vec::new();
        let entry = Entry { index, term, kind: EntryKind::ConfChange, data: payload.clone().into() };
        encode_record(&mut out, &entry, key(9), 4096, Some(Position { sequence: 9, offset: 4096 }));
        prop_assert_eq!(out.len(), record_bytes(payload.len()));
        let record = check_record(&out, key(9), 0, 1024).expect("valid");
        prop_assert_eq!((record.header.index, record.header.term, record.kind), (index, term, EntryKind::ConfChange));
        prop_assert_eq!(&out[record.payload_range()], &payload[..]);
    }

    #[test]
    fn garbage_records_are_rejected_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200), at in 0u64..256) {
        let _ = check_record(&bytes, key(9), at, 1024);
    }

    /// Segments (zero-filled or reused) of random bytes, random zero runs, real records and
    /// records of a segment file's earlier use in random places: recovery returns a plan or an
    /// error, and a plan only ever holds checked, consecutive records of this use.
    #[test]
    fn recovery_never_panics_on_arbitrary_segment_bytes(
        chunks in proptest::collection::vec((0u8..5, any::<u64>(), 1usize..400), 1..24),
        segments in 1usize..4,
        reused in proptest::collection::vec(any::<bool>(), 4),
    ) {
        let config = crash_config(IoMode::Fallback);
        let mut images: Vec<Vec<u8>> = Vec::new();
        let mut index = 1;
        for (s, &reused) in reused.iter().enumerate().take(segments) {
            let fill = if reused { Fill::Recycled } else { Fill::Zeros };
            let mut bytes = encode_header(&config, key(s as u64 + 1), fill);
            bytes.resize(config.segment_bytes as usize, 0);
            let mut at = SEGMENT_HEADER_BYTES as usize;
            for &(kind, seed, len) in &chunks {
                let mut state = seed | 1;
                let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state };
                match kind {
                    0 => at += len.next_multiple_of(16), // a zero run
                    1 => {
                        // Random bytes.
                        for _ in 0..len { if at < bytes.len() { bytes[at] = next() as u8; at += 1; } }
                        at = at.next_multiple_of(16);
                    }
                    _ => {
                        // A real record, continuing or not; or (kind 4) one of the file's
                        // earlier use under the same sequence, or a forgery of one: another salt
                        // with the right tag.
                        let mut record = Vec::new();
                        let sequence = s as u64 + 1;
                        let tag_bits = 0xFFFFu64 << 48;
                        let forged = (key(sequence).salt & tag_bits) | (next() & !tag_bits);
                        let segment = if kind == 4 { SegmentKey { sequence, salt: forged } } else { key(sequence) };
                        let claim = Position { sequence, offset: (next() % (at as u64 + 1)) & !15 };
                        let payload: Vec<u8> = (0..len % 300).map(|_| next() as u8).collect();
                        let entry = Entry { index, term: 1, kind: EntryKind::Normal, data: payload.into() };
                        encode_record(&mut record, &entry, segment, at as u64, Some(claim));
                        index += 1 + next() % 2;
                        if at + record.len() <= bytes.len() { bytes[at..at + record.len()].copy_from_slice(&record); }
                        at += record.len();
                    }
                }
                if at >= bytes.len() { break; }
            }
            images.push(bytes);
        }
        let paths: Vec<String> = (1..=segments).map(|s| format!("{s}")).collect();
        let segment_images: Vec<SegmentImage<'_>> = images
            .iter()
            .zip(&paths)
            .enumerate()
            .map(|(i, (bytes, path))| {
                let fill = if reused[i] { Fill::Recycled } else { Fill::Zeros };
                let key = key(i as u64 + 1);
                SegmentImage { sequence: key.sequence, salt: key.salt, path: Path::new(path), bytes, fill }
            })
            .collect();
        let state = DurableState { segment_sequence_min: 1, ..DurableState::default() };
        if let Ok(plan) = recover(&state, &segment_images, config.entry_bytes_max) {
            let mut expected = 1;
            for chain in &plan.chains {
                let bytes = &images[(chain.sequence - 1) as usize];
                for &(index, _, offset) in &chain.records {
                    prop_assert_eq!(index, expected);
                    expected += 1;
                    prop_assert!(check_record(bytes, key(chain.sequence), offset, config.entry_bytes_max).is_ok());
                }
            }
            prop_assert_eq!(plan.last_index, expected - 1);
        }
    }
}
