//! The log's errors, in the three tiers of the style guide: a bug panics; an environmental stop
//! (fsync failure, corruption, a foreign file) is a fatal error the runtime turns into a distinct
//! exit code; an expected condition (no space, too large, not contiguous) is refused without
//! changing any state.

use std::io;
use std::path::PathBuf;

use smr_raft::Index;

/// Exit code for a failed fsync: the kernel may have dropped the dirty pages, so the process
/// stops before anything more is acknowledged, and recovery re-reads what is really on disk.
pub const EXIT_CODE_SYNC_FAILED: i32 = 75;
/// Exit code for corruption found on disk (mid-log corruption, a bad segment or state file).
pub const EXIT_CODE_CORRUPTION: i32 = 76;
/// Exit code for a data directory of another cluster, node or group.
pub const EXIT_CODE_FOREIGN_DATA: i32 = 77;
/// Exit code for any other I/O error the log cannot continue after.
pub const EXIT_CODE_IO: i32 = 74;

/// Everything that can go wrong in the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An `fdatasync` (or fsync of the directory) failed. FATAL: never retried.
    #[error(
        "fsync of {path} failed: {source}; stopping: a retried fsync could report data durable that the kernel dropped"
    )]
    SyncFailed { path: PathBuf, source: io::Error },
    /// The device is full: no new segment could be preallocated. Appends are refused; nothing
    /// durable is lost and the log accepts appends again once space is free.
    #[error(
        "no space left for a new log segment in {path}: appends are refused until space is freed (nothing durable was lost)"
    )]
    NoSpace { path: PathBuf },
    /// Any other I/O error. Fatal for writes.
    #[error("{op} of {path} failed: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    /// A bad record followed by valid ones, a bad segment header or state file: the log stops
    /// and never skips or truncates past it.
    #[error("corruption in {path} at offset {offset} (index {index}): {detail}")]
    Corruption { path: PathBuf, offset: u64, index: Index, detail: String },
    /// A segment or state file written by another cluster, node or group.
    #[error(
        "{path} belongs to cluster {cluster_id}, node {node_id}, group {group_id}, not to this log (cluster {expected_cluster_id}, node {expected_node_id}, group {expected_group_id}); refusing to use it"
    )]
    Foreign {
        path: PathBuf,
        cluster_id: u64,
        node_id: u64,
        group_id: u64,
        expected_cluster_id: u64,
        expected_node_id: u64,
        expected_group_id: u64,
    },
    /// A configuration field is out of range.
    #[error("log config: {field}: {reason}")]
    Config { field: &'static str, reason: String },
    /// io_uring was required (`IoMode::Uring`) but could not be set up.
    #[error("io_uring is not available: {source}")]
    UringUnavailable { source: io::Error },
    /// An entry's payload is larger than `entry_bytes_max`, or a submit larger than
    /// `submit_bytes_max`. Nothing was written.
    #[error("{what} of {bytes} bytes exceeds {limit_name} = {limit}")]
    TooLarge { what: &'static str, bytes: u64, limit_name: &'static str, limit: u64 },
    /// Entries that do not continue the log (a gap, indexes out of order, a term going back).
    /// Nothing was written.
    #[error("entries do not continue the log: {detail}")]
    NotContiguous { detail: String },
    /// A submit token that does not increase. Nothing was written.
    #[error("submit token {token} is not above the previous one {previous}")]
    TokenOrder { token: u64, previous: u64 },
    /// A read of an index outside what is durable and not compacted.
    #[error("index {index} is not available: the log holds {first}..={last} durably")]
    Unavailable { index: Index, first: Index, last: Index },
    /// An earlier fatal error stopped the log; nothing more is written or acknowledged.
    /// `exit_code` is the first fatal error's.
    #[error("the log stopped after a fatal error: {reason}")]
    Stopped { reason: String, exit_code: i32 },
    /// Another process (or another `Log` in this one) has this directory open.
    #[error("{path} is locked by another open log; two writers would corrupt it")]
    Locked { path: PathBuf },
}

impl LogError {
    /// True for errors after which the process must stop (the runtime exits with
    /// [`LogError::exit_code`]); false for refusals after which the log is unchanged.
    pub fn is_fatal(&self) -> bool {
        self.exit_code().is_some()
    }

    /// The distinct exit code for a fatal error, `None` for a refusal.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            LogError::SyncFailed { .. } => Some(EXIT_CODE_SYNC_FAILED),
            LogError::Stopped { exit_code, .. } => Some(*exit_code),
            LogError::Corruption { .. } => Some(EXIT_CODE_CORRUPTION),
            LogError::Foreign { .. } => Some(EXIT_CODE_FOREIGN_DATA),
            LogError::Io { .. } | LogError::UringUnavailable { .. } | LogError::Locked { .. } => Some(EXIT_CODE_IO),
            LogError::NoSpace { .. }
            | LogError::Config { .. }
            | LogError::TooLarge { .. }
            | LogError::NotContiguous { .. }
            | LogError::TokenOrder { .. }
            | LogError::Unavailable { .. } => None,
        }
    }

    /// The error for a helper thread that is gone (it only ends when the log drops it, so this
    /// means it panicked).
    pub(crate) fn thread_gone(which: &str) -> LogError {
        LogError::Stopped { reason: format!("the {which} thread is gone"), exit_code: EXIT_CODE_IO }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> LogError {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return LogError::NoSpace { path: path.into() };
        }
        LogError::Io { op, path: path.into(), source }
    }
}
