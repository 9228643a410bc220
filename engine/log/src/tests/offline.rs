//! `ReadOnlyLog` and `verify`: they read what `Log::open` would recover and never write.

use std::collections::BTreeMap;
use std::path::Path;

use smr_raft::{Entry, HardState};

use super::{entry, small_config};
use crate::{IoMode, Log, LogConfig, LogError, ReadOnlyLog, recorded_segment_bytes, verify};

fn config() -> LogConfig {
    let mut config = small_config(IoMode::Auto);
    config.segment_bytes = 16 << 10;
    config.entry_bytes_max = 1024;
    config.submit_bytes_max = 16 << 10;
    config
}

/// 60 entries of 300 bytes over several segments, synced per submit of 10.
fn build(dir: &Path) -> Vec<Entry> {
    let (mut log, _) = Log::open(dir, config()).expect("open");
    let mut written = Vec::new();
    for token in 1..=6u64 {
        let entries: Vec<Entry> = (token * 10 - 9..=token * 10).map(|i| entry(i, 2, 300)).collect();
        log.submit(token, &entries, Some(HardState { term: 2, vote: Some(1), commit: token * 10 - 5 }))
            .expect("submit");
        log.sync_all().expect("sync");
        written.extend(entries);
    }
    written
}

/// Every file's name, length, bytes and modification time.
fn image(dir: &Path) -> BTreeMap<String, (Vec<u8>, std::time::SystemTime)> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            let e = e.expect("entry");
            let bytes = std::fs::read(e.path()).expect("read");
            let modified = e.metadata().expect("stat").modified().expect("mtime");
            (e.file_name().to_string_lossy().into_owned(), (bytes, modified))
        })
        .collect()
}

#[test]
fn read_only_log_serves_what_open_recovers_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = build(dir.path());
    let before = image(dir.path());

    assert_eq!(recorded_segment_bytes(dir.path()).expect("header"), Some(config().segment_bytes));
    let log = ReadOnlyLog::open(dir.path(), &config()).expect("read-only open");
    let verification = log.verification().clone();
    assert_eq!((verification.last_index, verification.last_term), (60, 2));
    assert!(verification.segments.len() > 1, "the log spans segments: {:?}", verification.segments);
    assert_eq!(verification.torn_tail, None);
    assert_eq!(verification.hard_state.commit, 55);

    let all: Vec<_> = log.entries(1, u64::MAX).collect();
    assert_eq!(all.len(), written.len());
    for (got, want) in all.iter().zip(&written) {
        assert_eq!((got.index, got.term, got.kind, got.data), (want.index, want.term, want.kind, &want.data[..]));
        assert_eq!(got.data.as_ptr() as usize % 16, 0, "payloads are 16-byte aligned");
    }
    let middle: Vec<u64> = log.entries(18, 33).map(|e| e.index).collect();
    assert_eq!(middle, (18..=33).collect::<Vec<_>>());
    assert_eq!(log.entries(61, 100).count(), 0);
    assert_eq!(log.entries(0, 0).count(), 0);
    drop(log);

    assert_eq!(verify(dir.path(), &config()).expect("verify"), verification);
    assert_eq!(image(dir.path()), before, "inspection changed no file");
}

#[test]
fn torn_tail_is_reported_and_left_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    // Flip a payload byte of the last record: nothing after it claims it durable, so a restart
    // would cut it as a torn tail.
    // (Spare segments after it hold only a header.)
    let (last_segment, mut bytes, end) = crate::segment::list_segments(dir.path())
        .expect("list")
        .into_iter()
        .rev()
        .find_map(|(_, path)| {
            let bytes = std::fs::read(&path).expect("read");
            let end = bytes.iter().rposition(|&b| b != 0).filter(|&end| end >= 4096)?;
            Some((path, bytes, end))
        })
        .expect("a segment with records");
    bytes[end] ^= 0x40;
    std::fs::write(&last_segment, &bytes).expect("write");
    let before = image(dir.path());

    let log = ReadOnlyLog::open(dir.path(), &config()).expect("a torn tail is not an error");
    let torn = log.verification().torn_tail.clone().expect("torn tail reported");
    assert!(torn.contains("index 60"), "{torn}");
    assert_eq!(log.verification().last_index, 59);
    assert_eq!(log.entries(1, u64::MAX).count(), 59, "the torn record is not served");
    drop(log);
    assert_eq!(image(dir.path()), before, "the torn tail is not cut");
}

#[test]
fn inspecting_a_running_log_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = Log::open(dir.path(), config()).expect("open");
    let error = ReadOnlyLog::open(dir.path(), &config()).expect_err("the writer holds the lock");
    assert!(matches!(error, LogError::Locked { .. }), "{error}");
    drop(log);
    let reader = ReadOnlyLog::open(dir.path(), &config()).expect("stopped");
    let error = Log::open(dir.path(), config()).expect_err("a reader holds the lock shared");
    assert!(matches!(error, LogError::Locked { .. }), "{error}");
    drop(reader);
}

#[test]
fn a_directory_without_a_log_is_reported_not_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(recorded_segment_bytes(dir.path()).expect("empty"), None);
    let error = verify(dir.path(), &config()).expect_err("no state file");
    assert!(error.to_string().contains("no state file"), "{error}");
    assert_eq!(std::fs::read_dir(dir.path()).expect("read_dir").count(), 0, "nothing was created");
}
