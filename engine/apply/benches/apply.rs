//! Apply throughput: committed batches of KV puts (16-byte keys, 128-byte values) read in place
//! and applied through the session table, at 64 and 1024 commands per batch.
//!
//! `cargo bench -p smr-apply --bench apply`

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rkyv::util::AlignedVec;
use smr_apply::batch::encode;
use smr_apply::{Applier, Batch, Command, KvCommand, KvConfig, KvStore, SessionConfig};
use smr_raft::EntryKind;

/// Distinct keys written; the map stops growing after the first rounds, as a steady state would.
const KEYS: u64 = 100_000;

fn bench_apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_kv_puts");
    group.measurement_time(Duration::from_secs(3));
    for commands in [64u64, 1024] {
        // Prebuilt, aligned batches, as they sit in the mapped log.
        let batches: Vec<AlignedVec<16>> = (0..64)
            .map(|b| {
                let commands = (0..commands)
                    .map(|i| {
                        let n = (b * commands + i) % KEYS;
                        let key = format!("key-{n:012}");
                        let value = [n as u8; 128];
                        Command {
                            session: 1 + n % 64,
                            seq: b * commands + i + 1,
                            payload: KvCommand::Put { key: key.as_bytes(), value: &value }.encode(),
                        }
                    })
                    .collect();
                let bytes = encode(&Batch { commands });
                let mut aligned = AlignedVec::<16>::new();
                aligned.extend_from_slice(&bytes);
                aligned
            })
            .collect();
        group.throughput(Throughput::Elements(commands));
        group.bench_with_input(BenchmarkId::new("commands", commands), &batches, |b, batches| {
            let mut applier = Applier::new(KvStore::new(KvConfig::default()), SessionConfig::default(), 4096);
            let mut outcomes = Vec::with_capacity(commands as usize);
            let mut next = 0usize;
            b.iter(|| {
                outcomes.clear();
                let index = applier.applied_index() + 1;
                // Session numbers repeat across rounds, so rebuild fresh sessions: every command is
                // applied, none answered from the table (the costly path).
                if next == 0 {
                    applier = Applier::new(KvStore::new(KvConfig::default()), SessionConfig::default(), 4096);
                }
                let index = if next == 0 { 1 } else { index };
                applier.apply(index, 1, EntryKind::Normal, &batches[next], &mut outcomes).unwrap();
                next = (next + 1) % batches.len();
            });
        });
    }
    group.finish();
}

/// An applier whose map holds every one of the `KEYS` keys (16 hex digits) with a 128-byte value,
/// put in key order by `sessions` sessions in turn; returns it and the last sequence number used.
fn filled_applier(sessions: u64) -> (Applier<KvStore>, u64) {
    let mut applier = Applier::new(KvStore::new(KvConfig::default()), SessionConfig::default(), 4096);
    let mut outcomes = Vec::new();
    let mut seq = 0u64;
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(256) {
        let batch = Batch {
            commands: chunk
                .iter()
                .map(|&n| {
                    seq += 1;
                    let key = format!("{n:016x}");
                    Command {
                        session: 1 + n % sessions,
                        seq,
                        payload: KvCommand::Put { key: key.as_bytes(), value: &[n as u8; 128] }.encode(),
                    }
                })
                .collect(),
        };
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(&encode(&batch));
        let index = applier.applied_index() + 1;
        applier.apply(index, 1, EntryKind::Normal, &aligned, &mut outcomes).unwrap();
        outcomes.clear();
    }
    (applier, seq)
}

/// Puts to keys drawn uniformly from a map already holding 100,000 of them (as a benchmark
/// cluster's state machine does): lookups walk a tree far larger than the CPU caches, so what
/// each key comparison touches decides the cost.
fn bench_random_keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_kv_puts_random_keys");
    group.measurement_time(Duration::from_secs(3));
    let commands = 256u64;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_key = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        format!("{:016x}", state % KEYS)
    };
    let make_batch = |seq: &mut u64, next_key: &mut dyn FnMut() -> String| {
        let commands = (0..commands)
            .map(|_| {
                *seq += 1;
                let key = next_key();
                // Session 0: never deduplicated, so replayed batches are applied every time.
                Command {
                    session: 0,
                    seq: *seq,
                    payload: KvCommand::Put { key: key.as_bytes(), value: &[7u8; 128] }.encode(),
                }
            })
            .collect();
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(&encode(&Batch { commands }));
        aligned
    };
    let (mut applier, mut seq) = filled_applier(1);
    let mut outcomes = Vec::new();
    let batches: Vec<AlignedVec<16>> = (0..64).map(|_| make_batch(&mut seq, &mut next_key)).collect();
    group.throughput(Throughput::Elements(commands));
    group.bench_function("commands/256", |b| {
        let mut next = 0usize;
        b.iter(|| {
            outcomes.clear();
            let index = applier.applied_index() + 1;
            applier.apply(index, 1, EntryKind::Normal, &batches[next], &mut outcomes).unwrap();
            next = (next + 1) % batches.len();
        });
    });
    group.finish();
}

/// A snapshot of the state a benchmark cluster holds: 100,000 keys of 16 bytes with 128-byte
/// values, and 64 sessions: written whole (now done on the snapshot thread), and the view the
/// apply thread takes of it.
fn bench_snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_kv");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(20);
    let (mut applier, _) = filled_applier(64);
    let mut probe = Vec::new();
    applier.snapshot(&mut probe).unwrap();
    group.throughput(Throughput::Bytes(probe.len() as u64));
    group.bench_function("keys/100000", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            applier.snapshot(&mut out).unwrap();
            out
        });
    });
    // What the apply thread pays since snapshots are written from a view on another thread:
    // the sessions copied, the map's table shared. Each view is dropped before the next, as the
    // saver does, so the table is never copied.
    group.throughput(Throughput::Elements(1));
    group.bench_function("view/keys/100000", |b| {
        b.iter(|| applier.snapshot_view().unwrap());
    });
    group.finish();
}

criterion_group!(benches, bench_apply, bench_random_keys, bench_snapshot);
criterion_main!(benches);
