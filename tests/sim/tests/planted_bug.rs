//! The simulator's own strength: with a known safety bug planted in the core (behind a
//! test-only cargo feature), the simulator must report a violation within a fixed seed budget.
//!
//! The planted build needs its own feature set, so this test builds and runs it as a separate
//! cargo invocation in its own target directory (about half a minute the first time).

use std::process::Command;

/// Seeds the simulator gets to find the planted bug. Measured: the vote bug is found at seed 30.
const SEED_BUDGET: u64 = 1000;

fn find_planted_bug(feature: &str) -> (bool, String) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let target = format!("{root}/target/planted-{feature}");
    let output = Command::new(env!("CARGO"))
        .current_dir(root)
        .env("CARGO_TARGET_DIR", &target)
        .args(["run", "--quiet", "--release", "-p", "smr-sim", "--features", feature, "--"])
        .args(["--seeds", &format!("0..{SEED_BUDGET}"), "--expect-violation"])
        .output()
        .expect("cargo runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn granting_a_vote_without_the_log_check_is_caught() {
    let (found, output) = find_planted_bug("planted-bug-vote-without-log-check");
    assert!(found, "the planted vote bug was not found within {SEED_BUDGET} seeds:\n{output}");
    assert!(output.contains("replay: cargo run"), "a failure must print the command that replays it:\n{output}");
}
