//! The replica: its state, construction, the tick and step entry points, and the ready cycle.
//!
//! Protocol behaviour lives in the sibling modules (`election`, `replication`, `read_index`,
//! `membership`, `snapshot`, `transfer`), each an `impl Replica` block for one concept.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::conf_change::ConfChange;
use crate::config::Config;
use crate::error::Error;
use crate::log::RaftLog;
use crate::message::{Message, MessageBody};
use crate::progress::Progress;
use crate::read_index::ReadQueue;
use crate::ready::{ReadState, Ready, Role, RoleState, SnapshotChunk};
use crate::rng::SplitMix64;
use crate::types::{ConfState, Entry, EntryKind, HardState, Index, NodeId, SnapshotMeta, Term};

/// Where a replica starts from: what its caller recovered from durable storage.
#[derive(Clone, Debug, Default)]
pub struct Restore {
    /// The last durable term, vote and commit hint.
    pub hard_state: HardState,
    /// The durable snapshot the log continues from, with its data when the caller has it
    /// at hand (the leader streams it to followers that are too far behind).
    pub snapshot: Option<(SnapshotMeta, Option<Bytes>)>,
    /// Every durable entry after the snapshot (or from index 1), in order.
    pub entries: Vec<Entry>,
    /// The index the state machine has applied through (at least the snapshot's).
    pub applied: Index,
}

/// The identity of a proposed entry. The proposal took effect if and only if the entry applied
/// at `index` has this `term`; any other term there means it was lost to a leader change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryId {
    pub index: Index,
    pub term: Term,
}

/// A snapshot this replica can send to followers.
#[derive(Clone, Debug)]
pub(crate) struct LocalSnapshot {
    pub(crate) meta: SnapshotMeta,
    pub(crate) data: Bytes,
}

/// A ready handed out and not yet reported durable.
#[derive(Clone, Copy, Debug)]
struct Unpersisted {
    number: u64,
    /// The last log position this ready made durable, if it wrote entries or a snapshot.
    last: Option<(Index, Term)>,
}

/// Work produced by steps and ticks, collected until the next `ready()`.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) messages: Vec<Message>,
    pub(crate) persisted_messages: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    pub(crate) failed_reads: Vec<u64>,
    pub(crate) snapshot_chunks: Vec<SnapshotChunk>,
    pub(crate) role_changed: bool,
    pub(crate) conf_changed: bool,
    pub(crate) need_snapshot: bool,
}

/// One replica of one Raft group. See the crate documentation for the contract.
#[derive(Debug)]
pub struct Replica {
    pub(crate) config: Config,
    pub(crate) rng: SplitMix64,

    // Persistent state (mirrored to disk through `Ready::hard_state`).
    pub(crate) term: Term,
    pub(crate) vote: Option<NodeId>,
    pub(crate) log: RaftLog,

    // Volatile state.
    pub(crate) role: Role,
    pub(crate) leader: Option<NodeId>,
    /// Membership in force: the one of the latest membership change in the log, committed or
    /// not (Raft §6: "a server always uses the latest configuration in its log"). It changes
    /// when a change entry is appended, and goes back when a conflicting suffix holding one is
    /// truncated. Taking effect at append rather than at commit is what keeps a replica that
    /// restarts with a lagging commit hint from running an outdated membership.
    pub(crate) conf: ConfState,
    /// `(index, conf)` of every configuration since the log base, oldest first; the first is the
    /// base's. Answers "which membership did the log at index i have" (snapshots, truncation).
    /// Invariant: `conf == conf_history.last().1`.
    pub(crate) conf_history: Vec<(Index, ConfState)>,
    pub(crate) applied: Index,

    /// The leader's view of every member, itself included. Empty unless leader.
    pub(crate) progress: Vec<Progress>,
    /// Votes received in the current (pre-)campaign.
    pub(crate) votes: Vec<(NodeId, bool)>,

    /// Ticks since this replica started: the core's only notion of time.
    pub(crate) now: u64,
    pub(crate) election_elapsed: u32,
    pub(crate) heartbeat_elapsed: u32,
    pub(crate) randomized_election_ticks: u32,

    /// The last membership change entry the leader appended; no other may be proposed until
    /// the commit index reaches it.
    pub(crate) pending_conf_index: Index,
    pub(crate) uncommitted_bytes: u64,
    /// Leadership transfer in progress: target and ticks since it started.
    pub(crate) transfer: Option<(NodeId, u32)>,
    pub(crate) reads: ReadQueue,
    /// The leader may serve lease reads while `now < lease_until` (see `Config::lease_reads`).
    pub(crate) lease_until: u64,
    /// Set once the leader sent TimeoutNow in its term: the target may become leader at once,
    /// so no lease may be trusted for the rest of the term.
    pub(crate) lease_revoked: bool,
    /// After a restart, votes are refused until `now` reaches this (see `in_leader_lease`).
    pub(crate) restart_lease_guard_ticks: u64,

    pub(crate) snapshot: Option<LocalSnapshot>,
    /// `need_snapshot` was raised and `on_snapshot` has not answered it yet.
    pub(crate) snapshot_requested: bool,
    /// The latest snapshot's metadata, even when its data is not held here.
    pub(crate) snapshot_meta: SnapshotMeta,
    /// A snapshot being received: its metadata and the next offset expected.
    pub(crate) incoming_snapshot: Option<(SnapshotMeta, u64)>,

    pub(crate) out: Outbox,
    next_ready: u64,
    unpersisted: VecDeque<Unpersisted>,
    /// Term and vote as last handed out for persistence, and the commit hint with them.
    emitted_hard_state: HardState,
    emitted_commit: Index,
    emitted_conf: ConfState,
}

impl Replica {
    /// A founding member of a new cluster whose voters are `voters`. Every founder must be
    /// created with the same `voters`: they all start from the same first entry.
    ///
    /// The first ready carries that entry and term 1 to persist.
    ///
    /// # Errors
    /// A bad config, or a bad founder set (empty, id 0, duplicates, not containing this node).
    pub fn bootstrap(config: Config, voters: &[NodeId]) -> Result<Replica, Error> {
        validate(&config)?;
        let change = ConfChange::Bootstrap { voters: voters.to_vec() };
        change.apply(&ConfState::default())?;
        if !voters.contains(&config.id) {
            return Err(Error::NotVoter(config.id));
        }
        let mut replica = Replica::empty(config, RaftLog::restore(0, 0, Vec::new(), 0), ConfState::default(), 0);
        replica.term = 1;
        replica.log.push(Entry { index: 1, term: 1, kind: EntryKind::ConfChange, data: change.encode() });
        replica.apply_conf_entries_from(1);
        // The founding entry is identical on every founder, so it is committed by fiat.
        replica.advance_commit(1);
        replica.become_follower(1, None);
        Ok(replica)
    }

    /// A new node that will be added to an existing cluster. It knows no members and never
    /// campaigns until the leader has replicated a configuration that makes it a voter.
    ///
    /// # Errors
    /// A bad config.
    pub fn join(config: Config) -> Result<Replica, Error> {
        validate(&config)?;
        let mut replica = Replica::empty(config, RaftLog::restore(0, 0, Vec::new(), 0), ConfState::default(), 0);
        replica.become_follower(0, None);
        Ok(replica)
    }

    /// A replica restarting from what its caller recovered.
    ///
    /// # Errors
    /// A bad config, or recovered state that cannot be right (entries that do not follow the
    /// snapshot, a vote without a term, ...).
    pub fn restart(config: Config, restore: Restore) -> Result<Replica, Error> {
        validate(&config)?;
        let Restore { hard_state, snapshot, entries, applied } = restore;
        let (meta, data) = match snapshot {
            Some((meta, data)) => (meta, data),
            None => (SnapshotMeta::default(), None),
        };
        if let Some(first) = entries.first()
            && first.index != meta.index + 1
        {
            return Err(Error::BadRestore("entries do not start right after the snapshot"));
        }
        if entries.windows(2).any(|w| w[1].index != w[0].index + 1 || w[1].term < w[0].term) {
            return Err(Error::BadRestore("entries are not consecutive with non-decreasing terms"));
        }
        if entries.first().is_some_and(|e| e.term < meta.term) {
            return Err(Error::BadRestore("an entry's term is below the snapshot's"));
        }
        if hard_state.vote.is_some() && hard_state.term == 0 {
            return Err(Error::BadRestore("a vote without a term"));
        }
        // The founding entry is committed by fiat on every founder (see `bootstrap`).
        let founded = entries.first().is_some_and(|e| {
            e.index == 1
                && e.kind == EntryKind::ConfChange
                && matches!(ConfChange::decode(&e.data), Ok(ConfChange::Bootstrap { .. }))
        });
        let mut commit = hard_state.commit.max(meta.index).max(applied.min(entries.last().map_or(0, |e| e.index)));
        if founded {
            commit = commit.max(1);
        }
        let log = RaftLog::restore(meta.index, meta.term, entries, meta.index);
        let commit = commit.min(log.last_index());
        let mut replica = Replica::empty(config, log, meta.conf.clone(), meta.index);
        // The log and the hard state are written side by side and synced together, so a crash
        // between two syncs may leave entries of a term whose hard state never landed. Such
        // entries came from a leader of that term, so this node had seen the term: resume in it.
        // Its vote in that term was not durable, hence never sent, so none is kept.
        let log_term = replica.log.last_term();
        if log_term > hard_state.term {
            replica.term = log_term;
            replica.vote = None;
        } else {
            replica.term = hard_state.term;
            replica.vote = hard_state.vote;
        }
        replica.applied = applied.max(meta.index);
        replica.snapshot_meta = meta.clone();
        replica.snapshot = data.map(|data| LocalSnapshot { meta, data });
        replica.apply_conf_entries_from(replica.log.first_index());
        replica.advance_commit(commit);
        replica.emitted_hard_state = hard_state;
        replica.emitted_commit = replica.applied.min(replica.log.commit_index());
        replica.become_follower(replica.term, None);
        replica.restart_lease_guard_ticks = u64::from(replica.config.election_ticks);
        replica.out.role_changed = true;
        Ok(replica)
    }

    fn empty(config: Config, log: RaftLog, conf: ConfState, conf_index: Index) -> Replica {
        // `conf_index` is where `conf` comes from: the log base.
        let rng = SplitMix64::new(config.seed);
        let election_ticks = config.election_ticks;
        let base = log.base_index();
        Replica {
            rng,
            term: 0,
            vote: None,
            role: Role::Follower,
            leader: None,
            conf_history: vec![(conf_index, conf.clone())],
            conf,
            applied: base,
            progress: Vec::new(),
            votes: Vec::new(),
            now: 0,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_ticks: election_ticks,
            pending_conf_index: 0,
            uncommitted_bytes: 0,
            transfer: None,
            reads: ReadQueue::default(),
            lease_until: 0,
            lease_revoked: false,
            restart_lease_guard_ticks: 0,
            snapshot: None,
            snapshot_requested: false,
            snapshot_meta: SnapshotMeta { index: base, term: log.base_term(), conf: ConfState::default() },
            incoming_snapshot: None,
            out: Outbox::default(),
            next_ready: 1,
            unpersisted: VecDeque::new(),
            emitted_hard_state: HardState::default(),
            emitted_commit: base,
            emitted_conf: ConfState::default(),
            log,
            config,
        }
    }

    // ---------------------------------------------------------------------------------------
    // Accessors.

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn term(&self) -> Term {
        self.term
    }

    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// The membership in force: the latest in the log, committed or not.
    pub fn conf(&self) -> &ConfState {
        &self.conf
    }

    /// The membership as of the commit index.
    pub fn committed_conf(&self) -> ConfState {
        self.conf_at(self.log.commit_index())
    }

    pub fn commit_index(&self) -> Index {
        self.log.commit_index()
    }

    pub fn persisted_index(&self) -> Index {
        self.log.persisted_index()
    }

    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }

    pub fn last_term(&self) -> Term {
        self.log.last_term()
    }

    /// The first index still held in memory (one past the compaction point).
    pub fn first_index(&self) -> Index {
        self.log.first_index()
    }

    pub fn applied_index(&self) -> Index {
        self.applied
    }

    /// Bytes of entries held in memory since the last compaction.
    pub fn log_bytes(&self) -> u64 {
        self.log.bytes()
    }

    /// The entry at `index`, if still held in memory.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        self.log.entry(index)
    }

    /// Entries in `[low, high]` still held in memory (for the caller that applies from the
    /// core's view rather than from its own log, such as the simulator).
    pub fn entries(&self, low: Index, high: Index) -> Vec<Entry> {
        if low > high || low < self.log.first_index() {
            return Vec::new();
        }
        self.log.slice(low, high, u64::MAX)
    }

    /// The latest snapshot's metadata (index 0 when there is none).
    pub fn snapshot_meta(&self) -> &SnapshotMeta {
        &self.snapshot_meta
    }

    /// The state to persist, as of now.
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.commit_index().min(self.log.persisted_index()) }
    }

    pub fn role_state(&self) -> RoleState {
        RoleState { role: self.role, term: self.term, leader: self.leader }
    }

    // ---------------------------------------------------------------------------------------
    // Inputs.

    /// Advances the replica's clock by one tick: elections, heartbeats, CheckQuorum, timeouts.
    pub fn tick(&mut self) {
        self.now += 1;
        match self.role {
            Role::Leader => self.tick_leader(),
            Role::Follower | Role::PreCandidate | Role::Candidate => self.tick_election(),
        }
    }

    /// Feeds one message received from a peer.
    ///
    /// # Errors
    /// [`Error::Misaddressed`] when the message is for another group or node; it is dropped.
    pub fn step(&mut self, m: Message) -> Result<(), Error> {
        if m.group != self.config.group || m.to != self.config.id {
            return Err(Error::Misaddressed {
                group: m.group,
                to: m.to,
                expected_group: self.config.group,
                expected_node: self.config.id,
            });
        }
        if m.term > self.term {
            match &m.body {
                MessageBody::PreVote { .. } => {
                    // A pre-vote asks about a term it does not start; answering changes nothing.
                    if self.in_leader_lease() {
                        return Ok(());
                    }
                }
                MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::Vote { leadership_transfer, .. } => {
                    if !leadership_transfer && self.in_leader_lease() {
                        // CheckQuorum's other half: a follower that heard from a live leader within
                        // the minimum election timeout ignores a disruptive candidate.
                        return Ok(());
                    }
                    self.become_follower(m.term, None);
                }
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::Snapshot { .. } => {
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            self.step_stale(m);
            return Ok(());
        }

        match m.body {
            MessageBody::PreVote { .. } | MessageBody::Vote { .. } => self.handle_vote_request(m),
            MessageBody::PreVoteResponse { granted } => {
                if self.role == Role::PreCandidate {
                    self.record_vote(m.from, granted);
                }
            }
            MessageBody::VoteResponse { granted } => {
                if self.role == Role::Candidate {
                    self.record_vote(m.from, granted);
                }
            }
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::Snapshot { .. } => {
                assert!(
                    self.role != Role::Leader,
                    "two leaders in term {}: {} and {}",
                    self.term,
                    self.config.id,
                    m.from
                );
                if self.role != Role::Follower || self.leader != Some(m.from) {
                    self.become_follower(m.term, Some(m.from));
                }
                self.election_elapsed = 0;
                match m.body {
                    MessageBody::Append { prev_log_index, prev_log_term, commit_index, entries } => {
                        self.handle_append(m.from, prev_log_index, prev_log_term, commit_index, entries)
                    }
                    MessageBody::Heartbeat { commit_index, read_round } => {
                        self.handle_heartbeat(m.from, commit_index, read_round)
                    }
                    MessageBody::Snapshot { meta, offset, data, last } => {
                        self.handle_snapshot_chunk(m.from, *meta, offset, data, last)
                    }
                    _ => unreachable!(),
                }
            }
            MessageBody::AppendResponse { success, index, hint_index, hint_term } => {
                if self.role == Role::Leader {
                    self.handle_append_response(m.from, success, index, hint_index, hint_term);
                }
            }
            MessageBody::HeartbeatResponse { read_round } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(m.from, read_round);
                }
            }
            MessageBody::SnapshotResponse { snapshot_index, next_offset, reject } => {
                if self.role == Role::Leader {
                    self.handle_snapshot_response(m.from, snapshot_index, next_offset, reject);
                }
            }
            MessageBody::TimeoutNow => self.handle_timeout_now(m.from),
            MessageBody::ReadIndex { context } => self.handle_read_index_request(m.from, context),
            MessageBody::ReadIndexResponse { context, index } => self.handle_read_index_response(context, index),
        }
        Ok(())
    }

    /// A message from an older term: tell a stale leader or pre-candidate about the newer term
    /// (so it steps down), otherwise ignore it.
    fn step_stale(&mut self, m: Message) {
        match m.body {
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::Snapshot { .. }
                if self.config.check_quorum || self.config.pre_vote =>
            {
                // Without this, a leader cut off by a partition that heals would never learn of
                // the newer term: with PreVote and CheckQuorum nobody else would bump its term.
                self.send(m.from, MessageBody::HeartbeatResponse { read_round: 0 });
            }
            MessageBody::PreVote { .. } => {
                self.send(m.from, MessageBody::PreVoteResponse { granted: false });
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------------------------------
    // The ready cycle.

    /// Whether `ready()` has anything to hand out.
    pub fn has_ready(&self) -> bool {
        self.log.has_unstable()
            || !self.out.messages.is_empty()
            || !self.out.persisted_messages.is_empty()
            || !self.out.read_states.is_empty()
            || !self.out.failed_reads.is_empty()
            || !self.out.snapshot_chunks.is_empty()
            || self.out.role_changed
            || self.out.conf_changed
            || self.out.need_snapshot
            || self.hard_state_changed()
            || self.applicable_commit() > self.emitted_commit
            || (self.role == Role::Leader && self.leader_has_work())
    }

    fn hard_state_changed(&self) -> bool {
        let hs = self.hard_state();
        hs.term != self.emitted_hard_state.term
            || hs.vote != self.emitted_hard_state.vote
            || hs.commit > self.emitted_hard_state.commit
    }

    fn applicable_commit(&self) -> Index {
        self.log.commit_index().min(self.log.persisted_index())
    }

    /// Hands out everything to do now, numbered. See [`Ready`] for what the caller must do with
    /// it and in which order.
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            self.flush_leader();
        }
        let number = self.next_ready;
        self.next_ready += 1;

        let hs = self.hard_state();
        let vote_changed = hs.term != self.emitted_hard_state.term || hs.vote != self.emitted_hard_state.vote;
        let hard_state = if vote_changed || hs.commit > self.emitted_hard_state.commit {
            self.emitted_hard_state = hs;
            Some(hs)
        } else {
            None
        };
        let entries = self.log.take_unstable();
        let snapshot_chunks = std::mem::take(&mut self.out.snapshot_chunks);
        let installs_snapshot = snapshot_chunks.iter().any(|c| c.last);
        let last = if let Some(entry) = entries.last() {
            Some((entry.index, entry.term))
        } else if installs_snapshot {
            Some((self.log.base_index(), self.log.base_term()))
        } else {
            None
        };
        self.unpersisted.push_back(Unpersisted { number, last });

        let commit = self.applicable_commit().max(self.emitted_commit);
        self.emitted_commit = commit;
        let role = std::mem::take(&mut self.out.role_changed).then(|| self.role_state());
        let conf = if std::mem::take(&mut self.out.conf_changed) && self.conf != self.emitted_conf {
            self.emitted_conf = self.conf.clone();
            Some(self.conf.clone())
        } else {
            None
        };
        let sync = vote_changed || !entries.is_empty() || !snapshot_chunks.is_empty();
        Ready {
            number,
            hard_state,
            sync,
            snapshot_chunks,
            entries,
            messages: std::mem::take(&mut self.out.messages),
            persisted_messages: std::mem::take(&mut self.out.persisted_messages),
            commit_index: commit,
            read_states: std::mem::take(&mut self.out.read_states),
            failed_reads: std::mem::take(&mut self.out.failed_reads),
            role,
            conf,
            need_snapshot: std::mem::take(&mut self.out.need_snapshot),
        }
    }

    /// Reports that every ready up to and including `number` is durable.
    ///
    /// # Panics
    /// If `number` was never handed out: that is a bug in the caller.
    pub fn on_persisted(&mut self, number: u64) {
        assert!(number < self.next_ready, "ready {number} was never handed out");
        let mut advanced = false;
        while let Some(front) = self.unpersisted.front() {
            if front.number > number {
                break;
            }
            let done = self.unpersisted.pop_front().expect("front exists");
            if let Some((index, term)) = done.last {
                advanced |= self.log.persisted_to(index, term);
            }
        }
        if advanced && self.role == Role::Leader {
            let persisted = self.log.persisted_index();
            let id = self.config.id;
            if let Some(pr) = self.progress_mut(id) {
                pr.on_ack(persisted);
            }
            self.maybe_commit();
        }
    }

    /// Lets the in-memory copy of a durable entry give way to `entry`: the same bytes as the
    /// caller holds them, typically a slice of its mapped log file, so that the core's view costs
    /// no heap of its own once its entries are on disk (it would otherwise hold a copy of every
    /// entry since its last compaction).
    /// Returns false, and changes nothing, unless this replica holds a durable entry of that
    /// index with the same term, kind and length.
    pub fn rebind_durable_entry(&mut self, entry: Entry) -> bool {
        self.log.rebind(entry)
    }

    /// The lowest index whose in-memory entry was dropped or replaced (a conflicting suffix cut
    /// off, a snapshot installed) since the last call, if any: a caller that rebinds entries
    /// starts again from there.
    pub fn take_replaced_from(&mut self) -> Option<Index> {
        self.log.take_replaced_from()
    }

    /// Reports that the state machine has applied every entry through `index`.
    pub fn on_applied(&mut self, index: Index) {
        debug_assert!(index <= self.log.commit_index(), "applied {index} beyond commit");
        self.applied = self.applied.max(index);
    }

    // ---------------------------------------------------------------------------------------
    // Shared helpers for the protocol modules.

    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        let m = self.message(to, body);
        self.out.messages.push(m);
    }

    /// Queues a message that may leave only once the next ready is durable.
    pub(crate) fn send_after_persist(&mut self, to: NodeId, body: MessageBody) {
        let m = self.message(to, body);
        self.out.persisted_messages.push(m);
    }

    pub(crate) fn message(&self, to: NodeId, body: MessageBody) -> Message {
        Message { group: self.config.group, from: self.config.id, to, term: self.term, body }
    }

    pub(crate) fn progress_mut(&mut self, id: NodeId) -> Option<&mut Progress> {
        self.progress.iter_mut().find(|p| p.id == id)
    }

    pub(crate) fn progress(&self, id: NodeId) -> Option<&Progress> {
        self.progress.iter().find(|p| p.id == id)
    }

    /// Moves the commit index forward (both roles).
    pub(crate) fn advance_commit(&mut self, index: Index) {
        let old = self.log.commit_index();
        if !self.log.commit_to(index) {
            return;
        }
        if self.role == Role::Leader {
            let mut freed = 0u64;
            for i in (old + 1)..=index {
                if let Some(entry) = self.log.entry(i) {
                    freed += entry.size_bytes();
                }
            }
            self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(freed);
            let conf_committed = self.conf_history.iter().any(|(at, _)| *at > old && *at <= index);
            self.on_leader_commit(conf_committed);
        }
    }

    pub(crate) fn is_promotable(&self) -> bool {
        self.conf.is_voter(self.config.id)
    }

    /// The membership in force at `index` (for snapshot metadata).
    pub(crate) fn conf_at(&self, index: Index) -> ConfState {
        self.conf_history
            .iter()
            .rev()
            .find(|(at, _)| *at <= index)
            .map_or_else(|| self.conf.clone(), |(_, conf)| conf.clone())
    }
}

fn validate(config: &Config) -> Result<(), Error> {
    config.validate().map_err(Error::Config)
}
