//! I/O faults: a failed fsync is fatal and acknowledges nothing; a full disk refuses appends
//! and loses nothing; both I/O paths write the same bytes.

use std::path::Path;
use std::process::Command;

use super::{assert_holds, entry, io_modes, small_config};
use crate::{IoMode, Log, LogError};

#[test]
fn failed_fsync_is_fatal_and_acknowledges_nothing_after_it() {
    for mode in io_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = Log::open(dir.path(), small_config(mode)).expect("open");
        log.submit(1, &[entry(1, 1, 100)], None).expect("submit");
        assert_eq!(log.sync_all().expect("sync").token, 1);
        // The next sync job (number 1) fails as if fdatasync returned EIO.
        log.seams.fail_sync_job = Some(1);
        log.submit(2, &[entry(2, 1, 100)], None).expect("submit");
        let error = log.sync_all().expect_err("the fsync failure surfaces");
        assert!(matches!(error, LogError::SyncFailed { .. }), "{mode:?}: {error}");
        assert!(error.is_fatal());
        assert_eq!(error.exit_code(), Some(crate::EXIT_CODE_SYNC_FAILED));
        assert_eq!(log.durable().token, 1, "nothing after the failed fsync is reported durable");
        assert_eq!(log.durable_through(), 1);
        // Never retried: every later call refuses.
        assert!(matches!(log.submit(3, &[entry(3, 1, 10)], None), Err(LogError::Stopped { .. })));
        assert!(matches!(log.wait(), Err(LogError::Stopped { .. })));
        assert!(log.poll().expect_err("stopped").is_fatal());
    }
}

#[test]
fn io_uring_and_fallback_write_identical_bytes() {
    if io_modes().len() < 2 {
        eprintln!("SKIPPED io_uring/fallback parity: io_uring is unavailable on this machine");
        return;
    }
    let mut images = Vec::new();
    for mode in [IoMode::Uring, IoMode::Fallback] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, recovered) = Log::open(dir.path(), small_config(mode)).expect("open");
        assert_eq!(recovered.io, if mode == IoMode::Uring { "io_uring" } else { "pwrite+fdatasync" });
        for token in 1..=40u64 {
            let entries: Vec<_> =
                (token * 5 - 4..=token * 5).map(|i| entry(i, 1 + token / 10, (i * 97 % 2000) as usize)).collect();
            let hard_state =
                (token % 7 == 0).then_some(smr_raft::HardState { term: 1 + token / 10, vote: Some(1), commit: 0 });
            log.submit(token, &entries, hard_state).expect("submit");
            // A sync per submit makes the durable-frontier claims independent of timing.
            log.sync_all().expect("sync");
        }
        drop(log);
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry"))
            .map(|e| {
                (e.file_name().to_string_lossy().into_owned(), without_salt(&std::fs::read(e.path()).expect("read")))
            })
            .collect();
        files.sort();
        images.push(files);
    }
    let (uring, fallback) = (&images[0], &images[1]);
    let names = |files: &Vec<(String, Vec<u8>)>| files.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    // Spares may differ in number (preallocation timing); compare the files both have.
    for (name, bytes) in uring {
        if let Some((_, other)) = fallback.iter().find(|(n, _)| n == name) {
            assert!(bytes == other, "{name} differs between io_uring and the fallback");
        }
    }
    assert!(names(uring).len() >= 3 && names(fallback).len() >= 3);
}

/// A file's bytes with what depends on its segment's random salt zeroed: in a segment, the
/// header's salt and CRC and every record's CRC and tag (records found by walking them under
/// the segment's own key). Other files as they are.
fn without_salt(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if bytes.len() < 4096 || &bytes[0..8] != b"SMRLOGSG" {
        return out;
    }
    let sequence = u64::from_le_bytes(bytes[40..48].try_into().expect("8 bytes"));
    let salt = u64::from_le_bytes(bytes[64..72].try_into().expect("8 bytes"));
    let key = crate::record::SegmentKey { sequence, salt };
    out[12..16].fill(0);
    out[64..72].fill(0);
    let mut offset = 4096u64;
    while let Ok(record) = crate::record::check_record(bytes, key, offset, 1 << 20) {
        let at = offset as usize;
        out[at..at + 4].fill(0);
        out[at + 26..at + 28].fill(0);
        offset = record.end;
    }
    out
}

/// Mounts a tmpfs of `bytes` at `dir`; `false` when this process may not (not root, no mount).
fn mount_tmpfs(dir: &Path, bytes: u64) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return false;
    }
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn full_disk_refuses_appends_loses_nothing_and_recovers_when_space_returns() {
    let mount = tempfile::tempdir().expect("tempdir");
    if !mount_tmpfs(mount.path(), 1 << 20) {
        eprintln!("SKIPPED full-disk test: needs root and mount(8) to make a 1 MiB tmpfs");
        return;
    }
    let result = std::panic::catch_unwind(|| full_disk(mount.path()));
    let _ = Command::new("umount").arg(mount.path()).status();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn full_disk(mount: &Path) {
    let dir = mount.join("log");
    let mut config = small_config(IoMode::Auto);
    config.spare_segments_max = 1;
    let (mut log, _) = Log::open(&dir, config.clone()).expect("open");
    // Leave room for only a few 64 KiB segments.
    let filler = mount.join("filler");
    std::fs::write(&filler, vec![0x5Au8; 640 << 10]).expect("filler");
    let mut appended = Vec::new();
    let mut token = 0;
    let refusal = loop {
        token += 1;
        let index = appended.len() as u64 + 1;
        let batch: Vec<_> = (index..index + 8).map(|i| entry(i, 1, 1500)).collect();
        match log.submit(token, &batch, None) {
            Ok(()) => {
                appended.extend(batch);
                log.sync_all().expect("sync");
            }
            Err(error) => break error,
        }
        assert!(token < 1000, "the disk never filled");
    };
    assert!(matches!(refusal, LogError::NoSpace { .. }), "{refusal}");
    assert!(!refusal.is_fatal(), "a full disk is a refusal, not a stop");
    assert!(refusal.to_string().contains("no space"), "{refusal}");
    // Nothing durable was lost and the log still works for what it holds.
    assert_eq!(log.durable_through(), appended.len() as u64);
    assert_holds(&log, &appended);
    // Space comes back: the same submit now succeeds.
    std::fs::remove_file(&filler).expect("free space");
    let index = appended.len() as u64 + 1;
    let batch: Vec<_> = (index..index + 8).map(|i| entry(i, 1, 1500)).collect();
    log.submit(token, &batch, None).expect("appends resume once space is free");
    appended.extend(batch);
    log.sync_all().expect("sync");
    drop(log);
    let (log, recovered) = Log::open(&dir, config).expect("reopen");
    assert_eq!(recovered.last_index, appended.len() as u64);
    assert_holds(&log, &appended);
}
