//! Integration tests of the persistent store through its public API: chunk boundaries, reopen,
//! format validation, the writer lock, deletion, and exact search against a naive scan.

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

#[test]
fn appends_straddling_chunks_read_back_exactly() {
    // Sizes chosen against chunk_tokens 7: inside one chunk, exactly to a boundary, across one
    // boundary, across several, and single tokens landing on and after a boundary.
    let sizes = [1usize, 6, 7, 13, 2, 20, 1, 15, 14, 3];
    for dtype in DTYPES {
        let (_tmp, root) = store_dir();
        let mut store = MemoryStore::create(&root, config(dtype, CHUNK)).unwrap();
        let mut rng = Lcg(dtype as u64 + 11);
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let (mut keys3, mut values3) = (Vec::new(), Vec::new());
        let mut total = 0u64;
        for (i, &n) in sizes.iter().enumerate() {
            let (k, v) = tokens(&mut rng, n);
            total += n as u64;
            // Alternate the input element type: the store converts whatever it is given.
            let len = match i % 3 {
                0 => append_f32(&mut store, "doc", 1, &k, &v),
                1 => {
                    let k16: Vec<f16> = k.iter().map(|&x| f16::from_f32(x)).collect();
                    let v16: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
                    let len = store
                        .append("doc", 1, Elements::F16(&k16), Elements::F16(&v16))
                        .unwrap();
                    keys.extend(k16.iter().map(|x| stored(dtype, x.to_f32())));
                    values.extend(v16.iter().map(|x| stored(dtype, x.to_f32())));
                    len
                }
                _ => {
                    let kb: Vec<bf16> = k.iter().map(|&x| bf16::from_f32(x)).collect();
                    let vb: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
                    let len = store
                        .append("doc", 1, Elements::Bf16(&kb), Elements::Bf16(&vb))
                        .unwrap();
                    keys.extend(kb.iter().map(|x| stored(dtype, x.to_f32())));
                    values.extend(vb.iter().map(|x| stored(dtype, x.to_f32())));
                    len
                }
            };
            if i % 3 == 0 {
                keys.extend(stored_vec(dtype, &k));
                values.extend(stored_vec(dtype, &v));
            }
            assert_eq!(len, total, "{dtype:?}: length after append {i}");
            // The other layer, with a different rhythm (always f32 input, half the tokens).
            let (k, v) = tokens(&mut rng, n.div_ceil(2));
            append_f32(&mut store, "doc", 3, &k, &v);
            keys3.extend(stored_vec(dtype, &k));
            values3.extend(stored_vec(dtype, &v));
            assert_holds(&mut store, "doc", 1, &keys, &values);
        }
        assert_holds(&mut store, "doc", 1, &keys, &values);
        assert_holds(&mut store, "doc", 3, &keys3, &values3);

        // An empty append changes nothing; reading past the end is an index error.
        assert_eq!(
            store
                .append("doc", 1, Elements::F32(&[]), Elements::F32(&[]))
                .unwrap(),
            total
        );
        assert!(matches!(
            store.read("doc", 1, 0, total + 1),
            Err(Error::Index(_))
        ));
        assert!(matches!(store.read("doc", 1, 5, 4), Err(Error::Index(_))));
        // A document that was never written reads as empty.
        assert_eq!(store.length("nobody", 1).unwrap(), 0);
        assert_eq!(store.read("nobody", 1, 0, 0).unwrap(), (vec![], vec![]));
    }
}

#[test]
fn rejected_appends_commit_nothing() {
    let (_tmp, root) = store_dir();
    let mut store = MemoryStore::create(&root, config(Dtype::Float16, CHUNK)).unwrap();
    let mut rng = Lcg(5);
    let (k, v) = tokens(&mut rng, 9);
    append_f32(&mut store, "doc", 1, &k, &v);
    // A value that overflows f16 in the middle of a batch that crosses a chunk boundary.
    let (mut k2, v2) = tokens(&mut rng, 10);
    k2[6 * KV_HEADS * HEAD_DIM + 3] = 1e6;
    let err = store
        .append("doc", 1, Elements::F32(&k2), Elements::F32(&v2))
        .unwrap_err();
    assert!(matches!(err, Error::Value(_)), "{err}");
    let (k3, mut v3) = tokens(&mut rng, 3);
    v3[1] = f32::NAN;
    let err = store
        .append("doc", 1, Elements::F32(&k3), Elements::F32(&v3))
        .unwrap_err();
    assert!(matches!(err, Error::Value(_)), "{err}");
    let err = store
        .append("doc", 1, Elements::F32(&k3[1..]), Elements::F32(&v3))
        .unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err}");
    // A rejected first append does not create the document.
    let err = store
        .append("new", 1, Elements::F32(&k2), Elements::F32(&v2))
        .unwrap_err();
    assert!(matches!(err, Error::Value(_)), "{err}");
    assert_eq!(store.documents().unwrap(), vec!["doc".to_string()]);
    assert_holds(
        &mut store,
        "doc",
        1,
        &stored_vec(Dtype::Float16, &k),
        &stored_vec(Dtype::Float16, &v),
    );
    // The next good append lands right after the committed tokens, overwriting the debris.
    let (k4, v4) = tokens(&mut rng, 8);
    append_f32(&mut store, "doc", 1, &k4, &v4);
    drop(store);
    let mut store = MemoryStore::open(&root, true).unwrap();
    let keys: Vec<f32> = k.iter().chain(&k4).copied().collect();
    let values: Vec<f32> = v.iter().chain(&v4).copied().collect();
    assert_holds(
        &mut store,
        "doc",
        1,
        &stored_vec(Dtype::Float16, &keys),
        &stored_vec(Dtype::Float16, &values),
    );
}

#[test]
fn reopen_preserves_lengths_and_values() {
    for dtype in DTYPES {
        let (_tmp, root) = store_dir();
        let mut rng = Lcg(100 + dtype as u64);
        let (ka, va) = tokens(&mut rng, 23);
        let (kb, vb) = tokens(&mut rng, 7);
        {
            let mut store = MemoryStore::create(&root, config(dtype, CHUNK)).unwrap();
            append_f32(
                &mut store,
                "a",
                1,
                &ka[..10 * KV_HEADS * HEAD_DIM],
                &va[..10 * KV_HEADS * VALUE_DIM],
            );
            append_f32(
                &mut store,
                "a",
                1,
                &ka[10 * KV_HEADS * HEAD_DIM..],
                &va[10 * KV_HEADS * VALUE_DIM..],
            );
            append_f32(&mut store, "b", 3, &kb, &vb);
        }
        // Read-write reopen: everything is there, and appending continues where it stopped.
        let (kc, vc) = tokens(&mut rng, 12);
        {
            let mut store = MemoryStore::open(&root, false).unwrap();
            assert!(!store.is_readonly());
            assert_eq!(store.config(), &config(dtype, CHUNK));
            assert_eq!(
                store.documents().unwrap(),
                vec!["a".to_string(), "b".to_string()]
            );
            assert_holds(
                &mut store,
                "a",
                1,
                &stored_vec(dtype, &ka),
                &stored_vec(dtype, &va),
            );
            assert_holds(
                &mut store,
                "b",
                3,
                &stored_vec(dtype, &kb),
                &stored_vec(dtype, &vb),
            );
            assert_eq!(store.length("a", 3).unwrap(), 0);
            assert_eq!(store.length("b", 1).unwrap(), 0);
            assert_eq!(append_f32(&mut store, "a", 1, &kc, &vc), 35);
            store.flush().unwrap();
        }
        // Read-only reopen sees every committed token.
        let mut store = MemoryStore::open(&root, true).unwrap();
        assert!(store.is_readonly());
        let keys: Vec<f32> = ka.iter().chain(&kc).copied().collect();
        let values: Vec<f32> = va.iter().chain(&vc).copied().collect();
        assert_holds(
            &mut store,
            "a",
            1,
            &stored_vec(dtype, &keys),
            &stored_vec(dtype, &values),
        );
        assert_holds(
            &mut store,
            "b",
            3,
            &stored_vec(dtype, &kb),
            &stored_vec(dtype, &vb),
        );
        let bytes = (35 + 7) * config(dtype, CHUNK).token_bytes();
        assert_eq!(store.nbytes(None).unwrap(), bytes);
    }
}

#[test]
fn reader_sees_tokens_the_writer_commits_later() {
    let dtype = Dtype::Bfloat16;
    let (_tmp, root) = store_dir();
    let mut rng = Lcg(9);
    let mut writer = MemoryStore::create(&root, config(dtype, CHUNK)).unwrap();
    let (k, v) = tokens(&mut rng, 5);
    append_f32(&mut writer, "a", 1, &k, &v);
    let (mut keys, mut values) = (stored_vec(dtype, &k), stored_vec(dtype, &v));

    let mut reader = MemoryStore::open(&root, true).unwrap();
    assert_holds(&mut reader, "a", 1, &keys, &values);
    let query = vec![1.0f32; KV_HEADS * HEAD_DIM];
    let found = reader
        .search(&["a"], 1, qs(&query, 1, KV_HEADS), 64, Backend::Exact)
        .unwrap();
    assert_eq!(found.ids.iter().filter(|&&i| i >= 0).count(), KV_HEADS * 5);

    // The writer grows the document across several chunks and starts a new one.
    for n in [2usize, 9, 16] {
        let (k, v) = tokens(&mut rng, n);
        append_f32(&mut writer, "a", 1, &k, &v);
        keys.extend(stored_vec(dtype, &k));
        values.extend(stored_vec(dtype, &v));
        // The reader's very next call sees the new tokens.
        assert_holds(&mut reader, "a", 1, &keys, &values);
        let found = reader
            .search(&["a"], 1, qs(&query, 1, KV_HEADS), 64, Backend::Exact)
            .unwrap();
        let expect = KV_HEADS * (keys.len() / (KV_HEADS * HEAD_DIM));
        assert_eq!(found.ids.iter().filter(|&&i| i >= 0).count(), expect);
    }
    assert_eq!(reader.length("b", 3).unwrap(), 0);
    let (kb, vb) = tokens(&mut rng, 8);
    append_f32(&mut writer, "b", 3, &kb, &vb);
    assert_eq!(reader.length("b", 3).unwrap(), 8);
    assert_eq!(
        reader.documents().unwrap(),
        vec!["a".to_string(), "b".to_string()]
    );
    assert_holds(
        &mut reader,
        "b",
        3,
        &stored_vec(dtype, &kb),
        &stored_vec(dtype, &vb),
    );
}

// ---- format validation -------------------------------------------------------------------------

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

#[test]
fn manifest_with_a_flipped_byte_is_corrupt() {
    let (_tmp, root) = store_dir();
    small_store(&root);
    let path = root.join("manifest.json");
    let original = std::fs::read(&path).unwrap();
    let header_end = original.iter().position(|&b| b == b'\n').unwrap();
    // Flip bytes throughout the JSON body (the checksum covers all of it).
    for at in [
        header_end + 1,
        header_end + 20,
        original.len() / 2,
        original.len() - 2,
    ] {
        let mut bytes = original.clone();
        bytes[at] ^= 0x04;
        std::fs::write(&path, &bytes).unwrap();
        for readonly in [true, false] {
            let err = open_err(&root, readonly);
            assert!(matches!(err, Error::Corrupt(_)), "byte {at}: {err}");
        }
    }
    // Damage to the checksum itself.
    let mut bytes = original.clone();
    bytes[header_end - 1] = if bytes[header_end - 1] == b'0' {
        b'1'
    } else {
        b'0'
    };
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(open_err(&root, true), Error::Corrupt(_)));
    // A truncated manifest.
    std::fs::write(&path, &original[..original.len() - 10]).unwrap();
    assert!(matches!(open_err(&root, true), Error::Corrupt(_)));
    // Restored, the store opens again.
    std::fs::write(&path, &original).unwrap();
    let mut store = MemoryStore::open(&root, false).unwrap();
    assert_eq!(store.length("a", 1).unwrap(), 17);
}

#[test]
fn manifest_of_another_version_is_refused() {
    let (_tmp, root) = store_dir();
    small_store(&root);
    let path = root.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let version = format!("version={}", fot_mem::store::FORMAT_VERSION);
    assert!(text.lines().next().unwrap().contains(&version), "{text}");
    let newer = fot_mem::store::FORMAT_VERSION + 1;
    std::fs::write(
        &path,
        text.replacen(&version, &format!("version={newer}"), 1),
    )
    .unwrap();
    for readonly in [true, false] {
        match open_err(&root, readonly) {
            Error::Version {
                found, supported, ..
            } => {
                assert_eq!(found, newer);
                assert_eq!(supported, fot_mem::store::FORMAT_VERSION);
            }
            other => panic!("expected Error::Version, got {other}"),
        }
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

#[test]
fn truncated_chunk_fails_only_its_layer() {
    for readonly in [true, false] {
        let (_tmp, root) = store_dir();
        small_store(&root);
        let chunk = doc_dir(&root, "a").join("layer-1").join("000001.keys");
        let len = std::fs::metadata(&chunk).unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&chunk)
            .unwrap();
        file.set_len(len - 10).unwrap();
        drop(file);

        let mut store = MemoryStore::open(&root, readonly).unwrap();
        let err = store.length("a", 1).unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("000001.keys"), "{err}");
        let query = vec![0.5f32; KV_HEADS * HEAD_DIM];
        let err = store
            .search(&["a"], 1, qs(&query, 1, KV_HEADS), 4, Backend::Exact)
            .unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
        let err = store
            .search(
                &["b", "a"],
                1,
                qs(&[query.clone(), query.clone()].concat(), 1, KV_HEADS),
                4,
                Backend::Exact,
            )
            .unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
        assert!(matches!(store.read("a", 1, 0, 1), Err(Error::Corrupt(_))));
        // Still an error the second time: nothing half-open was cached.
        assert!(matches!(store.length("a", 1), Err(Error::Corrupt(_))));

        // The other layer of the document and the other document are untouched.
        assert_eq!(store.length("a", 3).unwrap(), 17);
        assert_eq!(store.length("b", 1).unwrap(), 17);
        let found = store
            .search(&["b"], 1, qs(&query, 1, KV_HEADS), 4, Backend::Exact)
            .unwrap();
        assert!(
            found.ids.iter().all(|&i| (0..17).contains(&i)),
            "{:?}",
            found.ids
        );
        store.read("b", 1, 0, 17).unwrap();
        if !readonly {
            let mut rng = Lcg(4);
            let (k, v) = tokens(&mut rng, 4);
            assert_eq!(append_f32(&mut store, "b", 1, &k, &v), 21);
        }
    }
}

#[test]
fn missing_commit_chunk_is_corrupt() {
    let (_tmp, root) = store_dir();
    small_store(&root);
    std::fs::remove_file(doc_dir(&root, "b").join("layer-3").join("000002.values")).unwrap();
    let mut store = MemoryStore::open(&root, true).unwrap();
    assert!(matches!(store.length("b", 3), Err(Error::Corrupt(_))));
    assert_eq!(store.length("b", 1).unwrap(), 17);
}

#[test]
fn paths_that_are_not_stores() {
    let tmp = tempfile::tempdir().unwrap();
    // Nothing there.
    let missing = tmp.path().join("missing");
    for readonly in [true, false] {
        assert!(matches!(
            open_err(&missing, readonly),
            Error::NotFound { .. }
        ));
    }
    // A directory without a manifest, empty or not.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for readonly in [true, false] {
        assert!(matches!(open_err(&empty, readonly), Error::NotAStore(_)));
    }
    std::fs::write(empty.join("notes.txt"), "hello").unwrap();
    assert!(matches!(open_err(&empty, true), Error::NotAStore(_)));
    // A manifest that is some other file.
    std::fs::write(
        empty.join("manifest.json"),
        "{\"name\": \"something else\"}\n{}",
    )
    .unwrap();
    assert!(matches!(open_err(&empty, true), Error::NotAStore(_)));
    // A regular file where the store should be.
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    assert!(MemoryStore::open(&file, true).is_err());
    assert!(MemoryStore::create(&file, config(Dtype::Float32, CHUNK)).is_err());
    // Creating in a non-empty directory is refused and leaves it alone.
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("data"), "keep me").unwrap();
    let err = MemoryStore::create(&full, config(Dtype::Float32, CHUNK)).unwrap_err();
    assert!(matches!(err, Error::NotAStore(_)), "{err}");
    assert_eq!(
        std::fs::read_to_string(full.join("data")).unwrap(),
        "keep me"
    );
    assert!(!full.join("manifest.json").exists());
    // Creating in an existing empty directory works.
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    drop(MemoryStore::create(&fresh, config(Dtype::Float32, CHUNK)).unwrap());
    MemoryStore::open(&fresh, true).unwrap();
}

#[test]
fn create_over_an_existing_store_fails_and_keeps_it() {
    let (_tmp, root) = store_dir();
    small_store(&root);
    let manifest = std::fs::read(root.join("manifest.json")).unwrap();
    let err = MemoryStore::create(&root, config(Dtype::Float16, 16)).unwrap_err();
    assert!(matches!(err, Error::Exists(_)), "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(std::fs::read(root.join("manifest.json")).unwrap(), manifest);
    // Also while a writer holds it open.
    let mut writer = MemoryStore::open(&root, false).unwrap();
    assert!(MemoryStore::create(&root, config(Dtype::Float32, CHUNK)).is_err());
    assert_eq!(writer.length("a", 1).unwrap(), 17);
}

#[test]
fn invalid_configurations_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bad = vec![];
    let mut c = config(Dtype::Float32, CHUNK);
    c.layers = vec![];
    bad.push(c);
    let mut c = config(Dtype::Float32, CHUNK);
    c.layers = vec![3, 1];
    bad.push(c);
    let mut c = config(Dtype::Float32, CHUNK);
    c.layers = vec![1, 1];
    bad.push(c);
    bad.push(config(Dtype::Float32, 0));
    let mut c = config(Dtype::Float32, CHUNK);
    c.kv_heads = 0;
    bad.push(c);
    let mut c = config(Dtype::Float32, CHUNK);
    c.value_dim = 0;
    bad.push(c);
    for (i, c) in bad.into_iter().enumerate() {
        let root = tmp.path().join(format!("s{i}"));
        let err = MemoryStore::create(&root, c.clone()).unwrap_err();
        assert!(matches!(err, Error::Value(_)), "{c:?}: {err}");
        assert!(!root.join("manifest.json").exists());
    }
}

// ---- writer lock, read-only handles, deletion, layers ------------------------------------------

#[test]
fn second_writer_is_locked_out_but_readers_open() {
    let (_tmp, root) = store_dir();
    let mut first = MemoryStore::create(&root, config(Dtype::Float32, CHUNK)).unwrap();
    let mut rng = Lcg(1);
    let (k, v) = tokens(&mut rng, 3);
    append_f32(&mut first, "a", 1, &k, &v);
    let err = open_err(&root, false);
    assert!(matches!(err, Error::Locked(_)), "{err}");
    let mut r1 = MemoryStore::open(&root, true).unwrap();
    let mut r2 = MemoryStore::open(&root, true).unwrap();
    assert_eq!(r1.length("a", 1).unwrap(), 3);
    assert_eq!(r2.length("a", 1).unwrap(), 3);
    // The writer keeps writing while readers are open.
    append_f32(&mut first, "a", 1, &k, &v);
    assert_eq!(r1.length("a", 1).unwrap(), 6);
    drop(first);
    // Once the writer is gone, the next one gets the lock (readers do not hold it).
    let mut second = MemoryStore::open(&root, false).unwrap();
    assert!(matches!(open_err(&root, false), Error::Locked(_)));
    append_f32(&mut second, "a", 1, &k, &v);
    assert_eq!(r2.length("a", 1).unwrap(), 9);
}

#[test]
fn readonly_handles_refuse_writes() {
    let (_tmp, root) = store_dir();
    small_store(&root);
    let mut ro = MemoryStore::open(&root, true).unwrap();
    let mut rng = Lcg(2);
    let (k, v) = tokens(&mut rng, 2);
    for doc in ["a", "new"] {
        let err = ro
            .append(doc, 1, Elements::F32(&k), Elements::F32(&v))
            .unwrap_err();
        assert!(matches!(err, Error::ReadOnly(_)), "{err}");
    }
    assert!(matches!(ro.delete_document("a"), Err(Error::ReadOnly(_))));
    assert!(matches!(
        ro.delete_document("nope"),
        Err(Error::ReadOnly(_))
    ));
    assert_eq!(ro.length("a", 1).unwrap(), 17);
    assert_eq!(
        ro.documents().unwrap(),
        vec!["a".to_string(), "b".to_string()]
    );
    // A read-only handle does not block a writer.
    let mut w = MemoryStore::open(&root, false).unwrap();
    append_f32(&mut w, "a", 1, &k, &v);
}

#[test]
fn delete_document_removes_it_and_a_new_one_starts_empty() {
    let dtype = Dtype::Float16;
    let (_tmp, root) = store_dir();
    let mut store = MemoryStore::create(&root, config(dtype, CHUNK)).unwrap();
    let mut rng = Lcg(8);
    let (ka, va) = tokens(&mut rng, 15);
    let (kb, vb) = tokens(&mut rng, 9);
    append_f32(&mut store, "a", 1, &ka, &va);
    append_f32(&mut store, "a", 3, &ka, &va);
    append_f32(&mut store, "b", 1, &kb, &vb);
    let old_dir = doc_dir(&root, "a");
    assert!(old_dir.exists());

    assert!(store.delete_document("a").unwrap());
    assert!(!old_dir.exists());
    assert!(!store.delete_document("a").unwrap());
    assert!(!store.delete_document("never").unwrap());
    assert_eq!(store.documents().unwrap(), vec!["b".to_string()]);
    assert_eq!(store.length("a", 1).unwrap(), 0);
    assert_eq!(store.length("a", 3).unwrap(), 0);
    let query = vec![1.0f32; KV_HEADS * HEAD_DIM];
    let found = store
        .search(&["a"], 1, qs(&query, 1, KV_HEADS), 3, Backend::Exact)
        .unwrap();
    assert!(found.ids.iter().all(|&i| i == -1));

    // Re-creating the name starts from zero in a fresh directory.
    let (kc, vc) = tokens(&mut rng, 4);
    assert_eq!(append_f32(&mut store, "a", 1, &kc, &vc), 4);
    assert_ne!(doc_dir(&root, "a"), old_dir);
    assert_holds(
        &mut store,
        "a",
        1,
        &stored_vec(dtype, &kc),
        &stored_vec(dtype, &vc),
    );
    assert_eq!(store.length("a", 3).unwrap(), 0);
    drop(store);

    let mut store = MemoryStore::open(&root, true).unwrap();
    assert_eq!(
        store.documents().unwrap(),
        vec!["a".to_string(), "b".to_string()]
    );
    assert_holds(
        &mut store,
        "a",
        1,
        &stored_vec(dtype, &kc),
        &stored_vec(dtype, &vc),
    );
    assert_holds(
        &mut store,
        "b",
        1,
        &stored_vec(dtype, &kb),
        &stored_vec(dtype, &vb),
    );
}

#[test]
fn reader_sees_a_deletion() {
    let (_tmp, root) = store_dir();
    small_store(&root);
    let mut writer = MemoryStore::open(&root, false).unwrap();
    let mut reader = MemoryStore::open(&root, true).unwrap();
    assert_eq!(reader.length("a", 1).unwrap(), 17);
    writer.delete_document("a").unwrap();
    assert_eq!(reader.documents().unwrap(), vec!["b".to_string()]);
    assert_eq!(reader.length("a", 1).unwrap(), 0);
    assert_eq!(reader.length("b", 1).unwrap(), 17);
}

#[test]
fn unknown_layers_are_named() {
    let (_tmp, root) = store_dir();
    small_store(&root);
    let mut store = MemoryStore::open(&root, false).unwrap();
    let check = |r: Result<(), Error>| match r {
        Err(Error::UnknownLayer { layer, layers }) => {
            assert_eq!(layer, 2);
            assert_eq!(layers, LAYERS.to_vec());
        }
        Err(other) => panic!("expected UnknownLayer, got {other}"),
        Ok(()) => panic!("expected UnknownLayer, got Ok"),
    };
    let mut rng = Lcg(6);
    let (k, v) = tokens(&mut rng, 2);
    check(
        store
            .append("a", 2, Elements::F32(&k), Elements::F32(&v))
            .map(drop),
    );
    check(
        store
            .append("new", 2, Elements::F32(&k), Elements::F32(&v))
            .map(drop),
    );
    check(store.length("a", 2).map(drop));
    check(store.read("a", 2, 0, 0).map(drop));
    check(store.gather("a", 2, &[0, 1], KV_HEADS, 1).map(drop));
    let query = vec![1.0f32; KV_HEADS * HEAD_DIM];
    check(
        store
            .search(&["a"], 2, qs(&query, 1, KV_HEADS), 1, Backend::Exact)
            .map(drop),
    );
    // The failed append of a new document did not create it.
    assert_eq!(
        store.documents().unwrap(),
        vec!["a".to_string(), "b".to_string()]
    );
}

// ---- search ------------------------------------------------------------------------------------

/// Checks `search` of `docs` (holding `keys[b]`, rounded, `[n_b, KV_HEADS, HEAD_DIM]`) against a
/// naive scan in f64. Ranks whose naive scores are within `tol` of a neighbour may swap.
#[allow(clippy::too_many_arguments)]
fn check_search(
    store: &mut MemoryStore,
    docs: &[&str],
    keys: &[Vec<f32>],
    queries: &[f32],
    q: usize,
    heads: usize,
    k: usize,
    tol: f32,
) {
    let found = store
        .search(docs, 1, qs(queries, q, heads), k, Backend::Exact)
        .unwrap();
    assert_eq!(found.ids.len(), docs.len() * q * heads * k);
    assert_eq!(found.scores.len(), found.ids.len());
    let group = heads / KV_HEADS;
    for (b, doc_keys) in keys.iter().enumerate() {
        let n = doc_keys.len() / (KV_HEADS * HEAD_DIM);
        for qi in 0..q {
            for h in 0..heads {
                let g = h / group;
                let qv = &queries[((b * q + qi) * heads + h) * HEAD_DIM..][..HEAD_DIM];
                let score = |t: usize| -> f32 {
                    let kv = &doc_keys[(t * KV_HEADS + g) * HEAD_DIM..][..HEAD_DIM];
                    qv.iter()
                        .zip(kv)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>() as f32
                };
                let mut naive: Vec<(f32, i64)> = (0..n).map(|t| (score(t), t as i64)).collect();
                naive.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                let base = ((b * q + qi) * heads + h) * k;
                let ids = &found.ids[base..base + k];
                let scores = &found.scores[base..base + k];
                let what = format!("doc {} query {qi} head {h}", docs[b]);
                let mut seen = std::collections::HashSet::new();
                for j in 0..k {
                    if j >= n {
                        assert_eq!(ids[j], -1, "{what} rank {j}: padding id");
                        assert_eq!(
                            scores[j],
                            f32::NEG_INFINITY,
                            "{what} rank {j}: padding score"
                        );
                        continue;
                    }
                    let (want_score, want_id) = naive[j];
                    assert!(
                        (scores[j] - want_score).abs() <= tol,
                        "{what} rank {j}: score {} vs naive {want_score}",
                        scores[j]
                    );
                    assert!(
                        (0..n as i64).contains(&ids[j]),
                        "{what} rank {j}: id {}",
                        ids[j]
                    );
                    assert!(seen.insert(ids[j]), "{what}: id {} twice", ids[j]);
                    // The id returned must really have that score.
                    assert!(
                        (score(ids[j] as usize) - scores[j]).abs() <= tol,
                        "{what} rank {j}"
                    );
                    let clear = (j == 0 || naive[j - 1].0 - want_score > 2.0 * tol)
                        && (j + 1 >= n || want_score - naive[j + 1].0 > 2.0 * tol);
                    if clear {
                        assert_eq!(ids[j], want_id, "{what} rank {j}");
                    }
                    if j > 0 {
                        assert!(scores[j] <= scores[j - 1], "{what}: not sorted at rank {j}");
                    }
                }
            }
        }
    }
}

#[test]
fn search_matches_naive_scan_across_chunks() {
    let heads = 2 * KV_HEADS;
    for dtype in DTYPES {
        for chunk in [CHUNK, 16] {
            let (_tmp, root) = store_dir();
            let mut store = MemoryStore::create(&root, config(dtype, chunk)).unwrap();
            let mut rng = Lcg(1000 + dtype as u64 * 7 + chunk as u64);
            // Two documents of different lengths, each spread over several chunks and appended
            // in batches that straddle chunk boundaries.
            let mut keys = vec![Vec::new(), Vec::new()];
            for (b, (doc, batches)) in [
                ("long", &[30usize, 1, 45, 19][..]),
                ("short", &[11, 12][..]),
            ]
            .into_iter()
            .enumerate()
            {
                for &n in batches {
                    let (k, v) = tokens(&mut rng, n);
                    append_f32(&mut store, doc, 1, &k, &v);
                    keys[b].extend(stored_vec(dtype, &k));
                }
            }
            // Noise in the other layer must not leak into layer 1's results.
            let (k, v) = tokens(&mut rng, 40);
            append_f32(&mut store, "long", 3, &k, &v);
            let q = 3;
            let queries = rng.vec(2 * q * heads * HEAD_DIM, 2.0);
            for k in [1, 5, 23] {
                check_search(
                    &mut store,
                    &["long", "short"],
                    &keys,
                    &queries,
                    q,
                    heads,
                    k,
                    1e-4,
                );
            }
            // Queries with one head per kv head, one document at a time.
            let q1 = rng.vec(q * KV_HEADS * HEAD_DIM, 2.0);
            check_search(
                &mut store,
                &["short"],
                &keys[1..],
                &q1,
                q,
                KV_HEADS,
                8,
                1e-4,
            );
            // Results survive a reopen read-only.
            drop(store);
            let mut store = MemoryStore::open(&root, true).unwrap();
            check_search(
                &mut store,
                &["long", "short"],
                &keys,
                &queries,
                q,
                heads,
                10,
                1e-4,
            );
        }
    }
}

#[test]
fn search_pads_when_k_exceeds_length() {
    let dtype = Dtype::Float32;
    let (_tmp, root) = store_dir();
    let mut store = MemoryStore::create(&root, config(dtype, CHUNK)).unwrap();
    let mut rng = Lcg(77);
    let (k5, v5) = tokens(&mut rng, 5);
    append_f32(&mut store, "five", 1, &k5, &v5);
    let (k9, v9) = tokens(&mut rng, 9);
    append_f32(&mut store, "nine", 1, &k9, &v9);
    let heads = 2 * KV_HEADS;
    let q = 2;
    let queries = rng.vec(3 * q * heads * HEAD_DIM, 2.0);
    // k 12 > 9 > 5; the third slot is a document that does not exist.
    let k = 12;
    let found = store
        .search(
            &["five", "nine", "absent"],
            1,
            qs(&queries, q, heads),
            k,
            Backend::Exact,
        )
        .unwrap();
    for (b, n) in [(0usize, 5usize), (1, 9), (2, 0)] {
        for row in 0..q * heads {
            let base = (b * q * heads + row) * k;
            let ids = &found.ids[base..base + k];
            let scores = &found.scores[base..base + k];
            let mut real: Vec<i64> = ids[..n].to_vec();
            real.sort_unstable();
            assert_eq!(
                real,
                (0..n as i64).collect::<Vec<_>>(),
                "slot {b} row {row}"
            );
            assert!(scores[..n].iter().all(|s| s.is_finite()));
            assert!(
                ids[n..].iter().all(|&i| i == -1),
                "slot {b} row {row}: {ids:?}"
            );
            assert!(scores[n..].iter().all(|&s| s == f32::NEG_INFINITY));
        }
    }
    check_search(
        &mut store,
        &["five", "nine"],
        &[k5, k9],
        &queries[..2 * q * heads * HEAD_DIM],
        q,
        heads,
        k,
        1e-4,
    );

    // Bad shapes and k are refused.
    let one = &queries[..heads * HEAD_DIM];
    assert!(matches!(
        store.search(&["five"], 1, qs(one, 1, heads), 0, Backend::Exact),
        Err(Error::Value(_))
    ));
    assert!(matches!(
        store.search(&["five"], 1, qs(one, 1, KV_HEADS + 1), 3, Backend::Exact),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        store.search(&["five"], 1, qs(&one[1..], 1, heads), 3, Backend::Exact),
        Err(Error::Shape(_))
    ));
    let mut nan = one.to_vec();
    nan[3] = f32::NAN;
    assert!(matches!(
        store.search(&["five"], 1, qs(&nan, 1, heads), 3, Backend::Exact),
        Err(Error::Value(_))
    ));
}

#[test]
fn gather_returns_the_searched_tokens() {
    for dtype in DTYPES {
        let (_tmp, root) = store_dir();
        let mut store = MemoryStore::create(&root, config(dtype, CHUNK)).unwrap();
        let mut rng = Lcg(55 + dtype as u64);
        let (k, v) = tokens(&mut rng, 40);
        append_f32(&mut store, "doc", 1, &k, &v);
        let (keys, values) = (stored_vec(dtype, &k), stored_vec(dtype, &v));
        let heads = 2 * KV_HEADS;
        let (q, topk) = (3, 6);
        let queries = rng.vec(q * heads * HEAD_DIM, 2.0);
        let found = store
            .search(&["doc"], 1, qs(&queries, q, heads), topk, Backend::Exact)
            .unwrap();
        let mut ids = found.ids.clone();
        ids[1] = -1;
        let (gk, gv) = store.gather("doc", 1, &ids, heads, topk).unwrap();
        assert_eq!(gk.len(), ids.len() * HEAD_DIM);
        assert_eq!(gv.len(), ids.len() * VALUE_DIM);
        for (flat, &id) in ids.iter().enumerate() {
            let h = (flat / topk) % heads;
            let g = h / (heads / KV_HEADS);
            let got_k = &gk[flat * HEAD_DIM..][..HEAD_DIM];
            let got_v = &gv[flat * VALUE_DIM..][..VALUE_DIM];
            if id < 0 {
                assert!(got_k.iter().chain(got_v).all(|&x| x == 0.0));
                continue;
            }
            let t = id as usize;
            assert_eq!(got_k, &keys[(t * KV_HEADS + g) * HEAD_DIM..][..HEAD_DIM]);
            assert_eq!(
                got_v,
                &values[(t * KV_HEADS + g) * VALUE_DIM..][..VALUE_DIM]
            );
        }
        assert!(matches!(
            store.gather("doc", 1, &[0, 40], KV_HEADS, 1),
            Err(Error::Index(_))
        ));
        assert!(matches!(
            store.gather("doc", 1, &[-2, 0], KV_HEADS, 1),
            Err(Error::Index(_))
        ));
        // ids must be whole [heads, k] blocks, and heads a multiple of kv_heads.
        for (ids, h, k) in [
            (&[0i64, 1, 2][..], KV_HEADS, 1),
            (&[0, 1, 2, 3][..], KV_HEADS, 3),
            (&[0, 1][..], KV_HEADS, 0),
            (&[0, 1, 2][..], 3, 1),
        ] {
            assert!(
                matches!(store.gather("doc", 1, ids, h, k), Err(Error::Shape(_))),
                "{ids:?} heads {h} k {k}"
            );
        }
        // No ids, no output; a document that does not exist gives zeros for padding.
        assert_eq!(
            store.gather("doc", 1, &[], heads, topk).unwrap(),
            (vec![], vec![])
        );
        let (gk, gv) = store.gather("absent", 1, &[-1, -1], KV_HEADS, 1).unwrap();
        assert!(gk.iter().chain(&gv).all(|&x| x == 0.0));
    }
}

/// A reader that has a layer open when the writer deletes (and re-creates) its document sees
/// the change on its next call: no false "corrupt" and no stale data.
#[test]
fn reader_sees_a_deletion_without_listing_documents() {
    let (_tmp, root) = store_dir();
    small_store(&root);
    let mut writer = MemoryStore::open(&root, false).unwrap();
    let mut reader = MemoryStore::open(&root, true).unwrap();
    let mut rng = Lcg(12);
    let (kc, vc) = tokens(&mut rng, 2);
    append_f32(&mut writer, "c", 1, &kc, &vc);
    assert_eq!(reader.length("a", 1).unwrap(), 17);
    assert_eq!(reader.length("b", 1).unwrap(), 17);
    assert_eq!(reader.length("c", 1).unwrap(), 2);
    assert_eq!(reader.length("c", 3).unwrap(), 0); // an open layer with nothing committed

    writer.delete_document("a").unwrap();
    assert_eq!(reader.length("a", 1).unwrap(), 0);
    let query = vec![1.0f32; KV_HEADS * HEAD_DIM];
    let found = reader
        .search(
            &["a", "b"],
            1,
            qs(&[query.clone(), query.clone()].concat(), 1, KV_HEADS),
            2,
            Backend::Exact,
        )
        .unwrap();
    assert!(found.ids[..2 * KV_HEADS].iter().all(|&i| i == -1));
    assert!(found.ids[2 * KV_HEADS..].iter().all(|&i| i >= 0));
    // Re-created under the same name: the reader sees the new tokens only.
    let (k, v) = tokens(&mut rng, 3);
    append_f32(&mut writer, "a", 1, &k, &v);
    assert_holds(&mut reader, "a", 1, &k, &v);

    // Deleted and re-created between two calls of the reader, including a layer it had open
    // empty.
    writer.delete_document("c").unwrap();
    let (k3, v3) = tokens(&mut rng, 9);
    append_f32(&mut writer, "c", 3, &k3, &v3);
    assert_holds(&mut reader, "c", 3, &k3, &v3);
    assert_eq!(reader.length("c", 1).unwrap(), 0);
    assert_eq!(reader.length("b", 1).unwrap(), 17);
}
