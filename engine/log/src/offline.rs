//! Reading a stopped node's log without changing it: for `smr log verify` and `smr log dump`.
//!
//! [`Log::open`](crate::Log::open) is the wrong tool for inspection: it creates missing files,
//! takes the directory's lock exclusively, deletes stale segments, cuts a torn tail and syncs.
//! [`ReadOnlyLog`] runs the same recovery (every CRC checked, torn tail told from corruption the
//! same way) over read-only mappings, opens every file read-only, and writes nothing: a torn tail
//! is reported, not cut, and its entries are not served.
//!
//! It holds the directory's lock **shared** while it lives, if the lock file exists. A running
//! node holds it exclusively, so inspecting a running node's log is refused with
//! [`LogError::Locked`] (its tail moves under the reader and would read as torn), and a node
//! started during an inspection is refused the same way until the inspection ends.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use smr_raft::{HardState, Index, Term};

use crate::config::LogConfig;
use crate::error::LogError;
use crate::log::LOCK_FILE_NAME;
use crate::reader::{EntryRef, entry_at};
use crate::recovery::{SegmentImage, recover};
use crate::segment::{list_segments, map_read_only};
use crate::state::{STATE_FILE_NAME, read_state};

/// What [`verify`] found in a data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    pub hard_state: HardState,
    pub snapshot_index: Index,
    pub snapshot_term: Term,
    /// Last index a restart would recover.
    pub last_index: Index,
    pub last_term: Term,
    /// Segment files (sequence, records in the recovered log), in order.
    pub segments: Vec<(u64, usize)>,
    /// A torn tail a restart would cut, described; `None` when the log ends cleanly.
    pub torn_tail: Option<String>,
}

/// Checks every record of the log in `dir` without changing anything (for `smr log verify` on
/// a stopped node): the same checks as [`Log::open`](crate::Log::open), but a torn tail is only
/// reported, not cut. Equivalent to [`ReadOnlyLog::open`] followed by
/// [`ReadOnlyLog::verification`].
///
/// # Errors
/// The errors [`Log::open`](crate::Log::open) would stop with, a missing state file as
/// [`LogError::Corruption`], and [`LogError::Locked`] while a node has the log open.
pub fn verify(dir: &Path, config: &LogConfig) -> Result<Verification, LogError> {
    ReadOnlyLog::open(dir, config).map(|log| log.verification)
}

/// The `segment_bytes` the log in `dir` was written with, read from the header of its first
/// segment (magic, CRC and version checked), or `None` when `dir` holds no segment. A
/// [`LogConfig`] for [`verify`] or [`ReadOnlyLog::open`] must carry this size: every segment's
/// length is checked against it.
///
/// # Errors
/// [`LogError::Corruption`] for a bad first segment header; [`LogError::Io`].
pub fn recorded_segment_bytes(dir: &Path) -> Result<Option<u64>, LogError> {
    match list_segments(dir)?.first() {
        Some((_, path)) => crate::segment::recorded_segment_bytes(path).map(Some),
        None => Ok(None),
    }
}

/// One segment's mapping and the records of it that belong to the recovered log.
#[derive(Debug)]
struct OfflineSegment {
    map: Arc<Mmap>,
    /// The tag of its current use's records.
    tag: u16,
    /// (index, term, offset) of each record, consecutive indexes.
    records: Vec<(Index, Term, u64)>,
}

/// A stopped node's log, recovered in memory and read in place, never written. See the module
/// documentation for what it holds locked.
#[derive(Debug)]
pub struct ReadOnlyLog {
    verification: Verification,
    /// In index order: each segment's records continue the previous segment's.
    segments: Vec<OfflineSegment>,
    /// The shared lock, released on drop.
    _lock: Option<File>,
}

impl ReadOnlyLog {
    /// Recovers the log in `dir` without writing anything.
    ///
    /// # Errors
    /// As [`verify`].
    pub fn open(dir: &Path, config: &LogConfig) -> Result<ReadOnlyLog, LogError> {
        config.validate()?;
        let lock = lock_shared(dir)?;
        let Some(state) = read_state(dir, config)? else {
            return Err(LogError::Corruption {
                path: dir.join(STATE_FILE_NAME),
                offset: 0,
                index: 0,
                detail: "no state file".into(),
            });
        };
        let mut files = Vec::new();
        for (sequence, path) in list_segments(dir)? {
            // Segments below the minimum were discarded durably; `Log::open` deletes them.
            if sequence >= state.segment_sequence_min {
                let (map, key, fill) = map_read_only(&path, sequence, config)?;
                files.push((key, path, map, fill));
            }
        }
        let images: Vec<SegmentImage<'_>> = files
            .iter()
            .map(|(key, path, map, fill)| SegmentImage {
                sequence: key.sequence,
                salt: key.salt,
                path,
                bytes: &map[..],
                fill: *fill,
            })
            .collect();
        let plan = recover(&state, &images, config.entry_bytes_max)?;
        let verification = Verification {
            hard_state: state.hard_state,
            snapshot_index: state.snapshot_index,
            snapshot_term: state.snapshot_term,
            last_index: plan.last_index,
            last_term: plan.last_term,
            segments: plan.chains.iter().map(|c| (c.sequence, c.records.len())).collect(),
            torn_tail: plan.torn.map(|t| {
                format!(
                    "torn tail at {} offset {} (index {}; {} valid record(s) after it)",
                    t.path.display(),
                    t.offset,
                    t.expected_index,
                    t.records_dropped
                )
            }),
        };
        let mut segments = Vec::with_capacity(plan.chains.len());
        for chain in plan.chains {
            if chain.records.is_empty() {
                continue;
            }
            let (key, _, map, _) = files.iter().find(|(key, _, _, _)| key.sequence == chain.sequence).expect("planned");
            segments.push(OfflineSegment { map: Arc::clone(map), tag: key.tag(), records: chain.records });
        }
        Ok(ReadOnlyLog { verification, segments, _lock: lock })
    }

    /// What recovery found: the same as [`verify`] returns.
    pub fn verification(&self) -> &Verification {
        &self.verification
    }

    /// The entries `index_min..=index_max` that the recovered log holds (those a restart would
    /// keep: nothing at or below the snapshot, nothing of a torn tail), in index order, borrowed
    /// from the mappings. Every record was CRC-checked by the recovery in [`ReadOnlyLog::open`].
    pub fn entries(&self, index_min: Index, index_max: Index) -> impl Iterator<Item = EntryRef<'_>> + '_ {
        self.segments.iter().flat_map(move |segment| {
            // Indexes in a segment are consecutive from its first record's.
            let first = segment.records[0].0;
            let count = segment.records.len() as u64;
            let from = index_min.saturating_sub(first).min(count) as usize;
            let to = (index_max.saturating_sub(first).saturating_add(1)).min(count) as usize;
            let records = if index_max < first { &[][..] } else { &segment.records[from..to.max(from)] };
            records
                .iter()
                .filter_map(move |&(index, _, offset)| entry_at(&segment.map, offset as usize, index, segment.tag))
        })
    }
}

/// Takes the directory's lock shared, if the lock file exists (a log never opened for writing
/// has none, and creating one would be a write).
fn lock_shared(dir: &Path) -> Result<Option<File>, LogError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE_NAME);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io("open", &path, e)),
    };
    // SAFETY: flock takes a file descriptor that `file` keeps open for the call's duration.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if locked != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(LogError::Locked { path });
        }
        return Err(LogError::io("flock", &path, error));
    }
    Ok(Some(file))
}
