"""Search and gather against a brute-force numpy oracle, in every storage dtype, with grouped-query
heads, across chunk files, with k below, at and above a document's length, and over batches of
documents; and the GIL being released while a search runs."""

from __future__ import annotations

import threading
import time

import fot_mem
import numpy as np
import pytest
from fm_oracle import DTYPES, check_search, expected_gather, random_kv, round_to


def _fill(store: fot_mem.MemoryStore, name: str, layer: int, n: int, rng, pieces: int = 3):
    """Appends n random tokens to `name` in uneven pieces; returns the stored (rounded) keys and
    values."""
    kvh, hd, vd = store.kv_heads, store.head_dim, store.value_dim
    keys, values = random_kv(rng, n, kvh, hd, vd)
    cuts: list[int] = []
    if n > 1:
        cuts = sorted(rng.choice(np.arange(1, n), size=min(pieces - 1, n - 1), replace=False))
    doc = store.document(name)
    for a, b in zip([0, *cuts], [*cuts, n]):
        assert doc.append(layer, keys[a:b], values[a:b]) == b
    return round_to(keys, store.dtype), round_to(values, store.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [1, 2], ids=["heads=kv_heads", "heads=2*kv_heads"])
@pytest.mark.parametrize("k_vs_len", ["k<len", "k==len", "k>len"])
def test_search_matches_oracle(make_store, rng, dtype: str, group: int, k_vs_len: str) -> None:
    store = make_store(dtype=dtype, kv_heads=2, head_dim=16, value_dim=8, chunk_tokens=7)
    n = 40  # six chunk files, the last one partly filled
    keys, values = _fill(store, "d", 12, n, rng)
    k = {"k<len": 9, "k==len": n, "k>len": n + 13}[k_vs_len]
    heads = 2 * group
    queries = rng.standard_normal((5, heads, 16), dtype=np.float32)
    doc = store.document("d")
    scores, ids = doc.search(12, queries, k=k)
    check_search(scores, ids, keys, queries, k)
    # gather gives back exactly the stored rows, zeros where the id is -1.
    gk, gv = doc.gather(12, ids)
    assert gk.shape == (5, heads, k, 16) and gv.shape == (5, heads, k, 8)
    assert gk.dtype == np.float32 and gv.dtype == np.float32
    ek, ev = expected_gather(keys, values, ids)
    np.testing.assert_array_equal(gk, ek)
    np.testing.assert_array_equal(gv, ev)
    if k > n:
        assert np.all(gk[:, :, n:] == 0) and np.all(gv[:, :, n:] == 0)
    # Every returned score is the returned key's inner product with the query.
    recomputed = np.einsum("qhd,qhkd->qhk", queries.astype(np.float64), gk.astype(np.float64))
    valid = ids >= 0
    np.testing.assert_allclose(scores[valid], recomputed[valid], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_search_larger_shapes(make_store, rng, dtype: str) -> None:
    """More query rows than one row block (256), chunks bigger than one key tile (512), many kv
    heads, and a grouped-query factor of 4."""
    store = make_store(dtype=dtype, layers=(0,), kv_heads=4, head_dim=64, chunk_tokens=600)
    keys, values = _fill(store, "d", 0, 1300, rng, pieces=4)
    queries = rng.standard_normal((70, 16, 64), dtype=np.float32)
    scores, ids = store.document("d").search(0, queries, k=20)
    check_search(scores, ids, keys, queries, 20)
    gk, gv = store.document("d").gather(0, ids)
    ek, ev = expected_gather(keys, values, ids)
    np.testing.assert_array_equal(gk, ek)
    np.testing.assert_array_equal(gv, ev)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_search_over_documents(make_store, rng, dtype: str) -> None:
    store = make_store(dtype=dtype, kv_heads=2, head_dim=8, chunk_tokens=7)
    lengths = {"long": 50, "short": 5, "one": 1, "exact": 12}
    stored = {name: _fill(store, name, 6, n, rng) for name, n in lengths.items()}
    # Another layer of "long" must not leak into layer 6.
    store.document("long").append(18, *random_kv(rng, 30, 2, 8))
    names = ["long", "missing", "short", "one", "exact", "long"]
    k = 12
    queries = rng.standard_normal((len(names), 3, 4, 8), dtype=np.float32)
    scores, ids = store.search(names, 6, queries, k=k)
    assert scores.shape == ids.shape == (len(names), 3, 4, k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    for b, name in enumerate(names):
        keys = stored[name][0] if name in stored else np.zeros((0, 2, 8), np.float32)
        check_search(scores[b], ids[b], keys, queries[b], k)
        # The batch answer equals the document's own search.
        if name in stored:
            s1, i1 = store.document(name).search(6, queries[b], k=k)
            np.testing.assert_array_equal(i1, ids[b])
            np.testing.assert_array_equal(s1, scores[b])
    # The missing document is all padding (and the search did not create it).
    assert np.all(ids[1] == -1) and np.all(scores[1] == -np.inf)
    assert "missing" not in store
    gk, gv = store.document("missing").gather(6, ids[1])
    assert np.all(gk == 0) and np.all(gv == 0)
    # Document handles work as batch entries too.
    s2, i2 = store.search([store.document("short"), "one"], 6, queries[:2], k=k)
    check_search(s2[0], i2[0], stored["short"][0], queries[0], k)
    check_search(s2[1], i2[1], stored["one"][0], queries[1], k)


def test_batch_search_empty_batch_and_empty_queries(store, rng) -> None:
    _fill(store, "d", 6, 10, rng)
    s, i = store.search([], 6, np.zeros((0, 3, 2, 8), np.float32), k=4)
    assert s.shape == i.shape == (0, 3, 2, 4)
    s, i = store.search(["d", "x"], 6, np.zeros((2, 0, 4, 8), np.float32), k=4)
    assert s.shape == i.shape == (2, 0, 4, 4)
    assert s.dtype == np.float32 and i.dtype == np.int64
    s, i = store.document("d").search(6, np.zeros((0, 2, 8), np.float32), k=4)
    assert s.shape == i.shape == (0, 2, 4)
    gk, gv = store.document("d").gather(6, i)
    assert gk.shape == (0, 2, 4, 8) and gv.shape == (0, 2, 4, 8)


def test_search_of_empty_layer_and_missing_document_pads(store, rng) -> None:
    _fill(store, "d", 6, 10, rng)
    q = rng.standard_normal((2, 4, 8), dtype=np.float32)
    for doc, layer in [("d", 12), ("nope", 6)]:
        s, i = store.document(doc).search(layer, q, k=3)
        assert np.all(i == -1) and np.all(s == -np.inf)
        assert s.shape == (2, 4, 3)


def test_ties_break_towards_lower_ids(make_store) -> None:
    """Identical keys in every chunk: the k best are the k lowest ids, in order, whatever way the
    work was split among threads."""
    store = make_store(kv_heads=1, head_dim=4, chunk_tokens=7)
    n = 200
    keys = np.ones((n, 1, 4), np.float32)
    store.document("d").append(6, keys, keys)
    q = np.ones((3, 2, 4), np.float32)
    for k in (1, 5, 50, n):
        s, i = store.document("d").search(6, q, k=k)
        np.testing.assert_array_equal(i, np.broadcast_to(np.arange(k), (3, 2, k)))
        assert np.all(s == 4.0)


def test_known_answer(make_store) -> None:
    """A hand-made case: each query head finds the token planted for it, in its own kv head."""
    store = make_store(kv_heads=2, head_dim=4, chunk_tokens=7)
    n = 30
    keys = np.zeros((n, 2, 4), np.float32)
    keys[17, 0] = [0, 0, 5, 0]  # kv head 0's best for e2
    keys[3, 1] = [0, 0, 5, 0]  # kv head 1's best for e2
    keys[25, 0] = [0, 4, 0, 0]
    keys[8, 1] = [0, 0, 0, -9]
    values = np.arange(n * 2 * 4, dtype=np.float32).reshape(n, 2, 4)
    store.document("d").append(6, keys, values)
    q = np.zeros((2, 4, 4), np.float32)  # heads 0,1 -> kv 0; heads 2,3 -> kv 1
    q[0, :, 2] = 1  # every head looks along e2
    q[1, 1, 1] = 1  # head 1 (kv 0) looks along e1
    q[1, 3, 3] = -1  # head 3 (kv 1) looks along -e3
    s, i = store.document("d").search(6, q, k=1)
    np.testing.assert_array_equal(i[0, :, 0], [17, 17, 3, 3])
    np.testing.assert_array_equal(s[0, :, 0], [5, 5, 5, 5])
    assert i[1, 1, 0] == 25 and s[1, 1, 0] == 4
    assert i[1, 3, 0] == 8 and s[1, 3, 0] == 9
    gk, gv = store.document("d").gather(6, i)
    np.testing.assert_array_equal(gv[0, 2, 0], values[3, 1])
    np.testing.assert_array_equal(gv[1, 3, 0], values[8, 1])
    np.testing.assert_array_equal(gk[1, 1, 0], keys[25, 0])


def test_search_sees_appends_between_searches(store, rng) -> None:
    doc = store.document("d")
    all_keys = []
    q = rng.standard_normal((2, 2, 8), dtype=np.float32)
    for n in (3, 4, 9, 1):
        k, v = random_kv(rng, n, 2, 8)
        doc.append(6, k, v)
        all_keys.append(k)
        keys = np.concatenate(all_keys)
        s, i = doc.search(6, q, k=10)
        check_search(s, i, keys, q, 10)


def test_k_equals_max_k(store, rng) -> None:
    keys, _ = _fill(store, "d", 6, 9, rng)
    q = rng.standard_normal((1, 2, 8), dtype=np.float32)
    s, i = store.document("d").search(6, q, k=fot_mem.MAX_K)
    assert s.shape == (1, 2, fot_mem.MAX_K)
    check_search(s, i, keys, q, fot_mem.MAX_K)


def test_numpy_integer_k(store, rng) -> None:
    keys, _ = _fill(store, "d", 6, 9, rng)
    q = rng.standard_normal((1, 2, 8), dtype=np.float32)
    s, i = store.document("d").search(6, q, k=np.int64(4))
    check_search(s, i, keys, q, 4)


def test_gather_from_many_chunks_with_padding_mixed_in(make_store, rng) -> None:
    store = make_store(kv_heads=2, head_dim=8, value_dim=3, chunk_tokens=7)
    keys, values = _fill(store, "d", 6, 60, rng)
    ids = rng.integers(-1, 60, size=(3, 4, 9))
    gk, gv = store.document("d").gather(6, ids)
    ek, ev = expected_gather(keys, values, ids)
    np.testing.assert_array_equal(gk, ek)
    np.testing.assert_array_equal(gv, ev)
    # Over 1024 ids (the gather's work unit), with heads = kv_heads.
    ids = rng.integers(-1, 60, size=(5, 2, 300))
    gk, gv = store.document("d").gather(6, ids)
    ek, ev = expected_gather(keys, values, ids)
    np.testing.assert_array_equal(gk, ek)
    np.testing.assert_array_equal(gv, ev)


# -- the GIL ---------------------------------------------------------------------------------


def test_search_releases_the_gil(make_store, rng) -> None:
    """While one thread searches, another keeps running Python. If the search held the GIL, the
    main thread could not run a single loop iteration inside the search's time window."""
    store = make_store(layers=(0,), kv_heads=1, head_dim=64, chunk_tokens=4096)
    keys = rng.standard_normal((20000, 1, 64), dtype=np.float32)
    store.document("d").append(0, keys, keys)
    one = rng.standard_normal((1, 128, 1, 64), dtype=np.float32)
    t0 = time.perf_counter()
    store.search(["d"], 0, one, k=8)
    per_slot = max(time.perf_counter() - t0, 1e-4)
    batch = int(min(64, max(2, 0.6 / per_slot)))  # aim at ~0.6 s of search
    queries = np.broadcast_to(one, (batch, 128, 1, 64)).copy()
    names = ["d"] * batch

    window: dict[str, float] = {}
    started = threading.Event()

    def search() -> None:
        started.set()
        window["start"] = time.perf_counter()
        store.search(names, 0, queries, k=8)
        window["end"] = time.perf_counter()

    stamps: list[float] = []
    th = threading.Thread(target=search)
    th.start()
    started.wait()
    while th.is_alive():
        stamps.append(time.perf_counter())
    th.join()
    start, end = window["start"], window["end"]
    duration = end - start
    assert duration > 0.05, f"search too short to judge ({duration:.3f} s)"
    # Count main-thread iterations strictly inside the middle 80% of the search.
    lo, hi = start + 0.1 * duration, end - 0.1 * duration
    inside = sum(1 for t in stamps if lo < t < hi)
    assert inside > 100, (
        f"only {inside} main-thread iterations during a {duration:.3f} s search: the GIL was held"
    )
    # And the main thread was not starved for long stretches either.
    gaps = np.diff([t for t in stamps if lo < t < hi])
    assert gaps.size and gaps.max() < 0.5 * duration, (gaps.max(), duration)


# -- many threads on one handle --------------------------------------------------------------


def test_concurrent_searches_and_appends_on_one_handle(store, rng) -> None:
    """Searches from several threads at once, while another thread appends to a second
    document, all give the single-threaded answer."""
    keys, _ = _fill(store, "fixed", 6, 60, rng)
    queries = [rng.standard_normal((4, 4, 8), dtype=np.float32) for _ in range(6)]
    expected = [store.document("fixed").search(6, q, k=9) for q in queries]
    errors: list[BaseException] = []

    def searcher(i: int) -> None:
        try:
            for _ in range(15):
                s, ids = store.document("fixed").search(6, queries[i], k=9)
                np.testing.assert_array_equal(ids, expected[i][1])
                np.testing.assert_array_equal(s, expected[i][0])
        except BaseException as e:  # reported below
            errors.append(e)

    def appender() -> None:
        try:
            for n in range(1, 16):
                k, v = random_kv(np.random.default_rng(n), n, 2, 8)
                store.document("growing").append(6, k, v)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=searcher, args=(i,)) for i in range(6)]
    threads.append(threading.Thread(target=appender))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[0]
    assert store.document("growing").length(6) == sum(range(1, 16))
    check_search(*expected[0], keys, queries[0], 9)
