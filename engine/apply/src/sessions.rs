//! Client sessions: a command retried after a timeout or a leader change is applied once.
//!
//! Each client session has a sequence number per command. The table keeps, per session, the
//! results of the last `window_max` sequence numbers applied; a command whose number is in that
//! window and already applied is answered with the stored result instead of being applied again
//! (Raft thesis §6.3). Commands of one session may be applied out of order (a retry of 5 after 6),
//! which is why it is a window and not a single last number.
//!
//! A session's window is a deque sorted by sequence number: a client numbers its commands in
//! order, so a new result is pushed at the back and the oldest leaves from the front, and a
//! lookup is a binary search over contiguous memory. Profiled at 256 outstanding puts, the
//! B-tree it replaces (an insert, a pop and two searches per command) was a tenth of a
//! follower's apply thread in one profile and half in another.
//!
//! Sessions expire deterministically, by log index, never by a local clock: a session that has
//! not applied a command for `expiry_entries` entries is forgotten, and beyond `sessions_max`
//! the least recently used goes first. Every replica makes the same choices at the same index.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

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
    /// `(seq, result)` of the commands remembered, ascending by `seq`, all within the window
    /// below the newest.
    pub(crate) results: VecDeque<(u64, Bytes)>,
    pub(crate) last_index: Index,
}

impl Session {
    /// The highest sequence number remembered (0 for none).
    fn newest(&self) -> u64 {
        self.results.back().map_or(0, |&(k, _)| k)
    }

    fn result(&self, seq: u64) -> Option<&Bytes> {
        self.results.binary_search_by_key(&seq, |&(k, _)| k).ok().map(|at| &self.results[at].1)
    }

    /// Sets the result of `seq`, keeping the order: at the back for a command newer than all
    /// (the usual case), in its place for a retry that trails.
    fn insert(&mut self, seq: u64, result: Bytes) {
        if seq > self.newest() {
            self.results.push_back((seq, result));
            return;
        }
        match self.results.binary_search_by_key(&seq, |&(k, _)| k) {
            Ok(at) => self.results[at].1 = result,
            Err(at) => self.results.insert(at, (seq, result)),
        }
    }
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
        let newest = s.newest();
        if seq > newest {
            return Decision::Fresh;
        }
        if let Some(result) = s.result(seq) {
            return Decision::Duplicate(result.clone());
        }
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
        s.insert(seq, result);
        let floor = s.newest().saturating_sub(self.config.window_max - 1);
        while s.results.front().is_some_and(|&(k, _)| k < floor) {
            s.results.pop_front();
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
    use proptest::prelude::*;

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

    /// What the window means, written plainly: every result in an ordered map, the entries
    /// below `newest - (window_max - 1)` dropped after each record.
    #[derive(Default)]
    struct Model {
        results: BTreeMap<u64, BTreeMap<u64, Bytes>>,
    }

    impl Model {
        fn decide(&self, window_max: u64, session: u64, seq: u64) -> Decision {
            let Some(results) = self.results.get(&session) else { return Decision::Fresh };
            if let Some(result) = results.get(&seq) {
                return Decision::Duplicate(result.clone());
            }
            let newest = results.last_key_value().map_or(0, |(&k, _)| k);
            let oldest_remembered = newest.saturating_sub(window_max - 1);
            if seq < oldest_remembered { Decision::Stale { oldest_remembered } } else { Decision::Fresh }
        }

        fn record(&mut self, window_max: u64, session: u64, seq: u64, result: Bytes) {
            let results = self.results.entry(session).or_default();
            results.insert(seq, result);
            let floor = results.last_key_value().map_or(0, |(&k, _)| k).saturating_sub(window_max - 1);
            results.retain(|&k, _| k >= floor);
        }
    }

    proptest! {
        /// Commands mostly in order, with retries that trail, repeats, and jumps past the window.
        #[test]
        fn the_window_decides_as_its_plain_definition(
            ops in prop::collection::vec((any::<bool>(), 1u64..4, 0u64..40, prop::option::weighted(0.05, 0u64..1000)), 1..300),
        ) {
            let window_max = 8;
            let mut table = table(window_max, 100, 1_000_000);
            let mut model = Model::default();
            let mut next = [0u64; 4];
            for (i, &(is_record, session, back, jump)) in ops.iter().enumerate() {
                let s = session as usize;
                // Mostly the next number; sometimes one that trails by `back`, or a jump ahead.
                let seq = match jump {
                    Some(j) => next[s] + j,
                    None if back % 4 == 0 => next[s].saturating_sub(back / 4),
                    None => next[s] + 1,
                };
                if is_record {
                    let result = Bytes::from(vec![i as u8]);
                    table.record(session, seq, result.clone(), i as u64 + 1);
                    model.record(window_max, session, seq, result);
                    next[s] = next[s].max(seq);
                } else {
                    prop_assert_eq!(table.decide(session, seq), model.decide(window_max, session, seq), "seq {}", seq);
                }
            }
            for (session, results) in &model.results {
                let kept: Vec<(u64, Bytes)> = results.iter().map(|(&k, v)| (k, v.clone())).collect();
                let table_kept: Vec<(u64, Bytes)> = table.map[session].results.iter().cloned().collect();
                prop_assert_eq!(table_kept, kept);
            }
        }
    }
}
