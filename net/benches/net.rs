//! Criterion benchmarks of the transport.
//!
//! - `codec/*`: encoding a Raft Append of one entry into a send batch, and decoding it back from
//!   a received buffer (frame CRC, bytecheck validation, conversion), per message.
//! - `codec_batched/*`: the same for the RaftBatch frames links use for small messages, 100
//!   messages per frame; elements/s is messages/s.
//! - `loopback/*`: messages/s and bytes/s from one `PeerTransport` to another over 127.0.0.1,
//!   one entry of 64 B to 64 KiB per message, the way a leader streams appends. Time per
//!   iteration is time per message (so 1 / time is messages/s); throughput is entry bytes.
//!
//! Run: `cargo bench -p smr-net --bench net` (add `-- loopback` or `-- codec` to filter).

use std::hint::black_box;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use smr_net::frame::{FRAME_HEADER_BYTES, decode_frame};
use smr_net::{
    Identity, NetConfig, PeerTransport, SendBatch, SendError, decode_message, decode_message_batch, encode_message,
    encode_message_batched,
};
use smr_raft::{Entry, EntryKind, Message, MessageBody};

const SIZES: [usize; 6] = [64, 512, 1024, 4096, 16384, 65536];

fn append(index: u64, data: &Bytes) -> Message {
    Message {
        group: 1,
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::Append {
            prev_log_index: index - 1,
            prev_log_term: 3,
            commit_index: index - 1,
            entries: vec![Entry { index, term: 3, kind: EntryKind::Normal, data: data.clone() }],
        },
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for size in SIZES {
        let data = Bytes::from(vec![7u8; size]);
        let message = append(10, &data);
        group.throughput(Throughput::Bytes(size as u64));
        let mut batch = SendBatch::new();
        group.bench_with_input(BenchmarkId::new("encode", size), &message, |b, message| {
            b.iter(|| {
                encode_message(&mut batch, black_box(message), 1 << 24).unwrap();
                if batch.bytes() > 1 << 20 {
                    batch.clear();
                }
            });
        });
        let mut one = SendBatch::new();
        encode_message(&mut one, &message, 1 << 24).unwrap();
        let bytes = Bytes::from(one.to_vec());
        group.bench_with_input(BenchmarkId::new("decode", size), &bytes, |b, bytes| {
            b.iter(|| {
                let (header, _) = decode_frame(black_box(bytes), 1 << 24).unwrap().unwrap();
                let payload = bytes.slice(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.length as usize);
                black_box(decode_message(header.group, header.aux, &payload).unwrap())
            });
        });
    }
    group.finish();

    // The way a link sends small messages: records of RaftBatch frames. Per iteration, one frame
    // of RECORDS messages (so elements/s is messages/s): encode, then decode (frame CRC, record
    // bounds, bytecheck validation, conversion).
    const RECORDS: u64 = 100;
    let mut group = c.benchmark_group("codec_batched");
    group.throughput(Throughput::Elements(RECORDS));
    for size in SIZES.into_iter().filter(|&size| size <= 1024) {
        let data = Bytes::from(vec![7u8; size]);
        let messages: Vec<Message> = (0..RECORDS).map(|index| append(index + 1, &data)).collect();
        let mut batch = SendBatch::new();
        group.bench_with_input(BenchmarkId::new("encode", size), &messages, |b, messages| {
            b.iter(|| {
                for message in messages {
                    encode_message_batched(&mut batch, black_box(message), 1 << 24).unwrap();
                }
                batch.clear();
            });
        });
        let mut one = SendBatch::new();
        for message in &messages {
            encode_message_batched(&mut one, message, 1 << 24).unwrap();
        }
        let bytes = Bytes::from(one.to_vec());
        group.bench_with_input(BenchmarkId::new("decode", size), &bytes, |b, bytes| {
            b.iter(|| {
                let mut at = 0;
                let mut decoded = Vec::with_capacity(RECORDS as usize);
                while at < bytes.len() {
                    let (header, total) = decode_frame(black_box(&bytes[at..]), 1 << 24).unwrap().unwrap();
                    let payload =
                        bytes.slice(at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + header.length as usize);
                    decode_message_batch(&payload, header.aux, |message| decoded.push(message)).unwrap();
                    at += total;
                }
                assert_eq!(decoded.len(), RECORDS as usize);
                decoded
            });
        });
    }
    group.finish();
}

fn loopback(c: &mut Criterion) {
    let config = NetConfig { peer_queue_messages_max: 8192, peer_queue_bytes_max: 256 << 20, ..NetConfig::default() };
    let identity =
        |node_id| Identity { cluster_id: 1, node_id, secret: b"benchmark cluster secret".to_vec(), settings: 0 };
    let (l1, l2) = (TcpListener::bind("127.0.0.1:0").unwrap(), TcpListener::bind("127.0.0.1:0").unwrap());
    let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
    let (sender, _sender_inbound) = PeerTransport::start(config.clone(), identity(1), l1, &[(2, a2)]).unwrap();
    let (_receiver, inbound) = PeerTransport::start(config, identity(2), l2, &[(1, a1)]).unwrap();
    // Wait for the link.
    let warm = Bytes::from_static(b"warm");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = sender.send(append(1, &warm));
        if inbound.recv_timeout(Duration::from_millis(20)).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "link never came up");
    }
    while inbound.try_recv().is_ok() {}

    let mut group = c.benchmark_group("loopback");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    for size in SIZES {
        let data = Bytes::from(vec![7u8; size]);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter_custom(|iterations| {
                let started = Instant::now();
                let (mut sent, mut received) = (0u64, 0u64);
                while received < iterations {
                    while sent < iterations {
                        match sender.send(append(sent + 1, &data)) {
                            Ok(()) => sent += 1,
                            Err(SendError::QueueFull(_)) => break,
                            Err(error) => panic!("{error}"),
                        }
                    }
                    let timeout = if sent < iterations { Duration::from_micros(200) } else { Duration::from_secs(5) };
                    match inbound.recv_timeout(timeout) {
                        Ok(batch) => received += batch.messages.len() as u64,
                        Err(_) if sent < iterations => {}
                        Err(error) => panic!("messages lost: {error}"),
                    }
                    while let Ok(batch) = inbound.try_recv() {
                        received += batch.messages.len() as u64;
                    }
                }
                started.elapsed()
            });
        });
    }
    group.finish();

    // Raft ships many entries per Append: 64 entries of 64 bytes per message. Throughput is in
    // entries, so criterion's elements/s is small messages per second on one connection.
    let mut group = c.benchmark_group("loopback_batched");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    let entries_per_message = 64u64;
    let data = Bytes::from(vec![7u8; 64]);
    group.throughput(Throughput::Elements(entries_per_message));
    group.bench_function("64x64", |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            let (mut sent, mut received) = (0u64, 0u64);
            let batched = |index: u64| {
                let mut message = append(index * entries_per_message + 1, &data);
                if let MessageBody::Append { entries, .. } = &mut message.body {
                    let first = entries[0].clone();
                    entries.extend(
                        (1..entries_per_message).map(|offset| Entry { index: first.index + offset, ..first.clone() }),
                    );
                }
                message
            };
            while received < iterations {
                while sent < iterations {
                    match sender.send(batched(sent)) {
                        Ok(()) => sent += 1,
                        Err(SendError::QueueFull(_)) => break,
                        Err(error) => panic!("{error}"),
                    }
                }
                let timeout = if sent < iterations { Duration::from_micros(200) } else { Duration::from_secs(5) };
                match inbound.recv_timeout(timeout) {
                    Ok(batch) => received += batch.messages.len() as u64,
                    Err(_) if sent < iterations => {}
                    Err(error) => panic!("messages lost: {error}"),
                }
                while let Ok(batch) = inbound.try_recv() {
                    received += batch.messages.len() as u64;
                }
            }
            started.elapsed()
        });
    });
    group.finish();
    let stats = sender.stats();
    eprintln!(
        "sender: {} messages in {} write batches ({:.1} per writev), {} dropped on a full queue (retried)",
        stats.messages_sent,
        stats.write_batches,
        stats.messages_sent as f64 / stats.write_batches.max(1) as f64,
        stats.send_dropped_queue_full
    );
}

criterion_group!(benches, codec, loopback);
criterion_main!(benches);
