//! The closed-loop driver: `outstanding` puts kept in flight over `connections` pipelined
//! connections, one thread each. A connection submits its share, then replaces every command
//! answered with a new one, so the number in flight stays constant.
//!
//! A step runs in phases, switched by the coordinating thread: warm-up (load, nothing
//! recorded), measure (latencies and completions recorded), then stop (nothing new submitted;
//! what is in flight is waited for, up to `DRAIN_PATIENCE`). Only responses that arrive during
//! the measured window count; throughput is those completions over the window's length.

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use smr_apply::{KvCommand, KvResult};
use smr_net::{Client, ClientConfig, ClientError, RequestBody, ResponseBody};

use crate::rng::SplitMix64;

/// Largest latency the histograms hold (60 s); larger ones are recorded as this.
const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// How long a connection waits for one response before noting a stall and waiting again.
const RESPONSE_WAIT_MS: u64 = 1_000;
/// How long the commands in flight at the end of a step are waited for.
const DRAIN_PATIENCE: Duration = Duration::from_secs(15);

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// One step of closed-loop load.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub outstanding: usize,
    pub connections: usize,
    pub keys: u64,
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
    /// Any other answer: shutting down, too large, invalid, or a put result other than Done.
    pub other: u64,
    /// Connections that broke (their commands in flight are counted in `unanswered`).
    pub connection: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.not_leader + self.busy + self.timed_out + self.other + self.connection
    }

    fn add(&mut self, other: &ErrorCounts) {
        self.not_leader += other.not_leader;
        self.busy += other.busy;
        self.timed_out += other.timed_out;
        self.other += other.other;
        self.connection += other.connection;
    }
}

impl fmt::Display for ErrorCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not leader {}, busy {}, timed out {}, other {}, broken connections {}",
            self.not_leader, self.busy, self.timed_out, self.other, self.connection
        )
    }
}

/// What the clients saw in one step.
#[derive(Debug)]
pub struct StepLoad {
    /// Submit-to-response latency of every put completed in the window, in ns.
    pub latency: Histogram<u64>,
    /// Puts answered `Done` in the window.
    pub completed: u64,
    pub window: Duration,
    pub errors_window: ErrorCounts,
    /// Errors during warm-up and drain.
    pub errors_outside: ErrorCounts,
    /// Commands never answered: lost with a broken connection, or still in flight when the
    /// drain gave up.
    pub unanswered: u64,
    /// Times a connection waited `RESPONSE_WAIT_MS` with commands in flight and got nothing.
    pub stalls: u64,
}

fn new_histogram() -> Histogram<u64> {
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
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut workers = Vec::with_capacity(spec.connections);
    for connection in 0..spec.connections {
        let share = spec.outstanding / spec.connections + usize::from(connection < spec.outstanding % spec.connections);
        let worker = Worker::new(spec, connection, share, target, addresses, Arc::clone(&phase));
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

    std::thread::sleep(spec.warmup);
    phase.store(MEASURE, Ordering::SeqCst);
    let opened = Instant::now();
    let start = at_start();
    std::thread::sleep(spec.duration.saturating_sub(opened.elapsed()));
    phase.store(STOP, Ordering::SeqCst);
    let window = opened.elapsed();
    let end = at_end();

    let mut load = StepLoad {
        latency: new_histogram(),
        completed: 0,
        window,
        errors_window: ErrorCounts::default(),
        errors_outside: ErrorCounts::default(),
        unanswered: 0,
        stalls: 0,
    };
    for handle in workers {
        let done = handle.join().map_err(|_| "a load thread panicked".to_owned())?;
        load.latency.add(&done.latency).expect("histograms of the same bounds");
        load.completed += done.completed;
        load.errors_window.add(&done.errors_window);
        load.errors_outside.add(&done.errors_outside);
        load.unanswered += done.unanswered;
        load.stalls += done.stalls;
    }
    Ok((load, start, end))
}

/// One connection's load thread.
#[derive(Debug)]
struct Worker {
    target: SocketAddr,
    addresses: Vec<SocketAddr>,
    share: usize,
    keys: u64,
    value: Vec<u8>,
    rng: SplitMix64,
    session: u64,
    sequence: u64,
    phase: Arc<AtomicU8>,
    /// Submit time of every request in flight, by request id.
    in_flight: HashMap<u64, Instant>,
    result: WorkerResult,
}

#[derive(Debug)]
struct WorkerResult {
    latency: Histogram<u64>,
    completed: u64,
    errors_window: ErrorCounts,
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
            target,
            addresses: addresses.to_vec(),
            share,
            keys: spec.keys,
            value,
            rng,
            session: spec.session_base + connection as u64 + 1,
            sequence: 0,
            phase,
            in_flight: HashMap::with_capacity(share * 2),
            result: WorkerResult {
                latency: new_histogram(),
                completed: 0,
                errors_window: ErrorCounts::default(),
                errors_outside: ErrorCounts::default(),
                unanswered: 0,
                stalls: 0,
            },
        }
    }

    fn errors(&mut self, phase: u8) -> &mut ErrorCounts {
        if phase == MEASURE { &mut self.result.errors_window } else { &mut self.result.errors_outside }
    }

    fn client_config() -> ClientConfig {
        ClientConfig { response_ms: RESPONSE_WAIT_MS, connect_ms: 1_000, ..ClientConfig::default() }
    }

    fn submit(&mut self, client: &mut Client) -> Result<(), ClientError> {
        // 16-byte keys: the key number in 16 decimal digits.
        let key = format!("{:016}", self.rng.below(self.keys));
        self.sequence += 1;
        let payload = KvCommand::Put { key: key.as_bytes(), value: &self.value }.encode();
        let body = RequestBody::Command { session_id: self.session, sequence: self.sequence, payload };
        let id = client.submit(body)?;
        self.in_flight.insert(id, Instant::now());
        Ok(())
    }

    fn run(mut self, ready: mpsc::Sender<Result<(), String>>) -> WorkerResult {
        // The leader first; the others are where a broken connection reconnects to.
        let mut known = vec![self.target];
        known.extend(self.addresses.iter().filter(|&&a| a != self.target));
        let mut client = match Client::connect(&known, Worker::client_config()) {
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
        // Set when told to go elsewhere: no new commands until the ones in flight are answered,
        // then reconnect there.
        let mut redirect: Option<Option<SocketAddr>> = None;
        let mut drain_deadline = None;
        loop {
            let phase = self.phase.load(Ordering::Relaxed);
            if phase == STOP {
                let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_PATIENCE);
                if self.in_flight.is_empty() || Instant::now() > deadline {
                    self.result.unanswered += self.in_flight.len() as u64;
                    return self.result;
                }
            } else if let Some(leader) = redirect.filter(|_| self.in_flight.is_empty()) {
                if client.reconnect(leader).is_err() {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                redirect = None;
                continue;
            } else if redirect.is_none() {
                while self.in_flight.len() < self.share {
                    if let Err(error) = self.submit(&mut client) {
                        // Only a request too large for a frame fails here: a bad flag.
                        self.errors(phase).other += 1;
                        eprintln!("smr-bench: cannot submit a put: {error}");
                        self.result.unanswered += self.in_flight.len() as u64;
                        return self.result;
                    }
                }
            }
            match client.recv() {
                Ok(response) => {
                    let answered = Instant::now();
                    let Some(submitted) = self.in_flight.remove(&response.request_id) else { continue };
                    // The phase when the answer arrived decides where it counts.
                    let phase = self.phase.load(Ordering::Relaxed);
                    match response.body {
                        ResponseBody::Ok(bytes) if matches!(KvResult::decode(&bytes), Ok(KvResult::Done)) => {
                            if phase == MEASURE {
                                let ns =
                                    u64::try_from(answered.duration_since(submitted).as_nanos()).unwrap_or(u64::MAX);
                                self.result.latency.saturating_record(ns.clamp(1, LATENCY_NS_MAX));
                                self.result.completed += 1;
                            }
                        }
                        ResponseBody::NotLeader { leader_address, .. } => {
                            self.errors(phase).not_leader += 1;
                            let leader = leader_address.as_deref().and_then(|a| a.to_socket_addrs().ok()?.next());
                            redirect = Some(leader);
                        }
                        ResponseBody::Busy => self.errors(phase).busy += 1,
                        ResponseBody::TimedOut => self.errors(phase).timed_out += 1,
                        _ => self.errors(phase).other += 1,
                    }
                }
                Err(ClientError::TimedOut(_)) => {
                    if !self.in_flight.is_empty() {
                        self.result.stalls += 1;
                    }
                }
                Err(_) => {
                    // The connection broke: what was in flight on it is lost.
                    let phase = self.phase.load(Ordering::Relaxed);
                    self.errors(phase).connection += 1;
                    self.result.unanswered += self.in_flight.len() as u64;
                    self.in_flight.clear();
                    redirect = Some(None);
                    if phase == STOP {
                        return self.result;
                    }
                }
            }
        }
    }
}
