//! Chunk files: presence and size for the committed count, their checksum sidecars, and (deep)
//! the finiteness of every committed row.

use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Verifier, LISTED, SCAN_BLOCK};
use crate::dtype::Dtype;
use crate::store::config::StoreConfig;
use crate::store::seal;

/// The warning for chunk `i`'s sidecar, `what` (missing, or why it is unreadable), when the last
/// commit sealed the chunk.
pub(super) fn recent_missing(i: u64, what: &str) -> String {
    format!(
        "{what}: chunk {i} was sealed by the last commit and the writer died before writing its \
         checksum (or is writing it now); the next writer writes it"
    )
}

/// CRC-32 of the files' bytes in order, read in blocks (`seal::checksum` of whole chunks).
pub(super) fn hash_files(paths: &[&PathBuf]) -> std::io::Result<u32> {
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; SCAN_BLOCK];
    for p in paths {
        let mut f = File::open(p)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(h.finalize())
}

/// True if any element of `bytes` (little endian, `dtype`) is NaN or infinite; returns its index.
pub(super) fn first_non_finite(dtype: Dtype, bytes: &[u8]) -> Option<usize> {
    match dtype {
        Dtype::Float32 => bytes.chunks_exact(4).position(|b| {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000
        }),
        Dtype::Float16 => bytes
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00),
        Dtype::Bfloat16 => bytes
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80),
    }
}

impl Verifier<'_> {
    pub(super) fn chunks(
        &mut self,
        dir: &Path,
        config: Option<&StoreConfig>,
        count: Option<u64>,
        keys: &BTreeMap<u64, (PathBuf, Option<Metadata>)>,
        values: &BTreeMap<u64, (PathBuf, Option<Metadata>)>,
    ) {
        for (_, meta) in keys.values().chain(values.values()) {
            self.count_bytes(meta.as_ref());
        }
        let (Some(c), Some(count)) = (config, count) else {
            return; // sizes unknown without a configuration, or extent unknown without a count
        };
        let ct = c.chunk_tokens as u64;
        let needed = count.div_ceil(ct.max(1));
        for (files, ext, dim) in [(keys, "keys", c.head_dim), (values, "values", c.value_dim)] {
            let present = files.range(..needed).count() as u64;
            let mut listed = 0;
            for i in 0..needed {
                if listed == LISTED || listed as u64 == needed - present {
                    break;
                }
                if !files.contains_key(&i) {
                    listed += 1;
                    self.error(
                        &dir.join(format!("{i:06}.{ext}")),
                        format!(
                            "missing, but the commit count ({count} tokens) says chunk {i} holds \
                             tokens"
                        ),
                    );
                }
            }
            if needed - present > listed as u64 {
                self.error(
                    dir,
                    format!(
                        "{} more .{ext} chunk files that hold committed tokens are missing",
                        needed - present - listed as u64
                    ),
                );
            }
            let want = c.chunk_bytes(dim);
            for (&i, (path, meta)) in files.range(..needed) {
                let len = meta.as_ref().map_or(0, |m| m.len());
                if len != want {
                    self.error(
                        path,
                        format!(
                            "has {len} bytes, expected {want} (kv_heads {} x chunk_tokens {ct} x \
                             {ext} dim {dim} x {} bytes): truncated or damaged, readers refuse \
                             this layer",
                            c.kv_heads,
                            c.dtype.size()
                        ),
                    );
                } else if self.deep {
                    let rows = (count - i * ct).min(ct);
                    self.scan_rows(path, c, dim, i * ct, rows);
                }
            }
            let stray: Vec<_> = files.range(needed..).collect();
            for (i, (path, _)) in stray.iter().take(LISTED) {
                self.warn(
                    path,
                    format!(
                        "chunk {i} holds no committed token (left by an append that failed or \
                         died, or one in progress); the next append reuses it"
                    ),
                );
            }
            if stray.len() > LISTED {
                self.warn(
                    dir,
                    format!(
                        "{} more .{ext} chunk files past the committed count",
                        stray.len() - LISTED
                    ),
                );
            }
        }
        // Over the files present, never over 0..needed (a damaged count can be huge).
        let both = keys.range(..needed).filter(|(i, _)| values.contains_key(i));
        self.report.checked.chunks += both.count() as u64;
    }

    /// Chunk checksums: every sealed chunk's sidecar must be intact and, with `deep`, match the
    /// chunk. A sealed chunk without one is an error in a `strict` document and a warning (its
    /// contents cannot be checked) in a format-1 one; sidecars of unsealed chunks are leftovers.
    /// Except: the chunks sealed by the last commit (from the count `prev` of the commit before
    /// it) get their sidecar right after that commit, so a missing or torn one there is a warning
    /// (the writer died in between, or is at work; the next writer writes it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn checksums(
        &mut self,
        dir: &Path,
        config: Option<&StoreConfig>,
        count: Option<u64>,
        prev: u64,
        keys: &BTreeMap<u64, (PathBuf, Option<Metadata>)>,
        values: &BTreeMap<u64, (PathBuf, Option<Metadata>)>,
        sums: &BTreeMap<u64, PathBuf>,
        strict: bool,
    ) {
        let (Some(c), Some(count)) = (config, count) else {
            return;
        };
        let sealed = count / c.chunk_tokens as u64;
        let recent = (prev / c.chunk_tokens as u64).min(sealed)..sealed;
        let mut unchecked = 0u64;
        for i in 0..sealed {
            let Some(path) = sums.get(&i) else {
                if strict && recent.contains(&i) {
                    self.warn(&seal::path(dir, i as usize), recent_missing(i, "missing"));
                    continue;
                }
                if strict && unchecked < LISTED as u64 {
                    self.error(
                        &seal::path(dir, i as usize),
                        format!("missing: chunk {i} is sealed, so its checksum should be here"),
                    );
                }
                unchecked += 1;
                continue;
            };
            let want = match std::fs::read(path) {
                Ok(b) => seal::decode(&b, i as usize),
                Err(e) => Err(format!("cannot read: {e}")),
            };
            let want = match want {
                Ok(w) => w,
                Err(why) if strict && recent.contains(&i) => {
                    self.warn(path, recent_missing(i, &why));
                    continue;
                }
                Err(why) => {
                    self.error(path, why);
                    continue;
                }
            };
            self.report.checked.checksums += 1;
            let (Some((kp, km)), Some((vp, vm))) = (keys.get(&i), values.get(&i)) else {
                continue; // a missing chunk file is reported by `chunks`
            };
            let size = |m: &Option<Metadata>| m.as_ref().map_or(0, |m| m.len());
            if size(km) != c.chunk_bytes(c.head_dim) || size(vm) != c.chunk_bytes(c.value_dim) {
                continue; // so is a wrong size
            }
            if self.deep {
                match hash_files(&[kp, vp]) {
                    Ok(got) => {
                        if got != want {
                            self.error(
                                kp,
                                format!(
                                    "chunk {i} (this file and its .values) fails its checksum \
                                     (recorded {want:08x}, data hashes to {got:08x}): altered \
                                     after it was committed"
                                ),
                            );
                        }
                    }
                    Err(e) => self.error(kp, format!("cannot read chunk {i}: {e}")),
                }
            }
        }
        if strict && unchecked > LISTED as u64 {
            self.error(
                dir,
                format!(
                    "{} more sealed chunks have no checksum file",
                    unchecked - LISTED as u64
                ),
            );
        } else if !strict && unchecked > 0 {
            self.warn(
                dir,
                format!(
                    "no checksum for {unchecked} sealed chunks (written before format 2): their \
                     contents cannot be checked"
                ),
            );
        }
        for (&i, path) in sums.range(sealed..).take(LISTED) {
            self.warn(
                path,
                format!(
                    "checksum of chunk {i}, which is not sealed (written before its commit by an \
                     older fot_mem whose append died, or by a writer that committed during this \
                     walk); the next seal replaces it"
                ),
            );
        }
    }

    /// Deep check of one chunk file: the committed rows of every head must be finite.
    pub(super) fn scan_rows(
        &mut self,
        path: &Path,
        c: &StoreConfig,
        dim: u32,
        first: u64,
        rows: u64,
    ) {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => return self.error(path, format!("cannot read: {e}")),
        };
        let es = c.dtype.size();
        let row = dim as usize * es;
        let block = (SCAN_BLOCK / row).max(1) * row;
        let mut buf = vec![0u8; block];
        for h in 0..c.kv_heads as usize {
            let start = (h * c.chunk_tokens as usize * row) as u64;
            let len = rows as usize * row;
            let mut done = 0;
            while done < len {
                let n = block.min(len - done);
                if let Err(e) = file.read_exact_at(&mut buf[..n], start + done as u64) {
                    return self.error(path, format!("cannot read: {e}"));
                }
                if let Some(at) = first_non_finite(c.dtype, &buf[..n]) {
                    let token = first + ((done + at * es) / row) as u64;
                    return self.error(
                        path,
                        format!(
                            "kv head {h} holds a NaN or infinity at token {token}; the store never \
                             writes one, so the file is damaged"
                        ),
                    );
                }
                done += n;
            }
        }
    }
}
