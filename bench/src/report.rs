//! Results: one row per step, printed as a table and written as JSON. A figure that was not
//! measured is `None` (`null` in JSON, `-` in the table), never a made-up number.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use hdrhistogram::Histogram;

use crate::disk::DiskWindow;
use crate::memory::NodeMemory;
use crate::peers::PeersReport;
use crate::{Args, Probe};
use smr_bench::load::{ErrorCounts, LoadSpec, StepLoad};

/// Points per decade of `1/(1-p)` in a step's latency percentile curve.
const CURVE_POINTS_PER_DECADE: u32 = 10;
/// The curve stops at the 99.9999th percentile (`1/(1-p)` = 10^6), or where the histogram has no
/// more samples to tell percentiles apart.
const CURVE_DECADES_MAX: u32 = 6;

#[derive(Debug, Serialize)]
pub(crate) struct BenchReport {
    /// Whether the cluster was started by smr-bench (else `--cluster` was given).
    pub(crate) local_cluster: bool,
    /// `--node-set` settings laid over the local nodes' default config, as given.
    pub(crate) node_settings: Vec<String>,
    pub(crate) nodes: usize,
    pub(crate) keys: u64,
    pub(crate) key_bytes: usize,
    pub(crate) value_bytes: usize,
    pub(crate) seed: u64,
    pub(crate) warmup_secs: u64,
    pub(crate) duration_secs: u64,
    pub(crate) steps: Vec<StepResult>,
    /// The machine's limits and etcd, measured in the same run (`--peers`).
    pub(crate) peers: Option<PeersReport>,
}

impl BenchReport {
    pub(crate) fn new(args: &Args, local_cluster: bool) -> BenchReport {
        BenchReport {
            local_cluster,
            node_settings: args.node_set.iter().map(ToString::to_string).collect(),
            nodes: args.cluster.as_ref().map_or(3, Vec::len),
            keys: args.keys,
            key_bytes: 16,
            value_bytes: args.value_bytes,
            seed: args.seed,
            warmup_secs: args.warmup_secs,
            duration_secs: args.duration_secs,
            steps: Vec::new(),
            peers: None,
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

/// One point of a latency percentile curve: `percentile` in 0..100, latency in µs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(crate) struct PercentilePoint {
    pub(crate) percentile: f64,
    pub(crate) latency_us: f64,
}

/// The latency distribution as HdrHistogram plots it: at percentiles `p` with `1/(1-p)` evenly
/// spaced on a log scale (0, 20.6, 36.9, 49.9, ..., 90, ..., 99, ... %), as far as the sample
/// count tells them apart, then the maximum as 100 %.
pub(crate) fn percentile_curve(h: &Histogram<u64>) -> Vec<PercentilePoint> {
    if h.is_empty() {
        return Vec::new();
    }
    let us = |ns: u64| ns as f64 / 1_000.0;
    let mut curve = Vec::new();
    for step in 0..=CURVE_DECADES_MAX * CURVE_POINTS_PER_DECADE {
        let inverse_tail = 10f64.powf(f64::from(step) / f64::from(CURVE_POINTS_PER_DECADE));
        if inverse_tail > h.len() as f64 {
            break;
        }
        let quantile = 1.0 - 1.0 / inverse_tail;
        curve.push(PercentilePoint { percentile: quantile * 100.0, latency_us: us(h.value_at_quantile(quantile)) });
    }
    curve.push(PercentilePoint { percentile: 100.0, latency_us: us(h.max()) });
    curve
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
    /// The leader's log `fsync_ns` mean over the window, in µs: one group commit's
    /// `fdatasync`, as the cluster gets it (three nodes may share one disk).
    pub(crate) leader_fsync_mean_us: Option<f64>,
    /// Increase of each of the leader's counters over the window.
    pub(crate) leader_counters: Option<BTreeMap<&'static str, u64>>,
    /// The latency percentile curve of the window (see [`percentile_curve`]).
    pub(crate) latency_percentiles: Vec<PercentilePoint>,
    /// Each node's memory over the window; `None` for a cluster not started by smr-bench.
    pub(crate) memory: Option<Vec<NodeMemory>>,
    /// The disk under the nodes' data over the window; `None` for a cluster not started by
    /// smr-bench or one on no block device.
    pub(crate) disk: Option<DiskWindow>,
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
        memory: Option<Vec<NodeMemory>>,
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
        let commands_per_entry = stats.and_then(|(s, e)| e.mean_since(s, "core", "batch_items"));
        // Reads are not proposed as entries.
        let puts = load.completed.saturating_sub(load.reads_completed);
        let entries = commands_per_entry.filter(|&c| c > 0.0).map(|c| puts as f64 / c);
        let disk_secs = end.at.saturating_duration_since(start.at).as_secs_f64();
        let disk = start.disk.zip(end.disk).and_then(|(s, e)| DiskWindow::between(&s, &e, disk_secs, entries));
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
            commands_per_entry,
            leader_commit_latency_mean_us: stats
                .and_then(|(s, e)| e.mean_since(s, "core", "commit_latency_ns"))
                .map(|ns| ns / 1_000.0),
            leader_fsync_mean_us: stats.and_then(|(s, e)| e.mean_since(s, "log", "fsync_ns")).map(|ns| ns / 1_000.0),
            leader_counters: stats.and_then(|(s, e)| e.counters_since(s)).map(|c| c.into_iter().collect()),
            latency_percentiles: percentile_curve(h),
            memory,
            disk,
        }
    }
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// Rows of cells, right-aligned in columns two spaces apart.
pub(crate) fn write_aligned(out: &mut dyn Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|t| t.chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(text, &width)| format!("{text:>width$}")).collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

/// The memory of each node in each step, in MiB.
fn write_memory_table(out: &mut dyn Write, report: &BenchReport) -> std::io::Result<()> {
    let header = [
        "outstanding",
        "node",
        "peak RSS MiB",
        "first MiB",
        "last MiB",
        "growth MiB",
        "MiB/min",
        "anon MiB",
        "anon growth",
        "anon MiB/min",
        "2nd half",
        "samples",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    let mib = |kib: Option<f64>| kib.map(|k| k / 1024.0);
    let mut stretch = None;
    for step in &report.steps {
        for node in step.memory.iter().flatten() {
            stretch = Some(node.stretch_secs);
            rows.push(vec![
                step.outstanding.to_string(),
                node.node.to_string(),
                cell(mib(node.peak_rss_kib.map(|k| k as f64)), 1),
                cell(mib(node.rss_first_kib), 1),
                cell(mib(node.rss_last_kib), 1),
                cell(mib(node.growth_kib), 2),
                cell(mib(node.slope_kib_per_min), 3),
                cell(mib(node.anon_last_kib), 1),
                cell(mib(node.anon_growth_kib), 2),
                cell(mib(node.anon_slope_kib_per_min), 3),
                cell(mib(node.anon_late_slope_kib_per_min), 3),
                node.samples.to_string(),
            ]);
        }
    }
    let Some(stretch) = stretch else { return Ok(()) };
    writeln!(out)?;
    write_aligned(out, &rows)?;
    writeln!(
        out,
        "Memory: each node's RSS (/proc/PID/status VmRSS) sampled every {} s in the window; peak = VmHWM at the \
         step's end (highest since the node started); growth = mean of the last {stretch:.0} s minus mean of the \
         first {stretch:.0} s; MiB/min = least-squares slope; anon = the anonymous part of RSS (RssAnon: heap, \
         stacks), without the touched pages of the memory-mapped log; 2nd half = the anonymous RSS's slope over \
         the window's second half, after the heap's caches and allocator pools have filled.",
        crate::memory::SAMPLE_INTERVAL.as_secs()
    )
}

/// The disk under the nodes' data in each step.
fn write_disk_table(out: &mut dyn Write, report: &BenchReport) -> std::io::Result<()> {
    let header = ["outstanding", "busy %", "MiB/s written", "flushes/s", "flush µs", "KiB/entry", "flushes/entry"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for step in &report.steps {
        let Some(d) = &step.disk else { continue };
        rows.push(vec![
            step.outstanding.to_string(),
            format!("{:.0}", d.busy_percent),
            format!("{:.1}", d.written_mib_per_sec),
            cell(d.flushes_per_sec, 0),
            cell(d.flush_mean_us, 0),
            cell(d.written_kib_per_entry, 1),
            cell(d.flushes_per_entry, 2),
        ]);
    }
    if rows.len() == 1 {
        return Ok(());
    }
    writeln!(out)?;
    write_aligned(out, &rows)?;
    writeln!(
        out,
        "Disk: the block device under the nodes' data directories (/sys/dev/block/MAJ:MIN/stat), over the \
         window: the share of it with a request in flight, bytes written, flushes and a flush's mean time at \
         the device (queue included), and bytes and flushes per entry the leader proposed. The counters are \
         the whole device's: three nodes on one disk each write and flush every entry."
    )
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
        "fsync µs",
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
            cell(step.leader_fsync_mean_us, 0),
            cell(step.entries_per_fsync, 2),
            cell(step.commands_per_entry, 2),
        ]);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    write_aligned(&mut out, &rows)?;
    writeln!(out)?;
    writeln!(
        out,
        "{} nodes{}; closed loop of puts, {}-byte keys uniform over {}, {}-byte values; \
         {} s warm-up, {} s measured per step.",
        report.nodes,
        if !report.local_cluster {
            " given with --cluster".to_owned()
        } else if report.node_settings.is_empty() {
            " on loopback started by smr-bench, default config (fsync on)".to_owned()
        } else {
            format!(" on loopback started by smr-bench, default config with {}", report.node_settings.join(", "))
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
        "fsync, entries/fsync, cmds/entry: the leader's log fsync_ns and batch_items and its core batch_items \
         histograms, mean over the window (from count and mean deltas; nodes publish metrics every 1 s, so the \
         window is shifted by up to 1 s)."
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
    write_memory_table(&mut out, report)?;
    write_disk_table(&mut out, report)?;
    if let Some(peers) = &report.peers {
        writeln!(out)?;
        crate::peers::write_table(&mut out, report, peers)?;
    }
    Ok(())
}
