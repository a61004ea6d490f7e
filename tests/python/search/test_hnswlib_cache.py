"""Cached hnswlib index files under attack: hnswlib trusts every byte it loads, so a damaged
entry point or link used to crash the interpreter. Now each file is loaded only when its seal
(size, CRC-32, parameters) matches and the core has checked its structure; `verify` reports a
damaged one. Every damaged load runs in a fresh process, so a crash fails the test rather than
killing pytest."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import fot_mem
import numpy as np
import pytest
from fot_mem import StoreCorruptError, _core
from fot_mem.backends import hnswlib_graphs as hb

hnswlib = pytest.importorskip("hnswlib")
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

SPAN, TOKENS, DIM, M = 256, 600, 8, 8
HEADER = struct.Struct("<6QiI3QdQ")  # hnswlib's header: entry point at byte 52


def build(path: Path) -> np.ndarray:
    """A store of 600 tokens whose two sealed spans have saved, sealed hnswlib indexes."""
    keys = np.random.default_rng(0).standard_normal((TOKENS, 1, DIM), dtype=np.float32)
    hnsw = {"span_tokens": SPAN, "m": M, "ef_construction": 40}
    with fot_mem.MemoryStore.create(
        path, layers=[0], kv_heads=1, head_dim=DIM, chunk_tokens=64, hnsw=hnsw
    ) as store:
        store.document("a").append(0, keys, keys)
        hb.clear_cache()
        store.document("a").search(0, keys[:2], 4, backend="hnswlib")
    return keys


def index_file(store: Path) -> Path:
    return next(store.rglob("hnswlib-000000-h0.bin"))


def reseal(bin_path: Path) -> None:
    """Makes the seal vouch for the file's current bytes (so only the structure check is left)."""
    seal = Path(hb.seal_path(str(bin_path)))
    s = json.loads(seal.read_text())
    data = bin_path.read_bytes()
    s["bytes"], s["crc32"] = len(data), zlib.crc32(data)
    seal.write_text(json.dumps(s))


def damage(data: bytearray, how: str) -> None:
    size = HEADER.unpack_from(data)[3]
    if how == "bit in level-0 links":  # element 0's link count: far beyond maxM0
        data[HEADER.size + 1] ^= 0x40
    elif how == "link id":  # element 5's first link: an element that does not exist
        struct.pack_into("<I", data, HEADER.size + 5 * size + 4, 10**6)
    elif how == "entry point":
        struct.pack_into("<I", data, 52, 0xFFFFFF)


SEARCH = """
import sys, warnings, numpy as np, fot_mem
keys = np.random.default_rng(0).standard_normal((600, 1, 8), dtype=np.float32)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    with fot_mem.MemoryStore.open(sys.argv[1], readonly=True) as store:
        s, i = store.document("a").search(0, keys[:50], 8, backend="hnswlib")
print(sum("rebuilding" in str(x.message) for x in w))
np.save(sys.argv[2], i)
"""

DAMAGES = ["bit in level-0 links", "link id", "entry point"]


@pytest.mark.parametrize("resealed", [False, True], ids=["seal-mismatch", "resealed"])
@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_index_file_is_rebuilt_not_loaded(tmp_path, run_py, how, resealed) -> None:
    store = tmp_path / "s"
    build(store)
    out = run_py(SEARCH, store, tmp_path / "good.npy")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0"]  # the sealed files load
    path = index_file(store)
    data = bytearray(path.read_bytes())
    damage(data, how)
    path.write_bytes(bytes(data))
    if resealed:  # a checksum that matches: the structure check alone must refuse the file
        reseal(path)
    report = fot_mem.MemoryStore.verify(store)
    assert not report["ok"]
    [problem] = report["problems"]
    assert problem["path"].endswith("hnswlib-000000-h0.bin")
    assert "damaged hnswlib index" in problem["message"]
    out = run_py(SEARCH, store, tmp_path / "after.npy")
    assert out.returncode == 0, f"search crashed ({out.returncode}): {out.stderr}"
    assert out.stdout.split() == ["1"], out.stderr  # warned once, rebuilt in memory
    # hnswlib's threaded build is not deterministic: the rebuilt graph may differ slightly.
    good, after = np.load(tmp_path / "good.npy"), np.load(tmp_path / "after.npy")
    assert np.mean([len(set(a) & set(b)) / 8 for a, b in zip(good[:, 0], after[:, 0])]) > 0.9


def test_verify_of_sealed_unsealed_and_mismatched_files(tmp_path) -> None:
    store = tmp_path / "s"
    build(store)
    assert fot_mem.MemoryStore.verify(store) == fot_mem.MemoryStore.verify(store, deep=True)
    assert fot_mem.MemoryStore.verify(store)["problems"] == []
    path = index_file(store)
    seal = Path(hb.seal_path(str(path)))
    text = seal.read_text()
    seal.unlink()  # an older fot_mem's file: harmless, rebuilt on use
    report = fot_mem.MemoryStore.verify(store)
    assert report["ok"] and "without its seal" in report["problems"][0]["message"]
    s = json.loads(text)
    s["params"]["dim"] = 16
    seal.write_text(json.dumps(s))
    report = fot_mem.MemoryStore.verify(store, deep=False)
    assert not report["ok"] and "dim 16 (head_dim 8)" in report["problems"][0]["message"]
    seal.write_text("{")
    assert "unreadable seal" in fot_mem.MemoryStore.verify(store)["problems"][0]["message"]


def test_an_unsealed_file_is_rebuilt_and_sealed(tmp_path) -> None:
    store = tmp_path / "s"
    keys = build(store)
    path = index_file(store)
    seal = Path(hb.seal_path(str(path)))
    seal.unlink()
    hb.clear_cache()
    with fot_mem.MemoryStore.open(store) as s:
        s.document("a").search(0, keys[:2], 4, backend="hnswlib")
    assert seal.exists() and fot_mem.MemoryStore.verify(store)["problems"] == []


@pytest.fixture(scope="module")
def small_index(tmp_path_factory) -> tuple[bytes, dict]:
    """A real hnswlib file (64 keys of dim 4, M 4: several levels) and its parameters."""
    path = tmp_path_factory.mktemp("hl") / "hnswlib-000000-h0.bin"
    keys = np.random.default_rng(1).standard_normal((64, 4), dtype=np.float32)
    index = hb._build(hnswlib, keys, 100, hb.Params(4, 20, 16, 64))
    index.save_index(str(path))
    params = {"start": 100, "count": 64, "dim": 4, "m": 4, "ef_construction": 20}
    return path.read_bytes(), params


def test_property_the_structure_check_lets_no_crash_through(small_index, tmp_path, run_py) -> None:
    """Random byte damage of a real file, resealed: the core's check either refuses it
    (StoreCorruptError) or hnswlib loads and searches it in a fresh process without crashing."""
    data, p = small_index
    args = (p["start"], p["count"], p["dim"], p["m"], p["ef_construction"])
    accepted: list[Path] = []
    counter = iter(range(10**6))

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @hypothesis.given(
        st.lists(
            st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)), min_size=1, max_size=4
        )
    )
    def check(flips: list[tuple[int, int]]) -> None:
        b = bytearray(data)
        for at, x in flips:
            b[at] ^= x
        path = tmp_path / f"{next(counter)}-hnswlib.bin"
        path.write_bytes(bytes(b))
        seal = tmp_path / "x.seal"
        seal.write_text(
            json.dumps({"format": 1, "bytes": len(b), "crc32": zlib.crc32(bytes(b)), "params": p})
        )
        try:
            assert _core.hnswlib_check(str(path), str(seal), *args)
        except StoreCorruptError:
            path.unlink()
            return
        accepted.append(path)

    check()
    assert accepted  # damage to the vectors is allowed through: it cannot crash
    out = run_py(
        """
        import sys, hnswlib, numpy as np
        q = np.random.default_rng(2).standard_normal((8, 4), dtype=np.float32)
        for path in sys.argv[1:]:
            index = hnswlib.Index(space="ip", dim=4)
            index.load_index(path, max_elements=64)
            index.set_ef(16)
            try:
                index.knn_query(q, k=5)
            except RuntimeError:  # fewer than k found: a clean error is fine
                pass
        """,
        *accepted,
    )
    assert out.returncode == 0, f"hnswlib crashed ({out.returncode}) on an accepted file"


def test_the_check_accepts_what_hnswlib_writes(small_index, tmp_path) -> None:
    data, p = small_index
    path = tmp_path / "hnswlib-000000-h0.bin"
    path.write_bytes(data)
    seal = tmp_path / "hnswlib-000000-h0.seal"
    args = (p["start"], p["count"], p["dim"], p["m"], p["ef_construction"])
    _core.hnswlib_seal(str(path), str(seal), *args)
    assert _core.hnswlib_check(str(path), str(seal), *args)
    assert not _core.hnswlib_check(str(path), str(seal), 0, *args[1:])  # other parameters
    path.write_bytes(data[:-1])
    with pytest.raises(StoreCorruptError, match="bytes"):
        _core.hnswlib_check(str(path), str(seal), *args)
    with pytest.raises(StoreCorruptError, match="label"):  # sealing checks the structure too
        _core.hnswlib_seal(str(path), str(seal), 0, *args[1:])
    assert os.path.exists(seal)
