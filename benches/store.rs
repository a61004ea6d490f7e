//! Benchmarks of the store: exact top-k search, append, and reopen.
//!
//! Ids name their parameters: `exact/<dtype>/<keys> keys/dim <d>/batch <b>/k <k>` searches `b`
//! queries (one head, one kv head) against one document-layer of `keys` tokens; throughput is in
//! scored (query, key) pairs. `append/...` reports bytes of keys and values written per second,
//! committed durably (msync + fsync) by every append. `reopen/...` opens the store and maps a
//! document-layer.
//!
//! `cargo bench --bench store` (add `-- --quick` for a fast pass, or a filter such as `exact/bf16`).

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fot_mem::{Backend, Dtype, Elements, MemoryStore, Queries, StoreConfig};
use half::bf16;

const KEYS: usize = 65_536;
const DIM: usize = 128;
const K: usize = 32;
const BATCHES: [usize; 3] = [1, 32, 256];
const DTYPES: [(Dtype, &str); 3] = [
    (Dtype::Float32, "f32"),
    (Dtype::Float16, "f16"),
    (Dtype::Bfloat16, "bf16"),
];

/// A deterministic generator of floats in [-0.5, 0.5).
struct Lcg(u64);

impl Lcg {
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }
}

/// A store at `root` with one document-layer of `KEYS` tokens (one kv head, dim `DIM`).
fn search_store(root: &Path, dtype: Dtype, seed: u64) -> MemoryStore {
    let config = StoreConfig::new(vec![0], 1, DIM as u32, dtype);
    let mut store = MemoryStore::create(root, config).unwrap();
    let mut rng = Lcg(seed);
    let batch = 8192;
    for _ in 0..KEYS / batch {
        let keys = rng.vec(batch * DIM);
        store
            .append("doc", 0, Elements::F32(&keys), Elements::F32(&keys))
            .unwrap();
    }
    assert_eq!(store.length("doc", 0).unwrap(), KEYS as u64);
    store
}

fn exact(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("exact");
    for (i, &(dtype, name)) in DTYPES.iter().enumerate() {
        let root = tmp.path().join(name);
        let mut store = search_store(&root, dtype, i as u64 + 1);
        for batch in BATCHES {
            let queries = Lcg(99).vec(batch * DIM);
            group.throughput(Throughput::Elements((batch * KEYS) as u64));
            let id = BenchmarkId::new(name, format!("{KEYS} keys/dim {DIM}/batch {batch}/k {K}"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    let q = Queries {
                        data: &queries,
                        q: batch,
                        heads: 1,
                    };
                    black_box(store.search(&["doc"], 0, q, K, Backend::Exact).unwrap())
                })
            });
        }
    }
    group.finish();
}

fn append(c: &mut Criterion) {
    const KV_HEADS: usize = 8;
    const TOKENS: usize = 2048;
    let tmp = tempfile::tempdir().unwrap();
    let config = StoreConfig::new(vec![0], KV_HEADS as u32, DIM as u32, Dtype::Bfloat16);
    let bytes = TOKENS as u64 * config.token_bytes();
    let mut store = MemoryStore::create(&tmp.path().join("append"), config).unwrap();
    let data: Vec<bf16> = Lcg(7)
        .vec(TOKENS * KV_HEADS * DIM)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Bytes(bytes));
    let id = format!("bf16/dim {DIM}/kv_heads {KV_HEADS}/batch {TOKENS} tokens");
    let mut doc = 0u64;
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let name = format!("doc{doc}");
                let start = Instant::now();
                let len = store
                    .append(&name, 0, Elements::Bf16(&data), Elements::Bf16(&data))
                    .unwrap();
                timed += start.elapsed();
                // Keep the disk footprint bounded (32 appends = 256 MiB), outside the timing.
                if len >= 32 * TOKENS as u64 {
                    store.delete_document(&name).unwrap();
                    doc += 1;
                }
            }
            timed
        })
    });
    group.finish();
}

fn reopen(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reopen");
    let chunks = KEYS.div_ceil(fot_mem::store::DEFAULT_CHUNK_TOKENS as usize);
    drop(search_store(&root, Dtype::Bfloat16, 3));
    let mut group = c.benchmark_group("reopen");
    for (mode, readonly) in [("read-only", true), ("read-write", false)] {
        let id = format!("bf16/{KEYS} keys/dim {DIM}/{chunks} chunks/{mode}");
        group.bench_function(id, |b| {
            b.iter(|| {
                let mut store = MemoryStore::open(&root, readonly).unwrap();
                black_box(store.length("doc", 0).unwrap())
            })
        });
    }
    // Open, map, and answer one query: the latency of a cold process's first search.
    let query = Lcg(5).vec(DIM);
    let id = format!("bf16/{KEYS} keys/dim {DIM}/{chunks} chunks/read-only + first search k {K}");
    group.bench_function(id, |b| {
        b.iter(|| {
            let mut store = MemoryStore::open(&root, true).unwrap();
            let q = Queries {
                data: &query,
                q: 1,
                heads: 1,
            };
            black_box(store.search(&["doc"], 0, q, K, Backend::Exact).unwrap())
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = exact, append, reopen
}
criterion_main!(benches);
