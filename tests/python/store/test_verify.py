"""`MemoryStore.verify` (the read-only store check) and `MemoryStore.describe`: a healthy store
checks clean with the right counts, each kind of damage is reported at its file with its
severity, verify never changes a file (even next to a writer), and describe agrees with the
store API."""

from __future__ import annotations

import hashlib
import math
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fot_mem
import numpy as np
import pytest
from conftest import MakeStore
from fm_oracle import random_kv
from fot_mem import MemoryStore, NotAStoreError, StoreNotFoundError

CHUNK = 7  # conftest's make_store default
SPAN = 14
LAYERS = (6, 12, 18)
# Tokens per (document, layer); layer 18 of "b" and all of "c"'s but one are never written.
LENGTHS = {("a", 6): 31, ("a", 12): 14, ("a", 18): 3, ("b", 6): 7, ("b", 12): 29, ("c", 6): 1}
LAYER = "docs/d00000000/layer-6"  # document "a" (the first created), 31 tokens, 2 spans


def build(make_store: MakeStore, rng: np.random.Generator) -> MemoryStore:
    store = make_store(layers=LAYERS, hnsw={"span_tokens": SPAN}, value_dim=5)
    for (name, layer), n in LENGTHS.items():
        keys, values = random_kv(rng, n, 2, 8, 5)
        store.document(name).append(layer, keys, values)
    store.wait_for_indexes()
    return store


@pytest.fixture
def healthy(make_store: MakeStore, rng: np.random.Generator) -> Path:
    """The path of a closed healthy store (see LENGTHS)."""
    store = build(make_store, rng)
    store.close()
    return Path(store.path)


def files(root: Path) -> Iterator[Path]:
    return (p for p in sorted(root.rglob("*")) if p.is_file())


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mode of every file, by relative path."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
        for p in files(root)
    }


def checked_verify(root: Path, **kw: Any) -> dict[str, Any]:
    """verify, asserting that it changed no file and that the report is well formed."""
    before = snapshot(root)
    report = MemoryStore.verify(root, **kw)
    assert snapshot(root) == before, "verify changed the store"
    assert set(report) == {"ok", "problems", "checked"}
    for p in report["problems"]:
        assert set(p) == {"severity", "path", "message"}
        assert p["severity"] in ("error", "warning")
        assert not os.path.isabs(p["path"]) and "internal error" not in p["message"], p
    assert report["ok"] == all(p["severity"] != "error" for p in report["problems"])
    return report


def at(report: dict[str, Any], path: str) -> list[dict[str, Any]]:
    return [p for p in report["problems"] if p["path"] == path]


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# -- a healthy store -------------------------------------------------------------------------


def expected_counts(root: Path) -> dict[str, int]:
    return {
        "documents": 3,
        "layers": 3 * len(LAYERS),
        "chunks": sum(math.ceil(n / CHUNK) for n in LENGTHS.values()),
        "index_files": sum(n // SPAN for n in LENGTHS.values()),
        "checksums": sum(n // CHUNK for n in LENGTHS.values()),
        "tokens": sum(LENGTHS.values()),
        "bytes": sum(p.stat().st_size for p in files(root)),
    }


@pytest.mark.parametrize("deep", [True, False])
def test_healthy_store_verifies_clean_with_counts(healthy: Path, deep: bool) -> None:
    report = checked_verify(healthy, deep=deep)
    assert report["problems"] == [] and report["ok"]
    assert report["checked"] == expected_counts(healthy)
    assert report["checked"]["index_files"] == 5


def test_verify_next_to_a_writer_and_a_reader(
    make_store: MakeStore, rng: np.random.Generator
) -> None:
    store = build(make_store, rng)  # stays open for writing
    root = Path(store.path)
    with MemoryStore.open(root, readonly=True) as reader:
        assert reader.documents() == ["a", "b", "c"]
        report = checked_verify(root)
    assert report["ok"] and report["problems"] == [], report
    assert report["checked"] == expected_counts(root)
    # The writer is untouched: it appends and searches as before.
    keys, values = random_kv(rng, 4, 2, 8, 5)
    assert store.document("a").append(6, keys, values) == 35
    assert store.document("a").search(6, keys[:1], k=3)[1].shape == (1, 2, 3)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_verify_on_a_read_only_tree(healthy: Path) -> None:
    paths = [healthy, *healthy.rglob("*")]
    modes = {p: p.stat().st_mode for p in paths}
    try:
        for p in paths:
            p.chmod(modes[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        report = MemoryStore.verify(healthy)
        assert report["ok"] and report["problems"] == [], report
    finally:
        for p in reversed(paths):
            p.chmod(modes[p])


def test_missing_path_and_non_store_raise(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError):
        MemoryStore.verify(tmp_path / "absent")
    with pytest.raises(FileNotFoundError):  # StoreNotFoundError is one
        MemoryStore.verify(tmp_path / "absent")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x.txt").write_text("not a store")
    with pytest.raises(NotAStoreError, match="not a fot_mem store"):
        MemoryStore.verify(tmp_path / "dir")
    with pytest.raises(NotAStoreError):
        MemoryStore.verify(tmp_path / "dir" / "x.txt")
    with pytest.raises(fot_mem.DtypeError):
        MemoryStore.verify(tmp_path, deep="yes")  # type: ignore[arg-type]


# -- each kind of damage ---------------------------------------------------------------------


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


Damage = Callable[[Path], None]
DAMAGE: dict[str, tuple[Damage, str, str]] = {
    # name: (what to do to the store root, the reported path, severity)
    "truncated chunk": (
        lambda r: truncate(r / LAYER / "000002.keys", 100),
        f"{LAYER}/000002.keys",
        "error",
    ),
    "missing chunk": (
        lambda r: (r / LAYER / "000004.values").unlink(),
        f"{LAYER}/000004.values",
        "error",
    ),
    # The last byte of the JSON body: fails the checksum (and the JSON).
    "manifest byte": (
        lambda r: flip(r / "manifest.json", (r / "manifest.json").stat().st_size - 2),
        "manifest.json",
        "error",
    ),
    # Slot 0 holds the creation commit (sequence 0), the older one.
    "commit record": (lambda r: flip(r / LAYER / "count", 13), f"{LAYER}/count", "error"),
    # Word 5 of the header is n, the span's tokens: covered by the header checksum.
    "index header": (
        lambda r: flip(r / LAYER / "hnsw-000001.idx", 20),
        f"{LAYER}/hnsw-000001.idx",
        "error",
    ),
    # The last word belongs to the last head's section: only its own checksum covers it.
    "index section": (
        lambda r: flip(
            r / LAYER / "hnsw-000000.idx", (r / LAYER / "hnsw-000000.idx").stat().st_size - 4
        ),
        f"{LAYER}/hnsw-000000.idx",
        "error",
    ),
    "stray index temp": (
        lambda r: (r / LAYER / "hnsw-000002.tmp4242").write_bytes(b"partial"),
        f"{LAYER}/hnsw-000002.tmp4242",
        "warning",
    ),
    "stray manifest temp": (
        lambda r: (r / "manifest.json.tmp").write_bytes(b"fot_mem-manifest"),
        "manifest.json.tmp",
        "warning",
    ),
    "unknown file": (
        lambda r: (r / LAYER / "notes.txt").write_text("hi"),
        f"{LAYER}/notes.txt",
        "warning",
    ),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_each_damage_is_reported_at_its_file(healthy: Path, name: str) -> None:
    damage, path, severity = DAMAGE[name]
    damage(healthy)
    report = checked_verify(healthy)
    assert [(p["path"], p["severity"]) for p in report["problems"]] == [(path, severity)], report
    assert report["ok"] == (severity == "warning")


def test_damaged_newest_commit_is_an_error_and_its_tokens_are_gone(healthy: Path) -> None:
    # One append: slot 1 holds sequence 1 (31 tokens); readers fall back to slot 0's 0 tokens,
    # so the chunks and index files of the layer are past the commit point.
    flip(healthy / LAYER / "count", 32 + 13)
    report = checked_verify(healthy)
    assert not report["ok"]
    (count,) = at(report, f"{LAYER}/count")
    assert count["severity"] == "error" and "slot 1" in count["message"]
    assert at(report, f"{LAYER}/hnsw-000000.idx")[0]["severity"] == "error"
    assert at(report, f"{LAYER}/000000.keys")[0]["severity"] == "warning"
    assert report["checked"]["tokens"] == sum(LENGTHS.values()) - 31


def test_deep_reads_what_the_quick_check_does_not(healthy: Path) -> None:
    index = healthy / LAYER / "hnsw-000000.idx"
    flip(index, index.stat().st_size - 4)
    chunk = healthy / LAYER / "000001.keys"
    data = bytearray(chunk.read_bytes())
    data[8:12] = np.float32(np.inf).tobytes()  # kv head 0, token 7, element 2
    chunk.write_bytes(bytes(data))
    quick = checked_verify(healthy, deep=False)
    assert quick["ok"] and quick["problems"] == []
    deep = checked_verify(healthy)
    assert [p["path"] for p in deep["problems"]] == [
        f"{LAYER}/000001.keys",
        f"{LAYER}/000001.keys",
        str(index.relative_to(healthy)),
    ]
    assert "token 7" in deep["problems"][0]["message"]
    assert "fails its checksum" in deep["problems"][1]["message"]


def test_both_commit_slots_damaged(healthy: Path) -> None:
    count = healthy / LAYER / "count"
    flip(count, 13)
    flip(count, 32 + 13)
    report = checked_verify(healthy)
    (problem,) = at(report, f"{LAYER}/count")
    assert problem["severity"] == "error" and "neither commit slot" in problem["message"]


def test_orphan_document_directory_is_a_warning(healthy: Path) -> None:
    (healthy / "docs" / "d00000042" / "layer-6").mkdir(parents=True)
    report = checked_verify(healthy)
    assert report["ok"]
    assert [(p["path"], p["severity"]) for p in report["problems"]] == [
        ("docs/d00000042", "warning")
    ]


def test_garbage_in_every_kind_of_file(healthy: Path, rng: np.random.Generator) -> None:
    """A little fuzzing: truncations and flipped bytes in the manifest, a commit point, chunks
    and index files are reported (as errors), never crash, never change anything."""
    pristine = {p: p.read_bytes() for p in files(healthy)}
    targets = [
        healthy / "manifest.json",
        healthy / LAYER / "count",
        healthy / LAYER / "000000.keys",
        healthy / LAYER / "000004.values",
        healthy / LAYER / "hnsw-000000.idx",
        healthy / LAYER / "hnsw-000001.idx",
    ]
    for target in targets:
        original = pristine[target]
        for trial in range(8):
            data = bytearray(original)
            if trial % 2 == 0:
                del data[int(rng.integers(0, len(data))) :]
            else:
                for i in rng.integers(0, len(data), size=int(rng.integers(1, 6))):
                    data[i] ^= 1 << int(rng.integers(0, 8))
            target.write_bytes(bytes(data))
            report = checked_verify(healthy)
            if trial % 2 == 0:  # every file's size is checked
                assert not report["ok"], (target, report)
            target.write_bytes(original)
    assert checked_verify(healthy)["problems"] == []


# -- describe --------------------------------------------------------------------------------


@pytest.mark.parametrize("readonly", [False, True])
def test_describe_matches_the_store_api(healthy: Path, readonly: bool) -> None:
    with MemoryStore.open(healthy, readonly=readonly) as store:
        info = store.describe()
        assert {k: info[k] for k in store.config if k != "layers"} == {
            k: v for k, v in store.config.items() if k != "layers"
        }
        assert info["layers"] == store.layers and info["path"] == store.path
        assert info["total_bytes"] == store.nbytes
        assert list(info["documents"]) == store.documents()
        built = pending = 0
        for doc in store:
            d = info["documents"][doc.name]
            assert d["bytes"] == doc.nbytes == sum(x["bytes"] for x in d["layers"].values())
            for layer in store.layers:
                x = d["layers"][layer]
                assert x["tokens"] == doc.length(layer) == LENGTHS.get((doc.name, layer), 0)
                assert x["indexed_tokens"] == doc.indexed_tokens(layer)
                assert x["index_files"] * SPAN == x["indexed_tokens"]
                assert x["pending"] == 0
                built += x["index_files"]
                pending += x["pending"]
        assert info["index_files"] == {"built": built, "pending": pending}
        assert built == MemoryStore.verify(healthy)["checked"]["index_files"]


def test_describe_counts_a_damaged_index_as_pending(healthy: Path) -> None:
    flip(healthy / LAYER / "hnsw-000001.idx", 20)
    with MemoryStore.open(healthy, readonly=True) as store:
        info = store.describe()
    assert info["documents"]["a"]["layers"][6]["index_files"] == 1
    assert info["documents"]["a"]["layers"][6]["pending"] == 1
    assert info["index_files"] == {"built": 4, "pending": 1}


def test_describe_without_hnsw(store: MemoryStore, rng: np.random.Generator) -> None:
    keys, values = random_kv(rng, 9, 2, 8)
    store.document("x").append(12, keys, values)
    info = store.describe()
    assert info["hnsw"] is None and info["index_files"] == {"built": 0, "pending": 0}
    assert info["documents"]["x"]["layers"][12] == {
        "tokens": 9,
        "indexed_tokens": 0,
        "bytes": 9 * 2 * (8 + 8) * 4,
    }
    assert info["total_bytes"] == store.nbytes == 9 * 2 * 16 * 4
