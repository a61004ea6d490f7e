//! Store operations other than search: append throughput and reopen time. (Searches are in
//! `benches/exact.rs`.)
//!
//! - `append/<dtype>/dim <d>/kv_heads <h>/<t> tokens[/chunk 4096]`: appends of `t` tokens of
//!   clustered keys and values, given in the storage dtype (no conversion), each committed durably
//!   (fdatasync of the chunks, then of the count) before it returns; throughput is `Bytes` of keys + values. Covered: every
//!   dtype at dim 128 with 8 kv heads (a 7B-class layer), bf16 at dim 64 with 3 kv heads
//!   (SmolLM2-135M), and bf16 dim 128 in 4096-token chunks (a new chunk file every 2 appends, the
//!   chunk overhead). The stores use 65,536-token chunks otherwise; every 32 appends (65,536
//!   tokens) the document is deleted, outside the timing, to bound the disk footprint, so creating
//!   a document and its first chunk is part of one append in 32.
//! - `reopen/bf16/<keys> keys/dim 128/chunk <c>/<mode>`: `MemoryStore::open` plus mapping the
//!   document-layer (`length`), read-only or read-write (taking the writer lock, sweeping orphans),
//!   and read-only + the first search (batch 1, k 32): what a fresh process pays before its first
//!   answer. The files are in the page cache (a warm reopen); dropping the store is not timed. On
//!   1M keys in 65,536-token chunks (16 chunks) and in 4096-token chunks (256 chunks).
//!
//! `cargo bench --bench store` (under a minute); `FOT_MEM_BENCH_QUICK=1` runs one append and two
//! reopens of a 64k-key store with short timings.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{
    count_label, dtype_name, Data, Mixture, CHUNK_TOKENS, DOC, DTYPES, KEY_SEED, QUERY_SEED,
    SMALL_CHUNK_TOKENS,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fot_mem::{Backend, Dtype, MemoryStore, Queries, StoreConfig};

const TOKENS: usize = 2048;

fn append_case(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    dtype: Dtype,
    dim: usize,
    kv_heads: usize,
    chunk: u32,
) {
    let mut config = StoreConfig::new(vec![0], kv_heads as u32, dim as u32, dtype);
    config.chunk_tokens = chunk;
    let bytes = TOKENS as u64 * config.token_bytes();
    let mut id = format!(
        "{}/dim {dim}/kv_heads {kv_heads}/{TOKENS} tokens",
        dtype_name(dtype)
    );
    if chunk != CHUNK_TOKENS {
        id += &format!("/chunk {chunk}");
    }
    group.throughput(Throughput::Bytes(bytes));
    // Built on the first run only, so a filtered-out case creates nothing.
    let mut state: Option<(tempfile::TempDir, MemoryStore, Data, Data)> = None;
    let mut doc = 0u64;
    group.bench_function(id, |b| {
        let (_, store, keys, values) = state.get_or_insert_with(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = MemoryStore::create(&dir.path().join("append"), config.clone()).unwrap();
            let mixture = Mixture::new(dim);
            let rows = TOKENS * kv_heads;
            let keys = Data::new(dtype, mixture.rows(KEY_SEED, 0, rows));
            let values = Data::new(dtype, mixture.rows(QUERY_SEED, 0, rows));
            (dir, store, keys, values)
        });
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let name = format!("doc{doc}");
                let start = Instant::now();
                let len = store
                    .append(&name, 0, keys.elements(), values.elements())
                    .unwrap();
                timed += start.elapsed();
                if len >= 32 * TOKENS as u64 {
                    store.delete_document(&name).unwrap();
                    doc += 1;
                }
            }
            timed
        })
    });
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    if common::quick() {
        append_case(&mut group, Dtype::Bfloat16, 128, 8, CHUNK_TOKENS);
    } else {
        for (dtype, _) in DTYPES {
            append_case(&mut group, dtype, 128, 8, CHUNK_TOKENS);
        }
        append_case(&mut group, Dtype::Bfloat16, 64, 3, CHUNK_TOKENS);
        append_case(&mut group, Dtype::Bfloat16, 128, 8, SMALL_CHUNK_TOKENS);
    }
    group.finish();
}

/// Times `iters` runs of `open`, dropping each store (closing it, releasing a writer lock) before
/// the next run, outside the timing.
fn timed_opens(iters: u64, mut open: impl FnMut() -> MemoryStore) -> Duration {
    let mut timed = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let store = open();
        timed += start.elapsed();
        drop(store);
    }
    timed
}

fn reopen(c: &mut Criterion) {
    const DIM: usize = 128;
    const K: usize = 32;
    let quick = common::quick();
    let (keys, chunks): (usize, &[u32]) = if quick {
        (65_536, &[CHUNK_TOKENS])
    } else {
        (1 << 20, &[CHUNK_TOKENS, SMALL_CHUNK_TOKENS])
    };
    let query = Mixture::new(DIM).rows(QUERY_SEED, 0, 1);
    let mut group = c.benchmark_group("reopen");
    for &chunk in chunks {
        let prefix = format!("bf16/{} keys/dim {DIM}/chunk {chunk}", count_label(keys));
        let mut store_dir: Option<tempfile::TempDir> = None;
        let mut root = || {
            let dir = store_dir.get_or_insert_with(|| {
                let dir = tempfile::tempdir().unwrap();
                let root = dir.path().join("reopen");
                common::build_search_store(&root, Dtype::Bfloat16, keys, DIM, chunk);
                dir
            });
            dir.path().join("reopen")
        };
        let mut modes = vec![("read-only", true)];
        if !quick {
            modes.push(("read-write", false));
        }
        for (mode, readonly) in modes {
            group.bench_function(format!("{prefix}/{mode}"), |b| {
                let root = root();
                b.iter_custom(|iters| {
                    timed_opens(iters, || {
                        let mut store = MemoryStore::open(&root, readonly).unwrap();
                        black_box(store.length(DOC, 0).unwrap());
                        store
                    })
                })
            });
        }
        group.bench_function(format!("{prefix}/read-only + search batch 1/k {K}"), |b| {
            let root = root();
            b.iter_custom(|iters| {
                timed_opens(iters, || {
                    let mut store = MemoryStore::open(&root, true).unwrap();
                    let q = Queries {
                        data: &query,
                        q: 1,
                        heads: 1,
                    };
                    black_box(store.search(&[DOC], 0, q, K, Backend::Exact).unwrap());
                    store
                })
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = append, reopen
}
criterion_main!(benches);
