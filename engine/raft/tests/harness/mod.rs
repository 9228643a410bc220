//! A small in-memory cluster for scripted scenarios: messages are delivered by hand (or all at
//! once), links can be cut one way or both, and every ready is persisted at once.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use smr_raft::{Config, Entry, EntryKind, Message, NodeId, Replica, Role};

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Replica>,
    pub in_flight: VecDeque<Message>,
    /// Cut directed links `(from, to)`.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Snapshot chunks received per node (for the snapshot scenario).
    pub snapshots_installed: BTreeMap<NodeId, u64>,
}

pub fn config(id: NodeId) -> Config {
    let mut c = Config::new(id, 1);
    c.seed = id * 7919;
    c
}

impl Cluster {
    pub fn new(size: u64) -> Cluster {
        Cluster::with_config(size, |_| {})
    }

    pub fn with_config(size: u64, tweak: impl Fn(&mut Config)) -> Cluster {
        let voters: Vec<NodeId> = (1..=size).collect();
        let mut nodes = BTreeMap::new();
        for &id in &voters {
            let mut c = config(id);
            tweak(&mut c);
            nodes.insert(id, Replica::bootstrap(c, &voters).unwrap());
        }
        let mut cluster =
            Cluster { nodes, in_flight: VecDeque::new(), cut: BTreeSet::new(), snapshots_installed: BTreeMap::new() };
        for id in voters {
            cluster.process(id);
        }
        cluster
    }

    pub fn node(&self, id: NodeId) -> &Replica {
        &self.nodes[&id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Replica {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Drains a node's readies: messages queued for delivery, persistence instantaneous.
    pub fn process(&mut self, id: NodeId) {
        loop {
            let replica = self.nodes.get_mut(&id).unwrap();
            if !replica.has_ready() {
                break;
            }
            let rd = replica.ready();
            for chunk in &rd.snapshot_chunks {
                if chunk.last {
                    *self.snapshots_installed.entry(id).or_default() += 1;
                }
            }
            let mut out = rd.messages;
            replica.on_persisted(rd.number);
            out.extend(rd.persisted_messages);
            if rd.commit_index > replica.applied_index() {
                replica.on_applied(rd.commit_index);
            }
            for m in out {
                if !self.cut.contains(&(m.from, m.to)) {
                    self.in_flight.push_back(m);
                }
            }
        }
    }

    /// Delivers every message in flight, and whatever they cause, until quiet.
    pub fn deliver_all(&mut self) {
        let mut steps = 0;
        while let Some(m) = self.in_flight.pop_front() {
            steps += 1;
            assert!(steps < 1_000_000, "messages never stop flowing");
            self.deliver(m);
        }
    }

    pub fn deliver(&mut self, m: Message) {
        if self.cut.contains(&(m.from, m.to)) {
            return;
        }
        let to = m.to;
        if let Some(replica) = self.nodes.get_mut(&to) {
            replica.step(m).unwrap();
            self.process(to);
        }
    }

    /// Drops every message in flight.
    pub fn drop_in_flight(&mut self) {
        self.in_flight.clear();
    }

    pub fn tick(&mut self, id: NodeId) {
        self.node_mut(id).tick();
        self.process(id);
    }

    /// Ticks every node `ticks` times, delivering everything after each round.
    pub fn tick_all(&mut self, ticks: u32) {
        for _ in 0..ticks {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.tick(id);
            }
            self.deliver_all();
        }
    }

    /// Makes `id` campaign (by ticking it alone past its election timeout) and delivers.
    pub fn campaign(&mut self, id: NodeId) {
        for _ in 0..(2 * self.node(id).config().election_ticks) {
            self.tick(id);
            if self.node(id).role() != Role::Follower {
                break;
            }
        }
        self.deliver_all();
    }

    pub fn elect(&mut self, id: NodeId) {
        self.campaign(id);
        assert_eq!(self.node(id).role(), Role::Leader, "node {id} failed to become leader");
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.nodes.iter().filter(|(_, r)| r.role() == Role::Leader).max_by_key(|(_, r)| r.term()).map(|(&id, _)| id)
    }

    pub fn isolate(&mut self, id: NodeId) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn propose(&mut self, id: NodeId, data: &'static [u8]) -> smr_raft::EntryId {
        let entry = self.node_mut(id).propose(Bytes::from_static(data)).unwrap();
        self.process(id);
        entry
    }

    pub fn add_node(&mut self, id: NodeId) {
        self.nodes.insert(id, Replica::join(config(id)).unwrap());
    }

    /// The normal entries of a node's log, as (index, term, data).
    pub fn normal_entries(&self, id: NodeId) -> Vec<(u64, u64, Bytes)> {
        let r = self.node(id);
        r.entries(r.first_index(), r.last_index())
            .into_iter()
            .filter(|e: &Entry| e.kind == EntryKind::Normal)
            .map(|e| (e.index, e.term, e.data))
            .collect()
    }
}
