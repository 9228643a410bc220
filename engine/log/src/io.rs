//! The two I/O paths behind one small interface: io_uring (`uring.rs`) and the `pwrite` +
//! `fdatasync` fallback (`fallback.rs`).
//!
//! The log hands the backend two kinds of operations, each with an id, and later collects their
//! completions:
//!
//! - a **write** of a buffer at an offset of a file. The buffer is owned by the log until the
//!   write's completion is collected (buffers move into the operation and come back).
//! - a **sync job**: `fdatasync` every listed file, ordered after EVERY write submitted before
//!   the job; then, if given, write the state slot and `fdatasync` the state file, in that order.
//!   The job completes once all of it is done, or fails at its first failing step.

use std::fs::File;
use std::io;
use std::sync::Arc;

use crate::error::LogError;

/// One operation's completion.
#[derive(Debug)]
pub(crate) enum Completion {
    /// A write finished: bytes written (possibly short) or the error.
    Write { id: u64, result: io::Result<usize> },
    /// A sync job finished. On failure, `failed_path_index` names the failing file in the job's
    /// file list (`None` for the state file).
    Sync {
        id: u64,
        result: Result<(), (Option<usize>, io::Error)>,
    },
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

    /// Queues a sync job. At most one job is outstanding at a time (the log guarantees it).
    fn sync(&mut self, job: SyncJob) -> Result<(), LogError>;

    /// Submits what is queued and collects completions into `out`. With `block`, waits until at
    /// least one completion is available (the caller only blocks when something is outstanding).
    fn wait(&mut self, out: &mut Vec<Completion>, block: bool) -> Result<(), LogError>;

    /// A short name for logs and benchmark tables.
    fn name(&self) -> &'static str;
}
