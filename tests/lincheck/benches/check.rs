//! How long a check of a simulator-sized history takes.
//!
//! Run: `cargo bench -p smr-lincheck --bench check`
//!
//! The main case is 10,000 operations over 100 keys from 8 concurrent clients, 1 % of them with
//! unknown outcome: the size of a long simulator seed. It must stay far below a second so the
//! simulator can check thousands of seeds per CI run. Measured on one core of a shared 2-core
//! machine: about 3 ms (3 M operations/s); 10,000 operations on a single key: about 0.2 s.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use smr_lincheck::{CheckOptions, check};

#[path = "../tests/support/mod.rs"]
mod support;

use support::{Shape, generate};

fn bench_check(c: &mut Criterion) {
    let mut group = c.benchmark_group("check");
    group.sample_size(20);
    let cases = [
        // (operations, keys, clients, unknown per mille)
        (10_000, 100, 8, 10),
        (10_000, 100, 8, 100),
        (10_000, 10, 32, 10),
        (10_000, 1, 8, 10),
    ];
    for (operations, keys, clients, unknown_per_mille) in cases {
        let shape = Shape { operations, keys, clients, unknown_per_mille };
        let generated = generate(42, shape, None);
        let options = CheckOptions::default();
        assert!(
            check(&generated.history, &options).is_ok(),
            "the benchmark history must be linearizable, or it measures the wrong path"
        );
        group.throughput(Throughput::Elements(operations as u64));
        let name = format!("ops{operations}_keys{keys}_clients{clients}_unknown{}permille", unknown_per_mille);
        group.bench_with_input(BenchmarkId::from_parameter(name), &generated, |b, g| {
            b.iter(|| check(black_box(&g.history), &options));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_check);
criterion_main!(benches);
