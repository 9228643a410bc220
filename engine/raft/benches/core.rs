//! How fast the core itself is: a 3-replica cluster in memory, no I/O, every message delivered
//! at once, every ready persisted at once. Measures entries (and commands) committed per second
//! on one core, at 1, 64 and 1024 commands per entry.
//!
//! `cargo bench -p smr-raft --bench core`

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use smr_raft::{Config, Message, Replica, Role};

/// 16-byte key + 128-byte value, the workload of the benchmark harness.
const COMMAND_BYTES: usize = 144;
/// Entries proposed per measured iteration.
const ENTRIES_PER_ROUND: usize = 256;

struct Cluster {
    nodes: Vec<Replica>,
    queue: VecDeque<Message>,
}

impl Cluster {
    fn new() -> Cluster {
        let voters = [1, 2, 3];
        let nodes = voters
            .iter()
            .map(|&id| {
                let mut c = Config::new(id, 1);
                c.inflight_appends_max = 1024;
                c.append_bytes_max = 4 << 20;
                c.uncommitted_bytes_max = 1 << 30;
                Replica::bootstrap(c, &voters).unwrap()
            })
            .collect();
        let mut cluster = Cluster { nodes, queue: VecDeque::new() };
        for _ in 0..30 {
            cluster.nodes[0].tick();
            cluster.pump();
            if cluster.nodes[0].role() == Role::Leader {
                break;
            }
        }
        assert_eq!(cluster.nodes[0].role(), Role::Leader);
        cluster
    }

    fn drain(&mut self, i: usize) {
        while self.nodes[i].has_ready() {
            let rd = self.nodes[i].ready();
            self.queue.extend(rd.messages);
            self.nodes[i].on_persisted(rd.number);
            self.queue.extend(rd.persisted_messages);
            if rd.commit_index > self.nodes[i].applied_index() {
                self.nodes[i].on_applied(rd.commit_index);
            }
        }
    }

    fn pump(&mut self) {
        for i in 0..self.nodes.len() {
            self.drain(i);
        }
        while let Some(m) = self.queue.pop_front() {
            let to = (m.to - 1) as usize;
            self.nodes[to].step(m).unwrap();
            self.drain(to);
        }
    }
}

fn bench_core(c: &mut Criterion) {
    let mut group = c.benchmark_group("core_3_replicas");
    group.measurement_time(Duration::from_secs(3));
    for commands in [1usize, 64, 1024] {
        let payload = Bytes::from((0..commands * COMMAND_BYTES).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
        group.throughput(Throughput::Elements(ENTRIES_PER_ROUND as u64));
        group.bench_with_input(
            BenchmarkId::new("entries", format!("{commands}_commands_per_entry")),
            &payload,
            |b, payload| {
                let mut cluster = Cluster::new();
                b.iter(|| {
                    let target = cluster.nodes[0].last_index() + ENTRIES_PER_ROUND as u64;
                    for _ in 0..ENTRIES_PER_ROUND {
                        cluster.nodes[0].propose(payload.clone()).unwrap();
                    }
                    cluster.pump();
                    assert_eq!(cluster.nodes[0].commit_index(), target);
                    // Keep the in-memory log bounded as a real node would after snapshots.
                    let leader = &mut cluster.nodes[0];
                    let _ = leader.on_snapshot(target, Bytes::new());
                    black_box(leader.compact(target.saturating_sub(16)).ok());
                    for follower in &mut cluster.nodes[1..] {
                        let _ = follower.on_snapshot(target, Bytes::new());
                        let _ = follower.compact(target.saturating_sub(16));
                    }
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_core);
criterion_main!(benches);
