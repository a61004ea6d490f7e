"""Both exact kernels against a float64 oracle, through the Python API and real stores.

Every case runs twice: here, with the kernel this process picked (AVX-512 BF16 where the CPU has
it), and in one subprocess under FOT_MEM_EXACT_KERNEL=portable, which must report the portable
kernel. Both answers go through the same checks: `fm_oracle.check_search`, and a stricter one with
a per-key bound on the float32 rounding error of each dot product, under which every id is
determined except among keys whose scores are within each other's bounds (or 1e-5 relative).

The cases cover every storage dtype, odd head dims, lengths that are multiples of no block, k at
and above the length, several chunk files, grouped heads, batches of documents of different
lengths (missing ones and empty layers included), query rows per kv head on both sides of the small
path (1..4) and of the packed one (5, 9, 64, 300), k = 1, 32, 128, and data made to defeat the bf16
kernel's certification (near-ties, key norms over six decades, exact copies of keys by the
hundred). Near-ties and repeated keys must not send rows to the f32 rescan (the bf16 kernel keeps
every key within its error window of the k-th as a candidate and resolves them in f32).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fot_mem
import numpy as np
import pytest
from conftest import python_env
from fm_oracle import DTYPES, check_search, oracle_scores, random_kv, round_to

LAYER = 0
OTHER_LAYER = 1
F32_EPS = float(np.finfo(np.float32).eps)
F32_TINY = float(np.finfo(np.float32).smallest_subnormal)


@dataclass(frozen=True)
class Case:
    dtype: str
    head_dim: int
    # Tokens per batch slot: None is a document that does not exist, 0 one whose tokens are all
    # in another layer.
    lengths: tuple[int | None, ...]
    chunk_tokens: int
    q: int
    kv_heads: int
    group: int  # query heads per kv head
    k: int
    data: str = "gaussian"  # or "near_ties", "norm_mixture", "crowded", "repeated"

    @property
    def heads(self) -> int:
        return self.kv_heads * self.group

    @property
    def rows_per_kv_head(self) -> int:
        return self.q * self.group

    @property
    def id(self) -> str:
        n = "+".join("none" if n is None else str(n) for n in self.lengths)
        return (
            f"{self.dtype}-d{self.head_dim}-n{n}-c{self.chunk_tokens}-q{self.q}"
            f"-h{self.heads}of{self.kv_heads}-k{self.k}-{self.data}"
        )


DIMS = (1, 3, 17, 33, 63, 65, 130)
# (length, chunk_tokens, q, kv_heads, group, k); each dim meets a different one per dtype.
SHAPES = (
    (4097, 4096, 300, 1, 1, 128),  # 300 rows: more than one row block; k < len
    (481, 7, 5, 2, 1, 32),  # 5 rows: the smallest packed batch; 69 chunks
    (47, 7, 1, 2, 4, 128),  # 4 rows (grouped): the largest small batch; k > len
    (49, 7, 9, 1, 1, 49),  # k == len
    (15, 7, 1, 2, 2, 1),  # 2 rows; k = 1
    (1000, 100, 16, 1, 4, 32),  # 64 rows, grouped by 4
    (4097, 100, 3, 2, 1, 128),  # 3 rows over 41 chunks
)


def _cases() -> list[Case]:
    cases = []
    for j, dtype in enumerate(DTYPES):
        for i, dim in enumerate(DIMS):
            n, chunk, q, kvh, group, k = SHAPES[(i + 2 * j) % len(SHAPES)]
            if dim == 130 and q * group * n > 100_000:
                q = 1  # keep the oracle cheap at the widest dim
            cases.append(Case(dtype, dim, (n,), chunk, q, kvh, group, k))
    # Batches of documents of different lengths, through the small and the packed path.
    for dtype, dim in zip(DTYPES, (17, 65, 33)):
        for q, group, k in ((2, 2, 32), (5, 1, 1), (32, 2, 128)):
            lengths = (1000, None, 15, 0, 4097, 1)
            cases.append(Case(dtype, dim, lengths, 100, q, 2, group, k))
    # k at and above the length over one big chunk: every key must come back, small path and
    # packed.
    for dtype in DTYPES:
        cases.append(Case(dtype, 33, (1000,), 4096, 1, 1, 2, 1000))
        cases.append(Case(dtype, 33, (1000,), 4096, 9, 1, 1, 1005))
    # Data made to defeat a margin test on bf16 scores.
    for dtype, k in zip(DTYPES, (32, 1, 128)):
        cases.append(Case(dtype, 64, (1000,), 100, 9, 1, 1, k, "near_ties"))
        cases.append(Case(dtype, 64, (20000,), 4096, 40, 1, 1, k, "repeated"))
        cases.append(Case(dtype, 128, (4097,), 4096, 64, 1, 1, 32, "norm_mixture"))
        # k well above the sinks' count, so the k-th best is an ordinary key.
        cases.append(Case(dtype, 17, (3000,), 100, 5, 2, 2, 128, "norm_mixture"))
        # Scores apart by about bf16's own error: some rows certify, some fall back.
        cases.append(Case(dtype, 64, (3000,), 100, 16, 2, 2, 32, "crowded"))
    return cases


CASES = _cases()


def _keys(rng: np.random.Generator, case: Case, n: int) -> tuple[np.ndarray, np.ndarray]:
    kvh, d = case.kv_heads, case.head_dim
    keys, values = random_kv(rng, n, kvh, d, 2)
    if case.data == "near_ties":
        # Every key equal to one vector per head up to 1e-5 relative noise: beyond bf16's (and
        # f16's) resolution.
        base = rng.standard_normal((1, kvh, d))
        keys = base * (1 + 1e-5 * rng.uniform(-1, 1, (n, kvh, d)))
    elif case.data == "norm_mixture":
        # Like real attention keys: most norms spread over 1e-3..1, and one key in 499 (an
        # attention sink) with a norm of 1e2..1e3, which widens the bf16 error bound.
        norms = 10 ** rng.uniform(-3, 0, (n, kvh, 1))
        sinks = np.arange(n) % 499 == 3
        norms[sinks] = 10 ** rng.uniform(2, 3, (int(sinks.sum()), kvh, 1))
        keys = keys / np.linalg.norm(keys, axis=-1, keepdims=True).clip(1e-6) * norms
    elif case.data == "repeated":
        # A quarter of the keys are exact copies of 40 vectors (of 1.5x the usual norm, so they
        # fill the top-k): exact ties by the hundred at the k-th score.
        originals = 1.5 * rng.standard_normal((40, kvh, d))
        copies = rng.random(n) < 0.25
        keys[copies] = originals[rng.integers(0, 40, int(copies.sum()))]
    elif case.data == "crowded":
        # One vector per head with 2e-3 relative noise: the scores are apart by about the error
        # of bf16 keys, so the certification has to get its bound right.
        base = rng.standard_normal((1, kvh, d))
        keys = base * (1 + 2e-3 * rng.standard_normal((n, kvh, d)))
    return keys.astype(np.float32), values


@dataclass
class Prepared:
    case: Case
    path: Path
    names: list[str]
    keys: list[np.ndarray]  # per slot, as stored (rounded), [n, kv_heads, head_dim]
    queries: np.ndarray  # [batch, q, heads, head_dim]
    queries_file: Path


def _prepare(case: Case, root: Path) -> Prepared:
    """Creates the case's store (closed again) with its data; deterministic per case."""
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    path = root / case.id
    names, keys = [], []
    with fot_mem.MemoryStore.create(
        path,
        layers=[LAYER, OTHER_LAYER],
        kv_heads=case.kv_heads,
        head_dim=case.head_dim,
        value_dim=2,
        dtype=case.dtype,
        chunk_tokens=case.chunk_tokens,
    ) as store:
        for slot, n in enumerate(case.lengths):
            name = f"doc{slot}"
            names.append(name)
            if n is None:
                keys.append(np.zeros((0, case.kv_heads, case.head_dim), np.float32))
                continue
            doc = store.document(name)
            k, v = _keys(rng, case, n)
            # Uneven appends, so appends straddle chunk boundaries.
            cuts = sorted({0, n, n // 3, (2 * n) // 3 + 1} & set(range(n + 1)))
            for a, b in zip(cuts, cuts[1:]):
                doc.append(LAYER, k[a:b], v[a:b])
            # Tokens in another layer must not leak into this one.
            doc.append(OTHER_LAYER, *random_kv(rng, 9, case.kv_heads, case.head_dim, 2))
            assert doc.length(LAYER) == n
            keys.append(round_to(k, case.dtype))
    shape = (len(case.lengths), case.q, case.heads, case.head_dim)
    queries = rng.standard_normal(shape, dtype=np.float32)
    if case.data == "crowded":
        # bf16 queries (as from a bf16 model): all of the bf16 error is then the keys'.
        queries = round_to(queries, "bfloat16")
    queries_file = root / f"{case.id}.queries.npy"
    np.save(queries_file, queries)
    return Prepared(case, path, names, keys, queries, queries_file)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Prepared]:
    root = tmp_path_factory.mktemp("kernels")
    return {case.id: _prepare(case, root) for case in CASES}


def _search(p: Prepared) -> tuple[np.ndarray, np.ndarray]:
    with fot_mem.MemoryStore.open(p.path, readonly=True) as store:
        return store.search(p.names, LAYER, p.queries, k=p.case.k)


def check_strict(
    scores: np.ndarray, ids: np.ndarray, keys: np.ndarray, queries: np.ndarray
) -> None:
    """A top-k check with a per-key error bound: a key's float32 score may be off its float64
    score by at most err = (d + 2) * eps * sum |q_i k_i| (any summation order), so two keys may
    come in either order only when their scores are within the sum of their bounds. Everything
    else is determined, and checked exactly: which ids, in which order."""
    k = scores.shape[-1]
    n, d = keys.shape[0], keys.shape[2]
    valid = min(k, n)
    if valid == 0:
        return
    exact = oracle_scores(keys, queries)  # [q, heads, n]
    err = (d + 2) * F32_EPS * oracle_scores(np.abs(keys), np.abs(queries)) + (d + 2) * F32_TINY
    got_ids = ids[..., :valid]
    got = scores[..., :valid].astype(np.float64)
    own = np.take_along_axis(exact, got_ids, axis=-1)
    own_err = np.take_along_axis(err, got_ids, axis=-1)
    bad = np.abs(got - own) > own_err
    assert not bad.any(), f"scores off their ids' scores at {np.argwhere(bad)[:5].tolist()}"
    # No key left out beats a key returned, beyond both bounds.
    taken = np.zeros(exact.shape, dtype=bool)
    np.put_along_axis(taken, got_ids, True, axis=-1)
    worst_in = np.where(taken, exact + err, np.inf).min(axis=-1)
    best_out = np.where(taken, -np.inf, exact - err).max(axis=-1)
    bad = best_out > worst_in
    assert not bad.any(), f"better keys left out at (query, head) {np.argwhere(bad)[:5].tolist()}"
    # Where the oracle's order is clear, the ids are exactly the oracle's.
    order = np.lexsort((np.broadcast_to(np.arange(n), exact.shape), -exact), axis=-1)
    s = np.take_along_axis(exact, order, axis=-1)
    e = np.take_along_axis(err, order, axis=-1)
    gap = s[..., :-1] - s[..., 1:]
    # apart[j]: the oracle's ranks j and j + 1 are further apart than both bounds.
    apart = (gap > e[..., :-1] + e[..., 1:]) & (gap > 1e-5 * np.abs(s[..., :-1]))
    edge = np.ones((*exact.shape[:2], 1), dtype=bool)
    clear = np.concatenate([edge, apart], axis=-1) & np.concatenate([apart, edge], axis=-1)
    clear = clear[..., :valid]
    want = order[..., :valid]
    bad = clear & (got_ids != want)
    assert not bad.any(), (
        f"ids differ from the oracle where its order is clear, at (query, head, rank) "
        f"{np.argwhere(bad)[:5].tolist()}: got {got_ids[bad][:5]}, want {want[bad][:5]}"
    )
    if valid < n:
        # The set is determined when the k-th and (k+1)-th are apart.
        determined = apart[..., valid - 1]
        in_set = np.sort(got_ids, axis=-1) == np.sort(want, axis=-1)
        bad = determined & ~in_set.all(axis=-1)
        assert not bad.any(), f"top-k sets differ at {np.argwhere(bad)[:5].tolist()}"


def check_result(p: Prepared, scores: np.ndarray, ids: np.ndarray) -> None:
    case = p.case
    assert scores.shape == ids.shape == (len(case.lengths), case.q, case.heads, case.k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    for slot, keys in enumerate(p.keys):
        check_search(scores[slot], ids[slot], keys, p.queries[slot], case.k)
        check_strict(scores[slot], ids[slot], keys, p.queries[slot])


def _cpu_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_kernel_is_the_fastest_this_cpu_runs() -> None:
    """The in-process runs below test the kernel this process picked: AVX-512 BF16 exactly when
    the CPU has it and nothing forces the portable one."""
    flags = _cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    info = fot_mem._core.exact_kernel_info()
    forced = os.environ.get("FOT_MEM_EXACT_KERNEL", "")
    bf16 = {"avx512f", "avx512bw", "avx512_bf16"} <= flags
    vnni = bf16 and {"avx512vl", "avx512_vnni"} <= flags
    amx = bf16 and {"amx_tile", "amx_bf16"} <= flags
    if forced == "portable" or not bf16:
        want = "portable-f32"
    elif vnni and forced == "avx512-vnni-int8":
        want = "avx512-vnni-int8"
    elif amx and forced != "avx512-bf16":
        want = "amx-bf16"
    else:
        want = "avx512-bf16"
    assert info["kernel"] == want, info
    assert set(info) == {"kernel", "rows", "fallback_rows", "features", "cpu"}, info
    if want != "portable-f32":
        assert {"avx512f", "avx512bw", "avx512bf16"} <= set(info["features"]), info
    if want == "avx512-vnni-int8":
        assert "avx512vnni" in info["features"], info
    if want == "amx-bf16":
        assert {"amx-tile", "amx-bf16"} <= set(info["features"]), info


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_kernel_matches_oracle(prepared: dict[str, Prepared], case: Case) -> None:
    p = prepared[case.id]
    before = fot_mem._core.exact_kernel_info()
    scores, ids = _search(p)
    after = fot_mem._core.exact_kernel_info()
    check_result(p, scores, ids)
    if after["kernel"] == "portable-f32":
        return
    # The query rows took the path this case means to test: the packed bf16 kernel counts its
    # rows, the small path (<= 4 rows per kv head) does not.
    rows = after["rows"] - before["rows"]
    fell_back = after["fallback_rows"] - before["fallback_rows"]
    all_rows = len(case.lengths) * case.q * case.heads
    packed = case.rows_per_kv_head > 4
    assert rows == (all_rows if packed else 0), (rows, all_rows)
    if case.data in ("near_ties", "repeated"):
        # bf16 cannot order the keys (near-ties) or they tie exactly (copies): all stay
        # candidates, resolved in f32, and no row is rescanned.
        assert fell_back == 0, (fell_back, all_rows)


_PORTABLE_SCRIPT = """
import json, sys
import numpy as np
import fot_mem

manifest = json.load(open(sys.argv[1]))
for entry in manifest["cases"]:
    with fot_mem.MemoryStore.open(entry["path"], readonly=True) as store:
        queries = np.load(entry["queries"])
        scores, ids = store.search(entry["names"], manifest["layer"], queries, k=entry["k"])
    np.savez(entry["out"], scores=scores, ids=ids)
print(json.dumps(fot_mem._core.exact_kernel_info()))
"""


@pytest.fixture(scope="module")
def portable_run(
    prepared: dict[str, Prepared], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Every case searched once more, all in one fresh process forced to the portable kernel."""
    out = tmp_path_factory.mktemp("portable")
    manifest = {
        "layer": LAYER,
        "cases": [
            {
                "path": str(p.path),
                "names": p.names,
                "queries": str(p.queries_file),
                "k": p.case.k,
                "out": str(out / f"{case_id}.npz"),
            }
            for case_id, p in prepared.items()
        ],
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    env = python_env()
    env["FOT_MEM_EXACT_KERNEL"] = "portable"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_PORTABLE_SCRIPT), str(out / "manifest.json")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    yield {"info": info, "out": out}


def test_portable_subprocess_reports_the_portable_kernel(portable_run: dict[str, Any]) -> None:
    info = portable_run["info"]
    assert info["kernel"] == "portable-f32", info
    # The fast kernel never ran there.
    assert info["rows"] == 0 and info["fallback_rows"] == 0, info


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_portable_kernel_matches_oracle(
    prepared: dict[str, Prepared], portable_run: dict[str, Any], case: Case
) -> None:
    with np.load(portable_run["out"] / f"{case.id}.npz") as got:
        check_result(prepared[case.id], got["scores"], got["ids"])
