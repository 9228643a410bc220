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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Put or delete (a delete writes [`ABSENT`]). Acknowledged or not, a write's answer says
    /// nothing about the value it overwrote, so both cases are the same transition.
    Write(ValueId),
    /// A completed read that returned this value.
    Read(ValueId),
    /// A compare-and-swap; `swapped` is `None` when its answer is unknown.
    Cas {
        expected: ValueId,
        new: ValueId,
        swapped: Option<bool>,
    },
}

impl Effect {
    /// The register's value after the operation takes effect on `state`, or `None` if its
    /// answer could not have been produced from `state`.
    fn step(self, state: ValueId) -> Option<ValueId> {
        match self {
            Effect::Write(value) => Some(value),
            Effect::Read(value) => (value == state).then_some(state),
            Effect::Cas {
                expected,
                new,
                swapped,
            } => match swapped {
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
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let zobrist: Vec<u64> = (0..ops.len() as u64).map(|i| splitmix64(i + 1)).collect();
    let mut linearized_hash = 0u64;
    let mut cache = Cache::new(words);

    // Operations with a known outcome still to linearize. Unknown ones never complete, so once
    // this reaches zero they can all take effect after everything else (or never): success.
    let mut definite_remaining = ops.iter().filter(|op| op.complete_time.is_some()).count();
    // (call entry, register value before the operation took effect)
    let mut stack: Vec<(usize, ValueId)> = Vec::new();
    let mut longest_prefix: Vec<usize> = Vec::new();
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
            if let Some(new_state) = ops[op].effect.step(state) {
                linearized[op / 64] |= 1 << (op % 64);
                linearized_hash ^= zobrist[op];
                if cache.insert(linearized_hash, &linearized, new_state) {
                    stack.push((entry, state));
                    state = new_state;
                    list.lift(op);
                    if ops[op].complete_time.is_some() {
                        definite_remaining -= 1;
                    }
                    if stack.len() > longest_prefix.len() {
                        longest_prefix.clear();
                        longest_prefix.extend(stack.iter().map(|&(call, _)| list.op[call]));
                        state_after_prefix = state;
                        (blocked, candidates) = list.frontier();
                    }
                    entry = list.next[HEAD];
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
                linearized_hash ^= zobrist[op];
            }
            entry = list.next[entry];
        } else {
            // A return entry (or, defensively, the tail): the operation it ends had to take
            // effect before anything after it, and no choice so far allows that. Undo the most
            // recent choice and try the next candidate after it.
            let Some((call, previous_state)) = stack.pop() else {
                return SearchOutcome::Violation {
                    steps,
                    longest_prefix,
                    state_after_prefix,
                    blocked,
                    candidates,
                };
            };
            let op = list.op[call];
            state = previous_state;
            linearized[op / 64] &= !(1 << (op % 64));
            linearized_hash ^= zobrist[op];
            list.unlift(op);
            if ops[op].complete_time.is_some() {
                definite_remaining += 1;
            }
            entry = list.next[call];
        }
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
        Self {
            words,
            heads: HashMap::default(),
            bits: Vec::new(),
            states: Vec::new(),
            chain: Vec::new(),
        }
    }

    /// An estimate of the memory held, for the `cache_bytes_max` limit: per entry the bitset,
    /// the value, the chain link, and about 16 bytes of hash table slot.
    fn bytes(&self) -> usize {
        self.states.len() * (self.words * 8 + 4 + 4 + 16)
    }

    /// Inserts the configuration; `false` if it was already present.
    fn insert(&mut self, set_hash: u64, set: &[u64], state: ValueId) -> bool {
        let Cache {
            words,
            heads,
            bits,
            states,
            chain,
        } = self;
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
        KeyOp {
            effect,
            invoke_time,
            complete_time,
        }
    }

    const LIMITS: Limits = Limits {
        steps_max: 1_000_000,
        cache_bytes_max: 1 << 26,
    };

    #[test]
    fn empty_history_is_linearizable() {
        assert!(matches!(
            search(&[], ABSENT, LIMITS),
            SearchOutcome::Linearizable { .. }
        ));
    }

    #[test]
    fn read_of_unwritten_value_reports_the_blocked_read() {
        let ops = [
            op(Effect::Write(1), 0, Some(10)),
            op(Effect::Read(2), 20, Some(30)),
        ];
        match search(&ops, ABSENT, LIMITS) {
            SearchOutcome::Violation {
                longest_prefix,
                state_after_prefix,
                blocked,
                ..
            } => {
                assert_eq!(longest_prefix, vec![0]);
                assert_eq!(state_after_prefix, 1);
                assert_eq!(blocked, Some(1));
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn exhausted_budget_is_reported_not_guessed() {
        let ops = [
            op(Effect::Write(1), 0, Some(10)),
            op(Effect::Read(1), 20, Some(30)),
        ];
        let limits = Limits {
            steps_max: 1,
            ..LIMITS
        };
        assert!(matches!(
            search(&ops, ABSENT, limits),
            SearchOutcome::BudgetExhausted { steps: 1 }
        ));
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
