//! Zero-copy reads from the mapped segments, from the writer's thread or any other.
//!
//! The writer publishes, per segment, the first index it holds, how many records, and where each
//! one starts (a table of 16-byte-unit offsets), plus the log-wide durable watermark. A
//! [`LogReader`] on another thread (the apply stage, a catch-up sender) reads only indexes at or
//! below the durable watermark: those records are complete in the page cache and are never
//! rewritten in place, so a borrowed slice of the mapping stays valid and unchanged for as long
//! as the reader holds its segment (a deleted segment stays mapped until the last `Arc` goes).
//!
//! The hot path takes no lock: the segment list is behind a mutex, but a reader copies it only
//! when its generation counter moved (a segment was added or removed, rare).

use std::alloc::{Layout, alloc_zeroed, handle_alloc_error};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use memmap2::Mmap;
use smr_raft::{Entry, EntryKind, Index, Term};

use crate::error::LogError;
use crate::record::{RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES, RecordHeader, SegmentKey, record_bytes};
use crate::segment::SEGMENT_HEADER_BYTES;

/// Record start offsets of one segment, in 16-byte units, written by the writer and read by any
/// thread. Sized for the most records a segment can hold (every record at least 32 bytes), but
/// allocated zeroed so that the pages of slots never used are never touched: a 64 MiB segment
/// reserves 8 MiB of address space and uses 4 bytes of memory per record written.
struct OffsetTable {
    slots: Box<[AtomicU32]>,
}

impl OffsetTable {
    fn new(capacity: usize) -> OffsetTable {
        let capacity = capacity.max(1);
        let layout = Layout::array::<AtomicU32>(capacity).expect("segment_bytes is validated to at most 64 GiB");
        // SAFETY: the layout has a non-zero size (capacity >= 1).
        let pointer = unsafe { alloc_zeroed(layout) }.cast::<AtomicU32>();
        if pointer.is_null() {
            handle_alloc_error(layout);
        }
        // SAFETY: `pointer` was allocated by the global allocator with the layout of
        // `[AtomicU32; capacity]`, and all-zero bytes are a valid `AtomicU32`, so this is an
        // initialised boxed slice that `Box` frees with the same layout.
        let slots = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(pointer, capacity)) };
        OffsetTable { slots }
    }
}

/// One mapped segment as readers see it.
pub(crate) struct SegmentView {
    pub(crate) sequence: u64,
    /// The tag of the records of the segment's current use (`SegmentKey::tag`).
    tag: u16,
    pub(crate) map: Arc<Mmap>,
    /// First index held here (meaningful while `count > 0`).
    base: AtomicU64,
    /// Records held here that belong to the log. Lowered when a truncation supersedes them.
    count: AtomicU64,
    offsets: OffsetTable,
}

impl std::fmt::Debug for SegmentView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentView")
            .field("sequence", &self.sequence)
            .field("base", &self.base.load(Ordering::Relaxed))
            .field("count", &self.count.load(Ordering::Relaxed))
            .finish()
    }
}

impl SegmentView {
    pub(crate) fn new(key: SegmentKey, map: Arc<Mmap>) -> SegmentView {
        let capacity = (map.len() - SEGMENT_HEADER_BYTES as usize) / RECORD_HEADER_BYTES;
        SegmentView {
            sequence: key.sequence,
            tag: key.tag(),
            map,
            base: AtomicU64::new(0),
            count: AtomicU64::new(0),
            offsets: OffsetTable::new(capacity),
        }
    }

    pub(crate) fn base(&self) -> Index {
        self.base.load(Ordering::Acquire)
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Writer only: records that `index` starts at `offset` and belongs to the log. Indexes are
    /// pushed consecutively from the segment's base.
    pub(crate) fn push(&self, index: Index, offset: u64) {
        let count = self.count.load(Ordering::Relaxed);
        if count == 0 {
            self.base.store(index, Ordering::Release);
        } else {
            assert_eq!(index, self.base.load(Ordering::Relaxed) + count, "indexes in a segment are consecutive");
        }
        let units = u32::try_from(offset / RECORD_ALIGN_BYTES as u64).expect("segment_bytes <= 64 GiB");
        self.offsets.slots[count as usize].store(units, Ordering::Relaxed);
        self.count.store(count + 1, Ordering::Release);
    }

    /// Writer only: drops every record at or after `index`.
    pub(crate) fn truncate_from(&self, index: Index) {
        let count = self.count.load(Ordering::Relaxed);
        let base = self.base.load(Ordering::Relaxed);
        if count > 0 && index < base + count {
            self.count.store(index.saturating_sub(base), Ordering::Release);
        }
    }

    /// Whether this segment holds `index` for the log.
    pub(crate) fn holds(&self, index: Index) -> bool {
        let count = self.count();
        count > 0 && index >= self.base() && index < self.base() + count
    }

    pub(crate) fn offset_of(&self, index: Index) -> u64 {
        let slot = (index - self.base()) as usize;
        u64::from(self.offsets.slots[slot].load(Ordering::Relaxed)) * RECORD_ALIGN_BYTES as u64
    }

    /// The entry at `index`, which this segment holds, or `None` when the record there is not
    /// (yet) the one indexed: only possible for a reader that asks beyond the durable watermark
    /// it loaded while a truncation replaces the tail, which then gets fewer entries, never
    /// wrong ones (bytes not yet written there in a reused segment are the earlier use's, whose
    /// tag is not this use's, bar one chance in 65,536 per record asked for that way).
    fn entry(&self, index: Index) -> Option<EntryRef<'_>> {
        entry_at(&self.map, self.offset_of(index) as usize, index, self.tag)
    }
}

/// The entry whose record starts at `offset` of `map`, if that record carries `index` and the
/// segment use's `tag` (its CRC was checked when the record was written or recovered).
pub(crate) fn entry_at(map: &Arc<Mmap>, offset: usize, index: Index, tag: u16) -> Option<EntryRef<'_>> {
    let header = RecordHeader::decode(map.get(offset..offset + RECORD_HEADER_BYTES)?);
    if header.index != index || header.tag != tag {
        return None;
    }
    let kind = EntryKind::from_u8(header.kind).ok()?;
    let start = offset + RECORD_HEADER_BYTES;
    Some(EntryRef {
        index,
        term: header.term,
        kind,
        data: map.get(start..start + header.length as usize)?,
        map,
        payload_offset: start,
    })
}

/// State shared between the writer and readers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) segments: Mutex<Vec<Arc<SegmentView>>>,
    /// Bumped after every change of `segments`.
    pub(crate) generation: AtomicU64,
    /// Every index at or below this is durable.
    pub(crate) durable_index: AtomicU64,
    /// The first index the log holds (snapshot index + 1).
    pub(crate) first_index: AtomicU64,
}

impl Shared {
    pub(crate) fn new(first_index: Index) -> Shared {
        Shared {
            segments: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            durable_index: AtomicU64::new(first_index - 1),
            first_index: AtomicU64::new(first_index),
        }
    }

    /// Writer only: replaces the segment list.
    pub(crate) fn publish(&self, segments: Vec<Arc<SegmentView>>) {
        *self.segments.lock().expect("no panics while holding the segment list") = segments;
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// A borrowed entry: its payload is a slice of the mapped segment, 16-byte aligned.
#[derive(Clone, Copy)]
pub struct EntryRef<'a> {
    pub index: Index,
    pub term: Term,
    pub kind: EntryKind,
    /// The payload, in place in the mapping; starts 16-byte aligned (for rkyv).
    pub data: &'a [u8],
    map: &'a Arc<Mmap>,
    payload_offset: usize,
}

impl std::fmt::Debug for EntryRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryRef")
            .field("index", &self.index)
            .field("term", &self.term)
            .field("kind", &self.kind)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl EntryRef<'_> {
    /// An owned [`Entry`] whose `data` points into the mapping (no copy): the `Bytes` holds the
    /// mapping alive, even after the segment file is deleted. Its bytes never change: the log
    /// never writes over a record (a truncated suffix is superseded from a fresh segment) and
    /// never shortens or reuses a segment file, and the Raft core relies on it when it keeps
    /// such entries (smr-runtime's `rebind.rs`).
    pub fn to_entry(&self) -> Entry {
        let owner = MappedSlice { map: Arc::clone(self.map), start: self.payload_offset, len: self.data.len() };
        Entry { index: self.index, term: self.term, kind: self.kind, data: Bytes::from_owner(owner) }
    }
}

struct MappedSlice {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for MappedSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }
}

/// Collects entries `index_min..=index_max` from `segments`, stopping before the total of
/// [`Entry::size_bytes`] would exceed `bytes_max` (but always returning the first one, so that a
/// large entry cannot stall progress).
pub(crate) fn collect<'a>(
    segments: &'a [Arc<SegmentView>],
    index_min: Index,
    index_max: Index,
    bytes_max: u64,
    out: &mut Vec<EntryRef<'a>>,
) {
    let mut bytes: u64 = 0;
    let mut index = index_min;
    // Search from the newest segment: readers mostly read near the tail.
    let mut at = segments.iter().rposition(|s| s.holds(index));
    while index <= index_max {
        let Some(position) = at else { break };
        let segment = &segments[position];
        if !segment.holds(index) {
            at = segments.iter().rposition(|s| s.holds(index));
            continue;
        }
        let Some(entry) = segment.entry(index) else {
            break;
        };
        bytes += entry.data.len() as u64 + smr_raft::ENTRY_OVERHEAD_BYTES;
        if bytes > bytes_max && !out.is_empty() {
            break;
        }
        out.push(entry);
        index += 1;
    }
}

/// Bytes a stored record of `payload_bytes` takes on disk (header and padding).
pub fn stored_record_bytes(payload_bytes: usize) -> usize {
    record_bytes(payload_bytes)
}

/// A read handle for another thread (the apply stage, a catch-up sender). Cheap to clone.
///
/// Reads only durable entries: exactly the ones the Raft core may hand out as committed (Ready's
/// `commit_index` is at or below what this node has durable).
#[derive(Debug)]
pub struct LogReader {
    shared: Arc<Shared>,
    cache: Vec<Arc<SegmentView>>,
    generation: u64,
}

impl Clone for LogReader {
    fn clone(&self) -> LogReader {
        LogReader::new(Arc::clone(&self.shared))
    }
}

impl LogReader {
    pub(crate) fn new(shared: Arc<Shared>) -> LogReader {
        LogReader { shared, cache: Vec::new(), generation: u64::MAX }
    }

    /// Every index at or below this is durable and readable.
    pub fn durable_through(&self) -> Index {
        self.shared.durable_index.load(Ordering::Acquire)
    }

    /// The first index the log holds.
    pub fn first_index(&self) -> Index {
        self.shared.first_index.load(Ordering::Acquire)
    }

    /// Catches up with the log's segment list if it changed, dropping this reader's mappings of
    /// segments deleted since (a read does the same; this is for a reader that may sit idle).
    pub fn refresh(&mut self) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.cache = self.shared.segments.lock().expect("no panics while holding the segment list").clone();
            self.generation = generation;
        }
    }

    /// Entries `index_min..=index_max`, at most `bytes_max` of them by [`Entry::size_bytes`]
    /// (at least one), borrowed from the mapping without copying.
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when `index_min` is compacted away or not durable yet.
    pub fn entries(
        &mut self,
        index_min: Index,
        index_max: Index,
        bytes_max: u64,
    ) -> Result<Vec<EntryRef<'_>>, LogError> {
        let durable = self.durable_through();
        let first = self.first_index();
        if index_min < first || index_min > durable {
            return Err(LogError::Unavailable { index: index_min, first, last: durable });
        }
        self.refresh();
        let mut out = Vec::new();
        collect(&self.cache, index_min, index_max.min(durable), bytes_max, &mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::record::encode_record;

    /// A reader that asks for an index at an offset not yet written (a truncation racing it) in
    /// a reused segment finds the earlier use's bytes there: with the right index, even, they
    /// are not this use's record.
    #[test]
    fn a_record_of_another_use_of_the_file_is_never_read_as_this_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("segment");
        let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).expect("create");
        file.set_len(2 * SEGMENT_HEADER_BYTES).expect("size");
        let earlier = SegmentKey { sequence: 4, salt: 0xAAAA_0000_0000_0001 };
        let mut record = Vec::new();
        let entry = Entry { index: 7, term: 2, kind: EntryKind::Normal, data: bytes::Bytes::from_static(b"old") };
        encode_record(&mut record, &entry, earlier, SEGMENT_HEADER_BYTES, None);
        file.write_all_at(&record, SEGMENT_HEADER_BYTES).expect("write");
        // SAFETY: the test's own file, not changed while mapped.
        let map = Arc::new(unsafe { Mmap::map(&file) }.expect("map"));
        let now = SegmentKey { sequence: 9, salt: 0x5555_0000_0000_0002 };
        let view = SegmentView::new(now, Arc::clone(&map));
        view.push(7, SEGMENT_HEADER_BYTES);
        assert!(view.entry(7).is_none(), "the earlier use's record read as this use's");
        let same_use = SegmentView::new(earlier, map);
        same_use.push(7, SEGMENT_HEADER_BYTES);
        assert_eq!(same_use.entry(7).expect("its own use's record").data, b"old");
    }
}
