//! Compaction and snapshot installs interrupted by a crash at their most delicate point: after
//! the new base is durable in the state file, before the old segments are deleted.

use smr_raft::SnapshotMeta;

use super::{assert_holds, entry, small_config};
use crate::segment::list_segments;
use crate::{IoMode, Log};

fn copy_segments(from: &std::path::Path, to: &std::path::Path) {
    for (_, path) in list_segments(from).expect("list") {
        std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
    }
}

#[test]
fn compaction_interrupted_before_segment_deletion_is_finished_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backup = tempfile::tempdir().expect("tempdir");
    let config = small_config(IoMode::Auto);
    let entries: Vec<_> = (1..=200).map(|i| entry(i, 1, 2000)).collect();
    {
        let (mut log, _) = Log::open(dir.path(), config.clone()).expect("open");
        for (token, chunk) in entries.chunks(50).enumerate() {
            log.submit(token as u64 + 1, chunk, None).expect("submit");
        }
        log.sync_all().expect("sync");
        copy_segments(dir.path(), backup.path());
        log.compact(150).expect("compact");
    }
    // The crash: the state file says the prefix is gone, the old segments are still there.
    copy_segments(backup.path(), dir.path());
    let (log, recovered) = Log::open(dir.path(), config.clone()).expect("open");
    assert_eq!((recovered.first_index, recovered.last_index), (151, 200));
    assert_holds(&log, &entries[150..]);
    drop(log);
    // The stale segments were deleted at open: a reopen finds only what the log holds.
    let (_, reopened) = Log::open(dir.path(), config).expect("reopen");
    assert_eq!((reopened.first_index, reopened.last_index), (151, 200));
    assert!(list_segments(dir.path()).expect("list").len() < list_segments(backup.path()).expect("list").len());
}

#[test]
fn snapshot_install_interrupted_before_segment_deletion_never_resurrects_the_old_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backup = tempfile::tempdir().expect("tempdir");
    let config = small_config(IoMode::Auto);
    {
        let (mut log, _) = Log::open(dir.path(), config.clone()).expect("open");
        // Entries 1..=60 of term 1 that conflict with the leader's snapshot at 40 (term 3).
        let entries: Vec<_> = (1..=60).map(|i| entry(i, 1, 500)).collect();
        log.submit(1, &entries, None).expect("submit");
        log.sync_all().expect("sync");
        copy_segments(dir.path(), backup.path());
        log.install_snapshot(&SnapshotMeta { index: 40, term: 3, ..SnapshotMeta::default() }).expect("install");
    }
    copy_segments(backup.path(), dir.path());
    let (mut log, recovered) = Log::open(dir.path(), config).expect("open");
    assert_eq!((recovered.snapshot_index, recovered.snapshot_term, recovered.last_index), (40, 3, 40));
    assert!(log.entries(41, 60, u64::MAX).is_err(), "old entries 41..=60 must not come back");
    log.submit(1, &[entry(41, 3, 10)], None).expect("the log continues after the snapshot");
    log.sync_all().expect("sync");
    assert_holds(&log, &[entry(41, 3, 10)]);
}

/// A crash part way through reusing a compacted segment (`segment::recycle_segment`: rename to
/// the new `.tmp`, rewrite and sync the header, rename to the final name, sync the directory)
/// leaves one of three states, whichever of its steps reached the disk. Open must take each in
/// its stride: the `.tmp` and a file under its old name (below the log's base) are deleted, and
/// a final-named one is a spare that appends go into.
#[test]
fn a_crash_part_way_through_reusing_a_segment_is_harmless() {
    use std::os::unix::fs::FileExt;

    use crate::record::SegmentKey;
    use crate::segment::{Fill, encode_header, segment_file_name};

    let config = small_config(IoMode::Auto);
    let entries: Vec<_> = (1..=300).map(|i| entry(i, 1, 2000)).collect();
    for state in ["tmp", "old name", "final name"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let backup = tempfile::tempdir().expect("tempdir");
        {
            let (mut log, _) = Log::open(dir.path(), config.clone()).expect("open");
            for (token, chunk) in entries[..200].chunks(50).enumerate() {
                log.submit(token as u64 + 1, chunk, None).expect("submit");
            }
            log.sync_all().expect("sync");
            copy_segments(dir.path(), backup.path());
            log.compact(150).expect("compact");
        }
        // The compacted segment 1, part way to becoming the segment after the last one.
        let next = list_segments(dir.path()).expect("list").last().expect("segments").0 + 1;
        let (_, old) = list_segments(backup.path()).expect("list").into_iter().next().expect("segment 1");
        let header = encode_header(&config, SegmentKey { sequence: next, salt: 77 }, Fill::Recycled);
        let target = match state {
            "tmp" => dir.path().join(format!("{next:020}.seg.tmp")),
            "old name" => dir.path().join(old.file_name().expect("name")),
            _ => dir.path().join(segment_file_name(next)),
        };
        std::fs::copy(&old, &target).expect("copy");
        std::fs::File::options().write(true).open(&target).expect("open").write_all_at(&header, 0).expect("write");

        let (mut log, recovered) = Log::open(dir.path(), config.clone()).unwrap_or_else(|e| panic!("{state}: {e}"));
        assert_eq!((recovered.first_index, recovered.last_index, recovered.torn_tail), (151, 200, None), "{state}");
        assert_eq!(target.exists(), state == "final name", "{state}: only a final-named segment is kept");
        for (token, chunk) in entries[200..].chunks(50).enumerate() {
            log.submit(token as u64 + 10, chunk, None).expect("submit");
        }
        log.sync_all().expect("sync");
        drop(log);
        let (log, reopened) = Log::open(dir.path(), config.clone()).expect("reopen");
        assert_eq!((reopened.first_index, reopened.last_index, reopened.torn_tail), (151, 300, None), "{state}");
        assert_holds(&log, &entries[150..]);
    }
}
