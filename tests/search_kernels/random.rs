//! Random problems, every kernel against the f64 scan.

use super::data::*;
use super::problem::*;
use super::*;

#[test]
fn kernels_match_the_f64_scan_on_random_problems() {
    let _guard = serial();
    let mut rng = Rng(0x5eed);
    // Fewer problems in an unoptimised build (the scan is ~30x slower there).
    let (cases, budget) = if cfg!(debug_assertions) {
        (60, 2_000_000)
    } else {
        (400, 12_000_000)
    };
    let before = stats();
    let mut done = 0;
    let mut i = 0;
    while done < cases {
        let spec = random_spec(&mut rng, i);
        i += 1;
        if spec.cost() > budget {
            continue;
        }
        let label = format!("case {done}: {}", spec.label());
        spec.build(&mut rng).check(&label);
        done += 1;
    }
    let after = stats();
    if has_avx512_bf16() {
        // The packed bf16 path ran, and mostly certified its candidates: the tests above did not
        // only exercise its f32 fallback.
        let rows = after.rows - before.rows;
        let fallback = after.fallback_rows - before.fallback_rows;
        assert!(rows > 1000, "only {rows} rows took the packed bf16 path");
        assert!(
            fallback * 2 < rows,
            "{fallback} of {rows} packed rows fell back"
        );
    }
}
