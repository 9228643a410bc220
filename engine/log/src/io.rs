//! The two I/O paths behind one small interface: io_uring (`uring.rs`) and the `pwrite` +
//! `fdatasync` fallback (`fallback.rs`).
//!
//! The log hands the backend two kinds of operations, each with an id, and later collects their
//! completions:
//!
//! - a **write** of a buffer at an offset of a file. The buffer is owned by the log until the
//!   write's completion is collected (buffers move into the operation and come back).
//! - a **sync job**: `fdatasync` every listed file, ordered after EVERY write handed in before
//!   the job (both backends wait for those writes to complete first); then, if given, write the
//!   state slot and `fdatasync` the state file, in that order. The job completes once all of it
//!   is done, or fails at its first failing step.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::error::LogError;

/// One operation's completion.
#[derive(Debug)]
pub(crate) enum Completion {
    /// A write finished: bytes written (possibly short) or the error.
    Write { id: u64, result: io::Result<usize> },
    /// A sync job finished. On failure, `failed_path_index` names the failing file in the job's
    /// file list (`None` for the state file).
    Sync { id: u64, result: Result<(), (Option<usize>, io::Error)> },
    /// A [`crate::LogWaker`] was woken.
    Wake,
}

/// The state-file step of a sync job.
#[derive(Debug)]
pub(crate) struct StateWrite {
    pub(crate) file: Arc<File>,
    pub(crate) offset: u64,
    pub(crate) bytes: Vec<u8>,
}

/// A sync job (see the module comment for its ordering).
#[derive(Debug)]
pub(crate) struct SyncJob {
    pub(crate) id: u64,
    pub(crate) files: Vec<Arc<File>>,
    pub(crate) state: Option<StateWrite>,
}

impl SyncJob {
    /// Runs the job on this thread: `fdatasync` of each file, then the state write and its
    /// `fdatasync`. On failure, the index of the failing file in `files` (`None` for the state
    /// file) and the error.
    pub(crate) fn run(&self) -> Result<(), (Option<usize>, io::Error)> {
        for (i, file) in self.files.iter().enumerate() {
            file.sync_data().map_err(|e| (Some(i), e))?;
        }
        if let Some(state) = &self.state {
            state.file.write_all_at(&state.bytes, state.offset).map_err(|e| (None, e))?;
            state.file.sync_data().map_err(|e| (None, e))?;
        }
        Ok(())
    }
}

/// An I/O path.
pub(crate) trait Backend: Send + std::fmt::Debug {
    /// Queues a write of `len` bytes at `ptr` to `file` at `offset`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay valid and unmodified, and `file` open, until this write's
    /// completion has been returned by [`Backend::wait`].
    unsafe fn write(
        &mut self,
        id: u64,
        file: &Arc<File>,
        offset: u64,
        ptr: *const u8,
        len: usize,
    ) -> Result<(), LogError>;

    /// Runs a sync job on the calling thread, after every write handed in before it has
    /// completed; its completion is returned by the next [`Backend::wait`], after theirs.
    fn sync(&mut self, job: SyncJob) -> Result<(), LogError>;

    /// Submits what is queued and collects completions into `out`. With `block`, waits until at
    /// least one completion is available (the caller only blocks when something is outstanding).
    fn wait(&mut self, out: &mut Vec<Completion>, block: bool) -> Result<(), LogError>;

    /// Makes a waker that ends a blocking [`Backend::wait`] from another thread; from then on
    /// `wait` with `block` also blocks when nothing is outstanding (an idle log stage sleeps
    /// until there is work).
    fn waker(&mut self) -> Result<WakerInner, LogError>;

    /// A short name for logs and benchmark tables.
    fn name(&self) -> &'static str;

    /// Whether every write and sync completes within the call that issues it (nothing is ever
    /// in flight between calls).
    fn synchronous(&self) -> bool {
        false
    }
}

/// How a waker reaches its backend.
#[derive(Debug, Clone)]
pub(crate) enum WakerInner {
    /// io_uring: an eventfd the ring keeps a read armed on.
    Eventfd(Arc<std::os::fd::OwnedFd>),
    /// Fallback: the channel the sync thread reports on.
    Channel(std::sync::mpsc::SyncSender<Completion>),
}

/// Wakes the log's owner thread out of [`crate::Log::wait`], e.g. when the Raft core hands it a
/// new ready. Cheap to clone; `Send` and `Sync`.
#[derive(Debug, Clone)]
pub struct LogWaker {
    pub(crate) inner: WakerInner,
}

impl LogWaker {
    /// Wakes the owner thread (at most one pending wake is kept; extra wakes coalesce).
    pub fn wake(&self) {
        match &self.inner {
            WakerInner::Eventfd(fd) => {
                use std::os::fd::AsRawFd;
                let one: u64 = 1;
                // SAFETY: writes 8 bytes from a live u64 to an eventfd kept open by the Arc.
                // An error (counter saturated) means a wake is pending already: ignoring it is
                // the coalescing this method promises.
                let _ = unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
            }
            WakerInner::Channel(sender) => {
                // Full means a result or a wake is already waiting: the owner wakes anyway.
                let _ = sender.try_send(Completion::Wake);
            }
        }
    }
}
