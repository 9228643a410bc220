//! Criterion: append-to-durable of one batch (submit, then wait until durable) through each I/O
//! path, at a few batch shapes. The sweep over sizes and concurrent appenders is the
//! `log_bench` binary; this is the regression guard for the single-appender path.
//!
//! `cargo bench -p smr-log --bench append`

use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use smr_log::{IoMode, Log, LogConfig};
use smr_raft::{Entry, EntryKind};

fn random_bytes(len: usize, seed: u64) -> Bytes {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn append_to_durable(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_to_durable");
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for mode in [IoMode::Uring, IoMode::Fallback] {
        for (count, size) in [(1usize, 4096usize), (64, 4096), (16, 65536)] {
            // Under the current directory: the disk measured is the project's, not /tmp's.
            let dir = tempfile::tempdir_in(".").expect("tempdir");
            let mut config = LogConfig::new(1, 1, 0);
            config.io_mode = mode;
            let Ok((mut log, recovered)) = Log::open(dir.path(), config) else {
                eprintln!("skipping {mode:?}: not available here");
                continue;
            };
            let payload = random_bytes(size, count as u64);
            let mut index = recovered.last_index;
            let mut token = 0;
            group.throughput(Throughput::Bytes((count * size) as u64));
            let id = BenchmarkId::new(recovered.io, format!("{count}x{size}B"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    let entries: Vec<Entry> = (0..count)
                        .map(|_| {
                            index += 1;
                            Entry { index, term: 1, kind: EntryKind::Normal, data: payload.clone() }
                        })
                        .collect();
                    token += 1;
                    log.submit(token, &entries, None).expect("submit");
                    log.sync_all().expect("durable")
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, append_to_durable);
criterion_main!(benches);
