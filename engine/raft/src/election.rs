//! Leader election (Raft §5.2), PreVote (thesis §9.6) and CheckQuorum (thesis §6.2).

use crate::message::MessageBody;
use crate::progress::Progress;
use crate::quorum::{VoteResult, joint_vote};
use crate::ready::Role;
use crate::replica::Replica;
use crate::types::{Entry, EntryKind, NodeId, Term};

/// Which kind of campaign to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Campaign {
    /// Ask whether we could win, without bumping the term.
    Pre,
    /// A real election in a new term.
    Real,
    /// A real election the leader asked for (leadership transfer): skips PreVote and breaks
    /// through followers' leader leases.
    Transfer,
}

impl Replica {
    pub(crate) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.randomized_election_ticks {
            self.election_elapsed = 0;
            if self.is_promotable() {
                self.campaign(if self.config.pre_vote { Campaign::Pre } else { Campaign::Real });
            }
        }
    }

    pub(crate) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                // A leader that cannot reach a quorum steps down, so that clients go elsewhere
                // and its lease cannot outlive its leadership.
                let term = self.term;
                self.become_follower(term, None);
                return;
            }
            let me = self.config.id;
            for pr in &mut self.progress {
                pr.recent_active = pr.id == me;
            }
        }
        self.tick_transfer();
        self.tick_snapshot_transfers();
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    fn quorum_recently_active(&self) -> bool {
        let me = self.config.id;
        let active = |id: NodeId| Some(id == me || self.progress(id).is_some_and(|p| p.recent_active));
        joint_vote(&self.conf.voters, &self.conf.voters_outgoing, active) == VoteResult::Won
    }

    /// Whether this follower heard from a live leader within the minimum election timeout, in
    /// which case it refuses to help a candidate depose it.
    pub(crate) fn in_leader_lease(&self) -> bool {
        if !self.config.check_quorum {
            return false;
        }
        // A replica that just restarted does not know whether it acknowledged a leader a moment
        // before it crashed, so for one election timeout it behaves as if it had: otherwise a
        // leader's lease could be broken by a quorum that includes a freshly restarted node.
        if self.now < self.restart_lease_guard_ticks {
            return true;
        }
        match self.role {
            Role::Follower => self.leader.is_some() && self.election_elapsed < self.config.election_ticks,
            // A leader within its CheckQuorum period ignores disruptive (pre)votes too, as etcd does.
            Role::Leader => true,
            Role::PreCandidate | Role::Candidate => false,
        }
    }

    pub(crate) fn campaign(&mut self, kind: Campaign) {
        if !self.is_promotable() {
            return;
        }
        let (term, body_for) = match kind {
            Campaign::Pre => {
                self.role = Role::PreCandidate;
                self.leader = None;
                self.out.role_changed = true;
                (self.term + 1, false)
            }
            Campaign::Real | Campaign::Transfer => {
                let next = self.term + 1;
                self.become_candidate(next);
                (self.term, kind == Campaign::Transfer)
            }
        };
        self.votes.clear();
        self.reset_election_timer();
        let me = self.config.id;
        self.record_vote(me, true);
        if !matches!(self.role, Role::PreCandidate | Role::Candidate) {
            // A single-voter cluster wins at once.
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<NodeId> =
            self.conf.members().into_iter().filter(|&id| id != me && self.conf.is_voter(id)).collect();
        for to in voters {
            let body = if kind == Campaign::Pre {
                MessageBody::PreVote { last_log_index, last_log_term }
            } else {
                MessageBody::Vote { last_log_index, last_log_term, leadership_transfer: body_for }
            };
            let mut m = self.message(to, body);
            m.term = term;
            if kind == Campaign::Pre {
                // Changes nothing durable: may leave at once.
                self.out.messages.push(m);
            } else {
                // The candidate's new term and its vote for itself must be durable first.
                self.out.persisted_messages.push(m);
            }
        }
    }

    fn become_candidate(&mut self, term: Term) {
        assert!(term > self.term);
        self.fail_pending_reads();
        self.term = term;
        self.vote = Some(self.config.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.progress.clear();
        self.transfer = None;
        self.out.role_changed = true;
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        if self.role == Role::Leader || self.role == Role::Candidate || self.role == Role::PreCandidate {
            self.fail_pending_reads();
        }
        let changed = self.role != Role::Follower || self.leader != leader;
        self.role = Role::Follower;
        self.leader = leader;
        self.progress.clear();
        self.votes.clear();
        self.transfer = None;
        self.uncommitted_bytes = 0;
        self.lease_until = 0;
        self.reset_election_timer();
        if changed {
            self.out.role_changed = true;
        }
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        let e = u64::from(self.config.election_ticks);
        self.randomized_election_ticks = self.rng.range(e, 2 * e) as u32;
    }

    pub(crate) fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate, "only a candidate becomes leader");
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
        self.out.role_changed = true;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.lease_until = 0;
        self.lease_revoked = false;
        let next = self.log.last_index() + 1;
        let me = self.config.id;
        self.progress = self.conf.members().into_iter().map(|id| Progress::new(id, next)).collect();
        // Members the committed configuration still has (removed by an uncommitted change).
        self.refresh_progress();
        if self.progress(me).is_none() {
            // Only a voter campaigns, so this is unreachable; keep the tracker total anyway.
            self.progress.push(Progress::new(me, next));
        }
        let persisted = self.log.persisted_index();
        for pr in &mut self.progress {
            if pr.id == me {
                pr.match_index = persisted;
                pr.next_index = next;
                pr.recent_active = true;
            }
        }
        // No membership change until everything before this term is committed: the leader
        // does not know whether an uncommitted one from an earlier term will survive.
        self.pending_conf_index = self.log.last_index();
        self.uncommitted_bytes = 0;
        // The no-op lets the leader commit earlier terms' entries (§5.4.2) and learn the commit
        // index it needs for reads (§6.4).
        let noop = Entry { index: next, term: self.term, kind: EntryKind::Noop, data: bytes::Bytes::new() };
        self.uncommitted_bytes += noop.size_bytes();
        self.log.push(noop);
        self.maybe_commit();
    }

    pub(crate) fn handle_vote_request(&mut self, m: crate::message::Message) {
        let (pre, last_log_index, last_log_term) = match m.body {
            MessageBody::PreVote { last_log_index, last_log_term } => (true, last_log_index, last_log_term),
            MessageBody::Vote { last_log_index, last_log_term, .. } => (false, last_log_index, last_log_term),
            _ => unreachable!("not a vote request"),
        };
        let can_vote =
            self.vote == Some(m.from) || (self.vote.is_none() && self.leader.is_none()) || (pre && m.term > self.term);
        let up_to_date = if cfg!(feature = "planted-bug-vote-without-log-check") && !pre {
            true
        } else {
            self.log.is_up_to_date(last_log_index, last_log_term)
        };
        if can_vote && up_to_date {
            if pre {
                // Answer in the term asked about, so the pre-candidate can count it.
                let mut reply = self.message(m.from, MessageBody::PreVoteResponse { granted: true });
                reply.term = m.term;
                self.out.messages.push(reply);
            } else {
                self.vote = Some(m.from);
                self.election_elapsed = 0;
                // The vote must be durable before the candidate can count it (§5.2: one vote
                // per term, even across a crash).
                self.send_after_persist(m.from, MessageBody::VoteResponse { granted: true });
            }
        } else if pre {
            self.send(m.from, MessageBody::PreVoteResponse { granted: false });
        } else {
            self.send(m.from, MessageBody::VoteResponse { granted: false });
        }
    }

    pub(crate) fn record_vote(&mut self, from: NodeId, granted: bool) {
        if !self.conf.is_voter(from) {
            return;
        }
        if !self.votes.iter().any(|&(id, _)| id == from) {
            self.votes.push((from, granted));
        }
        let votes = &self.votes;
        let result = joint_vote(&self.conf.voters, &self.conf.voters_outgoing, |id| {
            votes.iter().find(|&&(v, _)| v == id).map(|&(_, g)| g)
        });
        match (result, self.role) {
            (VoteResult::Won, Role::PreCandidate) => self.campaign(Campaign::Real),
            (VoteResult::Won, Role::Candidate) => self.become_leader(),
            (VoteResult::Lost, Role::PreCandidate | Role::Candidate) => {
                let term = self.term;
                self.become_follower(term, None);
            }
            _ => {}
        }
    }
}
