//! The segment files' housekeeping, on a background thread off the append path: preallocation
//! of segments ahead of need, and deletion of the segments a compaction dropped.
//!
//! Creating a 64 MiB segment means writing 64 MiB of zeroes and three fsyncs: hundreds of
//! milliseconds that must never stall an append. The writer asks for segments by sequence number
//! and takes finished ones in the same order; both channels are bounded by `spare_segments_max`.
//!
//! Deleting compacted segments (an unlink each, then a directory fsync, a journal commit that on
//! a file system mounted with `discard` also trims the freed blocks) took the log writer 7-26 ms
//! per compaction at full load, during which no append was written. It is safe to do later, or
//! not at all before a crash: the log's new base is durable in the state file before any segment
//! is handed over here, and segments below it are ignored, then deleted, at open. So a failed
//! deletion is logged, not fatal.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError, bounded, select};

use crate::config::LogConfig;
use crate::error::LogError;
use crate::segment::{create_segment, sync_dir};

type Made = (u64, Result<PathBuf, LogError>);

/// Compactions whose segments may wait for deletion at once; beyond it the writer deletes them
/// itself (a compaction comes once per snapshot, so this is only reached if the disk stalls).
const REMOVALS_QUEUED_MAX: usize = 4;

#[derive(Debug)]
pub(crate) struct Housekeeper {
    dir: PathBuf,
    requests: Option<Sender<u64>>,
    removals: Option<Sender<Vec<PathBuf>>>,
    made: Receiver<Made>,
    thread: Option<JoinHandle<()>>,
    /// Requested and not yet taken.
    outstanding: usize,
}

impl Housekeeper {
    pub(crate) fn start(dir: &Path, config: &LogConfig) -> Result<Housekeeper, LogError> {
        let depth = config.spare_segments_max as usize;
        let (requests, request_rx) = bounded::<u64>(depth);
        let (removals, removal_rx) = bounded::<Vec<PathBuf>>(REMOVALS_QUEUED_MAX);
        let (made_tx, made) = bounded::<Made>(depth);
        let (thread_dir, config) = (dir.to_path_buf(), config.clone());
        let thread = std::thread::Builder::new()
            .name("smr-log-keeper".into())
            .spawn(move || {
                crate::background::lower_thread_priority();
                loop {
                    select! {
                        recv(request_rx) -> sequence => {
                            let Ok(sequence) = sequence else { break };
                            let result = create_segment(&thread_dir, &config, sequence);
                            if made_tx.send((sequence, result)).is_err() {
                                break;
                            }
                        }
                        recv(removal_rx) -> paths => {
                            let Ok(paths) = paths else { break };
                            remove_segments(&thread_dir, &paths);
                        }
                    }
                }
                // Closing: deletions already handed over are still done.
                for paths in removal_rx.try_iter() {
                    remove_segments(&thread_dir, &paths);
                }
            })
            .map_err(|e| LogError::Io { op: "spawn housekeeping thread", path: Default::default(), source: e })?;
        Ok(Housekeeper {
            dir: dir.to_path_buf(),
            requests: Some(requests),
            removals: Some(removals),
            made,
            thread: Some(thread),
            outstanding: 0,
        })
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Asks for segment `sequence`. The caller keeps `outstanding()` below `spare_segments_max`,
    /// so this never blocks.
    pub(crate) fn request(&mut self, sequence: u64) -> Result<(), LogError> {
        self.requests.as_ref().expect("running").send(sequence).map_err(|_| LogError::thread_gone("housekeeping"))?;
        self.outstanding += 1;
        Ok(())
    }

    /// Takes the next finished segment: waits for it with `block`, else `Ok(None)` when none is
    /// finished yet.
    pub(crate) fn take(&mut self, block: bool) -> Result<Option<Made>, LogError> {
        if self.outstanding == 0 {
            return Ok(None);
        }
        let made = if block { self.made.recv().map_err(|_| TryRecvError::Disconnected) } else { self.made.try_recv() };
        match made {
            Ok(made) => {
                self.outstanding -= 1;
                Ok(Some(made))
            }
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(LogError::thread_gone("housekeeping")),
        }
    }

    /// Deletes compacted segments, in the background unless `REMOVALS_QUEUED_MAX` compactions
    /// are already waiting (then here). Never blocks on the disk otherwise, never fails: see the
    /// module doc.
    pub(crate) fn remove(&mut self, paths: Vec<PathBuf>) {
        if paths.is_empty() {
            return;
        }
        match self.removals.as_ref().expect("running").try_send(paths) {
            Ok(()) => {}
            Err(TrySendError::Full(paths) | TrySendError::Disconnected(paths)) => remove_segments(&self.dir, &paths),
        }
    }
}

/// Deletes `paths` and makes the deletions durable; failures are logged (the segments are below
/// the log's durable base, so open deletes any that are left).
fn remove_segments(dir: &Path, paths: &[PathBuf]) {
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                "deleting compacted segment {} failed (it is deleted at the next open): {e}",
                path.display()
            ),
        }
    }
    if let Err(e) = sync_dir(dir) {
        tracing::warn!("syncing {} after deleting compacted segments failed: {e}", dir.display());
    }
}

impl Drop for Housekeeper {
    fn drop(&mut self) {
        self.requests.take();
        self.removals.take();
        // Drain finished segments so the thread is never stuck on a full channel, then join: the
        // deletions handed over are done by the time the log is closed.
        while self.made.recv().is_ok() {}
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handed_over_deletions_are_done_by_the_time_it_is_dropped_and_a_missing_file_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig::new(1, 1, 0);
        let mut keeper = Housekeeper::start(dir.path(), &config).unwrap();
        let mut all = Vec::new();
        for batch in 0..(REMOVALS_QUEUED_MAX + 3) {
            let paths: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("{batch}-{i}.seg"))).collect();
            for path in &paths[1..] {
                std::fs::write(path, b"compacted").unwrap();
            }
            all.extend(paths.clone());
            // The first of each batch does not exist.
            keeper.remove(paths);
        }
        drop(keeper);
        let left: Vec<_> = all.iter().filter(|p| p.exists()).collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}
