//! The identity file of a data directory: which cluster, node and group its data belongs to.
//!
//! Written (and synced, with its directory) before anything else when a node is created, read
//! first on every start. It is what makes bootstrapping and restarting distinct: a directory
//! with an identity restarts from its data and refuses a config naming another cluster or node;
//! an empty directory starts only when the operator says how (found or join).
//!
//! Format: one line of text, `smr-identity v1 cluster=<hex> node=<n> group=<n> crc=<hex>`, so
//! that an operator can read it and the CRC catches a damaged file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use smr_raft::{ClusterId, GroupId, NodeId};

/// File name inside the data directory.
pub const IDENTITY_FILE_NAME: &str = "identity";
/// Longest identity file read.
const IDENTITY_BYTES_MAX: u64 = 4096;

/// Whose data a directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: ClusterId,
    pub node_id: NodeId,
    pub group_id: GroupId,
}

/// Why the identity file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid identity file: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error(
        "{path}: this data directory belongs to cluster {found_cluster:#x} node {found_node}, \
         but the config names cluster {cluster:#x} node {node}; refusing to start"
    )]
    Mismatch { path: PathBuf, found_cluster: ClusterId, found_node: NodeId, cluster: ClusterId, node: NodeId },
}

impl Identity {
    fn line_without_crc(&self) -> String {
        format!("smr-identity v1 cluster={:x} node={} group={}", self.cluster_id, self.node_id, self.group_id)
    }

    fn encode(&self) -> String {
        let body = self.line_without_crc();
        format!("{body} crc={:08x}\n", crc32c::crc32c(body.as_bytes()))
    }

    fn decode(path: &Path, text: &str) -> Result<Identity, IdentityError> {
        let bad = |reason: &str| IdentityError::Malformed { path: path.to_owned(), reason: reason.to_owned() };
        let line = text.strip_suffix('\n').ok_or_else(|| bad("no line end (torn write?)"))?;
        let (body, crc) = line.rsplit_once(" crc=").ok_or_else(|| bad("no crc"))?;
        let crc = u32::from_str_radix(crc, 16).map_err(|_| bad("crc is not hex"))?;
        if crc32c::crc32c(body.as_bytes()) != crc {
            return Err(bad("crc mismatch"));
        }
        let mut fields = body.split(' ');
        if fields.next() != Some("smr-identity") || fields.next() != Some("v1") {
            return Err(bad("unknown header or version"));
        }
        let mut take = |name: &str| -> Result<&str, IdentityError> {
            fields
                .next()
                .and_then(|f| f.strip_prefix(name))
                .and_then(|f| f.strip_prefix('='))
                .ok_or_else(|| bad(&format!("missing {name}")))
        };
        let cluster_id = u64::from_str_radix(take("cluster")?, 16).map_err(|_| bad("cluster is not hex"))?;
        let node_id = take("node")?.parse().map_err(|_| bad("node is not a number"))?;
        let group_id = take("group")?.parse().map_err(|_| bad("group is not a number"))?;
        if fields.next().is_some() {
            return Err(bad("trailing fields"));
        }
        Ok(Identity { cluster_id, node_id, group_id })
    }

    /// Reads the identity of `data_dir`; `None` when the directory has none (a new node).
    ///
    /// # Errors
    /// I/O errors and a damaged file.
    pub fn load(data_dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = data_dir.join(IDENTITY_FILE_NAME);
        let io = |source| IdentityError::Io { path: path.clone(), source };
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let mut text = String::new();
        use std::io::Read;
        file.take(IDENTITY_BYTES_MAX).read_to_string(&mut text).map_err(io)?;
        Identity::decode(&path, &text).map(Some)
    }

    /// Refuses a directory that belongs to another cluster or node.
    ///
    /// # Errors
    /// [`IdentityError::Mismatch`].
    pub fn check(&self, data_dir: &Path, expected: &Identity) -> Result<(), IdentityError> {
        if self == expected {
            return Ok(());
        }
        Err(IdentityError::Mismatch {
            path: data_dir.join(IDENTITY_FILE_NAME),
            found_cluster: self.cluster_id,
            found_node: self.node_id,
            cluster: expected.cluster_id,
            node: expected.node_id,
        })
    }

    /// Writes the identity durably: a temporary file, synced, renamed, then the directory
    /// synced. Creates `data_dir` if needed.
    ///
    /// # Errors
    /// I/O errors.
    pub fn store(&self, data_dir: &Path) -> Result<(), IdentityError> {
        let path = data_dir.join(IDENTITY_FILE_NAME);
        let io = |source| IdentityError::Io { path: path.clone(), source };
        fs::create_dir_all(data_dir).map_err(io)?;
        let temporary = data_dir.join(format!("{IDENTITY_FILE_NAME}.tmp"));
        let mut file = fs::File::create(&temporary).map_err(io)?;
        file.write_all(self.encode().as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&temporary, &path).map_err(io)?;
        fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Identity::load(dir.path()).unwrap().is_none());
        let identity = Identity { cluster_id: 0xabc, node_id: 2, group_id: 0 };
        identity.store(dir.path()).unwrap();
        let loaded = Identity::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded, identity);
        loaded.check(dir.path(), &identity).unwrap();
        let other = Identity { node_id: 3, ..identity };
        let error = loaded.check(dir.path(), &other).unwrap_err().to_string();
        assert!(error.contains("node 2") && error.contains("node 3"), "{error}");
    }

    #[test]
    fn a_damaged_identity_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Identity { cluster_id: 0xabc, node_id: 2, group_id: 0 }.store(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_FILE_NAME);
        let text = fs::read_to_string(&path).unwrap().replace("node=2", "node=3");
        fs::write(&path, text).unwrap();
        let error = Identity::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("crc mismatch"), "{error}");
    }
}
