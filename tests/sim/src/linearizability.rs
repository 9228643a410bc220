//! Checks the simulated clients' history with `smr-lincheck` (per-key register model).

use smr_lincheck::{CheckOptions, CheckOutcome, History, Op as CheckOp, Output};

use crate::checker::Violation;
use crate::client::{ClientOp, HistoryOp, Outcome};
use crate::kv::{Op, OpResult};

/// Translates the history and checks it.
///
/// # Errors
/// A [`Violation`] naming the first key whose operations admit no linearization, or saying that
/// the search ran out of budget (never read as success).
pub fn check(history: &[HistoryOp]) -> Result<(), Violation> {
    let mut h: History<u64, u64> = History::new();
    for op in history {
        let (key, check_op) = match op.op {
            ClientOp::Read(key) => (key, CheckOp::Get),
            ClientOp::Write(Op::Put { key, value }) => (key, CheckOp::Put(value)),
            ClientOp::Write(Op::Delete { key }) => (key, CheckOp::Delete),
            ClientOp::Write(Op::Cas { key, expected, new }) => (key, CheckOp::Cas { expected, new: Some(new) }),
        };
        let id = h.invoke(op.client, key, check_op, op.invoke_us);
        let recorded = match op.complete {
            Some((time, outcome)) => {
                let output = match (op.op, outcome) {
                    (_, Outcome::Read(value)) => Output::Get(value),
                    (ClientOp::Write(Op::Put { .. }), Outcome::Written(_)) => Output::Put,
                    (ClientOp::Write(Op::Delete { .. }), Outcome::Written(_)) => Output::Delete,
                    (ClientOp::Write(Op::Cas { .. }), Outcome::Written(OpResult::Cas(swapped))) => Output::Cas(swapped),
                    (op, outcome) => {
                        return Err(Violation {
                            property: "linearizability",
                            detail: format!("client got {outcome:?} for {op:?}"),
                        });
                    }
                };
                h.complete(id, output, time)
            }
            None => h.unknown(id),
        };
        recorded.map_err(|e| Violation { property: "linearizability", detail: format!("malformed history: {e}") })?;
    }
    let result = smr_lincheck::check(&h, &CheckOptions::default());
    match result.outcome() {
        CheckOutcome::Ok => Ok(()),
        CheckOutcome::Violation => {
            let v = result.violations().next().expect("a violation is reported");
            Err(Violation { property: "linearizability", detail: format!("{v}") })
        }
        CheckOutcome::Unknown => Err(Violation {
            property: "linearizability",
            detail: format!("the check ran out of budget on keys {:?}", result.unknown_keys().collect::<Vec<_>>()),
        }),
    }
}
