//! Sequencer batching: what the core stage does per batch with `BatchBuilder` (put each
//! client's payload into a `Command`, sharing its bytes, push it, then archive the batch with `finish`), and what
//! the receiving side does with the bytes (validate them once at the trust boundary, then read
//! the commands in place). 128-byte payloads, N = 1, 16 and 256 commands per batch, the
//! builder at the runtime's default limits (2 MiB, 4096 commands).
//!
//! `cargo bench -p smr-apply --bench batch`

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rkyv::util::AlignedVec;
use smr_apply::batch::{self, ARCHIVE_ALIGN};
use smr_apply::{BatchBuilder, Command};

const PAYLOAD_BYTES: usize = 128;
const COMMANDS: [usize; 3] = [1, 16, 256];
/// The runtime's defaults for `pipeline.batch_bytes_max` and `batch_commands_max`.
const BATCH_BYTES_MAX: usize = 2 << 20;
const BATCH_COMMANDS_MAX: usize = 4096;

/// `n` client payloads as the sequencer receives them (one `Bytes` each).
fn payloads(n: usize) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(vec![(i % 251) as u8; PAYLOAD_BYTES])).collect()
}

fn bench_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_build");
    group.measurement_time(Duration::from_secs(3));
    for n in COMMANDS {
        let payloads = payloads(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("commands", n), &payloads, |b, payloads| {
            let mut builder = BatchBuilder::new(BATCH_BYTES_MAX, BATCH_COMMANDS_MAX);
            let mut seq = 0u64;
            b.iter(|| {
                for payload in payloads {
                    seq += 1;
                    let command = Command { session: 1 + seq % 64, seq, payload: payload.clone() };
                    builder.push(command).expect("the batch has room");
                }
                black_box(builder.finish())
            });
        });
    }
    group.finish();
}

/// An archived batch of `n` commands in an aligned buffer, as it sits in the mapped log.
fn archived(n: usize) -> AlignedVec<ARCHIVE_ALIGN> {
    let mut builder = BatchBuilder::new(BATCH_BYTES_MAX, BATCH_COMMANDS_MAX);
    for (i, payload) in payloads(n).into_iter().enumerate() {
        builder.push(Command { session: 1, seq: i as u64 + 1, payload }).expect("room");
    }
    let bytes = builder.finish();
    let mut aligned = AlignedVec::<ARCHIVE_ALIGN>::with_capacity(bytes.len());
    aligned.extend_from_slice(&bytes);
    aligned
}

fn bench_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_validate");
    group.measurement_time(Duration::from_secs(3));
    for n in COMMANDS {
        let bytes = archived(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("commands", n), &bytes, |b, bytes| {
            b.iter(|| batch::validate(black_box(bytes), BATCH_COMMANDS_MAX).expect("valid"));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("batch_view_iterate");
    group.measurement_time(Duration::from_secs(3));
    for n in COMMANDS {
        let bytes = archived(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("commands", n), &bytes, |b, bytes| {
            b.iter(|| {
                let batch = batch::view(black_box(bytes)).expect("valid");
                let mut sum = 0u64;
                for command in batch.commands.iter() {
                    sum = sum.wrapping_add(command.session.to_native() ^ command.seq.to_native());
                    sum = sum.wrapping_add(u64::from(command.payload[0]) + command.payload.len() as u64);
                }
                black_box(sum)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_build, bench_read);
criterion_main!(benches);
