//! Snapshot files: the format, saving one durably, finding the latest, receiving one in chunks.
//!
//! A snapshot file is exactly the bytes a leader streams to a follower (the core's
//! `on_snapshot` data), so a received snapshot is stored as it arrives and checked once whole:
//!
//! ```text
//!  0 [u8; 8] magic "SMRSNAPF"
//!  8 u32     version (1)
//! 12 u32     header bytes (everything before the state, this CRC included)
//! 16 u64     cluster id
//! 24 u64     index
//! 32 u64     term
//! 40 u64     state bytes
//! 48 u32     CRC32C of the state
//! 52 u16 ×4  voters, outgoing voters, learners, directory members (counts)
//! 60 u64 ×n  the ids of the three sets, in that order
//!    then per directory member: u64 id, u16 length + UTF-8 `<peer>,<client>`
//!    u32     CRC32C of the header bytes before it
//!    …       state: `Applier::snapshot` output
//! ```
//!
//! Every count and length is checked against its maximum before anything is allocated, and the
//! CRCs are checked before a byte of the state is used.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use smr_raft::{ClusterId, ConfState, Index, SnapshotMeta, Term};

use crate::directory::{Addresses, Directory, MEMBERS_MAX};

const MAGIC: &[u8; 8] = b"SMRSNAPF";
const VERSION: u32 = 1;
const FIXED_HEADER_BYTES: usize = 60;
/// Largest header: the fixed part, every id, every member's addresses, the CRC.
const HEADER_BYTES_MAX: usize = FIXED_HEADER_BYTES + 3 * MEMBERS_MAX * 8 + MEMBERS_MAX * (8 + 2 + 256) + 4;
/// Longest address text of one member in a header.
const ADDRESS_TEXT_BYTES_MAX: usize = 256;

/// Why snapshot bytes cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("snapshot {what}: {reason}")]
    Malformed { what: String, reason: String },
    #[error("snapshot of {bytes} bytes exceeds pipeline.snapshot_bytes_max ({max})")]
    TooLarge { bytes: u64, max: u64 },
}

/// A parsed snapshot: what it is of, and its state bytes (a slice of the whole).
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub directory: Directory,
    /// The whole file, as streamed to followers.
    pub bytes: Bytes,
    /// `Applier::snapshot` output: a slice of `bytes`.
    pub state: Bytes,
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Builds the bytes of a snapshot file from its parts.
pub fn encode(cluster_id: ClusterId, meta: &SnapshotMeta, directory: &Directory, state: &[u8]) -> Bytes {
    let written = encode_with(cluster_id, meta, directory, state.len(), |out| {
        out.extend_from_slice(state);
        Ok(())
    });
    written.expect("appending a slice cannot fail")
}

/// Builds the bytes of a snapshot file, `write_state` appending the state after the header in
/// the same buffer (reserved for `state_bytes_hint` bytes of state), so that the state is
/// serialized once and never copied.
///
/// # Errors
/// Whatever `write_state` returns.
pub fn encode_with(
    cluster_id: ClusterId,
    meta: &SnapshotMeta,
    directory: &Directory,
    state_bytes_hint: usize,
    write_state: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
) -> std::io::Result<Bytes> {
    let mut out = Vec::with_capacity(HEADER_BYTES_MAX + state_bytes_hint);
    out.extend_from_slice(MAGIC);
    put_u32(&mut out, VERSION);
    put_u32(&mut out, 0); // header bytes, patched below
    put_u64(&mut out, cluster_id);
    put_u64(&mut out, meta.index);
    put_u64(&mut out, meta.term);
    put_u64(&mut out, 0); // state bytes, patched below
    put_u32(&mut out, 0); // the state's CRC, patched below
    let conf = &meta.conf;
    let members: Vec<(u64, String)> = directory.iter().map(|(id, a)| (id, a.to_text())).collect();
    for n in [conf.voters.len(), conf.voters_outgoing.len(), conf.learners.len(), members.len()] {
        put_u16(&mut out, n.min(MEMBERS_MAX) as u16);
    }
    for set in [&conf.voters, &conf.voters_outgoing, &conf.learners] {
        for &id in set.iter().take(MEMBERS_MAX) {
            put_u64(&mut out, id);
        }
    }
    for (id, text) in members.iter().take(MEMBERS_MAX) {
        put_u64(&mut out, *id);
        let text = &text.as_bytes()[..text.len().min(ADDRESS_TEXT_BYTES_MAX)];
        put_u16(&mut out, text.len() as u16);
        out.extend_from_slice(text);
    }
    let header_bytes = out.len() + 4;
    put_u32(&mut out, 0); // the header's CRC, patched below
    write_state(&mut out)?;
    let state = &out[header_bytes..];
    let (state_bytes, state_crc) = (state.len() as u64, crc32c::crc32c(state));
    out[12..16].copy_from_slice(&(header_bytes as u32).to_le_bytes());
    out[40..48].copy_from_slice(&state_bytes.to_le_bytes());
    out[48..52].copy_from_slice(&state_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&out[..header_bytes - 4]);
    out[header_bytes - 4..header_bytes].copy_from_slice(&header_crc.to_le_bytes());
    Ok(Bytes::from(out))
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'a str,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], SnapshotError> {
        if self.bytes.len() - self.at < n {
            return Err(malformed(self.what, "header is truncated"));
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

fn malformed(what: &str, reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Malformed { what: what.to_owned(), reason: reason.into() }
}

/// Parses and checks snapshot bytes (from a file or a leader). `what` names them in errors.
///
/// # Errors
/// [`SnapshotError::Malformed`] for any length, count, CRC or cluster that is wrong;
/// [`SnapshotError::TooLarge`] beyond `bytes_max`.
pub fn decode(bytes: Bytes, cluster_id: ClusterId, bytes_max: u64, what: &str) -> Result<Snapshot, SnapshotError> {
    if bytes.len() as u64 > bytes_max {
        return Err(SnapshotError::TooLarge { bytes: bytes.len() as u64, max: bytes_max });
    }
    if bytes.len() < FIXED_HEADER_BYTES + 4 {
        return Err(malformed(what, format!("{} bytes is shorter than a header", bytes.len())));
    }
    if &bytes[..8] != MAGIC {
        return Err(malformed(what, "bad magic (not a snapshot file)"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(malformed(what, format!("unknown version {version}")));
    }
    let header_bytes = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    if !(FIXED_HEADER_BYTES + 4..=HEADER_BYTES_MAX).contains(&header_bytes) || header_bytes > bytes.len() {
        return Err(malformed(what, format!("header length {header_bytes} is out of range")));
    }
    let stored_crc = u32::from_le_bytes(bytes[header_bytes - 4..header_bytes].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[..header_bytes - 4]) != stored_crc {
        return Err(malformed(what, "header CRC mismatch"));
    }
    let header = &bytes[..header_bytes - 4];
    let mut c = Cursor { bytes: header, at: 16, what };
    let file_cluster = c.u64()?;
    if file_cluster != cluster_id {
        return Err(malformed(what, format!("belongs to cluster {file_cluster:#x}, not {cluster_id:#x}")));
    }
    let index: Index = c.u64()?;
    let term: Term = c.u64()?;
    let state_bytes = c.u64()?;
    let state_crc = u32::from_le_bytes(c.take(4)?.try_into().expect("4 bytes"));
    if state_bytes != (bytes.len() - header_bytes) as u64 {
        return Err(malformed(
            what,
            format!("header announces {state_bytes} state bytes, {} follow", bytes.len() - header_bytes),
        ));
    }
    let counts = [c.u16()?, c.u16()?, c.u16()?, c.u16()?].map(usize::from);
    if counts.iter().any(|&n| n > MEMBERS_MAX) {
        return Err(malformed(what, "more members than MEMBERS_MAX"));
    }
    let mut sets: [Vec<u64>; 3] = Default::default();
    for (set, &count) in sets.iter_mut().zip(&counts[..3]) {
        for _ in 0..count {
            set.push(c.u64()?);
        }
        if set.windows(2).any(|w| w[0] >= w[1]) || set.contains(&0) {
            return Err(malformed(what, "a membership set is not sorted, has duplicates or node 0"));
        }
    }
    let [voters, voters_outgoing, learners] = sets;
    if voters.is_empty() {
        return Err(malformed(what, "no voters"));
    }
    let mut directory = Directory::default();
    for _ in 0..counts[3] {
        let id = c.u64()?;
        let length = usize::from(c.u16()?);
        if length > ADDRESS_TEXT_BYTES_MAX {
            return Err(malformed(what, "a member address is too long"));
        }
        let text = c.take(length)?;
        let addresses = Addresses::from_context(text).map_err(|e| malformed(what, e.to_string()))?;
        directory.insert(id, addresses);
    }
    if c.at != header.len() {
        return Err(malformed(what, "trailing header bytes"));
    }
    let state = bytes.slice(header_bytes..);
    if crc32c::crc32c(&state) != state_crc {
        return Err(malformed(what, "state CRC mismatch"));
    }
    let meta = SnapshotMeta { index, term, conf: ConfState { voters, voters_outgoing, learners } };
    Ok(Snapshot { meta, directory, bytes, state })
}

/// The snapshot files of one node: `<data_dir>/snapshots/snap-<index>-<term>.snap`.
///
/// Saved durably (temporary file, fsync, rename, directory fsync) before the log is compacted
/// past it; the two newest are kept, older ones deleted.
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    cluster_id: ClusterId,
    bytes_max: u64,
}

/// Snapshot files kept: the newest and the one before it.
const SNAPSHOTS_KEPT: usize = 2;

impl SnapshotStore {
    /// Opens (creating) the directory and removes temporary files a crash left behind.
    ///
    /// # Errors
    /// I/O errors.
    pub fn open(dir: &Path, cluster_id: ClusterId, bytes_max: u64) -> Result<SnapshotStore, SnapshotError> {
        let io = |source| SnapshotError::Io { path: dir.to_owned(), source };
        fs::create_dir_all(dir).map_err(io)?;
        for entry in fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path).map_err(|source| SnapshotError::Io { path: path.clone(), source })?;
            }
        }
        Ok(SnapshotStore { dir: dir.to_owned(), cluster_id, bytes_max })
    }

    fn file_name(index: Index, term: Term) -> String {
        format!("snap-{index:020}-{term:020}.snap")
    }

    /// Snapshot files by index, oldest first.
    fn list(&self) -> Result<Vec<(Index, PathBuf)>, SnapshotError> {
        let io = |source| SnapshotError::Io { path: self.dir.clone(), source };
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            let Some(rest) = name.strip_prefix("snap-").and_then(|r| r.strip_suffix(".snap")) else { continue };
            let Some(index) = rest.split('-').next().and_then(|i| i.parse::<Index>().ok()) else { continue };
            out.push((index, path));
        }
        out.sort();
        Ok(out)
    }

    /// The newest snapshot, checked. A damaged newest snapshot is an error, not a reason to
    /// fall back silently: the log may already be compacted past the older one.
    ///
    /// # Errors
    /// I/O errors, or a damaged newest file.
    pub fn latest(&self) -> Result<Option<Snapshot>, SnapshotError> {
        let Some((_, path)) = self.list()?.pop() else { return Ok(None) };
        let bytes = fs::read(&path).map_err(|source| SnapshotError::Io { path: path.clone(), source })?;
        decode(Bytes::from(bytes), self.cluster_id, self.bytes_max, &path.display().to_string()).map(Some)
    }

    /// Saves snapshot bytes durably and deletes all but the newest [`SNAPSHOTS_KEPT`].
    ///
    /// # Errors
    /// I/O errors (a full disk among them: nothing is compacted then, nothing is lost).
    pub fn save(&self, meta: &SnapshotMeta, bytes: &[u8]) -> Result<PathBuf, SnapshotError> {
        let path = self.dir.join(SnapshotStore::file_name(meta.index, meta.term));
        let temporary = path.with_extension("tmp");
        let io = |source| SnapshotError::Io { path: temporary.clone(), source };
        let mut file = fs::File::create(&temporary).map_err(io)?;
        // Paced, so that the log's group commits on the same disk do not wait behind it.
        smr_log::write_paced(&mut file, 0, bytes).map_err(io)?;
        file.sync_data().map_err(io)?;
        drop(file);
        fs::rename(&temporary, &path).map_err(io)?;
        fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)?;
        let files = self.list()?;
        let excess = files.len().saturating_sub(SNAPSHOTS_KEPT);
        for (_, old) in files.into_iter().take(excess) {
            fs::remove_file(&old).map_err(|source| SnapshotError::Io { path: old.clone(), source })?;
        }
        Ok(path)
    }
}

/// A snapshot being received from the leader, chunk by chunk, in memory (bounded by
/// `snapshot_bytes_max`) until its last chunk arrives.
#[derive(Debug, Default)]
pub struct Incoming {
    meta: Option<SnapshotMeta>,
    bytes: Vec<u8>,
}

impl Incoming {
    /// Adds a chunk; returns the whole snapshot, checked, when `last` is set.
    ///
    /// # Errors
    /// A chunk out of order, a snapshot beyond `bytes_max`, or whole bytes that fail their
    /// checks or disagree with the metadata the leader sent.
    pub fn add(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
        last: bool,
        cluster_id: ClusterId,
        bytes_max: u64,
    ) -> Result<Option<Snapshot>, SnapshotError> {
        if offset == 0 {
            self.meta = Some(meta.clone());
            self.bytes.clear();
        }
        if self.meta.as_ref() != Some(meta) || offset != self.bytes.len() as u64 {
            return Err(malformed("from the leader", format!("chunk at offset {offset} is out of order")));
        }
        if self.bytes.len() as u64 + data.len() as u64 > bytes_max {
            return Err(SnapshotError::TooLarge { bytes: self.bytes.len() as u64 + data.len() as u64, max: bytes_max });
        }
        self.bytes.extend_from_slice(data);
        if !last {
            return Ok(None);
        }
        let bytes = Bytes::from(std::mem::take(&mut self.bytes));
        self.meta = None;
        let snapshot = decode(bytes, cluster_id, bytes_max, "from the leader")?;
        if snapshot.meta != *meta {
            return Err(malformed("from the leader", "its header disagrees with the metadata it was sent with"));
        }
        Ok(Some(snapshot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (SnapshotMeta, Directory) {
        let meta = SnapshotMeta { index: 42, term: 3, conf: ConfState::with_voters([1, 2, 3]) };
        let mut directory = Directory::default();
        directory.insert(
            4,
            Addresses { peer: "127.0.0.1:7004".parse().unwrap(), client: "127.0.0.1:7104".parse().unwrap() },
        );
        (meta, directory)
    }

    #[test]
    fn snapshot_bytes_round_trip() {
        let (meta, directory) = sample();
        let bytes = encode(7, &meta, &directory, b"state bytes");
        let snapshot = decode(bytes, 7, 1 << 20, "test").unwrap();
        assert_eq!(snapshot.meta, meta);
        assert_eq!(snapshot.directory, directory);
        assert_eq!(&snapshot.state[..], b"state bytes");
    }

    #[test]
    fn a_state_written_in_place_gives_the_same_file_and_its_error_is_returned() {
        let (meta, directory) = sample();
        let in_pieces = encode_with(7, &meta, &directory, 0, |out| {
            out.extend_from_slice(b"state ");
            out.extend_from_slice(b"bytes");
            Ok(())
        })
        .unwrap();
        assert_eq!(in_pieces, encode(7, &meta, &directory, b"state bytes"));
        let refused = encode_with(7, &meta, &directory, 1 << 10, |_| Err(std::io::Error::other("view gone")));
        assert_eq!(refused.unwrap_err().to_string(), "view gone");
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let (meta, directory) = sample();
        let bytes = encode(7, &meta, &directory, b"state bytes");
        for at in 0..bytes.len() {
            let mut damaged = bytes.to_vec();
            damaged[at] ^= 0x10;
            assert!(decode(Bytes::from(damaged), 7, 1 << 20, "test").is_err(), "flip at {at} accepted");
        }
        assert!(decode(bytes.slice(..bytes.len() - 1), 7, 1 << 20, "test").is_err());
        let error = decode(bytes.clone(), 8, 1 << 20, "test").unwrap_err().to_string();
        assert!(error.contains("cluster"), "{error}");
        assert!(matches!(decode(bytes, 7, 10, "test"), Err(SnapshotError::TooLarge { .. })));
    }

    #[test]
    fn store_keeps_the_newest_and_a_chunked_receive_matches() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), 7, 1 << 20).unwrap();
        assert!(store.latest().unwrap().is_none());
        let (mut meta, directory) = sample();
        for index in [10, 20, 30] {
            meta.index = index;
            store.save(&meta, &encode(7, &meta, &directory, &index.to_le_bytes())).unwrap();
        }
        assert_eq!(store.list().unwrap().len(), SNAPSHOTS_KEPT);
        let latest = store.latest().unwrap().unwrap();
        assert_eq!(latest.meta.index, 30);

        let mut incoming = Incoming::default();
        let bytes = latest.bytes.clone();
        let (a, b) = bytes.split_at(10);
        assert!(incoming.add(&latest.meta, 0, a, false, 7, 1 << 20).unwrap().is_none());
        assert!(incoming.add(&latest.meta, 99, b, true, 7, 1 << 20).is_err(), "a gap is refused");
        assert!(incoming.add(&latest.meta, 0, a, false, 7, 1 << 20).unwrap().is_none());
        let whole = incoming.add(&latest.meta, 10, b, true, 7, 1 << 20).unwrap().unwrap();
        assert_eq!(whole.meta, latest.meta);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Bytes from a leader or a disk are untrusted: any of them is refused or accepted,
        /// never a panic or an allocation beyond the bound.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(Bytes::from(bytes), 7, 1 << 20, "fuzz");
        }

        /// A valid header with arbitrary damage after the magic is refused or decodes to the
        /// snapshot it was (a flip inside the state is caught by its CRC).
        #[test]
        fn damaged_snapshots_are_refused(at in 8usize..200, flip in 1u8..=255) {
            let meta = SnapshotMeta { index: 9, term: 2, conf: ConfState::with_voters([1, 2]) };
            let bytes = encode(7, &meta, &Directory::default(), b"some state bytes of a machine");
            let mut damaged = bytes.to_vec();
            let at = at % damaged.len();
            damaged[at] ^= flip;
            prop_assert!(decode(Bytes::from(damaged), 7, 1 << 20, "fuzz").is_err());
        }
    }
}
