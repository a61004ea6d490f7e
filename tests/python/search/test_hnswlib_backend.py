"""The Python-side `hnswlib` backend: HNSW graphs per sealed span and kv head, an exact scan of the
unsealed tail, indexes saved beside the chunks and reused by later handles and processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import fot_mem
import numpy as np
import pytest
from ann_oracle import check_conventions, clustered, recall
from fot_mem import BackendUnavailableError, FotMemError, InvalidValueError
from fot_mem.backends import hnswlib_graphs as hb

pytest.importorskip("hnswlib")

SPAN = 4096
TOKENS = 20_000  # 4 sealed spans of 4096, then a 3616-token tail
SEALED = TOKENS // SPAN
TAIL = SEALED * SPAN


@pytest.fixture(autouse=True)
def small_spans(monkeypatch):
    """Spans of 4096 tokens (the stores have no "hnsw" configuration) and an empty index cache."""
    monkeypatch.setitem(hb._DEFAULTS, "span_tokens", SPAN)
    hb.clear_cache()
    yield
    hb.clear_cache()


def make(make_store, keys, dtype="float32", **kw):
    store = make_store(
        dtype=dtype, layers=(0,), kv_heads=keys.shape[1], head_dim=keys.shape[2], **kw
    )
    store.document("d").append(0, keys, keys)
    return store


def hnsw(store, q, k, ef=None, doc="d"):
    return fot_mem.backends.search(store._core, doc, 0, q, k, "hnswlib", ef=ef)


def saved(store):
    """The index files (each with its seal) and any leftover temporary file."""
    files = [f for f in os.listdir(store._core.layer_path("d", 0)) if "hnswlib" in f]
    bins = sorted(f for f in files if not f.endswith(".seal"))
    assert sorted(f for f in files if f.endswith(".seal")) == [
        f.removesuffix(".bin") + ".seal" for f in bins
    ]
    return bins


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_recall_against_the_exact_backend(make_store, rng, dtype) -> None:
    keys, q = clustered(rng, TOKENS)
    store = make(make_store, keys, dtype, chunk_tokens=1024)
    doc = store.document("d")
    for k in (10, 32):
        s_e, i_e = doc.search(0, q, k, backend="exact")
        s_h, i_h = hnsw(store, q, k, ef=128)
        check_conventions(store.document("d"), q, s_h, i_h, k, store.kv_heads)
        # M=16, ef_construction=200 graphs over 4096 keys of dim 32 searched with ef=128 find
        # nearly every true neighbour (0.9997-1.0 measured); 0.95 leaves room for the graph's
        # dependence on the (multithreaded) insertion order.
        assert recall(i_h, i_e) >= 0.95
        # Found keys are a subset of all keys: the r-th best found never beats the r-th best.
        assert (s_h <= s_e + 1e-4 * np.maximum(1.0, np.abs(s_e))).all()
    # Queries away from the clusters are harder: ~0.965 (k=32) to ~0.975 (k=10) measured at
    # ef=128, against 0.80-0.86 at ef=16; insist on 0.9.
    q_far = 2.0 * rng.standard_normal(q.shape).astype(np.float32)
    for k in (10, 32):
        _, i_e = doc.search(0, q_far, k, backend="exact")
        assert recall(hnsw(store, q_far, k, ef=128)[1], i_e) >= 0.9
    # The routed call (Document.search) shares the cached indexes and gives the same results.
    s_d, i_d = doc.search(0, q, 10, backend="hnswlib")
    s_h, i_h = hnsw(store, q, 10)
    np.testing.assert_array_equal(i_d, i_h)
    np.testing.assert_array_equal(s_d, s_h)
    assert saved(store) == [f"hnswlib-{s:06d}-h{h}.bin" for s in range(SEALED) for h in (0, 1)]


def test_batch_search_with_a_missing_document(make_store, rng) -> None:
    keys, q = clustered(rng, tokens=5000)
    store = make(make_store, keys, chunk_tokens=1024)
    qb = np.stack([q[:20], q[20:40]])
    s, i = store.search(["d", "missing"], 0, qb, k=5, backend="hnswlib")
    assert s.shape == i.shape == (2, 20, 4, 5)
    s_d, i_d = hnsw(store, q[:20], 5)
    np.testing.assert_array_equal(i[0], i_d)
    np.testing.assert_array_equal(s[0], s_d)
    assert (i[1] == -1).all() and np.isneginf(s[1]).all()


def test_the_unsealed_tail_is_scanned_exactly(make_store, rng) -> None:
    keys, _ = clustered(rng, TOKENS)
    # Tail keys of norm 10: a query equal to one scores 100 with it, at most ~60 with another
    # tail key and ~45 with any other key, so it must come back first.
    tail = rng.standard_normal((TOKENS - TAIL, 2, 32))
    keys[TAIL:] = 10.0 * tail / np.linalg.norm(tail, axis=-1, keepdims=True)
    store = make(make_store, keys, chunk_tokens=1024)
    picks = rng.choice(np.arange(TAIL, TOKENS), 300, replace=False)
    q = keys[picks].repeat(2, axis=1)  # query heads 0, 1 -> kv head 0; 2, 3 -> kv head 1
    s, i = hnsw(store, q, 5)
    np.testing.assert_array_equal(i[:, :, 0], picks[:, None].repeat(4, 1))
    np.testing.assert_allclose(s[:, :, 0], 100.0, rtol=1e-5)
    # Any true top-k hit in the tail is found: the tail candidates are exact, the merge keeps them.
    _, q = clustered(rng, TOKENS)
    _, i_e = store.document("d").search(0, q, 16, backend="exact")
    _, i_h = hnsw(store, q, 16)
    for e, h in zip(i_e.reshape(-1, 16), i_h.reshape(-1, 16)):
        assert set(e[e >= TAIL]) <= set(h)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_shorter_than_a_span_is_exact_with_ties_to_the_lower_id(make_store, rng, dtype) -> None:
    # Small integers: every inner product is exact in float32 whatever the summation order, and
    # there are many ties, which both backends must break towards the lower id.
    keys = rng.integers(-2, 3, (700, 2, 16)).astype(np.float32)
    keys[350:] = keys[:350]
    q = rng.integers(-2, 3, (40, 6, 16)).astype(np.float32)
    store = make(make_store, keys, dtype, chunk_tokens=64)
    doc = store.document("d")
    for k in (1, 7, 100, 700, 1000):
        s_e, i_e = doc.search(0, q, k, backend="exact")
        s_h, i_h = hnsw(store, q, k)
        np.testing.assert_array_equal(i_h, i_e)
        np.testing.assert_array_equal(s_h, s_e)
    assert saved(store) == []  # no sealed span, no index


def test_padding_beyond_the_document(make_store, rng) -> None:
    keys = rng.standard_normal((5, 2, 8)).astype(np.float32)
    store = make(make_store, keys, chunk_tokens=4)
    q = rng.standard_normal((3, 2, 8)).astype(np.float32)
    s, i = hnsw(store, q, 8)
    assert (i[..., 5:] == -1).all() and np.isneginf(s[..., 5:]).all()
    assert (np.sort(i[..., :5], axis=-1) == np.arange(5)).all()
    # With sealed spans too: 2 spans of 16 (span_tokens 13 rounds up to 4 chunks) + a tail of 4.
    keys = rng.standard_normal((36, 2, 8)).astype(np.float32)
    store = make(make_store, keys, chunk_tokens=4)
    assert hb.params(store._core, span_tokens=13).span_tokens == 16
    s, i = hb.search(store._core, "d", 0, q, 50, span_tokens=13)
    check_conventions(store.document("d"), q, s, i, 50, store.kv_heads)
    assert (np.sort(i[..., :36], axis=-1) == np.arange(36)).all()
    assert (i[..., 36:] == -1).all() and np.isneginf(s[..., 36:]).all()


def test_missing_document_or_empty_layer_is_all_padding(make_store, rng) -> None:
    keys = rng.standard_normal((50, 2, 8)).astype(np.float32)
    store = make_store(layers=(0, 1), kv_heads=2, head_dim=8, chunk_tokens=16)
    store.document("d").append(0, keys, keys)
    q = rng.standard_normal((3, 4, 8)).astype(np.float32)
    for doc, layer in (("missing", 0), ("d", 1)):
        s, i = store.document(doc).search(layer, q, k=4, backend="hnswlib")
        assert s.shape == i.shape == (3, 4, 4)
        assert (i == -1).all() and np.isneginf(s).all()
    s, i = hnsw(store, q[:0], 4)
    assert s.shape == i.shape == (0, 4, 4)


def test_saved_indexes_are_reused_not_rebuilt(make_store, rng, monkeypatch, run_py) -> None:
    keys, q = clustered(rng, tokens=3 * SPAN + 100)
    store = make(make_store, keys, chunk_tokens=1024)
    s1, i1 = hnsw(store, q, 10, ef=32)
    files = saved(store)
    assert files == [f"hnswlib-{s:06d}-h{h}.bin" for s in range(3) for h in (0, 1)]

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt an index that was saved")

    monkeypatch.setattr(hb, "_build", no_build)
    hb.clear_cache()
    s2, i2 = hnsw(store, q, 10, ef=32)
    np.testing.assert_array_equal(i2, i1)
    np.testing.assert_array_equal(s2, s1)
    # A read-only handle loads them too.
    hb.clear_cache()
    reader = fot_mem.MemoryStore.open(store.path, readonly=True)
    s3, i3 = hnsw(reader, q, 10, ef=32)
    reader.close()
    np.testing.assert_array_equal(i3, i1)
    np.testing.assert_array_equal(s3, s1)
    # And so does another process.
    np.save(os.path.join(store.path, "..", "q.npy"), q)
    out = run_py(
        """
        import sys, numpy as np, fot_mem
        from fot_mem.backends import hnswlib_graphs as hb
        def no_build(*a, **kw): raise AssertionError("rebuilt")
        hb._build = no_build
        hb._DEFAULTS["span_tokens"] = int(sys.argv[3])
        store = fot_mem.MemoryStore.open(sys.argv[1], readonly=True)
        q = np.load(sys.argv[2])
        _, i = fot_mem.backends.search(store._core, "d", 0, q, 10, "hnswlib", ef=32)
        np.save(sys.argv[2], i)
        """,
        store.path,
        os.path.join(store.path, "..", "q.npy"),
        SPAN,
    )
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(np.load(os.path.join(store.path, "..", "q.npy")), i1)
    assert saved(store) == files  # nothing else written (no temporary files left)


@pytest.mark.filterwarnings("ignore:hnswlib index .*rebuilding it:RuntimeWarning")
def test_a_damaged_saved_index_is_rebuilt(make_store, rng, monkeypatch) -> None:
    keys, q = clustered(rng, tokens=SPAN + 10)
    store = make(make_store, keys, chunk_tokens=1024)
    _, i_e = store.document("d").search(0, q, 10, backend="exact")
    hnsw(store, q, 10)
    path = hb.index_path(store._core.layer_path("d", 0), 0, 1)
    size = os.path.getsize(path)
    builds = []
    real_build = hb._build

    def counting_build(*args, **kwargs):
        builds.append(args[2])  # the span's first token
        return real_build(*args, **kwargs)

    monkeypatch.setattr(hb, "_build", counting_build)
    for cut in (size - 1, size // 2, 50, 0):
        with open(path, "r+b") as f:
            f.truncate(cut)
        damaged = Path(path).read_bytes()
        # A read-only handle rebuilds in memory and leaves the file alone.
        hb.clear_cache()
        reader = fot_mem.MemoryStore.open(store.path, readonly=True)
        _, i = hnsw(reader, q, 10)
        reader.close()
        assert builds == [0] and os.path.getsize(path) == cut
        assert recall(i, i_e) >= 0.95
        # The writer rebuilds and replaces it with a whole one, which later loads are content with.
        hb.clear_cache()
        _, i = hnsw(store, q, 10)
        # (hnswlib's threaded build is not deterministic: the new file's size may differ)
        assert builds == [0, 0] and Path(path).read_bytes() != damaged
        assert recall(i, i_e) >= 0.95
        hb.clear_cache()
        hnsw(store, q, 10)
        assert builds == [0, 0]
        builds.clear()
    # A file of another span length (other token ids) is not trusted either.
    hb.clear_cache()
    hb.search(store._core, "d", 0, q, 10, span_tokens=2 * 1024)
    assert builds == [0, 2048, 0, 2048]  # head 0: spans 0 and 1, then head 1
    check_conventions(
        store.document("d"),
        q,
        *hb.search(store._core, "d", 0, q, 10, span_tokens=2048),
        10,
        store.kv_heads,
    )


def test_a_recreated_document_gets_new_indexes(make_store, rng) -> None:
    keys, q = clustered(rng, tokens=SPAN + 10)
    store = make(make_store, keys, chunk_tokens=1024)
    hnsw(store, q, 10)
    store.delete("d")
    keys2 = keys[rng.permutation(len(keys))]  # the same keys under other ids
    store.document("d").append(0, keys2, keys2)
    s, i = hnsw(store, q, 10)
    check_conventions(store.document("d"), q, s, i, 10, store.kv_heads)  # scores of the new keys
    _, i_e = store.document("d").search(0, q, 10, backend="exact")
    assert recall(i, i_e) >= 0.95


def test_a_failing_graph_search_falls_back_to_an_exact_scan(make_store, rng) -> None:
    keys = rng.standard_normal((SPAN + 10, 2, 16)).astype(np.float32)
    store = make(make_store, keys, chunk_tokens=1024)
    q = rng.standard_normal((30, 2, 16)).astype(np.float32)
    hnsw(store, q, 10)

    class Failing:
        def set_ef(self, ef):
            pass

        def knn_query(self, *args, **kwargs):
            raise RuntimeError("Cannot return the results in a contiguous 2D array")

    for entry in hb._CACHE.values():
        entry.index = Failing()
    s_e, i_e = store.document("d").search(0, q, 10, backend="exact")
    s, i = hnsw(store, q, 10)
    np.testing.assert_array_equal(i, i_e)
    np.testing.assert_allclose(s, s_e, rtol=1e-5, atol=1e-5)


def test_ef_is_at_least_k_and_validated(make_store, rng) -> None:
    keys, q = clustered(rng, tokens=SPAN + 10)
    store = make(make_store, keys, chunk_tokens=1024)
    _, i_e = store.document("d").search(0, q, 50, backend="exact")
    s, i = hnsw(store, q, 50, ef=1)  # searched with ef = k = 50
    check_conventions(store.document("d"), q, s, i, 50, store.kv_heads)
    assert recall(i, i_e) >= 0.9
    for bad in (0, -3, 2.5, True, "64"):
        with pytest.raises(InvalidValueError, match="ef must be"):
            hnsw(store, q, 5, ef=bad)


def test_parameters_from_the_store_configuration_or_the_defaults() -> None:
    class Core:
        def __init__(self, config):
            self.config = config

    hnsw_config = {"m": 8, "ef_construction": 50, "ef_search": 20, "span_tokens": 3000}
    p = hb.params(Core({"chunk_tokens": 1000, "hnsw": hnsw_config}))
    assert p == hb.Params(m=8, ef_construction=50, ef_search=20, span_tokens=3000)
    p = hb.params(Core({"chunk_tokens": 1000}))
    assert p == hb.Params(m=16, ef_construction=200, ef_search=64, span_tokens=SPAN + 904)
    p = hb.params(Core({"chunk_tokens": 1000, "hnsw": {"m": 8}}))  # incomplete: defaults
    assert p.m == 16
    with pytest.raises(InvalidValueError, match="span_tokens"):
        hb.params(Core({"chunk_tokens": 1000}), span_tokens=0)


def test_missing_hnswlib_is_a_clear_error(make_store, rng, monkeypatch) -> None:
    keys, q = clustered(rng, tokens=10)
    store = make(make_store, keys)
    monkeypatch.setitem(sys.modules, "hnswlib", None)  # import hnswlib -> ImportError
    with pytest.raises(BackendUnavailableError, match="pip install hnswlib") as e:
        store.document("d").search(0, q, k=3, backend="hnswlib")
    assert isinstance(e.value, ImportError) and isinstance(e.value, FotMemError)
