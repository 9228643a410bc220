//! The simulator's CI run: thousands of seeds, zero violations, every seed replayable.
//!
//! `SMR_SIM_SEEDS=A..B` changes the range (default `0..2000`); for long runs use the binary:
//! `cargo run --release -p smr-sim -- --seeds 0..1000000`.

fn seed_range() -> (u64, u64) {
    let text = std::env::var("SMR_SIM_SEEDS").unwrap_or_else(|_| "0..2000".to_string());
    let (a, b) = text.split_once("..").expect("SMR_SIM_SEEDS is A..B");
    (a.parse().expect("A is a number"), b.parse().expect("B is a number"))
}

#[test]
fn every_seed_keeps_every_safety_and_liveness_property() {
    let (start, end) = seed_range();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let summary = smr_sim::run_many(start, end, threads, false);
    eprintln!(
        "smr-sim: {} seeds, {} client operations, {} crashes, {} partitions, {} membership changes, \
         {:.0} simulated s in {:.1} s ({:.0}x real time)",
        summary.seeds,
        summary.operations,
        summary.crashes,
        summary.partitions,
        summary.membership_changes,
        summary.simulated_us as f64 / 1e6,
        summary.elapsed.as_secs_f64(),
        summary.speedup()
    );
    let failures: Vec<String> = summary
        .failures
        .iter()
        .map(|(seed, v)| {
            format!("seed {seed}: {}: {}\n    replay: {}", v.property, v.detail, smr_sim::replay_command(*seed))
        })
        .collect();
    assert!(failures.is_empty(), "{} seeds violated a property:\n{}", failures.len(), failures.join("\n"));
    assert!(
        summary.crashes > 0 && summary.partitions > 0 && summary.membership_changes > 0,
        "the faults were injected"
    );
    assert!(
        summary.snapshots_installed > 0 && summary.reads_served > 0 && summary.transfers > 0,
        "snapshots, reads and transfers were exercised: {summary:?}"
    );
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
