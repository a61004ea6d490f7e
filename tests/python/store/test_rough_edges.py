"""Arguments Python can express but the core cannot take (integers beyond 64 bits, lone
surrogates, NUL in paths, ragged lists, uint64 ids beyond int64) raise the store's own
exceptions, named for the argument; and `fot-mem verify` needs no torch."""

from __future__ import annotations

import json

import fot_mem
import numpy as np
import pytest
from fot_mem import (
    FotMemError,
    InvalidValueError,
    ShapeError,
    TokenIndexError,
    UnknownLayerError,
)


@pytest.fixture
def doc(store):
    keys = np.ones((10, 2, 8), np.float32)
    store.document("a").append(6, keys, keys)
    return store.document("a")


Q = np.ones((1, 2, 8), np.float32)
HUGE = (2**63, 2**64, -(2**63) - 1)


@pytest.mark.parametrize("n", HUGE)
def test_integers_beyond_64_bits_are_store_errors(store, doc, n) -> None:
    with pytest.raises(UnknownLayerError, match=f"layer {n} is out of range"):
        doc.search(n, Q, 2)
    with pytest.raises(UnknownLayerError, match="layer"):
        doc.length(n)
    with pytest.raises(InvalidValueError, match=f"k {n} is out of range"):
        doc.search(6, Q, n)
    with pytest.raises(InvalidValueError, match="k "):
        store.search(["a"], 6, Q[None], n)
    with pytest.raises(TokenIndexError, match="stop"):
        doc.read(6, 0, n)
    with pytest.raises(InvalidValueError, match="ef"):
        doc.search(6, Q, 2, backend="hnsw", ef=n)


def test_a_lone_surrogate_name_is_a_store_error(store, doc) -> None:
    with pytest.raises(InvalidValueError, match="valid Unicode"):
        store.document("a\ud800")
    with pytest.raises(InvalidValueError, match="valid Unicode"):
        store.search(["a\udc80"], 6, Q[None], 2)
    assert "a\ud800" not in store and "a" in store


def test_nul_and_unencodable_paths_are_named_as_given(tmp_path) -> None:
    bad = str(tmp_path / "x\0y")
    for call in (
        lambda: fot_mem.MemoryStore.open(bad),
        lambda: fot_mem.MemoryStore.verify(bad),
        lambda: fot_mem.MemoryStore.create(bad, layers=[0], kv_heads=1, head_dim=4),
    ):
        with pytest.raises(InvalidValueError, match=r"x\\x00y' contains a NUL"):
            call()
    with pytest.raises(InvalidValueError, match="cannot be encoded"):
        fot_mem.MemoryStore.open(str(tmp_path / "x\ud800y"))


def test_ragged_lists_are_shape_errors(doc) -> None:
    with pytest.raises(ShapeError, match="queries are not a rectangular array"):
        doc.search(6, [[[1.0] * 8, [1.0] * 8], [[1.0] * 8]], 2)
    with pytest.raises(ShapeError, match="keys are not a rectangular array"):
        doc.append(6, [[[1.0] * 8], [[1.0] * 7]], np.ones((2, 2, 8), np.float32))
    with pytest.raises(ShapeError, match="ids are not a rectangular array"):
        doc.gather(6, [[[1], [2, 3]]])


def test_uint64_ids_beyond_int64_are_named_unwrapped(doc) -> None:
    ids = np.array([[[0], [2**63 + 5]]], np.uint64)
    with pytest.raises(TokenIndexError, match=str(2**63 + 5)):
        doc.gather(6, ids)
    k, _ = doc.gather(6, np.array([[[0], [9]]], np.uint64))  # in range: fine
    assert k.shape == (1, 2, 1, 8)


def test_errors_are_all_fot_mem_errors(doc) -> None:
    for call in (lambda: doc.search(2**64, Q, 2), lambda: doc.gather(6, [[[1], [1, 2]]])):
        with pytest.raises(FotMemError):
            call()


def test_cli_verify_and_info_need_no_torch(tmp_path, run_py, make_store) -> None:
    store = make_store(path=tmp_path / "mem" / "store")
    keys = np.ones((5, 2, 8), np.float32)
    store.document("a").append(6, keys, keys)
    store.close()
    (tmp_path / "mem" / "tokens").mkdir()
    (tmp_path / "mem" / "tokens" / "a.u32").write_bytes(bytes(20))
    meta = {"model": "m", "model_info": {}, "documents": {"a": {"tokens": 5, "source": "x"}}}
    (tmp_path / "mem" / "fot-mem.json").write_text(json.dumps(meta))
    no_torch = """
        import sys
        sys.modules["torch"] = None  # `import torch` raises ImportError
        from fot_mem.cli import main
        try:
            main(sys.argv[1:])
        finally:
            assert "torch" not in {m.split(".")[0] for m in sys.modules if sys.modules[m]}
        """
    out = run_py(no_torch, "verify", tmp_path / "mem")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "warning" in out.stdout  # ingest not finished
    out = run_py(no_torch, "verify", tmp_path / "mem" / "store")
    assert out.returncode == 0 and "no problems found" in out.stdout, out.stderr
    out = run_py(no_torch, "ingest", tmp_path / "mem", "x.txt")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "fot-mem ingest: BackendUnavailableError" in out.stderr
