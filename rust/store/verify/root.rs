//! The store level: the manifest, the entries of the store directory, and the walk over the
//! document directories.

use std::path::Path;

use super::{message, sorted_entries, Verifier};
use crate::error::{Error, Result};
use crate::store::lock::LOCK_FILE;
use crate::store::manifest::{Manifest, FORMAT_VERSION, MANIFEST_FILE};
use crate::store::DOCS_DIR;

impl Verifier<'_> {
    /// The manifest, or `None` when it is unusable (reported). A manifest that fails its own
    /// checks but whose JSON still holds a valid configuration is used for the rest of the walk.
    pub(super) fn manifest(&mut self, path: &Path, has_docs: bool) -> Result<Option<Manifest>> {
        self.count_bytes(std::fs::metadata(path).ok().as_ref());
        let err = match Manifest::load_unchecked(self.root) {
            Ok(m) => return Ok(Some(self.check_document_dirs(path, m))),
            Err(e) => e,
        };
        match &err {
            // Some other program's manifest.json in a directory that has no docs either.
            Error::NotAStore(_) if !has_docs => return Err(err),
            Error::Version { found, .. } => {
                self.error(
                    path,
                    format!(
                        "format version {found} (or a damaged header); this build reads versions 1 to \
                         {FORMAT_VERSION}: nothing else was checked"
                    ),
                );
                return Ok(None);
            }
            _ => {}
        }
        let best_effort = std::fs::read(path).ok().and_then(|text| {
            let body = &text[text.iter().position(|&b| b == b'\n')? + 1..];
            let m: Manifest = serde_json::from_slice(body).ok()?;
            m.config.validate().ok().map(|()| m)
        });
        let tail = if best_effort.is_some() {
            "; its JSON still parses, so the rest of this report trusts it"
        } else {
            "; the configuration is unknown, so chunk sizes and index shapes were not checked"
        };
        self.error(path, format!("{}{tail}", message(&err, path)));
        Ok(best_effort.map(|m| self.check_document_dirs(path, m)))
    }

    /// Documents the store refuses to trust (a directory that could lead outside the store, one
    /// shared or reusable, an unknown layout) are reported and left out of the walk.
    pub(super) fn check_document_dirs(&mut self, path: &Path, mut m: Manifest) -> Manifest {
        for (name, why) in m.document_problems() {
            m.documents.remove(&name);
            self.error(path, format!("{why}; stores refuse to open"));
        }
        m
    }

    pub(super) fn root_entries(&mut self) {
        let entries = match sorted_entries(self.root) {
            Ok(e) => e,
            Err(e) => {
                let root = self.root.to_owned();
                return self.error(&root, format!("cannot list the store directory: {e}"));
            }
        };
        for (name, path, meta) in entries {
            let is_file = meta.as_ref().is_some_and(|m| m.is_file());
            match name.as_str() {
                MANIFEST_FILE | DOCS_DIR => {}
                LOCK_FILE => self.count_bytes(meta.as_ref()),
                _ if name == format!("{MANIFEST_FILE}.tmp") && is_file => {
                    self.count_bytes(meta.as_ref());
                    self.warn(
                        &path,
                        "temporary manifest left by a writer that died before renaming it (or \
                         one being written now); the next writer removes it"
                            .into(),
                    );
                }
                _ => {
                    self.count_bytes(meta.as_ref().filter(|m| m.is_file()));
                    self.warn(&path, "unknown file, not part of a fot_mem store".into());
                }
            }
        }
    }

    pub(super) fn documents(&mut self, manifest: Option<&Manifest>) {
        let docs = self.root.join(DOCS_DIR);
        let entries = match sorted_entries(&docs) {
            Ok(e) => e,
            Err(e) => {
                let has_docs = manifest.is_some_and(|m| !m.documents.is_empty());
                let msg = format!("cannot list the documents directory: {e}");
                if has_docs || e.kind() != std::io::ErrorKind::NotFound {
                    self.error(&docs, msg);
                } else {
                    self.warn(&docs, msg);
                }
                Vec::new()
            }
        };
        let config = manifest.map(|m| &m.config);
        match manifest {
            Some(m) => {
                for (name, entry) in &m.documents {
                    self.report.checked.documents += 1;
                    let dir = docs.join(&entry.dir);
                    if !dir.is_dir() {
                        self.error(&dir, format!("directory of document {name:?} is missing"));
                        // Its layers count as checked: they are absent, which the error says.
                        self.report.checked.layers += m.config.layers.len() as u64;
                        continue;
                    }
                    let strict = entry.sealed();
                    self.guarded(&dir, |v| v.document(&dir, config, strict));
                }
                let known: std::collections::HashSet<&str> =
                    m.documents.values().map(|e| e.dir.as_str()).collect();
                for (name, path, meta) in &entries {
                    if !known.contains(name.as_str()) {
                        let what = if meta.as_ref().is_some_and(|m| m.is_dir()) {
                            "document directory that the manifest does not name (left by a \
                             crash or an interrupted delete, or a document being created now); \
                             the next writer removes it"
                        } else {
                            "unknown file in the documents directory"
                        };
                        self.count_bytes(meta.as_ref().filter(|m| m.is_file()));
                        self.warn(path, what.into());
                    }
                }
            }
            None => {
                // No usable manifest: check what each document directory holds on its own.
                for (_, path, meta) in &entries {
                    if meta.as_ref().is_some_and(|m| m.is_dir()) {
                        self.report.checked.documents += 1;
                        self.guarded(path, |v| v.document(path, None, false));
                    } else {
                        self.count_bytes(meta.as_ref());
                        self.warn(path, "unknown file in the documents directory".into());
                    }
                }
            }
        }
    }
}
