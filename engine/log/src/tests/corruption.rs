//! The corruption matrix: a bit flip, a zeroed sector and a misdirected record at each position
//! class (the middle of the log, its tail, a segment header, the state file) give the documented
//! outcome:
//!
//! | position        | outcome                                                            |
//! |-----------------|--------------------------------------------------------------------|
//! | middle          | `Corruption` naming segment, offset and index; nothing skipped     |
//! | tail            | cut as a torn tail (no later record proves it durable), logged     |
//! | segment header  | `Corruption` naming the segment                                    |
//! | state file      | the previous slot is used (newest slot bad); both bad: `Corruption`|

use std::path::Path;

use smr_raft::{HardState, Index};

use super::{entry, small_config};
use crate::recovery::{SegmentImage, recover};
use crate::segment::{SegmentFile, list_segments, segment_file_name};
use crate::state::{STATE_FILE_NAME, STATE_SLOT_BYTES, StateFile};
use crate::{IoMode, Log, LogConfig, LogError};

const SECTOR_BYTES: u64 = 512;

fn config() -> LogConfig {
    let mut config = small_config(IoMode::Auto);
    config.segment_bytes = 16 << 10;
    config.entry_bytes_max = 1024;
    config.submit_bytes_max = 16 << 10;
    config
}

/// A log of 120 entries of 200 bytes, synced every 10 entries (so later records claim the
/// earlier ones durable), over several 16 KiB segments. Returns (sequence, index, offset) of
/// every record.
fn build(dir: &Path) -> Vec<(u64, Index, u64)> {
    let (mut log, _) = Log::open(dir, config()).expect("open");
    for token in 1..=12u64 {
        let entries: Vec<_> = (token * 10 - 9..=token * 10).map(|i| entry(i, 1, 200)).collect();
        let hard_state = (token % 4 == 0).then_some(HardState { term: token, vote: Some(1), commit: 0 });
        log.submit(token, &entries, hard_state).expect("submit");
        log.sync_all().expect("sync");
    }
    drop(log);
    let found = list_segments(dir).expect("list");
    let files: Vec<SegmentFile> =
        found.iter().map(|(s, p)| SegmentFile::open(p, *s, &config()).expect("open")).collect();
    let images: Vec<SegmentImage<'_>> = files.iter().map(SegmentFile::image).collect();
    let state = StateFile::open(dir, &config()).expect("state").expect("exists").current();
    let plan = recover(&state, &images, config().entry_bytes_max).expect("healthy log recovers");
    plan.chains.iter().flat_map(|c| c.records.iter().map(move |&(i, _, o)| (c.sequence, i, o))).collect()
}

fn modify(dir: &Path, name: &str, offset: u64, change: impl FnOnce(&mut [u8])) {
    let path = dir.join(name);
    let mut bytes = std::fs::read(&path).expect("read");
    change(&mut bytes[offset as usize..]);
    std::fs::write(&path, &bytes).expect("write");
}

fn record_at(records: &[(u64, Index, u64)], index: Index) -> (u64, u64) {
    let &(sequence, _, offset) = records.iter().find(|r| r.1 == index).expect("index exists");
    (sequence, offset)
}

fn expect_corruption(dir: &Path, sequence: u64, index: Index) -> LogError {
    let error = Log::open(dir, config()).expect_err("corruption must stop the open");
    let text = error.to_string();
    assert!(matches!(error, LogError::Corruption { .. }), "{text}");
    assert!(text.contains(&segment_file_name(sequence)), "names the segment: {text}");
    assert!(text.contains(&format!("index {index}")), "names the index: {text}");
    assert_eq!(error.exit_code(), Some(crate::EXIT_CODE_CORRUPTION));
    error
}

#[test]
fn bit_flip_in_the_middle_of_the_log_stops_open_with_segment_offset_and_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = build(dir.path());
    let (sequence, offset) = record_at(&records, 55);
    modify(dir.path(), &segment_file_name(sequence), offset + 40, |b| b[0] ^= 0x08);
    let error = expect_corruption(dir.path(), sequence, 55);
    assert!(error.to_string().contains(&format!("offset {offset}")), "{error}");
}

#[test]
fn zeroed_sector_in_the_middle_of_the_log_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = build(dir.path());
    let (sequence, offset) = record_at(&records, 40);
    let sector = offset / SECTOR_BYTES * SECTOR_BYTES;
    modify(dir.path(), &segment_file_name(sequence), sector, |b| b[..SECTOR_BYTES as usize].fill(0));
    let error = Log::open(dir.path(), config()).expect_err("corruption");
    assert!(matches!(error, LogError::Corruption { .. }), "{error}");
    assert!(error.to_string().contains(&segment_file_name(sequence)), "{error}");
}

#[test]
fn misdirected_record_in_the_middle_is_caught_by_its_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = build(dir.path());
    // Record 31 (valid CRC) lands where record 70 belongs: same size, so the chain would
    // continue after it if the index were not checked.
    let (from_sequence, from_offset) = record_at(&records, 31);
    let (to_sequence, to_offset) = record_at(&records, 70);
    let source = std::fs::read(dir.path().join(segment_file_name(from_sequence))).expect("read");
    let length = crate::record::record_bytes(200);
    let copy = source[from_offset as usize..from_offset as usize + length].to_vec();
    modify(dir.path(), &segment_file_name(to_sequence), to_offset, |b| b[..length].copy_from_slice(&copy));
    expect_corruption(dir.path(), to_sequence, 70);
}

#[test]
fn bit_flip_in_the_last_record_is_cut_as_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = build(dir.path());
    let (sequence, offset) = record_at(&records, 120);
    modify(dir.path(), &segment_file_name(sequence), offset + 100, |b| b[0] ^= 1);
    let (_, recovered) = Log::open(dir.path(), config()).expect("a bad last record is a torn tail");
    assert_eq!(recovered.last_index, 119);
    assert!(recovered.torn_tail.expect("reported").contains("index 120"));
}

#[test]
fn zeroed_tail_sector_is_cut_as_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = build(dir.path());
    let (sequence, offset) = record_at(&records, 120);
    let sector = offset / SECTOR_BYTES * SECTOR_BYTES;
    modify(dir.path(), &segment_file_name(sequence), sector, |b| b[..SECTOR_BYTES as usize].fill(0));
    let (_, recovered) = Log::open(dir.path(), config()).expect("torn tail");
    assert!(recovered.last_index < 120 && recovered.last_index >= 110, "{}", recovered.last_index);
    assert!(recovered.torn_tail.is_some());
}

#[test]
fn misdirected_record_after_the_tail_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = build(dir.path());
    let (from_sequence, from_offset) = record_at(&records, 118);
    let (to_sequence, last_offset) = record_at(&records, 120);
    let source = std::fs::read(dir.path().join(segment_file_name(from_sequence))).expect("read");
    let length = crate::record::record_bytes(200);
    let copy = source[from_offset as usize..from_offset as usize + length].to_vec();
    let after_tail = last_offset + length as u64;
    modify(dir.path(), &segment_file_name(to_sequence), after_tail, |b| b[..length].copy_from_slice(&copy));
    let (log, recovered) = Log::open(dir.path(), config()).expect("a stray record past the tail is cut");
    assert_eq!(recovered.last_index, 120);
    assert!(recovered.torn_tail.is_some());
    assert_eq!(log.entries(120, 120, u64::MAX).expect("entry").len(), 1);
}

#[test]
fn segment_header_bit_flip_zeroed_sector_or_misdirected_record_is_corruption() {
    for damage in 0..3 {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = build(dir.path());
        let (sequence, _) = record_at(&records, 60);
        let name = segment_file_name(sequence);
        match damage {
            0 => modify(dir.path(), &name, 41, |b| b[0] ^= 0x20),
            1 => modify(dir.path(), &name, 0, |b| b[..SECTOR_BYTES as usize].fill(0)),
            _ => {
                let (_, offset) = record_at(&records, 61);
                let source = std::fs::read(dir.path().join(&name)).expect("read");
                let copy = source[offset as usize..offset as usize + 64].to_vec();
                modify(dir.path(), &name, 0, |b| b[..64].copy_from_slice(&copy));
            }
        }
        let error = Log::open(dir.path(), config()).expect_err("a bad segment header stops the open");
        assert!(matches!(error, LogError::Corruption { .. }), "damage {damage}: {error}");
        assert!(error.to_string().contains(&name), "damage {damage}: {error}");
    }
}

#[test]
fn state_file_damage_falls_back_to_the_previous_slot_and_both_bad_is_corruption() {
    for damage in 0..3 {
        let dir = tempfile::tempdir().expect("tempdir");
        build(dir.path());
        let newest = StateFile::open(dir.path(), &config()).expect("state").expect("exists").current();
        assert_eq!(newest.hard_state.term, 12);
        // Find the newest slot: the one whose damage changes what is read.
        let bytes = std::fs::read(dir.path().join(STATE_FILE_NAME)).expect("read");
        let generation =
            |slot: usize| u64::from_le_bytes(bytes[slot * 4096 + 16..slot * 4096 + 24].try_into().expect("8 bytes"));
        let newest_slot = if generation(0) > generation(1) { 0 } else { 1 } as u64;
        let at = newest_slot * STATE_SLOT_BYTES;
        match damage {
            0 => modify(dir.path(), STATE_FILE_NAME, at + 50, |b| b[0] ^= 4),
            1 => modify(dir.path(), STATE_FILE_NAME, at, |b| b[..SECTOR_BYTES as usize].fill(0)),
            _ => modify(dir.path(), STATE_FILE_NAME, at, |b| b[..64].copy_from_slice(&[0xA5; 64])),
        }
        let (_, recovered) = Log::open(dir.path(), config()).expect("the previous slot is still valid");
        assert_eq!(recovered.hard_state.term, 8, "damage {damage}: the previous hard state");
        assert_eq!(recovered.last_index, 120, "the log itself is untouched");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    modify(dir.path(), STATE_FILE_NAME, 30, |b| b[0] ^= 1);
    modify(dir.path(), STATE_FILE_NAME, STATE_SLOT_BYTES + 30, |b| b[0] ^= 1);
    let error = Log::open(dir.path(), config()).expect_err("both slots bad");
    assert!(matches!(error, LogError::Corruption { .. }) && error.to_string().contains(STATE_FILE_NAME), "{error}");
}

#[test]
fn segment_of_another_cluster_is_refused_by_name_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    let mut other = config();
    other.cluster_id += 1;
    let error = Log::open(dir.path(), other).expect_err("foreign");
    assert!(matches!(error, LogError::Foreign { .. }), "{error}");
    assert_eq!(error.exit_code(), Some(crate::EXIT_CODE_FOREIGN_DATA));
}

#[test]
fn state_file_missing_beside_segments_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    std::fs::remove_file(dir.path().join(STATE_FILE_NAME)).expect("remove");
    let error = Log::open(dir.path(), config()).expect_err("no state");
    assert!(matches!(error, LogError::Corruption { .. }), "{error}");
}
