//! Chosen shapes: every dtype, dim and query count; key segments of long documents; batches of
//! documents of different lengths.

use super::data::*;
use super::problem::*;
use super::*;

#[test]
fn every_dtype_dim_and_query_count() {
    let _guard = serial();
    let mut rng = Rng(17);
    for dtype in DTYPES {
        for dim in DIMS {
            // Query rows per kv head, grouped by two where they divide.
            for rows in [1usize, 2, 3, 4, 5, 9, 64] {
                let group = if rows % 2 == 0 { 2 } else { 1 };
                let s = Spec {
                    kv_heads: 2,
                    group,
                    ..spec(dtype, dim, 481, 100, rows / group, 32)
                };
                s.build(&mut rng).check(&s.label());
            }
        }
    }
}

#[test]
fn long_documents_split_into_key_segments() {
    // Past 2 x 8192 keys and with few query rows, the bf16 kernel splits the keys of one head
    // among tasks and merges their candidates.
    let _guard = serial();
    let mut rng = Rng(23);
    for dtype in DTYPES {
        // k at and above the length: every key of every segment must come back.
        for (q, k) in [
            (1, 32),
            (5, 32),
            (9, 128),
            (300, 1),
            (1, 20_011),
            (6, 20_012),
        ] {
            let s = spec(dtype, 3, 20_011, 4096, q, k);
            s.build(&mut rng).check(&s.label());
        }
        let s = spec(dtype, 17, 40_000, 7, 6, 32);
        s.build(&mut rng).check(&s.label());
    }
}

#[test]
fn batches_of_documents_of_different_lengths() {
    let _guard = serial();
    let mut rng = Rng(29);
    for dtype in DTYPES {
        for (q, group) in [(1, 1), (2, 2), (5, 1), (9, 4), (64, 2)] {
            for k in [1, 32, 128] {
                let s = Spec {
                    lengths: vec![Some(1000), None, Some(15), Some(0), Some(4097), Some(130)],
                    kv_heads: 2,
                    group,
                    q,
                    ..spec(dtype, 33, 0, 100, q, k)
                };
                s.build(&mut rng).check(&s.label());
            }
        }
    }
}
