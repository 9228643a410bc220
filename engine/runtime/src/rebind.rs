//! Points the core's in-memory entries at the log's mapping once they are durable.
//!
//! The Raft core keeps every entry since its last compaction (up to `snapshot_log_bytes` of
//! them), for the followers it replicates to. Until they are rebound those entries are heap
//! copies: on the leader the batches the core built, on a follower the copy each entry gets as it
//! arrives (`own_entry_data`). Once the log writer has made an entry durable, the same bytes sit
//! in the mapped segment file, so the core's entry is swapped for a slice of the mapping and the
//! heap copy is freed. Nothing is copied; finding the records reads their headers, in pages the
//! log just wrote (page cache), and the payloads are read again only if a lagging follower needs
//! them. Log Matching makes the swap safe: the core accepts it only for a durable entry of the
//! same index, term, kind and length ([`smr_raft::Replica::rebind_durable_entry`]).
//!
//! What makes a slice of the mapping as good as a copy: smr-log never writes a record's bytes
//! twice. A truncated suffix stays where it was (readers stop seeing it; the new records go into a
//! fresh segment), a snapshot install starts a fresh segment, and segments are never reused or
//! shortened, only deleted whole. So a slice held by the core, or by a message queued for a peer
//! long after, reads the bytes that entry had when it was written, whatever became of the log
//! since.
//!
//! A segment file deleted by compaction stays mapped while an entry of it is still held; the
//! core compacts its view at or beyond the log's compaction point, so that is never for long.

use smr_log::LogReader;
use smr_raft::{Index, Replica};

use crate::metrics::Counters;

/// Most entry bytes rebound in one call, so that a burst of durable entries costs one round a
/// bounded time (the rest follow in the next rounds).
const REBIND_BYTES_MAX: u64 = 8 << 20;

#[derive(Debug)]
pub(crate) struct Rebinder {
    reader: LogReader,
    /// Every entry through this index was rebound, or held no heap copy worth rebinding.
    through: Index,
}

impl Rebinder {
    pub(crate) fn new(reader: LogReader, replica: &Replica) -> Rebinder {
        // Entries restored at start-up already point into the mapping.
        Rebinder { reader, through: replica.persisted_index() }
    }

    /// Rebinds the entries made durable since the last call.
    pub(crate) fn rebind(&mut self, replica: &mut Replica, counters: &Counters) {
        let persisted = replica.persisted_index();
        // A follower's log may have been cut back (a conflicting suffix) or replaced by a
        // snapshot: its new entries there are heap copies again.
        if let Some(from) = replica.take_replaced_from() {
            self.through = self.through.min(from - 1);
        }
        let first = replica.first_index().max(self.reader.first_index());
        self.through = self.through.min(persisted).max(first - 1);
        if persisted <= self.through {
            // Let go of the mappings of segments a compaction deleted, which the reader would
            // otherwise keep until its next read (the disk space of a deleted file is only freed
            // once nothing maps it).
            self.reader.refresh();
            return;
        }
        let Ok(entries) = self.reader.entries(self.through + 1, persisted, REBIND_BYTES_MAX) else {
            // Not readable (compacted past, or not yet durable in this reader's view): nothing is
            // lost by keeping the copies; try again after the next persist.
            return;
        };
        let mut rebound = 0;
        let mut last = self.through;
        for entry in &entries {
            if replica.rebind_durable_entry(entry.to_entry()) {
                rebound += 1;
            }
            last = entry.index;
        }
        self.through = last;
        counters.entries_rebound.add(rebound);
    }
}
