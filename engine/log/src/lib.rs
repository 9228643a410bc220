//! # smr-log: the durable log
//!
//! The log of one Raft group on one node, on its own disk directory. It **owns** the segment
//! files (made ahead of need by a background thread, from compacted segments reused or new
//! zero-filled files), the state file
//! (term, vote, commit hint, and the snapshot the log starts after), the write path (io_uring
//! writes with group-commit `fdatasync`, or the `pwrite` + `fdatasync` fallback), recovery, and
//! zero-copy reads from read-only mappings of the segments.
//!
//! It **must never**:
//! - report an entry or a hard state durable (through [`Durable`]) before an `fdatasync` that
//!   was ordered after its write has completed;
//! - retry a failed `fsync` or continue after one ([`LogError::SyncFailed`] is fatal: the kernel
//!   may already have dropped the dirty pages, so a second `fsync` could succeed and lie);
//! - skip or truncate past a bad record that is followed by records proving it was durable
//!   ([`LogError::Corruption`] names the segment, offset and index instead);
//! - use a segment or state file of another cluster, node or group;
//! - rewrite bytes in place that a reader may be reading (truncation starts a new segment);
//! - allocate from a length read from disk before checking it against its `*_max`.
//!
//! ## Shape
//!
//! [`Log`] is driven by one owner thread (the log writer stage): [`Log::submit`] queues the
//! writes of one `Ready` (a conflicting suffix is replaced, then the hard state follows the
//! entries), [`Log::wait`] / [`Log::poll`] issue the group-commit `fdatasync` for everything
//! submitted since the last one (when none is running) and collect completions, and [`Durable`]
//! says which submit tokens and indexes are durable. Submitting a whole drained queue of readies
//! before waiting is what lets them share one `fdatasync`. [`LogReader`] reads durable entries from any thread.
//! [`Log::compact`] and [`Log::install_snapshot`] are synchronous control-plane operations.
//! [`ReadOnlyLog`] (and [`verify`]) read a stopped node's log for inspection without writing.
//!
//! ## Driving it (the log writer stage)
//!
//! ```no_run
//! use smr_log::{Log, LogConfig};
//! # fn next_ready() -> Option<smr_raft::Ready> { None }
//! # fn main() -> Result<(), smr_log::LogError> {
//! let (mut log, recovered) = Log::open("/var/lib/smr/group-0".as_ref(), LogConfig::new(7, 1, 0))?;
//! // Hand `recovered` (hard state, snapshot, last index) and the entries to the Raft core;
//! // `log.entries(..)` + `EntryRef::to_entry()` give them zero-copy.
//! let waker = log.waker()?; // the core's thread calls waker.wake() after queueing a ready
//! loop {
//!     while let Some(ready) = next_ready() {
//!         if let Some(chunk) = ready.snapshot_chunks.iter().find(|c| c.last) {
//!             log.install_snapshot(&chunk.meta)?; // after the state machine restored it
//!         }
//!         // A commit-only hard state (`sync == false`) may wait: the commit hint is lazy, and
//!         // writing the state file costs an fsync of its own.
//!         let hard_state = ready.hard_state.filter(|_| ready.sync);
//!         log.submit(ready.number, &ready.entries, hard_state)?;
//!     }
//!     let durable = log.wait()?; // sleeps until the disk or the waker has something
//!     // Every ready numbered <= durable.token is durable: send its persisted_messages and
//!     // call on_persisted(durable.token).
//!     # let _ = (durable, &waker); break;
//! }
//! # Ok(()) }
//! ```
//!
//! An error with [`LogError::is_fatal`] stops the process with [`LogError::exit_code`]; any
//! other error is a refusal that changed nothing (a full disk, a bad submit).
//!
//! ## Where this differs from a textbook log, and why
//!
//! - Every record claims the durable frontier at the time it was written; recovery uses the
//!   claims to tell a torn tail (cut) from corruption (stop). See `recovery.rs`.
//! - A conflicting suffix is never overwritten in place: the replacement goes into a new segment
//!   that overrides the older records from its first index on. In-place overwrites would leave
//!   stale records after a shorter new tail that recovery could chain back in.
//! - The `fdatasync` runs on the writer's own thread once the writes it covers have completed,
//!   not as an io_uring operation: the kernel hands an io_uring fsync to a worker thread, and
//!   that hand-off cost more than the sync blocking the writer (see `uring.rs`).
//! - Open syncs everything it recovered: after a process crash, writes never synced are still
//!   visible in the page cache, and must not be reported durable by the next process.
//!
//! ## Fault injection (tests only)
//!
//! Built with the cargo feature `fault-injection` (never in a release build), the log reads two
//! environment variables at [`Log::open`]; any other build refuses to open when one is set
//! ([`LogError::Config`] naming it), and an open with one set logs a warning.
//!
//! - `SMR_FAULT_SYNC_JOURNAL=<path>` ([`FAULT_SYNC_JOURNAL_ENV`]): journal every write before it
//!   is issued and every completed sync after its `fdatasync`, so that `fault::drop_unsynced`
//!   can emulate a power loss on the stopped node (a SIGKILL keeps the page cache; a power loss
//!   does not): it reverts every write no completed sync covered (all, a seeded subset, or all
//!   with the last torn at a sector).
//! - `SMR_FAULT_ACK_BEFORE_FSYNC=1` ([`FAULT_ACK_BEFORE_FSYNC_ENV`]): a planted durability bug:
//!   entries and hard states are reported durable once written, and no `fdatasync` is issued.
//!   The power-loss tests must report lost writes with it.
//!
//! See `fault.rs` for the journal's format.
//!
//! ## Files
//!
//! `dir/state` (two 4 KiB slots, see `state.rs`) and `dir/{sequence:020}.seg` segments
//! (`segment.rs` for the header, `record.rs` for records, `recovery.rs` for what a crash may
//! leave and how it is read back).

mod background;
mod config;
mod error;
mod fallback;
#[cfg(feature = "fault-injection")]
pub mod fault;
#[cfg(not(feature = "fault-injection"))]
mod fault;
mod housekeeping;
mod io;
mod log;
mod offline;
mod reader;
mod record;
mod recovery;
mod segment;
mod state;
mod uring;

#[cfg(test)]
mod tests;

pub use background::{BACKGROUND_NICE, PACED_CHUNK_BYTES, lower_thread_priority, write_paced, write_zeros_paced};
pub use config::{FORCE_FALLBACK_ENV, IoMode, LogConfig};
pub use error::{EXIT_CODE_CORRUPTION, EXIT_CODE_FOREIGN_DATA, EXIT_CODE_IO, EXIT_CODE_SYNC_FAILED, LogError};
pub use fault::{ACK_BEFORE_FSYNC_ENV as FAULT_ACK_BEFORE_FSYNC_ENV, SYNC_JOURNAL_ENV as FAULT_SYNC_JOURNAL_ENV};

/// True when this build has the test-only `fault-injection` feature (and so honours the
/// `SMR_FAULT_*` variables instead of refusing them).
pub const FAULT_INJECTION_BUILT: bool = cfg!(feature = "fault-injection");
pub use io::LogWaker;
pub use log::{Durable, Log, LogStats, Recovered};
pub use offline::{ReadOnlyLog, Verification, recorded_segment_bytes, verify};
pub use reader::{EntryRef, LogReader, stored_record_bytes};
