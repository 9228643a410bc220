//! The leader's view of each follower: how far its log matches, and what is in flight to it.

use std::collections::VecDeque;

use crate::types::{Index, NodeId};

/// How the leader is currently feeding a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// The leader does not know where the follower's log matches. It sends one append at a
    /// time and waits for the answer (or the next heartbeat) before sending another.
    Probe,
    /// The follower is known to match up to `match_index`; appends are pipelined optimistically
    /// up to the inflight limits.
    Replicate,
    /// The follower needs a snapshot; chunks are streamed and no appends are sent.
    Snapshot,
}

/// Appends in flight to one follower, oldest first, as `(last index in the message, bytes)`.
///
/// Invariant: indexes are strictly increasing; `bytes` is the sum of the bytes in flight.
#[derive(Clone, Debug, Default)]
pub(crate) struct Inflights {
    queue: VecDeque<(Index, u64)>,
    bytes: u64,
}

impl Inflights {
    pub(crate) fn add(&mut self, last_index: Index, bytes: u64) {
        if let Some(&(back, _)) = self.queue.back() {
            assert!(last_index > back, "inflight indexes must increase: {back} then {last_index}");
        }
        self.queue.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose last index is at or below `index` (acknowledged).
    pub(crate) fn free_through(&mut self, index: Index) {
        while let Some(&(last, bytes)) = self.queue.front() {
            if last > index {
                break;
            }
            self.queue.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Frees the oldest message in flight, whatever its fate.
    pub(crate) fn free_first(&mut self) {
        if let Some((_, bytes)) = self.queue.pop_front() {
            self.bytes -= bytes;
        }
    }

    pub(crate) fn reset(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }

    pub(crate) fn count(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// One peer's progress, kept by the leader (and, for itself, `match_index` is the leader's own
/// durable index).
///
/// Invariant: `match_index < next_index`.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    pub(crate) id: NodeId,
    pub(crate) match_index: Index,
    pub(crate) next_index: Index,
    pub(crate) state: ProgressState,
    /// In probe state: an append was sent and no answer or heartbeat tick has come since.
    pub(crate) probe_sent: bool,
    pub(crate) inflights: Inflights,
    /// The commit index last sent in an append, so an idle follower is told of a new commit
    /// index once, not on every ready.
    pub(crate) commit_sent: Index,
    /// `match_index` when the previous heartbeat answer came: a pipeline that has not moved
    /// between two answers is stalled.
    pub(crate) match_at_last_heartbeat: Index,
    /// Heartbeat answers in a row that found the pipeline stalled.
    pub(crate) stalled_heartbeats: u32,
    /// Heard from since the last CheckQuorum round.
    pub(crate) recent_active: bool,
    /// The highest heartbeat round this peer acknowledged (ReadIndex and lease).
    pub(crate) acked_round: u64,
    /// In snapshot state: the snapshot being sent and how far it has been acknowledged and sent.
    pub(crate) snapshot_index: Index,
    pub(crate) snapshot_acked_offset: u64,
    pub(crate) snapshot_sent_offset: u64,
    /// The chunk marked last has been sent (and not rewound since).
    pub(crate) snapshot_last_sent: bool,
    /// Ticks since the last snapshot chunk was acknowledged; a stalled transfer is resent.
    pub(crate) snapshot_idle_ticks: u32,
}

impl Progress {
    pub(crate) fn new(id: NodeId, next_index: Index) -> Progress {
        assert!(next_index >= 1);
        Progress {
            id,
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::default(),
            commit_sent: 0,
            match_at_last_heartbeat: 0,
            stalled_heartbeats: 0,
            recent_active: false,
            acked_round: 0,
            snapshot_index: 0,
            snapshot_acked_offset: 0,
            snapshot_sent_offset: 0,
            snapshot_last_sent: false,
            snapshot_idle_ticks: 0,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        // After a snapshot the follower is known to hold everything through it.
        if self.state == ProgressState::Snapshot {
            self.next_index = self.next_index.max(self.snapshot_index + 1).max(self.match_index + 1);
        } else {
            self.next_index = self.match_index + 1;
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflights.reset();
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflights.reset();
    }

    pub(crate) fn become_snapshot(&mut self, snapshot_index: Index) {
        self.state = ProgressState::Snapshot;
        self.snapshot_index = snapshot_index;
        self.snapshot_acked_offset = 0;
        self.snapshot_sent_offset = 0;
        self.snapshot_last_sent = false;
        self.snapshot_idle_ticks = 0;
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// Records a successful append acknowledgement. Returns whether it taught anything new.
    pub(crate) fn on_ack(&mut self, index: Index) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        self.inflights.free_through(index);
        updated
    }

    /// Handles a rejected append of `rejected` (its prev_log_index), with the leader-side
    /// probe hint `probe_hint` (the index the leader should try to match next). Returns false
    /// when the rejection is stale (answers an append sent before a later state change).
    pub(crate) fn on_reject(&mut self, rejected: Index, probe_hint: Index) -> bool {
        match self.state {
            ProgressState::Replicate => {
                // Appends pipelined after a rejected one are rejected too; only the first
                // rejection above the match index means anything.
                if rejected <= self.match_index {
                    return false;
                }
                self.become_probe();
                self.next_index = (probe_hint + 1).clamp(self.match_index + 1, rejected.max(self.match_index + 1));
                true
            }
            ProgressState::Probe => {
                if self.next_index == 0 || self.next_index - 1 != rejected {
                    return false;
                }
                self.next_index = (probe_hint + 1).clamp(self.match_index + 1, rejected.max(self.match_index + 1));
                self.probe_sent = false;
                true
            }
            ProgressState::Snapshot => false,
        }
    }

    /// Whether the leader may send another append to this peer now.
    pub(crate) fn can_send(&self, inflight_appends_max: u32, inflight_bytes_max: u64) -> bool {
        match self.state {
            ProgressState::Probe => !self.probe_sent,
            ProgressState::Replicate => {
                self.inflights.count() < inflight_appends_max as usize && self.inflights.bytes() < inflight_bytes_max
            }
            ProgressState::Snapshot => false,
        }
    }

    /// Records an append sent with entries through `last_index` (if any) and `bytes` of entries.
    pub(crate) fn on_sent(&mut self, last_index: Option<Index>, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last_index {
                    self.next_index = last + 1;
                    self.inflights.add(last, bytes);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stale_rejection_in_replicate_state_is_ignored() {
        let mut p = Progress::new(2, 1);
        p.on_ack(10);
        p.become_replicate();
        p.on_sent(Some(20), 100);
        assert!(!p.on_reject(9, 5), "a rejection at or below match is stale");
        assert_eq!(p.state, ProgressState::Replicate);
        assert!(p.on_reject(15, 12));
        assert_eq!(p.state, ProgressState::Probe);
        assert_eq!(p.next_index, 13);
    }

    #[test]
    fn probe_rejection_jumps_to_the_hint_but_never_below_match() {
        let mut p = Progress::new(2, 51);
        p.match_index = 10;
        assert!(p.on_reject(50, 3));
        assert_eq!(p.next_index, 11, "never probe at or below what is known to match");
        p.next_index = 51;
        assert!(p.on_reject(50, 30));
        assert_eq!(p.next_index, 31);
        assert!(!p.on_reject(50, 20), "answers an append no longer outstanding");
    }

    #[test]
    fn probe_state_sends_one_append_at_a_time() {
        let mut p = Progress::new(2, 5);
        assert!(p.can_send(8, 1 << 20));
        p.on_sent(Some(7), 10);
        assert!(!p.can_send(8, 1 << 20));
        p.on_ack(7);
        assert!(p.can_send(8, 1 << 20));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever sequence of sends and acknowledgements, `match < next` holds, the window is
        /// respected, and inflight bytes are exactly the sum of what is unacknowledged.
        #[test]
        fn replicate_window_stays_consistent(ops in proptest::collection::vec((any::<bool>(), 1u64..5, 1u64..100), 1..200)) {
            let mut p = Progress::new(2, 1);
            p.become_replicate();
            let mut last_sent = 0u64;
            let mut outstanding: Vec<(u64, u64)> = Vec::new();
            for (send, step, bytes) in ops {
                if send {
                    if p.can_send(16, 1000) {
                        last_sent += step;
                        p.on_sent(Some(last_sent), bytes);
                        outstanding.push((last_sent, bytes));
                    }
                } else if let Some(&(idx, _)) = outstanding.first() {
                    p.on_ack(idx);
                    outstanding.retain(|&(i, _)| i > idx);
                }
                prop_assert!(p.match_index < p.next_index);
                prop_assert!(p.inflights.count() <= 16);
                prop_assert_eq!(p.inflights.bytes(), outstanding.iter().map(|&(_, b)| b).sum::<u64>());
            }
        }
    }
}
