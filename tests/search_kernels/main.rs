//! The two exact kernels against each other and against a naive f64 scan, with keys held in memory
//! (no store): every storage dtype, odd dims, lengths and block sizes that are multiples of nothing,
//! k at and above the length, grouped heads, batches of documents of different lengths, query counts
//! on both sides of the small path, key segments of long documents, and data built to make the
//! bf16 kernel fall back (near-ties, key norms spread over six decades) or to sit right at its
//! error bound (scores apart by about the bf16 rounding error). Where this CPU lacks AVX-512 BF16,
//! `search_with` runs the portable kernel for both, which is still checked against the scan.
//!
//! What "correct" means for a top-k in f32: the f64 score of every key is known, and so is a bound
//! on the f32 rounding error of its dot product in any summation order,
//! `err = (dim + 2) * eps * sum |q_i k_i|`. A kernel may order two keys either way only when their
//! scores are within the sum of their bounds; everywhere else its answer is determined, and it is
//! checked exactly.

mod adversarial;
mod data;
mod known_bugs;
mod problem;
mod random;
mod shapes;

use std::sync::{Mutex, MutexGuard};

use fot_mem::search::{
    has_avx512_bf16, has_avx512_vnni, search_with, stats, ExactKernel, KeyBlock, KeySource,
    SearchShape,
};
use fot_mem::{Dtype, Elements, SearchResult};
use half::{bf16, f16};

/// The fast kernel's fallback counter is process-wide: tests that read it, and tests that move
/// it, take this lock, so one test's count is not another's.
static COUNTERS: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    COUNTERS.lock().unwrap_or_else(|e| e.into_inner())
}

const DTYPES: [Dtype; 3] = [Dtype::Float32, Dtype::Float16, Dtype::Bfloat16];

/// The fast kernels (bf16 screen on AVX-512 or AMX tiles, int8 screen), each checked against the
/// scan and the portable kernel; where the CPU lacks AMX, `amx-bf16` runs the AVX-512 BF16 screen,
/// and where it lacks AVX-512 BF16 (or VNNI), `search_with` runs the portable kernel instead.
const FAST: [(&str, ExactKernel); 3] = [
    ("avx512-bf16", ExactKernel::Avx512Bf16),
    ("amx-bf16", ExactKernel::AmxBf16),
    ("avx512-vnni-int8", ExactKernel::Avx512Vnni),
];

/// How many of the fast kernels this CPU runs (each counts its rows in `stats`).
fn fast_kernels() -> u64 {
    2 * has_avx512_bf16() as u64 + has_avx512_vnni() as u64
}
