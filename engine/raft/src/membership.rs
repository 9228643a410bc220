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
            return Err(Error::ConfChangeInProgress { index: self.conf_index });
        }
        if let ConfChange::Bootstrap { .. } = change {
            return Err(Error::ConfChange(crate::conf_change::ConfChangeError::AlreadyBootstrapped));
        }
        change.apply(&self.conf)?;
        let id = self.propose_entry(EntryKind::ConfChange, change.encode())?;
        self.pending_conf_index = id.index;
        Ok(id)
    }

    /// Applies the membership change committed at `index`. Runs on every replica as its
    /// commit index passes the entry, so all replicas go through the same configurations.
    pub(crate) fn apply_conf_entry(&mut self, index: Index, data: &[u8]) {
        // An entry that does not decode or apply is skipped on every replica alike (they all see
        // the same entry and the same configuration), so skipping keeps them in agreement. The
        // leader validated it when proposing, so this does not happen short of a bug.
        let Ok(change) = ConfChange::decode(data) else { return };
        let Ok(next) = change.apply(&self.conf) else { return };
        self.conf = next;
        self.conf_history.push((index, self.conf.clone()));
        self.out.conf_changed = true;
        if self.role != Role::Leader {
            return;
        }
        let next_index = self.log.last_index() + 1;
        let members = self.conf.members();
        self.progress.retain(|p| members.contains(&p.id));
        for id in members {
            if self.progress(id).is_none() {
                self.progress.push(Progress::new(id, next_index));
            }
        }
        if !self.conf.is_voter(self.config.id) {
            // The leader was removed: the configuration without it is committed (thesis §4.2.2),
            // so it steps down and lets the remaining voters elect a leader. It first tells the
            // followers the commit index, so they leave the joint configuration too instead of
            // waiting for a new leader to commit it again.
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
    }
}
