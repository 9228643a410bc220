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
    // A stopped node's data directory reads back whole with the offline tools.
    let smr = env!("CARGO_BIN_EXE_smr");
    let verify =
        std::process::Command::new(smr).args(["log", "verify"]).arg(&cluster.config(1).data_dir).output().unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    assert_eq!(verify.status.code(), Some(0), "{report}{}", String::from_utf8_lossy(&verify.stderr));
    assert!(report.contains("status       ok"), "{report}");
    let dump = std::process::Command::new(smr)
        .args(["log", "dump", "--payloads"])
        .arg(&cluster.config(1).data_dir)
        .output()
        .unwrap();
    assert_eq!(dump.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&dump.stdout).contains("put key=\"k"), "the dump decodes the puts");
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
    // Node 1's data directory under another node id. Node 1 writes its identity only once it
    // has bound its ports, so wait until it leads before borrowing its directory.
    let _ = cluster.leader();
    let foreign = good.replacen("node_id = 1", "node_id = 9", 1).replace("id = 1\n", "id = 9\n");
    let (code, stderr) = run(&foreign, &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("belongs to cluster"), "{stderr}");
    let _ = PATIENCE;
}

#[test]
fn reads_at_a_follower_are_linearizable_through_the_leader_and_stale_reads_are_served_locally() {
    let cluster = Cluster::start(3, no_tuning);
    let mut kv = cluster.client();
    kv.put("r", "1");
    let leader = cluster.leader();
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let address = cluster.config(follower).client_listen;
    // Asked of the follower itself (no redirect): it forwards the read index to the leader and
    // answers once it has applied that far, so it sees the write acknowledged just before.
    kv.put("r", "2");
    let mut direct = smr_net::Client::connect(&[address], smr_net::ClientConfig::default()).unwrap();
    for consistency in [smr_net::Consistency::Linearizable, smr_net::Consistency::Stale] {
        let payload = KvCommand::Get { key: b"r" }.encode();
        let id = direct.submit(RequestBody::Read { consistency, payload }).unwrap();
        let response = direct.recv().unwrap();
        assert_eq!(response.request_id, id);
        match response.body {
            ResponseBody::Ok(bytes) => {
                let value = KvResult::decode(&bytes).unwrap();
                if consistency == smr_net::Consistency::Linearizable {
                    assert_eq!(value, KvResult::Value(Some(bytes::Bytes::from_static(b"2"))));
                } else {
                    // Stale: whatever the follower applied, which is one of the written values.
                    assert!(matches!(value, KvResult::Value(Some(_))), "{value:?}");
                }
            }
            other => panic!("{consistency:?} read at a follower: {other:?}"),
        }
    }
    // Commands are not served by followers: they redirect to the leader's client address.
    let id = direct
        .submit(RequestBody::Command {
            session_id: 5,
            sequence: 1,
            payload: KvCommand::Put { key: b"x", value: b"y" }.encode(),
        })
        .unwrap();
    let response = direct.recv().unwrap();
    assert_eq!(response.request_id, id);
    let leader_address = cluster.config(leader).client_listen.to_string();
    assert_eq!(
        response.body,
        ResponseBody::NotLeader { leader_id: Some(leader), leader_address: Some(leader_address) }
    );
}

#[test]
fn stats_report_the_stage_histograms_and_counters_of_a_pinned_node() {
    fn pinned(config: &mut NodeConfig) {
        // Every stage on core 0: placement is honoured (and sharing a core works).
        config.placement = smr_runtime::Placement { core: Some(0), log: Some(0), apply: Some(0), net: Some(0) };
    }
    let cluster = Cluster::start(3, pinned);
    let mut kv = cluster.client();
    for i in 0..20 {
        kv.put(&format!("s{i}"), "v");
    }
    let leader = cluster.leader();
    let mut client =
        smr_net::Client::connect(&[cluster.config(leader).client_listen], smr_net::ClientConfig::default()).unwrap();
    let stats = cluster.wait_for("the leader's stats to show the writes", || {
        client.submit(RequestBody::Admin(AdminRequest::Stats)).ok()?;
        let ResponseBody::Ok(bytes) = client.recv().ok()?.body else { return None };
        let report = smr_runtime::metrics::MetricsReport::from_json(&bytes).expect("a valid report");
        // Histograms are published once a second; counters are live.
        let published = ["core", "log", "apply"].iter().all(|stage| {
            report
                .stages
                .iter()
                .any(|s| s.stage == *stage && s.histograms.iter().any(|h| h.name == "batch_items" && h.count > 0))
        });
        // The core's copies of durable entries give way to the mapped log.
        let rebound = report.counters.entries_rebound >= 20;
        (report.counters.entries_applied >= 20 && published && rebound).then_some(report)
    });
    let text = stats.to_text();
    // The transport's counters come with them: the leader sent appends and served the puts.
    let net = |name: &str| stats.net.iter().find(|c| c.name == name).map_or(0, |c| c.value);
    assert!(net("messages_sent") > 0 && net("client_requests") >= 20, "{text}");
    assert!(text.contains("net counters"), "{text}");
    // The harness runs every third node's core on its own thread only; the others' rounds run
    // where the work arrives, as long as it is idle, which it is at one put at a time.
    let inline = stats.counters.core_rounds_inline;
    let inline_core = cluster.config(leader).pipeline.inline_core;
    if inline_core {
        assert!(inline >= 20, "node {leader} ran {inline} rounds inline for 20 puts: {text}");
    } else {
        assert_eq!(inline, 0, "node {leader} has inline_core off: {text}");
    }
    // So do the log writer's, on the `pwrite` path; the status says which path and mode.
    client.submit(RequestBody::Admin(AdminRequest::Status)).unwrap();
    let ResponseBody::Ok(bytes) = client.recv().unwrap().body else { panic!("no status") };
    let status: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status["inline_core"], inline_core, "{status}");
    let inline_log = status["inline_log"].as_bool().unwrap();
    assert_eq!(inline_log, inline_core && status["log_io"] == "pwrite+fdatasync", "{status}");
    // The built-in KV store may be applied from any thread, so its apply rounds run inline too.
    assert_eq!(status["inline_apply"], inline_core, "{status}");
    let apply_inline = stats.counters.apply_rounds_inline;
    if inline_core {
        assert!(apply_inline >= 10, "node {leader} applied {apply_inline} times inline for 20 puts: {text}");
    } else {
        assert_eq!(apply_inline, 0, "node {leader} applies on its apply thread: {text}");
    }
    let log_inline = stats.counters.log_rounds_inline;
    if inline_log {
        // An inline round slower than 10 ms (an `fdatasync` on a busy disk) sends the stage's
        // rounds back to its own thread for a second: then only some of the 20 ran inline.
        let wanted = if stats.counters.inline_rounds_slow > 0 { 1 } else { 10 };
        assert!(log_inline >= wanted, "node {leader} wrote {log_inline} times inline for 20 puts: {text}");
    } else {
        assert_eq!(log_inline, 0, "node {leader} writes on its log thread: {text}");
    }
    for stage in ["core", "log", "apply"] {
        assert!(text.contains(stage), "{text}");
        let report = stats.stages.iter().find(|s| s.stage == stage).expect("stage reported");
        let batches = report.histograms.iter().find(|h| h.name == "batch_items").expect("batch histogram");
        assert!(batches.count > 0, "{stage} recorded no batches: {text}");
    }
    // The pinning took: every thread of the node process may run on core 0 only.
    let pid = cluster.pid(leader).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/status")).unwrap_or_default();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let mut pinned_threads = 0;
    for task in tasks {
        let path = task.unwrap().path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let allowed = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let cpus = allowed.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap_or_default().to_owned();
        let name = name.trim();
        let stage_thread = ["smr-core-", "smr-log-", "smr-apply-"].iter().any(|prefix| {
            name.strip_prefix(prefix).is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        });
        if stage_thread {
            assert!(cpus.ends_with("\t0"), "{name} runs on {cpus}");
            pinned_threads += 1;
        }
    }
    assert_eq!(pinned_threads, 3, "the three stage threads are found ({status})");
}

#[test]
fn leadership_is_handed_to_the_node_named_by_transfer_leader() {
    let cluster = Cluster::start(3, no_tuning);
    let mut kv = cluster.client();
    kv.put("t", "1");
    let leader = cluster.leader();
    let target = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let answer = kv.admin(AdminRequest::TransferLeader { node_id: target });
    assert!(matches!(answer, ResponseBody::Ok(_)), "{answer:?}");
    cluster
        .wait_for("the target to lead", || cluster.status(target).is_some_and(|s| s["role"] == "leader").then_some(()));
    kv.put("t", "2");
    assert_eq!(kv.get("t").as_deref(), Some("2"));
}

#[test]
fn a_follower_down_past_compaction_catches_up_from_a_snapshot_streamed_in_small_chunks() {
    fn small_chunks(config: &mut NodeConfig) {
        small_snapshots(config);
        // A snapshot of this test is ~30 KiB: several chunks, each acknowledged before the next.
        config.raft.snapshot_chunk_bytes_max = 4096;
    }
    let mut cluster = Cluster::start(3, small_chunks);
    let mut kv = cluster.client();
    kv.put("first", "1");
    let leader = cluster.leader();
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    cluster.kill(follower);
    for i in 0..600 {
        kv.put(&format!("k{}", i % 89), &value(i));
    }
    let first_index = cluster.status(cluster.leader()).unwrap()["first_index"].as_u64().unwrap();
    assert!(first_index > 2, "the log was compacted past what the follower has");
    cluster.spawn(follower);
    // No more writes: the follower must catch up from the snapshot and the log on its own.
    cluster.converged(600);
    let status = cluster.status(follower).unwrap();
    assert!(status["snapshot_index"].as_u64().unwrap() > 0, "{status}");
    assert!(cluster.node_log(follower).contains("installed snapshot from the leader"));
}

#[test]
fn a_follower_far_behind_catches_up_through_more_appends_than_one_log_submit_holds() {
    /// Appends of 64 KiB and the smallest log submit the config allows (192 KiB: about three
    /// appends), so a follower that takes in the leader's pipelined appends in one round must
    /// spread them over several readies; a single ready would be refused by the log and stop
    /// the node.
    fn small_submits(config: &mut NodeConfig) {
        config.pipeline.batch_bytes_max = 60 << 10;
        config.kv.value_bytes_max = 16 << 10;
        config.raft.append_bytes_max = 64 << 10;
        config.log.entry_bytes_max = 64 << 10;
        config.log.submit_bytes_max = 192 << 10;
    }
    let mut cluster = Cluster::start(3, small_submits);
    let mut kv = cluster.client();
    kv.put("first", "1");
    let leader = cluster.leader();
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    cluster.kill(follower);
    let big = "y".repeat(8 << 10);
    for i in 0..400 {
        kv.put(&format!("k{}", i % 97), &format!("{i}-{big}"));
    }
    cluster.spawn(follower);
    // About 3.3 MB of log to send: some 50 appends, pipelined. A follower that stopped never
    // answers its status, and this fails.
    cluster.converged(400);
}

#[test]
fn a_node_whose_replicated_settings_differ_is_kept_out_until_they_match() {
    // A replica with another session window would answer a retry that the others apply again:
    // its state would drift from theirs without a word. The handshake keeps it out instead.
    let mut cluster = Cluster::configure(3, no_tuning);
    let mut odd = cluster.config(3).clone();
    odd.sessions.window_max += 1;
    cluster.set_config(odd);
    for id in 1..=3 {
        cluster.spawn(id);
    }
    let mut kv = harness::Kv::new(vec![cluster.config(1).client_listen, cluster.config(2).client_listen]);
    for i in 0..20 {
        kv.put(&format!("k{i}"), &value(i));
    }
    // Nodes 1 and 2 dial node 3 (lower ids dial) and refuse it once it has proven it knows the
    // secret; each counts it and says why in its log.
    let net_counter = |id: u64, name: &str| {
        let mut admin = harness::Kv::new(vec![cluster.config(id).client_listen]);
        let ResponseBody::Ok(bytes) = admin.admin(AdminRequest::Stats) else { return 0 };
        let report = smr_runtime::metrics::MetricsReport::from_json(&bytes).expect("a valid report");
        report.net.iter().find(|c| c.name == name).map_or(0, |c| c.value)
    };
    cluster.wait_for("nodes 1 and 2 to count their refusals", || {
        (net_counter(1, "handshake_refused_settings") >= 1 && net_counter(2, "handshake_refused_settings") >= 1)
            .then_some(())
    });
    assert!(net_counter(3, "handshake_refused_by_peer") >= 2);
    for id in 1..=3 {
        assert!(cluster.node_log(id).contains("must be equal on every replica"), "node {id} says why");
    }
    let outsider = cluster.status(3).expect("node 3 answers");
    let applied = outsider["applied_state_index"].as_u64().expect("a number");
    assert!(applied <= 1, "node 3 holds only its founding entry, none of the puts: {outsider}");
    // Once its settings match, it joins and catches up to the same state.
    assert_eq!(cluster.terminate(3), Some(0));
    let mut fixed = cluster.config(3).clone();
    fixed.sessions.window_max -= 1;
    cluster.set_config(fixed);
    cluster.spawn(3);
    let (index, _) = cluster.converged(20);
    assert!(index >= 20);
    assert_eq!(kv.get("k19").as_deref(), Some(value(19).as_str()));
}
