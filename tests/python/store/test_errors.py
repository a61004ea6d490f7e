"""Every way a call can go wrong raises the specific fot_mem exception (and its builtin base where
one is documented) with a message that carries the numbers, and leaves the store as it was."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import fot_mem
import numpy as np
import pytest
from conftest import python_env
from fm_oracle import random_kv, round_to
from fot_mem import (
    DtypeError,
    FormatVersionError,
    FotMemError,
    InvalidValueError,
    MemoryStore,
    NotAStoreError,
    ReadOnlyError,
    ShapeError,
    StoreClosedError,
    StoreCorruptError,
    StoreExistsError,
    StoreIOError,
    StoreLockedError,
    StoreNotFoundError,
    TokenIndexError,
    UnknownLayerError,
)

torch = pytest.importorskip("torch")


def raises(exc: type[BaseException], *fragments: object):
    """pytest.raises(exc) whose message must contain every fragment (str() of it)."""
    pattern = "".join(f"(?=.*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc, match=re.compile(pattern, re.S))


def test_exception_hierarchy() -> None:
    builtin = {
        StoreNotFoundError: FileNotFoundError,
        StoreExistsError: FileExistsError,
        ReadOnlyError: PermissionError,
        StoreClosedError: ValueError,
        ShapeError: ValueError,
        DtypeError: TypeError,
        InvalidValueError: ValueError,
        UnknownLayerError: ValueError,
        TokenIndexError: IndexError,
        StoreIOError: OSError,
    }
    for cls, base in builtin.items():
        assert issubclass(cls, FotMemError) and issubclass(cls, base), cls
    for cls in (NotAStoreError, StoreCorruptError, FormatVersionError, StoreLockedError):
        assert issubclass(cls, FotMemError)
    assert issubclass(FotMemError, Exception)
    assert fot_mem.exceptions.FotMemError is FotMemError


# -- shapes ----------------------------------------------------------------------------------


@pytest.fixture
def doc(make_store, rng):
    """Document "d" of a float32 store (kv_heads 2, head_dim 8, value_dim 5) holding 10 tokens at
    layer 6."""
    store = make_store(kv_heads=2, head_dim=8, value_dim=5, chunk_tokens=7)
    d = store.document("d")
    d.append(6, *random_kv(rng, 10, 2, 8, 5))
    return d


def _kv(n=4, kvh=2, hd=8, vd=5, dtype=np.float32):
    return np.ones((n, kvh, hd), dtype), np.ones((n, kvh, vd), dtype)


@pytest.mark.parametrize(
    ("keys_shape", "values_shape", "fragments"),
    [
        ((4, 3, 8), (4, 2, 5), ("keys", "kv_heads 3", "2")),
        ((4, 2, 9), (4, 2, 5), ("keys", "head_dim 9", "8")),
        ((4, 2, 8), (4, 1, 5), ("values", "kv_heads 1", "2")),
        ((4, 2, 8), (4, 2, 8), ("values", "value_dim 8", "5")),
        ((4, 16), (4, 2, 5), ("keys", "3 dimensions", "[4, 16]")),
        ((4, 2, 8), (1, 4, 2, 5), ("values", "3 dimensions", "[1, 4, 2, 5]")),
        ((4, 2, 8), (3, 2, 5), ("4 tokens", "3")),
        ((0, 3, 8), (0, 2, 5), ("kv_heads 3",)),
        ((), (), ("3 dimensions",)),
    ],
)
def test_append_shape_errors(doc, keys_shape, values_shape, fragments) -> None:
    with raises(ShapeError, *fragments):
        doc.append(6, np.ones(keys_shape, np.float32), np.ones(values_shape, np.float32))
    assert doc.length(6) == 10


@pytest.mark.parametrize(
    ("shape", "fragments"),
    [
        ((2, 2, 7), ("head_dim 7", "8")),
        ((2, 3, 8), ("3 heads", "2 kv_heads")),
        ((2, 0, 8), ("0 heads",)),
        ((2, 8), ("(2, 8)",)),
        ((1, 2, 2, 8), ("[q, heads, head_dim]",)),
    ],
)
def test_document_search_shape_errors(doc, shape, fragments) -> None:
    with raises(ShapeError, *fragments):
        doc.search(6, np.ones(shape, np.float32), k=3)


@pytest.mark.parametrize(
    ("docs", "shape", "fragments"),
    [
        (["d"], (1, 2, 2, 7), ("head_dim 7", "8")),
        (["d"], (1, 2, 3, 8), ("3 heads", "2 kv_heads")),
        (["d", "e"], (1, 2, 2, 8), ("batch size 1", "2 documents")),
        (["d"], (2, 2, 8), ("4 dimensions", "[2, 2, 8]")),
        ([], (1, 1, 2, 8), ("batch size 1", "0 documents")),
    ],
)
def test_store_search_shape_errors(doc, docs, shape, fragments) -> None:
    with raises(ShapeError, *fragments):
        doc.store.search(docs, 6, np.ones(shape, np.float32), k=3)


def test_gather_shape_errors(doc) -> None:
    with raises(ShapeError, "3 heads", "2 kv_heads"):
        doc.gather(6, np.zeros((1, 3, 4), np.int64))
    with raises(ShapeError, "3 dimensions", "[4, 2]"):
        doc.gather(6, np.zeros((4, 2), np.int64))
    with raises(ShapeError, "0 heads"):
        doc.gather(6, np.zeros((1, 0, 4), np.int64))


# -- dtypes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        np.ones((4, 2, 8), np.int32),
        np.ones((4, 2, 8), np.int64),
        np.ones((4, 2, 8), np.uint16),  # never mistaken for bfloat16 bits
        np.ones((4, 2, 8), np.bool_),
        np.ones((4, 2, 8), np.complex64),
        np.full((4, 2, 8), "x"),
        torch.ones((4, 2, 8), dtype=torch.int64),
        torch.ones((4, 2, 8), dtype=torch.int16),
        torch.ones((4, 2, 8), dtype=torch.bool),
    ],
    ids=lambda a: str(a.dtype),
)
def test_non_float_arrays_are_refused(doc, bad) -> None:
    name = str(bad.dtype)
    k, v = _kv()
    with raises(DtypeError, "keys", name):
        doc.append(6, bad, v)
    with raises(DtypeError, "values", name):
        doc.append(6, k, bad[..., :5])
    with raises(DtypeError, "queries", name):
        doc.search(6, bad[:1], k=2)
    with raises(DtypeError, "queries", name):
        doc.store.search(["d"], 6, bad[None, :1], k=2)
    assert doc.length(6) == 10
    # DtypeError is a TypeError.
    with pytest.raises(TypeError):
        doc.append(6, bad, v)


def test_gather_refuses_float_ids(doc) -> None:
    with raises(DtypeError, "ids", "float64"):
        doc.gather(6, np.zeros((1, 2, 3)))
    with raises(DtypeError, "ids", "float32"):
        doc.gather(6, torch.zeros((1, 2, 3)))


@pytest.mark.parametrize("name", [3, None, b"bytes", ""])
def test_bad_document_names(store, name) -> None:
    with pytest.raises(FotMemError, match="document names"):
        store.document(name)
    with pytest.raises(FotMemError, match="document names"):
        store.delete(name)
    q = np.ones((1, 1, 2, 8), np.float32)
    with pytest.raises(FotMemError, match="document names"):
        store.search([name], 6, q, k=1)


# -- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["keys", "values"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_non_finite_data_is_refused_and_nothing_committed(
    make_store, rng, bad_value, where, dtype
) -> None:
    store = make_store(dtype=dtype, kv_heads=2, head_dim=8, value_dim=5, chunk_tokens=7)
    d = store.document("d")
    k0, v0 = random_kv(rng, 10, 2, 8, 5)
    d.append(6, k0, v0)
    # 20 tokens (three chunk files); the bad element sits in the last token.
    k, v = random_kv(rng, 20, 2, 8, 5)
    arr = k if where == "keys" else v
    arr[19, 1, 3] = bad_value
    flat = np.ravel_multi_index((19, 1, 3), arr.shape)
    expected = {"nan": "NaN", "inf": "inf", "-inf": "-inf"}[
        "nan" if np.isnan(bad_value) else ("inf" if bad_value > 0 else "-inf")
    ]
    with raises(InvalidValueError, where, expected, f"flat index {flat}"):
        d.append(6, k, v)
    assert d.length(6) == 10
    # The half-written tokens never show up: the next append lands right after token 9.
    k2, v2 = random_kv(rng, 3, 2, 8, 5)
    assert d.append(6, k2, v2) == 13
    rk, rv = d.read(6)
    np.testing.assert_array_equal(rk, round_to(np.concatenate([k0, k2]), dtype))
    np.testing.assert_array_equal(rv, round_to(np.concatenate([v0, v2]), dtype))


def test_failed_first_append_does_not_create_the_document(store) -> None:
    """A first append that fails (NaN) commits nothing: the document must not appear.
    (It does today: the manifest entry is written before the data is validated.)"""
    k, v = _kv(3, 2, 8, 8)
    k[1, 0, 0] = np.nan
    with raises(InvalidValueError, "NaN"):
        store.document("new").append(6, k, v)
    assert store.document("new").length(6) == 0
    assert "new" not in store
    assert store.documents() == []


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_queries_are_refused(doc, bad_value) -> None:
    q = np.ones((2, 2, 8), np.float32)
    q[1, 0, 5] = bad_value
    flat = np.ravel_multi_index((1, 0, 5), q.shape)
    word = "NaN" if np.isnan(bad_value) else "inf"
    with raises(InvalidValueError, "queries", word, f"flat index {flat}"):
        doc.search(6, q, k=3)
    with raises(InvalidValueError, "queries", word):
        doc.store.search(["d", "missing"], 6, np.stack([q, q]), k=3)
    with raises(InvalidValueError, "queries", word):
        doc.search(6, torch.from_numpy(q).to(torch.bfloat16), k=3)


@pytest.mark.parametrize("where", ["keys", "values"])
def test_float16_overflow(make_store, where) -> None:
    store = make_store(dtype="float16", kv_heads=2, head_dim=8)
    d = store.document("d")
    d.append(6, *_kv(2, 2, 8, 8))
    k, v = _kv(3, 2, 8, 8)
    (k if where == "keys" else v)[2, 1, 7] = 70000.0
    with raises(InvalidValueError, where, "70000", "float16", "flat index 47"):
        d.append(6, k, v)
    assert d.length(6) == 2
    k, v = _kv(3, 2, 8, 8)
    (k if where == "keys" else v)[0, 0, 0] = -65520.0  # rounds to -inf in float16
    with raises(InvalidValueError, "65520", "float16"):
        d.append(6, k, v)
    (k if where == "keys" else v)[0, 0, 0] = 65504.0  # the largest float16 is fine
    assert d.append(6, k, v) == 5


def test_bfloat16_input_beyond_float16_range(make_store) -> None:
    store = make_store(dtype="float16", kv_heads=2, head_dim=8)
    k = torch.ones((2, 2, 8), dtype=torch.bfloat16)
    k[1, 0, 2] = 70144.0  # exact in bfloat16
    with raises(InvalidValueError, "keys", "70144", "float16", "flat index 18"):
        store.document("d").append(6, k, k)
    assert store.document("d").length(6) == 0


def test_bfloat16_overflow(make_store) -> None:
    store = make_store(dtype="bfloat16", kv_heads=2, head_dim=8)
    k, v = _kv(2, 2, 8, 8)
    k[1, 1, 1] = np.finfo(np.float32).max  # finite in float32, rounds to inf in bfloat16
    with raises(InvalidValueError, "keys", "bfloat16"):
        store.document("d").append(6, k, v)
    assert store.document("d").length(6) == 0


def test_float64_beyond_float32_is_refused(doc) -> None:
    k, v = _kv(2)
    k = k.astype(np.float64)
    k[0, 0, 0] = 1e300
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # refused before any overflowing cast
        with raises(InvalidValueError, "keys", "1e+300", "flat index 0", "float32"):
            doc.append(6, k, v)
        with raises(InvalidValueError, "queries", "1e+300", "float32"):
            doc.search(6, np.full((1, 2, 8), 1e300), k=1)
    assert doc.length(6) == 10


@pytest.mark.parametrize("k", [0, -1, -(2**40)])
def test_k_must_be_positive(doc, k) -> None:
    q = np.ones((1, 2, 8), np.float32)
    with raises(InvalidValueError, "k", str(k)):
        doc.search(6, q, k=k)
    with raises(InvalidValueError, "k", str(k)):
        doc.store.search(["d"], 6, q[None], k=k)


def test_k_above_max_k(doc) -> None:
    q = np.ones((1, 2, 8), np.float32)
    with raises(InvalidValueError, str(fot_mem.MAX_K), str(fot_mem.MAX_K + 1)):
        doc.search(6, q, k=fot_mem.MAX_K + 1)


@pytest.mark.parametrize("k", [2.0, "3", None, True, np.float32(2)])
def test_k_must_be_an_int(doc, k) -> None:
    q = np.ones((1, 2, 8), np.float32)
    with raises(DtypeError, "k must be an integer", repr(k)):
        doc.search(6, q, k=k)
    with pytest.raises(TypeError):
        doc.store.search(["d"], 6, q[None], k=k)


@pytest.mark.parametrize("backend", ["annoy", "", "EXACT"])
def test_unknown_backend(doc, backend) -> None:
    with raises(InvalidValueError, "backend", repr(backend)):
        doc.search(6, np.ones((1, 2, 8), np.float32), k=1, backend=backend)
    with raises(InvalidValueError, "backend"):
        doc.store.search(["d"], 6, np.ones((1, 1, 2, 8), np.float32), k=1, backend=backend)


@pytest.mark.parametrize("layer", [7, 0, -6, -1, 2**40])
def test_unknown_layer(doc, layer) -> None:
    k, v = _kv(2)
    frag = (f"layer {layer}", "[6, 12, 18]")
    with raises(UnknownLayerError, *frag):
        doc.append(layer, k, v)
    with raises(UnknownLayerError, *frag):
        doc.length(layer)
    with raises(UnknownLayerError, *frag):
        doc.search(layer, np.ones((1, 2, 8), np.float32), k=1)
    with raises(UnknownLayerError, *frag):
        doc.store.search(["d"], layer, np.ones((1, 1, 2, 8), np.float32), k=1)
    with raises(UnknownLayerError, *frag):
        doc.gather(layer, np.zeros((1, 2, 1), np.int64))
    with raises(UnknownLayerError, *frag):
        doc.read(layer, 0, 0)
    # UnknownLayerError is a ValueError.
    with pytest.raises(ValueError):
        doc.length(layer)
    assert doc.length(6) == 10


def test_non_integer_layer_is_a_type_error(doc) -> None:
    for layer in ("6", 6.0, None):
        with pytest.raises(TypeError):
            doc.length(layer)


# -- token ids and ranges --------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", [10, 11, -2, 2**62, -(2**62)])
def test_gather_ids_out_of_range(doc, bad_id) -> None:
    ids = np.zeros((2, 2, 3), np.int64)
    ids[1, 1, 2] = bad_id
    with raises(TokenIndexError, str(bad_id), "10 tokens"):
        doc.gather(6, ids)
    with pytest.raises(IndexError):
        doc.gather(6, ids)


def test_gather_from_a_missing_document(store) -> None:
    with raises(TokenIndexError, "token id 0", "0 tokens"):
        store.document("ghost").gather(6, np.zeros((1, 2, 1), np.int64))
    with raises(TokenIndexError, "token id 0", "0 tokens"):
        store.document("ghost").gather(12, np.zeros((1, 2, 1), np.int64))


@pytest.mark.parametrize(
    ("start", "stop", "exc", "fragments"),
    [
        (0, 11, TokenIndexError, ("0..11", "10 tokens")),
        (11, 11, TokenIndexError, ("11..11", "10 tokens")),
        (6, 4, TokenIndexError, ("6..4",)),
        (-1, 4, FotMemError, ("-1",)),
        (0, -3, FotMemError, ("-3",)),
    ],
)
def test_read_out_of_range(doc, start, stop, exc, fragments) -> None:
    with raises(exc, *fragments):
        doc.read(6, start, stop)


# -- read-only and closed handles ------------------------------------------------------------


def test_writes_through_a_readonly_handle(store_path: Path, rng) -> None:
    with MemoryStore.create(store_path, layers=[6], kv_heads=2, head_dim=8) as w:
        w.document("d").append(6, *random_kv(rng, 4, 2, 8))
    with MemoryStore.open(store_path, readonly=True) as r:
        k, v = random_kv(rng, 2, 2, 8)
        with raises(ReadOnlyError, "read-only", "append", '"d"'):
            r.document("d").append(6, k, v)
        with raises(ReadOnlyError, "read-only", '"new"'):
            r.document("new").append(6, k, v)
        with raises(ReadOnlyError, "read-only", "delete", '"d"'):
            r.delete("d")
        with raises(ReadOnlyError, "read-only"):
            r.document("d").delete()
        with pytest.raises(PermissionError):
            r.document("d").append(6, k, v)
        assert r.document("d").length(6) == 4
        assert r.documents() == ["d"]
        r.flush()  # a no-op, not an error
    with MemoryStore.open(store_path) as w:
        assert w.documents() == ["d"] and w.document("d").length(6) == 4


CLOSED_CALLS = {
    "documents": lambda s, d, k: s.documents(),
    "len": lambda s, d, k: len(s),
    "contains": lambda s, d, k: "d" in s,
    "iter": lambda s, d, k: list(s),
    "nbytes": lambda s, d, k: s.nbytes,
    "doc.nbytes": lambda s, d, k: d.nbytes,
    "flush": lambda s, d, k: s.flush(),
    "refresh": lambda s, d, k: s.refresh(),
    "delete": lambda s, d, k: s.delete("d"),
    "append": lambda s, d, k: d.append(6, k, k),
    "length": lambda s, d, k: d.length(6),
    "read": lambda s, d, k: d.read(6, 0, 1),
    "search": lambda s, d, k: d.search(6, k[:1], k=1),
    "store.search": lambda s, d, k: s.search(["d"], 6, k[None, :1], k=1),
    "gather": lambda s, d, k: d.gather(6, np.zeros((1, 2, 1), np.int64)),
    "exists": lambda s, d, k: d.exists,
}


@pytest.mark.parametrize("op", sorted(CLOSED_CALLS))
@pytest.mark.parametrize("readonly", [False, True], ids=["writer", "reader"])
def test_use_after_close(store_path: Path, rng, op: str, readonly: bool) -> None:
    k, v = random_kv(rng, 4, 2, 8)
    with MemoryStore.create(store_path, layers=[6], kv_heads=2, head_dim=8) as w:
        w.document("d").append(6, k, v)
    store = MemoryStore.open(store_path, readonly=readonly)
    d = store.document("d")
    assert d.length(6) == 4
    store.close()
    assert store.closed
    call = CLOSED_CALLS[op]
    with raises(StoreClosedError, "closed", store_path):
        call(store, d, k)
    with pytest.raises(ValueError):
        call(store, d, k)
    store.close()  # closing again is allowed
    # The data is still there for a new handle.
    with MemoryStore.open(store_path, readonly=True) as r:
        assert r.document("d").length(6) == 4


def test_second_writer_in_the_same_process(store_path: Path) -> None:
    w = MemoryStore.create(store_path, layers=[0], kv_heads=1, head_dim=2)
    with raises(StoreLockedError, str(store_path), "readonly=True"):
        MemoryStore.open(store_path)
    with raises(StoreLockedError, str(store_path)):
        MemoryStore.open(store_path, readonly=False)
    r = MemoryStore.open(store_path, readonly=True)  # readers never block
    r.close()
    w.close()
    with MemoryStore.open(store_path) as w2:
        assert not w2.readonly


# -- opening and creating --------------------------------------------------------------------


def test_open_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    for readonly in (False, True):
        with raises(StoreNotFoundError, str(missing)):
            MemoryStore.open(missing, readonly=readonly)
        with pytest.raises(FileNotFoundError):
            MemoryStore.open(missing, readonly=readonly)
    assert not missing.exists()


@pytest.mark.parametrize("contents", [[], ["somefile"], ["docs/"]])
def test_open_a_directory_that_is_not_a_store(tmp_path: Path, contents) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    for c in contents:
        if c.endswith("/"):
            (d / c).mkdir()
        else:
            (d / c).write_text("hello")
    for readonly in (False, True):
        with raises(NotAStoreError, str(d), "manifest.json"):
            MemoryStore.open(d, readonly=readonly)
    assert sorted(p.name for p in d.iterdir()) == sorted(c.rstrip("/") for c in contents)


def test_open_a_regular_file(tmp_path: Path) -> None:
    """A path that is a file, not a directory, is not a store. (Today: StoreIOError
    'Not a directory'.)"""
    f = tmp_path / "file"
    f.write_text("x")
    with raises(NotAStoreError, str(f)):
        MemoryStore.open(f, readonly=True)


def test_create_over_a_regular_file(tmp_path: Path) -> None:
    """(Today: StoreIOError 'Not a directory'.)"""
    f = tmp_path / "file"
    f.write_text("x")
    with raises(NotAStoreError, str(f)):
        MemoryStore.create(f, layers=[0], kv_heads=1, head_dim=2)
    assert f.read_text() == "x"


def test_create_over_an_existing_store(store_path: Path) -> None:
    s = MemoryStore.create(store_path, layers=[0], kv_heads=1, head_dim=2)
    with raises(StoreExistsError, str(store_path)):
        MemoryStore.create(store_path, layers=[0], kv_heads=1, head_dim=2)
    s.close()
    with raises(StoreExistsError, str(store_path)):
        MemoryStore.create(store_path, layers=[1, 2], kv_heads=4, head_dim=8)
    with pytest.raises(FileExistsError):
        MemoryStore.create(store_path, layers=[0], kv_heads=1, head_dim=2)
    with MemoryStore.open(store_path) as s:
        assert s.layers == [0] and s.kv_heads == 1  # untouched


def test_create_in_a_non_empty_directory(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    with raises(NotAStoreError, str(d), "not empty"):
        MemoryStore.create(d, layers=[0], kv_heads=1, head_dim=2)
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]
    assert (d / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragments"),
    [
        ({"kv_heads": 0}, InvalidValueError, ("kv_heads", "0")),
        ({"kv_heads": -2}, InvalidValueError, ("kv_heads", "-2")),
        ({"head_dim": 0}, InvalidValueError, ("head_dim", "0")),
        ({"value_dim": 0}, InvalidValueError, ("value_dim", "0")),
        ({"chunk_tokens": 0}, InvalidValueError, ("chunk_tokens", "0")),
        ({"kv_heads": 5000}, InvalidValueError, ("5000",)),
        ({"dtype": "int8"}, DtypeError, ("int8", "float32")),
        ({"dtype": "float64"}, DtypeError, ("float64",)),
        ({"layers": [12, 6]}, InvalidValueError, ("sorted", "[12, 6]")),
        ({"layers": [6, 6]}, InvalidValueError, ("unique", "[6, 6]")),
        ({"layers": []}, InvalidValueError, ("at least one",)),
        ({"layers": [-1, 3]}, InvalidValueError, ("-1",)),
    ],
)
def test_bad_create_arguments(tmp_path: Path, kwargs, exc, fragments) -> None:
    args = {"layers": [6, 12], "kv_heads": 2, "head_dim": 8, **kwargs}
    path = tmp_path / "s"
    with raises(exc, *fragments):
        MemoryStore.create(path, **args)
    assert not path.exists()  # nothing left behind


# -- damaged files ---------------------------------------------------------------------------


def _layer_dir(store_path: Path, doc_index: int, layer: int) -> Path:
    return store_path / "docs" / f"d{doc_index:08d}" / f"layer-{layer}"


@pytest.fixture
def two_docs(store_path: Path, rng):
    """A closed store with documents "a" (30 tokens, 5 chunks of 7) and "b" (12 tokens)."""
    with MemoryStore.create(store_path, layers=[6], kv_heads=2, head_dim=8, chunk_tokens=7) as s:
        a_k, a_v = random_kv(rng, 30, 2, 8)
        s.document("a").append(6, a_k[:20], a_v[:20])
        s.document("a").append(6, a_k[20:], a_v[20:])
        b_k, b_v = random_kv(rng, 12, 2, 8)
        s.document("b").append(6, b_k, b_v)
    return store_path, (a_k, a_v), (b_k, b_v)


@pytest.mark.parametrize("damage", ["truncate", "extend", "remove"])
@pytest.mark.parametrize("readonly", [False, True])
def test_damaged_chunk_file(two_docs, damage: str, readonly: bool) -> None:
    path, _, (b_k, _b_v) = two_docs
    chunk = _layer_dir(path, 0, 6) / "000002.keys"
    assert chunk.stat().st_size == 2 * 7 * 8 * 4
    if damage == "truncate":
        with open(chunk, "r+b") as f:
            f.truncate(100)
    elif damage == "extend":
        with open(chunk, "ab") as f:
            f.write(b"\0" * 4)
    else:
        chunk.unlink()
    with MemoryStore.open(path, readonly=readonly) as s:
        assert s.documents() == ["a", "b"]
        a = s.document("a")
        q = np.ones((1, 2, 8), np.float32)
        with raises(StoreCorruptError, "000002.keys"):
            a.length(6)
        with raises(StoreCorruptError, "000002.keys"):
            a.search(6, q, k=3)
        with raises(StoreCorruptError, "000002.keys"):
            s.search(["b", "a"], 6, q[None].repeat(2, 0), k=3)
        with raises(StoreCorruptError):
            a.read(6)
        with raises(StoreCorruptError):
            a.gather(6, np.zeros((1, 2, 1), np.int64))
        if not readonly:
            with raises(StoreCorruptError):
                a.append(6, np.ones((1, 2, 8), np.float32), np.ones((1, 2, 8), np.float32))
        # The other document is unaffected.
        b = s.document("b")
        assert b.length(6) == 12
        np.testing.assert_array_equal(b.read(6)[0], b_k)
        scores, ids = b.search(6, q, k=3)
        assert np.all(ids >= 0) and np.all(np.isfinite(scores))


def test_corrupt_manifest_body(two_docs) -> None:
    path = two_docs[0]
    manifest = path / "manifest.json"
    data = bytearray(manifest.read_bytes())
    i = data.index(b'"kv_heads": 2') + len(b'"kv_heads": ')
    data[i : i + 1] = b"3"  # a plausible but unchecksummed edit
    manifest.write_bytes(bytes(data))
    for readonly in (False, True):
        with raises(StoreCorruptError, "manifest.json", "checksum"):
            MemoryStore.open(path, readonly=readonly)


def test_truncated_manifest(two_docs) -> None:
    path = two_docs[0]
    manifest = path / "manifest.json"
    data = manifest.read_bytes()
    manifest.write_bytes(data[: len(data) // 2])
    with raises(StoreCorruptError, "manifest.json"):
        MemoryStore.open(path, readonly=True)
    manifest.write_bytes(data.split(b"\n")[0])  # header only, no newline
    with raises(StoreCorruptError, "manifest.json"):
        MemoryStore.open(path, readonly=True)


def test_manifest_that_is_not_a_fot_mem_manifest(two_docs) -> None:
    path = two_docs[0]
    (path / "manifest.json").write_text('some-other-tool v2\n{"hello": 1}')
    with raises(NotAStoreError, "manifest"):
        MemoryStore.open(path)


def test_manifest_with_an_unchecksummed_bad_json(two_docs) -> None:
    """A manifest whose checksum is right but whose JSON is not a configuration."""
    import zlib

    path = two_docs[0]
    body = b'{"config": 1}'
    header = f"fot_mem-manifest version=1 crc32={zlib.crc32(body):08x}\n".encode()
    (path / "manifest.json").write_bytes(header + body)
    with raises(StoreCorruptError, "JSON"):
        MemoryStore.open(path)


def test_manifest_of_another_format_version(two_docs) -> None:
    path = two_docs[0]
    manifest = path / "manifest.json"
    current = f"version={fot_mem.FORMAT_VERSION}".encode()
    manifest.write_bytes(manifest.read_bytes().replace(current, b"version=7", 1))
    with raises(FormatVersionError, "7", str(fot_mem.FORMAT_VERSION)):
        MemoryStore.open(path, readonly=True)


def test_count_file_with_one_damaged_slot_falls_back(two_docs) -> None:
    """The newest commit (seq 2, 30 tokens) sits in slot 0; damaging it leaves the previous
    commit (20 tokens) in slot 1."""
    path, (a_k, _), _ = two_docs
    count = _layer_dir(path, 0, 6) / "count"
    data = bytearray(count.read_bytes())
    assert len(data) == 64
    data[14] ^= 0xFF
    count.write_bytes(bytes(data))
    with MemoryStore.open(path, readonly=True) as s:
        assert s.document("a").length(6) == 20
        np.testing.assert_array_equal(s.document("a").read(6)[0], a_k[:20])
    # A writer continues from the surviving commit.
    with MemoryStore.open(path) as s:
        assert s.document("a").length(6) == 20
        assert s.document("a").append(6, a_k[20:22], a_k[20:22]) == 22
    with MemoryStore.open(path, readonly=True) as s:
        assert s.document("a").length(6) == 22


@pytest.mark.parametrize("damage", ["both-slots", "short", "empty", "garbage"])
def test_damaged_count_file(two_docs, damage: str) -> None:
    path, _, _ = two_docs
    count = _layer_dir(path, 0, 6) / "count"
    data = bytearray(count.read_bytes())
    if damage == "both-slots":
        data[14] ^= 0xFF
        data[32 + 14] ^= 0xFF
    elif damage == "short":
        data = data[:10]
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"\x5a" * 64)
    count.write_bytes(bytes(data))
    for readonly in (True, False):
        with MemoryStore.open(path, readonly=readonly) as s:
            with raises(StoreCorruptError, "count", "commit slot"):
                s.document("a").length(6)
            with raises(StoreCorruptError):
                s.document("a").search(6, np.ones((1, 2, 8), np.float32), k=1)
            assert s.document("b").length(6) == 12


# -- a Rust panic ----------------------------------------------------------------------------


_panic = getattr(fot_mem._core, "_panic_for_tests", None)


@pytest.mark.skipif(_panic is None, reason="this build has no fot_mem._core._panic_for_tests hook")
def test_rust_panic_becomes_an_exception_and_the_interpreter_lives() -> None:
    code = (
        "import fot_mem\n"
        "try:\n"
        "    fot_mem._core._panic_for_tests('kaboom 42')\n"
        "except fot_mem.FotMemError as e:\n"
        "    print('caught', type(e).__name__, e)\n"
        "print('alive')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=python_env(),
        check=False,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert "caught FotMemError" in proc.stdout and "kaboom 42" in proc.stdout
    assert "alive" in proc.stdout
    # And in this interpreter too, repeatedly.
    for _ in range(3):
        with raises(FotMemError, "kaboom 7", "internal error"):
            _panic("kaboom 7")


# -- argument types --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [6.0, 6.7, "6", True, None])
def test_layer_must_be_an_integer(doc, bad) -> None:
    with raises(DtypeError, "layer must be an integer", repr(bad)):
        doc.length(bad)
    with raises(DtypeError, "layer must be an integer"):
        doc.search(bad, np.ones((1, 2, 8), np.float32), k=1)
    assert doc.length(np.int64(6)) == 10  # numpy integers are integers


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"kv_heads": 2.9}, "kv_heads"),
        ({"head_dim": "8"}, "head_dim"),
        ({"layers": [6.7]}, "layers"),
        ({"chunk_tokens": 7.0}, "chunk_tokens"),
        ({"value_dim": 5.5}, "value_dim"),
    ],
)
def test_create_refuses_non_integers(tmp_path, kwargs, fragment) -> None:
    args = {"layers": [6], "kv_heads": 2, "head_dim": 8, **kwargs}
    with raises(DtypeError, fragment, "must be an integer"):
        fot_mem.MemoryStore.create(tmp_path / "s", **args)
    assert not (tmp_path / "s").exists()


def test_read_range_must_be_integers_and_not_negative(doc) -> None:
    with raises(DtypeError, "start"):
        doc.read(6, 0.5, 2)
    with raises(fot_mem.TokenIndexError, "-1"):
        doc.read(6, -1)


def test_open_readonly_must_be_a_bool(make_store) -> None:
    store = make_store()
    with raises(DtypeError, "readonly", "'no'"):
        fot_mem.MemoryStore.open(store.path, readonly="no")


def test_store_search_refuses_a_single_name(doc) -> None:
    q = np.ones((1, 1, 2, 8), np.float32)
    with raises(DtypeError, "sequence of names"):
        doc.store.search("d", 6, q, k=1)


def test_big_endian_floats_are_converted(doc) -> None:
    keys = np.arange(2 * 8, dtype=">f4").reshape(1, 2, 8)
    values = np.ones((1, 2, 5), dtype=">f8")
    assert doc.append(6, keys, values) == 11
    got, _ = doc.read(6, 10, 11)
    np.testing.assert_array_equal(got, keys.astype(np.float32))


def test_open_or_create_on_a_regular_file(tmp_path) -> None:
    f = tmp_path / "file"
    f.write_text("not a store")
    with raises(NotAStoreError, "is a file"):
        fot_mem.MemoryStore.open(f)
    with raises(NotAStoreError, "is a file"):
        fot_mem.MemoryStore.create(f, layers=[0], kv_heads=1, head_dim=4)
    assert f.read_text() == "not a store"
