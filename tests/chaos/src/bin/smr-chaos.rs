//! `smr-chaos`: long randomised chaos runs and performance under faults.
//!
//! - `smr-chaos soak --duration-secs N --seed S --nodes 3|5`: rounds of a fresh cluster under a
//!   recorded workload and a random schedule of faults (every fault of the suite, rolling
//!   restarts included), each round checked; prints operations checked, faults injected by kind
//!   and violations found, and exits 1 if any was found.
//! - `smr-chaos perf`: throughput and p99 of a closed-loop write load (smr-bench's driver) with
//!   all nodes up, with one follower down, with one follower's link slow and with every link
//!   delayed (the suite's delayed-links fault), and the time to recover full throughput after the
//!   leader is killed.
//!
//! - `smr-chaos delay --queue N --delay-ms D --jitter-ms J --seed S`: the delayer behind an
//!   NFQUEUE queue (see `smr_chaos::delay`): holds every packet of queue `N` for `D` ms plus a
//!   random `[0, J]` ms, prints `ready` once bound and, on SIGTERM, its counts as one JSON line.
//!   The harness starts it inside a host's namespace; it is not meant to be run by hand, but can
//!   be, as root, next to an `iptables ... -j NFQUEUE --queue-num N --queue-bypass` rule.
//!
//! Soak and perf need root for network namespaces (without, soak uses process faults only and
//! perf skips the slow link) and the `smr` binary next to this one
//! (`cargo build -p smr -p smr-bench`).

use std::collections::BTreeMap;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use smr_bench::history::HistoryWriter;
use smr_bench::keys::Distribution;
use smr_bench::load::{self, LoadSpec, Observers, StepLoad};
use smr_chaos::cluster::{Cluster, ELECTION_TIMEOUT};
use smr_chaos::delay::{self, DELAY_MS_MAX, DelayLimits, DelaySpec};
use smr_chaos::nemesis::{DELAYED_LINK_DELAY_MS, DELAYED_LINK_JITTER_MS, Fault, Run};
use smr_chaos::workload::WorkloadSpec;
use smr_raft::SplitMix64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soak_flags_are_checked() {
        let parse = |flags: &[&str]| Args::try_parse_from(["smr-chaos", "soak"].iter().chain(flags));
        assert!(parse(&["--duration-secs", "10", "--nodes", "5"]).is_ok());
        let error = parse(&["--duration-secs", "10", "--nodes", "4"]).unwrap_err();
        assert!(error.to_string().contains("3 or 5 nodes"), "{error}");
        assert!(parse(&["--duration-secs", "0"]).is_err());
        assert!(parse(&[]).unwrap_err().to_string().contains("--duration-secs"));
    }

    #[test]
    fn delay_flags_are_checked() {
        let parse = |flags: &[&str]| Args::try_parse_from(["smr-chaos", "delay"].iter().chain(flags));
        assert!(parse(&["--queue", "3", "--delay-ms", "20", "--jitter-ms", "10", "--seed", "1"]).is_ok());
        assert!(parse(&["--queue", "3", "--delay-ms", "20"]).is_ok(), "jitter and seed have defaults");
        let error = parse(&["--queue", "3", "--delay-ms", "10001"]).unwrap_err();
        assert!(error.to_string().contains("10001"), "{error}");
        assert!(parse(&["--queue", "65536", "--delay-ms", "1"]).is_err());
        assert!(parse(&["--queue", "1", "--delay-ms", "1", "--held-packets-max", "0"]).is_err());
        assert!(parse(&["--delay-ms", "1"]).unwrap_err().to_string().contains("--queue"));
    }
}

#[derive(Debug, Parser)]
#[command(name = "smr-chaos", about = "Chaos soak and performance under faults for smr clusters")]
struct Args {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Random fault schedules for a while, every history checked.
    Soak {
        /// How long to run, in seconds (rounds started before the end run to completion).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        duration_secs: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Nodes per cluster.
        #[arg(long, default_value_t = 3, value_parser = three_or_five)]
        nodes: u64,
        /// Seconds of faults per round (one cluster, one history).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(5..))]
        round_secs: u64,
    },
    /// Throughput and p99 with a follower down, with a slow follower link, with every link
    /// delayed, and the recovery after the leader is killed.
    Perf {
        /// Seconds measured per phase.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
        phase_secs: u64,
        /// Rate of the slow follower link, kbit/s.
        #[arg(long, default_value_t = 2_000)]
        slow_kbit: u32,
    },
    /// The delayer behind an NFQUEUE queue: every packet of the queue held for --delay-ms plus a
    /// random [0, --jitter-ms] ms, then accepted (run by the harness inside a host's namespace).
    Delay {
        /// The NFQUEUE queue number (the rule's --queue-num).
        #[arg(long)]
        queue: u16,
        /// Milliseconds every packet is held at least.
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=i64::from(DELAY_MS_MAX)))]
        delay_ms: u32,
        /// Milliseconds of uniformly random extra hold per packet, at most.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=i64::from(DELAY_MS_MAX)))]
        jitter_ms: u32,
        /// Seed of the per-packet jitter.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Packets held at once; more are accepted at once (and counted).
        #[arg(long, default_value_t = DelayLimits::default().held_packets_max,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 20))]
        held_packets_max: usize,
        /// The kernel queue's length; more are accepted by the kernel (fail-open).
        #[arg(long, default_value_t = DelayLimits::default().kernel_queue_packets_max,
              value_parser = clap::value_parser!(u32).range(1..=1 << 16))]
        kernel_queue_packets_max: u32,
    },
}

fn three_or_five(text: &str) -> Result<u64, String> {
    match text.trim() {
        "3" => Ok(3),
        "5" => Ok(5),
        other => Err(format!("{other:?}: a soak cluster has 3 or 5 nodes")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Commands::Delay { queue, delay_ms, jitter_ms, seed, held_packets_max, kernel_queue_packets_max } =
        args.command
    {
        let spec = DelaySpec { delay_ms, jitter_ms, seed };
        let limits = DelayLimits { held_packets_max, kernel_queue_packets_max };
        return delayer(queue, spec, limits);
    }
    if let Err(error) = smr_chaos::cluster::binary("smr") {
        eprintln!("smr-chaos: {error}");
        return ExitCode::FAILURE;
    }
    match args.command {
        Commands::Soak { duration_secs, seed, nodes, round_secs } => soak(duration_secs, seed, nodes, round_secs),
        Commands::Perf { phase_secs, slow_kbit } => perf(phase_secs, slow_kbit),
        Commands::Delay { .. } => unreachable!("the delayer was started above"),
    }
}

/// Exit code of a delayer that stopped on an error (1 is a panic's).
const DELAYER_FAILED: u8 = 2;

fn delayer(queue: u16, spec: DelaySpec, limits: DelayLimits) -> ExitCode {
    let ready = || {
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "ready");
        let _ = stdout.flush();
    };
    match delay::run(queue, spec, limits, ready) {
        Ok(stats) => {
            let line = serde_json::to_string(&stats).expect("the counts serialise");
            let _ = writeln!(std::io::stdout(), "{line}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("smr-chaos delay: {error}");
            ExitCode::from(DELAYER_FAILED)
        }
    }
}

/// Writes to stdout, ignoring a closed pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn soak(duration_secs: u64, seed: u64, nodes: u64, round_secs: u64) -> ExitCode {
    let end = Instant::now() + Duration::from_secs(duration_secs);
    let mut rng = SplitMix64::new(smr_raft::mix(seed));
    let mut operations = 0u64;
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let mut violations = 0usize;
    let mut round = 0u64;
    while Instant::now() < end {
        round += 1;
        let round_seed = rng.next_u64();
        let remaining = end.saturating_duration_since(Instant::now()).as_secs().max(5);
        let length = Duration::from_secs(round_secs.min(remaining));
        say!("round {round}: seed {round_seed}, {nodes} nodes, {length:?} of faults");
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| soak_round(round_seed, nodes, length)));
        match outcome {
            Ok(report) => {
                operations += report.verdict.operations;
                for (name, count) in &report.faults {
                    *faults.entry((*name).to_owned()).or_default() += count;
                }
                violations += report.violations();
                say!("round {round}: {}", report.describe().trim_end());
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                violations += 1;
                say!("round {round}: FAILED (seed {round_seed}): {message}");
            }
        }
    }
    say!("soak of {duration_secs} s, seed {seed}, {nodes} nodes, {round} rounds");
    say!("operations checked: {operations}");
    let total: u64 = faults.values().sum();
    say!("faults injected: {total}");
    for (name, count) in &faults {
        say!("  {name:<30} {count}");
    }
    say!("violations found: {violations}");
    if violations == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn soak_round(seed: u64, nodes: u64, length: Duration) -> smr_chaos::nemesis::RunReport {
    let spec = WorkloadSpec { seed, ..WorkloadSpec::default() };
    let mut run = Run::start("soak", nodes, false, &spec).expect("soak takes whatever faults are possible");
    let network = run.cluster.network_faults_possible();
    let faults: Vec<Fault> = Fault::ALL.into_iter().filter(|f| network || !f.needs_network()).collect();
    let end = Instant::now() + length;
    run.quiet(Duration::from_secs(1));
    while Instant::now() < end {
        // One in twelve is a rolling restart; the rest one fault from the list.
        let pick = run.rng.below(faults.len() as u64 + 1) as usize;
        if pick == faults.len() {
            run.rolling_restart();
        } else {
            let hold = Duration::from_millis(run.rng.range(1_000, 5_000));
            run.inject(faults[pick], hold);
        }
        let quiet = Duration::from_millis(run.rng.range(500, 2_500));
        run.quiet(quiet);
    }
    run.finish()
}

/// A `Write` into memory shared with the reader of the history.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn load_spec(phase_secs: u64, seed: u64) -> LoadSpec {
    LoadSpec {
        outstanding: 32,
        connections: 4,
        keys: 10_000,
        distribution: Distribution::Uniform,
        read_ratio: 0.0,
        rate: None,
        value_bytes: 128,
        seed,
        session_base: load::session_base(),
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(phase_secs),
    }
}

fn row(name: &str, step: &StepLoad) {
    let ops = step.completed as f64 / step.window.as_secs_f64().max(1e-9);
    let ms = |q: f64| step.latency.value_at_quantile(q) as f64 / 1e6;
    say!(
        "{name:<34} {ops:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>8}",
        ms(0.5),
        ms(0.99),
        step.latency.max() as f64 / 1e6,
        step.errors_window.total()
    );
}

fn step(cluster: &Cluster, spec: &LoadSpec) -> Result<StepLoad, String> {
    let target = cluster.client_address(cluster.leader());
    load::run_step(target, &cluster.client_addresses(), spec, || (), || ()).map(|(load, (), ())| load)
}

fn perf(phase_secs: u64, slow_kbit: u32) -> ExitCode {
    match std::panic::catch_unwind(|| perf_phases(phase_secs, slow_kbit)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("smr-chaos perf: {error}");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    }
}

fn perf_phases(phase_secs: u64, slow_kbit: u32) -> Result<(), String> {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    say!("smr-chaos perf: 3 nodes, closed loop of 32 puts of 128 B over 4 connections, {phase_secs} s per phase");
    say!("{:<34} {:>10} {:>9} {:>9} {:>9} {:>8}", "phase", "ops/s", "p50 ms", "p99 ms", "max ms", "errors");
    let all_up = step(&cluster, &load_spec(phase_secs, 1))?;
    row("all up", &all_up);

    let follower = cluster.ids().into_iter().find(|&id| id != leader).ok_or("no follower")?;
    cluster.kill(follower);
    let down = step(&cluster, &load_spec(phase_secs, 2))?;
    row(&format!("follower {follower} down"), &down);
    cluster.spawn(follower);
    cluster.converged();

    if cluster.network_faults_possible() {
        let leader = cluster.leader();
        let follower = cluster.ids().into_iter().find(|&id| id != leader).ok_or("no follower")?;
        cluster.slow_link(follower, slow_kbit);
        let slow = step(&cluster, &load_spec(phase_secs, 3))?;
        row(&format!("follower {follower} link at {slow_kbit} kbit/s"), &slow);
        cluster.heal_network();
        cluster.converged();
        // Every node's peer packets delayed as under the suite's delayed-links fault.
        for id in cluster.ids() {
            let spec = DelaySpec { delay_ms: DELAYED_LINK_DELAY_MS, jitter_ms: DELAYED_LINK_JITTER_MS, seed: id };
            cluster.delay_link(id, spec);
        }
        let delayed = step(&cluster, &load_spec(phase_secs, 5))?;
        cluster.heal_network();
        row(&format!("links delayed {DELAYED_LINK_DELAY_MS} + [0, {DELAYED_LINK_JITTER_MS}] ms"), &delayed);
        cluster.converged();
    } else {
        say!("follower link slow, links delayed: NOT MEASURED (no network namespaces: run as root)");
    }

    // Recovery: the load runs throughout; the leader is killed in the middle; completions are
    // binned in 100 ms from the history.
    let buffer = Shared::default();
    let history = Arc::new(HistoryWriter::new(Box::new(buffer.clone())));
    let spec = LoadSpec { warmup: Duration::ZERO, ..load_spec(phase_secs * 2, 4) };
    let addresses = cluster.client_addresses();
    let leader = cluster.leader();
    let target = cluster.client_address(leader);
    let started = Instant::now();
    let loader = std::thread::spawn(move || {
        let observers = Observers { history: Some(history), monitor: None };
        load::run_step_observed(target, &addresses, &spec, &observers, || (), || ()).map(|(load, (), ())| load)
    });
    std::thread::sleep(Duration::from_secs(phase_secs));
    let killed_at = started.elapsed();
    cluster.kill(leader);
    let recovered = loader.join().map_err(|_| "the load thread panicked")??;
    let text = String::from_utf8_lossy(&buffer.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned();
    let mut completions: Vec<u64> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|op| op["type"] == "ok")
        .filter_map(|op| op["complete_ns"].as_u64())
        .collect();
    completions.sort_unstable();
    const BIN_NS: u64 = 100_000_000;
    let kill_ns = killed_at.as_nanos() as u64;
    let bins = (completions.last().copied().unwrap_or(0) / BIN_NS + 1) as usize;
    let mut per_bin = vec![0u64; bins];
    for &at in &completions {
        per_bin[(at / BIN_NS) as usize] += 1;
    }
    let kill_bin = (kill_ns / BIN_NS) as usize;
    // Full throughput: the mean of the second before the kill (the first second is ramp-up).
    let before: Vec<u64> = per_bin[kill_bin.saturating_sub(10)..kill_bin].to_vec();
    let full = before.iter().sum::<u64>() as f64 / before.len().max(1) as f64;
    let first_write = per_bin.iter().enumerate().skip(kill_bin + 1).find(|(_, n)| **n > 0).map(|(i, _)| i);
    // Recovered: the first 500 ms window from the first write after the kill on averaging at
    // least 90 % of full.
    let back = (first_write.unwrap_or(bins)..bins.saturating_sub(5))
        .find(|&i| per_bin[i..i + 5].iter().sum::<u64>() as f64 / 5.0 >= 0.9 * full);
    let after_kill = |bin: usize| Duration::from_nanos((bin as u64 * BIN_NS).saturating_sub(kill_ns));
    row("leader killed mid-run (whole run)", &recovered);
    say!(
        "leader killed: {:.0} ops/s before; first write acknowledged {} after the kill; throughput back to 90 % \
         {} after the kill (election timeout up to {ELECTION_TIMEOUT:?}; 100 ms bins)",
        full * 10.0,
        first_write.map_or("never".to_owned(), |b| format!("{:?}", after_kill(b))),
        back.map_or("never within the run".to_owned(), |b| format!("{:?}", after_kill(b))),
    );
    Ok(())
}
