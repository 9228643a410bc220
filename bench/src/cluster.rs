//! A local cluster of real `smr node` processes on loopback, each with its own data directory
//! and config file under one temporary directory, which is removed when the cluster stops (also
//! on SIGINT/SIGTERM, see `signals`).

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smr_runtime::{InitialState, Member, NodeConfig, config_file};

use crate::node_settings::{self, NodeSetting};
use crate::signals;

/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_PATIENCE: Duration = Duration::from_secs(10);

/// The `smr` binary next to this one (both are built into the same target directory).
pub fn smr_binary() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
    smr_binary_beside(&me)
}

/// The `smr` binary in the same directory as `executable`.
pub fn smr_binary_beside(executable: &Path) -> Result<PathBuf, String> {
    let dir = executable.parent().ok_or_else(|| format!("{} has no parent directory", executable.display()))?;
    let smr = dir.join("smr");
    if smr.is_file() {
        Ok(smr)
    } else {
        Err(format!(
            "no smr binary at {}: build it with cargo build --release -p smr (smr-bench looks next to itself)",
            smr.display()
        ))
    }
}

/// Picks `n` free loopback ports: bound, then released (another process could take one in
/// between, which is rare enough on a benchmark machine).
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot bind a loopback port: {e}"))?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())).collect()
}

/// A seed that differs from run to run, for the cluster id and secret.
fn run_nonce() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    crate::rng::mix(nanos as u64 ^ (u64::from(std::process::id()) << 32))
}

#[derive(Debug)]
pub struct LocalCluster {
    configs: Vec<NodeConfig>,
    children: Vec<Child>,
    /// Dropped after the children are stopped (fields drop after `Drop::drop`).
    dir: tempfile::TempDir,
}

impl LocalCluster {
    /// Starts `n` founding nodes with default settings (fsync on), with `settings` laid over
    /// each node's config.
    pub fn start(smr: &Path, n: u64, settings: &[NodeSetting]) -> Result<LocalCluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("smr-bench-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let mut members = Vec::new();
        for id in 1..=n {
            let ports = free_ports(2)?;
            members.push(Member {
                id,
                peer_address: SocketAddr::from(([127, 0, 0, 1], ports[0])),
                client_address: SocketAddr::from(([127, 0, 0, 1], ports[1])),
            });
        }
        let nonce = run_nonce();
        let cluster_id = nonce | 1;
        let secret = format!("smr-bench-secret-{:016x}", crate::rng::mix(nonce));
        let mut configs = Vec::new();
        for id in 1..=n {
            let mut config = NodeConfig::new(id, cluster_id, dir.path().join(format!("node{id}")), members.clone());
            config.secret = secret.as_bytes().to_vec();
            config.initial_state = InitialState::New;
            config.sync_identity();
            config.validate().map_err(|e| format!("generated config of node {id} is invalid: {e:?}"))?;
            configs.push(node_settings::apply(&config, settings)?);
        }
        let mut cluster = LocalCluster { configs, children: Vec::new(), dir };
        for slot in 0..cluster.configs.len() {
            // On failure `cluster` drops here and stops the nodes already started.
            let child = cluster.spawn(smr, slot)?;
            cluster.children.push(child);
            signals::register(signals::Cleanup { pids: cluster.pids(), dir: cluster.dir.path().to_owned() });
        }
        Ok(cluster)
    }

    fn spawn(&self, smr: &Path, slot: usize) -> Result<Child, String> {
        let config = &self.configs[slot];
        let id = config.node_id;
        let path = self.dir.path().join(format!("node{id}.toml"));
        std::fs::write(&path, config_file::to_toml(config))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let log_path = self.log_path(id);
        let log = std::fs::File::create(&log_path).map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(smr);
        // SAFETY: between fork and exec only async-signal-safe calls are allowed, and
        // pthread_sigmask and the sigset functions are (see `signals::unblock_in_child`).
        unsafe { command.pre_exec(signals::unblock_in_child) };
        command
            .arg("node")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a Ctrl-C in the terminal reaches only smr-bench, which then
            // stops the nodes itself.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", smr.display()))
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    pub fn client_addresses(&self) -> Vec<SocketAddr> {
        self.configs.iter().map(|c| c.client_listen).collect()
    }

    /// An error naming every node that has exited, with its exit status.
    pub fn check_alive(&mut self) -> Result<(), String> {
        let mut dead = Vec::new();
        for (config, child) in self.configs.iter().zip(self.children.iter_mut()) {
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => dead.push(format!("node {} ({status})", config.node_id)),
                Err(error) => dead.push(format!("node {} (cannot wait for it: {error})", config.node_id)),
            }
        }
        if dead.is_empty() { Ok(()) } else { Err(format!("node process exited: {}", dead.join(", "))) }
    }

    /// The last `lines` lines of every node's log, for an error report.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut text = String::new();
        for config in &self.configs {
            let id = config.node_id;
            let log = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
            let all: Vec<&str> = log.lines().collect();
            text.push_str(&format!("--- node {id} log, last {lines} lines\n"));
            for line in &all[all.len().saturating_sub(lines)..] {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        signals::unregister();
        for child in &self.children {
            // SAFETY: signalling a child process we own and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_PATIENCE;
        for (config, child) in self.configs.iter().zip(self.children.iter_mut()) {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!(
                            "smr-bench: node {} did not stop within {STOP_PATIENCE:?}; killing it",
                            config.node_id
                        );
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}
