"""The Python-side `faiss` backend and the zero-copy key views it reads."""

from __future__ import annotations

import sys

import fot_mem
import numpy as np
import pytest
from fot_mem import BackendUnavailableError, FotMemError, InvalidValueError

faiss = pytest.importorskip("faiss")


@pytest.fixture(params=["float32", "float16", "bfloat16"])
def filled(request, make_store, rng):
    store = make_store(dtype=request.param, kv_heads=2, head_dim=33, chunk_tokens=100)
    keys = rng.standard_normal((1234, 2, 33)).astype(np.float32)
    store.document("a").append(6, keys, keys)
    return store


def test_faiss_agrees_with_the_native_exact_backend(filled, rng) -> None:
    q = rng.standard_normal((50, 4, 33)).astype(np.float32)
    doc = filled.document("a")
    for k in (1, 40, 2000):  # k > length pads
        s_n, i_n = doc.search(6, q, k=k)
        s_f, i_f = doc.search(6, q, k=k, backend="faiss")
        assert s_f.shape == i_f.shape == (50, 4, k)
        np.testing.assert_allclose(s_f, s_n, rtol=1e-5, atol=1e-5)
        # Ids agree except where two scores tie within float32 rounding.
        differ = i_f != i_n
        assert differ.mean() < 0.01
        if k > 1234:
            assert (i_f[..., 1234:] == -1).all() and np.isneginf(s_f[..., 1234:]).all()


def test_faiss_batch_search_with_a_missing_document(filled, rng) -> None:
    q = rng.standard_normal((2, 5, 2, 33)).astype(np.float32)
    s_n, i_n = filled.search(["a", "missing"], 6, q, k=7)
    s_f, i_f = filled.search(["a", "missing"], 6, q, k=7, backend="faiss")
    np.testing.assert_array_equal(i_f[1], -1)
    np.testing.assert_array_equal(i_f[0], i_n[0])
    np.testing.assert_allclose(s_f[0], s_n[0], rtol=1e-5, atol=1e-5)


def test_faiss_backend_validates_like_the_native_one(filled) -> None:
    doc = filled.document("a")
    with pytest.raises(fot_mem.UnknownLayerError):
        doc.search(7, np.ones((1, 2, 33), np.float32), k=3, backend="faiss")
    with pytest.raises(fot_mem.ShapeError, match="head_dim 8"):
        doc.search(6, np.ones((1, 2, 8), np.float32), k=3, backend="faiss")
    with pytest.raises(InvalidValueError, match="k must be"):
        doc.search(6, np.ones((1, 2, 33), np.float32), k=0, backend="faiss")
    with pytest.raises(InvalidValueError, match="NaN"):
        doc.search(6, np.full((1, 2, 33), np.nan, np.float32), k=3, backend="faiss")
    with pytest.raises(InvalidValueError, match="unknown search backend"):
        doc.search(6, np.ones((1, 2, 33), np.float32), k=3, backend="annoy")


def test_missing_faiss_is_a_clear_error(filled, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(BackendUnavailableError, match="pip install faiss-cpu") as e:
        filled.document("a").search(6, np.ones((1, 2, 33), np.float32), k=3, backend="faiss")
    assert isinstance(e.value, ImportError) and isinstance(e.value, FotMemError)


def test_key_views_are_zero_copy_read_only_and_outlive_close(make_store, rng) -> None:
    store = make_store(dtype="float32", kv_heads=2, head_dim=8, chunk_tokens=7)
    keys = rng.standard_normal((20, 2, 8)).astype(np.float32)
    store.document("a").append(6, keys, keys)
    views = store._core.key_views("a", 6, 1)
    assert [first for first, _ in views] == [0, 7, 14]
    assert [v.shape for _, v in views] == [(7, 8), (7, 8), (6, 8)]
    np.testing.assert_array_equal(np.concatenate([v for _, v in views]), keys[:, 1])
    assert not views[0][1].flags.writeable and not views[0][1].flags.owndata
    with pytest.raises(ValueError, match="read-only"):
        views[0][1][0, 0] = 1.0
    store.close()
    np.testing.assert_array_equal(views[2][1], keys[14:, 1])  # still mapped
    with pytest.raises(fot_mem.TokenIndexError, match="kv_heads"):
        fot_mem.MemoryStore.open(store.path, readonly=True)._core.key_views("a", 6, 2)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_value_views_hold_each_heads_values_in_the_store_dtype(make_store, rng, dtype) -> None:
    """Values have their own width (value_dim 5 here, keys 8): the views read the values file."""
    store = make_store(dtype=dtype, kv_heads=2, head_dim=8, value_dim=5, chunk_tokens=7)
    keys = rng.standard_normal((20, 2, 8)).astype(np.float32)
    values = rng.standard_normal((20, 2, 5)).astype(np.float32)
    doc = store.document("a")
    doc.append(6, keys, values)
    _, stored = doc.read(6)  # float32, as stored
    for head in range(2):
        views = store._core.value_views("a", 6, head)
        assert [first for first, _ in views] == [0, 7, 14]
        assert [v.shape for _, v in views] == [(7, 5), (7, 5), (6, 5)]
        got = np.concatenate([v for _, v in views])
        assert not views[0][1].flags.writeable
        if dtype == "bfloat16":  # bits in uint16: widen by shifting into float32's high half
            assert got.dtype == np.uint16
            got = (got.astype(np.uint32) << 16).view(np.float32)
        np.testing.assert_array_equal(got.astype(np.float32), stored[:, head])
    with pytest.raises(fot_mem.TokenIndexError, match="kv_heads"):
        store._core.value_views("a", 6, 2)
    assert store._core.value_views("absent", 6, 0) == []
