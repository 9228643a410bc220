//! Every knob and limit of the log, validated once at open.

use smr_raft::{ClusterId, GroupId, NodeId};

use crate::error::LogError;
use crate::segment::SEGMENT_HEADER_BYTES;

/// Environment variable that forces the `pwritev` + `fdatasync` fallback when set to `1`, so
/// that both paths can be tested and benchmarked on a machine that has io_uring.
pub const FORCE_FALLBACK_ENV: &str = "SMR_LOG_FORCE_FALLBACK";

/// Which I/O path the log writes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// io_uring when the kernel allows it and the file system takes buffered writes without
    /// blocking (probed at open: XFS does), else the fallback, said once at open (io_uring
    /// missing, or ext4, btrfs or tmpfs on Linux 6.18, where io_uring would hand every write to
    /// a worker thread); the fallback is also chosen when [`FORCE_FALLBACK_ENV`] is `1`.
    Auto,
    /// io_uring or an error at open.
    Uring,
    /// `pwrite` and `fdatasync` on the writer's thread.
    Fallback,
}

/// Configuration of one log (one group's log on one node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Written into every segment and the state file; a file of another cluster is refused.
    pub cluster_id: ClusterId,
    /// This node; never 0.
    pub node_id: NodeId,
    /// The Raft group this log belongs to.
    pub group_id: GroupId,
    /// Size of every segment file, header included. A multiple of 4096.
    pub segment_bytes: u64,
    /// Largest payload of one entry. Checked on append and on every record read from disk before
    /// anything is allocated or read past the header.
    pub entry_bytes_max: u64,
    /// Most bytes one `submit` may carry (the staging buffer it is copied into).
    pub submit_bytes_max: u64,
    /// Most writes submitted and not yet completed; `submit` waits for completions beyond it.
    pub inflight_writes_max: u32,
    /// Most submits not yet durable; `submit` waits for the disk beyond it. Their writes
    /// complete quickly, so without this bound a caller faster than `fdatasync` could queue
    /// without limit behind one sync.
    pub pending_submits_max: u32,
    /// Empty segments kept preallocated ahead of the writer.
    pub spare_segments_max: u32,
    /// Compacted segments kept to be reused as new ones (renamed, header rewritten) instead of
    /// deleted; a new segment is zero-filled only when none is left. 0 zero-fills every segment.
    /// Each takes `segment_bytes` of disk until reused.
    pub recycled_segments_max: u32,
    /// Which I/O path to use.
    pub io_mode: IoMode,
}

impl LogConfig {
    /// Defaults for production: 64 MiB segments, 16 MiB entries, 64 MiB per submit, two spare
    /// segments (one is always being consumed while the next is made), and up to four compacted
    /// segments kept for reuse.
    pub fn new(cluster_id: ClusterId, node_id: NodeId, group_id: GroupId) -> LogConfig {
        LogConfig {
            cluster_id,
            node_id,
            group_id,
            segment_bytes: 64 << 20,
            entry_bytes_max: 16 << 20,
            submit_bytes_max: 64 << 20,
            inflight_writes_max: 256,
            pending_submits_max: 4096,
            spare_segments_max: 2,
            recycled_segments_max: 4,
            io_mode: IoMode::Auto,
        }
    }

    /// Checks every field and their combinations.
    ///
    /// # Errors
    /// [`LogError::Config`] naming the first bad field.
    pub fn validate(&self) -> Result<(), LogError> {
        let bad = |field: &'static str, reason: String| Err(LogError::Config { field, reason });
        if self.node_id == 0 {
            return bad("node_id", "0 is never a valid node id".into());
        }
        if !self.segment_bytes.is_multiple_of(4096) || self.segment_bytes < 2 * SEGMENT_HEADER_BYTES {
            return bad(
                "segment_bytes",
                format!("{} must be a multiple of 4096 and at least 8192", self.segment_bytes),
            );
        }
        // Record offsets are claimed in 16-byte units in a u32 (see record.rs): 64 GiB.
        if self.segment_bytes > 64 << 30 {
            return bad("segment_bytes", format!("{} exceeds 64 GiB", self.segment_bytes));
        }
        let record_room = self.segment_bytes - SEGMENT_HEADER_BYTES;
        let largest_record = crate::record::record_bytes(self.entry_bytes_max as usize) as u64;
        if self.entry_bytes_max > u64::from(u32::MAX) || largest_record > record_room {
            return bad(
                "entry_bytes_max",
                format!(
                    "{} does not fit one record in a segment of {} bytes",
                    self.entry_bytes_max, self.segment_bytes
                ),
            );
        }
        if self.submit_bytes_max < largest_record {
            return bad(
                "submit_bytes_max",
                format!("{} is below one largest record ({largest_record} bytes)", self.submit_bytes_max),
            );
        }
        if self.submit_bytes_max > 1 << 30 {
            return bad("submit_bytes_max", format!("{} exceeds 1 GiB", self.submit_bytes_max));
        }
        if self.inflight_writes_max == 0 || self.inflight_writes_max > 4096 {
            return bad("inflight_writes_max", format!("{} is not in 1..=4096", self.inflight_writes_max));
        }
        if self.pending_submits_max == 0 || self.pending_submits_max > 1 << 20 {
            return bad("pending_submits_max", format!("{} is not in 1..=1048576", self.pending_submits_max));
        }
        if self.spare_segments_max == 0 || self.spare_segments_max > 64 {
            return bad("spare_segments_max", format!("{} is not in 1..=64", self.spare_segments_max));
        }
        if self.recycled_segments_max > 64 {
            return bad("recycled_segments_max", format!("{} is not in 0..=64", self.recycled_segments_max));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        LogConfig::new(1, 1, 0).validate().expect("defaults are valid");
    }

    #[test]
    fn bad_fields_are_named() {
        let mut config = LogConfig::new(1, 1, 0);
        config.segment_bytes = 5000;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("segment_bytes"), "{error}");
        let mut config = LogConfig::new(1, 1, 0);
        config.entry_bytes_max = config.segment_bytes;
        assert!(config.validate().unwrap_err().to_string().contains("entry_bytes_max"));
        let mut config = LogConfig::new(1, 0, 0);
        config.node_id = 0;
        assert!(config.validate().unwrap_err().to_string().contains("node_id"));
    }
}
