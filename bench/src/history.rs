//! Operation histories as JSON lines, one line per operation, in the format `smr-lincheck`
//! reads (`client`, `key`, `op`, `value`, `invoke_ns`, `complete_ns`, `result`), so that
//! `smr-lincheck history.jsonl` checks what a load run did. Two more fields name the outcome the
//! Jepsen way, for other readers: `"type"` is `"ok"`, `"fail"` (certainly not applied: not
//! leader, busy, too large, refused) or `"info"` (unknown: timed out, connection lost, still in
//! flight at the end), and `"f"` is `"write"` or `"read"`. Only `ok` operations have a
//! `complete_ns`; the others are written as never completed, which the checker treats as "may
//! or may not have taken effect" (sound for `fail` too, if weaker).

use std::io::{self, Write};
use std::sync::Mutex;

use serde::Serialize;

/// The outcome of one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Ok,
    Fail,
    Info,
}

/// One operation of the history.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryOp {
    /// The connection (process) that ran it.
    pub client: u64,
    pub key: u64,
    /// `"put"` or `"get"`.
    pub op: &'static str,
    /// The value a put wrote (its tag), `None` for a get.
    pub value: Option<String>,
    /// The value a completed get read (`None`: the key was absent).
    pub result: Option<String>,
    pub invoke_ns: u64,
    pub complete_ns: Option<u64>,
    #[serde(rename = "type")]
    pub kind: OpType,
    /// `"write"` or `"read"`.
    pub f: &'static str,
}

impl HistoryOp {
    pub fn put(client: u64, key: u64, value: String, invoke_ns: u64) -> HistoryOp {
        HistoryOp {
            client,
            key,
            op: "put",
            value: Some(value),
            result: None,
            invoke_ns,
            complete_ns: None,
            kind: OpType::Info,
            f: "write",
        }
    }

    pub fn get(client: u64, key: u64, invoke_ns: u64) -> HistoryOp {
        HistoryOp {
            client,
            key,
            op: "get",
            value: None,
            result: None,
            invoke_ns,
            complete_ns: None,
            kind: OpType::Info,
            f: "read",
        }
    }

    /// Completed successfully at `complete_ns`; `result` is what a get read.
    pub fn ok(mut self, complete_ns: u64, result: Option<String>) -> HistoryOp {
        self.kind = OpType::Ok;
        self.complete_ns = Some(complete_ns);
        self.result = result;
        self
    }

    pub fn with_kind(mut self, kind: OpType) -> HistoryOp {
        self.kind = kind;
        self
    }
}

/// Writes operations from many threads to one JSON-lines stream.
pub struct HistoryWriter {
    out: Mutex<io::BufWriter<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for HistoryWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryWriter").finish_non_exhaustive()
    }
}

impl HistoryWriter {
    pub fn new(out: Box<dyn Write + Send>) -> HistoryWriter {
        HistoryWriter { out: Mutex::new(io::BufWriter::with_capacity(1 << 20, out)) }
    }

    pub fn record(&self, op: &HistoryOp) -> io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        serde_json::to_writer(&mut *out, op)?;
        out.write_all(b"\n")
    }

    pub fn flush(&self) -> io::Result<()> {
        self.out.lock().unwrap_or_else(std::sync::PoisonError::into_inner).flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use smr_lincheck::{CheckOptions, CheckOutcome, check, json};

    use super::*;

    /// A `Write` whose bytes can be read back after the writer is done.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn written(ops: &[HistoryOp]) -> String {
        let buffer = Shared::default();
        let writer = HistoryWriter::new(Box::new(buffer.clone()));
        for op in ops {
            writer.record(op).unwrap();
        }
        writer.flush().unwrap();
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn histories_round_trip_through_smr_lincheck() {
        let ops = [
            HistoryOp::put(0, 7, "0.1".into(), 100).ok(200, None),
            HistoryOp::get(1, 7, 150).ok(250, Some("0.1".into())),
            HistoryOp::put(1, 7, "1.1".into(), 300).with_kind(OpType::Info),
            HistoryOp::put(0, 8, "0.2".into(), 310).with_kind(OpType::Fail),
            HistoryOp::get(0, 7, 400).ok(500, Some("1.1".into())),
            HistoryOp::get(0, 9, 600).ok(650, None),
        ];
        let text = written(&ops);
        assert_eq!(text.lines().count(), ops.len());
        assert!(text.lines().next().unwrap().contains(r#""type":"ok","f":"write""#), "{text}");
        let history = json::parse_str(&text).unwrap();
        assert_eq!(history.len(), ops.len());
        assert_eq!(check(&history, &CheckOptions::default()).outcome(), CheckOutcome::Ok);

        // A read of a value never written is caught.
        let bad = [
            HistoryOp::put(0, 7, "0.1".into(), 100).ok(200, None),
            HistoryOp::get(1, 7, 300).ok(400, Some("x".into())),
        ];
        let history = json::parse_str(&written(&bad)).unwrap();
        assert_eq!(check(&history, &CheckOptions::default()).outcome(), CheckOutcome::Violation);
    }
}
