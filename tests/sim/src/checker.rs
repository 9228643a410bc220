//! The safety properties, checked after every step of a run.

use std::collections::{BTreeMap, BTreeSet};

use smr_raft::{Entry, EntryKind, Index, NodeId, Replica, Role, Term};

use crate::kv::{self, Fnv};

/// A property that failed, with enough context to start debugging from the seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub property: &'static str,
    pub detail: String,
}

/// What one node looked like at the last check in its current life.
#[derive(Clone, Copy, Debug, Default)]
struct NodeView {
    term: Term,
    vote: Option<NodeId>,
    commit: Index,
    was_leader_in: Term,
}

#[derive(Debug, Default)]
pub struct Checker {
    /// The leader of each term ever seen.
    leaders: BTreeMap<Term, NodeId>,
    /// The committed log as first seen committed anywhere: index -> (term, payload hash).
    committed: BTreeMap<Index, (Term, u64)>,
    /// Every command `(client, seq)` in a committed entry.
    committed_commands: BTreeSet<(u64, u64)>,
    /// State hash after applying each index.
    state_hashes: BTreeMap<Index, (u64, NodeId)>,
    views: BTreeMap<NodeId, NodeView>,
    /// Durable (term, vote) per node, to check that a restart never goes back.
    durable_terms: BTreeMap<NodeId, Term>,
}

fn entry_hash(kind: EntryKind, data: &[u8]) -> u64 {
    let mut h = Fnv::new();
    h.u64(kind as u64);
    h.bytes(data);
    h.finish()
}

impl Checker {
    /// Forgets a node's in-memory view (it crashed; its next life starts from its disk).
    pub fn node_restarted(&mut self, id: NodeId) {
        self.views.remove(&id);
    }

    /// Checks everything that can be checked of one live replica after it handled an event.
    pub fn check_replica(&mut self, id: NodeId, r: &Replica) -> Result<(), Violation> {
        let view = self.views.get(&id).copied().unwrap_or_default();
        let fail = |property: &'static str, detail: String| {
            Err(Violation { property, detail: format!("node {id}: {detail}") })
        };

        // Term, vote and commit never go backwards within a life.
        if r.term() < view.term {
            return fail("term is monotonic", format!("term went from {} to {}", view.term, r.term()));
        }
        if r.term() == view.term && view.vote.is_some() && r.vote() != view.vote {
            return fail(
                "one vote per term",
                format!("vote in term {} changed from {:?} to {:?}", r.term(), view.vote, r.vote()),
            );
        }
        if r.commit_index() < view.commit {
            return fail("commit is monotonic", format!("commit went from {} to {}", view.commit, r.commit_index()));
        }

        // Election safety: at most one leader per term.
        if r.role() == Role::Leader {
            match self.leaders.get(&r.term()) {
                Some(&other) if other != id => {
                    return fail("election safety", format!("two leaders in term {}: {other} and {id}", r.term()));
                }
                _ => {
                    self.leaders.insert(r.term(), id);
                }
            }
            // Leader completeness: a new leader holds every committed entry.
            if view.was_leader_in != r.term() {
                let last_committed = self.committed.last_key_value().map_or(0, |(&i, _)| i);
                if r.last_index() < last_committed {
                    return fail(
                        "leader completeness",
                        format!(
                            "leader of term {} ends at {} but {last_committed} is committed",
                            r.term(),
                            r.last_index()
                        ),
                    );
                }
                for (&index, &(term, hash)) in self.committed.range(r.first_index()..) {
                    let Some(entry) = r.entry(index) else { break };
                    if entry.term != term || entry_hash(entry.kind, &entry.data) != hash {
                        return fail(
                            "leader completeness",
                            format!(
                                "leader of term {} has ({}, {}) where ({index}, {term}) is committed",
                                r.term(),
                                entry.index,
                                entry.term
                            ),
                        );
                    }
                }
            }
        }

        // Committed entries never change: whatever this replica counts as committed matches the
        // first copy seen committed anywhere.
        let from = view.commit.max(r.first_index().saturating_sub(1)) + 1;
        for index in from..=r.commit_index() {
            let Some(entry) = r.entry(index) else { continue };
            self.check_committed_entry(id, entry)?;
        }

        self.views.insert(
            id,
            NodeView {
                term: r.term(),
                vote: r.vote(),
                commit: r.commit_index(),
                was_leader_in: if r.role() == Role::Leader { r.term() } else { view.was_leader_in },
            },
        );
        Ok(())
    }

    /// Committed entries never change: whatever a replica counts as committed (or applies)
    /// matches the first copy seen committed anywhere.
    pub fn check_committed_entry(&mut self, id: NodeId, entry: &Entry) -> Result<(), Violation> {
        let hash = entry_hash(entry.kind, &entry.data);
        match self.committed.get(&entry.index) {
            Some(&(term, h)) => {
                if term != entry.term || h != hash {
                    return Err(Violation {
                        property: "committed entries never change",
                        detail: format!(
                            "node {id}: index {} committed as term {term}, here term {}",
                            entry.index, entry.term
                        ),
                    });
                }
            }
            None => {
                self.committed.insert(entry.index, (entry.term, hash));
                if entry.kind == EntryKind::Normal {
                    for command in kv::batch_commands(&entry.data) {
                        self.committed_commands.insert(command);
                    }
                }
            }
        }
        Ok(())
    }

    /// State machine safety: replicas that applied the same index have the same state.
    pub fn check_applied(&mut self, id: NodeId, index: Index, hash: u64) -> Result<(), Violation> {
        match self.state_hashes.get(&index) {
            Some(&(h, other)) if h != hash => Err(Violation {
                property: "state machine safety",
                detail: format!("nodes {other} and {id} differ after applying index {index}"),
            }),
            Some(_) => Ok(()),
            None => {
                self.state_hashes.insert(index, (hash, id));
                Ok(())
            }
        }
    }

    /// A write is acknowledged to a client only once it is committed.
    pub fn check_acknowledged(&self, client: u64, seq: u64) -> Result<(), Violation> {
        if self.committed_commands.contains(&(client, seq)) {
            Ok(())
        } else {
            Err(Violation {
                property: "no acknowledged write is lost",
                detail: format!("client {client} seq {seq} acknowledged but not in the committed log"),
            })
        }
    }

    /// Durable term never goes backwards across crashes.
    pub fn check_durable_term(&mut self, id: NodeId, term: Term) -> Result<(), Violation> {
        let previous = self.durable_terms.get(&id).copied().unwrap_or(0);
        if term < previous {
            return Err(Violation {
                property: "durable term is monotonic",
                detail: format!("node {id}: durable term went from {previous} to {term}"),
            });
        }
        self.durable_terms.insert(id, term);
        Ok(())
    }

    /// Log matching across live replicas: equal (index, term) means equal prefixes.
    pub fn check_log_matching(&self, replicas: &[(NodeId, &Replica)]) -> Result<(), Violation> {
        for (i, &(a_id, a)) in replicas.iter().enumerate() {
            for &(b_id, b) in &replicas[i + 1..] {
                let low = a.first_index().max(b.first_index());
                let high = a.last_index().min(b.last_index());
                // Find the highest common index with equal terms; everything from `low` to it
                // must be equal.
                let mut top = None;
                let mut index = high;
                while index >= low && index > 0 {
                    let (ea, eb) = (a.entry(index), b.entry(index));
                    if let (Some(ea), Some(eb)) = (ea, eb)
                        && ea.term == eb.term
                    {
                        top = Some(index);
                        break;
                    }
                    index -= 1;
                }
                let Some(top) = top else { continue };
                for index in low..=top {
                    let (Some(ea), Some(eb)) = (a.entry(index), b.entry(index)) else { continue };
                    if ea != eb {
                        return Err(Violation {
                            property: "log matching",
                            detail: format!(
                                "nodes {a_id} and {b_id} agree at index {top} but differ at {index} (terms {} and {})",
                                ea.term, eb.term
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    pub fn committed_len(&self) -> usize {
        self.committed.len()
    }

    pub fn leaders_elected(&self) -> usize {
        self.leaders.len()
    }
}
