//! The member directory: where each member of the group listens, as the log says.
//!
//! Founding members come from the config; a member added later is announced in the context of
//! its membership change entry ([`smr_raft::ConfChange::encode_with_context`]), so that every
//! replica learns its addresses from the log in log order, and a replica that restores a
//! snapshot learns them from the snapshot. The apply stage owns the replicated directory; the
//! core reads a published copy to connect to new peers and to tell clients where the leader is.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use smr_raft::NodeId;

use crate::config::Member;

/// Most members a directory holds (it bounds what a snapshot header may announce).
pub const MEMBERS_MAX: usize = 4096;

/// Addresses of one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub peer: SocketAddr,
    pub client: SocketAddr,
}

/// Addresses by member id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    members: BTreeMap<NodeId, Addresses>,
}

/// Why a context or an address text was not understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("member addresses {text:?}: {reason}")]
pub struct AddressError {
    pub text: String,
    pub reason: &'static str,
}

impl Directory {
    pub fn from_members(members: &[Member]) -> Directory {
        let mut directory = Directory::default();
        for m in members {
            directory.insert(m.id, Addresses { peer: m.peer_address, client: m.client_address });
        }
        directory
    }

    pub fn get(&self, id: NodeId) -> Option<Addresses> {
        self.members.get(&id).copied()
    }

    /// Records (or replaces) a member's addresses; ignored beyond [`MEMBERS_MAX`] members.
    pub fn insert(&mut self, id: NodeId, addresses: Addresses) {
        if self.members.len() < MEMBERS_MAX || self.members.contains_key(&id) {
            self.members.insert(id, addresses);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (NodeId, Addresses)> + '_ {
        self.members.iter().map(|(&id, &a)| (id, a))
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

impl Addresses {
    /// The text form used in membership change contexts and by `smr ctl add-node`:
    /// `<peer address>,<client address>`.
    pub fn to_text(&self) -> String {
        format!("{},{}", self.peer, self.client)
    }

    /// Parses [`Addresses::to_text`]'s form.
    ///
    /// # Errors
    /// An [`AddressError`] naming what is wrong.
    pub fn parse(text: &str) -> Result<Addresses, AddressError> {
        let bad = |reason| AddressError { text: text.chars().take(200).collect(), reason };
        let (peer, client) = text.split_once(',').ok_or_else(|| bad("expected <peer address>,<client address>"))?;
        let peer = peer.trim().parse().map_err(|_| bad("the peer address is not ip:port"))?;
        let client = client.trim().parse().map_err(|_| bad("the client address is not ip:port"))?;
        Ok(Addresses { peer, client })
    }

    /// Decodes a membership change context (UTF-8 [`Addresses::to_text`]).
    ///
    /// # Errors
    /// Not UTF-8, or not two addresses.
    pub fn from_context(context: &[u8]) -> Result<Addresses, AddressError> {
        let text = std::str::from_utf8(context)
            .map_err(|_| AddressError { text: String::new(), reason: "context is not UTF-8" })?;
        Addresses::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_text_and_bad_text_is_named() {
        let a = Addresses { peer: "127.0.0.1:7004".parse().unwrap(), client: "[::1]:7104".parse().unwrap() };
        assert_eq!(Addresses::parse(&a.to_text()).unwrap(), a);
        assert_eq!(Addresses::from_context(a.to_text().as_bytes()).unwrap(), a);
        assert!(Addresses::parse("127.0.0.1:7004").unwrap_err().reason.contains("expected"));
        assert!(Addresses::parse("x,127.0.0.1:1").unwrap_err().reason.contains("peer"));
        assert!(Addresses::from_context(&[0xff, 0xfe]).is_err());
    }
}
