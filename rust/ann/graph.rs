//! The layout of one HNSW graph, shared by the builder (owned vectors) and by indexes opened from
//! disk (borrowed from a mapping): level 0 holds every node, `[n][1 + m0]` words (a neighbour
//! count, then the slots); each upper level `l` lists its nodes sorted, with `[nodes][1 + m]`
//! words of adjacency; then the pivots. Readers clamp counts and skip out-of-range ids, so a damaged file degrades
//! results instead of reading out of bounds.

/// One upper level: its nodes (sorted ids) and their adjacency rows.
#[derive(Clone, Copy, Debug)]
pub struct Upper<'a> {
    pub nodes: &'a [u32],
    pub adj: &'a [u32],
}

/// Int8 copies of the span's keys for walking the graph (format 2): per node `stride` bytes, the
/// centred key divided by a scale per dimension (`key_j - mean_j ~ scale_j * code_j`, codes in
/// -127..=127). A query ranks nodes by `(query * scale) . code`, the inner product up to a
/// constant per query, at a quarter of the memory traffic of f32 keys (one cache line for 64
/// dimensions); the final candidates are rescored from the stored keys.
#[derive(Clone, Copy, Debug)]
pub struct Codes<'a> {
    pub stride: usize,
    pub bytes: &'a [u8],
    /// One per dimension.
    pub scales: &'a [f32],
}

impl Codes<'_> {
    /// The code row of `node` (callers keep `node < n`; the slices hold `n` rows).
    #[inline]
    pub fn row(&self, node: u32) -> *const u8 {
        self.bytes[node as usize * self.stride..].as_ptr()
    }
}

/// A graph to search: borrowed words in the layout above.
#[derive(Clone, Debug)]
pub struct GraphRef<'a> {
    pub n: u32,
    pub m: u32,
    pub m0: u32,
    pub entry: u32,
    pub level0: &'a [u32],
    /// Levels 1, 2, ... (index `l - 1`).
    pub upper: Vec<Upper<'a>>,
    /// Nodes spread over the span (farthest-point sample): every query also starts from the
    /// best of them, so small clusters far from the rest are reached.
    pub pivots: &'a [u32],
    /// Traversal codes (absent in format-1 files: keys are then read from the store).
    pub codes: Option<Codes<'a>>,
}

impl GraphRef<'_> {
    /// The highest level.
    pub fn top(&self) -> usize {
        self.upper.len()
    }

    /// Neighbours of `node` at `level` (empty when the node is not on that level).
    #[inline]
    pub fn neighbors(&self, level: usize, node: u32) -> &[u32] {
        if level == 0 {
            row(self.level0, self.m0 as usize, node as usize)
        } else {
            let up = &self.upper[level - 1];
            match up.nodes.binary_search(&node) {
                Ok(slot) => row(up.adj, self.m as usize, slot),
                Err(_) => &[],
            }
        }
    }
}

impl GraphRef<'_> {
    /// Pulls the level-0 row of `node` toward the cache: a node that enters the pool is likely
    /// to be expanded soon, and its row would otherwise be a cold miss then.
    #[inline]
    pub fn prefetch_row(&self, node: u32) {
        let w = self.m0 as usize + 1;
        if let Some(r) = self.level0.get(node as usize * w..) {
            crate::simd::prefetch(r.as_ptr().cast(), w * 4);
        }
    }
}

/// Slot row `i` of an adjacency array with `cap` slots per row, clamped to what exists.
#[inline]
fn row(adj: &[u32], cap: usize, i: usize) -> &[u32] {
    let start = i * (cap + 1);
    match adj.get(start..start + cap + 1) {
        Some(r) => &r[1..1 + (r[0] as usize).min(cap)],
        None => &[],
    }
}

/// Level of node `id` from a hash: geometric with ratio `1/m`, the HNSW distribution.
pub fn level_of(id: u32, m: usize, seed: u64) -> usize {
    let u = (mix(seed ^ id as u64) >> 11) as f64 / (1u64 << 53) as f64;
    let ml = 1.0 / (m.max(2) as f64).ln();
    ((-(1.0 - u).ln()) * ml).floor().min(16.0) as usize
}

/// SplitMix64's finaliser: a good, cheap hash of one word.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A built graph, owning its words (the layout of [`GraphRef`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    pub n: u32,
    pub m: u32,
    pub m0: u32,
    pub entry: u32,
    pub level0: Vec<u32>,
    /// Per upper level: sorted nodes and adjacency.
    pub upper: Vec<(Vec<u32>, Vec<u32>)>,
    /// Seed nodes spread over the span.
    pub pivots: Vec<u32>,
    /// Traversal codes (`n x stride` bytes; empty for none) and the scale of each dimension.
    pub codes: Vec<u8>,
    pub scales: Vec<f32>,
}

impl Graph {
    pub fn as_ref(&self) -> GraphRef<'_> {
        GraphRef {
            n: self.n,
            m: self.m,
            m0: self.m0,
            entry: self.entry,
            level0: &self.level0,
            upper: self
                .upper
                .iter()
                .map(|(nodes, adj)| Upper { nodes, adj })
                .collect(),
            pivots: &self.pivots,
            codes: (!self.scales.is_empty()).then(|| Codes {
                stride: self.code_stride(),
                bytes: &self.codes,
                scales: &self.scales,
            }),
        }
    }

    /// Bytes per code row (0 without codes).
    pub fn code_stride(&self) -> usize {
        if self.n == 0 {
            0
        } else {
            self.codes.len() / self.n as usize
        }
    }
}
