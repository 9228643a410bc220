//! A cluster of real `smr node` processes, each on its own host: a network namespace of
//! [`crate::fabric`] with its own address and data directory, or, where namespaces cannot be
//! made (not root), loopback ports, where only process faults (kill, pause) are possible.
//!
//! One cluster at a time per process: [`Cluster::start`] takes a global lock that the cluster
//! holds until it drops (tests of one binary run in parallel threads; on two cores running them
//! one after the other costs little and keeps their timings honest). Dropping the cluster
//! kills every node, deletes the namespaces, veth pairs and bridge and the temporary directory,
//! also when a test panics; the nodes also die with the thread that started them
//! (`PR_SET_PDEATHSIG`), and [`crate::fabric::remove_leftovers`] cleans up after runs that were
//! killed outright.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError, RwLock};
use std::time::{Duration, Instant};

use smr_apply::{KvCommand, KvResult};
use smr_net::{AdminRequest, Client, ClientConfig, RequestBody, ResponseBody};
use smr_runtime::{InitialState, Member, NodeConfig, config_file};

use crate::delay::DelaySpec;
use crate::fabric::{self, BRIDGE_HOST, DelayReport, HOSTS_MAX, Namespaces};

/// Milliseconds per Raft tick of every chaos node.
pub const TICK_MS: u64 = 10;
/// A follower hearing nothing starts an election after `[ELECTION_TICKS, 2 * ELECTION_TICKS)`
/// ticks.
pub const ELECTION_TICKS: u32 = 40;
/// The longest election timeout of a chaos node (the top of the randomised range).
pub const ELECTION_TIMEOUT: Duration = Duration::from_millis(2 * ELECTION_TICKS as u64 * TICK_MS);
/// How long the harness waits for something a healthy cluster does within a few election
/// timeouts; generous, because CI runs several nodes on two shared cores.
pub const PATIENCE: Duration = Duration::from_secs(40);
/// Ports of every node inside its own namespace.
const PEER_PORT: u16 = 7000;
const CLIENT_PORT: u16 = 7100;
/// How many lines of each node's log a failure report shows.
const LOG_TAIL_LINES: usize = 25;

static SERIAL: Mutex<()> = Mutex::new(());
static LEFTOVERS: Once = Once::new();

/// The lock every cluster of this process holds while it lives; a test that touches the
/// namespaces itself holds it too.
pub fn exclusive() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether this run is CI's (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The directory holding the `smr` and `smr-load` binaries: `SMR_CHAOS_BIN_DIR`, or the target
/// directory this executable was built into (`target/<profile>/deps` for a test binary).
///
/// # Errors
/// `smr` is not there.
pub fn binary(name: &str) -> Result<PathBuf, String> {
    let dir = match std::env::var_os("SMR_CHAOS_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let me = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
            let mut dir = me.parent().ok_or("my executable has no parent directory")?.to_path_buf();
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no {name} binary at {}: build it first with `cargo build -p smr -p smr-bench -p smr-chaos` \
             (or point SMR_CHAOS_BIN_DIR at the directory holding it)",
            path.display()
        ))
    }
}

/// Where the hosts live.
#[derive(Debug)]
pub enum Network {
    Namespaces(Namespaces),
    /// Fallback without namespaces: nodes on 127.0.0.1, no network faults.
    Loopback,
}

/// Makes the namespace network, or says loudly why not and falls back to loopback; under
/// `CI=true` a missing namespace network is a failure.
fn make_network() -> Network {
    LEFTOVERS.call_once(|| {
        if fabric::unavailable_reason().is_none() {
            for removed in fabric::remove_leftovers() {
                eprintln!("smr-chaos: removed a leftover of an earlier crashed run: {removed}");
            }
        }
    });
    match Namespaces::create() {
        Ok(namespaces) => Network::Namespaces(namespaces),
        Err(reason) => {
            assert!(!in_ci(), "CI=true, and the chaos suite cannot make network namespaces: {reason}");
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! smr-chaos: NO NETWORK NAMESPACES: {reason}\n\
                 !!! falling back to loopback: kill and pause faults only; partitions,\n\
                 !!! packet loss and slow links are NOT TESTED in this run (run as root)\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            Network::Loopback
        }
    }
}

fn free_loopback_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("bound address").port()).collect()
}

#[derive(Debug)]
struct Node {
    config: NodeConfig,
    child: Option<Child>,
    paused: bool,
    /// Removed from the membership: no longer counted, asked or restarted.
    removed: bool,
}

/// A running cluster; see the module documentation.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Node>,
    network: Network,
    dir: tempfile::TempDir,
    smr: PathBuf,
    cluster_id: u64,
    secret: String,
    tune: fn(&mut NodeConfig),
    /// The client addresses of every member, shared with workloads, which reconnect to them.
    addresses: Arc<RwLock<Vec<SocketAddr>>>,
    probe_session: u64,
    probe_sequence: u64,
    /// Dropped last: the next cluster of this process starts only when this one is gone.
    _serial: MutexGuard<'static, ()>,
}

/// Settings every chaos node gets: fast ticks with an election timeout long enough for a
/// loaded two-core machine, small log segments, snapshots every few MiB so that restarts and
/// joins exercise them.
pub fn chaos_defaults(config: &mut NodeConfig) {
    config.pipeline.tick_ms = TICK_MS;
    config.raft.election_ticks = ELECTION_TICKS;
    config.raft.heartbeat_ticks = 4;
    config.raft.lease_ticks = ELECTION_TICKS * 4 / 5;
    config.log.segment_bytes = 8 << 20;
    config.log.entry_bytes_max = 4 << 20;
    config.log.submit_bytes_max = 16 << 20;
    config.pipeline.request_timeout_ms = 3_000;
    config.pipeline.snapshot_log_bytes = 4 << 20;
    config.pipeline.snapshot_keep_entries = 256;
}

fn no_tuning(_: &mut NodeConfig) {}

impl Cluster {
    /// Starts `n` founding nodes (ids and hosts 1 to `n`) with [`chaos_defaults`].
    pub fn start(n: u64) -> Cluster {
        Cluster::start_tuned(n, no_tuning)
    }

    /// Starts `n` founding nodes with `tune` applied after [`chaos_defaults`].
    pub fn start_tuned(n: u64, tune: fn(&mut NodeConfig)) -> Cluster {
        assert!((1..=u64::from(HOSTS_MAX)).contains(&n), "1 to {HOSTS_MAX} nodes");
        let serial = exclusive();
        let smr = binary("smr").unwrap_or_else(|e| panic!("{e}"));
        let network = make_network();
        let dir = tempfile::Builder::new().prefix("smrc-").tempdir().expect("a temporary directory");
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let nonce = smr_raft::mix(nanos as u64 ^ u64::from(std::process::id()));
        let mut cluster = Cluster {
            nodes: Vec::new(),
            network,
            dir,
            smr,
            cluster_id: nonce | 1,
            secret: format!("smr-chaos-secret-{:016x}", smr_raft::mix(nonce)),
            tune,
            addresses: Arc::new(RwLock::new(Vec::new())),
            probe_session: (smr_raft::mix(nonce ^ 0x9e37) >> 2) | (1 << 41),
            probe_sequence: 0,
            _serial: serial,
        };
        let members: Vec<Member> = (1..=n).map(|id| cluster.make_member(id)).collect();
        for member in &members {
            let config = cluster.config_for(member.id, &members, InitialState::New);
            cluster.nodes.push(Node { config, child: None, paused: false, removed: false });
        }
        cluster.publish_addresses();
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster
    }

    /// Whether partitions, packet loss and slow links can be injected (namespaces exist).
    pub fn network_faults_possible(&self) -> bool {
        matches!(self.network, Network::Namespaces(_))
    }

    fn namespaces(&mut self) -> &mut Namespaces {
        match &mut self.network {
            Network::Namespaces(namespaces) => namespaces,
            Network::Loopback => panic!("a network fault needs network namespaces; this run is on loopback"),
        }
    }

    /// The member record of a new node `id` on its own host (namespace mode) or on fresh
    /// loopback ports.
    pub fn make_member(&mut self, id: u64) -> Member {
        match &mut self.network {
            Network::Namespaces(namespaces) => {
                let host = u8::try_from(id).ok().filter(|h| (1..=HOSTS_MAX).contains(h)).expect("node id is a host");
                namespaces.add_host(host).unwrap_or_else(|e| panic!("cannot make host {host}: {e}"));
                let ip = namespaces.address(host);
                Member {
                    id,
                    peer_address: SocketAddr::new(ip.into(), PEER_PORT),
                    client_address: SocketAddr::new(ip.into(), CLIENT_PORT),
                }
            }
            Network::Loopback => {
                let ports = free_loopback_ports(2);
                Member {
                    id,
                    peer_address: SocketAddr::from(([127, 0, 0, 1], ports[0])),
                    client_address: SocketAddr::from(([127, 0, 0, 1], ports[1])),
                }
            }
        }
    }

    fn config_for(&self, id: u64, members: &[Member], initial_state: InitialState) -> NodeConfig {
        let mut config =
            NodeConfig::new(id, self.cluster_id, self.dir.path().join(format!("node{id}")), members.to_vec());
        config.secret = self.secret.as_bytes().to_vec();
        config.initial_state = initial_state;
        chaos_defaults(&mut config);
        (self.tune)(&mut config);
        config.sync_identity();
        config.validate().expect("a chaos node's config is valid");
        config
    }

    fn publish_addresses(&self) {
        let addresses: Vec<SocketAddr> =
            self.nodes.iter().filter(|n| !n.removed).map(|n| n.config.client_listen).collect();
        *self.addresses.write().unwrap_or_else(PoisonError::into_inner) = addresses;
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.config.node_id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.config.node_id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The temporary directory holding every node's data, config and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The client addresses of the members, kept up to date across membership changes.
    pub fn shared_addresses(&self) -> Arc<RwLock<Vec<SocketAddr>>> {
        Arc::clone(&self.addresses)
    }

    pub fn client_addresses(&self) -> Vec<SocketAddr> {
        self.addresses.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Where node `id` serves clients.
    pub fn client_address(&self, id: u64) -> SocketAddr {
        self.node(id).config.client_listen
    }

    /// Every member's id (removed nodes left out).
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| !n.removed).map(|n| n.config.node_id).collect()
    }

    /// Members whose process runs (paused ones included).
    pub fn running(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| !n.removed && n.child.is_some()).map(|n| n.config.node_id).collect()
    }

    /// Starts (or restarts) node `id` from its config.
    pub fn spawn(&mut self, id: u64) {
        let config = self.node(id).config.clone();
        let path = self.dir.path().join(format!("node{id}.toml"));
        std::fs::write(&path, config_file::to_toml(&config)).expect("write a node config");
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(id)).expect("open a node log");
        let netns = match &self.network {
            Network::Namespaces(namespaces) => {
                let host = u8::try_from(id).expect("node id is a host");
                Some(namespaces.netns_file(host).unwrap_or_else(|e| panic!("{e}")))
            }
            Network::Loopback => None,
        };
        let netns_fd = netns.as_ref().map(AsRawFd::as_raw_fd);
        let mut command = Command::new(&self.smr);
        command
            .arg("node")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone a log handle"))
            .stderr(log)
            .process_group(0);
        // SAFETY: between fork and exec only async-signal-safe calls are made: setns and prctl
        // are plain system calls, and errno is read through `last_os_error`.
        unsafe {
            command.pre_exec(move || {
                if let Some(fd) = netns_fd
                    && libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // The node dies with the thread that started it, should the harness be killed.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", self.smr.display()));
        drop(netns);
        let node = self.node_mut(id);
        node.child = Some(child);
        node.paused = false;
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).child.as_ref().map(Child::id)
    }

    fn signal(&self, id: u64, signal: libc::c_int) {
        if let Some(pid) = self.pid(id) {
            // SAFETY: signalling a child process we own and have not reaped.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }

    /// SIGKILL: the process dies at once, without draining or syncing.
    pub fn kill(&mut self, id: u64) {
        if self.node(id).paused {
            self.resume(id);
        }
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process stops, its sockets stay open.
    pub fn pause(&mut self, id: u64) {
        self.signal(id, libc::SIGSTOP);
        self.node_mut(id).paused = true;
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
        self.node_mut(id).paused = false;
    }

    pub fn is_paused(&self, id: u64) -> bool {
        self.node(id).paused
    }

    /// SIGTERM, then waits for the node to stop; returns its exit code.
    pub fn terminate(&mut self, id: u64) -> Option<i32> {
        if self.node(id).paused {
            self.resume(id);
        }
        let mut child = self.node_mut(id).child.take()?;
        // SAFETY: signalling a child process we own and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {id} did not stop within {PATIENCE:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Nodes whose process exited by itself (not killed by the harness), with the status.
    pub fn crashed(&mut self) -> Vec<String> {
        let mut crashed = Vec::new();
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child
                && let Ok(Some(status)) = child.try_wait()
            {
                crashed.push(format!("node {} exited by itself: {status}", node.config.node_id));
                node.child = None;
            }
        }
        crashed
    }

    /// `smr ctl status` of one node, as JSON; `None` if it does not answer.
    pub fn status(&self, id: u64) -> Option<serde_json::Value> {
        let address = self.node(id).config.client_listen;
        let config = ClientConfig { response_ms: 1_000, connect_ms: 300, ..ClientConfig::default() };
        let mut client = Client::connect(&[address], config).ok()?;
        client.submit(RequestBody::Admin(AdminRequest::Status)).ok()?;
        match client.recv().ok()?.body {
            ResponseBody::Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            _ => None,
        }
    }

    /// The running, unpaused node that says it leads, if one does now.
    pub fn leader_now(&self) -> Option<u64> {
        self.running()
            .into_iter()
            .filter(|&id| !self.is_paused(id))
            .find(|&id| self.status(id).is_some_and(|s| s["role"] == "leader"))
    }

    /// Waits for a leader and returns its id.
    pub fn leader(&self) -> u64 {
        self.wait_for("a leader", || self.leader_now())
    }

    /// Waits until `probe` answers, or panics after [`PATIENCE`] with every node's log tail.
    pub fn wait_for<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            if Instant::now() > deadline {
                panic!("gave up waiting for {what} after {PATIENCE:?}\n{}", self.report());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every node's status and the tail of its log.
    pub fn report(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let id = n.config.node_id;
                let log = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
                format!(
                    "--- node {id} (running {}, paused {}, removed {}): {:?}\n{tail}\n",
                    n.child.is_some(),
                    n.paused,
                    n.removed,
                    self.status(id)
                )
            })
            .collect()
    }

    /// Waits until every running member has applied the same index and returns it with the
    /// state hash; panics if two hashes differ at the same applied index.
    pub fn converged(&self) -> (u64, String) {
        self.wait_for("every running node to apply the same index", || {
            let statuses: Vec<serde_json::Value> =
                self.running().into_iter().map(|id| self.status(id)).collect::<Option<_>>()?;
            let index = statuses.first()?["applied_state_index"].as_u64()?;
            if statuses.iter().any(|s| s["applied_state_index"].as_u64() != Some(index)) {
                return None;
            }
            let hash = statuses[0]["state_hash"].as_str()?.to_owned();
            for status in &statuses {
                assert_eq!(
                    status["state_hash"].as_str(),
                    Some(hash.as_str()),
                    "replicas diverged: different state hashes at applied index {index}: {statuses:#?}"
                );
            }
            Some((index, hash))
        })
    }

    /// Writes a probe key until one write is acknowledged and returns how long after `since`
    /// that was: how soon the cluster serves writes again after a fault healed at `since`.
    pub fn probe_write(&mut self, since: Instant) -> Duration {
        self.probe_sequence += 1;
        let payload =
            KvCommand::Put { key: b"smrc-probe", value: format!("{}", self.probe_sequence).as_bytes() }.encode();
        let body = RequestBody::Command { session_id: self.probe_session, sequence: self.probe_sequence, payload };
        let addresses = self.client_addresses();
        let config = ClientConfig { response_ms: 250, connect_ms: 200, retries_max: 4, ..ClientConfig::default() };
        let deadline = Instant::now() + PATIENCE;
        let mut client: Option<Client> = None;
        let mut start = 0;
        while Instant::now() < deadline {
            if client.is_none() {
                let mut rotated = addresses.clone();
                rotated.rotate_left(start % addresses.len().max(1));
                start += 1;
                client = Client::connect(&rotated, config.clone()).ok();
            }
            if let Some(c) = client.as_mut() {
                match c.call(body.clone()) {
                    // Sessions make the retries of one sequence number apply once.
                    Ok(ResponseBody::Ok(bytes)) if KvResult::decode(&bytes).ok() == Some(KvResult::Done) => {
                        return since.elapsed();
                    }
                    _ => client = None,
                }
            } else {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("no write was acknowledged within {PATIENCE:?} of the last heal\n{}", self.report());
    }

    /// Sends an admin request to the cluster (redirected to the leader) until it gets a final
    /// answer.
    pub fn admin(&self, request: AdminRequest) -> ResponseBody {
        let config = ClientConfig { response_ms: 2_000, connect_ms: 300, retries_max: 8, ..ClientConfig::default() };
        let deadline = Instant::now() + PATIENCE;
        let mut last = None;
        while Instant::now() < deadline {
            match Client::connect(&self.client_addresses(), config.clone())
                .map_err(|e| e.to_string())
                .and_then(|mut c| c.call(RequestBody::Admin(request.clone())).map_err(|e| e.to_string()))
            {
                Ok(ResponseBody::TimedOut | ResponseBody::Busy | ResponseBody::NotLeader { .. }) => {}
                // A membership change or leader transfer still in progress ("...; retry when it
                // is done"): the leader refuses the next until the last one is applied.
                Ok(ResponseBody::InvalidRequest(reason)) if reason.contains("retry when it is done") => {
                    last = Some(reason);
                }
                Ok(answer) => return answer,
                Err(error) => last = Some(error),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("admin request {request:?} got no final answer within {PATIENCE:?}; last error {last:?}");
    }

    /// Adds node `id` on a new host: starts it with `--join`'s config, adds it as a learner,
    /// waits for it to catch up and promotes it to voter.
    pub fn add_node(&mut self, id: u64) {
        assert!(self.nodes.iter().all(|n| n.config.node_id != id), "node {id} exists already");
        let member = self.make_member(id);
        let mut members: Vec<Member> = self.nodes.iter().flat_map(|n| n.config.members.clone()).collect();
        members.sort_by_key(|m| m.id);
        members.dedup_by_key(|m| m.id);
        members.retain(|m| self.nodes.iter().any(|n| n.config.node_id == m.id && !n.removed));
        members.push(member.clone());
        let config = self.config_for(id, &members, InitialState::Join);
        self.nodes.push(Node { config, child: None, paused: false, removed: false });
        self.spawn(id);
        let address = format!("{},{}", member.peer_address, member.client_address);
        let answer = self.admin(AdminRequest::AddNode { node_id: id, address, learner: true });
        assert!(matches!(answer, ResponseBody::Ok(_)), "add node {id} as learner: {answer:?}");
        let leader = self.leader();
        let commit = self.status(leader).and_then(|s| s["commit_index"].as_u64()).unwrap_or(0);
        self.wait_for(&format!("learner {id} to catch up to {commit}"), || {
            (self.status(id)?["applied_index"].as_u64()? >= commit).then_some(())
        });
        let answer = self.admin(AdminRequest::AddNode { node_id: id, address: String::new(), learner: false });
        assert!(matches!(answer, ResponseBody::Ok(_)), "promote node {id}: {answer:?}");
        self.wait_for(&format!("node {id} to be a voter"), || {
            let leader = self.leader_now()?;
            self.status(leader)?["voters"].as_array()?.contains(&id.into()).then_some(())
        });
        self.publish_addresses();
    }

    /// Removes node `id` from the membership, waits until the leader's configuration has no
    /// `id`, then stops its process.
    pub fn remove_node(&mut self, id: u64) {
        let answer = self.admin(AdminRequest::RemoveNode { node_id: id });
        assert!(matches!(answer, ResponseBody::Ok(_)), "remove node {id}: {answer:?}");
        self.wait_for(&format!("a leader without node {id}"), || {
            let leader = self.running().into_iter().filter(|&l| l != id).find(|&l| {
                self.status(l).is_some_and(|s| {
                    s["role"] == "leader" && s["voters"].as_array().is_some_and(|v| !v.contains(&id.into()))
                })
            })?;
            Some(leader)
        });
        self.kill(id);
        self.node_mut(id).removed = true;
        self.publish_addresses();
    }

    /// Cuts every link between hosts of different groups, both ways.
    pub fn partition(&mut self, groups: &[Vec<u64>]) {
        for (a, side) in groups.iter().enumerate() {
            for other in &groups[a + 1..] {
                for &x in side {
                    for &y in other {
                        self.cut(x, y);
                        self.cut(y, x);
                    }
                }
            }
        }
    }

    /// From now on node `to` drops every packet from node `from`.
    pub fn cut(&mut self, from: u64, to: u64) {
        let (from, to) = (host(from), host(to));
        self.namespaces().cut(from, to).unwrap_or_else(|e| panic!("cannot cut {from} -> {to}: {e}"));
    }

    /// Every member drops `percent` % of the packets from the other members.
    pub fn packet_loss(&mut self, percent: u8) {
        let hosts: Vec<u8> = self.ids().into_iter().map(host).collect();
        self.namespaces().set_loss(&hosts, percent).unwrap_or_else(|e| panic!("cannot add packet loss: {e}"));
    }

    /// Limits node `id`'s link to `kbit` kbit/s each way.
    pub fn slow_link(&mut self, id: u64, kbit: u32) {
        self.namespaces().slow(host(id), kbit).unwrap_or_else(|e| panic!("cannot slow the link of {id}: {e}"));
    }

    /// Delays the peer packets leaving node `id` by `spec` (see [`Namespaces::delay`]).
    pub fn delay_link(&mut self, id: u64, spec: DelaySpec) {
        self.namespaces().delay(host(id), spec).unwrap_or_else(|e| panic!("cannot delay the link of {id}: {e}"));
    }

    /// The process id of node `id`'s delayer, while its link is delayed.
    pub fn delayer_pid(&self, id: u64) -> Option<u32> {
        match &self.network {
            Network::Namespaces(namespaces) => namespaces.delayer_pid(host(id)),
            Network::Loopback => None,
        }
    }

    /// Removes every network fault; returns what the delayers did. Panics if one had died (its
    /// node's packets then went undelayed) or a fault could not be removed.
    pub fn heal_network(&mut self) -> Vec<DelayReport> {
        match &mut self.network {
            Network::Namespaces(namespaces) => {
                namespaces.heal().unwrap_or_else(|e| panic!("cannot heal the network: {e}\n{}", self.report()))
            }
            Network::Loopback => Vec::new(),
        }
    }

    /// The address clients connect from (the bridge's, in namespace mode).
    pub fn client_host(&self) -> Option<std::net::Ipv4Addr> {
        match &self.network {
            Network::Namespaces(namespaces) => Some(namespaces.address(BRIDGE_HOST)),
            Network::Loopback => None,
        }
    }
}

fn host(id: u64) -> u8 {
    u8::try_from(id).ok().filter(|h| (1..=HOSTS_MAX).contains(h)).expect("node id is a host number")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("smr-chaos: the test failed; the nodes' last words:\n{}", self.report());
        }
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child {
                let _ = child.kill();
                let _ = child.wait();
            }
            node.child = None;
        }
        // Then `network` drops (namespaces, links, bridge), then `dir`, then the lock.
    }
}
