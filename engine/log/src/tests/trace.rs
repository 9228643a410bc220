//! The write/sync trace the log records under test, for crash-state tests.

/// Which file a traced write went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum FileId {
    Segment(u64),
    State,
}

/// One traced operation, in the order the log issued or observed it.
#[derive(Clone, Debug)]
pub(crate) enum TraceOp {
    /// A write handed to the I/O path.
    Write { file: FileId, offset: u64, bytes: Vec<u8> },
    /// A sync job issued: it covers every earlier write to `files` (including a state write
    /// traced just before it).
    SyncIssued { job: u64, files: Vec<FileId> },
    /// The job completed successfully.
    SyncDone { job: u64 },
    /// The log reported entries through `index` and submits through `token` durable (also
    /// traced when a truncation lowers the watermark).
    Durable { index: u64, token: u64 },
    /// A marker the test inserts between its own steps.
    Mark,
}
