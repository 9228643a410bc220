//! The crate's failure tests, inside the crate so they can reach the test-only seams.

pub(crate) mod trace;

mod basic;
mod corruption;
pub(crate) mod crash;
mod faults;
mod fuzz;
mod lifecycle;
mod offline;
mod power_loss;

use std::path::Path;

use bytes::Bytes;
use smr_raft::{Entry, EntryKind, Index, Term};

use crate::{IoMode, Log, LogConfig};

/// A small config: 64 KiB segments so that tests cross segment boundaries quickly.
pub(crate) fn small_config(io_mode: IoMode) -> LogConfig {
    let mut config = LogConfig::new(11, 1, 3);
    config.segment_bytes = 64 << 10;
    config.entry_bytes_max = 16 << 10;
    config.submit_bytes_max = 256 << 10;
    config.inflight_writes_max = 64;
    config.spare_segments_max = 2;
    config.io_mode = io_mode;
    config
}

/// Both I/O paths where io_uring works here, else only the fallback (said on stderr).
pub(crate) fn io_modes() -> Vec<IoMode> {
    match crate::uring::UringIo::new(8) {
        Ok(_) => vec![IoMode::Uring, IoMode::Fallback],
        Err(error) => {
            eprintln!("io_uring unavailable here ({error}): testing the fallback path only");
            vec![IoMode::Fallback]
        }
    }
}

/// A payload that is not zeros and differs per index and term.
pub(crate) fn payload(index: Index, term: Term, len: usize) -> Bytes {
    let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ term.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    Bytes::from(bytes)
}

pub(crate) fn entry(index: Index, term: Term, len: usize) -> Entry {
    Entry { index, term, kind: EntryKind::Normal, data: payload(index, term, len) }
}

/// Reads back every entry of the log and checks it against what `expected` says.
pub(crate) fn assert_holds(log: &Log, expected: &[Entry]) {
    let got = log.entries(expected[0].index, expected.last().expect("non-empty").index, u64::MAX).expect("entries");
    assert_eq!(got.len(), expected.len());
    for (got, want) in got.iter().zip(expected) {
        assert_eq!((got.index, got.term, got.kind), (want.index, want.term, want.kind));
        assert_eq!(got.data, &want.data[..], "payload of {}", want.index);
        assert_eq!(got.data.as_ptr() as usize % 16, 0, "payloads are 16-byte aligned");
    }
}

pub(crate) fn open(dir: &Path, config: &LogConfig) -> (Log, crate::Recovered) {
    Log::open(dir, config.clone()).expect("open")
}
