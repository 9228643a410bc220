//! The node as a library (as `smr-capi` will embed it): start, serve, stop, restart in-process.

use std::time::{Duration, Instant};

use smr_apply::{KvCommand, KvResult, KvStore};
use smr_net::test_ports::free_port;
use smr_net::{Client, ClientConfig, RequestBody, ResponseBody};
use smr_runtime::{InitialState, Member, Node, NodeConfig, StartError, StartMode};

fn single_node(dir: &std::path::Path) -> NodeConfig {
    let member = Member {
        id: 1,
        peer_address: ([127, 0, 0, 1], free_port()).into(),
        client_address: ([127, 0, 0, 1], free_port()).into(),
    };
    let mut config = NodeConfig::new(1, 0xabc, dir.join("data"), vec![member]);
    config.secret = b"in-process node test secret".to_vec();
    config.log.segment_bytes = 4 << 20;
    config.log.entry_bytes_max = 3 << 20;
    config.log.submit_bytes_max = 8 << 20;
    config
}

fn put(client: &mut Client, sequence: u64, key: &str, value: &str) -> ResponseBody {
    let payload = KvCommand::Put { key: key.as_bytes(), value: value.as_bytes() }.encode();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // A single node elects itself within an election timeout; until then, not leader.
        match client.call(RequestBody::Command { session_id: 9, sequence, payload: payload.clone() }) {
            Ok(ResponseBody::NotLeader { .. }) | Err(smr_net::ClientError::Exhausted { .. })
                if Instant::now() < deadline => {}
            Ok(answer) => return answer,
            Err(error) => panic!("put {key}: {error}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get(client: &mut Client, key: &str) -> KvResult {
    let payload = KvCommand::Get { key: key.as_bytes() }.encode();
    match client.call(RequestBody::Read { consistency: smr_net::Consistency::Linearizable, payload }).unwrap() {
        ResponseBody::Ok(bytes) => KvResult::decode(&bytes).unwrap(),
        other => panic!("read refused: {other:?}"),
    }
}

#[test]
fn a_node_stops_cleanly_and_restarts_from_its_own_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = single_node(dir.path());
    config.initial_state = InitialState::New;
    let node = Node::start(config.clone(), KvStore::new(config.kv)).expect("starts");
    assert_eq!(node.mode(), StartMode::Bootstrapped);
    let mut client = Client::connect(&[node.client_address()], ClientConfig::default()).unwrap();
    for i in 1..=50 {
        assert!(matches!(put(&mut client, i, &format!("k{i}"), "v"), ResponseBody::Ok(_)));
    }
    drop(client);
    node.shutdown().expect("a clean stop");

    // The same directory restarts whatever initial_state says, and holds every write.
    config.initial_state = InitialState::Refuse;
    let node = Node::start(config.clone(), KvStore::new(config.kv)).expect("restarts");
    assert_eq!(node.mode(), StartMode::Restarted);
    let mut client = Client::connect(&[node.client_address()], ClientConfig::default()).unwrap();
    put(&mut client, 51, "k51", "v");
    for i in 1..=51 {
        assert_eq!(get(&mut client, &format!("k{i}")), KvResult::Value(Some(bytes::Bytes::from_static(b"v"))));
    }
    // A retry of an old command is answered from the session table, not applied again.
    assert!(matches!(put(&mut client, 1, "k1", "changed"), ResponseBody::Ok(_)));
    assert_eq!(get(&mut client, "k1"), KvResult::Value(Some(bytes::Bytes::from_static(b"v"))));
    node.shutdown().expect("a clean stop");
}

#[test]
fn an_empty_data_directory_is_refused_unless_told_how_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = single_node(dir.path());
    let error = Node::start(config.clone(), KvStore::new(config.kv)).unwrap_err();
    assert!(matches!(error, StartError::EmptyDataDir(_)), "{error}");
    assert_eq!(error.exit_code(), smr_runtime::EXIT_CODE_CONFIG);
    assert!(!config.data_dir.join("identity").exists(), "a refused start writes nothing");
}

#[test]
fn a_data_directory_of_another_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = single_node(dir.path());
    config.initial_state = InitialState::New;
    Node::start(config.clone(), KvStore::new(config.kv)).unwrap().shutdown().unwrap();
    let mut other = config.clone();
    other.node_id = 2;
    other.members[0].id = 2;
    other.sync_identity();
    let error = Node::start(other.clone(), KvStore::new(other.kv)).unwrap_err();
    assert!(error.to_string().contains("belongs to cluster"), "{error}");
    assert_eq!(error.exit_code(), smr_runtime::EXIT_CODE_CONFIG);
}

#[test]
fn requests_made_in_process_are_served_like_a_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = single_node(dir.path());
    config.initial_state = InitialState::New;
    let node = Node::start(config.clone(), KvStore::new(config.kv)).unwrap();
    let put = |sequence: u64, value: &'static [u8]| RequestBody::Command {
        session_id: 77,
        sequence,
        payload: KvCommand::Put { key: b"local", value }.encode(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        match node.call(put(1, b"one"), Duration::from_secs(5)) {
            ResponseBody::NotLeader { .. } if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            answer => break answer,
        }
    };
    assert!(matches!(answer, ResponseBody::Ok(_)), "{answer:?}");
    // Asynchronous: the callback runs on a stage thread.
    let (tx, rx) = std::sync::mpsc::channel();
    node.submit(put(2, b"two"), move |answer| tx.send(answer).unwrap());
    assert!(matches!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), ResponseBody::Ok(_)));
    let read = RequestBody::Read {
        consistency: smr_net::Consistency::Linearizable,
        payload: KvCommand::Get { key: b"local" }.encode(),
    };
    match node.call(read, Duration::from_secs(5)) {
        ResponseBody::Ok(bytes) => {
            assert_eq!(KvResult::decode(&bytes).unwrap(), KvResult::Value(Some(bytes::Bytes::from_static(b"two"))))
        }
        other => panic!("{other:?}"),
    }
    let stop = node.stop_handle();
    stop.stop();
    // Once stopping, requests are answered at once.
    assert_eq!(node.call(put(3, b"three"), Duration::from_secs(5)), ResponseBody::ShuttingDown);
    node.shutdown().unwrap();
}

#[test]
fn an_embedder_hears_of_role_and_membership_changes() {
    #[derive(Debug)]
    struct Recorder(std::sync::mpsc::Sender<String>);
    impl smr_runtime::NodeEvents for Recorder {
        fn role_changed(&mut self, role: smr_raft::Role, term: u64, leader: Option<u64>) {
            let _ = self.0.send(format!("role {role:?} term {term} leader {leader:?}"));
        }
        fn membership_changed(&mut self, conf: &smr_raft::ConfState) {
            let _ = self.0.send(format!("voters {:?}", conf.voters));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = single_node(dir.path());
    config.initial_state = InitialState::New;
    let (tx, rx) = std::sync::mpsc::channel();
    let node = Node::start_with_events(config.clone(), KvStore::new(config.kv), Some(Box::new(Recorder(tx)))).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.iter().any(|e: &String| e.starts_with("role Leader")) && Instant::now() < deadline {
        if let Ok(event) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(event);
        }
    }
    assert!(seen.iter().any(|e| e == "voters [1]"), "{seen:?}");
    assert!(seen.iter().any(|e| e.starts_with("role Leader") && e.ends_with("leader Some(1)")), "{seen:?}");
    node.shutdown().unwrap();
}

/// Entries the core proposed so far and the commands in them (its `batch_items` histogram), as
/// last published: stages publish once a second.
fn core_batches(node: &Node) -> (u64, f64) {
    let report = node.metrics();
    let core = report.stages.iter().find(|s| s.stage == "core").expect("the core stage reports");
    core.histograms.iter().find(|h| h.name == "batch_items").map_or((0, 0.0), |h| (h.count, h.mean * h.count as f64))
}

/// Waits until the published batches hold at least `commands` commands; returns them.
fn core_batches_reaching(node: &Node, commands: f64) -> (u64, f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let batches = core_batches(node);
        // The mean is published to 3 decimals: allow for its rounding.
        if batches.1 + 0.5 >= commands {
            return batches;
        }
        assert!(Instant::now() < deadline, "the core published {batches:?}, waiting for {commands} commands");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A single node, elected, with one command applied.
fn started_node(dir: &std::path::Path, hold_for_answers_bytes_max: usize) -> Node {
    started_node_with(dir, hold_for_answers_bytes_max, true)
}

fn started_node_with(dir: &std::path::Path, hold_for_answers_bytes_max: usize, inline_core: bool) -> Node {
    let mut config = single_node(dir);
    config.initial_state = InitialState::New;
    config.pipeline.hold_for_answers_bytes_max = hold_for_answers_bytes_max;
    config.pipeline.inline_core = inline_core;
    let node = Node::start(config.clone(), KvStore::new(config.kv)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let warm_up = RequestBody::Command {
        session_id: 1,
        sequence: 1,
        payload: KvCommand::Put { key: b"w", value: b"w" }.encode(),
    };
    loop {
        match node.call(warm_up.clone(), Duration::from_secs(5)) {
            ResponseBody::Ok(_) => break,
            ResponseBody::NotLeader { .. } if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => panic!("{other:?}"),
        }
    }
    core_batches_reaching(&node, 1.0);
    node
}

/// Commands per entry while `run` drives `commands` commands through the node.
fn commands_per_entry(node: &Node, commands: u64, run: impl FnOnce()) -> f64 {
    let (entries_before, commands_before) = core_batches(node);
    run();
    let (entries_after, commands_after) = core_batches_reaching(node, commands_before + commands as f64);
    let counted = commands_after - commands_before;
    assert!((counted - commands as f64).abs() < 1.0, "{counted} commands counted, {commands} sent");
    counted / (entries_after - entries_before) as f64
}

/// A closed loop of in-process clients, which propose their next command from inside the
/// answer, puts its next commands in one entry: the core holds its small batch until the
/// entries it proposed are answered, instead of proposing the first command that comes back on
/// its own and every other one an entry later.
#[test]
fn a_closed_loop_of_in_process_clients_fills_each_entry() {
    const CLIENTS: u64 = 32;
    const ROUNDS: u64 = 50;
    type Done = std::sync::mpsc::SyncSender<Result<(), String>>;
    fn next(node: std::sync::Arc<Node>, client: u64, round: u64, done: Done) {
        if round == ROUNDS {
            let _ = done.send(Ok(()));
            return;
        }
        let key = format!("loop-{client}");
        let body = RequestBody::Command {
            session_id: 1000 + client,
            sequence: round + 1,
            payload: KvCommand::Put { key: key.as_bytes(), value: b"v" }.encode(),
        };
        let again = std::sync::Arc::clone(&node);
        node.submit(body, move |answer| match answer {
            ResponseBody::Ok(_) => next(again, client, round + 1, done),
            other => {
                let _ = done.send(Err(format!("client {client}, round {round}: {other:?}")));
            }
        });
    }

    let dir = tempfile::tempdir().unwrap();
    let node = std::sync::Arc::new(started_node(
        dir.path(),
        smr_runtime::PipelineConfig::default().hold_for_answers_bytes_max,
    ));
    let per_entry = commands_per_entry(&node, CLIENTS * ROUNDS, || {
        let (done, finished) = std::sync::mpsc::sync_channel(CLIENTS as usize);
        for client in 0..CLIENTS {
            next(std::sync::Arc::clone(&node), client, 0, done.clone());
        }
        for _ in 0..CLIENTS {
            finished.recv_timeout(Duration::from_secs(60)).expect("every client finishes").unwrap();
        }
    });
    // Two cohorts of 16 would make 16 (it was 15 with the hold off); one of 32 makes 32, less
    // the first round, which starts unsynchronised, and any batch that waited out its bound.
    assert!(per_entry >= 0.75 * CLIENTS as f64, "{per_entry:.1} commands per entry");
    // The last answer's callback may still hold its clone for a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut node = node;
    let node = loop {
        match std::sync::Arc::try_unwrap(node) {
            Ok(node) => break node,
            Err(shared) if Instant::now() < deadline => {
                node = shared;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => panic!("a callback kept the node"),
        }
    };
    node.shutdown().unwrap();
}

/// The same over TCP, where the answers go out one connection at a time: each client on a
/// connection of its own sends its next command once answered. With the stages on their own
/// threads (`inline_core` off), commands that come back after the core has proposed its batch
/// still wait for the entry after, so the entries are compared with the hold off (two cohorts:
/// 5.0-6.8 commands per entry in runs here, 11.7-12.5 with the hold; 5.0-5.8 and 8.5-10.3 with
/// two busy loops on the two cores). With the rounds inline (the default), the thread that
/// writes the entry also applies it and answers, before the core's next round: the entries are
/// as full with or without the hold (12.2 and 13.0 in a run here), which must stay so.
#[test]
fn a_closed_loop_of_network_clients_fills_each_entry() {
    const CLIENTS: u64 = 16;
    const ROUNDS: u64 = 100;
    let per_entry = |hold_for_answers_bytes_max, inline_core| {
        let dir = tempfile::tempdir().unwrap();
        let node = started_node_with(dir.path(), hold_for_answers_bytes_max, inline_core);
        let address = node.client_address();
        let per_entry = commands_per_entry(&node, CLIENTS * ROUNDS, || {
            let clients: Vec<_> = (0..CLIENTS)
                .map(|client| {
                    std::thread::spawn(move || {
                        let mut connection = Client::connect(&[address], ClientConfig::default()).unwrap();
                        let key = format!("net-{client}");
                        for round in 0..ROUNDS {
                            let body = RequestBody::Command {
                                session_id: 2000 + client,
                                sequence: round + 1,
                                payload: KvCommand::Put { key: key.as_bytes(), value: b"v" }.encode(),
                            };
                            let answer = connection.call(body).unwrap();
                            assert!(
                                matches!(answer, ResponseBody::Ok(_)),
                                "client {client}, round {round}: {answer:?}"
                            );
                        }
                    })
                })
                .collect();
            for client in clients {
                client.join().expect("every client finishes");
            }
        });
        node.shutdown().unwrap();
        per_entry
    };
    let hold = smr_runtime::PipelineConfig::default().hold_for_answers_bytes_max;
    // Entries per batch depend on how the threads interleave, and a busy machine (the other
    // tests of this file run alongside) now and then merges the cohorts without the hold too:
    // the property is asked of one attempt in three.
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let without = per_entry(0, false);
        let with = per_entry(hold, false);
        let inline = per_entry(hold, true);
        attempts.push(format!("{with:.1} with the hold, {inline:.1} inline, {without:.1} without"));
        if with >= 1.3 * without && inline >= 1.3 * without {
            return;
        }
    }
    panic!("commands per entry, on the stages' threads unless inline: {attempts:?}");
}
