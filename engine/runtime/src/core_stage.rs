//! The core stage: the sequencer and the Raft core, one round at a time.
//!
//! It takes client requests and peer messages as they arrive, packs commands into one entry per
//! batch (bounded by `batch_bytes_max`, `batch_commands_max` and `linger_us_max`), drives the
//! core's ready cycle, and hands work on: appends go to followers at once (the leader writes its
//! own disk in parallel), persistence to the log writer, commits and reads to the apply stage.
//! Messages that promise durability leave only once the log writer reports their ready durable.
//!
//! Its rounds run on its own thread, or on the transport thread that brought it work
//! (`core_runner.rs` says who runs them and how its thread sleeps); an idle node costs nothing
//! but its tick.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use smr_apply::{BatchBuilder, Command};
use smr_log::LogReader;
use smr_net::{AdminRequest, ClientRequest, Consistency, Inbound, PeerTransport, RequestBody, ResponseBody};
use smr_raft::{
    ConfChange, ConfChangeOp, ConfState, Error as RaftError, HardState, Index, Message, NodeId, ReadContext, Replica,
    Role,
};

use crate::config::PipelineConfig;
use crate::directory::{Addresses, Directory};
use crate::handoff::{ApplyWork, LogBell, LogWork, Shared, SnapshotTaken, Waiting};
use crate::metrics::{Histo, MetricsHub, StageRecorder};
use crate::rebind::Rebinder;
use crate::status::PipelineMode;

/// Messages and requests taken per input per round, so that one busy input cannot starve the
/// others or delay the ready cycle.
const INPUT_PER_ROUND_MAX: usize = 1024;
/// Ticks the core catches up at once after a stall; beyond it the clock is reset (a stall that
/// long has already cost leadership, and a burst of ticks would only add elections).
const TICKS_CATCH_UP_MAX: u32 = 100;
/// How far the commit hint in the durable hard state may lag the commit index before a ready that
/// syncs anyway writes it. The hint is only a starting point after a restart (a lagging one is
/// safe: the leader tells the node the rest), and writing it costs a second `fdatasync` (of the
/// state file) in the ready's sync; so it goes with term and vote changes, and once per this
/// many commits.
const COMMIT_HINT_LAG_MAX: u64 = 4096;

/// A ready the core has not yet been told is durable.
#[derive(Debug)]
struct Unpersisted {
    number: u64,
    /// False when the ready went nowhere near the log: it is durable once every earlier one is.
    needs_log: bool,
}

pub(crate) struct CoreStage {
    pub(crate) replica: Replica,
    pub(crate) transport: PeerTransport,
    pub(crate) inbound: Receiver<Inbound>,
    pub(crate) clients: Receiver<ClientRequest>,
    pub(crate) snapshots: Receiver<SnapshotTaken>,
    pub(crate) to_log: Sender<LogWork>,
    pub(crate) log_bell: LogBell,
    pub(crate) to_apply: Sender<ApplyWork>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) pipeline: PipelineConfig,
    pub(crate) snapshot_keep_entries: u64,
    pub(crate) cluster_id: u64,
    /// Members named in the config: kept as peers even before the log names them (a joining
    /// node must accept its leader's connection before it has any membership).
    pub(crate) config_members: BTreeSet<NodeId>,
    pub(crate) metrics: StageRecorder,
    pub(crate) hub: Arc<MetricsHub>,
    pub(crate) started: Instant,
    batch: BatchBuilder,
    batch_waiting: Vec<Waiting>,
    batch_opened: Option<Instant>,
    /// Proposals made since the last commit was handed to the apply stage, with their waiting
    /// requests. They go to the apply stage just before the commit that covers them (or when
    /// leadership is lost), so that a proposal costs the apply stage no wake-up of its own.
    /// Bounded by the core's `uncommitted_bytes_max`, as the proposals are.
    proposals_unsent: Vec<ApplyWork>,
    reads_batch: Vec<Waiting>,
    reads: HashMap<ReadContext, (Vec<Waiting>, Instant)>,
    next_read_context: ReadContext,
    unpersisted: VecDeque<Unpersisted>,
    /// The hard state last handed to the log writer.
    hard_state_written: HardState,
    applied_seen: Index,
    commit_sent: Index,
    directory_generation: u64,
    directory: Directory,
    peers: BTreeSet<NodeId>,
    missing_address_logged: BTreeSet<NodeId>,
    next_tick: Instant,
    /// Entries proposed here and not yet committed, with when: for the commit latency histogram.
    /// Bounded by the core's `uncommitted_bytes_max`; cleared when leadership is lost.
    proposed: VecDeque<(Index, Instant)>,
    /// The last entry proposed here that committed. Its clients have their answers once the
    /// apply stage's applied index reaches it.
    answers_due_through: Index,
    /// When the log writer was last woken. It sleeps in the kernel until there is work, so an
    /// idle one is woken once per metrics interval to publish what it recorded.
    log_woken: Instant,
    /// Log record bytes of the entries stepped in or proposed since the last ready: what the
    /// next ready hands the log writer in one submit.
    /// Invariant: at most `submit_bytes_max`, or one message's entries alone.
    unready_entry_bytes: u64,
    /// The log's `submit_bytes_max`: the most one ready's entries may take.
    submit_bytes_max: u64,
    /// Swaps durable entries' heap copies for slices of the mapped log.
    rebinder: Rebinder,
    /// Whether the round running now is on the core's own thread. Only that thread reconciles
    /// the peers with the membership: the transport joins a removed peer's reader, which may be
    /// the thread running an inline round. (Adding one, as `AddNode` does, joins nothing.)
    on_core_thread: bool,
    /// A membership change seen in an inline round: the core's thread reconciles the peers.
    reconcile_due: bool,
    /// Whether the log writer's rounds run inline (`stage_runner.rs`) rather than on its thread.
    log_inline: bool,
    /// How the pipeline runs, for the status.
    mode: PipelineMode,
    /// Work was queued for the log writer since [`CoreStage::take_log_queued`] (inline only).
    log_queued: bool,
    /// Work was handed to the apply stage since [`CoreStage::take_apply_queued`] (inline only).
    apply_queued: bool,
}

impl std::fmt::Debug for CoreStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreStage").field("id", &self.replica.id()).field("role", &self.replica.role()).finish()
    }
}

/// Everything the core stage is built from.
#[derive(Debug)]
pub(crate) struct CoreParts {
    pub(crate) replica: Replica,
    pub(crate) transport: PeerTransport,
    pub(crate) inbound: Receiver<Inbound>,
    pub(crate) clients: Receiver<ClientRequest>,
    pub(crate) snapshots: Receiver<SnapshotTaken>,
    pub(crate) to_log: Sender<LogWork>,
    pub(crate) log_bell: LogBell,
    /// How the pipeline runs: the log's I/O path, and which rounds run inline.
    pub(crate) mode: PipelineMode,
    pub(crate) to_apply: Sender<ApplyWork>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) pipeline: PipelineConfig,
    /// The log's `submit_bytes_max` (checked at start-up to hold one AppendEntries).
    pub(crate) submit_bytes_max: u64,
    pub(crate) cluster_id: u64,
    pub(crate) config_members: BTreeSet<NodeId>,
    /// Peers the transport was started with.
    pub(crate) initial_peers: BTreeSet<NodeId>,
    pub(crate) metrics: StageRecorder,
    pub(crate) hub: Arc<MetricsHub>,
    /// Reads the durable log, for [`Rebinder`].
    pub(crate) reader: LogReader,
}

impl CoreStage {
    pub(crate) fn new(parts: CoreParts) -> CoreStage {
        let now = Instant::now();
        let hard_state_written = parts.replica.hard_state();
        let pipeline = parts.pipeline;
        let applied = parts.replica.applied_index();
        let rebinder = Rebinder::new(parts.reader, &parts.replica);
        let mut stage = CoreStage {
            replica: parts.replica,
            transport: parts.transport,
            inbound: parts.inbound,
            clients: parts.clients,
            snapshots: parts.snapshots,
            to_log: parts.to_log,
            log_bell: parts.log_bell,
            log_inline: parts.mode.inline_log,
            mode: parts.mode,
            log_queued: false,
            apply_queued: false,
            to_apply: parts.to_apply,
            shared: parts.shared,
            snapshot_keep_entries: pipeline.snapshot_keep_entries,
            batch: BatchBuilder::new(pipeline.batch_bytes_max, pipeline.batch_commands_max),
            pipeline,
            cluster_id: parts.cluster_id,
            config_members: parts.config_members,
            metrics: parts.metrics,
            hub: parts.hub,
            started: now,
            batch_waiting: Vec::new(),
            batch_opened: None,
            proposals_unsent: Vec::new(),
            reads_batch: Vec::new(),
            reads: HashMap::new(),
            next_read_context: 1,
            unpersisted: VecDeque::new(),
            hard_state_written,
            applied_seen: applied,
            commit_sent: applied,
            directory_generation: 0,
            directory: Directory::default(),
            peers: parts.initial_peers,
            missing_address_logged: BTreeSet::new(),
            next_tick: now,
            proposed: VecDeque::new(),
            answers_due_through: 0,
            log_woken: now,
            unready_entry_bytes: 0,
            submit_bytes_max: parts.submit_bytes_max,
            rebinder,
            on_core_thread: true,
            reconcile_due: false,
        };
        stage.next_tick = now + stage.tick();
        stage.check_directory();
        stage
    }

    fn tick(&self) -> Duration {
        Duration::from_millis(self.pipeline.tick_ms)
    }

    /// One round: takes what arrived, ticks, proposes, drives the ready cycle and hands on
    /// what it made. Runs on the core's thread or, with `pipeline.inline_core`, on a transport
    /// thread that brought work (`on_core_thread` false; see `core_runner.rs`). Returns whether
    /// inputs are left over (a round takes at most [`INPUT_PER_ROUND_MAX`] from each).
    pub(crate) fn round(&mut self, on_core_thread: bool) -> bool {
        self.on_core_thread = on_core_thread;
        if !on_core_thread {
            self.hub.counters().core_rounds_inline.bump();
        }
        let round = Instant::now();
        if on_core_thread && self.reconcile_due {
            self.reconcile_due = false;
            let conf = self.replica.conf().clone();
            self.reconcile_peers(&conf);
        }
        self.take_inputs(self.shared.stopping());
        self.complete_persisted();
        self.check_applied();
        self.check_directory();
        self.tick_if_due(round);
        self.flush_reads();
        self.flush_batch_if_due(round);
        self.drive_ready();
        if self.batch_opened.is_some() {
            // Commits in this round may have made room in the pipeline for the held batch.
            self.flush_batch_if_due(Instant::now());
            self.drive_ready();
        }
        self.expire_reads(round);
        // Last: nothing waits on it.
        self.rebinder.rebind(&mut self.replica, self.hub.counters());
        self.metrics.record_service(round.elapsed());
        self.metrics.maybe_publish(Instant::now());
        !self.inbound.is_empty() || !self.clients.is_empty()
    }

    /// When the next round is due with no input: the next tick, or the end of an open batch's
    /// hold.
    pub(crate) fn next_deadline(&self) -> Instant {
        let mut deadline = self.next_tick;
        if let Some(opened) = self.batch_opened {
            deadline = deadline.min(opened + self.batch_hold_max());
        }
        deadline
    }

    /// Whether a stopping node should keep serving: it leads, and proposals already made are
    /// not yet committed (their clients would rather have answers than `ShuttingDown`).
    pub(crate) fn has_uncommitted_proposals(&self) -> bool {
        self.shared.fatal_code.load(Ordering::Acquire) == 0
            && self.replica.is_leader()
            && self.replica.commit_index() < self.replica.last_index()
    }

    fn take_inputs(&mut self, draining: bool) {
        for _ in 0..INPUT_PER_ROUND_MAX {
            let Ok(batch) = self.inbound.try_recv() else { break };
            self.on_inbound(batch);
        }
        for _ in 0..INPUT_PER_ROUND_MAX {
            let Ok(request) = self.clients.try_recv() else { break };
            self.on_client(request, draining);
        }
        while let Ok(taken) = self.snapshots.try_recv() {
            self.on_snapshot_taken(taken);
        }
    }

    fn on_inbound(&mut self, batch: Inbound) {
        for mut message in batch.messages {
            if let smr_raft::MessageBody::Append { entries, .. } = &message.body {
                self.make_room_in_ready(entries.iter().map(|e| record_bytes(e.data.len())).sum());
            }
            own_entry_data(&mut message);
            if let Err(error) = self.replica.step(message) {
                tracing::debug!(from = batch.from, "message refused: {error}");
            }
        }
    }

    fn leader_redirect(&self) -> ResponseBody {
        let leader_id = self.replica.leader().filter(|&l| l != self.replica.id());
        let leader_address = leader_id.and_then(|l| self.directory.get(l)).map(|a| a.client.to_string());
        ResponseBody::NotLeader { leader_id, leader_address }
    }

    /// Whether a stage behind the core is too full to take more client work.
    fn backpressured(&self) -> bool {
        if self.to_log.len() + 1 >= self.pipeline.log_queue_max {
            self.hub.counters().log_queue_full.bump();
            return true;
        }
        if self.to_apply.len() * 2 >= self.pipeline.apply_queue_max {
            self.hub.counters().apply_queue_full.bump();
            return true;
        }
        false
    }

    fn on_client(&mut self, request: ClientRequest, draining: bool) {
        if draining {
            request.respond(ResponseBody::ShuttingDown);
            return;
        }
        let now = Instant::now();
        self.metrics.record_queue_wait(now.saturating_duration_since(request.received));
        match &request.request.body {
            RequestBody::Command { session_id, sequence, payload } => {
                if !self.replica.is_leader() {
                    self.hub.counters().client_not_leader.bump();
                    let redirect = self.leader_redirect();
                    request.respond(redirect);
                    return;
                }
                if payload.len() + smr_apply::batch::COMMAND_OVERHEAD_BYTES > self.pipeline.batch_bytes_max {
                    self.hub.counters().client_too_large.bump();
                    request.respond(ResponseBody::TooLarge);
                    return;
                }
                if self.backpressured() {
                    self.hub.counters().client_busy.bump();
                    request.respond(ResponseBody::Busy);
                    return;
                }
                let command = Command { session: *session_id, seq: *sequence, payload: payload.clone() };
                if let Err(command) = self.batch.push(command) {
                    self.flush_batch();
                    self.batch.push(command).expect("a command that passed the size check fits an empty batch");
                }
                self.batch_waiting.push(Waiting { request, enqueued: now });
                self.batch_opened.get_or_insert(now);
                if self.batch.len() >= self.pipeline.batch_commands_max {
                    self.flush_batch();
                }
            }
            RequestBody::Read { consistency: Consistency::Stale, .. } => {
                self.send_apply(ApplyWork::Read { index: 0, requests: vec![Waiting { request, enqueued: now }] });
            }
            RequestBody::Read { .. } => {
                if self.backpressured() {
                    self.hub.counters().client_busy.bump();
                    request.respond(ResponseBody::Busy);
                    return;
                }
                self.reads_batch.push(Waiting { request, enqueued: now });
            }
            RequestBody::Admin(admin) => {
                let admin = admin.clone();
                self.on_admin(admin, request, now);
            }
        }
    }

    fn send_apply(&mut self, work: ApplyWork) {
        // Never full in practice: client work is refused as busy once the queue is half full,
        // and everything else is bounded by the core's own limits (one item per ready).
        if self.to_apply.is_full() {
            // The send below waits for room: make sure the apply stage's thread is making it.
            self.shared.wake_apply();
        }
        if self.to_apply.send(work).is_err() {
            self.shared.fail(0, "the apply stage stopped".into());
        }
        // Inline, the thread running this round runs the apply round after it.
        self.apply_queued |= self.mode.inline_apply;
    }

    /// Whether rounds since the last call handed the apply stage work (inline apply only).
    pub(crate) fn take_apply_queued(&mut self) -> bool {
        std::mem::take(&mut self.apply_queued)
    }

    /// Hands the proposals made since the last commit to the apply stage.
    fn send_proposals(&mut self) {
        for work in std::mem::take(&mut self.proposals_unsent) {
            self.send_apply(work);
        }
    }

    /// Proposes the open batch, if any.
    fn flush_batch(&mut self) {
        self.batch_opened = None;
        if self.batch.is_empty() {
            return;
        }
        let commands = self.batch.len();
        let bytes = self.batch.bytes();
        let data = self.batch.finish();
        let waiting = std::mem::take(&mut self.batch_waiting);
        self.make_room_in_ready(record_bytes(data.len()));
        match self.replica.propose(data) {
            Ok(id) => {
                self.metrics.record_batch(commands as u64, bytes as u64);
                self.proposed.push_back((id.index, Instant::now()));
                self.proposals_unsent.push(ApplyWork::Proposed { index: id.index, term: id.term, requests: waiting });
            }
            Err(error) => {
                let body = match error {
                    RaftError::NotLeader { .. } => {
                        self.hub.counters().client_not_leader.bump();
                        self.leader_redirect()
                    }
                    RaftError::ProposalTooLarge { .. } => ResponseBody::TooLarge,
                    _ => {
                        self.hub.counters().client_busy.bump();
                        ResponseBody::Busy
                    }
                };
                self.hub.counters().proposals_dropped.add(waiting.len() as u64);
                for w in waiting {
                    w.request.respond(body.clone());
                }
            }
        }
    }

    /// The longest an open batch is held: `linger_us_max`, or one tick when that is 0.
    fn batch_hold_max(&self) -> Duration {
        if self.pipeline.linger_us_max == 0 { self.tick() } else { Duration::from_micros(self.pipeline.linger_us_max) }
    }

    /// Proposes the open batch when it is due. A batch that is not full is held while
    /// `proposals_inflight_max` entries proposed here are still uncommitted: the pipeline is
    /// busy anyway, and one larger entry costs the followers one append, one fsync share and one
    /// acknowledgement, where many small ones cost as many. It goes as soon as an entry commits,
    /// unless it is still below `hold_for_answers_bytes_max`: then it also waits until the apply
    /// stage has answered the entries proposed here that committed, so that the commands their
    /// clients send next join it (see [`CoreStage::answers_due`]). Either way it never waits
    /// longer than `linger_us_max` (or one tick when that is 0), and `proposals_inflight_max =
    /// 0` turns both holds off. With nothing in flight and every answer given it goes at once,
    /// so a lone client pays no wait (its next command comes after its answer, and the applied
    /// index moves just after the answers are written).
    fn flush_batch_if_due(&mut self, now: Instant) {
        let Some(opened) = self.batch_opened else { return };
        let held = now.duration_since(opened);
        let hold_max = self.batch_hold_max();
        let lingering = held < Duration::from_micros(self.pipeline.linger_us_max);
        let holding = self.pipeline.proposals_inflight_max > 0
            && (self.proposed.len() >= self.pipeline.proposals_inflight_max
                || (self.batch.bytes() < self.pipeline.hold_for_answers_bytes_max && self.answers_due()));
        if held >= hold_max || (!lingering && !holding) {
            self.flush_batch();
        }
    }

    /// Whether clients of entries proposed here that committed are still waiting for their
    /// answers; if so, the apply stage is asked to wake the core once it has given them.
    ///
    /// Why hold for them: a closed loop of clients sends its next commands as soon as it has
    /// its answers, and the apply stage gives those a while after the commit (the apply thread
    /// wakes, applies and writes to each connection). A batch proposed at the commit holds only
    /// the commands that came back during the entry before, and the ones answered next wait a
    /// whole commit cycle for the entry after: the clients split into two cohorts, each in every
    /// other entry. Held until the answers are out, the batch takes both (`smr-bench`, 3 nodes,
    /// interleaved runs: 16 outstanding 6.7-7.1 → 12.0-12.7 commands per entry, 256 outstanding
    /// 94-99 → 126-128; in the first two pairs, on a steady disk, 8.6k → 10.1k puts/s at 16 with
    /// p99 10-11 → 6.3 ms, and 67-69k → 77k at 256, while three later pairs each drifted with
    /// the disk's speed). Past `hold_for_answers_bytes_max` a batch goes at the commit: larger
    /// entries make each fsync slower, and with two cohorts the disk always has the next entry
    /// to write (a hold without that bound made 1024 outstanding 8-13 % slower, its entries
    /// twice as large and its fsync 1.2 → 2.1 ms). In-process clients, as through the C API,
    /// propose their next commands from inside the answers, before the applied index moves.
    ///
    /// No wake-up is lost: the flag is stored before the applied index is read again, and the
    /// apply stage stores the applied index before it takes the flag, all sequentially
    /// consistent, so one of the two sees the other.
    fn answers_due(&self) -> bool {
        let due = || self.shared.applied_index.load(Ordering::SeqCst) < self.answers_due_through;
        if !due() {
            return false;
        }
        self.shared.core_waits_for_answers.store(true, Ordering::SeqCst);
        due()
    }

    /// Asks one read index for every linearizable read that arrived in this round.
    fn flush_reads(&mut self) {
        if self.reads_batch.is_empty() {
            return;
        }
        let context = self.next_read_context;
        self.next_read_context += 1;
        let waiting = std::mem::take(&mut self.reads_batch);
        match self.replica.read_index(context) {
            Ok(()) => {
                self.reads.insert(context, (waiting, Instant::now()));
            }
            Err(error) => {
                let body = match error {
                    RaftError::NotLeader { .. } => self.leader_redirect(),
                    _ => ResponseBody::Busy,
                };
                self.hub.counters().reads_failed.add(waiting.len() as u64);
                for w in waiting {
                    w.request.respond(body.clone());
                }
            }
        }
    }

    /// A forwarded read or its answer can be lost: time such reads out here.
    fn expire_reads(&mut self, now: Instant) {
        let timeout = Duration::from_millis(self.pipeline.request_timeout_ms);
        let expired: Vec<ReadContext> =
            self.reads.iter().filter(|(_, (_, at))| now.duration_since(*at) > timeout).map(|(&c, _)| c).collect();
        for context in expired {
            if let Some((waiting, _)) = self.reads.remove(&context) {
                self.hub.counters().client_timed_out.add(waiting.len() as u64);
                for w in waiting {
                    w.request.respond(ResponseBody::TimedOut);
                }
            }
        }
    }

    fn tick_if_due(&mut self, now: Instant) {
        let tick = self.tick();
        let mut ticks = 0;
        while now >= self.next_tick {
            if ticks == TICKS_CATCH_UP_MAX {
                tracing::warn!("the core stalled for more than {TICKS_CATCH_UP_MAX} ticks; its clock restarts");
                self.next_tick = now + tick;
                break;
            }
            self.replica.tick();
            self.next_tick += tick;
            ticks += 1;
        }
        if now.duration_since(self.log_woken) >= self.hub.publish_interval() {
            self.log_bell.wake();
            self.log_woken = now;
        }
    }

    /// Work went to the log writer: wake its thread, or, when the log's rounds run inline,
    /// leave it to the thread running this round, once the round is over
    /// ([`CoreStage::take_log_queued`]). Work that takes long (`heavy`: a snapshot to save and
    /// install, a compaction) goes to the log's thread even then, counted in
    /// `Shared::log_heavy` before it is queued, so that no inline round takes it.
    ///
    /// A follower's log rounds stay on the log's thread too: the thread that would run them is
    /// its reader of the leader's connection, and while it waits in `fdatasync` (100 ms and
    /// more while the disk saves snapshots) nothing from the leader is read, and the follower's
    /// election timer runs out (pre-votes at every few snapshots in a 5-minute run at 256
    /// outstanding, against none with the log on its thread). A leader has a reader per
    /// follower, and only one of them can be in the log's round at a time.
    fn log_work_queued(&mut self, heavy: bool) {
        if self.log_inline && !heavy && self.replica.is_leader() {
            self.log_queued = true;
        } else {
            self.log_bell.wake();
            self.log_woken = Instant::now();
        }
    }

    /// Whether rounds since the last call queued work for the log writer (inline log rounds
    /// only).
    pub(crate) fn take_log_queued(&mut self) -> bool {
        std::mem::take(&mut self.log_queued)
    }

    /// Makes room in the next ready for entries taking `bytes` of log records: when they would
    /// take its entries past the log's `submit_bytes_max` (which refuses a larger submit, and
    /// that stops the node), the ready cycle runs first. A follower catching up takes in many
    /// appends of `raft.append_bytes_max` in one round, a loaded leader many batches.
    fn make_room_in_ready(&mut self, bytes: u64) {
        if self.unready_entry_bytes > 0 && self.unready_entry_bytes + bytes > self.submit_bytes_max {
            self.drive_ready();
        }
        self.unready_entry_bytes += bytes;
    }

    fn drive_ready(&mut self) {
        while self.replica.has_ready() {
            let rd = self.replica.ready();
            self.unready_entry_bytes = 0;
            let mut send_now = rd.messages;
            if let Some(role) = rd.role {
                tracing::info!(role = ?role.role, term = role.term, leader = ?role.leader, "role changed");
                self.shared.notify(|events| events.role_changed(role.role, role.term, role.leader));
                if role.role != Role::Leader {
                    self.proposed.clear();
                    // The apply stage answers them: when their index commits with another
                    // entry, or when they time out.
                    self.send_proposals();
                }
                if role.role != Role::Leader && !self.batch_waiting.is_empty() {
                    self.batch_opened = None;
                    let _ = self.batch.finish();
                    let redirect = self.leader_redirect();
                    for w in std::mem::take(&mut self.batch_waiting) {
                        w.request.respond(redirect.clone());
                    }
                }
            }
            if let Some(conf) = &rd.conf {
                tracing::info!(?conf, "membership changed");
                self.shared.notify(|events| events.membership_changed(conf));
                // This ready's messages were made for the peers before the change (a peer
                // being removed still gets them): they leave before the transport drops it.
                for message in std::mem::take(&mut send_now) {
                    self.send_peer(message);
                }
                self.reconcile_peers(conf);
            }
            let writes = rd.sync || !rd.entries.is_empty() || !rd.snapshot_chunks.is_empty();
            // Persisted messages leave from the log writer once their ready is durable. A ready
            // with nothing to write is durable once every earlier one is: its messages go out
            // at once when nothing is pending, else they queue behind the pending ones.
            let pending = self.unpersisted.iter().any(|ready| ready.needs_log);
            let needs_log = writes || (pending && !rd.persisted_messages.is_empty());
            if needs_log {
                let installs = !rd.snapshot_chunks.is_empty();
                let work = LogWork::Persist {
                    queued: Instant::now(),
                    number: rd.number,
                    chunks: rd.snapshot_chunks,
                    entries: rd.entries,
                    hard_state: hard_state_to_write(&mut self.hard_state_written, rd.sync, rd.hard_state),
                    messages: rd.persisted_messages,
                };
                if self.to_log.is_full() {
                    // The send below waits for room: make sure the log's thread is making it.
                    self.log_bell.wake();
                }
                if installs {
                    self.shared.log_heavy.queued();
                }
                if self.to_log.send(work).is_err() {
                    self.shared.fail(0, "the log stage stopped".into());
                    return;
                }
                self.log_work_queued(installs);
            } else {
                send_now.extend(rd.persisted_messages);
            }
            self.unpersisted.push_back(Unpersisted { number: rd.number, needs_log });
            for read in rd.read_states {
                if let Some((waiting, _)) = self.reads.remove(&read.context) {
                    self.send_apply(ApplyWork::Read { index: read.index, requests: waiting });
                }
            }
            for context in rd.failed_reads {
                if let Some((waiting, _)) = self.reads.remove(&context) {
                    self.hub.counters().reads_failed.add(waiting.len() as u64);
                    let redirect = self.leader_redirect();
                    for w in waiting {
                        w.request.respond(redirect.clone());
                    }
                }
            }
            if rd.commit_index > self.commit_sent {
                self.commit_sent = rd.commit_index;
                let now = Instant::now();
                while let Some(&(index, at)) = self.proposed.front() {
                    if index > rd.commit_index {
                        break;
                    }
                    self.metrics.record_duration(Histo::CommitLatency, now.duration_since(at));
                    self.proposed.pop_front();
                    self.answers_due_through = index;
                }
                self.send_proposals();
                self.send_apply(ApplyWork::Commit { index: rd.commit_index, queued: now });
            }
            if rd.need_snapshot {
                self.send_apply(ApplyWork::SnapshotNow);
            }
            // Peers last: on loopback each send also runs the receiver's TCP processing on this
            // thread (about 20 µs), and the log writer and the apply stage, woken above, get on
            // with their part meanwhile. Raft asks no order here: these messages never wait for
            // the log (the persisted ones above had nothing to wait for).
            for message in send_now {
                self.send_peer(message);
            }
            self.complete_persisted();
        }
    }

    fn send_peer(&mut self, message: Message) {
        if let smr_raft::MessageBody::Snapshot { last: true, .. } = &message.body {
            self.hub.counters().snapshots_sent.bump();
        }
        if self.transport.send(message).is_err() {
            self.hub.counters().peer_messages_dropped.bump();
        }
    }

    /// Tells the core which readies the log reports durable (their messages were sent by the
    /// log writer).
    fn complete_persisted(&mut self) {
        let durable = self.shared.durable_token.load(Ordering::Acquire);
        let mut last = None;
        while let Some(front) = self.unpersisted.front() {
            if front.needs_log && front.number > durable {
                break;
            }
            let done = self.unpersisted.pop_front().expect("front exists");
            last = Some(done.number);
        }
        if let Some(number) = last {
            self.replica.on_persisted(number);
        }
    }

    fn check_applied(&mut self) {
        let applied = self.shared.applied_index.load(Ordering::Acquire);
        if applied > self.applied_seen {
            self.applied_seen = applied;
            self.replica.on_applied(applied);
        }
    }

    fn check_directory(&mut self) {
        let generation = self.shared.directory_generation.load(Ordering::Acquire);
        if generation == self.directory_generation {
            return;
        }
        self.directory_generation = generation;
        self.directory = self.shared.directory();
        for &id in &self.peers {
            if let Some(addresses) = self.directory.get(id) {
                self.transport.set_peer_address(id, addresses.peer);
            }
        }
        let conf = self.replica.conf().clone();
        self.reconcile_peers(&conf);
    }

    /// Connects to every member (and every member the config names) not yet connected, and
    /// disconnects from those that left.
    fn reconcile_peers(&mut self, conf: &ConfState) {
        if !self.on_core_thread {
            self.reconcile_due = true;
            self.shared.wake_core();
            return;
        }
        let me = self.replica.id();
        let wanted: BTreeSet<NodeId> =
            conf.members().into_iter().chain(self.config_members.iter().copied()).filter(|&id| id != me).collect();
        for &id in wanted.difference(&self.peers.clone()) {
            match self.directory.get(id) {
                Some(addresses) => match self.transport.add_peer(id, addresses.peer) {
                    Ok(()) => {
                        self.peers.insert(id);
                        tracing::info!(peer = id, address = %addresses.peer, "peer added");
                    }
                    Err(error) => tracing::warn!(peer = id, "cannot add peer: {error}"),
                },
                None => {
                    if self.missing_address_logged.insert(id) {
                        tracing::warn!(
                            peer = id,
                            "member has no known address yet; it is connected once one is applied"
                        );
                    }
                }
            }
        }
        for &id in self.peers.clone().difference(&wanted) {
            self.transport.remove_peer(id);
            self.peers.remove(&id);
            tracing::info!(peer = id, "peer removed");
        }
    }

    fn on_snapshot_taken(&mut self, taken: SnapshotTaken) {
        // The apply stage does not wake the core for every apply; the snapshot's index is
        // applied, and the core must know it before it takes the snapshot.
        self.check_applied();
        match self.replica.on_snapshot(taken.index, taken.bytes) {
            Ok(()) => {
                self.hub.counters().snapshots_taken.bump();
                let compact = taken.index.saturating_sub(self.snapshot_keep_entries);
                // The in-memory log now; the durable log once the log writer gets there (the
                // snapshot file is already durable, so a crash in between loses nothing).
                let _ = self.replica.compact(compact.min(self.replica.persisted_index()));
                if compact > 0 {
                    self.shared.log_heavy.queued();
                    if self.to_log.send(LogWork::Compact { index: compact }).is_ok() {
                        self.log_work_queued(true);
                    }
                }
            }
            Err(error) => tracing::debug!("snapshot at {} not used: {error}", taken.index),
        }
    }

    fn on_admin(&mut self, admin: AdminRequest, request: ClientRequest, now: Instant) {
        match admin {
            AdminRequest::Status => {
                let status = crate::status::status_json(
                    &self.replica,
                    self.cluster_id,
                    &self.directory,
                    self.started,
                    &self.mode,
                );
                self.send_apply(ApplyWork::Status { status, request });
            }
            AdminRequest::Stats => {
                let report = self.hub.report(Instant::now());
                request.respond(ResponseBody::Ok(Bytes::from(report.to_json())));
            }
            AdminRequest::AddNode { node_id, address, learner } => {
                let addresses = if address.is_empty() {
                    None
                } else {
                    match Addresses::parse(&address) {
                        Ok(a) => Some(a),
                        Err(e) => return request.respond(ResponseBody::InvalidRequest(e.to_string())),
                    }
                };
                if !self.replica.is_leader() {
                    return request.respond(self.leader_redirect());
                }
                if addresses.is_none() && self.directory.get(node_id).is_none() {
                    return request.respond(ResponseBody::InvalidRequest(format!(
                        "node {node_id} has no known address; give <peer address>,<client address>"
                    )));
                }
                if let Some(addresses) = addresses {
                    // Connect now, so the new member's catch-up starts as soon as it commits.
                    self.directory.insert(node_id, addresses);
                    if !self.peers.contains(&node_id) && self.transport.add_peer(node_id, addresses.peer).is_ok() {
                        self.peers.insert(node_id);
                    }
                }
                let op = if learner { ConfChangeOp::AddLearner(node_id) } else { ConfChangeOp::AddVoter(node_id) };
                let context = addresses.map(|a| a.to_text()).unwrap_or_default();
                self.propose_conf_change(ConfChange::Change { ops: vec![op] }, context.as_bytes(), request, now);
            }
            AdminRequest::RemoveNode { node_id } => {
                if !self.replica.is_leader() {
                    return request.respond(self.leader_redirect());
                }
                self.propose_conf_change(
                    ConfChange::Change { ops: vec![ConfChangeOp::Remove(node_id)] },
                    &[],
                    request,
                    now,
                );
            }
            AdminRequest::TransferLeader { node_id } => match self.replica.transfer_leadership(node_id) {
                Ok(()) => request.respond(ResponseBody::Ok(Bytes::from(format!("transfer to {node_id} started")))),
                Err(RaftError::NotLeader { .. }) => request.respond(self.leader_redirect()),
                Err(e) => request.respond(ResponseBody::InvalidRequest(e.to_string())),
            },
        }
    }

    fn propose_conf_change(&mut self, change: ConfChange, context: &[u8], request: ClientRequest, now: Instant) {
        match self.replica.propose_conf_change_with_context(change, context) {
            Ok(id) => self.send_apply(ApplyWork::Proposed {
                index: id.index,
                term: id.term,
                requests: vec![Waiting { request, enqueued: now }],
            }),
            Err(RaftError::NotLeader { .. }) => request.respond(self.leader_redirect()),
            Err(e @ (RaftError::ConfChangeInProgress { .. } | RaftError::TransferInProgress { .. })) => {
                request.respond(ResponseBody::InvalidRequest(format!("{e}; retry when it is done")))
            }
            Err(e) => request.respond(ResponseBody::InvalidRequest(e.to_string())),
        }
    }

    pub(crate) fn stop(mut self) {
        // Unanswered requests are answered `ShuttingDown` as they drop.
        self.batch_waiting.clear();
        self.proposals_unsent.clear();
        self.reads_batch.clear();
        self.reads.clear();
        self.metrics.publish_now();
        let CoreStage { transport, to_log, to_apply, log_bell, shared, .. } = self;
        // The log writer stops once its queue is empty and disconnected; wake it to notice.
        drop(to_log);
        drop(to_apply);
        log_bell.wake();
        shared.wake_apply();
        transport.shutdown();
    }
}

/// Bytes the log's record of an entry of `payload_bytes` takes (header and padding).
fn record_bytes(payload_bytes: usize) -> u64 {
    smr_log::stored_record_bytes(payload_bytes) as u64
}

/// Gives the entries of an append their own memory. Received entries are slices of the
/// connection's receive buffer, and the core keeps them in its in-memory log until the next
/// snapshot: kept as slices, each would pin a whole receive buffer (of which the page-rounded
/// touched part counts) for that long, and a follower's memory grew to several times its log.
/// One copy of each entry as it arrives costs far less than the memory it saves.
fn own_entry_data(message: &mut Message) {
    if let smr_raft::MessageBody::Append { entries, .. } = &mut message.body {
        for entry in entries {
            entry.data = Bytes::copy_from_slice(&entry.data);
        }
    }
}

/// The hard state a ready writes, given the one last written: a new term or vote always (before
/// anything that depends on it leaves); a new commit hint only when it lags by
/// `COMMIT_HINT_LAG_MAX`, and only with a ready that syncs anyway.
fn hard_state_to_write(written: &mut HardState, sync: bool, hard_state: Option<HardState>) -> Option<HardState> {
    let hs = hard_state.filter(|_| sync)?;
    let vote_changed = hs.term != written.term || hs.vote != written.vote;
    if !vote_changed && hs.commit < written.commit.saturating_add(COMMIT_HINT_LAG_MAX) {
        return None;
    }
    *written = hs;
    Some(hs)
}

#[cfg(test)]
mod tests {
    use smr_raft::HardState;

    use super::{COMMIT_HINT_LAG_MAX, hard_state_to_write, own_entry_data};

    #[test]
    fn term_and_vote_are_always_written_and_the_commit_hint_only_when_far_behind() {
        let mut written = HardState { term: 2, vote: Some(1), commit: 10 };
        let commit_only = |commit| Some(HardState { term: 2, vote: Some(1), commit });
        assert_eq!(hard_state_to_write(&mut written, true, commit_only(11)), None, "a commit hint alone waits");
        assert_eq!(hard_state_to_write(&mut written, true, None), None);
        let far = commit_only(10 + COMMIT_HINT_LAG_MAX);
        assert_eq!(hard_state_to_write(&mut written, false, far), None, "never without a sync of its own");
        assert_eq!(hard_state_to_write(&mut written, true, far), far);
        assert_eq!(written, far.unwrap());
        let new_term = Some(HardState { term: 3, vote: None, commit: 12 + COMMIT_HINT_LAG_MAX });
        assert_eq!(hard_state_to_write(&mut written, true, new_term), new_term);
        let vote = HardState { term: 3, vote: Some(2), commit: 12 + COMMIT_HINT_LAG_MAX };
        assert_eq!(hard_state_to_write(&mut written, true, Some(vote)), Some(vote));
        assert_eq!(written, vote);
    }

    #[test]
    fn received_entries_stop_sharing_the_receive_buffer() {
        use bytes::Bytes;
        use smr_raft::{Entry, EntryKind, Message, MessageBody};

        let buffer = Bytes::from(vec![7u8; 1 << 20]);
        let entries = vec![
            Entry { index: 5, term: 2, kind: EntryKind::Normal, data: buffer.slice(100..300) },
            Entry { index: 6, term: 2, kind: EntryKind::Normal, data: buffer.slice(300..310) },
        ];
        let body = MessageBody::Append { prev_log_index: 4, prev_log_term: 2, commit_index: 3, entries };
        let mut message = Message { group: 1, from: 1, to: 2, term: 2, body };
        own_entry_data(&mut message);
        let range = buffer.as_ptr_range();
        let MessageBody::Append { entries, .. } = &message.body else { unreachable!() };
        for entry in entries {
            assert!(!range.contains(&entry.data.as_ptr()), "entry {} still points into the buffer", entry.index);
            assert!(entry.data.iter().all(|&b| b == 7));
        }
        assert_eq!(entries[0].data.len(), 200);
        assert_eq!(entries[1].data.len(), 10);
    }
}
