//! The load driver: `outstanding` commands kept in flight over `connections` pipelined
//! connections, one thread each. Closed loop (no `rate`): a connection submits its share, then
//! replaces every command answered with a new one, so the number in flight stays constant. Open
//! loop (`rate` operations/s over all connections): each connection has a fixed schedule of
//! intended send times (`rate / connections` per second, staggered between connections) and
//! sends each operation when it is due and fewer than its share are in flight; an operation
//! that cannot go out on time waits, and its latency is measured from its intended time, so a
//! cluster that falls behind shows it in the latencies (coordinated omission corrected, as
//! wrk2 does). Nothing is dropped.
//!
//! Operations are puts, or with `read_ratio` > 0 linearizable gets, of keys drawn uniformly or
//! zipfian; with a [`HistoryWriter`] every operation is recorded for linearizability checking.
//!
//! A step runs in phases, switched by the coordinating thread: warm-up (load, nothing
//! recorded), measure (latencies and completions recorded), then stop (nothing new submitted;
//! what is in flight is waited for, up to `DRAIN_PATIENCE`). Only responses that arrive during
//! the measured window count; throughput is those completions over the window's length.

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use smr_apply::{KvCommand, KvResult};
use smr_net::{Client, ClientConfig, ClientError, Consistency, RequestBody, ResponseBody};

use crate::history::{HistoryOp, HistoryWriter, OpType};
use crate::keys::{Distribution, KeyChooser};
use crate::rng::SplitMix64;

/// Largest latency the histograms hold (60 s); larger ones are recorded as this.
const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// How long a connection waits for one response before noting a stall and waiting again.
const RESPONSE_WAIT_MS: u64 = 1_000;
/// How long the commands in flight at the end of a step are waited for.
const DRAIN_PATIENCE: Duration = Duration::from_secs(15);
/// How long an open-loop connection waits for a response before checking its schedule again.
const OPEN_LOOP_POLL_MS: u64 = 1;
/// How often the coordinator hands the latencies of the last interval to a [`Monitor`].
pub const TICK: Duration = Duration::from_secs(1);

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// One step of load.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Closed loop: commands in flight; open loop: the most in flight.
    pub outstanding: usize,
    pub connections: usize,
    pub keys: u64,
    pub distribution: Distribution,
    /// Fraction of operations that are linearizable gets (the rest are puts).
    pub read_ratio: f64,
    /// Open loop: operations per second over all connections; `None` is closed loop.
    pub rate: Option<f64>,
    pub value_bytes: usize,
    pub seed: u64,
    /// Connection `c` uses session `session_base + c + 1`.
    pub session_base: u64,
    pub warmup: Duration,
    pub duration: Duration,
}

/// A base for session ids that differs from run to run, so that commands sent to an existing
/// cluster are never taken for retries of an earlier run's commands (which the node would
/// answer from its session table without applying).
pub fn session_base() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    // Leave room below 2^63 for the step and connection offsets; never 0 (no session).
    (crate::rng::mix(nanos as u64 ^ u64::from(std::process::id())) >> 2) | (1 << 40)
}

/// Answers that are not a successful put, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    pub not_leader: u64,
    pub busy: u64,
    pub timed_out: u64,
    /// Requests the node found too large (counted in `other` before there was this field, and
    /// left out of the JSON when zero so that smr-bench's output keeps its shape).
    #[serde(skip_serializing_if = "is_zero")]
    pub too_large: u64,
    /// Any other answer: shutting down, invalid, or a result other than the expected one.
    pub other: u64,
    /// Connections that broke (their commands in flight are counted in `unanswered`).
    pub connection: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.not_leader + self.busy + self.timed_out + self.too_large + self.other + self.connection
    }

    pub fn add(&mut self, other: &ErrorCounts) {
        self.not_leader += other.not_leader;
        self.busy += other.busy;
        self.timed_out += other.timed_out;
        self.too_large += other.too_large;
        self.other += other.other;
        self.connection += other.connection;
    }
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

impl fmt::Display for ErrorCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not leader {}, busy {}, timed out {}, other {}, broken connections {}",
            self.not_leader, self.busy, self.timed_out, self.other, self.connection
        )?;
        if self.too_large > 0 {
            write!(f, ", too large {}", self.too_large)?;
        }
        Ok(())
    }
}

/// What the clients saw in one step.
#[derive(Debug)]
pub struct StepLoad {
    /// Submit-to-response latency (open loop: from the intended send time) of every operation
    /// completed in the window, in ns.
    pub latency: Histogram<u64>,
    /// The same, of the puts and of the gets alone.
    pub write_latency: Histogram<u64>,
    pub read_latency: Histogram<u64>,
    /// Operations answered successfully in the window (puts `Done`, gets a value).
    pub completed: u64,
    pub reads_completed: u64,
    pub window: Duration,
    pub errors_window: ErrorCounts,
    /// The part of `errors_window` that answered gets.
    pub read_errors_window: ErrorCounts,
    /// Errors during warm-up and drain.
    pub errors_outside: ErrorCounts,
    /// Commands never answered: lost with a broken connection, or still in flight when the
    /// drain gave up.
    pub unanswered: u64,
    /// Times a connection waited `RESPONSE_WAIT_MS` with commands in flight and got nothing.
    pub stalls: u64,
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("constant histogram bounds are valid")
}

/// Runs one step against `target` (the leader). `at_start` is called right after the measured
/// window opens and `at_end` right after it closes, while the load is still running, to read
/// the node-side figures; their results are returned with the load's.
pub fn run_step<S, E>(
    target: SocketAddr,
    addresses: &[SocketAddr],
    spec: &LoadSpec,
    at_start: impl FnOnce() -> S,
    at_end: impl FnOnce() -> E,
) -> Result<(StepLoad, S, E), String> {
    run_step_observed(target, addresses, spec, &Observers::default(), at_start, at_end)
}

/// Told every [`TICK`] what completed in the last interval, while a step runs.
pub trait Monitor {
    fn tick(&mut self, tick: &Tick<'_>);
}

/// One interval of a running step.
#[derive(Debug)]
pub struct Tick<'a> {
    /// Whether the interval is in the measured window (else in the warm-up).
    pub measuring: bool,
    /// When the interval began, since the step started (warm-up included).
    pub start: Duration,
    pub length: Duration,
    /// Latencies of the operations that completed successfully in the interval, in ns.
    pub latency: &'a Histogram<u64>,
}

/// What watches a step besides its result: a history of every operation, and a monitor of
/// each interval.
#[derive(Default)]
pub struct Observers<'a> {
    pub history: Option<Arc<HistoryWriter>>,
    pub monitor: Option<Mutex<&'a mut dyn Monitor>>,
}

impl fmt::Debug for Observers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observers")
            .field("history", &self.history.is_some())
            .field("monitor", &self.monitor.is_some())
            .finish()
    }
}

/// Latencies recorded by the connections since the coordinator last looked, one histogram each.
#[derive(Debug)]
struct Live {
    histograms: Vec<Mutex<Histogram<u64>>>,
}

impl Live {
    fn drain_into(&self, into: &mut Histogram<u64>) {
        for histogram in &self.histograms {
            let mut histogram = histogram.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            into.add(&*histogram).expect("histograms of the same bounds");
            histogram.reset();
        }
    }
}

/// [`run_step`], with a history and a monitor.
pub fn run_step_observed<S, E>(
    target: SocketAddr,
    addresses: &[SocketAddr],
    spec: &LoadSpec,
    observers: &Observers<'_>,
    at_start: impl FnOnce() -> S,
    at_end: impl FnOnce() -> E,
) -> Result<(StepLoad, S, E), String> {
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let live = Arc::new(Live { histograms: (0..spec.connections).map(|_| Mutex::new(new_histogram())).collect() });
    let epoch = Instant::now();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut workers = Vec::with_capacity(spec.connections);
    for connection in 0..spec.connections {
        let share = spec.outstanding / spec.connections + usize::from(connection < spec.outstanding % spec.connections);
        let mut worker = Worker::new(spec, connection, share, target, addresses, Arc::clone(&phase));
        worker.live = Some(Arc::clone(&live));
        worker.history = observers.history.clone();
        worker.epoch = epoch;
        let ready_tx = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("load-{connection}"))
            .spawn(move || worker.run(ready_tx))
            .map_err(|e| format!("cannot start a load thread: {e}"))?;
        workers.push(handle);
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..spec.connections {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => failure = Some(error),
            Err(_) => failure = Some("a load thread ended before connecting".to_owned()),
        }
    }
    if let Some(error) = failure {
        phase.store(STOP, Ordering::SeqCst);
        for handle in workers {
            let _ = handle.join();
        }
        return Err(error);
    }

    let started = Instant::now();
    let mut ticker = Ticker { live: &live, monitor: observers.monitor.as_ref(), started, last: started };
    ticker.run_until(started + spec.warmup, false);
    phase.store(MEASURE, Ordering::SeqCst);
    let opened = Instant::now();
    let start = at_start();
    ticker.run_until(opened + spec.duration, true);
    phase.store(STOP, Ordering::SeqCst);
    let window = opened.elapsed();
    let end = at_end();

    let mut load = StepLoad {
        latency: new_histogram(),
        write_latency: new_histogram(),
        read_latency: new_histogram(),
        completed: 0,
        reads_completed: 0,
        window,
        errors_window: ErrorCounts::default(),
        read_errors_window: ErrorCounts::default(),
        errors_outside: ErrorCounts::default(),
        unanswered: 0,
        stalls: 0,
    };
    for handle in workers {
        let done = handle.join().map_err(|_| "a load thread panicked".to_owned())?;
        load.write_latency.add(&done.write_latency).expect("histograms of the same bounds");
        load.read_latency.add(&done.read_latency).expect("histograms of the same bounds");
        load.completed += done.completed;
        load.reads_completed += done.reads_completed;
        load.errors_window.add(&done.errors_window);
        load.read_errors_window.add(&done.read_errors_window);
        load.errors_outside.add(&done.errors_outside);
        load.unanswered += done.unanswered;
        load.stalls += done.stalls;
    }
    load.latency.add(&load.write_latency).expect("histograms of the same bounds");
    load.latency.add(&load.read_latency).expect("histograms of the same bounds");
    load.errors_window.add(&load.read_errors_window);
    if let Some(history) = &observers.history {
        history.flush().map_err(|e| format!("cannot write the history: {e}"))?;
    }
    Ok((load, start, end))
}

/// The coordinator's clock: sleeps until a deadline, handing the monitor an interval every
/// [`TICK`] (and a last, shorter one at the deadline).
struct Ticker<'a, 'm> {
    live: &'a Live,
    monitor: Option<&'a Mutex<&'m mut dyn Monitor>>,
    started: Instant,
    last: Instant,
}

impl Ticker<'_, '_> {
    fn run_until(&mut self, deadline: Instant, measuring: bool) {
        let Some(monitor) = self.monitor else {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            return;
        };
        let mut interval = new_histogram();
        loop {
            let next = (self.last + TICK).min(deadline);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            let now = Instant::now();
            interval.reset();
            self.live.drain_into(&mut interval);
            let tick = Tick {
                measuring,
                start: self.last.duration_since(self.started),
                length: now.duration_since(self.last),
                latency: &interval,
            };
            monitor.lock().unwrap_or_else(std::sync::PoisonError::into_inner).tick(&tick);
            self.last = now;
            if now >= deadline {
                return;
            }
        }
    }
}

/// When operation `index` of `connection` is meant to be sent in an open loop of `rate`
/// operations/s over `connections`, after the schedule's start: every connection sends at
/// `rate / connections` per second, and connection `c` starts `c / rate` seconds in, so that
/// together they send evenly spaced.
pub fn intended_offset(index: u64, connection: usize, connections: usize, rate: f64) -> Duration {
    let seconds = (connection as f64 + index as f64 * connections as f64) / rate;
    Duration::from_secs_f64(seconds)
}

/// An operation in flight.
#[derive(Debug)]
struct InFlight {
    /// Latency is measured from here: the submit time (closed loop) or the intended one.
    since: Instant,
    read: bool,
    /// Its history line, when a history is kept.
    op: Option<HistoryOp>,
}

/// One connection's load thread.
#[derive(Debug)]
struct Worker {
    connection: usize,
    connections: usize,
    target: SocketAddr,
    addresses: Vec<SocketAddr>,
    share: usize,
    chooser: KeyChooser,
    read_ratio: f64,
    rate: Option<f64>,
    value: Vec<u8>,
    rng: SplitMix64,
    session: u64,
    sequence: u64,
    /// Open loop: the next operation of the schedule.
    next_index: u64,
    phase: Arc<AtomicU8>,
    live: Option<Arc<Live>>,
    history: Option<Arc<HistoryWriter>>,
    /// Where history times count from.
    epoch: Instant,
    in_flight: HashMap<u64, InFlight>,
    result: WorkerResult,
}

#[derive(Debug)]
struct WorkerResult {
    write_latency: Histogram<u64>,
    read_latency: Histogram<u64>,
    completed: u64,
    reads_completed: u64,
    errors_window: ErrorCounts,
    read_errors_window: ErrorCounts,
    errors_outside: ErrorCounts,
    unanswered: u64,
    stalls: u64,
}

impl Worker {
    fn new(
        spec: &LoadSpec,
        connection: usize,
        share: usize,
        target: SocketAddr,
        addresses: &[SocketAddr],
        phase: Arc<AtomicU8>,
    ) -> Worker {
        let mut rng = SplitMix64::new(crate::rng::mix(spec.seed) ^ crate::rng::mix(connection as u64 + 1));
        // The value's content does not matter to the KV store; random bytes keep it honest
        // should anything on the path ever compress.
        let value = (0..spec.value_bytes).map(|_| rng.next_u64() as u8).collect();
        Worker {
            connection,
            connections: spec.connections,
            target,
            addresses: addresses.to_vec(),
            share,
            chooser: KeyChooser::new(spec.keys, spec.distribution),
            read_ratio: spec.read_ratio,
            rate: spec.rate,
            value,
            rng,
            session: spec.session_base + connection as u64 + 1,
            sequence: 0,
            next_index: 0,
            phase,
            live: None,
            history: None,
            epoch: Instant::now(),
            in_flight: HashMap::with_capacity(share * 2),
            result: WorkerResult {
                write_latency: new_histogram(),
                read_latency: new_histogram(),
                completed: 0,
                reads_completed: 0,
                errors_window: ErrorCounts::default(),
                read_errors_window: ErrorCounts::default(),
                errors_outside: ErrorCounts::default(),
                unanswered: 0,
                stalls: 0,
            },
        }
    }

    fn errors(&mut self, phase: u8, read: bool) -> &mut ErrorCounts {
        match (phase == MEASURE, read) {
            (true, true) => &mut self.result.read_errors_window,
            (true, false) => &mut self.result.errors_window,
            (false, _) => &mut self.result.errors_outside,
        }
    }

    fn client_config(&self) -> ClientConfig {
        let response_ms = if self.rate.is_some() { OPEN_LOOP_POLL_MS } else { RESPONSE_WAIT_MS };
        ClientConfig { response_ms, connect_ms: 1_000, ..ClientConfig::default() }
    }

    fn ns_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn submit(&mut self, client: &mut Client, since: Instant) -> Result<(), ClientError> {
        // 16-byte keys: the key number in 16 decimal digits.
        let key_number = self.chooser.next(&mut self.rng);
        let key = format!("{key_number:016}");
        // No draw at all when there are no reads, so that a put-only key sequence stays as it was.
        let read =
            self.read_ratio > 0.0 && ((self.rng.next_u64() >> 11) as f64) < self.read_ratio * (1u64 << 53) as f64;
        let (body, op) = if read {
            let payload = KvCommand::Get { key: key.as_bytes() }.encode();
            let op = self.history.is_some().then(|| HistoryOp::get(self.connection as u64, key_number, 0));
            (RequestBody::Read { consistency: Consistency::Linearizable, payload }, op)
        } else {
            self.sequence += 1;
            let (payload, op) = if self.history.is_some() {
                // Every value written is told apart by its tag, "connection.sequence", before a
                // ':' and the padding to the value size.
                let tag = format!("{}.{}", self.connection, self.sequence);
                let mut value = format!("{tag}:").into_bytes();
                value.extend(self.value.iter().skip(value.len()));
                let payload = KvCommand::Put { key: key.as_bytes(), value: &value }.encode();
                (payload, Some(HistoryOp::put(self.connection as u64, key_number, tag, 0)))
            } else {
                (KvCommand::Put { key: key.as_bytes(), value: &self.value }.encode(), None)
            };
            (RequestBody::Command { session_id: self.session, sequence: self.sequence, payload }, op)
        };
        let id = client.submit(body)?;
        let invoke_ns = self.ns_since_epoch(Instant::now());
        let op = op.map(|mut op| {
            op.invoke_ns = invoke_ns;
            op
        });
        self.in_flight.insert(id, InFlight { since, read, op });
        Ok(())
    }

    /// Submits what the loop allows now.
    fn submit_due(&mut self, client: &mut Client, schedule_start: Instant) -> Result<(), ClientError> {
        match self.rate {
            None => {
                while self.in_flight.len() < self.share {
                    self.submit(client, Instant::now())?;
                }
            }
            Some(rate) => {
                let now = Instant::now();
                while self.in_flight.len() < self.share {
                    let due =
                        schedule_start + intended_offset(self.next_index, self.connection, self.connections, rate);
                    if due > now {
                        break;
                    }
                    self.next_index += 1;
                    self.submit(client, due)?;
                }
            }
        }
        Ok(())
    }

    fn write_history(&self, op: HistoryOp) {
        if let Some(history) = &self.history
            && let Err(error) = history.record(&op)
        {
            eprintln!("smr-load: cannot write the history: {error}");
        }
    }

    /// Everything in flight is lost or given up on: unanswered, of unknown outcome.
    fn abandon_in_flight(&mut self) {
        self.result.unanswered += self.in_flight.len() as u64;
        for (_, flight) in std::mem::take(&mut self.in_flight) {
            if let Some(op) = flight.op {
                self.write_history(op.with_kind(OpType::Info));
            }
        }
    }

    fn run(mut self, ready: mpsc::Sender<Result<(), String>>) -> WorkerResult {
        // The leader first; the others are where a broken connection reconnects to.
        let mut known = vec![self.target];
        known.extend(self.addresses.iter().filter(|&&a| a != self.target));
        let mut client = match Client::connect(&known, self.client_config()) {
            Ok(client) => {
                let _ = ready.send(Ok(()));
                client
            }
            Err(error) => {
                let _ = ready.send(Err(format!("load connection to {}: {error}", self.target)));
                return self.result;
            }
        };
        drop(ready);
        let schedule_start = Instant::now();
        let mut last_progress = Instant::now();
        // Set when told to go elsewhere: no new commands until the ones in flight are answered,
        // then reconnect there.
        let mut redirect: Option<Option<SocketAddr>> = None;
        let mut drain_deadline = None;
        loop {
            let phase = self.phase.load(Ordering::Relaxed);
            if phase == STOP {
                let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_PATIENCE);
                if self.in_flight.is_empty() || Instant::now() > deadline {
                    self.abandon_in_flight();
                    return self.result;
                }
            } else if let Some(leader) = redirect.filter(|_| self.in_flight.is_empty()) {
                if client.reconnect(leader).is_err() {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                redirect = None;
                continue;
            } else if redirect.is_none()
                && let Err(error) = self.submit_due(&mut client, schedule_start)
            {
                // Only a request too large for a frame fails here: a bad flag.
                self.errors(phase, false).other += 1;
                eprintln!("load: cannot submit a command: {error}");
                self.abandon_in_flight();
                return self.result;
            }
            match client.recv() {
                Ok(response) => {
                    let answered = Instant::now();
                    last_progress = answered;
                    // The phase when the answers arrived decides where they count.
                    let phase = self.phase.load(Ordering::Relaxed);
                    let mut next = Ok(Some(response));
                    // Every answer this read brought, before the next round is submitted (one
                    // write for the round, not one per answer).
                    while let Ok(Some(response)) = next {
                        if let Some(flight) = self.in_flight.remove(&response.request_id) {
                            self.answered(phase, flight, response.body, answered, &mut redirect);
                        }
                        next = client.try_recv();
                    }
                    if next.is_err() && self.connection_broke(&mut redirect) {
                        return self.result;
                    }
                }
                Err(ClientError::TimedOut(_)) => {
                    if !self.in_flight.is_empty() && last_progress.elapsed() >= Duration::from_millis(RESPONSE_WAIT_MS)
                    {
                        self.result.stalls += 1;
                        last_progress = Instant::now();
                    }
                }
                Err(_) => {
                    if self.connection_broke(&mut redirect) {
                        return self.result;
                    }
                }
            }
        }
    }

    /// The connection broke or sent garbage: what was in flight on it is lost, and the worker
    /// reconnects once it may. True when the run is stopping and the worker is done.
    fn connection_broke(&mut self, redirect: &mut Option<Option<SocketAddr>>) -> bool {
        let phase = self.phase.load(Ordering::Relaxed);
        self.errors(phase, false).connection += 1;
        self.abandon_in_flight();
        *redirect = Some(None);
        phase == STOP
    }

    fn answered(
        &mut self,
        phase: u8,
        flight: InFlight,
        body: ResponseBody,
        answered: Instant,
        redirect: &mut Option<Option<SocketAddr>>,
    ) {
        let read = flight.read;
        let outcome = match body {
            ResponseBody::Ok(bytes) => match (read, KvResult::decode(&bytes)) {
                (false, Ok(KvResult::Done)) => Ok(None),
                (true, Ok(KvResult::Value(value))) => Ok(value.map(|v| value_tag(&v))),
                _ => {
                    self.errors(phase, read).other += 1;
                    Err(OpType::Info)
                }
            },
            ResponseBody::NotLeader { leader_address, .. } => {
                self.errors(phase, read).not_leader += 1;
                let leader = leader_address.as_deref().and_then(|a| a.to_socket_addrs().ok()?.next());
                *redirect = Some(leader);
                Err(OpType::Fail)
            }
            ResponseBody::Busy => {
                self.errors(phase, read).busy += 1;
                Err(OpType::Fail)
            }
            ResponseBody::TimedOut => {
                self.errors(phase, read).timed_out += 1;
                Err(OpType::Info)
            }
            ResponseBody::TooLarge => {
                self.errors(phase, read).too_large += 1;
                Err(OpType::Fail)
            }
            ResponseBody::ShuttingDown | ResponseBody::InvalidRequest(_) => {
                self.errors(phase, read).other += 1;
                Err(OpType::Fail)
            }
        };
        match outcome {
            Ok(result) => {
                let ns = u64::try_from(answered.duration_since(flight.since).as_nanos()).unwrap_or(u64::MAX);
                let ns = ns.clamp(1, LATENCY_NS_MAX);
                if phase == MEASURE {
                    let histogram = if read { &mut self.result.read_latency } else { &mut self.result.write_latency };
                    histogram.saturating_record(ns);
                    self.result.completed += 1;
                    self.result.reads_completed += u64::from(read);
                }
                if let Some(live) = &self.live {
                    live.histograms[self.connection]
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .saturating_record(ns);
                }
                if let Some(op) = flight.op {
                    let complete_ns = self.ns_since_epoch(answered);
                    self.write_history(op.ok(complete_ns, result));
                }
            }
            Err(kind) => {
                if let Some(op) = flight.op {
                    self.write_history(op.with_kind(kind));
                }
            }
        }
    }
}

/// What a history calls a value read back: its tag (see `Worker::submit`), or the whole value
/// when it has none (written by someone else).
fn value_tag(value: &[u8]) -> String {
    let tag = value.iter().position(|&b| b == b':').map_or(value, |end| &value[..end]);
    String::from_utf8_lossy(tag).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_schedules_are_evenly_spaced_over_connections() {
        // 1,000 ops/s over 4 connections: each sends every 4 ms, staggered by 1 ms.
        let ms = |index, connection| intended_offset(index, connection, 4, 1_000.0).as_secs_f64() * 1e3;
        assert!((ms(0, 0) - 0.0).abs() < 1e-9);
        assert!((ms(0, 1) - 1.0).abs() < 1e-9);
        assert!((ms(0, 3) - 3.0).abs() < 1e-9);
        assert!((ms(1, 0) - 4.0).abs() < 1e-9);
        assert!((ms(250, 2) - 1_002.0).abs() < 1e-9);
        // Together, the first 1,000 intended times are 0, 1, ..., 999 ms.
        let mut all: Vec<f64> = (0..250).flat_map(|i| (0..4).map(move |c| ms(i, c))).collect();
        all.sort_by(f64::total_cmp);
        assert!(all.iter().enumerate().all(|(n, &t)| (t - n as f64).abs() < 1e-6));
    }

    #[test]
    fn value_tags_are_read_back() {
        assert_eq!(value_tag(b"3.17:\x01\x02:"), "3.17");
        assert_eq!(value_tag(b"plain"), "plain");
    }
}
