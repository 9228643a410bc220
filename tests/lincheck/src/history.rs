//! Recording a client history: invocations, completions and unknown outcomes.

use std::collections::BTreeMap;
use std::fmt;

/// Identifies one operation of a [`History`]: the order in which it was invoked, from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub(crate) usize);

impl OpId {
    /// The position of the operation in [`History::operations`].
    pub fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What a client asked of one key. Every key is an independent register holding `Option<V>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op<V> {
    /// Set the register to `Some(value)`.
    Put(V),
    /// Read the register.
    Get,
    /// Set the register to `None`.
    Delete,
    /// If the register holds `expected`, set it to `new` (`None` deletes) and answer `true`;
    /// otherwise leave it unchanged and answer `false`.
    Cas {
        /// The value the register must hold for the swap to happen (`None`: absent).
        expected: Option<V>,
        /// The value written when it does (`None`: delete).
        new: Option<V>,
    },
}

/// What the system answered to a completed operation. It must match the kind of the [`Op`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output<V> {
    /// A [`Op::Put`] was acknowledged.
    Put,
    /// A [`Op::Get`] returned this value (`None`: absent).
    Get(Option<V>),
    /// A [`Op::Delete`] was acknowledged.
    Delete,
    /// A [`Op::Cas`] answered whether it swapped.
    Cas(bool),
}

/// How an operation ended, as far as the client knows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome<V> {
    /// The client got an answer at `complete_time`; the operation took effect exactly once at
    /// some instant between its invocation and `complete_time`.
    Ok {
        /// The answer.
        output: Output<V>,
        /// When the client received the answer, in the same unit as the invoke time.
        complete_time: u64,
    },
    /// The client never learnt the outcome (timeout, crash, or the history ended first). The
    /// operation may have taken effect once at any instant after its invocation, or never; its
    /// answer constrains nothing.
    Unknown,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<K, V> {
    /// Its identity in the history.
    pub id: OpId,
    /// The client that issued it; used only in reports.
    pub client: u64,
    /// The register it addressed.
    pub key: K,
    /// What it asked.
    pub op: Op<V>,
    /// When the client sent it (any unit, e.g. ns; the same clock as completions).
    pub invoke_time: u64,
    /// How it ended. An operation never completed is [`Outcome::Unknown`].
    pub outcome: Outcome<V>,
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Display for Operation<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} client {} {:?} ", self.id, self.client, self.key)?;
        match &self.op {
            Op::Put(value) => write!(f, "put({value:?})")?,
            Op::Get => write!(f, "get()")?,
            Op::Delete => write!(f, "delete()")?,
            Op::Cas { expected, new } => write!(f, "cas({expected:?} -> {new:?})")?,
        }
        match &self.outcome {
            Outcome::Ok { output, complete_time } => {
                match output {
                    Output::Put | Output::Delete => write!(f, " = ok")?,
                    Output::Get(value) => write!(f, " = {value:?}")?,
                    Output::Cas(swapped) => write!(f, " = {swapped}")?,
                }
                write!(f, " [{}, {}]", self.invoke_time, complete_time)
            }
            Outcome::Unknown => write!(f, " = unknown [{}, +inf)", self.invoke_time),
        }
    }
}

/// A malformed history; the checker refuses it rather than guess.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The id was not returned by this history's [`History::invoke`].
    #[error("operation {0} does not exist in this history")]
    UnknownOperation(OpId),
    /// An operation can end only once.
    #[error("operation {0} already has an outcome")]
    AlreadyCompleted(OpId),
    /// A completion must not precede its invocation.
    #[error("operation {op} completed at {complete_time}, before its invocation at {invoke_time}")]
    CompletedBeforeInvoked {
        /// The operation.
        op: OpId,
        /// When it was invoked.
        invoke_time: u64,
        /// The completion time given.
        complete_time: u64,
    },
    /// The answer is not of the kind the operation produces (e.g. a boolean for a get).
    #[error("operation {0} was given an output of the wrong kind for its operation")]
    OutputMismatch(OpId),
}

/// A concurrent history of operations on many independent registers.
///
/// Invariant: every operation's `Outcome::Ok::complete_time >= invoke_time` and its output has
/// the kind of its op; [`History::complete`] refuses anything else, so a `History` is always
/// well formed and [`crate::check`] cannot fail.
#[derive(Clone, Debug)]
pub struct History<K, V> {
    operations: Vec<Operation<K, V>>,
    /// Operations invoked but not yet given an outcome; they count as unknown when checked.
    completed: Vec<bool>,
    initial_values: BTreeMap<K, Option<V>>,
}

impl<K, V> Default for History<K, V> {
    fn default() -> Self {
        Self { operations: Vec::new(), completed: Vec::new(), initial_values: BTreeMap::new() }
    }
}

impl<K: Ord + Clone, V: Clone> History<K, V> {
    /// An empty history in which every register starts absent.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares the value a register holds before the first operation (default: absent).
    pub fn set_initial_value(&mut self, key: K, value: Option<V>) {
        self.initial_values.insert(key, value);
    }

    /// The value `key` holds before the history starts.
    pub fn initial_value(&self, key: &K) -> Option<&V> {
        self.initial_values.get(key).and_then(Option::as_ref)
    }

    /// Records that `client` sent `op` on `key` at `time`. Until [`History::complete`] is called
    /// the outcome is unknown.
    pub fn invoke(&mut self, client: u64, key: K, op: Op<V>, time: u64) -> OpId {
        let id = OpId(self.operations.len());
        self.operations.push(Operation { id, client, key, op, invoke_time: time, outcome: Outcome::Unknown });
        self.completed.push(false);
        id
    }

    /// Records that the client received `output` for `id` at `time`.
    ///
    /// # Errors
    /// [`HistoryError`] if `id` is not of this history, already ended, `time` precedes the
    /// invocation, or `output` is not the kind `op` produces. The history is then unchanged.
    pub fn complete(&mut self, id: OpId, output: Output<V>, time: u64) -> Result<(), HistoryError> {
        let operation = self.pending_mut(id)?;
        if time < operation.invoke_time {
            return Err(HistoryError::CompletedBeforeInvoked {
                op: id,
                invoke_time: operation.invoke_time,
                complete_time: time,
            });
        }
        let kind_matches = matches!(
            (&operation.op, &output),
            (Op::Put(_), Output::Put)
                | (Op::Get, Output::Get(_))
                | (Op::Delete, Output::Delete)
                | (Op::Cas { .. }, Output::Cas(_))
        );
        if !kind_matches {
            return Err(HistoryError::OutputMismatch(id));
        }
        operation.outcome = Outcome::Ok { output, complete_time: time };
        self.completed[id.0] = true;
        Ok(())
    }

    /// Records that the client gave up on `id` without learning its outcome. Equivalent to never
    /// completing it, but makes the intent explicit and forbids a later completion.
    ///
    /// # Errors
    /// [`HistoryError`] if `id` is not of this history or already ended.
    pub fn unknown(&mut self, id: OpId) -> Result<(), HistoryError> {
        self.pending_mut(id)?;
        self.completed[id.0] = true;
        Ok(())
    }

    fn pending_mut(&mut self, id: OpId) -> Result<&mut Operation<K, V>, HistoryError> {
        match self.completed.get(id.0) {
            None => Err(HistoryError::UnknownOperation(id)),
            Some(true) => Err(HistoryError::AlreadyCompleted(id)),
            Some(false) => Ok(&mut self.operations[id.0]),
        }
    }
}

impl<K, V> History<K, V> {
    /// Every operation, indexed by [`OpId::index`].
    pub fn operations(&self) -> &[Operation<K, V>] {
        &self.operations
    }

    /// The operation `id`, if it belongs to this history.
    pub fn operation(&self, id: OpId) -> Option<&Operation<K, V>> {
        self.operations.get(id.0)
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    /// Whether no operation was recorded.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    pub(crate) fn initial_values(&self) -> &BTreeMap<K, Option<V>> {
        &self.initial_values
    }
}
