//! Starting and stopping a node: the data directory, recovery from snapshot + log, the threads.
//!
//! Start-up order, each step refusing clearly what it cannot use:
//! 1. the config is validated and the placement checked against the machine;
//! 2. the data directory's identity decides between restart (identity present: it must match),
//!    founding a cluster and joining one (empty directory: only when the config says which);
//! 3. the newest snapshot and the log are recovered and reconciled (Raft §7: the log is kept
//!    after the snapshot only when it holds the snapshot's last entry with the same term);
//! 4. the state machine is restored from the snapshot, the Raft core from snapshot + log;
//! 5. the transport and client listener start, then the stage threads.

use std::collections::{BTreeSet, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use crossbeam_channel::bounded;
use smr_apply::{Applier, StateMachine};
use smr_log::{Log, LogError};
use smr_net::{ClientServer, PeerTransport};
use smr_raft::{ConfChange, ConfState, EntryKind, Replica, Restore};

use crate::apply_stage::{ApplyStage, announced_member};
use crate::config::{ConfigError, InitialState, NodeConfig};
use crate::core_runner::CoreRunner;
use crate::core_stage::{CoreParts, CoreStage};
use crate::directory::Directory;
use crate::events::NodeEvents;
use crate::handoff::{Fatal, LogBell, Shared};
use crate::identity::{Identity, IdentityError};
use crate::log_stage::{EXIT_CODE_BAD_SNAPSHOT, LogStage};
use crate::metrics::{Histo, MetricsConfig, MetricsHub};
use crate::placement::Stage;
use crate::snapshot::{Incoming, SnapshotError, SnapshotStore};
use crate::snapshot_saver::SnapshotSaver;
use crate::stage_runner::{StageThread, inline_stage};
use crate::status::PipelineMode;

/// Exit code for a config the node refuses (also used for an empty data directory without an
/// initial state, and a data directory of another node).
pub const EXIT_CODE_CONFIG: i32 = 64; // EX_USAGE
/// Exit code when a listener cannot be bound (address in use, say).
pub const EXIT_CODE_UNAVAILABLE: i32 = 69; // EX_UNAVAILABLE

/// Bytes of log entries read per call while recovering.
const RECOVERY_READ_BYTES_MAX: u64 = 64 << 20;

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(
        "data directory {0} is empty: set initial_state = \"new\" to found a cluster or \"join\" to join one \
         (never reuse the id of a node whose data was lost: add it under a new id)"
    )]
    EmptyDataDir(String),
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("recovery: {0}")]
    Recovery(String),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: SocketAddr, source: std::io::Error },
    #[error("transport: {0}")]
    Transport(#[from] smr_net::StartError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

impl StartError {
    /// The process exit code for this failure (documented in the `smr` README section).
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Config(_)
            | StartError::Identity(IdentityError::Mismatch { .. })
            | StartError::EmptyDataDir(_) => EXIT_CODE_CONFIG,
            StartError::Log(e) => e.exit_code().unwrap_or(smr_log::EXIT_CODE_IO),
            StartError::Snapshot(SnapshotError::Io { .. }) | StartError::Identity(_) | StartError::Thread(_) => {
                smr_log::EXIT_CODE_IO
            }
            StartError::Snapshot(_) => EXIT_CODE_BAD_SNAPSHOT,
            StartError::Recovery(_) => smr_log::EXIT_CODE_CORRUPTION,
            StartError::Listen { .. } | StartError::Transport(_) => EXIT_CODE_UNAVAILABLE,
        }
    }
}

/// How the node came up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// Founded a new cluster.
    Bootstrapped,
    /// Started empty, waiting to be added by the leader.
    Joined,
    /// Recovered its own data.
    Restarted,
}

/// A running node. Dropping it stops it (as [`Node::shutdown`] does).
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    clients: Option<ClientServer>,
    log_waker: LogBell,
    client_address: SocketAddr,
    peer_address: SocketAddr,
    mode: StartMode,
    hub: Arc<MetricsHub>,
    /// The clients' request channel, for requests made in this process.
    local: crossbeam_channel::Sender<smr_net::ClientRequest>,
    group_id: smr_raft::GroupId,
}

/// A handle that asks a node to stop, for signal handlers and other threads.
#[derive(Clone, Debug)]
pub struct StopHandle {
    shared: Arc<Shared>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.wake_core();
    }

    pub fn is_stopping(&self) -> bool {
        self.shared.stopping()
    }
}

struct Recovery {
    replica: Replica,
    applier_restored: Option<crate::snapshot::Snapshot>,
    mode: StartMode,
    directory: Directory,
    conf: ConfState,
}

impl Node {
    /// Starts a node with `state_machine` (empty; it is restored from the snapshot on restart).
    ///
    /// # Errors
    /// A [`StartError`] naming what is wrong; [`StartError::exit_code`] gives the process exit
    /// code. Nothing is written to a data directory that is refused.
    pub fn start<S: StateMachine + Send + 'static>(config: NodeConfig, state_machine: S) -> Result<Node, StartError> {
        Node::start_with_events(config, state_machine, None)
    }

    /// [`Node::start`], with notifications of role and membership changes and of a fatal stop
    /// delivered to `events` (see [`NodeEvents`] for the threads they run on).
    ///
    /// # Errors
    /// As [`Node::start`].
    pub fn start_with_events<S: StateMachine + Send + 'static>(
        config: NodeConfig,
        state_machine: S,
        events: Option<Box<dyn NodeEvents>>,
    ) -> Result<Node, StartError> {
        config.validate()?;
        config.placement.check_machine()?;
        let expected = Identity { cluster_id: config.cluster_id, node_id: config.node_id, group_id: config.group_id };
        let mode = match Identity::load(&config.data_dir)? {
            Some(found) => {
                found.check(&config.data_dir, &expected)?;
                StartMode::Restarted
            }
            None => match config.initial_state {
                InitialState::Refuse => return Err(StartError::EmptyDataDir(config.data_dir.display().to_string())),
                InitialState::New => StartMode::Bootstrapped,
                InitialState::Join => StartMode::Joined,
            },
        };
        // Bind before writing anything, so that a node that cannot listen leaves no trace.
        let peer_listener = TcpListener::bind(config.peer_listen)
            .map_err(|source| StartError::Listen { address: config.peer_listen, source })?;
        let client_listener = TcpListener::bind(config.client_listen)
            .map_err(|source| StartError::Listen { address: config.client_listen, source })?;
        if mode != StartMode::Restarted {
            expected.store(&config.data_dir)?;
        }

        let store =
            SnapshotStore::open(&config.data_snapshot_dir(), config.cluster_id, config.pipeline.snapshot_bytes_max)?;
        let (mut log, recovered) = Log::open(&config.data_log_dir(), config.log.clone())?;
        if let Some(torn) = &recovered.torn_tail {
            tracing::warn!("recovery cut a torn tail: {torn}");
        }
        let mut applier = Applier::new(state_machine, config.sessions, config.pipeline.batch_commands_max);
        let recovery = recover(&config, mode, &store, &mut log, &recovered, &mut applier)?;
        let Recovery { replica, applier_restored, mode, directory, conf } = recovery;
        let applied_term = applier_restored.as_ref().map_or(0, |s| s.meta.term);
        tracing::info!(
            node = config.node_id,
            ?mode,
            first_index = log.first_index(),
            last_index = log.last_index(),
            snapshot = applier_restored.as_ref().map_or(0, |s| s.meta.index),
            io = log.io_name(),
            "node starting"
        );

        let (shared, wakes) = Shared::new(directory.clone(), events);
        shared.applied_index.store(applier.applied_index(), Ordering::Release);
        let now = std::time::Instant::now();
        let hub = MetricsHub::new(config.group_id, &MetricsConfig::default(), now);
        let pipeline = config.pipeline.clone();
        let (to_log, log_work) = bounded(pipeline.log_queue_max);
        let (to_apply, apply_work) = bounded(pipeline.apply_queue_max);
        let (snapshots_out, snapshots_in) = bounded(1);
        // On the `pwrite` path the log's rounds run on the thread that queued the work (see
        // `stage_runner.rs`), and the log's thread sleeps on a doorbell, not in the log.
        let log_inline = pipeline.inline_core && !pipeline.busy_poll && log.io_is_synchronous();
        let (log_waker, log_doorbell) = if log_inline {
            let (doorbell, rings) = bounded(1);
            (LogBell::Doorbell(doorbell.clone()), Some((doorbell, rings)))
        } else {
            (LogBell::Waker(log.waker()?), None)
        };
        let log_stats = log.stats();
        let log_io = log.io_name();
        let reader = log.reader();
        let core_reader = log.reader();

        let settings = config.settings_fingerprint();
        tracing::info!(
            node = config.node_id,
            fingerprint = format_args!("{settings:#018x}"),
            settings = ?config.replicated_settings(),
            "replicated settings (every replica must have the same; a peer with others is refused)"
        );
        let net_identity = smr_net::Identity {
            cluster_id: config.cluster_id,
            node_id: config.node_id,
            secret: config.secret.clone(),
            settings,
        };
        // The transport's threads inherit the affinity of the thread that starts them.
        let placement = config.placement.clone();
        let net_config = config.net.clone();
        let client_requests_max = pipeline.client_requests_max;
        // Every member known now is a peer from the first moment, so that no member's first
        // connection is refused as unknown; the core adds and removes peers as membership changes.
        let initial_peers: Vec<_> = config
            .members
            .iter()
            .map(|m| m.id)
            .chain(replica.conf().members())
            .filter(|&id| id != config.node_id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|id| directory.get(id).map(|a| (id, a.peer)))
            .collect();
        let (transport, inbound, clients, requests) = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    placement.pin_current(Stage::Net);
                    let (transport, inbound) =
                        PeerTransport::start(net_config.clone(), net_identity, peer_listener, &initial_peers)?;
                    let (clients, requests) = ClientServer::start(net_config, client_listener, client_requests_max)?;
                    Ok::<_, smr_net::StartError>((transport, inbound, clients, requests))
                })
                .join()
                .expect("the net start-up thread does not panic")
        })?;
        hub.attach_net(vec![transport.stats_reader(), clients.stats_reader()]);
        let peer_address = transport.local_addr();
        let client_address = clients.local_addr();
        let local = clients.local_sender();

        let mut threads = Vec::new();
        let log_stage = LogStage {
            log,
            work: log_work,
            to_apply: to_apply.clone(),
            shared: Arc::clone(&shared),
            store: SnapshotStore::open(&config.data_snapshot_dir(), config.cluster_id, pipeline.snapshot_bytes_max)?,
            incoming: Incoming::default(),
            cluster_id: config.cluster_id,
            snapshot_bytes_max: pipeline.snapshot_bytes_max,
            busy_poll: pipeline.busy_poll,
            metrics: hub.recorder(Stage::Log, &[Histo::Fsync], now),
            peers: transport.sender(),
            unsent: VecDeque::new(),
            silent: VecDeque::new(),
            reported: 0,
            syncs_seen: log_stats.syncs_completed,
            entries_seen: log_stats.entries_submitted,
            segments_seen: (0, 0),
            stopped: false,
        };
        // So do the apply stage's, unless the state machine must stay on its thread.
        let apply_inline = pipeline.inline_core && !pipeline.busy_poll && applier.state_machine().any_thread();
        let apply_placement = config.placement.clone();
        let (saver, saver_thread) =
            SnapshotSaver::start(config.node_id, store, snapshots_out, Arc::clone(&shared), move || {
                apply_placement.pin_current(Stage::Apply)
            })
            .map_err(StartError::Thread)?;
        threads.push(saver_thread);
        let mut apply_stage = ApplyStage::new(
            applier,
            reader,
            apply_work,
            Arc::clone(&shared),
            saver,
            config.cluster_id,
            conf,
            directory,
            applied_term,
            &pipeline,
            hub.recorder(Stage::Apply, &[Histo::ApplyLatency], now),
        );
        let config_members: BTreeSet<_> = config.members.iter().map(|m| m.id).collect();
        let core_stage = CoreStage::new(CoreParts {
            replica,
            transport,
            inbound,
            clients: requests,
            snapshots: snapshots_in,
            to_log,
            log_bell: log_waker.clone(),
            mode: PipelineMode {
                log_io,
                inline_core: pipeline.inline_core,
                inline_log: log_inline,
                inline_apply: apply_inline,
            },
            to_apply,
            shared: Arc::clone(&shared),
            pipeline: pipeline.clone(),
            submit_bytes_max: config.log.submit_bytes_max,
            cluster_id: config.cluster_id,
            config_members,
            initial_peers: initial_peers.iter().map(|&(id, _)| id).collect(),
            metrics: hub.recorder(Stage::Core, &[Histo::CommitLatency], now),
            hub: Arc::clone(&hub),
            reader: core_reader,
        });
        let mut runner = CoreRunner::new(core_stage, wakes, pipeline.inline_core, pipeline.busy_poll);
        let (run_log, log_inline): StageThread = match log_doorbell {
            Some(doorbell) => {
                inline_stage("log", log_stage, doorbell, hub.publish_interval(), Arc::clone(&shared), |s| &s.log_heavy)
            }
            None => (Box::new(move || log_stage.run()), None),
        };
        let (run_apply, apply_inline): StageThread = if apply_inline {
            let (doorbell, rings) = bounded(1);
            shared.set_apply_doorbell(doorbell.clone());
            let sweep = apply_stage.sweep();
            apply_stage.inline = true;
            inline_stage("apply", apply_stage, (doorbell, rings), sweep, Arc::clone(&shared), |s| &s.apply_heavy)
        } else {
            (Box::new(move || apply_stage.run()), None)
        };
        runner.set_inline_stages(log_inline, apply_inline);
        runner.install_arrival_hooks(&clients);
        let node = config.node_id;
        for (stage, run) in
            [(Stage::Log, run_log), (Stage::Apply, run_apply), (Stage::Core, Box::new(move || runner.run()))]
        {
            let placement = config.placement.clone();
            let handle = std::thread::Builder::new()
                .name(format!("smr-{}-{node}", stage.name()))
                .spawn(move || {
                    placement.pin_current(stage);
                    run();
                })
                .map_err(StartError::Thread)?;
            threads.push(handle);
        }
        Ok(Node {
            shared,
            threads,
            clients: Some(clients),
            log_waker,
            client_address,
            peer_address,
            mode,
            hub,
            local,
            group_id: config.group_id,
        })
    }

    /// Submits a request from this process (a command, a read or an admin request), exactly as
    /// a client connection would, without a socket. `respond` is called exactly once with the
    /// answer, on a stage thread, so it must not block. Never blocks itself: when the node's
    /// request queue is full the answer is `Busy`, at once, on this thread.
    pub fn submit(&self, body: smr_net::RequestBody, respond: impl FnOnce(smr_net::ResponseBody) + Send + 'static) {
        let request = smr_net::Request { request_id: 0, group: self.group_id, body };
        let request = smr_net::ClientRequest::local(request, respond);
        if self.shared.stopping() {
            return request.respond(smr_net::ResponseBody::ShuttingDown);
        }
        match self.local.try_send(request) {
            // With `inline_core` the core's thread waits only for its doorbell.
            Ok(()) => self.shared.wake_core(),
            Err(crossbeam_channel::TrySendError::Full(request)) => {
                self.hub.counters().client_busy.bump();
                request.respond(smr_net::ResponseBody::Busy);
            }
            Err(crossbeam_channel::TrySendError::Disconnected(request)) => {
                request.respond(smr_net::ResponseBody::ShuttingDown);
            }
        }
    }

    /// [`Node::submit`] and wait for the answer, at most `timeout` (then `TimedOut`: the request
    /// may still take effect; retry a command with the same session and sequence).
    pub fn call(&self, body: smr_net::RequestBody, timeout: std::time::Duration) -> smr_net::ResponseBody {
        let (tx, rx) = bounded(1);
        self.submit(body, move |answer| {
            let _ = tx.try_send(answer);
        });
        rx.recv_timeout(timeout).unwrap_or(smr_net::ResponseBody::TimedOut)
    }

    pub fn client_address(&self) -> SocketAddr {
        self.client_address
    }

    pub fn peer_address(&self) -> SocketAddr {
        self.peer_address
    }

    pub fn mode(&self) -> StartMode {
        self.mode
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle { shared: Arc::clone(&self.shared) }
    }

    /// The first fatal failure, if the node stopped on its own.
    pub fn fatal(&self) -> Option<Fatal> {
        self.shared.fatal.lock().expect("no panics while holding the fatal slot").clone()
    }

    /// Whether the node is stopping (asked to, or after a fatal failure).
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping()
    }

    /// The metrics so far, as `smr ctl stats` shows them.
    pub fn metrics(&self) -> crate::metrics::MetricsReport {
        self.hub.report(std::time::Instant::now())
    }

    /// Stops the node: the core finishes proposals in flight (for a bounded time), the log
    /// writer makes everything handed to it durable, and every thread is joined.
    ///
    /// # Errors
    /// The fatal failure that stopped the node, if one did.
    pub fn shutdown(mut self) -> Result<(), Fatal> {
        self.stop();
        match self.fatal() {
            Some(fatal) => Err(fatal),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.wake_core();
        // The core goes first (it owns the senders); then the log and apply stages see their
        // queues disconnect.
        for handle in self.threads.drain(..).rev() {
            self.log_waker.wake();
            if handle.join().is_err() {
                self.shared.fail(70, "a stage thread panicked".into());
            }
        }
        if let Some(clients) = self.clients.take() {
            clients.shutdown();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Recovers the Raft core and the state machine from the snapshot store and the log.
fn recover<S: StateMachine>(
    config: &NodeConfig,
    mode: StartMode,
    store: &SnapshotStore,
    log: &mut Log,
    recovered: &smr_log::Recovered,
    applier: &mut Applier<S>,
) -> Result<Recovery, StartError> {
    let mut directory = Directory::from_members(&config.members);
    let snapshot = store.latest()?;
    if let Some(s) = &snapshot {
        if s.meta.index < recovered.snapshot_index {
            return Err(StartError::Recovery(format!(
                "the log is compacted through {} but the newest snapshot is at {}",
                recovered.snapshot_index, s.meta.index
            )));
        }
        // Raft §7: keep the entries after the snapshot only if the log holds its last entry
        // with the same term; otherwise the log is older or divergent and is discarded.
        if log.term(s.meta.index) != Some(s.meta.term) && recovered.snapshot_index != s.meta.index {
            tracing::info!(index = s.meta.index, "the log does not continue the snapshot; discarding it");
            log.install_snapshot(&s.meta)?;
        }
        let mut state: &[u8] = &s.state;
        applier.restore(&mut state).map_err(|e| StartError::Recovery(format!("restoring the snapshot: {e}")))?;
        if applier.applied_index() != s.meta.index {
            return Err(StartError::Recovery(format!(
                "snapshot at {} holds a state applied through {}",
                s.meta.index,
                applier.applied_index()
            )));
        }
        for (id, addresses) in s.directory.iter() {
            directory.insert(id, addresses);
        }
    } else if recovered.snapshot_index > 0 {
        return Err(StartError::Recovery(format!(
            "the log is compacted through {} but there is no snapshot",
            recovered.snapshot_index
        )));
    }
    let base = snapshot.as_ref().map_or(0, |s| s.meta.index);
    let mut entries = Vec::new();
    let mut next = (base + 1).max(log.first_index());
    while next <= log.last_index() {
        let batch = log.entries(next, log.last_index(), RECOVERY_READ_BYTES_MAX)?;
        let Some(last) = batch.last() else { break };
        next = last.index + 1;
        entries.extend(batch.iter().map(smr_log::EntryRef::to_entry));
    }
    // Members added in the log since the snapshot: their addresses, so the core can reach them
    // before the apply stage gets there again.
    for entry in entries.iter().filter(|e| e.kind == EntryKind::ConfChange) {
        if let Ok((change, context)) = ConfChange::decode_with_context(&entry.data)
            && let Some((id, addresses)) = announced_member(&change, context)
        {
            directory.insert(id, addresses);
        }
    }
    let hard_state = log.hard_state();
    let has_data = snapshot.is_some() || !entries.is_empty() || hard_state.term > 0;
    let mut raft = config.raft.clone();
    raft.seed ^= rand_seed();
    let (replica, mode) = if has_data {
        let restore = Restore {
            hard_state,
            snapshot: snapshot.as_ref().map(|s| (s.meta.clone(), Some(s.bytes.clone()))),
            entries,
            applied: base,
        };
        let replica = Replica::restart(raft, restore).map_err(|e| StartError::Recovery(e.to_string()))?;
        (replica, StartMode::Restarted)
    } else if mode == StartMode::Bootstrapped || config.initial_state == InitialState::New {
        // A founder that crashed before its founding entry was durable founds again: it sent
        // nothing before that, and every founder writes the same first entry.
        let voters: Vec<_> = config.members.iter().map(|m| m.id).collect();
        let replica = Replica::bootstrap(raft, &voters).map_err(|e| StartError::Recovery(e.to_string()))?;
        (replica, StartMode::Bootstrapped)
    } else {
        let replica = Replica::join(raft).map_err(|e| StartError::Recovery(e.to_string()))?;
        (replica, StartMode::Joined)
    };
    let conf = snapshot.as_ref().map(|s| s.meta.conf.clone()).unwrap_or_default();
    Ok(Recovery { replica, applier_restored: snapshot, mode, directory, conf })
}

/// Election jitter must differ between restarts of one node, or two nodes restarted together
/// could time out in lockstep forever. The core takes its seed from here; it is logged so that
/// a run can be related to it, and the core itself stays deterministic given the seed.
fn rand_seed() -> u64 {
    let mut seed = 0u64;
    // SAFETY: getrandom writes at most `size_of::<u64>()` bytes into `seed`, which it owns.
    let n = unsafe { libc::getrandom((&raw mut seed).cast(), std::mem::size_of::<u64>(), 0) };
    if n != std::mem::size_of::<u64>() as isize {
        seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    }
    tracing::debug!(seed, "election jitter seed");
    seed
}
