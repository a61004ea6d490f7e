"""Reference implementations the tests compare fot_mem against: rounding to the storage dtype,
brute-force inner-product top-k in float64, and gather. Pure numpy (ml_dtypes is not needed: the
bfloat16 rounding is written out here and cross-checked against ml_dtypes in test_store.py)."""

from __future__ import annotations

import numpy as np

DTYPES = ("float32", "float16", "bfloat16")
ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even. Finite inputs only."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """What the store keeps for input `x`: the Python layer narrows to float32 first, the core then
    rounds to the storage dtype. Returned widened to float32 (exact)."""
    x32 = np.asarray(x, dtype=np.float32)
    if dtype == "float32":
        return x32.copy()
    if dtype == "float16":
        return x32.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        return bf16_to_f32(bf16_bits(x32))
    raise ValueError(dtype)


def random_kv(
    rng: np.random.Generator, n: int, kv_heads: int, head_dim: int, value_dim: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    value_dim = head_dim if value_dim is None else value_dim
    keys = rng.standard_normal((n, kv_heads, head_dim), dtype=np.float32)
    values = rng.standard_normal((n, kv_heads, value_dim), dtype=np.float32)
    return keys, values


def oracle_scores(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Exact scores [q, heads, n] (float64) of queries [q, heads, d] against stored keys
    [n, kv_heads, d]; query head h reads kv head h // (heads // kv_heads)."""
    heads = queries.shape[1]
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    k_per_head = keys.astype(np.float64)[:, np.arange(heads) // group, :]  # [n, heads, d]
    return np.einsum("qhd,nhd->qhn", queries.astype(np.float64), k_per_head)


def score_tolerance(keys: np.ndarray, queries: np.ndarray) -> float:
    """A bound on the float32 rounding error of one dot product (|q|.|k| * d * eps, doubled)."""
    if keys.size == 0 or queries.size == 0:
        return 1e-6
    d = keys.shape[-1]
    worst = float(oracle_scores(np.abs(keys), np.abs(queries)).max())
    return 1e-6 + 2 * d * float(np.finfo(np.float32).eps) * worst


def check_search(
    scores: np.ndarray,
    ids: np.ndarray,
    keys: np.ndarray,
    queries: np.ndarray,
    k: int,
    tol: float | None = None,
) -> None:
    """Asserts that (scores, ids) [q, heads, k] are a correct top-k of `queries` over `keys`
    (the stored, rounded keys [n, kv_heads, d]; n may be 0 for a missing document)."""
    q, heads, _ = queries.shape
    n = keys.shape[0]
    assert scores.shape == (q, heads, k), (scores.shape, (q, heads, k))
    assert ids.shape == (q, heads, k), (ids.shape, (q, heads, k))
    assert scores.dtype == np.float32, scores.dtype
    assert ids.dtype == np.int64, ids.dtype
    if tol is None:
        tol = score_tolerance(keys, queries)
    valid = min(k, n)
    # Padding past the document's length.
    assert np.all(ids[..., valid:] == -1), "ids past the length must be -1"
    assert np.all(scores[..., valid:] == -np.inf), "scores past the length must be -inf"
    if valid == 0:
        return
    got_ids = ids[..., :valid]
    got = scores[..., :valid].astype(np.float64)
    assert np.all(got_ids >= 0) and np.all(got_ids < n), "ids out of range"
    assert np.all(np.isfinite(got)), "scores of real tokens must be finite"
    assert np.all(np.diff(got, axis=-1) <= 0), "scores must be sorted best first"
    exact = oracle_scores(keys, queries)  # [q, heads, n]
    best = -np.sort(-exact, axis=-1)[..., :valid]
    np.testing.assert_allclose(got, best, rtol=0, atol=tol, err_msg="top-k scores differ")
    recomputed = np.take_along_axis(exact, got_ids, axis=-1)
    np.testing.assert_allclose(
        got, recomputed, rtol=0, atol=tol, err_msg="a returned score is not its id's score"
    )
    kth = best[..., -1:]
    for qi in range(q):
        for h in range(heads):
            row = got_ids[qi, h]
            assert len(set(row.tolist())) == valid, f"duplicate ids at q {qi} head {h}: {row}"
            # Every returned id is at least as good as the k-th best (up to ties)...
            assert np.all(exact[qi, h, row] >= kth[qi, h] - tol), (qi, h)
            # ...and every id left out is at most as good as it (up to ties).
            mask = np.ones(n, dtype=bool)
            mask[row] = False
            if mask.any():
                assert exact[qi, h, mask].max() <= kth[qi, h, 0] + tol, (qi, h)


def expected_gather(
    keys: np.ndarray, values: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Stored rows for ids [q, heads, k]: [q, heads, k, head_dim] and [q, heads, k, value_dim],
    zeros for -1."""
    q, heads, k = ids.shape
    n, kv_heads = keys.shape[:2]
    if n == 0:
        return (
            np.zeros((q, heads, k, keys.shape[2]), np.float32),
            np.zeros((q, heads, k, values.shape[2]), np.float32),
        )
    group = heads // kv_heads
    kv = (np.arange(heads) // group)[None, :, None]
    kv = np.broadcast_to(kv, ids.shape)
    safe = np.where(ids >= 0, ids, 0)
    gk = keys[safe, kv].astype(np.float32)
    gv = values[safe, kv].astype(np.float32)
    gk[ids < 0] = 0.0
    gv[ids < 0] = 0.0
    return gk, gv
