//! The client workload of a chaos run: a few client threads, each with its own session, doing
//! one operation at a time (a put of a unique value or a linearizable get of a random key) and
//! recording every operation in smr-bench's history format ([`HistoryOp`], the JSON lines of
//! `smr-load --history` that `smr-lincheck` reads).
//!
//! Unlike `smr-load`'s pipelined closed loop, which waits on a connection until its node
//! answers, every operation here has a deadline: a put that gets no answer in time (a paused
//! or partitioned node) is recorded as of unknown outcome (`info`), and the client moves to
//! another node, so that the history shows what the rest of the cluster does during a fault.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smr_apply::{KvCommand, KvResult};
use smr_bench::history::{HistoryOp, OpType};
use smr_net::{Client, ClientConfig, Consistency, RequestBody, ResponseBody};
use smr_raft::SplitMix64;

/// Most operations one workload records; beyond it the clients stop (a soak runs several
/// workloads one after the other, each checked and dropped).
pub const HISTORY_OPS_MAX: usize = 2_000_000;
/// Bytes of every value written (its tag, a ':' and padding).
const VALUE_BYTES: usize = 64;

/// What the clients do.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    pub clients: usize,
    /// Keys `0..keys`, written as 16 decimal digits.
    pub keys: u64,
    /// Fraction of operations that are linearizable gets.
    pub read_ratio: f64,
    /// How long an operation may take before its outcome is unknown.
    pub op_timeout: Duration,
    /// Pause between two operations of one client.
    pub think: Duration,
    pub seed: u64,
}

impl Default for WorkloadSpec {
    fn default() -> WorkloadSpec {
        WorkloadSpec {
            clients: 4,
            keys: 48,
            read_ratio: 0.5,
            op_timeout: Duration::from_millis(1_000),
            think: Duration::from_millis(2),
            seed: 1,
        }
    }
}

/// Counters of a running workload.
#[derive(Debug, Default)]
pub struct Progress {
    pub acknowledged_writes: AtomicU64,
    pub reads: AtomicU64,
    pub unknown: AtomicU64,
}

/// A running workload; [`Workload::stop`] ends it and hands back the history.
#[derive(Debug)]
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    ops: Arc<Mutex<Vec<HistoryOp>>>,
    progress: Arc<Progress>,
    epoch: Instant,
}

/// What a workload recorded.
#[derive(Debug)]
pub struct Recorded {
    pub ops: Vec<HistoryOp>,
    /// The instant history times count from.
    pub epoch: Instant,
}

impl Workload {
    /// Starts the clients against the cluster's (shared, updated) client addresses.
    pub fn start(addresses: Arc<RwLock<Vec<SocketAddr>>>, spec: &WorkloadSpec) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(Mutex::new(Vec::new()));
        let progress = Arc::new(Progress::default());
        let epoch = Instant::now();
        let session_base = smr_bench::load::session_base();
        let threads = (0..spec.clients)
            .map(|index| {
                let mut client = ClientLoop {
                    index,
                    spec: spec.clone(),
                    addresses: Arc::clone(&addresses),
                    stop: Arc::clone(&stop),
                    ops: Arc::clone(&ops),
                    progress: Arc::clone(&progress),
                    epoch,
                    session: session_base + index as u64 + 1,
                    sequence: 0,
                    rng: SplitMix64::new(smr_raft::mix(spec.seed) ^ smr_raft::mix(index as u64 + 1)),
                };
                std::thread::Builder::new()
                    .name(format!("chaos-client-{index}"))
                    .spawn(move || client.run())
                    .expect("start a client thread")
            })
            .collect();
        Workload { stop, threads, ops, progress, epoch }
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Acknowledged writes so far.
    pub fn acknowledged_writes(&self) -> u64 {
        self.progress.acknowledged_writes.load(Ordering::Relaxed)
    }

    /// Stops the clients (each finishes or gives up on its operation in flight).
    pub fn stop(mut self) -> Recorded {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            thread.join().expect("a client thread panicked");
        }
        let ops = std::mem::take(&mut *self.ops.lock().unwrap_or_else(PoisonError::into_inner));
        Recorded { ops, epoch: self.epoch }
    }
}

impl Drop for Workload {
    /// A workload dropped without [`Workload::stop`] (a failed run) stops its clients too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

struct ClientLoop {
    index: usize,
    spec: WorkloadSpec,
    addresses: Arc<RwLock<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    ops: Arc<Mutex<Vec<HistoryOp>>>,
    progress: Arc<Progress>,
    epoch: Instant,
    session: u64,
    sequence: u64,
    rng: SplitMix64,
}

/// The tag of a value read back: what precedes its ':'.
pub fn value_tag(value: &[u8]) -> String {
    let tag = value.iter().position(|&b| b == b':').map_or(value, |end| &value[..end]);
    String::from_utf8_lossy(tag).into_owned()
}

/// The key of key number `key`, as smr-load writes it.
pub fn key_bytes(key: u64) -> String {
    format!("{key:016}")
}

impl ClientLoop {
    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn record(&self, op: HistoryOp) -> bool {
        let mut ops = self.ops.lock().unwrap_or_else(PoisonError::into_inner);
        if ops.len() >= HISTORY_OPS_MAX {
            return false;
        }
        ops.push(op);
        true
    }

    fn connect(&self, attempt: usize) -> Option<Client> {
        let mut addresses = self.addresses.read().unwrap_or_else(PoisonError::into_inner).clone();
        if addresses.is_empty() {
            return None;
        }
        // Each client starts at a different node, and moves on after every failure.
        let len = addresses.len();
        addresses.rotate_left((self.index + attempt) % len);
        let config = ClientConfig {
            response_ms: u64::try_from(self.spec.op_timeout.as_millis()).unwrap_or(u64::MAX).max(1),
            connect_ms: 300,
            retries_max: 6,
            ..ClientConfig::default()
        };
        Client::connect(&addresses, config).ok()
    }

    fn run(&mut self) {
        let mut client: Option<Client> = None;
        let mut attempt = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let Some(connected) = client.as_mut() else {
                client = self.connect(attempt);
                attempt += 1;
                if client.is_none() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            };
            let key = self.rng.below(self.spec.keys);
            let read = ((self.rng.next_u64() >> 11) as f64) < self.spec.read_ratio * (1u64 << 53) as f64;
            let key_text = key_bytes(key);
            let (body, op) = if read {
                let payload = KvCommand::Get { key: key_text.as_bytes() }.encode();
                (
                    RequestBody::Read { consistency: Consistency::Linearizable, payload },
                    HistoryOp::get(self.index as u64, key, 0),
                )
            } else {
                self.sequence += 1;
                let tag = format!("{}.{}", self.index, self.sequence);
                let mut value = format!("{tag}:").into_bytes();
                value.resize(VALUE_BYTES.max(value.len()), b'.');
                let payload = KvCommand::Put { key: key_text.as_bytes(), value: &value }.encode();
                (
                    RequestBody::Command { session_id: self.session, sequence: self.sequence, payload },
                    HistoryOp::put(self.index as u64, key, tag, 0),
                )
            };
            let invoked = Instant::now();
            let mut op = op;
            op.invoke_ns = self.ns(invoked);
            // `call` follows redirects and retries the same (session, sequence), which applies once.
            let answer = connected.call(body);
            let completed = Instant::now();
            let outcome = match answer {
                Ok(ResponseBody::Ok(bytes)) => match (read, KvResult::decode(&bytes)) {
                    (false, Ok(KvResult::Done)) => Some(op.ok(self.ns(completed), None)),
                    (true, Ok(KvResult::Value(value))) => Some(op.ok(self.ns(completed), value.map(|v| value_tag(&v)))),
                    // An answer of the wrong kind: nothing is known of the operation.
                    _ => Some(op.with_kind(OpType::Info)),
                },
                // A get that failed constrains nothing; leave it out.
                _ if read => None,
                // Anything else leaves the put's outcome unknown: no answer in time, a broken
                // connection, retries exhausted after an attempt whose connection broke, or the
                // node's own deadline (`TimedOut`). A refusal (too large, invalid) was never
                // applied, but unknown is sound for it too.
                _ => Some(op.with_kind(OpType::Info)),
            };
            let failed = !matches!(&outcome, Some(op) if op.kind == OpType::Ok);
            if let Some(op) = outcome {
                match (op.kind, read) {
                    (OpType::Ok, false) => self.progress.acknowledged_writes.fetch_add(1, Ordering::Relaxed),
                    (OpType::Ok, true) => self.progress.reads.fetch_add(1, Ordering::Relaxed),
                    _ => self.progress.unknown.fetch_add(1, Ordering::Relaxed),
                };
                if !self.record(op) {
                    return;
                }
            }
            if failed {
                // Try another node next: this one may be paused, cut off or gone.
                client = None;
                attempt += 1;
            }
            if !self.spec.think.is_zero() {
                std::thread::sleep(self.spec.think);
            }
        }
    }
}

/// A read of every key at the end, after every fault healed, recorded like the workload's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalRead {
    pub key: u64,
    pub value: Option<String>,
    pub invoke_ns: u64,
    pub complete_ns: u64,
}

/// Reads `keys` linearizably, retrying each until it is answered, with times on `epoch`'s clock.
///
/// # Errors
/// A key could not be read within `patience`.
pub fn final_reads(
    addresses: &[SocketAddr],
    keys: impl IntoIterator<Item = u64>,
    epoch: Instant,
    patience: Duration,
) -> Result<Vec<FinalRead>, String> {
    let config = ClientConfig { response_ms: 2_000, connect_ms: 300, retries_max: 8, ..ClientConfig::default() };
    let ns = |at: Instant| u64::try_from(at.duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
    let deadline = Instant::now() + patience;
    let mut client: Option<Client> = None;
    let mut reads = Vec::new();
    for key in keys {
        let payload = KvCommand::Get { key: key_bytes(key).as_bytes() }.encode();
        loop {
            if Instant::now() > deadline {
                return Err(format!("key {key} could not be read within {patience:?} after the faults healed"));
            }
            if client.is_none() {
                client = Client::connect(addresses, config.clone()).ok();
            }
            let Some(c) = client.as_mut() else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let invoked = Instant::now();
            let body = RequestBody::Read { consistency: Consistency::Linearizable, payload: payload.clone() };
            match c.call(body) {
                Ok(ResponseBody::Ok(bytes)) => match KvResult::decode(&bytes) {
                    Ok(KvResult::Value(value)) => {
                        reads.push(FinalRead {
                            key,
                            value: value.map(|v| value_tag(&v)),
                            invoke_ns: ns(invoked),
                            complete_ns: ns(Instant::now()),
                        });
                        break;
                    }
                    other => return Err(format!("a read of key {key} answered {other:?}")),
                },
                _ => {
                    client = None;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    Ok(reads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_keys_match_smr_load() {
        assert_eq!(value_tag(b"3.17:...."), "3.17");
        assert_eq!(value_tag(b"plain"), "plain");
        assert_eq!(key_bytes(42), "0000000000000042");
    }
}
