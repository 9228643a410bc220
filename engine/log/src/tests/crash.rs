//! Crash states: run a workload, record every write and sync the log issues, and rebuild the
//! disk as a crash at every point of that trace could leave it: everything a completed sync
//! covered, plus any subset of the later writes, some torn at 512-byte sectors. Recovery must
//! never panic, never lose an entry at or below the durable watermark reported before the crash,
//! never lose a hard state reported durable, and only ever return entries that were written.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use smr_raft::{Entry, HardState, Index, Term};

use super::trace::{FileId, TraceOp};
use super::{entry, small_config};
use crate::record::{Position, RECORD_HEADER_BYTES, SegmentKey, encode_record};
use crate::recovery::{RecoveryPlan, SegmentImage, recover};
use crate::segment::{Fill, SEGMENT_HEADER_BYTES, SegmentFile, check_header, encode_header, list_segments};
use crate::state::{STATE_FILE_NAME, read_state_image};
use crate::{IoMode, Log, LogConfig};

const SECTOR_BYTES: usize = 512;

/// A small, fast, seeded generator (tests must replay from a seed).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The config of crash tests: 8 KiB segments (4 KiB of records) so that a few dozen entries
/// cross several segments, and recovery of one image takes microseconds.
pub(crate) fn crash_config(io_mode: IoMode) -> LogConfig {
    let mut config = small_config(io_mode);
    config.segment_bytes = 8 << 10;
    config.entry_bytes_max = 1024;
    config.submit_bytes_max = 4096;
    config.spare_segments_max = 1;
    config
}

/// Payload length as a function of index and term, so any recovered entry can be checked.
fn entry_for(index: Index, term: Term) -> Entry {
    entry(index, term, ((index * 31 + term * 7) % 300) as usize)
}

/// What a workload did: its trace, the state file as created, and what was submitted.
pub(crate) struct Recorded {
    pub(crate) trace: Vec<TraceOp>,
    pub(crate) state_initial: Vec<u8>,
    /// Hard state submitted with each token.
    pub(crate) hard_states: HashMap<u64, HardState>,
    /// Trace position of the mark placed right after the truncating submit, if any.
    pub(crate) truncation_at: Option<usize>,
    /// The log's entries before and after the truncation.
    pub(crate) timeline_before: BTreeMap<Index, Term>,
    pub(crate) timeline_after: BTreeMap<Index, Term>,
    /// The key (sequence and salt) of every segment the workload's log made.
    pub(crate) keys: BTreeMap<u64, SegmentKey>,
}

/// Runs a seeded workload of `steps` submits; with `truncate`, one submit in the middle replaces
/// a suffix.
pub(crate) fn record_workload(dir: &Path, config: &LogConfig, seed: u64, steps: u64, truncate: bool) -> Recorded {
    let mut rng = Rng::new(seed);
    let (mut log, _) = Log::open(dir, config.clone()).expect("open");
    let state_initial = std::fs::read(dir.join(STATE_FILE_NAME)).expect("state file");
    log.seams.trace = Some(Vec::new());
    let mut hard_states = HashMap::new();
    let mut timeline: BTreeMap<Index, Term> = BTreeMap::new();
    let mut timeline_before = BTreeMap::new();
    let mut truncation_at = None;
    let (mut last, mut term) = (0u64, 1u64);
    let truncate_step = truncate.then_some(steps / 2);
    for token in 1..=steps {
        let mut hard_state = None;
        let mut from = last + 1;
        if Some(token) == truncate_step && last > 2 {
            timeline_before = timeline.clone();
            from = last - rng.below(last.min(6));
            term += 1;
            hard_state = Some(HardState { term, vote: Some(2), commit: 0 });
        } else if rng.below(5) == 0 {
            term += 1;
            hard_state = Some(HardState { term, vote: Some(1), commit: 0 });
        }
        // A truncation needs at least one entry.
        let count = if from <= last { 1 + rng.below(3) } else { rng.below(4) };
        let entries: Vec<Entry> = (from..from + count).map(|i| entry_for(i, term)).collect();
        if from <= last {
            timeline.retain(|&i, _| i < from);
        }
        log.submit(token, &entries, hard_state).expect("submit");
        if from <= last {
            // After the submit: from here on the new timeline is the expected one. Crash points
            // before the mark see the old one, which agrees with the new one up to the lowered
            // watermark the truncation reported inside the submit.
            let trace = log.seams.trace.as_mut().expect("tracing");
            trace.push(TraceOp::Mark);
            truncation_at = Some(trace.len() - 1);
        }
        if let Some(hard_state) = hard_state {
            hard_states.insert(token, hard_state);
        }
        for e in &entries {
            timeline.insert(e.index, e.term);
        }
        if let Some(e) = entries.last() {
            last = e.index;
        }
        match rng.below(3) {
            0 => {
                log.poll().expect("poll");
            }
            1 => {
                log.wait().expect("wait");
            }
            _ => {}
        }
    }
    log.sync_all().expect("sync");
    let trace = log.seams.trace.take().expect("tracing");
    drop(log);
    let keys = list_segments(dir)
        .expect("list")
        .into_iter()
        .map(|(sequence, path)| (sequence, SegmentFile::open(&path, sequence, config).expect("segment").key))
        .collect();
    Recorded { trace, state_initial, hard_states, truncation_at, timeline_before, timeline_after: timeline, keys }
}

/// For each write of the trace: whether a sync completed at or before `crash` covers it.
fn durable_writes(trace: &[TraceOp], crash: usize) -> Vec<bool> {
    let mut durable = vec![false; trace.len()];
    let mut issued: HashMap<u64, (usize, Vec<FileId>)> = HashMap::new();
    for (at, op) in trace[..crash].iter().enumerate() {
        match op {
            TraceOp::SyncIssued { job, files } => {
                issued.insert(*job, (at, files.clone()));
            }
            TraceOp::SyncDone { job } => {
                let (issued_at, files) = &issued[job];
                for (w, earlier) in trace[..*issued_at].iter().enumerate() {
                    if let TraceOp::Write { file, .. } = earlier
                        && files.contains(file)
                    {
                        durable[w] = true;
                    }
                }
            }
            _ => {}
        }
    }
    durable
}

/// How one unsynced write reaches the image.
#[derive(Clone, Copy, Debug)]
enum Fate {
    Lost,
    Whole,
    /// Each 512-byte sector applied or not, by the bits of this mask (sector i <-> bit i % 64).
    Torn(u64),
}

/// A disk image: the state file and every segment the trace wrote.
#[derive(Clone)]
struct Image {
    state: Vec<u8>,
    segments: BTreeMap<u64, Vec<u8>>,
}

/// The disk before the trace's writes: every segment it wrote, zero-filled, or (`Recycled`)
/// holding an earlier use's records, as a compacted segment reused under a new sequence does.
fn base_image(recorded: &Recorded, config: &LogConfig, fill: Fill) -> Image {
    let mut segments = BTreeMap::new();
    for op in &recorded.trace {
        if let TraceOp::Write { file: FileId::Segment(sequence), .. } = op {
            segments.entry(*sequence).or_insert_with(|| {
                let key = recorded.keys[sequence];
                let mut bytes = encode_header(config, key, fill);
                bytes.resize(config.segment_bytes as usize, 0);
                if fill == Fill::Recycled {
                    earlier_use(&mut bytes, key);
                }
                bytes
            });
        }
    }
    Image { state: recorded.state_initial.clone(), segments }
}

/// Fills the record area of the segment `current` names with what an earlier use of its file
/// wrote: the same entries this workload writes, from index 1, so that their indexes, terms,
/// payloads and often their offsets are those the recovery walk expects, under another sequence
/// and salt. Every third one's payload is a client's forgery instead: the image of a record of
/// `current`'s sequence, of an index the workload writes, claiming itself durable, under a
/// guessed salt whose tag is right (one guess in 65,536 is), so that only the salted CRC can
/// tell it from a record of this use. The last record is cut short by the end of the segment.
fn earlier_use(bytes: &mut [u8], current: SegmentKey) {
    let earlier = SegmentKey { sequence: current.sequence + 1000, salt: current.salt.rotate_left(17) ^ 0x5a5a };
    let mut at = SEGMENT_HEADER_BYTES as usize;
    let mut record = Vec::new();
    for index in 1.. {
        let term = 1 + index / 7;
        let mut entry = entry_for(index, term);
        if index % 3 == 0 {
            let forged_at = (at + RECORD_HEADER_BYTES + 16) as u64;
            const TAG_BITS: u64 = 0xFFFF << 48;
            let salt = (current.salt & TAG_BITS) | (earlier.salt & !TAG_BITS);
            let guess = SegmentKey { sequence: current.sequence, salt };
            assert_eq!(guess.tag(), current.tag());
            let mut forgery = vec![0xEE; 16];
            let claim = Position { sequence: current.sequence, offset: forged_at };
            encode_record(&mut forgery, &entry_for(index / 3, term), guess, forged_at, Some(claim));
            entry.data = forgery.into();
        }
        record.clear();
        let own = Position { sequence: earlier.sequence, offset: at as u64 };
        encode_record(&mut record, &entry, earlier, at as u64, Some(own));
        let end = (at + record.len()).min(bytes.len());
        bytes[at..end].copy_from_slice(&record[..end - at]);
        at = end;
        if at == bytes.len() {
            break;
        }
    }
}

fn apply(image: &mut Image, file: FileId, offset: u64, bytes: &[u8], fate: Fate) {
    let target = match file {
        FileId::State => &mut image.state,
        FileId::Segment(sequence) => image.segments.get_mut(&sequence).expect("segment in base image"),
    };
    let offset = offset as usize;
    match fate {
        Fate::Lost => {}
        Fate::Whole => target[offset..offset + bytes.len()].copy_from_slice(bytes),
        Fate::Torn(mask) => {
            // Sectors are aligned to the file, not to the write.
            let mut at = offset;
            while at < offset + bytes.len() {
                let sector = at / SECTOR_BYTES;
                let end = ((sector + 1) * SECTOR_BYTES).min(offset + bytes.len());
                if mask & (1 << (sector % 64)) != 0 {
                    target[at..end].copy_from_slice(&bytes[at - offset..end - offset]);
                }
                at = end;
            }
        }
    }
}

/// What must hold at a crash point.
struct Expect {
    acked_index: Index,
    acked_token: u64,
    timeline: BTreeMap<Index, Term>,
}

fn expectation(recorded: &Recorded, crash: usize) -> Expect {
    let (mut acked_index, mut acked_token) = (0, 0);
    for op in &recorded.trace[..crash] {
        if let TraceOp::Durable { index, token } = op {
            (acked_index, acked_token) = (*index, *token);
        }
    }
    let after = recorded.truncation_at.is_some_and(|at| crash > at);
    let timeline = if after || recorded.truncation_at.is_none() {
        recorded.timeline_after.clone()
    } else {
        recorded.timeline_before.clone()
    };
    Expect { acked_index, acked_token, timeline }
}

/// Recovers an image in memory and checks it against the expectation. Returns the plan.
fn check_image(image: &Image, config: &LogConfig, recorded: &Recorded, expect: &Expect, what: &str) -> RecoveryPlan {
    let state_path = Path::new("state");
    let (_, state) = read_state_image(state_path, &image.state, config)
        .unwrap_or_else(|e| panic!("{what}: the state file must always have a valid slot: {e}"));
    // The durable hard state: at least the one of the last acknowledged submit carrying one.
    if let Some(hard_state) =
        recorded.hard_states.iter().filter(|(token, _)| **token <= expect.acked_token).max_by_key(|(token, _)| **token)
    {
        assert!(
            state.hard_state.term >= hard_state.1.term,
            "{what}: durable hard state {:?} lost, recovered {:?}",
            hard_state.1,
            state.hard_state
        );
    }
    let paths: Vec<String> = image.segments.keys().map(|s| format!("{s:020}.seg")).collect();
    let images: Vec<SegmentImage<'_>> = image
        .segments
        .iter()
        .zip(&paths)
        .map(|((sequence, bytes), path)| {
            let (key, fill) =
                check_header(Path::new(path), bytes, config, *sequence).expect("headers are durable before use");
            SegmentImage { sequence: *sequence, salt: key.salt, path: Path::new(path), bytes, fill }
        })
        .collect();
    let plan = match recover(&state, &images, config.entry_bytes_max) {
        Ok(plan) => plan,
        Err(error) => {
            panic!("{what}: recovery refused a crash state (no corruption was injected): {error}")
        }
    };
    assert!(
        plan.last_index >= expect.acked_index,
        "{what}: durable entries lost: acknowledged through {}, recovered through {}",
        expect.acked_index,
        plan.last_index
    );
    // Every recovered entry is one that was written, intact; the acknowledged ones are the
    // timeline's.
    let mut next = state.snapshot_index + 1;
    for chain in &plan.chains {
        let bytes = &image.segments[&chain.sequence];
        for &(index, term, offset) in &chain.records {
            assert_eq!(index, next, "{what}: recovered indexes are consecutive");
            next += 1;
            let key = recorded.keys[&chain.sequence];
            let record = crate::record::check_record(bytes, key, offset, config.entry_bytes_max).expect("valid");
            let want = entry_for(index, term);
            assert_eq!(&bytes[record.payload_range()], &want.data[..], "{what}: payload of {index}");
            if index <= expect.acked_index {
                assert_eq!(
                    Some(&term),
                    expect.timeline.get(&index),
                    "{what}: acknowledged entry {index} has the wrong term"
                );
            }
        }
    }
    plan
}

/// Walks every crash point of a trace over a base disk of `fill` segments; returns the number
/// of states checked.
fn explore(
    recorded: &Recorded,
    config: &LogConfig,
    fill: Fill,
    rng: &mut Rng,
    samples_max: usize,
    label: &str,
) -> usize {
    let base = base_image(recorded, config, fill);
    let mut states = 0;
    for crash in 0..=recorded.trace.len() {
        let durable = durable_writes(&recorded.trace, crash);
        let expect = expectation(recorded, crash);
        let writes: Vec<(usize, FileId, u64, &[u8])> = recorded.trace[..crash]
            .iter()
            .enumerate()
            .filter_map(|(at, op)| match op {
                TraceOp::Write { file, offset, bytes } => Some((at, *file, *offset, &bytes[..])),
                _ => None,
            })
            .collect();
        let unsynced: Vec<usize> = writes.iter().enumerate().filter(|(_, w)| !durable[w.0]).map(|(i, _)| i).collect();
        let mut fates_list: Vec<Vec<Fate>> = Vec::new();
        if unsynced.len() <= 6 {
            // Exhaustive at write granularity: every subset of the unsynced writes.
            for mask in 0u64..(1 << unsynced.len()) {
                fates_list.push(
                    (0..unsynced.len()).map(|b| if mask >> b & 1 == 1 { Fate::Whole } else { Fate::Lost }).collect(),
                );
            }
        }
        // Sampled: lost, whole or torn per write.
        for _ in 0..samples_max {
            fates_list.push(
                (0..unsynced.len())
                    .map(|_| match rng.below(3) {
                        0 => Fate::Lost,
                        1 => Fate::Whole,
                        _ => Fate::Torn(rng.next()),
                    })
                    .collect(),
            );
        }
        for fates in &fates_list {
            let mut image = base.clone();
            let mut u = 0;
            for (i, &(_, file, offset, bytes)) in writes.iter().enumerate() {
                let fate = if unsynced.get(u) == Some(&i) {
                    u += 1;
                    fates[u - 1]
                } else {
                    Fate::Whole
                };
                apply(&mut image, file, offset, bytes, fate);
            }
            let what = format!("{label}, crash after trace op {crash}, fates {fates:?}");
            check_image(&image, config, recorded, &expect, &what);
            states += 1;
        }
    }
    states
}

#[test]
fn no_acknowledged_entry_is_lost_in_any_crash_state() {
    let mut total = 0;
    for mode in super::io_modes() {
        let config = crash_config(mode);
        for seed in 0..48u64 {
            let dir = tempfile::tempdir().expect("tempdir");
            let recorded = record_workload(dir.path(), &config, seed, 40, false);
            for fill in [Fill::Zeros, Fill::Recycled] {
                let mut rng = Rng::new(seed ^ 0xC0FFEE);
                total += explore(&recorded, &config, fill, &mut rng, 24, &format!("{mode:?} {fill:?} seed {seed}"));
            }
        }
    }
    eprintln!("crash states checked: {total}");
    assert!(total > 100_000, "explored {total} states");
}

#[test]
fn crash_during_a_suffix_truncation_never_resurrects_or_loses_acknowledged_entries() {
    let mut total = 0;
    for mode in super::io_modes() {
        let config = crash_config(mode);
        for seed in 0..48u64 {
            let dir = tempfile::tempdir().expect("tempdir");
            let recorded = record_workload(dir.path(), &config, seed, 30, true);
            for fill in [Fill::Zeros, Fill::Recycled] {
                let mut rng = Rng::new(seed ^ 0xBEEF);
                let label = format!("{mode:?} {fill:?} truncation seed {seed}");
                total += explore(&recorded, &config, fill, &mut rng, 16, &label);
            }
        }
    }
    eprintln!("crash states checked (truncation): {total}");
    assert!(total > 40_000, "explored {total} states");
}

/// The smallest workload, exhaustively at sector granularity: every subset of every unsynced
/// write's sectors.
#[test]
fn smallest_workload_is_exhaustive_down_to_sectors() {
    let config = crash_config(IoMode::Fallback);
    let dir = tempfile::tempdir().expect("tempdir");
    let recorded = record_workload(dir.path(), &config, 7, 6, false);
    let mut states = 0;
    for fill in [Fill::Zeros, Fill::Recycled] {
        states += every_sector_subset(&recorded, &config, fill);
    }
    eprintln!("exhaustive sector-level crash states: {states}");
    assert!(states > 200);
}

fn every_sector_subset(recorded: &Recorded, config: &LogConfig, fill: Fill) -> usize {
    let base = base_image(recorded, config, fill);
    let mut states = 0;
    for crash in 0..=recorded.trace.len() {
        let durable = durable_writes(&recorded.trace, crash);
        let expect = expectation(recorded, crash);
        // Every sector of every unsynced write is an independent bit.
        let mut sectors: Vec<(usize, usize)> = Vec::new(); // (write position, sector index in file)
        for (at, op) in recorded.trace[..crash].iter().enumerate() {
            if let TraceOp::Write { offset, bytes, .. } = op
                && !durable[at]
            {
                let first = *offset as usize / SECTOR_BYTES;
                let last = (*offset as usize + bytes.len() - 1) / SECTOR_BYTES;
                sectors.extend((first..=last).map(|s| (at, s)));
            }
        }
        assert!(sectors.len() <= 16, "the smallest workload keeps the unsynced window small");
        for mask in 0u64..(1 << sectors.len()) {
            let mut image = base.clone();
            for (at, op) in recorded.trace[..crash].iter().enumerate() {
                let TraceOp::Write { file, offset, bytes } = op else {
                    continue;
                };
                let fate = if durable[at] {
                    Fate::Whole
                } else {
                    let mut sector_mask = 0u64;
                    for (bit, &(w, s)) in sectors.iter().enumerate() {
                        if w == at && mask >> bit & 1 == 1 {
                            sector_mask |= 1 << (s % 64);
                        }
                    }
                    Fate::Torn(sector_mask)
                };
                apply(&mut image, *file, *offset, bytes, fate);
            }
            check_image(&image, config, recorded, &expect, &format!("{fill:?}: crash {crash} sector mask {mask:b}"));
            states += 1;
        }
    }
    states
}

/// A sample of crash images written to real files: `Log::open` must recover them, make the cut
/// durable, accept new appends where the torn bytes were, and never bring torn records back.
#[test]
fn torn_tail_is_cut_durably_and_new_appends_never_resurrect_it() {
    let config = crash_config(IoMode::Auto);
    let mut opened = 0;
    let mut torn = 0;
    for seed in 0..12u64 {
        let source = tempfile::tempdir().expect("tempdir");
        let recorded = record_workload(source.path(), &config, seed, 30, seed % 2 == 1);
        let fill = if seed % 4 < 2 { Fill::Zeros } else { Fill::Recycled };
        let base = base_image(&recorded, &config, fill);
        let mut rng = Rng::new(seed);
        for crash in (0..=recorded.trace.len()).step_by(3) {
            let durable = durable_writes(&recorded.trace, crash);
            let expect = expectation(&recorded, crash);
            let mut image = base.clone();
            for (at, op) in recorded.trace[..crash].iter().enumerate() {
                let TraceOp::Write { file, offset, bytes } = op else {
                    continue;
                };
                let fate = if durable[at] {
                    Fate::Whole
                } else {
                    match rng.below(3) {
                        0 => Fate::Lost,
                        1 => Fate::Whole,
                        _ => Fate::Torn(rng.next()),
                    }
                };
                apply(&mut image, *file, *offset, bytes, fate);
            }
            let plan = check_image(&image, &config, &recorded, &expect, &format!("{fill:?} disk sample"));
            let dir = tempfile::tempdir().expect("tempdir");
            write_image(dir.path(), &image);
            let (mut log, recovered) = Log::open(dir.path(), config.clone()).expect("open a crash image");
            assert_eq!(recovered.last_index, plan.last_index);
            torn += usize::from(recovered.torn_tail.is_some());
            // Append past the recovered end, then reopen: exactly the recovered prefix plus the
            // new entries, nothing from the cut tail.
            let next = recovered.last_index + 1;
            let term = recovered.last_term.max(recovered.hard_state.term) + 1;
            let new: Vec<Entry> = (next..next + 3).map(|i| entry_for(i, term)).collect();
            log.submit(1, &new, None).expect("append after recovery");
            log.sync_all().expect("sync");
            drop(log);
            let (log, reopened) = Log::open(dir.path(), config.clone()).expect("reopen");
            assert_eq!(reopened.last_index, next + 2);
            assert!(reopened.torn_tail.is_none(), "the cut was made durable: {:?}", reopened.torn_tail);
            let got = log.entries(next, next + 2, u64::MAX).expect("entries");
            assert!(got.iter().zip(&new).all(|(g, w)| g.term == w.term && g.data == &w.data[..]));
            opened += 1;
        }
    }
    eprintln!("crash images opened from disk: {opened}, with a torn tail cut: {torn}");
    assert!(torn > 0, "some samples must exercise the cut");
}

fn write_image(dir: &Path, image: &Image) {
    std::fs::write(dir.join(STATE_FILE_NAME), &image.state).expect("write state");
    for (sequence, bytes) in &image.segments {
        std::fs::write(dir.join(crate::segment::segment_file_name(*sequence)), bytes).expect("write segment");
    }
}
