//! The parameters a graph is built with (also recorded in its index file).

/// What "near" means while linking the graph (searches always rank by inner product).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Linking {
    /// Angle between keys (keys normalised): every direction stays reachable whatever the norms,
    /// so recall keeps rising with `ef`, but climbing to the largest inner products is slow.
    Angular,
    /// Raw inner product, as hnswlib's "ip" space: fast, but recall plateaus when norms vary.
    InnerProduct,
    /// The classic MIPS-to-NN reduction (one extra coordinate `sqrt(R^2 - |k|^2)`).
    Reduction,
    /// The reduction's links plus, on level 0, links chosen by raw inner product among the same
    /// candidates: the first keep every key reachable, the second lead queries up to the keys
    /// of largest inner product. The default: on real attention keys it reaches recall 0.95 at
    /// the fewest candidates, and on clustered keys the highest recall (`InnerProduct` is faster
    /// below ~0.93); benches/compare/compare_ann.py has the figures.
    #[default]
    Hybrid,
}

impl Linking {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "angular" => Some(Linking::Angular),
            "ip" => Some(Linking::InnerProduct),
            "reduction" => Some(Linking::Reduction),
            "hybrid" => Some(Linking::Hybrid),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Linking::Angular => "angular",
            Linking::InnerProduct => "ip",
            Linking::Reduction => "reduction",
            Linking::Hybrid => "hybrid",
        }
    }

    pub fn code(self) -> u32 {
        self as u32
    }
}

/// Graph parameters: `m` links per node (2m on level 0), `ef_construction` candidates searched
/// per insertion, how links are chosen, and the seed of levels and insertion order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildParams {
    pub m: usize,
    pub ef_construction: usize,
    pub linking: Linking,
    pub seed: u64,
}
