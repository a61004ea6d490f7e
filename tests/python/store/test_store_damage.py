"""The store under attack and damage (issue 19), through Python: a crafted manifest never makes
the store touch a path outside its folder, a lost layer is an error (never an empty layer to write
over), and `verify_reads=True` finds a sealed chunk altered behind the store's back."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from fm_oracle import random_kv
from fot_mem import DtypeError, MemoryStore, StoreCorruptError


def _store(path: Path, rng) -> Path:
    """Document "a": 10 tokens in layer 0 (chunks 0 and 1 sealed); layer 2 never appended."""
    with MemoryStore.create(path, layers=[0, 2], kv_heads=2, head_dim=8, chunk_tokens=4) as s:
        k, v = random_kv(rng, 10, 2, 8)
        s.document("a").append(0, k, v)
    return path


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text().split("\n", 1)[1])


def _write_manifest(path: Path, body: dict) -> None:
    data = json.dumps(body).encode()
    header = f"fot_mem-manifest version=2 crc32={zlib.crc32(data):08x}\n".encode()
    (path / "manifest.json").write_bytes(header + data)


def _layer(path: Path, layer: int) -> Path:
    return path / "docs" / _manifest(path)["documents"]["a"]["dir"] / f"layer-{layer}"


@pytest.mark.parametrize("bad", ["../../victim", "ABSOLUTE", "d00000000/../../victim", ".."])
def test_crafted_document_dir_is_refused(tmp_path: Path, rng, bad: str) -> None:
    path = _store(tmp_path / "store", rng)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    bad = str(victim) if bad == "ABSOLUTE" else bad
    body = _manifest(path)
    body["documents"]["a"]["dir"] = bad
    _write_manifest(path, body)
    for readonly in (False, True):
        with pytest.raises(StoreCorruptError, match=r'"a"') as e:
            MemoryStore.open(path, readonly=readonly)
        assert bad in str(e.value)
    assert not MemoryStore.verify(path)["ok"]
    assert (victim / "precious").read_text() == "keep me"
    assert sorted(p.name for p in victim.iterdir()) == ["precious"]


@pytest.mark.parametrize("lost", ["layer", "count", "document"])
def test_lost_layer_files_are_errors(store_path: Path, rng, lost: str) -> None:
    path = _store(store_path, rng)
    layer = _layer(path, 0)
    with MemoryStore.open(path, readonly=True) as s:
        assert s.document("a").length(2) == 0  # never appended: empty, not lost
    if lost == "layer":
        shutil.rmtree(layer)
    elif lost == "count":
        (layer / "count").unlink()
    else:
        shutil.rmtree(layer.parent)
    for readonly in (True, False):
        with MemoryStore.open(path, readonly=readonly) as s:
            with pytest.raises(StoreCorruptError, match="missing"):
                s.document("a").length(0)
            with pytest.raises(StoreCorruptError):
                s.document("a").search(0, np.ones((1, 2, 8), np.float32), k=2)
            if not readonly:
                k, v = random_kv(rng, 2, 2, 8)
                with pytest.raises(StoreCorruptError):
                    s.document("a").append(0, k, v)
    assert not MemoryStore.verify(path)["ok"]


def test_verify_reads_finds_an_altered_sealed_chunk(store_path: Path, rng) -> None:
    path = _store(store_path, rng)
    report = MemoryStore.verify(path)
    assert report["ok"] and report["checked"]["checksums"] == 2
    chunk = _layer(path, 0) / "000001.keys"
    data = bytearray(chunk.read_bytes())
    data[8] ^= 1  # the lowest mantissa bit of one key: still finite
    chunk.write_bytes(bytes(data))
    report = MemoryStore.verify(path)
    assert not report["ok"]
    assert [p["path"].rsplit("/", 1)[1] for p in report["problems"]] == ["000001.keys"]
    assert "checksum" in report["problems"][0]["message"]
    queries = np.ones((1, 2, 8), np.float32)
    with MemoryStore.open(path, readonly=True) as s:  # not asked to check: reads as before
        s.document("a").search(0, queries, k=2)
    with MemoryStore.open(path, readonly=True, verify_reads=True) as s:
        with pytest.raises(StoreCorruptError, match=r"chunk 1.*checksum"):
            s.document("a").search(0, queries, k=2)
    with pytest.raises(DtypeError, match="verify_reads"):
        MemoryStore.open(path, verify_reads="yes")  # type: ignore[arg-type]
