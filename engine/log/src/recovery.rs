//! Recovery: from the bytes of the segments to the log they hold, checking every record.
//!
//! This module is pure (byte slices in, a plan out) so that the crash-state tests can run it over
//! hundreds of thousands of in-memory disk images; `log.rs` applies the plan to the files.
//!
//! # What the disk can look like
//!
//! Segments are written in sequence order and, inside one, at increasing offsets: that is the
//! global write order, and a [`Position`] names a point in it. An `fdatasync` makes everything
//! written before it durable. After a crash, everything up to the last completed sync is there
//! (unless the disk corrupted it), and any subset of the later writes, some torn at sector
//! granularity. A conflicting-suffix truncation starts a new segment whose first record has an
//! index at or below the previous end (it overrides the older records from there on), so bytes
//! are never rewritten in place and a shorter new tail can never be followed by stale records.
//!
//! # The walk
//!
//! Segments are walked in order, records inside each in order, composing the log: a segment's
//! records continue the log (first index = end + 1) or override its suffix (first index <= end).
//! The walk stops at the first **anomaly**: a record that is torn, corrupt, misplaced (its index
//! or term does not continue the chain), a gap between segments, an empty segment followed by
//! written ones, or non-zero bytes after the last record of a segment.
//!
//! # Torn tail or corruption
//!
//! Every record claims the durable frontier at the time it was written (see `record.rs`). If any
//! valid record after the anomaly claims a frontier beyond it, the bytes at the anomaly had been
//! fsynced, so this is corruption: the open fails with the segment, offset and expected index,
//! and nothing is skipped or truncated. Otherwise the anomaly and everything after it was never
//! durable: a torn tail, which is cut off (zeroed, later segments deleted) and logged.
//!
//! The one case this cannot tell apart: a record corrupted after its sync completed, with no
//! record written after that sync (the crash came first). It is cut off as a torn tail and
//! logged; no later record exists that could have depended on it.
//!
//! # Reused segments
//!
//! A reused segment ([`Fill::Recycled`]) holds its earlier use's bytes where nothing has been
//! written since, not zeroes, and nothing written there before this use's salt was drawn reads
//! as a record of this use (`record.rs`). So in such a segment a record that fails its checks is
//! where its chain stops cleanly: the bytes may be the earlier use's or a torn write of this
//! one, and either way no record of this use lies there. What tells a torn tail (or corruption) from a clean end is then whether any
//! valid record of this use lies after the stop: every 16-byte aligned position after it is
//! checked, and those found are orphans as in a zero-filled segment, with their claims. A
//! segment whose chain stopped early in the middle of the log is still caught: the next
//! segment's first record does not continue it (a gap). What this gives up: a torn last record
//! with no valid record after it ends the chain silently there, where a zero-filled segment
//! reports a torn tail; it is cut all the same (writing resumes at it), and the torn bytes past
//! the new records can never pass their CRC.

use std::path::{Path, PathBuf};

use smr_raft::{Index, Term};

use crate::error::LogError;
use crate::record::{Position, RECORD_ALIGN_BYTES, RecordFault, SegmentKey, ValidRecord, check_record};
use crate::segment::{Fill, SEGMENT_HEADER_BYTES};
use crate::state::DurableState;

/// One segment's bytes, header already checked.
#[derive(Debug)]
pub(crate) struct SegmentImage<'a> {
    pub(crate) sequence: u64,
    /// The salt of the segment's current use (its header's).
    pub(crate) salt: u64,
    pub(crate) path: &'a Path,
    pub(crate) bytes: &'a [u8],
    pub(crate) fill: Fill,
}

/// What one segment holds.
#[derive(Debug)]
struct SegmentScan {
    /// Records from the first one on, each continuing the previous (index + 1, term not lower).
    chain: Vec<ValidRecord>,
    /// Where the chain stopped.
    stop: u64,
    /// Whether the chain stopped cleanly (zero bytes, or no room for another header).
    stop_clean: bool,
    /// Valid records found after `stop` (none in a healthy segment).
    orphans: Vec<ValidRecord>,
    /// Offset just past the bytes after the chain that this use of the segment may have
    /// written: the last non-zero 16-byte block of a zero-filled segment, the last orphan of a
    /// reused one.
    nonzero_end: u64,
}

fn scan_segment(segment: &SegmentImage<'_>, entry_bytes_max: u64) -> SegmentScan {
    let (bytes, key) = (segment.bytes, SegmentKey { sequence: segment.sequence, salt: segment.salt });
    let mut chain: Vec<ValidRecord> = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    let stop_clean = loop {
        match check_record(bytes, key, offset, entry_bytes_max) {
            Ok(record) => {
                let continues = chain.last().is_none_or(|last| {
                    record.header.index == last.header.index + 1 && record.header.term >= last.header.term
                });
                if !continues {
                    break false;
                }
                offset = record.end;
                chain.push(record);
            }
            Err(RecordFault::Zero | RecordFault::NoRoom) => break true,
            // The earlier use's bytes, or a torn write of this one: the orphans tell.
            Err(RecordFault::Implausible | RecordFault::Crc) => break segment.fill == Fill::Recycled,
        }
    };
    let stop = offset;
    // Everything after the chain: valid records (they carry claims) and the extent of the bytes
    // this use may have written there (they must be zeroed before the space is written again).
    let mut orphans = Vec::new();
    let mut nonzero_end = stop;
    let mut at = stop;
    while let Some(block) = next_nonzero_block(bytes, at) {
        if segment.fill == Fill::Zeros {
            nonzero_end = block + RECORD_ALIGN_BYTES as u64;
        }
        if let Ok(record) = check_record(bytes, key, block, entry_bytes_max) {
            nonzero_end = record.end;
            orphans.push(record);
            at = record.end;
        } else {
            at = block + RECORD_ALIGN_BYTES as u64;
        }
    }
    SegmentScan { chain, stop, stop_clean, orphans, nonzero_end }
}

/// The offset of the first 16-byte block at or after `from` (16-aligned) that is not all zero.
/// The zero tail of a segment is most of it, so this is the loop recovery spends its time in:
/// 16 bytes per comparison.
fn next_nonzero_block(bytes: &[u8], from: u64) -> Option<u64> {
    let from = usize::try_from(from).ok()?;
    let rest = bytes.get(from..)?;
    rest.chunks_exact(RECORD_ALIGN_BYTES)
        .position(|block| u128::from_ne_bytes(block.try_into().expect("16 bytes")) != 0)
        .map(|i| (from + i * RECORD_ALIGN_BYTES) as u64)
}

/// The records of one segment that belong to the recovered log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainPlan {
    pub(crate) sequence: u64,
    /// (index, term, offset) of each record, consecutive indexes.
    pub(crate) records: Vec<(Index, Term, u64)>,
}

/// The result of a successful recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecoveryPlan {
    /// Every segment up to and including the tail segment, in order (possibly with no records).
    pub(crate) chains: Vec<ChainPlan>,
    /// The last index in the log (the snapshot index when the log is empty).
    pub(crate) last_index: Index,
    pub(crate) last_term: Term,
    /// Where the next record goes. `None` when no segment exists yet.
    pub(crate) tail: Option<Position>,
    /// Bytes to zero in the tail segment before writing: (sequence, from, to).
    pub(crate) zero_range: Option<(u64, u64, u64)>,
    /// Segments after the tail that hold bytes of a torn tail: deleted before writing.
    pub(crate) delete: Vec<u64>,
    /// All-zero segments after the tail: kept as preallocated spares.
    pub(crate) spares: Vec<u64>,
    /// When a torn tail was cut: where, and how many valid records after it were dropped.
    pub(crate) torn: Option<TornTail>,
}

/// A torn tail that recovery cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TornTail {
    pub(crate) path: PathBuf,
    pub(crate) offset: u64,
    pub(crate) expected_index: Index,
    pub(crate) records_dropped: usize,
}

/// Recovers the log from its segments (sorted by sequence, all at or above the state's
/// `segment_sequence_min`).
///
/// # Errors
/// [`LogError::Corruption`] naming segment, offset and index when a bad record was durable.
pub(crate) fn recover(
    state: &DurableState,
    segments: &[SegmentImage<'_>],
    entry_bytes_max: u64,
) -> Result<RecoveryPlan, LogError> {
    let scans: Vec<SegmentScan> = segments.iter().map(|s| scan_segment(s, entry_bytes_max)).collect();

    let mut chains: Vec<ChainPlan> = Vec::new();
    let (mut last_index, mut last_term) = (state.snapshot_index, state.snapshot_term);
    // Where the next record would go, in the global write order.
    let mut tail: Option<Position> = None;
    // The first anomaly: its position, the index expected there, and the segment it is in.
    let mut anomaly: Option<(Position, Index, usize)> = None;
    // Set once a segment with no records was seen: any later record means lost writes.
    let mut empty_seen: Option<usize> = None;

    for (i, (segment, scan)) in segments.iter().zip(&scans).enumerate() {
        let start = Position { sequence: segment.sequence, offset: SEGMENT_HEADER_BYTES };
        if let Some(first) = scan.chain.first() {
            if let Some(empty) = empty_seen {
                let position = Position { sequence: segments[empty].sequence, offset: SEGMENT_HEADER_BYTES };
                anomaly = Some((position, last_index + 1, empty));
                break;
            }
            let base = first.header.index;
            if base > last_index + 1 {
                // A gap: the records that should precede this segment are missing.
                let position = tail.unwrap_or(start);
                anomaly = Some((position, last_index + 1, 0));
                break;
            }
            // The term at base - 1 in the log composed so far (or the snapshot's).
            let previous_term = term_at(&chains, base - 1).unwrap_or(if base - 1 == state.snapshot_index {
                state.snapshot_term
            } else {
                0
            });
            if first.header.term < previous_term {
                anomaly = Some((start, base, i));
                break;
            }
            // Override: drop everything at or after `base` from the earlier segments.
            for chain in chains.iter_mut().rev() {
                while chain.records.last().is_some_and(|&(index, _, _)| index >= base) {
                    chain.records.pop();
                }
            }
            let records: Vec<(Index, Term, u64)> = scan
                .chain
                .iter()
                .filter(|r| r.header.index > state.snapshot_index)
                .map(|r| (r.header.index, r.header.term, r.offset))
                .collect();
            let last = scan.chain.last().expect("chain is not empty");
            if last.header.index > state.snapshot_index {
                (last_index, last_term) = (last.header.index, last.header.term);
            }
            chains.push(ChainPlan { sequence: segment.sequence, records });
            tail = Some(Position { sequence: segment.sequence, offset: scan.stop });
        } else if empty_seen.is_none() {
            empty_seen = Some(i);
        }
        let trailing_bytes = scan.nonzero_end > scan.stop;
        if !scan.stop_clean || trailing_bytes {
            anomaly = Some((Position { sequence: segment.sequence, offset: scan.stop }, last_index + 1, i));
            break;
        }
    }

    let Some((position, expected_index, at)) = anomaly else {
        // Clean: trailing empty segments are spares. With no records at all, the first segment
        // (if any) is where writing starts.
        let first_empty = empty_seen.unwrap_or(segments.len());
        let mut spares: Vec<u64> = segments[first_empty..].iter().map(|s| s.sequence).collect();
        if tail.is_none() && !spares.is_empty() {
            let sequence = spares.remove(0);
            chains.push(ChainPlan { sequence, records: Vec::new() });
            tail = Some(Position { sequence, offset: SEGMENT_HEADER_BYTES });
        }
        return Ok(RecoveryPlan {
            chains,
            last_index,
            last_term,
            tail,
            zero_range: None,
            delete: Vec::new(),
            spares,
            torn: None,
        });
    };

    // Every valid record after the anomaly, with the position it lies at.
    let mut after: Vec<(Position, &ValidRecord)> = Vec::new();
    for (segment, scan) in segments.iter().zip(&scans).skip(at) {
        for record in scan.chain.iter().chain(&scan.orphans) {
            let own = Position { sequence: segment.sequence, offset: record.offset };
            if own >= position {
                after.push((own, record));
            }
        }
    }
    if let Some((own, record)) = after
        .iter()
        .filter(|(own, record)| record.header.claim(*own).is_some_and(|claim| claim > position))
        .min_by_key(|(own, _)| *own)
    {
        let path = segments.iter().find(|s| s.sequence == position.sequence).map(|s| s.path.to_path_buf());
        let witness = segments.iter().find(|s| s.sequence == own.sequence).map(|s| s.path.display().to_string());
        return Err(LogError::Corruption {
            path: path.unwrap_or_default(),
            offset: position.offset,
            index: expected_index,
            detail: format!(
                "a bad or missing record where index {expected_index} belongs, followed by valid records: \
                 index {} in {} at offset {} was written after this position had been fsynced; refusing to skip it",
                record.header.index,
                witness.unwrap_or_default(),
                own.offset
            ),
        });
    }

    // A torn tail: cut at the anomaly.
    let tail_index = segments.iter().position(|s| s.sequence == position.sequence).expect("anomaly is in a segment");
    chains.retain(|c| c.sequence <= position.sequence);
    if chains.last().is_none_or(|c| c.sequence != position.sequence) {
        chains.push(ChainPlan { sequence: position.sequence, records: Vec::new() });
    }
    let zero_to = scans[tail_index].nonzero_end.max(scans[tail_index].stop);
    let zero_range = (zero_to > position.offset).then_some((position.sequence, position.offset, zero_to));
    let mut delete = Vec::new();
    let mut spares = Vec::new();
    for (segment, scan) in segments.iter().zip(&scans).skip(tail_index + 1) {
        if scan.chain.is_empty() && scan.nonzero_end <= SEGMENT_HEADER_BYTES {
            spares.push(segment.sequence);
        } else {
            delete.push(segment.sequence);
        }
    }
    // Once a segment is deleted, a later all-zero spare would leave a hole in the sequence of
    // written segments only if something were written after it; keeping spares is safe because
    // they are empty, and the writer uses them in order.
    let torn = TornTail {
        path: segments[tail_index].path.to_path_buf(),
        offset: position.offset,
        expected_index,
        records_dropped: after.len(),
    };
    Ok(RecoveryPlan {
        chains,
        last_index,
        last_term,
        tail: Some(position),
        zero_range,
        delete,
        spares,
        torn: Some(torn),
    })
}

fn term_at(chains: &[ChainPlan], index: Index) -> Option<Term> {
    for chain in chains.iter().rev() {
        let Some(&(first, _, _)) = chain.records.first() else {
            continue;
        };
        if index >= first {
            let offset = usize::try_from(index - first).ok()?;
            return chain.records.get(offset).map(|&(_, term, _)| term);
        }
    }
    None
}
