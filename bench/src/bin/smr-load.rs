//! `smr-load`: drives an existing smr cluster, closed loop (N outstanding over C connections)
//! or open loop (a target rate, latency from the intended send time), with a progress bar, a
//! final table of throughput and latency percentiles, and optional JSON summary, HdrHistogram
//! interval log and operation history (for `smr-lincheck`).

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use smr_bench::admin;
use smr_bench::history::HistoryWriter;
use smr_bench::keys::Distribution;
use smr_bench::load::{self, ErrorCounts, LoadSpec, Monitor, Observers, StepLoad, Tick};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Closed,
    Open,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum KeyDistribution {
    Uniform,
    Zipfian,
}

#[derive(Debug, Parser)]
#[command(name = "smr-load", about = "Load generator for an smr cluster: closed or open loop, latency percentiles")]
struct Args {
    /// Client addresses of the cluster's nodes, comma-separated (the leader is found).
    #[arg(long, value_delimiter = ',', required = true)]
    cluster: Vec<SocketAddr>,
    /// closed: a fixed number of commands in flight; open: a fixed rate.
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    mode: Mode,
    /// Commands in flight (closed loop), or the most in flight (open loop).
    #[arg(long, default_value_t = 64, value_parser = positive_usize)]
    outstanding: usize,
    /// Connections (one thread each) sharing the outstanding commands; at most --outstanding.
    #[arg(long, default_value_t = 8, value_parser = positive_usize)]
    connections: usize,
    /// Open loop: operations per second over all connections.
    #[arg(long, value_parser = positive_rate)]
    rate: Option<f64>,
    /// Distinct 16-byte keys.
    #[arg(long, default_value_t = 100_000, value_parser = positive_u64)]
    keys: u64,
    #[arg(long, value_enum, default_value_t = KeyDistribution::Uniform)]
    distribution: KeyDistribution,
    /// Zipfian exponent, in (0, 1).
    #[arg(long, default_value_t = 0.99, value_parser = zipf_theta)]
    zipf_theta: f64,
    /// Bytes per value written.
    #[arg(long, default_value_t = 128)]
    value_bytes: usize,
    /// Fraction of operations that are linearizable reads, 0.0 to 1.0.
    #[arg(long, default_value_t = 0.0, value_parser = ratio)]
    read_ratio: f64,
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10, value_parser = positive_u64)]
    duration_secs: u64,
    /// Seed of the key and operation sequences.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write a JSON summary here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the measured window's latencies (ns) as 1 s interval histograms in the
    /// HdrHistogram log format here.
    #[arg(long)]
    hdr_log: Option<PathBuf>,
    /// Record every operation (warm-up included) here as JSON lines, checkable with smr-lincheck.
    #[arg(long)]
    history: Option<PathBuf>,
}

fn positive_u64(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(value) => Ok(value),
        Err(error) => Err(format!("{text:?} is not a positive integer: {error}")),
    }
}

fn positive_usize(text: &str) -> Result<usize, String> {
    positive_u64(text).and_then(|value| usize::try_from(value).map_err(|e| e.to_string()))
}

fn float(text: &str) -> Result<f64, String> {
    text.trim().parse::<f64>().map_err(|e| format!("{text:?} is not a number: {e}"))
}

fn ratio(text: &str) -> Result<f64, String> {
    float(text).and_then(|r| if (0.0..=1.0).contains(&r) { Ok(r) } else { Err(format!("{r} is not in 0.0..=1.0")) })
}

fn positive_rate(text: &str) -> Result<f64, String> {
    float(text).and_then(|r| if r.is_finite() && r > 0.0 { Ok(r) } else { Err(format!("{r} is not a positive rate")) })
}

fn zipf_theta(text: &str) -> Result<f64, String> {
    float(text)
        .and_then(|t| if t > 0.0 && t < 1.0 { Ok(t) } else { Err(format!("{t} is not strictly between 0 and 1")) })
}

impl Args {
    /// Checks what a single flag's parser cannot: combinations.
    fn validate(&self) -> Result<(), clap::Error> {
        use clap::CommandFactory;
        let fail = |message: &str| Err(Args::command().error(clap::error::ErrorKind::ArgumentConflict, message));
        match (self.mode, self.rate) {
            (Mode::Open, None) => return fail("--mode open needs --rate (operations per second, > 0)"),
            (Mode::Closed, Some(_)) => return fail("--rate is for --mode open; closed loop runs at --outstanding"),
            _ => {}
        }
        if self.connections > self.outstanding {
            return fail("--connections must not exceed --outstanding (each connection needs a command in flight)");
        }
        Ok(())
    }

    fn parse_valid<I: IntoIterator<Item = String>>(args: I) -> Result<Args, clap::Error> {
        let args = Args::try_parse_from(args)?;
        args.validate()?;
        Ok(args)
    }
}

fn main() -> ExitCode {
    // clap prints a clear message and exits with code 2 on a bad flag.
    let args = Args::parse_valid(std::env::args()).unwrap_or_else(|error| error.exit());
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("smr-load: {error}");
            ExitCode::FAILURE
        }
    }
}

/// One interval of the measured window: start since the run began, length, latencies.
type Interval = (Duration, Duration, Histogram<u64>);

/// The progress bar and the interval log, fed every second.
struct Watch {
    bar: ProgressBar,
    so_far: Histogram<u64>,
    /// The measured intervals, kept for `--hdr-log`.
    log: Option<Vec<Interval>>,
}

impl Monitor for Watch {
    fn tick(&mut self, tick: &Tick<'_>) {
        let ops = tick.latency.len() as f64 / tick.length.as_secs_f64().max(1e-9);
        let p99 = if tick.measuring {
            self.so_far.add(tick.latency).expect("same bounds");
            if let Some(intervals) = &mut self.log {
                intervals.push((tick.start, tick.length, tick.latency.clone()));
            }
            self.so_far.value_at_quantile(0.99)
        } else {
            tick.latency.value_at_quantile(0.99)
        };
        let phase = if tick.measuring { "measuring" } else { "warm-up" };
        self.bar.set_message(format!("{phase}  {ops:>10.0} ops/s  p99 so far {:>9.3} ms", p99 as f64 / 1e6));
    }
}

fn run(args: &Args) -> Result<(), String> {
    let leader = admin::wait_for_leader(&args.cluster, Duration::from_secs(30))?;
    let history = match &args.history {
        Some(path) => {
            let file = File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            Some(Arc::new(HistoryWriter::new(Box::new(file))))
        }
        None => None,
    };
    let spec = LoadSpec {
        outstanding: args.outstanding,
        connections: args.connections,
        keys: args.keys,
        distribution: match args.distribution {
            KeyDistribution::Uniform => Distribution::Uniform,
            KeyDistribution::Zipfian => Distribution::Zipfian { theta: args.zipf_theta },
        },
        read_ratio: args.read_ratio,
        rate: args.rate,
        value_bytes: args.value_bytes,
        seed: args.seed,
        session_base: load::session_base(),
        warmup: Duration::from_secs(args.warmup_secs),
        duration: Duration::from_secs(args.duration_secs),
    };
    eprintln!(
        "smr-load: {:?} loop to leader {leader}, {} outstanding over {} connections{}",
        args.mode,
        args.outstanding,
        args.connections,
        args.rate.map(|r| format!(", {r} ops/s")).unwrap_or_default()
    );
    let total = args.warmup_secs + args.duration_secs;
    let bar = if io::stdout().is_terminal() {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {msg}").expect("constant template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut watch = Watch { bar, so_far: load::new_histogram(), log: args.hdr_log.as_ref().map(|_| Vec::new()) };
    let started_at = SystemTime::now();
    let outcome = {
        let observers = Observers { history, monitor: Some(Mutex::new(&mut watch as &mut dyn Monitor)) };
        load::run_step_observed(leader, &args.cluster, &spec, &observers, || (), || ())
    };
    watch.bar.finish_and_clear();
    let (step, (), ()) = outcome?;

    let summary = Summary::new(args, &step);
    print_table(&summary, &step).map_err(|e| format!("cannot write the table: {e}"))?;
    if let Some(path) = &args.json {
        let mut bytes = serde_json::to_vec_pretty(&summary).expect("plain data always serialises");
        bytes.push(b'\n');
        std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let (Some(path), Some(intervals)) = (&args.hdr_log, watch.log) {
        let mut buffer = Vec::new();
        write_hdr_log(&mut buffer, started_at, args.warmup_secs, &intervals)
            .map_err(|e| format!("cannot encode the interval log: {e}"))?;
        std::fs::write(path, buffer).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The standard HdrHistogram interval log: V2 deflate-compressed histograms of latency in ns,
/// one per second of the measured window (timestamps from the start of the run), with a max
/// value divisor of 10^6 so that the "Interval_Max" column reads in ms.
fn write_hdr_log(
    out: &mut Vec<u8>,
    started_at: SystemTime,
    warmup_secs: u64,
    intervals: &[Interval],
) -> Result<(), String> {
    let mut serializer = V2DeflateSerializer::new();
    let mut writer = IntervalLogWriterBuilder::new()
        .add_comment("smr-load: latency in ns, measured window only")
        .add_comment(&format!("warm-up of {warmup_secs} s precedes the first interval"))
        .with_start_time(started_at)
        .with_base_time(started_at)
        .with_max_value_divisor(1e6)
        .begin_log_with(out, &mut serializer)
        .map_err(|e| e.to_string())?;
    for (start, length, histogram) in intervals {
        writer.write_histogram(histogram, *start, *length, None).map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct Percentiles {
    count: u64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p99_9_us: f64,
    p99_99_us: f64,
    max_us: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        (!h.is_empty()).then(|| Percentiles {
            count: h.len(),
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p99_9_us: us(0.999),
            p99_99_us: us(0.9999),
            max_us: h.max() as f64 / 1e3,
        })
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    mode: Mode,
    rate: Option<f64>,
    outstanding: usize,
    connections: usize,
    keys: u64,
    distribution: KeyDistribution,
    zipf_theta: Option<f64>,
    value_bytes: usize,
    read_ratio: f64,
    seed: u64,
    warmup_secs: u64,
    window_secs: f64,
    throughput_ops: f64,
    all: Option<Percentiles>,
    writes: Option<Percentiles>,
    reads: Option<Percentiles>,
    write_errors: ErrorCounts,
    read_errors: ErrorCounts,
    errors_outside_window: ErrorCounts,
    unanswered: u64,
    stalls: u64,
}

impl Summary {
    fn new(args: &Args, step: &StepLoad) -> Summary {
        let mut write_errors = step.errors_window;
        // errors_window counts reads too; take them out.
        let reads = &step.read_errors_window;
        write_errors.not_leader -= reads.not_leader;
        write_errors.busy -= reads.busy;
        write_errors.timed_out -= reads.timed_out;
        write_errors.too_large -= reads.too_large;
        write_errors.other -= reads.other;
        Summary {
            mode: args.mode,
            rate: args.rate,
            outstanding: args.outstanding,
            connections: args.connections,
            keys: args.keys,
            distribution: args.distribution,
            zipf_theta: (args.distribution == KeyDistribution::Zipfian).then_some(args.zipf_theta),
            value_bytes: args.value_bytes,
            read_ratio: args.read_ratio,
            seed: args.seed,
            warmup_secs: args.warmup_secs,
            window_secs: step.window.as_secs_f64(),
            throughput_ops: step.completed as f64 / step.window.as_secs_f64().max(1e-9),
            all: Percentiles::of(&step.latency),
            writes: Percentiles::of(&step.write_latency),
            reads: Percentiles::of(&step.read_latency),
            write_errors,
            read_errors: step.read_errors_window,
            errors_outside_window: step.errors_outside,
            unanswered: step.unanswered,
            stalls: step.stalls,
        }
    }
}

fn print_table(summary: &Summary, step: &StepLoad) -> io::Result<()> {
    let mut out = io::stdout().lock();
    let window = step.window.as_secs_f64().max(1e-9);
    writeln!(
        out,
        "{} loop, {} s measured: {:.0} ops/s ({} completed)",
        if summary.mode == Mode::Open { "open" } else { "closed" },
        format_args!("{:.1}", summary.window_secs),
        summary.throughput_ops,
        step.completed
    )?;
    writeln!(
        out,
        "{:<7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "p99.99 ms", "max ms", "errors"
    )?;
    let rows = [
        ("writes", &summary.writes, step.completed - step.reads_completed, &summary.write_errors),
        ("reads", &summary.reads, step.reads_completed, &summary.read_errors),
    ];
    for (name, latency, completed, errors) in rows {
        let ms = |us: f64| format!("{:.3}", us / 1e3);
        let cells: Vec<String> = match latency {
            Some(l) => [l.p50_us, l.p90_us, l.p99_us, l.p99_9_us, l.p99_99_us, l.max_us].map(ms).to_vec(),
            None => vec!["-".to_owned(); 6],
        };
        writeln!(
            out,
            "{name:<7} {:>10.0} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            completed as f64 / window,
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            errors.total()
        )?;
    }
    for (name, errors) in [("writes", &summary.write_errors), ("reads", &summary.read_errors)] {
        if errors.total() > 0 {
            writeln!(out, "errors, {name}: {errors}")?;
        }
    }
    if summary.errors_outside_window.total() > 0 {
        writeln!(out, "errors in warm-up and drain: {}", summary.errors_outside_window)?;
    }
    if summary.unanswered > 0 || summary.stalls > 0 {
        writeln!(out, "unanswered at the end: {}; 1 s waits with no answer: {}", summary.unanswered, summary.stalls)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        let base = ["smr-load", "--cluster", "127.0.0.1:7101"];
        Args::parse_valid(base.iter().chain(args).map(|s| (*s).to_owned()))
    }

    #[test]
    fn defaults_parse() {
        let args = parse(&[]).unwrap();
        assert_eq!((args.mode, args.outstanding, args.connections), (Mode::Closed, 64, 8));
        let args = parse(&["--mode", "open", "--rate", "5000", "--distribution", "zipfian", "--read-ratio", "0.5"]);
        assert_eq!(args.unwrap().rate, Some(5000.0));
    }

    #[test]
    fn bad_flags_are_refused_with_a_clear_message() {
        let cases: &[(&[&str], &str)] = &[
            (&["--read-ratio", "1.5"], "not in 0.0..=1.0"),
            (&["--read-ratio=-0.1"], "not in 0.0..=1.0"),
            (&["--mode", "open", "--rate", "0"], "not a positive rate"),
            (&["--mode", "open"], "needs --rate"),
            (&["--rate", "100"], "is for --mode open"),
            (&["--zipf-theta", "1"], "strictly between"),
            (&["--outstanding", "0"], "at least 1"),
            (&["--outstanding", "4", "--connections", "8"], "must not exceed"),
            (&["--mode", "sideways"], "invalid value"),
            (&["--distribution", "normal"], "invalid value"),
        ];
        for (flags, expected) in cases {
            let error = parse(flags).expect_err(&format!("{flags:?}"));
            assert_eq!(error.exit_code(), 2, "{flags:?}");
            assert!(error.to_string().contains(expected), "{flags:?}: {error}");
        }
        let error = Args::parse_valid(["smr-load".to_owned()]).unwrap_err();
        assert!(error.to_string().contains("--cluster"), "{error}");
    }

    #[test]
    fn hdr_logs_read_back() {
        let mut h = load::new_histogram();
        h.record(1_500_000).unwrap();
        let mut buffer = Vec::new();
        let intervals = vec![(Duration::from_secs(2), Duration::from_secs(1), h)];
        write_hdr_log(&mut buffer, SystemTime::now(), 2, &intervals).unwrap();
        let entries: Vec<_> = hdrhistogram::serialization::interval_log::IntervalLogIterator::new(&buffer)
            .filter_map(|entry| match entry.unwrap() {
                hdrhistogram::serialization::interval_log::LogEntry::Interval(interval) => Some(interval),
                _ => None,
            })
            .collect();
        assert_eq!(entries.len(), 1);
        assert!((entries[0].max() - 1.5).abs() < 0.01, "{}", entries[0].max());
    }
}
