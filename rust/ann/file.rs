//! A span's index file: the graphs of every kv head of one sealed span, as little-endian u32 words,
//! memory-mapped when opened (nothing is rebuilt or copied). Written whole to a temporary name,
//! synced, then renamed, so the final name only ever holds a complete file.
//!
//! ```text
//! header  16 words: magic x2, version, kv_heads, dim, n, m, m0, ef_construction,
//!                   first token (lo, hi), linking, 0 x3, crc32 of header and directory
//! directory  per kv head 8 words: offset (lo, hi), words (lo, hi), entry, top, crc32 of section, 0
//! section    level 0: n x (1 + m0); then per upper level: count, nodes[count], count x (1 + m);
//!            then count, pivots[count];
//!            version 2 only: code stride s (bytes a row, a multiple of 4; 0: no codes), then
//!            if s > 0 scales[dim] (f32), codes (n x s bytes: int8 copies of the centred keys,
//!            for walking the graph)
//! ```
//!
//! Sections need not be contiguous: the writer pads with zero words before a section so that its
//! codes start on a 64-byte boundary of the file (and so of the mapping).
//!
//! Version 1 files (no codes) are still read: their graphs are walked on the stored keys.

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use memmap2::Mmap;

use super::graph::{Codes, Graph, GraphRef, Upper};
use super::params::BuildParams;
use crate::error::{Error, IoContext, Result};

const MAGIC: [u32; 2] = [u32::from_le_bytes(*b"FOTM"), u32::from_le_bytes(*b"HNSW")];
/// The version written; 1 is still read.
const VERSION: u32 = 2;
const HEADER: usize = 16;
const DIR: usize = 8;
/// Code rows start on a multiple of this many words (64 bytes, a cache line).
const CODE_ALIGN_WORDS: usize = 16;

/// Writes the graphs (one per kv head) of the span starting at token `first` to `path`.
pub fn write(
    path: &Path,
    first: u64,
    dim: u32,
    params: &BuildParams,
    graphs: &[Graph],
) -> Result<()> {
    let g0 = graphs.first();
    let (n, m, m0) = g0.map_or((0, 0, 0), |g| (g.n, g.m, g.m0));
    let mut words = vec![0u32; HEADER + DIR * graphs.len()];
    words[..12].copy_from_slice(&[
        MAGIC[0],
        MAGIC[1],
        VERSION,
        graphs.len() as u32,
        dim,
        n,
        m,
        m0,
        params.ef_construction as u32,
        first as u32,
        (first >> 32) as u32,
        params.linking.code(),
    ]);
    for (h, g) in graphs.iter().enumerate() {
        // Zero words before the section (readers find sections by the directory) put the code
        // rows on 64-byte boundaries in the mapping, so a 64-dimension code is one cache line
        // instead of two.
        if g.code_stride() > 0 {
            let before_codes = g.level0.len()
                + g.upper
                    .iter()
                    .map(|(n, a)| 1 + n.len() + a.len())
                    .sum::<usize>()
                + 1
                + g.pivots.len()
                + 1
                + g.scales.len();
            let pad = (CODE_ALIGN_WORDS - (words.len() + before_codes) % CODE_ALIGN_WORDS)
                % CODE_ALIGN_WORDS;
            words.resize(words.len() + pad, 0);
        }
        let start = words.len();
        words.extend_from_slice(&g.level0);
        for (nodes, adj) in &g.upper {
            words.push(nodes.len() as u32);
            words.extend_from_slice(nodes);
            words.extend_from_slice(adj);
        }
        words.push(g.pivots.len() as u32);
        words.extend_from_slice(&g.pivots);
        let stride = g.code_stride();
        words.push(stride as u32);
        if stride > 0 {
            words.extend(g.scales.iter().map(|s| s.to_bits()));
            words.extend(
                g.codes
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        let len = words.len() - start;
        let crc = crc32fast::hash(bytemuck::cast_slice(&words[start..]));
        let d = HEADER + DIR * h;
        words[d..d + 8].copy_from_slice(&[
            start as u32,
            (start as u64 >> 32) as u32,
            len as u32,
            (len as u64 >> 32) as u32,
            g.entry,
            g.upper.len() as u32,
            crc,
            0,
        ]);
    }
    words[HEADER - 1] = header_crc(&words, graphs.len());
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    crate::durable::replace(path, &tmp, bytemuck::cast_slice(&words))
}

fn header_crc(words: &[u32], heads: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(bytemuck::cast_slice(&words[..HEADER - 1]));
    h.update(bytemuck::cast_slice(&words[HEADER..HEADER + DIR * heads]));
    h.finalize()
}

/// Where one kv head's graph lies in the mapped words.
#[derive(Clone, Debug)]
struct Section {
    level0: Range<usize>,
    upper: Vec<(Range<usize>, Range<usize>)>,
    pivots: Range<usize>,
    /// Code stride (0: none), scales, codes.
    codes: (usize, Range<usize>, Range<usize>),
    entry: u32,
    words: Range<usize>,
    crc: u32,
}

/// An opened index file.
#[derive(Debug)]
pub struct SpanIndex {
    map: Mmap,
    pub first: u64,
    pub n: u32,
    pub dim: u32,
    m: u32,
    m0: u32,
    sections: Vec<Section>,
}

impl SpanIndex {
    /// Maps `path` and checks its header, directory and every section's bounds (not the section
    /// checksums: that would read the whole file; see [`SpanIndex::verify`]).
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).at(path)?;
        // SAFETY: index files are never written after their rename; a truncation by another
        // program is outside what any mapping can defend against.
        let map = unsafe { Mmap::map(&f) }.at(path)?;
        let bad = |why: &str| Error::Corrupt(format!("{}: {why}", path.display()));
        let words: &[u32] =
            bytemuck::try_cast_slice(&map[..]).map_err(|_| bad("not a whole number of words"))?;
        if words.len() < HEADER || words[..2] != MAGIC {
            return Err(bad("not a fot_mem hnsw index"));
        }
        let version = words[2];
        if version != 1 && version != VERSION {
            return Err(bad(&format!(
                "hnsw index version {version}, this fot_mem reads versions 1 and {VERSION} \
                 (the span is scanned until the index is rebuilt)"
            )));
        }
        let heads = words[3] as usize;
        if heads == 0
            || words.len() < HEADER + DIR * heads
            || words[HEADER - 1] != header_crc(words, heads)
        {
            return Err(bad("header checksum mismatch"));
        }
        let (n, m, m0, dim) = (words[5], words[6], words[7], words[4]);
        let mut sections = Vec::with_capacity(heads);
        for h in 0..heads {
            let d = &words[HEADER + DIR * h..HEADER + DIR * (h + 1)];
            let start = (d[0] as u64 | (d[1] as u64) << 32) as usize;
            let len = (d[2] as u64 | (d[3] as u64) << 32) as usize;
            let end = start
                .checked_add(len)
                .filter(|&e| e <= words.len())
                .ok_or_else(|| bad("section out of bounds"))?;
            let mut at = start;
            let mut take = |count: usize| -> Result<Range<usize>> {
                let r = at..at
                    .checked_add(count)
                    .filter(|&e| e <= end)
                    .ok_or_else(|| bad("graph out of bounds"))?;
                at = r.end;
                Ok(r)
            };
            let level0 = take(n as usize * (m0 as usize + 1))?;
            let mut upper = Vec::new();
            for _ in 0..d[5] {
                let count = words[take(1)?.start] as usize;
                let nodes = take(count)?;
                let adj = take(
                    count
                        .checked_mul(m as usize + 1)
                        .ok_or_else(|| bad("level too large"))?,
                )?;
                upper.push((nodes, adj));
            }
            let count = words[take(1)?.start] as usize;
            let pivots = take(count)?;
            let mut codes = (0, 0..0, 0..0);
            if version >= 2 {
                let stride = words[take(1)?.start] as usize;
                if stride > 0 {
                    if !stride.is_multiple_of(4) || stride < dim as usize {
                        return Err(bad("bad code stride"));
                    }
                    let scales = take(dim as usize)?;
                    let bytes = take(
                        (n as usize)
                            .checked_mul(stride / 4)
                            .ok_or_else(|| bad("codes too large"))?,
                    )?;
                    codes = (stride, scales, bytes);
                }
            }
            if (n > 0 && d[4] >= n) || at != end {
                return Err(bad("inconsistent graph directory"));
            }
            sections.push(Section {
                level0,
                upper,
                pivots,
                codes,
                entry: d[4],
                words: start..end,
                crc: d[6],
            });
        }
        Ok(SpanIndex {
            first: words[9] as u64 | (words[10] as u64) << 32,
            n,
            dim: words[4],
            m,
            m0,
            sections,
            map,
        })
    }

    fn words(&self) -> &[u32] {
        bytemuck::cast_slice(&self.map[..])
    }

    /// kv heads held.
    pub fn heads(&self) -> usize {
        self.sections.len()
    }

    /// The graph of `head` (< `heads()`).
    pub fn graph(&self, head: usize) -> GraphRef<'_> {
        let w = self.words();
        let s = &self.sections[head];
        GraphRef {
            n: self.n,
            m: self.m,
            m0: self.m0,
            entry: s.entry,
            level0: &w[s.level0.clone()],
            upper: s
                .upper
                .iter()
                .map(|(nodes, adj)| Upper {
                    nodes: &w[nodes.clone()],
                    adj: &w[adj.clone()],
                })
                .collect(),
            pivots: &w[s.pivots.clone()],
            codes: (s.codes.0 > 0).then(|| Codes {
                stride: s.codes.0,
                bytes: bytemuck::cast_slice(&w[s.codes.2.clone()]),
                scales: bytemuck::cast_slice(&w[s.codes.1.clone()]),
            }),
        }
    }

    /// Reads every section and checks its checksum.
    pub fn verify(&self, path: &Path) -> Result<()> {
        for (h, s) in self.sections.iter().enumerate() {
            if crc32fast::hash(bytemuck::cast_slice(&self.words()[s.words.clone()])) != s.crc {
                return Err(Error::Corrupt(format!(
                    "{}: the graph of kv head {h} fails its checksum",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}
