//! Real clusters of real `smr node` processes on loopback: crash and restart, membership
//! changes, snapshots, exactly-once retries. Each test names the failure it would catch.

mod harness;

use std::time::Duration;

use harness::{Cluster, Kv, PATIENCE, member};
use smr_apply::{KvCommand, KvResult};
use smr_net::{AdminRequest, RequestBody, ResponseBody};
use smr_runtime::{InitialState, NodeConfig};

fn no_tuning(_: &mut NodeConfig) {}

/// Snapshots every ~64 KiB of log, keeping few entries behind, so that tests exercise snapshot,
/// compaction and install with a few hundred writes.
fn small_snapshots(config: &mut NodeConfig) {
    config.pipeline.snapshot_log_bytes = 64 << 10;
    config.pipeline.snapshot_keep_entries = 8;
}

fn value(i: usize) -> String {
    format!("value-{i:06}-{}", "x".repeat(200))
}

#[test]
fn acknowledged_writes_survive_sigkill_of_the_leader_and_its_restart() {
    let mut cluster = Cluster::start(3, no_tuning);
    let mut kv = cluster.client();
    for i in 0..50 {
        kv.put(&format!("k{i}"), &value(i));
    }
    let leader = cluster.leader();
    cluster.kill(leader);
    for i in 50..100 {
        kv.put(&format!("k{i}"), &value(i));
    }
    let new_leader = cluster.leader();
    assert_ne!(new_leader, leader, "a killed node cannot still lead");
    cluster.spawn(leader);
    let (index, _) = cluster.converged(100);
    assert!(index >= 100);
    for i in 0..100 {
        assert_eq!(kv.get(&format!("k{i}")).as_deref(), Some(value(i).as_str()), "k{i} lost");
    }
    // The restarted node serves the writes it missed, from its own state.
    let restarted = cluster.status(leader).expect("restarted node answers");
    assert_eq!(restarted["role"], "follower");
}

#[test]
fn a_retried_command_is_applied_once_even_across_a_leader_change() {
    let mut cluster = Cluster::start(3, no_tuning);
    let mut kv = cluster.client().with_session(42);
    // The first send of (session 42, seq 1): put a.
    let first = RequestBody::Command {
        session_id: 42,
        sequence: 1,
        payload: KvCommand::Put { key: b"k", value: b"a" }.encode(),
    };
    assert!(matches!(kv.request(first), ResponseBody::Ok(_)));
    kv.sequence = 1;
    kv.put("k", "b"); // seq 2 moves the key on
    let leader = cluster.leader();
    cluster.kill(leader);
    // A late retry of seq 1 (as a client whose answer was lost would send) must not apply again:
    // were it applied, k would go back to "a".
    let retry = RequestBody::Command {
        session_id: 42,
        sequence: 1,
        payload: KvCommand::Put { key: b"k", value: b"a" }.encode(),
    };
    match kv.request(retry) {
        ResponseBody::Ok(bytes) => assert_eq!(KvResult::decode(&bytes).unwrap(), KvResult::Done),
        other => panic!("retry refused: {other:?}"),
    }
    assert_eq!(kv.get("k").as_deref(), Some("b"), "the retried command was applied twice");
}

#[test]
fn a_restart_of_every_node_from_snapshot_and_log_gives_the_same_state_hash() {
    let mut cluster = Cluster::start(3, small_snapshots);
    let mut kv = cluster.client();
    for i in 0..600 {
        kv.put(&format!("k{}", i % 97), &value(i));
    }
    let (index, hash) = cluster.converged(600);
    let snapshot_index = cluster.status(1).unwrap()["snapshot_index"].as_u64().unwrap();
    assert!(snapshot_index > 0, "600 writes of 200 bytes should have made a snapshot");
    for id in cluster.ids() {
        assert_eq!(cluster.terminate(id), Some(0), "node {id} should stop cleanly on SIGTERM");
    }
    for id in cluster.ids() {
        cluster.spawn(id);
    }
    let (index_after, hash_after) = cluster.converged(index);
    if index_after == index {
        assert_eq!(hash_after, hash, "state after restart differs at the same index");
    }
    for i in 503..600 {
        assert_eq!(kv.get(&format!("k{}", i % 97)).as_deref(), Some(value(i).as_str()));
    }
}

#[test]
fn a_new_node_joins_catches_up_from_a_snapshot_and_becomes_a_voter() {
    let mut cluster = Cluster::start(3, small_snapshots);
    let mut kv = cluster.client();
    for i in 0..600 {
        kv.put(&format!("k{}", i % 101), &value(i));
    }
    let leader = cluster.leader();
    let first_index = cluster.status(leader).unwrap()["first_index"].as_u64().unwrap();
    assert!(first_index > 1, "the leader's log should be compacted, so the new node needs the snapshot");

    let new = member(4);
    let mut members = cluster.members.clone();
    members.push(new.clone());
    let config = cluster.config_for(4, &members, InitialState::Join);
    cluster.add_config(config);
    cluster.spawn(4);
    let addresses = format!("{},{}", new.peer_address, new.client_address);
    let answer = kv.admin(AdminRequest::AddNode { node_id: 4, address: addresses, learner: true });
    assert!(matches!(answer, ResponseBody::Ok(_)), "add learner: {answer:?}");
    cluster.converged(600);
    let answer = kv.admin(AdminRequest::AddNode { node_id: 4, address: String::new(), learner: false });
    assert!(matches!(answer, ResponseBody::Ok(_)), "promote: {answer:?}");
    cluster.wait_for("node 4 to be a voter everywhere", || {
        cluster
            .running()
            .iter()
            .all(|&id| {
                cluster
                    .status(id)
                    .is_some_and(|s| s["voters"].as_array().is_some_and(|v| v.len() == 4 && v.contains(&4.into())))
            })
            .then_some(())
    });
    let status = cluster.status(4).unwrap();
    assert!(status["snapshot_index"].as_u64().unwrap() > 0, "node 4 should have installed a snapshot: {status}");
    for i in 600..650 {
        kv.put(&format!("k{}", i % 101), &value(i));
    }
    cluster.converged(650);
}

#[test]
fn the_leader_of_five_is_removed_under_load_and_the_rest_go_on() {
    let mut cluster = Cluster::start(5, no_tuning);
    let addresses = cluster.client_addresses();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut kv = Kv::new(addresses).with_session(7);
            let mut written = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                kv.put(&format!("load{written}"), "v");
                written += 1;
            }
            written
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let leader = cluster.leader();
    let mut kv = cluster.client();
    let answer = kv.admin(AdminRequest::RemoveNode { node_id: leader });
    assert!(matches!(answer, ResponseBody::Ok(_)), "remove leader: {answer:?}");
    let new_leader = cluster.wait_for("a leader other than the removed one", || {
        cluster.running().into_iter().filter(|&id| id != leader).find(|&id| {
            cluster
                .status(id)
                .is_some_and(|s| s["role"] == "leader" && !s["voters"].as_array().unwrap().contains(&leader.into()))
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().expect("writer");
    assert!(written > 0);
    kv.put("after", "removal");
    cluster.kill(leader);
    let (_, _) = cluster.converged(0);
    for i in 0..written {
        assert_eq!(kv.get(&format!("load{i}")).as_deref(), Some("v"), "load{i} lost (new leader {new_leader})");
    }
}

#[test]
fn config_errors_and_foreign_data_directories_are_refused_with_the_reason() {
    let cluster = Cluster::start(1, no_tuning);
    let smr = env!("CARGO_BIN_EXE_smr");
    let dir = cluster.dir.path();
    let run = |config_text: &str, extra: &[&str]| {
        let path = dir.join("bad.toml");
        std::fs::write(&path, config_text).unwrap();
        let output =
            std::process::Command::new(smr).arg("node").arg("--config").arg(&path).args(extra).output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let good = smr_runtime::config_file::to_toml(cluster.config(1));
    let (code, stderr) = run(&format!("{good}\nelection_tick = 3\n"), &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("election_tick"), "the unknown key is named: {stderr}");
    let (code, stderr) = run(&good.replace("election_ticks = 10", "election_ticks = 1"), &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("raft.election_ticks"), "the bad value's key is named: {stderr}");
    // An empty data directory without saying how to start.
    let fresh = good.replace("initial_state = \"new\"", "initial_state = \"refuse\"").replace("node1\"", "fresh\"");
    let (code, stderr) = run(&fresh, &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("is empty"), "{stderr}");
    // Node 1's data directory under another node id.
    let foreign = good.replacen("node_id = 1", "node_id = 9", 1).replace("id = 1\n", "id = 9\n");
    let (code, stderr) = run(&foreign, &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("belongs to cluster"), "{stderr}");
    let _ = PATIENCE;
}
