//! The delayer on real packets: two hosts' namespaces of the chaos fabric, a TCP echo server on
//! one and a client on the other, and the client's host delayed by `smr-chaos delay` behind an
//! NFQUEUE rule. Only lower bounds on time are asserted (a loaded two-core machine is slow, never
//! fast).
//!
//! Needs root for the namespaces; without, the tests say loudly that they are skipped (under
//! `CI=true` they fail instead). Needs `target/<profile>/smr-chaos`, which cargo builds for these
//! tests.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smr_chaos::cluster::{exclusive, in_ci};
use smr_chaos::delay::DelaySpec;
use smr_chaos::fabric::{self, Namespaces};

/// The echo server's port on the server host.
const ECHO_PORT: u16 = 7400;
/// How long any socket operation may block, so that a broken test stops by itself.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENT_HOST: u8 = 1;
const SERVER_HOST: u8 = 2;

/// Two hosts, or `None` (and a loud note) where namespaces cannot be made; under `CI=true` that
/// is a failure.
fn two_hosts(test: &str) -> Option<Namespaces> {
    if let Some(reason) = fabric::unavailable_reason() {
        assert!(!in_ci(), "CI=true, and network namespaces cannot be made: {reason}");
        eprintln!("!!! smr-chaos: SKIPPING {test}: it needs network namespaces: {reason}");
        return None;
    }
    let mut namespaces = Namespaces::create().unwrap_or_else(|e| panic!("cannot make the namespaces: {e}"));
    for host in [CLIENT_HOST, SERVER_HOST] {
        namespaces.add_host(host).unwrap_or_else(|e| panic!("cannot make host {host}: {e}"));
    }
    Some(namespaces)
}

/// Runs `work` on a thread of its own inside the namespace of `file`.
fn in_namespace<T: Send + 'static>(file: File, work: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    std::thread::spawn(move || {
        // SAFETY: setns moves this thread alone into the namespace; the file is open across it.
        let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(result, 0, "setns: {}", std::io::Error::last_os_error());
        work()
    })
}

/// A server on the server host that takes `connections` connections one after the other and
/// hands each one to `serve`; returns once it listens.
fn server<T: Send + 'static>(
    namespaces: &Namespaces,
    connections: usize,
    serve: fn(TcpStream) -> T,
) -> JoinHandle<Vec<T>> {
    let address = SocketAddr::new(namespaces.address(SERVER_HOST).into(), ECHO_PORT);
    let (listening, listens) = mpsc::sync_channel(1);
    let thread = in_namespace(namespaces.netns_file(SERVER_HOST).expect("the server host"), move || {
        let listener = TcpListener::bind(address).expect("bind the server");
        listening.send(()).expect("the test waits for the server");
        (0..connections)
            .map(|_| {
                let (stream, _) = listener.accept().expect("accept");
                stream.set_read_timeout(Some(SOCKET_TIMEOUT)).expect("a read timeout");
                serve(stream)
            })
            .collect()
    });
    listens.recv().expect("the server listens");
    thread
}

fn echo(mut stream: TcpStream) {
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).is_ok_and(|n| n == 1) {
        stream.write_all(&byte).expect("echo");
    }
}

fn read_everything(mut stream: TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    stream.read_to_end(&mut received).expect("read until the client closes");
    received
}

/// Connects from the client host to the server and runs `work` on the connection there.
fn client<T: Send + 'static>(namespaces: &Namespaces, work: impl FnOnce(TcpStream) -> T + Send + 'static) -> T {
    let address = SocketAddr::new(namespaces.address(SERVER_HOST).into(), ECHO_PORT);
    let thread = in_namespace(namespaces.netns_file(CLIENT_HOST).expect("the client host"), move || {
        let stream = TcpStream::connect_timeout(&address, SOCKET_TIMEOUT).expect("connect to the server");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream.set_read_timeout(Some(SOCKET_TIMEOUT)).expect("a read timeout");
        work(stream)
    });
    thread.join().expect("the client thread")
}

/// Round trips of one byte each.
fn round_trips(mut stream: TcpStream, count: usize) -> Vec<Duration> {
    let mut byte = [7u8; 1];
    (0..count)
        .map(|_| {
            let sent = Instant::now();
            stream.write_all(&byte).expect("send");
            stream.read_exact(&mut byte).expect("the echo");
            sent.elapsed()
        })
        .collect()
}

#[test]
fn a_delayed_host_gets_no_answer_sooner_than_its_delay() {
    const DELAY_MS: u32 = 30;
    const ROUND_TRIPS: usize = 20;
    let _exclusive = exclusive();
    let Some(mut namespaces) = two_hosts("the delay test") else { return };
    let echoes = server(&namespaces, 2, echo);
    let undelayed = client(&namespaces, |stream| round_trips(stream, ROUND_TRIPS));
    namespaces.delay(CLIENT_HOST, DelaySpec { delay_ms: DELAY_MS, jitter_ms: 0, seed: 1 }).expect("start the delayer");
    let delayed = client(&namespaces, |stream| round_trips(stream, ROUND_TRIPS));
    let reports = namespaces.heal().expect("heal");
    echoes.join().expect("the server");
    let fastest = |trips: &[Duration]| trips.iter().min().copied().unwrap_or_default();
    let slowest = |trips: &[Duration]| trips.iter().max().copied().unwrap_or_default();
    eprintln!(
        "round trips without the delayer {:?} to {:?}, with {DELAY_MS} ms on the client's way out {:?} to {:?}; {:?}",
        fastest(&undelayed),
        slowest(&undelayed),
        fastest(&delayed),
        slowest(&delayed),
        reports
    );
    let bound = Duration::from_millis(u64::from(DELAY_MS));
    assert!(fastest(&delayed) >= bound, "a round trip took less than the {bound:?} delay: {delayed:?}");
    let [report] = reports[..] else { panic!("one delayer expected: {reports:?}") };
    // The SYN, the final ACK of the handshake and every byte sent were queued.
    assert!(report.stats.delayed >= ROUND_TRIPS as u64, "{report:?}");
    assert!(report.stats.held_us_min >= u64::from(DELAY_MS) * 1_000, "{report:?}");
}

#[test]
fn jitter_wider_than_the_packet_gap_reorders_packets_and_tcp_still_delivers_every_byte_in_order() {
    const MESSAGES: u32 = 2_000;
    const GAP: Duration = Duration::from_micros(100);
    let _exclusive = exclusive();
    let Some(mut namespaces) = two_hosts("the reordering test") else { return };
    let reader = server(&namespaces, 1, read_everything);
    namespaces.delay(CLIENT_HOST, DelaySpec { delay_ms: 1, jitter_ms: 20, seed: 5 }).expect("start the delayer");
    // Small writes, one segment each (TCP_NODELAY), a gap far below the 20 ms jitter between them.
    let sent = client(&namespaces, |mut stream| {
        let mut sent = Vec::new();
        for message in 0..MESSAGES {
            let bytes: Vec<u8> = message.to_be_bytes().iter().cycle().take(64).copied().collect();
            stream.write_all(&bytes).expect("send");
            sent.extend_from_slice(&bytes);
            std::thread::sleep(GAP);
        }
        sent
    });
    let received = reader.join().expect("the server").pop().expect("one connection");
    let reports = namespaces.heal().expect("heal");
    let [report] = reports[..] else { panic!("one delayer expected: {reports:?}") };
    eprintln!("{} bytes sent, {} received; {report:?}", sent.len(), received.len());
    assert!(received == sent, "TCP delivered {} bytes, not the {} sent, or not in order", received.len(), sent.len());
    assert!(report.stats.delayed > 0, "{report:?}");
    assert!(report.stats.reordered > 0, "no packet left out of order: {report:?}");
}

#[test]
fn a_dead_delayer_lets_packets_pass_and_is_reported_at_the_heal() {
    let _exclusive = exclusive();
    let Some(mut namespaces) = two_hosts("the dead delayer test") else { return };
    let echoes = server(&namespaces, 1, echo);
    namespaces.delay(CLIENT_HOST, DelaySpec { delay_ms: 10, jitter_ms: 0, seed: 1 }).expect("start the delayer");
    let pid = namespaces.delayer_pid(CLIENT_HOST).expect("a delayer runs");
    // SAFETY: SIGKILL to the delayer this test started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let killed = Instant::now();
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z ")) {
        assert!(killed.elapsed() < SOCKET_TIMEOUT, "the delayer {pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The rule is still there, but nobody listens on its queue: --queue-bypass lets packets pass.
    let trips = client(&namespaces, |stream| round_trips(stream, 5));
    echoes.join().expect("the server");
    assert_eq!(trips.len(), 5);
    let error = namespaces.heal().expect_err("a dead delayer is an error at the heal");
    assert!(error.contains("DIED"), "{error}");
    eprintln!("with the delayer dead, round trips {trips:?}; the heal said: {error}");
}
