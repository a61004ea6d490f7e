"""Shared by the approximate-search tests: clustered keys and queries, recall against the exact
backend, and the result conventions every backend keeps."""

from __future__ import annotations

from typing import Any

import numpy as np


def clustered(
    rng: np.random.Generator,
    tokens: int,
    kv_heads: int = 2,
    dim: int = 32,
    clusters: int = 64,
    queries: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """Keys `[tokens, kv_heads, dim]` around `clusters` gaussian centres, and queries
    `[queries, 2 * kv_heads, dim]` (GQA: two query heads per kv head) drawn the same way."""
    centres = 2.0 * rng.standard_normal((clusters, dim))
    keys = centres[rng.integers(0, clusters, (tokens, kv_heads))]
    keys = keys + 0.5 * rng.standard_normal((tokens, kv_heads, dim))
    q = centres[rng.integers(0, clusters, (queries, 1))].repeat(2 * kv_heads, 1)
    q = q + 0.5 * rng.standard_normal((queries, 2 * kv_heads, dim))
    return keys.astype(np.float32), q.astype(np.float32)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact top-k ids found, over every query row."""
    f = found.reshape(-1, found.shape[-1])
    e = exact.reshape(-1, exact.shape[-1])
    return float(
        np.mean([len(set(a[a >= 0]) & set(b[b >= 0])) / (b >= 0).sum() for a, b in zip(f, e)])
    )


def check_conventions(
    doc: Any, q: np.ndarray, s: np.ndarray, i: np.ndarray, k: int, kv_heads: int
) -> None:
    """Best first, ties to the lower id, -1 / -inf padding only at the end, no id twice, every
    score the inner product of the query with the key it names (query head h reads kv head
    h // group)."""
    keys, _ = doc.read(0)
    heads = q.shape[1]
    group = heads // kv_heads
    assert s.shape == i.shape == (q.shape[0], heads, k)
    valid = i >= 0
    assert (i < len(keys)).all()
    assert (np.isneginf(s) == ~valid).all()
    assert (valid[..., 1:] <= valid[..., :-1]).all()  # padding only after the hits
    with np.errstate(invalid="ignore"):  # -inf - -inf in the padding
        step = np.diff(s, axis=-1)
    assert (step[valid[..., 1:]] <= 0).all()
    tie = (step == 0) & valid[..., 1:]
    assert (np.diff(i, axis=-1)[tie] > 0).all()
    for h in range(heads):
        rows = i[:, h]
        want = np.einsum("qd,qkd->qk", q[:, h], keys[np.maximum(rows, 0), h // group])
        np.testing.assert_allclose(s[:, h][rows >= 0], want[rows >= 0], rtol=1e-4, atol=1e-4)
    for r in i.reshape(-1, k):
        assert len(set(r[r >= 0])) == (r >= 0).sum()
