//! Sweeps the durable log's append path: record sizes x concurrent appenders x I/O path.
//!
//! Each cell runs a closed loop on the log writer's thread: `appenders` records are kept
//! outstanding, one submit (one entry) each; whenever the durable watermark passes some of them,
//! their appenders submit their next record at once. That is how the log stage sees many clients
//! behind the sequencer, and it shows group commit directly: with N outstanding, one fsync covers
//! up to N records. Payloads are slices of a random buffer (never zeros: on this disk zeros are
//! several times faster than real data).
//!
//! ```text
//! cargo run --release -p smr-log --bin log_bench -- [--seconds S] [--sizes 64,4096] \
//!     [--appenders 1,16,256] [--io both|uring|fallback] [--dir DIR] [--recovery-mib 256]
//! ```
//! The data directory (default: a temporary directory under the current directory, so the disk
//! measured is the project's) is removed after each cell.
#![allow(clippy::print_stdout)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use smr_log::{IoMode, Log, LogConfig};
use smr_raft::{Entry, EntryKind};

struct Args {
    seconds: f64,
    /// MiB written before timing a reopen (recovery checks every record); 0 skips it.
    recovery_mib: usize,
    sizes: Vec<usize>,
    appenders: Vec<usize>,
    modes: Vec<IoMode>,
    dir: PathBuf,
}

const USAGE: &str = "usage: log_bench [--seconds S] [--sizes 64,4096] [--appenders 1,16,256] \
[--io both|uring|fallback] [--dir DIR] [--recovery-mib 256]";

/// A bad flag ends the run with a message that names it and the usage, never a panic.
fn bad_flag(message: String) -> ! {
    eprintln!("log_bench: {message}\n{USAGE}");
    std::process::exit(2)
}

fn parse_list(flag: &str, value: &str) -> Vec<usize> {
    let list: Vec<usize> = value
        .split(',')
        .map(|v| v.trim().parse().unwrap_or_else(|_| bad_flag(format!("{flag}: not a number: {v:?}"))))
        .collect();
    if list.contains(&0) {
        bad_flag(format!("{flag}: values must be positive"));
    }
    list
}

fn parse_args() -> Args {
    let mut args = Args {
        seconds: 1.0,
        recovery_mib: 256,
        sizes: vec![64, 512, 4096, 16384, 65536],
        appenders: vec![1, 4, 16, 64, 256],
        modes: vec![IoMode::Uring, IoMode::Fallback],
        dir: std::env::current_dir().unwrap_or_else(|e| bad_flag(format!("no current directory: {e}"))),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it.next().unwrap_or_else(|| bad_flag(format!("{flag} needs a value")));
        match flag.as_str() {
            "--seconds" => {
                args.seconds = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0)
                    .unwrap_or_else(|| bad_flag(format!("--seconds takes a positive number, not {value:?}")))
            }
            "--recovery-mib" => {
                args.recovery_mib =
                    value.parse().unwrap_or_else(|_| bad_flag(format!("--recovery-mib takes a number, not {value:?}")))
            }
            "--sizes" => args.sizes = parse_list("--sizes", &value),
            "--appenders" => args.appenders = parse_list("--appenders", &value),
            "--dir" => args.dir = PathBuf::from(value),
            "--io" => {
                args.modes = match value.as_str() {
                    "both" => vec![IoMode::Uring, IoMode::Fallback],
                    "uring" => vec![IoMode::Uring],
                    "fallback" => vec![IoMode::Fallback],
                    other => bad_flag(format!("--io takes both, uring or fallback, not {other:?}")),
                }
            }
            other => bad_flag(format!("unknown flag {other:?}")),
        }
    }
    args
}

/// A random, non-zero-heavy buffer that payloads are sliced from (zero-copy, like the runtime).
fn random_pool(bytes: usize) -> Bytes {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut pool = Vec::with_capacity(bytes);
    while pool.len() < bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        pool.extend_from_slice(&state.to_le_bytes());
    }
    Bytes::from(pool)
}

struct Cell {
    records: u64,
    payload_bytes: u64,
    syncs: u64,
    seconds: f64,
    latencies_us: Vec<f64>,
}

fn run_cell(args: &Args, mode: IoMode, size: usize, appenders: usize, pool: &Bytes) -> Cell {
    let dir = args.dir.join(format!("log-bench-{}-{size}-{appenders}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = LogConfig::new(1, 1, 0);
    config.io_mode = mode;
    config.inflight_writes_max = 1024;
    let (mut log, _) = Log::open(&dir, config).expect("open");
    // Let the preallocator get its spares ready before the clock starts.
    std::thread::sleep(Duration::from_millis(300));
    let mut index = 0u64;
    let mut offset = 0usize;
    // (token, submitted at) of each outstanding record, in token order.
    let mut outstanding: VecDeque<(u64, Instant)> = VecDeque::with_capacity(appenders);
    let mut latencies_us = Vec::new();
    let mut submit = |log: &mut Log, outstanding: &mut VecDeque<(u64, Instant)>| {
        index += 1;
        if offset + size > pool.len() {
            offset = 0;
        }
        let data = pool.slice(offset..offset + size);
        offset += size.max(1) * 7 % 4093 + 1;
        let entry = Entry { index, term: 1, kind: EntryKind::Normal, data };
        log.submit(index, std::slice::from_ref(&entry), None).expect("submit");
        outstanding.push_back((index, Instant::now()));
    };
    let stats_before = log.stats();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let mut completed = 0u64;
    while Instant::now() < deadline {
        while outstanding.len() < appenders {
            submit(&mut log, &mut outstanding);
        }
        let durable = log.wait().expect("wait");
        let now = Instant::now();
        while outstanding.front().is_some_and(|&(token, _)| token <= durable.token) {
            let (_, at) = outstanding.pop_front().expect("front");
            if appenders == 1 {
                latencies_us.push(now.duration_since(at).as_secs_f64() * 1e6);
            }
            completed += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let stats = log.stats();
    log.sync_all().expect("sync");
    drop(log);
    std::fs::remove_dir_all(&dir).expect("remove the cell's data directory");
    Cell {
        records: completed,
        payload_bytes: completed * size as u64,
        syncs: stats.syncs_completed - stats_before.syncs_completed,
        seconds,
        latencies_us,
    }
}

/// The disk's own figure in the same run: 4 KiB `pwrite` + `fdatasync` at queue depth 1 on a
/// preallocated, fsynced file of random data (what fio's `fdatasync_prealloc_4k` measures).
fn raw_fdatasync_us(args: &Args, pool: &Bytes) -> (f64, f64) {
    use std::os::unix::fs::FileExt;
    let path = args.dir.join(format!("log-bench-probe-{}", std::process::id()));
    let file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).expect("probe file");
    let span = 8 << 20;
    file.write_all_at(&pool[..span], 0).expect("fill");
    file.sync_all().expect("sync");
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed().as_secs_f64() < args.seconds {
        let at = (i * 4096) % span;
        let t = Instant::now();
        file.write_all_at(&pool[at..at + 4096], at as u64).expect("write");
        file.sync_data().expect("fdatasync");
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
        i += 1;
    }
    drop(file);
    std::fs::remove_file(&path).expect("remove probe");
    latencies.sort_by(|a, b| a.total_cmp(b));
    (percentile(&latencies, 50.0), percentile(&latencies, 99.0))
}

/// Writes `recovery_mib` of 4 KiB records, then times `Log::open` (every CRC checked, the zero
/// tail of the last segment scanned, everything recovered synced). Page cache warm: this is the
/// CPU cost of recovery, not the disk's read speed.
fn recovery(args: &Args, pool: &Bytes) -> (f64, f64) {
    let dir = args.dir.join(format!("log-bench-recovery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = LogConfig::new(1, 1, 0);
    let records = (args.recovery_mib << 20) / 4096;
    {
        let (mut log, _) = Log::open(&dir, config.clone()).expect("open");
        let mut index = 0u64;
        for token in 1..=(records as u64).div_ceil(256) {
            let entries: Vec<Entry> = (0..256)
                .map(|i| {
                    index += 1;
                    let at = (i * 4099) % (pool.len() - 4096);
                    Entry { index, term: 1, kind: EntryKind::Normal, data: pool.slice(at..at + 4096) }
                })
                .collect();
            log.submit(token, &entries, None).expect("submit");
            log.poll().expect("poll");
        }
        log.sync_all().expect("sync");
    }
    let start = Instant::now();
    let (log, recovered) = Log::open(&dir, config).expect("reopen");
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(recovered.last_index as usize, records.div_ceil(256) * 256);
    drop(log);
    std::fs::remove_dir_all(&dir).expect("remove the recovery data directory");
    (seconds, args.recovery_mib as f64 * 1.048_576 / seconds)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize - 1;
    sorted[rank.min(sorted.len() - 1)]
}

fn main() {
    let args = parse_args();
    let pool = random_pool(8 << 20);
    println!(
        "{:<18} {:>8} {:>9} {:>10} {:>12} {:>12} {:>10} {:>10}",
        "io", "size_B", "appenders", "MB/s", "records/s", "rec/fsync", "p50_us", "p99_us"
    );
    for &mode in &args.modes {
        let (p50, p99) = raw_fdatasync_us(&args, &pool);
        println!(
            "{:<18} {:>8} {:>9} {:>10} {:>12} {:>12} {:>10.0} {:>10.0}",
            "raw-disk-probe", 4096, 1, "-", "-", "-", p50, p99
        );
        for &size in &args.sizes {
            for &appenders in &args.appenders {
                let mut cell = run_cell(&args, mode, size, appenders, &pool);
                cell.latencies_us.sort_by(|a, b| a.total_cmp(b));
                let name = if mode == IoMode::Uring { "io_uring" } else { "pwrite+fdatasync" };
                let (p50, p99) = if appenders == 1 {
                    (
                        format!("{:.0}", percentile(&cell.latencies_us, 50.0)),
                        format!("{:.0}", percentile(&cell.latencies_us, 99.0)),
                    )
                } else {
                    ("-".into(), "-".into())
                };
                println!(
                    "{:<18} {:>8} {:>9} {:>10.1} {:>12.0} {:>12.1} {:>10} {:>10}",
                    name,
                    size,
                    appenders,
                    cell.payload_bytes as f64 / cell.seconds / 1e6,
                    cell.records as f64 / cell.seconds,
                    cell.records as f64 / cell.syncs.max(1) as f64,
                    p50,
                    p99
                );
            }
        }
    }
    if args.recovery_mib > 0 {
        let (seconds, mb_s) = recovery(&args, &pool);
        println!(
            "recovery: reopening {} MiB of 4 KiB records took {:.3} s ({:.0} MB/s checked)",
            args.recovery_mib, seconds, mb_s
        );
    }
}
