//! Storage faults on real `smr node` processes: a power loss of the whole cluster (writes never
//! fsynced are dropped, emulated with the log's test-only sync journal and
//! `smr_log::fault::drop_unsynced`), the same with a planted ack-before-fsync bug that the
//! check must catch, and a full disk on one follower.
//!
//! These need the `smr` binary built with the log's `fault-injection` feature, which
//! `cargo test` does (tools/smr's dev-dependency on smr-log enables it); a binary without it
//! refuses the SMR_FAULT_* variables and the nodes never start.

mod harness;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use harness::{Cluster, PATIENCE};
use smr_apply::{KvCommand, KvResult};
use smr_log::fault::{PowerLoss, drop_unsynced};
use smr_net::{AdminRequest, Client, ClientConfig, RequestBody, ResponseBody};
use smr_runtime::NodeConfig;

fn no_tuning(_: &mut NodeConfig) {}

fn journal(cluster: &Cluster, id: u64) -> PathBuf {
    cluster.dir.path().join(format!("node{id}.journal"))
}

fn fault_env(cluster_dir: &Path, id: u64, ack_before_fsync: bool) -> Vec<(String, String)> {
    let journal = cluster_dir.join(format!("node{id}.journal"));
    let mut env = vec![(smr_log::FAULT_SYNC_JOURNAL_ENV.to_owned(), journal.display().to_string())];
    if ack_before_fsync {
        env.push((smr_log::FAULT_ACK_BEFORE_FSYNC_ENV.to_owned(), "1".to_owned()));
    }
    env
}

/// The seed of this run's random choices: `SMR_TEST_SEED` to replay one, else the clock.
fn seed() -> u64 {
    let seed = std::env::var("SMR_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64
    });
    eprintln!("seed {seed} (replay with SMR_TEST_SEED={seed})");
    seed
}

/// Writers putting fresh keys until stopped; each put acknowledged is recorded.
struct Load {
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<Vec<(String, String)>>>,
}

impl Load {
    fn start(addresses: Vec<SocketAddr>, writers: u64, tag: &str, value_bytes: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = (0..writers)
            .map(|w| {
                let (addresses, stop, tag) = (addresses.clone(), Arc::clone(&stop), tag.to_owned());
                std::thread::spawn(move || write_until_stopped(&addresses, &stop, &tag, w, value_bytes))
            })
            .collect();
        Load { stop, writers }
    }

    /// Stops the writers and returns every acknowledged put as `(key, value)`.
    fn stop(self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::Relaxed);
        self.writers.into_iter().flat_map(|w| w.join().expect("writer thread")).collect()
    }
}

fn write_until_stopped(
    addresses: &[SocketAddr],
    stop: &AtomicBool,
    tag: &str,
    writer: u64,
    value_bytes: usize,
) -> Vec<(String, String)> {
    let config = ClientConfig { response_ms: 1_000, connect_ms: 300, retries_max: 4, ..ClientConfig::default() };
    let session = u64::from(std::process::id()) * 1_000_003 + writer * 7919 + tag.len() as u64 * 104_729 + 1;
    let mut client: Option<Client> = None;
    let mut acked = Vec::new();
    let mut sequence = 0;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let key = format!("{tag}-w{writer}-{sequence:06}");
        let mut value = format!("{key}=");
        while value.len() < value_bytes {
            value.push((b'a' + (value.len() % 26) as u8) as char);
        }
        let payload = KvCommand::Put { key: key.as_bytes(), value: value.as_bytes() }.encode();
        let body = RequestBody::Command { session_id: session, sequence, payload };
        // Retried with the same sequence number until answered: applied at most once.
        while !stop.load(Ordering::Relaxed) {
            if client.is_none() {
                client = Client::connect(addresses, config.clone()).ok();
            }
            let Some(connected) = client.as_mut() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            match connected.call(body.clone()) {
                Ok(ResponseBody::Ok(bytes)) => {
                    assert_eq!(KvResult::decode(&bytes).expect("a KV result"), KvResult::Done);
                    acked.push((key, value));
                    break;
                }
                Ok(ResponseBody::TimedOut | ResponseBody::NotLeader { .. } | ResponseBody::Busy) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(other) => panic!("put refused: {other:?}"),
                Err(_) => {
                    client = None;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
    acked
}

/// The acknowledged puts that a linearizable read does not return with their value.
fn missing(cluster: &Cluster, acked: &[(String, String)]) -> Vec<(String, Option<String>)> {
    let mut kv = cluster.client();
    acked
        .iter()
        .filter_map(|(key, value)| {
            let got = kv.get(key);
            (got.as_deref() != Some(value.as_str())).then(|| (key.clone(), got))
        })
        .collect()
}

/// Emulates the power loss on every (stopped) node's log; returns the reports' text.
fn power_loss(cluster: &Cluster, how: PowerLoss, seed: u64) -> String {
    let mut text = String::new();
    for id in cluster.ids() {
        let log_dir = cluster.config(id).data_log_dir();
        let report = drop_unsynced(&log_dir, &journal(cluster, id), how, seed.wrapping_add(id))
            .unwrap_or_else(|e| panic!("drop_unsynced on node {id}: {e}"));
        eprintln!("node {id}: power loss ({how:?}): {report}");
        text.push_str(&format!("node {id}: {report}\n"));
    }
    text
}

/// Starts `n` founding nodes, each journaling its log's writes and syncs.
fn start_journaled(n: u64, ack_before_fsync: bool) -> Cluster {
    let mut cluster = Cluster::configure(n, no_tuning);
    for id in cluster.ids() {
        let env = fault_env(cluster.dir.path(), id, ack_before_fsync);
        cluster.spawn_with_env(id, &env);
    }
    cluster
}

fn restart_all(cluster: &mut Cluster, ack_before_fsync: bool) {
    for id in cluster.ids() {
        let env = fault_env(cluster.dir.path(), id, ack_before_fsync);
        cluster.spawn_with_env(id, &env);
    }
}

/// A whole-cluster power loss under write load: every acknowledged put survives, with its value,
/// and the replicas converge.
#[test]
fn acknowledged_writes_survive_a_power_loss_of_every_node() {
    let seed = seed();
    let mut cluster = start_journaled(3, false);
    cluster.leader();
    let load = Load::start(cluster.client_addresses(), 4, "pl", 200);
    std::thread::sleep(Duration::from_millis(2_000));
    // The power goes while the writers are busy: some writes are in flight, unsynced.
    cluster.kill_all_at_once();
    let acked = load.stop();
    assert!(acked.len() >= 10, "the load got only {} puts acknowledged", acked.len());
    let reports = power_loss(&cluster, PowerLoss::RandomSubset, seed);
    restart_all(&mut cluster, false);
    cluster.leader();
    let lost = missing(&cluster, &acked);
    assert!(
        lost.is_empty(),
        "seed {seed}: {} of {} acknowledged puts lost after the power loss, e.g. {:?}\n{reports}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    let leader = cluster.leader();
    let commit = cluster.status(leader).and_then(|s| s["commit_index"].as_u64()).unwrap_or(0);
    cluster.converged(commit);
    eprintln!("{} acknowledged puts all present after the power loss", acked.len());
}

/// The suite's own strength: with the planted bug (entries acknowledged before any fsync) the
/// same check MUST report lost writes. If it did not, the power-loss test above would be blind.
#[test]
fn the_power_loss_check_catches_the_planted_ack_before_fsync_bug() {
    let seed = seed();
    let mut cluster = start_journaled(3, false);
    let mut kv = cluster.client();
    // A durable base written without the bug: the cluster, its members and terms.
    for i in 0..10 {
        kv.put(&format!("base-{i}"), "durable");
    }
    for id in cluster.ids() {
        assert_eq!(cluster.terminate(id), Some(0), "node {id} stops cleanly");
    }
    restart_all(&mut cluster, true);
    cluster.leader();
    let load = Load::start(cluster.client_addresses(), 3, "bug", 100);
    std::thread::sleep(Duration::from_millis(1_500));
    // Writes are still being acknowledged right up to the power loss.
    cluster.kill_all_at_once();
    let acked = load.stop();
    assert!(!acked.is_empty(), "no write was acknowledged under the planted bug: nothing to check");
    let reports = power_loss(&cluster, PowerLoss::All, seed);
    restart_all(&mut cluster, false);
    cluster.leader();
    let lost = missing(&cluster, &acked);
    eprintln!(
        "planted bug: the check reports {} of {} acknowledged puts lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(3)]
    );
    assert!(
        !lost.is_empty(),
        "seed {seed}: the planted ack-before-fsync bug went unnoticed: all {} acknowledged puts survived the \
         power loss, so the power-loss check is blind\n{reports}",
        acked.len()
    );
    // What was written before the bug was planted was fsynced, and survives.
    let base: Vec<(String, String)> = (0..10).map(|i| (format!("base-{i}"), "durable".to_owned())).collect();
    assert!(missing(&cluster, &base).is_empty(), "the synced base must survive");
}

/// A tmpfs mounted for a test, unmounted (lazily: a killed node may still hold it) on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` at `path`, or says why not.
    fn mount(path: &Path, bytes: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .status()
            .map_err(|e| format!("mount: {e}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed: {status}"));
        }
        Ok(Tmpfs { path: path.to_path_buf() })
    }

    fn resize(&self, bytes: u64) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.path)
            .status()
            .expect("mount -o remount");
        assert!(status.success(), "remount of {} failed: {status}", self.path.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Small batches and entries, so that a follower with 256 KiB segments on a 1 MiB tmpfs fills
/// its disk with a few hundred writes.
fn small_disk(config: &mut NodeConfig) {
    config.pipeline.batch_bytes_max = 32 << 10;
    config.kv.value_bytes_max = 16 << 10;
    config.log.entry_bytes_max = 64 << 10;
    config.log.submit_bytes_max = 4 << 20;
    if config.node_id == DISK_FULL_NODE {
        config.log.segment_bytes = 256 << 10;
    }
}

const DISK_FULL_NODE: u64 = 3;

/// One follower's disk fills up: it stops with exit code 73, the others keep serving, nothing
/// acknowledged is lost, and once space is back the follower restarts and catches up.
#[test]
fn a_follower_with_a_full_disk_stops_and_catches_up_once_space_is_back() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    let mut cluster = Cluster::configure(3, small_disk);
    let data_dir = cluster.config(DISK_FULL_NODE).data_dir.clone();
    let mount = match root.then(|| Tmpfs::mount(&data_dir, 1 << 20)) {
        Some(Ok(mount)) => mount,
        failed => {
            let why = match failed {
                Some(Err(error)) => error,
                _ => "not running as root".to_owned(),
            };
            assert!(!ci, "disk-full test cannot mount a tmpfs ({why}); under CI it must run");
            eprintln!("\n!!!!! SKIPPED the disk-full test: it mounts a tmpfs and cannot here ({why}) !!!!!\n");
            return;
        }
    };
    for id in cluster.ids() {
        cluster.spawn(id);
    }
    let leader = cluster.leader();
    if leader == DISK_FULL_NODE {
        let mut kv = cluster.client();
        let answer = kv.admin(AdminRequest::TransferLeader { node_id: 1 });
        assert!(matches!(answer, ResponseBody::Ok(_)), "{answer:?}");
        cluster.wait_for("node 1 to lead", || cluster.status(1).is_some_and(|s| s["role"] == "leader").then_some(()));
    }

    let load = Load::start(cluster.client_addresses(), 3, "full", 8 << 10);
    let code = cluster.wait_exit(DISK_FULL_NODE);
    assert_eq!(code, Some(smr_runtime::EXIT_CODE_NO_SPACE), "{}", cluster.node_log(DISK_FULL_NODE));
    // The other two keep acknowledging writes.
    let acked_at_exit = Instant::now();
    std::thread::sleep(Duration::from_millis(1_000));
    let acked = load.stop();
    assert!(!acked.is_empty(), "no write was acknowledged");
    let mut kv = cluster.client();
    kv.put("after-disk-full", "served");
    assert!(acked_at_exit.elapsed() < PATIENCE);
    let lost = missing(&cluster, &acked);
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged puts lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );

    mount.resize(64 << 20);
    cluster.spawn(DISK_FULL_NODE);
    let leader = cluster.leader();
    let commit = cluster.status(leader).and_then(|s| s["commit_index"].as_u64()).expect("commit index");
    let (index, hash) = cluster.converged(commit);
    eprintln!("{} acknowledged puts; node {DISK_FULL_NODE} caught up to {index} (hash {hash})", acked.len());
    assert_eq!(kv.get("after-disk-full").as_deref(), Some("served"));
}
