//! Reading JSON-lines histories (one operation per line) as written by load generators and the
//! chaos suite. The format is documented in the crate documentation.

use std::io::BufRead;

use serde::Deserialize;
use serde_json::Value;

use crate::history::{History, Op, Output};

/// Why a JSON-lines history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Reading the input failed.
    #[error("reading the history: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not a well-formed operation; `line` counts from 1.
    #[error("line {line}: {message}")]
    Line {
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
struct Line {
    client: u64,
    key: Value,
    op: String,
    #[serde(default)]
    value: Value,
    #[serde(default)]
    expected: Value,
    invoke_ns: u64,
    #[serde(default)]
    complete_ns: Option<u64>,
    #[serde(default)]
    result: Value,
}

/// Parses a JSON-lines history. Blank lines are skipped; unknown fields are ignored so that
/// writers may add their own.
///
/// # Errors
/// [`ParseError::Io`] if reading fails, [`ParseError::Line`] naming the first malformed line.
pub fn parse(reader: impl BufRead) -> Result<History<String, String>, ParseError> {
    let mut history = History::new();
    for (index, text) in reader.lines().enumerate() {
        let text = text?;
        if text.trim().is_empty() {
            continue;
        }
        let number = index + 1;
        let error = |message: String| ParseError::Line { line: number, message };
        let line: Line = serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
        add_line(&mut history, line).map_err(error)?;
    }
    Ok(history)
}

/// Parses a JSON-lines history held in memory; see [`parse`].
///
/// # Errors
/// [`ParseError::Line`] naming the first malformed line.
pub fn parse_str(text: &str) -> Result<History<String, String>, ParseError> {
    parse(text.as_bytes())
}

fn add_line(history: &mut History<String, String>, line: Line) -> Result<(), String> {
    let key = scalar(&line.key, "key")?.ok_or("\"key\" must not be null")?;
    let op = match line.op.as_str() {
        "put" => Op::Put(scalar(&line.value, "value")?.ok_or("a put needs a \"value\"")?),
        "get" => Op::Get,
        "del" | "delete" => Op::Delete,
        "cas" => Op::Cas { expected: scalar(&line.expected, "expected")?, new: scalar(&line.value, "value")? },
        other => {
            return Err(format!("unknown op {other:?}; expected \"put\", \"get\", \"del\" or \"cas\""));
        }
    };
    let Some(complete_ns) = line.complete_ns else {
        history.invoke(line.client, key, op, line.invoke_ns);
        return Ok(());
    };
    let output = match &op {
        Op::Put(_) => Output::Put,
        Op::Delete => Output::Delete,
        Op::Get => Output::Get(scalar(&line.result, "result")?),
        Op::Cas { .. } => match line.result {
            Value::Bool(swapped) => Output::Cas(swapped),
            _ => return Err("a completed cas needs a boolean \"result\"".to_owned()),
        },
    };
    let id = history.invoke(line.client, key, op, line.invoke_ns);
    history.complete(id, output, complete_ns).map_err(|e| e.to_string())
}

/// A key or value: a string, or an integer taken as its decimal text; `null` is absent.
fn scalar(value: &Value, field: &str) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(text.clone())),
        Value::Number(number) if number.is_i64() || number.is_u64() => Ok(Some(number.to_string())),
        other => Err(format!("\"{field}\" must be a string, an integer or null, not {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CheckOptions, CheckOutcome, Outcome, check};

    #[test]
    fn documented_example_parses_and_is_linearizable() {
        let text = r#"{"client":1,"key":"x","op":"put","value":"a","invoke_ns":100,"complete_ns":250}
{"client":2,"key":"x","op":"get","invoke_ns":120,"complete_ns":300,"result":"a"}

{"client":3,"key":"x","op":"cas","expected":"a","value":null,"invoke_ns":400,"complete_ns":null}
{"client":2,"key":"x","op":"del","invoke_ns":500,"complete_ns":510}
"#;
        let history = parse_str(text).unwrap();
        assert_eq!(history.len(), 4);
        assert_eq!(history.operations()[2].op, Op::Cas { expected: Some("a".to_owned()), new: None });
        assert_eq!(history.operations()[2].outcome, Outcome::Unknown);
        assert!(check(&history, &CheckOptions::default()).is_ok());
    }

    #[test]
    fn integer_keys_and_values_read_as_their_decimal_text() {
        let text = r#"{"client":1,"key":7,"op":"put","value":1,"invoke_ns":0,"complete_ns":10}
{"client":1,"key":"7","op":"get","invoke_ns":20,"complete_ns":30,"result":"2"}"#;
        let result = check(&parse_str(text).unwrap(), &CheckOptions::default());
        assert_eq!(result.outcome(), CheckOutcome::Violation);
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        let cases = [
            (r#"{"client":1,"key":"x","op":"put","invoke_ns":0}"#, "needs a \"value\""),
            (r#"{"client":1,"key":"x","op":"inc","invoke_ns":0}"#, "unknown op"),
            (r#"{"client":1,"key":[1],"op":"get","invoke_ns":0}"#, "\"key\" must be"),
            (r#"{"client":1,"key":"x","op":"get"}"#, "invoke_ns"),
            (r#"{"client":1,"key":"x","op":"cas","invoke_ns":0,"complete_ns":1,"result":"yes"}"#, "boolean"),
            (r#"{"client":1,"key":"x","op":"del","invoke_ns":5,"complete_ns":1}"#, "before its invocation"),
            ("not json", "expected"),
        ];
        for (line, expected) in cases {
            let text = format!("\n{line}\n");
            match parse_str(&text) {
                Err(ParseError::Line { line: 2, message }) => {
                    assert!(message.contains(expected), "{line}: {message}");
                }
                other => panic!("{line}: expected an error on line 2, got {other:?}"),
            }
        }
    }
}
