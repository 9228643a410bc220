//! Per-stage HDR histograms and node-wide counters: recorded on the stage's own thread, merged
//! off the hot path, reported as a table or as JSON.
//!
//! Each stage thread owns a [`StageRecorder`]: plain `&mut` histograms, no lock, no atomic, no
//! allocation while recording. Once per `publish_interval` the stage calls
//! [`StageRecorder::maybe_publish`], which merges what it recorded since the last publish (the
//! delta) into the shared [`MetricsHub`] and clears the delta. The hub therefore holds
//! **cumulative** histograms since start. We publish deltas rather than cumulative copies because
//! several threads may record for one stage (the transport's threads are all the net stage):
//! merging deltas adds them up, where replacing a copy would keep only the last thread's.
//!
//! Drops and refusals are counted in [`Counters`], atomics shared by every stage through the hub;
//! each counter sits on a cache line of its own so that a stage bumping one does not slow a
//! stage bumping another.
//!
//! A report is as fresh as each stage's last publish: up to one `publish_interval` old for a
//! stage that is busy, and older for a stage that blocks idle without calling `maybe_publish`.
//! Stages that block should wait with a timeout of at most [`MetricsHub::publish_interval`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use smr_raft::GroupId;

use crate::config::ConfigError;
use crate::placement::Stage;

/// Significant decimal digits every histogram keeps: a value is known to within 0.1%.
pub const HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 3;

/// Largest duration a latency histogram holds; longer ones are recorded as this and counted as
/// clamped. A minute is far beyond any election timeout, so a clamped latency is a stall worth
/// seeing. At 3 significant digits a histogram up to 60 s has 27,648 buckets of 8 bytes: 216 KiB.
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;

/// Largest item count per batch a histogram holds. The sequencer's `batch_commands_max` and the
/// log's entries per fsync stay far below a million.
pub const BATCH_ITEMS_MAX: u64 = 1 << 20;

/// Largest byte count per batch a histogram holds. One fsync may cover many 2 MiB entries, so
/// the bound is well above `batch_bytes_max`: 1 GiB.
pub const BATCH_BYTES_HISTOGRAM_MAX: u64 = 1 << 30;

/// Longest publish interval a config may ask for; beyond it reports would be stale enough to
/// mislead.
pub const PUBLISH_INTERVAL_MS_MAX: u64 = 60_000;

/// Largest JSON report [`MetricsReport::from_json`] accepts. A report with 19 histograms (the
/// four per stage plus one extra for core, log and apply) measures 3.9 KiB, so one with all 28
/// is under 6 KiB; the margin allows for longer names later while keeping what untrusted bytes
/// can make us allocate small.
pub const REPORT_BYTES_MAX: usize = 64 * 1024;

/// How metrics are collected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// How often each stage merges its histograms into the hub.
    pub publish_interval_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig { publish_interval_ms: 1000 }
    }
}

impl MetricsConfig {
    /// # Errors
    /// The field that is out of range, with the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.publish_interval_ms == 0 || self.publish_interval_ms > PUBLISH_INTERVAL_MS_MAX {
            return Err(ConfigError::new(
                "metrics.publish_interval_ms",
                format!("{} is outside 1..={PUBLISH_INTERVAL_MS_MAX}", self.publish_interval_ms),
            ));
        }
        Ok(())
    }
}

/// What a histogram's values count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Nanoseconds,
    Items,
    Bytes,
}

/// Every histogram a stage may record. Each recorder owns the four per-stage ones and the
/// extras chosen at construction; the enum indexes a fixed array, so recording is one bounds
/// check and one branch, never a lookup by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Histo {
    /// Time an item waited in the stage's queue before the stage took it.
    QueueWait,
    /// Time to handle one batch of work.
    Service,
    /// Items handled per wakeup. Core: commands per proposed entry. Log: entries per fsync.
    BatchItems,
    /// Bytes handled per wakeup.
    BatchBytes,
    /// Proposal to commit, recorded by the core.
    CommitLatency,
    /// Proposal to result sent to the client, recorded by apply.
    ApplyLatency,
    /// One fdatasync, recorded by the log writer.
    Fsync,
}

/// Number of [`Histo`] variants: the length of every histogram array.
pub const HISTO_COUNT: usize = Histo::ALL.len();

impl Histo {
    pub const ALL: [Histo; 7] = [
        Histo::QueueWait,
        Histo::Service,
        Histo::BatchItems,
        Histo::BatchBytes,
        Histo::CommitLatency,
        Histo::ApplyLatency,
        Histo::Fsync,
    ];

    /// The histograms every stage records.
    pub const STAGE: [Histo; 4] = [Histo::QueueWait, Histo::Service, Histo::BatchItems, Histo::BatchBytes];

    pub fn name(self) -> &'static str {
        match self {
            Histo::QueueWait => "queue_wait_ns",
            Histo::Service => "service_ns",
            Histo::BatchItems => "batch_items",
            Histo::BatchBytes => "batch_bytes",
            Histo::CommitLatency => "commit_latency_ns",
            Histo::ApplyLatency => "apply_latency_ns",
            Histo::Fsync => "fsync_ns",
        }
    }

    pub fn unit(self) -> Unit {
        match self {
            Histo::BatchItems => Unit::Items,
            Histo::BatchBytes => Unit::Bytes,
            Histo::QueueWait | Histo::Service | Histo::CommitLatency | Histo::ApplyLatency | Histo::Fsync => {
                Unit::Nanoseconds
            }
        }
    }

    /// Largest value the histogram holds; larger ones are clamped to it and counted.
    pub fn value_max(self) -> u64 {
        match self.unit() {
            Unit::Nanoseconds => LATENCY_NS_MAX,
            Unit::Items => BATCH_ITEMS_MAX,
            Unit::Bytes => BATCH_BYTES_HISTOGRAM_MAX,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn new_histogram(self) -> Histogram<u64> {
        // The bounds are constants checked by `every_histogram_can_be_built`; failing here is a bug.
        Histogram::new_with_bounds(1, self.value_max(), HISTOGRAM_SIGNIFICANT_DIGITS)
            .expect("histogram bounds are valid constants")
    }
}

const STAGE_COUNT: usize = Stage::ALL.len();

fn stage_index(stage: Stage) -> usize {
    match stage {
        Stage::Core => 0,
        Stage::Log => 1,
        Stage::Apply => 2,
        Stage::Net => 3,
    }
}

/// One histogram and how many of its values were clamped to its bound.
#[derive(Clone, Debug)]
struct Slot {
    histogram: Histogram<u64>,
    /// Invariant: every value recorded is at most `value_max`, so `record` never fails.
    value_max: u64,
    clamped_count: u64,
}

impl Slot {
    fn new(histo: Histo) -> Slot {
        Slot { histogram: histo.new_histogram(), value_max: histo.value_max(), clamped_count: 0 }
    }

    #[inline]
    fn record(&mut self, value: u64) {
        let value = if value > self.value_max {
            self.clamped_count += 1;
            self.value_max
        } else {
            value
        };
        // Saturating rather than fallible: the value is in range already, and this keeps a
        // panic path out of the hot loop.
        self.histogram.saturating_record(value);
    }

    /// An empty slot with the same bounds, to accumulate into.
    fn empty_like(other: &Slot) -> Slot {
        Slot { histogram: Histogram::new_from(&other.histogram), value_max: other.value_max, clamped_count: 0 }
    }

    fn is_empty(&self) -> bool {
        self.histogram.is_empty() && self.clamped_count == 0
    }

    fn merge_from(&mut self, delta: &Slot) {
        // Both were built from the same `Histo`, so the delta's values always fit.
        self.histogram.add(&delta.histogram).expect("histograms of one kind share bounds");
        self.clamped_count += delta.clamped_count;
    }

    fn clear(&mut self) {
        self.histogram.reset();
        self.clamped_count = 0;
    }
}

/// The histograms of one stage, indexed by [`Histo`]; `None` for the ones it does not record.
type Slots = [Option<Slot>; HISTO_COUNT];

fn ns_of(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The histograms of one stage, owned by that stage's thread.
///
/// Recording takes `&mut self` and touches only this struct: no lock, no atomic, no allocation.
/// The stage must call [`maybe_publish`](Self::maybe_publish) on every wakeup (it returns at once
/// unless the interval has passed) and should not block longer than the publish interval without
/// calling it. Dropping the recorder publishes what is left, so nothing recorded is lost when a
/// stage ends.
pub struct StageRecorder {
    stage: Stage,
    slots: Slots,
    hub: Arc<MetricsHub>,
    publish_interval: Duration,
    /// When the next `maybe_publish` publishes.
    publish_due: Instant,
}

impl std::fmt::Debug for StageRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let owned: Vec<&str> =
            Histo::ALL.iter().filter(|h| self.slots[h.index()].is_some()).map(|h| h.name()).collect();
        f.debug_struct("StageRecorder")
            .field("stage", &self.stage)
            .field("histograms", &owned)
            .field("publish_interval", &self.publish_interval)
            .field("publish_due", &self.publish_due)
            .finish_non_exhaustive()
    }
}

impl StageRecorder {
    /// A recorder for `stage` owning the per-stage histograms ([`Histo::STAGE`]) and `extras`.
    /// Allocates every histogram now, and registers them with the hub so that reports show them
    /// (with count 0) before anything is recorded. The first publish is due one interval after
    /// `now`.
    pub fn new(hub: Arc<MetricsHub>, stage: Stage, extras: &[Histo], now: Instant) -> StageRecorder {
        let mut slots: Slots = Default::default();
        for histo in Histo::STAGE.iter().chain(extras) {
            slots[histo.index()].get_or_insert_with(|| Slot::new(*histo));
        }
        hub.register(stage, &slots);
        let publish_interval = hub.publish_interval;
        StageRecorder { stage, slots, hub, publish_interval, publish_due: now + publish_interval }
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Whether this recorder owns `histo`.
    pub fn records(&self, histo: Histo) -> bool {
        self.slots[histo.index()].is_some()
    }

    /// The node's counters, for the stage to bump.
    pub fn counters(&self) -> &Counters {
        &self.hub.counters
    }

    /// Time the item the stage just took had waited in its queue.
    #[inline]
    pub fn record_queue_wait(&mut self, wait: Duration) {
        self.record(Histo::QueueWait, ns_of(wait));
    }

    /// Time the stage took to handle one batch of work.
    #[inline]
    pub fn record_service(&mut self, service: Duration) {
        self.record(Histo::Service, ns_of(service));
    }

    /// Items and bytes the stage handled in one wakeup.
    #[inline]
    pub fn record_batch(&mut self, items: u64, bytes: u64) {
        self.record(Histo::BatchItems, items);
        self.record(Histo::BatchBytes, bytes);
    }

    /// Records a duration, in nanoseconds, into `histo`.
    ///
    /// # Panics
    /// If this recorder does not own `histo` (see [`new`](Self::new)): recording a figure the
    /// stage was not built to record is a bug in the stage.
    #[inline]
    pub fn record_duration(&mut self, histo: Histo, duration: Duration) {
        self.record(histo, ns_of(duration));
    }

    /// Records `value` into `histo`. A value above [`Histo::value_max`] is recorded as the bound
    /// and counted as clamped.
    ///
    /// # Panics
    /// If this recorder does not own `histo`.
    #[inline]
    pub fn record(&mut self, histo: Histo, value: u64) {
        match &mut self.slots[histo.index()] {
            Some(slot) => slot.record(value),
            None => not_owned(self.stage, histo),
        }
    }

    /// Publishes to the hub if the publish interval has passed since the last publish; returns
    /// whether it did. Cheap when not due: one comparison of instants.
    ///
    /// The next publish is due one interval after `now`, not after the missed due time, so a
    /// stage that was idle for a long time publishes once rather than catching up.
    /// If another thread holds the hub's lock for this stage (a report being taken), it does not
    /// wait: the delta keeps accumulating and the next call tries again.
    #[inline]
    pub fn maybe_publish(&mut self, now: Instant) -> bool {
        if now < self.publish_due {
            return false;
        }
        self.publish_due_at(now)
    }

    #[cold]
    fn publish_due_at(&mut self, now: Instant) -> bool {
        let totals = match self.hub.stages[stage_index(self.stage)].try_lock() {
            Ok(totals) => totals,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        merge_and_clear(totals, &mut self.slots);
        self.publish_due = now + self.publish_interval;
        true
    }

    /// Publishes everything recorded since the last publish, waiting for the hub's lock. For
    /// shutdown and tests; a running stage uses [`maybe_publish`](Self::maybe_publish).
    pub fn publish_now(&mut self) {
        let totals = lock(&self.hub.stages[stage_index(self.stage)]);
        merge_and_clear(totals, &mut self.slots);
    }
}

impl Drop for StageRecorder {
    fn drop(&mut self) {
        self.publish_now();
    }
}

#[cold]
#[inline(never)]
fn not_owned(stage: Stage, histo: Histo) -> ! {
    panic!("stage {} records {} but its recorder was not built with it", stage.name(), histo.name())
}

fn merge_and_clear(mut totals: MutexGuard<'_, Slots>, deltas: &mut Slots) {
    for (total, delta) in totals.iter_mut().zip(deltas.iter_mut()) {
        let Some(delta) = delta else { continue };
        if delta.is_empty() {
            continue;
        }
        // `register` created the total when the recorder was built.
        total.get_or_insert_with(|| Slot::empty_like(delta)).merge_from(delta);
        delta.clear();
    }
}

/// A poisoned lock means a stage panicked while merging; the histograms are still usable as
/// statistics, and losing the report over it would hide what led up to the panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the stages of one Raft group publish their histograms and bump their counters. Shared
/// as an `Arc`; its locks are taken once per publish interval per recorder and by reports, never
/// on the hot path.
pub struct MetricsHub {
    group: GroupId,
    started: Instant,
    publish_interval: Duration,
    /// Cumulative histograms since start, one lock per stage so that stages publishing at the
    /// same moment do not wait for each other.
    stages: [Mutex<Slots>; STAGE_COUNT],
    counters: Counters,
    /// The transport's counters (peer links, client connections), once the node has started it.
    net: std::sync::OnceLock<Vec<smr_net::StatsReader>>,
}

impl std::fmt::Debug for MetricsHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsHub")
            .field("group", &self.group)
            .field("started", &self.started)
            .field("publish_interval", &self.publish_interval)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl MetricsHub {
    /// # Panics
    /// If `config` is invalid: [`MetricsConfig::validate`] is checked at start-up, before this.
    pub fn new(group: GroupId, config: &MetricsConfig, started: Instant) -> Arc<MetricsHub> {
        config.validate().expect("metrics config validated at start-up");
        Arc::new(MetricsHub {
            group,
            started,
            publish_interval: Duration::from_millis(config.publish_interval_ms),
            stages: Default::default(),
            counters: Counters::new(),
            net: std::sync::OnceLock::new(),
        })
    }

    /// Adds the transport's counters to every report from now on; the first call counts.
    pub fn attach_net(&self, readers: Vec<smr_net::StatsReader>) {
        let _ = self.net.set(readers);
    }

    /// A recorder for `stage`; see [`StageRecorder::new`].
    pub fn recorder(self: &Arc<Self>, stage: Stage, extras: &[Histo], now: Instant) -> StageRecorder {
        StageRecorder::new(Arc::clone(self), stage, extras, now)
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    /// How often recorders publish; the longest a stage should block without calling
    /// [`StageRecorder::maybe_publish`].
    pub fn publish_interval(&self) -> Duration {
        self.publish_interval
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn register(&self, stage: Stage, slots: &Slots) {
        let mut totals = lock(&self.stages[stage_index(stage)]);
        for (total, slot) in totals.iter_mut().zip(slots) {
            if let Some(slot) = slot {
                total.get_or_insert_with(|| Slot::empty_like(slot));
            }
        }
    }

    /// Everything published so far, with the uptime at `now`.
    ///
    /// Each stage's histograms are copied under its lock (about 1 MiB, tens of microseconds) and
    /// summarised after it is released, so a report delays a stage's publish by no more than the
    /// copy, and [`StageRecorder::maybe_publish`] does not wait even for that.
    pub fn report(&self, now: Instant) -> MetricsReport {
        let stages = Stage::ALL
            .iter()
            .map(|&stage| {
                let totals: Slots = lock(&self.stages[stage_index(stage)]).clone();
                let histograms = Histo::ALL
                    .iter()
                    .filter_map(|&histo| totals[histo.index()].as_ref().map(|slot| HistogramReport::of(histo, slot)))
                    .collect();
                StageReport { stage: stage.name().to_owned(), histograms }
            })
            .collect();
        MetricsReport {
            group: self.group,
            uptime_ms: u64::try_from(now.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX),
            stages,
            counters: self.counters.values(),
            net: self.net.get().map_or_else(Vec::new, |readers| {
                let total =
                    readers.iter().map(smr_net::StatsReader::read).fold(smr_net::NetStats::default(), |a, b| a + b);
                total.fields().into_iter().map(|(name, value)| NetCounter { name: name.to_owned(), value }).collect()
            }),
        }
    }
}

/// One counter on a cache line of its own. Only goes up.
#[repr(align(64))]
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    // Relaxed throughout: a counter is a statistic, nothing is ordered by it.

    #[inline]
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn add(&self, count: u64) {
        self.0.fetch_add(count, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// Declares every counter once: the live [`Counters`] and their serialisable [`CounterValues`].
macro_rules! counters {
    ($($(#[doc = $doc:literal])+ $name:ident,)+) => {
        /// Every drop, refusal and throughput count of one group, shared by its stages.
        /// Bump with `counters.client_busy.bump()`.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[doc = $doc])+ pub $name: Counter,)+
        }

        impl Counters {
            pub fn new() -> Counters {
                Counters::default()
            }

            /// Every counter's name and current value, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.get()),)+]
            }

            /// A copy of every counter. Each is read on its own, so the copy is not one instant's
            /// state; it does not need to be.
            pub fn values(&self) -> CounterValues {
                CounterValues { $($name: self.$name.get(),)+ }
            }
        }

        /// The counters at one moment, as reported. A field missing from the JSON reads as 0 and
        /// an unknown one is ignored, so `smr ctl` and a node of another version still agree.
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct CounterValues {
            $($(#[doc = $doc])+ pub $name: u64,)+
        }

        impl CounterValues {
            /// Every counter's name and value, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)+]
            }
        }
    };
}

counters! {
    /// Client requests refused because a queue toward the core was full.
    client_busy,
    /// Client requests refused for exceeding a size limit.
    client_too_large,
    /// Client requests answered `NotLeader`.
    client_not_leader,
    /// Client requests answered `TimedOut`.
    client_timed_out,
    /// Proposals the core dropped (leadership lost, or the Raft core refused them).
    proposals_dropped,
    /// Linearizable reads that could not be served.
    reads_failed,
    /// Snapshots this node took of its state machine.
    snapshots_taken,
    /// Snapshots this node sent to followers.
    snapshots_sent,
    /// Snapshots this node installed from a leader.
    snapshots_installed,
    /// Times the core found the log writer's queue full.
    log_queue_full,
    /// Times the core found the apply queue full (past its high-water mark).
    apply_queue_full,
    /// Peer messages dropped: queue full, bad frame, unknown or foreign sender.
    peer_messages_dropped,
    /// Client commands applied to the state machine.
    commands_applied,
    /// Log entries applied.
    entries_applied,
    /// Linearizable reads served.
    reads_served,
    /// Durable entries whose in-memory copy in the core gave way to the log's mapping.
    entries_rebound,
    /// Core rounds run by the transport thread that brought the work (`pipeline.inline_core`),
    /// not by the core's own thread (the core's `service` histogram counts every round).
    core_rounds_inline,
    /// Log writer rounds (submit, write, `fdatasync`) run by the thread whose core round queued
    /// the work (`status.inline_log`), not by the log writer's own thread.
    log_rounds_inline,
    /// Apply rounds run by the thread whose core round committed the entries
    /// (`status.inline_apply`), not by the apply stage's own thread.
    apply_rounds_inline,
    /// Log segments made by zero-filling a new file (`log.recycled_segments_max`: when no
    /// compacted segment was free to reuse).
    segments_zero_filled,
    /// Log segments made by reusing a compacted one (a rename and a header).
    segments_reused,
    /// Inline log or apply rounds that took so long (over 10 ms) that the stage's rounds went
    /// back to its own thread for a second.
    inline_rounds_slow,
}

/// Why a report could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("a metrics report of {bytes} bytes is larger than the {bytes_max} allowed")]
    TooLarge { bytes: usize, bytes_max: usize },
    #[error("a metrics report is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
}

/// A node's metrics at one moment: what `smr ctl stats` fetches and prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    pub group: GroupId,
    pub uptime_ms: u64,
    /// Every stage, in pipeline order, including those that have recorded nothing yet.
    pub stages: Vec<StageReport>,
    pub counters: CounterValues,
    /// The transport's counters, peer links and client connections together (see
    /// `smr_net::NetStats`): handshakes refused and why, frames dropped, connections closed.
    /// Empty in a report from a build before them, or before the node started its transport.
    #[serde(default)]
    pub net: Vec<NetCounter>,
}

/// One transport counter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetCounter {
    pub name: String,
    pub value: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    pub stage: String,
    pub histograms: Vec<HistogramReport>,
}

/// A summary of one cumulative histogram, values in its `unit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistogramReport {
    pub name: String,
    pub unit: Unit,
    pub count: u64,
    /// Values above the histogram's bound, recorded as the bound (so `max` is at least the bound).
    pub clamped_count: u64,
    pub min: u64,
    /// Rounded to 3 decimals so that it survives the JSON round trip exactly: serde_json parses
    /// a decimal of at most 15 digits with one correctly rounded division.
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub p99_99: u64,
    pub max: u64,
}

impl HistogramReport {
    fn of(histo: Histo, slot: &Slot) -> HistogramReport {
        let histogram = &slot.histogram;
        let count = histogram.len();
        let quantile = |q: f64| if count == 0 { 0 } else { histogram.value_at_quantile(q) };
        HistogramReport {
            name: histo.name().to_owned(),
            unit: histo.unit(),
            count,
            clamped_count: slot.clamped_count,
            min: if count == 0 { 0 } else { histogram.min() },
            mean: (histogram.mean() * 1000.0).round() / 1000.0,
            p50: quantile(0.5),
            p90: quantile(0.9),
            p99: quantile(0.99),
            p99_9: quantile(0.999),
            p99_99: quantile(0.9999),
            max: if count == 0 { 0 } else { histogram.max() },
        }
    }
}

impl MetricsReport {
    /// # Panics
    /// Never in practice: serialising these plain types into memory cannot fail.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a metrics report always serialises")
    }

    /// Parses a report received from the network. Never panics on bad input; allocates at most
    /// in proportion to `bytes`, which are refused above [`REPORT_BYTES_MAX`].
    ///
    /// # Errors
    /// [`ReportError::TooLarge`] before parsing anything, or [`ReportError::Json`].
    pub fn from_json(bytes: &[u8]) -> Result<MetricsReport, ReportError> {
        if bytes.len() > REPORT_BYTES_MAX {
            return Err(ReportError::TooLarge { bytes: bytes.len(), bytes_max: REPORT_BYTES_MAX });
        }
        Ok(serde_json::from_slice(bytes)?)
    }

    /// An aligned table for people: one row per stage and histogram, durations in microseconds
    /// with one decimal, then the counters.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "group {}, up {}.{:03} s; histograms are cumulative, as of each stage's last publish",
            self.group,
            self.uptime_ms / 1000,
            self.uptime_ms % 1000
        );
        let header = [
            "stage",
            "histogram",
            "unit",
            "count",
            "clamped",
            "min",
            "mean",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "p99.99",
            "max",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|cell| (*cell).to_owned()).collect()];
        for stage in &self.stages {
            if stage.histograms.is_empty() {
                let mut row = vec![String::new(); header.len()];
                row[0] = stage.stage.clone();
                row[1] = "(no recorder)".to_owned();
                rows.push(row);
            }
            for histogram in &stage.histograms {
                rows.push(histogram_row(&stage.stage, histogram));
            }
        }
        // Names and units read left to right; numbers line up on their last digit.
        let left_columns = 3;
        let widths: Vec<usize> = (0..header.len())
            .map(|column| rows.iter().map(|row| row[column].chars().count()).max().unwrap_or(0))
            .collect();
        for row in &rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                let width = widths[column];
                if column > 0 {
                    line.push_str("  ");
                }
                if column < left_columns {
                    let _ = write!(line, "{cell:<width$}");
                } else {
                    let _ = write!(line, "{cell:>width$}");
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        let fields = self.counters.fields();
        let name_width = fields.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        let value_width = fields.iter().map(|(_, value)| value.to_string().len()).max().unwrap_or(0);
        text.push_str("\ncounters\n");
        for (name, value) in fields {
            let _ = writeln!(text, "{name:<name_width$}  {value:>value_width$}");
        }
        if !self.net.is_empty() {
            let name_width = self.net.iter().map(|c| c.name.len()).max().unwrap_or(0);
            let value_width = self.net.iter().map(|c| c.value.to_string().len()).max().unwrap_or(0);
            text.push_str("\nnet counters (peer links and client connections)\n");
            for NetCounter { name, value } in &self.net {
                let _ = writeln!(text, "{name:<name_width$}  {value:>value_width$}");
            }
        }
        text
    }
}

fn histogram_row(stage: &str, histogram: &HistogramReport) -> Vec<String> {
    let (name, unit, value): (&str, &str, fn(u64) -> String) = match histogram.unit {
        Unit::Nanoseconds => (histogram.name.strip_suffix("_ns").unwrap_or(&histogram.name), "µs", us_of_ns),
        Unit::Items => (&histogram.name, "items", |v| v.to_string()),
        Unit::Bytes => (&histogram.name, "bytes", |v| v.to_string()),
    };
    let mean = match histogram.unit {
        Unit::Nanoseconds => format!("{:.1}", histogram.mean / 1000.0),
        Unit::Items | Unit::Bytes => format!("{:.1}", histogram.mean),
    };
    vec![
        stage.to_owned(),
        name.to_owned(),
        unit.to_owned(),
        histogram.count.to_string(),
        histogram.clamped_count.to_string(),
        value(histogram.min),
        mean,
        value(histogram.p50),
        value(histogram.p90),
        value(histogram.p99),
        value(histogram.p99_9),
        value(histogram.p99_99),
        value(histogram.max),
    ]
}

/// Nanoseconds as microseconds with one decimal, rounded to nearest, in integer arithmetic so
/// that large values print exactly.
fn us_of_ns(ns: u64) -> String {
    let tenths = ns / 100 + u64::from(ns % 100 >= 50);
    format!("{}.{}", tenths / 10, tenths % 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub_at(started: Instant) -> Arc<MetricsHub> {
        MetricsHub::new(7, &MetricsConfig::default(), started)
    }

    fn histogram(report: &MetricsReport, stage: Stage, histo: Histo) -> &HistogramReport {
        let stage = report.stages.iter().find(|s| s.stage == stage.name()).expect("every stage is reported");
        stage.histograms.iter().find(|h| h.name == histo.name()).expect("histogram registered")
    }

    fn within_precision(value: u64, expected: u64) -> bool {
        // Three significant digits: any value is within 1/1000 of what was recorded.
        value.abs_diff(expected) <= expected / 1000 + 1
    }

    #[test]
    fn every_histogram_can_be_built() {
        for histo in Histo::ALL {
            let histogram = histo.new_histogram();
            assert!(histogram.high() >= histo.value_max(), "{}", histo.name());
        }
        assert_eq!(Histo::ALL.iter().map(|h| h.index()).collect::<Vec<_>>(), (0..HISTO_COUNT).collect::<Vec<_>>());
        for (index, stage) in Stage::ALL.iter().enumerate() {
            assert_eq!(stage_index(*stage), index);
        }
    }

    #[test]
    fn recordings_on_many_threads_merge_into_one_stage() {
        let started = Instant::now();
        let hub = hub_at(started);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let hub = Arc::clone(&hub);
                std::thread::spawn(move || {
                    // Several transport threads all record for the net stage.
                    let mut recorder = hub.recorder(Stage::Net, &[], started);
                    for us in 1..=1000 {
                        recorder.record_service(Duration::from_micros(us));
                    }
                    recorder.record_batch(3, 300);
                    recorder.publish_now();
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("recording thread");
        }
        let report = hub.report(started + Duration::from_millis(1500));
        assert_eq!(report.uptime_ms, 1500);
        let service = histogram(&report, Stage::Net, Histo::Service);
        assert_eq!(service.count, 4000);
        assert_eq!(service.clamped_count, 0);
        assert!(within_precision(service.min, 1_000), "min {}", service.min);
        assert!(within_precision(service.p50, 500_000), "p50 {}", service.p50);
        assert!(within_precision(service.p90, 900_000), "p90 {}", service.p90);
        assert!(within_precision(service.p99, 990_000), "p99 {}", service.p99);
        assert!(within_precision(service.max, 1_000_000), "max {}", service.max);
        assert!((service.mean - 500_500.0).abs() < 500.0, "mean {}", service.mean);
        assert_eq!(histogram(&report, Stage::Net, Histo::BatchItems).count, 4);
        assert_eq!(histogram(&report, Stage::Net, Histo::BatchBytes).p50, 300);
        // Other stages got nothing.
        assert!(report.stages.iter().filter(|s| s.stage != "net").all(|s| s.histograms.is_empty()));
    }

    #[test]
    fn each_stage_keeps_its_own_histograms() {
        let started = Instant::now();
        let hub = hub_at(started);
        let threads: Vec<_> = [(Stage::Core, Histo::CommitLatency), (Stage::Log, Histo::Fsync)]
            .into_iter()
            .map(|(stage, extra)| {
                let hub = Arc::clone(&hub);
                std::thread::spawn(move || {
                    let mut recorder = hub.recorder(stage, &[extra], started);
                    let count = if stage == Stage::Core { 10 } else { 20 };
                    for _ in 0..count {
                        recorder.record_duration(extra, Duration::from_millis(2));
                    }
                    // Dropping the recorder publishes.
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("recording thread");
        }
        let report = hub.report(started);
        assert_eq!(histogram(&report, Stage::Core, Histo::CommitLatency).count, 10);
        assert_eq!(histogram(&report, Stage::Log, Histo::Fsync).count, 20);
        assert!(within_precision(histogram(&report, Stage::Log, Histo::Fsync).p99, 2_000_000));
        let core = report.stages.iter().find(|s| s.stage == "core").expect("core");
        assert!(core.histograms.iter().all(|h| h.name != Histo::Fsync.name()));
    }

    #[test]
    fn values_above_the_bound_are_clamped_not_lost() {
        let started = Instant::now();
        let hub = hub_at(started);
        let mut recorder = hub.recorder(Stage::Apply, &[Histo::ApplyLatency], started);
        recorder.record_service(Duration::from_secs(3600));
        recorder.record_service(Duration::MAX);
        recorder.record(Histo::BatchItems, u64::MAX);
        recorder.record(Histo::BatchBytes, u64::MAX);
        recorder.record_duration(Histo::ApplyLatency, Duration::from_micros(5));
        recorder.publish_now();
        let report = hub.report(started);
        let service = histogram(&report, Stage::Apply, Histo::Service);
        assert_eq!((service.count, service.clamped_count), (2, 2));
        assert!(within_precision(service.max, LATENCY_NS_MAX));
        let items = histogram(&report, Stage::Apply, Histo::BatchItems);
        assert_eq!((items.count, items.clamped_count), (1, 1));
        assert!(within_precision(items.max, BATCH_ITEMS_MAX));
        assert_eq!(histogram(&report, Stage::Apply, Histo::ApplyLatency).clamped_count, 0);
    }

    #[test]
    #[should_panic(expected = "stage log records commit_latency_ns")]
    fn recording_a_histogram_the_stage_was_not_built_with_is_a_bug() {
        let started = Instant::now();
        let hub = hub_at(started);
        let mut recorder = hub.recorder(Stage::Log, &[Histo::Fsync], started);
        recorder.record(Histo::CommitLatency, 1);
    }

    #[test]
    fn publish_waits_for_the_interval() {
        let started = Instant::now();
        let hub = hub_at(started);
        let mut recorder = hub.recorder(Stage::Core, &[], started);
        let count = |hub: &MetricsHub| histogram(&hub.report(started), Stage::Core, Histo::Service).count;
        recorder.record_service(Duration::from_micros(1));
        assert!(!recorder.maybe_publish(started));
        assert!(!recorder.maybe_publish(started + Duration::from_millis(999)));
        assert_eq!(count(&hub), 0, "nothing reaches the hub before the interval");
        assert!(recorder.maybe_publish(started + Duration::from_millis(1000)));
        assert_eq!(count(&hub), 1);
        recorder.record_service(Duration::from_micros(1));
        // The next is due one interval after the publish, not after the missed due time.
        assert!(!recorder.maybe_publish(started + Duration::from_millis(1999)));
        assert_eq!(count(&hub), 1);
        assert!(recorder.maybe_publish(started + Duration::from_millis(2000)));
        assert_eq!(count(&hub), 2, "the hub is cumulative and each delta is merged once");
        assert!(!recorder.maybe_publish(started + Duration::from_millis(2500)));
        assert!(recorder.maybe_publish(started + Duration::from_secs(100)));
        assert_eq!(count(&hub), 2, "an empty delta publishes nothing");
    }

    #[test]
    fn a_publish_does_not_wait_for_a_held_lock() {
        let started = Instant::now();
        let hub = hub_at(started);
        let mut recorder = hub.recorder(Stage::Core, &[], started);
        recorder.record_service(Duration::from_micros(1));
        let held = lock(&hub.stages[stage_index(Stage::Core)]);
        assert!(!recorder.maybe_publish(started + Duration::from_secs(1)));
        drop(held);
        assert!(recorder.maybe_publish(started + Duration::from_secs(1)), "the delta is kept for the next try");
        assert_eq!(histogram(&hub.report(started), Stage::Core, Histo::Service).count, 1);
    }

    #[test]
    fn counters_add_up_across_threads() {
        let hub = hub_at(Instant::now());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let hub = Arc::clone(&hub);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        hub.counters().client_busy.bump();
                    }
                    hub.counters().commands_applied.add(10);
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("counting thread");
        }
        let fields = hub.counters().fields();
        assert_eq!(fields.len(), 22);
        assert_eq!(fields[0], ("client_busy", 4000));
        assert!(fields.contains(&("commands_applied", 40)));
        assert!(fields.contains(&("reads_served", 0)));
        assert_eq!(hub.counters().values().fields(), fields);
    }

    fn busy_report() -> MetricsReport {
        let started = Instant::now();
        let hub = hub_at(started);
        let extras = [[Histo::CommitLatency].as_slice(), &[Histo::Fsync], &[Histo::ApplyLatency], &[]];
        for (stage, extras) in Stage::ALL.into_iter().zip(extras) {
            let mut recorder = hub.recorder(stage, extras, started);
            for value in 1..=100_000 {
                recorder.record_queue_wait(Duration::from_nanos(value * 7));
                recorder.record_service(Duration::from_nanos(value * 13));
                recorder.record_batch(value % 64, value * 3);
                for extra in extras {
                    recorder.record_duration(*extra, Duration::from_nanos(value * 101));
                }
            }
        }
        hub.counters().client_not_leader.add(3);
        hub.counters().entries_applied.add(u64::MAX / 2);
        hub.attach_net(vec![
            smr_net::StatsReader::new(|| smr_net::NetStats { messages_sent: 7, ..Default::default() }),
            smr_net::StatsReader::new(|| smr_net::NetStats {
                messages_sent: 5,
                client_requests: 9,
                ..Default::default()
            }),
        ]);
        hub.report(started + Duration::from_millis(123_456))
    }

    #[test]
    fn a_report_adds_up_the_transports_counters() {
        let report = busy_report();
        let value = |name: &str| report.net.iter().find(|c| c.name == name).map(|c| c.value);
        assert_eq!(value("messages_sent"), Some(12), "both transports' counters, summed");
        assert_eq!(value("client_requests"), Some(9));
        assert_eq!(value("handshake_refused_settings"), Some(0), "every counter is listed");
        let text = report.to_text();
        let line = text.lines().find(|l| l.starts_with("messages_sent")).expect("a line per net counter");
        assert!(line.ends_with(" 12"), "{line}");
    }

    #[test]
    fn report_json_round_trips() {
        let report = busy_report();
        let json = report.to_json();
        assert!(json.len() < REPORT_BYTES_MAX / 4, "a full report is {} bytes", json.len());
        let parsed = MetricsReport::from_json(&json).expect("own JSON parses");
        assert_eq!(parsed, report);
    }

    #[test]
    fn counters_missing_from_json_read_as_zero() {
        let json = br#"{"group":1,"uptime_ms":5,"stages":[],"counters":{"client_busy":2,"from_a_newer_node":9}}"#;
        let report = MetricsReport::from_json(json).expect("older or newer counter sets parse");
        assert_eq!(report.counters.client_busy, 2);
        assert_eq!(report.counters.reads_served, 0);
        assert!(report.net.is_empty(), "a report from before net counters has none");
    }

    #[test]
    fn garbage_json_is_an_error_not_a_panic() {
        for garbage in [
            &b""[..],
            b"not json",
            b"{",
            b"[]",
            b"null",
            b"{\"group\":-1,\"uptime_ms\":0,\"stages\":[],\"counters\":{}}",
            b"{\"group\":1,\"uptime_ms\":0,\"stages\":[{\"stage\":\"core\",\"histograms\":[{}]}],\"counters\":{}}",
            b"{\"group\":1,\"uptime_ms\":1e400,\"stages\":[],\"counters\":{}}",
        ] {
            assert!(MetricsReport::from_json(garbage).is_err(), "{:?}", String::from_utf8_lossy(garbage));
        }
        // Deep nesting hits serde_json's recursion limit, not the stack.
        let deep = [vec![b'['; 10_000], vec![b']'; 10_000]].concat();
        assert!(MetricsReport::from_json(&deep).is_err());
        // Every prefix of a valid report, and random bytes, are errors.
        let json = busy_report().to_json();
        for end in (0..json.len()).step_by(7) {
            assert!(MetricsReport::from_json(&json[..end]).is_err());
        }
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..1000 {
            let bytes: Vec<u8> = (0..64)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    b"{}[]\":,0123456789aeflnrstu "[(state % 26) as usize]
                })
                .collect();
            let _ = MetricsReport::from_json(&bytes);
        }
    }

    #[test]
    fn oversized_json_is_refused_before_parsing() {
        let mut json = busy_report().to_json();
        json.resize(REPORT_BYTES_MAX + 1, b' ');
        assert!(matches!(
            MetricsReport::from_json(&json),
            Err(ReportError::TooLarge { bytes, bytes_max: REPORT_BYTES_MAX }) if bytes == REPORT_BYTES_MAX + 1
        ));
    }

    #[test]
    fn text_names_every_stage_and_counter() {
        let text = busy_report().to_text();
        for stage in Stage::ALL {
            assert!(text.lines().any(|line| line.starts_with(stage.name())), "{}\n{text}", stage.name());
        }
        for (name, _) in Counters::new().fields() {
            assert!(text.contains(name), "{name}");
        }
        assert!(text.contains("commit_latency") && text.contains("µs"));
        // A stage with no recorder still appears.
        let empty = hub_at(Instant::now()).report(Instant::now()).to_text();
        for stage in Stage::ALL {
            assert!(empty.lines().any(|line| line.starts_with(stage.name())), "{empty}");
        }
    }

    #[test]
    fn text_columns_line_up() {
        let text = busy_report().to_text();
        let table: Vec<&str> = text.lines().skip(1).take_while(|line| !line.is_empty()).collect();
        let width = table[0].chars().count();
        assert!(table.iter().all(|line| line.chars().count() == width), "{text}");
    }

    #[test]
    fn microseconds_print_with_one_rounded_decimal() {
        assert_eq!(us_of_ns(0), "0.0");
        assert_eq!(us_of_ns(49), "0.0");
        assert_eq!(us_of_ns(50), "0.1");
        assert_eq!(us_of_ns(1_234), "1.2");
        assert_eq!(us_of_ns(1_250), "1.3");
        assert_eq!(us_of_ns(60_000_000_000), "60000000.0");
        assert_eq!(us_of_ns(u64::MAX), "18446744073709551.6");
    }

    #[test]
    fn config_limits_are_checked() {
        assert!(MetricsConfig::default().validate().is_ok());
        for interval in [0, PUBLISH_INTERVAL_MS_MAX + 1] {
            let error = MetricsConfig { publish_interval_ms: interval }.validate().unwrap_err();
            assert_eq!(error.field, "metrics.publish_interval_ms");
        }
    }
}
