//! Criterion benches of the hnsw side: graph build (keys/s) and graph search (queries/s) over the
//! `clustered` keys of docs/benchmarks.md, 65,536 keys x 128, m = 16, ef_construction = 100.
//! Searches walk the graph on its int8 codes (format 2, `k32_ef/..`) or, as for a format-1 file,
//! on the stored keys (`k32_ef_stored_keys/..`). `FOT_MEM_BENCH_QUICK=1` runs a smaller set.

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Throughput};
use fot_mem::ann::{build, search, BuildParams, BuildSet, Linking, Scratch, SpanRows};
use fot_mem::Elements;
use rayon::prelude::*;

fn params(linking: Linking) -> BuildParams {
    BuildParams {
        m: 16,
        ef_construction: 100,
        linking,
        seed: 7,
    }
}

fn benches(c: &mut criterion::Criterion) {
    let (n, dim) = if common::quick() {
        (8192, 64)
    } else {
        (65_536, 128)
    };
    let mix = common::Mixture::new(dim);
    let keys = mix.rows(1, 0, n);
    let queries = mix.rows(2, 0, 4096);
    let nq = 1024;
    let mut g = c.benchmark_group("hnsw_build");
    g.throughput(Throughput::Elements(n as u64));
    for linking in [Linking::Hybrid, Linking::InnerProduct] {
        g.bench_function(BenchmarkId::new(linking.name(), n), |b| {
            b.iter(|| {
                let set = BuildSet::new([Elements::F32(&keys)], dim, linking);
                build(&set, &params(linking))
            })
        });
    }
    g.finish();
    let set = BuildSet::new([Elements::F32(&keys)], dim, Linking::Hybrid);
    let graph = build(&set, &params(Linking::Hybrid));
    let rows = SpanRows::new(&[Elements::F32(&keys)], dim, n);
    let coded = graph.as_ref();
    let mut plain = graph.as_ref();
    plain.codes = None;
    let mut g = c.benchmark_group("hnsw_search");
    g.throughput(Throughput::Elements(nq as u64));
    let cases = [
        ("k32_ef", &coded, 64usize),
        ("k32_ef", &coded, 128),
        ("k32_ef", &coded, 256),
        ("k32_ef_stored_keys", &plain, 128),
    ];
    for (name, gr, ef) in cases {
        g.bench_function(BenchmarkId::new(name, ef), |b| {
            b.iter(|| {
                (0..nq)
                    .into_par_iter()
                    .map_init(Scratch::default, |scr, i| {
                        search(gr, &rows, &queries[i * dim..(i + 1) * dim], 32, ef, scr).len()
                    })
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = ann;
    config = common::criterion();
    targets = benches
}
criterion_main!(ann);
