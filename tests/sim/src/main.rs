//! `smr-sim`: run the simulator over seeds.
//!
//! ```text
//! smr-sim --seed 42              replay one seed, print its report
//! smr-sim --seeds 0..100000      run a range (in parallel over the machine's cores)
//! smr-sim --seeds 0..500 --expect-violation   exit 0 only if some seed fails (planted bugs)
//! ```

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: smr-sim (--seed N | --seeds A..B) [--threads N] [--expect-violation]");
    ExitCode::from(2)
}

fn parse_range(text: &str) -> Option<(u64, u64)> {
    let (a, b) = text.split_once("..")?;
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    (a < b).then_some((a, b))
}

#[allow(clippy::print_stdout)]
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut range = None;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut expect_violation = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--seed" => {
                let Some(seed) = args.get(i + 1).and_then(|s| s.parse::<u64>().ok()) else { return usage() };
                range = Some((seed, seed + 1));
                i += 2;
            }
            "--seeds" => {
                let Some(r) = args.get(i + 1).and_then(|s| parse_range(s)) else {
                    eprintln!("--seeds takes a range A..B with A < B");
                    return usage();
                };
                range = Some(r);
                i += 2;
            }
            "--threads" => {
                let Some(n) = args.get(i + 1).and_then(|s| s.parse::<usize>().ok()).filter(|&n| n > 0) else {
                    eprintln!("--threads takes a positive number");
                    return usage();
                };
                threads = n;
                i += 2;
            }
            "--expect-violation" => {
                expect_violation = true;
                i += 1;
            }
            other => {
                eprintln!("unknown argument {other:?}");
                return usage();
            }
        }
    }
    let Some((start, end)) = range else { return usage() };

    if end - start == 1 {
        let report = smr_sim::run(start);
        println!("{report:#?}", report = Summary(&report));
        return if report.violation.is_some() != expect_violation { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    }

    let summary = smr_sim::run_many(start, end, threads, expect_violation);
    for (seed, v) in &summary.failures {
        println!("seed {seed}: {}: {}\n  replay: {}", v.property, v.detail, smr_sim::replay_command(*seed));
    }
    println!(
        "{} seeds in {:.1} s on {threads} threads; {:.0} simulated s ({:.0}x real time); {} violations",
        summary.seeds,
        summary.elapsed.as_secs_f64(),
        summary.simulated_us as f64 / 1e6,
        summary.speedup(),
        summary.failures.len()
    );
    println!(
        "checked {} client operations; injected {} crashes, {} partitions, {} membership changes; {} leaders elected",
        summary.operations, summary.crashes, summary.partitions, summary.membership_changes, summary.leaders_elected
    );
    println!(
        "exercised: {} snapshots installed, {} linearizable reads served, {} leadership transfers",
        summary.snapshots_installed, summary.reads_served, summary.transfers
    );
    if summary.failures.is_empty() == expect_violation { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// The report without the (long) history.
struct Summary<'a>(&'a smr_sim::Report);

impl std::fmt::Debug for Summary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.0;
        f.debug_struct("Report")
            .field("seed", &r.seed)
            .field("violation", &r.violation)
            .field("trace_hash", &format_args!("{:016x}", r.trace_hash))
            .field("simulated_s", &(r.simulated_us as f64 / 1e6))
            .field("events", &r.events)
            .field("committed_entries", &r.committed_entries)
            .field("leaders_elected", &r.leaders_elected)
            .field("ops_completed", &r.ops_completed)
            .field("ops_unknown", &r.ops_unknown)
            .field("crashes", &r.crashes)
            .field("partitions", &r.partitions)
            .field("membership_changes", &r.membership_changes)
            .field("snapshots_installed", &r.snapshots_installed)
            .field("reads_served", &r.reads_served)
            .field("transfers", &r.transfers)
            .field("options", &r.options)
            .finish()
    }
}
