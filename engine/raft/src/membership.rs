//! Membership changes by joint consensus (thesis §4.3), applied as their entries commit.

use crate::conf_change::ConfChange;
use crate::error::Error;
use crate::progress::Progress;
use crate::ready::Role;
use crate::replica::{EntryId, Replica};
use crate::types::{EntryKind, Index};

impl Replica {
    /// Proposes a membership change. A change of the voter set enters a joint configuration;
    /// the leader leaves it by itself once the joint configuration commits.
    ///
    /// # Errors
    /// [`Error::NotLeader`], [`Error::TransferInProgress`], [`Error::ConfChangeInProgress`] while
    /// an earlier change is uncommitted (or the configuration is still joint), and
    /// [`Error::ConfChange`] when the change does not fit the configuration in force.
    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<EntryId, Error> {
        self.propose_conf_change_with_context(change, &[])
    }

    /// [`Replica::propose_conf_change`] with an opaque `context` stored in the entry (at most
    /// [`crate::CONF_CHANGE_CONTEXT_BYTES_MAX`] bytes), for the caller to read back when the
    /// entry is applied: the runtime records a new member's addresses there.
    ///
    /// # Errors
    /// As [`Replica::propose_conf_change`]; [`Error::ConfChange`] for a context that is too long.
    pub fn propose_conf_change_with_context(&mut self, change: ConfChange, context: &[u8]) -> Result<EntryId, Error> {
        if context.len() > crate::conf_change::CONF_CHANGE_CONTEXT_BYTES_MAX {
            return Err(Error::ConfChange(crate::conf_change::ConfChangeError::Malformed("context too long")));
        }
        if self.role != Role::Leader {
            return Err(Error::NotLeader { leader: self.leader });
        }
        if let Some((target, _)) = self.transfer {
            return Err(Error::TransferInProgress { target });
        }
        if self.pending_conf_index > self.log.commit_index() {
            return Err(Error::ConfChangeInProgress { index: self.pending_conf_index });
        }
        if self.conf.is_joint() && change != ConfChange::LeaveJoint {
            let joint_at = self.conf_history.last().map_or(0, |(at, _)| *at);
            return Err(Error::ConfChangeInProgress { index: joint_at });
        }
        if let ConfChange::Bootstrap { .. } = change {
            return Err(Error::ConfChange(crate::conf_change::ConfChangeError::AlreadyBootstrapped));
        }
        change.apply(&self.conf)?;
        let id = self.propose_entry(EntryKind::ConfChange, change.encode_with_context(context))?;
        self.pending_conf_index = id.index;
        self.apply_conf_entries_from(id.index);
        Ok(id)
    }

    /// Applies, in order, every membership change entry from `index` to the end of the log,
    /// after dropping the configurations of entries at or after `index` (a truncated suffix).
    /// Runs whenever entries are appended, so the configuration in force is always the latest
    /// one in the log.
    pub(crate) fn apply_conf_entries_from(&mut self, index: Index) {
        // The common case on a follower's append path: no configuration was truncated and none
        // arrived. Checked without allocating.
        let truncated = self.conf_history.len() > 1 && self.conf_history.last().is_some_and(|(at, _)| *at >= index);
        let first = index.max(self.log.first_index());
        let arrived =
            (first..=self.log.last_index()).filter_map(|i| self.log.entry(i)).any(|e| e.kind == EntryKind::ConfChange);
        if !truncated && !arrived {
            return;
        }
        let before = self.conf.clone();
        while self.conf_history.len() > 1 && self.conf_history.last().is_some_and(|(at, _)| *at >= index) {
            self.conf_history.pop();
        }
        self.conf = self.conf_history.last().expect("the base configuration is always there").1.clone();
        let changes: Vec<(Index, bytes::Bytes)> = (first..=self.log.last_index())
            .filter_map(|i| self.log.entry(i))
            .filter(|e| e.kind == EntryKind::ConfChange)
            .map(|e| (e.index, e.data.clone()))
            .collect();
        for (at, data) in changes {
            // An entry that does not decode or apply is skipped on every replica alike (they all
            // see the same entry after the same configuration), so skipping keeps them in
            // agreement. The leader validated it when proposing, so this takes a bug.
            let Ok(change) = ConfChange::decode(&data) else { continue };
            let Ok(next) = change.apply(&self.conf) else { continue };
            self.conf = next;
            self.conf_history.push((at, self.conf.clone()));
        }
        if self.conf != before {
            self.out.conf_changed = true;
            if self.role == Role::Leader {
                self.refresh_progress();
                self.maybe_commit();
            }
        }
    }

    /// The leader tracks every member of the configuration in force, and also those of the
    /// committed one until the change that removes them commits (they must still learn it).
    pub(crate) fn refresh_progress(&mut self) {
        let mut members = self.conf.members();
        members.extend(self.conf_at(self.log.commit_index()).members());
        members.sort_unstable();
        members.dedup();
        let next_index = self.log.last_index() + 1;
        self.progress.retain(|p| members.contains(&p.id));
        for id in members {
            if self.progress(id).is_none() {
                self.progress.push(Progress::new(id, next_index));
            }
        }
    }

    /// Runs on the leader after its commit index moved past a membership change: tracks the
    /// right peers, and steps down once a configuration without it is committed (thesis
    /// §4.2.2), after telling everyone, removed members included, the commit index.
    pub(crate) fn on_conf_committed(&mut self) {
        self.refresh_progress();
        let committed = self.pending_conf_index <= self.log.commit_index();
        if committed && !self.conf.is_voter(self.config.id) {
            let commit = self.log.commit_index();
            let me = self.config.id;
            let targets: Vec<(u64, Index)> =
                self.progress.iter().filter(|p| p.id != me).map(|p| (p.id, p.match_index.min(commit))).collect();
            for (to, commit_index) in targets {
                self.send(to, crate::message::MessageBody::Heartbeat { commit_index, read_round: 0 });
            }
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    /// In a committed joint configuration, the leader proposes to leave it.
    pub(crate) fn maybe_leave_joint(&mut self) {
        if self.role != Role::Leader || !self.conf.is_joint() || self.pending_conf_index > self.log.commit_index() {
            return;
        }
        let index = self.log.last_index() + 1;
        let entry = crate::types::Entry {
            index,
            term: self.term,
            kind: EntryKind::ConfChange,
            data: ConfChange::LeaveJoint.encode(),
        };
        // Bypasses the proposal checks on purpose: leaving the joint configuration must not be
        // refused as busy or during a leadership transfer.
        self.uncommitted_bytes += entry.size_bytes();
        self.log.push(entry);
        self.pending_conf_index = index;
        self.apply_conf_entries_from(index);
    }
}
