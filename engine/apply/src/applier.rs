//! The replicated state: a state machine, its client sessions, and how far the log has been
//! applied, with one snapshot format for all three.

use std::io::{Read, Write};

use bytes::Bytes;
use rkyv::util::AlignedVec;
use smr_raft::{EntryKind, Index, Term};

use crate::batch::{self, BatchError};
use crate::sessions::{Decision, SessionConfig, Sessions};
use crate::state_machine::{ApplyBatch, RestoreError, Results, StateHash, StateMachine, StateView};

/// What one command of an applied batch came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Applied now; the state machine's result.
    Applied(Bytes),
    /// A retry of a command applied before; the result it had then.
    Duplicate(Bytes),
    /// A retry too old for the session window; nothing was applied.
    Stale { oldest_remembered: u64 },
}

/// Why an entry could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("entry {index} applied out of order: next expected is {expected}")]
    OutOfOrder { index: Index, expected: Index },
    #[error("entry {index}: {source}")]
    BadBatch { index: Index, source: BatchError },
}

/// Version 2 bounds the state machine's section with its length, so that `restore` reads exactly
/// what `snapshot` wrote and sees the end of its input where its data ends.
const SNAPSHOT_MAGIC: &[u8; 8] = b"SMRSNAP2";

/// Applies committed entries, in order, exactly once per client command.
#[derive(Debug)]
pub struct Applier<S> {
    state_machine: S,
    sessions: Sessions,
    applied: Index,
    commands_max: usize,
    results: Results,
    fresh: Vec<bool>,
    decisions: Vec<Decision>,
    /// `(session, seq, position)` of a batch's fresh commands, to find copies in one sort.
    copies: Vec<(u64, u64, usize)>,
}

impl<S: StateMachine> Applier<S> {
    /// An applier starting from an empty state at index 0. `batch_commands_max` bounds what a
    /// batch may hold (batches beyond it are refused as corrupt).
    pub fn new(state_machine: S, sessions: SessionConfig, batch_commands_max: usize) -> Applier<S> {
        Applier {
            state_machine,
            sessions: Sessions::new(sessions),
            applied: 0,
            commands_max: batch_commands_max,
            results: Results::default(),
            fresh: Vec::new(),
            decisions: Vec::new(),
            copies: Vec::new(),
        }
    }

    pub fn applied_index(&self) -> Index {
        self.applied
    }

    pub fn state_machine(&self) -> &S {
        &self.state_machine
    }

    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Applies the committed entry at `index`, which must follow the last one applied, and
    /// appends one outcome per command to `outcomes` (none for entries that carry no batch).
    ///
    /// `data` is read in place when it is 16-byte aligned (as the log stores payloads); other
    /// bytes are copied once into an aligned buffer first.
    ///
    /// # Errors
    /// [`ApplyError::OutOfOrder`] when `index` does not follow; [`ApplyError::BadBatch`] when the
    /// payload is not a valid batch. Nothing changes on error.
    pub fn apply(
        &mut self,
        index: Index,
        term: Term,
        kind: EntryKind,
        data: &[u8],
        outcomes: &mut Vec<CommandOutcome>,
    ) -> Result<(), ApplyError> {
        if index != self.applied + 1 {
            return Err(ApplyError::OutOfOrder { index, expected: self.applied + 1 });
        }
        if kind != EntryKind::Normal {
            self.applied = index;
            return Ok(());
        }
        let copy;
        let bytes: &[u8] = if batch::is_aligned(data) {
            data
        } else {
            let mut aligned = AlignedVec::<16>::with_capacity(data.len());
            aligned.extend_from_slice(data);
            copy = aligned;
            &copy
        };
        let archived = batch::view(bytes).map_err(|source| ApplyError::BadBatch { index, source })?;
        let count = archived.commands.len();
        if count > self.commands_max {
            return Err(ApplyError::BadBatch {
                index,
                source: BatchError::TooManyCommands { count, max: self.commands_max },
            });
        }
        self.decisions.clear();
        self.fresh.clear();
        for command in archived.commands.iter() {
            let decision = self.sessions.decide(command.session.to_native(), command.seq.to_native());
            self.fresh.push(decision == Decision::Fresh);
            self.decisions.push(decision);
        }
        // Two copies of one command in the same batch (a retry that caught up with the original):
        // only the first is fresh. Sorting (session, seq, position) puts copies side by side, in
        // O(n log n) on native integers; comparing every pair of archived fields was O(n²), and
        // it was most of the apply stage's time at a few hundred commands per batch.
        self.copies.clear();
        for (i, command) in archived.commands.iter().enumerate() {
            let session = command.session.to_native();
            if self.fresh[i] && session != 0 {
                self.copies.push((session, command.seq.to_native(), i));
            }
        }
        self.copies.sort_unstable();
        for pair in self.copies.windows(2) {
            if pair[0].0 == pair[1].0 && pair[0].1 == pair[1].1 {
                self.fresh[pair[1].2] = false;
            }
        }
        self.results.reset(count);
        self.state_machine.apply(&ApplyBatch::new(index, term, archived, &self.fresh), &mut self.results);
        for (i, command) in archived.commands.iter().enumerate() {
            let (session, seq) = (command.session.to_native(), command.seq.to_native());
            let outcome = if self.fresh[i] {
                let result = self.results.take(i).unwrap_or_default();
                self.sessions.record(session, seq, result.clone(), index);
                CommandOutcome::Applied(result)
            } else {
                match self.sessions.decide(session, seq) {
                    Decision::Duplicate(result) => CommandOutcome::Duplicate(result),
                    Decision::Stale { oldest_remembered } => CommandOutcome::Stale { oldest_remembered },
                    Decision::Fresh => unreachable!("a command marked duplicate has a recorded result"),
                }
            };
            outcomes.push(outcome);
        }
        self.sessions.expire(index);
        self.applied = index;
        Ok(())
    }

    /// Answers a read-only query (after a read barrier).
    pub fn query(&self, query: &[u8]) -> Bytes {
        self.state_machine.query(query)
    }

    /// Writes the replicated state: applied index, sessions, the state machine's section (its
    /// length, then what it wrote), and a CRC32C of all of it.
    ///
    /// # Errors
    /// Any I/O error of `out`.
    pub fn snapshot(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut state = Vec::new();
        self.state_machine.snapshot(&mut state)?;
        write_snapshot(&self.snapshot_head(), &state, out)
    }

    /// The replicated state as it is now, for [`SnapshotWriter::write`] to write on another
    /// thread while applying goes on: the sessions are copied here (they are small), the state
    /// machine's own state is frozen by [`StateMachine::snapshot_view`].
    ///
    /// # Errors
    /// Those of [`StateMachine::snapshot_view`].
    pub fn snapshot_view(&mut self) -> std::io::Result<SnapshotWriter> {
        Ok(SnapshotWriter { head: self.snapshot_head(), state: self.state_machine.snapshot_view()? })
    }

    /// The snapshot's bytes before the state machine's section: magic, applied index, sessions.
    fn snapshot_head(&self) -> Vec<u8> {
        let mut head = Vec::new();
        head.extend_from_slice(SNAPSHOT_MAGIC);
        head.extend_from_slice(&self.applied.to_le_bytes());
        head.extend_from_slice(&(self.sessions.map.len() as u64).to_le_bytes());
        for (&id, session) in &self.sessions.map {
            head.extend_from_slice(&id.to_le_bytes());
            head.extend_from_slice(&session.last_index.to_le_bytes());
            head.extend_from_slice(&(session.results.len() as u64).to_le_bytes());
            for (seq, result) in &session.results {
                head.extend_from_slice(&seq.to_le_bytes());
                head.extend_from_slice(&(result.len() as u32).to_le_bytes());
                head.extend_from_slice(result);
            }
        }
        head
    }

    /// Replaces the replicated state with a snapshot written by [`Applier::snapshot`].
    ///
    /// # Errors
    /// [`RestoreError`] when the snapshot is unreadable, malformed, or fails its checksum; the
    /// state is then undefined and must not be served.
    pub fn restore(&mut self, input: &mut dyn Read) -> Result<(), RestoreError> {
        let mut r = CrcReader { inner: input, crc: 0 };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != SNAPSHOT_MAGIC {
            return Err(RestoreError::Malformed(format!("bad magic {magic:?}")));
        }
        let applied = read_u64(&mut r)?;
        let count = read_u64(&mut r)?;
        let config = self.sessions.config;
        if count > config.sessions_max as u64 {
            return Err(RestoreError::Malformed(format!(
                "{count} sessions exceed sessions_max ({})",
                config.sessions_max
            )));
        }
        let mut sessions = Sessions::new(config);
        for _ in 0..count {
            let id = read_u64(&mut r)?;
            let last_index = read_u64(&mut r)?;
            let results = read_u64(&mut r)?;
            if results > config.window_max {
                return Err(RestoreError::Malformed(format!(
                    "session {id} holds {results} results, window_max is {}",
                    config.window_max
                )));
            }
            for _ in 0..results {
                let seq = read_u64(&mut r)?;
                let mut len = [0u8; 4];
                r.read_exact(&mut len)?;
                let len = u32::from_le_bytes(len) as usize;
                if len > RESULT_BYTES_MAX {
                    return Err(RestoreError::Malformed(format!("a session result of {len} bytes")));
                }
                let mut result = vec![0u8; len];
                r.read_exact(&mut result)?;
                sessions.record(id, seq, Bytes::from(result), last_index);
            }
        }
        let state_bytes = read_u64(&mut r)?;
        let mut section = (&mut r).take(state_bytes);
        self.state_machine.restore(&mut section)?;
        // Whatever the state machine left unread is still covered by the checksum.
        std::io::copy(&mut section, &mut std::io::sink())?;
        let computed = r.crc;
        let mut stored = [0u8; 4];
        input.read_exact(&mut stored)?;
        if u32::from_le_bytes(stored) != computed {
            return Err(RestoreError::Malformed("checksum mismatch".into()));
        }
        self.sessions = sessions;
        self.applied = applied;
        Ok(())
    }

    /// A hash of the whole replicated state (state machine, sessions' positions, applied index).
    pub fn state_hash(&self) -> u64 {
        self.state_machine.state_hash() ^ self.engine_state_hash()
    }

    /// [`Applier::state_hash`] as of now, as [`StateMachine::state_hash_later`] gives it; the
    /// sessions' part is hashed here.
    pub fn state_hash_later(&mut self) -> StateHash {
        match self.state_machine.state_hash_later() {
            StateHash::Now(hash) => StateHash::Now(hash ^ self.engine_state_hash()),
            StateHash::Later(hash) => {
                let engine = self.engine_state_hash();
                StateHash::Later(Box::new(move || hash() ^ engine))
            }
            StateHash::NotYet => StateHash::NotYet,
        }
    }

    /// The hash of what the engine keeps beside the state machine: applied index and sessions.
    fn engine_state_hash(&self) -> u64 {
        let mut h = self.applied.rotate_left(17);
        for (&id, s) in &self.sessions.map {
            h = h.rotate_left(5) ^ id ^ s.last_index.rotate_left(29) ^ (s.results.len() as u64);
        }
        h
    }
}

/// A snapshot taken by [`Applier::snapshot_view`], not yet written.
pub struct SnapshotWriter {
    head: Vec<u8>,
    state: Box<dyn StateView>,
}

impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter").field("head_bytes", &self.head.len()).finish_non_exhaustive()
    }
}

impl SnapshotWriter {
    /// Writes the snapshot exactly as [`Applier::snapshot`] would have when the view was taken.
    ///
    /// # Errors
    /// Any I/O error of `out`, or of the state machine's view.
    pub fn write(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        self.write_into(&mut bytes)?;
        out.write_all(&bytes)
    }

    /// Appends the snapshot [`SnapshotWriter::write`] writes to `out`, serializing the state
    /// machine's section straight into it: one buffer, not a copy per layer (at 15 MB of state a
    /// snapshot touched 60-90 MB of fresh memory, and zeroing those pages was most of the
    /// saver thread's CPU).
    ///
    /// # Errors
    /// Any I/O error of the state machine's view; `out` is then truncated back to its length
    /// before the call.
    pub fn write_into(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let start = out.len();
        out.extend_from_slice(&self.head);
        let length_at = out.len();
        out.extend_from_slice(&0u64.to_le_bytes());
        if let Err(error) = self.state.write(out) {
            out.truncate(start);
            return Err(error);
        }
        let state_bytes = (out.len() - length_at - 8) as u64;
        out[length_at..length_at + 8].copy_from_slice(&state_bytes.to_le_bytes());
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(())
    }
}

/// The head, the state machine's section with its length, then the CRC32C of both.
fn write_snapshot(head: &[u8], state: &[u8], out: &mut dyn Write) -> std::io::Result<()> {
    let mut w = CrcWriter { inner: out, crc: 0 };
    w.write_all(head)?;
    w.write_all(&(state.len() as u64).to_le_bytes())?;
    w.write_all(state)?;
    let crc = w.crc;
    out.write_all(&crc.to_le_bytes())
}

/// Largest single result a snapshot may hold for a session; bounds allocation on restore.
pub const RESULT_BYTES_MAX: usize = 16 << 20;

fn read_u64(r: &mut dyn Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

struct CrcWriter<'a> {
    inner: &'a mut dyn Write,
    crc: u32,
}

impl Write for CrcWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct CrcReader<'a> {
    inner: &'a mut dyn Read,
    crc: u32,
}

impl Read for CrcReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
}
