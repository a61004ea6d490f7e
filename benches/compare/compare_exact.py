"""Exact top-k inner-product search, side by side in one run: fot_mem (each storage dtype, and its
faiss backend) against faiss.knn, torch's bfloat16 matmul + topk, faiss IndexFlatIP and numpy
matmul + argpartition, on the same keys and queries, plus the machine's own sgemm rate on the same
shape.

    python benches/compare/compare_exact.py [--keys 65536,262144,1048576] [--dim 128] [--batch 2048]
                                    [--k 32] [--set clustered|normal|ties] [--repeats 3]
                                    [--json out.json]
    python benches/compare/compare_exact.py --big          # 256 queries vs 16M bf16 keys x 64
    python benches/compare/compare_exact.py --big --fot-only --keys 67108864   # fot_mem alone

Prints the CPU (brand, family, model), the CPU features and kernel fot_mem uses
(`fot_mem._core.exact_kernel_info()`), then a table of medians (queries/s, GFLOP/s as 2*N*d per
query, ratios to faiss.knn and to torch bf16 matmul + topk, recall, and each fot_mem run's
float32-fallback rows) and writes JSON. `--set ties` makes a share of the keys (`--copies`, 0.2)
exact copies of 300 of them plus one attention-sink key of 4x the norm at every 2048th position
(51 distinct), as real keys repeat. `--big` is the small-batch, huge-memory case (generation over a
long document): 256 queries against 16M bfloat16 keys x 64 (2 GiB), k 32; `--fot-only` writes the
keys straight into the store in pieces (no float32 copy, so 64M keys fit) and times fot_mem alone.
Threads: 2 unless --threads says otherwise (faiss via OpenMP, torch, fot_mem via rayon).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def clustered(rng: np.random.Generator, n: int, d: int, seed_mix: int = 0) -> np.ndarray:
    """The `clustered` key set of docs/benchmarks.md: a 64-component Gaussian mixture."""
    mix = np.random.default_rng(seed_mix)
    centres = mix.standard_normal((64, d), dtype=np.float32)
    scales = mix.uniform(0.5, 1.5, 64).astype(np.float32)
    weights = mix.dirichlet(np.ones(64))
    j = rng.choice(64, size=n, p=weights)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 1 << 16):
        jj = j[s : s + (1 << 16)]
        noise = rng.standard_normal((len(jj), d), dtype=np.float32)
        out[s : s + len(jj)] = scales[jj, None] * (centres[jj] + 0.5 * noise)
    return out


def with_ties(keys: np.ndarray, rng: np.random.Generator, copies: float, first: int = 0) -> None:
    """Makes a share `copies` of `keys` (rows `first`.. of the whole set) exact copies of 300
    fixed vectors, and every 2048th row one of 51 attention-sink keys of 4x the norm."""
    n, d = keys.shape
    fixed = np.random.default_rng(99)
    originals = clustered(fixed, 300, d, seed_mix=0)
    sinks = 4.0 * clustered(fixed, 51, d, seed_mix=0)
    pick = rng.random(n) < copies
    keys[pick] = originals[rng.integers(0, 300, int(pick.sum()))]
    pos = np.arange(first, first + n)
    at = pos % 2048 == 0
    keys[at] = sinks[(pos[at] // 2048) % 51]


def key_set(name: str, n: int, d: int, seed: int, copies: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if name == "normal":
        return rng.standard_normal((n, d), dtype=np.float32)
    if name == "clustered":
        return clustered(rng, n, d)
    if name == "ties":
        keys = clustered(rng, n, d)
        with_ties(keys, rng, copies)
        return keys
    raise SystemExit(f"unknown key set {name!r} (normal, clustered, ties)")


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def torch_bf16_topk(keys_t, queries_t, k: int, chunk: int = 65536):
    """torch's bfloat16 matmul (oneDNN; AMX tiles where the CPU has them) + topk per chunk of keys,
    merged: the scores of one chunk are materialised, the rest is top-k bookkeeping."""
    import torch

    best_s = best_i = None
    for s in range(0, keys_t.shape[0], chunk):
        sc = (queries_t @ keys_t[s : s + chunk].T).float()
        v, i = torch.topk(sc, min(k, sc.shape[1]), dim=1)
        i = i + s
        if best_s is not None:
            v = torch.cat([best_s, v], 1)
            i = torch.cat([best_i, i], 1)
            v, j = torch.topk(v, min(k, v.shape[1]), dim=1)
            i = torch.gather(i, 1, j)
        best_s, best_i = v, i
    return best_s, best_i


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls after one warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def interleaved(methods, repeats: int) -> tuple[dict, dict, dict]:
    """Runs `methods` (name, callable) round robin, `repeats` times after one warm-up each, so a
    busy machine slows them alike: the median seconds and last output of each, and for fot_mem
    methods the float32-fallback rows and rows per run."""
    import fot_mem

    secs: dict[str, list[float]] = {name: [] for name, _ in methods}
    outs: dict[str, object] = {}
    fbs: dict[str, tuple[int, int]] = {}
    for name, fn in methods:
        outs[name] = fn()
    for _ in range(repeats):
        for name, fn in methods:
            before = fot_mem._core.exact_kernel_info()
            t = time.perf_counter()
            outs[name] = fn()
            secs[name].append(time.perf_counter() - t)
            after = fot_mem._core.exact_kernel_info()
            fb, rw = fbs.get(name, (0, 0))
            fbs[name] = (
                fb + after["fallback_rows"] - before["fallback_rows"],
                rw + after["rows"] - before["rows"],
            )
    fbs = {n: (f // repeats, r // repeats) for n, (f, r) in fbs.items()}
    return {n: statistics.median(t) for n, t in secs.items()}, outs, fbs


def numpy_topk(keys: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ keys.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    ps = np.take_along_axis(scores, part, 1)
    order = np.argsort(-ps, axis=1, kind="stable")
    return np.take_along_axis(ps, order, 1), np.take_along_axis(part, order, 1)


def sgemm_pass(keys: np.ndarray, queries: np.ndarray) -> None:
    """The matrix product alone, in blocks of keys so the scores stay in cache-sized bites."""
    out = np.empty((queries.shape[0], 8192), np.float32)
    for s in range(0, len(keys), 8192):
        blk = keys[s : s + 8192]
        np.matmul(queries, blk.T, out=out[:, : len(blk)])


def recall(ids: np.ndarray, ref: np.ndarray) -> float:
    k = ref.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids.tolist(), ref.tolist())]))


def recall_ties(ids: np.ndarray, keys: np.ndarray, queries: np.ndarray, kth: np.ndarray) -> float:
    """Share of returned keys whose float32 score (recomputed) reaches the oracle's k-th score:
    with exact ties any of the tied keys is a right answer."""
    got = np.einsum("qd,qkd->qk", queries, keys[ids], dtype=np.float32)
    return float(np.mean(got >= kth[:, None] - 1e-5 * np.abs(kth[:, None])))


def rounded(keys: np.ndarray, dtype: str) -> np.ndarray:
    """The keys as a store of `dtype` holds them, widened to float32."""
    if dtype == "float16":
        return keys.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        import ml_dtypes

        return keys.astype(ml_dtypes.bfloat16).astype(np.float32)
    return keys


def fot_store(root: Path, keys: np.ndarray, dtype: str):
    import fot_mem

    path = root / f"store-{dtype}-{len(keys)}-{keys.shape[1]}"
    store = fot_mem.MemoryStore.create(
        path, layers=[0], kv_heads=1, head_dim=keys.shape[1], dtype=dtype, chunk_tokens=65536
    )
    doc = store.document("bench")
    for s in range(0, len(keys), 65536):
        blk = keys[s : s + 65536, None, :]
        doc.append(0, blk, blk[:, :, :1].repeat(keys.shape[1], axis=2))
    return store, doc


def fot_store_pieces(root: Path, n: int, args: argparse.Namespace, dtype: str):
    """A store of `n` keys generated and appended 1M at a time (no copy of all keys in memory)."""
    import fot_mem

    d = args.dim
    path = root / f"store-{dtype}-{n}-{d}-pieces"
    store = fot_mem.MemoryStore.create(
        path, layers=[0], kv_heads=1, head_dim=d, dtype=dtype, chunk_tokens=1 << 20
    )
    doc = store.document("bench")
    piece = 1 << 20
    t = time.perf_counter()
    for i, s in enumerate(range(0, n, piece)):
        m = min(piece, n - s)
        keys = key_set("normal" if args.set == "normal" else "clustered", m, d, seed=1000 + i)
        if args.set == "ties":
            with_ties(keys, np.random.default_rng(2000 + i), args.copies, first=s)
        blk = keys[:, None, :]
        doc.append(0, blk, blk[:, :, :1].repeat(d, axis=2))
    print(f"# built a {dtype} store of {n} keys in {time.perf_counter() - t:.0f} s", flush=True)
    return store, doc


def bench_size(n: int, queries: np.ndarray, args: argparse.Namespace, tmp: Path) -> list[dict]:
    """Every method on `n` keys; prints and returns one row per method."""
    import fot_mem

    d, nq, k = args.dim, args.batch, args.k
    flops = 2.0 * n * d * nq
    rows: list[dict] = []
    base = {"faiss": None, "torch": None}

    def row(
        method: str, seconds: float, rec: float | None, rec_t: float | None = None, fb=None
    ) -> None:
        r = {
            "keys": n,
            "dim": d,
            "batch": nq,
            "k": k,
            "set": args.set,
            "method": method,
            "seconds": seconds,
            "queries_per_s": nq / seconds,
            "gflops": flops / seconds / 1e9,
            "ratio_to_faiss_knn": (base["faiss"] / seconds) if base["faiss"] else None,
            "ratio_to_torch_bf16": (base["torch"] / seconds) if base["torch"] else None,
            "recall": rec,
            "recall_ties": rec_t,
            "fallback_rows": fb,
        }
        rows.append(r)
        ratio = f"{r['ratio_to_faiss_knn']:.2f}" if base["faiss"] else "-"
        ratio_t = f"{r['ratio_to_torch_bf16']:.2f}" if base["torch"] else "-"
        rc = f"{rec:.4f}" if rec is not None else "-"
        rt = f"{rec_t:.4f}" if rec_t is not None else "-"
        fbs = f"{fb[0]}/{fb[1]}" if fb else "-"
        print(
            f"{n:>9} {method:<31} {seconds:>9.4f} {r['queries_per_s']:>10.0f} "
            f"{r['gflops']:>8.1f} {ratio:>8} {ratio_t:>8} {rc:>7} {rt:>7} {fbs:>9}",
            flush=True,
        )

    def fot_run(dtype: str, doc) -> None:
        """fot_mem alone (no oracle: --fot-only)."""
        q3 = queries[:, None, :]
        before = fot_mem._core.exact_kernel_info()
        runs = args.repeats + 1
        t, _ = timed(lambda doc=doc: doc.search(0, q3, k=k), args.repeats)
        after = fot_mem._core.exact_kernel_info()
        fb = (
            (after["fallback_rows"] - before["fallback_rows"]) // runs,
            (after["rows"] - before["rows"]) // runs,
        )
        row(f"fot_mem exact ({dtype})", t, None, None, fb)

    if args.fot_only:
        for dtype in args.dtypes.split(","):
            store, doc = fot_store_pieces(tmp, n, args, dtype)
            fot_run(dtype, doc)
            store.close()
        return rows

    import faiss
    import torch

    if args.set == "real":
        keys = np.ascontiguousarray(np.load(args.real)[:n], dtype=np.float32)
    else:
        keys = key_set(args.set, n, d, seed=2, copies=args.copies)
    ip = faiss.METRIC_INNER_PRODUCT
    keys_t = torch.from_numpy(keys).to(torch.bfloat16)
    queries_t = torch.from_numpy(queries).to(torch.bfloat16)
    q3 = queries[:, None, :]
    stores = [(dtype, *fot_store(tmp, keys, dtype)) for dtype in args.dtypes.split(",")]
    methods = [
        ("faiss.knn (float32)", lambda: faiss.knn(queries, keys, k, metric=ip)),
        (
            "torch bf16 matmul + topk",
            lambda kt=keys_t, qt=queries_t: torch_bf16_topk(kt, qt, k),
        ),
    ]
    for dtype, _, doc in stores:
        methods.append((f"fot_mem exact ({dtype})", lambda doc=doc: doc.search(0, q3, k=k)))
        if not args.no_fot_faiss and dtype == "float32" and not args.big:
            methods.append(
                (
                    f"fot_mem faiss backend ({dtype})",
                    lambda doc=doc: doc.search(0, q3, k=k, backend="faiss"),
                )
            )
    secs, outs, fbs = interleaved(methods, args.repeats)
    s_ref, ref = outs["faiss.knn (float32)"]
    kth = s_ref[:, -1]
    base["faiss"] = secs["faiss.knn (float32)"]
    base["torch"] = secs["torch bf16 matmul + topk"]
    row("faiss.knn (float32)", base["faiss"], 1.0, 1.0)
    ids_t = outs["torch bf16 matmul + topk"][1].numpy()
    row(
        "torch bf16 matmul + topk",
        base["torch"],
        recall(ids_t, ref),
        recall_ties(ids_t, keys, queries, kth),
    )
    del keys_t, methods
    for dtype, store, _ in stores:
        name = f"fot_mem exact ({dtype})"
        ids = outs[name][1][:, 0]
        rk = rounded(keys, dtype)
        kth_d = kth
        if dtype != "float32":
            # The oracle on the keys as the store holds them.
            kth_d = faiss.knn(queries, rk, k, metric=ip)[0][:, -1]
        row(name, secs[name], recall(ids, ref), recall_ties(ids, rk, queries, kth_d), fbs[name])
        name = f"fot_mem faiss backend ({dtype})"
        if name in secs:
            row(name, secs[name], recall(outs[name][1][:, 0], ref))
        store.close()
    if args.big or args.no_extra:
        return rows
    index = faiss.IndexFlatIP(d)
    index.add(keys)
    t, (_, ids) = timed(lambda: index.search(queries, k), args.repeats)
    row("faiss IndexFlatIP (float32)", t, recall(ids, ref))
    index.reset()
    t, _ = timed(lambda: sgemm_pass(keys, queries), args.repeats)
    row("numpy sgemm alone (no top-k)", t, None)
    if n <= args.numpy_max:
        t, (_, ids) = timed(lambda: numpy_topk(keys, queries, k), 1)
        row("numpy matmul + argpartition", t, recall(ids, ref))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", default=None, help="default 65536,262144,1048576")
    ap.add_argument("--dim", type=int, default=None, help="default 128")
    ap.add_argument("--batch", type=int, default=None, help="default 2048")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--set", default="clustered", choices=["clustered", "normal", "ties", "real"])
    ap.add_argument(
        "--real",
        default="bench-data/keys-L15-h1.npy",
        help="--set real: keys [n, d] float32 .npy from benches/compare/extract_keys.py; the "
        "queries come from the queries-*.npy beside it",
    )
    ap.add_argument("--copies", type=float, default=0.2, help="share of copied keys (--set ties)")
    ap.add_argument(
        "--big",
        action="store_true",
        help="small batch, huge memory: defaults --keys 16777216 --dim 64 --batch 256 "
        "--dtypes bfloat16 --repeats 3; fot_mem, faiss.knn and torch only",
    )
    ap.add_argument(
        "--fot-only",
        action="store_true",
        help="time fot_mem alone, on a store filled in pieces (fits 64M keys x 64 in bf16)",
    )
    ap.add_argument("--dtypes", default=None, help="default float32,float16,bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--numpy-max",
        type=int,
        default=262144,
        help="skip numpy matmul + argpartition above this many keys (~40 s at 1M)",
    )
    ap.add_argument("--no-fot-faiss", action="store_true", help="skip fot_mem's faiss backend")
    ap.add_argument(
        "--no-extra",
        action="store_true",
        help="skip faiss IndexFlatIP, the sgemm pass and numpy (faiss.knn, torch and fot_mem only)",
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    big = {"keys": "16777216", "dim": 64, "batch": 256, "dtypes": "bfloat16"}
    small = {"keys": "65536,262144,1048576", "dim": 128, "batch": 2048}
    small["dtypes"] = "float32,float16,bfloat16"
    for name, value in (big if args.big or args.fot_only else small).items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    import fot_mem

    if not args.fot_only:
        import faiss
        import torch

        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    rows: list[dict] = []
    d, nq, k = args.dim, args.batch, args.k
    if args.set == "real":
        real = Path(args.real)
        n_real, d = np.load(real, mmap_mode="r").shape
        args.dim, args.keys = d, args.keys if args.keys != small["keys"] else str(n_real)
        qpath = real.with_name(real.name.replace("keys-", "queries-"))
        queries = np.ascontiguousarray(np.load(qpath)[:nq], dtype=np.float32)
        nq = args.batch = len(queries)
    else:
        queries = key_set("normal" if args.set == "normal" else "clustered", nq, d, seed=1)
    info = fot_mem._core.exact_kernel_info()
    flags = cpu_flags()
    seen = [
        f
        for f in (
            "avx512f",
            "avx512bw",
            "avx512_bf16",
            "avx512_fp16",
            "avx512_vnni",
            "amx_bf16",
            "amx_int8",
            "amx_fp16",
        )
        if f in flags
    ]
    print(f"# CPU {info['cpu']}; features {' '.join(seen)}")
    print(
        f"# fot_mem kernel {info['kernel']} (uses {' '.join(info['features']) or 'no SIMD'}); "
        f"fot_mem {fot_mem.__version__}"
        + ("" if args.fot_only else f", faiss {faiss.__version__}, torch {torch.__version__}")
    )
    print(
        f"# exact top-{k} inner product, d={d}, {nq} queries, {args.set} keys, "
        f"{args.threads} threads, medians of {args.repeats}; numpy {np.__version__}"
    )
    header = (
        f"{'keys':>9} {'method':<31} {'seconds':>9} {'queries/s':>10} {'GFLOP/s':>8} "
        f"{'x faiss':>8} {'x torch':>8} {'recall':>7} {'r(ties)':>7} {'fallback':>9}"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in args.keys.split(",")]:
            rows += bench_size(n, queries, args, Path(tmp))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "machine": {
                        "cpu": info["cpu"],
                        "kernel": info["kernel"],
                        "kernel_features": info["features"],
                        "cpu_features": seen,
                        "platform": platform.processor() or platform.machine(),
                        "threads": args.threads,
                        "python": sys.version.split()[0],
                    },
                    "rows": rows,
                },
                indent=1,
            )
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
