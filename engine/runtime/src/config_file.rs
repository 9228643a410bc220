//! The node config file: [`NodeConfig`] read from and written to TOML.
//!
//! The file has a table per part (`[raft]`, `[log]`, `[net]`, `[pipeline]`, `[placement]`,
//! `[sessions]`, `[kv]`) whose keys are the Rust field names, so that an error from
//! [`NodeConfig::validate`] (`raft.election_ticks`) names the key exactly as the operator wrote
//! it. Every key is optional except `node_id`, `cluster_id`, `data_dir` and one of the secret
//! keys; a key left out takes the default of [`NodeConfig::new`]. Every table refuses keys it
//! does not know, so a misspelt limit is an error rather than a default silently kept.
//! `node.example.toml` next to this crate's manifest shows every key with its default.
//!
//! Integers: TOML integers stop at 2^63 - 1, so every integer key also accepts a `"0x…"` hex
//! string, which is how a value above that (a random 64-bit seed or cluster id) is written.
//! [`to_toml`] writes ids and seeds in hex and every other integer in decimal.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{self, Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smr_apply::{KvConfig, SessionConfig};
use smr_log::{IoMode, LogConfig};
use smr_net::NetConfig;
use smr_raft::Config as RaftConfig;
use toml::de::{DeTable, DeValue};

use crate::config::{ConfigError, InitialState, Member, NodeConfig, PipelineConfig};
use crate::placement::Placement;

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The config file itself could not be read.
    #[error("config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// The text is not TOML.
    #[error("config: line {line}, column {column}: {message}")]
    Syntax { line: usize, column: usize, message: String },
    /// A key is unknown, missing, of the wrong type, or holds a value that is refused. `key` is
    /// the dotted path as the file spells it (`raft.election_ticks`, `members[1].peer_address`);
    /// `line` is where the file sets it, when it does.
    #[error("config: {key}{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Key { key: String, line: Option<usize>, message: String },
}

impl ConfigFileError {
    /// The key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigFileError::Key { key, .. } => Some(key),
            ConfigFileError::Read { .. } | ConfigFileError::Syntax { .. } => None,
        }
    }
}

/// Reads the config file at `path`; relative paths in it resolve against its directory.
///
/// # Errors
/// See [`parse`]; also [`ConfigFileError::Read`] when the file cannot be read.
pub fn load(path: &Path) -> Result<NodeConfig, ConfigFileError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read { path: path.to_path_buf(), source })?;
    parse(&text, path.parent().unwrap_or(Path::new("")))
}

/// Parses a config file's text into a validated [`NodeConfig`] with its identity synced into
/// the parts' configs. Relative `data_dir` and `secret_file` resolve against `base_dir` (the
/// file's directory; `Path::new("")` keeps them relative).
///
/// # Errors
/// [`ConfigFileError::Syntax`] for text that is not TOML; [`ConfigFileError::Key`] naming the
/// key for anything else, including every refusal of [`NodeConfig::validate`].
pub fn parse(text: &str, base_dir: &Path) -> Result<NodeConfig, ConfigFileError> {
    let file: NodeFile = toml::from_str(text).map_err(|error| from_toml_error(text, &error))?;
    let (config, secret_key) = file.into_config(base_dir).map_err(|error| locate(text, error))?;
    config.validate().map_err(|mut error| {
        // The secret's length is checked by validate, which knows it only as `secret`.
        if error.field == "secret" {
            error.field = secret_key.into();
        }
        locate(text, error)
    })?;
    Ok(config)
}

/// Renders every field of `config` as a file that [`parse`] reads back to an equal config.
///
/// The secret is written as `secret` when it is UTF-8 and as `secret_hex` otherwise. Placement
/// entries that are unpinned are left out, since leaving a key out is how the file says so. Two
/// things TOML cannot carry are approximated: a `data_dir` that is not UTF-8 is written lossily,
/// and a relative `data_dir` reads back relative to the `base_dir` given to [`parse`].
///
/// # Panics
/// Never for any `NodeConfig`: every value written is a string, an integer within TOML's range,
/// or a boolean, so the serializer has nothing to refuse.
pub fn to_toml(config: &NodeConfig) -> String {
    let file = NodeFile::from_config(config);
    toml::to_string(&file).expect("every field of the file struct is representable in TOML")
}

/// Turns a refusal from toml or serde into an error naming the key at the error's position.
fn from_toml_error(text: &str, error: &toml::de::Error) -> ConfigFileError {
    let message = error.message().trim_end().to_string();
    let Some(span) = error.span() else {
        return ConfigFileError::Key { key: "(the whole file)".into(), line: None, message };
    };
    let (line, column) = line_column(text, span.start);
    let key = DeTable::parse(text).ok().and_then(|root| {
        let mut keys = Vec::new();
        flatten(root.get_ref(), "", &mut keys);
        // The innermost key whose name or value holds the error's position: an unknown key is
        // reported on its name, a bad value on the value, a missing key on its enclosing table.
        keys.into_iter()
            .filter(|k| contains(&k.key_span, span.start) || contains(&k.value_span, span.start))
            .min_by_key(|k| k.value_span.len())
            .map(|k| k.path)
    });
    match key {
        Some(key) => ConfigFileError::Key { key, line: Some(line), message },
        None => ConfigFileError::Syntax { line, column, message },
    }
}

/// Turns a refused field into an error with the line where the file sets it, if it does.
fn locate(text: &str, error: ConfigError) -> ConfigFileError {
    let line = DeTable::parse(text).ok().and_then(|root| {
        let mut keys = Vec::new();
        flatten(root.get_ref(), "", &mut keys);
        keys.into_iter().find(|k| k.path == error.field).map(|k| line_column(text, k.key_span.start).0)
    });
    ConfigFileError::Key { key: error.field, line, message: error.reason }
}

/// A key of the document with where its name and its value are.
struct LocatedKey {
    path: String,
    key_span: Range<usize>,
    value_span: Range<usize>,
}

fn flatten(table: &DeTable<'_>, prefix: &str, out: &mut Vec<LocatedKey>) {
    for (key, value) in table {
        let path = if prefix.is_empty() { key.get_ref().to_string() } else { format!("{prefix}.{}", key.get_ref()) };
        out.push(LocatedKey { path: path.clone(), key_span: key.span(), value_span: value.span() });
        match value.get_ref() {
            DeValue::Table(inner) => flatten(inner, &path, out),
            DeValue::Array(elements) => {
                for (index, element) in elements.iter().enumerate() {
                    let element_path = format!("{path}[{index}]");
                    let span = element.span();
                    out.push(LocatedKey { path: element_path.clone(), key_span: span.clone(), value_span: span });
                    if let DeValue::Table(inner) = element.get_ref() {
                        flatten(inner, &element_path, out);
                    }
                }
            }
            _ => {}
        }
    }
}

fn contains(span: &Range<usize>, position: usize) -> bool {
    span.start <= position && position < span.end.max(span.start + 1)
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

// ---- Values ---------------------------------------------------------------------------------

/// An unsigned integer type a key may hold, with its largest value for range checks.
trait UnsignedInt: Copy {
    const MAX: u64;
    fn from_u64(value: u64) -> Self;
    fn to_u64(self) -> u64;
}

impl UnsignedInt for u32 {
    const MAX: u64 = u32::MAX as u64;
    fn from_u64(value: u64) -> u32 {
        u32::try_from(value).expect("range checked against MAX")
    }
    fn to_u64(self) -> u64 {
        u64::from(self)
    }
}

impl UnsignedInt for u64 {
    const MAX: u64 = u64::MAX;
    fn from_u64(value: u64) -> u64 {
        value
    }
    fn to_u64(self) -> u64 {
        self
    }
}

impl UnsignedInt for usize {
    const MAX: u64 = usize::MAX as u64;
    fn from_u64(value: u64) -> usize {
        usize::try_from(value).expect("range checked against MAX")
    }
    fn to_u64(self) -> u64 {
        self as u64
    }
}

/// An integer key: a TOML integer, or a `"0x…"` string for values TOML integers cannot hold.
/// Negative and too large values are refused here, with the type's range in the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Int<T>(T);

/// An integer written in hex by [`to_toml`]: ids and seeds, which read better that way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hex(u64);

impl<'de, T: UnsignedInt> Deserialize<'de> for Int<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Int<T>, D::Error> {
        deserializer.deserialize_any(IntVisitor(PhantomData)).map(Int)
    }
}

impl<T: UnsignedInt> Serialize for Int<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match i64::try_from(self.0.to_u64()) {
            Ok(value) => serializer.serialize_i64(value),
            Err(_) => serializer.serialize_str(&format!("{:#x}", self.0.to_u64())),
        }
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Hex, D::Error> {
        Int::<u64>::deserialize(deserializer).map(|Int(value)| Hex(value))
    }
}

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{:#x}", self.0))
    }
}

struct IntVisitor<T>(PhantomData<T>);

impl<T: UnsignedInt> Visitor<'_> for IntVisitor<T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "an integer in 0..={} or a \"0x\" hex string", T::MAX)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        let unsigned = u64::try_from(value).map_err(|_| E::invalid_value(Unexpected::Signed(value), &self))?;
        self.visit_u64(unsigned)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
        if value > T::MAX {
            return Err(E::invalid_value(Unexpected::Unsigned(value), &self));
        }
        Ok(T::from_u64(value))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"));
        let value = digits
            .filter(|d| !d.is_empty() && !d.starts_with('+'))
            .and_then(|d| u64::from_str_radix(d, 16).ok())
            .ok_or_else(|| E::invalid_value(Unexpected::Str(text), &self))?;
        self.visit_u64(value)
    }
}

/// How a file value becomes a config value and back.
trait FileValue<T> {
    fn into_value(self) -> T;
    fn from_value(value: T) -> Self;
}

impl<T: UnsignedInt> FileValue<T> for Int<T> {
    fn into_value(self) -> T {
        self.0
    }
    fn from_value(value: T) -> Int<T> {
        Int(value)
    }
}

impl FileValue<u64> for Hex {
    fn into_value(self) -> u64 {
        self.0
    }
    fn from_value(value: u64) -> Hex {
        Hex(value)
    }
}

impl FileValue<bool> for bool {
    fn into_value(self) -> bool {
        self
    }
    fn from_value(value: bool) -> bool {
        value
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum IoModeFile {
    Auto,
    Uring,
    Fallback,
}

impl FileValue<IoMode> for IoModeFile {
    fn into_value(self) -> IoMode {
        match self {
            IoModeFile::Auto => IoMode::Auto,
            IoModeFile::Uring => IoMode::Uring,
            IoModeFile::Fallback => IoMode::Fallback,
        }
    }
    fn from_value(value: IoMode) -> IoModeFile {
        match value {
            IoMode::Auto => IoModeFile::Auto,
            IoMode::Uring => IoModeFile::Uring,
            IoMode::Fallback => IoModeFile::Fallback,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum InitialStateFile {
    Refuse,
    New,
    Join,
}

impl FileValue<InitialState> for InitialStateFile {
    fn into_value(self) -> InitialState {
        match self {
            InitialStateFile::Refuse => InitialState::Refuse,
            InitialStateFile::New => InitialState::New,
            InitialStateFile::Join => InitialState::Join,
        }
    }
    fn from_value(value: InitialState) -> InitialStateFile {
        match value {
            InitialState::Refuse => InitialStateFile::Refuse,
            InitialState::New => InitialStateFile::New,
            InitialState::Join => InitialStateFile::Join,
        }
    }
}

// ---- Tables ---------------------------------------------------------------------------------

/// Declares the table of a part config: one optional key per field, laid over the part's
/// defaults when read. `from_config` destructures the part config without `..`, so a field
/// added to a part and not listed here (or under `not_in_file`) fails to compile instead of
/// being silently unsettable from the file.
macro_rules! part_table {
    ($name:ident for $target:ident { $($field:ident: $file_type:ty),* $(,)? } not_in_file { $($skipped:ident),* }) => {
        #[derive(Debug, Default, Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            $(
                #[serde(skip_serializing_if = "Option::is_none")]
                $field: Option<$file_type>,
            )*
        }

        impl $name {
            fn apply_to(self, config: &mut $target) {
                $(
                    if let Some(value) = self.$field {
                        config.$field = value.into_value();
                    }
                )*
            }

            fn from_config(config: &$target) -> $name {
                let $target { $($field,)* $($skipped: _,)* } = config.clone();
                $name { $($field: Some(FileValue::from_value($field)),)* }
            }
        }
    };
}

part_table!(RaftFile for RaftConfig {
    election_ticks: Int<u32>,
    heartbeat_ticks: Int<u32>,
    pre_vote: bool,
    check_quorum: bool,
    lease_reads: bool,
    lease_ticks: Int<u32>,
    inflight_appends_max: Int<u32>,
    inflight_bytes_max: Int<u64>,
    append_bytes_max: Int<u64>,
    proposal_bytes_max: Int<u64>,
    uncommitted_bytes_max: Int<u64>,
    snapshot_chunk_bytes_max: Int<u64>,
    snapshot_chunks_inflight_max: Int<u32>,
    pending_reads_max: Int<u32>,
    seed: Hex,
} not_in_file { id, group });

part_table!(LogFile for LogConfig {
    segment_bytes: Int<u64>,
    entry_bytes_max: Int<u64>,
    submit_bytes_max: Int<u64>,
    inflight_writes_max: Int<u32>,
    pending_submits_max: Int<u32>,
    spare_segments_max: Int<u32>,
    recycled_segments_max: Int<u32>,
    io_mode: IoModeFile,
} not_in_file { cluster_id, node_id, group_id });

part_table!(NetFile for NetConfig {
    frame_bytes_max: Int<usize>,
    read_bytes_max: Int<usize>,
    client_read_bytes_max: Int<usize>,
    peer_queue_messages_max: Int<usize>,
    peer_queue_bytes_max: Int<usize>,
    inbound_batches_max: Int<usize>,
    connections_max: Int<usize>,
    handshakes_max: Int<usize>,
    client_pending_bytes_max: Int<usize>,
    client_inflight_max: Int<usize>,
    handshake_ms: Int<u64>,
    idle_timeout_ms: Int<u64>,
    peer_idle_timeout_ms: Int<u64>,
    frame_receive_ms_max: Int<u64>,
    keepalive_ms: Int<u64>,
    reconnect_ms_min: Int<u64>,
    reconnect_ms_max: Int<u64>,
    write_timeout_ms: Int<u64>,
    seed: Hex,
} not_in_file {});

part_table!(PipelineFile for PipelineConfig {
    tick_ms: Int<u64>,
    batch_bytes_max: Int<usize>,
    batch_commands_max: Int<usize>,
    linger_us_max: Int<u64>,
    proposals_inflight_max: Int<usize>,
    hold_for_answers_bytes_max: Int<usize>,
    client_requests_max: Int<usize>,
    log_queue_max: Int<usize>,
    apply_queue_max: Int<usize>,
    request_timeout_ms: Int<u64>,
    snapshot_log_bytes: Int<u64>,
    snapshot_keep_entries: Int<u64>,
    snapshot_bytes_max: Int<u64>,
    busy_poll: bool,
    inline_core: bool,
} not_in_file {});

part_table!(SessionsFile for SessionConfig {
    sessions_max: Int<usize>,
    window_max: Int<u64>,
    expiry_entries: Int<u64>,
} not_in_file {});

part_table!(KvFile for KvConfig {
    key_bytes_max: Int<usize>,
    value_bytes_max: Int<usize>,
    scan_entries_max: Int<usize>,
    scan_bytes_max: Int<usize>,
} not_in_file {});

/// `[placement]`: a key per stage. A stage left out is not pinned, which is the default, so
/// unlike the other tables a key here has no default value to fall back to.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PlacementFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    core: Option<Int<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<Int<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    apply: Option<Int<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    net: Option<Int<usize>>,
}

impl PlacementFile {
    fn into_placement(self) -> Placement {
        Placement {
            core: self.core.map(|c| c.0),
            log: self.log.map(|c| c.0),
            apply: self.apply.map(|c| c.0),
            net: self.net.map(|c| c.0),
        }
    }

    fn from_placement(placement: &Placement) -> PlacementFile {
        let Placement { core, log, apply, net } = placement.clone();
        PlacementFile { core: core.map(Int), log: log.map(Int), apply: apply.map(Int), net: net.map(Int) }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct MemberFile {
    id: Int<u64>,
    peer_address: SocketAddr,
    client_address: SocketAddr,
}

/// The whole file. Scalars come before `members` and the tables, the order TOML needs them in
/// when this is written.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<Int<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_id: Option<Hex>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<Int<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initial_state: Option<InitialStateFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    members: Vec<MemberFile>,
    #[serde(default)]
    raft: RaftFile,
    #[serde(default)]
    log: LogFile,
    #[serde(default)]
    net: NetFile,
    #[serde(default)]
    pipeline: PipelineFile,
    #[serde(default)]
    placement: PlacementFile,
    #[serde(default)]
    sessions: SessionsFile,
    #[serde(default)]
    kv: KvFile,
}

impl NodeFile {
    /// Lays the file over the defaults of [`NodeConfig::new`]. Returns the config (identity
    /// synced, not yet validated) and which secret key the file used.
    fn into_config(self, base_dir: &Path) -> Result<(NodeConfig, &'static str), ConfigError> {
        let must_be_set = |key: &str| ConfigError::new(key, "must be set");
        let node_id = self.node_id.ok_or_else(|| must_be_set("node_id"))?.0;
        let cluster_id = self.cluster_id.ok_or_else(|| must_be_set("cluster_id"))?.0;
        let data_dir = self.data_dir.ok_or_else(|| must_be_set("data_dir"))?;
        // Joined to base_dir, an empty path would quietly make the config's own directory the
        // data directory.
        if data_dir.is_empty() {
            return Err(ConfigError::new("data_dir", "must not be empty"));
        }
        let data_dir = base_dir.join(data_dir);
        let members = self
            .members
            .into_iter()
            .map(|m| Member { id: m.id.0, peer_address: m.peer_address, client_address: m.client_address })
            .collect();
        let mut config = NodeConfig::new(node_id, cluster_id, data_dir, members);
        if let Some(group_id) = self.group_id {
            config.group_id = group_id.0;
        }
        let (secret, secret_key) = read_secret(self.secret, self.secret_hex, self.secret_file, base_dir)?;
        config.secret = secret;
        let listed = config.me().is_some();
        let not_listed = || format!("must be set, since node_id {node_id} is not one of the members");
        match (self.peer_listen, listed) {
            (Some(address), _) => config.peer_listen = address,
            (None, true) => {}
            (None, false) => return Err(ConfigError::new("peer_listen", not_listed())),
        }
        match (self.client_listen, listed) {
            (Some(address), _) => config.client_listen = address,
            (None, true) => {}
            (None, false) => return Err(ConfigError::new("client_listen", not_listed())),
        }
        if let Some(initial_state) = self.initial_state {
            config.initial_state = initial_state.into_value();
        }
        self.raft.apply_to(&mut config.raft);
        self.log.apply_to(&mut config.log);
        self.net.apply_to(&mut config.net);
        self.pipeline.apply_to(&mut config.pipeline);
        config.placement = self.placement.into_placement();
        self.sessions.apply_to(&mut config.sessions);
        self.kv.apply_to(&mut config.kv);
        config.sync_identity();
        Ok((config, secret_key))
    }

    fn from_config(config: &NodeConfig) -> NodeFile {
        let (secret, secret_hex) = match std::str::from_utf8(&config.secret) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(hex_encode(&config.secret))),
        };
        NodeFile {
            node_id: Some(Int(config.node_id)),
            cluster_id: Some(Hex(config.cluster_id)),
            group_id: Some(Int(config.group_id)),
            data_dir: Some(config.data_dir.to_string_lossy().into_owned()),
            secret,
            secret_hex,
            secret_file: None,
            peer_listen: Some(config.peer_listen),
            client_listen: Some(config.client_listen),
            initial_state: Some(InitialStateFile::from_value(config.initial_state)),
            members: config
                .members
                .iter()
                .map(|m| MemberFile { id: Int(m.id), peer_address: m.peer_address, client_address: m.client_address })
                .collect(),
            raft: RaftFile::from_config(&config.raft),
            log: LogFile::from_config(&config.log),
            net: NetFile::from_config(&config.net),
            pipeline: PipelineFile::from_config(&config.pipeline),
            placement: PlacementFile::from_placement(&config.placement),
            sessions: SessionsFile::from_config(&config.sessions),
            kv: KvFile::from_config(&config.kv),
        }
    }
}

/// The secret from whichever one of the three keys is given, and that key's name.
fn read_secret(
    secret: Option<String>,
    secret_hex: Option<String>,
    secret_file: Option<String>,
    base_dir: &Path,
) -> Result<(Vec<u8>, &'static str), ConfigError> {
    match (secret, secret_hex, secret_file) {
        (Some(text), None, None) => Ok((text.into_bytes(), "secret")),
        (None, Some(hex), None) => hex_decode(&hex)
            .map(|bytes| (bytes, "secret_hex"))
            .ok_or_else(|| ConfigError::new("secret_hex", "must be an even number of hex digits")),
        (None, None, Some(file)) => {
            let path = base_dir.join(file);
            let mut bytes = std::fs::read(&path)
                .map_err(|e| ConfigError::new("secret_file", format!("cannot read {}: {e}", path.display())))?;
            // Editors and `echo` end a file with a newline that is not meant as part of the
            // secret; dropping one keeps such a file equal to the same text given as `secret`.
            if bytes.ends_with(b"\n") {
                bytes.pop();
                if bytes.ends_with(b"\r") {
                    bytes.pop();
                }
            }
            Ok((bytes, "secret_file"))
        }
        (None, None, None) => Err(ConfigError::new("secret", "must be set (or secret_hex, or secret_file)")),
        (secret, secret_hex, secret_file) => {
            let given: Vec<&str> = [("secret", secret.is_some()), ("secret_hex", secret_hex.is_some())]
                .into_iter()
                .chain([("secret_file", secret_file.is_some())])
                .filter_map(|(key, is_given)| is_given.then_some(key))
                .collect();
            Err(ConfigError::new(
                given[given.len() - 1],
                format!("give only one of secret, secret_hex and secret_file; this file gives {}", given.join(" and ")),
            ))
        }
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../node.example.toml");

    use crate::config::tests::three_members;

    fn valid() -> NodeConfig {
        let mut config = NodeConfig::new(1, 0xc1, "/var/lib/smr/node1".into(), three_members());
        config.secret = b"0123456789abcdef".to_vec();
        config.initial_state = InitialState::New;
        config
    }

    /// The example file with `from` replaced by `to`; `from` must be in it, so that a test whose
    /// edit no longer applies fails instead of passing on an unedited file.
    fn example_with(from: &str, to: &str) -> String {
        assert!(EXAMPLE.contains(from), "the example file no longer contains {from:?}");
        EXAMPLE.replacen(from, to, 1)
    }

    fn refusal(text: &str) -> String {
        parse(text, Path::new("/etc/smr")).expect_err("the config must be refused").to_string()
    }

    #[test]
    fn defaults_survive_a_round_trip() {
        let config = valid();
        assert_eq!(parse(&to_toml(&config), Path::new("")).unwrap(), config);
    }

    #[test]
    fn a_value_changed_in_every_table_survives_a_round_trip() {
        let mut config = valid();
        config.node_id = 2;
        config.cluster_id = u64::MAX - 1;
        config.group_id = 7;
        config.data_dir = "/data/smr/node2".into();
        // Not UTF-8, so it must travel as secret_hex.
        config.secret = (0..=255u8).rev().collect();
        config.peer_listen = "0.0.0.0:7002".parse().unwrap();
        config.client_listen = "[::1]:7102".parse().unwrap();
        config.initial_state = InitialState::Join;
        config.raft = smr_raft::Config {
            election_ticks: 20,
            heartbeat_ticks: 3,
            pre_vote: false,
            check_quorum: true,
            lease_reads: true,
            lease_ticks: 15,
            inflight_appends_max: 17,
            inflight_bytes_max: 3 << 20,
            append_bytes_max: 2 << 20,
            proposal_bytes_max: 9 << 20,
            // Above i64::MAX: TOML integers cannot hold it, so it must be written in hex.
            uncommitted_bytes_max: u64::MAX,
            snapshot_chunk_bytes_max: 3 << 19,
            snapshot_chunks_inflight_max: 5,
            pending_reads_max: 99,
            seed: 0xdead_beef_dead_beef,
            ..config.raft
        };
        config.log = LogConfig {
            segment_bytes: 128 << 20,
            entry_bytes_max: 32 << 20,
            submit_bytes_max: 96 << 20,
            inflight_writes_max: 33,
            pending_submits_max: 77,
            spare_segments_max: 3,
            recycled_segments_max: 0,
            io_mode: IoMode::Fallback,
            ..config.log
        };
        config.net = NetConfig {
            frame_bytes_max: 32 << 20,
            read_bytes_max: 128 << 10,
            client_read_bytes_max: 32 << 10,
            peer_queue_messages_max: 100,
            peer_queue_bytes_max: 96 << 20,
            inbound_batches_max: 11,
            connections_max: 12,
            handshakes_max: 6,
            client_pending_bytes_max: 33 << 20,
            client_inflight_max: 13,
            handshake_ms: 1_500,
            idle_timeout_ms: 9_000,
            peer_idle_timeout_ms: 2_500,
            frame_receive_ms_max: 4_000,
            keepalive_ms: 800,
            reconnect_ms_min: 30,
            reconnect_ms_max: 3_000,
            write_timeout_ms: 6_000,
            seed: 42,
        };
        config.pipeline = PipelineConfig {
            tick_ms: 5,
            batch_bytes_max: 3 << 20,
            batch_commands_max: 100,
            linger_us_max: 250,
            proposals_inflight_max: 7,
            hold_for_answers_bytes_max: 4_096,
            client_requests_max: 1_000,
            log_queue_max: 1_001,
            apply_queue_max: 1_002,
            request_timeout_ms: 4_000,
            snapshot_log_bytes: 1 << 30,
            snapshot_keep_entries: 10,
            snapshot_bytes_max: 8 << 30,
            busy_poll: true,
            inline_core: false,
        };
        config.placement = Placement { core: Some(0), log: Some(1), apply: Some(2), net: Some(3) };
        config.sessions = SessionConfig { sessions_max: 10, window_max: 20, expiry_entries: 30 };
        config.kv = KvConfig { key_bytes_max: 100, value_bytes_max: 200, scan_entries_max: 300, scan_bytes_max: 400 };
        config.sync_identity();
        config.validate().expect("the changed config is valid");

        let text = to_toml(&config);
        assert!(text.contains("secret_hex = "), "{text}");
        assert_eq!(parse(&text, Path::new("")).unwrap(), config, "{text}");
    }

    #[test]
    fn the_example_file_parses_to_the_defaults_it_shows() {
        let directory = Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = load(&directory.join("node.example.toml")).expect("the example parses");
        let mut expected = NodeConfig::new(1, 0xc1, directory.join("data/node1"), three_members());
        expected.secret = b"change-me-to-32-random-characters".to_vec();
        expected.initial_state = InitialState::Refuse;
        assert_eq!(config, expected);
    }

    #[test]
    fn the_example_file_shows_every_key() {
        let mut config = valid();
        config.placement = Placement { core: Some(0), log: Some(1), apply: Some(1), net: Some(0) };
        let written = to_toml(&config);
        for line in written.lines() {
            let Some((key, _)) = line.split_once(" = ") else { continue };
            let shown =
                EXAMPLE.lines().any(|l| l.starts_with(&format!("{key} = ")) || l.starts_with(&format!("# {key} = ")));
            assert!(shown, "node.example.toml does not show `{key}`");
        }
    }

    #[test]
    fn an_unknown_top_level_key_is_named() {
        let error = refusal(&example_with("group_id = 0\n", "group_id = 0\ngroupid = 1\n"));
        assert!(error.contains("config: groupid (line 15): unknown field `groupid`"), "{error}");
    }

    #[test]
    fn a_misspelt_raft_key_is_named_not_ignored() {
        let error = refusal(&example_with("election_ticks = 10\n", "election_ticks = 10\nelection_tick = 5\n"));
        assert!(error.contains("raft.election_tick") && error.contains("unknown field"), "{error}");
    }

    #[test]
    fn a_string_where_an_integer_belongs_is_named() {
        let error = refusal(&example_with("heartbeat_ticks = 2", "heartbeat_ticks = \"2\""));
        assert!(error.contains("raft.heartbeat_ticks") && error.contains("invalid value: string \"2\""), "{error}");
    }

    #[test]
    fn a_negative_size_is_named() {
        let error = refusal(&example_with("segment_bytes = 67108864", "segment_bytes = -4096"));
        assert!(error.contains("log.segment_bytes") && error.contains("integer `-4096`"), "{error}");
    }

    #[test]
    fn an_integer_beyond_its_type_is_named() {
        let error = refusal(&example_with("pending_reads_max = 65536", "pending_reads_max = 4294967296"));
        assert!(error.contains("raft.pending_reads_max") && error.contains("0..=4294967295"), "{error}");
    }

    #[test]
    fn an_election_timeout_within_two_heartbeats_is_named_with_its_line() {
        let text = example_with("election_ticks = 10", "election_ticks = 1");
        let error = parse(&text, Path::new("")).unwrap_err();
        assert_eq!(error.key(), Some("raft.election_ticks"));
        let line = text.lines().position(|l| l == "election_ticks = 1").unwrap() + 1;
        assert!(error.to_string().contains(&format!("raft.election_ticks (line {line}): must be more")), "{error}");
    }

    #[test]
    fn a_cross_part_limit_names_the_key_to_raise() {
        let error = refusal(&example_with("batch_bytes_max = 2097152", "batch_bytes_max = 16777216"));
        assert!(error.contains("net.frame_bytes_max"), "{error}");
    }

    #[test]
    fn an_address_without_a_port_is_named() {
        let error = refusal(&example_with("peer_address = \"127.0.0.1:7002\"", "peer_address = \"127.0.0.1\""));
        assert!(error.contains("members[1].peer_address") && error.contains("invalid socket address"), "{error}");
    }

    #[test]
    fn a_member_without_an_address_is_named() {
        let error = refusal(&example_with("peer_address = \"127.0.0.1:7003\"\n", ""));
        assert!(error.contains("members[2]") && error.contains("missing field `peer_address`"), "{error}");
    }

    #[test]
    fn an_unknown_io_mode_is_named() {
        let error = refusal(&example_with("io_mode = \"auto\"", "io_mode = \"direct\""));
        assert!(error.contains("log.io_mode") && error.contains("`auto`, `uring`, `fallback`"), "{error}");
    }

    #[test]
    fn secret_and_secret_file_together_are_refused() {
        let error = refusal(&example_with("\nsecret = ", "\nsecret_file = \"secret\"\nsecret = "));
        assert!(error.contains("secret_file") && error.contains("give only one of secret"), "{error}");
    }

    #[test]
    fn a_missing_secret_is_refused() {
        let error = refusal(&example_with("\nsecret = \"change-me-to-32-random-characters\"", ""));
        assert!(error.contains("config: secret: must be set"), "{error}");
    }

    #[test]
    fn a_short_secret_is_refused() {
        let error = refusal(&example_with("change-me-to-32-random-characters", "too-short"));
        assert!(error.contains("config: secret (line 20): must be at least 16 bytes, got 9"), "{error}");
    }

    #[test]
    fn a_short_secret_file_is_named_as_the_file_key() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("secret"), "too-short\n").unwrap();
        let text = example_with("secret = \"change-me-to-32-random-characters\"", "secret_file = \"secret\"");
        let error = parse(&text, directory.path()).unwrap_err();
        assert_eq!(error.key(), Some("secret_file"), "{error}");
    }

    #[test]
    fn a_relative_secret_file_and_data_dir_resolve_against_the_config_directory() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("secret"), "0123456789abcdef\n").unwrap();
        let text = example_with("secret = \"change-me-to-32-random-characters\"", "secret_file = \"secret\"");
        std::fs::write(directory.path().join("node.toml"), text).unwrap();
        let config = load(&directory.path().join("node.toml")).unwrap();
        assert_eq!(config.secret, b"0123456789abcdef", "the trailing newline is not part of the secret");
        assert_eq!(config.data_dir, directory.path().join("data/node1"));
    }

    #[test]
    fn an_unreadable_secret_file_is_named() {
        let text = example_with("secret = \"change-me-to-32-random-characters\"", "secret_file = \"no-such-file\"");
        let error = refusal(&text);
        assert!(error.contains("secret_file") && error.contains("/etc/smr/no-such-file"), "{error}");
    }

    #[test]
    fn an_empty_data_dir_is_not_taken_as_the_config_directory() {
        let error = refusal(&example_with("data_dir = \"data/node1\"", "data_dir = \"\""));
        assert!(error.contains("config: data_dir (line 16): must not be empty"), "{error}");
    }

    #[test]
    fn a_missing_node_id_is_named() {
        let error = refusal(&example_with("node_id = 1\n", ""));
        assert!(error.contains("config: node_id: must be set"), "{error}");
    }

    #[test]
    fn a_node_not_among_the_members_must_give_its_listen_addresses() {
        let text = example_with("node_id = 1\n", "node_id = 4\n")
            .replace("initial_state = \"refuse\"", "initial_state = \"join\"");
        let text = text.replacen("peer_listen = \"127.0.0.1:7001\"\n", "", 1);
        let error = refusal(&text);
        assert!(error.contains("config: peer_listen: must be set, since node_id 4"), "{error}");
    }

    #[test]
    fn a_cluster_id_may_be_hex_or_an_integer_but_not_words() {
        let config = parse(&example_with("cluster_id = \"0xc1\"", "cluster_id = 193"), Path::new("")).unwrap();
        assert_eq!(config.cluster_id, 0xc1);
        let error = refusal(&example_with("cluster_id = \"0xc1\"", "cluster_id = \"c1\""));
        assert!(error.contains("cluster_id") && error.contains("\"0x\" hex string"), "{error}");
    }

    #[test]
    fn text_that_is_not_toml_is_refused_with_its_line() {
        let error = refusal(&example_with("node_id = 1\n", "node_id = 1\nnode_id\n"));
        assert!(error.starts_with("config: line 11, column"), "{error}");
    }
}
