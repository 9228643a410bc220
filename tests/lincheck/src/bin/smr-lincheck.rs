//! `smr-lincheck <history.jsonl>`: checks a JSON-lines history (format in the crate docs) and
//! prints the verdict. Exit codes: 0 linearizable, 1 violation, 2 undecided (budget exhausted),
//! 3 unreadable input or bad usage.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::process::ExitCode;

use smr_lincheck::{CheckOptions, CheckOutcome, check, json};

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [path] = arguments.as_slice() else {
        eprintln!("usage: smr-lincheck <history.jsonl>");
        return ExitCode::from(3);
    };
    let history =
        match File::open(path).map_err(json::ParseError::from).and_then(|file| json::parse(BufReader::new(file))) {
            Ok(history) => history,
            Err(error) => {
                eprintln!("smr-lincheck: {path}: {error}");
                return ExitCode::from(3);
            }
        };

    let result = check(&history, &CheckOptions::default());
    let mut out = io::stdout().lock();
    // A failed write to stdout (closed pipe) must not turn a violation into success, so the exit
    // code below depends only on the verdict.
    let _ = report(&mut out, &result, history.len());
    ExitCode::from(match result.outcome() {
        CheckOutcome::Ok => 0,
        CheckOutcome::Violation => 1,
        CheckOutcome::Unknown => 2,
    })
}

fn report(
    out: &mut impl Write,
    result: &smr_lincheck::CheckResult<String, String>,
    operations: usize,
) -> io::Result<()> {
    for violation in result.violations() {
        writeln!(out, "{violation}")?;
    }
    for key in result.unknown_keys() {
        writeln!(out, "key {key:?}: undecided, the search budget ran out")?;
    }
    let verdict = match result.outcome() {
        CheckOutcome::Ok => "linearizable",
        CheckOutcome::Violation => "NOT linearizable",
        CheckOutcome::Unknown => "undecided",
    };
    writeln!(
        out,
        "{verdict}: {operations} operations, {} keys, {} violating, {} undecided, {} search steps",
        result.keys().len(),
        result.violations().count(),
        result.unknown_keys().count(),
        result.search_steps()
    )
}
