//! The log writer: one owner thread drives it through `&mut self`.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use smr_raft::{Entry, HardState, Index, SnapshotMeta, Term};

use crate::config::{FORCE_FALLBACK_ENV, IoMode, LogConfig};
use crate::error::LogError;
use crate::fallback::FallbackIo;
use crate::fault::{Faults, Journal, journal_name};
use crate::housekeeping::{Housekeeper, Retired};
use crate::io::{Backend, Completion, LogWaker, StateWrite, SyncJob};
use crate::reader::{EntryRef, LogReader, SegmentView, Shared, collect};
use crate::record::{Position, SegmentKey, encode_record, record_bytes};
use crate::recovery::{SegmentImage, recover};
use crate::segment::{
    Fill, SEGMENT_HEADER_BYTES, SegmentFile, create_segment, list_segments, remove_temp_files, segment_path, sync_dir,
};
use crate::state::{DurableState, StateFile};
use crate::uring::UringIo;

/// Staging buffers kept for reuse; more are freed, so the pool stays bounded.
const BUFFER_POOL_MAX: usize = 64;
/// A pooled buffer larger than this is freed rather than kept (one huge batch must not pin its
/// memory forever).
const POOLED_BUFFER_BYTES_MAX: usize = 4 << 20;
/// Sync durations kept until [`Log::take_sync_durations`] collects them; later ones are not
/// kept. The log stage collects after every wait, when one or two syncs have completed.
const SYNC_DURATIONS_MAX: usize = 64;

fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The fallback notice is printed once per process, not once per group.
static FALLBACK_ANNOUNCED: AtomicBool = AtomicBool::new(false);

/// How far the log is durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    /// The highest submit token whose writes (and every earlier submit's) are durable.
    pub token: u64,
    /// Every entry at or below this index is durable.
    pub index: Index,
}

/// Counters of the write path, for metrics (entries per fsync) and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Entries submitted since open.
    pub entries_submitted: u64,
    /// Payload bytes submitted since open.
    pub payload_bytes_submitted: u64,
    /// Bytes handed to the I/O path (headers and padding included).
    pub bytes_written: u64,
    /// Sync jobs (group commits) completed.
    pub syncs_completed: u64,
    /// Segments made by zero-filling a new file since open.
    pub segments_zero_filled: u64,
    /// Segments made by reusing a compacted one since open.
    pub segments_reused: u64,
    /// Compacted segments kept for reuse now (`recycled_segments_max` at most).
    pub segments_kept_for_reuse: u64,
}

/// What the log held when it was opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    pub hard_state: HardState,
    /// The log starts after this snapshot (0 and 0 when never compacted).
    pub snapshot_index: Index,
    pub snapshot_term: Term,
    /// First and last index held (`last_index == snapshot_index` for an empty log).
    pub first_index: Index,
    pub last_index: Index,
    pub last_term: Term,
    /// Set when a torn tail (writes never reported durable) was cut off: a description for the
    /// operator; it is also logged.
    pub torn_tail: Option<String>,
    /// The I/O path in use.
    pub io: &'static str,
}

/// A live segment.
#[derive(Debug)]
struct Live {
    view: Arc<SegmentView>,
    file: Arc<File>,
    path: PathBuf,
    /// Its sequence and salt, which its records' CRCs are seeded with.
    key: SegmentKey,
}

/// One write in flight.
#[derive(Debug)]
struct InflightWrite {
    submit: u64,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already written.
    done: usize,
    file: Arc<File>,
    path: PathBuf,
    offset: u64,
}

/// One `submit` that is not durable yet.
#[derive(Debug)]
struct Submit {
    number: u64,
    token: u64,
    last_index: Index,
    /// The first index this submit replaced (a conflicting-suffix truncation), if any.
    truncated_from: Option<Index>,
    /// The global write position just after this submit's records.
    end: Position,
    writes_left: u32,
    /// The sync job count when its last write (or short-write remainder) was issued: a job
    /// covers it only if issued later.
    issued_after_jobs: u64,
}

#[derive(Debug)]
struct SyncInFlight {
    number: u64,
    /// The last submit number it covers.
    covers: u64,
    files: Vec<PathBuf>,
    state: Option<DurableState>,
    /// The last journaled write it covers (fault injection only).
    journal_through: Option<u64>,
    /// When it was issued: its duration is one sample of [`Log::take_sync_durations`].
    issued: Instant,
}

/// Test-only seams: fault injection and the write/sync trace for crash-state tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct TestSeams {
    /// Fail the sync job with this number (0-based) as if `fdatasync` returned EIO.
    pub(crate) fail_sync_job: Option<u64>,
    pub(crate) trace: Option<Vec<crate::tests::trace::TraceOp>>,
}

/// The durable log of one Raft group on one node.
///
/// Driven by one owner thread (the log writer stage) through `&mut self`: [`Log::submit`] queues
/// the writes of one `Ready` without waiting for the disk, [`Log::poll`] / [`Log::wait`] collect
/// completions and report the durable watermark. Reads on other threads go through
/// [`Log::reader`].
///
/// Ordering contract, from `smr_raft::Ready`: submit readies in the order of their numbers; for
/// each, call [`Log::install_snapshot`] first when it completes a snapshot, then [`Log::submit`]
/// with its entries and hard state. Only once [`Durable::token`] reaches a ready's token may its
/// `persisted_messages` be sent and `on_persisted` be called.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    /// Declared before `writes`: dropping the backend waits for in-flight operations, which
    /// may still read the buffers that `writes` owns.
    io: Box<dyn Backend>,
    state: StateFile,
    state_file: Arc<File>,
    /// The state as of the latest submit (durable or not).
    state_latest: DurableState,
    /// A state change not yet handed to a sync job.
    state_pending: bool,
    segments: Vec<Live>,
    /// The views of `segments`, as handed to readers.
    views: Vec<Arc<SegmentView>>,
    shared: Arc<Shared>,
    tail: Position,
    last_index: Index,
    last_term: Term,
    /// Where each run of equal terms starts: `(first index, term)`, ascending. Terms change only
    /// with leaders, so this stays short, and it answers `term(index)` for entries whose writes
    /// have not completed yet (the mapping shows them only once written).
    term_runs: VecDeque<(Index, Term)>,
    spares: VecDeque<u64>,
    next_sequence: u64,
    housekeeper: Housekeeper,
    next_id: u64,
    writes: HashMap<u64, InflightWrite>,
    submits: VecDeque<Submit>,
    next_submit: u64,
    last_token: u64,
    /// Files written since the last sync job was issued.
    dirty: Vec<(u64, Arc<File>, PathBuf)>,
    sync: Option<SyncInFlight>,
    jobs_issued: u64,
    /// (covers, job number) of the last completed sync job: a write completion collected after
    /// its job's completion may still let submits become durable.
    last_job_done: Option<(u64, u64)>,
    durable: Durable,
    frontier: Position,
    /// The first fatal error: (message, exit code).
    failed: Option<(String, i32)>,
    waker_made: bool,
    stats: LogStats,
    /// Nanoseconds from issue to completion of each sync job since the last collection.
    /// Bounded by `SYNC_DURATIONS_MAX`.
    sync_durations_ns: Vec<u64>,
    buffers: Vec<Vec<u8>>,
    completions: Vec<Completion>,
    #[cfg(test)]
    pub(crate) seams: TestSeams,
    /// The planted durability bug (fault injection): report writes durable on completion,
    /// never fdatasync.
    ack_before_fsync: bool,
    /// The sync journal (fault injection).
    journal: Option<Journal>,
    /// Holds the directory's exclusive lock for as long as the log is open.
    _lock: File,
}

/// Picks the I/O path; `forced` is [`FORCE_FALLBACK_ENV`] set to `1`; `dir` is where the
/// segments go, probed under [`IoMode::Auto`].
///
/// Why `Auto` probes: where io_uring hands every buffered write to an io-wq worker (ext4), it
/// buys no asynchrony, only a sleep of the writer and two wake-ups per append. On the 2-core
/// development machine (ext4, Linux 6.18), `smr-bench` with three nodes, the same binary with
/// `log.io_mode` "auto" (then io_uring) against "fallback", three interleaved rounds on
/// 2026-12-07: 1 outstanding p50 439-448 → 388-397 µs and CPU per put 439-453 → 378-391 µs; 16
/// outstanding 18.7-19.3k → 20.8-21.2k puts/s; 256 outstanding 137-149k → 151-157k puts/s.
fn choose_io(config: &LogConfig, forced: bool, dir: &Path) -> Result<Box<dyn Backend>, LogError> {
    let announce = |text: &str| {
        if !FALLBACK_ANNOUNCED.swap(true, Ordering::Relaxed) {
            tracing::warn!("smr-log: {text}");
        }
    };
    match config.io_mode {
        IoMode::Fallback => Ok(Box::new(FallbackIo::new())),
        IoMode::Uring => match UringIo::new(config.inflight_writes_max) {
            Ok(io) => Ok(Box::new(io)),
            Err(source) => Err(LogError::UringUnavailable { source }),
        },
        IoMode::Auto if forced => {
            announce(&format!("{FORCE_FALLBACK_ENV}=1: writing through pwrite + fdatasync, not io_uring"));
            Ok(Box::new(FallbackIo::new()))
        }
        IoMode::Auto => match UringIo::new(config.inflight_writes_max) {
            Ok(io) => match crate::uring::buffered_writes_complete_inline(dir) {
                Ok(false) => {
                    if !FALLBACK_ANNOUNCED.swap(true, Ordering::Relaxed) {
                        tracing::info!(
                            "smr-log: io_uring would hand every buffered write under {} to a worker thread \
                             (this file system takes none without blocking); writing with pwrite on the \
                             writer's thread instead (log.io_mode = \"uring\" insists on io_uring)",
                            dir.display()
                        );
                    }
                    Ok(Box::new(FallbackIo::new()))
                }
                Ok(true) => Ok(Box::new(io)),
                Err(error) => {
                    tracing::debug!(
                        "smr-log: io_uring write probe under {} failed ({error}); using io_uring",
                        dir.display()
                    );
                    Ok(Box::new(io))
                }
            },
            Err(error) => {
                announce(&format!(
                    "io_uring is unavailable ({error}); falling back to pwrite + fdatasync \
                     (same guarantees, higher CPU per write)"
                ));
                Ok(Box::new(FallbackIo::new()))
            }
        },
    }
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering what it holds.
    ///
    /// # Errors
    /// [`LogError::Corruption`] for corruption inside the log (never skipped), [`LogError::Foreign`]
    /// for files of another cluster, node or group, [`LogError::Config`] for a bad config, I/O
    /// errors. All of them are fatal.
    ///
    /// Reads the fault-injection variables `SMR_FAULT_SYNC_JOURNAL` and
    /// `SMR_FAULT_ACK_BEFORE_FSYNC` (test builds with the `fault-injection` feature only; any
    /// other build refuses to open with [`LogError::Config`] naming the variable when one is set).
    pub fn open(dir: &Path, config: LogConfig) -> Result<(Log, Recovered), LogError> {
        let faults = Faults::from_env()?;
        Log::open_with(dir, config, faults)
    }

    /// [`Log::open`] with the fault injection given rather than read from the environment.
    pub(crate) fn open_with(dir: &Path, config: LogConfig, faults: Faults) -> Result<(Log, Recovered), LogError> {
        config.validate()?;
        if faults.active() {
            tracing::warn!(
                "smr-log: FAULT INJECTION ACTIVE in {} (test-only): sync journal {:?}, ack before fsync {}",
                dir.display(),
                faults.sync_journal,
                faults.ack_before_fsync
            );
        }
        let mut journal = faults.sync_journal.as_deref().map(Journal::open).transpose()?;
        fs::create_dir_all(dir).map_err(|e| LogError::io("create_dir", dir, e))?;
        let forced = std::env::var(FORCE_FALLBACK_ENV).is_ok_and(|v| v == "1");
        let io = choose_io(&config, forced, dir)?;
        let lock = lock_dir(dir)?;
        remove_temp_files(dir)?;
        let mut found = list_segments(dir)?;
        let state = match StateFile::open(dir, &config)? {
            Some(state) => state,
            None if found.is_empty() => {
                let state = DurableState { segment_sequence_min: 1, ..DurableState::default() };
                StateFile::create(dir, &config, state)?
            }
            None => {
                return Err(LogError::Corruption {
                    path: dir.join(crate::state::STATE_FILE_NAME),
                    offset: 0,
                    index: 0,
                    detail: "segments exist but the state file is missing; refusing to guess term and vote".into(),
                });
            }
        };
        let durable_state = state.current();

        // Segments below the minimum belong to a prefix or a log that a compaction or snapshot
        // install already discarded durably; the crash came before their deletion.
        let stale: Vec<(u64, PathBuf)> =
            found.iter().filter(|(sequence, _)| *sequence < durable_state.segment_sequence_min).cloned().collect();
        if !stale.is_empty() {
            for (_, path) in &stale {
                fs::remove_file(path).map_err(|e| LogError::io("remove", path, e))?;
            }
            sync_dir(dir)?;
            found.retain(|(sequence, _)| *sequence >= durable_state.segment_sequence_min);
        }

        let mut files: Vec<SegmentFile> = Vec::with_capacity(found.len());
        for (sequence, path) in &found {
            files.push(SegmentFile::open(path, *sequence, &config)?);
        }
        let images: Vec<SegmentImage<'_>> = files.iter().map(SegmentFile::image).collect();
        let plan = recover(&durable_state, &images, config.entry_bytes_max)?;
        drop(images);

        let mut torn_tail = None;
        if let Some(torn) = &plan.torn {
            let message = format!(
                "torn tail cut at {} offset {} (index {} onwards was never reported durable; {} valid record(s) after it dropped)",
                torn.path.display(),
                torn.offset,
                torn.expected_index,
                torn.records_dropped
            );
            tracing::warn!("smr-log: {message}");
            torn_tail = Some(message);
        }
        // Make the cut durable before anything new is written where the torn bytes were.
        if let Some((sequence, from, to)) = plan.zero_range {
            let file = files.iter().find(|f| f.sequence == sequence).expect("the plan names an open segment");
            file.write_at(&vec![0u8; (to - from) as usize], from)?;
            file.sync()?;
        }
        if !plan.delete.is_empty() {
            for sequence in &plan.delete {
                let path = segment_path(dir, *sequence);
                fs::remove_file(&path).map_err(|e| LogError::io("remove", &path, e))?;
            }
            sync_dir(dir)?;
        }

        // What recovery just read may be only in the page cache: after a crash of the process
        // (not of the machine) the writes it never synced are still visible. Everything this
        // process reports durable must be on disk, so sync it all before trusting any of it.
        for file in &files {
            file.sync()?;
        }
        state.file.sync_data().map_err(|e| crate::segment::sync_error(&state.path, e))?;
        sync_dir(dir)?;
        if let Some(journal) = journal.as_mut() {
            use std::os::unix::fs::FileExt;
            let mut slots = vec![0u8; 2 * crate::state::STATE_SLOT_BYTES as usize];
            state.file.read_exact_at(&mut slots, 0).map_err(|e| LogError::io("read", &state.path, e))?;
            journal.opened(&slots)?;
        }

        let first_index = durable_state.snapshot_index + 1;
        let shared = Arc::new(Shared::new(first_index));
        let mut segments = Vec::new();
        let mut by_sequence: HashMap<u64, SegmentFile> = files.into_iter().map(|f| (f.sequence, f)).collect();
        let mut term_runs: VecDeque<(Index, Term)> = VecDeque::new();
        for chain in &plan.chains {
            let file = by_sequence.remove(&chain.sequence).expect("the plan names open segments");
            let view = Arc::new(SegmentView::new(file.key, Arc::clone(&file.map)));
            for &(index, term, offset) in &chain.records {
                view.push(index, offset);
                push_term(&mut term_runs, index, term);
            }
            segments.push(Live { view, file: Arc::new(file.file), path: file.path, key: file.key });
        }
        let highest =
            found.iter().map(|(s, _)| *s).max().unwrap_or(0).max(durable_state.segment_sequence_min.saturating_sub(1));
        let state_file = Arc::new(state.file.try_clone().map_err(|e| LogError::io("dup", &state.path, e))?);
        let housekeeper = Housekeeper::start(dir, &config)?;
        let mut log = Log {
            dir: dir.to_path_buf(),
            io,
            state,
            state_file,
            state_latest: durable_state,
            state_pending: false,
            segments,
            views: Vec::new(),
            shared,
            tail: plan.tail.unwrap_or(Position { sequence: 0, offset: SEGMENT_HEADER_BYTES }),
            last_index: plan.last_index,
            last_term: plan.last_term,
            term_runs: VecDeque::new(),
            spares: plan.spares.iter().copied().collect(),
            next_sequence: highest + 1,
            housekeeper,
            next_id: 0,
            writes: HashMap::new(),
            submits: VecDeque::new(),
            next_submit: 1,
            last_token: 0,
            dirty: Vec::new(),
            sync: None,
            jobs_issued: 0,
            last_job_done: None,
            durable: Durable { token: 0, index: plan.last_index },
            frontier: Position { sequence: 0, offset: 0 },
            failed: None,
            waker_made: false,
            stats: LogStats::default(),
            sync_durations_ns: Vec::new(),
            buffers: Vec::new(),
            completions: Vec::new(),
            #[cfg(test)]
            seams: TestSeams::default(),
            ack_before_fsync: faults.ack_before_fsync,
            journal,
            config,
            _lock: lock,
        };
        if plan.tail.is_none() {
            // A fresh log: its first segment is made here, once, not on the append path.
            let sequence = log.next_sequence;
            log.next_sequence += 1;
            create_segment(dir, &log.config, sequence)?;
            log.spares.push_front(sequence);
            log.activate_next()?;
        }
        log.term_runs = term_runs;
        log.frontier = log.tail;
        log.publish();
        log.refill_spares()?;
        let recovered = Recovered {
            hard_state: durable_state.hard_state,
            snapshot_index: durable_state.snapshot_index,
            snapshot_term: durable_state.snapshot_term,
            first_index,
            last_index: log.last_index,
            last_term: log.last_term,
            torn_tail,
            io: log.io.name(),
        };
        Ok((log, recovered))
    }

    /// The I/O path in use ("io_uring" or "pwrite+fdatasync").
    pub fn io_name(&self) -> &'static str {
        self.io.name()
    }

    /// Whether the I/O path does every write and sync within the call that issues it (the
    /// `pwrite` path): then [`Log::sync_all`] right after a submit is one group commit done on
    /// the caller's thread, with nothing left in flight.
    pub fn io_is_synchronous(&self) -> bool {
        self.io.synchronous()
    }

    /// What is durable.
    pub fn durable(&self) -> Durable {
        self.durable
    }

    /// Every entry at or below this index is durable.
    pub fn durable_through(&self) -> Index {
        self.durable.index
    }

    pub fn first_index(&self) -> Index {
        self.state_latest.snapshot_index + 1
    }

    /// The last index submitted (durable or not).
    pub fn last_index(&self) -> Index {
        self.last_index
    }

    pub fn last_term(&self) -> Term {
        self.last_term
    }

    /// The durable hard state.
    pub fn hard_state(&self) -> HardState {
        self.state.current().hard_state
    }

    /// Counters since open.
    pub fn stats(&self) -> LogStats {
        LogStats { segments_kept_for_reuse: self.housekeeper.reusable() as u64, ..self.stats }
    }

    /// Hands each sync job's duration (issue to durable, in nanoseconds) completed since the
    /// last call to `record`, oldest first: the group commit's `fdatasync` latency.
    pub fn take_sync_durations(&mut self, mut record: impl FnMut(u64)) {
        for ns in self.sync_durations_ns.drain(..) {
            record(ns);
        }
    }

    /// True while writes or syncs are outstanding.
    pub fn has_outstanding(&self) -> bool {
        !self.submits.is_empty() || !self.writes.is_empty() || self.sync.is_some()
    }

    /// A waker for another thread: [`LogWaker::wake`] ends a blocking [`Log::wait`]. Once a
    /// waker exists, [`Log::wait`] also blocks when nothing is outstanding, so the log stage can
    /// sleep until the core hands it work or the disk completes something, without spinning.
    ///
    /// # Errors
    /// Fatal I/O errors (no eventfd).
    pub fn waker(&mut self) -> Result<LogWaker, LogError> {
        let inner = self.io.waker().map_err(|e| self.fail(e))?;
        self.waker_made = true;
        Ok(LogWaker { inner })
    }

    /// A read handle for another thread.
    pub fn reader(&self) -> LogReader {
        LogReader::new(Arc::clone(&self.shared))
    }

    /// The term of `index`, if the log holds it (or it is the snapshot's index).
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.state_latest.snapshot_index {
            return Some(self.state_latest.snapshot_term);
        }
        if index < self.first_index() || index > self.last_index {
            return None;
        }
        let run = self.term_runs.partition_point(|&(start, _)| start <= index);
        self.term_runs.get(run.checked_sub(1)?).map(|&(_, term)| term)
    }

    /// Durable entries `index_min..=index_max`, at most `bytes_max` by [`Entry::size_bytes`]
    /// (at least one), borrowed from the mapping. Use [`EntryRef::to_entry`] for an owned,
    /// still zero-copy [`Entry`].
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when `index_min` is compacted away or not durable.
    pub fn entries(&self, index_min: Index, index_max: Index, bytes_max: u64) -> Result<Vec<EntryRef<'_>>, LogError> {
        let (first, durable) = (self.first_index(), self.durable.index);
        if index_min < first || index_min > durable {
            return Err(LogError::Unavailable { index: index_min, first, last: durable });
        }
        let mut out = Vec::new();
        collect(&self.views, index_min, index_max.min(durable), bytes_max, &mut out);
        Ok(out)
    }

    fn check_running(&self) -> Result<(), LogError> {
        match &self.failed {
            Some((reason, exit_code)) => Err(LogError::Stopped { reason: reason.clone(), exit_code: *exit_code }),
            None => Ok(()),
        }
    }

    /// Records a fatal error: nothing more is written or reported durable.
    fn fail(&mut self, error: LogError) -> LogError {
        tracing::error!("smr-log: fatal: {error}");
        if self.failed.is_none() {
            let exit_code = error.exit_code().unwrap_or(crate::error::EXIT_CODE_IO);
            self.failed = Some((error.to_string(), exit_code));
        }
        error
    }

    /// Queues the writes of one ready: `entries` (replacing any existing entries from
    /// `entries[0].index` on: a conflicting suffix) and `hard_state`. Returns without waiting
    /// for the disk, except when `inflight_writes_max` writes or `pending_submits_max` submits
    /// are outstanding or no preallocated segment is ready (then it waits for the disk, which is
    /// the backpressure).
    ///
    /// `token` identifies the submit in [`Durable::token`] (the ready number fits); tokens must
    /// increase.
    ///
    /// # Errors
    /// Refusals that change nothing: [`LogError::TokenOrder`], [`LogError::NotContiguous`],
    /// [`LogError::TooLarge`], [`LogError::NoSpace`]. Fatal: [`LogError::SyncFailed`],
    /// [`LogError::Io`], [`LogError::Stopped`].
    ///
    /// # Panics
    /// When `hard_state` moves the term backwards (a caller bug: Raft never does).
    pub fn submit(&mut self, token: u64, entries: &[Entry], hard_state: Option<HardState>) -> Result<(), LogError> {
        self.check_running()?;
        if token <= self.last_token {
            return Err(LogError::TokenOrder { token, previous: self.last_token });
        }
        if let Some(hard_state) = hard_state {
            // A caller bug, not a disk condition: Raft never moves the term back.
            assert!(
                hard_state.term >= self.state_latest.hard_state.term,
                "hard state term went back from {} to {}",
                self.state_latest.hard_state.term,
                hard_state.term
            );
        }
        let truncate_from = self.check_entries(entries)?;

        // Every segment this submit needs must be ready before anything changes, so that a full
        // disk refuses the submit as a whole.
        let segments_needed = self.segments_needed(entries, truncate_from.is_some());
        self.ensure_spares(segments_needed)?;
        let writes_needed = segments_needed + usize::from(!entries.is_empty());
        while self.submits.len() >= self.config.pending_submits_max as usize {
            self.maybe_sync()?;
            self.process(true)?;
        }
        while !self.writes.is_empty() && self.writes.len() + writes_needed > self.config.inflight_writes_max as usize {
            self.process(true)?;
            self.check_running()?;
        }

        let number = self.next_submit;
        self.next_submit += 1;
        self.last_token = token;
        if let Some(from) = truncate_from {
            // Superseded records stay where they are (never rewritten in place); readers stop
            // seeing them, and the new ones go into a fresh segment that overrides them.
            for live in &self.segments {
                live.view.truncate_from(from);
            }
            while self.term_runs.back().is_some_and(|&(start, _)| start >= from) {
                self.term_runs.pop_back();
            }
            self.last_index = from - 1;
            self.last_term = self.term(from - 1).unwrap_or(0);
            self.durable.index = self.durable.index.min(from - 1);
            self.shared.durable_index.store(self.durable.index, Ordering::Release);
            #[cfg(test)]
            if let Some(trace) = self.seams.trace.as_mut() {
                trace.push(crate::tests::trace::TraceOp::Durable {
                    index: self.durable.index,
                    token: self.durable.token,
                });
            }
            self.activate_next()?;
        }

        let mut writes_left = 0u32;
        let mut buffer = self.take_buffer();
        let mut buffer_start = self.tail;
        for entry in entries {
            let size = record_bytes(entry.data.len()) as u64;
            if self.tail.offset + size > self.config.segment_bytes {
                if !buffer.is_empty() {
                    self.issue_write(number, std::mem::take(&mut buffer), buffer_start)?;
                    writes_left += 1;
                    buffer = self.take_buffer();
                }
                self.activate_next()?;
                buffer_start = self.tail;
            }
            let tail = self.segments.last().expect("a tail segment");
            encode_record(&mut buffer, entry, tail.key, self.tail.offset, Some(self.frontier));
            tail.view.push(entry.index, self.tail.offset);
            self.tail.offset += size;
            push_term(&mut self.term_runs, entry.index, entry.term);
            self.stats.entries_submitted += 1;
            self.stats.payload_bytes_submitted += entry.data.len() as u64;
            self.last_index = entry.index;
            self.last_term = entry.term;
        }
        if !buffer.is_empty() {
            self.issue_write(number, buffer, buffer_start)?;
            writes_left += 1;
        } else {
            self.return_buffer(buffer);
        }
        if let Some(hard_state) = hard_state {
            self.state_latest.hard_state = hard_state;
            self.state_pending = true;
        }
        self.submits.push_back(Submit {
            number,
            token,
            last_index: self.last_index,
            truncated_from: truncate_from,
            end: self.tail,
            writes_left,
            issued_after_jobs: self.jobs_issued,
        });
        // The sync is issued when the owner next waits or polls, not here: everything it submits
        // before that (a whole drained queue of readies) then shares one fsync.
        Ok(())
    }

    /// Checks that `entries` continue the log; returns the truncation point if they replace a
    /// suffix.
    fn check_entries(&self, entries: &[Entry]) -> Result<Option<Index>, LogError> {
        let Some(first) = entries.first() else {
            return Ok(None);
        };
        let mut bytes: u64 = 0;
        for (i, entry) in entries.iter().enumerate() {
            if entry.data.len() as u64 > self.config.entry_bytes_max {
                return Err(LogError::TooLarge {
                    what: "entry",
                    bytes: entry.data.len() as u64,
                    limit_name: "entry_bytes_max",
                    limit: self.config.entry_bytes_max,
                });
            }
            bytes += record_bytes(entry.data.len()) as u64;
            if i > 0 {
                let previous = &entries[i - 1];
                if entry.index != previous.index + 1 || entry.term < previous.term {
                    return Err(LogError::NotContiguous {
                        detail: format!(
                            "entry {}/{} follows {}/{}",
                            entry.index, entry.term, previous.index, previous.term
                        ),
                    });
                }
            }
        }
        if bytes > self.config.submit_bytes_max {
            return Err(LogError::TooLarge {
                what: "submit",
                bytes,
                limit_name: "submit_bytes_max",
                limit: self.config.submit_bytes_max,
            });
        }
        let first_allowed = self.first_index();
        if first.index > self.last_index + 1 || first.index < first_allowed {
            return Err(LogError::NotContiguous {
                detail: format!(
                    "first entry {} is outside {}..={} (log holds {}..={})",
                    first.index,
                    first_allowed,
                    self.last_index + 1,
                    first_allowed,
                    self.last_index
                ),
            });
        }
        let previous_term = self.term(first.index - 1).unwrap_or(0);
        if first.term < previous_term {
            return Err(LogError::NotContiguous {
                detail: format!(
                    "entry {} has term {} below the previous entry's {previous_term}",
                    first.index, first.term
                ),
            });
        }
        Ok((first.index <= self.last_index).then_some(first.index))
    }

    fn segments_needed(&self, entries: &[Entry], truncates: bool) -> usize {
        let mut needed = usize::from(truncates);
        let mut offset = if truncates { SEGMENT_HEADER_BYTES } else { self.tail.offset };
        for entry in entries {
            let size = record_bytes(entry.data.len()) as u64;
            if offset + size > self.config.segment_bytes {
                needed += 1;
                offset = SEGMENT_HEADER_BYTES;
            }
            offset += size;
        }
        needed
    }

    /// Keeps `spare_segments_max` segments preallocated or being preallocated.
    fn refill_spares(&mut self) -> Result<(), LogError> {
        while let Some((sequence, made)) = self.housekeeper.take(false)? {
            self.took_spare(sequence, made)?;
        }
        while self.spares.len() + self.housekeeper.outstanding() < self.config.spare_segments_max as usize {
            self.housekeeper.request(self.next_sequence)?;
            self.next_sequence += 1;
        }
        Ok(())
    }

    fn took_spare(&mut self, sequence: u64, made: Result<(PathBuf, Fill), LogError>) -> Result<(), LogError> {
        match made {
            Ok((_, fill)) => {
                match fill {
                    Fill::Zeros => self.stats.segments_zero_filled += 1,
                    Fill::Recycled => self.stats.segments_reused += 1,
                }
                self.spares.push_back(sequence);
                Ok(())
            }
            Err(error @ LogError::NoSpace { .. }) => Err(error),
            Err(error) => Err(self.fail(error)),
        }
    }

    /// Waits until `count` spare segments are ready.
    fn ensure_spares(&mut self, count: usize) -> Result<(), LogError> {
        self.refill_spares()?;
        while self.spares.len() < count {
            if self.housekeeper.outstanding() == 0 {
                self.housekeeper.request(self.next_sequence)?;
                self.next_sequence += 1;
            }
            if let Some((sequence, made)) = self.housekeeper.take(true)? {
                self.took_spare(sequence, made)?;
            }
        }
        Ok(())
    }

    /// Makes the next spare the tail segment.
    fn activate_next(&mut self) -> Result<(), LogError> {
        let sequence = self.spares.pop_front().expect("ensure_spares ran first");
        let path = segment_path(&self.dir, sequence);
        let file = SegmentFile::open(&path, sequence, &self.config).map_err(|e| self.fail(e))?;
        let view = Arc::new(SegmentView::new(file.key, Arc::clone(&file.map)));
        self.segments.push(Live { view, file: Arc::new(file.file), path, key: file.key });
        self.tail = Position { sequence, offset: SEGMENT_HEADER_BYTES };
        self.publish();
        // Best effort: a full disk shows up when a segment is actually needed.
        match self.refill_spares() {
            Ok(()) | Err(LogError::NoSpace { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn publish(&mut self) {
        self.views = self.segments.iter().map(|l| Arc::clone(&l.view)).collect();
        self.shared.publish(self.views.clone());
        self.shared.first_index.store(self.first_index(), Ordering::Release);
        self.shared.durable_index.store(self.durable.index, Ordering::Release);
    }

    fn take_buffer(&mut self) -> Vec<u8> {
        self.buffers.pop().unwrap_or_default()
    }

    fn return_buffer(&mut self, mut buffer: Vec<u8>) {
        if self.buffers.len() < BUFFER_POOL_MAX && buffer.capacity() <= POOLED_BUFFER_BYTES_MAX {
            buffer.clear();
            self.buffers.push(buffer);
        }
    }

    fn issue_write(&mut self, submit: u64, buffer: Vec<u8>, at: Position) -> Result<(), LogError> {
        let live = self.segments.iter().find(|l| l.view.sequence == at.sequence).expect("writes go to live segments");
        let (file, path) = (Arc::clone(&live.file), live.path.clone());
        if !self.dirty.iter().any(|(sequence, _, _)| *sequence == at.sequence) {
            self.dirty.push((at.sequence, Arc::clone(&file), path.clone()));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.stats.bytes_written += buffer.len() as u64;
        self.journal_write(&path, at.offset, buffer.len(), None)?;
        let write = InflightWrite { submit, buffer, done: 0, file, path, offset: at.offset };
        #[cfg(test)]
        if let Some(trace) = self.seams.trace.as_mut() {
            trace.push(crate::tests::trace::TraceOp::Write {
                file: crate::tests::trace::FileId::Segment(at.sequence),
                offset: at.offset,
                bytes: write.buffer.clone(),
            });
        }
        let (ptr, len) = (write.buffer.as_ptr(), write.buffer.len());
        let file = Arc::clone(&write.file);
        self.writes.insert(id, write);
        // SAFETY: the buffer lives in `self.writes` (its heap allocation does not move when the
        // `Vec` is moved into the map) and is neither modified nor dropped until this id's
        // completion is collected in `process`; the file is kept open by the same entry.
        unsafe { self.io.write(id, &file, at.offset, ptr, len) }.map_err(|e| self.fail(e))
    }

    /// Issues a sync job if none is running and something is waiting for one.
    fn maybe_sync(&mut self) -> Result<(), LogError> {
        if self.sync.is_some() {
            return Ok(());
        }
        let Some(last) = self.submits.back() else {
            return Ok(());
        };
        let covers = last.number;
        if self.ack_before_fsync {
            return self.ack_without_sync();
        }
        if self.dirty.is_empty() && !self.state_pending {
            // Nothing written since the last job completed: these submits need no I/O of their
            // own (empty readies, or their writes are all covered already).
            if self.writes.is_empty() {
                self.advance(covers, self.jobs_issued);
            }
            return Ok(());
        }
        let number = self.jobs_issued;
        self.jobs_issued += 1;
        let dirty = std::mem::take(&mut self.dirty);
        let state = self.state_pending.then_some(self.state_latest);
        self.state_pending = false;
        let state_write = state.map(|state| {
            let (offset, bytes) = self.state.prepare(&self.config, &state);
            StateWrite { file: Arc::clone(&self.state_file), offset, bytes }
        });
        if let Some(write) = &state_write {
            let path = self.state.path.clone();
            self.journal_write(&path, write.offset, write.bytes.len(), Some(&write.bytes))?;
        }
        let journal_through = self.journal.as_ref().and_then(Journal::through);
        #[cfg(test)]
        if let Some(trace) = self.seams.trace.as_mut() {
            use crate::tests::trace::{FileId, TraceOp};
            let mut files: Vec<FileId> = dirty.iter().map(|(sequence, _, _)| FileId::Segment(*sequence)).collect();
            if let Some(write) = &state_write {
                trace.push(TraceOp::Write { file: FileId::State, offset: write.offset, bytes: write.bytes.clone() });
                files.push(FileId::State);
            }
            trace.push(TraceOp::SyncIssued { job: number, files });
        }
        let job = SyncJob {
            id: number,
            files: dirty.iter().map(|(_, file, _)| Arc::clone(file)).collect(),
            state: state_write,
        };
        self.sync = Some(SyncInFlight {
            number,
            covers,
            files: dirty.into_iter().map(|(_, _, path)| path).collect(),
            state,
            journal_through,
            issued: Instant::now(),
        });
        self.io.sync(job).map_err(|e| self.fail(e))
    }

    /// Journals a write about to be issued (fault injection; nothing without a journal).
    fn journal_write(&mut self, path: &Path, offset: u64, len: usize, data: Option<&[u8]>) -> Result<(), LogError> {
        let Some(journal) = self.journal.as_mut() else {
            return Ok(());
        };
        let name = journal_name(path);
        let written = match data {
            Some(bytes) => journal.write_state(name, offset, &bytes[..len]),
            // What a lost write leaves on the disk: the range as it is before the write (the log
            // never writes a range twice, so no earlier write to it is still in flight).
            None => read_range(path, offset, len).and_then(|was| journal.write_segment(name, offset, &was)),
        };
        match written {
            Ok(_) => Ok(()),
            Err(error) => Err(self.fail(error)),
        }
    }

    /// The planted durability bug (`SMR_FAULT_ACK_BEFORE_FSYNC=1`, fault injection only):
    /// writes the pending hard state without syncing it and reports every submit whose writes
    /// completed durable, with no fdatasync at all.
    fn ack_without_sync(&mut self) -> Result<(), LogError> {
        use std::os::unix::fs::FileExt;
        self.dirty.clear();
        if self.state_pending {
            self.state_pending = false;
            let state = self.state_latest;
            let (offset, bytes) = self.state.prepare(&self.config, &state);
            let path = self.state.path.clone();
            self.journal_write(&path, offset, bytes.len(), Some(&bytes))?;
            if let Err(error) = self.state_file.write_all_at(&bytes, offset) {
                return Err(self.fail(LogError::io("pwrite", path, error)));
            }
            self.state.committed(state);
        }
        self.advance(u64::MAX, u64::MAX);
        Ok(())
    }

    /// Marks durable every submit up to `covers` whose writes completed before job `job` was
    /// issued.
    fn advance(&mut self, covers: u64, job: u64) {
        let mut moved = false;
        while let Some(submit) = self.submits.front() {
            if submit.number > covers || submit.writes_left > 0 || submit.issued_after_jobs > job {
                break;
            }
            let submit = self.submits.pop_front().expect("front exists");
            self.durable.token = submit.token;
            self.durable.index = submit.last_index;
            self.frontier = submit.end;
            moved = true;
        }
        if moved {
            // A truncation still in flight keeps the watermark below the entries it replaces.
            if let Some(floor) = self.submits.iter().filter_map(|s| s.truncated_from).min() {
                self.durable.index = self.durable.index.min(floor - 1);
            }
            self.shared.durable_index.store(self.durable.index, Ordering::Release);
            #[cfg(test)]
            if let Some(trace) = self.seams.trace.as_mut() {
                trace.push(crate::tests::trace::TraceOp::Durable {
                    index: self.durable.index,
                    token: self.durable.token,
                });
            }
        }
    }

    /// Issues a sync if one is due, then collects completions; with `block`, waits for at least
    /// one when anything is outstanding.
    ///
    /// Group commit policy: a sync job is issued here, on entry, when none is running. Not when
    /// the previous one completes: its submitters are about to submit again, and issuing at once
    /// would split a closed loop of N appenders into two halves that alternate (N/2 records per
    /// fsync, each appender served every other fsync). Issuing on the owner's next wait lets
    /// everything submitted in between share the fsync.
    fn process(&mut self, block: bool) -> Result<(), LogError> {
        self.check_running()?;
        let before = self.durable;
        self.maybe_sync()?;
        let mut completions = std::mem::take(&mut self.completions);
        // Submits that needed no I/O (an empty ready after everything was durable) become durable
        // in `maybe_sync` itself: that is progress to report, not a reason to sleep until the
        // next completion or wake-up, which may never come while the caller waits for this one.
        let block =
            block && self.durable == before && (!self.writes.is_empty() || self.sync.is_some() || self.waker_made);
        let waited = self.io.wait(&mut completions, block);
        if let Err(error) = waited {
            return Err(self.fail(error));
        }
        let mut result = Ok(());
        for completion in completions.drain(..) {
            if let Err(error) = self.complete(completion) {
                result = Err(error);
                break;
            }
        }
        self.completions = completions;
        result
    }

    fn complete(&mut self, completion: Completion) -> Result<(), LogError> {
        match completion {
            Completion::Write { id, result } => {
                let mut write = self.writes.remove(&id).expect("completions match issued writes");
                let left = write.buffer.len() - write.done;
                match result {
                    Ok(written) if written == left => {
                        let submit = self.submits.iter_mut().find(|s| s.number == write.submit).expect("pending");
                        submit.writes_left -= 1;
                        self.return_buffer(write.buffer);
                        if self.ack_before_fsync {
                            // The planted bug: durable as soon as written.
                            self.advance(u64::MAX, u64::MAX);
                        } else if let Some((covers, job)) = self.last_job_done {
                            self.advance(covers, job);
                        }
                        Ok(())
                    }
                    Ok(written) if written > 0 && written < left => {
                        // A short write: issue the rest. It is covered only by a job issued
                        // after it, which `issued_after_jobs` records.
                        write.done += written;
                        let submit = self.submits.iter_mut().find(|s| s.number == write.submit).expect("pending");
                        submit.issued_after_jobs = self.jobs_issued;
                        let sequence =
                            self.segments.iter().find(|l| Arc::ptr_eq(&l.file, &write.file)).map(|l| l.view.sequence);
                        if let Some(sequence) = sequence
                            && !self.dirty.iter().any(|(s, _, _)| *s == sequence)
                        {
                            self.dirty.push((sequence, Arc::clone(&write.file), write.path.clone()));
                        }
                        let offset = write.offset + write.done as u64;
                        if let Err(error) = self.journal_write(&write.path, offset, left - written, None) {
                            self.writes.insert(id, write);
                            return Err(error);
                        }
                        // SAFETY: as in `issue_write`: the buffer stays in `self.writes`,
                        // unmodified, until this id's completion is collected.
                        let (ptr, len) = unsafe { (write.buffer.as_ptr().add(write.done), left - written) };
                        let file = Arc::clone(&write.file);
                        self.writes.insert(id, write);
                        // SAFETY: see above; the pointer range lies inside the kept buffer.
                        unsafe { self.io.write(id, &file, offset, ptr, len) }.map_err(|e| self.fail(e))
                    }
                    Ok(_) => {
                        let error = std::io::Error::new(std::io::ErrorKind::WriteZero, "write returned 0 bytes");
                        Err(self.fail(LogError::io("write", write.path.clone(), error)))
                    }
                    Err(source) => {
                        // The records may be half on disk: never report them durable. Recovery
                        // after the restart cuts them as a torn tail.
                        Err(self.fail(LogError::Io { op: "write", path: write.path.clone(), source }))
                    }
                }
            }
            Completion::Wake => Ok(()),
            Completion::Sync { id, result } => {
                let sync = self.sync.take().expect("a sync completion belongs to the running job");
                assert_eq!(sync.number, id, "one sync job at a time");
                #[cfg(test)]
                let result = match self.seams.fail_sync_job {
                    Some(job) if job == id => Err((Some(0), std::io::Error::from_raw_os_error(libc::EIO))),
                    _ => result,
                };
                match result {
                    Ok(()) => {
                        #[cfg(test)]
                        if let Some(trace) = self.seams.trace.as_mut() {
                            trace.push(crate::tests::trace::TraceOp::SyncDone { job: id });
                        }
                        if let Some(journal) = self.journal.as_mut() {
                            // After the fdatasync returned, before anything is reported durable.
                            let mut names: Vec<&str> = sync.files.iter().map(|p| journal_name(p)).collect();
                            if sync.state.is_some() {
                                names.push(crate::state::STATE_FILE_NAME);
                            }
                            if let Err(error) = journal.synced(Some(id), sync.journal_through, &names) {
                                return Err(self.fail(error));
                            }
                        }
                        if let Some(state) = sync.state {
                            self.state.committed(state);
                        }
                        self.last_job_done = Some((sync.covers, sync.number));
                        self.stats.syncs_completed += 1;
                        if self.sync_durations_ns.len() < SYNC_DURATIONS_MAX {
                            self.sync_durations_ns.push(duration_ns(sync.issued.elapsed()));
                        }
                        self.advance(sync.covers, sync.number);
                        Ok(())
                    }
                    Err((which, source)) => {
                        let path = match which {
                            Some(i) => sync.files.get(i).cloned().unwrap_or_default(),
                            None => self.state.path.clone(),
                        };
                        Err(self.fail(LogError::SyncFailed { path, source }))
                    }
                }
            }
        }
    }

    /// Collects whatever completed, without waiting, and returns the durable watermark.
    ///
    /// # Errors
    /// Fatal errors only ([`LogError::is_fatal`]).
    pub fn poll(&mut self) -> Result<Durable, LogError> {
        self.process(false)?;
        Ok(self.durable)
    }

    /// Waits (blocking, no spinning) until at least one operation completes or a
    /// [`LogWaker`] wakes it, and returns the durable watermark. Without a waker it returns at
    /// once when nothing is outstanding.
    ///
    /// # Errors
    /// Fatal errors only ([`LogError::is_fatal`]).
    pub fn wait(&mut self) -> Result<Durable, LogError> {
        self.process(true)?;
        Ok(self.durable)
    }

    /// Waits until everything submitted is durable.
    ///
    /// # Errors
    /// Fatal errors only ([`LogError::is_fatal`]).
    pub fn sync_all(&mut self) -> Result<Durable, LogError> {
        self.maybe_sync()?;
        while self.has_outstanding() {
            self.process(true)?;
        }
        Ok(self.durable)
    }

    /// Drops the prefix up to `index` after a snapshot that covers it: whole segments before the
    /// one holding `index + 1` are deleted, after the new base is durable in the state file.
    /// Synchronous (control plane); waits for outstanding writes first.
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when `index` is not durable in the log; fatal I/O errors.
    pub fn compact(&mut self, index: Index) -> Result<(), LogError> {
        self.check_running()?;
        self.sync_all()?;
        if index < self.first_index() {
            return Ok(());
        }
        let Some(term) = self.term(index).filter(|_| index <= self.durable.index) else {
            return Err(LogError::Unavailable { index, first: self.first_index(), last: self.durable.index });
        };
        // The first segment to keep: the one holding index + 1, or the tail when the log ends
        // at `index`.
        let keep_from = self
            .segments
            .iter()
            .rev()
            .find(|l| l.view.holds(index + 1))
            .map_or(self.tail.sequence, |l| l.view.sequence);
        let mut state = self.state_latest;
        state.snapshot_index = index;
        state.snapshot_term = term;
        state.segment_sequence_min = keep_from;
        self.store_state(state)?;
        // Keep the run that covers the new first index; drop the runs before it.
        while self.term_runs.get(1).is_some_and(|&(start, _)| start <= index + 1) {
            self.term_runs.pop_front();
        }
        self.drop_segments_below(keep_from);
        Ok(())
    }

    /// Makes a snapshot the new base of an empty log: every entry is discarded and the next
    /// index is `meta.index + 1`. Crash-safe: the new base is durable in the state file before
    /// any segment is deleted, and segments below it are ignored (then deleted) at open.
    /// Synchronous (control plane); waits for outstanding writes first.
    ///
    /// # Errors
    /// [`LogError::NoSpace`] (nothing changed) or fatal I/O errors.
    pub fn install_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), LogError> {
        self.check_running()?;
        self.sync_all()?;
        self.ensure_spares(1)?;
        let next = *self.spares.front().expect("ensured");
        let mut state = self.state_latest;
        state.snapshot_index = meta.index;
        state.snapshot_term = meta.term;
        state.segment_sequence_min = next;
        self.store_state(state)?;
        for live in &self.segments {
            live.view.truncate_from(0);
        }
        self.term_runs.clear();
        self.last_index = meta.index;
        self.last_term = meta.term;
        self.durable.index = meta.index;
        self.activate_next()?;
        self.frontier = self.tail;
        self.drop_segments_below(next);
        Ok(())
    }

    fn store_state(&mut self, state: DurableState) -> Result<(), LogError> {
        #[cfg(test)]
        if let Some(trace) = self.seams.trace.as_mut() {
            let (offset, bytes) = self.state.prepare(&self.config, &state);
            trace.push(crate::tests::trace::TraceOp::Write { file: crate::tests::trace::FileId::State, offset, bytes });
        }
        if self.journal.is_some() {
            let (offset, bytes) = self.state.prepare(&self.config, &state);
            let path = self.state.path.clone();
            self.journal_write(&path, offset, bytes.len(), Some(&bytes))?;
        }
        match self.state.store(&self.config, state) {
            Ok(()) => {
                self.state_latest = state;
                if let Some(journal) = self.journal.as_mut() {
                    let through = journal.through();
                    if let Err(error) = journal.synced(None, through, &[crate::state::STATE_FILE_NAME]) {
                        return Err(self.fail(error));
                    }
                }
                Ok(())
            }
            Err(error) => Err(self.fail(error)),
        }
    }

    /// Drops the segments below `sequence` from the log; their files are deleted in the
    /// background (the new base is already durable, see `housekeeping`).
    fn drop_segments_below(&mut self, sequence: u64) {
        let (drop, keep): (Vec<Live>, Vec<Live>) =
            std::mem::take(&mut self.segments).into_iter().partition(|l| l.view.sequence < sequence);
        self.segments = keep;
        self.publish();
        self.housekeeper.remove(
            drop.into_iter().map(|live| Retired { path: live.path, view: live.view, file: live.file }).collect(),
        );
    }
}

#[cfg(test)]
impl Log {
    pub(crate) fn pending_submits(&self) -> usize {
        self.submits.len()
    }
}

/// Takes an exclusive `flock` on `dir/lock`: two writers on one log would interleave records.
/// The file a [`Log`] holds an exclusive `flock` on while it is open.
pub(crate) const LOCK_FILE_NAME: &str = "lock";

pub(crate) fn lock_dir(dir: &Path) -> Result<File, LogError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE_NAME);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| LogError::io("open", &path, e))?;
    // SAFETY: flock takes a file descriptor that `file` keeps open for the call's duration.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(LogError::Locked { path });
        }
        return Err(LogError::io("flock", &path, error));
    }
    Ok(file)
}

/// `len` bytes of the file at `path` from `offset` (fault injection's journal only).
fn read_range(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, LogError> {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0u8; len];
    let file = File::open(path).map_err(|e| LogError::io("open", path, e))?;
    file.read_exact_at(&mut bytes, offset).map_err(|e| LogError::io("pread", path, e))?;
    Ok(bytes)
}

fn push_term(runs: &mut VecDeque<(Index, Term)>, index: Index, term: Term) {
    if runs.back().is_none_or(|&(_, last)| last != term) {
        runs.push_back((index, term));
    }
}

#[cfg(test)]
mod choose_io_tests {
    use super::*;

    #[test]
    fn forced_fallback_is_used_under_auto_and_ignored_by_explicit_modes() {
        let dir = tempfile::tempdir().unwrap();
        let here = dir.path();
        let config = crate::tests::small_config(IoMode::Auto);
        assert_eq!(choose_io(&config, true, here).expect("io").name(), "pwrite+fdatasync");
        let uring_here = crate::uring::UringIo::new(8).is_ok();
        let inline_here = uring_here && crate::uring::buffered_writes_complete_inline(here).unwrap_or(true);
        let auto = choose_io(&config, false, here).expect("io").name();
        assert_eq!(auto, if inline_here { "io_uring" } else { "pwrite+fdatasync" });
        let mut fallback = config.clone();
        fallback.io_mode = IoMode::Fallback;
        assert_eq!(choose_io(&fallback, false, here).expect("io").name(), "pwrite+fdatasync");
        if uring_here {
            let mut uring = config;
            uring.io_mode = IoMode::Uring;
            assert_eq!(choose_io(&uring, true, here).expect("io").name(), "io_uring");
            assert_eq!(choose_io(&uring, false, here).expect("io").name(), "io_uring", "whatever the probe says");
        }
    }
}
