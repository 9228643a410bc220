//! The `smr-lincheck` command: verdict on stdout, exit code by verdict.
#![cfg(feature = "json")]

use std::path::PathBuf;
use std::process::Command;

/// Writes `text` to a file unique to this test and runs the command on it.
fn run(name: &str, text: &str) -> (Option<i32>, String) {
    let path: PathBuf = std::env::temp_dir().join(format!("smr-lincheck-{}-{name}.jsonl", std::process::id()));
    std::fs::write(&path, text).expect("temporary directory is writable");
    let output = Command::new(env!("CARGO_BIN_EXE_smr-lincheck")).arg(&path).output().expect("the command runs");
    let _ = std::fs::remove_file(&path);
    (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn linearizable_history_exits_zero() {
    let (code, stdout) = run(
        "ok",
        r#"{"client":1,"key":"x","op":"put","value":"a","invoke_ns":0,"complete_ns":10}
{"client":2,"key":"x","op":"get","invoke_ns":20,"complete_ns":30,"result":"a"}
"#,
    );
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.starts_with("linearizable: 2 operations, 1 keys"), "{stdout}");
}

#[test]
fn stale_read_exits_one_and_explains_the_key() {
    let (code, stdout) = run(
        "violation",
        r#"{"client":1,"key":"x","op":"put","value":"a","invoke_ns":0,"complete_ns":10}
{"client":1,"key":"y","op":"put","value":"a","invoke_ns":0,"complete_ns":10}
{"client":2,"key":"x","op":"get","invoke_ns":20,"complete_ns":30,"result":null}
"#,
    );
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("key \"x\" is not linearizable"), "{stdout}");
    assert!(!stdout.contains("key \"y\" is not"), "{stdout}");
    assert!(stdout.contains("NOT linearizable"), "{stdout}");
}

#[test]
fn malformed_history_exits_three() {
    let (code, _) = run("malformed", "{\"client\":1}\n");
    assert_eq!(code, Some(3));
}

#[test]
fn missing_file_exits_three() {
    let status = Command::new(env!("CARGO_BIN_EXE_smr-lincheck"))
        .arg("/nonexistent/history.jsonl")
        .status()
        .expect("the command runs");
    assert_eq!(status.code(), Some(3));
}
