"""Property-based search check (hypothesis): on small integer data every score is exact, so the
whole answer (ids, scores, padding, tie order, gather) is determined and compared exactly, over
random shapes, chunk sizes (down to one token per chunk), append patterns, k and dtypes."""

from __future__ import annotations

import fot_mem
import numpy as np
import pytest
from fm_oracle import DTYPES, expected_gather

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=40, deadline=None, derandomize=True, database=None)
@hypothesis.given(
    dtype=st.sampled_from(DTYPES),
    kv_heads=st.integers(1, 3),
    group=st.integers(1, 3),
    head_dim=st.integers(1, 6),
    chunk_tokens=st.integers(1, 9),
    pieces=st.lists(st.integers(0, 12), min_size=0, max_size=4),
    q=st.integers(0, 3),
    k=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_integer_data_gives_exact_ranking(
    tmp_path_factory, dtype, kv_heads, group, head_dim, chunk_tokens, pieces, q, k, seed
) -> None:
    """Small integer keys and queries make every score exact in float32 and full of ties, so the
    answer is fully determined: scores descending, ties broken towards the lower id."""
    rng = np.random.default_rng(seed)
    path = tmp_path_factory.mktemp("prop") / "s"
    heads = kv_heads * group
    with fot_mem.MemoryStore.create(
        path,
        layers=[0],
        kv_heads=kv_heads,
        head_dim=head_dim,
        value_dim=2,
        dtype=dtype,
        chunk_tokens=chunk_tokens,
    ) as store:
        doc = store.document("d")
        n = sum(pieces)
        keys = rng.integers(-3, 4, (n, kv_heads, head_dim)).astype(np.float32)
        values = rng.integers(-100, 100, (n, kv_heads, 2)).astype(np.float32)
        at = 0
        for p in pieces:
            assert doc.append(0, keys[at : at + p], values[at : at + p]) == at + p
            at += p
        assert doc.length(0) == n
        queries = rng.integers(-3, 4, (q, heads, head_dim)).astype(np.float32)
        scores, ids = doc.search(0, queries, k=k)
        assert scores.shape == ids.shape == (q, heads, k)
        exact = np.einsum("qhd,nhd->qhn", queries, keys[:, np.arange(heads) // group, :])
        for qi in range(q):
            for h in range(heads):
                order = np.lexsort((np.arange(n), -exact[qi, h]))[:k]
                want_ids = np.full(k, -1)
                want_ids[: len(order)] = order
                want_scores = np.full(k, -np.inf, np.float32)
                want_scores[: len(order)] = exact[qi, h, order]
                np.testing.assert_array_equal(ids[qi, h], want_ids)
                np.testing.assert_array_equal(scores[qi, h], want_scores)
        gk, gv = doc.gather(0, ids)
        ek, ev = expected_gather(keys, values, ids)
        np.testing.assert_array_equal(gk, ek)
        np.testing.assert_array_equal(gv, ev)
