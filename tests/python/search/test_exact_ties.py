"""The bf16 exact kernel on repeated keys (issue 20): exact copies by the thousand and attention
sinks of 50-100x the usual norm, as real keys repeat (window-first keys, sinks). No more than 1% of
the query rows may fall back to the float32 rescan, and every answer must be a top-k of the float32
scores up to ties: each returned key scores at least the oracle's k-th score, and the returned
scores are the oracle's, in order."""

from __future__ import annotations

from pathlib import Path

import fot_mem
import numpy as np
import pytest

K = 32


def _keys(n: int, d: int, copies: float, sink: float, every: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((n, d)).astype(np.float32)
    originals = 1.5 * rng.standard_normal((20, d)).astype(np.float32)
    pick = rng.random(n) < copies
    keys[pick] = originals[rng.integers(0, 20, int(pick.sum()))]
    sinks = sink * rng.standard_normal((3, d)).astype(np.float32)
    at = np.arange(n) % every == 0
    keys[at] = sinks[(np.arange(n)[at] // every) % 3]
    return keys


def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 rounded to bfloat16 (nearest even), widened back: the keys a bf16 store holds."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


@pytest.mark.parametrize(
    ("dtype", "copies", "sink", "every"),
    [
        ("bfloat16", 0.3, 100.0, 64),
        ("bfloat16", 0.5, 50.0, 256),
        ("float32", 0.3, 100.0, 64),
    ],
)
def test_repeated_keys_and_sinks_do_not_fall_back(
    tmp_path: Path, dtype: str, copies: float, sink: float, every: int
) -> None:
    n, d, nq = 30_000, 64, 200
    keys = _keys(n, d, copies, sink, every, seed=3)
    rng = np.random.default_rng(4)
    # Half the queries near keys (their copies crowd the top-k), half random.
    queries = rng.standard_normal((nq, d)).astype(np.float32)
    queries[::2] = keys[rng.integers(0, n, nq // 2)] + 0.1 * queries[::2]
    store = fot_mem.MemoryStore.create(
        tmp_path / "s", layers=[0], kv_heads=1, head_dim=d, dtype=dtype, chunk_tokens=8192
    )
    doc = store.document("doc")
    doc.append(0, keys[:, None, :], keys[:, None, :])
    before = fot_mem.exact_kernel_info()
    scores, ids = doc.search(0, queries[:, None, :], k=K)
    after = fot_mem.exact_kernel_info()
    store.close()
    held = _bf16(keys) if dtype == "bfloat16" else keys
    exact = queries.astype(np.float64) @ held.astype(np.float64).T  # [nq, n]
    best = -np.sort(-exact, axis=1)[:, :K]
    ids, scores = ids[:, 0], scores[:, 0].astype(np.float64)
    tol = 1e-5 * np.abs(best).max(axis=1, keepdims=True) + 1e-6
    got = np.take_along_axis(exact, ids, axis=1)
    assert np.all(np.abs(got - scores) <= tol), "a returned score is not its key's score"
    assert np.all(got >= best[:, -1:] - tol), "a returned key scores below the oracle's k-th"
    np.testing.assert_allclose(scores, best, rtol=0, atol=float(tol.max()))
    assert all(len(set(row)) == K for row in ids.tolist()), "duplicate ids"
    if after["kernel"].startswith("avx512"):
        rows = after["rows"] - before["rows"]
        fell_back = after["fallback_rows"] - before["fallback_rows"]
        assert rows == nq, (rows, nq)
        assert fell_back < 0.01 * rows, f"{fell_back} of {rows} rows fell back"
