//! `smr-bench`: an end-to-end benchmark of a replicated smr cluster.
//!
//! With no arguments it starts three real `smr node` processes on loopback (fsync on), waits for
//! a leader, and sweeps a closed-loop load of puts at 1, 16, 256 and 1024 commands outstanding,
//! printing tables: throughput, latency percentiles, errors, CPU per command (of the three
//! node processes), the leader's batching (entries per fsync, commands per entry), each node's
//! memory, and the disk under the nodes' data. It writes `results.json` and three SVG plots into
//! `--out` (default `bench-results/`). `--cluster` drives an existing cluster instead; `--peers
//! DIR` measures the machine's limits and etcd in the same run and puts them beside smr's figures.
//!
//! Modules: `cluster` (in the library) starts and stops local nodes, `admin` asks nodes for
//! status and metrics, `load` is the load driver, `procstat` reads CPU time and memory from
//! `/proc`, `memory` samples the nodes' memory during a step, `disk` reads the block device's
//! counters, `report` builds the tables and the JSON, `plot` draws the plots, `peers` runs and
//! reads the peer scripts.

mod disk;
mod memory;
mod peers;
mod plot;
mod procstat;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::memory::Sampler;
use crate::peers::PeersReport;
use crate::report::{BenchReport, StepResult};
use smr_bench::admin::{self, StatsSnapshot};
use smr_bench::cluster::{self, LocalCluster};
use smr_bench::keys::Distribution;
use smr_bench::load::{self, LoadSpec, StepLoad};
use smr_bench::node_settings::NodeSetting;
use smr_bench::signals;

/// Connections used when `--connections` is not given: at most this many, one per command
/// outstanding below it.
const CONNECTIONS_DEFAULT_MAX: usize = 16;

/// How long to wait for a leader before giving up.
const LEADER_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "smr-bench",
    about = "End-to-end benchmark of an smr cluster: closed-loop puts, latency, CPU and batching per step",
    long_about = None
)]
pub(crate) struct Args {
    /// Commands outstanding per step, comma-separated; each step runs warm-up then measurement.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256,1024", value_parser = parse_positive)]
    outstanding: Vec<usize>,
    /// Client connections (each on its own thread) sharing a step's outstanding commands;
    /// default min(outstanding, 16); never more than the outstanding count.
    #[arg(long, value_parser = parse_positive)]
    connections: Option<usize>,
    /// Keys are drawn uniformly from this many distinct 16-byte keys.
    #[arg(long, default_value_t = 100_000, value_parser = parse_positive_u64)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 128)]
    value_bytes: usize,
    /// Seed of the key sequence.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds of load before each measured window.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Seconds measured per step.
    #[arg(long, default_value_t = 10, value_parser = parse_positive_u64)]
    duration_secs: u64,
    /// Drive this existing cluster (client addresses, comma-separated) instead of starting one;
    /// then no CPU figure is measured.
    #[arg(long, value_delimiter = ',')]
    cluster: Option<Vec<SocketAddr>>,
    /// Also write the results as JSON to this file (they are always written to
    /// OUT/results.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Directory for results.json and the plots (created if missing).
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Directory of the peer scripts `machine-limits` and `etcd` (e.g. ../shared/peers): run
    /// machine-limits first, then smr's sweep, then etcd at the same levels, payload and
    /// durations, and show them side by side with the benchmark's targets. Needs a local cluster.
    #[arg(long, conflicts_with = "cluster")]
    peers: Option<PathBuf>,
    /// Seconds per test of machine-limits (with --peers); it runs 8 timed tests plus a 2 GiB write.
    #[arg(long, default_value_t = 10, value_parser = parse_positive_u64)]
    peers_machine_secs: u64,
    /// A node setting for the local cluster, as its config file names it, laid over the
    /// defaults of every node (repeatable): e.g. `--node-set pipeline.proposals_inflight_max=4`.
    #[arg(long = "node-set", value_name = "KEY=VALUE", conflicts_with = "cluster")]
    node_set: Vec<NodeSetting>,
}

fn parse_positive(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(value) => Ok(value),
        Err(error) => Err(format!("{text:?} is not a positive integer: {error}")),
    }
}

fn parse_positive_u64(text: &str) -> Result<u64, String> {
    parse_positive(text).map(|value| value as u64)
}

impl Args {
    /// Connections for a step of `outstanding` commands.
    fn connections_for(&self, outstanding: usize) -> usize {
        self.connections.unwrap_or(CONNECTIONS_DEFAULT_MAX).min(outstanding)
    }
}

fn main() -> ExitCode {
    // clap prints a clear message and exits with code 2 on a bad flag.
    let args = Args::parse();
    // Before any thread starts, so that every thread inherits the blocked mask and only the
    // signal thread sees SIGINT/SIGTERM.
    if let Err(error) = signals::install() {
        eprintln!("smr-bench: cannot install the signal handler: {error}");
        return ExitCode::FAILURE;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("smr-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    std::fs::create_dir_all(&args.out).map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    // The peers' work files go where the nodes' data goes, so that all measure the same disk.
    let work_parent = std::env::temp_dir();
    let peer_scripts = args.peers.as_deref().map(peers::scripts).transpose()?;
    let machine = match &peer_scripts {
        Some((machine_limits, _)) => {
            let json = args.out.join("machine-limits.json");
            let script_args = [
                "--seconds".to_owned(),
                args.peers_machine_secs.to_string(),
                "--json".to_owned(),
                json.display().to_string(),
                "--dir".to_owned(),
                work_parent.display().to_string(),
            ];
            peers::run_script(machine_limits, &script_args)?;
            Some((peers::read_machine_limits(&json)?, json))
        }
        None => None,
    };

    let mut report = BenchReport::new(args, args.cluster.is_none());
    let outcome = run_smr(args, &mut report);

    let outcome = match (outcome, &peer_scripts, machine) {
        (Ok(()), Some((_, etcd_script)), Some((machine, machine_json))) => {
            let json = args.out.join("etcd.json");
            let mut script_args = vec![
                "--seconds".to_owned(),
                args.duration_secs.to_string(),
                "--warmup".to_owned(),
                args.warmup_secs.to_string(),
                "--key-size".to_owned(),
                "16".to_owned(),
                "--val-size".to_owned(),
                args.value_bytes.to_string(),
                "--json".to_owned(),
                json.display().to_string(),
                "--dir".to_owned(),
                work_parent.display().to_string(),
            ];
            script_args.extend(args.outstanding.iter().map(usize::to_string));
            peers::run_script(etcd_script, &script_args).and_then(|()| {
                let etcd = peers::read_etcd(&json)?;
                report.peers = Some(PeersReport::new(&report.steps, machine, etcd, machine_json, json));
                Ok(())
            })
        }
        (outcome, _, _) => outcome,
    };

    // Print and write whatever was measured, also when a later step failed.
    if !report.steps.is_empty() {
        report::print_table(&report).map_err(|e| format!("cannot write the table: {e}"))?;
        let mut written = Vec::new();
        let results = args.out.join("results.json");
        for path in std::iter::once(&results).chain(&args.json) {
            std::fs::write(path, report.to_json()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            written.push(path.clone());
        }
        written.extend(plot::write_plots(&report, &args.out)?);
        if let Some(peers) = &report.peers {
            written.extend([peers.machine_json.clone(), peers.etcd_json.clone()]);
        }
        print_written(&written).map_err(|e| format!("cannot write the table: {e}"))?;
    }
    outcome
}

fn print_written(paths: &[PathBuf]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    writeln!(out, "Written:")?;
    for path in paths {
        writeln!(out, "  {}", path.display())?;
    }
    Ok(())
}

/// Starts the local cluster (unless `--cluster`), runs the sweep and stops the cluster.
fn run_smr(args: &Args, report: &mut BenchReport) -> Result<(), String> {
    let mut local = match &args.cluster {
        Some(_) => None,
        None => {
            let smr = cluster::smr_binary()?;
            eprintln!("smr-bench: starting a 3-node cluster with {}", smr.display());
            Some(LocalCluster::start(&smr, 3, &args.node_set)?)
        }
    };
    let addresses: Vec<SocketAddr> = match (&args.cluster, &local) {
        (Some(addresses), _) => addresses.clone(),
        (None, Some(local)) => local.client_addresses(),
        (None, None) => unreachable!("a local cluster is started when none is given"),
    };
    let mut disk = None;
    if let Some(local) = &local {
        eprintln!("smr-bench: data and logs under {}", local.dir().display());
        match disk::stat_file_of(local.dir()) {
            Ok(file) => disk = Some(file),
            Err(error) => eprintln!("smr-bench: no disk figures: {error}"),
        }
    }
    let outcome = sweep(args, &addresses, local.as_mut(), disk.as_deref(), report);
    if let (Err(_), Some(local)) = (&outcome, &local) {
        eprintln!("{}", local.log_tails(20));
    }
    drop(local);
    outcome
}

fn sweep(
    args: &Args,
    addresses: &[SocketAddr],
    mut local: Option<&mut LocalCluster>,
    disk: Option<&Path>,
    report: &mut BenchReport,
) -> Result<(), String> {
    let session_base = load::session_base();
    for (step, &outstanding) in args.outstanding.iter().enumerate() {
        let leader = admin::wait_for_leader(addresses, LEADER_PATIENCE)?;
        let connections = args.connections_for(outstanding);
        eprintln!(
            "smr-bench: step {}: {outstanding} outstanding over {connections} connections to leader {leader}, \
             {} s warm-up + {} s measured",
            step + 1,
            args.warmup_secs,
            args.duration_secs
        );
        let spec = LoadSpec {
            outstanding,
            connections,
            keys: args.keys,
            distribution: Distribution::Uniform,
            read_ratio: 0.0,
            rate: None,
            value_bytes: args.value_bytes,
            seed: args.seed.wrapping_add(step as u64),
            session_base: session_base.wrapping_add((step as u64) << 20),
            warmup: Duration::from_secs(args.warmup_secs),
            duration: Duration::from_secs(args.duration_secs),
        };
        let pids: Vec<u32> = local.as_deref().map(LocalCluster::pids).unwrap_or_default();
        let sampler = if pids.is_empty() { None } else { Some(Sampler::start(&pids)?) };
        let probe = || Probe::take(&pids, leader, disk);
        let (load, start, end) = load::run_step(leader, addresses, &spec, probe, probe)?;
        let memory = sampler.map(|s| {
            let window = (s.since_start(start.at), s.since_start(end.at));
            s.finish(window.0, window.1)
        });
        let result = StepResult::from_measurements(&spec, &load, &start, &end, leader, memory);
        report.steps.push(result);
        if let Some(local) = local.as_deref_mut() {
            local.check_alive()?;
        }
        warn_on_errors(&load);
    }
    Ok(())
}

fn warn_on_errors(load: &StepLoad) {
    let window = &load.errors_window;
    let outside = &load.errors_outside;
    if window.total() > 0 || outside.total() > 0 || load.unanswered > 0 {
        eprintln!(
            "smr-bench:   errors in the window: {window}; outside it (warm-up, drain): {outside}; \
             unanswered at the end: {}",
            load.unanswered
        );
    }
    if load.stalls > 0 {
        eprintln!("smr-bench:   {} waits of 1 s with no response on a connection", load.stalls);
    }
}

/// What is read at each edge of a measured window: CPU time of the node processes and every
/// node's metrics.
#[derive(Debug)]
pub(crate) struct Probe {
    /// Total utime+stime of the node processes, in ns; `None` for a cluster we did not start or
    /// when a `/proc` read failed.
    pub(crate) nodes_cpu_ns: Option<u64>,
    /// utime+stime of this process (the load generator), in ns.
    pub(crate) client_cpu_ns: Option<u64>,
    /// The counters of the disk under the nodes' data, for a cluster smr-bench started.
    pub(crate) disk: Option<disk::DiskStat>,
    /// The leader's metrics report, if it answered.
    pub(crate) leader_stats: Option<StatsSnapshot>,
    /// When the CPU times were read.
    pub(crate) at: Instant,
}

impl Probe {
    fn take(pids: &[u32], leader: SocketAddr, disk: Option<&Path>) -> Probe {
        // CPU first: it is the figure most sensitive to when it is read.
        let at = Instant::now();
        let nodes_cpu_ns = if pids.is_empty() { None } else { procstat::cpu_ns_of_pids(pids).ok() };
        let client_cpu_ns = procstat::cpu_ns_of_self().ok();
        let disk = disk.and_then(|file| disk::read(file).ok());
        let leader_stats = admin::stats(leader).ok();
        Probe { nodes_cpu_ns, client_cpu_ns, disk, leader_stats, at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("smr-bench").chain(args.iter().copied()))
    }

    #[test]
    fn outstanding_list_defaults_and_parses() {
        assert_eq!(parse(&[]).unwrap().outstanding, vec![1, 16, 256, 1024]);
        assert_eq!(parse(&["--outstanding", "4,64"]).unwrap().outstanding, vec![4, 64]);
        assert_eq!(parse(&["--outstanding=8"]).unwrap().outstanding, vec![8]);
    }

    #[test]
    fn bad_outstanding_lists_are_refused() {
        for bad in ["0", "1,0", "x", "1,,2", "-3", ""] {
            let error = parse(&["--outstanding", bad]).expect_err(bad);
            assert_eq!(error.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn connections_default_to_at_most_sixteen_and_never_exceed_outstanding() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.connections_for(1), 1);
        assert_eq!(args.connections_for(16), 16);
        assert_eq!(args.connections_for(256), 16);
        let args = parse(&["--connections", "4"]).unwrap();
        assert_eq!(args.connections_for(2), 2);
        assert_eq!(args.connections_for(256), 4);
    }

    #[test]
    fn out_and_peers_flags() {
        let args = parse(&[]).unwrap();
        assert_eq!((args.out, args.peers, args.peers_machine_secs), (PathBuf::from("bench-results"), None, 10));
        let args = parse(&["--out", "/tmp/x", "--peers", "../shared/peers"]).unwrap();
        assert_eq!((args.out, args.peers), (PathBuf::from("/tmp/x"), Some(PathBuf::from("../shared/peers"))));
        // The peers run beside a cluster smr-bench starts itself.
        assert!(parse(&["--peers", "p", "--cluster", "127.0.0.1:7101"]).is_err());
        assert!(parse(&["--peers-machine-secs", "0"]).is_err());
    }

    #[test]
    fn cluster_addresses_parse() {
        let args = parse(&["--cluster", "127.0.0.1:7101,127.0.0.1:7102"]).unwrap();
        assert_eq!(args.cluster.unwrap().len(), 2);
        assert!(parse(&["--cluster", "nowhere"]).is_err());
    }
}
