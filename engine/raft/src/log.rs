//! The core's in-memory view of the replicated log.
//!
//! It holds every entry after `base_index` (the point of the last compaction, normally the last
//! snapshot) as reference-counted [`Entry`] values, and tracks how much of it is committed, handed
//! out for persistence, and durable. The durable copy lives in `smr-log`; this view is what the
//! leader replicates from and what the core checks log matching against.

use std::collections::VecDeque;

use crate::types::{Entry, Index, Term};

/// Invariants:
/// - `entries[i].index == base_index + 1 + i`, and terms never decrease along the log;
/// - `base_index <= persisted_index.min(commit_index) <= last_index()` is not required (a
///   follower may know a commit index beyond its log), but `persisted_index <= last_index()`
///   and `unstable_from <= last_index() + 1` are;
/// - `commit_index` never decreases.
#[derive(Debug)]
pub(crate) struct RaftLog {
    base_index: Index,
    base_term: Term,
    entries: VecDeque<Entry>,
    bytes: u64,
    /// The lowest index whose entry was dropped or replaced (a truncated suffix, a snapshot
    /// reset) since [`RaftLog::take_replaced_from`] last asked.
    replaced_from: Option<Index>,
    /// Entries from here on have not yet been handed out in a `Ready`.
    unstable_from: Index,
    /// The highest index this replica knows to be durable in its current log.
    persisted_index: Index,
    commit_index: Index,
}

impl RaftLog {
    /// A log whose durable content is `entries` after a base at `(base_index, base_term)`.
    pub(crate) fn restore(base_index: Index, base_term: Term, entries: Vec<Entry>, commit_index: Index) -> RaftLog {
        let mut log = RaftLog {
            base_index,
            base_term,
            entries: VecDeque::with_capacity(entries.len()),
            bytes: 0,
            replaced_from: None,
            unstable_from: base_index + 1,
            persisted_index: base_index,
            commit_index: commit_index.max(base_index),
        };
        for entry in entries {
            assert_eq!(entry.index, log.last_index() + 1, "restored entries must be consecutive");
            assert!(entry.term >= log.last_term(), "restored entry terms must not decrease");
            log.bytes += entry.size_bytes();
            log.entries.push_back(entry);
        }
        log.unstable_from = log.last_index() + 1;
        log.persisted_index = log.last_index();
        log.commit_index = log.commit_index.min(log.last_index());
        log
    }

    pub(crate) fn base_index(&self) -> Index {
        self.base_index
    }

    pub(crate) fn base_term(&self) -> Term {
        self.base_term
    }

    pub(crate) fn first_index(&self) -> Index {
        self.base_index + 1
    }

    pub(crate) fn last_index(&self) -> Index {
        self.base_index + self.entries.len() as Index
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries.back().map_or(self.base_term, |e| e.term)
    }

    pub(crate) fn commit_index(&self) -> Index {
        self.commit_index
    }

    pub(crate) fn persisted_index(&self) -> Index {
        self.persisted_index
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The term of the entry at `index`, if this view still holds it (or it is the base).
    pub(crate) fn term(&self, index: Index) -> Option<Term> {
        if index == self.base_index {
            return Some(self.base_term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub(crate) fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.base_index {
            return None;
        }
        self.entries.get((index - self.base_index - 1) as usize)
    }

    pub(crate) fn matches(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Whether a log ending at `(last_index, last_term)` is at least as up to date as this one
    /// (Raft §5.4.1).
    pub(crate) fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Entries in `[low, high]`, at most `bytes_max` of them but always at least one when the
    /// range is not empty. `low` must be above the base.
    pub(crate) fn slice(&self, low: Index, high: Index, bytes_max: u64) -> Vec<Entry> {
        assert!(low > self.base_index, "slice from {low} below the log base {}", self.base_index);
        let high = high.min(self.last_index());
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut index = low;
        while index <= high {
            let entry = self.entry(index).expect("index within the log");
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
            index += 1;
        }
        out
    }

    /// Appends one entry the leader created.
    pub(crate) fn push(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index() + 1);
        assert!(entry.term >= self.last_term());
        self.bytes += entry.size_bytes();
        self.entries.push_back(entry);
    }

    /// Appends entries received from the leader after `prev_index`, which must match. Entries
    /// already present with the same term are skipped; the first conflicting one truncates the
    /// rest of the log (§5.3). Returns the index of the last entry of the message, and the first
    /// index written (if anything was), from which the log changed.
    ///
    /// # Panics
    /// If the conflict lies at or below the commit index: committed entries never change, so
    /// that would be a bug in the leader or in this replica.
    pub(crate) fn append_from_leader(&mut self, prev_index: Index, entries: &[Entry]) -> (Index, Option<Index>) {
        let last_new = prev_index + entries.len() as Index;
        let mut first_new = None;
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(entry.index, prev_index + 1 + offset as Index, "leader sent non-consecutive entries");
            match self.term(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    assert!(
                        entry.index > self.commit_index,
                        "conflict at committed index {} (commit {})",
                        entry.index,
                        self.commit_index
                    );
                    self.truncate_from(entry.index);
                    first_new = Some(offset);
                    break;
                }
                None => {
                    if entry.index <= self.base_index {
                        // Already compacted here, hence committed and matching.
                        continue;
                    }
                    first_new = Some(offset);
                    break;
                }
            }
        }
        if let Some(offset) = first_new {
            for entry in &entries[offset..] {
                self.push(entry.clone());
            }
        }
        (last_new, first_new.map(|offset| entries[offset].index))
    }

    /// Drops every entry at or after `index`.
    fn truncate_from(&mut self, index: Index) {
        assert!(index > self.base_index);
        while self.last_index() >= index {
            let entry = self.entries.pop_back().expect("non-empty");
            self.bytes -= entry.size_bytes();
        }
        self.unstable_from = self.unstable_from.min(index);
        self.persisted_index = self.persisted_index.min(index - 1);
        self.note_replaced_from(index);
    }

    fn note_replaced_from(&mut self, index: Index) {
        self.replaced_from = Some(self.replaced_from.map_or(index, |from| from.min(index)));
    }

    /// The lowest index whose entry was dropped or replaced since the last call, if any.
    pub(crate) fn take_replaced_from(&mut self) -> Option<Index> {
        self.replaced_from.take()
    }

    pub(crate) fn commit_to(&mut self, index: Index) -> bool {
        if index > self.commit_index {
            assert!(index <= self.last_index(), "commit {index} beyond the last index {}", self.last_index());
            self.commit_index = index;
            true
        } else {
            false
        }
    }

    /// Entries not yet handed out for persistence; marks them handed out.
    pub(crate) fn take_unstable(&mut self) -> Vec<Entry> {
        if self.unstable_from > self.last_index() {
            return Vec::new();
        }
        let start = (self.unstable_from - self.base_index - 1) as usize;
        let out: Vec<Entry> = self.entries.range(start..).cloned().collect();
        self.unstable_from = self.last_index() + 1;
        out
    }

    pub(crate) fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// Records that the log through `(index, term)` is durable, unless that entry has since been
    /// replaced (a later truncation), in which case a later report will cover it.
    pub(crate) fn persisted_to(&mut self, index: Index, term: Term) -> bool {
        if index > self.persisted_index && index <= self.last_index() && self.matches(index, term) {
            self.persisted_index = index;
            true
        } else {
            false
        }
    }

    /// Replaces the payload of the durable entry at `entry.index` with `entry.data`, the same
    /// bytes held elsewhere (the caller's mapping of its log), so that this view stops holding a
    /// copy of its own. Refused (false) unless this view holds that index, durable, with the same
    /// term, kind and length: by Log Matching an entry of that index and term is the one this view
    /// holds.
    pub(crate) fn rebind(&mut self, entry: Entry) -> bool {
        if entry.index > self.persisted_index {
            return false;
        }
        let Some(offset) = entry.index.checked_sub(self.base_index + 1) else { return false };
        let Some(held) = self.entries.get_mut(offset as usize) else { return false };
        if held.term != entry.term || held.kind != entry.kind || held.data.len() != entry.data.len() {
            return false;
        }
        debug_assert_eq!(held.data, entry.data, "entry {} of term {} differs from the log's", entry.index, entry.term);
        held.data = entry.data;
        true
    }

    /// Drops entries through `index` (which must be durable and committed) from memory.
    pub(crate) fn compact_through(&mut self, index: Index) {
        assert!(index <= self.commit_index && index <= self.persisted_index, "compacting beyond commit or durability");
        while self.base_index < index {
            let entry = self.entries.pop_front().expect("index within the log");
            self.bytes -= entry.size_bytes();
            self.base_index = entry.index;
            self.base_term = entry.term;
        }
    }

    /// Replaces the whole log by a snapshot base (a snapshot received from the leader).
    pub(crate) fn reset_to_snapshot(&mut self, index: Index, term: Term) {
        self.note_replaced_from(self.base_index + 1);
        self.entries.clear();
        self.bytes = 0;
        self.base_index = index;
        self.base_term = term;
        self.unstable_from = index + 1;
        // Durable only once the ready carrying the snapshot is reported persisted. Until then
        // nothing beyond the old commit index may count as durable: entries this replica held
        // past it may conflict with the snapshot, and must never be applied.
        self.persisted_index = self.persisted_index.min(self.commit_index);
        self.commit_index = self.commit_index.max(index);
    }

    /// The last index at or below `index` whose term is at most `term` (the conflict hint of
    /// §5.3's optimisation, as etcd computes it).
    pub(crate) fn last_index_with_term_at_most(&self, index: Index, term: Term) -> Index {
        let mut i = index.min(self.last_index());
        while i > self.base_index {
            match self.term(i) {
                Some(t) if t <= term => return i,
                _ => i -= 1,
            }
        }
        self.base_index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryKind;
    use bytes::Bytes;

    fn entry(index: Index, term: Term) -> Entry {
        Entry { index, term, kind: EntryKind::Normal, data: Bytes::from_static(b"x") }
    }

    fn log_of(terms: &[Term]) -> RaftLog {
        let entries = terms.iter().enumerate().map(|(i, &t)| entry(i as Index + 1, t)).collect();
        RaftLog::restore(0, 0, entries, 0)
    }

    #[test]
    fn conflicting_suffix_is_truncated_and_replaced() {
        let mut log = log_of(&[1, 1, 2, 2]);
        let (last, first_written) = log.append_from_leader(2, &[entry(3, 3), entry(4, 3), entry(5, 3)]);
        assert_eq!((last, first_written), (5, Some(3)));
        assert_eq!(log.term(3), Some(3));
        assert_eq!(log.last_index(), 5);
        assert_eq!(log.persisted_index(), 2, "durable copy of replaced entries no longer counts");
    }

    #[test]
    fn duplicate_append_changes_nothing() {
        let mut log = log_of(&[1, 1, 2]);
        log.take_unstable();
        let (last, first_written) = log.append_from_leader(1, &[entry(2, 1)]);
        assert_eq!((last, first_written), (2, None));
        assert_eq!(log.last_index(), 3, "an old append must not truncate newer matching entries");
        assert!(!log.has_unstable());
    }

    #[test]
    #[should_panic(expected = "conflict at committed index")]
    fn conflict_at_a_committed_index_is_a_bug() {
        let mut log = log_of(&[1, 1, 2]);
        log.commit_to(3);
        log.append_from_leader(2, &[entry(3, 3)]);
    }

    #[test]
    fn persisted_report_for_a_replaced_entry_is_ignored() {
        let mut log = log_of(&[]);
        log.append_from_leader(0, &[entry(1, 1), entry(2, 1)]);
        log.take_unstable();
        log.append_from_leader(1, &[entry(2, 2)]);
        assert!(!log.persisted_to(2, 1));
        assert!(log.persisted_to(2, 2));
    }

    #[test]
    fn conflict_hint_skips_a_whole_term() {
        let log = log_of(&[1, 1, 1, 4, 4, 4, 4]);
        assert_eq!(log.last_index_with_term_at_most(7, 3), 3);
        assert_eq!(log.last_index_with_term_at_most(7, 4), 7);
        assert_eq!(log.last_index_with_term_at_most(2, 0), 0);
    }

    #[test]
    fn only_durable_entries_of_the_same_term_kind_and_length_are_rebound() {
        let mut log = RaftLog::restore(0, 0, Vec::new(), 0);
        for index in 1..=4 {
            log.push(Entry { index, term: 2, kind: EntryKind::Normal, data: Bytes::from(vec![index as u8; 8]) });
        }
        assert!(log.persisted_to(3, 2));
        let same =
            |index: Index| Entry { index, term: 2, kind: EntryKind::Normal, data: Bytes::from(vec![index as u8; 8]) };
        let elsewhere = same(2);
        let pointer = elsewhere.data.as_ptr();
        assert!(log.rebind(elsewhere));
        assert_eq!(log.entry(2).unwrap().data.as_ptr(), pointer, "the view holds the given bytes now");
        assert!(!log.rebind(same(4)), "not durable yet");
        assert!(!log.rebind(Entry { term: 1, ..same(1) }), "another term");
        assert!(!log.rebind(Entry { kind: EntryKind::ConfChange, ..same(1) }), "another kind");
        assert!(!log.rebind(Entry { data: Bytes::from(vec![1; 9]), ..same(1) }), "another length");
        assert!(!log.rebind(same(9)), "beyond the log");
        let mut log2 = RaftLog::restore(5, 2, vec![same(6)], 6);
        assert!(!log2.rebind(same(5)), "the base itself holds no entry");
        assert!(log2.rebind(same(6)));
        assert_eq!(log.entry(1).unwrap().data, same(1).data, "refused rebinds change nothing");
    }

    #[test]
    fn the_lowest_replaced_index_is_reported_once() {
        let mut log = log_of(&[1, 1, 1, 1, 1]);
        assert_eq!(log.take_replaced_from(), None);
        let entry = |index, term| Entry { index, term, kind: EntryKind::Normal, data: Bytes::new() };
        log.append_from_leader(3, &[entry(4, 2), entry(5, 2)]);
        log.append_from_leader(2, &[entry(3, 3)]);
        assert_eq!(log.take_replaced_from(), Some(3), "the lower of two truncations");
        assert_eq!(log.take_replaced_from(), None, "reported once");
        log.append_from_leader(3, &[entry(4, 3)]);
        assert_eq!(log.take_replaced_from(), None, "appending past the end replaces nothing");
        log.reset_to_snapshot(10, 4);
        assert_eq!(log.take_replaced_from(), Some(1));
    }

    #[test]
    fn compaction_keeps_the_term_of_the_base() {
        let mut log = log_of(&[1, 2, 3]);
        log.commit_to(2);
        log.compact_through(2);
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.term(2), Some(2));
        assert_eq!(log.term(1), None);
        assert_eq!(log.slice(3, 3, 0).len(), 1, "at least one entry whatever the byte limit");
    }
}
