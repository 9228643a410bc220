//! Checking a whole history: partition by key, translate each key's operations for the search,
//! and report per key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::Hash;

use crate::history::{History, Op, OpId, Operation, Outcome, Output};
use crate::search::{self, ABSENT, Effect, KeyOp, Limits, SearchOutcome, ValueId};

/// Limits of a check. Every key is searched separately under the same limits, so a whole check
/// costs at most `keys * search_steps_max` steps and holds at most `cache_bytes_max` of cache at
/// a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Search steps allowed per key before its verdict is [`Verdict::Unknown`]. A step is one
    /// candidate tried or one backtrack; a million take roughly 0.1-0.2 s.
    pub search_steps_max: u64,
    /// Memory the search's cache of visited configurations may hold per key before its verdict
    /// is [`Verdict::Unknown`]. An entry costs about `ops_of_key / 8 + 24` bytes.
    pub cache_bytes_max: usize,
}

impl Default for CheckOptions {
    /// 10 million steps and 256 MiB per key: one to two seconds of search, far beyond what any
    /// history of a correct system with bounded concurrency needs.
    fn default() -> Self {
        Self { search_steps_max: 10_000_000, cache_bytes_max: 256 << 20 }
    }
}

/// The verdict on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<K, V> {
    /// Some total order of the key's operations respects real time and register semantics.
    Linearizable,
    /// No such order exists.
    Violation(Box<Violation<K, V>>),
    /// The search ran out of its budget before deciding; never read this as success.
    Unknown,
}

/// Why one key's history is not linearizable, in the terms a person debugging it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation<K, V> {
    /// The register.
    pub key: K,
    /// Its value before the history.
    pub initial_value: Option<V>,
    /// Every operation on the key, in invocation order.
    pub operations: Vec<Operation<K, V>>,
    /// The longest sequence of the key's operations the search could linearize: a legal
    /// sequential order consistent with real time up to the point where it got stuck.
    pub longest_linearizable_prefix: Vec<OpId>,
    /// The register's value after that prefix.
    pub value_after_prefix: Option<V>,
    /// The completed operation that had to take effect next (its completion is the earliest
    /// still pending) and could not; `None` only if the search got stuck on no particular one.
    pub blocked: Option<OpId>,
    /// The other operations that could take effect at that point (invoked before `blocked`
    /// completed and not yet linearized); no order of them lets `blocked` take effect.
    pub candidates: Vec<OpId>,
}

/// How much of a long violation the text report shows; [`Violation`] itself keeps everything.
const PREFIX_TAIL_SHOWN_MAX: usize = 10;
const OPERATIONS_SHOWN_MAX: usize = 40;

impl<K: fmt::Debug, V: fmt::Debug> fmt::Display for Violation<K, V> {
    /// A report a person can read at a glance: where the search got stuck, what it got stuck on,
    /// and the last few operations before that point. Long histories are abridged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {:?} is not linearizable (initial value {:?}, {} operations)",
            self.key,
            self.initial_value,
            self.operations.len()
        )?;
        // `operations` is in invocation order, which is OpId order.
        let find = |id: OpId| {
            self.operations
                .binary_search_by_key(&id, |operation| operation.id)
                .ok()
                .map(|index| &self.operations[index])
        };
        let prefix = &self.longest_linearizable_prefix;
        writeln!(
            f,
            "longest linearizable prefix ({} operations), leaving value {:?}:",
            prefix.len(),
            self.value_after_prefix
        )?;
        let shown_from = prefix.len().saturating_sub(PREFIX_TAIL_SHOWN_MAX);
        if shown_from > 0 {
            writeln!(f, "  ... {shown_from} earlier operations")?;
        }
        for operation in prefix[shown_from..].iter().filter_map(|&id| find(id)) {
            writeln!(f, "  {operation}")?;
        }
        if let Some(operation) = self.blocked.and_then(find) {
            writeln!(f, "then this operation, the first to complete, cannot take effect:\n  {operation}")?;
        }
        if !self.candidates.is_empty() {
            writeln!(f, "whatever order of these concurrent operations precedes it:")?;
            for operation in self.candidates.iter().filter_map(|&id| find(id)) {
                writeln!(f, "  {operation}")?;
            }
        }
        if self.operations.len() <= OPERATIONS_SHOWN_MAX {
            writeln!(f, "all operations on the key:")?;
            for operation in &self.operations {
                writeln!(f, "  {operation}")?;
            }
        }
        Ok(())
    }
}

/// The verdict on one key, with what the search cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyReport<K, V> {
    /// The register.
    pub key: K,
    /// The verdict.
    pub verdict: Verdict<K, V>,
    /// Operations on the key in the history.
    pub operations: usize,
    /// Search steps spent.
    pub search_steps: u64,
}

/// The overall verdict: the worst over all keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Every key is linearizable, hence (P-compositionality) so is the whole history.
    Ok,
    /// At least one key is not linearizable.
    Violation,
    /// No key is proven violating, but at least one ran out of budget.
    Unknown,
}

/// The result of [`check`]: one report per key, in key order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult<K, V> {
    keys: Vec<KeyReport<K, V>>,
}

impl<K, V> CheckResult<K, V> {
    /// The overall verdict.
    pub fn outcome(&self) -> CheckOutcome {
        let mut outcome = CheckOutcome::Ok;
        for report in &self.keys {
            match report.verdict {
                Verdict::Violation(_) => return CheckOutcome::Violation,
                Verdict::Unknown => outcome = CheckOutcome::Unknown,
                Verdict::Linearizable => {}
            }
        }
        outcome
    }

    /// Whether every key was proven linearizable.
    pub fn is_ok(&self) -> bool {
        self.outcome() == CheckOutcome::Ok
    }

    /// Every key's report, in key order.
    pub fn keys(&self) -> &[KeyReport<K, V>] {
        &self.keys
    }

    /// The violation of every violating key.
    pub fn violations(&self) -> impl Iterator<Item = &Violation<K, V>> {
        self.keys.iter().filter_map(|report| match &report.verdict {
            Verdict::Violation(violation) => Some(&**violation),
            _ => None,
        })
    }

    /// The keys whose search ran out of budget.
    pub fn unknown_keys(&self) -> impl Iterator<Item = &K> {
        self.keys.iter().filter(|report| matches!(report.verdict, Verdict::Unknown)).map(|report| &report.key)
    }

    /// Search steps spent over all keys.
    pub fn search_steps(&self) -> u64 {
        self.keys.iter().map(|report| report.search_steps).sum()
    }
}

/// Checks that `history` is linearizable with respect to a map of independent registers.
///
/// Linearizability is compositional (Herlihy & Wing's locality), so each key is checked on its
/// own: a history is linearizable exactly when every key's sub-history is.
pub fn check<K, V>(history: &History<K, V>, options: &CheckOptions) -> CheckResult<K, V>
where
    K: Ord + Clone,
    V: Eq + Hash + Clone,
{
    let mut by_key: BTreeMap<&K, Vec<&Operation<K, V>>> = BTreeMap::new();
    for operation in history.operations() {
        by_key.entry(&operation.key).or_default().push(operation);
    }
    let limits = Limits { steps_max: options.search_steps_max, cache_bytes_max: options.cache_bytes_max };
    let keys = by_key
        .into_iter()
        .map(|(key, operations)| {
            let initial = history.initial_values().get(key).cloned().flatten();
            check_key(key, initial, &operations, limits)
        })
        .collect();
    CheckResult { keys }
}

fn check_key<K, V>(key: &K, initial: Option<V>, operations: &[&Operation<K, V>], limits: Limits) -> KeyReport<K, V>
where
    K: Clone,
    V: Eq + Hash + Clone,
{
    let mut values = Interner::default();
    let initial_id = values.intern(initial.as_ref());
    let (ops, origin) = translate(operations, &mut values);
    let outcome = search::search(&ops, initial_id, limits);
    let (verdict, search_steps) = match outcome {
        SearchOutcome::Linearizable { steps } => (Verdict::Linearizable, steps),
        SearchOutcome::BudgetExhausted { steps } => (Verdict::Unknown, steps),
        SearchOutcome::Violation { steps, longest_prefix, state_after_prefix, blocked, candidates } => {
            let id = |index: usize| operations[origin[index]].id;
            let violation = Violation {
                key: key.clone(),
                initial_value: initial,
                operations: operations.iter().map(|&operation| operation.clone()).collect(),
                longest_linearizable_prefix: longest_prefix.into_iter().map(id).collect(),
                value_after_prefix: values.value(state_after_prefix).cloned(),
                blocked: blocked.map(id),
                candidates: candidates.into_iter().filter(|&candidate| Some(candidate) != blocked).map(id).collect(),
            };
            (Verdict::Violation(Box::new(violation)), steps)
        }
    };
    KeyReport { key: key.clone(), verdict, operations: operations.len(), search_steps }
}

/// Turns a key's operations into search operations, returning also, for each search operation,
/// the index of the operation it came from. Two kinds of operation are left out because no
/// linearization needs them, and each unknown one left out halves the space the search may
/// have to cover:
///
/// - a get whose outcome is unknown: its answer constrains nothing and it changes nothing;
/// - a write whose outcome is unknown and whose value nobody could observe: no completed get
///   returned it, no cas expected it, and the key has no failed cas. Had it taken effect, the
///   register would hold a value that no get, successful cas or failed cas accepts, so the
///   operations linearized after it until the next write are only unknown cas that did not
///   swap; moving those and the write itself after everything else gives a linearization in
///   which the write never took effect. Conversely a linearization without it extends to one
///   with it appended last. So dropping it changes no verdict.
fn translate<K, V>(operations: &[&Operation<K, V>], values: &mut Interner<V>) -> (Vec<KeyOp>, Vec<usize>)
where
    V: Eq + Hash + Clone,
{
    let mut translated: Vec<(usize, KeyOp)> = Vec::with_capacity(operations.len());
    for (index, operation) in operations.iter().enumerate() {
        let (output, complete_time) = match &operation.outcome {
            Outcome::Ok { output, complete_time } => (Some(output), Some(*complete_time)),
            Outcome::Unknown => (None, None),
        };
        let effect = match (&operation.op, output) {
            (Op::Put(value), _) => Effect::Write(values.intern(Some(value))),
            (Op::Delete, _) => Effect::Write(ABSENT),
            (Op::Get, Some(Output::Get(value))) => Effect::Read(values.intern(value.as_ref())),
            // History::complete guarantees a get's output is a get's; an unknown get is dropped.
            (Op::Get, _) => continue,
            (Op::Cas { expected, new }, output) => Effect::Cas {
                expected: values.intern(expected.as_ref()),
                new: values.intern(new.as_ref()),
                swapped: match output {
                    Some(Output::Cas(swapped)) => Some(*swapped),
                    _ => None,
                },
            },
        };
        translated.push((index, KeyOp { effect, invoke_time: operation.invoke_time, complete_time }));
    }

    let has_failed_cas = translated.iter().any(|(_, op)| matches!(op.effect, Effect::Cas { swapped: Some(false), .. }));
    if !has_failed_cas {
        let observable: HashSet<ValueId> = translated
            .iter()
            .filter_map(|(_, op)| match op.effect {
                Effect::Read(value) => Some(value),
                Effect::Cas { expected, .. } => Some(expected),
                Effect::Write(_) => None,
            })
            .collect();
        translated.retain(|(_, op)| {
            let written = match op.effect {
                Effect::Write(value) | Effect::Cas { new: value, .. } => value,
                Effect::Read(_) => return true,
            };
            op.complete_time.is_some() || observable.contains(&written)
        });
    }
    translated.into_iter().map(|(index, op)| (op, index)).unzip()
}

/// Maps a key's values to small integers so configurations are cheap to hash and compare.
#[derive(Debug)]
struct Interner<V> {
    ids: HashMap<V, ValueId>,
    /// `values[id - 1]` is the value of `id`; id 0 is absent.
    values: Vec<V>,
}

impl<V> Default for Interner<V> {
    fn default() -> Self {
        Self { ids: HashMap::new(), values: Vec::new() }
    }
}

impl<V: Eq + Hash + Clone> Interner<V> {
    fn intern(&mut self, value: Option<&V>) -> ValueId {
        let Some(value) = value else {
            return ABSENT;
        };
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        // A key's distinct values are at most its operations plus one, far below u32::MAX for
        // any history that fits in memory; saturating keeps this total regardless.
        let id = ValueId::try_from(self.values.len() + 1).unwrap_or(ValueId::MAX);
        self.values.push(value.clone());
        self.ids.insert(value.clone(), id);
        id
    }

    fn value(&self, id: ValueId) -> Option<&V> {
        (id as usize).checked_sub(1).and_then(|index| self.values.get(index))
    }
}
