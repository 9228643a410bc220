//! Peers on the same box (`--peers DIR`): the machine's limits and a 3-member etcd cluster under
//! the same workload, measured in the same run as smr, by the scripts `DIR/machine-limits` and
//! `DIR/etcd` (see `DIR/README.md`). smr-bench runs `machine-limits` before starting its cluster
//! and `etcd` after stopping it, reads the JSON each writes, and puts the figures beside smr's in
//! one table, with the two latency/throughput targets of the benchmark issue computed from them.
//!
//! The scripts' JSON is input from outside: every field read is checked, and an error names the
//! file and the field.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;
use serde_json::Value;
use smr_bench::signals;

use crate::report::{BenchReport, StepResult, write_aligned};

pub(crate) const MACHINE_LIMITS_SCRIPT: &str = "machine-limits";
pub(crate) const ETCD_SCRIPT: &str = "etcd";

/// Outstanding commands of the throughput target, and the factor over etcd it asks for.
const THROUGHPUT_TARGET_LEVEL: usize = 256;
const THROUGHPUT_TARGET_FACTOR: f64 = 30.0;
/// Outstanding commands of the latency target, and its factor over the machine's floor.
const LATENCY_TARGET_LEVEL: usize = 1;
const LATENCY_TARGET_FACTOR: f64 = 1.5;

/// The figures of `machine-limits --json` that the comparison uses (all of them are kept in
/// `all`).
#[derive(Debug, Serialize)]
pub(crate) struct MachineLimits {
    pub(crate) date: String,
    pub(crate) cores: u64,
    pub(crate) kernel: String,
    pub(crate) filesystem: String,
    /// `fdatasync` latency after 4 KiB writes over a preallocated file: the case of smr's log.
    pub(crate) fdatasync_prealloc_4k_p50_us: f64,
    pub(crate) fdatasync_prealloc_4k_p99_us: f64,
    /// The same, appending to a growing file.
    pub(crate) fdatasync_4k_p50_us: f64,
    pub(crate) loopback_rtt_p50_us: f64,
    pub(crate) loopback_rtt_p99_us: f64,
    pub(crate) loopback_gbit_s: f64,
    /// Everything the script wrote.
    pub(crate) all: Value,
}

/// One level of `etcd --json`, latencies turned from ms into µs.
#[derive(Debug, Serialize)]
pub(crate) struct EtcdRow {
    pub(crate) clients: u64,
    pub(crate) conns: u64,
    pub(crate) ops_per_s: f64,
    pub(crate) p50_us: f64,
    pub(crate) p90_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) max_us: f64,
    pub(crate) cpu_ms_per_op: f64,
    pub(crate) errors: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct EtcdResults {
    pub(crate) date: String,
    pub(crate) version: String,
    pub(crate) seconds_per_level: u64,
    pub(crate) warmup_s: u64,
    pub(crate) key_size: u64,
    pub(crate) val_size: u64,
    pub(crate) rows: Vec<EtcdRow>,
}

/// smr beside etcd at one level of outstanding commands.
#[derive(Debug, Serialize)]
pub(crate) struct ComparisonRow {
    pub(crate) outstanding: usize,
    pub(crate) smr_per_sec: f64,
    pub(crate) smr_p50_us: Option<f64>,
    pub(crate) smr_p99_us: Option<f64>,
    /// `None` when etcd has no row at this level.
    pub(crate) etcd_per_sec: Option<f64>,
    pub(crate) etcd_p50_us: Option<f64>,
    pub(crate) etcd_p99_us: Option<f64>,
    /// smr's throughput over etcd's.
    pub(crate) throughput_ratio: Option<f64>,
}

/// One of the benchmark's targets, checked against this run's figures.
#[derive(Debug, Serialize)]
pub(crate) struct Target {
    pub(crate) requirement: String,
    pub(crate) measured: String,
    /// `None` when a figure it needs was not measured.
    pub(crate) met: Option<bool>,
}

#[derive(Debug, Serialize)]
pub(crate) struct PeersReport {
    pub(crate) machine_json: PathBuf,
    pub(crate) etcd_json: PathBuf,
    pub(crate) machine: MachineLimits,
    pub(crate) etcd: EtcdResults,
    pub(crate) comparison: Vec<ComparisonRow>,
    pub(crate) targets: Vec<Target>,
}

// ---- reading the scripts' JSON ----

fn name(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

fn field<'v>(file: &Path, object: &'v Value, path: &str, key: &str) -> Result<&'v Value, String> {
    let map = object.as_object().ok_or_else(|| {
        let what = if path.is_empty() { "the top level".to_owned() } else { format!("field `{path}`") };
        format!("{}: {what} is not a JSON object", file.display())
    })?;
    map.get(key).ok_or_else(|| format!("{}: field `{}` is missing", file.display(), name(path, key)))
}

/// A finite, non-negative number.
fn number(file: &Path, object: &Value, path: &str, key: &str) -> Result<f64, String> {
    let value = field(file, object, path, key)?;
    value
        .as_f64()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("{}: field `{}` is not a non-negative number: {value}", file.display(), name(path, key)))
}

fn whole(file: &Path, object: &Value, path: &str, key: &str) -> Result<u64, String> {
    let value = field(file, object, path, key)?;
    value
        .as_u64()
        .ok_or_else(|| format!("{}: field `{}` is not a whole number: {value}", file.display(), name(path, key)))
}

fn text(file: &Path, object: &Value, path: &str, key: &str) -> Result<String, String> {
    let value = field(file, object, path, key)?;
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{}: field `{}` is not a string: {value}", file.display(), name(path, key)))
}

fn parse_json(file: &Path, bytes: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("{}: not JSON: {e}", file.display()))
}

fn read(file: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))
}

/// Reads what `machine-limits --json` wrote; `file` names it in errors.
pub(crate) fn parse_machine_limits(file: &Path, bytes: &[u8]) -> Result<MachineLimits, String> {
    let all = parse_json(file, bytes)?;
    let n = |key| number(file, &all, "", key);
    Ok(MachineLimits {
        date: text(file, &all, "", "date")?,
        cores: whole(file, &all, "", "cores")?,
        kernel: text(file, &all, "", "kernel")?,
        filesystem: text(file, &all, "", "filesystem")?,
        fdatasync_prealloc_4k_p50_us: n("fdatasync_prealloc_4k_p50_us")?,
        fdatasync_prealloc_4k_p99_us: n("fdatasync_prealloc_4k_p99_us")?,
        fdatasync_4k_p50_us: n("fdatasync_4k_p50_us")?,
        loopback_rtt_p50_us: n("loopback_rtt_p50_us")?,
        loopback_rtt_p99_us: n("loopback_rtt_p99_us")?,
        loopback_gbit_s: n("loopback_gbit_s")?,
        all,
    })
}

/// Reads what `etcd --json` wrote; `file` names it in errors.
pub(crate) fn parse_etcd(file: &Path, bytes: &[u8]) -> Result<EtcdResults, String> {
    let all = parse_json(file, bytes)?;
    let rows_value = field(file, &all, "", "rows")?;
    let rows = rows_value
        .as_array()
        .ok_or_else(|| format!("{}: field `rows` is not an array: {rows_value}", file.display()))?;
    if rows.is_empty() {
        return Err(format!("{}: field `rows` is empty", file.display()));
    }
    let rows = rows
        .iter()
        .enumerate()
        .map(|(index, row)| {
            let at = format!("rows[{index}]");
            let us = |key| number(file, row, &at, key).map(|ms| ms * 1_000.0);
            Ok(EtcdRow {
                clients: whole(file, row, &at, "clients")?,
                conns: whole(file, row, &at, "conns")?,
                ops_per_s: number(file, row, &at, "ops_per_s")?,
                p50_us: us("p50_ms")?,
                p90_us: us("p90_ms")?,
                p99_us: us("p99_ms")?,
                p999_us: us("p999_ms")?,
                max_us: us("max_ms")?,
                cpu_ms_per_op: number(file, row, &at, "cpu_ms_per_op")?,
                errors: whole(file, row, &at, "errors")?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(EtcdResults {
        date: text(file, &all, "", "date")?,
        version: text(file, &all, "", "etcd")?,
        seconds_per_level: whole(file, &all, "", "seconds_per_level")?,
        warmup_s: whole(file, &all, "", "warmup_s")?,
        key_size: whole(file, &all, "", "key_size")?,
        val_size: whole(file, &all, "", "val_size")?,
        rows,
    })
}

pub(crate) fn read_machine_limits(file: &Path) -> Result<MachineLimits, String> {
    parse_machine_limits(file, &read(file)?)
}

pub(crate) fn read_etcd(file: &Path) -> Result<EtcdResults, String> {
    parse_etcd(file, &read(file)?)
}

// ---- comparing ----

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl PeersReport {
    pub(crate) fn new(
        steps: &[StepResult],
        machine: MachineLimits,
        etcd: EtcdResults,
        machine_json: PathBuf,
        etcd_json: PathBuf,
    ) -> PeersReport {
        let comparison: Vec<ComparisonRow> = steps
            .iter()
            .map(|step| {
                let row = etcd.rows.iter().find(|r| r.clients == step.outstanding as u64);
                let etcd_per_sec = row.map(|r| r.ops_per_s);
                ComparisonRow {
                    outstanding: step.outstanding,
                    smr_per_sec: step.throughput_per_sec,
                    smr_p50_us: step.latency_us.as_ref().map(|l| l.p50),
                    smr_p99_us: step.latency_us.as_ref().map(|l| l.p99),
                    etcd_per_sec,
                    etcd_p50_us: row.map(|r| r.p50_us),
                    etcd_p99_us: row.map(|r| r.p99_us),
                    throughput_ratio: etcd_per_sec.filter(|&e| e > 0.0).map(|e| step.throughput_per_sec / e),
                }
            })
            .collect();
        let targets = vec![throughput_target(&comparison), latency_target(&comparison, &machine)];
        PeersReport { machine_json, etcd_json, machine, etcd, comparison, targets }
    }
}

fn throughput_target(comparison: &[ComparisonRow]) -> Target {
    let requirement = format!(
        "at {THROUGHPUT_TARGET_LEVEL} outstanding: throughput >= {THROUGHPUT_TARGET_FACTOR} x etcd's, with p99 <= etcd's"
    );
    let row = comparison.iter().find(|r| r.outstanding == THROUGHPUT_TARGET_LEVEL);
    let figures =
        row.and_then(|r| Some((r.smr_per_sec, r.etcd_per_sec?, r.throughput_ratio?, r.smr_p99_us?, r.etcd_p99_us?)));
    match figures {
        None => Target {
            requirement,
            measured: format!("not measured: smr and etcd both need a step of {THROUGHPUT_TARGET_LEVEL} outstanding"),
            met: None,
        },
        Some((smr, etcd, ratio, smr_p99, etcd_p99)) => Target {
            requirement,
            measured: format!(
                "{ratio:.1} x ({} vs {} puts/s); p99 {} vs {} µs",
                thousands(smr),
                thousands(etcd),
                thousands(smr_p99),
                thousands(etcd_p99)
            ),
            met: Some(ratio >= THROUGHPUT_TARGET_FACTOR && smr_p99 <= etcd_p99),
        },
    }
}

fn latency_target(comparison: &[ComparisonRow], machine: &MachineLimits) -> Target {
    let sync = machine.fdatasync_prealloc_4k_p50_us;
    let rtt = machine.loopback_rtt_p50_us;
    let bound = LATENCY_TARGET_FACTOR * (sync + 2.0 * rtt);
    let requirement = format!(
        "at {LATENCY_TARGET_LEVEL} outstanding: p50 <= {LATENCY_TARGET_FACTOR} x (fdatasync p50 {sync:.0} µs + 2 x RTT p50 \
         {rtt:.0} µs) = {bound:.0} µs"
    );
    let p50 = comparison.iter().find(|r| r.outstanding == LATENCY_TARGET_LEVEL).and_then(|r| r.smr_p50_us);
    match p50 {
        None => Target {
            requirement,
            measured: format!("not measured: no step of {LATENCY_TARGET_LEVEL} outstanding with completed puts"),
            met: None,
        },
        Some(p50) => Target {
            requirement,
            measured: format!("p50 {p50:.0} µs ({:.2} x the floor sync + 2 RTT)", p50 / (sync + 2.0 * rtt).max(1e-9)),
            met: Some(p50 <= bound),
        },
    }
}

fn cell(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map_or_else(|| "-".to_owned(), format)
}

/// The side-by-side table, the machine's figures and the targets.
pub(crate) fn write_table(out: &mut dyn Write, report: &BenchReport, peers: &PeersReport) -> std::io::Result<()> {
    let header = ["outstanding", "smr puts/s", "p50 µs", "p99 µs", "etcd puts/s", "p50 µs", "p99 µs", "smr/etcd"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for row in &peers.comparison {
        rows.push(vec![
            row.outstanding.to_string(),
            thousands(row.smr_per_sec),
            cell(row.smr_p50_us, thousands),
            cell(row.smr_p99_us, thousands),
            cell(row.etcd_per_sec, thousands),
            cell(row.etcd_p50_us, thousands),
            cell(row.etcd_p99_us, thousands),
            cell(row.throughput_ratio, |r| format!("{r:.2} x")),
        ]);
    }
    writeln!(out, "smr and etcd on this machine, one run: machine-limits, then smr, then etcd.")?;
    write_aligned(out, &rows)?;
    let m = &peers.machine;
    writeln!(
        out,
        "Machine ({}, {} cores, kernel {}, {}): fdatasync p50 {:.0} µs (p99 {:.0}) on preallocated 4 KiB blocks, \
         {:.0} µs appending; loopback RTT p50 {:.1} µs (p99 {:.1}); loopback TCP {:.1} Gbit/s.",
        m.date,
        m.cores,
        m.kernel,
        m.filesystem,
        m.fdatasync_prealloc_4k_p50_us,
        m.fdatasync_prealloc_4k_p99_us,
        m.fdatasync_4k_p50_us,
        m.loopback_rtt_p50_us,
        m.loopback_rtt_p99_us,
        m.loopback_gbit_s
    )?;
    let e = &peers.etcd;
    let conns: Vec<String> = e.rows.iter().map(|r| format!("{}: {}", r.clients, r.conns)).collect();
    writeln!(
        out,
        "etcd {} ({}): 3 members, {} B keys, {} B values, {} s measured after {} s warm-up per level, fresh cluster \
         per level; gRPC connections per level {}. smr: {} B keys, {} B values, {} s after {} s warm-up.",
        e.version,
        e.date,
        e.key_size,
        e.val_size,
        e.seconds_per_level,
        e.warmup_s,
        conns.join(", "),
        report.key_bytes,
        report.value_bytes,
        report.duration_secs,
        report.warmup_secs
    )?;
    let errors: Vec<String> =
        e.rows.iter().filter(|r| r.errors > 0).map(|r| format!("{} at {}", r.errors, r.clients)).collect();
    if !errors.is_empty() {
        writeln!(out, "etcd errors: {}", errors.join(", "))?;
    }
    writeln!(out, "Targets:")?;
    for target in &peers.targets {
        let verdict = match target.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "not measured",
        };
        writeln!(out, "  [{verdict}] {}: {}", target.requirement, target.measured)?;
    }
    Ok(())
}

// ---- running the scripts ----

/// The two scripts in `dir`, checked to exist before anything runs.
pub(crate) fn scripts(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let find = |name: &str| {
        let path = dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!("--peers {}: no script {name} there (expected {})", dir.display(), path.display()))
        }
    };
    Ok((find(MACHINE_LIMITS_SCRIPT)?, find(ETCD_SCRIPT)?))
}

/// Runs a peer script, its table going to our stderr (our stdout is for our own table), and
/// waits for it. It runs in its own process group, so a Ctrl-C in the terminal reaches only
/// smr-bench, which passes it on as one SIGTERM (on which the scripts stop what they started,
/// one process at a time, and exit within a second or so).
pub(crate) fn run_script(script: &Path, args: &[String]) -> Result<(), String> {
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("cannot pass stderr to {}: {e}", script.display()))?;
    let mut command = Command::new(script);
    // SAFETY: between fork and exec only async-signal-safe calls are allowed, and
    // pthread_sigmask and the sigset functions are (see `signals::unblock_in_child`).
    unsafe { command.pre_exec(signals::unblock_in_child) };
    eprintln!("smr-bench: running {} {}", script.display(), args.join(" "));
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    signals::register_script(Some(child.id()));
    let status = child.wait();
    signals::register_script(None);
    let status = status.map_err(|e| format!("cannot wait for {}: {e}", script.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed ({status}); its messages are above", script.display()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::{Latency, StepResult};
    use smr_bench::load::ErrorCounts;

    /// Shaped exactly as `machine-limits --json` writes it (the figures of the reference run).
    pub(crate) const MACHINE_JSON: &str = r#"{
  "date": "2026-11-23T17:53:02Z",
  "cores": 2,
  "kernel": "6.18.0",
  "filesystem": "ext4",
  "fio": "fio-3.33",
  "iperf3": "3.12",
  "sockperf": "3.7",
  "seconds_per_test": 10,
  "fdatasync_4k_iops": 5769,
  "fdatasync_4k_mb_s": 23.6,
  "fdatasync_4k_p50_us": 161,
  "fdatasync_4k_p99_us": 261,
  "fdatasync_4k_p999_us": 498,
  "fdatasync_64k_iops": 2376,
  "fdatasync_64k_mb_s": 155.7,
  "fdatasync_64k_p50_us": 285,
  "fdatasync_64k_p99_us": 489,
  "fdatasync_64k_p999_us": 1516,
  "fdatasync_256k_iops": 1132,
  "fdatasync_256k_mb_s": 296.7,
  "fdatasync_256k_p50_us": 375,
  "fdatasync_256k_p99_us": 684,
  "fdatasync_256k_p999_us": 2040,
  "fdatasync_prealloc_4k_iops": 8893,
  "fdatasync_prealloc_4k_mb_s": 36.4,
  "fdatasync_prealloc_4k_p50_us": 175,
  "fdatasync_prealloc_4k_p99_us": 185,
  "fdatasync_prealloc_4k_p999_us": 272,
  "fdatasync_prealloc_64k_iops": 5689,
  "fdatasync_prealloc_64k_mb_s": 372.8,
  "fdatasync_prealloc_64k_p50_us": 125,
  "fdatasync_prealloc_64k_p99_us": 239,
  "fdatasync_prealloc_64k_p999_us": 444,
  "fdatasync_prealloc_256k_iops": 2913,
  "fdatasync_prealloc_256k_mb_s": 763.6,
  "fdatasync_prealloc_256k_p50_us": 191,
  "fdatasync_prealloc_256k_p99_us": 342,
  "fdatasync_prealloc_256k_p999_us": 1499,
  "seq_write_mb_s": 517,
  "loopback_gbit_s": 16.2,
  "loopback_rtt_p50_us": 99,
  "loopback_rtt_p99_us": 108.8,
  "loopback_rtt_p999_us": 190.2
}
"#;

    /// Shaped exactly as `etcd --json` writes it: the script's jq object around etcd-load's rows.
    pub(crate) const ETCD_JSON: &str = r#"{
  "date": "2026-11-23T17:58:40Z",
  "etcd": "3.4.23",
  "go": "go1.19.8",
  "cores": 2,
  "members": 3,
  "target": "leader",
  "seconds_per_level": 10,
  "warmup_s": 1,
  "key_size": 16,
  "val_size": 128,
  "rows": [
    {"clients":1,"conns":1,"ops_per_s":792.3,"mean_ms":1.26,"p50_ms":1.18,"p90_ms":1.6,"p99_ms":2.52,"p999_ms":6.1,"max_ms":12.3,"cpu_ms_per_op":1.398,"errors":0,"ops":7923,"total_ops":8711},
    {"clients":16,"conns":16,"ops_per_s":3516,"mean_ms":4.5,"p50_ms":4.27,"p90_ms":6.9,"p99_ms":10.29,"p999_ms":18.3,"max_ms":30.2,"cpu_ms_per_op":0.395,"errors":0,"ops":35160,"total_ops":38700},
    {"clients":256,"conns":32,"ops_per_s":9809.4,"mean_ms":25.1,"p50_ms":24.42,"p90_ms":38.1,"p99_ms":56.76,"p999_ms":71.7,"max_ms":120.5,"cpu_ms_per_op":0.139,"errors":2,"ops":98094,"total_ops":107000}
  ]
}
"#;

    fn machine() -> MachineLimits {
        parse_machine_limits(Path::new("machine.json"), MACHINE_JSON.as_bytes()).unwrap()
    }

    fn etcd() -> EtcdResults {
        parse_etcd(Path::new("etcd.json"), ETCD_JSON.as_bytes()).unwrap()
    }

    #[test]
    fn reads_the_scripts_json() {
        let m = machine();
        assert_eq!(m.cores, 2);
        assert_eq!((m.fdatasync_prealloc_4k_p50_us, m.loopback_rtt_p50_us), (175.0, 99.0));
        assert_eq!(m.all["seq_write_mb_s"], 517);
        let e = etcd();
        assert_eq!(e.version, "3.4.23");
        assert_eq!(e.rows.len(), 3);
        assert_eq!((e.rows[2].clients, e.rows[2].conns, e.rows[2].errors), (256, 32, 2));
        assert!((e.rows[2].p99_us - 56_760.0).abs() < 1e-6);
        assert!((e.rows[0].ops_per_s - 792.3).abs() < 1e-9);
    }

    fn error_of(file: &str, json: &str, parse: fn(&Path, &[u8]) -> Result<(), String>) -> String {
        parse(Path::new(file), json.as_bytes()).expect_err(json)
    }

    fn machine_error(json: &str) -> String {
        error_of("m.json", json, |f, b| parse_machine_limits(f, b).map(drop))
    }

    fn etcd_error(json: &str) -> String {
        error_of("e.json", json, |f, b| parse_etcd(f, b).map(drop))
    }

    #[test]
    fn bad_json_is_refused_naming_the_file_and_the_field() {
        let without = MACHINE_JSON.replace("\"loopback_rtt_p50_us\": 99,", "");
        assert_eq!(machine_error(&without), "m.json: field `loopback_rtt_p50_us` is missing");
        let wrong =
            MACHINE_JSON.replace("\"fdatasync_prealloc_4k_p50_us\": 175", "\"fdatasync_prealloc_4k_p50_us\": \"fast\"");
        let error = machine_error(&wrong);
        assert!(
            error.starts_with("m.json: field `fdatasync_prealloc_4k_p50_us` is not a non-negative number"),
            "{error}"
        );
        assert!(machine_error("[1, 2]").contains("m.json: the top level is not a JSON object"));
        assert!(machine_error("{\"date\": ").starts_with("m.json: not JSON:"));
        let negative = MACHINE_JSON.replace("\"loopback_rtt_p50_us\": 99", "\"loopback_rtt_p50_us\": -1");
        assert!(machine_error(&negative).contains("`loopback_rtt_p50_us` is not a non-negative number: -1"));

        let bad_row = ETCD_JSON.replace("\"p99_ms\":10.29", "\"p99_ms\":null");
        assert_eq!(etcd_error(&bad_row), "e.json: field `rows[1].p99_ms` is not a non-negative number: null");
        let missing = ETCD_JSON.replace("\"clients\":256,", "");
        assert_eq!(etcd_error(&missing), "e.json: field `rows[2].clients` is missing");
        let fractional = ETCD_JSON.replace("\"errors\":2", "\"errors\":2.5");
        assert_eq!(etcd_error(&fractional), "e.json: field `rows[2].errors` is not a whole number: 2.5");
        let start = ETCD_JSON.find("\"rows\"").unwrap();
        let empty = format!("{}\"rows\": []}}", &ETCD_JSON[..start]);
        assert_eq!(etcd_error(&empty), "e.json: field `rows` is empty");
        let not_rows = format!("{}\"rows\": {{}}}}", &ETCD_JSON[..start]);
        assert_eq!(etcd_error(&not_rows), "e.json: field `rows` is not an array: {}");
        let not_object = format!("{}\"rows\": [3]}}", &ETCD_JSON[..start]);
        assert_eq!(etcd_error(&not_object), "e.json: field `rows[0]` is not a JSON object");
        assert!(etcd_error("{}").contains("e.json: field `rows` is missing"));
    }

    pub(crate) fn step(outstanding: usize, per_sec: f64, p50: f64, p99: f64) -> StepResult {
        StepResult {
            outstanding,
            connections: outstanding.min(16),
            leader: "127.0.0.1:7101".to_owned(),
            window_secs: 10.0,
            completed: (per_sec * 10.0) as u64,
            throughput_per_sec: per_sec,
            latency_us: Some(Latency { mean: p50, p50, p90: (p50 + p99) / 2.0, p99, p99_9: p99 * 1.5, max: p99 * 3.0 }),
            errors: ErrorCounts::default(),
            errors_outside_window: ErrorCounts::default(),
            unanswered: 0,
            stalls: 0,
            nodes_cpu_us_per_command: Some(100.0),
            client_cpu_us_per_command: Some(20.0),
            entries_per_fsync: Some(1.0),
            commands_per_entry: Some(1.0),
            leader_commit_latency_mean_us: Some(p50 * 0.8),
            leader_fsync_mean_us: Some(p50 * 0.4),
            leader_counters: None,
            latency_percentiles: Vec::new(),
            disk: None,
            memory: None,
        }
    }

    pub(crate) fn report_of(steps: Vec<StepResult>) -> BenchReport {
        BenchReport {
            local_cluster: true,
            node_settings: Vec::new(),
            nodes: 3,
            keys: 100_000,
            key_bytes: 16,
            value_bytes: 128,
            seed: 1,
            warmup_secs: 2,
            duration_secs: 10,
            steps,
            peers: None,
        }
    }

    fn table(report: &BenchReport, peers: &PeersReport) -> String {
        let mut out = Vec::new();
        write_table(&mut out, report, peers).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_side_by_side_table_and_the_targets() {
        // The session-2 figures: both targets missed.
        let steps =
            vec![step(1, 1297.0, 732.0, 1420.0), step(16, 8361.0, 1766.0, 4358.0), step(256, 44617.0, 5403.0, 11534.0)];
        let peers = PeersReport::new(&steps, machine(), etcd(), "m.json".into(), "e.json".into());
        let report = report_of(steps);
        assert_eq!(peers.comparison.len(), 3);
        let ratio = peers.comparison[2].throughput_ratio.unwrap();
        assert!((ratio - 44617.0 / 9809.4).abs() < 1e-9);
        assert_eq!(peers.targets[0].met, Some(false));
        assert_eq!(peers.targets[1].met, Some(false));
        let text = table(&report, &peers);
        let lines: Vec<&str> = text.lines().collect();
        // Header, then one row per level, right-aligned.
        assert!(
            lines[1].contains("smr puts/s") && lines[1].contains("etcd puts/s") && lines[1].contains("smr/etcd"),
            "{text}"
        );
        let row: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(row, ["256", "44,617", "5,403", "11,534", "9,809", "24,420", "56,760", "4.55", "x"], "{text}");
        assert!(text.contains("fdatasync p50 175 µs"), "{text}");
        assert!(text.contains("loopback RTT p50 99.0 µs"), "{text}");
        assert!(text.contains("gRPC connections per level 1: 1, 16: 16, 256: 32"), "{text}");
        assert!(text.contains("etcd errors: 2 at 256"), "{text}");
        // 1.5 × (175 + 2 × 99) = 559.5 µs.
        assert!(text.contains("[NOT MET] at 1 outstanding: p50 <= 1.5 x (fdatasync p50 175 µs + 2 x RTT p50 99 µs) = 560 µs: p50 732 µs"), "{text}");
        assert!(text.contains("[NOT MET] at 256 outstanding: throughput >= 30 x etcd's, with p99 <= etcd's: 4.5 x (44,617 vs 9,809 puts/s); p99 11,534 vs 56,760 µs"), "{text}");

        // Both met.
        let steps = vec![step(1, 2000.0, 500.0, 900.0), step(256, 300_000.0, 9000.0, 50_000.0)];
        let peers = PeersReport::new(&steps, machine(), etcd(), "m.json".into(), "e.json".into());
        assert_eq!((peers.targets[0].met, peers.targets[1].met), (Some(true), Some(true)));
        // Throughput enough but p99 above etcd's: not met.
        let steps = vec![step(256, 300_000.0, 9000.0, 60_000.0)];
        let peers = PeersReport::new(&steps, machine(), etcd(), "m.json".into(), "e.json".into());
        assert_eq!(peers.targets[0].met, Some(false));
        // No 1-outstanding step: not measured, and a level etcd did not run shows dashes.
        assert_eq!(peers.targets[1].met, None);
        let steps = vec![step(64, 20_000.0, 3000.0, 6000.0)];
        let peers = PeersReport::new(&steps, machine(), etcd(), "m.json".into(), "e.json".into());
        assert_eq!((peers.targets[0].met, peers.comparison[0].etcd_per_sec), (None, None));
        let text = table(&report_of(steps), &peers);
        assert!(text.contains("[not measured] at 256 outstanding"), "{text}");
        let row: Vec<&str> = text.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(row, ["64", "20,000", "3,000", "6,000", "-", "-", "-", "-"], "{text}");
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
    }

    #[test]
    fn missing_scripts_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = scripts(dir.path()).unwrap_err();
        assert!(error.contains("no script machine-limits there"), "{error}");
        std::fs::write(dir.path().join(MACHINE_LIMITS_SCRIPT), "").unwrap();
        let error = scripts(dir.path()).unwrap_err();
        assert!(error.contains("no script etcd there"), "{error}");
    }
}
