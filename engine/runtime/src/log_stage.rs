//! The log writer stage: persists readies through the durable log with group commit, stores and
//! installs snapshots received from the leader, compacts the log behind saved snapshots.
//!
//! It submits every ready it finds queued before it waits, so that all of them share one
//! `fdatasync` (group commit), then reports the highest durable ready number to the core through
//! an atomic and a wake-up. It never sends anything to the core that could block.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded};
use smr_log::{Durable, Log, LogError};
use smr_net::PeerSender;
use smr_raft::Message;

use crate::handoff::{ApplyWork, LogWork, Shared};
use crate::metrics::Histo;
use crate::snapshot::{Incoming, SnapshotStore};
use crate::stage_runner::InlineStage;

/// Exit code when the disk is full: the node stops rather than acknowledge anything it cannot
/// store; nothing acknowledged is lost, and it restarts once space is freed.
pub const EXIT_CODE_NO_SPACE: i32 = 73;
/// Exit code when a snapshot from the leader, or on this node's disk, is damaged.
pub const EXIT_CODE_BAD_SNAPSHOT: i32 = 78;

/// Samples recorded for one look at the sync count (it rarely moves by more than one or two).
const SYNC_SAMPLES_MAX: u64 = 64;

/// Readies taken off the queue before the stage waits for the disk: enough to batch a burst
/// under one fsync, few enough that completions are collected often.
const SUBMITS_PER_ROUND_MAX: usize = 1024;

pub(crate) struct LogStage {
    pub(crate) log: Log,
    pub(crate) work: Receiver<LogWork>,
    pub(crate) to_apply: Sender<ApplyWork>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) store: SnapshotStore,
    pub(crate) incoming: Incoming,
    pub(crate) cluster_id: u64,
    pub(crate) snapshot_bytes_max: u64,
    pub(crate) busy_poll: bool,
    pub(crate) metrics: crate::metrics::StageRecorder,
    /// Sends the persisted messages of each ready once it is durable.
    pub(crate) peers: PeerSender,
    /// Persisted messages by ready number, waiting for their ready to be durable. Bounded by
    /// the log queue (`pipeline.log_queue_max` readies) and the log's own pending-submit bound.
    pub(crate) unsent: VecDeque<(u64, Vec<Message>)>,
    /// Numbers of readies without persisted messages, not yet reported durable: the core is
    /// woken when one of them becomes durable (its own entries count towards a commit). A
    /// ready whose messages this stage sends needs no wake-up: the acknowledgement has left,
    /// and the core sees the durable token at its next round. Bounded like `unsent`.
    pub(crate) silent: VecDeque<u64>,
    /// The highest ready number reported durable.
    pub(crate) reported: u64,
    /// The log's sync and entry counts at the last report (for entries per fsync).
    pub(crate) syncs_seen: u64,
    pub(crate) entries_seen: u64,
    /// The log's segments zero-filled and reused at the last report (for the counters).
    pub(crate) segments_seen: (u64, u64),
    /// Set once the stage has nothing more to do (inline rounds only; see `stage_runner.rs`).
    pub(crate) stopped: bool,
}

impl std::fmt::Debug for LogStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStage").field("log", &self.log).finish()
    }
}

/// How the stage failed: with the exit code the process should stop with.
struct Stop {
    exit_code: i32,
    message: String,
}

fn log_stop(error: LogError) -> Stop {
    let exit_code = match &error {
        LogError::NoSpace { .. } => EXIT_CODE_NO_SPACE,
        other => other.exit_code().unwrap_or(smr_log::EXIT_CODE_IO),
    };
    Stop { exit_code, message: format!("log: {error}") }
}

impl LogStage {
    pub(crate) fn run(mut self) {
        match self.run_loop() {
            Ok(()) => {}
            Err(stop) => self.shared.fail(stop.exit_code, stop.message),
        }
        self.metrics.publish_now();
    }

    fn run_loop(&mut self) -> Result<(), Stop> {
        loop {
            if self.take_work()? {
                return self.finish();
            }
            let durable = if self.busy_poll || !self.work.is_empty() { self.log.poll() } else { self.log.wait() }
                .map_err(log_stop)?;
            if self.report(durable) {
                self.shared.wake_core();
            }
        }
    }

    /// Submits the work queued now (at most [`SUBMITS_PER_ROUND_MAX`] readies). Returns whether
    /// the core has stopped (its queue is disconnected).
    fn take_work(&mut self) -> Result<bool, Stop> {
        for _ in 0..SUBMITS_PER_ROUND_MAX {
            match self.work.try_recv() {
                Ok(work) => self.handle(work)?,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(true),
            }
        }
        Ok(false)
    }

    /// The core stopped: make everything it handed over durable.
    fn finish(&mut self) -> Result<(), Stop> {
        let durable = self.log.sync_all().map_err(log_stop)?;
        self.send_durable_messages(durable.token);
        self.shared.durable_token.store(durable.token, Ordering::Release);
        Ok(())
    }

    /// Records what the group commit achieved and reports what became durable: sends the
    /// persisted messages and publishes the durable token. Returns whether the core should be
    /// woken (a ready without persisted messages became durable).
    fn report(&mut self, durable: Durable) -> bool {
        let metrics = &mut self.metrics;
        self.log.take_sync_durations(|ns| metrics.record(Histo::Fsync, ns));
        let stats = self.log.stats();
        if stats.syncs_completed > self.syncs_seen {
            // Entries per fsync: what the group commit achieved. Completions are collected a
            // few at a time, so the entries submitted since the last look are spread over
            // the syncs that completed since, one sample per sync; the remainder goes to the
            // first, so the samples add up to the entries.
            let entries = stats.entries_submitted - self.entries_seen;
            let syncs = stats.syncs_completed - self.syncs_seen;
            let (each, remainder) = (entries / syncs, entries % syncs);
            self.metrics.record(Histo::BatchItems, each + remainder);
            for _ in 1..syncs.min(SYNC_SAMPLES_MAX) {
                self.metrics.record(Histo::BatchItems, each);
            }
            self.syncs_seen = stats.syncs_completed;
            self.entries_seen = stats.entries_submitted;
        }
        let segments = (stats.segments_zero_filled, stats.segments_reused);
        if segments != self.segments_seen {
            let counters = self.metrics.counters();
            counters.segments_zero_filled.add(segments.0 - self.segments_seen.0);
            counters.segments_reused.add(segments.1 - self.segments_seen.1);
            self.segments_seen = segments;
        }
        tracing::trace!(token = durable.token, index = durable.index, "log durable");
        let mut core_waits = false;
        if durable.token > self.reported {
            self.reported = durable.token;
            self.send_durable_messages(durable.token);
            self.shared.durable_token.store(durable.token, Ordering::Release);
            while self.silent.front().is_some_and(|&number| number <= durable.token) {
                self.silent.pop_front();
                core_waits = true;
            }
        }
        self.metrics.maybe_publish(std::time::Instant::now());
        core_waits
    }

    /// Sends the persisted messages of every ready through `token`: the acknowledgements and
    /// votes that promise this node holds what they acknowledge.
    fn send_durable_messages(&mut self, token: u64) {
        while self.unsent.front().is_some_and(|(number, _)| *number <= token) {
            let (_, messages) = self.unsent.pop_front().expect("front exists");
            for message in messages {
                if self.peers.send(message).is_err() {
                    self.metrics.counters().peer_messages_dropped.bump();
                }
            }
        }
    }

    fn handle(&mut self, work: LogWork) -> Result<(), Stop> {
        let started = std::time::Instant::now();
        match work {
            LogWork::Persist { queued, number, chunks, entries, hard_state, messages } => {
                self.metrics.record_queue_wait(started.duration_since(queued));
                let installs = !chunks.is_empty();
                for chunk in chunks {
                    let whole = self
                        .incoming
                        .add(
                            &chunk.meta,
                            chunk.offset,
                            &chunk.data,
                            chunk.last,
                            self.cluster_id,
                            self.snapshot_bytes_max,
                        )
                        .map_err(|e| Stop { exit_code: EXIT_CODE_BAD_SNAPSHOT, message: e.to_string() })?;
                    if let Some(snapshot) = whole {
                        let meta = snapshot.meta.clone();
                        self.store.save(&meta, &snapshot.bytes).map_err(|e| Stop {
                            exit_code: smr_log::EXIT_CODE_IO,
                            message: format!("saving the snapshot from the leader: {e}"),
                        })?;
                        // The state machine must hold the snapshot before the log forgets the
                        // entries it replaces, and before the core hears the ready is durable.
                        let (done_tx, done_rx) = bounded(1);
                        self.shared.apply_heavy.queued();
                        if self.to_apply.is_full() {
                            self.shared.wake_apply();
                        }
                        if self.to_apply.send(ApplyWork::Restore { snapshot, done: done_tx }).is_err() {
                            return Err(Stop { exit_code: 0, message: "apply stage stopped".into() });
                        }
                        self.shared.wake_apply();
                        match done_rx.recv() {
                            Ok(Ok(())) => {}
                            Ok(Err(reason)) => {
                                return Err(Stop { exit_code: EXIT_CODE_BAD_SNAPSHOT, message: reason });
                            }
                            Err(_) => return Err(Stop { exit_code: 0, message: "apply stage stopped".into() }),
                        }
                        self.log.install_snapshot(&meta).map_err(log_stop)?;
                        self.metrics.counters().snapshots_installed.bump();
                        tracing::info!(index = meta.index, term = meta.term, "installed snapshot from the leader");
                    }
                }
                tracing::trace!(number, entries = entries.len(), hard_state = hard_state.is_some(), "submit");
                self.log.submit(number, &entries, hard_state).map_err(log_stop)?;
                if messages.is_empty() {
                    self.silent.push_back(number);
                } else {
                    self.unsent.push_back((number, messages));
                }
                if installs {
                    self.shared.log_heavy.done();
                }
            }
            LogWork::Compact { index } => {
                let index = index.min(self.log.durable_through());
                if index >= self.log.first_index() {
                    let compacting = std::time::Instant::now();
                    match self.log.compact(index) {
                        Ok(()) => tracing::info!(index, ms = compacting.elapsed().as_millis() as u64, "log compacted"),
                        Err(e) if e.is_fatal() => return Err(log_stop(e)),
                        Err(e) => tracing::warn!("log compaction through {index} refused: {e}"),
                    }
                }
                self.shared.log_heavy.done();
            }
        }
        self.metrics.record_service(started.elapsed());
        Ok(())
    }
}

impl InlineStage for LogStage {
    /// Submits what is queued, waits until it is durable (the `pwrite` path does its I/O right
    /// here) and reports it. Once the core has stopped, makes everything durable and stops.
    fn inline_round(&mut self) -> bool {
        if self.stopped {
            return false;
        }
        let result = self.take_work().and_then(|disconnected| {
            if disconnected {
                self.finish()?;
                self.stopped = true;
                return Ok(false);
            }
            let durable = self.log.sync_all().map_err(log_stop)?;
            Ok(self.report(durable))
        });
        match result {
            Ok(core_due) => core_due,
            Err(stop) => {
                self.stopped = true;
                self.shared.fail(stop.exit_code, stop.message);
                false
            }
        }
    }

    fn has_work(&self) -> bool {
        !self.work.is_empty()
    }

    fn stopped(&self) -> bool {
        self.stopped
    }

    fn count_inline_round(&self) {
        self.metrics.counters().log_rounds_inline.bump();
    }

    fn count_slow_round(&self) {
        self.metrics.counters().inline_rounds_slow.bump();
    }

    fn publish_now(&mut self) {
        self.metrics.publish_now();
    }
}
