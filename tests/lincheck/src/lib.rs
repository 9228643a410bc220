//! Linearizability checker for histories of a key-value store in which every key is an
//! independent register.
//!
//! # What it owns
//!
//! The verdict "is what the clients saw linearizable?" for the deterministic cluster simulator
//! (`tests/sim`) and the real-process chaos suite. It knows nothing of Raft, the network or
//! storage: it takes a [`History`] of operations with invocation and completion times and
//! answers, per key, [`Verdict::Linearizable`], [`Verdict::Violation`] with an explanation, or
//! [`Verdict::Unknown`] when its budget ran out. Whether acknowledged writes were lost after a
//! crash is a different question and is answered elsewhere.
//!
//! # The model
//!
//! Each key holds `Option<V>`, absent unless [`History::set_initial_value`] says otherwise.
//! Operations are [`Op::Put`], [`Op::Get`], [`Op::Delete`] and [`Op::Cas`] (swap to `new`,
//! which may be `None`, if the value equals `expected`; answer whether it swapped). An operation
//! with a known outcome took effect once, at an instant between its invocation and completion;
//! an operation whose outcome is unknown (timeout, crash) took effect once at any instant after
//! its invocation, or never, and its answer is ignored. Operations that surely failed (the client
//! got "not leader" before sending) must not be recorded at all. Operations whose completion is
//! at the same instant as another's invocation count as concurrent.
//!
//! # The algorithm and its cost
//!
//! Linearizability is local (Herlihy & Wing), so the history is split by key and each key checked
//! alone. A key is checked by Wing & Gong's depth-first search over the time-ordered list of call
//! and return entries with Lowe's improvement, as in Porcupine: a cache of visited
//! configurations (set of linearized operations as a bitset, register value) prunes every
//! revisit, and backtracking undoes list changes in O(1). With `n` operations on a key, at most
//! `c` of them pending at any instant and `d` distinct values, the reachable configurations
//! number at most `n * 2^c * (d + 1)`; a history of a correct system typically needs O(n) steps.
//! Unknown operations never complete, so they add to `c` for the rest of the history. Exact
//! reductions keep that in check (see `search.rs` for why each is exact): unknown gets are
//! dropped; an unknown operation is never linearized where it would not change the value (that
//! only uses it up); unknown operations with the same effect (retries) are used in invocation
//! order only; an unknown write of a value no remaining read or cas observes is tried only just
//! before a failed cas it would explain and, once no failed cas remains, leaves the cache key.
//! What remains exponential is many unknown outcomes on one busy key: with about 200 operations
//! on one key from 8 clients, up to ~5 % unknown outcomes are decided within the default budget
//! even when the history is *not* linearizable (the hard case: every order must be ruled out);
//! at 10-20 % some such histories exhaust it. The verdict is then [`Verdict::Unknown`], never a
//! guess. The search is bounded by [`CheckOptions::search_steps_max`] and
//! [`CheckOptions::cache_bytes_max`] per key.
//!
//! Measured (`cargo bench -p smr-lincheck --bench check`, one core of a shared 2-core machine):
//! 10,000 operations over 100 keys from 8 clients with 1 % unknown outcomes check in about 3 ms;
//! the same 10,000 operations on a single key in about 0.2 s.
//!
//! # What it must never do
//!
//! - Answer "linearizable" without a witness order, or guess when the budget runs out: that is
//!   [`Verdict::Unknown`], which callers must treat as a failure to check.
//! - Panic or hang on any input. Malformed input (a completion before its invocation, an answer
//!   of the wrong kind, a malformed JSON line) is a typed error ([`HistoryError`],
//!   `json::ParseError`) at the point it enters.
//! - Depend on a clock, a global RNG or hash iteration order: the same history gives the same
//!   report, so simulator failures replay exactly.
//!
//! # Example
//!
//! ```
//! use smr_lincheck::{check, CheckOptions, History, Op, Output};
//!
//! let mut history: History<&str, u64> = History::new();
//! let put = history.invoke(1, "x", Op::Put(1), 0);
//! history.complete(put, Output::Put, 10)?;
//! // A read that starts after the put completed must see it.
//! let get = history.invoke(2, "x", Op::Get, 20);
//! history.complete(get, Output::Get(None), 30)?;
//!
//! let result = check(&history, &CheckOptions::default());
//! assert_eq!(result.violations().count(), 1);
//! # Ok::<(), smr_lincheck::HistoryError>(())
//! ```
#![cfg_attr(
    feature = "json",
    doc = r#"
# JSON-lines histories (feature `json`)

[`json::parse`] reads one operation per line (blank lines are skipped) into a
`History<String, String>`; the `smr-lincheck <file.jsonl>` command checks such a file, prints the
verdict per violating or undecided key, and exits 0 if linearizable, 1 on a violation, 2 if
undecided, 3 on unreadable input.

```text
{"client":1,"key":"x","op":"put","value":"a","invoke_ns":100,"complete_ns":250}
{"client":2,"key":"x","op":"get","invoke_ns":120,"complete_ns":300,"result":"a"}
{"client":3,"key":"x","op":"cas","expected":"a","value":null,"invoke_ns":400,"complete_ns":null}
{"client":2,"key":"x","op":"del","invoke_ns":500,"complete_ns":510}
```

| field | meaning |
|---|---|
| `client` | unsigned integer, the client id (reports only) |
| `key` | the register: a string, or an integer read as its decimal text |
| `op` | `"put"`, `"get"`, `"del"` (or `"delete"`), `"cas"` |
| `value` | put: the value written; cas: the new value, `null` to delete |
| `expected` | cas: the value required, `null` for absent |
| `invoke_ns` | unsigned integer, when the client sent it |
| `complete_ns` | unsigned integer when the client got an answer; `null` or missing if the outcome is unknown |
| `result` | get: the value read, `null` for absent; cas: `true`/`false`; ignored otherwise and when the outcome is unknown |

Values, like keys, are strings or integers (`1` and `"1"` are the same value).
"#
)]

mod check;
mod history;
#[cfg(feature = "json")]
pub mod json;
mod search;

pub use check::{CheckOptions, CheckOutcome, CheckResult, KeyReport, Verdict, Violation, check};
pub use history::{History, HistoryError, Op, OpId, Operation, Outcome, Output};
