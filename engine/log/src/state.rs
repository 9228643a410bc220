//! The state file: term, vote and commit hint (the Raft `HardState`) and the log's durable base
//! (the snapshot it starts after, and the first segment that belongs to it).
//!
//! The file holds two 4096-byte slots. Each update writes the whole state, with a generation one
//! above the current one, into the slot the current state is NOT in, then `fdatasync`s. A crash
//! mid-write can only tear the slot being written; the other still holds the previous state,
//! which is exactly what a crash before the write completes must yield. On open, the valid slot
//! with the highest generation wins. The file is created full size and fsynced once, so an
//! update never changes its size or extents.
//!
//! Limitation, stated because it is the price of the scheme: a corruption of the newest slot
//! after it was reported durable cannot be told from a torn write, and the state falls back to
//! the previous one (one vote or term older). Both slots bad stops the open with an error.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use smr_raft::{HardState, Index, Term};

use crate::config::LogConfig;
use crate::error::LogError;
use crate::segment::{sync_dir, sync_error};

pub(crate) const STATE_FILE_NAME: &str = "state";
const STATE_MAGIC: [u8; 8] = *b"SMRLOGST";
/// Version of the state file's layout (the segments' is `segment::FORMAT_VERSION`).
const STATE_FORMAT_VERSION: u32 = 1;
pub(crate) const STATE_SLOT_BYTES: u64 = 4096;

/// The slot as laid out on disk (little-endian), layout-checked here, encoded through offsets.
#[repr(C)]
#[allow(dead_code)] // Never constructed: the layout check below is its purpose.
struct StateSlotLayout {
    magic: [u8; 8],
    format_version: u32,
    crc: u32,
    generation: u64,
    cluster_id: u64,
    node_id: u64,
    group_id: u64,
    term: u64,
    vote: u64,
    commit: u64,
    snapshot_index: u64,
    snapshot_term: u64,
    segment_sequence_min: u64,
}
const STATE_SLOT_USED_BYTES: usize = 96;
const _: () = assert!(size_of::<StateSlotLayout>() == STATE_SLOT_USED_BYTES);

/// What the state file keeps durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DurableState {
    /// Term, vote and commit hint.
    pub(crate) hard_state: HardState,
    /// The log starts after this index (0 for a log that was never compacted).
    pub(crate) snapshot_index: Index,
    /// Term of the entry at `snapshot_index`.
    pub(crate) snapshot_term: Term,
    /// Segments with a lower sequence belong to a discarded prefix or log and are deleted at open.
    pub(crate) segment_sequence_min: u64,
}

fn encode_slot(config: &LogConfig, state: &DurableState, generation: u64) -> Vec<u8> {
    let mut block = vec![0u8; STATE_SLOT_BYTES as usize];
    block[0..8].copy_from_slice(&STATE_MAGIC);
    block[8..12].copy_from_slice(&STATE_FORMAT_VERSION.to_le_bytes());
    let fields = [
        generation,
        config.cluster_id,
        config.node_id,
        config.group_id,
        state.hard_state.term,
        state.hard_state.vote.unwrap_or(0),
        state.hard_state.commit,
        state.snapshot_index,
        state.snapshot_term,
        state.segment_sequence_min,
    ];
    for (i, field) in fields.iter().enumerate() {
        block[16 + 8 * i..24 + 8 * i].copy_from_slice(&field.to_le_bytes());
    }
    let crc = slot_crc(&block);
    block[12..16].copy_from_slice(&crc.to_le_bytes());
    block
}

fn slot_crc(block: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&block[0..12]), &block[16..STATE_SLOT_USED_BYTES])
}

fn field(block: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(block[16 + 8 * i..24 + 8 * i].try_into().expect("8 bytes"))
}

/// Decodes a slot: `Ok(None)` when it is not a valid slot (torn, zero, corrupt).
fn decode_slot(path: &Path, block: &[u8], config: &LogConfig) -> Result<Option<(u64, DurableState)>, LogError> {
    if block[0..8] != STATE_MAGIC
        || u32::from_le_bytes(block[12..16].try_into().expect("4 bytes")) != slot_crc(block)
        || u32::from_le_bytes(block[8..12].try_into().expect("4 bytes")) != STATE_FORMAT_VERSION
    {
        return Ok(None);
    }
    let (cluster_id, node_id, group_id) = (field(block, 1), field(block, 2), field(block, 3));
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
    let vote = field(block, 5);
    let state = DurableState {
        hard_state: HardState { term: field(block, 4), vote: (vote != 0).then_some(vote), commit: field(block, 6) },
        snapshot_index: field(block, 7),
        snapshot_term: field(block, 8),
        segment_sequence_min: field(block, 9),
    };
    Ok(Some((field(block, 0), state)))
}

/// Picks the state from the bytes of a whole state file (pure, so that tests can feed images).
pub(crate) fn read_state_image(path: &Path, bytes: &[u8], config: &LogConfig) -> Result<(u64, DurableState), LogError> {
    if bytes.len() as u64 != 2 * STATE_SLOT_BYTES {
        return Err(LogError::Corruption {
            path: path.to_path_buf(),
            offset: 0,
            index: 0,
            detail: format!("state file is {} bytes, expected {}", bytes.len(), 2 * STATE_SLOT_BYTES),
        });
    }
    let mut best: Option<(u64, DurableState)> = None;
    for slot in 0..2 {
        let start = (slot * STATE_SLOT_BYTES) as usize;
        if let Some((generation, state)) = decode_slot(path, &bytes[start..start + STATE_SLOT_BYTES as usize], config)?
            && best.is_none_or(|(g, _)| generation > g)
        {
            best = Some((generation, state));
        }
    }
    best.ok_or_else(|| LogError::Corruption {
        path: path.to_path_buf(),
        offset: 0,
        index: 0,
        detail: "neither state slot is valid (both torn or corrupt)".into(),
    })
}

/// Reads the state of `dir` without opening the file for writing; `Ok(None)` when there is none.
///
/// # Errors
/// As [`StateFile::open`].
pub(crate) fn read_state(dir: &Path, config: &LogConfig) -> Result<Option<DurableState>, LogError> {
    let path = dir.join(STATE_FILE_NAME);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io("open", &path, e)),
    };
    // The length is checked before the buffer is allocated.
    let length = file.metadata().map_err(|e| LogError::io("stat", &path, e))?.len();
    if length != 2 * STATE_SLOT_BYTES {
        return Err(LogError::Corruption {
            path,
            offset: 0,
            index: 0,
            detail: format!("state file is {length} bytes, expected {}", 2 * STATE_SLOT_BYTES),
        });
    }
    let mut bytes = vec![0u8; (2 * STATE_SLOT_BYTES) as usize];
    file.read_exact_at(&mut bytes, 0).map_err(|e| LogError::io("read", &path, e))?;
    read_state_image(&path, &bytes, config).map(|(_, state)| Some(state))
}

/// The open state file.
#[derive(Debug)]
pub(crate) struct StateFile {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    generation: u64,
    current: DurableState,
}

impl StateFile {
    /// Opens the state file of `dir`, or `Ok(None)` when there is none.
    pub(crate) fn open(dir: &Path, config: &LogConfig) -> Result<Option<StateFile>, LogError> {
        let path = dir.join(STATE_FILE_NAME);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LogError::io("open", &path, e)),
        };
        let length = file.metadata().map_err(|e| LogError::io("stat", &path, e))?.len();
        if length != 2 * STATE_SLOT_BYTES {
            return Err(LogError::Corruption {
                path,
                offset: 0,
                index: 0,
                detail: format!("state file is {length} bytes, expected {}", 2 * STATE_SLOT_BYTES),
            });
        }
        let mut bytes = vec![0u8; (2 * STATE_SLOT_BYTES) as usize];
        file.read_exact_at(&mut bytes, 0).map_err(|e| LogError::io("read", &path, e))?;
        let (generation, current) = read_state_image(&path, &bytes, config)?;
        Ok(Some(StateFile { path, file, generation, current }))
    }

    /// Creates the state file of a fresh log, durably (file and directory entry).
    pub(crate) fn create(dir: &Path, config: &LogConfig, state: DurableState) -> Result<StateFile, LogError> {
        let path = dir.join(STATE_FILE_NAME);
        let temp = dir.join(format!("{STATE_FILE_NAME}.tmp"));
        // Generation 1 goes where `prepare` puts odd generations (slot 1), so that the first
        // update (generation 2, slot 0) does not overwrite the only valid slot.
        let mut bytes = vec![0u8; STATE_SLOT_BYTES as usize];
        bytes.extend_from_slice(&encode_slot(config, &state, 1));
        fs::write(&temp, &bytes).map_err(|e| LogError::io("write", &temp, e))?;
        File::open(&temp).and_then(|f| f.sync_all()).map_err(|e| sync_error(&temp, e))?;
        fs::rename(&temp, &path).map_err(|e| LogError::io("rename", &path, e))?;
        sync_dir(dir)?;
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| LogError::io("open", &path, e))?;
        Ok(StateFile { path, file, generation: 1, current: state })
    }

    pub(crate) fn current(&self) -> DurableState {
        self.current
    }

    /// The bytes and file offset of the next update; apply it with [`StateFile::committed`] once
    /// the write and its fsync completed.
    pub(crate) fn prepare(&self, config: &LogConfig, state: &DurableState) -> (u64, Vec<u8>) {
        let generation = self.generation + 1;
        let offset = (generation % 2) * STATE_SLOT_BYTES;
        (offset, encode_slot(config, state, generation))
    }

    /// Records that the update prepared from `state` is durable.
    pub(crate) fn committed(&mut self, state: DurableState) {
        self.generation += 1;
        self.current = state;
    }

    /// Writes and syncs an update synchronously (control plane: compaction, snapshot install).
    pub(crate) fn store(&mut self, config: &LogConfig, state: DurableState) -> Result<(), LogError> {
        let (offset, bytes) = self.prepare(config, &state);
        self.file.write_all_at(&bytes, offset).map_err(|e| LogError::io("pwrite", &self.path, e))?;
        self.file.sync_data().map_err(|e| sync_error(&self.path, e))?;
        self.committed(state);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LogConfig {
        LogConfig::new(7, 2, 1)
    }

    fn state(term: u64) -> DurableState {
        DurableState { hard_state: HardState { term, vote: Some(3), commit: 4 }, ..DurableState::default() }
    }

    #[test]
    fn newest_valid_slot_wins_and_torn_newest_falls_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = StateFile::create(dir.path(), &config(), state(1)).expect("create");
        file.store(&config(), state(2)).expect("store");
        file.store(&config(), state(3)).expect("store");
        let reopened = StateFile::open(dir.path(), &config()).expect("open").expect("exists");
        assert_eq!(reopened.current(), state(3));
        // Generation 3 is in slot 1; tear it.
        let path = dir.path().join(STATE_FILE_NAME);
        let mut bytes = fs::read(&path).expect("read");
        bytes[STATE_SLOT_BYTES as usize + 40] ^= 0x10;
        fs::write(&path, &bytes).expect("write");
        let reopened = StateFile::open(dir.path(), &config()).expect("open").expect("exists");
        assert_eq!(reopened.current(), state(2));
    }

    #[test]
    fn a_torn_first_update_leaves_the_created_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StateFile::create(dir.path(), &config(), state(1)).expect("create");
        let (offset, bytes) = file.prepare(&config(), &state(2));
        // The first update's slot write is cut after its first 40 bytes.
        file.file.write_all_at(&bytes[..40], offset).expect("torn write");
        let reopened = StateFile::open(dir.path(), &config()).expect("open").expect("exists");
        assert_eq!(reopened.current(), state(1));
    }

    #[test]
    fn both_slots_corrupt_stops_with_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = StateFile::create(dir.path(), &config(), state(1)).expect("create");
        file.store(&config(), state(2)).expect("store");
        let path = dir.path().join(STATE_FILE_NAME);
        let mut bytes = fs::read(&path).expect("read");
        bytes[20] ^= 1;
        bytes[STATE_SLOT_BYTES as usize + 20] ^= 1;
        fs::write(&path, &bytes).expect("write");
        let error = StateFile::open(dir.path(), &config()).unwrap_err();
        assert!(matches!(error, LogError::Corruption { .. }) && error.to_string().contains("state"), "{error}");
    }

    #[test]
    fn state_file_of_another_cluster_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        StateFile::create(dir.path(), &config(), state(1)).expect("create");
        let other = LogConfig::new(8, 2, 1);
        assert!(matches!(StateFile::open(dir.path(), &other), Err(LogError::Foreign { .. })));
    }
}
