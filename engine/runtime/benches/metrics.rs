//! Criterion: the cost a stage pays per recorded figure, and per `maybe_publish` that is not due
//! (the call every wakeup makes). Both sit on the hot path of every stage.
//!
//! `cargo bench -p smr-runtime --bench metrics`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use smr_runtime::{MetricsConfig, MetricsHub, Stage};

fn record(c: &mut Criterion) {
    let started = Instant::now();
    let hub = MetricsHub::new(1, &MetricsConfig::default(), started);
    let mut recorder = hub.recorder(Stage::Core, &[], started);
    let mut group = c.benchmark_group("stage_recorder");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    // Durations spread over four decades, so the bucket index varies as it does for real.
    let durations: Vec<Duration> = (0..1024u64).map(|i| Duration::from_nanos(100 + i * i * 37)).collect();
    let mut next = 0usize;
    group.bench_function("record_service", |b| {
        b.iter(|| {
            recorder.record_service(black_box(durations[next & 1023]));
            next = next.wrapping_add(1);
        })
    });
    group.bench_function("record_batch", |b| b.iter(|| recorder.record_batch(black_box(17), black_box(4096))));
    group.bench_function("maybe_publish_not_due", |b| b.iter(|| recorder.maybe_publish(black_box(started))));
    group.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
