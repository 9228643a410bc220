//! smr-load against a live cluster: three real `smr node` processes on loopback (started with
//! the library's `LocalCluster`, as smr-bench does), the real `smr-load` binary driving them for
//! about 2 s closed loop with a history and a JSON summary; the summary must be consistent and
//! the history linearizable by smr-lincheck.
//!
//! Needs the `smr` binary beside `smr-load` (`cargo test --workspace` builds it; on its own,
//! `cargo build -p smr` first).

use std::io::BufReader;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use smr_bench::admin;
use smr_bench::cluster::{LocalCluster, smr_binary_beside};
use smr_lincheck::{CheckOptions, CheckOutcome, check, json};

const SMR_LOAD: &str = env!("CARGO_BIN_EXE_smr-load");

fn number(summary: &Value, path: &[&str]) -> f64 {
    let mut value = summary;
    for key in path {
        value = &value[key];
    }
    value.as_f64().unwrap_or_else(|| panic!("{path:?} is not a number in {summary:#}"))
}

/// Answers that were not a success, of one `ErrorCounts` object (`connection` counts broken
/// connections, whose commands are counted in `unanswered`, so it is left out).
fn failed_answers(errors: &Value) -> u64 {
    ["not_leader", "busy", "timed_out", "too_large", "other"]
        .iter()
        .map(|kind| errors.get(kind).map_or(0, |v| v.as_u64().unwrap_or_else(|| panic!("{kind} in {errors}"))))
        .sum()
}

#[test]
fn smr_load_drives_a_live_cluster_and_its_history_is_linearizable() {
    let smr = smr_binary_beside(Path::new(SMR_LOAD)).unwrap_or_else(|e| panic!("{e}"));
    let cluster = LocalCluster::start(&smr, 3, &[]).unwrap_or_else(|e| panic!("{e}"));
    let addresses: Vec<SocketAddr> = cluster.client_addresses();
    admin::wait_for_leader(&addresses, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails(20)));

    let out = tempfile::tempdir().unwrap();
    let history_path = out.path().join("history.jsonl");
    let json_path = out.path().join("summary.json");
    let cluster_flag: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    let output = Command::new(SMR_LOAD)
        .args(["--cluster", &cluster_flag.join(",")])
        .args(["--mode", "closed", "--outstanding", "8", "--connections", "4"])
        // Few keys and a third reads, so that operations on one key overlap and the check has
        // something to decide.
        .args(["--keys", "50", "--read-ratio", "0.33", "--value-bytes", "64"])
        .args(["--warmup-secs", "1", "--duration-secs", "2", "--seed", "7"])
        .arg("--history")
        .arg(&history_path)
        .arg("--json")
        .arg(&json_path)
        .output()
        .expect("run smr-load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "smr-load failed: {}\n{stdout}\n{stderr}\n{}",
        output.status,
        cluster.log_tails(20)
    );
    assert!(stdout.contains("closed loop"), "{stdout}");

    // The summary.
    let summary: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(summary["mode"], "closed");
    assert_eq!((summary["outstanding"].as_u64(), summary["connections"].as_u64()), (Some(8), Some(4)));
    let window = number(&summary, &["window_secs"]);
    assert!((2.0..10.0).contains(&window), "window {window}");
    assert!(number(&summary, &["throughput_ops"]) > 0.0, "{summary:#}");
    let all = number(&summary, &["all", "count"]);
    let writes = number(&summary, &["writes", "count"]);
    let reads = number(&summary, &["reads", "count"]);
    assert!(writes > 0.0 && reads > 0.0, "{summary:#}");
    assert_eq!(all, writes + reads);
    for part in ["all", "writes", "reads"] {
        let percentiles: Vec<f64> = ["p50_us", "p90_us", "p99_us", "p99_9_us", "p99_99_us", "max_us"]
            .iter()
            .map(|p| number(&summary, &[part, p]))
            .collect();
        assert!(percentiles[0] > 0.0, "{part}: {percentiles:?}");
        assert!(percentiles.windows(2).all(|w| w[0] <= w[1]), "{part} percentiles out of order: {percentiles:?}");
    }

    // The history: every operation of the run, warm-up included.
    let text = std::fs::read_to_string(&history_path).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kind = |t: &str| lines.iter().filter(|l| l["type"] == t).count() as u64;
    let (ok, fail, info) = (kind("ok"), kind("fail"), kind("info"));
    assert_eq!(ok + fail + info, lines.len() as u64, "every operation is ok, fail or info");
    // Errors are counted, not hidden: every operation that did not succeed is one error of the
    // summary, or one never answered.
    let errors = failed_answers(&summary["write_errors"])
        + failed_answers(&summary["read_errors"])
        + failed_answers(&summary["errors_outside_window"]);
    assert_eq!(fail + info, errors + summary["unanswered"].as_u64().unwrap(), "{summary:#}");
    // The window's successes are among the history's.
    assert!(ok as f64 >= all, "{ok} ok operations in the history, {all} in the window");
    assert!(lines.iter().any(|l| l["op"] == "put") && lines.iter().any(|l| l["op"] == "get"));

    // Every node timed its group commits: the fsync_ns histogram smr-bench reports from.
    for &address in &addresses {
        let stats = admin::stats(address).unwrap_or_else(|e| panic!("{e}"));
        let fsync = stats.histogram("log", "fsync_ns").unwrap_or_else(|| panic!("no fsync_ns from {address}"));
        assert!(fsync.count > 0 && fsync.mean > 0.0, "{address}: {} fsyncs, mean {} ns", fsync.count, fsync.mean);
    }

    let history = json::parse(BufReader::new(std::fs::File::open(&history_path).unwrap())).unwrap();
    assert_eq!(history.len(), lines.len());
    let result = check(&history, &CheckOptions::default());
    assert_eq!(
        result.outcome(),
        CheckOutcome::Ok,
        "history of {} operations in {}",
        lines.len(),
        history_path.display()
    );
    drop(cluster);
}
