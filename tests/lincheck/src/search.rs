//! The search for one register: Wing & Gong's depth-first search over the entry list, with
//! Lowe's cache of visited configurations, as in Porcupine's `checkSingle`.
//!
//! The history of one key is turned into a doubly linked list of call and return entries sorted
//! by time. Walking the list from its head, every call entry met before the first return entry
//! is an operation that may take effect next. Linearizing one lifts its call and return out of
//! the list (dancing links, so backtracking restores them in O(1)); meeting a return entry means
//! the operation it ends should have taken effect already, so the search backtracks. A
//! configuration is the set of linearized operations plus the register's value; the same
//! configuration reached twice has the same future, so the cache prunes the second visit.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};

/// A register value, interned: 0 is "absent", `n > 0` is the `n`-th distinct value of the key.
pub(crate) type ValueId = u32;

pub(crate) const ABSENT: ValueId = 0;

/// What one operation does to the register, with values interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Effect {
    /// Put or delete (a delete writes [`ABSENT`]). Acknowledged or not, a write's answer says
    /// nothing about the value it overwrote, so both cases are the same transition.
    Write(ValueId),
    /// A completed read that returned this value.
    Read(ValueId),
    /// A compare-and-swap; `swapped` is `None` when its answer is unknown.
    Cas { expected: ValueId, new: ValueId, swapped: Option<bool> },
}

impl Effect {
    /// The register's value after the operation takes effect on `state`, or `None` if its
    /// answer could not have been produced from `state`.
    fn step(self, state: ValueId) -> Option<ValueId> {
        match self {
            Effect::Write(value) => Some(value),
            Effect::Read(value) => (value == state).then_some(state),
            Effect::Cas { expected, new, swapped } => match swapped {
                Some(true) => (state == expected).then_some(new),
                Some(false) => (state != expected).then_some(state),
                // An unknown answer is unconstrained, but the register is not: if it took effect
                // here it swapped exactly when the value matched.
                None => Some(if state == expected { new } else { state }),
            },
        }
    }
}

/// One operation of the key being checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyOp {
    pub(crate) effect: Effect,
    pub(crate) invoke_time: u64,
    /// `None`: the outcome is unknown, so the operation is pending forever.
    pub(crate) complete_time: Option<u64>,
}

/// Limits of one search.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) steps_max: u64,
    pub(crate) cache_bytes_max: usize,
}

#[derive(Debug)]
pub(crate) enum SearchOutcome {
    Linearizable {
        steps: u64,
    },
    Violation {
        steps: u64,
        /// Indices into the key's operations, in linearization order: the deepest point the
        /// search reached.
        longest_prefix: Vec<usize>,
        state_after_prefix: ValueId,
        /// The completed operation that had to take effect next and could not.
        blocked: Option<usize>,
        /// The operations that could have taken effect at that point.
        candidates: Vec<usize>,
    },
    BudgetExhausted {
        steps: u64,
    },
}

const HEAD: usize = 0;

/// Checks that the operations of one register, starting at `initial`, are linearizable.
///
/// Cost: each step either linearizes an operation into a configuration never seen before,
/// rejects a candidate, or backtracks, so steps are bounded by `limits.steps_max`; memory is
/// bounded by `limits.cache_bytes_max` plus O(n) for the list. Without limits the worst case is
/// exponential in the number of concurrently pending operations, as for every exact checker
/// (the problem is NP-complete).
pub(crate) fn search(ops: &[KeyOp], initial: ValueId, limits: Limits) -> SearchOutcome {
    let mut list = EntryList::new(ops);
    let mut configuration = Configuration::new(ops);
    let mut cache = Cache::new(configuration.words());

    // Operations with a known outcome still to linearize. Unknown ones never complete, so once
    // this reaches zero they can all take effect after everything else (or never): success.
    let mut definite_remaining = ops.iter().filter(|op| op.complete_time.is_some()).count();
    let mut stack: Vec<Frame> = Vec::new();
    // The deepest stack seen, and how many of its first entries the current stack still shares:
    // copying only the part that differs keeps the bookkeeping amortised O(1) per step instead of
    // O(depth), which for a 10,000-operation key was most of the search time.
    let mut longest_prefix: Vec<usize> = Vec::new();
    let mut prefix_shared = 0usize;
    let mut state_after_prefix = initial;
    let (mut blocked, mut candidates) = list.frontier();

    let mut state = initial;
    let mut entry = list.next[HEAD];
    let mut steps = 0u64;
    loop {
        if definite_remaining == 0 {
            return SearchOutcome::Linearizable { steps };
        }
        if steps >= limits.steps_max || cache.bytes() > limits.cache_bytes_max {
            return SearchOutcome::BudgetExhausted { steps };
        }
        steps += 1;

        if let Some(op) = list.call_op(entry) {
            // Which operation to linearize now, if any: `op` itself, or, when `op` is a failed
            // cas that the current value would make succeed, an unread unknown write that takes
            // effect just before it (see `Configuration`).
            let choice = if configuration.is_unobserved_write(op) || !configuration.is_first_unused_twin(op) {
                None
            } else if let Some(new_state) = ops[op].effect.step(state) {
                // An operation with unknown outcome that would not change the value (a cas whose
                // expected value is not the current one, a write of the current value) is never
                // linearized: doing so changes nothing but uses it up, so "it never took effect"
                // (it stays pending) leaves every option open that taking effect here would.
                // Without this, each pending unknown cas doubled the configurations.
                let no_op = ops[op].complete_time.is_none() && new_state == state;
                (!no_op).then_some((op, entry, new_state))
            } else if configuration.failed_cas[op] {
                configuration.first_unobserved_write(&list).and_then(|(write, write_entry)| {
                    ops[write].effect.step(state).map(|new_state| (write, write_entry, new_state))
                })
            } else {
                None
            };
            if let Some((chosen, chosen_entry, new_state)) = choice {
                configuration.apply(chosen);
                if cache.insert(configuration.hash, &configuration.key, new_state) {
                    stack.push(Frame { call: chosen_entry, resume_after: entry, state_before: state });
                    state = new_state;
                    list.lift(chosen);
                    if ops[chosen].complete_time.is_some() {
                        definite_remaining -= 1;
                    }
                    if stack.len() > longest_prefix.len() {
                        longest_prefix.truncate(prefix_shared);
                        longest_prefix.extend(stack[prefix_shared..].iter().map(|frame| list.op[frame.call]));
                        prefix_shared = stack.len();
                        state_after_prefix = state;
                        (blocked, candidates) = list.frontier();
                    }
                    entry = list.next[HEAD];
                    continue;
                }
                configuration.revert(chosen);
            }
            entry = list.next[entry];
        } else {
            // A return entry (or, defensively, the tail): the operation it ends had to take
            // effect before anything after it, and no choice so far allows that. Undo the most
            // recent choice and try the next candidate after it.
            let Some(frame) = stack.pop() else {
                return SearchOutcome::Violation { steps, longest_prefix, state_after_prefix, blocked, candidates };
            };
            prefix_shared = prefix_shared.min(stack.len());
            let op = list.op[frame.call];
            state = frame.state_before;
            configuration.revert(op);
            list.unlift(op);
            if ops[op].complete_time.is_some() {
                definite_remaining += 1;
            }
            entry = list.next[frame.resume_after];
        }
    }
}

/// One choice of the depth-first search.
#[derive(Clone, Copy, Debug)]
struct Frame {
    /// The call entry of the operation linearized.
    call: usize,
    /// The entry at which the choice was made; after undoing it the search resumes with the
    /// entry after this one. The same as `call`, except when an unread unknown write was
    /// linearized on behalf of the failed cas at `resume_after`.
    resume_after: usize,
    /// The register's value before the operation took effect.
    state_before: ValueId,
}

/// The set of linearized operations, and the key under which the cache knows it.
///
/// An unknown put or delete never completes, so it stays a candidate for the rest of the
/// history; tried everywhere, every subset of the unknown writes seen so far would be a distinct
/// configuration: 2^u for u unknown writes, which made a 200-operation key with 20 timeouts
/// undecidable. Two facts cut this down, both about a write of a value `v` that no operation still
/// to be linearized observes (no read of `v`, no cas expecting `v`, completed or not):
///
/// - Had it taken effect now, the register would hold `v`, which every remaining operation
///   overwrites, ignores (an unknown cas expecting another value does not swap, and moved after
///   everything else it changes nothing observable) or accepts only as "not the value I
///   expected" (a failed cas). So it matters only to make a failed cas fail, and then only taking
///   effect immediately before it: a linearization that has it elsewhere can move it there, or
///   after everything (never taking effect). All such writes are interchangeable (their values
///   are equally unobserved), and the earliest invoked is available whenever a later one is, so
///   the search uses exactly that one, on demand, when a failed cas's expected value is the
///   current one.
/// - With no failed cas left either, it is *dead*: whether it took effect is irrelevant. Its bit
///   leaves the cache key, so configurations that differ only in dead writes share one entry.
///
/// Observers are never unknown writes, so the key still determines which writes are dead.
#[derive(Debug)]
struct Configuration {
    linearized: Vec<u64>,
    /// `linearized` without the dead unknown writes.
    key: Vec<u64>,
    /// Zobrist hash of `key`, updated in O(1) per change.
    hash: u64,
    zobrist: Vec<u64>,
    /// For each operation: the value it writes if it is a write with unknown outcome.
    unknown_write: Vec<Option<ValueId>>,
    /// For each operation: the value it could observe (a completed read, any cas's expected).
    observes: Vec<Option<ValueId>>,
    failed_cas: Vec<bool>,
    /// Per value: operations not yet linearized that observe it.
    observers_remaining: Vec<u32>,
    failed_cas_remaining: u32,
    /// Per value: the unknown writes of it, in invocation order.
    unknown_writers: Vec<Vec<usize>>,
    /// For each operation with unknown outcome: its group of twins (unknown operations with the
    /// same effect, such as a client's retries) and its rank in the group by invocation.
    twin_group: Vec<Option<(usize, u32)>>,
    /// Per group of twins: how many are linearized; always the first ones.
    twins_used: Vec<u32>,
    /// Values with at least one unknown writer.
    unknown_written_values: Vec<ValueId>,
}

impl Configuration {
    fn new(ops: &[KeyOp]) -> Self {
        let words = ops.len().div_ceil(64);
        let value_count = ops
            .iter()
            .map(|op| match op.effect {
                Effect::Write(value) | Effect::Read(value) => value,
                Effect::Cas { expected, new, .. } => expected.max(new),
            })
            .max()
            .map_or(1, |value| value as usize + 1);
        let mut configuration = Configuration {
            linearized: vec![0; words],
            key: vec![0; words],
            hash: 0,
            zobrist: (0..ops.len() as u64).map(|i| splitmix64(i + 1)).collect(),
            unknown_write: Vec::with_capacity(ops.len()),
            observes: Vec::with_capacity(ops.len()),
            failed_cas: Vec::with_capacity(ops.len()),
            observers_remaining: vec![0; value_count],
            failed_cas_remaining: 0,
            unknown_writers: vec![Vec::new(); value_count],
            twin_group: vec![None; ops.len()],
            twins_used: Vec::new(),
            unknown_written_values: Vec::new(),
        };
        for (index, op) in ops.iter().enumerate() {
            let unknown_write = match (op.effect, op.complete_time) {
                (Effect::Write(value), None) => Some(value),
                _ => None,
            };
            let observes = match (op.effect, op.complete_time) {
                (Effect::Read(value), Some(_)) => Some(value),
                (Effect::Cas { expected, .. }, _) => Some(expected),
                _ => None,
            };
            let failed_cas = matches!(op.effect, Effect::Cas { swapped: Some(false), .. });
            if let Some(value) = unknown_write {
                let writers = &mut configuration.unknown_writers[value as usize];
                if writers.is_empty() {
                    configuration.unknown_written_values.push(value);
                }
                writers.push(index);
            }
            if let Some(value) = observes {
                configuration.observers_remaining[value as usize] += 1;
            }
            configuration.failed_cas_remaining += u32::from(failed_cas);
            configuration.unknown_write.push(unknown_write);
            configuration.observes.push(observes);
            configuration.failed_cas.push(failed_cas);
        }
        // Ranks follow the order of call entries in the list (see `EntryList::new`).
        let mut unknown: Vec<usize> = (0..ops.len()).filter(|&op| ops[op].complete_time.is_none()).collect();
        unknown.sort_by_key(|&op| (ops[op].invoke_time, op));
        let mut groups: HashMap<Effect, usize> = HashMap::new();
        for op in unknown {
            let next_group = groups.len();
            let group = *groups.entry(ops[op].effect).or_insert(next_group);
            if group == configuration.twins_used.len() {
                configuration.twins_used.push(0);
            }
            // Counts the twins seen so far, in `twins_used` until the search starts.
            let rank = configuration.twins_used[group];
            configuration.twin_group[op] = Some((group, rank));
            configuration.twins_used[group] += 1;
        }
        configuration.twins_used.fill(0);
        configuration
    }

    /// Unknown operations with the same effect (a client's retries, or several deletes) are
    /// interchangeable, and the earlier invoked is available whenever the later is; so a
    /// linearization using some of them can use the earliest ones instead, and the search only
    /// ever offers the earliest unused one. For 4 unknown deletes that is 5 configurations (0 to
    /// 4 used) instead of 16 subsets.
    fn is_first_unused_twin(&self, op: usize) -> bool {
        match self.twin_group[op] {
            Some((group, rank)) => rank == self.twins_used[group],
            None => true,
        }
    }

    fn words(&self) -> usize {
        self.linearized.len()
    }

    fn value_is_dead(&self, value: ValueId) -> bool {
        self.failed_cas_remaining == 0 && self.observers_remaining[value as usize] == 0
    }

    /// Whether `op` is an unknown write whose value no remaining read or cas can observe. The
    /// search never offers it as a candidate of its own: it is either dead, or useful only to
    /// make a failed cas fail, where [`Configuration::first_unobserved_write`] supplies it.
    fn is_unobserved_write(&self, op: usize) -> bool {
        self.unknown_write[op].is_some_and(|value| self.observers_remaining[value as usize] == 0)
    }

    /// The earliest-invoked unobserved unknown write that may take effect now (its call is
    /// before the first pending return), with its call entry.
    fn first_unobserved_write(&self, list: &EntryList) -> Option<(usize, usize)> {
        let mut entry = list.next[HEAD];
        while list.is_call[entry] {
            let op = list.op[entry];
            if self.is_unobserved_write(op) {
                return Some((op, entry));
            }
            entry = list.next[entry];
        }
        None
    }

    fn flip_key(&mut self, op: usize) {
        self.key[op / 64] ^= 1 << (op % 64);
        self.hash ^= self.zobrist[op];
    }

    /// Adds or removes (the operation is its own inverse) the linearized writers of `value` from
    /// the key, when `value` dies or comes back to life.
    fn flip_linearized_writers(&mut self, value: ValueId) {
        for index in 0..self.unknown_writers[value as usize].len() {
            let writer = self.unknown_writers[value as usize][index];
            if self.linearized[writer / 64] & (1 << (writer % 64)) != 0 {
                self.flip_key(writer);
            }
        }
    }

    fn flip_all_dead_values(&mut self) {
        for index in 0..self.unknown_written_values.len() {
            let value = self.unknown_written_values[index];
            if self.observers_remaining[value as usize] == 0 {
                self.flip_linearized_writers(value);
            }
        }
    }

    /// Marks `op` (not dead) linearized. [`Configuration::revert`] is its exact inverse, applied
    /// in last-in first-out order.
    fn apply(&mut self, op: usize) {
        self.linearized[op / 64] |= 1 << (op % 64);
        if let Some((group, _)) = self.twin_group[op] {
            self.twins_used[group] += 1;
        }
        self.flip_key(op);
        if let Some(value) = self.observes[op] {
            self.observers_remaining[value as usize] -= 1;
            if self.value_is_dead(value) {
                self.flip_linearized_writers(value);
            }
        }
        if self.failed_cas[op] {
            self.failed_cas_remaining -= 1;
            if self.failed_cas_remaining == 0 {
                self.flip_all_dead_values();
            }
        }
    }

    fn revert(&mut self, op: usize) {
        if self.failed_cas[op] {
            if self.failed_cas_remaining == 0 {
                self.flip_all_dead_values();
            }
            self.failed_cas_remaining += 1;
        }
        if let Some(value) = self.observes[op] {
            if self.value_is_dead(value) {
                self.flip_linearized_writers(value);
            }
            self.observers_remaining[value as usize] += 1;
        }
        self.flip_key(op);
        if let Some((group, _)) = self.twin_group[op] {
            self.twins_used[group] -= 1;
        }
        self.linearized[op / 64] &= !(1 << (op % 64));
    }
}

/// The call and return entries of one key, sorted by time, as a doubly linked list over arrays.
/// Entry 0 is the head sentinel and the last entry the tail sentinel.
#[derive(Debug)]
struct EntryList {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The operation an entry belongs to (sentinels: unused).
    op: Vec<usize>,
    is_call: Vec<bool>,
    call_entry: Vec<usize>,
    /// `None` for an operation whose outcome is unknown: it has no return entry.
    return_entry: Vec<Option<usize>>,
}

impl EntryList {
    fn new(ops: &[KeyOp]) -> Self {
        // (time, is_return, op): at equal times calls sort before returns, so an operation that
        // completes at the instant another is invoked counts as concurrent with it. With clocks
        // of finite resolution that is the only safe reading.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (index, op) in ops.iter().enumerate() {
            events.push((op.invoke_time, false, index));
            if let Some(complete_time) = op.complete_time {
                events.push((complete_time, true, index));
            }
        }
        events.sort_unstable();

        let count = events.len() + 2;
        let tail = count - 1;
        let mut list = EntryList {
            next: (1..=count).collect(),
            prev: (0..count).map(|i| i.saturating_sub(1)).collect(),
            op: vec![usize::MAX; count],
            is_call: vec![false; count],
            call_entry: vec![HEAD; ops.len()],
            return_entry: vec![None; ops.len()],
        };
        list.next[tail] = tail;
        for (position, &(_, is_return, op)) in events.iter().enumerate() {
            let entry = position + 1;
            list.op[entry] = op;
            list.is_call[entry] = !is_return;
            if is_return {
                list.return_entry[op] = Some(entry);
            } else {
                list.call_entry[op] = entry;
            }
        }
        list
    }

    /// The operation whose call entry `entry` is, if it is one.
    fn call_op(&self, entry: usize) -> Option<usize> {
        self.is_call[entry].then(|| self.op[entry])
    }

    fn remove(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    /// Reinserts an entry removed by [`EntryList::remove`]; valid only in reverse order of
    /// removal, which the depth-first search guarantees.
    fn restore(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = entry;
        self.prev[next] = entry;
    }

    fn lift(&mut self, op: usize) {
        self.remove(self.call_entry[op]);
        if let Some(entry) = self.return_entry[op] {
            self.remove(entry);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(entry) = self.return_entry[op] {
            self.restore(entry);
        }
        self.restore(self.call_entry[op]);
    }

    /// The first pending return (the operation that must take effect soonest) and the calls
    /// before it (the operations that may take effect next).
    fn frontier(&self) -> (Option<usize>, Vec<usize>) {
        let mut candidates = Vec::new();
        let mut entry = self.next[HEAD];
        while entry != self.next.len() - 1 {
            if !self.is_call[entry] {
                return (Some(self.op[entry]), candidates);
            }
            candidates.push(self.op[entry]);
            entry = self.next[entry];
        }
        (None, candidates)
    }
}

/// The set of visited configurations (linearized set, register value).
///
/// Keys are a Zobrist hash of the linearized set, updated in O(1) per step, mixed with the
/// value; a hit is confirmed by comparing the full bitset, so collisions cost time, never
/// correctness. Entries live in flat arrays chained by index to avoid one allocation per entry.
#[derive(Debug)]
struct Cache {
    words: usize,
    heads: HashMap<u64, u32, BuildHasherDefault<PassThroughHasher>>,
    bits: Vec<u64>,
    states: Vec<ValueId>,
    chain: Vec<u32>,
}

const CHAIN_END: u32 = u32::MAX;

impl Cache {
    fn new(words: usize) -> Self {
        Self { words, heads: HashMap::default(), bits: Vec::new(), states: Vec::new(), chain: Vec::new() }
    }

    /// An estimate of the memory held, for the `cache_bytes_max` limit: per entry the bitset,
    /// the value, the chain link, and about 16 bytes of hash table slot.
    fn bytes(&self) -> usize {
        self.states.len() * (self.words * 8 + 4 + 4 + 16)
    }

    /// Inserts the configuration; `false` if it was already present.
    fn insert(&mut self, set_hash: u64, set: &[u64], state: ValueId) -> bool {
        let Cache { words, heads, bits, states, chain } = self;
        let words = *words;
        let key = set_hash ^ splitmix64(u64::from(state) ^ 0xa076_1d64_78bd_642f);
        // Entries beyond u32::MAX - 1 cannot be chained; the byte limit stops the search long
        // before (4 billion entries), but saturate rather than wrap to stay correct regardless.
        let new_index = u32::try_from(states.len()).unwrap_or(CHAIN_END - 1);
        match heads.entry(key) {
            Entry::Occupied(mut head) => {
                let mut at = *head.get();
                while at != CHAIN_END {
                    let index = at as usize;
                    if states[index] == state && bits[index * words..(index + 1) * words] == *set {
                        return false;
                    }
                    at = chain[index];
                }
                chain.push(*head.get());
                head.insert(new_index);
            }
            Entry::Vacant(slot) => {
                chain.push(CHAIN_END);
                slot.insert(new_index);
            }
        }
        states.push(state);
        bits.extend_from_slice(set);
        true
    }
}

/// The cache's keys are already well-mixed 64-bit hashes; hashing them again is wasted work.
#[derive(Debug, Default)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8)) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// SplitMix64's finaliser: a fixed, well-distributed 64-bit mix (no global RNG, so the search
/// is deterministic).
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(effect: Effect, invoke_time: u64, complete_time: Option<u64>) -> KeyOp {
        KeyOp { effect, invoke_time, complete_time }
    }

    const LIMITS: Limits = Limits { steps_max: 1_000_000, cache_bytes_max: 1 << 26 };

    #[test]
    fn empty_history_is_linearizable() {
        assert!(matches!(search(&[], ABSENT, LIMITS), SearchOutcome::Linearizable { .. }));
    }

    #[test]
    fn read_of_unwritten_value_reports_the_blocked_read() {
        let ops = [op(Effect::Write(1), 0, Some(10)), op(Effect::Read(2), 20, Some(30))];
        match search(&ops, ABSENT, LIMITS) {
            SearchOutcome::Violation { longest_prefix, state_after_prefix, blocked, .. } => {
                assert_eq!(longest_prefix, vec![0]);
                assert_eq!(state_after_prefix, 1);
                assert_eq!(blocked, Some(1));
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn exhausted_budget_is_reported_not_guessed() {
        let ops = [op(Effect::Write(1), 0, Some(10)), op(Effect::Read(1), 20, Some(30))];
        let limits = Limits { steps_max: 1, ..LIMITS };
        assert!(matches!(search(&ops, ABSENT, limits), SearchOutcome::BudgetExhausted { steps: 1 }));
    }

    #[test]
    fn cache_detects_repeated_configuration() {
        let mut cache = Cache::new(2);
        assert!(cache.insert(7, &[1, 2], 3));
        assert!(!cache.insert(7, &[1, 2], 3));
        // Same hash, different set or value: a collision, not a hit.
        assert!(cache.insert(7, &[1, 3], 3));
        assert!(cache.insert(7, &[1, 2], 4));
        assert!(!cache.insert(7, &[1, 3], 3));
    }
}
