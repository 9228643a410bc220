//! Power-loss emulation (`fault.rs`): the sync journal, `drop_unsynced` in each mode, and the
//! planted ack-before-fsync bug, on both I/O paths.

use std::path::{Path, PathBuf};

use smr_raft::{Entry, HardState, Index};

use super::{assert_holds, entry, io_modes, small_config};
use crate::fault::{ACK_BEFORE_FSYNC_ENV, DropReport, Faults, PowerLoss, SYNC_JOURNAL_ENV, drop_unsynced};
use crate::{Durable, IoMode, Log, LogConfig, LogError, Recovered};

/// Entry `index` of these tests: 600-byte payloads (longer than a sector), term from the index.
fn test_entry(index: Index) -> Entry {
    entry(index, 1 + index / 1000, 600)
}

fn entries(from: Index, to: Index) -> Vec<Entry> {
    (from..=to).map(test_entry).collect()
}

struct Setup {
    _root: tempfile::TempDir,
    dir: PathBuf,
    journal: PathBuf,
    config: LogConfig,
}

fn setup(mode: IoMode) -> Setup {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("log");
    let journal = root.path().join("journal");
    Setup { dir, journal, config: small_config(mode), _root: root }
}

impl Setup {
    fn faults(&self, ack_before_fsync: bool) -> Faults {
        Faults { sync_journal: Some(self.journal.clone()), ack_before_fsync }
    }

    fn open(&self, ack_before_fsync: bool) -> (Log, Recovered) {
        Log::open_with(&self.dir, self.config.clone(), self.faults(ack_before_fsync)).expect("open")
    }

    fn reopen_plain(&self) -> (Log, Recovered) {
        Log::open_with(&self.dir, self.config.clone(), Faults::default()).expect("reopen")
    }

    fn power_loss(&self, how: PowerLoss, seed: u64) -> DropReport {
        let report = drop_unsynced(&self.dir, &self.journal, how, seed).expect("drop_unsynced");
        assert_eq!(std::fs::metadata(&self.journal).expect("journal").len(), 0, "the journal starts fresh");
        report
    }
}

/// Every entry the reopened log holds is one that was submitted, byte for byte.
fn assert_all_written(log: &Log, recovered: &Recovered) {
    if recovered.last_index >= 1 {
        assert_holds(log, &entries(1, recovered.last_index));
    }
}

/// The reopened log holds at least the entries reported durable before the power loss.
fn assert_reported_kept(recovered: &Recovered, reported: Durable, what: &str) {
    assert!(
        recovered.last_index >= reported.index,
        "{what}: entries through {} were reported durable, {} recovered",
        reported.index,
        recovered.last_index
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for file in std::fs::read_dir(from).expect("read_dir") {
        let file = file.expect("entry");
        std::fs::copy(file.path(), to.join(file.file_name())).expect("copy");
    }
}

#[test]
fn fault_variables_are_refused_without_the_feature_and_read_with_it() {
    fn env(journal: Option<&'static str>, ack: Option<&'static str>) -> impl Fn(&str) -> Option<std::ffi::OsString> {
        move |name: &str| match name {
            SYNC_JOURNAL_ENV => journal.map(Into::into),
            ACK_BEFORE_FSYNC_ENV => ack.map(Into::into),
            _ => None,
        }
    }
    assert_eq!(Faults::from_lookup(env(None, None), false).expect("nothing set"), Faults::default());
    for (lookup, name) in [(env(Some("/tmp/j"), None), SYNC_JOURNAL_ENV), (env(None, Some("1")), ACK_BEFORE_FSYNC_ENV)]
    {
        let error = Faults::from_lookup(lookup, false).expect_err("refused without the feature");
        let text = error.to_string();
        assert!(matches!(error, LogError::Config { .. }), "{text}");
        assert!(text.contains(name) && text.contains("built without fault-injection"), "{text}");
    }
    let faults = Faults::from_lookup(env(Some("/tmp/j"), Some("1")), true).expect("read with the feature");
    assert_eq!(faults, Faults { sync_journal: Some("/tmp/j".into()), ack_before_fsync: true });
    assert!(faults.active());
    let error = Faults::from_lookup(env(None, Some("yes")), true).expect_err("bad value");
    assert!(error.to_string().contains(ACK_BEFORE_FSYNC_ENV), "{error}");
    assert!(Faults::from_lookup(env(Some(""), None), true).is_err(), "an empty journal path is refused");
}

#[test]
fn unsynced_writes_are_lost_and_synced_ones_kept() {
    for mode in io_modes() {
        let setup = setup(mode);
        let (mut log, _) = setup.open(false);
        for token in 1..=3u64 {
            let hard_state = HardState { term: token, vote: Some(1), commit: 0 };
            log.submit(token, &entries(token * 10 - 9, token * 10), Some(hard_state)).expect("submit");
        }
        assert_eq!(log.sync_all().expect("sync").index, 30);
        // Written (the fallback writes at once, io_uring when it next enters the kernel) and
        // never synced: the process is killed here.
        log.submit(4, &entries(31, 60), Some(HardState { term: 9, vote: Some(2), commit: 0 })).expect("submit");
        drop(log);

        if mode == IoMode::Fallback {
            // What a plain process kill leaves: the page cache kept the unsynced records.
            let copy = setup._root.path().join("copy");
            copy_dir(&setup.dir, &copy);
            let (_, recovered) = Log::open_with(&copy, setup.config.clone(), Faults::default()).expect("open copy");
            assert_eq!(recovered.last_index, 60, "{mode:?}: a process kill keeps page-cache writes");
        }

        let report = setup.power_loss(PowerLoss::All, 1);
        assert!(report.writes_reverted >= 1 && report.bytes_reverted > 0, "{mode:?}: {report}");
        assert_eq!(report.writes_kept, 0, "{report}");
        assert!(report.writes_synced >= 3, "{report}");
        let (log, recovered) = setup.reopen_plain();
        assert_eq!(recovered.last_index, 30, "{mode:?}: exactly the synced entries survive ({report})");
        assert_eq!(recovered.hard_state.term, 3, "{mode:?}: the synced hard state survives");
        assert_all_written(&log, &recovered);
    }
}

#[test]
fn random_subsets_and_torn_writes_never_lose_what_was_reported_durable() {
    let (mut kept_somewhere, mut torn_somewhere) = (false, false);
    for mode in io_modes() {
        for how in [PowerLoss::RandomSubset, PowerLoss::TornLast] {
            for seed in 0..6u64 {
                let setup = setup(mode);
                let (mut log, _) = setup.open(false);
                log.submit(1, &entries(1, 20), Some(HardState { term: 1, vote: Some(1), commit: 0 })).expect("a");
                log.sync_all().expect("sync");
                // Submits of a few entries each (64 KiB segments: this crosses some), polled
                // now and then so that some of them become durable while others are in flight.
                let mut next = 21;
                let mut reported = log.durable();
                for token in 2..=30u64 {
                    let count = 1 + (token * 7 + seed) % 4;
                    log.submit(token, &entries(next, next + count - 1), None).expect("submit");
                    next += count;
                    if (token + seed).is_multiple_of(3) {
                        reported = log.poll().expect("poll");
                    }
                }
                drop(log);
                let report = setup.power_loss(how, seed);
                let what = format!("{mode:?} {how:?} seed {seed}: {report}");
                assert_eq!(
                    report.writes_synced + report.writes_reverted + report.writes_kept,
                    report.writes_journaled,
                    "{what}"
                );
                kept_somewhere |= report.writes_kept > 0 && report.writes_reverted > 0;
                torn_somewhere |= report.torn.as_ref().is_some_and(|t| t.kept_bytes > 0 && t.reverted_bytes > 0);
                if how == PowerLoss::TornLast {
                    assert_eq!(report.writes_kept, 0, "{what}");
                }

                let (mut log, recovered) = setup.reopen_plain();
                assert_reported_kept(&recovered, reported, &what);
                assert_eq!(recovered.hard_state.term, 1, "{what}");
                assert_all_written(&log, &recovered);
                // The log goes on after the power loss.
                let last = recovered.last_index;
                log.submit(1, &entries(last + 1, last + 3), None).expect("append after recovery");
                assert_eq!(log.sync_all().expect("sync").index, last + 3, "{what}");
            }
        }
    }
    assert!(kept_somewhere, "RandomSubset never kept some unsynced writes and dropped others");
    assert!(torn_somewhere, "TornLast never tore a write");
}

/// A power loss in segments reused from compacted ones: a lost write leaves the earlier use's
/// bytes there, not zeros (the journal's `was=`), and recovery still finds exactly what was
/// reported durable, and the log goes on.
#[test]
fn power_loss_in_reused_segments_never_loses_what_was_reported_durable() {
    let mut old_bytes_restored = false;
    for mode in io_modes() {
        for how in [PowerLoss::All, PowerLoss::RandomSubset, PowerLoss::TornLast] {
            for seed in 0..4u64 {
                let mut setup = setup(mode);
                setup.config.spare_segments_max = 1;
                setup.config.recycled_segments_max = 4;
                let (mut log, _) = setup.open(false);
                log.submit(1, &entries(1, 10), Some(HardState { term: 1, vote: Some(1), commit: 0 })).expect("a");
                // Append and compact until the writer has moved into reused segments.
                let (mut next, mut token) = (11, 2u64);
                while log.stats().segments_reused < 2 {
                    assert!(next < 20_000, "{mode:?}: no segment was reused: {:?}", log.stats());
                    log.submit(token, &entries(next, next + 9), None).expect("submit");
                    (next, token) = (next + 10, token + 1);
                    log.sync_all().expect("sync");
                    log.compact(next - 6).expect("compact");
                }
                // Then submits that are partly durable when the power goes, as above.
                let mut reported = log.durable();
                for step in 0..30u64 {
                    let count = 1 + (step * 7 + seed) % 4;
                    log.submit(token, &entries(next, next + count - 1), None).expect("submit");
                    (next, token) = (next + count, token + 1);
                    if (step + seed).is_multiple_of(3) {
                        reported = log.poll().expect("poll");
                    }
                }
                drop(log);
                let journal = std::fs::read_to_string(&setup.journal).expect("journal");
                old_bytes_restored |= journal.lines().any(|line| line.contains(" was=") && !line.ends_with(" was=-"));
                let report = setup.power_loss(how, seed);
                let what = format!("{mode:?} {how:?} seed {seed}: {report}");
                let (mut log, recovered) = setup.open(false);
                assert_reported_kept(&recovered, reported, &what);
                assert_holds(&log, &entries(recovered.first_index, recovered.last_index));

                // A second power loss right after the first one's cut: entries of other sizes
                // over the cut tail (the bytes the first loss left there), partly durable.
                let last = recovered.last_index;
                let mut written: Vec<Entry> = entries(recovered.first_index, last);
                let mut reported = log.durable();
                for step in 0..24u64 {
                    let from = written.last().map_or(1, |e| e.index + 1);
                    let batch: Vec<Entry> = (from..from + 1 + step % 3)
                        .map(|i| entry(i, 2, 40 + (i * 211 + seed) as usize % 1400))
                        .collect();
                    log.submit(100 + step, &batch, None).expect("submit over the cut");
                    written.extend(batch);
                    if (step + seed).is_multiple_of(4) {
                        reported = log.poll().expect("poll");
                    }
                }
                drop(log);
                let report = setup.power_loss(how, seed + 1);
                let what = format!("{what}; second loss: {report}");
                let (mut log, recovered) = setup.reopen_plain();
                assert_reported_kept(&recovered, reported, &what);
                let first = written.iter().position(|e| e.index == recovered.first_index).expect("first");
                let last = recovered.last_index;
                assert_holds(&log, &written[first..=written.iter().position(|e| e.index == last).expect("last")]);
                let after: Vec<Entry> = (last + 1..=last + 3).map(|i| entry(i, 3, 100)).collect();
                log.submit(1, &after, None).expect("append after recovery");
                assert_eq!(log.sync_all().expect("sync").index, last + 3, "{what}");
                drop(log);
                let (log, reopened) = setup.reopen_plain();
                assert_eq!(reopened.last_index, last + 3, "{what}");
                assert_eq!(reopened.torn_tail, None, "{what}: a clean reopen in a reused segment is not a torn tail");
                assert_holds(&log, &after);
            }
        }
    }
    assert!(old_bytes_restored, "no write over an earlier use's records was journaled");
}

/// The planted bug must be observable: entries and a hard state reported durable are gone after
/// a power loss. (Were they not, the power-loss tests built on this would be blind.)
#[test]
fn planted_ack_before_fsync_bug_loses_entries_reported_durable() {
    for mode in io_modes() {
        let setup = setup(mode);
        let (mut log, _) = setup.open(true);
        log.submit(1, &entries(1, 10), Some(HardState { term: 3, vote: Some(1), commit: 0 })).expect("submit");
        let mut durable = log.poll().expect("poll");
        for _ in 0..1000 {
            if durable.index == 10 {
                break;
            }
            durable = log.wait().expect("wait");
        }
        assert_eq!((durable.index, durable.token), (10, 1), "{mode:?}: reported durable on write completion");
        assert_eq!(log.hard_state().term, 3, "{mode:?}: the hard state too");
        assert_eq!(log.stats().syncs_completed, 0, "{mode:?}: no fdatasync was issued");
        drop(log);
        let report = setup.power_loss(PowerLoss::All, 7);
        assert_eq!(report.writes_synced, 0, "{mode:?}: {report}");
        let (_, recovered) = setup.reopen_plain();
        assert_eq!(recovered.last_index, 0, "{mode:?}: the entries reported durable are lost ({report})");
        assert_eq!(recovered.hard_state, HardState::default(), "{mode:?}: the hard state reported durable is lost");
    }
}

/// A state slot that an unsynced update overwrote goes back to its last synced content, and
/// recovery picks the newest valid slot.
#[test]
fn unsynced_state_updates_revert_to_the_last_synced_slot() {
    let setup = setup(IoMode::Fallback);
    let (mut log, _) = setup.open(false);
    log.submit(1, &entries(1, 2), Some(HardState { term: 2, vote: Some(1), commit: 0 })).expect("submit");
    log.submit(2, &[], Some(HardState { term: 2, vote: Some(1), commit: 2 })).expect("submit");
    log.sync_all().expect("sync");
    log.submit(3, &[], Some(HardState { term: 3, vote: Some(2), commit: 2 })).expect("submit");
    log.sync_all().expect("sync");
    drop(log);
    // Reopened with the bug planted: the next two updates (one per slot) are never synced.
    let (mut log, _) = setup.open(true);
    for (token, term) in [(1u64, 4u64), (2, 5), (3, 6)] {
        log.submit(token, &[], Some(HardState { term, vote: Some(3), commit: 2 })).expect("submit");
        log.sync_all().expect("sync");
        assert_eq!(log.hard_state().term, term);
    }
    drop(log);
    let report = setup.power_loss(PowerLoss::All, 3);
    assert_eq!(report.writes_reverted, 3, "{report}");
    let (_, recovered) = setup.reopen_plain();
    assert_eq!(recovered.hard_state, HardState { term: 3, vote: Some(2), commit: 2 });
    assert_eq!(recovered.last_index, 2);
}

#[test]
fn drop_unsynced_refuses_a_log_that_is_open() {
    let setup = setup(IoMode::Fallback);
    let (log, _) = setup.open(false);
    let error = drop_unsynced(&setup.dir, &setup.journal, PowerLoss::All, 0).expect_err("the log is open");
    assert!(matches!(error, LogError::Locked { .. }), "{error}");
    drop(log);
    drop_unsynced(&setup.dir, &setup.journal, PowerLoss::All, 0).expect("stopped now");
}

/// Both I/O paths journal every write before issuing it and every sync after it completed.
#[test]
fn both_io_paths_journal_writes_and_completed_syncs() {
    for mode in io_modes() {
        let setup = setup(mode);
        let (mut log, _) = setup.open(false);
        for token in 1..=5u64 {
            log.submit(
                token,
                &entries(token * 20 - 19, token * 20),
                Some(HardState { term: token, ..HardState::default() }),
            )
            .expect("submit");
            log.sync_all().expect("sync");
        }
        drop(log);
        let text = std::fs::read_to_string(&setup.journal).expect("journal");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("O slot0="), "{mode:?}: {}", lines[0]);
        let segment_writes = lines.iter().filter(|l| l.starts_with("W ") && l.contains(".seg ")).count();
        let state_writes = lines.iter().filter(|l| l.starts_with("W ") && l.contains(" state ")).count();
        let syncs = lines.iter().filter(|l| l.starts_with("S ")).count();
        // 100 entries of ~640 bytes in 60 KiB of records per segment: two segments, so at least
        // one submit is split in two writes.
        assert!(segment_writes >= 6, "{mode:?}: {text}");
        assert_eq!(state_writes, 5, "{mode:?}: {text}");
        assert!(syncs >= 5, "{mode:?}: {text}");
        let last_sync = lines.iter().rev().find(|l| l.starts_with("S ")).expect("a sync");
        assert!(last_sync.contains(".seg") && last_sync.contains("state"), "{mode:?}: {last_sync}");
        // Everything was synced: a power loss reverts nothing.
        let report = setup.power_loss(PowerLoss::All, 0);
        assert_eq!((report.writes_reverted, report.writes_synced), (0, report.writes_journaled), "{report}");
    }
}
