"""Persistence across processes: data written in one process is searched in another; a reader in
another process sees what a writer commits while it is still writing; the writer lock holds across
processes and dies with its process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import python_env
from fm_oracle import DTYPES, check_search, expected_gather, random_kv, round_to
from fot_mem import MemoryStore, StoreLockedError


@pytest.mark.parametrize("dtype", DTYPES)
def test_written_here_searched_in_another_process(
    store_path: Path, tmp_path: Path, rng, run_py, dtype
) -> None:
    names = {"book-1": 45, "book-2": 9}
    stored = {}
    with MemoryStore.create(
        store_path,
        layers=[6, 12],
        kv_heads=2,
        head_dim=16,
        value_dim=4,
        dtype=dtype,
        chunk_tokens=7,
    ) as s:
        for name, n in names.items():
            k, v = random_kv(rng, n, 2, 16, 4)
            s.document(name).append(12, k[: n // 2], v[: n // 2])
            s.document(name).append(12, k[n // 2 :], v[n // 2 :])
            stored[name] = (round_to(k, dtype), round_to(v, dtype))
        queries = rng.standard_normal((3, 3, 4, 16), dtype=np.float32)
        mine_s, mine_i = s.search(["book-1", "book-2", "none"], 12, queries, k=10)
    qfile = tmp_path / "queries.npy"
    np.save(qfile, queries)
    out = tmp_path / "child.npz"
    proc = run_py(
        """
        import sys, numpy as np, fot_mem
        path, qfile, out = sys.argv[1:]
        with fot_mem.MemoryStore.open(path, readonly=True) as s:
            assert s.readonly
            q = np.load(qfile)
            scores, ids = s.search(["book-1", "book-2", "none"], 12, q, k=10)
            doc = s.document("book-1")
            gk, gv = doc.gather(12, ids[0])
            np.savez(out, scores=scores, ids=ids, gk=gk, gv=gv,
                     docs=np.array(s.documents()), lengths=np.array(
                         [s.document(n).length(12) for n in ("book-1", "book-2")]))
        print("done")
        """,
        store_path,
        qfile,
        out,
    )
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stdout
    got = np.load(out)
    assert got["docs"].tolist() == ["book-1", "book-2"]
    assert got["lengths"].tolist() == [45, 9]
    for b, name in enumerate(["book-1", "book-2", "none"]):
        keys = stored[name][0] if name in stored else np.zeros((0, 2, 16), np.float32)
        check_search(got["scores"][b], got["ids"][b], keys, queries[b], 10)
    # The same store answers the same way in both processes.
    np.testing.assert_array_equal(got["ids"], mine_i)
    np.testing.assert_array_equal(got["scores"], mine_s)
    ek, ev = expected_gather(*stored["book-1"], got["ids"][0])
    np.testing.assert_array_equal(got["gk"], ek)
    np.testing.assert_array_equal(got["gv"], ev)


def test_written_in_another_process_read_here(store_path: Path, run_py) -> None:
    proc = run_py(
        """
        import sys, numpy as np, fot_mem
        rng = np.random.default_rng(5)
        with fot_mem.MemoryStore.create(sys.argv[1], layers=[3], kv_heads=1, head_dim=4,
                                        dtype="bfloat16", chunk_tokens=7) as s:
            k = rng.standard_normal((33, 1, 4)).astype(np.float32)
            s.document("x").append(3, k, k * 2)
        """,
        store_path,
    )
    assert proc.returncode == 0, proc.stderr
    k = np.random.default_rng(5).standard_normal((33, 1, 4)).astype(np.float32)
    with MemoryStore.open(store_path, readonly=True) as s:
        assert s.dtype == "bfloat16" and s.chunk_tokens == 7
        rk, rv = s.document("x").read(3)
        np.testing.assert_array_equal(rk, round_to(k, "bfloat16"))
        np.testing.assert_array_equal(rv, round_to(k * 2, "bfloat16"))


READER = """
import sys, json, numpy as np, fot_mem
s = fot_mem.MemoryStore.open(sys.argv[1], readonly=True)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "quit":
        break
    try:
        if cmd["op"] == "length":
            res = s.document(cmd["doc"]).length(cmd["layer"])
        elif cmd["op"] == "documents":
            res = s.documents()
        elif cmd["op"] == "search":
            q = np.array(cmd["q"], np.float32)
            sc, ids = s.document(cmd["doc"]).search(cmd["layer"], q, k=cmd["k"])
            res = {"scores": sc.tolist(), "ids": ids.tolist()}
        elif cmd["op"] == "read":
            res = s.document(cmd["doc"]).read(cmd["layer"])[0].tolist()
        print(json.dumps({"ok": res}), flush=True)
    except Exception as e:
        print(json.dumps({"err": type(e).__name__, "msg": str(e)}), flush=True)
s.close()
"""


class Child:
    """A long-lived helper process speaking one JSON line per request."""

    def __init__(self, code: str, *args: object) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=python_env(),
        )
        first = self.proc.stdout.readline()
        assert first, self.proc.stderr.read()
        self.hello = json.loads(first)

    def ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=20)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


def test_reader_in_another_process_sees_new_commits(store_path: Path, rng) -> None:
    w = MemoryStore.create(store_path, layers=[6, 12], kv_heads=2, head_dim=8, chunk_tokens=7)
    child = Child(READER, store_path)
    try:
        assert child.hello == {"ready": True}
        assert child.ask(op="documents") == {"ok": []}
        assert child.ask(op="length", doc="a", layer=6) == {"ok": 0}
        keys, values = random_kv(rng, 40, 2, 8)
        total = 0
        for n in (3, 4, 1, 14, 18):  # crosses chunk boundaries; reader maps new chunks
            total = w.document("a").append(6, keys[total : total + n], values[total : total + n])
            assert child.ask(op="length", doc="a", layer=6) == {"ok": total}
        assert child.ask(op="documents") == {"ok": ["a"]}
        assert child.ask(op="length", doc="a", layer=12) == {"ok": 0}
        got = child.ask(op="read", doc="a", layer=6)["ok"]
        np.testing.assert_array_equal(np.array(got, np.float32), keys)
        q = rng.standard_normal((2, 4, 8), dtype=np.float32)
        res = child.ask(op="search", doc="a", layer=6, q=q.tolist(), k=7)["ok"]
        check_search(
            np.array(res["scores"], np.float32), np.array(res["ids"], np.int64), keys, q, 7
        )
        # A document the reader had never heard of when it opened the store.
        w.document("b").append(12, keys[:5], values[:5])
        assert child.ask(op="length", doc="b", layer=12) == {"ok": 5}
        assert child.ask(op="documents") == {"ok": ["a", "b"]}
    finally:
        child.close()
        w.close()
    assert child.proc.returncode == 0


def test_reader_after_the_writer_deletes_a_document(store_path: Path, rng) -> None:
    """A reader that has a document open while the writer deletes (and re-creates) it must see
    the deletion (length 0) and then the new document, not report a corrupt store."""
    w = MemoryStore.create(store_path, layers=[6], kv_heads=2, head_dim=8, chunk_tokens=7)
    r = MemoryStore.open(store_path, readonly=True)
    try:
        k, v = random_kv(rng, 20, 2, 8)
        w.document("a").append(6, k, v)
        assert r.document("a").length(6) == 20
        assert w.delete("a")
        assert "a" not in r  # without an explicit refresh()
        assert not r.document("a").exists
        assert r.document("a").length(6) == 0
        w.document("a").append(6, k[:3], v[:3])
        assert "a" in r
        assert r.document("a").length(6) == 3
        np.testing.assert_array_equal(r.document("a").read(6)[0], k[:3])
    finally:
        r.close()
        w.close()


def test_reader_refresh_after_delete_and_recreate(store_path: Path, rng) -> None:
    """The same, but the reader asks for the document list first (which re-reads the manifest)."""
    w = MemoryStore.create(store_path, layers=[6], kv_heads=2, head_dim=8, chunk_tokens=7)
    r = MemoryStore.open(store_path, readonly=True)
    try:
        k, v = random_kv(rng, 20, 2, 8)
        w.document("a").append(6, k, v)
        assert r.document("a").length(6) == 20
        w.delete("a")
        r.refresh()
        assert "a" not in r
        assert not r.document("a").exists
        assert r.documents() == []
        assert r.document("a").length(6) == 0
        w.document("a").append(6, k[:3], v[:3])
        r.refresh()
        assert r.documents() == ["a"]
        assert r.document("a").length(6) == 3
    finally:
        r.close()
        w.close()


LOCKER = """
import sys, json, fot_mem
try:
    s = fot_mem.MemoryStore.open(sys.argv[1])
except fot_mem.FotMemError as e:
    print(json.dumps({"err": type(e).__name__, "msg": str(e)}), flush=True)
    sys.exit(0)
import numpy as np
ones = np.ones((5, 1, 4), np.float32)
n = s.document("from-child").append(0, ones, ones)
print(json.dumps({"locked": True, "length": n}), flush=True)
sys.stdin.readline()   # hold the lock until told (or killed)
s.close()
"""


def test_second_writer_in_another_process(store_path: Path) -> None:
    w = MemoryStore.create(store_path, layers=[0], kv_heads=1, head_dim=4)
    child = Child(LOCKER, store_path)
    try:
        assert child.hello["err"] == "StoreLockedError"
        assert str(store_path) in child.hello["msg"]
    finally:
        child.close()
    w.close()
    # After close, a writer in another process gets the lock...
    child = Child(LOCKER, store_path)
    try:
        assert child.hello == {"locked": True, "length": 5}
        # ...and now this process is the one locked out (readers are still fine).
        with pytest.raises(StoreLockedError, match="already open for writing"):
            MemoryStore.open(store_path)
        with MemoryStore.open(store_path, readonly=True) as r:
            assert r.document("from-child").length(0) == 5
    finally:
        child.close()
    assert child.proc.returncode == 0
    with MemoryStore.open(store_path) as w2:
        assert w2.document("from-child").length(0) == 5


def test_lock_released_when_the_writer_process_dies(store_path: Path) -> None:
    MemoryStore.create(store_path, layers=[0], kv_heads=1, head_dim=4).close()
    child = Child(LOCKER, store_path)
    try:
        assert child.hello == {"locked": True, "length": 5}
        with pytest.raises(StoreLockedError):
            MemoryStore.open(store_path)
        child.proc.send_signal(signal.SIGKILL)  # no close, no flush, no destructors
        child.proc.wait(timeout=20)
        assert child.proc.returncode == -signal.SIGKILL
    finally:
        child.close()
    with MemoryStore.open(store_path) as w:
        # What the dead writer's append returned is durable and visible.
        assert w.document("from-child").length(0) == 5
        assert w.document("from-child").append(0, np.zeros((2, 1, 4)), np.zeros((2, 1, 4))) == 7


def test_writer_killed_mid_stream_leaves_a_consistent_store(store_path: Path, run_py) -> None:
    """A writer appending in a loop is killed at an arbitrary moment: the store opens, every
    committed token reads back as written, and appending continues from the commit point."""
    MemoryStore.create(store_path, layers=[0], kv_heads=2, head_dim=4, chunk_tokens=7).close()
    code = """
    import sys, numpy as np, fot_mem
    s = fot_mem.MemoryStore.open(sys.argv[1])
    d = s.document("d")
    i = 0
    while True:
        n = 1 + i % 5
        t = d.length(0)
        k = np.arange(t, t + n, dtype=np.float32)[:, None, None] * np.ones((1, 2, 4))
        d.append(0, k, -k)
        i += 1
        if i == 20:
            print("going", flush=True)
    """
    import textwrap

    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(store_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    try:
        assert proc.stdout.readline().strip() == "going", proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    with MemoryStore.open(store_path) as s:
        d = s.document("d")
        n = d.length(0)
        assert n >= 20
        k, v = d.read(0)
        expect = np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, 2, 4), np.float32)
        np.testing.assert_array_equal(k, expect)
        np.testing.assert_array_equal(v, -expect)
        assert d.append(0, np.ones((3, 2, 4)), np.ones((3, 2, 4))) == n + 3
