//! Integration tests of the persistent store through its public API: chunk boundaries, reopen,
//! format validation, the writer lock, deletion, and exact search against a naive scan.

mod append;
mod format;
mod handles;
mod search;

use std::path::{Path, PathBuf};

use fot_mem::{Backend, Dtype, Elements, Error, MemoryStore, Queries, StoreConfig};
use half::{bf16, f16};

const DTYPES: [Dtype; 3] = [Dtype::Float32, Dtype::Float16, Dtype::Bfloat16];
const LAYERS: [u32; 2] = [1, 3];
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 8;
/// Different from `HEAD_DIM` so a mix-up of keys and values rows cannot go unnoticed.
const VALUE_DIM: usize = 5;
const CHUNK: u32 = 7;

fn config(dtype: Dtype, chunk_tokens: u32) -> StoreConfig {
    StoreConfig {
        layers: LAYERS.to_vec(),
        kv_heads: KV_HEADS as u32,
        head_dim: HEAD_DIM as u32,
        value_dim: VALUE_DIM as u32,
        dtype,
        chunk_tokens,
        hnsw: None,
    }
}

/// A deterministic generator of floats in [-scale/2, scale/2).
struct Lcg(u64);

impl Lcg {
    fn next_f32(&mut self, scale: f32) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5) * scale
    }

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next_f32(scale)).collect()
    }
}

/// `v` as the store keeps it in `dtype`, widened back to f32 (the half crate's rounding).
fn stored(dtype: Dtype, v: f32) -> f32 {
    match dtype {
        Dtype::Float32 => v,
        Dtype::Float16 => f16::from_f32(v).to_f32(),
        Dtype::Bfloat16 => bf16::from_f32(v).to_f32(),
    }
}

fn stored_vec(dtype: Dtype, v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| stored(dtype, x)).collect()
}

/// Random keys `[tokens, KV_HEADS, HEAD_DIM]` and values `[tokens, KV_HEADS, VALUE_DIM]`.
fn tokens(rng: &mut Lcg, n: usize) -> (Vec<f32>, Vec<f32>) {
    (
        rng.vec(n * KV_HEADS * HEAD_DIM, 4.0),
        rng.vec(n * KV_HEADS * VALUE_DIM, 4.0),
    )
}

fn append_f32(store: &mut MemoryStore, doc: &str, layer: u32, keys: &[f32], values: &[f32]) -> u64 {
    store
        .append(doc, layer, Elements::F32(keys), Elements::F32(values))
        .unwrap_or_else(|e| panic!("append to {doc:?} layer {layer}: {e}"))
}

/// Queries `[batch, q, heads, HEAD_DIM]` for `search`.
fn qs(data: &[f32], q: usize, heads: usize) -> Queries<'_> {
    Queries { data, q, heads }
}

fn store_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    (tmp, root)
}

/// Asserts that `store` holds exactly `keys`/`values` (already rounded) in `doc`/`layer`, reading
/// it whole and in ranges that start and end inside chunks.
fn assert_holds(store: &mut MemoryStore, doc: &str, layer: u32, keys: &[f32], values: &[f32]) {
    let n = (keys.len() / (KV_HEADS * HEAD_DIM)) as u64;
    assert_eq!(
        store.length(doc, layer).unwrap(),
        n,
        "length of {doc:?} layer {layer}"
    );
    let (k, v) = store.read(doc, layer, 0, n).unwrap();
    assert_eq!(k, keys, "keys of {doc:?} layer {layer}");
    assert_eq!(v, values, "values of {doc:?} layer {layer}");
    let (kt, vt) = (KV_HEADS * HEAD_DIM, KV_HEADS * VALUE_DIM);
    for (start, stop) in [
        (0, 1),
        (3, 11),
        (5, 16),
        (6, 8),
        (n.saturating_sub(9), n),
        (n, n),
    ] {
        if stop > n || start > stop {
            continue;
        }
        let (k, v) = store.read(doc, layer, start, stop).unwrap();
        let (s, e) = (start as usize, stop as usize);
        assert_eq!(k, keys[s * kt..e * kt], "keys {start}..{stop}");
        assert_eq!(v, values[s * vt..e * vt], "values {start}..{stop}");
    }
}

/// Documents "a" and "b", 17 f32 tokens each in layers 1 and 3.
fn small_store(root: &Path) {
    let mut store = MemoryStore::create(root, config(Dtype::Float32, CHUNK)).unwrap();
    let mut rng = Lcg(3);
    for doc in ["a", "b"] {
        let (k, v) = tokens(&mut rng, 17);
        append_f32(&mut store, doc, 1, &k, &v);
        append_f32(&mut store, doc, 3, &k, &v);
    }
}

fn open_err(root: &Path, readonly: bool) -> Error {
    match MemoryStore::open(root, readonly) {
        Ok(_) => panic!(
            "opening {} (readonly {readonly}) should fail",
            root.display()
        ),
        Err(e) => e,
    }
}

/// The directory of `doc`, read from the manifest's JSON body.
fn doc_dir(root: &Path, doc: &str) -> PathBuf {
    let text = std::fs::read_to_string(root.join("manifest.json")).unwrap();
    let body = text.split_once('\n').unwrap().1;
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    let dir = json["documents"][doc]["dir"].as_str().unwrap();
    root.join("docs").join(dir)
}
