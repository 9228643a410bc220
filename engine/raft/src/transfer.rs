//! Leadership transfer (thesis §3.10): the leader brings the target up to date, then tells it
//! to campaign at once with TimeoutNow.

use crate::election::Campaign;
use crate::error::Error;
use crate::message::MessageBody;
use crate::ready::Role;
use crate::replica::Replica;
use crate::types::NodeId;

impl Replica {
    /// Starts handing leadership to `target`. Proposals are refused until it completes or times
    /// out (one election timeout); a transfer to another target replaces this one.
    ///
    /// # Errors
    /// [`Error::NotLeader`]; [`Error::NotVoter`] when `target` cannot become leader.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader { leader: self.leader });
        }
        if target == self.config.id {
            self.transfer = None;
            return Ok(());
        }
        if !self.conf.voters.contains(&target) {
            return Err(Error::NotVoter(target));
        }
        if self.transfer.is_some_and(|(t, _)| t == target) {
            return Ok(());
        }
        self.transfer = Some((target, 0));
        self.maybe_send_timeout_now(target);
        Ok(())
    }

    /// The target in progress, if any.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer.map(|(t, _)| t)
    }

    pub(crate) fn maybe_send_timeout_now(&mut self, from: NodeId) {
        let Some((target, _)) = self.transfer else { return };
        if target != from {
            return;
        }
        let caught_up = self.progress(target).is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            // The target may win an election at once, breaking through followers' leases: no
            // lease read may be served on this leadership any more (thesis §6.4.1).
            self.lease_until = 0;
            self.lease_revoked = true;
            self.send(target, MessageBody::TimeoutNow);
        }
    }

    pub(crate) fn tick_transfer(&mut self) {
        if let Some((target, elapsed)) = self.transfer {
            let elapsed = elapsed + 1;
            self.transfer = if elapsed >= self.config.election_ticks { None } else { Some((target, elapsed)) };
        }
    }

    pub(crate) fn handle_timeout_now(&mut self, from: NodeId) {
        if self.role != Role::Follower || self.leader != Some(from) {
            return;
        }
        self.campaign(Campaign::Transfer);
    }
}
