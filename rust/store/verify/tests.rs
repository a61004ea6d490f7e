//! Unit tests of `verify`: damage of every kind, found where it is, and no panics on fuzzed files.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::layer::{slot, Slot};
use super::names::{classify, LayerFile};
use super::*;
use crate::dtype::{Dtype, Elements};
use crate::store::commit::{COUNT_FILE, SLOT};
use crate::store::{HnswConfig, MemoryStore, StoreConfig};

const CT: u32 = 4;

fn config(hnsw: bool) -> StoreConfig {
    let mut c = StoreConfig::new(vec![1, 3], 2, 8, Dtype::Float32);
    c.value_dim = 5;
    c.chunk_tokens = CT;
    if hnsw {
        let mut h = HnswConfig::new(CT);
        h.span_tokens = 8;
        c.hnsw = Some(h);
    }
    c
}

fn append(s: &mut MemoryStore, doc: &str, layer: u32, n: usize) {
    let k: Vec<f32> = (0..n * 16).map(|i| (i as f32 * 0.37).sin()).collect();
    let v: Vec<f32> = (0..n * 10).map(|i| (i as f32 * 0.11).cos()).collect();
    s.append(doc, layer, Elements::F32(&k), Elements::F32(&v))
        .unwrap();
}

/// A store with two documents, both layers, 2 sealed spans (indexed) in doc "a" layer 1.
fn healthy(hnsw: bool) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let mut s = MemoryStore::create(&root, config(hnsw)).unwrap();
    append(&mut s, "a", 1, 18);
    append(&mut s, "a", 3, 3);
    append(&mut s, "b", 1, 4);
    s.wait_for_indexes().unwrap();
    drop(s);
    (dir, root)
}

fn errors(r: &VerifyReport) -> Vec<&Problem> {
    r.problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .collect()
}

fn all_files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path(), std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

#[test]
fn healthy_store_is_clean_and_counted() {
    for hnsw in [false, true] {
        let (_d, root) = healthy(hnsw);
        let before = all_files(&root);
        let r = verify(&root, true).unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert!(r.is_ok());
        let c = &r.checked;
        assert_eq!((c.documents, c.layers, c.tokens), (2, 4, 25));
        // 18 tokens: 5 chunks; 3: 1; 4: 1 (layer 3 of "b" was never written).
        assert_eq!(c.chunks, 7);
        assert_eq!(c.index_files, if hnsw { 2 } else { 0 });
        let total: u64 = before.values().map(|b| b.len() as u64).sum();
        assert_eq!(c.bytes, total);
        assert_eq!(all_files(&root), before, "verify changed a file");
    }
}

#[test]
fn not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert!(matches!(
        verify(&missing, false),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        verify(dir.path(), false),
        Err(Error::NotAStore(_))
    ));
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(verify(&file, false), Err(Error::NotAStore(_))));
}

fn layer_dir(root: &Path, doc: usize, layer: u32) -> PathBuf {
    root.join(DOCS_DIR)
        .join(format!("d{doc:08}"))
        .join(format!("layer-{layer}"))
}

fn find<'r>(r: &'r VerifyReport, path: &str) -> Vec<&'r Problem> {
    r.problems.iter().filter(|p| p.path == path).collect()
}

#[test]
fn each_kind_of_damage_is_found_where_it_is() {
    let rel = "docs/d00000000/layer-1";
    type Damage = fn(&Path);
    let cases: [(&str, Damage, &str, Severity); 11] = [
        (
            "truncated chunk",
            |d| {
                let f = File::options()
                    .write(true)
                    .open(d.join("000001.keys"))
                    .unwrap();
                f.set_len(10).unwrap();
            },
            "000001.keys",
            Severity::Error,
        ),
        (
            "missing chunk",
            |d| std::fs::remove_file(d.join("000002.values")).unwrap(),
            "000002.values",
            Severity::Error,
        ),
        (
            "both slots",
            |d| flip(&d.join(COUNT_FILE), &[14, SLOT + 14]),
            "count",
            Severity::Error,
        ),
        (
            "older slot",
            |d| flip(&d.join(COUNT_FILE), &[3]),
            "count",
            Severity::Error,
        ),
        (
            "index header",
            |d| flip(&d.join("hnsw-000001.idx"), &[4 * 5]),
            "hnsw-000001.idx",
            Severity::Error,
        ),
        (
            "index section",
            |d| {
                let p = d.join("hnsw-000000.idx");
                let len = std::fs::metadata(&p).unwrap().len() as usize;
                flip(&p, &[len - 5]);
            },
            "hnsw-000000.idx",
            Severity::Error,
        ),
        (
            "stray temp",
            |d| std::fs::write(d.join("hnsw-000002.tmp77"), b"x").unwrap(),
            "hnsw-000002.tmp77",
            Severity::Warning,
        ),
        (
            "non-finite",
            |d| {
                // In the open tail chunk (4 of 18 tokens), which has no checksum.
                let p = d.join("000004.values");
                let mut b = std::fs::read(&p).unwrap();
                b[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
                std::fs::write(&p, b).unwrap();
            },
            "000004.values",
            Severity::Error,
        ),
        (
            "finite bit flip in a sealed chunk",
            |d| flip(&d.join("000001.keys"), &[0]),
            "000001.keys",
            Severity::Error,
        ),
        // The one append of 18 tokens sealed chunks 0-3: a writer dying before their
        // checksums leaves this (tests/store_damage.rs has earlier chunks, errors).
        (
            "missing checksum of the last seal",
            |d| std::fs::remove_file(d.join("000002.crc")).unwrap(),
            "000002.crc",
            Severity::Warning,
        ),
        (
            "damaged checksum of the last seal",
            |d| flip(&d.join("000003.crc"), &[9]),
            "000003.crc",
            Severity::Warning,
        ),
    ];
    for (what, damage, file, severity) in cases {
        let (_d, root) = healthy(true);
        damage(&layer_dir(&root, 0, 1));
        let before = all_files(&root);
        let r = verify(&root, true).unwrap();
        assert_eq!(all_files(&root), before, "{what}: verify changed a file");
        let found = find(&r, &format!("{rel}/{file}"));
        assert_eq!(found.len(), 1, "{what}: {:?}", r.problems);
        assert_eq!(found[0].severity, severity, "{what}: {found:?}");
        assert_eq!(
            r.problems.len(),
            1,
            "{what}: nothing else should be reported: {:?}",
            r.problems
        );
    }
}

fn flip(path: &Path, at: &[usize]) {
    let mut b = std::fs::read(path).unwrap();
    for &i in at {
        b[i] ^= 0x10;
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn manifest_damage_is_reported_and_the_walk_goes_on() {
    let (_d, root) = healthy(false);
    let path = root.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    // A checksum mismatch whose JSON still parses: reported, and the documents still checked.
    std::fs::write(
        &path,
        text.replacen("\"kv_heads\": 2", "\"kv_heads\":  2", 1),
    )
    .unwrap();
    std::fs::remove_file(layer_dir(&root, 1, 1).join("000000.keys")).unwrap();
    let r = verify(&root, false).unwrap();
    assert_eq!(errors(&r).len(), 2, "{:?}", r.problems);
    assert!(find(&r, MANIFEST_FILE)[0].message.contains("checksum"));
    assert_eq!(r.checked.documents, 2);
    // Garbage: the documents are still walked, without a configuration.
    std::fs::write(&path, b"\xff\x00garbage").unwrap();
    let r = verify(&root, true).unwrap();
    assert!(!r.is_ok());
    assert_eq!(r.checked.documents, 2);
}

#[test]
fn orphans_unknown_files_and_uncommitted_chunks_are_warnings() {
    let (_d, root) = healthy(false);
    std::fs::create_dir(root.join(DOCS_DIR).join("d00000099")).unwrap();
    std::fs::write(root.join("notes.txt"), b"hi").unwrap();
    std::fs::write(root.join("manifest.json.tmp"), b"{").unwrap();
    let dir = layer_dir(&root, 1, 1);
    std::fs::write(dir.join("000001.keys"), b"").unwrap();
    std::fs::write(dir.join("count.tmp"), b"").unwrap();
    let r = verify(&root, true).unwrap();
    assert!(r.is_ok(), "{:?}", r.problems);
    let paths: Vec<&str> = r.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "docs/d00000001/layer-1/000001.keys",
            "docs/d00000001/layer-1/count.tmp",
            "docs/d00000099",
            "manifest.json.tmp",
            "notes.txt"
        ]
    );
}

#[test]
fn slot_decoding_agrees_with_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(COUNT_FILE);
    let mut c = super::super::commit::CommitFile::open(&path).unwrap();
    for n in [0u64, 5, 9] {
        if n > 0 {
            c.commit(n).unwrap();
        }
        let b = std::fs::read(&path).unwrap();
        let best = [slot(&b[..SLOT]), slot(&b[SLOT..])]
            .into_iter()
            .filter_map(|s| match s {
                Slot::Valid { seq, count } => Some(super::super::commit::Commit { seq, count }),
                _ => None,
            })
            .max_by_key(|c| c.seq);
        assert_eq!(
            best,
            Some(super::super::commit::read_commit(&path).unwrap())
        );
    }
}

#[test]
fn classify_names() {
    assert_eq!(classify("000000.keys"), LayerFile::Keys(0));
    assert_eq!(classify("1234567.values"), LayerFile::Values(1_234_567));
    assert_eq!(classify("00001.keys"), LayerFile::Unknown);
    assert_eq!(classify("0000001.keys"), LayerFile::Unknown);
    assert_eq!(classify("hnsw-000003.idx"), LayerFile::Index(3));
    assert_eq!(classify("hnsw-000003.tmp42"), LayerFile::Temp);
    assert_eq!(classify("hnswlib-000000-h1.bin"), LayerFile::Hnswlib);
    assert_eq!(classify("hnswlib-000000-h1.seal"), LayerFile::HnswlibSeal);
    assert_eq!(classify(".hnswlib-000000-h1.seal.7.tmp"), LayerFile::Temp);
    assert_eq!(classify(".hnswlib-000000-h1.bin.7.ab.tmp"), LayerFile::Temp);
    assert_eq!(classify("count.tmp"), LayerFile::Temp);
    assert_eq!(classify("+00000.keys"), LayerFile::Unknown);
}

/// Truncations and byte flips in every file of a store: never a panic, never a change.
#[test]
fn fuzzed_files_never_panic() {
    let (_d, root) = healthy(true);
    let pristine = all_files(&root);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n.max(1) as u64) as usize
    };
    for (path, bytes) in &pristine {
        if bytes.is_empty() {
            continue;
        }
        for round in 0..12 {
            let mut b = bytes.clone();
            match round % 3 {
                0 => b.truncate(next(b.len())),
                1 => {
                    for _ in 0..1 + next(4) {
                        let i = next(b.len());
                        b[i] ^= 1 << next(8);
                    }
                }
                _ => {
                    let i = next(b.len());
                    let n = next(64).min(b.len() - i);
                    b[i..i + n].fill(0xff);
                }
            }
            std::fs::write(path, &b).unwrap();
            let damaged = all_files(&root);
            let r = verify(&root, true).unwrap();
            assert!(
                r.problems
                    .iter()
                    .all(|p| !p.message.contains("internal error")),
                "{}: {:?}",
                path.display(),
                r.problems
            );
            assert_eq!(all_files(&root), damaged);
            std::fs::write(path, bytes).unwrap();
        }
    }
}
