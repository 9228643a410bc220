//! Running many seeds over all cores, and what they added up to.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::checker::Violation;
use crate::simulator::run;

/// Totals of a run of many seeds.
#[derive(Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    /// Every failing seed with what it violated, in the order found.
    pub failures: Vec<(u64, Violation)>,
    pub simulated_us: u64,
    pub operations: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub membership_changes: u64,
    pub leaders_elected: u64,
    pub snapshots_installed: u64,
    pub reads_served: u64,
    pub transfers: u64,
    pub elapsed: Duration,
}

impl Summary {
    /// Simulated time over wall-clock time.
    pub fn speedup(&self) -> f64 {
        self.simulated_us as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs seeds `start..end` on `threads` threads. With `stop_at_first_violation`, threads stop
/// taking new seeds once one fails (to find a planted bug fast).
pub fn run_many(start: u64, end: u64, threads: usize, stop_at_first_violation: bool) -> Summary {
    let started = Instant::now();
    let next = AtomicU64::new(start);
    let totals = [(); 9].map(|_| AtomicU64::new(0));
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let report = run(seed);
                    for (total, value) in totals.iter().zip([
                        report.simulated_us,
                        report.history.len() as u64,
                        report.crashes,
                        report.partitions,
                        report.membership_changes,
                        report.leaders_elected as u64,
                        report.snapshots_installed,
                        report.reads_served,
                        report.transfers,
                    ]) {
                        total.fetch_add(value, Ordering::Relaxed);
                    }
                    if let Some(v) = report.violation {
                        failures.lock().expect("not poisoned").push((seed, v));
                        if stop_at_first_violation {
                            next.store(end, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let [
        simulated_us,
        operations,
        crashes,
        partitions,
        membership_changes,
        leaders_elected,
        snapshots_installed,
        reads_served,
        transfers,
    ] = totals.map(|t| t.into_inner());
    Summary {
        seeds: end.saturating_sub(start),
        failures: failures.into_inner().expect("not poisoned"),
        simulated_us,
        operations,
        crashes,
        partitions,
        membership_changes,
        leaders_elected,
        snapshots_installed,
        reads_served,
        transfers,
        elapsed: started.elapsed(),
    }
}

/// The command that replays `seed` (with the planted-bug feature this build has, if any).
pub fn replay_command(seed: u64) -> String {
    let features = if cfg!(feature = "planted-bug-vote-without-log-check") {
        " --features planted-bug-vote-without-log-check"
    } else if cfg!(feature = "planted-bug-commit-prior-term") {
        " --features planted-bug-commit-prior-term"
    } else {
        ""
    };
    format!("cargo run --release -p smr-sim{features} -- --seed {seed}")
}
