//! The cost of the C boundary: the same workload through the C API (`examples/bench.c` linked
//! with `libsmr.a`) and through the Rust API (smr-runtime's `Node::submit`), alternating, in one
//! command:
//!
//! ```sh
//! cargo bench -p smr-capi --bench boundary                          # 1 and 64 outstanding, 3 rounds of 5 s
//! cargo bench -p smr-capi --bench boundary -- --rounds 5 --seconds 10 --outstanding 1,16,64
//! ```
//!
//! Each run is a fresh process with a 3-node cluster on loopback (free ports, data in a new
//! temporary directory, default config), a warm-up, then `--seconds` of puts on the leader with
//! `--outstanding` in flight: each completion records its latency and proposes the next put from
//! inside the completion. A put is a 16-byte key (uniform over 10 000) and a 128-byte value; the
//! state machine is a fixed-size hash map, written twice to the same design (`kv_*` in bench.c,
//! [`KvTable`] here), whose result is the key's previous value. Every run checks its results, and
//! that the three replicas applied the same commands and reached the same state hash; a run that
//! fails those checks fails the benchmark.
//!
//! The table gives, per depth and side, the median over the rounds of throughput, of the p50
//! and p99 latencies (proposal to completion) and of the CPU time per put (user + system of the
//! whole process over the measured seconds: the figure least disturbed by other load on the
//! machine), and the C/Rust ratios. The benchmark compiles
//! bench.c itself with `gcc -O2` against the `libsmr.a` cargo built with this profile.
//!
//! `--side rust DIR OUTSTANDING (--seconds S --warmup W | --ops N)` runs the Rust half once and
//! prints its JSON line, the same as bench.c's.

// A benchmark's output is its point.
#![allow(clippy::print_stdout)]

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use smr_apply::{ApplyBatch, RestoreError, Results, StateMachine};
use smr_net::{Consistency, RequestBody, ResponseBody};
use smr_runtime::{InitialState, Node, config_file};

const NODES: usize = 3;
const KEY_BYTES: usize = 16;
const VALUE_BYTES: usize = 128;
const COMMAND_BYTES: usize = KEY_BYTES + VALUE_BYTES;
const KEYS: u64 = 10_000;
const TABLE_SLOTS: usize = 16_384;
const TABLE_ENTRIES_MAX: usize = 12_288;
const OUTSTANDING_MAX: usize = 1024;
/// Latency samples kept per run; later completions are counted, not sampled.
const SAMPLES_MAX: usize = 1 << 22;
const SESSION: u64 = 1;
const TIMEOUT: Duration = Duration::from_secs(5);
/// As bench.c's: a 1 s election timeout, so that a late heartbeat on a loaded machine does not
/// move the leader in the middle of a run.
const ELECTION_TICKS: u32 = 100;
/// A run that fails its checks (a leader change, say) is run again, at most this many times.
const RUN_RETRIES_MAX: usize = 2;

// ---- The state machine: the same as kv_* in examples/bench.c. ----

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn le64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

fn fnv1a64(mut hash: u64, data: &[u8]) -> u64 {
    for &byte in data {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[derive(Clone, Copy)]
struct Entry {
    used: bool,
    key: [u8; KEY_BYTES],
    value: [u8; VALUE_BYTES],
}

const EMPTY: Entry = Entry { used: false, key: [0; KEY_BYTES], value: [0; VALUE_BYTES] };

struct KvTable {
    slots: Vec<Entry>,
    count: usize,
    applied: u64,
}

impl KvTable {
    fn new() -> KvTable {
        KvTable { slots: vec![EMPTY; TABLE_SLOTS], count: 0, applied: 0 }
    }

    /// The slot of `key`, or the empty slot where it goes; `None` when the map is full.
    fn find(&self, key: &[u8]) -> Option<usize> {
        let mut at = (mix64(le64(key)) as usize) & (TABLE_SLOTS - 1);
        for _ in 0..TABLE_SLOTS {
            let entry = &self.slots[at];
            if !entry.used || entry.key == key[..KEY_BYTES] {
                return Some(at);
            }
            at = (at + 1) & (TABLE_SLOTS - 1);
        }
        None
    }

    fn hash(&self) -> u64 {
        self.slots
            .iter()
            .filter(|e| e.used)
            .fold(0u64, |sum, e| sum.wrapping_add(fnv1a64(fnv1a64(0xcbf2_9ce4_8422_2325, &e.key), &e.value)))
    }
}

/// The state machine of one node; the driver reads the table at the end.
struct Kv(Arc<Mutex<KvTable>>);

impl StateMachine for Kv {
    fn apply(&mut self, batch: &ApplyBatch<'_>, results: &mut Results) {
        let mut kv = self.0.lock().expect("kv lock");
        for (position, command) in batch.commands() {
            if command.len() != COMMAND_BYTES {
                results.set(position, Bytes::copy_from_slice(b"ERR malformed"));
                continue;
            }
            let at = kv.find(command);
            let Some(at) = at.filter(|&at| kv.slots[at].used || kv.count < TABLE_ENTRIES_MAX) else {
                results.set(position, Bytes::copy_from_slice(b"ERR full"));
                continue;
            };
            if kv.slots[at].used {
                results.set(position, Bytes::copy_from_slice(&kv.slots[at].value));
            } else {
                results.set(position, Bytes::copy_from_slice(&[]));
                kv.slots[at].used = true;
                kv.slots[at].key.copy_from_slice(&command[..KEY_BYTES]);
                kv.count += 1;
            }
            kv.slots[at].value.copy_from_slice(&command[KEY_BYTES..]);
            kv.applied += 1;
        }
    }

    fn query(&self, _query: &[u8]) -> Bytes {
        Bytes::new()
    }

    fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let kv = self.0.lock().expect("kv lock");
        out.write_all(&(kv.count as u64).to_le_bytes())?;
        out.write_all(&kv.applied.to_le_bytes())?;
        for entry in kv.slots.iter().filter(|e| e.used) {
            out.write_all(&entry.key)?;
            out.write_all(&entry.value)?;
        }
        Ok(())
    }

    fn restore(&mut self, input: &mut dyn std::io::Read) -> Result<(), RestoreError> {
        let mut header = [0u8; 16];
        input.read_exact(&mut header)?;
        let count = le64(&header) as usize;
        if count > TABLE_ENTRIES_MAX {
            return Err(RestoreError::Malformed(format!("{count} entries")));
        }
        let mut kv = self.0.lock().expect("kv lock");
        *kv = KvTable::new();
        kv.applied = le64(&header[8..]);
        for _ in 0..count {
            let mut record = [0u8; COMMAND_BYTES];
            input.read_exact(&mut record)?;
            let at = kv.find(&record).filter(|&at| !kv.slots[at].used);
            let at = at.ok_or_else(|| RestoreError::Malformed("a key twice".into()))?;
            kv.slots[at] = Entry {
                used: true,
                key: record[..KEY_BYTES].try_into().expect("key"),
                value: record[KEY_BYTES..].try_into().expect("value"),
            };
            kv.count += 1;
        }
        Ok(())
    }

    fn state_hash(&self) -> u64 {
        self.0.lock().expect("kv lock").hash()
    }
}

// ---- The Rust half's driver: the same as bench.c's. ----

/// User and system CPU time of this process (all three nodes and the driver), in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given, owned by this frame.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &raw mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The put of write `id`, as bench.c's `make_command`.
fn make_command(id: u64) -> [u8; COMMAND_BYTES] {
    let mut command = [0u8; COMMAND_BYTES];
    let k = mix64(id) % KEYS;
    command[..8].copy_from_slice(&k.to_le_bytes());
    command[8..16].copy_from_slice(&mix64(!k).to_le_bytes());
    command.copy_within(..KEY_BYTES, KEY_BYTES);
    command[2 * KEY_BYTES..2 * KEY_BYTES + 8].copy_from_slice(&id.to_le_bytes());
    for (j, byte) in command.iter_mut().enumerate().skip(2 * KEY_BYTES + 8) {
        *byte = id.wrapping_add(j as u64) as u8;
    }
    command
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

struct Driver {
    leader: Arc<Node>,
    ops_limit: u64,
    phase: AtomicU8,
    next_id: AtomicU64,
    completed: AtomicU64,
    measured: AtomicU64,
    errors: AtomicU64,
    bad_results: AtomicU64,
    active: AtomicUsize,
    error_printed: AtomicBool,
    busy: Vec<AtomicBool>,
    samples: Box<[AtomicU32]>,
    sample_count: AtomicUsize,
}

impl Driver {
    fn slot_idle(&self, slot: usize) {
        self.busy[slot].store(false, Ordering::SeqCst);
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    fn report_error(&self, what: &str) {
        self.errors.fetch_add(1, Ordering::SeqCst);
        if !self.error_printed.swap(true, Ordering::SeqCst) {
            eprintln!("bench: {what}");
        }
    }

    /// Proposes the next put of `slot` (marked busy by the caller).
    fn issue(self: &Arc<Driver>, slot: usize) {
        let id =
            if self.phase.load(Ordering::SeqCst) == STOP { 0 } else { self.next_id.fetch_add(1, Ordering::SeqCst) };
        if id == 0 || (self.ops_limit != 0 && id > self.ops_limit) {
            return self.slot_idle(slot);
        }
        let command = make_command(id);
        let payload = Bytes::copy_from_slice(&command);
        let start = Instant::now();
        let driver = Arc::clone(self);
        self.leader.submit(RequestBody::Command { session_id: SESSION, sequence: id, payload }, move |answer| {
            driver.done(slot, id, start, answer);
        });
    }

    fn done(self: &Arc<Driver>, slot: usize, id: u64, start: Instant, answer: ResponseBody) {
        let now = Instant::now();
        let ResponseBody::Ok(result) = answer else {
            self.report_error(&format!("put {id}: {answer:?}"));
            return self.slot_idle(slot);
        };
        if !self.result_is_right(id, &result) {
            self.bad_results.fetch_add(1, Ordering::SeqCst);
        }
        self.completed.fetch_add(1, Ordering::SeqCst);
        if self.phase.load(Ordering::SeqCst) == MEASURE {
            self.measured.fetch_add(1, Ordering::SeqCst);
            let at = self.sample_count.fetch_add(1, Ordering::SeqCst);
            if at < SAMPLES_MAX {
                let us = u32::try_from(now.duration_since(start).as_micros()).unwrap_or(u32::MAX);
                self.samples[at].store(us, Ordering::Relaxed);
            }
        }
        self.issue(slot);
    }

    /// As bench.c's `result_is_right`.
    fn result_is_right(&self, id: u64, result: &[u8]) -> bool {
        if result.is_empty() {
            return true;
        }
        let command = make_command(id);
        if result.len() != VALUE_BYTES || result[..KEY_BYTES] != command[..KEY_BYTES] {
            return false;
        }
        let previous = le64(&result[KEY_BYTES..]);
        previous != id && previous >= 1 && previous < self.next_id.load(Ordering::SeqCst)
    }

    fn launch_idle(self: &Arc<Driver>) {
        for slot in 0..self.busy.len() {
            if !self.busy[slot].swap(true, Ordering::SeqCst) {
                self.active.fetch_add(1, Ordering::SeqCst);
                self.issue(slot);
            }
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port()
}

enum Length {
    Timed { seconds: f64, warmup: f64 },
    Ops(u64),
}

/// The Rust half, once: as bench.c's `main`.
fn rust_side(dir: &Path, outstanding: usize, length: Length) -> Result<(), String> {
    let ports: Vec<(u16, u16)> = (0..NODES).map(|_| (free_port(), free_port())).collect();
    let members: String = ports
        .iter()
        .enumerate()
        .map(|(i, (peer, client))| {
            format!(
                "[[members]]\nid = {}\npeer_address = \"127.0.0.1:{peer}\"\nclient_address = \"127.0.0.1:{client}\"\n",
                i + 1
            )
        })
        .collect();
    let mut nodes = Vec::new();
    let mut tables = Vec::new();
    for (i, (peer, client)) in ports.iter().enumerate() {
        let text = format!(
            "node_id = {}\ncluster_id = \"0xbe\"\ndata_dir = \"{}/node{}\"\n\
             secret = \"boundary-benchmark-secret-32-chars\"\n\
             peer_listen = \"127.0.0.1:{peer}\"\nclient_listen = \"127.0.0.1:{client}\"\n{members}\
             [raft]\nelection_ticks = {ELECTION_TICKS}\n",
            i + 1,
            dir.display(),
            i + 1
        );
        let mut config = config_file::parse(&text, Path::new("")).map_err(|e| format!("config: {e}"))?;
        config.initial_state = InitialState::New;
        let table = Arc::new(Mutex::new(KvTable::new()));
        let node = Node::start(config, Kv(Arc::clone(&table))).map_err(|e| format!("start node {}: {e}", i + 1))?;
        nodes.push(Arc::new(node));
        tables.push(table);
    }

    // Write 1 finds the leader: whoever accepts it.
    let began = Instant::now();
    let leader = 'found: loop {
        for node in &nodes {
            let payload = Bytes::copy_from_slice(&make_command(1));
            match node.call(RequestBody::Command { session_id: SESSION, sequence: 1, payload }, TIMEOUT) {
                ResponseBody::Ok(_) => break 'found Arc::clone(node),
                ResponseBody::NotLeader { .. } | ResponseBody::TimedOut
                    if began.elapsed() < Duration::from_secs(30) => {}
                other => return Err(format!("no leader: {other:?}")),
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };

    let (ops_limit, seconds, warmup) = match length {
        Length::Ops(ops) => (ops, 0.0, 0.0),
        Length::Timed { seconds, warmup } => (0, seconds, warmup),
    };
    let driver = Arc::new(Driver {
        leader,
        ops_limit,
        phase: AtomicU8::new(if ops_limit != 0 || warmup == 0.0 { MEASURE } else { WARMUP }),
        next_id: AtomicU64::new(2),
        completed: AtomicU64::new(1),
        measured: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        bad_results: AtomicU64::new(0),
        active: AtomicUsize::new(0),
        error_printed: AtomicBool::new(false),
        busy: (0..outstanding).map(|_| AtomicBool::new(false)).collect(),
        samples: (0..SAMPLES_MAX).map(|_| AtomicU32::new(0)).collect(),
        sample_count: AtomicUsize::new(0),
    });

    // The run: this thread only watches the clock and proposes again after a failure.
    let began = Instant::now();
    let mut measure_start = began;
    let mut cpu_start = cpu_seconds();
    driver.launch_idle();
    loop {
        std::thread::sleep(Duration::from_millis(if ops_limit != 0 { 1 } else { 5 }));
        let elapsed = began.elapsed().as_secs_f64();
        if ops_limit != 0 {
            if driver.next_id.load(Ordering::SeqCst) > ops_limit && driver.active.load(Ordering::SeqCst) == 0 {
                break;
            }
        } else if driver.phase.load(Ordering::SeqCst) == WARMUP && elapsed >= warmup {
            measure_start = Instant::now();
            cpu_start = cpu_seconds();
            driver.phase.store(MEASURE, Ordering::SeqCst);
        } else if driver.phase.load(Ordering::SeqCst) == MEASURE && elapsed >= warmup + seconds {
            break;
        }
        if elapsed > warmup + seconds + 60.0 {
            return Err("the run did not finish".into());
        }
        driver.launch_idle();
    }
    let measure_end = Instant::now();
    let cpu_used = cpu_seconds() - cpu_start;
    driver.phase.store(STOP, Ordering::SeqCst);
    let waiting = Instant::now();
    while driver.active.load(Ordering::SeqCst) > 0 {
        if waiting.elapsed() > Duration::from_secs(30) {
            return Err("puts still in flight after 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }

    // Every replica applies every put; then their states must be equal.
    let barrier = driver
        .leader
        .call(RequestBody::Read { consistency: Consistency::Linearizable, payload: Bytes::new() }, TIMEOUT);
    let mut applied = [0u64; NODES];
    let mut equal = false;
    for _ in 0..1000 {
        let mut hashes = [0u64; NODES];
        for (i, table) in tables.iter().enumerate() {
            let kv = table.lock().expect("kv lock");
            (applied[i], hashes[i]) = (kv.applied, kv.hash());
        }
        equal = matches!(barrier, ResponseBody::Ok(_))
            && applied.iter().all(|&a| a == applied[0])
            && hashes.iter().all(|&h| h == hashes[0]);
        if equal {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    let sampled = driver.sample_count.load(Ordering::SeqCst).min(SAMPLES_MAX);
    let mut samples: Vec<u32> = driver.samples[..sampled].iter().map(|s| s.load(Ordering::Relaxed)).collect();
    samples.sort_unstable();
    let percentile = |p: usize| if samples.is_empty() { 0 } else { samples[(samples.len() - 1) * p / 100] };
    let measured_seconds = measure_end.duration_since(measure_start).as_secs_f64();
    let measured = driver.measured.load(Ordering::SeqCst);
    let (completed, errors, bad) = (
        driver.completed.load(Ordering::SeqCst),
        driver.errors.load(Ordering::SeqCst),
        driver.bad_results.load(Ordering::SeqCst),
    );
    println!(
        "{{\"side\":\"rust\",\"outstanding\":{outstanding},\"seconds\":{measured_seconds:.3},\"ops\":{measured},\
         \"ops_per_sec\":{:.1},\"p50_us\":{},\"p99_us\":{},\"cpu_us_per_op\":{:.2},\"completed\":{completed},\"errors\":{errors},\
         \"bad_results\":{bad},\"applied\":[{},{},{}],\"replicas_equal\":{equal}}}",
        measured as f64 / measured_seconds,
        percentile(50),
        percentile(99),
        if measured == 0 { 0.0 } else { cpu_used * 1e6 / measured as f64 },
        applied[0],
        applied[1],
        applied[2],
    );
    std::io::stdout().flush().map_err(|e| e.to_string())?;

    drop(driver);
    let mut failed = Vec::new();
    for (i, node) in nodes.into_iter().enumerate() {
        match Arc::try_unwrap(node) {
            Ok(node) => {
                if let Err(fatal) = node.shutdown() {
                    failed.push(format!("node {} had stopped: {}", i + 1, fatal.message));
                }
            }
            Err(_) => failed.push(format!("node {} is still referenced", i + 1)),
        }
    }
    if !failed.is_empty() || errors != 0 || bad != 0 || !equal || applied[0] != completed {
        return Err(format!(
            "the run was not clean: {failed:?}, {errors} errors, {bad} wrong results, replicas equal: {equal}, \
             applied {applied:?} of {completed}"
        ));
    }
    Ok(())
}

// ---- The driver of the comparison. ----

struct Options {
    rounds: usize,
    seconds: f64,
    warmup: f64,
    outstanding: Vec<usize>,
}

/// `target/<profile>/deps`, where cargo put this benchmark and `libsmr.a`.
fn deps_dir() -> PathBuf {
    std::env::current_exe().expect("own path").parent().expect("deps").to_path_buf()
}

/// Compiles bench.c with gcc -O2 against the `libsmr.a` of this profile.
fn compile_c() -> Result<PathBuf, String> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let library = [deps_dir().join("libsmr.a"), deps_dir().join("../libsmr.a")]
        .into_iter()
        .find(|path| path.exists())
        .ok_or("libsmr.a is missing next to the benchmark; cargo builds it with this crate")?;
    let out = deps_dir().join("capi-boundary-bench");
    let output = Command::new("gcc")
        .args(["-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror", "-O2"])
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("examples/bench.c"))
        .arg(&library)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&out)
        .output()
        .map_err(|e| format!("run gcc: {e}"))?;
    if !output.status.success() {
        return Err(format!("gcc failed:\n{}", String::from_utf8_lossy(&output.stderr)));
    }
    Ok(out)
}

/// One number of a JSON line written by either side.
fn field(json: &str, name: &str) -> Option<f64> {
    let start = json.find(&format!("\"{name}\":"))? + name.len() + 3;
    let end = json[start..].find([',', '}']).map(|e| start + e)?;
    json[start..end].parse().ok()
}

#[derive(Clone, Copy)]
struct Figures {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_op: f64,
}

/// Runs one side in a fresh process and directory, again after an unclean run (said on stderr).
fn run_side(program: &Path, side_args: &[&str], outstanding: usize, options: &Options) -> Result<Figures, String> {
    let mut attempt = 0;
    loop {
        match run_side_once(program, side_args, outstanding, options) {
            Err(error) if attempt < RUN_RETRIES_MAX => {
                attempt += 1;
                eprintln!("an unclean run, run again ({attempt} of {RUN_RETRIES_MAX}): {error}");
            }
            outcome => return outcome,
        }
    }
}

/// Runs one side once in a fresh process and directory.
fn run_side_once(program: &Path, side_args: &[&str], outstanding: usize, options: &Options) -> Result<Figures, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let mut command = Command::new(program);
    command.args(side_args).arg(dir.path()).arg(outstanding.to_string());
    command.args(["--seconds", &options.seconds.to_string(), "--warmup", &options.warmup.to_string()]);
    let output = command.output().map_err(|e| format!("run {}: {e}", program.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or("");
    if !output.status.success() {
        return Err(format!(
            "{} {side_args:?} failed ({}): {line}\n{}",
            program.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let get = |name| field(line, name).ok_or_else(|| format!("no {name} in {line:?}"));
    Ok(Figures {
        ops_per_sec: get("ops_per_sec")?,
        p50_us: get("p50_us")?,
        p99_us: get("p99_us")?,
        cpu_us_per_op: get("cpu_us_per_op")?,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

fn compare(options: &Options) -> Result<(), String> {
    let c_program = compile_c()?;
    let own = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut load = String::new();
    if let Ok(mut file) = std::fs::File::open("/proc/loadavg") {
        let _ = file.read_to_string(&mut load);
    }
    println!(
        "C boundary benchmark: 3 nodes in one process, {} s measured after {} s warm-up, {} rounds alternating C and \
         Rust; 16-byte keys, 128-byte values; load average before: {}",
        options.seconds,
        options.warmup,
        options.rounds,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let mut table = Vec::new();
    for &outstanding in &options.outstanding {
        let (mut c, mut rust) = (Vec::new(), Vec::new());
        for round in 1..=options.rounds {
            for (name, program, args, runs) in
                [("C", &c_program, &[][..], &mut c), ("Rust", &own, &["--side", "rust"][..], &mut rust)]
            {
                let figures = run_side(program, args, outstanding, options)?;
                eprintln!(
                    "outstanding {outstanding} round {round} {name:<4}: {:>7.0} ops/s, p50 {:>5} µs, p99 {:>6} µs, \
                     CPU {:>5.1} µs/op",
                    figures.ops_per_sec, figures.p50_us, figures.p99_us, figures.cpu_us_per_op
                );
                runs.push(figures);
            }
        }
        table.push((outstanding, c, rust));
    }
    println!();
    println!("| outstanding | side | ops/s | p50 µs | p99 µs | CPU µs/op | ops/s of each round |");
    println!("|---:|---|---:|---:|---:|---:|---|");
    for (outstanding, c, rust) in &table {
        let medians = |runs: &[Figures]| {
            let of = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
            [of(|f| f.ops_per_sec), of(|f| f.p50_us), of(|f| f.p99_us), of(|f| f.cpu_us_per_op)]
        };
        let each =
            |runs: &[Figures]| runs.iter().map(|f| format!("{:.0}", f.ops_per_sec)).collect::<Vec<_>>().join(", ");
        let (c_medians, rust_medians) = (medians(c), medians(rust));
        for (side, m, runs) in [("C", c_medians, c), ("Rust", rust_medians, rust)] {
            println!(
                "| {outstanding} | {side} | {:.0} | {:.0} | {:.0} | {:.1} | {} |",
                m[0],
                m[1],
                m[2],
                m[3],
                each(runs)
            );
        }
        let ratio = |i: usize| c_medians[i] / rust_medians[i];
        println!(
            "| {outstanding} | C / Rust | {:.3} | {:.3} | {:.3} | {:.3} | |",
            ratio(0),
            ratio(1),
            ratio(2),
            ratio(3)
        );
    }
    println!(
        "\nMedians over the rounds. The C boundary costs what C/Rust shows: below 1 for ops/s, above 1 for latency \
         and CPU. CPU µs/op is the user + system time of the whole process (3 nodes and the driver) per put, the \
         least sensitive to other load on the machine."
    );
    Ok(())
}

fn usage() -> ! {
    eprintln!(
        "usage: boundary [--rounds N] [--seconds S] [--warmup S] [--outstanding A,B,...]\n       \
         boundary --side rust DIR OUTSTANDING (--seconds S --warmup W | --ops N)"
    );
    std::process::exit(2)
}

fn parse<T: std::str::FromStr>(value: Option<String>) -> T {
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| usage())
}

fn main() {
    // `cargo bench` passes `--bench`; the rest are ours.
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let first = args.next();
    if first.as_deref() == Some("--side") {
        if args.next().as_deref() != Some("rust") {
            usage();
        }
        let dir = PathBuf::from(args.next().unwrap_or_else(|| usage()));
        let outstanding: usize = parse(args.next());
        let (mut seconds, mut warmup, mut ops) = (None, 0.0, None);
        while let Some(flag) = args.next() {
            match flag.as_str() {
                "--seconds" => seconds = Some(parse::<f64>(args.next())),
                "--warmup" => warmup = parse(args.next()),
                "--ops" => ops = Some(parse::<u64>(args.next())),
                _ => usage(),
            }
        }
        let length = match (seconds, ops) {
            (Some(seconds), None) if seconds > 0.0 && warmup >= 0.0 => Length::Timed { seconds, warmup },
            (None, Some(ops)) if ops > 0 => Length::Ops(ops),
            _ => usage(),
        };
        if !(1..=OUTSTANDING_MAX).contains(&outstanding) {
            usage();
        }
        if let Err(error) = rust_side(&dir, outstanding, length) {
            eprintln!("bench: {error}");
            std::process::exit(1);
        }
        return;
    }
    let mut options = Options { rounds: 3, seconds: 5.0, warmup: 1.0, outstanding: vec![1, 64] };
    let mut next = first;
    while let Some(flag) = next {
        match flag.as_str() {
            "--rounds" => options.rounds = parse(args.next()),
            "--seconds" => options.seconds = parse(args.next()),
            "--warmup" => options.warmup = parse(args.next()),
            "--outstanding" => {
                let list: String = parse(args.next());
                options.outstanding = list.split(',').map(|n| parse(Some(n.to_string()))).collect();
            }
            _ => usage(),
        }
        next = args.next();
    }
    if options.rounds == 0
        || options.seconds <= 0.0
        || options.outstanding.iter().any(|n| !(1..=OUTSTANDING_MAX).contains(n))
    {
        usage();
    }
    if let Err(error) = compare(&options) {
        eprintln!("boundary: {error}");
        std::process::exit(1);
    }
}
