//! The store under attack (issue 19): crafted manifests, files deleted or altered behind its back.
//! Whatever its files say, the store never touches a path outside its folder, never reads a lost
//! layer as empty (or writes over it), and finds altered sealed chunks by their checksums.

use std::path::{Path, PathBuf};

use fot_mem::store::verify;
use fot_mem::{Backend, Dtype, Elements, Error, MemoryStore, Queries, StoreConfig};

const CHUNK: u32 = 4;

fn config() -> StoreConfig {
    let mut c = StoreConfig::new(vec![0, 2], 2, 8, Dtype::Float32);
    c.value_dim = 4;
    c.chunk_tokens = CHUNK;
    c
}

fn append(s: &mut MemoryStore, doc: &str, layer: u32, n: usize) -> Result<u64, Error> {
    let k: Vec<f32> = (0..n * 16).map(|i| (i as f32 * 0.37).sin()).collect();
    let v: Vec<f32> = (0..n * 8).map(|i| (i as f32 * 0.11).cos()).collect();
    s.append(doc, layer, Elements::F32(&k), Elements::F32(&v))
}

/// A store with document "a" (10 tokens in layer 0: chunks 0 and 1 sealed, 2 open; layer 2 never
/// appended) and "b" (3 tokens in layer 0), inside `tmp/store`.
fn store(tmp: &Path) -> PathBuf {
    let root = tmp.join("store");
    let mut s = MemoryStore::create(&root, config()).unwrap();
    append(&mut s, "a", 0, 10).unwrap();
    append(&mut s, "b", 0, 3).unwrap();
    root
}

fn manifest_json(root: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(root.join("manifest.json")).unwrap();
    serde_json::from_str(text.split_once('\n').unwrap().1).unwrap()
}

/// Writes `json` as the manifest with a correct checksum, as an attacker easily can.
fn write_manifest(root: &Path, json: &serde_json::Value, version: u32) {
    let body = serde_json::to_vec_pretty(json).unwrap();
    let header = format!(
        "fot_mem-manifest version={version} crc32={:08x}\n",
        crc32fast::hash(&body)
    );
    std::fs::write(
        root.join("manifest.json"),
        [header.as_bytes(), &body].concat(),
    )
    .unwrap();
}

fn layer_dir(root: &Path, doc: &str, layer: u32) -> PathBuf {
    let dir = manifest_json(root)["documents"][doc]["dir"]
        .as_str()
        .unwrap()
        .to_owned();
    root.join("docs").join(dir).join(format!("layer-{layer}"))
}

fn corrupt(r: Result<impl std::fmt::Debug, Error>, needles: &[&str]) {
    match r {
        Err(Error::Corrupt(m)) => {
            for n in needles {
                assert!(m.contains(n), "{n:?} not in {m:?}");
            }
        }
        other => panic!("expected a Corrupt error naming {needles:?}, got {other:?}"),
    }
}

#[test]
fn crafted_document_dirs_are_refused_in_every_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let root = store(tmp.path());
    let victim = tmp.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("precious"), b"keep me").unwrap();
    let pristine = manifest_json(&root);
    let bad = [
        "../../victim".to_owned(),
        "../victim".to_owned(),
        victim.to_string_lossy().into_owned(),
        "d00000000/../../../victim".to_owned(),
        "..".to_owned(),
        ".".to_owned(),
        String::new(),
        "d0".to_owned(),
        "d0000000x".to_owned(),
    ];
    for dir in &bad {
        let mut json = pristine.clone();
        json["documents"]["a"]["dir"] = dir.clone().into();
        write_manifest(&root, &json, 2);
        for readonly in [true, false] {
            corrupt(MemoryStore::open(&root, readonly), &["\"a\"", dir]);
        }
        let r = verify(&root, true).unwrap();
        assert!(!r.is_ok(), "{dir:?}: {:?}", r.problems);
        assert_eq!(std::fs::read(victim.join("precious")).unwrap(), b"keep me");
        assert!(!victim.join("layer-0").exists());
    }
    // Two documents sharing a directory (deleting one would delete the other's tokens), and a
    // counter that would hand an existing directory to the next document.
    let mut json = pristine.clone();
    json["documents"]["b"]["dir"] = json["documents"]["a"]["dir"].clone();
    write_manifest(&root, &json, 2);
    corrupt(MemoryStore::open(&root, false), &["share"]);
    let mut json = pristine.clone();
    json["next_document"] = 1.into();
    write_manifest(&root, &json, 2);
    corrupt(MemoryStore::open(&root, true), &["next_document"]);
    // An unknown layout.
    let mut json = pristine.clone();
    json["documents"]["a"]["layout"] = 9.into();
    write_manifest(&root, &json, 2);
    corrupt(MemoryStore::open(&root, true), &["layout 9"]);
    // The pristine manifest opens again.
    write_manifest(&root, &pristine, 2);
    let mut s = MemoryStore::open(&root, false).unwrap();
    assert!(s.delete_document("a").unwrap());
    assert!(victim.join("precious").exists());
}

#[test]
fn a_document_directory_that_is_a_link_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = store(tmp.path());
    let elsewhere = tmp.path().join("elsewhere");
    let doc = layer_dir(&root, "a", 0).parent().unwrap().to_owned();
    std::fs::rename(&doc, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &doc).unwrap();
    for readonly in [true, false] {
        let mut s = MemoryStore::open(&root, readonly).unwrap();
        corrupt(s.length("a", 0), &["not a directory"]);
    }
}

/// Each way of losing a listed document's files: readers and the writer get `Corrupt`, the writer
/// writes nothing, and verify reports an error. A layer never appended to still reads as empty.
#[test]
fn lost_layers_are_errors_never_empty_layers() {
    type Damage = fn(&Path);
    let cases: [(&str, Damage); 3] = [
        ("layer directory", |root| {
            std::fs::remove_dir_all(layer_dir(root, "a", 0)).unwrap()
        }),
        ("count file", |root| {
            std::fs::remove_file(layer_dir(root, "a", 0).join("count")).unwrap()
        }),
        ("document directory", |root| {
            std::fs::remove_dir_all(layer_dir(root, "a", 0).parent().unwrap()).unwrap()
        }),
    ];
    for (what, damage) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let root = store(tmp.path());
        {
            let mut s = MemoryStore::open(&root, true).unwrap();
            assert_eq!(s.length("a", 2).unwrap(), 0, "a layer never appended to");
        }
        damage(&root);
        let chunk0 = layer_dir(&root, "a", 0).join("000000.keys");
        let before = std::fs::read(&chunk0).ok();
        for readonly in [true, false] {
            let mut s = MemoryStore::open(&root, readonly).unwrap();
            corrupt(s.length("a", 0), &["missing"]);
            let q = vec![0.5f32; 16];
            let queries = Queries {
                data: &q,
                q: 1,
                heads: 2,
            };
            corrupt(s.search(&["a"], 0, queries, 3, Backend::Exact), &[]);
            if !readonly {
                corrupt(append(&mut s, "a", 0, 2), &[]);
                assert_eq!(std::fs::read(&chunk0).ok(), before, "{what}: written over");
                // Other documents are unaffected.
                assert_eq!(s.length("b", 0).unwrap(), 3);
            }
        }
        let r = verify(&root, false).unwrap();
        assert!(!r.is_ok(), "{what}: verify found nothing: {:?}", r.problems);
    }
}

#[test]
fn altered_sealed_chunks_are_found() {
    let tmp = tempfile::tempdir().unwrap();
    let root = store(tmp.path());
    assert!(verify(&root, true).unwrap().problems.is_empty());
    assert_eq!(verify(&root, false).unwrap().checked.checksums, 2);
    // Flip the lowest mantissa bit of one key: still finite, so only a checksum can see it.
    let path = layer_dir(&root, "a", 0).join("000001.keys");
    let mut b = std::fs::read(&path).unwrap();
    b[8] ^= 1;
    std::fs::write(&path, &b).unwrap();
    let r = verify(&root, true).unwrap();
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(r.problems[0].message.contains("checksum"));
    assert!(r.problems[0].path.ends_with("layer-0/000001.keys"));
    // Reads without verify_reads do not look (search pays nothing); with it they refuse.
    let mut plain = MemoryStore::open(&root, true).unwrap();
    assert_eq!(plain.length("a", 0).unwrap(), 10);
    for readonly in [true, false] {
        let mut s = MemoryStore::open(&root, readonly)
            .unwrap()
            .verify_reads(true);
        corrupt(s.read("a", 0, 0, 1), &["chunk 1", "checksum"]);
        assert_eq!(s.length("b", 0).unwrap(), 3, "other documents still read");
    }
}

#[test]
fn format_1_stores_read_and_report_no_checksum() {
    let tmp = tempfile::tempdir().unwrap();
    let root = store(tmp.path());
    // What a format-1 build wrote: no layouts, no checksum files, no never-written layer dirs.
    let mut json = manifest_json(&root);
    for doc in ["a", "b"] {
        json["documents"][doc]
            .as_object_mut()
            .unwrap()
            .remove("layout");
        std::fs::remove_dir_all(layer_dir(&root, doc, 2)).unwrap();
    }
    for c in 0..2 {
        std::fs::remove_file(layer_dir(&root, "a", 0).join(format!("00000{c}.crc"))).unwrap();
    }
    write_manifest(&root, &json, 1);
    let r = verify(&root, true).unwrap();
    assert!(r.is_ok(), "{:?}", r.problems);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(r.problems[0]
        .message
        .contains("no checksum for 2 sealed chunks"));
    let mut s = MemoryStore::open(&root, false).unwrap().verify_reads(true);
    assert_eq!(s.length("a", 0).unwrap(), 10);
    assert_eq!(s.length("a", 2).unwrap(), 0);
    // Appending seals chunk 2, which gets a checksum; the manifest becomes format 2.
    assert_eq!(append(&mut s, "a", 0, 2).unwrap(), 12);
    append(&mut s, "c", 0, 1).unwrap();
    drop(s);
    assert!(layer_dir(&root, "a", 0).join("000002.crc").exists());
    let text = std::fs::read_to_string(root.join("manifest.json")).unwrap();
    assert!(text.starts_with("fot_mem-manifest version=2"));
    let r = verify(&root, true).unwrap();
    assert!(r.is_ok(), "{:?}", r.problems);
    assert_eq!(r.checked.checksums, 1);
}

/// Checksum files are written just after the commit that seals their chunk, without fsync: a
/// writer that dies in between leaves the chunks of its last commit without one. That store reads
/// fine (also with `verify_reads`), verify warns, and the next writer writes them from the
/// committed data. A missing or torn checksum of an earlier chunk stays damage.
#[test]
fn last_seal_checksum_is_restored_earlier_ones_are_damage() {
    use fot_mem::store::Severity;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let mut s = MemoryStore::create(&root, config()).unwrap();
    append(&mut s, "a", 0, 6).unwrap(); // seals chunk 0
    append(&mut s, "a", 0, 6).unwrap(); // seals chunks 1 and 2 (the last commit)
    drop(s);
    let dir = layer_dir(&root, "a", 0);
    let sum = |c: usize| dir.join(format!("00000{c}.crc"));
    let intact: Vec<Vec<u8>> = (0..3).map(|c| std::fs::read(sum(c)).unwrap()).collect();
    let crc_problems = |root: &Path| {
        let r = verify(root, true).unwrap();
        r.problems
            .into_iter()
            .filter(|p| p.path.ends_with(".crc"))
            .collect::<Vec<_>>()
    };

    // The last seal's checksums missing (chunk 1) and torn (chunk 2, as a crash leaves it).
    std::fs::remove_file(sum(1)).unwrap();
    std::fs::write(sum(2), &intact[2][..5]).unwrap();
    let found = crc_problems(&root);
    assert_eq!(found.len(), 2, "{found:?}");
    for p in &found {
        assert_eq!(p.severity, Severity::Warning, "{p:?}");
        assert!(p.message.contains("the next writer writes it"), "{p:?}");
    }
    assert!(verify(&root, true).unwrap().is_ok());
    for readonly in [true, false] {
        // A reader checks chunk 0 and reads everything (it skips chunks 1 and 2 for now). A
        // writable handle opening the layer writes both checksums back, so reset them each time.
        std::fs::remove_file(sum(1)).ok();
        std::fs::write(sum(2), &intact[2][..5]).unwrap();
        let mut r = MemoryStore::open(&root, readonly)
            .unwrap()
            .verify_reads(true);
        assert_eq!(r.read("a", 0, 0, 12).unwrap().0.len(), 12 * 16);
        assert_eq!(
            std::fs::read(sum(1)).is_ok(),
            !readonly,
            "readonly {readonly}"
        );
    }
    // The writer's open restored them, byte for byte.
    for (c, bytes) in intact.iter().enumerate() {
        assert_eq!(&std::fs::read(sum(c)).unwrap(), bytes, "chunk {c}");
    }
    assert!(crc_problems(&root).is_empty());

    // Lazily too: when the open cannot write it (a directory in the way of its temp file), the
    // next append must write it before committing, and fails, committing nothing, while it cannot.
    std::fs::remove_file(sum(2)).unwrap();
    let blocker = dir.join("000002.crc.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let mut w = MemoryStore::open(&root, false).unwrap();
    assert_eq!(w.length("a", 0).unwrap(), 12);
    assert!(!sum(2).exists());
    assert!(append(&mut w, "a", 0, 1).is_err());
    assert_eq!(w.length("a", 0).unwrap(), 12);
    std::fs::remove_dir(&blocker).unwrap();
    assert_eq!(append(&mut w, "a", 0, 1).unwrap(), 13);
    drop(w);
    assert_eq!(std::fs::read(sum(2)).unwrap(), intact[2]);
    assert!(crc_problems(&root).is_empty(), "{:?}", crc_problems(&root));

    // An earlier chunk's checksum missing or torn: an error, which no writer papers over.
    for torn in [false, true] {
        if torn {
            std::fs::write(sum(0), &intact[0][..5]).unwrap();
        } else {
            std::fs::remove_file(sum(0)).unwrap();
        }
        let mut w = MemoryStore::open(&root, false).unwrap();
        assert_eq!(w.length("a", 0).unwrap(), 13);
        drop(w);
        let found = crc_problems(&root);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].severity, Severity::Error, "{found:?}");
        assert!(found[0].path.ends_with("layer-0/000000.crc"));
        let mut r = MemoryStore::open(&root, true).unwrap().verify_reads(true);
        corrupt(r.read("a", 0, 0, 1), &["000000.crc"]);
    }
    std::fs::write(sum(0), &intact[0]).unwrap();

    // Without the commit before the last (its slot damaged), no sealed chunk may lack one.
    append(&mut MemoryStore::open(&root, false).unwrap(), "a", 0, 3).unwrap(); // seals 3
    let count = dir.join("count");
    let mut b = std::fs::read(&count).unwrap();
    // The last commit is sequence 4 (slot 0); the one before is in slot 1.
    b[32 + 3] ^= 0xff;
    std::fs::write(&count, &b).unwrap();
    std::fs::remove_file(sum(3)).unwrap();
    let found = crc_problems(&root);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].severity, Severity::Error, "{found:?}");
}
