//! The apply stage: committed entries, read in place from the mapped log, into the state
//! machine; results and reads back to clients; snapshots taken in the background of the
//! pipeline (this stage only freezes the state, with `Applier::snapshot_view`, and goes on
//! applying while `snapshot_saver.rs` serializes it and writes it to disk).
//!
//! It owns the replicated state beside the state machine: the membership as of the applied
//! index (so that a snapshot records the right one) and the member directory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use smr_apply::{Applier, CommandOutcome, StateHash, StateMachine};
use smr_log::LogReader;
use smr_net::{RequestBody, ResponseBatch, ResponseBody};
use smr_raft::{ConfChange, ConfChangeOp, ConfState, EntryKind, Index, SnapshotMeta, Term};

use crate::directory::{Addresses, Directory};
use crate::handoff::{ApplyWork, Shared, Waiting};
use crate::log_stage::EXIT_CODE_BAD_SNAPSHOT;
use crate::metrics::Histo;
use crate::snapshot::{self, Snapshot};
use crate::snapshot_saver::{Saved, SnapshotSaver, StatusRequests, WriteSnapshot, answer_statuses};
use crate::stage_runner::InlineStage;

/// Exit code when a committed entry cannot be applied (it fails validation): the log holds
/// something no replica should have accepted.
pub const EXIT_CODE_BAD_ENTRY: i32 = 79;

/// Bytes of entries read from the log per round, so that apply answers reads and publishes
/// progress between large catch-ups.
const APPLY_READ_BYTES_MAX: u64 = 4 << 20;
/// Work items handled per round before applying.
const WORK_PER_ROUND_MAX: usize = 4096;
/// Time an inline round spends applying before it stops and leaves the rest to the stage's
/// thread. A round is usually well under it, but a backlog (after a stall, or the writes just
/// after a snapshot, which also merge the changes made while it was written) is not: a peer
/// reader or the core's thread held up 70-170 ms in one apply round stopped hearing its
/// leader or sending heartbeats, which cost pre-votes and leader changes at 256 outstanding.
const INLINE_ROUND_APPLY_MAX: Duration = Duration::from_millis(2);
/// Status requests waiting for the state hash (behind a snapshot save); more are answered
/// `Busy`.
const STATUSES_WAITING_MAX: usize = 64;

pub(crate) struct ApplyStage<S> {
    pub(crate) applier: Applier<S>,
    pub(crate) reader: LogReader,
    pub(crate) work: Receiver<ApplyWork>,
    pub(crate) shared: Arc<Shared>,
    /// Writes the snapshots this stage serializes, and hands them to the core once durable.
    pub(crate) saver: SnapshotSaver,
    pub(crate) cluster_id: u64,
    pub(crate) conf: ConfState,
    pub(crate) directory: Directory,
    pub(crate) applied_term: Term,
    pub(crate) commit: Index,
    pub(crate) request_timeout: Duration,
    pub(crate) snapshot_log_bytes: u64,
    pub(crate) last_snapshot_index: Index,
    pub(crate) busy_poll: bool,
    pub(crate) metrics: crate::metrics::StageRecorder,
    /// Proposals made here, by index: the term they were proposed in and their clients.
    proposals: BTreeMap<Index, (Term, Vec<Waiting>)>,
    /// Reads waiting for the applied index to reach theirs.
    reads: BTreeMap<Index, Vec<Waiting>>,
    /// Status requests waiting for the state hash (see `hash_for_status`).
    statuses: StatusRequests,
    /// The saver's last job was a status hash: a snapshot due goes first next time, so that
    /// back-to-back status requests cannot hold snapshots (and log compaction) back, nor
    /// back-to-back snapshots status requests.
    hashed_last: bool,
    /// The state machine froze its state for a hash once (`StateHash::Later`): it will again,
    /// so there is no asking while the saver is busy (each ask hashes the sessions).
    freezes_for_hash: bool,
    bytes_since_snapshot: u64,
    snapshot_wanted: bool,
    /// The snapshot being saved was one the core asked for: asked again if the save fails.
    saving_wanted: bool,
    outcomes: Vec<CommandOutcome>,
    /// Answers of the entries applied in one read from the log, written together.
    responses: ResponseBatch,
    /// Set once the stage has nothing more to do (inline rounds only; see `stage_runner.rs`).
    stopped: bool,
    /// The core held its batch for answers this round gave: it must run a round (inline only).
    core_due: bool,
    /// Whether the stage's rounds run inline (`stage_runner.rs`); set before it starts.
    pub(crate) inline: bool,
    /// The last round stopped at [`INLINE_ROUND_APPLY_MAX`] with committed entries left.
    cut_short: bool,
}

impl<S> std::fmt::Debug for ApplyStage<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyStage").field("commit", &self.commit).field("conf", &self.conf).finish()
    }
}

/// How the stage failed.
struct Stop {
    exit_code: i32,
    message: String,
}

impl<S: StateMachine> ApplyStage<S> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        applier: Applier<S>,
        reader: LogReader,
        work: Receiver<ApplyWork>,
        shared: Arc<Shared>,
        saver: SnapshotSaver,
        cluster_id: u64,
        conf: ConfState,
        directory: Directory,
        applied_term: Term,
        pipeline: &crate::config::PipelineConfig,
        metrics: crate::metrics::StageRecorder,
    ) -> ApplyStage<S> {
        let applied = applier.applied_index();
        ApplyStage {
            applier,
            reader,
            work,
            shared,
            saver,
            cluster_id,
            conf,
            directory,
            applied_term,
            commit: applied,
            request_timeout: Duration::from_millis(pipeline.request_timeout_ms),
            snapshot_log_bytes: pipeline.snapshot_log_bytes,
            last_snapshot_index: applied,
            busy_poll: pipeline.busy_poll,
            metrics,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            statuses: Vec::new(),
            hashed_last: false,
            freezes_for_hash: false,
            bytes_since_snapshot: 0,
            snapshot_wanted: false,
            saving_wanted: false,
            outcomes: Vec::new(),
            responses: ResponseBatch::new(),
            stopped: false,
            core_due: false,
            inline: false,
            cut_short: false,
        }
    }

    pub(crate) fn run(mut self) {
        if let Err(stop) = self.run_loop() {
            self.shared.fail(stop.exit_code, stop.message);
        }
        self.metrics.publish_now();
    }

    fn run_loop(&mut self) -> Result<(), Stop> {
        let sweep = self.sweep();
        loop {
            let next = if self.busy_poll {
                self.work.try_recv().map_err(|e| match e {
                    crossbeam_channel::TryRecvError::Empty => RecvTimeoutError::Timeout,
                    crossbeam_channel::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                })
            } else {
                self.work.recv_timeout(sweep)
            };
            match next {
                Ok(work) => {
                    self.handle(work)?;
                    // A disconnect is seen by the next receive, once the queue is empty.
                    self.take_work()?;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            self.after_work()?;
        }
    }

    /// How often deadlines are checked, at least.
    pub(crate) fn sweep(&self) -> Duration {
        (self.request_timeout / 4).clamp(Duration::from_millis(1), Duration::from_millis(100))
    }

    /// Takes the work queued now (at most [`WORK_PER_ROUND_MAX`] items). Returns whether the
    /// queue is closed and empty (the core and the log writer stopped).
    fn take_work(&mut self) -> Result<bool, Stop> {
        for _ in 0..WORK_PER_ROUND_MAX {
            match self.work.try_recv() {
                Ok(work) => self.handle(work)?,
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return Ok(true),
            }
        }
        Ok(false)
    }

    /// Everything a round does after taking its work: apply what committed, serve reads,
    /// time out what waited too long, snapshots and hashes.
    fn after_work(&mut self) -> Result<(), Stop> {
        let started = Instant::now();
        self.apply_committed()?;
        self.serve_reads();
        self.expire(started);
        self.collect_saved();
        if self.hashed_last {
            self.maybe_snapshot();
            self.hash_for_status();
        } else {
            self.hash_for_status();
            self.maybe_snapshot();
        }
        self.metrics.maybe_publish(Instant::now());
        Ok(())
    }

    fn handle(&mut self, work: ApplyWork) -> Result<(), Stop> {
        match work {
            ApplyWork::Proposed { index, term, requests } => {
                // An older proposal at the same index was cut by a leader change before it
                // committed (this node lost leadership and won it back): it never applies.
                if let Some((_, replaced)) = self.proposals.insert(index, (term, requests)) {
                    for w in replaced {
                        w.request.respond(ResponseBody::NotLeader { leader_id: None, leader_address: None });
                    }
                }
            }
            ApplyWork::Commit { index, queued } => {
                self.metrics.record_queue_wait(queued.elapsed());
                self.commit = self.commit.max(index);
            }
            ApplyWork::Read { index, requests } => self.reads.entry(index).or_default().extend(requests),
            ApplyWork::SnapshotNow => self.snapshot_wanted = true,
            ApplyWork::Status { status, request } => {
                if self.statuses.len() < STATUSES_WAITING_MAX {
                    self.statuses.push((status, request));
                } else {
                    self.metrics.counters().client_busy.bump();
                    request.respond(ResponseBody::Busy);
                }
            }
            ApplyWork::Restore { snapshot, done } => {
                let result = self.restore(snapshot);
                self.shared.apply_heavy.done();
                let failed = result.as_ref().err().cloned();
                let _ = done.send(result);
                if let Some(reason) = failed {
                    return Err(Stop { exit_code: EXIT_CODE_BAD_SNAPSHOT, message: reason });
                }
            }
        }
        Ok(())
    }

    fn restore(&mut self, snapshot: Snapshot) -> Result<(), String> {
        let mut state: &[u8] = &snapshot.state;
        self.applier.restore(&mut state).map_err(|e| format!("restoring the snapshot from the leader: {e}"))?;
        let meta = snapshot.meta;
        if self.applier.applied_index() != meta.index {
            return Err(format!(
                "snapshot at index {} holds a state applied through {}",
                meta.index,
                self.applier.applied_index()
            ));
        }
        self.conf = meta.conf;
        self.applied_term = meta.term;
        self.commit = self.commit.max(meta.index);
        self.last_snapshot_index = meta.index;
        self.bytes_since_snapshot = 0;
        let mut directory = self.directory.clone();
        for (id, addresses) in snapshot.directory.iter() {
            directory.insert(id, addresses);
        }
        self.set_directory(directory);
        // Proposals the snapshot covers: whether they took effect is unknown here.
        let covered: Vec<Index> = self.proposals.range(..=meta.index).map(|(&i, _)| i).collect();
        for index in covered {
            if let Some((_, requests)) = self.proposals.remove(&index) {
                for w in requests {
                    w.request.respond(ResponseBody::TimedOut);
                }
            }
        }
        self.shared.applied_index.store(meta.index, Ordering::SeqCst);
        self.shared.core_waits_for_answers.store(false, Ordering::SeqCst);
        self.shared.wake_core();
        Ok(())
    }

    fn set_directory(&mut self, directory: Directory) {
        if directory != self.directory {
            self.directory = directory.clone();
            self.shared.set_directory(directory);
        }
    }

    fn apply_committed(&mut self) -> Result<(), Stop> {
        let before = self.applier.applied_index();
        let ApplyStage {
            applier,
            reader,
            proposals,
            outcomes,
            metrics,
            conf,
            directory,
            shared,
            commit,
            applied_term,
            responses,
            inline,
            cut_short,
            ..
        } = self;
        let mut bytes_applied = 0u64;
        let round_started = Instant::now();
        let budget = inline.then_some(INLINE_ROUND_APPLY_MAX);
        let mut applied_in_round = 0usize;
        *cut_short = false;
        while applier.applied_index() < *commit && !*cut_short {
            let next = applier.applied_index() + 1;
            let entries = match reader.entries(next, *commit, APPLY_READ_BYTES_MAX) {
                Ok(entries) => entries,
                // Compacted away: a snapshot from the leader is on its way (the log stage
                // restores it through this stage). Not durable yet: cannot happen, since the
                // core hands out only durable commits; wait either way.
                Err(error) => {
                    tracing::debug!("apply waits for entry {next}: {error}");
                    break;
                }
            };
            let started = Instant::now();
            let mut count = 0usize;
            let mut bytes = 0usize;
            for entry in &entries {
                if applied_in_round > 0 && budget.is_some_and(|budget| round_started.elapsed() > budget) {
                    *cut_short = true;
                    break;
                }
                count += 1;
                applied_in_round += 1;
                outcomes.clear();
                applier.apply(entry.index, entry.term, entry.kind, entry.data, outcomes).map_err(|e| Stop {
                    exit_code: EXIT_CODE_BAD_ENTRY,
                    message: format!("applying a committed entry: {e}"),
                })?;
                bytes += entry.data.len();
                *applied_term = entry.term;
                if entry.kind == EntryKind::ConfChange {
                    apply_conf_change(conf, directory, entry.data, shared);
                }
                metrics.counters().commands_applied.add(outcomes.len() as u64);
                if proposals.first_key_value().is_some_and(|(&first, _)| first <= entry.index) {
                    answer_proposal(proposals, outcomes, metrics, responses, entry.index, entry.term, entry.kind);
                }
            }
            responses.flush();
            bytes_applied += bytes as u64;
            metrics.record_service(started.elapsed());
            metrics.record_batch(count as u64, bytes as u64);
            metrics.counters().entries_applied.add(count as u64);
        }
        self.bytes_since_snapshot += bytes_applied;
        if self.applier.applied_index() > before {
            // Every answer of the entries applied is out (written above): the core may be
            // holding its open batch for them (`CoreStage::answers_due`), and then it asked to
            // be woken. Otherwise it reads the index at its next round: nothing else it does
            // is urgent on an apply (it only bounds which snapshots the core accepts, and the
            // snapshot path checks it).
            self.shared.applied_index.store(self.applier.applied_index(), Ordering::SeqCst);
            if self.shared.core_waits_for_answers.swap(false, Ordering::SeqCst) {
                if self.inline {
                    // The core's round runs once this one is over: next on this thread, or
                    // woken by the apply's thread (`stage_runner.rs`).
                    self.core_due = true;
                } else {
                    self.shared.wake_core();
                }
            }
        }
        Ok(())
    }

    fn serve_reads(&mut self) {
        let applied = self.applier.applied_index();
        while let Some((&index, _)) = self.reads.first_key_value() {
            if index > applied {
                break;
            }
            let (_, requests) = self.reads.pop_first().expect("non-empty");
            let now = Instant::now();
            for w in requests {
                let body = match &w.request.request.body {
                    RequestBody::Read { payload, .. } => {
                        self.metrics.counters().reads_served.bump();
                        ResponseBody::Ok(self.applier.query(payload))
                    }
                    _ => ResponseBody::InvalidRequest("not a read".into()),
                };
                self.metrics.record_duration(Histo::ApplyLatency, now.duration_since(w.enqueued));
                w.request.respond_batched(body, &mut self.responses);
            }
        }
        self.responses.flush();
    }

    /// Answers `TimedOut` to proposals and reads older than the request timeout: a proposal
    /// stranded by a leader that lost its quorum would otherwise wait forever.
    fn expire(&mut self, now: Instant) {
        let timeout = self.request_timeout;
        let expired = |w: &Waiting| now.duration_since(w.enqueued) > timeout;
        let stale: Vec<Index> =
            self.proposals.iter().filter(|(_, (_, ws))| ws.first().is_some_and(expired)).map(|(&i, _)| i).collect();
        for index in stale {
            if let Some((_, requests)) = self.proposals.remove(&index) {
                self.metrics.counters().client_timed_out.add(requests.len() as u64);
                for w in requests {
                    w.request.respond(ResponseBody::TimedOut);
                }
            }
        }
        let stale: Vec<Index> =
            self.reads.iter().filter(|(_, ws)| ws.first().is_some_and(expired)).map(|(&i, _)| i).collect();
        for index in stale {
            if let Some(requests) = self.reads.remove(&index) {
                self.metrics.counters().client_timed_out.add(requests.len() as u64);
                for w in requests {
                    w.request.respond(ResponseBody::TimedOut);
                }
            }
        }
        // Status requests wait only for a snapshot save, unless the disk hangs.
        if self.statuses.first().is_some_and(|(_, request)| now.duration_since(request.received) > timeout) {
            let (stale, waiting): (StatusRequests, StatusRequests) = std::mem::take(&mut self.statuses)
                .into_iter()
                .partition(|(_, request)| now.duration_since(request.received) > timeout);
            self.statuses = waiting;
            self.metrics.counters().client_timed_out.add(stale.len() as u64);
            for (_, request) in stale {
                request.respond(ResponseBody::TimedOut);
            }
        }
    }

    /// Answers the status requests waiting with the state hash at the applied index. A state
    /// machine that freezes its state (the KV store) has it computed by the saver thread, one
    /// job at a time (walking the whole state here would stall every answer); the requests
    /// then wait while the saver is busy or the state cannot be frozen yet. Others hash here.
    fn hash_for_status(&mut self) {
        if self.statuses.is_empty() || (self.freezes_for_hash && self.saver.is_busy()) {
            return;
        }
        let hash = self.applier.state_hash_later();
        self.freezes_for_hash |= matches!(hash, StateHash::Later(_));
        // Dropped unused: the view costs nothing to take again once the saver is free.
        if matches!(hash, StateHash::NotYet) || (matches!(hash, StateHash::Later(_)) && self.saver.is_busy()) {
            return;
        }
        let mut statuses = std::mem::take(&mut self.statuses);
        let applied = self.applier.applied_index();
        for (status, _) in &mut statuses {
            status["applied_state_index"] = applied.into();
        }
        match hash {
            StateHash::Now(hash) => answer_statuses(hash, statuses),
            StateHash::Later(hash) => {
                self.saver.hash_for_status(hash, statuses);
                self.hashed_last = true;
            }
            StateHash::NotYet => unreachable!("returned above"),
        }
    }

    /// Collects the end of the saver's job, if it ended.
    fn collect_saved(&mut self) {
        if let Some(Saved::Failed { .. }) = self.saver.poll() {
            // A full disk, say: the log stays as it is; try again after more entries, or at
            // once if the core is waiting for this one.
            self.snapshot_wanted |= self.saving_wanted;
        }
    }

    fn maybe_snapshot(&mut self) {
        if self.saver.is_busy() {
            return;
        }
        let applied = self.applier.applied_index();
        // A snapshot the core asked for is taken even at the index of the last one: the core may
        // not have taken that one (its hand-over slot was full), and a follower waits for it.
        let due = if self.snapshot_wanted {
            applied > 0 && applied >= self.last_snapshot_index
        } else {
            applied > self.last_snapshot_index && self.bytes_since_snapshot >= self.snapshot_log_bytes
        };
        if !due {
            return;
        }
        let started = Instant::now();
        let writer = match self.applier.snapshot_view() {
            Ok(writer) => writer,
            Err(e) => {
                tracing::warn!("taking a snapshot failed: {e}");
                return;
            }
        };
        let meta = SnapshotMeta { index: applied, term: self.applied_term, conf: self.conf.clone() };
        let (cluster_id, directory, file_meta) = (self.cluster_id, self.directory.clone(), meta.clone());
        let write: WriteSnapshot = Box::new(move |bytes_hint| {
            snapshot::encode_with(cluster_id, &file_meta, &directory, bytes_hint, |out| writer.write_into(out))
        });
        self.saver.save(meta, write, started.elapsed());
        self.hashed_last = false;
        self.saving_wanted = self.snapshot_wanted;
        self.last_snapshot_index = applied;
        self.bytes_since_snapshot = 0;
        self.snapshot_wanted = false;
    }
}

/// Applies a committed membership change to the apply stage's copy of the membership, and
/// records the addresses a new member's entry announces.
pub(crate) fn apply_conf_change(conf: &mut ConfState, directory: &mut Directory, data: &[u8], shared: &Shared) {
    let Ok((change, context)) = ConfChange::decode_with_context(data) else {
        // The core skips such an entry on every replica alike; so does this.
        return;
    };
    if let Ok(next) = change.apply(conf) {
        *conf = next;
    }
    if let Some((id, addresses)) = announced_member(&change, context) {
        let mut next = directory.clone();
        next.insert(id, addresses);
        if next != *directory {
            *directory = next.clone();
            shared.set_directory(next);
        }
    }
}

/// The member a membership change adds and the addresses its context announces, if any.
pub(crate) fn announced_member(change: &ConfChange, context: &[u8]) -> Option<(u64, Addresses)> {
    if context.is_empty() {
        return None;
    }
    let ConfChange::Change { ops } = change else { return None };
    let id = ops.iter().find_map(|op| match *op {
        ConfChangeOp::AddVoter(id) | ConfChangeOp::AddLearner(id) => Some(id),
        ConfChangeOp::Remove(_) => None,
    })?;
    Addresses::from_context(context).ok().map(|a| (id, a))
}

/// Answers the clients of the proposal at `index`, just applied with `outcomes`.
fn answer_proposal(
    proposals: &mut BTreeMap<Index, (Term, Vec<Waiting>)>,
    outcomes: &mut Vec<CommandOutcome>,
    metrics: &mut crate::metrics::StageRecorder,
    responses: &mut ResponseBatch,
    index: Index,
    term: Term,
    kind: EntryKind,
) {
    // Proposals below this index were never applied here (replaced by a snapshot install
    // or a leader change that cut them): their fate is unknown to this node.
    while let Some((&first, _)) = proposals.first_key_value() {
        if first >= index {
            break;
        }
        let (_, (_, requests)) = proposals.pop_first().expect("non-empty");
        for w in requests {
            w.request.respond(ResponseBody::TimedOut);
        }
    }
    let Some((proposed_term, requests)) = proposals.remove(&index) else { return };
    if proposed_term != term {
        // Another leader's entry took this index: ours was lost. Retrying is safe (sessions
        // make a command that did commit elsewhere apply once).
        for w in requests {
            w.request.respond(ResponseBody::NotLeader { leader_id: None, leader_address: None });
        }
        return;
    }
    let now = Instant::now();
    if kind != EntryKind::Normal {
        for w in requests {
            metrics.record_duration(Histo::ApplyLatency, now.duration_since(w.enqueued));
            w.request.respond(ResponseBody::Ok(Bytes::from(format!("committed at index {index}"))));
        }
        return;
    }
    for (w, outcome) in requests.into_iter().zip(outcomes.drain(..)) {
        metrics.record_duration(Histo::ApplyLatency, now.duration_since(w.enqueued));
        let body = match outcome {
            CommandOutcome::Applied(result) | CommandOutcome::Duplicate(result) => ResponseBody::Ok(result),
            CommandOutcome::Stale { oldest_remembered } => ResponseBody::InvalidRequest(format!(
                "sequence number too old: the session remembers results from {oldest_remembered} on"
            )),
        };
        w.request.respond_batched(body, responses);
    }
}

impl<S: StateMachine + Send> InlineStage for ApplyStage<S> {
    fn inline_round(&mut self) -> bool {
        if self.stopped {
            return false;
        }
        let result = self.take_work().and_then(|closed| {
            if closed {
                self.stopped = true;
                return Ok(());
            }
            self.after_work()
        });
        if let Err(stop) = result {
            self.stopped = true;
            self.shared.fail(stop.exit_code, stop.message);
        }
        std::mem::take(&mut self.core_due)
    }

    fn has_work(&self) -> bool {
        self.cut_short || !self.work.is_empty()
    }

    fn cut_short(&self) -> bool {
        self.cut_short
    }

    fn stopped(&self) -> bool {
        self.stopped
    }

    fn count_inline_round(&self) {
        self.metrics.counters().apply_rounds_inline.bump();
    }

    fn count_slow_round(&self) {
        self.metrics.counters().inline_rounds_slow.bump();
    }

    fn publish_now(&mut self) {
        self.metrics.publish_now();
    }
}
