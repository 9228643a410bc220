//! One simulated replica: the real Raft core, driven the way the runtime drives it, over the
//! simulated disk, with the KV state machine and the server side of the client protocol.

use std::collections::{BTreeMap, VecDeque};

use smr_raft::{Config, Index, Message, NodeId, Ready, Replica, Restore, Role};

use crate::disk::{SimDisk, Write};
use smr_apply::{Applier, CommandOutcome, KvStore};

use crate::kv::{self, Command, Key, OpResult, Value};

/// A client's request as it reaches a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Write(Command),
    Read { client: u64, seq: u64, key: Key },
}

/// A node's answer to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    Written { client: u64, seq: u64, result: OpResult },
    Read { client: u64, seq: u64, value: Option<Value> },
    NotLeader { client: u64, seq: u64, leader: Option<NodeId> },
}

/// Things the simulator must act on after driving a node.
#[derive(Debug, Default)]
pub struct Effects {
    pub messages: Vec<Message>,
    pub replies: Vec<Reply>,
    /// Entries applied (all committed), in order.
    pub committed: Vec<smr_raft::Entry>,
    /// Entries applied, with the state hash right after each: `(index, hash)`.
    pub applied: Vec<(Index, u64)>,
    /// An fsync should be scheduled (none was in flight and writes are waiting).
    pub start_fsync: bool,
}

/// A ready waiting for its writes to become durable.
#[derive(Debug)]
struct Awaiting {
    number: u64,
    /// Volatile writes on the disk up to and including this ready's.
    writes_through: usize,
    messages: Vec<Message>,
}

#[derive(Debug)]
pub struct SimNode {
    pub id: NodeId,
    pub config: Config,
    /// `None` while crashed.
    pub replica: Option<Replica>,
    pub disk: SimDisk,
    pub kv: Applier<KvStore>,
    /// This node's tick period: clocks run at slightly different rates (see
    /// `Options::clock_skew_permille`).
    pub tick_us: u64,
    /// Snapshots received from a leader and installed (across lives), for coverage reports.
    pub snapshots_installed: u64,
    /// Increments on every crash, so events scheduled for an earlier life are ignored.
    pub life: u64,
    /// Writes accepted by the writes not yet proposed (the sequencer's queue).
    queued: Vec<Command>,
    /// Writes proposed here and waiting to be applied: `(client, seq)`.
    waiting_writes: BTreeMap<(u64, u64), ()>,
    /// Reads waiting for a read index: context -> (client, seq, key).
    waiting_reads: BTreeMap<u64, (u64, u64, Key)>,
    /// Reads whose index is known, waiting for apply: (index, client, seq, key).
    ready_reads: Vec<(Index, u64, u64, Key)>,
    next_read_context: u64,
    /// A snapshot being received from the leader, as assembled so far.
    incoming_snapshot: Vec<u8>,
    awaiting: VecDeque<Awaiting>,
    /// Volatile writes covered by the fsync in flight, if any.
    pub fsync_in_flight: Option<usize>,
    batch_commands_max: usize,
    snapshot_entries: u64,
}

impl SimNode {
    pub fn new(
        id: NodeId,
        config: Config,
        replica: Replica,
        batch_commands_max: usize,
        snapshot_entries: u64,
    ) -> SimNode {
        SimNode {
            id,
            config,
            replica: Some(replica),
            disk: SimDisk::default(),
            kv: kv::new_state(),
            tick_us: 10_000,
            snapshots_installed: 0,
            life: 0,
            queued: Vec::new(),
            waiting_writes: BTreeMap::new(),
            waiting_reads: BTreeMap::new(),
            ready_reads: Vec::new(),
            next_read_context: 1,
            incoming_snapshot: Vec::new(),
            awaiting: VecDeque::new(),
            fsync_in_flight: None,
            batch_commands_max,
            snapshot_entries,
        }
    }

    pub fn is_up(&self) -> bool {
        self.replica.is_some()
    }

    /// The process dies: volatile state is gone; the disk keeps what it keeps.
    pub fn crash(&mut self, rng: &mut crate::rng::SimRng) {
        self.replica = None;
        self.disk.crash(rng);
        self.life += 1;
        self.queued.clear();
        self.waiting_writes.clear();
        self.waiting_reads.clear();
        self.ready_reads.clear();
        self.awaiting.clear();
        self.fsync_in_flight = None;
        self.kv = kv::new_state();
        self.incoming_snapshot.clear();
    }

    /// The process starts again from its disk.
    pub fn restart(&mut self) {
        assert!(self.replica.is_none());
        let durable = self.disk.durable.clone();
        let (snapshot, kv) = match durable.snapshot {
            Some((meta, data)) => {
                let mut kv = kv::new_state();
                kv.restore(&mut data.as_ref()).expect("the simulated disk keeps snapshots intact");
                (Some((meta, Some(data))), kv)
            }
            None => (None, kv::new_state()),
        };
        let applied = kv.applied_index();
        self.kv = kv;
        let restore = Restore { hard_state: durable.hard_state, snapshot, entries: durable.entries, applied };
        let replica = Replica::restart(self.config.clone(), restore).expect("the simulated disk holds a valid state");
        self.replica = Some(replica);
    }

    /// A client request arrives.
    pub fn on_request(&mut self, request: Request, effects: &mut Effects) {
        let Some(replica) = self.replica.as_mut() else { return };
        match request {
            Request::Write(command) => {
                if replica.role() != Role::Leader {
                    effects.replies.push(Reply::NotLeader {
                        client: command.client,
                        seq: command.seq,
                        leader: replica.leader(),
                    });
                    return;
                }
                self.queued.push(command);
            }
            Request::Read { client, seq, key } => {
                let context = self.next_read_context;
                self.next_read_context += 1;
                match replica.read_index(context) {
                    Ok(()) => {
                        self.waiting_reads.insert(context, (client, seq, key));
                    }
                    Err(_) => effects.replies.push(Reply::NotLeader { client, seq, leader: replica.leader() }),
                }
            }
        }
    }

    /// The sequencer: packs queued writes into batches and proposes them.
    fn propose_queued(&mut self, effects: &mut Effects) {
        let Some(replica) = self.replica.as_mut() else { return };
        while !self.queued.is_empty() {
            let take = self.queued.len().min(self.batch_commands_max);
            let batch: Vec<Command> = self.queued.drain(..take).collect();
            match replica.propose(kv::encode_batch(&batch)) {
                Ok(_) => {
                    for c in &batch {
                        self.waiting_writes.insert((c.client, c.seq), ());
                    }
                }
                Err(_) => {
                    for c in batch {
                        effects.replies.push(Reply::NotLeader {
                            client: c.client,
                            seq: c.seq,
                            leader: replica.leader(),
                        });
                    }
                }
            }
        }
    }

    /// Runs the ready loop until the core has nothing more to hand out.
    pub fn drive(&mut self, effects: &mut Effects) {
        self.propose_queued(effects);
        loop {
            let Some(replica) = self.replica.as_mut() else { return };
            if !replica.has_ready() {
                break;
            }
            let rd = replica.ready();
            self.handle_ready(rd, effects);
        }
    }

    fn handle_ready(&mut self, rd: Ready, effects: &mut Effects) {
        effects.messages.extend(rd.messages);
        for chunk in rd.snapshot_chunks {
            if chunk.offset == 0 {
                self.incoming_snapshot.clear();
            }
            self.incoming_snapshot.extend_from_slice(&chunk.data);
            if chunk.last {
                // Install before reporting persisted: the state machine jumps to the snapshot.
                let data = std::mem::take(&mut self.incoming_snapshot);
                let mut kv = kv::new_state();
                kv.restore(&mut data.as_slice()).expect("the leader sent a whole snapshot");
                self.kv = kv;
                self.snapshots_installed += 1;
            }
            self.disk.write(Write::SnapshotChunk {
                meta: chunk.meta,
                offset: chunk.offset,
                data: chunk.data,
                last: chunk.last,
            });
        }
        if !rd.entries.is_empty() {
            self.disk.write(Write::Entries(rd.entries));
        }
        if let Some(hs) = rd.hard_state {
            self.disk.write(Write::HardState(hs));
        }
        self.awaiting.push_back(Awaiting {
            number: rd.number,
            writes_through: self.disk.volatile_len(),
            messages: rd.persisted_messages,
        });
        if self.fsync_in_flight.is_none() {
            if self.disk.volatile_len() == 0 {
                // Nothing to make durable: this ready (and all before it) is done.
                self.complete_awaiting(effects);
            } else {
                effects.start_fsync = true;
            }
        }
        let replica = self.replica.as_mut().expect("driven while up");
        for rs in rd.read_states {
            if let Some((client, seq, key)) = self.waiting_reads.remove(&rs.context) {
                self.ready_reads.push((rs.index, client, seq, key));
            }
        }
        for context in rd.failed_reads {
            if let Some((client, seq, _)) = self.waiting_reads.remove(&context) {
                effects.replies.push(Reply::NotLeader { client, seq, leader: replica.leader() });
            }
        }
        if rd.role.is_some_and(|r| r.role != Role::Leader) {
            // Writes queued for proposal can no longer be proposed here.
            for c in self.queued.drain(..) {
                effects.replies.push(Reply::NotLeader { client: c.client, seq: c.seq, leader: replica.leader() });
            }
        }
        self.apply_through(rd.commit_index, effects);
        if rd.need_snapshot {
            self.take_snapshot();
        }
    }

    /// An fsync covering the first `covered` volatile writes completed.
    pub fn on_fsync_done(&mut self, effects: &mut Effects) {
        let Some(covered) = self.fsync_in_flight.take() else { return };
        self.disk.sync(covered);
        for a in &mut self.awaiting {
            a.writes_through = a.writes_through.saturating_sub(covered);
        }
        self.complete_awaiting(effects);
        if self.disk.volatile_len() > 0 {
            effects.start_fsync = true;
        }
    }

    /// Reports durable every awaiting ready whose writes are all synced.
    fn complete_awaiting(&mut self, effects: &mut Effects) {
        let mut last = None;
        while let Some(front) = self.awaiting.front() {
            if front.writes_through > 0 {
                break;
            }
            let done = self.awaiting.pop_front().expect("front exists");
            effects.messages.extend(done.messages);
            last = Some(done.number);
        }
        if let (Some(number), Some(replica)) = (last, self.replica.as_mut()) {
            replica.on_persisted(number);
        }
    }

    /// Starts an fsync covering every volatile write so far.
    pub fn start_fsync(&mut self) -> bool {
        if self.fsync_in_flight.is_some() || self.disk.volatile_len() == 0 {
            return false;
        }
        self.fsync_in_flight = Some(self.disk.volatile_len());
        true
    }

    fn apply_through(&mut self, commit: Index, effects: &mut Effects) {
        let replica = self.replica.as_mut().expect("up");
        let applied = self.kv.applied_index();
        if commit > applied {
            let entries = replica.entries(applied + 1, commit);
            assert_eq!(
                entries.first().map(|e| e.index),
                Some(applied + 1),
                "node {}: entries to apply after {} are not in the core's view (first {})",
                self.id,
                applied,
                replica.first_index()
            );
            let mut outcomes = Vec::new();
            for entry in entries {
                outcomes.clear();
                self.kv
                    .apply(entry.index, entry.term, entry.kind, &entry.data, &mut outcomes)
                    .expect("committed entries apply");
                if !outcomes.is_empty() {
                    for ((client, seq), outcome) in kv::batch_commands(&entry.data).into_iter().zip(&outcomes) {
                        let result = match outcome {
                            CommandOutcome::Applied(r) | CommandOutcome::Duplicate(r) => kv::op_result(r),
                            CommandOutcome::Stale { .. } => {
                                panic!("client {client} seq {seq}: stale, but clients are sequential")
                            }
                        };
                        if self.waiting_writes.remove(&(client, seq)).is_some() {
                            effects.replies.push(Reply::Written { client, seq, result });
                        }
                    }
                }
                effects.applied.push((entry.index, self.kv.state_hash()));
                effects.committed.push(entry);
            }
            replica.on_applied(self.kv.applied_index());
        }
        let applied = self.kv.applied_index();
        let store = self.kv.state_machine();
        self.ready_reads.retain(|&(index, client, seq, key)| {
            if index <= applied {
                let value = store.get(&kv::key_bytes(key)).map(kv::decode_value);
                effects.replies.push(Reply::Read { client, seq, value });
                false
            } else {
                true
            }
        });
        if applied >= replica.snapshot_meta().index + self.snapshot_entries {
            self.take_snapshot();
        }
    }

    /// Snapshots the state machine at its applied index, saves it, and compacts the log.
    fn take_snapshot(&mut self) {
        let Some(replica) = self.replica.as_mut() else { return };
        let index = self.kv.applied_index();
        if index == 0
            || index < replica.snapshot_meta().index
            || replica.entry(index).is_none() && index != replica.snapshot_meta().index
        {
            return;
        }
        let mut data = Vec::new();
        self.kv.snapshot(&mut data).expect("writing to memory cannot fail");
        let data = bytes::Bytes::from(data);
        if replica.on_snapshot(index, data.clone()).is_err() {
            return;
        }
        let meta = replica.snapshot_meta().clone();
        // Keep a few entries behind the snapshot so a slightly lagging follower gets entries,
        // not the whole snapshot.
        let keep_behind = 4;
        let compact_to = index.saturating_sub(keep_behind).min(replica.persisted_index());
        let durable_last = self.disk.durable.entries.last().map_or(self.disk.durable.base_index(), |e| e.index);
        if index <= durable_last && self.disk.durable.base_index() <= index {
            self.disk.save_snapshot(meta, data);
        }
        let _ = replica.compact(compact_to);
    }
}
