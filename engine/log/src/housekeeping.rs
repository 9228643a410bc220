//! The segment files' housekeeping, on a background thread off the append path: preallocation
//! of segments ahead of need, and reuse or deletion of the segments a compaction dropped.
//!
//! Creating a 64 MiB segment means writing 64 MiB of zeroes and three fsyncs: hundreds of
//! milliseconds that must never stall an append. The writer asks for segments by sequence number
//! and takes finished ones in the same order; both channels are bounded by `spare_segments_max`.
//!
//! A compacted segment no one maps any more is kept for reuse, up to `recycled_segments_max` of
//! them, and the next segment asked for is made from one (`segment::recycle_segment`: a rename
//! and a header) rather than written afresh: at full load the zeroes were half of what the disk
//! wrote. The rest are deleted.
//!
//! Deleting compacted segments (an unlink each, then a directory fsync, a journal commit that on
//! a file system mounted with `discard` also trims the freed blocks) took the log writer 7-26 ms
//! per compaction at full load, during which no append was written. It is safe to do later, or
//! not at all before a crash: the log's new base is durable in the state file before any segment
//! is handed over here, and segments below it are ignored, then deleted, at open. So a failed
//! deletion is logged, not fatal.
//!
//! A file's blocks are freed when its last name, descriptor and mapping are all gone, by
//! whichever comes last: an unlinked segment still mapped by a reader was freed by that reader's
//! `munmap`, 70-110 ms on the apply stage at 256 outstanding (the stage, run inline by a peer
//! reader or the core's thread, then stopped hearing the leader or sending heartbeats, and a
//! follower called an election). So the writer hands over its own references with the path, and
//! the segment is deleted here once this thread holds the only ones (or after
//! [`RETIRED_WAIT_MAX`]): the readers' drops then cost a counter each, and the freeing is done
//! here.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError, bounded, select};

use crate::config::LogConfig;
use crate::error::LogError;
use crate::reader::SegmentView;
use crate::segment::{Fill, create_segment, recycle_segment, sync_dir};

/// A segment asked for: its sequence, and its path and how it was made (zero-filled or reused).
type Made = (u64, Result<(PathBuf, Fill), LogError>);

/// Compactions whose segments may wait for deletion at once; beyond it the writer deletes them
/// itself (a compaction comes once per snapshot, so this is only reached if the disk stalls).
const REMOVALS_QUEUED_MAX: usize = 4;
/// Segments handed over and not yet deleted, waiting for their readers to let go; beyond it the
/// oldest is deleted at once.
const RETIRED_MAX: usize = 256;
/// How long a handed-over segment waits for its readers to let go before it is deleted anyway
/// (its blocks are then freed by whoever drops the last mapping, as without this wait).
const RETIRED_WAIT_MAX: Duration = Duration::from_secs(30);
/// How often segments waiting for their readers are looked at.
const RETIRED_POLL: Duration = Duration::from_millis(20);
/// The thread's wait for work when no segment is waiting (the channels wake it sooner).
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// A compacted segment: its path, and the writer's references to its mapping and descriptor.
#[derive(Debug)]
pub(crate) struct Retired {
    pub(crate) path: PathBuf,
    pub(crate) view: Arc<SegmentView>,
    pub(crate) file: Arc<File>,
}

impl Retired {
    /// Whether no one else holds its mapping or descriptor: dropping it frees them here.
    fn held_here_only(&self) -> bool {
        Arc::strong_count(&self.view) == 1
            && Arc::strong_count(&self.view.map) == 1
            && Arc::strong_count(&self.file) == 1
    }
}

/// Segments handed over, in the order they came, and those kept for reuse.
#[derive(Debug, Default)]
struct RetiredSegments {
    waiting: Vec<(Instant, Retired)>,
    /// Paths of compacted segments no one maps, kept to be reused (at most `reuse_max`).
    reusable: Vec<PathBuf>,
    reuse_max: usize,
    /// `reusable.len()`, for the writer's thread to read.
    reusable_count: Arc<AtomicUsize>,
}

impl RetiredSegments {
    fn new(reuse_max: usize, reusable_count: Arc<AtomicUsize>) -> RetiredSegments {
        RetiredSegments { reuse_max, reusable_count, ..RetiredSegments::default() }
    }

    fn publish(&self) {
        self.reusable_count.store(self.reusable.len(), Ordering::Relaxed);
    }

    fn add(&mut self, segments: Vec<Retired>, now: Instant) {
        self.waiting.extend(segments.into_iter().map(|segment| (now, segment)));
    }

    /// Keeps for reuse (while there is room) or deletes the segments held here only; deletes
    /// those that waited [`RETIRED_WAIT_MAX`] and the oldest beyond [`RETIRED_MAX`]. With `all`,
    /// deletes every one, the reusable ones too. A segment a reader may still map is never kept
    /// for reuse: its bytes are about to change.
    fn delete_due(&mut self, dir: &Path, now: Instant, all: bool) {
        let excess = self.waiting.len().saturating_sub(RETIRED_MAX);
        let mut due = if all { std::mem::take(&mut self.reusable) } else { Vec::new() };
        let mut index = 0;
        let (reusable, reuse_max) = (&mut self.reusable, self.reuse_max);
        self.waiting.retain(|(since, segment)| {
            index += 1;
            let free = segment.held_here_only();
            if free && !all && reusable.len() < reuse_max {
                reusable.push(segment.path.clone());
                return false;
            }
            let go = all || index <= excess || free || now >= *since + RETIRED_WAIT_MAX;
            if go {
                due.push(segment.path.clone());
            }
            !go
        });
        self.publish();
        // `retain` dropped the due segments' references: their mappings and descriptors are
        // closed, so the unlinks below free the blocks.
        if !due.is_empty() {
            remove_segments(dir, &due);
        }
    }

    /// Segment `sequence`, from a reusable segment if there is one (one that cannot be reused is
    /// deleted, and the next tried), else created afresh.
    fn make(&mut self, dir: &Path, config: &LogConfig, sequence: u64) -> Result<(PathBuf, Fill), LogError> {
        while let Some(old) = self.reusable.pop() {
            self.publish();
            match recycle_segment(dir, config, sequence, &old) {
                Ok(path) => return Ok((path, Fill::Recycled)),
                Err(error @ LogError::SyncFailed { .. }) => return Err(error),
                Err(error) => {
                    tracing::warn!("reusing {} failed, deleting it instead: {error}", old.display());
                    remove_segments(dir, &[old]);
                }
            }
        }
        create_segment(dir, config, sequence).map(|path| (path, Fill::Zeros))
    }

    /// Whether segments wait for their readers (then they are looked at every [`RETIRED_POLL`]).
    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[derive(Debug)]
pub(crate) struct Housekeeper {
    dir: PathBuf,
    requests: Option<Sender<u64>>,
    removals: Option<Sender<Vec<Retired>>>,
    made: Receiver<Made>,
    thread: Option<JoinHandle<()>>,
    /// Requested and not yet taken.
    outstanding: usize,
    /// Compacted segments kept for reuse now.
    reusable: Arc<AtomicUsize>,
}

impl Housekeeper {
    pub(crate) fn start(dir: &Path, config: &LogConfig) -> Result<Housekeeper, LogError> {
        let depth = config.spare_segments_max as usize;
        let (requests, request_rx) = bounded::<u64>(depth);
        let (removals, removal_rx) = bounded::<Vec<Retired>>(REMOVALS_QUEUED_MAX);
        let (made_tx, made) = bounded::<Made>(depth);
        let (thread_dir, config) = (dir.to_path_buf(), config.clone());
        let reusable = Arc::new(AtomicUsize::new(0));
        let reusable_count = Arc::clone(&reusable);
        let thread = std::thread::Builder::new()
            .name("smr-log-keeper".into())
            .spawn(move || {
                crate::background::lower_thread_priority();
                let mut retired = RetiredSegments::new(config.recycled_segments_max as usize, reusable_count);
                loop {
                    let poll = if retired.is_empty() { IDLE_WAIT } else { RETIRED_POLL };
                    select! {
                        recv(request_rx) -> sequence => {
                            let Ok(sequence) = sequence else { break };
                            let result = retired.make(&thread_dir, &config, sequence);
                            if made_tx.send((sequence, result)).is_err() {
                                break;
                            }
                        }
                        recv(removal_rx) -> segments => {
                            let Ok(segments) = segments else { break };
                            retired.add(segments, Instant::now());
                        }
                        default(poll) => {}
                    }
                    if !retired.is_empty() {
                        retired.delete_due(&thread_dir, Instant::now(), false);
                    }
                }
                // Closing: deletions already handed over are still done.
                for segments in removal_rx.try_iter() {
                    retired.add(segments, Instant::now());
                }
                retired.delete_due(&thread_dir, Instant::now(), true);
            })
            .map_err(|e| LogError::Io { op: "spawn housekeeping thread", path: Default::default(), source: e })?;
        Ok(Housekeeper {
            dir: dir.to_path_buf(),
            requests: Some(requests),
            removals: Some(removals),
            made,
            thread: Some(thread),
            outstanding: 0,
            reusable,
        })
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Compacted segments kept for reuse now.
    pub(crate) fn reusable(&self) -> usize {
        self.reusable.load(Ordering::Relaxed)
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
    pub(crate) fn remove(&mut self, segments: Vec<Retired>) {
        if segments.is_empty() {
            return;
        }
        match self.removals.as_ref().expect("running").try_send(segments) {
            Ok(()) => {}
            Err(TrySendError::Full(segments) | TrySendError::Disconnected(segments)) => {
                let paths: Vec<PathBuf> = segments.into_iter().map(|segment| segment.path).collect();
                remove_segments(&self.dir, &paths);
            }
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
    use memmap2::Mmap;

    use super::*;
    use crate::record::SegmentKey;
    use crate::segment::SEGMENT_HEADER_BYTES;

    /// A file at `path` of 8192 bytes (`reuse_config`'s segments), mapped, as the writer hands it
    /// over.
    fn retired(path: &Path) -> Retired {
        std::fs::write(path, vec![0u8; SEGMENT_HEADER_BYTES as usize + 4096]).unwrap();
        let file = File::open(path).unwrap();
        // SAFETY: the test's own file, not changed while mapped.
        let map = unsafe { Mmap::map(&file) }.unwrap();
        Retired {
            path: path.to_path_buf(),
            view: Arc::new(SegmentView::new(SegmentKey { sequence: 1, salt: 0 }, Arc::new(map))),
            file: Arc::new(file),
        }
    }

    #[test]
    fn handed_over_deletions_are_done_by_the_time_it_is_dropped_and_a_missing_file_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig::new(1, 1, 0);
        let mut keeper = Housekeeper::start(dir.path(), &config).unwrap();
        let mut all = Vec::new();
        let mut still_mapped = Vec::new();
        for batch in 0..(REMOVALS_QUEUED_MAX + 3) {
            let paths: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("{batch}-{i}.seg"))).collect();
            let mut segments: Vec<Retired> = paths.iter().map(|path| retired(path)).collect();
            // The first of each batch is gone already, and a reader still maps the last.
            std::fs::remove_file(&paths[0]).unwrap();
            still_mapped.push(Arc::clone(&segments[2].view));
            all.extend(paths);
            keeper.remove(std::mem::take(&mut segments));
        }
        drop(keeper);
        let left: Vec<_> = all.iter().filter(|p| p.exists()).collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn a_segment_still_mapped_by_a_reader_is_deleted_once_the_reader_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = LogConfig::new(1, 1, 0);
        config.recycled_segments_max = 0;
        let mut keeper = Housekeeper::start(dir.path(), &config).unwrap();
        let (held, free) = (dir.path().join("held.seg"), dir.path().join("free.seg"));
        let (held_segment, free_segment) = (retired(&held), retired(&free));
        let reader = Arc::clone(&held_segment.view.map);
        keeper.remove(vec![held_segment, free_segment]);
        eventually("a segment held by no one else was not deleted", || !free.exists());
        // Several polls later, the one a reader maps is still there: its unlink waits for the
        // reader, so that freeing its blocks is done on the housekeeping thread.
        std::thread::sleep(RETIRED_POLL * 5);
        assert!(held.exists(), "deleted while a reader still mapped it");
        drop(reader);
        eventually("not deleted after its reader let go", || !held.exists());
        drop(keeper);
    }

    fn reuse_config(reuse_max: u32) -> LogConfig {
        let mut config = LogConfig::new(1, 1, 0);
        config.segment_bytes = SEGMENT_HEADER_BYTES + 4096;
        config.entry_bytes_max = 1024;
        config.submit_bytes_max = 4096;
        config.recycled_segments_max = reuse_max;
        config
    }

    /// Waits until `done`, at most 10 s.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn compacted_segments_no_one_maps_are_reused_up_to_the_limit_and_the_rest_deleted() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let config = reuse_config(2);
        let mut keeper = Housekeeper::start(dir.path(), &config).unwrap();
        let paths: Vec<PathBuf> = (1..=4).map(|s| crate::segment::segment_path(dir.path(), s)).collect();
        let segments: Vec<Retired> = paths.iter().map(|path| retired(path)).collect();
        let inodes: Vec<u64> = paths.iter().map(|p| std::fs::metadata(p).unwrap().ino()).collect();
        // A reader still maps segment 4: it may be deleted later, never reused.
        let reader = Arc::clone(&segments[3].view.map);
        keeper.remove(segments);
        // Two are kept for reuse, the third free one is deleted.
        eventually("the free segment beyond the limit was not deleted", || {
            paths[..3].iter().filter(|p| p.exists()).count() == 2
        });
        assert_eq!(keeper.reusable(), 2);
        assert!(paths[3].exists());
        // The next two segments asked for are the kept files, renamed and marked reused; the
        // third is a new file, zero-filled.
        let mut made = Vec::new();
        for sequence in 10..13 {
            keeper.request(sequence).unwrap();
            let (got, result) = keeper.take(true).unwrap().expect("made");
            let (path, fill) = result.expect("segment made");
            assert_eq!(got, sequence);
            let segment = crate::segment::SegmentFile::open(&path, sequence, &config).expect("a valid segment");
            assert_eq!(segment.fill, fill);
            made.push((fill, std::fs::metadata(&path).unwrap().ino()));
        }
        assert_eq!(made.iter().filter(|(fill, _)| *fill == Fill::Recycled).count(), 2, "{made:?}");
        assert_eq!(made[2].0, Fill::Zeros, "none left to reuse: {made:?}");
        for (_, inode) in &made[..2] {
            assert!(inodes[..3].contains(inode), "a reused segment is one of the compacted files");
        }
        assert!(paths[..3].iter().all(|p| !p.exists()), "the reused files were renamed");
        assert!(paths[3].exists(), "the mapped one was neither reused nor deleted");
        // Once its reader lets go, it is free, and there is room to keep it: the next segment
        // is made from it.
        let inode = std::fs::metadata(&paths[3]).unwrap().ino();
        drop(reader);
        eventually("the segment its reader let go of was not kept", || keeper.reusable() == 1);
        keeper.request(13).unwrap();
        let (_, result) = keeper.take(true).unwrap().expect("made");
        let (path, fill) = result.expect("segment made");
        assert_eq!((fill, std::fs::metadata(&path).unwrap().ino()), (Fill::Recycled, inode));
        drop(keeper);
    }

    #[test]
    fn segments_kept_for_reuse_are_deleted_when_the_log_closes() {
        let dir = tempfile::tempdir().unwrap();
        let mut keeper = Housekeeper::start(dir.path(), &reuse_config(4)).unwrap();
        let paths: Vec<PathBuf> = (1..=3).map(|s| crate::segment::segment_path(dir.path(), s)).collect();
        keeper.remove(paths.iter().map(|path| retired(path)).collect());
        eventually("not kept for reuse", || keeper.reusable() == 3);
        assert!(paths.iter().all(|p| p.exists()), "kept for reuse");
        drop(keeper);
        assert!(paths.iter().all(|p| !p.exists()), "deleted at close");
    }
}
