"""Readers racing a writer, across processes: a writer process appends deterministic tokens (every
element a pure function of document, layer and token index) in batches of 1 to 20 tokens to
several documents (chunk_tokens 7, so batches start and end anywhere in a chunk and cross chunk
boundaries; documents are also created mid-run) for about 3 s, while two reader processes with
read-only handles read, gather and search (exact) what is committed, as fast as they can. Every
row a reader gets must be the expected data (nothing torn, stale or zero), lengths never go
backwards, and a search names only committed tokens, each with the exact score of its expected
key, and misses no better one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import python_env
from fot_mem import MemoryStore

LAYERS = (6, 12)
KV_HEADS = 2
HEAD_DIM = 8
VALUE_DIM = 4
CHUNK = 7
WRITE_SECONDS = 3.0
# First documents written; "late-<i>" documents are created mid-run.
DOCS = ("a", "b", "c")
K = 5
# The most tokens the expected-data tables hold per document-layer (far above what 3 s writes).
MAX_TOKENS = 64 * 251


def _salt(doc: str, layer: int) -> int:
    return sum(doc.encode()) * 7 + layer * 13


def expected(doc: str, layer: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys `[n, KV_HEADS, HEAD_DIM]` and values `[n, KV_HEADS, VALUE_DIM]` (float32) of tokens
    `start:stop`. Multiples of 1/8 of magnitude < 32, so scores against small integer queries
    are exact in float32 whatever the order of the sum; key (0, 0) holds `t // 251` and the
    first value element `t`, so no two tokens (below `MAX_TOKENS`) share a row."""
    s = _salt(doc, layer)
    t = np.arange(start, stop, dtype=np.int64)[:, None, None]
    h = np.arange(KV_HEADS)[None, :, None]
    keys = ((t * 31 + h * 17 + np.arange(HEAD_DIM)[None, None, :] * 7 + s) % 251) / 8 - 15
    keys[:, 0, 0] = (t[:, 0, 0] // 251) / 8
    values = ((t * 13 + h * 11 + np.arange(VALUE_DIM)[None, None, :] * 5 + s) % 241) / 8 - 15
    values[:, 0, 0] = t[:, 0, 0]
    return keys.astype(np.float32), values.astype(np.float32)


def writer(path: str, done: str) -> None:
    """Appends batches round-robin over documents and layers for `WRITE_SECONDS`, then writes
    the final lengths to `done`."""
    rng = np.random.default_rng(19)
    lengths: dict[str, dict[int, int]] = {}
    docs = list(DOCS)
    appends = 0
    with MemoryStore.open(path) as s:
        end = time.monotonic() + WRITE_SECONDS
        while time.monotonic() < end:
            if appends % 40 == 39:
                docs.append(f"late-{len(docs)}")
            doc = docs[appends % len(docs)]
            layer = LAYERS[(appends // len(docs)) % len(LAYERS)]
            n = int(rng.integers(1, 21))
            # every layer of a listed document has a length, 0 until its first append
            start = lengths.setdefault(doc, dict.fromkeys(LAYERS, 0))[layer]
            k, v = expected(doc, layer, start, start + n)
            new = s.document(doc).append(layer, k, v)
            assert new == start + n, (doc, layer, start, n, new)
            lengths[doc][layer] = new
            appends += 1
    Path(done).write_text(json.dumps({"lengths": lengths, "appends": appends}))


class Checker:
    """Counts checks and records the first few mismatches."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(("passes", "lengths", "rows", "gathered", "searches"), 0)
        self.mismatches = 0
        self.examples: list[str] = []

    def fail(self, what: str) -> None:
        self.mismatches += 1
        if len(self.examples) < 10:
            self.examples.append(what)


def reader(path: str, done: str, seed: str) -> None:
    """Until the writer is done (and once more after), for every document and layer: the length
    (never below the last one seen), a read of the last tokens and of a random window, a gather
    of random committed ids, and an exact search, each checked against `expected`."""
    rng = np.random.default_rng(int(seed))
    tables = {}  # (doc, layer) -> expected keys, values of tokens 0:MAX_TOKENS
    seen: dict[tuple[str, int], int] = {}
    c = Checker()
    q = rng.integers(-3, 4, size=(2, KV_HEADS, HEAD_DIM)).astype(np.float32)
    deadline = time.monotonic() + 30
    with MemoryStore.open(path, readonly=True) as s:
        last_pass = False
        while True:
            if Path(done).exists():
                last_pass = True  # everything is committed: one more pass sees it all
            s.refresh()
            docs = s.documents()
            if len(docs) < len({d for d, _ in seen}):
                c.fail(f"documents went from {len({d for d, _ in seen})} to {len(docs)}")
            for doc in docs:
                d = s.document(doc)
                for layer in LAYERS:
                    key = (doc, layer)
                    if key not in tables:
                        tables[key] = expected(doc, layer, 0, MAX_TOKENS)
                    want_k, want_v = tables[key]
                    n = d.length(layer)
                    c.counts["lengths"] += 1
                    if n < seen.get(key, 0):
                        c.fail(f"{key}: length {n} after {seen[key]}")
                    seen[key] = max(seen.get(key, 0), n)
                    if n == 0:
                        continue
                    # The newest tokens (the ones being committed as we read) and a window.
                    lo = int(rng.integers(0, n))
                    for a, b in ((max(0, n - 9), n), (lo, min(n, lo + 30))):
                        k, v = d.read(layer, a, b)
                        c.counts["rows"] += b - a
                        if not (np.array_equal(k, want_k[a:b]) and np.array_equal(v, want_v[a:b])):
                            bad = [
                                t for t in range(a, b) if not np.array_equal(k[t - a], want_k[t])
                            ]
                            c.fail(f"{key}: read {a}:{b} of {n} differs at tokens {bad[:5]}")
                    ids = rng.integers(0, n, size=(1, KV_HEADS, 6))
                    gk, gv = d.gather(layer, ids)
                    c.counts["gathered"] += ids.size
                    hk = np.arange(KV_HEADS)[None, :, None]
                    if not (
                        np.array_equal(gk, want_k[ids, hk]) and np.array_equal(gv, want_v[ids, hk])
                    ):
                        c.fail(f"{key}: gather of {ids.tolist()} (length {n}) differs")
                    scores, got = d.search(layer, q, k=K)
                    after = d.length(layer)
                    c.counts["searches"] += 1
                    check_search(c, key, scores, got, q, want_k, n, after)
            c.counts["passes"] += bool(docs)
            if last_pass or time.monotonic() > deadline:
                break
            # Leave the writer some CPU (two readers and a writer may share two cores).
            time.sleep(0.002 if docs else 0.02)
        final = {f"{doc}/{layer}": n for (doc, layer), n in seen.items()}
    print(
        json.dumps(
            {"counts": c.counts, "mismatches": c.mismatches, "examples": c.examples, "final": final}
        )
    )


def check_search(
    c: Checker,
    key: tuple[str, int],
    scores: np.ndarray,
    ids: np.ndarray,
    q: np.ndarray,
    want_k: np.ndarray,
    before: int,
    after: int,
) -> None:
    """`ids [q, heads, K]` name tokens below `after` (the length after the search), each with its
    exact score; no token below `before` (the length before it) that is left out scores higher
    than the last one returned; at least min(K, before) ids are returned."""
    for qi in range(q.shape[0]):
        for h in range(KV_HEADS):
            i, sc = ids[qi, h], scores[qi, h]
            valid = i >= 0
            if valid.sum() < min(K, before) or (i[valid] >= after).any():
                c.fail(f"{key}: ids {i.tolist()} with length {before}..{after}")
                continue
            exact = want_k[i[valid], h] @ q[qi, h]
            if not np.array_equal(sc[valid], exact.astype(np.float32)):
                c.fail(f"{key}: scores {sc.tolist()} for ids {i.tolist()}, expected {exact}")
                continue
            if valid.sum() == K:
                all_scores = want_k[:before, h] @ q[qi, h]
                all_scores[i[valid][i[valid] < before]] = -np.inf
                if (all_scores > sc[valid].min()).any():
                    c.fail(f"{key}: search missed a better token below {before}")


HERE = str(Path(__file__).resolve().parent)  # the child imports this file as a module
CHILD = "import sys; sys.path.insert(0, " + repr(HERE) + "); import test_race as t; "
CHILD += "t.{fn}(*sys.argv[1:])"


def test_readers_race_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "store"
    done = tmp_path / "done.json"
    MemoryStore.create(
        path,
        layers=list(LAYERS),
        kv_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        value_dim=VALUE_DIM,
        chunk_tokens=CHUNK,
    ).close()

    def spawn(fn: str, *args: object) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", CHILD.format(fn=fn), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=python_env(),
        )

    t0 = time.monotonic()
    procs = [spawn("writer", path, done)]
    procs += [spawn("reader", path, done, seed) for seed in (1, 2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    elapsed = time.monotonic() - t0
    written = json.loads(done.read_text())
    final = {f"{d}/{layer}": n for d, ls in written["lengths"].items() for layer, n in ls.items()}
    assert written["appends"] >= 30, written
    assert len(written["lengths"]) > len(DOCS), "no document was created mid-run"
    for out in outs[1:]:
        got = json.loads(out)
        print(f"reader: {got['counts']}, {got['mismatches']} mismatches ({elapsed:.1f} s)")
        assert got["mismatches"] == 0, got["examples"]
        counts = got["counts"]
        # A real race: many passes while the writer was writing, thousands of rows checked.
        assert counts["passes"] >= 10, counts
        assert counts["searches"] >= 100, counts
        assert counts["rows"] >= 2000, counts
        # The pass after the writer finished saw every commit.
        assert got["final"] == final
    print(f"writer: {written['appends']} appends, lengths {final}")
