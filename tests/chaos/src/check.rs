//! The verdict on a recorded history: linearizability per key (smr-lincheck's register model,
//! operations of unknown outcome allowed to take effect or not), and no lost write: the value
//! every key holds at the end, read after every fault healed, is one that a write could have
//! left there.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use smr_bench::history::{HistoryOp, HistoryWriter, OpType};
use smr_lincheck::{CheckOptions, CheckOutcome, History, Op, Output};

use crate::workload::FinalRead;

/// How many violations a report spells out in full.
const VIOLATIONS_SHOWN_MAX: usize = 5;

/// What was checked and what was wrong.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    /// Operations in the history checked (final reads included).
    pub operations: u64,
    /// Of which acknowledged writes.
    pub acknowledged_writes: u64,
    /// Of which of unknown outcome.
    pub unknown: u64,
    /// Acknowledged writes missing at the end.
    pub lost_writes: Vec<String>,
    /// Keys whose history is not linearizable, explained.
    pub not_linearizable: Vec<String>,
    /// Keys the linearizability search could not decide within its budget.
    pub undecided: Vec<String>,
}

impl Verdict {
    /// Violations found (a key undecided counts: an unchecked history is no pass).
    pub fn violations(&self) -> usize {
        self.lost_writes.len() + self.not_linearizable.len() + self.undecided.len()
    }

    pub fn is_ok(&self) -> bool {
        self.violations() == 0
    }

    /// A readable summary with the first few violations in full.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} operations checked ({} acknowledged writes, {} of unknown outcome): {} lost writes, \
             {} non-linearizable keys, {} undecided keys\n",
            self.operations,
            self.acknowledged_writes,
            self.unknown,
            self.lost_writes.len(),
            self.not_linearizable.len(),
            self.undecided.len()
        );
        for line in
            self.lost_writes.iter().chain(&self.not_linearizable).chain(&self.undecided).take(VIOLATIONS_SHOWN_MAX)
        {
            let _ = writeln!(text, "{line}");
        }
        text
    }
}

/// The final reads as operations of the history.
fn final_ops(finals: &[FinalRead]) -> Vec<HistoryOp> {
    finals
        .iter()
        .map(|read| HistoryOp::get(u64::MAX, read.key, read.invoke_ns).ok(read.complete_ns, read.value.clone()))
        .collect()
}

/// Checks `ops` with the final reads appended.
pub fn check(ops: &[HistoryOp], finals: &[FinalRead]) -> Verdict {
    let finals_as_ops = final_ops(finals);
    let all: Vec<&HistoryOp> = ops.iter().chain(&finals_as_ops).collect();
    let mut verdict = Verdict {
        operations: all.len() as u64,
        acknowledged_writes: ops.iter().filter(|op| op.op == "put" && op.kind == OpType::Ok).count() as u64,
        unknown: ops.iter().filter(|op| op.kind != OpType::Ok).count() as u64,
        ..Verdict::default()
    };
    verdict.lost_writes = lost_writes(ops, finals);

    let mut history: History<u64, String> = History::new();
    for op in all {
        let (lincheck_op, output) = match op.op {
            "put" => (Op::Put(op.value.clone().unwrap_or_default()), Output::Put),
            _ => (Op::Get, Output::Get(op.result.clone())),
        };
        let is_read = op.op != "put";
        match (op.kind, op.complete_ns) {
            (OpType::Ok, Some(complete)) => {
                let id = history.invoke(op.client, op.key, lincheck_op, op.invoke_ns);
                if let Err(error) = history.complete(id, output, complete) {
                    verdict.not_linearizable.push(format!("malformed history: {error}"));
                }
            }
            // A read of unknown outcome constrains nothing.
            _ if is_read => {}
            _ => {
                let id = history.invoke(op.client, op.key, lincheck_op, op.invoke_ns);
                let _ = history.unknown(id);
            }
        }
    }
    let result = smr_lincheck::check(&history, &CheckOptions::default());
    if result.outcome() != CheckOutcome::Ok {
        for violation in result.violations() {
            verdict.not_linearizable.push(format!("NOT LINEARIZABLE: {violation}"));
        }
        for key in result.unknown_keys() {
            verdict.undecided.push(format!("UNDECIDED: key {key}: the linearizability search ran out of budget"));
        }
    }
    verdict
}

/// Keys whose final value is not one a write could have left: absent though a write was
/// acknowledged, a value nobody wrote, or an acknowledged write's value overwritten by a write
/// that completed before it began.
pub fn lost_writes(ops: &[HistoryOp], finals: &[FinalRead]) -> Vec<String> {
    struct Write<'a> {
        tag: &'a str,
        invoke: u64,
        /// `None`: unknown outcome, may take effect at any time after `invoke`.
        complete: Option<u64>,
    }
    let mut writes: BTreeMap<u64, Vec<Write<'_>>> = BTreeMap::new();
    for op in ops.iter().filter(|op| op.op == "put") {
        let complete = if op.kind == OpType::Ok { op.complete_ns } else { None };
        writes.entry(op.key).or_default().push(Write {
            tag: op.value.as_deref().unwrap_or_default(),
            invoke: op.invoke_ns,
            complete,
        });
    }
    let mut lost = Vec::new();
    for read in finals {
        let Some(key_writes) = writes.get(&read.key) else {
            if let Some(value) = &read.value {
                lost.push(format!("key {}: holds {value:?} at the end, which was never written", read.key));
            }
            continue;
        };
        let last_acknowledged = key_writes.iter().filter(|w| w.complete.is_some()).max_by_key(|w| w.invoke);
        match &read.value {
            None => {
                if let Some(write) = last_acknowledged {
                    lost.push(format!(
                        "LOST WRITE: key {} is absent at the end, but put {:?} was acknowledged at {} ns",
                        read.key,
                        write.tag,
                        write.complete.unwrap_or_default()
                    ));
                }
            }
            Some(value) => {
                let Some(found) = key_writes.iter().find(|w| w.tag == value) else {
                    lost.push(format!("key {}: holds {value:?} at the end, which was never written", read.key));
                    continue;
                };
                let Some(found_complete) = found.complete else { continue };
                // Any acknowledged write that began after `found` completed took effect after it.
                if let Some(newer) = key_writes
                    .iter()
                    .filter(|w| w.complete.is_some() && w.invoke > found_complete)
                    .max_by_key(|w| w.invoke)
                {
                    lost.push(format!(
                        "LOST WRITE: key {} holds {value:?} (acknowledged at {found_complete} ns) at the end, but \
                         put {:?}, invoked later at {} ns, was acknowledged at {} ns",
                        read.key,
                        newer.tag,
                        newer.invoke,
                        newer.complete.unwrap_or_default()
                    ));
                }
            }
        }
    }
    lost
}

/// Writes the history with its final reads as JSON lines (`smr-lincheck FILE` re-checks it).
///
/// # Errors
/// The file cannot be written.
pub fn save_history(path: &Path, ops: &[HistoryOp], finals: &[FinalRead]) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let writer = HistoryWriter::new(Box::new(file));
    for op in ops.iter().chain(&final_ops(finals)) {
        writer.record(op)?;
    }
    writer.flush()?;
    std::io::stderr().flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(client: u64, key: u64, tag: &str, invoke: u64, complete: Option<u64>) -> HistoryOp {
        let op = HistoryOp::put(client, key, tag.to_owned(), invoke);
        match complete {
            Some(at) => op.ok(at, None),
            None => op.with_kind(OpType::Info),
        }
    }

    fn get(client: u64, key: u64, invoke: u64, complete: u64, value: Option<&str>) -> HistoryOp {
        HistoryOp::get(client, key, invoke).ok(complete, value.map(str::to_owned))
    }

    fn final_read(key: u64, value: Option<&str>) -> FinalRead {
        FinalRead { key, value: value.map(str::to_owned), invoke_ns: 1_000_000, complete_ns: 1_000_100 }
    }

    #[test]
    fn a_clean_history_passes() {
        let ops = [put(0, 1, "0.1", 10, Some(20)), get(1, 1, 30, 40, Some("0.1")), put(1, 1, "1.1", 50, None)];
        // The unknown write may or may not have happened.
        for end in ["0.1", "1.1"] {
            let verdict = check(&ops, &[final_read(1, Some(end))]);
            assert!(verdict.is_ok(), "{}", verdict.describe());
            assert_eq!((verdict.operations, verdict.acknowledged_writes, verdict.unknown), (4, 1, 1));
        }
    }

    #[test]
    fn an_acknowledged_write_missing_at_the_end_is_a_lost_write() {
        let ops = [put(0, 1, "0.1", 10, Some(20)), put(0, 1, "0.2", 30, Some(40))];
        let verdict = check(&ops, &[final_read(1, Some("0.1"))]);
        assert_eq!(verdict.lost_writes.len(), 1, "{}", verdict.describe());
        assert!(verdict.lost_writes[0].contains("\"0.2\""), "{}", verdict.describe());
        assert_eq!(verdict.not_linearizable.len(), 1, "the final read also breaks linearizability");
        let verdict = check(&ops, &[final_read(1, None)]);
        assert!(verdict.lost_writes[0].contains("absent"), "{}", verdict.describe());
        let verdict = check(&ops, &[final_read(1, Some("9.9"))]);
        assert!(verdict.lost_writes[0].contains("never written"), "{}", verdict.describe());
    }

    #[test]
    fn concurrent_acknowledged_writes_may_end_either_way() {
        let ops = [put(0, 1, "0.1", 10, Some(50)), put(1, 1, "1.1", 20, Some(40))];
        for end in ["0.1", "1.1"] {
            let verdict = check(&ops, &[final_read(1, Some(end))]);
            assert!(verdict.is_ok(), "{}", verdict.describe());
        }
    }

    #[test]
    fn a_stale_read_during_the_run_is_not_linearizable() {
        let ops = [put(0, 1, "0.1", 10, Some(20)), put(0, 1, "0.2", 30, Some(40)), get(1, 1, 50, 60, Some("0.1"))];
        let verdict = check(&ops, &[final_read(1, Some("0.2"))]);
        assert!(verdict.lost_writes.is_empty());
        assert_eq!(verdict.not_linearizable.len(), 1, "{}", verdict.describe());
        assert!(!verdict.is_ok());
    }

    #[test]
    fn saved_histories_read_back_with_smr_lincheck() {
        let ops = [put(0, 1, "0.1", 10, Some(20)), put(1, 1, "1.1", 30, None)];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        save_history(&path, &ops, &[final_read(1, Some("0.1"))]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let history = smr_lincheck::json::parse_str(&text).unwrap();
        assert_eq!(history.len(), 3);
        assert!(smr_lincheck::check(&history, &CheckOptions::default()).is_ok());
    }
}
