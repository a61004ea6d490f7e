//! The query rows of one (slot, kv head) as a screen reads them: rounded to bf16 pairs or int8
//! quads, with the norms that bound the rounding error.

use super::super::SearchShape;
use super::{int8, pack};

/// How keys are screened before the f32 rescoring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    /// bf16 pairs, VDPBF16PS.
    Bf16,
    /// bf16 pairs, TDPBF16PS on AMX tiles (dims that are multiples of 32; others take `Bf16`).
    Amx,
    /// `Amx` on emulated tiles (tests, on CPUs without AMX).
    #[cfg(test)]
    AmxEmulated,
    /// int8 quads with a scale per key and per query row, VPDPBUSD (AVX-512 VNNI).
    Int8,
}

/// The query rows searched against one (slot, kv head): f32 rows, their rounded forms, and the
/// norms that bound the rounding error.
pub(super) struct QueryRows {
    pub(super) rows: Vec<f32>,
    pub(super) pairs: Vec<u32>,
    /// The int8 form (int8 screen only).
    pub(super) quant: Option<int8::Quantised>,
    /// `|q - q^|` per row (q^ the rounded query as the screen reads it).
    pub(super) delta: Vec<f64>,
    /// `|q^|` per row.
    pub(super) norm: Vec<f64>,
}

pub(super) fn query_rows(
    queries: &[f32],
    shape: &SearchShape,
    slot: usize,
    kv_head: usize,
    screen: Screen,
) -> QueryRows {
    let (dim, group) = (shape.dim, shape.group());
    let m = shape.q * group;
    let rows = shape.gather_rows(queries, slot, kv_head, 0..m);
    if screen == Screen::Int8 {
        let quant = int8::quantise_queries(&rows, dim);
        return QueryRows {
            rows,
            pairs: Vec::new(),
            delta: quant.delta.clone(),
            norm: quant.norm.clone(),
            quant: Some(quant),
        };
    }
    let mut pairs = Vec::new();
    pack::pack_queries(&rows, dim, &mut pairs);
    let d2 = dim.div_ceil(2);
    let (mut delta, mut norm) = (vec![0f64; m], vec![0f64; m]);
    for r in 0..m {
        let (mut dd, mut nn) = (0f64, 0f64);
        for i in 0..dim {
            let rounded = pack::pair_element(pairs[r * d2 + i / 2], i % 2) as f64;
            dd += (rows[r * dim + i] as f64 - rounded).powi(2);
            nn += rounded * rounded;
        }
        delta[r] = dd.sqrt();
        norm[r] = nn.sqrt();
    }
    QueryRows {
        rows,
        pairs,
        quant: None,
        delta,
        norm,
    }
}
