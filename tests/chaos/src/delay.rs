//! The delayer: delay and reordering of real packets on a kernel without `sch_netem`.
//!
//! This kernel has no `sch_netem` (`CONFIG_NET_SCH_NETEM` is not set: `tc qdisc add ... netem`
//! fails with "Specified qdisc kind is unknown"), but it has NFQUEUE (`xt_NFQUEUE` and
//! `nfnetlink_queue`). An iptables rule in a host's namespace hands every peer packet leaving the
//! host to an NFQUEUE queue; the delayer, a separate process (`smr-chaos delay`) inside that
//! namespace, receives each packet and gives its ACCEPT verdict only `delay_ms` plus a uniformly
//! random `[0, jitter_ms]` ms later, drawn from a seeded SplitMix64 so that a run replays from its
//! seed. The kernel takes verdicts in any order, so with a jitter larger than the gap between two
//! packets the later one is often released first: packets are really reordered, as netem's
//! `delay D J` reorders them.
//!
//! Fail-open: the rule carries `--queue-bypass`, so the packets of a delayer that died pass
//! undelayed instead of cutting its node off without a word (the harness checks that the delayer
//! is alive when it heals and reports one that died). The queue is also set fail-open in the
//! kernel: a packet over the kernel queue's length ([`DelayLimits::kernel_queue_packets_max`]),
//! or one the delayer's socket has no room for, is accepted rather than dropped, so that the fault
//! is delay only, never loss.
//!
//! Everything is bounded: the packets held ([`DelayLimits::held_packets_max`]; one more is
//! accepted at once and counted as overflowed), the kernel's queue, the packets received per
//! round ([`DelayLimits::kernel_queue_packets_max`]) and the flows tracked for counting
//! reorderings ([`FLOWS_MAX`]).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use smr_raft::SplitMix64;
use thiserror::Error;

/// The longest base delay or jitter accepted, in milliseconds: a delay of seconds is a partition,
/// and [`crate::fabric`] has those.
pub const DELAY_MS_MAX: u32 = 10_000;
/// How many flows (address and port pairs) the reordering count tracks at once; a fresh cluster
/// has a few peer connections per node, so this is reached only after thousands of reconnects,
/// and then the tracking starts over (missing at most one reordering per flow).
pub const FLOWS_MAX: usize = 1_024;
/// How long the delayer sleeps at most between two looks at the kernel queue, in microseconds: a
/// packet waits up to this long to be received, on top of its delay. The queue's socket is not
/// exposed by the `nfq` crate, so the delayer cannot wait on it and a timer at once; one look
/// every millisecond costs about 1,000 system calls a second.
const POLL_INTERVAL_US: u64 = 1_000;
/// Bytes of each packet copied to the delayer: an IPv4 header with the longest options (60) and
/// the two ports after it (4), enough to tell a packet's flow; the rest stays in the kernel.
const HEADER_COPY_BYTES: u16 = 64;

/// What one delayer does to the packets of its queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelaySpec {
    /// Every packet is held at least this long, in milliseconds.
    pub delay_ms: u32,
    /// On top of `delay_ms`, a uniformly random `[0, jitter_ms]` ms per packet.
    pub jitter_ms: u32,
    /// The seed of the per-packet jitter.
    pub seed: u64,
}

/// The delayer's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayLimits {
    /// Packets held at once; a packet over it is accepted at once and counted as overflowed. At
    /// 10,000 packets/s delayed 30 ms, 300 are held; each held packet keeps a 4 KiB receive
    /// buffer, so the default's worst case is 16 MiB.
    pub held_packets_max: usize,
    /// The kernel queue's length (`NFQA_CFG_QUEUE_MAXLEN`), and the packets received per round:
    /// a packet over it is accepted by the kernel (fail-open).
    pub kernel_queue_packets_max: u32,
}

impl Default for DelayLimits {
    fn default() -> DelayLimits {
        DelayLimits { held_packets_max: 4_096, kernel_queue_packets_max: 1_024 }
    }
}

/// What a delayer did, printed as one JSON line on its stdout when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelayStats {
    /// Packets received from the queue.
    pub received: u64,
    /// Packets held for their whole delay, then accepted.
    pub delayed: u64,
    /// Packets accepted at once because `held_packets_max` were held already.
    pub overflowed: u64,
    /// Packets accepted before their time because the delayer was told to stop.
    pub released_at_stop: u64,
    /// Packets released while a later packet of their own flow had been released already.
    pub reordered: u64,
    /// The shortest and the longest time a delayed packet was held, in microseconds.
    pub held_us_min: u64,
    pub held_us_max: u64,
    /// The most packets held at once.
    pub held_packets_peak: u64,
    /// Verdicts the kernel refused (a packet it no longer knew).
    pub verdicts_refused: u64,
}

/// An IPv4 packet's addresses and ports: the unit within which reordering is counted (TCP
/// reorders nothing across connections).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flow {
    source: [u8; 4],
    destination: [u8; 4],
    ports: [u8; 4],
}

impl Flow {
    /// The flow of an IPv4 packet whose first bytes are `packet`; anything else (too short, not
    /// IPv4) is one flow of its own, the default.
    pub fn of_ipv4(packet: &[u8]) -> Flow {
        let Some(&first) = packet.first() else { return Flow::default() };
        if first >> 4 != 4 || packet.len() < 20 {
            return Flow::default();
        }
        let header_bytes = usize::from(first & 0x0f) * 4;
        let mut flow = Flow::default();
        flow.source.copy_from_slice(&packet[12..16]);
        flow.destination.copy_from_slice(&packet[16..20]);
        if let Some(ports) = packet.get(header_bytes..header_bytes + 4) {
            flow.ports.copy_from_slice(ports);
        }
        flow
    }
}

#[derive(Debug)]
struct Held<P> {
    packet: P,
    flow: Flow,
    sequence: u64,
    arrived: Instant,
}

/// The packets held, ordered by release time, and the counts of what happened to them. Generic
/// over the packet so that its rules are tested without a queue.
///
/// Invariant: `held.len() <= limits.held_packets_max`.
#[derive(Debug)]
pub struct Schedule<P> {
    /// Keyed by release time, then arrival sequence (unique, and first come first out among
    /// packets due at the same instant).
    held: BTreeMap<(Instant, u64), Held<P>>,
    spec: DelaySpec,
    limits: DelayLimits,
    rng: SplitMix64,
    next_sequence: u64,
    /// Per flow, the highest arrival sequence released so far.
    released_latest: HashMap<Flow, u64>,
    stats: DelayStats,
}

impl<P> Schedule<P> {
    /// # Panics
    /// If `spec`'s delay or jitter is over [`DELAY_MS_MAX`] or `limits` hold no packet.
    pub fn new(spec: DelaySpec, limits: DelayLimits) -> Schedule<P> {
        assert!(spec.delay_ms <= DELAY_MS_MAX && spec.jitter_ms <= DELAY_MS_MAX, "{spec:?} over {DELAY_MS_MAX} ms");
        assert!(limits.held_packets_max > 0 && limits.kernel_queue_packets_max > 0, "{limits:?}");
        Schedule {
            held: BTreeMap::new(),
            spec,
            limits,
            rng: SplitMix64::new(smr_raft::mix(spec.seed)),
            next_sequence: 0,
            released_latest: HashMap::new(),
            stats: DelayStats::default(),
        }
    }

    pub fn stats(&self) -> DelayStats {
        self.stats
    }

    pub fn held_packets(&self) -> usize {
        self.held.len()
    }

    /// Takes a packet that arrived at `now`. Returns it back if it must be accepted at once
    /// (`held_packets_max` are held already); else it is held until its release time.
    pub fn admit(&mut self, now: Instant, flow: Flow, packet: P) -> Option<P> {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.stats.received += 1;
        if self.held.len() >= self.limits.held_packets_max {
            self.stats.overflowed += 1;
            self.note_release(flow, sequence);
            return Some(packet);
        }
        // One draw per packet whatever the jitter, so that the sequence of delays depends on the
        // seed and the packet count alone.
        let jitter_us = self.rng.below(u64::from(self.spec.jitter_ms) * 1_000 + 1);
        let delay = Duration::from_micros(u64::from(self.spec.delay_ms) * 1_000 + jitter_us);
        self.held.insert((now + delay, sequence), Held { packet, flow, sequence, arrived: now });
        self.stats.held_packets_peak = self.stats.held_packets_peak.max(self.held.len() as u64);
        debug_assert!(self.held.len() <= self.limits.held_packets_max);
        None
    }

    /// When the next held packet is due, if one is held.
    pub fn next_release(&self) -> Option<Instant> {
        self.held.first_key_value().map(|((at, _), _)| *at)
    }

    /// Moves every packet due at `now` into `released`, in release order.
    pub fn release_due(&mut self, now: Instant, released: &mut Vec<P>) {
        while let Some(entry) = self.held.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let held = entry.remove();
            let held_us = now.saturating_duration_since(held.arrived).as_micros() as u64;
            self.stats.held_us_min =
                if self.stats.delayed == 0 { held_us } else { self.stats.held_us_min.min(held_us) };
            self.stats.held_us_max = self.stats.held_us_max.max(held_us);
            self.stats.delayed += 1;
            self.note_release(held.flow, held.sequence);
            released.push(held.packet);
        }
    }

    /// Moves every packet held into `released` at once, in release order (the delayer stops).
    pub fn release_all(&mut self, released: &mut Vec<P>) {
        for (_, held) in std::mem::take(&mut self.held) {
            self.stats.released_at_stop += 1;
            self.note_release(held.flow, held.sequence);
            released.push(held.packet);
        }
    }

    /// Counts a packet released after a later packet of its flow.
    fn note_release(&mut self, flow: Flow, sequence: u64) {
        if self.released_latest.len() >= FLOWS_MAX && !self.released_latest.contains_key(&flow) {
            self.released_latest.clear();
        }
        let latest = self.released_latest.entry(flow).or_insert(sequence);
        if *latest > sequence {
            self.stats.reordered += 1;
        } else {
            *latest = sequence;
        }
    }

    fn refused_verdict(&mut self) {
        self.stats.verdicts_refused += 1;
    }
}

/// Why a delayer stopped before it was told to.
#[derive(Debug, Error)]
pub enum DelayError {
    #[error("cannot install the SIGTERM handler: {0}")]
    Signal(io::Error),
    #[error("cannot open a netfilter queue socket (needs CAP_NET_ADMIN): {0}")]
    Open(io::Error),
    #[error("cannot bind and set up NFQUEUE queue {queue} (is another delayer bound to it?): {source}")]
    Bind { queue: u16, source: io::Error },
    #[error("cannot receive from NFQUEUE queue {queue}: {source}")]
    Receive { queue: u16, source: io::Error },
    #[error("cannot give a verdict to NFQUEUE queue {queue}: {source}")]
    Verdict { queue: u16, source: io::Error },
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_stop_handler() -> io::Result<()> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe; the
        // sigaction struct is fully initialised (zeroed, then an empty mask and the handler).
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Binds NFQUEUE queue `queue` and delays its packets until SIGTERM or SIGINT; then accepts
/// whatever is still held or queued at once and returns the counts. `ready` is called once the
/// queue is bound (packets sent before that pass undelayed, by the rule's `--queue-bypass`).
///
/// # Errors
/// The queue cannot be bound (not root, another process holds it) or the socket fails.
pub fn run(queue: u16, spec: DelaySpec, limits: DelayLimits, ready: impl FnOnce()) -> Result<DelayStats, DelayError> {
    install_stop_handler().map_err(DelayError::Signal)?;
    let mut socket = nfq::Queue::open().map_err(DelayError::Open)?;
    let bind = |source| DelayError::Bind { queue, source };
    socket.bind(queue).map_err(bind)?;
    socket.set_copy_range(queue, HEADER_COPY_BYTES).map_err(bind)?;
    socket.set_queue_max_len(queue, limits.kernel_queue_packets_max).map_err(bind)?;
    socket.set_fail_open(queue, true).map_err(bind)?;
    socket.set_nonblocking(true);
    ready();
    let mut schedule = Schedule::new(spec, limits);
    let mut released = Vec::new();
    let poll_interval = Duration::from_micros(POLL_INTERVAL_US);
    while !STOP.load(Ordering::Relaxed) {
        receive(&mut socket, queue, &mut schedule, limits, false)?;
        schedule.release_due(Instant::now(), &mut released);
        for message in released.drain(..) {
            socket.verdict(message).map_err(|source| DelayError::Verdict { queue, source })?;
        }
        let wait = schedule
            .next_release()
            .map_or(poll_interval, |at| at.saturating_duration_since(Instant::now()).min(poll_interval));
        std::thread::sleep(wait);
    }
    // The harness removes the rule before it stops the delayer, so nothing more arrives: accept
    // what the kernel still queues and what is held, so that no packet is dropped when the queue
    // goes away with the socket.
    receive(&mut socket, queue, &mut schedule, limits, true)?;
    schedule.release_all(&mut released);
    for message in released.drain(..) {
        socket.verdict(message).map_err(|source| DelayError::Verdict { queue, source })?;
    }
    Ok(schedule.stats())
}

/// Receives what the kernel queued, up to `kernel_queue_packets_max` packets, into the schedule
/// (or, when `stopping`, accepts them at once).
fn receive(
    socket: &mut nfq::Queue,
    queue: u16,
    schedule: &mut Schedule<nfq::Message>,
    limits: DelayLimits,
    stopping: bool,
) -> Result<(), DelayError> {
    let now = Instant::now();
    for _ in 0..limits.kernel_queue_packets_max {
        match socket.recv() {
            Ok(message) => {
                let flow = Flow::of_ipv4(message.get_payload());
                let accept_now = if stopping { Some(message) } else { schedule.admit(now, flow, message) };
                if let Some(message) = accept_now {
                    socket.verdict(message).map_err(|source| DelayError::Verdict { queue, source })?;
                }
            }
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => break,
            // The kernel answers a verdict for a packet it no longer knows with an error message,
            // read here; it costs that one packet nothing more, so it is counted, not fatal.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => schedule.refused_verdict(),
            Err(source) => return Err(DelayError::Receive { queue, source }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(delay_ms: u32, jitter_ms: u32) -> DelaySpec {
        DelaySpec { delay_ms, jitter_ms, seed: 7 }
    }

    fn ipv4(source: u8, source_port: u16, destination_port: u16) -> Vec<u8> {
        let mut packet = vec![0u8; 24];
        packet[0] = 0x45;
        packet[12..16].copy_from_slice(&[10, 231, 0, source]);
        packet[16..20].copy_from_slice(&[10, 231, 0, 9]);
        packet[20..22].copy_from_slice(&source_port.to_be_bytes());
        packet[22..24].copy_from_slice(&destination_port.to_be_bytes());
        packet
    }

    #[test]
    fn no_packet_is_released_before_its_delay() {
        let mut schedule = Schedule::new(spec(20, 5), DelayLimits::default());
        let start = Instant::now();
        for i in 0..100 {
            assert!(schedule.admit(start + Duration::from_micros(i), Flow::default(), i).is_none());
        }
        let mut released = Vec::new();
        schedule.release_due(start + Duration::from_micros(19_999), &mut released);
        assert!(released.is_empty(), "released before 20 ms: {released:?}");
        schedule.release_due(start + Duration::from_millis(26), &mut released);
        assert_eq!(released.len(), 100);
        let stats = schedule.stats();
        assert_eq!((stats.received, stats.delayed, stats.overflowed), (100, 100, 0));
        assert!(stats.held_us_min >= 20_000 - 100, "{stats:?}");
    }

    #[test]
    fn jitter_wider_than_the_gap_between_packets_reorders_them() {
        let mut schedule = Schedule::new(spec(2, 8), DelayLimits::default());
        let start = Instant::now();
        let flow = Flow::of_ipv4(&ipv4(1, 40_000, 7_000));
        for i in 0..200u64 {
            schedule.admit(start + Duration::from_micros(i * 100), flow, i);
        }
        let mut released = Vec::new();
        schedule.release_due(start + Duration::from_secs(1), &mut released);
        assert_eq!(released.len(), 200);
        assert_ne!(released, (0..200).collect::<Vec<_>>(), "the jitter reordered nothing");
        let inversions = released.windows(2).filter(|pair| pair[0] > pair[1]).count() as u64;
        let stats = schedule.stats();
        assert!(stats.reordered >= inversions && stats.reordered > 0, "{stats:?}, {inversions} adjacent inversions");
    }

    #[test]
    fn packets_of_different_flows_passing_each_other_are_not_counted_as_reordered() {
        let mut schedule = Schedule::new(spec(0, 0), DelayLimits::default());
        let start = Instant::now();
        let one = Flow::of_ipv4(&ipv4(1, 40_000, 7_000));
        let other = Flow::of_ipv4(&ipv4(2, 40_000, 7_000));
        assert_ne!(one, other);
        schedule.admit(start + Duration::from_millis(5), one, 0);
        schedule.admit(start, other, 1);
        let mut released = Vec::new();
        schedule.release_due(start + Duration::from_millis(10), &mut released);
        assert_eq!(released, [1, 0]);
        assert_eq!(schedule.stats().reordered, 0);
    }

    #[test]
    fn a_packet_over_the_held_limit_is_accepted_at_once_and_counted() {
        let limits = DelayLimits { held_packets_max: 3, ..DelayLimits::default() };
        let mut schedule = Schedule::new(spec(50, 0), limits);
        let now = Instant::now();
        for i in 0..3 {
            assert_eq!(schedule.admit(now, Flow::default(), i), None);
        }
        assert_eq!(schedule.admit(now, Flow::default(), 3), Some(3));
        assert_eq!(schedule.held_packets(), 3);
        let stats = schedule.stats();
        assert_eq!((stats.overflowed, stats.held_packets_peak), (1, 3));
        // The overflowed packet overtook the three held before it.
        let mut released = Vec::new();
        schedule.release_all(&mut released);
        assert_eq!(released, [0, 1, 2]);
        assert_eq!(schedule.stats().reordered, 3);
        assert_eq!(schedule.stats().released_at_stop, 3);
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let order = |seed| {
            let mut schedule = Schedule::new(DelaySpec { seed, ..spec(1, 10) }, DelayLimits::default());
            let start = Instant::now();
            for i in 0..50u64 {
                schedule.admit(start, Flow::default(), i);
            }
            let mut released = Vec::new();
            schedule.release_all(&mut released);
            released
        };
        assert_eq!(order(3), order(3));
        assert_ne!(order(3), order(4));
    }

    #[test]
    fn flows_are_told_apart_by_addresses_and_ports_even_with_ip_options() {
        let plain = ipv4(1, 40_000, 7_000);
        assert_eq!(Flow::of_ipv4(&plain), Flow::of_ipv4(&plain));
        assert_ne!(Flow::of_ipv4(&plain), Flow::of_ipv4(&ipv4(1, 40_001, 7_000)));
        // A 24-byte header (one word of options) moves the ports back by four bytes.
        let mut with_options = plain[..20].to_vec();
        with_options[0] = 0x46;
        with_options.extend_from_slice(&[1, 1, 1, 1]);
        with_options.extend_from_slice(&plain[20..24]);
        assert_eq!(Flow::of_ipv4(&with_options), Flow::of_ipv4(&plain));
        assert_eq!(Flow::of_ipv4(&[0x60; 40]), Flow::default());
        assert_eq!(Flow::of_ipv4(&[]), Flow::default());
    }
}
