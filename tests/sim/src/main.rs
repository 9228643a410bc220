//! `smr-sim`: run the simulator over seeds.
//!
//! ```text
//! smr-sim --seed 42              replay one seed, print its report
//! smr-sim --seeds 0..100000      run a range (in parallel over the machine's cores)
//! smr-sim --seeds 0..500 --expect-violation   exit 0 only if some seed fails (planted bugs)
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

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

    let started = Instant::now();
    let next = AtomicU64::new(start);
    let failures = std::sync::Mutex::new(Vec::new());
    let simulated_us = AtomicU64::new(0);
    let [ops, crashes, partitions, membership_changes, leaders] = [(); 5].map(|_| AtomicU64::new(0));
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
                    crashes.fetch_add(report.crashes, Ordering::Relaxed);
                    partitions.fetch_add(report.partitions, Ordering::Relaxed);
                    membership_changes.fetch_add(report.membership_changes, Ordering::Relaxed);
                    leaders.fetch_add(report.leaders_elected as u64, Ordering::Relaxed);
                    if let Some(v) = &report.violation {
                        println!("seed {seed}: {}: {}\n  replay: {}", v.property, v.detail, report.replay_command());
                        failures.lock().expect("not poisoned").push(seed);
                        if expect_violation {
                            next.store(end, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let failures = failures.into_inner().expect("not poisoned");
    let simulated_s = simulated_us.load(Ordering::Relaxed) as f64 / 1e6;
    println!(
        "{} seeds in {elapsed:.1} s on {threads} threads; {simulated_s:.0} simulated s ({:.0}x real time); {} violations",
        end - start,
        simulated_s / elapsed.max(1e-9),
        failures.len()
    );
    println!(
        "checked {} client operations; injected {} crashes, {} partitions, {} membership changes; {} leaders elected",
        ops.load(Ordering::Relaxed),
        crashes.load(Ordering::Relaxed),
        partitions.load(Ordering::Relaxed),
        membership_changes.load(Ordering::Relaxed),
        leaders.load(Ordering::Relaxed)
    );
    if failures.is_empty() == expect_violation { ExitCode::FAILURE } else { ExitCode::SUCCESS }
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
            .field("options", &r.options)
            .finish()
    }
}
