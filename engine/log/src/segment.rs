//! Segment files: naming, the header, preallocation, reuse, and the read-only mapping.
//!
//! A segment is a file of exactly `segment_bytes`, named `{sequence:020}.seg`. Its first 4096
//! bytes hold the header (72 bytes used, the rest zero), so records start page aligned. A
//! segment is created as `{sequence:020}.seg.tmp`, its header written and the rest zero-filled
//! with real writes (not `fallocate`, whose unwritten extents would turn the first append into a
//! metadata change), fsynced, renamed to its final name and the directory fsynced. So a file with
//! a final name always has a durable header and every block written: an `fdatasync` after an
//! append never has size or extent metadata to commit, and a stale `.tmp` is simply deleted at
//! open.
//!
//! A segment a compaction dropped can be **reused** instead ([`recycle_segment`]): renamed to
//! the new `.tmp`, its header rewritten with the new sequence and the [`Fill::Recycled`] flag,
//! fsynced, renamed and the directory fsynced, as a new one. Its blocks are written already, so
//! appends stay free of metadata, and the 64 MiB of zeroes (half the bytes the disk writes at
//! full load, and 4-8 % of the machine's CPU) are never written. What follows the last record is
//! then the earlier use's bytes, not zeroes. Every use of a file gets a new random **salt** in
//! its header, which seeds its records' CRCs and tags them (`record.rs`): nothing written before
//! the salt was drawn, records or client payloads, reads as a record of this use, and recovery
//! reads such a segment accordingly (`recovery.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::background::write_zeros_paced;
use crate::config::LogConfig;
use crate::error::LogError;
use crate::record::SegmentKey;
use crate::recovery::SegmentImage;

/// Bytes reserved for the segment header at the start of every segment.
pub(crate) const SEGMENT_HEADER_BYTES: u64 = 4096;
const SEGMENT_MAGIC: [u8; 8] = *b"SMRLOGSG";
/// Version of the segment and record format. Bump on any layout change. 2: the header's `flags`,
/// record CRCs seeded with the segment's sequence. 3: the header's `salt`, record CRCs seeded
/// with the sequence and the salt, and records' `tag`. The version is checked before the
/// header's CRC, whose extent may differ between versions.
pub(crate) const FORMAT_VERSION: u32 = 3;
const SEGMENT_SUFFIX: &str = ".seg";
const TEMP_SUFFIX: &str = ".seg.tmp";

/// The segment header as laid out on disk (little-endian), documented and layout-checked here;
/// encoded and decoded through explicit offsets.
#[repr(C)]
#[allow(dead_code)] // Never constructed: the layout check below is its purpose.
struct SegmentHeaderLayout {
    magic: [u8; 8],
    format_version: u32,
    crc: u32,
    cluster_id: u64,
    node_id: u64,
    group_id: u64,
    sequence: u64,
    segment_bytes: u64,
    flags: u64,
    salt: u64,
}
const SEGMENT_HEADER_USED_BYTES: usize = 72;
const _: () = assert!(size_of::<SegmentHeaderLayout>() == SEGMENT_HEADER_USED_BYTES);
/// Bit of `flags`: the file is a reused segment ([`Fill::Recycled`]).
const FLAG_RECYCLED: u64 = 1;

/// What a segment holds where nothing has been written in its current use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Zeroes: created and zero-filled for this sequence.
    Zeros,
    /// The bytes of the file's earlier uses: a compacted segment reused under this sequence.
    Recycled,
}

/// The file name of segment `sequence`.
pub(crate) fn segment_file_name(sequence: u64) -> String {
    format!("{sequence:020}{SEGMENT_SUFFIX}")
}

pub(crate) fn segment_path(dir: &Path, sequence: u64) -> PathBuf {
    dir.join(segment_file_name(sequence))
}

/// The header bytes of the segment `key` names (the full 4096-byte block).
pub(crate) fn encode_header(config: &LogConfig, key: SegmentKey, fill: Fill) -> Vec<u8> {
    let sequence = key.sequence;
    let mut block = vec![0u8; SEGMENT_HEADER_BYTES as usize];
    block[0..8].copy_from_slice(&SEGMENT_MAGIC);
    block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    block[16..24].copy_from_slice(&config.cluster_id.to_le_bytes());
    block[24..32].copy_from_slice(&config.node_id.to_le_bytes());
    block[32..40].copy_from_slice(&config.group_id.to_le_bytes());
    block[40..48].copy_from_slice(&sequence.to_le_bytes());
    block[48..56].copy_from_slice(&config.segment_bytes.to_le_bytes());
    let flags = match fill {
        Fill::Zeros => 0,
        Fill::Recycled => FLAG_RECYCLED,
    };
    block[56..64].copy_from_slice(&flags.to_le_bytes());
    block[64..72].copy_from_slice(&key.salt.to_le_bytes());
    let crc = header_crc(&block);
    block[12..16].copy_from_slice(&crc.to_le_bytes());
    block
}

fn header_crc(block: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&block[0..12]), &block[16..SEGMENT_HEADER_USED_BYTES])
}

fn read_u64(block: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(block[at..at + 8].try_into().expect("8 bytes"))
}

/// Why a segment of another format version is refused.
fn version_refused(version: u32) -> String {
    format!(
        "segment format version {version}, this build reads only {FORMAT_VERSION}: the log was written by another \
         smr version (there is no in-place upgrade; start this node empty and let it catch up from the others)"
    )
}

/// Checks a segment's header against the config and the sequence its name claims; returns its
/// key and what it holds past its records.
///
/// # Errors
/// [`LogError::Foreign`] for a segment of another cluster, node or group (refused by name);
/// [`LogError::Corruption`] for a bad magic, version, CRC, size, sequence or flags.
pub(crate) fn check_header(
    path: &Path,
    bytes: &[u8],
    config: &LogConfig,
    sequence: u64,
) -> Result<(SegmentKey, Fill), LogError> {
    let corrupt = |detail: String| LogError::Corruption { path: path.to_path_buf(), offset: 0, index: 0, detail };
    if (bytes.len() as u64) < SEGMENT_HEADER_BYTES {
        return Err(corrupt(format!("segment is {} bytes, shorter than its header", bytes.len())));
    }
    let block = &bytes[..SEGMENT_HEADER_BYTES as usize];
    if block[0..8] != SEGMENT_MAGIC {
        return Err(corrupt("segment header magic is wrong".into()));
    }
    // The version first: another version's header may have another CRC extent.
    let version = u32::from_le_bytes(block[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(corrupt(version_refused(version)));
    }
    let crc = u32::from_le_bytes(block[12..16].try_into().expect("4 bytes"));
    if crc != header_crc(block) {
        return Err(corrupt("segment header CRC mismatch".into()));
    }
    let (cluster_id, node_id, group_id) = (read_u64(block, 16), read_u64(block, 24), read_u64(block, 32));
    if (cluster_id, node_id, group_id) != (config.cluster_id, config.node_id, config.group_id) {
        return Err(LogError::Foreign {
            path: path.to_path_buf(),
            cluster_id,
            node_id,
            group_id,
            expected_cluster_id: config.cluster_id,
            expected_node_id: config.node_id,
            expected_group_id: config.group_id,
        });
    }
    let header_sequence = read_u64(block, 40);
    if header_sequence != sequence {
        return Err(corrupt(format!("header says sequence {header_sequence}, the file name {sequence}")));
    }
    let segment_bytes = read_u64(block, 48);
    if segment_bytes != bytes.len() as u64 {
        return Err(corrupt(format!(
            "header says {segment_bytes} bytes, the file has {} (segment_bytes changed, or the file was cut)",
            bytes.len()
        )));
    }
    let fill = match read_u64(block, 56) {
        0 => Fill::Zeros,
        FLAG_RECYCLED => Fill::Recycled,
        flags => return Err(corrupt(format!("unknown header flags {flags:#x}"))),
    };
    Ok((SegmentKey { sequence, salt: read_u64(block, 64) }, fill))
}

/// The `segment_bytes` recorded in the header of the segment at `path`, after checking the
/// header's magic, CRC and format version (not its owner: the caller learns the size before it
/// has a config to check against).
///
/// # Errors
/// [`LogError::Corruption`] for a short file or a bad header; [`LogError::Io`].
pub(crate) fn recorded_segment_bytes(path: &Path) -> Result<u64, LogError> {
    use std::io::Read;
    let corrupt = |detail: String| LogError::Corruption { path: path.to_path_buf(), offset: 0, index: 0, detail };
    let file = File::open(path).map_err(|e| LogError::io("open", path, e))?;
    let mut block = Vec::with_capacity(SEGMENT_HEADER_BYTES as usize);
    file.take(SEGMENT_HEADER_BYTES).read_to_end(&mut block).map_err(|e| LogError::io("read", path, e))?;
    if (block.len() as u64) < SEGMENT_HEADER_BYTES {
        return Err(corrupt(format!("segment is {} bytes, shorter than its header", block.len())));
    }
    if block[0..8] != SEGMENT_MAGIC {
        return Err(corrupt("segment header magic is wrong".into()));
    }
    // The version first: another version's header may have another CRC extent.
    let version = u32::from_le_bytes(block[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(corrupt(version_refused(version)));
    }
    let crc = u32::from_le_bytes(block[12..16].try_into().expect("4 bytes"));
    if crc != header_crc(&block) {
        return Err(corrupt("segment header CRC mismatch".into()));
    }
    Ok(read_u64(&block, 48))
}

/// Maps segment `sequence` read-only (the file is opened read-only too) and checks its header:
/// for inspecting a stopped node's log without the write access [`SegmentFile::open`] needs.
///
/// # Errors
/// As [`SegmentFile::open`].
pub(crate) fn map_read_only(
    path: &Path,
    sequence: u64,
    config: &LogConfig,
) -> Result<(Arc<Mmap>, SegmentKey, Fill), LogError> {
    let file = File::open(path).map_err(|e| LogError::io("open", path, e))?;
    let length = file.metadata().map_err(|e| LogError::io("stat", path, e))?.len();
    if length != config.segment_bytes {
        return Err(LogError::Corruption {
            path: path.to_path_buf(),
            offset: 0,
            index: 0,
            detail: format!("segment is {length} bytes, segment_bytes is {}", config.segment_bytes),
        });
    }
    // SAFETY: the mapping is read-only and shared. The caller holds the directory's lock shared,
    // which excludes the log writer (the only process that writes segment files), and the log
    // never shrinks a segment file, so the bytes neither change nor disappear under the mapping.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| LogError::io("mmap", path, e))?;
    let (key, fill) = check_header(path, &map, config, sequence)?;
    Ok((Arc::new(map), key, fill))
}

/// Deletes the `.tmp` files of interrupted preallocations: never renamed, so they never held a
/// record. Only at open, before the preallocator starts.
pub(crate) fn remove_temp_files(dir: &Path) -> Result<(), LogError> {
    let entries = fs::read_dir(dir).map_err(|e| LogError::io("read_dir", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io("read_dir", dir, e))?;
        if entry.file_name().to_str().is_some_and(|name| name.ends_with(TEMP_SUFFIX)) {
            fs::remove_file(entry.path()).map_err(|e| LogError::io("remove", entry.path(), e))?;
        }
    }
    Ok(())
}

/// Every final-named segment in `dir`, sorted by sequence.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| LogError::io("read_dir", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io("read_dir", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) else {
            continue;
        };
        if stem.len() != 20 {
            continue;
        }
        let Ok(sequence) = stem.parse::<u64>() else {
            continue;
        };
        found.push((sequence, entry.path()));
    }
    found.sort_unstable();
    Ok(found)
}

/// Creates segment `sequence` fully zero-filled and durable (file and directory entry).
///
/// # Errors
/// [`LogError::NoSpace`] when the device is full (the partial `.tmp` is removed);
/// [`LogError::SyncFailed`] when an fsync fails; [`LogError::Io`] otherwise.
pub(crate) fn create_segment(dir: &Path, config: &LogConfig, sequence: u64) -> Result<PathBuf, LogError> {
    let temp = dir.join(format!("{sequence:020}{TEMP_SUFFIX}"));
    let path = segment_path(dir, sequence);
    let result = fill_segment(&temp, config, sequence);
    if let Err(error) = result {
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    fs::rename(&temp, &path).map_err(|e| LogError::io("rename", &path, e))?;
    sync_dir(dir)?;
    Ok(path)
}

fn fill_segment(temp: &Path, config: &LogConfig, sequence: u64) -> Result<(), LogError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(temp)
        .map_err(|e| LogError::io("create", temp, e))?;
    let key = SegmentKey { sequence, salt: fresh_salt(temp)? };
    file.write_all(&encode_header(config, key, Fill::Zeros)).map_err(|e| LogError::io("write", temp, e))?;
    // Paced: the log's group commits on the same disk must not wait behind 64 MiB of zeroes.
    write_zeros_paced(&mut file, SEGMENT_HEADER_BYTES, config.segment_bytes - SEGMENT_HEADER_BYTES)
        .map_err(|e| LogError::io("write", temp, e))?;
    file.sync_all().map_err(|e| sync_error(temp, e))?;
    Ok(())
}

/// Reuses the compacted segment file at `old` as segment `sequence`: renamed to the new `.tmp`,
/// its header rewritten (with [`Fill::Recycled`]) and synced, renamed to its final name and the
/// directory synced, so that a file with a final name always has a durable header, as
/// [`create_segment`] leaves it. A crash part way leaves the `.tmp` (deleted at open) or the old
/// name (below the log's base, deleted at open).
///
/// # Errors
/// [`LogError::Io`] when `old` is not a file of `segment_bytes` or a step fails (the caller then
/// creates the segment afresh); [`LogError::SyncFailed`] when an fsync fails.
pub(crate) fn recycle_segment(dir: &Path, config: &LogConfig, sequence: u64, old: &Path) -> Result<PathBuf, LogError> {
    let length = fs::metadata(old).map_err(|e| LogError::io("stat", old, e))?.len();
    if length != config.segment_bytes {
        let detail = format!("{length} bytes, segment_bytes is {}", config.segment_bytes);
        return Err(LogError::io("reuse", old, std::io::Error::other(detail)));
    }
    let temp = dir.join(format!("{sequence:020}{TEMP_SUFFIX}"));
    let path = segment_path(dir, sequence);
    fs::rename(old, &temp).map_err(|e| LogError::io("rename", &temp, e))?;
    let rewrite = || -> Result<(), LogError> {
        let file = OpenOptions::new().write(true).open(&temp).map_err(|e| LogError::io("open", &temp, e))?;
        let key = SegmentKey { sequence, salt: fresh_salt(&temp)? };
        file.write_all_at(&encode_header(config, key, Fill::Recycled), 0)
            .map_err(|e| LogError::io("write", &temp, e))?;
        file.sync_data().map_err(|e| sync_error(&temp, e))
    };
    if let Err(error) = rewrite() {
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    fs::rename(&temp, &path).map_err(|e| LogError::io("rename", &path, e))?;
    sync_dir(dir)?;
    Ok(path)
}

/// A new random salt for the use of the segment file at `path`: unknown to anyone who wrote to
/// the file before. (`getrandom` blocks only until the kernel's pool is first ready, at boot.)
fn fresh_salt(path: &Path) -> Result<u64, LogError> {
    let mut salt = [0u8; 8];
    let mut filled = 0;
    while filled < salt.len() {
        // SAFETY: the pointer and length name the unfilled, writable rest of `salt`.
        let got = unsafe { libc::getrandom(salt[filled..].as_mut_ptr().cast(), salt.len() - filled, 0) };
        if got >= 0 {
            filled += got as usize;
            continue;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(LogError::io("getrandom (a segment's salt)", path, error));
        }
    }
    Ok(u64::from_le_bytes(salt))
}

/// Maps an fsync error: ENOSPC stays a refusal (some file systems report it at sync time for
/// delayed allocation), anything else is the fatal [`LogError::SyncFailed`].
pub(crate) fn sync_error(path: &Path, source: std::io::Error) -> LogError {
    if source.raw_os_error() == Some(libc::ENOSPC) {
        return LogError::NoSpace { path: path.to_path_buf() };
    }
    LogError::SyncFailed { path: path.to_path_buf(), source }
}

/// fsyncs a directory so that creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    let handle = File::open(dir).map_err(|e| LogError::io("open", dir, e))?;
    handle.sync_all().map_err(|e| LogError::SyncFailed { path: dir.to_path_buf(), source: e })
}

/// An open segment: its file (for writes) and a read-only shared mapping (for reads).
#[derive(Debug)]
pub(crate) struct SegmentFile {
    pub(crate) sequence: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) map: Arc<Mmap>,
    pub(crate) key: SegmentKey,
    pub(crate) fill: Fill,
}

impl SegmentFile {
    /// Opens and maps segment `sequence`, checking its header.
    pub(crate) fn open(path: &Path, sequence: u64, config: &LogConfig) -> Result<SegmentFile, LogError> {
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| LogError::io("open", path, e))?;
        let length = file.metadata().map_err(|e| LogError::io("stat", path, e))?.len();
        if length != config.segment_bytes {
            return Err(LogError::Corruption {
                path: path.to_path_buf(),
                offset: 0,
                index: 0,
                detail: format!("segment is {length} bytes, segment_bytes is {}", config.segment_bytes),
            });
        }
        // SAFETY: the mapping is read-only and shared. The only writer of the file is this log
        // (through `pwrite`/io_uring on the same page cache), and it never writes bytes that a
        // reader may be reading: readers only read records the writer has completed, and
        // completed records are never rewritten in place (truncation starts a new segment,
        // recovery zeroes only bytes past the recovered end before any reader exists). The file
        // is never shrunk while mapped, so no access can fault with SIGBUS.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| LogError::io("mmap", path, e))?;
        let (key, fill) = check_header(path, &map, config, sequence)?;
        Ok(SegmentFile { sequence, path: path.to_path_buf(), file, map: Arc::new(map), key, fill })
    }

    /// Its bytes, as recovery reads them.
    pub(crate) fn image(&self) -> SegmentImage<'_> {
        SegmentImage {
            sequence: self.sequence,
            salt: self.key.salt,
            path: &self.path,
            bytes: &self.map[..],
            fill: self.fill,
        }
    }

    /// Writes `bytes` at `offset` synchronously (used off the hot path: recovery's zeroing).
    pub(crate) fn write_at(&self, bytes: &[u8], offset: u64) -> Result<(), LogError> {
        self.file.write_all_at(bytes, offset).map_err(|e| LogError::io("pwrite", &self.path, e))
    }

    pub(crate) fn sync(&self) -> Result<(), LogError> {
        self.file.sync_data().map_err(|e| sync_error(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LogConfig {
        let mut config = LogConfig::new(7, 2, 1);
        config.segment_bytes = 16 << 10;
        config.entry_bytes_max = 4 << 10;
        config.submit_bytes_max = 8 << 10;
        config
    }

    #[test]
    fn segment_of_another_node_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = create_segment(dir.path(), &config(), 5).expect("create");
        let mut other = config();
        other.node_id = 3;
        let error = SegmentFile::open(&path, 5, &other).unwrap_err();
        assert!(matches!(error, LogError::Foreign { .. }), "{error}");
        assert!(error.to_string().contains(&segment_file_name(5)), "{error}");
    }

    #[test]
    fn flipped_segment_header_bit_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = create_segment(dir.path(), &config(), 1).expect("create");
        let mut bytes = fs::read(&path).expect("read");
        bytes[41] ^= 4;
        fs::write(&path, &bytes).expect("write");
        let error = SegmentFile::open(&path, 1, &config()).unwrap_err();
        assert!(matches!(error, LogError::Corruption { .. }), "{error}");
    }

    #[test]
    fn a_reused_segment_keeps_its_blocks_and_says_so_in_its_header() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let old = create_segment(dir.path(), &config(), 1).expect("create");
        File::options().write(true).open(&old).expect("open").write_all_at(b"records", 4096).expect("write");
        let inode = fs::metadata(&old).expect("stat").ino();
        let old_salt = SegmentFile::open(&old, 1, &config()).expect("open").key.salt;
        let path = recycle_segment(dir.path(), &config(), 9, &old).expect("reuse");
        assert!(!old.exists());
        assert_eq!(path, segment_path(dir.path(), 9));
        assert_eq!(fs::metadata(&path).expect("stat").ino(), inode, "the same file, renamed");
        let segment = SegmentFile::open(&path, 9, &config()).expect("open");
        assert_eq!(segment.fill, Fill::Recycled);
        assert_ne!(segment.key.salt, old_salt, "a new use draws a new salt");
        assert_eq!(&segment.map[4096..4103], b"records", "the earlier use's bytes stay");
        let fresh = create_segment(dir.path(), &config(), 10).expect("create");
        assert_eq!(SegmentFile::open(&fresh, 10, &config()).expect("open").fill, Fill::Zeros);
        // A file of another size is not reused, and stays where it was.
        let short = dir.path().join(segment_file_name(2));
        fs::write(&short, vec![0u8; 8192]).expect("write");
        recycle_segment(dir.path(), &config(), 11, &short).expect_err("wrong size");
        assert!(short.exists() && !segment_path(dir.path(), 11).exists());
    }

    #[test]
    fn a_segment_of_another_format_version_is_refused_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = create_segment(dir.path(), &config(), 1).expect("create");
        // A version-2 header: 64 bytes under its CRC, no salt.
        let mut block = encode_header(&config(), SegmentKey { sequence: 1, salt: 0 }, Fill::Zeros);
        block[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&block[0..12]), &block[16..64]);
        block[12..16].copy_from_slice(&crc.to_le_bytes());
        File::options().write(true).open(&path).expect("open").write_all_at(&block, 0).expect("write");
        let error = SegmentFile::open(&path, 1, &config()).unwrap_err().to_string();
        assert!(
            error.contains("format version 2, this build reads only 3") && error.contains("no in-place upgrade"),
            "{error}"
        );
        let error = recorded_segment_bytes(&path).unwrap_err().to_string();
        assert!(error.contains("format version 2"), "{error}");
    }

    #[test]
    fn unknown_header_flags_are_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = create_segment(dir.path(), &config(), 1).expect("create");
        let mut block = encode_header(&config(), SegmentKey { sequence: 1, salt: 5 }, Fill::Zeros);
        block[56] = 2;
        let crc = header_crc(&block);
        block[12..16].copy_from_slice(&crc.to_le_bytes());
        File::options().write(true).open(&path).expect("open").write_all_at(&block, 0).expect("write");
        let error = SegmentFile::open(&path, 1, &config()).unwrap_err();
        assert!(error.to_string().contains("unknown header flags 0x2"), "{error}");
    }

    #[test]
    fn interrupted_preallocation_leaves_no_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(format!("{:020}{TEMP_SUFFIX}", 3)), b"partial").expect("write");
        create_segment(dir.path(), &config(), 1).expect("create");
        remove_temp_files(dir.path()).expect("remove");
        let listed = list_segments(dir.path()).expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, 1);
        assert_eq!(fs::read_dir(dir.path()).expect("read_dir").count(), 1, "the .tmp is gone");
    }
}
