//! Log replication (Raft §5.3): proposals, pipelined appends with flow control, conflict
//! back-off, and the commit rule (§5.4.2).

use bytes::Bytes;

use crate::error::Error;
use crate::message::MessageBody;
use crate::progress::ProgressState;
use crate::quorum::joint_index;
use crate::ready::Role;
use crate::replica::{EntryId, Replica};
use crate::types::{Entry, EntryKind, Index, NodeId, Term};

impl Replica {
    /// Proposes one entry: a batch of commands, opaque to the core.
    ///
    /// # Errors
    /// [`Error::NotLeader`], [`Error::TransferInProgress`], [`Error::ProposalTooLarge`],
    /// [`Error::Busy`] (more than `uncommitted_bytes_max` uncommitted). Nothing changes on error.
    pub fn propose(&mut self, data: Bytes) -> Result<EntryId, Error> {
        self.propose_entry(EntryKind::Normal, data)
    }

    pub(crate) fn propose_entry(&mut self, kind: EntryKind, data: Bytes) -> Result<EntryId, Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader { leader: self.leader });
        }
        if let Some((target, _)) = self.transfer {
            return Err(Error::TransferInProgress { target });
        }
        let bytes = data.len() as u64;
        if bytes > self.config.proposal_bytes_max {
            return Err(Error::ProposalTooLarge { bytes, max: self.config.proposal_bytes_max });
        }
        let index = self.log.last_index() + 1;
        let entry = Entry { index, term: self.term, kind, data };
        let size = entry.size_bytes();
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes + size > self.config.uncommitted_bytes_max {
            return Err(Error::Busy {
                uncommitted_bytes: self.uncommitted_bytes,
                max: self.config.uncommitted_bytes_max,
            });
        }
        self.uncommitted_bytes += size;
        self.log.push(entry);
        // A single-voter cluster commits as soon as its own disk has the entry; nothing else to do.
        Ok(EntryId { index, term: self.term })
    }

    /// Whether the leader has appends or a read round to send at the next ready.
    pub(crate) fn leader_has_work(&self) -> bool {
        let last = self.log.last_index();
        let commit = self.log.commit_index();
        let me = self.config.id;
        self.reads.round_wanted()
            || self.progress.iter().any(|pr| {
                pr.id != me
                    && match pr.state {
                        ProgressState::Snapshot => self.snapshot_sendable(pr),
                        _ => {
                            pr.can_send(self.config.inflight_appends_max, self.config.inflight_bytes_max)
                                && (pr.next_index <= last
                                    || (pr.state == ProgressState::Probe && pr.commit_sent < commit.min(last)))
                        }
                    }
            })
    }

    /// Sends everything the flow control allows: appends to every follower, snapshot chunks,
    /// and a heartbeat round when reads wait for one. Runs once per ready, so that many
    /// proposals between two readies leave in one message per follower.
    pub(crate) fn flush_leader(&mut self) {
        let me = self.config.id;
        let ids: Vec<NodeId> = self.progress.iter().map(|p| p.id).filter(|&id| id != me).collect();
        for id in ids {
            self.send_appends(id);
        }
        if self.reads.round_wanted() {
            self.broadcast_heartbeat();
        }
    }

    /// Sends appends to one follower until it is caught up or its window is full.
    fn send_appends(&mut self, to: NodeId) {
        loop {
            let Some(pr) = self.progress(to) else { return };
            if pr.state == ProgressState::Snapshot {
                self.send_snapshot_chunks(to);
                return;
            }
            if !pr.can_send(self.config.inflight_appends_max, self.config.inflight_bytes_max) {
                return;
            }
            let last = self.log.last_index();
            let commit = self.log.commit_index();
            let next = pr.next_index;
            let has_entries = next <= last;
            let probing = pr.state == ProgressState::Probe;
            if !has_entries && !probing {
                // A new commit index alone does not make an append: it travels with the next
                // entries or the next heartbeat. An append just to carry it would cost each
                // follower a message, a wake-up and an acknowledgement per commit, half the
                // messages of a lightly loaded cluster; followers learn it at most one
                // heartbeat later, which delays only their own apply.
                return;
            }
            if !has_entries && probing && pr.commit_sent >= commit.min(last) && pr.match_index + 1 == next {
                // Caught up and acknowledged: nothing to probe.
                return;
            }
            let prev_log_index = next - 1;
            let Some(prev_log_term) = self.log.term(prev_log_index) else {
                // The entries this follower needs were compacted away: it needs a snapshot.
                self.start_snapshot_transfer(to);
                return;
            };
            let entries =
                if has_entries { self.log.slice(next, last, self.config.append_bytes_max) } else { Vec::new() };
            let last_sent = entries.last().map(|e| e.index);
            let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
            let commit_index = commit;
            let body = MessageBody::Append { prev_log_index, prev_log_term, commit_index, entries };
            self.send(to, body);
            let pr = self.progress_mut(to).expect("checked above");
            pr.on_sent(last_sent, bytes);
            pr.commit_sent = commit_index;
            if pr.state == ProgressState::Probe || last_sent.is_none() {
                return;
            }
        }
    }

    /// AppendEntries receiver (§5.3), on a follower that accepted the sender as leader.
    pub(crate) fn handle_append(
        &mut self,
        from: NodeId,
        prev_log_index: Index,
        prev_log_term: Term,
        commit_index: Index,
        entries: Vec<Entry>,
    ) {
        let commit = self.log.commit_index();
        if prev_log_index < commit {
            // Everything through our commit index is known to match the leader. Acknowledge it
            // so the leader moves on (it may not know how far we are); drop the older entries.
            let skip = (commit - prev_log_index) as usize;
            if skip >= entries.len() {
                self.send_after_persist(
                    from,
                    MessageBody::AppendResponse { success: true, index: commit, hint_index: 0, hint_term: 0 },
                );
                return;
            }
            let rest = entries[skip..].to_vec();
            let term = self.log.term(commit).expect("the commit index is within the log");
            self.handle_append(from, commit, term, commit_index, rest);
            return;
        }
        if self.log.matches(prev_log_index, prev_log_term) {
            let (last_new, first_written) = self.log.append_from_leader(prev_log_index, &entries);
            if let Some(first) = first_written {
                // Entries changed from `first` on: the configuration follows the log.
                self.apply_conf_entries_from(first);
            }
            // Only what this message proved to match may be committed (§5.3, rule 5).
            self.advance_commit(commit_index.min(last_new));
            self.send_after_persist(
                from,
                MessageBody::AppendResponse { success: true, index: last_new, hint_index: 0, hint_term: 0 },
            );
        } else {
            let hint_index = self.log.last_index_with_term_at_most(prev_log_index, prev_log_term);
            let hint_term = self.log.term(hint_index).unwrap_or(0);
            self.send(
                from,
                MessageBody::AppendResponse { success: false, index: prev_log_index, hint_index, hint_term },
            );
        }
    }

    pub(crate) fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        index: Index,
        hint_index: Index,
        hint_term: Term,
    ) {
        let last = self.log.last_index();
        // A reply claiming entries we never had is forged or corrupt; a reply is never allowed to
        // push the match index past the leader's log.
        if index > last {
            return;
        }
        let probe_hint =
            if hint_term > 0 { self.log.last_index_with_term_at_most(hint_index, hint_term) } else { hint_index };
        let Some(pr) = self.progress_mut(from) else { return };
        pr.recent_active = true;
        if success {
            if !pr.on_ack(index) {
                return;
            }
            match pr.state {
                ProgressState::Probe => pr.become_replicate(),
                ProgressState::Snapshot if pr.match_index >= pr.snapshot_index => {
                    pr.become_probe();
                    pr.become_replicate();
                }
                _ => {}
            }
            self.maybe_commit();
            self.maybe_send_timeout_now(from);
        } else {
            pr.on_reject(index, probe_hint);
        }
    }

    pub(crate) fn handle_heartbeat(&mut self, from: NodeId, commit_index: Index, read_round: u64) {
        // The leader sends at most the follower's known match index, so this never commits an
        // entry this follower does not hold in the leader's version.
        self.advance_commit(commit_index.min(self.log.last_index()));
        self.send(from, MessageBody::HeartbeatResponse { read_round });
    }

    pub(crate) fn handle_heartbeat_response(&mut self, from: NodeId, read_round: u64) {
        let inflight_appends_max = self.config.inflight_appends_max as usize;
        let last_index = self.log.last_index();
        let stall_heartbeats_max = (self.config.election_ticks / self.config.heartbeat_ticks).max(2);
        let Some(pr) = self.progress_mut(from) else { return };
        pr.recent_active = true;
        // Let a probe that went unanswered go again.
        pr.probe_sent = false;
        // A full pipeline whose appends were all lost would never drain: the follower answers
        // heartbeats but no acknowledgement comes. Free one slot per heartbeat answer, as etcd
        // does; the append that goes out then is rejected if earlier ones were lost, and the
        // rejection moves the follower back to probing from where its log really ends.
        if pr.state == ProgressState::Replicate && pr.inflights.count() >= inflight_appends_max {
            pr.inflights.free_first();
        }
        // A pipeline that made no progress for about an election timeout of heartbeat answers
        // while there is more to send lost an append whose successors were lost too (or never
        // sent): nothing else would ever resend it. Start probing again from where the
        // follower's log is known to end. (Counting a whole election timeout, not one heartbeat,
        // keeps a follower with a slow disk, whose acknowledgements wait for its fsync while its
        // heartbeat answers do not, from being reset needlessly.)
        if pr.state == ProgressState::Replicate
            && pr.match_index < last_index
            && pr.match_index == pr.match_at_last_heartbeat
        {
            pr.stalled_heartbeats += 1;
            if pr.stalled_heartbeats >= stall_heartbeats_max {
                pr.become_probe();
                pr.stalled_heartbeats = 0;
            }
        } else {
            pr.stalled_heartbeats = 0;
        }
        pr.match_at_last_heartbeat = pr.match_index;
        if read_round > pr.acked_round {
            pr.acked_round = read_round;
            self.on_round_acked();
        }
        // A TimeoutNow that was lost is sent again while the target stays caught up.
        self.maybe_send_timeout_now(from);
    }

    pub(crate) fn broadcast_heartbeat(&mut self) {
        let round = self.reads.start_round(self.now);
        let me = self.config.id;
        let commit = self.log.commit_index();
        let targets: Vec<(NodeId, Index)> =
            self.progress.iter().filter(|p| p.id != me).map(|p| (p.id, p.match_index.min(commit))).collect();
        for (to, commit_index) in targets {
            self.send(to, MessageBody::Heartbeat { commit_index, read_round: round });
        }
        // With no other voter, this node alone is the quorum.
        self.on_round_acked();
    }

    /// Commits the highest index a quorum has durably, if it is of the current term (§5.4.2:
    /// an entry of an earlier term is committed only indirectly, by one of the current term).
    pub(crate) fn maybe_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let progress = &self.progress;
        let candidate = joint_index(&self.conf.voters, &self.conf.voters_outgoing, |id| {
            progress.iter().find(|p| p.id == id).map_or(0, |p| p.match_index)
        });
        if candidate == Index::MAX || candidate <= self.log.commit_index() {
            return;
        }
        let current_term = self.log.term(candidate) == Some(self.term);
        if current_term || cfg!(feature = "planted-bug-commit-prior-term") {
            self.advance_commit(candidate);
        }
    }

    /// Runs on the leader after its commit index moved.
    pub(crate) fn on_leader_commit(&mut self, conf_committed: bool) {
        if self.committed_in_current_term() {
            self.release_reads_waiting_for_commit();
        }
        if conf_committed {
            self.on_conf_committed();
            if self.role != Role::Leader {
                return;
            }
        }
        self.maybe_leave_joint();
        // A membership change just applied may have changed what a quorum is.
        self.maybe_commit();
    }

    pub(crate) fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.commit_index()) == Some(self.term)
    }
}
