//! Results: one row per step, printed as a table and written as JSON. A figure that was not
//! measured is `None` (`null` in JSON, `-` in the table), never a made-up number.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use crate::{Args, Probe};
use smr_bench::load::{ErrorCounts, LoadSpec, StepLoad};

#[derive(Debug, Serialize)]
pub(crate) struct BenchReport {
    /// Whether the cluster was started by smr-bench (else `--cluster` was given).
    pub(crate) local_cluster: bool,
    pub(crate) nodes: usize,
    pub(crate) keys: u64,
    pub(crate) key_bytes: usize,
    pub(crate) value_bytes: usize,
    pub(crate) seed: u64,
    pub(crate) warmup_secs: u64,
    pub(crate) duration_secs: u64,
    pub(crate) steps: Vec<StepResult>,
}

impl BenchReport {
    pub(crate) fn new(args: &Args, local_cluster: bool) -> BenchReport {
        BenchReport {
            local_cluster,
            nodes: args.cluster.as_ref().map_or(3, Vec::len),
            keys: args.keys,
            key_bytes: 16,
            value_bytes: args.value_bytes,
            seed: args.seed,
            warmup_secs: args.warmup_secs,
            duration_secs: args.duration_secs,
            steps: Vec::new(),
        }
    }

    pub(crate) fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("plain data always serialises");
        bytes.push(b'\n');
        bytes
    }
}

/// Submit-to-response latency of the puts completed in the window, in µs.
#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    pub(crate) mean: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p99_9: f64,
    pub(crate) max: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct StepResult {
    pub(crate) outstanding: usize,
    pub(crate) connections: usize,
    /// Client address of the leader the load went to.
    pub(crate) leader: String,
    pub(crate) window_secs: f64,
    /// Puts answered `Done` within the window.
    pub(crate) completed: u64,
    pub(crate) throughput_per_sec: f64,
    /// `None` when nothing completed.
    pub(crate) latency_us: Option<Latency>,
    /// Answers in the window that were not a successful put.
    pub(crate) errors: ErrorCounts,
    /// The same during warm-up and the final drain.
    pub(crate) errors_outside_window: ErrorCounts,
    /// Commands never answered (lost with a broken connection, or still out after the drain).
    pub(crate) unanswered: u64,
    /// Waits of 1 s on a connection with commands in flight and no answer.
    pub(crate) stalls: u64,
    /// utime+stime of the three node processes over the window, per completed put.
    pub(crate) nodes_cpu_us_per_command: Option<f64>,
    /// utime+stime of smr-bench itself (all its threads) over the window, per completed put.
    pub(crate) client_cpu_us_per_command: Option<f64>,
    /// The leader's log stage `batch_items` over the window: mean of entries per fsync, one
    /// value per log-writer wakeup that completed fsyncs (integer division per wakeup).
    pub(crate) entries_per_fsync: Option<f64>,
    /// The leader's core stage `batch_items` over the window: commands per proposed entry.
    pub(crate) commands_per_entry: Option<f64>,
    /// The leader's core `commit_latency_ns` mean over the window, in µs (proposal to commit).
    pub(crate) leader_commit_latency_mean_us: Option<f64>,
    /// Increase of each of the leader's counters over the window.
    pub(crate) leader_counters: Option<BTreeMap<&'static str, u64>>,
}

fn per_command_us(start: Option<u64>, end: Option<u64>, completed: u64) -> Option<f64> {
    let delta = end?.checked_sub(start?)?;
    (completed > 0).then(|| delta as f64 / 1_000.0 / completed as f64)
}

impl StepResult {
    pub(crate) fn from_measurements(
        spec: &LoadSpec,
        load: &StepLoad,
        start: &Probe,
        end: &Probe,
        leader: std::net::SocketAddr,
    ) -> StepResult {
        let h = &load.latency;
        let us = |ns: u64| ns as f64 / 1_000.0;
        let latency = (!h.is_empty()).then(|| Latency {
            mean: h.mean() / 1_000.0,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p99_9: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        });
        let window_secs = load.window.as_secs_f64();
        let stats = start.leader_stats.as_ref().zip(end.leader_stats.as_ref());
        StepResult {
            outstanding: spec.outstanding,
            connections: spec.connections,
            leader: leader.to_string(),
            window_secs,
            completed: load.completed,
            throughput_per_sec: load.completed as f64 / window_secs,
            latency_us: latency,
            errors: load.errors_window,
            errors_outside_window: load.errors_outside,
            unanswered: load.unanswered,
            stalls: load.stalls,
            nodes_cpu_us_per_command: per_command_us(start.nodes_cpu_ns, end.nodes_cpu_ns, load.completed),
            client_cpu_us_per_command: per_command_us(start.client_cpu_ns, end.client_cpu_ns, load.completed),
            entries_per_fsync: stats.and_then(|(s, e)| e.mean_since(s, "log", "batch_items")),
            commands_per_entry: stats.and_then(|(s, e)| e.mean_since(s, "core", "batch_items")),
            leader_commit_latency_mean_us: stats
                .and_then(|(s, e)| e.mean_since(s, "core", "commit_latency_ns"))
                .map(|ns| ns / 1_000.0),
            leader_counters: stats.and_then(|(s, e)| e.counters_since(s)).map(|c| c.into_iter().collect()),
        }
    }
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// The table, on stdout: printing it is this program's job.
pub(crate) fn print_table(report: &BenchReport) -> std::io::Result<()> {
    let header = [
        "outstanding",
        "conns",
        "cmds/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "errors",
        "CPU µs/cmd",
        "entries/fsync",
        "cmds/entry",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for step in &report.steps {
        let l = step.latency_us.as_ref();
        rows.push(vec![
            step.outstanding.to_string(),
            step.connections.to_string(),
            format!("{:.0}", step.throughput_per_sec),
            cell(l.map(|l| l.p50), 1),
            cell(l.map(|l| l.p90), 1),
            cell(l.map(|l| l.p99), 1),
            cell(l.map(|l| l.p99_9), 1),
            cell(l.map(|l| l.max), 1),
            step.errors.total().to_string(),
            cell(step.nodes_cpu_us_per_command, 1),
            cell(step.entries_per_fsync, 2),
            cell(step.commands_per_entry, 2),
        ]);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    for row in &rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(text, &width)| format!("{text:>width$}")).collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{} nodes{}; closed loop of puts, {}-byte keys uniform over {}, {}-byte values; \
         {} s warm-up, {} s measured per step.",
        report.nodes,
        if report.local_cluster {
            " on loopback started by smr-bench, default config (fsync on)"
        } else {
            " given with --cluster"
        },
        report.key_bytes,
        report.keys,
        report.value_bytes,
        report.warmup_secs,
        report.duration_secs
    )?;
    writeln!(
        out,
        "Latency: submit to response, puts completed in the window. errors: answers in the window other \
         than success (not leader, busy, timed out, other) and broken connections."
    )?;
    if report.local_cluster {
        writeln!(out, "CPU: utime+stime of the three node processes over the window / puts completed.")?;
    } else {
        writeln!(out, "CPU: not measured (cluster not started by smr-bench).")?;
    }
    writeln!(
        out,
        "entries/fsync, cmds/entry: the leader's log and core batch_items histograms, mean over the window \
         (from count and mean deltas; nodes publish metrics every 1 s, so the window is shifted by up to 1 s)."
    )?;
    for step in &report.steps {
        let mut notes = Vec::new();
        if step.errors.total() > 0 {
            notes.push(format!("errors in the window: {}", step.errors));
        }
        if step.errors_outside_window.total() > 0 {
            notes.push(format!("errors in warm-up/drain: {}", step.errors_outside_window));
        }
        if step.unanswered > 0 {
            notes.push(format!("{} commands never answered", step.unanswered));
        }
        if step.stalls > 0 {
            notes.push(format!("{} one-second waits with no answer", step.stalls));
        }
        if let Some(cpu) = step.client_cpu_us_per_command {
            notes.push(format!("smr-bench itself used {cpu:.1} µs CPU/cmd on the same cores"));
        }
        if let Some(counters) = &step.leader_counters {
            let trouble: Vec<String> = counters
                .iter()
                .filter(|(name, value)| **value > 0 && !matches!(**name, "commands_applied" | "entries_applied"))
                .map(|(name, value)| format!("{name} +{value}"))
                .collect();
            if !trouble.is_empty() {
                notes.push(format!("leader counters: {}", trouble.join(", ")));
            }
        }
        if !notes.is_empty() {
            writeln!(out, "  {} outstanding: {}", step.outstanding, notes.join("; "))?;
        }
    }
    Ok(())
}
