"""The store's API: creation and configuration, documents, append/length/read, nbytes, lifecycle,
and every input array type the Python layer accepts."""

from __future__ import annotations

from pathlib import Path

import fot_mem
import numpy as np
import pytest
from fm_oracle import ELEMENT_BYTES, bf16_bits, check_search, expected_gather, random_kv, round_to
from fot_mem import Document, MemoryStore

torch = pytest.importorskip("torch")
ml_dtypes = pytest.importorskip("ml_dtypes")


# -- the API exactly as documented -----------------------------------------------------------


def test_documented_api_end_to_end(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "mem"
    tokens, kv_heads, head_dim, heads = 150, 8, 128, 16
    store = fot_mem.MemoryStore.create(
        path, layers=[6, 12, 18], kv_heads=8, head_dim=128, dtype="bfloat16"
    )
    assert store.value_dim == store.head_dim == 128  # value_dim defaults to head_dim
    doc = store.document("book-1")  # created on first append
    assert "book-1" not in store
    keys, values = random_kv(rng, tokens, kv_heads, head_dim)
    n = doc.append(6, keys[:100], values[:100])
    assert n == 100
    n = doc.append(6, torch.from_numpy(keys[100:]), torch.from_numpy(values[100:]))
    assert n == tokens == doc.length(6)
    assert "book-1" in store
    assert doc.length(12) == 0

    queries = rng.standard_normal((5, heads, head_dim), dtype=np.float32)
    scores, ids = doc.search(6, queries, k=32)
    assert scores.shape == ids.shape == (5, heads, 32)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    stored_k = round_to(keys, "bfloat16")
    stored_v = round_to(values, "bfloat16")
    check_search(scores, ids, stored_k, queries, 32)
    gk, gv = doc.gather(6, ids)
    assert gk.shape == (5, heads, 32, head_dim) and gv.shape == (5, heads, 32, head_dim)
    ek, ev = expected_gather(stored_k, stored_v, ids)
    np.testing.assert_array_equal(gk, ek)
    np.testing.assert_array_equal(gv, ev)

    doc2 = store.document("book-2")
    k2, v2 = random_kv(rng, 40, kv_heads, head_dim)
    assert doc2.append(6, k2, v2) == 40
    queries_b = rng.standard_normal((2, 5, heads, head_dim), dtype=np.float32)
    bscores, bids = store.search(["book-1", "book-2"], 6, queries_b, k=32)
    assert bscores.shape == bids.shape == (2, 5, heads, 32)
    check_search(bscores[0], bids[0], stored_k, queries_b[0], 32)
    check_search(bscores[1], bids[1], round_to(k2, "bfloat16"), queries_b[1], 32)

    store.flush()
    store.close()
    assert store.closed
    with fot_mem.MemoryStore.open(path) as store:
        assert not store.readonly
        assert store.documents() == ["book-1", "book-2"]
        s2, i2 = store.document("book-1").search(6, queries, k=32)
        np.testing.assert_array_equal(i2, ids)
        np.testing.assert_array_equal(s2, scores)
    assert store.closed
    ro = fot_mem.MemoryStore.open(path, readonly=True)
    try:
        assert ro.readonly
        assert ro.document("book-2").length(6) == 40
    finally:
        ro.close()


# -- configuration ---------------------------------------------------------------------------


def test_config_properties_and_repr(make_store, store_path: Path) -> None:
    store = make_store(
        path=store_path, dtype="float16", kv_heads=3, head_dim=10, value_dim=6, chunk_tokens=9
    )
    assert store.layers == [6, 12, 18]
    assert store.kv_heads == 3
    assert store.head_dim == 10
    assert store.value_dim == 6
    assert store.dtype == "float16"
    assert store.chunk_tokens == 9
    assert store.config == {
        "layers": [6, 12, 18],
        "kv_heads": 3,
        "head_dim": 10,
        "value_dim": 6,
        "dtype": "float16",
        "chunk_tokens": 9,
        "hnsw": None,
    }
    assert store.path == str(store_path)
    assert isinstance(store.path, str)
    assert store.readonly is False
    assert store.closed is False
    r = repr(store)
    assert r.startswith("MemoryStore(")
    for part in ("read-write", "kv_heads=3", "head_dim=10", "value_dim=6", "'float16'", "9"):
        assert part in r, (part, r)
    store.close()
    assert "closed" in repr(store)
    # The configuration stays readable after close.
    assert store.kv_heads == 3


def test_default_chunk_tokens_and_value_dim(store_path: Path) -> None:
    with MemoryStore.create(store_path, layers=[0], kv_heads=1, head_dim=4) as s:
        assert s.chunk_tokens == fot_mem.DEFAULT_CHUNK_TOKENS
        assert s.value_dim == 4
        assert s.dtype == "float32"


@pytest.mark.parametrize(
    ("spelling", "name"),
    [
        ("float32", "float32"),
        ("fp32", "float32"),
        ("f16", "float16"),
        ("half", "float16"),
        ("bf16", "bfloat16"),
        (np.float16, "float16"),
        (np.dtype("float32"), "float32"),
        ("torch.bfloat16", "bfloat16"),
    ],
)
def test_dtype_spellings(tmp_path: Path, spelling, name: str) -> None:
    path = tmp_path / "s"
    with MemoryStore.create(path, layers=[1], kv_heads=1, head_dim=2, dtype=spelling) as s:
        assert s.dtype == name


def test_torch_dtype_object_as_storage_dtype(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with MemoryStore.create(path, layers=[1], kv_heads=1, head_dim=2, dtype=torch.float16) as s:
        assert s.dtype == "float16"


def test_constants() -> None:
    assert fot_mem.FORMAT_VERSION == 2
    assert fot_mem.MAX_K == 1 << 16
    assert fot_mem.DEFAULT_CHUNK_TOKENS > 0
    assert isinstance(fot_mem.__version__, str) and fot_mem.__version__


def test_create_accepts_pathlib_and_str_and_missing_parents(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    with MemoryStore.create(deep, layers=[0], kv_heads=1, head_dim=2) as s:
        assert Path(s.path) == deep
    assert (deep / "manifest.json").is_file()
    with MemoryStore.open(str(deep)) as s:
        assert s.layers == [0]


def test_create_in_existing_empty_directory(tmp_path: Path) -> None:
    d = tmp_path / "empty"
    d.mkdir()
    with MemoryStore.create(d, layers=[0], kv_heads=1, head_dim=2) as s:
        assert s.documents() == []


# -- documents -------------------------------------------------------------------------------


def test_documents_created_on_first_append_and_listed_sorted(store, rng) -> None:
    assert store.documents() == []
    assert len(store) == 0
    names = ["zeta", "alpha", "mid", "Ünïcödé ☃", "with/slash", "../../escape"]
    for name in names:
        doc = store.document(name)
        assert isinstance(doc, Document)
        assert doc.name == name
        assert not doc.exists
        assert name not in store
        k, v = random_kv(rng, 3, 2, 8)
        assert doc.append(12, k, v) == 3
        assert doc.exists
        assert name in store
    assert store.documents() == sorted(names)
    assert len(store) == len(names)
    assert [d.name for d in store] == sorted(names)
    assert 42 not in store  # non-strings are never contained
    # Document names never become paths: nothing was written outside the store.
    root = Path(store.path)
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name]


def test_document_handle_does_not_create(store) -> None:
    doc = store.document("ghost")
    assert doc.length(6) == 0
    assert doc.nbytes == 0
    assert "ghost" not in store
    assert store.documents() == []
    k, v = doc.read(6)
    assert k.shape == (0, 2, 8) and v.shape == (0, 2, 8)


def test_delete_and_recreate(store, rng) -> None:
    k, v = random_kv(rng, 10, 2, 8)
    doc = store.document("a")
    doc.append(6, k, v)
    store.document("b").append(6, k, v)
    assert store.delete("a") is True
    assert "a" not in store
    assert store.documents() == ["b"]
    assert store.delete("a") is False
    assert doc.length(6) == 0
    # A re-created document starts empty and never sees the old tokens.
    k2, v2 = random_kv(rng, 4, 2, 8)
    assert doc.append(6, k2, v2) == 4
    rk, rv = doc.read(6)
    np.testing.assert_array_equal(rk, k2)
    np.testing.assert_array_equal(rv, v2)
    assert doc.delete() is True
    assert not doc.exists
    assert store.document("b").length(6) == 10


def test_document_repr(store, rng) -> None:
    doc = store.document("book")
    k, v = random_kv(rng, 5, 2, 8)
    doc.append(12, k, v)
    r = repr(doc)
    assert "book" in r and "12: 5" in r and "6: 0" in r
    store.close()
    assert "closed" in repr(doc)


# -- append / length / read ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_append_across_chunks_and_read_back(make_store, rng, dtype: str) -> None:
    store = make_store(dtype=dtype, kv_heads=2, head_dim=8, value_dim=5, chunk_tokens=7)
    doc = store.document("d")
    sizes = [1, 6, 7, 13, 2, 14]  # crosses chunk boundaries at every offset
    all_k, all_v = [], []
    total = 0
    for n in sizes:
        k, v = random_kv(rng, n, 2, 8, 5)
        total += n
        assert doc.append(6, k, v) == total
        assert doc.length(6) == total
        all_k.append(k)
        all_v.append(v)
    keys = np.concatenate(all_k)
    values = np.concatenate(all_v)
    rk, rv = doc.read(6)
    assert rk.dtype == np.float32 and rv.dtype == np.float32
    assert rk.shape == (total, 2, 8) and rv.shape == (total, 2, 5)
    np.testing.assert_array_equal(rk, round_to(keys, dtype))
    np.testing.assert_array_equal(rv, round_to(values, dtype))
    # Slices, including ones that start and stop inside chunks.
    for start, stop in [(0, 1), (3, 17), (7, 14), (20, total), (total, total), (5, 5)]:
        sk, sv = doc.read(6, start, stop)
        np.testing.assert_array_equal(sk, round_to(keys[start:stop], dtype))
        np.testing.assert_array_equal(sv, round_to(values[start:stop], dtype))
    # Layers are independent.
    assert doc.length(12) == 0 and doc.length(18) == 0


def test_layers_are_independent(store, rng) -> None:
    doc = store.document("d")
    k6, v6 = random_kv(rng, 9, 2, 8)
    k12, v12 = random_kv(rng, 4, 2, 8)
    doc.append(6, k6, v6)
    doc.append(12, k12, v12)
    assert (doc.length(6), doc.length(12), doc.length(18)) == (9, 4, 0)
    np.testing.assert_array_equal(doc.read(12)[0], k12)
    np.testing.assert_array_equal(doc.read(6)[1], v6)


def test_empty_append_returns_length(store, rng) -> None:
    doc = store.document("d")
    empty_k = np.zeros((0, 2, 8), np.float32)
    assert doc.append(6, empty_k, empty_k) == 0
    assert "d" not in store  # an empty append does not create the document
    k, v = random_kv(rng, 3, 2, 8)
    doc.append(6, k, v)
    assert doc.append(6, empty_k, empty_k) == 3
    assert doc.length(6) == 3


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_nbytes(make_store, rng, dtype: str) -> None:
    store = make_store(dtype=dtype, kv_heads=3, head_dim=8, value_dim=4)
    assert store.nbytes == 0
    token_bytes = 3 * (8 + 4) * ELEMENT_BYTES[dtype]
    a, b = store.document("a"), store.document("b")
    a.append(6, *random_kv(rng, 10, 3, 8, 4))
    a.append(18, *random_kv(rng, 3, 3, 8, 4))
    b.append(12, *random_kv(rng, 8, 3, 8, 4))
    assert a.nbytes == 13 * token_bytes
    assert b.nbytes == 8 * token_bytes
    assert store.nbytes == 21 * token_bytes
    assert store.document("missing").nbytes == 0
    store.delete("a")
    assert store.nbytes == 8 * token_bytes


# -- lifecycle -------------------------------------------------------------------------------


def test_close_is_idempotent_and_context_manager_closes(store_path: Path, rng) -> None:
    with MemoryStore.create(store_path, layers=[0], kv_heads=1, head_dim=4) as s:
        s.document("x").append(0, *random_kv(rng, 2, 1, 4))
        s.flush()
    assert s.closed
    s.close()  # closing twice is fine
    assert s.closed
    # The writer lock went with the close: a new writer opens at once.
    with MemoryStore.open(store_path) as s2:
        assert s2.document("x").length(0) == 2


def test_context_manager_closes_on_exception(store_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with MemoryStore.create(store_path, layers=[0], kv_heads=1, head_dim=4) as s:
            raise RuntimeError("boom")
    assert s.closed
    with MemoryStore.open(store_path) as s2:
        assert not s2.closed


def test_reopen_read_write_keeps_appending(store_path: Path, rng) -> None:
    k, v = random_kv(rng, 30, 2, 8)
    with MemoryStore.create(store_path, layers=[6], kv_heads=2, head_dim=8, chunk_tokens=7) as s:
        assert s.document("d").append(6, k[:11], v[:11]) == 11
    with MemoryStore.open(store_path) as s:
        assert s.chunk_tokens == 7 and s.kv_heads == 2
        assert s.document("d").append(6, k[11:], v[11:]) == 30
    with MemoryStore.open(store_path, readonly=True) as s:
        rk, rv = s.document("d").read(6)
        np.testing.assert_array_equal(rk, k)
        np.testing.assert_array_equal(rv, v)


def test_readonly_and_writer_in_same_process(store_path: Path, rng) -> None:
    w = MemoryStore.create(store_path, layers=[6], kv_heads=2, head_dim=8, chunk_tokens=7)
    try:
        r = MemoryStore.open(store_path, readonly=True)
        try:
            doc_w, doc_r = w.document("d"), r.document("d")
            assert doc_r.length(6) == 0
            k, v = random_kv(rng, 20, 2, 8)
            w.document("d").append(6, k[:5], v[:5])
            assert doc_r.length(6) == 5  # committed tokens are visible at once
            doc_w.append(6, k[5:], v[5:])
            assert doc_r.length(6) == 20
            np.testing.assert_array_equal(doc_r.read(6)[0], k)
            assert r.documents() == ["d"]
            w.document("e").append(6, k[:1], v[:1])
            r.refresh()
            assert r.documents() == ["d", "e"]
            assert "e" in r
        finally:
            r.close()
    finally:
        w.close()


# -- input types -----------------------------------------------------------------------------


def _stored(doc: Document, layer: int) -> tuple[np.ndarray, np.ndarray]:
    return doc.read(layer)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(
    "kind",
    [
        "np-float32",
        "np-float16",
        "np-float64",
        "ml-bfloat16",
        "torch-float32",
        "torch-float16",
        "torch-bfloat16",
        "torch-float64",
        "list",
    ],
)
def test_input_types(make_store, rng, dtype: str, kind: str) -> None:
    store = make_store(dtype=dtype, kv_heads=2, head_dim=8, value_dim=3)
    base_k = rng.standard_normal((9, 2, 8)) * 3
    base_v = rng.standard_normal((9, 2, 3)) * 3

    def convert(x: np.ndarray):
        lib, _, name = kind.partition("-")
        if lib == "np":
            return x.astype(name)
        if lib == "ml":
            return x.astype(np.float32).astype(ml_dtypes.bfloat16)
        if lib == "torch":
            return torch.from_numpy(x).to(getattr(torch, name))
        return x.tolist()

    k_in, v_in = convert(base_k), convert(base_v)
    # What the caller's array holds, as float64 -> float32 -> storage dtype.
    if kind == "list":
        exp_k, exp_v = base_k, base_v
    elif kind.startswith("torch"):
        exp_k, exp_v = k_in.double().numpy(), v_in.double().numpy()
    else:
        exp_k, exp_v = np.asarray(k_in, np.float64), np.asarray(v_in, np.float64)
    doc = store.document("d")
    assert doc.append(6, k_in, v_in) == 9
    rk, rv = _stored(doc, 6)
    np.testing.assert_array_equal(rk, round_to(exp_k, dtype))
    np.testing.assert_array_equal(rv, round_to(exp_v, dtype))
    # Queries of the same kind give the same answer as their float32 equivalent.
    q_base = rng.standard_normal((3, 4, 8))
    q_in = convert(q_base)
    if kind == "list":
        q32 = q_base.astype(np.float32)
    elif kind.startswith("torch"):
        q32 = q_in.double().numpy().astype(np.float32)
    else:
        q32 = np.asarray(q_in, np.float64).astype(np.float32)
    s1, i1 = doc.search(6, q_in, k=5)
    s2, i2 = doc.search(6, q32, k=5)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)
    check_search(s1, i1, rk, q32, 5)


def test_torch_bfloat16_round_trips_bit_exactly(make_store, rng) -> None:
    store = make_store(dtype="bfloat16", kv_heads=2, head_dim=16, chunk_tokens=7)
    keys = torch.from_numpy(rng.standard_normal((23, 2, 16), dtype=np.float32)).to(torch.bfloat16)
    # Include awkward values: signed zero, the largest and smallest (subnormal) bfloat16.
    finfo = torch.finfo(torch.bfloat16)
    keys[0, 0, :4] = torch.tensor([-0.0, finfo.max, -finfo.max, finfo.smallest_normal / 4])
    values = keys.flip(0).clone()
    doc = store.document("d")
    doc.append(6, keys, values)
    rk, rv = doc.read(6)
    back_k = torch.from_numpy(rk).to(torch.bfloat16)
    back_v = torch.from_numpy(rv).to(torch.bfloat16)
    assert torch.equal(back_k.view(torch.int16), keys.view(torch.int16))
    assert torch.equal(back_v.view(torch.int16), values.view(torch.int16))


def test_ml_dtypes_bfloat16_bits_match_our_rounding(make_store, rng) -> None:
    """The store's float32 -> bfloat16 rounding equals ml_dtypes' (nearest even), including exact
    ties and a wide range of magnitudes."""
    store = make_store(dtype="bfloat16", kv_heads=1, head_dim=32, chunk_tokens=64)
    x = rng.standard_normal((300, 1, 32)).astype(np.float32)
    x *= np.exp2(rng.integers(-120, 120, x.shape)).astype(np.float32)
    ties = (rng.integers(0, 1 << 15, (100, 1, 32)).astype(np.uint32) << 16) | 0x8000
    x[:100] = ties.view(np.float32)
    x[~np.isfinite(x) | (np.abs(x) > 3.3e38)] = 1.5
    doc = store.document("d")
    doc.append(6, x, x)
    rk, _ = doc.read(6)
    np.testing.assert_array_equal(rk.view(np.uint32) >> 16, bf16_bits(x).astype(np.uint32))
    via_ml = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(rk.view(np.uint32), via_ml.view(np.uint32))


def test_float32_to_float16_rounding_matches_numpy(make_store, rng) -> None:
    """Rounding float32 into a float16 store equals numpy's (nearest even), for normals,
    subnormals, exact ties between two float16 values, and values that round down to 65504."""
    store = make_store(dtype="float16", kv_heads=1, head_dim=32, chunk_tokens=64)
    shape = (300, 1, 32)
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-26, 15, shape))).astype(np.float32)
    # Exact ties: a float16 value plus half its ulp (exact in float32).
    e = rng.integers(-14, 15, (100, 1, 32)).astype(np.float64)
    m = rng.integers(0, 1024, (100, 1, 32)).astype(np.float64)
    sign = rng.choice([-1.0, 1.0], (100, 1, 32))
    x[:100] = (sign * ((1 + m / 1024) * np.exp2(e) + np.exp2(e - 11))).astype(np.float32)
    x[100, 0, :4] = [65519.0, -65519.0, 2.0**-25, 3 * 2.0**-26]  # last two: subnormal ties
    x[np.abs(x) >= 65520] = 0.5
    doc = store.document("d")
    doc.append(6, x, x)
    rk, rv = doc.read(6)
    want = x.astype(np.float16)
    np.testing.assert_array_equal(rk.astype(np.float16).view(np.uint16), want.view(np.uint16))
    np.testing.assert_array_equal(rv.astype(np.float16).view(np.uint16), want.view(np.uint16))


def test_float16_round_trips_bit_exactly_including_subnormals(make_store, rng) -> None:
    store = make_store(dtype="float16", kv_heads=1, head_dim=16)
    x = (rng.standard_normal((40, 1, 16)) * np.exp2(rng.integers(-24, 15, (40, 1, 16)))).astype(
        np.float16
    )
    x[0, 0, :3] = [np.float16(-0.0), np.float16(65504), np.float16(6e-8)]
    doc = store.document("d")
    doc.append(6, x, x)
    rk, rv = doc.read(6)
    np.testing.assert_array_equal(rk.astype(np.float16).view(np.uint16), x.view(np.uint16))
    np.testing.assert_array_equal(rv.astype(np.float16).view(np.uint16), x.view(np.uint16))


def test_float16_input_is_rounded_once_into_float16_store(make_store) -> None:
    # 65519 rounds to 65504 (the largest float16), 1e-8 flushes to zero: both accepted.
    store = make_store(dtype="float16", kv_heads=1, head_dim=2)
    doc = store.document("d")
    k = np.array([[[65519.0, 1e-8]]], np.float32)
    doc.append(6, k, k)
    np.testing.assert_array_equal(doc.read(6)[0], [[[65504.0, 0.0]]])


def test_non_contiguous_inputs(make_store, rng) -> None:
    store = make_store(dtype="float32", kv_heads=2, head_dim=8, value_dim=4)
    doc = store.document("d")
    big_k = rng.standard_normal((20, 8, 2), dtype=np.float32)
    k_nc = big_k.transpose(0, 2, 1)[::2]  # [10, 2, 8], strided and transposed
    big_v = rng.standard_normal((10, 2, 8), dtype=np.float32)
    v_nc = big_v[:, :, ::2]  # [10, 2, 4]
    assert not k_nc.flags.c_contiguous and not v_nc.flags.c_contiguous
    assert doc.append(6, k_nc, v_nc) == 10
    rk, rv = doc.read(6)
    np.testing.assert_array_equal(rk, k_nc)
    np.testing.assert_array_equal(rv, v_nc)
    # torch, non-contiguous, bfloat16 into a float32 store
    tk = torch.from_numpy(big_k).to(torch.bfloat16).permute(0, 2, 1)[1::2]
    tv = torch.from_numpy(big_v).to(torch.bfloat16)[:, :, 1::2]
    assert not tk.is_contiguous()
    assert doc.append(6, tk, tv) == 20
    rk, rv = doc.read(6, 10, 20)
    np.testing.assert_array_equal(rk, tk.float().numpy())
    np.testing.assert_array_equal(rv, tv.float().numpy())
    # Non-contiguous queries: same result as their contiguous copy.
    q = rng.standard_normal((4, 8, 4), dtype=np.float32).transpose(0, 2, 1)[:, ::-1]
    s1, i1 = doc.search(6, q, k=6)
    s2, i2 = doc.search(6, np.ascontiguousarray(q), k=6)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)
    # Non-contiguous ids for gather.
    ids = np.ascontiguousarray(i1[:, :, ::-1])[:, :, ::2]
    gk, _ = doc.gather(6, ids)
    gk2, _ = doc.gather(6, np.ascontiguousarray(ids))
    np.testing.assert_array_equal(gk, gk2)


def test_input_arrays_are_not_modified(store, rng) -> None:
    k, v = random_kv(rng, 8, 2, 8)
    k0, v0 = k.copy(), v.copy()
    store.document("d").append(6, k, v)
    q = rng.standard_normal((2, 2, 8), dtype=np.float32)
    q0 = q.copy()
    store.document("d").search(6, q, k=3)
    np.testing.assert_array_equal(k, k0)
    np.testing.assert_array_equal(v, v0)
    np.testing.assert_array_equal(q, q0)


def test_outputs_are_independent_writable_arrays(store, rng) -> None:
    doc = store.document("d")
    k, v = random_kv(rng, 8, 2, 8)
    doc.append(6, k, v)
    rk, _ = doc.read(6)
    rk[:] = 0  # writing into a result must not touch the store
    np.testing.assert_array_equal(doc.read(6)[0], k)
    scores, ids = doc.search(6, k[:2], k=4)
    assert scores.flags.c_contiguous and ids.flags.c_contiguous
    ids[:] = -1
    _, i2 = doc.search(6, k[:2], k=4)
    assert np.all(i2 >= 0)


@pytest.mark.parametrize(
    "make_ids",
    [
        lambda a: torch.from_numpy(a),
        lambda a: a.astype(np.int32),
        lambda a: a.astype(np.uint16),
        lambda a: torch.from_numpy(a).to(torch.int32),
    ],
    ids=["torch-int64", "np-int32", "np-uint16", "torch-int32"],
)
def test_gather_accepts_integer_ids(store, rng, make_ids) -> None:
    doc = store.document("d")
    k, v = random_kv(rng, 12, 2, 8)
    doc.append(6, k, v)
    ids = rng.integers(0, 12, (1, 2, 5))
    gk, gv = doc.gather(6, make_ids(ids))
    ek, ev = expected_gather(k, v, ids)
    np.testing.assert_array_equal(gk, ek)
    np.testing.assert_array_equal(gv, ev)


def test_create_over_the_remains_of_a_crashed_create(tmp_path: Path) -> None:
    """A directory an interrupted create left (only the empty lock file and an empty docs/, no
    manifest) is not a store yet, and create takes it over."""
    d = tmp_path / "crashed"
    (d / "docs").mkdir(parents=True)
    (d / "LOCK").touch()
    with pytest.raises(fot_mem.exceptions.NotAStoreError):
        MemoryStore.open(d)
    with MemoryStore.create(d, layers=[0], kv_heads=1, head_dim=2) as s:
        assert s.documents() == []
    with MemoryStore.open(d, readonly=True) as s:
        assert s.layers == [0] and s.documents() == []
