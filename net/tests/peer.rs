//! The peer transport over real loopback sockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use smr_net::frame::{FrameKind, encode_frame};
use smr_net::handshake::Hello;
use smr_net::{Identity, Inbound, NetConfig, NetStats, PROTOCOL_VERSION, PeerTransport};
use smr_raft::{Entry, EntryKind, Message, MessageBody};

const SECRET: &[u8] = b"a cluster secret of some length";
/// The replicated settings fingerprint every node of these tests has.
const SETTINGS: u64 = 0x5e77;

fn config() -> NetConfig {
    NetConfig {
        handshake_ms: 500,
        idle_timeout_ms: 2_000,
        peer_idle_timeout_ms: 2_000,
        frame_receive_ms_max: 300,
        keepalive_ms: 200,
        reconnect_ms_min: 5,
        reconnect_ms_max: 50,
        ..NetConfig::default()
    }
}

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

fn identity(cluster_id: u64, node_id: u64, secret: &[u8]) -> Identity {
    Identity { cluster_id, node_id, secret: secret.to_vec(), settings: SETTINGS }
}

fn start(node_id: u64, listener: TcpListener, peers: &[(u64, SocketAddr)]) -> (PeerTransport, Receiver<Inbound>) {
    PeerTransport::start(config(), identity(7, node_id, SECRET), listener, peers).unwrap()
}

fn append(from: u64, to: u64, index: u64, data_bytes: usize) -> Message {
    Message {
        group: 3,
        from,
        to,
        term: 2,
        body: MessageBody::Append {
            prev_log_index: index - 1,
            prev_log_term: 2,
            commit_index: 0,
            entries: vec![Entry {
                index,
                term: 2,
                kind: EntryKind::Normal,
                data: Bytes::from(vec![index as u8; data_bytes]),
            }],
        },
    }
}

/// Sends `message` until it arrives (the link may still be connecting), and returns it.
fn deliver(sender: &PeerTransport, receiver: &Receiver<Inbound>, message: &Message) -> Message {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let _ = sender.send(message.clone());
        if let Ok(inbound) = receiver.recv_timeout(Duration::from_millis(50)) {
            return inbound.messages.into_iter().next().unwrap();
        }
    }
    panic!("message never arrived");
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn messages_flow_both_ways_over_one_connection() {
    let (l1, l2) = (listener(), listener());
    let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
    let (n1, r1) = start(1, l1, &[(2, a2)]);
    let (n2, r2) = start(2, l2, &[(1, a1)]);
    let message = append(1, 2, 5, 100_000);
    assert_eq!(deliver(&n1, &r2, &message), message);
    let reply = Message {
        group: 3,
        from: 2,
        to: 1,
        term: 2,
        body: MessageBody::AppendResponse { success: true, index: 5, hint_index: 0, hint_term: 0 },
    };
    assert_eq!(deliver(&n2, &r1, &reply), reply);
    // Many messages in a burst arrive in order.
    for index in 10..1010 {
        n1.send(append(1, 2, index, 64)).unwrap();
    }
    let mut next = 10;
    while next < 1010 {
        let inbound = r2.recv_timeout(Duration::from_secs(5)).expect("burst arrives");
        for message in inbound.messages {
            let MessageBody::Append { entries, .. } = message.body else { panic!() };
            assert_eq!(entries[0].index, next);
            next += 1;
        }
    }
    assert_eq!(n1.connected_peers(), vec![2]);
    assert_eq!(n2.connected_peers(), vec![1]);
    // One connection: node 2 never dialed.
    assert_eq!(n2.stats().connects_attempted, 0);
}

#[test]
fn a_sender_writes_to_an_idle_link_itself() {
    let (l1, l2) = (listener(), listener());
    let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
    let (n1, _r1) = start(1, l1, &[(2, a2)]);
    let (_n2, r2) = start(2, l2, &[(1, a1)]);
    deliver(&n1, &r2, &append(1, 2, 1, 10));
    let before = n1.stats().direct_writes;
    // One at a time, each received before the next is sent: the link is idle for every one.
    for index in 2..22 {
        n1.send(append(1, 2, index, 100)).unwrap();
        let inbound = r2.recv_timeout(Duration::from_secs(5)).expect("arrives");
        let MessageBody::Append { entries, .. } = &inbound.messages[0].body else { panic!() };
        assert_eq!(entries[0].index, index);
    }
    assert_eq!(n1.stats().direct_writes - before, 20, "every send found the link idle");
}

#[test]
fn messages_keep_each_senders_order_across_direct_and_queued_writes() {
    const SENDERS: u64 = 4;
    const PER_SENDER: u64 = 3_000;
    let (l1, l2) = (listener(), listener());
    let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
    let roomy = NetConfig { peer_queue_messages_max: 100_000, peer_queue_bytes_max: 1 << 30, ..config() };
    let (n1, _r1) = PeerTransport::start(roomy, identity(7, 1, SECRET), l1, &[(2, a2)]).unwrap();
    let (_n2, r2) = start(2, l2, &[(1, a1)]);
    deliver(&n1, &r2, &append(1, 2, 1, 10));
    // Sizes from 16 bytes to 48 KiB: some sends find the socket full and leave the rest of their
    // write to the link thread, others find it busy and queue.
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let handle = n1.sender();
            std::thread::spawn(move || {
                for seq in 0..PER_SENDER {
                    let bytes = if seq % 7 == 0 { 48 << 10 } else { 16 };
                    let message = Message { term: 100 + sender, ..append(1, 2, seq + 1, bytes) };
                    handle.send(message).expect("room in the queue");
                }
            })
        })
        .collect();
    let mut next = vec![1u64; SENDERS as usize];
    let mut received = 0;
    while received < SENDERS * PER_SENDER {
        let inbound = r2.recv_timeout(Duration::from_secs(10)).expect("everything arrives");
        for message in inbound.messages {
            if message.term < 100 {
                continue; // the first delivery's retries
            }
            let sender = (message.term - 100) as usize;
            let MessageBody::Append { entries, .. } = &message.body else { panic!() };
            assert_eq!(entries[0].index, next[sender], "sender {sender}'s messages out of order");
            next[sender] += 1;
            received += 1;
        }
    }
    for sender in senders {
        sender.join().unwrap();
    }
    let stats = n1.stats();
    assert_eq!(stats.send_dropped_connection_lost + stats.send_dropped_queue_full, 0);
    assert!(stats.direct_writes > 0, "some sends found the link idle");
    assert!(stats.write_batches > stats.direct_writes, "some went through the link thread");
}

#[test]
fn link_reconnects_after_the_peer_restarts() {
    let (l1, l2) = (listener(), listener());
    let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
    let (n1, _r1) = start(1, l1, &[(2, a2)]);
    let (n2, r2) = start(2, l2, &[(1, a1)]);
    deliver(&n1, &r2, &append(1, 2, 1, 10));
    n2.shutdown();
    drop(r2);
    wait_for("node 1 to see the loss", || n1.connected_peers().is_empty());
    let (n2, r2) = start(2, TcpListener::bind(a2).unwrap(), &[(1, a1)]);
    deliver(&n1, &r2, &append(1, 2, 2, 10));
    assert!(n1.stats().connections_established >= 2);
    drop(n2);
}

#[test]
fn sending_to_an_unknown_peer_or_a_full_queue_drops_and_counts() {
    let config = NetConfig { peer_queue_messages_max: 4, ..config() };
    // Peer 2 is never started: its queue fills.
    let dead = listener().local_addr().unwrap();
    let (n1, _r1) = PeerTransport::start(config, identity(7, 1, SECRET), listener(), &[(2, dead)]).unwrap();
    assert!(n1.send(append(1, 9, 1, 1)).is_err());
    let mut dropped = 0;
    for index in 1..100 {
        if n1.send(append(1, 2, index, 1)).is_err() {
            dropped += 1;
        }
    }
    assert!(dropped >= 90, "dropped {dropped}");
    let stats = n1.stats();
    assert_eq!(stats.send_dropped_unknown_peer, 1);
    assert_eq!(stats.send_dropped_queue_full, dropped);
}

/// Starts node 2 of cluster 7 knowing node 1, then lets `dialer` try to connect as described.
fn refused(node_ids: (u64, u64), cluster_id: u64, secret: &[u8], counted: fn(&NetStats, &NetStats) -> bool) {
    let l2 = listener();
    let a2 = l2.local_addr().unwrap();
    let (n2, r2) = start(2, l2, &[(1, listener().local_addr().unwrap())]);
    let (dialer_id, target) = node_ids;
    let (n1, _r1) =
        PeerTransport::start(config(), identity(cluster_id, dialer_id, secret), listener(), &[(target, a2)]).unwrap();
    wait_for("the refusal to be counted", || counted(&n1.stats(), &n2.stats()));
    // Refused: nothing was delivered and no connection is live.
    let _ = n1.send(append(dialer_id, target, 1, 1));
    assert!(r2.recv_timeout(Duration::from_millis(100)).is_err());
    assert!(n2.connected_peers().is_empty());
    assert!(n1.stats().handshake_refused_by_peer >= 1 || n1.stats().handshake_refused_bad_proof >= 1);
}

#[test]
fn handshake_from_a_foreign_cluster_is_refused() {
    refused((1, 2), 8, SECRET, |dialer, acceptor| {
        acceptor.handshake_refused_foreign_cluster >= 1 && dialer.handshake_refused_by_peer >= 1
    });
}

#[test]
fn handshake_with_a_wrong_secret_is_refused() {
    // The dialer checks the acceptor's proof first, so it is the one that refuses.
    refused((1, 2), 7, b"not the cluster secret at all", |dialer, acceptor| {
        dialer.handshake_refused_bad_proof >= 1 && acceptor.handshake_refused_by_peer >= 1
    });
}

#[test]
fn handshake_between_replicas_with_other_settings_is_refused() {
    let l2 = listener();
    let a2 = l2.local_addr().unwrap();
    let (n2, r2) = start(2, l2, &[(1, listener().local_addr().unwrap())]);
    let other = Identity { settings: 0x0dd, ..identity(7, 1, SECRET) };
    let (n1, _r1) = PeerTransport::start(config(), other, listener(), &[(2, a2)]).unwrap();
    // The dialer checks the acceptor's proof, then its settings, and refuses.
    wait_for("the settings refusal", || {
        n1.stats().handshake_refused_settings >= 1 && n2.stats().handshake_refused_by_peer >= 1
    });
    let _ = n1.send(append(1, 2, 1, 1));
    assert!(r2.recv_timeout(Duration::from_millis(100)).is_err());
    assert!(n2.connected_peers().is_empty() && n1.connected_peers().is_empty());
}

#[test]
fn handshake_from_an_unlisted_node_is_refused() {
    // Node 2 knows only node 3; node 1 (lower ids dial) is not in its list.
    let l2 = listener();
    let a2 = l2.local_addr().unwrap();
    let (n2, _r2) = start(2, l2, &[(3, listener().local_addr().unwrap())]);
    let (_n1, _r1) = PeerTransport::start(config(), identity(7, 1, SECRET), listener(), &[(2, a2)]).unwrap();
    wait_for("unknown node refusal", || n2.stats().handshake_refused_unknown_node >= 1);
}

#[test]
fn second_node_with_the_same_id_is_refused_as_duplicate() {
    let l2 = listener();
    let a2 = l2.local_addr().unwrap();
    let (n2, r2) = start(2, l2, &[(1, listener().local_addr().unwrap())]);
    let (first, _r) = start(1, listener(), &[(2, a2)]);
    deliver(&first, &r2, &append(1, 2, 1, 1));
    let (_second, _r) = start(1, listener(), &[(2, a2)]);
    wait_for("duplicate refusal", || n2.stats().handshake_refused_duplicate_node >= 1);
    assert_eq!(n2.connected_peers(), vec![1]);
}

/// Node 2 of cluster 7, knowing node 1, and a plain TCP connection to it that has sent nothing.
fn node_2_and_a_raw_dialer() -> (PeerTransport, Receiver<Inbound>, TcpStream) {
    let l2 = listener();
    let a2 = l2.local_addr().unwrap();
    let (n2, r2) = start(2, l2, &[(1, listener().local_addr().unwrap())]);
    (n2, r2, TcpStream::connect(a2).unwrap())
}

fn send_frame(stream: &mut TcpStream, kind: FrameKind, payload: &[u8]) {
    let mut frame = Vec::new();
    encode_frame(&mut frame, kind, 0, 0, payload, 1 << 20).unwrap();
    stream.write_all(&frame).unwrap();
}

/// A raw dialer that sends `hello` and returns what node 2 did with it.
fn raw_hello(hello: Hello) -> NetStats {
    let (n2, _r2, mut stream) = node_2_and_a_raw_dialer();
    send_frame(&mut stream, FrameKind::Hello, &hello.encode());
    // Node 2 answers with a Refuse frame and closes.
    let mut answer = Vec::new();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = stream.read_to_end(&mut answer);
    assert_eq!(answer.get(8), Some(&(FrameKind::Refuse as u8)), "expected a refusal frame");
    n2.stats()
}

#[test]
fn dialer_proof_without_the_secret_is_refused() {
    let (n2, _r2, mut stream) = node_2_and_a_raw_dialer();
    let hello = Hello { version: PROTOCOL_VERSION, cluster_id: 7, from: 1, to: 2, nonce: [1; 32], settings: SETTINGS };
    send_frame(&mut stream, FrameKind::Hello, &hello.encode());
    let mut reply = [0u8; 24 + 72 + 32];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(reply[8], FrameKind::HelloReply as u8);
    send_frame(&mut stream, FrameKind::Auth, &[0u8; 32]);
    wait_for("bad proof refusal", || n2.stats().handshake_refused_bad_proof == 1);
    assert!(n2.connected_peers().is_empty());
}

#[test]
fn handshake_with_an_old_protocol_version_is_refused() {
    // Version 1 had no RaftBatch frames: a version 1 peer could not read what we send.
    let stats = raw_hello(Hello { version: 1, cluster_id: 7, from: 1, to: 2, nonce: [1; 32], settings: SETTINGS });
    assert_eq!(stats.handshake_refused_version, 1);
    assert_eq!(stats.connections_established, 0);
}

#[test]
fn a_version_2_hello_without_settings_is_refused_for_its_version() {
    let (n2, _r2, mut stream) = node_2_and_a_raw_dialer();
    let hello = Hello { version: 2, cluster_id: 7, from: 1, to: 2, nonce: [1; 32], settings: SETTINGS }.encode();
    send_frame(&mut stream, FrameKind::Hello, &hello[..64]);
    wait_for("the version refusal", || n2.stats().handshake_refused_version == 1);
    assert_eq!(n2.stats().handshake_refused_malformed, 0);
}

#[test]
fn handshake_claiming_our_own_id_is_refused() {
    let stats = raw_hello(Hello {
        version: PROTOCOL_VERSION,
        cluster_id: 7,
        from: 2,
        to: 2,
        nonce: [1; 32],
        settings: SETTINGS,
    });
    assert_eq!(stats.handshake_refused_duplicate_node, 1);
}

#[test]
fn handshake_meant_for_another_node_is_refused() {
    let stats = raw_hello(Hello {
        version: PROTOCOL_VERSION,
        cluster_id: 7,
        from: 1,
        to: 5,
        nonce: [1; 32],
        settings: SETTINGS,
    });
    assert_eq!(stats.handshake_refused_wrong_target, 1);
}

fn raw_bytes_then_wait(bytes: &[u8]) -> NetStats {
    let (n2, _r2, mut stream) = node_2_and_a_raw_dialer();
    stream.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let _ = stream.read_to_end(&mut answer);
    assert!(started.elapsed() < Duration::from_secs(4), "connection was not closed");
    n2.stats()
}

#[test]
fn garbage_instead_of_a_hello_is_refused() {
    let stats = raw_bytes_then_wait(&[0xAB; 64]);
    assert_eq!(stats.handshake_refused_malformed, 1);
}

#[test]
fn oversize_frame_header_is_refused_before_allocation() {
    let mut header = [0u8; 24];
    header[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    header[8] = FrameKind::Hello as u8;
    let stats = raw_bytes_then_wait(&header);
    assert_eq!(stats.handshake_refused_malformed, 1);
}

#[test]
fn corrupted_hello_frame_is_refused() {
    let mut frame = Vec::new();
    let hello = Hello { version: PROTOCOL_VERSION, cluster_id: 7, from: 1, to: 2, nonce: [1; 32], settings: SETTINGS };
    encode_frame(&mut frame, FrameKind::Hello, 0, 0, &hello.encode(), 1 << 20).unwrap();
    frame[40] ^= 0x10;
    let stats = raw_bytes_then_wait(&frame);
    assert_eq!(stats.handshake_refused_malformed, 1);
}

#[test]
fn truncated_hello_times_out_as_slowloris() {
    let mut frame = Vec::new();
    let hello = Hello { version: PROTOCOL_VERSION, cluster_id: 7, from: 1, to: 2, nonce: [1; 32], settings: SETTINGS };
    encode_frame(&mut frame, FrameKind::Hello, 0, 0, &hello.encode(), 1 << 20).unwrap();
    let stats = raw_bytes_then_wait(&frame[..30]);
    assert_eq!(stats.handshake_refused_timeout, 1);
}

#[test]
fn flood_of_connections_is_bounded_and_a_real_peer_still_gets_in() {
    let config = NetConfig { connections_max: 8, handshakes_max: 8, handshake_ms: 300, ..config() };
    let l2 = listener();
    let a2 = l2.local_addr().unwrap();
    let (n2, r2) =
        PeerTransport::start(config, identity(7, 2, SECRET), l2, &[(1, listener().local_addr().unwrap())]).unwrap();
    let flood: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(a2).unwrap()).collect();
    wait_for("refusals at the limit", || n2.stats().connections_refused_limit >= 50);
    // The flood's handshakes time out; a real peer then connects.
    let (n1, _r1) = start(1, listener(), &[(2, a2)]);
    deliver(&n1, &r2, &append(1, 2, 1, 1));
    drop(flood);
}

#[test]
fn peer_added_at_runtime_connects_and_removed_peer_stops_even_with_a_stalled_consumer() {
    let (l1, l2) = (listener(), listener());
    let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
    let (mut n1, _r1) = start(1, l1, &[]);
    let stalled = NetConfig { inbound_batches_max: 1, ..config() };
    let (mut n2, r2) = PeerTransport::start(stalled, identity(7, 2, SECRET), l2, &[(1, a1)]).unwrap();
    n1.add_peer(2, a2).unwrap();
    assert!(n1.add_peer(2, a2).is_err(), "a peer cannot be added twice");
    deliver(&n1, &r2, &append(1, 2, 1, 10));
    // Fill node 2's inbound queue and leave it full: its reader blocks on the consumer.
    for index in 2..200 {
        let _ = n1.send(append(1, 2, index, 1000));
    }
    wait_for("the reader to wait", || n2.stats().inbound_full_waits >= 1);
    let started = Instant::now();
    n2.remove_peer(1);
    assert!(started.elapsed() < Duration::from_secs(2), "remove_peer hung on the stalled reader");
    assert!(n2.connected_peers().is_empty());
    wait_for("node 1 to see the loss", || n1.connected_peers().is_empty());
    drop(r2);
}

#[test]
fn a_peer_that_stops_reading_does_not_stall_sending_to_others() {
    let (l1, l2, l3) = (listener(), listener(), listener());
    let (a1, a2, a3) = (l1.local_addr().unwrap(), l2.local_addr().unwrap(), l3.local_addr().unwrap());
    let (n1, _r1) = start(1, l1, &[(2, a2), (3, a3)]);
    let (_n2, r2) = start(2, l2, &[(1, a1)]);
    // Node 3's consumer never drains: its reader stops, TCP fills, node 1's writer to 3 blocks.
    let stalled = NetConfig { inbound_batches_max: 1, ..config() };
    let (_n3, r3) = PeerTransport::start(stalled, identity(7, 3, SECRET), l3, &[(1, a1)]).unwrap();
    let to_three = Message { to: 3, ..append(1, 3, 1, 60_000) };
    deliver(&n1, &r3, &to_three);
    deliver(&n1, &r2, &append(1, 2, 1, 10));
    for index in 0..2_000 {
        let _ = n1.send(append(1, 3, index + 2, 60_000));
    }
    wait_for("node 3's queue to overflow", || n1.stats().send_dropped_queue_full > 0);
    let started = Instant::now();
    for index in 2..102 {
        n1.send(append(1, 2, index, 10)).unwrap();
    }
    let mut received = 0;
    while received < 100 {
        received += r2.recv_timeout(Duration::from_secs(5)).expect("node 2 still served").messages.len();
    }
    assert!(started.elapsed() < Duration::from_secs(2), "sending to node 2 stalled");
    drop(r3);
}

#[test]
fn dialer_gives_up_on_an_acceptor_that_never_answers() {
    let silent = listener();
    let address = silent.local_addr().unwrap();
    let (n1, _r1) = start(1, listener(), &[(2, address)]);
    let held = std::thread::spawn(move || {
        let (stream, _) = silent.accept().unwrap();
        std::thread::sleep(Duration::from_secs(2));
        drop(stream);
    });
    wait_for("the dialer's handshake deadline", || n1.stats().handshake_refused_timeout >= 1);
    assert!(n1.connected_peers().is_empty());
    drop(n1);
    held.join().unwrap();
}

#[test]
fn snapshot_chunk_larger_than_a_read_arrives_whole() {
    let (l1, l2) = (listener(), listener());
    let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
    let (n1, _r1) = start(1, l1, &[(2, a2)]);
    let (_n2, r2) = start(2, l2, &[(1, a1)]);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let chunk = Message {
        group: 3,
        from: 1,
        to: 2,
        term: 4,
        body: MessageBody::Snapshot {
            meta: Box::new(smr_raft::SnapshotMeta {
                index: 90,
                term: 3,
                conf: smr_raft::ConfState::with_voters([1, 2, 3]),
            }),
            offset: 0,
            data: Bytes::from(data),
            last: false,
        },
    };
    assert_eq!(deliver(&n1, &r2, &chunk), chunk);
}

#[test]
fn acceptor_takes_the_new_connection_of_a_restarted_dialer() {
    let (l1, l2) = (listener(), listener());
    let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
    let (n1, _r1) = start(1, l1, &[(2, a2)]);
    let (n2, r2) = start(2, l2, &[(1, a1)]);
    deliver(&n1, &r2, &append(1, 2, 1, 10));
    n1.shutdown();
    // Node 1 comes back at once, possibly before node 2 has seen the old connection close: it
    // may be refused as a duplicate once, and then gets in on a later attempt.
    let (n1, _r1) = start(1, TcpListener::bind(a1).unwrap(), &[(2, a2)]);
    deliver(&n1, &r2, &append(1, 2, 2, 10));
    assert_eq!(n2.connected_peers(), vec![1]);
    assert!(n2.stats().connections_established >= 2);
}
