//! Everything one node is configured with, in one struct, validated once at start-up.
//!
//! [`NodeConfig`] gathers the configs of the parts (the Raft core's, the log's, the transport's)
//! with the runtime's own: who the members are, where the data lives, how the pipeline batches,
//! and which stage runs on which core. `config_file.rs` reads it from TOML; [`NodeConfig::validate`]
//! checks every field and the limits that must agree across parts (an append must fit a frame,
//! an entry must fit a record).

use std::net::SocketAddr;
use std::path::PathBuf;

use smr_apply::{KvConfig, SessionConfig};
use smr_log::LogConfig;
use smr_net::NetConfig;
use smr_raft::{ClusterId, GroupId, NodeId};

use crate::placement::Placement;

/// Largest `sessions.window_max`: results remembered per client session.
pub const SESSION_WINDOW_MAX: u64 = 65_536;

/// A member of the cluster as the configuration knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    /// Where its peer transport listens.
    pub peer_address: SocketAddr,
    /// Where it serves clients (given to clients in `NotLeader` redirects).
    pub client_address: SocketAddr,
}

/// What to do when the data directory is empty. Ignored when it holds a node already: a node
/// with data always restarts from it, and never re-bootstraps or re-joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialState {
    /// Refuse to start on an empty data directory: an operator must say which of the two below
    /// is meant, so that a wiped directory is never silently reused under an old id.
    Refuse,
    /// Found a new cluster whose voters are every member in `members`.
    New,
    /// Join an existing cluster: start empty and wait for its leader to add this node.
    Join,
}

/// The runtime's own knobs: the pipeline between the stages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Period of the Raft core's clock. Election and heartbeat timeouts are counted in ticks.
    pub tick_ms: u64,
    /// Most bytes of client commands the sequencer packs into one entry.
    pub batch_bytes_max: usize,
    /// Most client commands in one entry.
    pub batch_commands_max: usize,
    /// How long the sequencer may hold a batch that is not full, waiting for more commands.
    /// 0 proposes whatever arrived together (natural batching: under load, commands pile up
    /// while the previous batch is being written, so batches grow without any wait).
    pub linger_us_max: u64,
    /// Entries the leader keeps proposed and uncommitted before it holds the next batch to let
    /// it grow (see `CoreStage::flush_batch_if_due`); the batch goes when one commits. 0 never
    /// holds, neither for this nor for `hold_for_answers_bytes_max`. The default, 1, was
    /// measured against 2 on the development machine (smr-bench, 3 nodes, 2 runs each): 5-15 %
    /// more puts/s at 16 and 256 outstanding, a lower p99, 50 % larger entries, the same at 1
    /// and 1024.
    pub proposals_inflight_max: usize,
    /// A batch smaller than this many bytes is held after an entry of this leader commits until
    /// the apply stage has answered it, so that the clients' next commands join the batch
    /// (`CoreStage::answers_due`). 0 never holds for answers. The default (16 KiB) was measured
    /// on the development machine (smr-bench, interleaved runs): against 0, commands per entry
    /// 6.7-7.1 → 12.0-12.7 at 16 outstanding and 94-99 → 126-128 at 256; puts/s, in the pairs on
    /// a steady disk, 8.6k → 10.1k at 16, 27-28k → 32-33k at 64, 67-69k → 77k at 256, 1024 the
    /// same; against no bound, 1024 outstanding was 8-13 % slower.
    pub hold_for_answers_bytes_max: usize,
    /// Client requests waiting for the core (the channel from the client connections).
    pub client_requests_max: usize,
    /// Readies waiting for the log writer. When full the core stops taking client commands.
    pub log_queue_max: usize,
    /// Work items waiting for the apply stage. When more than half full the core stops taking
    /// client commands, so the queue never fills and the core never blocks on it.
    pub apply_queue_max: usize,
    /// A client request with no outcome after this long is answered `TimedOut` (forwarded reads
    /// and proposals lost to a leader change are the usual cause).
    pub request_timeout_ms: u64,
    /// Take a snapshot once the log holds this many bytes of entries past the last snapshot.
    pub snapshot_log_bytes: u64,
    /// Entries kept in the log behind a snapshot, so that a follower slightly behind gets entries
    /// rather than the whole snapshot.
    pub snapshot_keep_entries: u64,
    /// Largest snapshot this node accepts from a leader or loads from disk.
    pub snapshot_bytes_max: u64,
    /// Spin instead of blocking when a stage is idle. Only for dedicated cores: with stages
    /// sharing cores (the default), spinning starves the others.
    pub busy_poll: bool,
    /// Let the thread that receives work for the Raft core (a peer reader, the client event
    /// loop) run the core's round itself when the core is idle, rather than wake the core's
    /// thread (see `core_runner.rs`); then the rounds of the stages that round handed work
    /// to: the log writer's (on a leader, on the `pwrite` path) and the apply stage's (unless
    /// the state machine must stay on one thread; `stage_runner.rs`). Saves a thread wake-up
    /// per hand-off where stages share cores (the default). With dedicated cores, turn it off
    /// so that each stage runs only on its own pinned thread.
    pub inline_core: bool,
}

impl Default for PipelineConfig {
    fn default() -> PipelineConfig {
        PipelineConfig {
            tick_ms: 10,
            batch_bytes_max: 2 << 20,
            batch_commands_max: 4096,
            linger_us_max: 0,
            proposals_inflight_max: 1,
            hold_for_answers_bytes_max: 16 << 10,
            client_requests_max: 65_536,
            log_queue_max: 4096,
            apply_queue_max: 65_536,
            request_timeout_ms: 5_000,
            snapshot_log_bytes: 256 << 20,
            snapshot_keep_entries: 1024,
            snapshot_bytes_max: 4 << 30,
            busy_poll: false,
            inline_core: true,
        }
    }
}

/// Everything a node is started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub cluster_id: ClusterId,
    pub group_id: GroupId,
    /// Holds `identity`, `log/` and `snapshots/`.
    pub data_dir: PathBuf,
    /// Shared by every member; proves membership in the peer handshake. At least 16 bytes.
    pub secret: Vec<u8>,
    pub peer_listen: SocketAddr,
    pub client_listen: SocketAddr,
    /// The members this node knows at start: itself and the others. For `InitialState::New`
    /// they are the founding voters. Members added later are learned from the log.
    pub members: Vec<Member>,
    pub initial_state: InitialState,
    pub raft: smr_raft::Config,
    pub log: LogConfig,
    pub net: NetConfig,
    pub pipeline: PipelineConfig,
    pub placement: Placement,
    pub sessions: SessionConfig,
    pub kv: KvConfig,
}

/// A field that is wrong, named the way the TOML file names it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("config: {field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError { field: field.into(), reason: reason.into() }
    }
}

impl NodeConfig {
    /// A config with every default, for a node `node_id` of a cluster whose members are
    /// `members` (this node among them).
    pub fn new(node_id: NodeId, cluster_id: ClusterId, data_dir: PathBuf, members: Vec<Member>) -> NodeConfig {
        let me = members.iter().find(|m| m.id == node_id);
        let unspecified: SocketAddr = ([0, 0, 0, 0], 0).into();
        NodeConfig {
            node_id,
            cluster_id,
            group_id: 0,
            data_dir,
            secret: Vec::new(),
            peer_listen: me.map_or(unspecified, |m| m.peer_address),
            client_listen: me.map_or(unspecified, |m| m.client_address),
            members,
            initial_state: InitialState::Refuse,
            raft: smr_raft::Config::new(node_id, 0),
            log: LogConfig::new(cluster_id, node_id, 0),
            net: NetConfig::default(),
            pipeline: PipelineConfig::default(),
            placement: Placement::default(),
            sessions: SessionConfig::default(),
            kv: KvConfig::default(),
        }
    }

    /// Copies the identity fields into the parts' configs, which carry their own copies.
    pub fn sync_identity(&mut self) {
        self.raft.id = self.node_id;
        self.raft.group = self.group_id;
        self.log.node_id = self.node_id;
        self.log.cluster_id = self.cluster_id;
        self.log.group_id = self.group_id;
    }

    /// The settings that decide how a committed entry is applied, by the names the TOML file
    /// gives them. Replicas that differ in one would apply the same log differently (a put one
    /// accepts and another refuses as too large, a retry one answers from its session window and
    /// another applies again, a batch one refuses as too long) and diverge without a word, so
    /// the peer handshake refuses a peer whose [`NodeConfig::settings_fingerprint`] differs.
    pub fn replicated_settings(&self) -> [(&'static str, u64); 6] {
        [
            ("pipeline.batch_commands_max", self.pipeline.batch_commands_max as u64),
            ("sessions.sessions_max", self.sessions.sessions_max as u64),
            ("sessions.window_max", self.sessions.window_max),
            ("sessions.expiry_entries", self.sessions.expiry_entries),
            ("kv.key_bytes_max", self.kv.key_bytes_max as u64),
            ("kv.value_bytes_max", self.kv.value_bytes_max as u64),
        ]
    }

    /// A 64-bit FNV-1a hash of [`NodeConfig::replicated_settings`] written as `name=value`
    /// lines: the same on every build and machine, and sent in the peer handshake (whose proof
    /// covers it, so it needs no cryptographic strength).
    pub fn settings_fingerprint(&self) -> u64 {
        let mut text = String::from("smr replicated settings v1\n");
        for (name, value) in self.replicated_settings() {
            text.push_str(&format!("{name}={value}\n"));
        }
        text.bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
    }

    /// Checks every field, the parts' configs, and the limits that must agree between parts.
    ///
    /// # Errors
    /// The first [`ConfigError`], naming the field as the TOML file spells it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(ConfigError::new("node_id", "must not be 0"));
        }
        if self.cluster_id == 0 {
            return Err(ConfigError::new("cluster_id", "must not be 0 (choose a random 64-bit number per cluster)"));
        }
        if self.secret.len() < 16 {
            return Err(ConfigError::new("secret", format!("must be at least 16 bytes, got {}", self.secret.len())));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("data_dir", "must be set"));
        }
        let mut ids: Vec<NodeId> = self.members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::new("members", format!("node {} is listed twice", w[0])));
        }
        if ids.contains(&0) {
            return Err(ConfigError::new("members", "node id 0 is not valid"));
        }
        if self.initial_state == InitialState::New && !ids.contains(&self.node_id) {
            return Err(ConfigError::new(
                "members",
                format!("a node founding a cluster must be one of its members; node {} is not listed", self.node_id),
            ));
        }
        if self.raft.id != self.node_id || self.log.node_id != self.node_id || self.log.cluster_id != self.cluster_id {
            return Err(ConfigError::new("node_id", "the parts' configs disagree (call sync_identity)"));
        }
        self.raft.validate().map_err(|e| ConfigError::new(format!("raft.{}", e.field), e.reason))?;
        self.log.validate().map_err(|e| match e {
            smr_log::LogError::Config { field, reason } => ConfigError::new(format!("log.{field}"), reason),
            other => ConfigError::new("log", other.to_string()),
        })?;
        self.net.validate().map_err(|e| ConfigError::new(format!("net.{}", e.field), e.reason))?;
        self.validate_pipeline()?;
        self.validate_sessions()?;
        self.placement.validate()?;
        self.validate_across_parts()
    }

    fn validate_pipeline(&self) -> Result<(), ConfigError> {
        let p = &self.pipeline;
        let field = |name: &str, reason: String| Err(ConfigError::new(format!("pipeline.{name}"), reason));
        if p.tick_ms == 0 || p.tick_ms > 10_000 {
            return field("tick_ms", format!("must be in 1..=10000, got {}", p.tick_ms));
        }
        if p.batch_bytes_max < 64 {
            return field("batch_bytes_max", format!("must be at least 64, got {}", p.batch_bytes_max));
        }
        if p.batch_commands_max == 0 || p.batch_commands_max > 1 << 20 {
            return field("batch_commands_max", format!("must be in 1..=1048576, got {}", p.batch_commands_max));
        }
        if p.proposals_inflight_max > 1 << 16 {
            return field("proposals_inflight_max", format!("must be at most 65536, got {}", p.proposals_inflight_max));
        }
        if p.hold_for_answers_bytes_max > 1 << 30 {
            return field(
                "hold_for_answers_bytes_max",
                format!("must be at most 1073741824 (1 GiB), got {}", p.hold_for_answers_bytes_max),
            );
        }
        if p.linger_us_max > 1_000_000 {
            return field("linger_us_max", format!("must be at most 1000000 (1 s), got {}", p.linger_us_max));
        }
        for (name, value) in [
            ("client_requests_max", p.client_requests_max),
            ("log_queue_max", p.log_queue_max),
            ("apply_queue_max", p.apply_queue_max),
        ] {
            if !(2..=1 << 24).contains(&value) {
                return field(name, format!("must be in 2..=16777216, got {value}"));
            }
        }
        if p.request_timeout_ms < p.tick_ms {
            return field("request_timeout_ms", format!("must be at least tick_ms ({})", p.tick_ms));
        }
        if p.snapshot_log_bytes == 0 {
            return field("snapshot_log_bytes", "must be at least 1".into());
        }
        if p.snapshot_bytes_max == 0 {
            return field("snapshot_bytes_max", "must be at least 1".into());
        }
        Ok(())
    }

    fn validate_sessions(&self) -> Result<(), ConfigError> {
        let s = &self.sessions;
        let field = |name: &str, reason: String| Err(ConfigError::new(format!("sessions.{name}"), reason));
        if s.sessions_max == 0 || s.sessions_max > 1 << 24 {
            return field("sessions_max", format!("must be in 1..=16777216, got {}", s.sessions_max));
        }
        // A command's result is looked up in, and inserted into, its session's window: the
        // bound keeps that work per command small whatever order a client retries in.
        if s.window_max == 0 || s.window_max > SESSION_WINDOW_MAX {
            return field("window_max", format!("must be in 1..={SESSION_WINDOW_MAX}, got {}", s.window_max));
        }
        if s.expiry_entries == 0 {
            return field("expiry_entries", "must be at least 1".into());
        }
        Ok(())
    }

    /// Limits that must agree between the parts, worked out so that nothing a peer may
    /// legitimately send is refused by another part.
    fn validate_across_parts(&self) -> Result<(), ConfigError> {
        // An AppendEntries carries at most append_bytes_max of entries, plus its header and one
        // entry that may exceed the bound (the core always sends at least one). 64 KiB is ample
        // for the header fields and per-entry framing.
        let largest_entry = self.pipeline.batch_bytes_max as u64 + 4096;
        let append_frame = self.raft.append_bytes_max.max(largest_entry) + (64 << 10);
        if append_frame > self.net.frame_bytes_max as u64 {
            return Err(ConfigError::new(
                "net.frame_bytes_max",
                format!(
                    "{} cannot carry one AppendEntries of raft.append_bytes_max ({}) or one batch of \
                     pipeline.batch_bytes_max ({}) plus headers; raise it or lower those",
                    self.net.frame_bytes_max, self.raft.append_bytes_max, self.pipeline.batch_bytes_max
                ),
            ));
        }
        let chunk_frame = self.raft.snapshot_chunk_bytes_max + (64 << 10);
        if chunk_frame > self.net.frame_bytes_max as u64 {
            return Err(ConfigError::new(
                "raft.snapshot_chunk_bytes_max",
                format!(
                    "{} does not fit net.frame_bytes_max ({})",
                    self.raft.snapshot_chunk_bytes_max, self.net.frame_bytes_max
                ),
            ));
        }
        // The core hands out a ready before it takes in entries that would carry the ready past
        // log.submit_bytes_max, so one submit holds at least one whole AppendEntries: at most
        // append_bytes_max of entries as the core counts them (32 bytes of overhead each) plus
        // one entry past the bound. A record pads its payload by at most 15 bytes more, so the
        // records take at most 47/32 of the counted size; 3/2 covers it.
        let append_records = (self.raft.append_bytes_max + self.log.entry_bytes_max) * 3 / 2;
        if append_records > self.log.submit_bytes_max {
            return Err(ConfigError::new(
                "log.submit_bytes_max",
                format!(
                    "{} cannot hold the log records of one AppendEntries ({append_records} bytes: 3/2 of \
                     raft.append_bytes_max ({}) plus log.entry_bytes_max ({})); raise it or lower those",
                    self.log.submit_bytes_max, self.raft.append_bytes_max, self.log.entry_bytes_max
                ),
            ));
        }
        if largest_entry > self.log.entry_bytes_max {
            return Err(ConfigError::new(
                "log.entry_bytes_max",
                format!(
                    "{} is below one batch of pipeline.batch_bytes_max ({}) plus its archive overhead",
                    self.log.entry_bytes_max, self.pipeline.batch_bytes_max
                ),
            ));
        }
        if largest_entry > self.raft.proposal_bytes_max {
            return Err(ConfigError::new(
                "raft.proposal_bytes_max",
                format!(
                    "{} is below one batch of pipeline.batch_bytes_max ({})",
                    self.raft.proposal_bytes_max, self.pipeline.batch_bytes_max
                ),
            ));
        }
        if self.kv.value_bytes_max + self.kv.key_bytes_max + 64 > self.pipeline.batch_bytes_max {
            return Err(ConfigError::new(
                "kv.value_bytes_max",
                format!(
                    "a command with the largest key and value does not fit one batch of pipeline.batch_bytes_max ({})",
                    self.pipeline.batch_bytes_max
                ),
            ));
        }
        Ok(())
    }

    /// The member entry of this node, if listed.
    pub fn me(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.id == self.node_id)
    }

    pub fn data_log_dir(&self) -> PathBuf {
        self.data_dir.join("log")
    }

    pub fn data_snapshot_dir(&self) -> PathBuf {
        self.data_dir.join("snapshots")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn three_members() -> Vec<Member> {
        (1..=3)
            .map(|id| Member {
                id,
                peer_address: ([127, 0, 0, 1], 7000 + id as u16).into(),
                client_address: ([127, 0, 0, 1], 7100 + id as u16).into(),
            })
            .collect()
    }

    fn valid() -> NodeConfig {
        let mut config = NodeConfig::new(1, 0xc1, "/tmp/x".into(), three_members());
        config.secret = b"0123456789abcdef".to_vec();
        config.initial_state = InitialState::New;
        config
    }

    #[test]
    fn defaults_are_valid() {
        valid().validate().expect("defaults are valid");
    }

    #[test]
    fn bad_fields_are_named_as_the_file_spells_them() {
        let mut config = valid();
        config.cluster_id = 0;
        assert_eq!(config.validate().unwrap_err().field, "cluster_id");
        let mut config = valid();
        config.secret = b"short".to_vec();
        assert_eq!(config.validate().unwrap_err().field, "secret");
        let mut config = valid();
        config.raft.election_ticks = 1;
        assert_eq!(config.validate().unwrap_err().field, "raft.election_ticks");
        let mut config = valid();
        config.log.segment_bytes = 5000;
        assert_eq!(config.validate().unwrap_err().field, "log.segment_bytes");
        let mut config = valid();
        config.pipeline.batch_commands_max = 0;
        assert_eq!(config.validate().unwrap_err().field, "pipeline.batch_commands_max");
        let mut config = valid();
        config.pipeline.hold_for_answers_bytes_max = (1 << 30) + 1;
        let error = config.validate().unwrap_err();
        assert_eq!(error.field, "pipeline.hold_for_answers_bytes_max");
        assert!(error.reason.contains("at most 1073741824"), "{}", error.reason);
        let mut config = valid();
        config.members.push(config.members[0].clone());
        assert_eq!(config.validate().unwrap_err().field, "members");
    }

    #[test]
    fn session_limits_out_of_range_are_refused_by_name() {
        assert!(valid().validate().is_ok());
        type Breaker = fn(&mut SessionConfig);
        let cases: [(&str, Breaker); 4] = [
            ("sessions.sessions_max", |s| s.sessions_max = 0),
            ("sessions.window_max", |s| s.window_max = 0),
            ("sessions.window_max", |s| s.window_max = SESSION_WINDOW_MAX + 1),
            ("sessions.expiry_entries", |s| s.expiry_entries = 0),
        ];
        for (field, break_it) in cases {
            let mut config = valid();
            break_it(&mut config.sessions);
            assert_eq!(config.validate().unwrap_err().field, field);
        }
        let mut config = valid();
        config.sessions.window_max = SESSION_WINDOW_MAX;
        assert!(config.validate().is_ok(), "the bound itself is allowed");
    }

    #[test]
    fn every_replicated_setting_moves_the_fingerprint() {
        let base = valid();
        let fingerprint = base.settings_fingerprint();
        assert_eq!(fingerprint, valid().settings_fingerprint(), "a function of the config alone");
        type Changer = fn(&mut NodeConfig);
        let changes: [Changer; 6] = [
            |c| c.pipeline.batch_commands_max += 1,
            |c| c.sessions.sessions_max += 1,
            |c| c.sessions.window_max += 1,
            |c| c.sessions.expiry_entries += 1,
            |c| c.kv.key_bytes_max += 1,
            |c| c.kv.value_bytes_max += 1,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut config = valid();
            change(&mut config);
            assert_ne!(config.settings_fingerprint(), fingerprint, "{}", base.replicated_settings()[i].0);
        }
        let mut local = valid();
        local.kv.scan_entries_max += 1;
        local.pipeline.linger_us_max += 1;
        local.log.segment_bytes *= 2;
        assert_eq!(local.settings_fingerprint(), fingerprint, "settings of one node's own are not replicated");
    }

    #[test]
    fn the_fingerprint_of_the_defaults_is_stable_across_builds() {
        // Nodes of different builds compare fingerprints: a change to how it is computed, or to
        // the default of a replicated setting, changes these figures, and must be released as a
        // change that old and new nodes cannot be mixed across.
        let settings = valid().replicated_settings().map(|(name, value)| format!("{name}={value}"));
        assert_eq!(
            settings.join(" "),
            "pipeline.batch_commands_max=4096 sessions.sessions_max=65536 sessions.window_max=1024 \
             sessions.expiry_entries=10000000 kv.key_bytes_max=4096 kv.value_bytes_max=1048576"
        );
        assert_eq!(valid().settings_fingerprint(), 0x4fdf_d4f2_b694_917e, "FNV-1a of the lines, computed apart");
    }

    #[test]
    fn an_append_that_cannot_fit_a_frame_is_refused() {
        let mut config = valid();
        config.net.frame_bytes_max = 1 << 20;
        config.net.peer_queue_bytes_max = 1 << 20;
        config.net.client_pending_bytes_max = 1 << 20;
        assert_eq!(config.validate().unwrap_err().field, "net.frame_bytes_max");
    }

    #[test]
    fn a_log_submit_that_cannot_hold_one_append_is_refused() {
        let mut config = valid();
        config.log.submit_bytes_max = (config.raft.append_bytes_max + config.log.entry_bytes_max) * 3 / 2;
        config.validate().expect("the smallest submit that holds one append");
        config.log.submit_bytes_max -= 1;
        let error = config.validate().unwrap_err();
        assert_eq!(error.field, "log.submit_bytes_max", "{error}");
    }

    #[test]
    fn a_founder_must_be_a_member() {
        let mut config = valid();
        config.members.retain(|m| m.id != 1);
        assert_eq!(config.validate().unwrap_err().field, "members");
    }
}
