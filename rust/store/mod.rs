//! The persistent store: a directory holding a manifest (configuration and documents), a writer
//! lock, and per document and memory layer a directory of chunk files with a commit point.
//!
//! ```text
//! <root>/manifest.json                      header line (version, crc32) + JSON body
//! <root>/LOCK                               advisory lock of the one writer
//! <root>/docs/<dir>/layer-<L>/count         commit point (two checksummed slots)
//! <root>/docs/<dir>/layer-<L>/000000.keys   [kv_heads][chunk_tokens][head_dim], dtype
//! <root>/docs/<dir>/layer-<L>/000000.values [kv_heads][chunk_tokens][value_dim], dtype
//! ```
//! Invariant: a reader trusts the manifest for which documents exist and the commit point for how
//! many tokens a document-layer holds; everything else on disk is derived or not yet committed.

mod chunk;
mod commit;
mod config;
mod crash;
mod create;
mod indexer;
mod layer;
mod lock;
mod manifest;
mod read;
mod seal;
mod verify;
mod write;

pub use chunk::{KeyView, Part};
pub use config::{HnswConfig, StoreConfig, DEFAULT_CHUNK_TOKENS};
pub use indexer::IndexStats;
pub use layer::LayerMemory;
pub use manifest::{FORMAT_VERSION, MANIFEST_FILE};
pub use verify::{verify, Checked, Problem, Severity, VerifyReport};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};
use lock::WriterLock;
use manifest::Manifest;

const DOCS_DIR: &str = "docs";

/// An open store: read-write (holding the writer lock) or read-only.
#[derive(Debug)]
pub struct MemoryStore {
    root: PathBuf,
    config: Arc<StoreConfig>,
    manifest: Manifest,
    lock: Option<WriterLock>,
    /// Layers opened so far, by (document, layer).
    open: HashMap<(String, u32), LayerMemory>,
    /// Builds the hnsw indexes of sealed spans in the background (writers of hnsw stores).
    indexer: indexer::Indexer,
    /// Check each sealed chunk against its checksum the first time a layer is used.
    verify_reads: bool,
}

impl MemoryStore {
    /// Creates a new store in `root`, which must not exist or be an empty directory (or one an
    /// interrupted create left: only an empty `LOCK`, an empty `docs/` and a temp manifest).
    /// Crash-safe: whenever the process dies inside, `root` afterwards is either not a store and
    /// create succeeds on it, or a complete, empty store (see `create`).
    pub fn create(root: &Path, config: StoreConfig) -> Result<Self> {
        config.validate()?;
        let manifest = Manifest::new(config.clone());
        let lock = create::create(root, &manifest)?;
        Ok(MemoryStore {
            root: root.to_owned(),
            config: Arc::new(config),
            manifest,
            lock: Some(lock),
            open: HashMap::new(),
            indexer: Default::default(),
            verify_reads: false,
        })
    }

    /// Opens an existing store. A read-write open takes the writer lock and fails at once if
    /// another handle holds it; read-only opens never block.
    pub fn open(root: &Path, readonly: bool) -> Result<Self> {
        if !root.exists() {
            return Err(Error::NotFound {
                path: root.to_owned(),
                reason: "no such file or directory".into(),
            });
        }
        if !root.is_dir() {
            return Err(Error::NotAStore(format!(
                "{} is a file, not a fot_mem store directory",
                root.display()
            )));
        }
        let manifest = Manifest::load(root)?;
        let lock = if readonly {
            None
        } else {
            Some(WriterLock::acquire(root)?)
        };
        // Re-read under the lock: a writer may have changed it between the two reads.
        let manifest = if lock.is_some() {
            Manifest::load(root)?
        } else {
            manifest
        };
        let store = MemoryStore {
            root: root.to_owned(),
            config: Arc::new(manifest.config.clone()),
            manifest,
            lock,
            open: HashMap::new(),
            indexer: Default::default(),
            verify_reads: false,
        };
        if !readonly {
            store.remove_orphans()?;
        }
        Ok(store)
    }

    /// With `true`, every sealed chunk is checked against its checksum the first time a read (or
    /// an append) touches its layer through this handle, and a mismatch is `Corrupt`; the open
    /// tail chunk of a layer has no checksum. Off by default: it reads each chunk once more.
    pub fn verify_reads(mut self, on: bool) -> Self {
        self.verify_reads = on;
        self
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The configuration fixed at creation.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// True for handles opened read-only.
    pub fn is_readonly(&self) -> bool {
        self.lock.is_none()
    }

    /// Re-reads the manifest (read-only handles), so documents another process added or deleted
    /// become visible. Layers already open keep serving what they mapped.
    pub fn refresh(&mut self) -> Result<()> {
        if self.is_readonly() {
            let manifest = Manifest::load(&self.root)?;
            if manifest.config != *self.config {
                return Err(Error::Corrupt(format!(
                    "the configuration in {} changed while the store was open",
                    self.root.display()
                )));
            }
            // Layers of deleted documents, and of documents deleted and re-created (which get a
            // new directory), are stale.
            let old = &self.manifest.documents;
            self.open
                .retain(|(doc, _), _| manifest.documents.get(doc) == old.get(doc));
            self.manifest = manifest;
        }
        Ok(())
    }

    /// Names of all documents, sorted.
    pub fn documents(&mut self) -> Result<Vec<String>> {
        self.refresh()?;
        Ok(self.manifest.documents.keys().cloned().collect())
    }

    /// True if the document exists (has had at least one append). Read-only handles re-read the
    /// manifest, so they see documents another process created or deleted.
    pub fn contains(&mut self, doc: &str) -> Result<bool> {
        self.refresh()?;
        Ok(self.manifest.documents.contains_key(doc))
    }

    /// `contains` for the hot path: re-reads the manifest only when the name is unknown.
    fn known(&mut self, doc: &str) -> Result<bool> {
        if !self.manifest.documents.contains_key(doc) {
            self.refresh()?;
        }
        Ok(self.manifest.documents.contains_key(doc))
    }

    /// Opens (or refreshes) the layer of an existing document; `None` if the document does not exist.
    pub(super) fn layer(&mut self, doc: &str, layer: u32) -> Result<Option<&mut LayerMemory>> {
        self.config.check_layer(layer)?;
        let key = (doc.to_owned(), layer);
        if self.is_readonly() {
            if let Some(l) = self.open.get_mut(&key) {
                let refreshed = l.refresh();
                // A writer that deleted (and perhaps re-created) the document removed its
                // directory, count files included: re-read the manifest, which drops the stale
                // layer, instead of reporting a count that went back as corruption.
                let doc_dir = self
                    .root
                    .join(DOCS_DIR)
                    .join(&self.manifest.documents[doc].dir);
                if refreshed.is_err() || !doc_dir.exists() {
                    self.refresh()?;
                    if self.open.contains_key(&key) {
                        refreshed?;
                    }
                }
            }
        }
        if !self.known(doc)? {
            return Ok(None);
        }
        if !self.open.contains_key(&key) {
            let strict = self.manifest.documents[doc].sealed();
            let doc_dir = self.layer_dir(doc, layer);
            let doc_dir = doc_dir.parent().expect("a layer directory has a parent");
            if !layer::real_dir(doc_dir, "a document directory")? {
                return Err(Error::Corrupt(format!(
                    "the directory {} of document {doc:?} is missing: its tokens are lost; \
                     restore it from a copy, or delete the document",
                    doc_dir.display()
                )));
            }
            let dir = self.layer_dir(doc, layer);
            let l = LayerMemory::open(&dir, Arc::clone(&self.config), !self.is_readonly(), strict)?;
            self.adopt(key.clone(), l);
        }
        let l = self.open.get_mut(&key).expect("opened above");
        if self.verify_reads {
            l.verify_sealed()?;
        }
        Ok(Some(l))
    }

    /// Keeps an opened layer; a writer builds what an earlier one left unindexed (it died, or
    /// closed first).
    fn adopt(&mut self, key: (String, u32), mut l: LayerMemory) {
        for job in l.index_jobs(0..l.sealed_spans()) {
            self.indexer.submit(job);
        }
        self.open.insert(key, l);
    }

    /// The directory of a document-layer (unique per incarnation of the document), or `None` when
    /// the document does not exist. Derived indexes (hnswlib's) are kept there.
    pub fn layer_path(&mut self, doc: &str, layer: u32) -> Result<Option<PathBuf>> {
        self.config.check_layer(layer)?;
        Ok(if self.known(doc)? {
            Some(self.layer_dir(doc, layer))
        } else {
            None
        })
    }

    fn layer_dir(&self, doc: &str, layer: u32) -> PathBuf {
        let entry = &self.manifest.documents[doc];
        self.root
            .join(DOCS_DIR)
            .join(&entry.dir)
            .join(format!("layer-{layer}"))
    }

    fn require_writable(&self, what: &str) -> Result<()> {
        if self.is_readonly() {
            Err(Error::ReadOnly(format!(
                "cannot {what}: the store at {} is open read-only",
                self.root.display()
            )))
        } else {
            Ok(())
        }
    }

    /// Committed tokens of a document-layer (0 for a document that does not exist yet).
    pub fn length(&mut self, doc: &str, layer: u32) -> Result<u64> {
        Ok(self.layer(doc, layer)?.map_or(0, |l| l.len()))
    }

    /// Queues an index build for every sealed span of every document that lacks one (writers of
    /// hnsw stores; spans seal and queue by themselves as appends fill them, so this is for
    /// stores written before, or by a process that died). Returns the spans queued.
    pub fn build_indexes(&mut self) -> Result<usize> {
        self.require_writable("build indexes")?;
        let mut queued = 0;
        for doc in self.documents()? {
            for layer in self.config.layers.clone() {
                if let Some(l) = self.layer(&doc, layer)? {
                    let jobs = l.index_jobs(0..l.sealed_spans());
                    queued += jobs.len();
                    for job in jobs {
                        self.indexer.submit(job);
                    }
                }
            }
        }
        Ok(queued)
    }

    /// Waits until every queued index build is done; fails with the first build error.
    pub fn wait_for_indexes(&mut self) -> Result<IndexStats> {
        self.indexer.wait()
    }

    /// What the index builder has done since this handle opened the store.
    pub fn index_stats(&self) -> IndexStats {
        self.indexer.stats()
    }

    /// Tokens of a document-layer that searches answer through hnsw graphs (the rest is scanned).
    pub fn indexed_tokens(&mut self, doc: &str, layer: u32) -> Result<u64> {
        Ok(self.layer(doc, layer)?.map_or(0, |l| {
            l.load_indexes();
            l.indexed_tokens()
        }))
    }

    /// Bytes of committed keys and values, over all documents and layers (or one document).
    pub fn nbytes(&mut self, doc: Option<&str>) -> Result<u64> {
        let docs: Vec<String> = match doc {
            Some(d) => vec![d.to_owned()],
            None => self.documents()?,
        };
        let mut total = 0;
        for d in &docs {
            for layer in self.config.layers.clone() {
                total += self.length(d, layer)?;
            }
        }
        Ok(total * self.config.token_bytes())
    }

    /// Removes document directories that no manifest entry names (left by a crash between
    /// creating a directory and committing the manifest, or during a delete).
    fn remove_orphans(&self) -> Result<()> {
        let docs = self.root.join(DOCS_DIR);
        let Ok(entries) = std::fs::read_dir(&docs) else {
            return Ok(());
        };
        let known: std::collections::HashSet<&str> = self
            .manifest
            .documents
            .values()
            .map(|e| e.dir.as_str())
            .collect();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !known.contains(name.to_string_lossy().as_ref()) {
                let path = entry.path();
                std::fs::remove_dir_all(&path).at(&path)?;
            }
        }
        manifest::remove_temp(&self.root);
        Ok(())
    }
}
