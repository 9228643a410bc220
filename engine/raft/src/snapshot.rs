//! Snapshots (Raft §7): taking note of the caller's snapshots, compacting the in-memory log,
//! and streaming a snapshot in bounded chunks to a follower that is too far behind.

use bytes::Bytes;

use crate::error::Error;
use crate::message::MessageBody;
use crate::progress::{Progress, ProgressState};
use crate::ready::SnapshotChunk;
use crate::replica::{LocalSnapshot, Replica};
use crate::types::{ConfState, Index, NodeId, SnapshotMeta};

impl Replica {
    /// Tells the core that the state machine's state through `index` is saved as `data`, which
    /// it may stream to followers. `index` must be applied and still in the core's log view.
    ///
    /// # Errors
    /// [`Error::SnapshotOutOfRange`] when `index` is not applied or already compacted away.
    pub fn on_snapshot(&mut self, index: Index, data: Bytes) -> Result<(), Error> {
        let Some(term) = self.log.term(index) else {
            return Err(Error::SnapshotOutOfRange { index, first: self.log.first_index(), applied: self.applied });
        };
        if index > self.applied || index < self.snapshot_meta.index {
            return Err(Error::SnapshotOutOfRange { index, first: self.log.first_index(), applied: self.applied });
        }
        let meta = SnapshotMeta { index, term, conf: self.conf_at(index) };
        self.snapshot_requested = false;
        self.snapshot_meta = meta.clone();
        self.snapshot = Some(LocalSnapshot { meta, data });
        Ok(())
    }

    /// Drops the in-memory log through `index`. Followers that need older entries then get the
    /// snapshot instead.
    ///
    /// # Errors
    /// [`Error::CompactOutOfRange`] when `index` is beyond the latest snapshot, the durable index
    /// or the commit index.
    pub fn compact(&mut self, index: Index) -> Result<(), Error> {
        let limit = self.snapshot_meta.index.min(self.log.persisted_index()).min(self.log.commit_index());
        if index > limit {
            return Err(Error::CompactOutOfRange { index, limit });
        }
        if index <= self.log.base_index() {
            return Ok(());
        }
        self.log.compact_through(index);
        // Keep the configuration in force at the new base and everything after it.
        let keep_from = self.conf_history.iter().rposition(|(at, _)| *at <= index).unwrap_or(0);
        self.conf_history.drain(..keep_from);
        Ok(())
    }

    pub(crate) fn start_snapshot_transfer(&mut self, to: NodeId) {
        let Some(snapshot_index) = self.snapshot.as_ref().map(|s| s.meta.index) else {
            // The entries are gone and no snapshot data is at hand: ask the caller for one, once,
            // and park the follower until `on_snapshot` hands it over.
            if let Some(pr) = self.progress_mut(to) {
                pr.become_snapshot(0);
            }
            if !self.snapshot_requested {
                self.snapshot_requested = true;
                self.out.need_snapshot = true;
            }
            return;
        };
        if let Some(pr) = self.progress_mut(to) {
            pr.become_snapshot(snapshot_index);
        }
        self.send_snapshot_chunks(to);
    }

    pub(crate) fn snapshot_sendable(&self, pr: &Progress) -> bool {
        let Some(snapshot) = &self.snapshot else { return false };
        if snapshot.meta.index < self.log.base_index() {
            // Older than the log's base: useless to a follower that needs what was compacted.
            return false;
        }
        if snapshot.meta.index != pr.snapshot_index {
            return true;
        }
        let window = self.config.snapshot_chunk_bytes_max * u64::from(self.config.snapshot_chunks_inflight_max);
        !pr.snapshot_last_sent && pr.snapshot_sent_offset < pr.snapshot_acked_offset + window
    }

    pub(crate) fn send_snapshot_chunks(&mut self, to: NodeId) {
        let Some(snapshot) = self.snapshot.clone() else {
            if !self.snapshot_requested {
                self.snapshot_requested = true;
                self.out.need_snapshot = true;
            }
            return;
        };
        let chunk_max = self.config.snapshot_chunk_bytes_max;
        let window = chunk_max * u64::from(self.config.snapshot_chunks_inflight_max);
        let len = snapshot.data.len() as u64;
        loop {
            let Some(pr) = self.progress_mut(to) else { return };
            if pr.state != ProgressState::Snapshot {
                return;
            }
            if pr.snapshot_index != snapshot.meta.index {
                // A newer snapshot replaced the one being sent: start over with it.
                pr.become_snapshot(snapshot.meta.index);
            }
            let offset = pr.snapshot_sent_offset;
            if pr.snapshot_last_sent || offset >= pr.snapshot_acked_offset + window {
                return;
            }
            // An empty snapshot still goes as one empty chunk marked last.
            let end = (offset + chunk_max).min(len);
            let last = end == len;
            pr.snapshot_sent_offset = end;
            pr.snapshot_last_sent = last;
            let data = snapshot.data.slice(offset as usize..end as usize);
            self.send(to, MessageBody::Snapshot { meta: Box::new(snapshot.meta.clone()), offset, data, last });
            if last {
                return;
            }
        }
    }

    /// A stalled transfer (no acknowledgement for an election timeout) is resent from the last
    /// acknowledged offset: chunks may have been lost.
    pub(crate) fn tick_snapshot_transfers(&mut self) {
        let election_ticks = self.config.election_ticks;
        for pr in &mut self.progress {
            if pr.state == ProgressState::Snapshot {
                pr.snapshot_idle_ticks += 1;
                if pr.snapshot_idle_ticks >= election_ticks {
                    pr.snapshot_idle_ticks = 0;
                    pr.snapshot_sent_offset = pr.snapshot_acked_offset;
                    pr.snapshot_last_sent = false;
                }
            }
        }
    }

    pub(crate) fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        snapshot_index: Index,
        next_offset: u64,
        reject: bool,
    ) {
        let Some(pr) = self.progress_mut(from) else { return };
        pr.recent_active = true;
        if pr.state != ProgressState::Snapshot || pr.snapshot_index != snapshot_index {
            return;
        }
        pr.snapshot_idle_ticks = 0;
        if reject {
            pr.snapshot_acked_offset = 0;
            pr.snapshot_sent_offset = 0;
            pr.snapshot_last_sent = false;
            return;
        }
        pr.snapshot_acked_offset = pr.snapshot_acked_offset.max(next_offset);
        pr.snapshot_sent_offset = pr.snapshot_sent_offset.max(pr.snapshot_acked_offset);
    }

    /// A follower receives one chunk of a snapshot from its leader.
    pub(crate) fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        data: Bytes,
        last: bool,
    ) {
        let commit = self.log.commit_index();
        if meta.index <= commit {
            // Already have everything it covers; tell the leader where we are.
            self.incoming_snapshot = None;
            self.send_after_persist(
                from,
                MessageBody::AppendResponse { success: true, index: commit, hint_index: 0, hint_term: 0 },
            );
            return;
        }
        if self.log.matches(meta.index, meta.term) {
            // Our log already holds the snapshot's last entry, so it holds everything before it
            // too (log matching). Installing would throw away the entries after it, which this
            // replica may already have acknowledged (§7: "retain log entries following it").
            self.incoming_snapshot = None;
            self.advance_commit(meta.index);
            self.send_after_persist(
                from,
                MessageBody::AppendResponse { success: true, index: meta.index, hint_index: 0, hint_term: 0 },
            );
            return;
        }
        let expected = match &self.incoming_snapshot {
            Some((current, next)) if current.index == meta.index && current.term == meta.term => *next,
            _ if offset == 0 => {
                self.incoming_snapshot = Some((meta.clone(), 0));
                0
            }
            _ => {
                self.send(
                    from,
                    MessageBody::SnapshotResponse { snapshot_index: meta.index, next_offset: 0, reject: true },
                );
                return;
            }
        };
        if offset != expected {
            // A lost or duplicated chunk: say where we are; the leader resends from there.
            self.send(
                from,
                MessageBody::SnapshotResponse { snapshot_index: meta.index, next_offset: expected, reject: false },
            );
            return;
        }
        let next = offset + data.len() as u64;
        self.out.snapshot_chunks.push(SnapshotChunk { meta: meta.clone(), offset, data, last });
        if !last {
            self.incoming_snapshot = Some((meta.clone(), next));
            self.send_after_persist(
                from,
                MessageBody::SnapshotResponse { snapshot_index: meta.index, next_offset: next, reject: false },
            );
            return;
        }
        self.install_snapshot(meta.clone());
        self.send_after_persist(
            from,
            MessageBody::AppendResponse { success: true, index: meta.index, hint_index: 0, hint_term: 0 },
        );
    }

    /// Makes a fully received snapshot the base of this replica's log.
    fn install_snapshot(&mut self, meta: SnapshotMeta) {
        self.incoming_snapshot = None;
        self.log.reset_to_snapshot(meta.index, meta.term);
        self.conf = meta.conf.clone();
        self.conf_history = vec![(meta.index, meta.conf.clone())];
        self.out.conf_changed = true;
        self.applied = self.applied.max(meta.index);
        self.snapshot_meta = meta;
        // The data stays with the caller; it hands it back through `on_snapshot` if this
        // replica is to send it on.
        self.snapshot = None;
    }

    /// Membership recorded in the latest snapshot.
    pub fn snapshot_conf(&self) -> &ConfState {
        &self.snapshot_meta.conf
    }
}
