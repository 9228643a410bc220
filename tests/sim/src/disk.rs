//! The simulated disk: writes are volatile until an fsync covers them, and a crash keeps only
//! a prefix of the volatile log writes, possibly cutting the last batch of entries short (a torn
//! tail at entry granularity), and any one unsynced version of the hard state, or none.
//!
//! This is the contract `smr-log` implements for real: nothing reported durable is lost;
//! anything after it may survive in part, but only as a prefix of what was written, because
//! recovery truncates the log at the first record that does not check out.

use bytes::Bytes;
use smr_raft::{Entry, HardState, Index, SnapshotMeta};

use crate::rng::SimRng;

/// One write, volatile until synced.
#[derive(Clone, Debug)]
pub enum Write {
    /// Entries to append, replacing any existing entries from `entries[0].index` on.
    Entries(Vec<Entry>),
    HardState(HardState),
    /// A chunk of a snapshot being received; `last` completes and installs it.
    SnapshotChunk {
        meta: SnapshotMeta,
        offset: u64,
        data: Bytes,
        last: bool,
    },
}

/// What survives a crash.
#[derive(Clone, Debug, Default)]
pub struct Durable {
    pub hard_state: HardState,
    pub snapshot: Option<(SnapshotMeta, Bytes)>,
    /// Entries after the snapshot (or from index 1).
    pub entries: Vec<Entry>,
    /// A snapshot being received, as far as it got.
    pub incoming: Option<(SnapshotMeta, Vec<u8>)>,
}

#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    pub durable: Durable,
    volatile: Vec<Write>,
}

impl SimDisk {
    pub fn write(&mut self, write: Write) {
        self.volatile.push(write);
    }

    pub fn volatile_len(&self) -> usize {
        self.volatile.len()
    }

    /// Makes the first `count` volatile writes durable (an fsync that covered them completed).
    pub fn sync(&mut self, count: usize) {
        let synced: Vec<Write> = self.volatile.drain(..count).collect();
        for write in synced {
            self.durable.apply(write);
        }
    }

    /// A crash. The log is a stream: some prefix of the volatile entry and snapshot writes
    /// reached the platter, the last of them perhaps only in part (recovery truncates at the
    /// first record that does not check out, so what survives is always a prefix). The hard
    /// state lives apart (its own file, replaced atomically): any one of its unsynced versions
    /// may have landed, or none.
    pub fn crash(&mut self, rng: &mut SimRng) {
        let volatile = std::mem::take(&mut self.volatile);
        let (states, stream): (Vec<Write>, Vec<Write>) =
            volatile.into_iter().partition(|w| matches!(w, Write::HardState(_)));
        let keep = rng.range(0, stream.len() as u64 + 1) as usize;
        for (i, write) in stream.into_iter().take(keep).enumerate() {
            let write = match write {
                Write::Entries(entries) if i + 1 == keep && entries.len() > 1 && rng.chance(0.5) => {
                    let torn = rng.range(1, entries.len() as u64) as usize;
                    Write::Entries(entries[..torn].to_vec())
                }
                other => other,
            };
            self.durable.apply(write);
        }
        let landed = rng.range(0, states.len() as u64 + 1) as usize;
        if landed > 0 {
            let state = states.into_iter().nth(landed - 1).expect("in range");
            self.durable.apply(state);
        }
    }

    /// A local snapshot, written atomically (write to a temporary file, fsync, rename, fsync the
    /// directory) and the log prefix it covers dropped.
    pub fn save_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
        let index = meta.index;
        self.durable.entries.retain(|e| e.index > index);
        self.durable.snapshot = Some((meta, data));
    }
}

impl Durable {
    fn apply(&mut self, write: Write) {
        match write {
            Write::Entries(entries) => {
                let Some(first) = entries.first() else { return };
                let base = self.base_index();
                let first_index = first.index;
                assert!(first_index > base, "write below the snapshot base");
                self.entries.retain(|e| e.index < first_index);
                assert_eq!(self.entries.last().map_or(base, |e| e.index) + 1, first_index, "gap in the durable log");
                self.entries.extend(entries);
            }
            Write::HardState(hs) => self.hard_state = hs,
            Write::SnapshotChunk { meta, offset, data, last } => {
                if offset == 0 {
                    self.incoming = Some((meta.clone(), Vec::new()));
                }
                let Some((incoming_meta, buf)) = &mut self.incoming else { return };
                if *incoming_meta != meta || buf.len() as u64 != offset {
                    return;
                }
                buf.extend_from_slice(&data);
                if last {
                    let (meta, buf) = self.incoming.take().expect("present");
                    self.entries.clear();
                    self.snapshot = Some((meta, Bytes::from(buf)));
                }
            }
        }
    }

    pub fn base_index(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |(m, _)| m.index)
    }
}
