//! Round trips through both I/O paths: append, reopen, truncate, compact, install, read.

use smr_raft::{HardState, SnapshotMeta};

use super::{assert_holds, entry, io_modes, open, small_config};

#[test]
fn appended_entries_survive_reopen_on_both_io_paths() {
    for mode in io_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = small_config(mode);
        // 300 entries of up to 3 KiB cross several 64 KiB segments.
        let entries: Vec<_> = (1..=300).map(|i| entry(i, 1 + i / 100, (i as usize * 37) % 3000)).collect();
        {
            let (mut log, recovered) = open(dir.path(), &config);
            assert_eq!(recovered.last_index, 0);
            for (token, chunk) in entries.chunks(7).enumerate() {
                log.submit(token as u64 + 1, chunk, None).expect("submit");
                log.poll().expect("poll");
            }
            let hard_state = HardState { term: 3, vote: Some(2), commit: 250 };
            let last_token = entries.chunks(7).count() as u64 + 1;
            log.submit(last_token, &[], Some(hard_state)).expect("submit");
            let durable = log.sync_all().expect("sync");
            assert_eq!(durable.token, last_token);
            assert_eq!(durable.index, 300);
            assert_eq!(log.hard_state(), hard_state);
            assert_holds(&log, &entries);
        }
        let (log, recovered) = open(dir.path(), &config);
        assert_eq!((recovered.last_index, recovered.last_term), (300, 4), "{mode:?}");
        assert_eq!(recovered.hard_state, HardState { term: 3, vote: Some(2), commit: 250 });
        assert!(recovered.torn_tail.is_none());
        assert_holds(&log, &entries);
    }
}

#[test]
fn conflicting_suffix_is_replaced_and_stays_replaced_after_reopen() {
    for mode in io_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = small_config(mode);
        let old: Vec<_> = (1..=50).map(|i| entry(i, 1, 500)).collect();
        let new: Vec<_> = (31..=40).map(|i| entry(i, 2, 700)).collect();
        {
            let (mut log, _) = open(dir.path(), &config);
            log.submit(1, &old, None).expect("submit");
            log.sync_all().expect("sync");
            log.submit(2, &new, None).expect("submit");
            assert_eq!(log.durable_through(), 30, "the truncation lowers the watermark at once");
            assert_eq!(log.sync_all().expect("sync").index, 40);
        }
        let (log, recovered) = open(dir.path(), &config);
        assert_eq!((recovered.last_index, recovered.last_term), (40, 2));
        let expected: Vec<_> = old[..30].iter().chain(&new).cloned().collect();
        assert_holds(&log, &expected);
    }
}

#[test]
fn compaction_drops_whole_segments_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_config(crate::IoMode::Auto);
    let entries: Vec<_> = (1..=200).map(|i| entry(i, 1, 2000)).collect();
    {
        let (mut log, _) = open(dir.path(), &config);
        for (token, chunk) in entries.chunks(50).enumerate() {
            log.submit(token as u64 + 1, chunk, None).expect("submit");
        }
        log.sync_all().expect("sync");
        let before = crate::segment::list_segments(dir.path()).expect("list").len();
        log.compact(150).expect("compact");
        assert_eq!(log.first_index(), 151);
        assert!(log.entries(150, 150, u64::MAX).is_err());
        assert_holds(&log, &entries[150..]);
        drop(log);
        // Deleted in the background, at the latest by the time the log is closed.
        let after = crate::segment::list_segments(dir.path()).expect("list").len();
        assert!(after < before, "whole segments were deleted ({before} -> {after})");
    }
    let (log, recovered) = open(dir.path(), &config);
    assert_eq!((recovered.snapshot_index, recovered.first_index, recovered.last_index), (150, 151, 200));
    assert_holds(&log, &entries[150..]);
}

#[test]
fn installed_snapshot_discards_the_log_and_next_index_follows_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_config(crate::IoMode::Auto);
    {
        let (mut log, _) = open(dir.path(), &config);
        let entries: Vec<_> = (1..=40).map(|i| entry(i, 1, 100)).collect();
        log.submit(1, &entries, None).expect("submit");
        log.sync_all().expect("sync");
        log.install_snapshot(&SnapshotMeta { index: 1000, term: 5, ..SnapshotMeta::default() }).expect("install");
        assert_eq!((log.first_index(), log.last_index(), log.durable_through()), (1001, 1000, 1000));
        log.submit(2, &[entry(1001, 5, 64)], None).expect("submit");
        log.sync_all().expect("sync");
    }
    let (log, recovered) = open(dir.path(), &config);
    assert_eq!((recovered.snapshot_index, recovered.snapshot_term, recovered.last_index), (1000, 5, 1001));
    assert_holds(&log, &[entry(1001, 5, 64)]);
}

#[test]
fn reader_on_another_thread_sees_durable_entries_zero_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_config(crate::IoMode::Auto);
    let (mut log, _) = open(dir.path(), &config);
    let mut reader = log.reader();
    let handle = std::thread::spawn(move || {
        let mut next = 1;
        let mut held = Vec::new();
        while next <= 500 {
            match reader.entries(next, next + 63, 1 << 20) {
                Ok(entries) => {
                    for e in &entries {
                        assert_eq!(e.data, &super::payload(e.index, 1, 300)[..]);
                    }
                    next += entries.len() as u64;
                    if let Some(last) = entries.last() {
                        held.push(last.to_entry());
                    }
                }
                Err(_) => std::thread::yield_now(),
            }
        }
        held
    });
    for i in 1..=500u64 {
        log.submit(i, &[entry(i, 1, 300)], None).expect("submit");
        log.poll().expect("poll");
    }
    log.sync_all().expect("sync");
    let held = handle.join().expect("reader");
    // Owned entries point into the mapping and outlive the reader's borrow.
    assert_eq!(held.last().map(|e| e.index), Some(500));
    assert_eq!(held.last().expect("some").data, super::payload(500, 1, 300));
}

#[test]
fn refused_submits_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_config(crate::IoMode::Auto);
    let (mut log, _) = open(dir.path(), &config);
    log.submit(5, &[entry(1, 1, 10)], None).expect("submit");
    assert!(matches!(log.submit(5, &[entry(2, 1, 10)], None), Err(crate::LogError::TokenOrder { .. })));
    assert!(matches!(log.submit(6, &[entry(3, 1, 10)], None), Err(crate::LogError::NotContiguous { .. })));
    assert!(matches!(log.submit(6, &[entry(2, 0, 10)], None), Err(crate::LogError::NotContiguous { .. })));
    let huge = entry(2, 1, (16 << 10) + 1);
    assert!(matches!(log.submit(6, &[huge], None), Err(crate::LogError::TooLarge { .. })));
    log.submit(6, &[entry(2, 1, 10)], None).expect("the log still accepts the right entry");
    assert_eq!(log.sync_all().expect("sync").index, 2);
}

#[test]
fn second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_config(crate::IoMode::Auto);
    let (_log, _) = open(dir.path(), &config);
    let error = crate::Log::open(dir.path(), config.clone()).expect_err("locked");
    assert!(matches!(error, crate::LogError::Locked { .. }), "{error}");
}

#[test]
fn idle_wait_sleeps_until_woken_on_both_io_paths() {
    for mode in io_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = open(dir.path(), &small_config(mode));
        let waker = log.waker().expect("waker");
        let started = std::time::Instant::now();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            waker.wake();
        });
        log.wait().expect("woken");
        assert!(started.elapsed() >= std::time::Duration::from_millis(40), "{mode:?}: it slept until woken");
        thread.join().expect("waker thread");
        // Still a working log afterwards, and waits for I/O still end on completion.
        log.submit(1, &[entry(1, 1, 10)], None).expect("submit");
        assert_eq!(log.sync_all().expect("sync").index, 1);
    }
}

#[test]
fn wait_returns_at_once_when_a_submit_needing_no_io_became_durable() {
    for mode in io_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = open(dir.path(), &small_config(mode));
        // With a waker, an idle wait sleeps until woken; nothing will wake this one.
        let _waker = log.waker().expect("waker");
        log.submit(1, &[entry(1, 1, 10)], None).expect("submit");
        assert_eq!(log.sync_all().expect("sync").token, 1);
        // An empty ready after everything is durable: durable without any I/O of its own.
        log.submit(2, &[], None).expect("submit");
        let started = std::time::Instant::now();
        let durable = log.wait().expect("wait");
        assert_eq!(durable.token, 2, "{mode:?}: the empty submit is reported durable");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{mode:?}: wait did not sleep");
    }
}

#[test]
fn entries_stop_at_bytes_max_but_always_return_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), &small_config(crate::IoMode::Auto));
    let entries: Vec<_> = (1..=10).map(|i| entry(i, 1, 1000)).collect();
    log.submit(1, &entries, None).expect("submit");
    log.sync_all().expect("sync");
    // Each entry counts 1000 + 32 bytes.
    assert_eq!(log.entries(1, 10, 3 * 1032).expect("entries").len(), 3);
    assert_eq!(log.entries(1, 10, 3 * 1032 - 1).expect("entries").len(), 2);
    assert_eq!(log.entries(4, 10, 1).expect("entries").len(), 1, "a large entry never stalls");
    assert_eq!(log.entries(9, 100, u64::MAX).expect("entries").len(), 2, "stops at the end");
    assert!(log.entries(11, 11, u64::MAX).is_err(), "beyond the durable end");
    let owned = log.entries(5, 5, u64::MAX).expect("entries")[0].to_entry();
    assert_eq!(owned, entries[4], "to_entry is the entry, zero-copy");
}

#[test]
fn submits_beyond_pending_submits_max_wait_for_the_disk_instead_of_queueing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config(crate::IoMode::Auto);
    config.pending_submits_max = 4;
    let (mut log, _) = open(dir.path(), &config);
    for i in 1..=50u64 {
        log.submit(i, &[entry(i, 1, 100)], None).expect("submit");
        assert!(log.pending_submits() <= 4, "at most 4 submits wait for a sync");
    }
    assert_eq!(log.sync_all().expect("sync").token, 50);
}

#[test]
fn every_sync_reports_its_duration_once_on_both_io_paths() {
    for mode in io_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = open(dir.path(), &small_config(mode));
        for i in 1..=5u64 {
            log.submit(i, &[entry(i, 1, 100)], None).expect("submit");
            log.sync_all().expect("sync");
        }
        let mut durations = Vec::new();
        log.take_sync_durations(|ns| durations.push(ns));
        assert_eq!(durations.len() as u64, log.stats().syncs_completed, "{mode:?}: one sample per sync");
        assert!(durations.len() >= 5, "{mode:?}: each submit synced on its own");
        assert!(durations.iter().all(|&ns| ns > 0), "{mode:?}: a sync takes time");
        log.take_sync_durations(|_| panic!("{mode:?}: samples are handed out once"));
    }
}

#[test]
fn reader_racing_truncations_only_ever_sees_intact_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), &small_config(crate::IoMode::Auto));
    let mut reader = log.reader();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_reader = std::sync::Arc::clone(&stop);
    let handle = std::thread::spawn(move || {
        let mut reads = 0u64;
        while !stop_reader.load(std::sync::atomic::Ordering::Relaxed) {
            let durable = reader.durable_through();
            if durable == 0 {
                continue;
            }
            if let Ok(entries) = reader.entries(1, durable, u64::MAX) {
                for e in &entries {
                    // Whatever the race, an entry is one that was written, intact.
                    assert_eq!(e.data, &super::payload(e.index, e.term, 200 + e.index as usize % 50)[..]);
                }
                reads += entries.len() as u64;
            }
        }
        reads
    });
    let mut last = 0u64;
    for round in 1..=60u64 {
        // Every third round replaces the last few entries with a higher term.
        let from = if round % 3 == 0 && last > 4 { last - 3 } else { last + 1 };
        let entries: Vec<_> = (from..from + 5).map(|i| entry(i, round, 200 + i as usize % 50)).collect();
        log.submit(round, &entries, None).expect("submit");
        log.sync_all().expect("sync");
        last = from + 4;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = handle.join().expect("reader never saw a damaged entry");
    assert!(reads > 0);
}

#[test]
fn entries_held_from_the_mapping_keep_their_bytes_through_truncation_install_and_compaction() {
    // The Raft core keeps durable entries as slices of the mapping (smr-runtime's rebind.rs),
    // and a message queued for a peer may hold one long after: the log must never write over a
    // record, nor shorten or reuse a segment file.
    for mode in io_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = small_config(mode);
        let (mut log, _) = open(dir.path(), &config);
        let old: Vec<_> = (1..=60).map(|i| entry(i, 1, 900)).collect();
        log.submit(1, &old, None).expect("submit");
        log.sync_all().expect("sync");
        let held: Vec<_> = log.entries(1, 60, u64::MAX).expect("entries").iter().map(|e| e.to_entry()).collect();
        // A conflicting suffix from 31, then more than a segment of new entries after it.
        let new: Vec<_> = (31..=150).map(|i| entry(i, 2, 900)).collect();
        log.submit(2, &new, None).expect("submit");
        log.sync_all().expect("sync");
        log.compact(100).expect("compact");
        log.install_snapshot(&SnapshotMeta { index: 1000, term: 3, ..SnapshotMeta::default() }).expect("install");
        let more: Vec<_> = (1001..=1100).map(|i| entry(i, 3, 900)).collect();
        log.submit(3, &more, None).expect("submit");
        log.sync_all().expect("sync");
        drop(log);
        for (held, want) in held.iter().zip(&old) {
            assert_eq!(held, want, "entry {} changed under its holder ({mode:?})", want.index);
        }
    }
}
