//! The client protocol over real loopback sockets: the server side and the blocking client.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use smr_net::frame::{FrameKind, encode_frame};
use smr_net::{
    AdminRequest, Client, ClientConfig, ClientRequest, ClientServer, Consistency, NetConfig, NetStats, RequestBody,
    ResponseBody,
};

fn config() -> NetConfig {
    NetConfig { idle_timeout_ms: 600, frame_receive_ms_max: 300, keepalive_ms: 100, ..NetConfig::default() }
}

fn server(config: NetConfig, requests_max: usize) -> (ClientServer, Receiver<ClientRequest>) {
    ClientServer::start(config, TcpListener::bind("127.0.0.1:0").unwrap(), requests_max).unwrap()
}

fn command(sequence: u64) -> RequestBody {
    RequestBody::Command { session_id: 77, sequence, payload: Bytes::from(format!("put k{sequence}")) }
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
fn pipelined_requests_are_answered_out_of_order() {
    let (server, requests) = server(config(), 1024);
    let runtime = std::thread::spawn(move || {
        let mut held: Vec<ClientRequest> = (0..100).map(|_| requests.recv().unwrap()).collect();
        // Answer in reverse order, echoing the payload.
        while let Some(request) = held.pop() {
            let RequestBody::Command { payload, .. } = &request.request.body else { panic!() };
            let payload = payload.clone();
            request.respond(ResponseBody::Ok(payload));
        }
    });
    let mut client = Client::connect(&[server.local_addr()], ClientConfig::default()).unwrap();
    let ids: Vec<u64> = (0..100).map(|sequence| client.submit(command(sequence)).unwrap()).collect();
    client.flush().unwrap();
    let mut answers = Vec::new();
    for _ in 0..100 {
        let response = client.recv().unwrap();
        let ResponseBody::Ok(payload) = response.body else { panic!("{response:?}") };
        let sequence = ids.iter().position(|&id| id == response.request_id).unwrap();
        assert_eq!(payload, Bytes::from(format!("put k{sequence}")));
        answers.push(response.request_id);
    }
    runtime.join().unwrap();
    assert_eq!(answers.first(), ids.last(), "the last request was answered first");
    // The writer counts after its write returns, which may be after the client read.
    wait_for("the response counter", || server.stats().client_responses == 100);
    assert_eq!(server.stats().client_requests, 100);
}

#[test]
fn not_leader_redirect_is_followed_to_the_leader() {
    let (leader, leader_requests) = server(config(), 16);
    let (follower, follower_requests) = server(config(), 16);
    let leader_address = leader.local_addr();
    let follower_thread = std::thread::spawn(move || {
        let request = follower_requests.recv().unwrap();
        request
            .respond(ResponseBody::NotLeader { leader_id: Some(1), leader_address: Some(leader_address.to_string()) });
    });
    let leader_thread = std::thread::spawn(move || {
        let request = leader_requests.recv().unwrap();
        assert!(matches!(request.request.body, RequestBody::Read { consistency: Consistency::Linearizable, .. }));
        request.respond(ResponseBody::Ok(Bytes::from_static(b"value")));
    });
    let mut client = Client::connect(&[follower.local_addr()], ClientConfig::default()).unwrap();
    let answer = client
        .call(RequestBody::Read { consistency: Consistency::Linearizable, payload: Bytes::from_static(b"get k") })
        .unwrap();
    assert_eq!(answer, ResponseBody::Ok(Bytes::from_static(b"value")));
    assert_eq!(client.connected_to(), leader_address);
    follower_thread.join().unwrap();
    leader_thread.join().unwrap();
}

#[test]
fn full_runtime_queue_answers_busy() {
    let (server, _requests) = server(config(), 2);
    let mut client = Client::connect(&[server.local_addr()], ClientConfig::default()).unwrap();
    for sequence in 0..10 {
        client.submit(command(sequence)).unwrap();
    }
    client.flush().unwrap();
    for _ in 0..8 {
        assert_eq!(client.recv().unwrap().body, ResponseBody::Busy);
    }
    assert_eq!(server.stats().client_busy, 8);
}

#[test]
fn per_connection_inflight_limit_answers_busy() {
    let (server, requests) = server(NetConfig { client_inflight_max: 3, ..config() }, 100);
    let mut client = Client::connect(&[server.local_addr()], ClientConfig::default()).unwrap();
    for sequence in 0..5 {
        client.submit(command(sequence)).unwrap();
    }
    client.flush().unwrap();
    for _ in 0..2 {
        assert_eq!(client.recv().unwrap().body, ResponseBody::Busy);
    }
    // Answering frees the slots.
    let held: Vec<ClientRequest> = (0..3).map(|_| requests.recv().unwrap()).collect();
    for request in held {
        request.respond(ResponseBody::Ok(Bytes::new()));
    }
    for _ in 0..3 {
        assert_eq!(client.recv().unwrap().body, ResponseBody::Ok(Bytes::new()));
    }
    client.submit(command(9)).unwrap();
    client.flush().unwrap();
    requests.recv_timeout(Duration::from_secs(5)).unwrap().respond(ResponseBody::TimedOut);
    assert_eq!(client.recv().unwrap().body, ResponseBody::TimedOut);
}

#[test]
fn dropped_request_is_answered_shutting_down() {
    let (server, requests) = server(config(), 16);
    let mut client = Client::connect(&[server.local_addr()], ClientConfig::default()).unwrap();
    client.submit(RequestBody::Admin(AdminRequest::Status)).unwrap();
    client.flush().unwrap();
    drop(requests.recv().unwrap());
    assert_eq!(client.recv().unwrap().body, ResponseBody::ShuttingDown);
}

fn raw(server: &ClientServer, bytes: &[u8]) -> (Vec<u8>, Duration) {
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream.write_all(bytes).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (answer, started.elapsed())
}

fn stats_after(server: &ClientServer, counted: fn(&NetStats) -> bool) -> NetStats {
    wait_for("the counter", || counted(&server.stats()));
    server.stats()
}

#[test]
fn malformed_request_in_a_valid_frame_is_answered_invalid() {
    let (server, _requests) = server(config(), 16);
    let mut frame = Vec::new();
    let mut payload = [0u8; 32];
    payload[0] = 42; // request id
    payload[8] = 99; // no such op
    encode_frame(&mut frame, FrameKind::ClientRequest, 0, 0, &payload, 1 << 20).unwrap();
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream.write_all(&frame).unwrap();
    let mut header = [0u8; 24];
    stream.read_exact(&mut header).unwrap();
    let length = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    let mut body = vec![0u8; length.next_multiple_of(8)];
    stream.read_exact(&mut body).unwrap();
    assert_eq!(body[0], 42);
    assert_eq!(body[8], 6, "status invalid request");
    assert_eq!(server.stats().client_invalid, 1);
}

#[test]
fn garbage_bytes_close_the_connection() {
    let (server, _requests) = server(config(), 16);
    let (answer, elapsed) = raw(&server, &[0x5a; 100]);
    assert!(answer.is_empty() && elapsed < Duration::from_secs(4));
    stats_after(&server, |stats| stats.disconnects_garbage == 1);
}

#[test]
fn oversize_frame_closes_the_connection() {
    let (server, _requests) = server(config(), 16);
    let mut header = [0u8; 24];
    header[0..4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    header[8] = FrameKind::ClientRequest as u8;
    let (_, elapsed) = raw(&server, &header);
    assert!(elapsed < Duration::from_secs(4));
    stats_after(&server, |stats| stats.disconnects_garbage == 1);
}

#[test]
fn corrupted_frame_closes_the_connection() {
    let (server, _requests) = server(config(), 16);
    let mut frame = Vec::new();
    encode_frame(&mut frame, FrameKind::ClientRequest, 0, 0, &[1u8; 40], 1 << 20).unwrap();
    frame[30] ^= 1;
    raw(&server, &frame);
    stats_after(&server, |stats| stats.disconnects_garbage == 1);
}

#[test]
fn truncated_frame_from_a_slowloris_times_out() {
    let (server, _requests) = server(config(), 16);
    let mut frame = Vec::new();
    encode_frame(&mut frame, FrameKind::ClientRequest, 0, 0, &[1u8; 40], 1 << 20).unwrap();
    let (_, elapsed) = raw(&server, &frame[..20]);
    assert!(elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(4), "{elapsed:?}");
    stats_after(&server, |stats| stats.disconnects_slow_frame == 1);
}

#[test]
fn idle_connection_is_closed() {
    let (server, _requests) = server(config(), 16);
    let (_, elapsed) = raw(&server, &[]);
    assert!(elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(4), "{elapsed:?}");
    stats_after(&server, |stats| stats.disconnects_idle == 1);
}

#[test]
fn connection_flood_is_capped_at_connections_max() {
    let (server, requests) = server(NetConfig { connections_max: 4, handshakes_max: 4, ..config() }, 16);
    let flood: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(server.local_addr()).unwrap()).collect();
    wait_for("refusals", || server.stats().connections_refused_limit == 16);
    assert_eq!(server.connections(), 4);
    drop(flood);
    wait_for("the flood to drain", || server.connections() == 0);
    // Service resumes.
    let answering = std::thread::spawn(move || requests.recv().unwrap().respond(ResponseBody::Ok(Bytes::new())));
    let mut client = Client::connect(&[server.local_addr()], ClientConfig::default()).unwrap();
    assert_eq!(client.call(RequestBody::Admin(AdminRequest::Stats)).unwrap(), ResponseBody::Ok(Bytes::new()));
    answering.join().unwrap();
}

#[test]
fn every_request_of_a_flood_is_answered_exactly_once() {
    let (server, requests) = server(NetConfig { client_inflight_max: 16, ..config() }, 4);
    let runtime = std::thread::spawn(move || {
        let mut answered = 0;
        while let Ok(request) = requests.recv_timeout(Duration::from_millis(500)) {
            request.respond(ResponseBody::Ok(Bytes::new()));
            answered += 1;
        }
        answered
    });
    let mut client = Client::connect(&[server.local_addr()], ClientConfig::default()).unwrap();
    let mut ids = std::collections::HashSet::new();
    for sequence in 0..3000 {
        ids.insert(client.submit(command(sequence)).unwrap());
    }
    client.flush().unwrap();
    let (mut ok, mut busy) = (0, 0);
    while !ids.is_empty() {
        let response = client.recv().unwrap();
        assert!(ids.remove(&response.request_id), "answered twice or never asked");
        match response.body {
            ResponseBody::Ok(_) => ok += 1,
            ResponseBody::Busy => busy += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ok + busy, 3000);
    assert_eq!(runtime.join().unwrap(), ok);
    assert_eq!(server.stats().client_busy, busy);
}

#[test]
fn a_client_polling_with_a_short_wait_still_receives_later_answers() {
    let (server, requests) = server(config(), 1024);
    // A 1 ms wait per recv, as an open-loop load generator polls; the answer comes 50 ms later.
    let mut client =
        Client::connect(&[server.local_addr()], ClientConfig { response_ms: 1, ..ClientConfig::default() }).unwrap();
    let id = client.submit(command(1)).unwrap();
    let runtime = std::thread::spawn(move || {
        let request = requests.recv().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        request.respond(ResponseBody::Ok(Bytes::from_static(b"late")));
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let response = loop {
        match client.recv() {
            Ok(response) => break response,
            Err(smr_net::ClientError::TimedOut(_)) if Instant::now() < deadline => {}
            Err(error) => panic!("{error}"),
        }
    };
    assert_eq!(response.request_id, id);
    assert_eq!(response.body, ResponseBody::Ok(Bytes::from_static(b"late")));
    runtime.join().unwrap();
}

#[test]
fn answers_larger_than_the_socket_buffer_reach_a_slow_reader_whole_and_in_order() {
    let (server, requests) = server(config(), 1024);
    let mut client = Client::connect(&[server.local_addr()], ClientConfig::default()).unwrap();
    // 64 answers of 256 KiB: 16 MiB, far more than loopback socket buffers hold, written by a
    // thread that never blocks; the loop finishes each write as the client drains the socket.
    let ids: Vec<u64> = (0..64).map(|sequence| client.submit(command(sequence)).unwrap()).collect();
    client.flush().unwrap();
    let runtime = std::thread::spawn(move || {
        let mut batch = smr_net::ResponseBatch::new();
        for sequence in 0..64u8 {
            let request = requests.recv().unwrap();
            request.respond_batched(ResponseBody::Ok(Bytes::from(vec![sequence; 256 << 10])), &mut batch);
            if sequence % 8 == 7 {
                batch.flush();
            }
        }
    });
    runtime.join().unwrap();
    for (sequence, &id) in ids.iter().enumerate() {
        // Read slowly at first, so that the socket fills.
        if sequence < 4 {
            std::thread::sleep(Duration::from_millis(50));
        }
        let response = client.recv().unwrap();
        assert_eq!(response.request_id, id, "answers come in the order they were given");
        let ResponseBody::Ok(payload) = response.body else { panic!("{:?}", response.body) };
        assert_eq!(payload.len(), 256 << 10);
        assert!(payload.iter().all(|&byte| byte == sequence as u8), "answer {sequence} intact");
    }
    assert_eq!(server.stats().disconnects_io, 0);
}

#[test]
fn a_client_that_never_reads_is_paused_then_closed_and_others_are_served() {
    let (server, requests) = server(NetConfig { write_timeout_ms: 400, idle_timeout_ms: 60_000, ..config() }, 1 << 16);
    let runtime = std::thread::spawn(move || {
        let mut batch = smr_net::ResponseBatch::new();
        while let Ok(request) = requests.recv_timeout(Duration::from_secs(3)) {
            request.respond_batched(ResponseBody::Ok(Bytes::from(vec![7u8; 64 << 10])), &mut batch);
            batch.flush();
        }
    });
    // A client that sends requests as fast as it can and never reads an answer.
    let mut hog = TcpStream::connect(server.local_addr()).unwrap();
    let request = smr_net::Request { request_id: 1, group: 0, body: command(1) };
    let mut batch = smr_net::SendBatch::new();
    smr_net::encode_request(&mut batch, &request, 1 << 20).unwrap();
    let frame = batch.to_vec();
    hog.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let started = Instant::now();
    let mut sent = 0usize;
    while hog.write_all(&frame).is_ok() && started.elapsed() < Duration::from_secs(10) {
        sent += 1;
    }
    assert!(sent > 0);
    assert!(started.elapsed() < Duration::from_secs(10), "the node stopped reading the hog, so its writes blocked");
    // Its answers are bounded: once its outbox is full the node stops reading it, so its own
    // writes block; then its socket takes nothing for write_timeout_ms and it is closed.
    wait_for("the hog to be closed", || {
        let stats = server.stats();
        stats.disconnects_io + stats.disconnects_slow_frame + stats.disconnects_idle > 0
    });
    // For not reading: a frame it was stopped halfway through while paused is not slowloris.
    let stats = server.stats();
    assert_eq!((stats.disconnects_io, stats.disconnects_slow_frame, stats.disconnects_idle), (1, 0, 0));
    assert!(server.stats().client_requests < sent as u64 + 1);
    let mut client = Client::connect(&[server.local_addr()], ClientConfig::default()).unwrap();
    let ResponseBody::Ok(payload) = client.call(command(2)).unwrap() else { panic!() };
    assert_eq!(payload.len(), 64 << 10);
    drop(client);
    drop(server);
    runtime.join().unwrap();
}
