//! Client sessions: a command retried after a timeout or a leader change is applied once.
//!
//! Each client session has a sequence number per command. The table keeps, per session, the
//! results of the last `window_max` sequence numbers applied; a command whose number is in that
//! window and already applied is answered with the stored result instead of being applied again
//! (Raft thesis §6.3). Commands of one session may be applied out of order (a retry of 5 after 6),
//! which is why it is a window and not a single last number.
//!
//! Sessions expire deterministically, by log index, never by a local clock: a session that has
//! not applied a command for `expiry_entries` entries is forgotten, and beyond `sessions_max`
//! the least recently used goes first. Every replica makes the same choices at the same index.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use smr_raft::Index;

/// Limits of the session table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Most sessions remembered at once.
    pub sessions_max: usize,
    /// Results remembered per session: how far a retry may trail the newest command.
    pub window_max: u64,
    /// A session idle for this many log entries is forgotten.
    pub expiry_entries: u64,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig { sessions_max: 65_536, window_max: 1024, expiry_entries: 10_000_000 }
    }
}

/// What to do with a command of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not applied before: apply it.
    Fresh,
    /// Already applied: answer with this result.
    Duplicate(Bytes),
    /// Too old to tell: its result was dropped from the window. The client must not retry it.
    Stale { oldest_remembered: u64 },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) results: BTreeMap<u64, Bytes>,
    pub(crate) last_index: Index,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sessions {
    pub(crate) config: SessionConfig,
    pub(crate) map: BTreeMap<u64, Session>,
    /// `(last_index, session)`, to find the least recently used in O(log n).
    pub(crate) by_index: BTreeSet<(Index, u64)>,
}

impl Sessions {
    pub fn new(config: SessionConfig) -> Sessions {
        Sessions { config, map: BTreeMap::new(), by_index: BTreeSet::new() }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Decides about command `seq` of `session` (session 0 is never deduplicated).
    pub fn decide(&self, session: u64, seq: u64) -> Decision {
        if session == 0 {
            return Decision::Fresh;
        }
        let Some(s) = self.map.get(&session) else { return Decision::Fresh };
        if let Some(result) = s.results.get(&seq) {
            return Decision::Duplicate(result.clone());
        }
        let newest = s.results.last_key_value().map_or(0, |(&k, _)| k);
        let oldest_remembered = newest.saturating_sub(self.config.window_max - 1);
        if seq < oldest_remembered { Decision::Stale { oldest_remembered } } else { Decision::Fresh }
    }

    /// Records the result of command `seq` of `session`, applied at `index`.
    pub fn record(&mut self, session: u64, seq: u64, result: Bytes, index: Index) {
        if session == 0 {
            return;
        }
        let s = self.map.entry(session).or_default();
        // A client's pipelined commands mostly share an entry: the session's place in the
        // by-index order moves only when its index does.
        let moved = s.last_index != index;
        if moved && s.last_index != 0 {
            self.by_index.remove(&(s.last_index, session));
        }
        s.last_index = index;
        s.results.insert(seq, result);
        let newest = *s.results.last_key_value().expect("just inserted").0;
        let floor = newest.saturating_sub(self.config.window_max - 1);
        while s.results.first_key_value().is_some_and(|(&k, _)| k < floor) {
            s.results.pop_first();
        }
        if moved {
            self.by_index.insert((index, session));
        }
        while self.map.len() > self.config.sessions_max {
            let (_, victim) = self.by_index.pop_first().expect("non-empty");
            self.map.remove(&victim);
        }
    }

    /// Forgets sessions idle since before `index - expiry_entries`.
    pub fn expire(&mut self, index: Index) {
        let horizon = index.saturating_sub(self.config.expiry_entries);
        while let Some(&(last, session)) = self.by_index.first() {
            if last >= horizon {
                break;
            }
            self.by_index.pop_first();
            self.map.remove(&session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(window_max: u64, sessions_max: usize, expiry_entries: u64) -> Sessions {
        Sessions::new(SessionConfig { sessions_max, window_max, expiry_entries })
    }

    #[test]
    fn a_retry_within_the_window_is_answered_from_the_table() {
        let mut t = table(4, 10, 1000);
        t.record(7, 1, Bytes::from_static(b"one"), 10);
        assert_eq!(t.decide(7, 1), Decision::Duplicate(Bytes::from_static(b"one")));
        assert_eq!(t.decide(7, 2), Decision::Fresh);
        assert_eq!(t.decide(0, 1), Decision::Fresh, "session 0 is never deduplicated");
    }

    #[test]
    fn an_out_of_order_retry_inside_the_window_is_still_fresh() {
        let mut t = table(4, 10, 1000);
        t.record(7, 6, Bytes::new(), 10);
        assert_eq!(t.decide(7, 5), Decision::Fresh, "5 was never applied");
        t.record(7, 9, Bytes::new(), 11);
        assert_eq!(t.decide(7, 5), Decision::Stale { oldest_remembered: 6 });
    }

    #[test]
    fn sessions_expire_by_log_index_and_by_count() {
        let mut t = table(4, 2, 100);
        t.record(1, 1, Bytes::new(), 10);
        t.record(2, 1, Bytes::new(), 20);
        t.record(3, 1, Bytes::new(), 30);
        assert_eq!(t.len(), 2);
        assert_eq!(t.decide(1, 1), Decision::Fresh, "the least recently used went first");
        t.expire(125);
        assert_eq!(t.len(), 1, "session 2 (last at 20) expired at 125 with expiry 100");
        assert!(matches!(t.decide(3, 1), Decision::Duplicate(_)));
    }
}
