//! Real clusters of real `smr node` processes on loopback, for the multi-process tests.
//!
//! Each node gets its own data directory under one temporary directory and its own config file,
//! written with `config_file::to_toml`. Processes are killed when the cluster drops, also when a
//! test fails.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use smr_apply::{KvCommand, KvResult};
use smr_net::{AdminRequest, Client, ClientConfig, Consistency, RequestBody, ResponseBody};
use smr_runtime::{InitialState, Member, NodeConfig, config_file};

pub const SECRET: &str = "multi-process-test-cluster-secret";

/// How long a test waits for a cluster to do something it should do within a few election
/// timeouts; generous, because CI runs several nodes on two shared cores.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Picks `n` loopback ports for test nodes: below the ephemeral range, none twice in this
/// binary (see `smr_net::test_ports`).
fn free_ports(n: usize) -> Vec<u16> {
    smr_net::test_ports::free_ports(n)
}

/// A cluster id of its own for each cluster: a node that reaches another cluster's node (a port
/// reused between tests) is refused at the handshake instead of joining its elections.
fn fresh_cluster_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CLUSTERS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ CLUSTERS.fetch_add(1, Ordering::Relaxed);
    smr_raft::mix(seed) | 1
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    cluster_id: u64,
    pub members: Vec<Member>,
    pub configs: Vec<NodeConfig>,
    children: Vec<Option<Child>>,
    tune: fn(&mut NodeConfig),
}

pub fn member(id: u64) -> Member {
    let ports = free_ports(2);
    Member {
        id,
        peer_address: SocketAddr::from(([127, 0, 0, 1], ports[0])),
        client_address: SocketAddr::from(([127, 0, 0, 1], ports[1])),
    }
}

fn smr() -> &'static str {
    env!("CARGO_BIN_EXE_smr")
}

/// Defaults for tests: small segments so files stay small, fast ticks.
pub fn test_defaults(config: &mut NodeConfig) {
    config.log.segment_bytes = 8 << 20;
    config.log.entry_bytes_max = 4 << 20;
    config.log.submit_bytes_max = 16 << 20;
    config.pipeline.request_timeout_ms = 3_000;
    // `auto` writes with pwrite on file systems where io_uring would hand every write to a worker
    // (ext4, as on the development machine): even nodes insist on io_uring, so that both paths
    // run in every multi-node test.
    if config.node_id.is_multiple_of(2) {
        config.log.io_mode = smr_log::IoMode::Uring;
    }
    // Likewise the core: every third node runs its rounds only on its own thread.
    if config.node_id.is_multiple_of(3) {
        config.pipeline.inline_core = false;
    }
}

impl Cluster {
    /// Starts `n` founding nodes, with `tune` applied to every node's config.
    pub fn start(n: u64, tune: fn(&mut NodeConfig)) -> Cluster {
        let mut cluster = Cluster::configure(n, tune);
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster
    }

    pub fn config_for(&self, id: u64, members: &[Member], initial_state: InitialState) -> NodeConfig {
        let mut config =
            NodeConfig::new(id, self.cluster_id, self.dir.path().join(format!("node{id}")), members.to_vec());
        config.secret = SECRET.as_bytes().to_vec();
        config.initial_state = initial_state;
        test_defaults(&mut config);
        (self.tune)(&mut config);
        config.sync_identity();
        config.validate().expect("test config is valid");
        config
    }

    pub fn config_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}.toml"))
    }

    /// Adds a node's config (for a node that joins later); returns its id.
    pub fn add_config(&mut self, config: NodeConfig) -> u64 {
        let id = config.node_id;
        self.configs.push(config);
        self.children.push(None);
        id
    }

    pub fn config(&self, id: u64) -> &NodeConfig {
        self.configs.iter().find(|c| c.node_id == id).expect("known node")
    }

    fn slot(&self, id: u64) -> usize {
        self.configs.iter().position(|c| c.node_id == id).expect("known node")
    }

    /// Starts (or restarts) node `id` from its config file.
    pub fn spawn(&mut self, id: u64) {
        let slot = self.slot(id);
        let path = self.config_path(id);
        std::fs::write(&path, config_file::to_toml(&self.configs[slot])).expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node{id}.log")))
            .expect("log file");
        let child = Command::new(smr())
            .arg("node")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn smr node");
        self.children[slot] = Some(child);
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children[self.slot(id)].as_ref().map(Child::id)
    }

    /// SIGKILL: the process dies at once, without draining.
    pub fn kill(&mut self, id: u64) {
        let slot = self.slot(id);
        if let Some(mut child) = self.children[slot].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit; returns the exit code.
    pub fn terminate(&mut self, id: u64) -> Option<i32> {
        let slot = self.slot(id);
        let mut child = self.children[slot].take()?;
        // SAFETY: sending a signal to a child process we own.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node {id} did not stop within {PATIENCE:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn node_log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{id}.log"))).unwrap_or_default()
    }

    pub fn client_addresses(&self) -> Vec<SocketAddr> {
        self.configs.iter().map(|c| c.client_listen).collect()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.configs.iter().map(|c| c.node_id).collect()
    }

    pub fn running(&self) -> Vec<u64> {
        self.configs.iter().zip(&self.children).filter(|(_, c)| c.is_some()).map(|(c, _)| c.node_id).collect()
    }

    /// `smr ctl status` of one node, as JSON; `None` if it does not answer.
    pub fn status(&self, id: u64) -> Option<serde_json::Value> {
        let address = self.config(id).client_listen;
        let config = ClientConfig { response_ms: 2_000, connect_ms: 500, ..ClientConfig::default() };
        let mut client = Client::connect(&[address], config).ok()?;
        client.submit(RequestBody::Admin(AdminRequest::Status)).ok()?;
        match client.recv().ok()?.body {
            ResponseBody::Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            _ => None,
        }
    }

    /// Waits until one running node says it is the leader and returns its id.
    pub fn leader(&self) -> u64 {
        self.wait_for("a leader", || {
            self.running().into_iter().find(|&id| self.status(id).is_some_and(|s| s["role"] == "leader"))
        })
    }

    pub fn wait_for<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            if Instant::now() > deadline {
                let logs: String = self
                    .ids()
                    .iter()
                    .map(|&id| format!("--- node {id}: {:?}\n{}", self.status(id), tail(&self.node_log(id), 30)))
                    .collect();
                panic!("gave up waiting for {what} after {PATIENCE:?}\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running node has applied the same index, at least `index_min`, and
    /// returns `(index, state hash)`; panics if their hashes differ at that index.
    pub fn converged(&self, index_min: u64) -> (u64, String) {
        self.wait_for("every running node to apply the same index", || {
            let statuses: Vec<serde_json::Value> =
                self.running().into_iter().map(|id| self.status(id)).collect::<Option<_>>()?;
            let index = statuses[0]["applied_state_index"].as_u64()?;
            if index < index_min || statuses.iter().any(|s| s["applied_state_index"].as_u64() != Some(index)) {
                return None;
            }
            let hash = statuses[0]["state_hash"].as_str()?.to_owned();
            for s in &statuses {
                assert_eq!(
                    s["state_hash"].as_str(),
                    Some(hash.as_str()),
                    "state hashes differ at index {index}: {statuses:?}"
                );
            }
            Some((index, hash))
        })
    }

    pub fn client(&self) -> Kv {
        Kv::new(self.client_addresses())
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n") + "\n"
}

/// Lines of each node's log shown when a test fails.
const LOG_TAIL_LINES: usize = 40;

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut states = Vec::new();
        for (config, child) in self.configs.iter().zip(self.children.iter_mut()) {
            let state = match child.as_mut().map(Child::try_wait) {
                None => "not running".to_owned(),
                Some(Ok(Some(status))) => format!("had exited: {status}"),
                Some(_) => "running".to_owned(),
            };
            if let Some(child) = child {
                let _ = child.kill();
                let _ = child.wait();
            }
            states.push((config.node_id, state));
        }
        if std::thread::panicking() {
            // The test failed: say what each node was doing, or the failure cannot be read.
            for (id, state) in states {
                eprint!(
                    "----- node {id} ({state}); the end of its log -----\n{}",
                    tail(&self.node_log(id), LOG_TAIL_LINES)
                );
            }
        }
    }
}

/// A key-value client with a session: retries follow redirects and keep the sequence number,
/// so a command is applied once however often it is sent.
pub struct Kv {
    addresses: Vec<SocketAddr>,
    client: Option<Client>,
    pub session: u64,
    pub sequence: u64,
}

impl Kv {
    pub fn new(addresses: Vec<SocketAddr>) -> Kv {
        Kv { addresses, client: None, session: std::process::id() as u64 * 1_000_003 + 17, sequence: 0 }
    }

    pub fn with_session(mut self, session: u64) -> Kv {
        self.session = session;
        self
    }

    /// Sends `body` until it gets a final answer (not a redirect, busy, timeout or a broken
    /// connection) or `PATIENCE` runs out.
    pub fn request(&mut self, body: RequestBody) -> ResponseBody {
        let deadline = Instant::now() + PATIENCE;
        let mut last = None;
        while Instant::now() < deadline {
            if self.client.is_none() {
                let config =
                    ClientConfig { response_ms: 3_000, connect_ms: 500, retries_max: 8, ..ClientConfig::default() };
                self.client = Client::connect(&self.addresses, config).ok();
            }
            let Some(client) = self.client.as_mut() else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            match client.call(body.clone()) {
                Ok(ResponseBody::TimedOut) | Ok(ResponseBody::NotLeader { .. }) | Ok(ResponseBody::Busy) => {}
                Ok(answer) => return answer,
                Err(error) => {
                    last = Some(error.to_string());
                    self.client = None;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no final answer within {PATIENCE:?}; last error {last:?}");
    }

    pub fn command(&mut self, command: KvCommand<'_>) -> KvResult {
        self.sequence += 1;
        let body =
            RequestBody::Command { session_id: self.session, sequence: self.sequence, payload: command.encode() };
        match self.request(body) {
            ResponseBody::Ok(bytes) => KvResult::decode(&bytes).expect("a KV result"),
            other => panic!("command refused: {other:?}"),
        }
    }

    pub fn put(&mut self, key: &str, value: &str) {
        assert_eq!(self.command(KvCommand::Put { key: key.as_bytes(), value: value.as_bytes() }), KvResult::Done);
    }

    pub fn get(&mut self, key: &str) -> Option<String> {
        let payload = KvCommand::Get { key: key.as_bytes() }.encode();
        match self.request(RequestBody::Read { consistency: Consistency::Linearizable, payload }) {
            ResponseBody::Ok(bytes) => match KvResult::decode(&bytes).expect("a KV result") {
                KvResult::Value(v) => v.map(|v| String::from_utf8(v.to_vec()).expect("UTF-8 value")),
                other => panic!("unexpected read result {other:?}"),
            },
            other => panic!("read refused: {other:?}"),
        }
    }

    pub fn admin(&mut self, admin: AdminRequest) -> ResponseBody {
        self.request(RequestBody::Admin(admin))
    }
}

pub fn bytes(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

pub fn data_dir(cluster: &Cluster, id: u64) -> &Path {
    &cluster.config(id).data_dir
}

impl Cluster {
    /// The configs of `n` founding nodes, none started yet (start each with
    /// [`Cluster::spawn`]): for a test that prepares a node's data directory first.
    pub fn configure(n: u64, tune: fn(&mut NodeConfig)) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let members: Vec<Member> = (1..=n).map(member).collect();
        let mut cluster = Cluster {
            dir,
            cluster_id: fresh_cluster_id(),
            members: members.clone(),
            configs: Vec::new(),
            children: Vec::new(),
            tune,
        };
        for id in 1..=n {
            let config = cluster.config_for(id, &members, InitialState::New);
            cluster.configs.push(config);
            cluster.children.push(None);
        }
        cluster
    }

    /// [`Cluster::spawn`] with extra environment variables for the node's process.
    pub fn spawn_with_env(&mut self, id: u64, env: &[(String, String)]) {
        let slot = self.slot(id);
        let path = self.config_path(id);
        std::fs::write(&path, config_file::to_toml(&self.configs[slot])).expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node{id}.log")))
            .expect("log file");
        let child = Command::new(smr())
            .arg("node")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn smr node");
        self.children[slot] = Some(child);
    }

    /// SIGKILLs every running node before waiting for any (a power cut hits them together);
    /// returns their ids.
    pub fn kill_all_at_once(&mut self) -> Vec<u64> {
        let ids = self.running();
        for child in self.children.iter().flatten() {
            // SAFETY: sending a signal to a child process we own and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        }
        for child in self.children.iter_mut() {
            if let Some(mut child) = child.take() {
                let _ = child.wait();
            }
        }
        ids
    }

    /// Waits up to `PATIENCE` for node `id` to exit on its own and returns its exit code
    /// (`None` when killed by a signal); panics if it is still running.
    pub fn wait_exit(&mut self, id: u64) -> Option<i32> {
        let slot = self.slot(id);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let child = self.children[slot].as_mut().expect("node is running");
            if let Ok(Some(status)) = child.try_wait() {
                self.children[slot] = None;
                return status.code();
            }
            if Instant::now() > deadline {
                panic!("node {id} did not exit within {PATIENCE:?}\n{}", tail(&self.node_log(id), 30));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces node `id`'s config (written at its next spawn).
    pub fn set_config(&mut self, config: NodeConfig) {
        let slot = self.slot(config.node_id);
        self.configs[slot] = config;
    }
}
