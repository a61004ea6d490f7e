"""Searches and gathers whose output, sized by their arguments, is more than any machine has:
each must raise `AllocationError` (a `MemoryError`) naming the sizes, before allocating, rather
than abort the process ("memory allocation failed"). Each runs in a fresh process, so an abort
fails the test instead of killing pytest."""

from __future__ import annotations

import pytest

# 4096 queries x 256 heads x k 65536: 1.5 TiB of scores, ids and top-k lists.
SEARCH = """
import sys, numpy as np, fot_mem
backend = sys.argv[2]
store = fot_mem.MemoryStore.create(sys.argv[1], layers=[0], kv_heads=1, head_dim=4, chunk_tokens=64,
                                   hnsw={"span_tokens": 64})
keys = np.ones((100, 1, 4), np.float32)
store.document("d").append(0, keys, keys)
store.wait_for_indexes()
q = np.ones((4096, 256, 4), np.float32)
try:
    if backend == "batch":
        store.search(["d", "d"], 0, np.stack([q, q]), k=65536)
    else:
        store.document("d").search(0, q, k=65536, backend=backend)
except fot_mem.AllocationError as e:
    assert isinstance(e, MemoryError) and isinstance(e, fot_mem.FotMemError)
    print(e)
"""


@pytest.mark.parametrize("backend", ["exact", "hnsw", "batch", "faiss", "hnswlib"])
def test_a_search_too_big_for_memory_raises(tmp_path, run_py, backend) -> None:
    if backend in ("faiss", "hnswlib"):
        pytest.importorskip(backend)
    out = run_py(SEARCH, tmp_path / "s", backend)
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-2000:]}"
    assert "k = 65536" in out.stdout and "GiB" in out.stdout and "available" in out.stdout


def test_a_gather_too_big_for_memory_raises(tmp_path, run_py) -> None:
    out = run_py(
        """
        import sys, numpy as np, fot_mem
        dim = 65536  # the largest head_dim: 2^22 ids gather 2 TiB
        store = fot_mem.MemoryStore.create(sys.argv[1], layers=[0], kv_heads=1, head_dim=dim,
                                           chunk_tokens=1)
        one = np.ones((1, 1, dim), np.float32)
        store.document("d").append(0, one, one)
        try:
            store.document("d").gather(0, np.zeros((64, 1, 65536), np.int64))
        except fot_mem.AllocationError as e:
            print(e)
        k, v = store.document("d").gather(0, np.zeros((1, 1, 2), np.int64))  # small: fine
        assert k.shape == (1, 1, 2, dim) and (v == 1).all()
        """,
        tmp_path / "s",
    )
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-2000:]}"
    assert "gathering 4194304 ids" in out.stdout and "GiB" in out.stdout
