//! The simulator's CI run: thousands of seeds, zero violations, every seed replayable.
//!
//! `SMR_SIM_SEEDS=A..B` changes the range (default `0..2000`); for long runs use the binary:
//! `cargo run --release -p smr-sim -- --seeds 0..1000000`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

fn seed_range() -> (u64, u64) {
    let text = std::env::var("SMR_SIM_SEEDS").unwrap_or_else(|_| "0..2000".to_string());
    let (a, b) = text.split_once("..").expect("SMR_SIM_SEEDS is A..B");
    (a.parse().expect("A is a number"), b.parse().expect("B is a number"))
}

#[test]
fn every_seed_keeps_every_safety_and_liveness_property() {
    let (start, end) = seed_range();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = AtomicU64::new(start);
    let failures = Mutex::new(Vec::new());
    let simulated_us = AtomicU64::new(0);
    let ops = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let report = smr_sim::run(seed);
                    simulated_us.fetch_add(report.simulated_us, Ordering::Relaxed);
                    ops.fetch_add(report.history.len() as u64, Ordering::Relaxed);
                    if let Some(v) = report.violation {
                        failures.lock().unwrap().push(format!(
                            "seed {seed}: {}: {}\n    replay: {}",
                            v.property,
                            v.detail,
                            format_args!("cargo run --release -p smr-sim -- --seed {seed}")
                        ));
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let simulated_s = simulated_us.load(Ordering::Relaxed) as f64 / 1e6;
    eprintln!(
        "smr-sim: {} seeds, {} client operations, {simulated_s:.0} simulated s in {elapsed:.1} s ({:.0}x real time)",
        end - start,
        ops.load(Ordering::Relaxed),
        simulated_s / elapsed.max(1e-9)
    );
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} seeds violated a property:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_same_seed_replays_the_same_run() {
    for seed in [3, 17, 99, 1234] {
        let a = smr_sim::run(seed);
        let b = smr_sim::run(seed);
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed} is not deterministic");
        assert_eq!(a.events, b.events);
        assert!(a.events > 1000, "seed {seed} did almost nothing ({} events)", a.events);
    }
    assert_ne!(smr_sim::run(3).trace_hash, smr_sim::run(4).trace_hash, "different seeds, different runs");
}
