//! The event loop: a whole cluster on one thread, in simulated time, driven by one seed.

use std::collections::BTreeMap;

use smr_raft::{ConfChange, ConfChangeOp, Config, Message, NodeId, Replica, Role};

use crate::checker::{Checker, Violation};
use crate::client::{ATTEMPT_TIMEOUT_US, ClientOp, HistoryOp, InFlight, Outcome, SimClient};
use crate::kv::{Command, Fnv, Op};
use crate::network::SimNetwork;
use crate::node::{Effects, Reply, Request, SimNode};
use crate::options::Options;
use crate::rng::SimRng;

/// How often the fault schedule acts during the fault phase.
const FAULT_STEP_US: u64 = 200_000;
/// How often convergence is checked during the liveness phase.
const CONVERGENCE_CHECK_US: u64 = 50_000;
/// Log matching is checked across all replicas every this many events (it is quadratic).
const LOG_MATCHING_EVERY_EVENTS: u64 = 500;
/// A run that processes more events than this is stuck in a loop: a bug in itself.
const EVENTS_MAX: u64 = 20_000_000;
/// At most this many nodes beyond the founders join through membership churn.
const JOINERS_MAX: u64 = 3;

#[derive(Clone, Debug)]
enum Event {
    Tick { node: NodeId, life: u64 },
    Deliver(Message),
    FsyncDone { node: NodeId, life: u64 },
    ClientStart { client: usize },
    ClientArrive { node: NodeId, request: Request },
    ClientReply { client: usize, reply: Reply },
    ClientTimeout { client: usize, seq: u64, attempt: u32 },
    Fault,
    CheckConvergence,
}

/// What a run did, and the first property it violated, if any.
#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub options: Options,
    /// Hash of every event in order: the same seed must give the same hash.
    pub trace_hash: u64,
    pub simulated_us: u64,
    pub events: u64,
    pub committed_entries: usize,
    pub leaders_elected: usize,
    pub ops_completed: usize,
    pub ops_unknown: usize,
    pub crashes: u64,
    pub partitions: u64,
    pub membership_changes: u64,
    /// Snapshots streamed to and installed on a lagging replica.
    pub snapshots_installed: u64,
    /// Linearizable reads served (ReadIndex or lease, on leaders and followers).
    pub reads_served: u64,
    /// TimeoutNow messages delivered (leadership transfers that got to the campaign step).
    pub transfers: u64,
    pub violation: Option<Violation>,
    pub history: Vec<HistoryOp>,
}

impl Report {
    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        crate::many::replay_command(self.seed)
    }
}

struct Sim {
    options: Options,
    rng: SimRng,
    now: u64,
    queue: BTreeMap<(u64, u64), Event>,
    next_event: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    /// Nodes shut down for good (removed from the cluster before the liveness phase).
    retired: Vec<NodeId>,
    network: SimNetwork,
    clients: Vec<SimClient>,
    history: Vec<HistoryOp>,
    checker: Checker,
    trace: Fnv,
    events: u64,
    next_node_id: NodeId,
    founders: u64,
    liveness_phase: bool,
    converged: bool,
    crashes: u64,
    partitions: u64,
    membership_changes: u64,
    reads_served: u64,
    transfers: u64,
}

/// Runs the simulation of `seed` to the end and reports.
pub fn run(seed: u64) -> Report {
    let mut rng = SimRng::new(seed);
    let options = Options::from_seed(&mut rng);
    run_with(seed, options, rng)
}

/// Runs with explicit options (scenario tests pin them).
pub fn run_with(seed: u64, options: Options, rng: SimRng) -> Report {
    let mut sim = Sim::new(options, rng);
    // A panic inside the core (an assertion such as "two leaders in one term") is a finding
    // like any other: report it with the seed instead of tearing down the whole run of seeds.
    let violation = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run())) {
        Ok(result) => result.err(),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "a panic without a message".to_string());
            Some(Violation { property: "no panic", detail: message })
        }
    };
    let ops_completed = sim.history.iter().filter(|o| o.complete.is_some()).count();
    Report {
        seed,
        trace_hash: sim.trace.finish(),
        simulated_us: sim.now,
        events: sim.events,
        committed_entries: sim.checker.committed_len(),
        leaders_elected: sim.checker.leaders_elected(),
        ops_completed,
        ops_unknown: sim.history.len() - ops_completed,
        crashes: sim.crashes,
        partitions: sim.partitions,
        membership_changes: sim.membership_changes,
        snapshots_installed: sim.nodes.values().map(|n| n.snapshots_installed).sum(),
        reads_served: sim.reads_served,
        transfers: sim.transfers,
        violation,
        history: sim.history,
        options: sim.options,
    }
}

impl Sim {
    fn new(options: Options, mut rng: SimRng) -> Sim {
        let founders: Vec<NodeId> = (1..=options.nodes as u64).collect();
        let mut nodes = BTreeMap::new();
        for &id in &founders {
            let config = node_config(&options, id, rng.next_u64());
            let replica = Replica::bootstrap(config.clone(), &founders).expect("valid founders");
            nodes.insert(id, SimNode::new(id, config, replica, options.batch_commands_max, options.snapshot_entries));
        }
        let clients = (0..options.clients).map(|i| SimClient::new(1000 + i as u64)).collect();
        Sim {
            network: SimNetwork::new(&options),
            rng,
            now: 0,
            queue: BTreeMap::new(),
            next_event: 0,
            nodes,
            retired: Vec::new(),
            clients,
            history: Vec::new(),
            checker: Checker::default(),
            trace: Fnv::new(),
            events: 0,
            next_node_id: options.nodes as u64 + 1,
            founders: options.nodes as u64,
            liveness_phase: false,
            converged: false,
            crashes: 0,
            partitions: 0,
            membership_changes: 0,
            reads_served: 0,
            transfers: 0,
            options,
        }
    }

    fn schedule(&mut self, delay_us: u64, event: Event) {
        self.queue.insert((self.now + delay_us, self.next_event), event);
        self.next_event += 1;
    }

    fn run(&mut self) -> Result<(), Violation> {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.start_node(id)?;
        }
        for client in 0..self.clients.len() {
            let delay = self.rng.range(0, 50_000);
            self.schedule(delay, Event::ClientStart { client });
        }
        self.schedule(FAULT_STEP_US, Event::Fault);

        while let Some(((time, _), event)) = self.queue.pop_first() {
            self.now = time;
            self.events += 1;
            if self.events > EVENTS_MAX {
                return Err(Violation { property: "bounded run", detail: format!("more than {EVENTS_MAX} events") });
            }
            self.trace_event(&event);
            self.handle(event)?;
            if self.converged {
                break;
            }
            if self.events.is_multiple_of(LOG_MATCHING_EVERY_EVENTS) {
                self.check_log_matching()?;
            }
        }
        if !self.converged {
            return Err(Violation { property: "liveness", detail: "the event queue ran dry".into() });
        }
        self.check_log_matching()?;
        crate::linearizability::check(&self.history)
    }

    fn trace_event(&mut self, event: &Event) {
        self.trace.u64(self.now);
        match event {
            Event::Tick { node, .. } => {
                self.trace.u64(1);
                self.trace.u64(*node);
            }
            Event::Deliver(m) => {
                self.trace.u64(2);
                self.trace.u64(m.from);
                self.trace.u64(m.to);
                self.trace.u64(m.term);
                self.trace.bytes(m.body.name().as_bytes());
            }
            Event::FsyncDone { node, .. } => {
                self.trace.u64(3);
                self.trace.u64(*node);
            }
            Event::ClientStart { client } => {
                self.trace.u64(4);
                self.trace.u64(*client as u64);
            }
            Event::ClientArrive { node, .. } => {
                self.trace.u64(5);
                self.trace.u64(*node);
            }
            Event::ClientReply { client, .. } => {
                self.trace.u64(6);
                self.trace.u64(*client as u64);
            }
            Event::ClientTimeout { client, .. } => {
                self.trace.u64(7);
                self.trace.u64(*client as u64);
            }
            Event::Fault => self.trace.u64(8),
            Event::CheckConvergence => self.trace.u64(9),
        }
    }

    fn handle(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Tick { node, life } => {
                let Some(n) = self.nodes.get_mut(&node) else { return Ok(()) };
                if n.life != life || !n.is_up() {
                    return Ok(());
                }
                n.replica.as_mut().expect("up").tick();
                let tick = n.tick_us;
                self.schedule(tick, Event::Tick { node, life });
                self.drive(node)
            }
            Event::Deliver(m) => {
                let to = m.to;
                if matches!(m.body, smr_raft::MessageBody::TimeoutNow) {
                    self.transfers += 1;
                }
                let Some(n) = self.nodes.get_mut(&to) else { return Ok(()) };
                let Some(replica) = n.replica.as_mut() else { return Ok(()) };
                replica.step(m).expect("the simulator addresses messages correctly");
                self.drive(to)
            }
            Event::FsyncDone { node, life } => {
                let Some(n) = self.nodes.get_mut(&node) else { return Ok(()) };
                if n.life != life || !n.is_up() {
                    return Ok(());
                }
                let mut effects = Effects::default();
                n.on_fsync_done(&mut effects);
                let term = n.disk.durable.hard_state.term;
                self.checker.check_durable_term(node, term)?;
                self.apply_effects(node, effects)?;
                self.drive(node)
            }
            Event::ClientStart { client } => {
                self.client_start(client);
                Ok(())
            }
            Event::ClientArrive { node, request } => {
                let Some(n) = self.nodes.get_mut(&node) else { return Ok(()) };
                if !n.is_up() {
                    return Ok(());
                }
                let mut effects = Effects::default();
                n.on_request(request, &mut effects);
                self.apply_effects(node, effects)?;
                self.drive(node)
            }
            Event::ClientReply { client, reply } => self.client_reply(client, reply),
            Event::ClientTimeout { client, seq, attempt } => {
                self.client_timeout(client, seq, attempt);
                Ok(())
            }
            Event::Fault => self.fault_step(),
            Event::CheckConvergence => self.check_convergence(),
        }
    }

    fn start_node(&mut self, id: NodeId) -> Result<(), Violation> {
        let life = self.nodes[&id].life;
        let skew = self.options.clock_skew_permille;
        let permille = 1000 + self.rng.range(0, 2 * skew + 1) - skew;
        let n = self.nodes.get_mut(&id).expect("known node");
        n.tick_us = self.options.tick_us * permille / 1000;
        let offset = self.rng.range(1, self.options.tick_us);
        self.schedule(offset, Event::Tick { node: id, life });
        self.drive(id)
    }

    /// Runs a node's ready loop and routes what comes out.
    fn drive(&mut self, id: NodeId) -> Result<(), Violation> {
        let n = self.nodes.get_mut(&id).expect("known node");
        let mut effects = Effects::default();
        n.drive(&mut effects);
        self.apply_effects(id, effects)?;
        let n = &self.nodes[&id];
        if let Some(replica) = n.replica.as_ref() {
            self.checker.check_replica(id, replica)?;
        }
        Ok(())
    }

    fn apply_effects(&mut self, id: NodeId, effects: Effects) -> Result<(), Violation> {
        for entry in &effects.committed {
            self.checker.check_committed_entry(id, entry)?;
        }
        for (index, hash) in effects.applied {
            self.checker.check_applied(id, index, hash)?;
        }
        for m in effects.messages {
            for delay in self.network.route(&mut self.rng, m.from, m.to) {
                self.schedule(delay, Event::Deliver(m.clone()));
            }
        }
        for reply in effects.replies {
            let client = match reply {
                Reply::Written { client, .. } | Reply::Read { client, .. } | Reply::NotLeader { client, .. } => client,
            };
            let index = (client - 1000) as usize;
            let delay = self.rng.range(self.options.delay_us_min, self.options.delay_us_max + 1);
            self.schedule(delay, Event::ClientReply { client: index, reply });
        }
        if effects.start_fsync {
            let n = self.nodes.get_mut(&id).expect("known node");
            if n.start_fsync() {
                let life = n.life;
                let delay = self.rng.range(self.options.fsync_us_min, self.options.fsync_us_max + 1);
                self.schedule(delay, Event::FsyncDone { node: id, life });
            }
        }
        Ok(())
    }

    fn check_log_matching(&self) -> Result<(), Violation> {
        let replicas: Vec<(NodeId, &Replica)> =
            self.nodes.iter().filter_map(|(&id, n)| n.replica.as_ref().map(|r| (id, r))).collect();
        self.checker.check_log_matching(&replicas)
    }

    // -----------------------------------------------------------------------------------------
    // Clients.

    fn client_start(&mut self, index: usize) {
        let client = &self.clients[index];
        if client.stopped || client.in_flight.is_some() {
            return;
        }
        let key = self.rng.range(0, self.options.keys);
        let op = match self.rng.range(0, 10) {
            0..=3 => ClientOp::Read(key),
            4..=6 => ClientOp::Write(Op::Put { key, value: self.rng.range(1, 1_000_000) }),
            7..=8 => {
                let expected = if self.rng.chance(0.2) { None } else { Some(self.rng.range(1, 1_000_000)) };
                // Mostly CAS against a recent value of the key, so that some succeed.
                let expected = self.recent_value(key).or(expected);
                ClientOp::Write(Op::Cas { key, expected, new: self.rng.range(1, 1_000_000) })
            }
            _ => ClientOp::Write(Op::Delete { key }),
        };
        let client = &mut self.clients[index];
        let seq = client.next_seq;
        client.next_seq += 1;
        self.history.push(HistoryOp { client: client.id, seq, op, invoke_us: self.now, complete: None });
        let history_index = self.history.len() - 1;
        let target = self.pick_target(index, matches!(op, ClientOp::Read(_)));
        self.clients[index].in_flight = Some(InFlight { seq, op, history_index, target, attempt: 0, deadline_us: 0 });
        self.client_send(index);
    }

    fn recent_value(&mut self, key: u64) -> Option<u64> {
        self.history.iter().rev().take(20).find_map(|h| match (h.op, h.complete) {
            (ClientOp::Read(k), Some((_, Outcome::Read(v)))) if k == key => v,
            (ClientOp::Write(Op::Put { key: k, value }), _) if k == key => Some(value),
            _ => None,
        })
    }

    fn pick_target(&mut self, index: usize, read: bool) -> NodeId {
        let ids: Vec<NodeId> = self.nodes.keys().copied().filter(|id| !self.retired.contains(id)).collect();
        match self.clients[index].leader_hint {
            // Reads sometimes go to any node, to exercise follower reads.
            Some(hint) if !(read && self.rng.chance(0.3)) => hint,
            _ => *self.rng.pick(&ids).expect("nodes exist"),
        }
    }

    fn client_send(&mut self, index: usize) {
        let client = &mut self.clients[index];
        let Some(f) = client.in_flight.as_mut() else { return };
        f.deadline_us = self.now + ATTEMPT_TIMEOUT_US;
        let request = match f.op {
            ClientOp::Write(op) => Request::Write(Command { client: client.id, seq: f.seq, op }),
            ClientOp::Read(key) => Request::Read { client: client.id, seq: f.seq, key },
        };
        let (target, seq, attempt) = (f.target, f.seq, f.attempt);
        let delay = self.rng.range(self.options.delay_us_min, self.options.delay_us_max + 1);
        self.schedule(delay, Event::ClientArrive { node: target, request });
        self.schedule(ATTEMPT_TIMEOUT_US, Event::ClientTimeout { client: index, seq, attempt });
    }

    fn client_reply(&mut self, index: usize, reply: Reply) -> Result<(), Violation> {
        let (seq, outcome, leader) = match reply {
            Reply::Written { seq, result, .. } => (seq, Some(Outcome::Written(result)), None),
            Reply::Read { seq, value, .. } => {
                self.reads_served += 1;
                (seq, Some(Outcome::Read(value)), None)
            }
            Reply::NotLeader { seq, leader, .. } => (seq, None, leader),
        };
        let client = &mut self.clients[index];
        let Some(f) = client.in_flight.clone() else { return Ok(()) };
        if f.seq != seq {
            return Ok(());
        }
        match outcome {
            Some(outcome) => {
                if let Outcome::Written(_) = outcome {
                    self.checker.check_acknowledged(client.id, seq)?;
                }
                self.history[f.history_index].complete = Some((self.now, outcome));
                client.in_flight = None;
                let think = self.rng.range(1, 20_000);
                self.schedule(think, Event::ClientStart { client: index });
            }
            None => {
                client.leader_hint = leader;
                self.client_retry(index);
            }
        }
        Ok(())
    }

    fn client_timeout(&mut self, index: usize, seq: u64, attempt: u32) {
        let Some(f) = self.clients[index].in_flight.as_ref() else { return };
        if f.seq != seq || f.attempt != attempt {
            return;
        }
        self.clients[index].leader_hint = None;
        self.client_retry(index);
    }

    fn client_retry(&mut self, index: usize) {
        // A client never gives up on an operation: it retries with the same sequence number
        // until it learns the outcome, which the session table makes safe (a write applied by
        // an earlier attempt answers with its first result). That keeps every outcome known, so
        // the history stays cheap to check for linearizability.
        let attempt = self.clients[index].in_flight.as_ref().map_or(0, |f| f.attempt) + 1;
        let read = matches!(self.clients[index].in_flight.as_ref().map(|f| f.op), Some(ClientOp::Read(_)));
        let target = self.pick_target(index, read);
        if let Some(f) = self.clients[index].in_flight.as_mut() {
            f.attempt = attempt;
            f.target = target;
        }
        self.client_send(index);
    }

    // -----------------------------------------------------------------------------------------
    // Faults.

    fn fault_step(&mut self) -> Result<(), Violation> {
        if self.now >= self.options.fault_phase_us {
            return self.start_liveness_phase();
        }
        self.schedule(FAULT_STEP_US, Event::Fault);
        let ids: Vec<NodeId> = self.nodes.keys().copied().filter(|id| !self.retired.contains(id)).collect();

        if self.rng.chance(self.options.crash_rate) {
            let up: Vec<NodeId> = ids.iter().copied().filter(|id| self.nodes[id].is_up()).collect();
            if let Some(&victim) = self.rng.pick(&up) {
                self.crash(victim);
            }
        }
        for &id in &ids {
            if !self.nodes[&id].is_up() && self.rng.chance(0.25) {
                self.restart(id)?;
            }
        }
        if self.rng.chance(self.options.partition_rate) {
            if self.network.is_partitioned() {
                self.network.heal();
            } else {
                self.partitions += 1;
                if self.options.one_way_partitions && self.rng.chance(0.5) {
                    for _ in 0..self.rng.range(1, ids.len() as u64 + 1) {
                        let from = *self.rng.pick(&ids).expect("nodes");
                        let to = *self.rng.pick(&ids).expect("nodes");
                        if from != to {
                            self.network.block(from, to);
                        }
                    }
                } else {
                    let mut side_a = Vec::new();
                    let mut side_b = Vec::new();
                    for &id in &ids {
                        if self.rng.chance(0.5) { side_a.push(id) } else { side_b.push(id) }
                    }
                    self.network.partition(&side_a, &side_b);
                }
            }
        } else if self.network.is_partitioned() && self.rng.chance(0.1) {
            self.network.heal();
        }
        if self.options.membership_churn && self.rng.chance(0.15) {
            self.membership_step()?;
        }
        if self.rng.chance(0.02) {
            self.transfer_step();
        }
        Ok(())
    }

    fn crash(&mut self, id: NodeId) {
        let n = self.nodes.get_mut(&id).expect("known");
        n.crash(&mut self.rng);
        self.checker.node_restarted(id);
        self.crashes += 1;
    }

    fn restart(&mut self, id: NodeId) -> Result<(), Violation> {
        let n = self.nodes.get_mut(&id).expect("known");
        n.restart();
        let term = n.disk.durable.hard_state.term;
        self.checker.check_durable_term(id, term)?;
        self.start_node(id)
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.replica.as_ref().is_some_and(|r| r.role() == Role::Leader))
            .max_by_key(|(_, n)| n.replica.as_ref().map(|r| r.term()))
            .map(|(&id, _)| id)
    }

    fn membership_step(&mut self) -> Result<(), Violation> {
        let Some(leader) = self.leader() else { return Ok(()) };
        let conf = self.nodes[&leader].replica.as_ref().expect("up").conf().clone();
        let choice = self.rng.range(0, 4);
        let change = match choice {
            0 if self.next_node_id <= self.founders + JOINERS_MAX => {
                let id = self.next_node_id;
                self.next_node_id += 1;
                let config = node_config(&self.options, id, self.rng.next_u64());
                let replica = Replica::join(config.clone()).expect("valid config");
                self.nodes.insert(
                    id,
                    SimNode::new(id, config, replica, self.options.batch_commands_max, self.options.snapshot_entries),
                );
                self.start_node(id)?;
                ConfChange::Change { ops: vec![ConfChangeOp::AddLearner(id)] }
            }
            1 if !conf.learners.is_empty() => {
                let learner = *self.rng.pick(&conf.learners).expect("non-empty");
                ConfChange::Change { ops: vec![ConfChangeOp::AddVoter(learner)] }
            }
            2 if conf.voters.len() > 3 => {
                let victim = *self.rng.pick(&conf.voters).expect("non-empty");
                ConfChange::Change { ops: vec![ConfChangeOp::Remove(victim)] }
            }
            // Replace: promote a learner and remove a voter in one change (leader included).
            3 if !conf.learners.is_empty() && conf.voters.len() >= 3 => {
                let learner = *self.rng.pick(&conf.learners).expect("non-empty");
                let victim = *self.rng.pick(&conf.voters).expect("non-empty");
                ConfChange::Change { ops: vec![ConfChangeOp::AddVoter(learner), ConfChangeOp::Remove(victim)] }
            }
            _ => return Ok(()),
        };
        let replica = self.nodes.get_mut(&leader).expect("leader").replica.as_mut().expect("up");
        if replica.propose_conf_change(change).is_ok() {
            self.membership_changes += 1;
        }
        self.drive(leader)
    }

    fn transfer_step(&mut self) {
        let Some(leader) = self.leader() else { return };
        let replica = self.nodes.get_mut(&leader).expect("leader").replica.as_mut().expect("up");
        let voters = replica.conf().voters.clone();
        if let Some(&target) = self.rng.pick(&voters) {
            let _ = replica.transfer_leadership(target);
        }
    }

    fn start_liveness_phase(&mut self) -> Result<(), Violation> {
        self.liveness_phase = true;
        self.network.heal();
        self.network.loss = 0.0;
        self.network.duplicate = 0.0;
        for client in &mut self.clients {
            client.stopped = true;
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if !self.nodes[&id].is_up() && !self.retired.contains(&id) {
                self.restart(id)?;
            }
        }
        self.schedule(CONVERGENCE_CHECK_US, Event::CheckConvergence);
        Ok(())
    }

    /// The cluster has converged when a leader that committed in its term exists, every member
    /// is up and has applied its commit index with the same state, and no client waits.
    fn check_convergence(&mut self) -> Result<(), Violation> {
        let deadline = self.options.fault_phase_us + self.options.liveness_budget_us;
        if self.now > deadline {
            let roles: Vec<String> = self
                .nodes
                .iter()
                .map(|(id, n)| match n.replica.as_ref() {
                    Some(r) => format!(
                        "{id}:{:?}/t{}/c{}/a{}/l{}/{:?}",
                        r.role(),
                        r.term(),
                        r.commit_index(),
                        n.kv.applied_index(),
                        r.last_index(),
                        r.conf().voters
                    ),
                    None => format!("{id}:down"),
                })
                .collect();
            if std::env::var("SMR_SIM_DEBUG").is_ok() {
                for n in self.nodes.values() {
                    eprintln!("{:#?}", n.replica.as_ref().map(Replica::status));
                }
            }
            return Err(Violation {
                property: "liveness",
                detail: format!(
                    "no convergence within {} s after healing: {}",
                    self.options.liveness_budget_us / 1_000_000,
                    roles.join(" ")
                ),
            });
        }
        self.schedule(CONVERGENCE_CHECK_US, Event::CheckConvergence);
        self.retire_removed_nodes();
        let Some(leader) = self.leader() else { return Ok(()) };
        let l = self.nodes[&leader].replica.as_ref().expect("up");
        let commit = l.commit_index();
        if l.entry(commit).is_some_and(|e| e.term != l.term()) || l.conf().is_joint() {
            return Ok(());
        }
        let hash = self.nodes[&leader].kv.state_hash();
        let members = l.conf().members();
        let all_applied = members.iter().all(|id| {
            self.nodes.get(id).is_some_and(|n| n.is_up() && n.kv.applied_index() == commit && n.kv.state_hash() == hash)
        });
        let clients_idle = self.clients.iter().all(|c| c.in_flight.is_none());
        if all_applied && clients_idle {
            self.converged = true;
        }
        Ok(())
    }

    /// Shuts down nodes the committed configuration no longer has (an operator would), so that a
    /// removed node that never learned of its removal cannot keep disrupting elections.
    fn retire_removed_nodes(&mut self) {
        let Some(best) = self
            .nodes
            .values()
            .filter_map(|n| n.replica.as_ref())
            .max_by_key(|r| r.commit_index())
            .map(|r| r.committed_conf().members())
        else {
            return;
        };
        if best.is_empty() {
            return;
        }
        // Only nodes that were members once and are no longer: a node that joined but whose
        // addition has not committed yet must be left alone.
        let ever_members: Vec<NodeId> =
            self.nodes.values().filter_map(|n| n.replica.as_ref()).flat_map(|r| r.committed_conf().members()).collect();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if !best.contains(&id) && ever_members.contains(&id) && !self.retired.contains(&id) {
                let n = self.nodes.get_mut(&id).expect("known");
                if n.is_up() {
                    n.crash(&mut self.rng);
                }
                self.retired.push(id);
            }
        }
    }
}

fn node_config(options: &Options, id: NodeId, seed: u64) -> Config {
    let mut config = Config::new(id, 1);
    config.election_ticks = options.election_ticks;
    config.heartbeat_ticks = options.heartbeat_ticks;
    config.pre_vote = options.pre_vote;
    config.check_quorum = options.check_quorum;
    config.lease_reads = options.lease_reads;
    config.inflight_appends_max = options.inflight_appends_max;
    config.snapshot_chunk_bytes_max = options.snapshot_chunk_bytes_max;
    config.append_bytes_max = 4096;
    config.seed = seed;
    config
}
