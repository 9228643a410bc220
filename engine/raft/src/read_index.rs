//! Linearizable reads without writing the log: ReadIndex (thesis §6.4) and leader leases
//! (thesis §6.4.1).
//!
//! A read taken at commit index `c` is safe once the leader has shown it was still leader after
//! the read arrived: a quorum acknowledged a heartbeat round sent after that moment. Reads that
//! arrive together share one round. With a lease, a quorum's acknowledgement of a round sent at
//! tick `t` lets the leader answer reads at once until `t + lease_ticks`.

use std::collections::VecDeque;

use crate::error::Error;
use crate::message::MessageBody;
use crate::quorum::joint_index;
use crate::ready::{ReadState, Role};
use crate::replica::Replica;
use crate::types::{Index, NodeId, ReadContext};

/// How many heartbeat rounds' send ticks are remembered for lease extension. A round
/// acknowledged after it fell out of this window simply does not extend the lease.
const ROUNDS_REMEMBERED_MAX: usize = 64;

#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingRead {
    context: ReadContext,
    /// The node whose client asked (this node, or a follower that forwarded the read).
    from: NodeId,
    index: Index,
    round: u64,
}

/// The leader's queue of reads waiting to become safe.
#[derive(Debug)]
pub(crate) struct ReadQueue {
    /// Reads that arrived before the leader committed an entry of its term; it does not know
    /// the commit index yet (§6.4 step 1).
    waiting_commit: VecDeque<(ReadContext, NodeId)>,
    pending: VecDeque<PendingRead>,
    /// The round the next heartbeat broadcast will carry.
    next_round: u64,
    /// `(round, tick sent)` of recent broadcasts.
    sent: VecDeque<(u64, u64)>,
    /// Some pending read waits for a round not yet broadcast.
    wanted: bool,
}

impl Default for ReadQueue {
    fn default() -> ReadQueue {
        ReadQueue {
            waiting_commit: VecDeque::new(),
            pending: VecDeque::new(),
            next_round: 1,
            sent: VecDeque::new(),
            wanted: false,
        }
    }
}

impl ReadQueue {
    pub(crate) fn round_wanted(&self) -> bool {
        self.wanted
    }

    fn len(&self) -> usize {
        self.waiting_commit.len() + self.pending.len()
    }

    /// Starts a heartbeat round sent at tick `now`; returns its number.
    pub(crate) fn start_round(&mut self, now: u64) -> u64 {
        let round = self.next_round;
        self.next_round += 1;
        self.sent.push_back((round, now));
        if self.sent.len() > ROUNDS_REMEMBERED_MAX {
            self.sent.pop_front();
        }
        self.wanted = false;
        round
    }

    fn latest_round(&self) -> u64 {
        self.next_round - 1
    }
}

impl Replica {
    /// Asks for a linearizable read. When it is safe, a [`ReadState`] with `context` appears in
    /// a ready: serve the read once the state machine has applied its index. On a follower the
    /// request is forwarded to the leader.
    ///
    /// A read fails visibly (in `Ready::failed_reads`) when the leader loses leadership with it
    /// pending, or refuses a forwarded one. A forwarded read or its answer can also be lost on
    /// the network: the caller must time reads out itself.
    ///
    /// # Errors
    /// [`Error::NotLeader`] when no leader is known; [`Error::TooManyPendingReads`] beyond
    /// `pending_reads_max`.
    pub fn read_index(&mut self, context: ReadContext) -> Result<(), Error> {
        match self.role {
            Role::Leader => {
                let me = self.config.id;
                self.leader_read(context, me)
            }
            Role::Follower => match self.leader {
                Some(leader) => {
                    self.send(leader, MessageBody::ReadIndex { context });
                    Ok(())
                }
                None => Err(Error::NotLeader { leader: None }),
            },
            Role::PreCandidate | Role::Candidate => Err(Error::NotLeader { leader: None }),
        }
    }

    fn leader_read(&mut self, context: ReadContext, from: NodeId) -> Result<(), Error> {
        if self.reads.len() >= self.config.pending_reads_max as usize {
            return Err(Error::TooManyPendingReads { pending: self.reads.len(), max: self.config.pending_reads_max });
        }
        if !self.committed_in_current_term() {
            self.reads.waiting_commit.push_back((context, from));
            return Ok(());
        }
        let index = self.log.commit_index();
        if self.config.lease_reads && self.now < self.lease_until {
            self.answer_read(context, from, index);
            return Ok(());
        }
        let round = self.reads.next_round;
        self.reads.pending.push_back(PendingRead { context, from, index, round });
        self.reads.wanted = true;
        Ok(())
    }

    fn answer_read(&mut self, context: ReadContext, from: NodeId, index: Index) {
        if from == self.config.id {
            self.out.read_states.push(ReadState { context, index });
        } else {
            self.send(from, MessageBody::ReadIndexResponse { context, index });
        }
    }

    pub(crate) fn handle_read_index_request(&mut self, from: NodeId, context: ReadContext) {
        if self.role != Role::Leader || self.leader_read(context, from).is_err() {
            self.send(from, MessageBody::ReadIndexResponse { context, index: 0 });
        }
    }

    pub(crate) fn handle_read_index_response(&mut self, context: ReadContext, index: Index) {
        if index == 0 {
            self.out.failed_reads.push(context);
        } else {
            self.out.read_states.push(ReadState { context, index });
        }
    }

    /// A heartbeat round was acknowledged by someone: release the reads a quorum now covers.
    pub(crate) fn on_round_acked(&mut self) {
        let me = self.config.id;
        let latest = self.reads.latest_round();
        let progress = &self.progress;
        let quorum_round = joint_index(&self.conf.voters, &self.conf.voters_outgoing, |id| {
            if id == me { latest } else { progress.iter().find(|p| p.id == id).map_or(0, |p| p.acked_round) }
        });
        if quorum_round == 0 || quorum_round == u64::MAX {
            return;
        }
        if self.config.lease_reads
            && !self.lease_revoked
            && let Some(&(_, sent)) = self.reads.sent.iter().find(|&&(r, _)| r == quorum_round)
        {
            self.lease_until = self.lease_until.max(sent + u64::from(self.config.lease_ticks));
        }
        while let Some(read) = self.reads.pending.front().copied() {
            if read.round > quorum_round {
                break;
            }
            self.reads.pending.pop_front();
            self.answer_read(read.context, read.from, read.index);
        }
    }

    /// The leader's first commit in its term: reads that waited for it learn their index.
    pub(crate) fn release_reads_waiting_for_commit(&mut self) {
        while let Some((context, from)) = self.reads.waiting_commit.pop_front() {
            let index = self.log.commit_index();
            if self.config.lease_reads && self.now < self.lease_until {
                self.answer_read(context, from, index);
            } else {
                let round = self.reads.next_round;
                self.reads.pending.push_back(PendingRead { context, from, index, round });
                self.reads.wanted = true;
            }
        }
    }

    /// On losing leadership: every waiting read fails, locally or by telling the follower.
    pub(crate) fn fail_pending_reads(&mut self) {
        let waiting: Vec<(ReadContext, NodeId)> = self
            .reads
            .waiting_commit
            .drain(..)
            .chain(self.reads.pending.drain(..).map(|r| (r.context, r.from)))
            .collect();
        self.reads.wanted = false;
        for (context, from) in waiting {
            if from == self.config.id {
                self.out.failed_reads.push(context);
            } else {
                self.send(from, MessageBody::ReadIndexResponse { context, index: 0 });
            }
        }
    }
}
