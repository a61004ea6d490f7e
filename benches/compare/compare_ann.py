"""Approximate top-k inner-product search, side by side in one run on the same keys and queries:
fot_mem's native `hnsw` backend (graphs in the store, memory-mapped), hnswlib (M=16,
ef_construction=200, space "ip", the anchor of docs/benchmarks.md) and fot_mem's exact backend.

    python benches/compare/compare_ann.py [--sets clustered,normal,real] [--keys 262144] [--dim 128]
                                  [--queries 2048] [--k 32] [--efs 16,32,64,128,256,512]
                                  [--real-dir bench-data] [--json out.json]

For each key set: build keys/s of each index (2 threads), then for each ef the median queries/s
(all queries in one batch, 2 threads) and recall@k against the exact top-k; the reopen time of
the fot_mem store (open + map the index + first search). `real` reads keys/queries extracted
from SmolLM2 by benches/compare/extract_keys.py (skipped when absent). Prints tables, writes JSON.

Every figure is printed with the CPU model, the Linux kernel and the hnsw kernels in use. The
curves are timed one library after the other; then the two decisive points (fot_mem at the lowest
ef reaching recall 0.95, hnswlib at its reference point) are timed alternately, so that load from
other processes on a shared machine falls on both alike, and so are both builds (again, `--repeats`
of each in turns, medians); builds are also given per CPU-second (`time.process_time`), which such
load disturbs less than wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_exact import clustered, timed


def machine() -> dict:
    """CPU model, Linux kernel, the SIMD features that pick the hnsw kernels, and those kernels."""
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("?", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    feats = [
        f
        for f in ("avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
        if f in flags
    ]
    avx512 = {"avx512f", "avx512bw"} <= flags
    if avx512 and "avx512_vnni" in flags:
        walk = "int8 codes, AVX-512 VNNI (int8 query, batched VPDPBUSD)"
    else:
        walk = "int8 codes, AVX-512 F/BW" if avx512 else "int8 codes, portable"
    pair = "VDPBF16PS" if avx512 and "avx512_bf16" in flags else "portable bf16"
    return {
        "cpu": model,
        "kernel": platform.release(),
        "cores": os.cpu_count(),
        "features": feats,
        "hnsw_kernels": f"search: walk on {walk}, f32 rescoring of 3k; build: walk on {walk}, "
        f"links on {pair}",
        "python": sys.version.split()[0],
    }


def key_sets(args) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (keys [n, d], queries [q, d]), float32."""
    out = {}
    n, d, nq = args.keys, args.dim, args.queries
    for name in args.sets.split(","):
        if name == "clustered":
            out[name] = (
                clustered(np.random.default_rng(1), n, d),
                clustered(np.random.default_rng(2), nq, d),
            )
        elif name == "normal":
            rng = np.random.default_rng(3)
            out[name] = (
                rng.standard_normal((n, d), dtype=np.float32),
                rng.standard_normal((nq, d), dtype=np.float32),
            )
        elif name == "real":
            files = sorted(Path(args.real_dir).glob("keys-L*-h*.npy"))
            if not files:
                print(
                    f"[real] no keys in {args.real_dir}: run benches/compare/extract_keys.py first"
                )
                continue
            for kf in files:
                keys = np.load(kf).astype(np.float32)
                qf = kf.with_name(kf.name.replace("keys-", "queries-"))
                queries = np.load(qf).astype(np.float32)
                # Whole spans only: the store indexes full spans of 4096-token chunks.
                n_real = len(keys) // 4096 * 4096
                out[f"real:{kf.stem}"] = (keys[:n_real], queries[:nq])
        else:
            raise SystemExit(f"unknown key set {name!r}")
    return out


def round_bf16(x: np.ndarray) -> np.ndarray:
    """x rounded to bfloat16 (nearest, ties to even), as float32: what a bf16 store holds."""
    u = x.astype(np.float32).view(np.uint32)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16).astype(np.uint32)
    return u.view(np.float32)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """|found ∩ exact top-k| / k, averaged (docs/benchmarks.md)."""
    k = truth.shape[1]
    hits = sum(len(np.intersect1d(f, t, assume_unique=False)) for f, t in zip(found, truth))
    return hits / (len(truth) * k)


def recall_ties(found: np.ndarray, kth: np.ndarray, keys: np.ndarray, queries: np.ndarray) -> float:
    """ann-benchmarks' recall: a found key counts when its score reaches the exact k-th score
    (so a key tied with the k-th one counts, whichever of the ties the index returns). Real
    attention keys repeat (the first token of windows that start alike), so ids alone
    undercount."""
    f = np.where(found < 0, 0, found)
    scores = np.einsum("qkd,qd->qk", keys[f], queries)
    ok = (found >= 0) & (scores >= kth[:, None] - 1e-5 * np.maximum(1.0, np.abs(kth[:, None])))
    return float(ok.mean())


def run_set(name, keys, queries, args, threads):
    import fot_mem

    if args.dtype == "bfloat16":
        keys = round_bf16(keys)  # every index (and the exact oracle) sees the stored keys
    n, d = keys.shape
    k = args.k
    efs = [int(e) for e in args.efs.split(",")]
    res = {"set": name, "keys": n, "dim": d, "queries": len(queries), "k": k, "dtype": args.dtype}
    tmp = tempfile.mkdtemp(prefix="compare_ann-")

    # Exact: the oracle, and the speed to beat at recall 1.
    ex = fot_mem.MemoryStore.create(
        f"{tmp}/exact", layers=[0], kv_heads=1, head_dim=d, chunk_tokens=4096, dtype=args.dtype
    )
    doc = ex.document("d")
    for s in range(0, n, 65536):
        doc.append(0, keys[s : s + 65536, None], keys[s : s + 65536, None, :1].repeat(d, 2))
    q3 = queries[:, None]
    sec, (tscores, truth) = timed(lambda: doc.search(0, q3, k), args.repeats)
    truth = truth[:, 0]
    kth = tscores[:, 0, -1]
    res["exact"] = {"qps": len(queries) / sec}
    ex.close()

    # fot_mem hnsw: one span over all keys (the same single graph hnswlib builds), float32.
    path = f"{tmp}/hnsw"
    hn, stats, build_cpu = build_fot_mem(path, keys, args)
    doc = hn.document("d")
    curve = []
    for ef in efs:
        sec, (_, ids) = timed(
            lambda ef=ef: doc.search(0, q3, k, backend="hnsw", ef=ef), args.repeats
        )
        curve.append(
            {
                "ef": ef,
                "qps": len(queries) / sec,
                "recall": recall(ids[:, 0], truth),
                "recall_ties": recall_ties(ids[:, 0], kth, keys, queries),
            }
        )
    res["fot_mem_hnsw"] = {
        "m": args.m,
        "ef_construction": args.efc,
        "linking": hn.hnsw["linking"],
        "build_keys_per_s": n / stats["seconds"],
        "build_seconds": stats["seconds"],
        "build_keys_per_cpu_s": n / build_cpu,
        "curve": curve,
    }
    hn.close()
    # Reopen in a fresh process: open the store, map the index, answer one query.
    probe = (
        "import sys,time,numpy as np,fot_mem\n"
        "t=time.perf_counter();s=fot_mem.MemoryStore.open(sys.argv[1],readonly=True)\n"
        "d=s.document('d');n=d.indexed_tokens(0);t1=time.perf_counter()\n"
        f"d.search(0,np.ones((1,1,{d}),np.float32),{k},backend='hnsw');t2=time.perf_counter()\n"
        "print(t1-t,t2-t,n)"
    )
    opened = subprocess.run(
        [sys.executable, "-c", probe, path], capture_output=True, text=True, check=True
    ).stdout.split()
    res["fot_mem_hnsw"]["reopen_ms"] = float(opened[0]) * 1e3
    res["fot_mem_hnsw"]["reopen_first_search_ms"] = float(opened[1]) * 1e3

    # hnswlib, the anchor's parameters.
    try:
        import hnswlib
    except ImportError:
        print("hnswlib missing: pip install hnswlib")
        return res
    idx, build, build_cpu = build_hnswlib(keys, threads)
    curve = []
    for ef in efs:
        idx.set_ef(max(ef, k))
        sec, (ids, _) = timed(
            lambda: idx.knn_query(queries, k=k, num_threads=threads), args.repeats
        )
        curve.append(
            {
                "ef": ef,
                "qps": len(queries) / sec,
                "recall": recall(ids, truth),
                "recall_ties": recall_ties(ids.astype(np.int64), kth, keys, queries),
            }
        )
    idx.save_index(f"{tmp}/hnswlib.bin")
    t = time.perf_counter()
    again = hnswlib.Index(space="ip", dim=d)
    again.load_index(f"{tmp}/hnswlib.bin", max_elements=n)
    load = time.perf_counter() - t
    res["hnswlib"] = {
        "m": 16,
        "ef_construction": 200,
        "build_keys_per_s": n / build,
        "build_seconds": build,
        "build_keys_per_cpu_s": n / build_cpu,
        "load_ms": load * 1e3,
        "curve": curve,
    }
    res["matched"] = matched(res, path, idx, q3, queries, k, threads, args.repeats)
    res["matched_builds"] = matched_builds(keys, args, threads, tmp)
    return res


def build_fot_mem(path, keys, args):
    """A store at `path` holding `keys` in one hnsw span, built: (store, index stats, CPU s)."""
    import fot_mem

    n, d = keys.shape
    store = fot_mem.MemoryStore.create(
        path,
        layers=[0],
        kv_heads=1,
        head_dim=d,
        chunk_tokens=4096,
        dtype=args.dtype,
        hnsw={"m": args.m, "ef_construction": args.efc, "span_tokens": n, "linking": args.linking},
    )
    cpu = time.process_time()
    store.document("d").append(0, keys[:, None], np.zeros((n, 1, d), np.float32))
    stats = store.wait_for_indexes()
    return store, stats, time.process_time() - cpu


def build_hnswlib(keys, threads):
    """hnswlib over `keys` with the anchor's parameters: (index, wall s, CPU s)."""
    import hnswlib

    n, d = keys.shape
    idx = hnswlib.Index(space="ip", dim=d)
    idx.init_index(max_elements=n, M=16, ef_construction=200, random_seed=100)
    t, cpu = time.perf_counter(), time.process_time()
    idx.add_items(keys, np.arange(n), num_threads=threads)
    return idx, time.perf_counter() - t, time.process_time() - cpu


def matched_builds(keys, args, threads, tmp) -> dict:
    """Both builds again, in turns (fot_mem, hnswlib, fot_mem, ...), `repeats` of each: one build
    apiece in the curves above is at the mercy of whatever else the machine ran meanwhile (on a
    shared 2-core machine one library's build rate moved by a fifth between runs). Medians of
    wall keys/s and of keys per CPU-second, and their ratios."""
    n = len(keys)
    fw, fc, hw, hc = [], [], [], []
    for r in range(args.repeats):
        store, stats, cpu = build_fot_mem(f"{tmp}/build{r}", keys, args)
        fw.append(n / stats["seconds"])
        fc.append(n / cpu)
        store.close()
        idx, wall, cpu = build_hnswlib(keys, threads)
        hw.append(n / wall)
        hc.append(n / cpu)
        del idx
    med = statistics.median
    return {
        "rounds": args.repeats,
        "fot_mem_keys_per_s": med(fw),
        "hnswlib_keys_per_s": med(hw),
        "ratio": med(fw) / med(hw),
        "fot_mem_keys_per_cpu_s": med(fc),
        "hnswlib_keys_per_cpu_s": med(hc),
        "ratio_per_cpu_s": med(fc) / med(hc),
    }


def lowest_ef(curve, target):
    """The ef of the first point reaching `target` recall, else of the most accurate one."""
    ok = [p for p in curve if p["recall"] >= target]
    return (ok[0] if ok else max(curve, key=lambda p: p["recall"]))["ef"]


def matched(res, path, idx, q3, queries, k, threads, repeats) -> dict:
    """The two decisive points timed alternately (fot_mem at the lowest ef reaching recall 0.95,
    hnswlib at its reference: the lowest ef reaching 0.95, else its most accurate), so load from
    other processes falls on both alike: medians of 2 * repeats + 1 rounds, and their ratio."""
    import fot_mem

    f_ef = lowest_ef(res["fot_mem_hnsw"]["curve"], 0.95)
    h_ef = lowest_ef(res["hnswlib"]["curve"], 0.95)
    store = fot_mem.MemoryStore.open(path, readonly=True)
    doc = store.document("d")
    idx.set_ef(max(h_ef, k))
    ft, ht = [], []
    doc.search(0, q3, k, backend="hnsw", ef=f_ef)
    idx.knn_query(queries, k=k, num_threads=threads)
    for _ in range(2 * repeats + 1):
        t = time.perf_counter()
        doc.search(0, q3, k, backend="hnsw", ef=f_ef)
        ft.append(time.perf_counter() - t)
        t = time.perf_counter()
        idx.knn_query(queries, k=k, num_threads=threads)
        ht.append(time.perf_counter() - t)
    store.close()
    fq, hq = len(queries) / statistics.median(ft), len(queries) / statistics.median(ht)
    return {
        "fot_mem_ef": f_ef,
        "fot_mem_qps": fq,
        "hnswlib_ef": h_ef,
        "hnswlib_qps": hq,
        "qps_ratio": fq / hq,
    }


def best_at(curve, target, metric):
    """Highest qps among points with `metric` >= target, else None."""
    ok = [p["qps"] for p in curve if p[metric] >= target]
    return max(ok) if ok else None


def summarise(res) -> dict:
    """The goals' ratios: fot_mem's best qps at recall >= 0.95 over hnswlib's best qps at 0.95,
    or, where hnswlib never gets there, at its own best recall. Per recall definition."""
    f, h = res["fot_mem_hnsw"], res.get("hnswlib")
    out = {}
    if not h:
        return out
    out["build_ratio"] = f["build_keys_per_s"] / h["build_keys_per_s"]
    for metric in ("recall", "recall_ties"):
        hq = best_at(h["curve"], 0.95, metric)
        best_h = max(h["curve"], key=lambda p: p[metric])
        target = 0.95 if hq else best_h[metric]
        hq = hq or best_h["qps"]
        fq = best_at(f["curve"], 0.95, metric)
        out[metric] = {
            "fot_mem_best": max(p[metric] for p in f["curve"]),
            "hnswlib_best": best_h[metric],
            "hnswlib_reference": {"recall": target, "qps": hq},
            "fot_mem_qps_at_0.95": fq,
            "qps_ratio": fq / hq if fq else None,
        }
    return out


def print_set(res, mach) -> None:
    print(
        f"\n== {res['set']}: {res['keys']} keys x {res['dim']}, {res['queries']} queries, "
        f"k={res['k']} ==\n   [{mach['cpu']}, Linux {mach['kernel']}; {mach['hnsw_kernels']}]"
    )
    print(f"exact (fot_mem): {res['exact']['qps']:.0f} q/s at recall 1")
    for name in ("fot_mem_hnsw", "hnswlib"):
        r = res.get(name)
        if not r:
            continue
        extra = f", reopen {r['reopen_ms']:.1f} ms" if "reopen_ms" in r else ""
        extra += f", load {r['load_ms']:.0f} ms" if "load_ms" in r else ""
        print(
            f"{name}: build {r['build_keys_per_s']:.0f} keys/s ({r['build_seconds']:.1f} s){extra}"
        )
        for p in r["curve"]:
            print(
                f"   ef {p['ef']:4d}: recall@{res['k']} {p['recall']:.4f} "
                f"(with ties {p['recall_ties']:.4f})  {p['qps']:9.0f} q/s"
            )
    s = res["summary"]
    print("summary:", json.dumps(s))
    mt = res.get("matched")
    if mt:
        f, h = res["fot_mem_hnsw"], res["hnswlib"]
        fr = next(p for p in f["curve"] if p["ef"] == mt["fot_mem_ef"])
        hr = next(p for p in h["curve"] if p["ef"] == mt["hnswlib_ef"])
        print(
            f"matched, timed alternately [{mach['cpu']}, Linux {mach['kernel']}]: fot_mem ef "
            f"{mt['fot_mem_ef']} (recall {fr['recall']:.3f}) {mt['fot_mem_qps']:.0f} q/s, hnswlib "
            f"ef {mt['hnswlib_ef']} (recall {hr['recall']:.3f}) {mt['hnswlib_qps']:.0f} q/s: "
            f"{mt['qps_ratio']:.2f}x; build keys per CPU-second {f['build_keys_per_cpu_s']:.0f} / "
            f"{h['build_keys_per_cpu_s']:.0f} = "
            f"{f['build_keys_per_cpu_s'] / h['build_keys_per_cpu_s']:.2f}x"
        )
    mb = res.get("matched_builds")
    if mb:
        print(
            f"builds timed in turns [{mach['cpu']}, Linux {mach['kernel']}], medians of "
            f"{mb['rounds']}: fot_mem {mb['fot_mem_keys_per_s']:.0f} keys/s, hnswlib "
            f"{mb['hnswlib_keys_per_s']:.0f} keys/s: {mb['ratio']:.2f}x; per CPU-second "
            f"{mb['fot_mem_keys_per_cpu_s']:.0f} / {mb['hnswlib_keys_per_cpu_s']:.0f} = "
            f"{mb['ratio_per_cpu_s']:.2f}x"
        )
    for metric in ("recall", "recall_ties"):
        r = s.get(metric)
        if r and r["qps_ratio"]:
            ref = r["hnswlib_reference"]
            print(
                f"ratios ({metric}) [{mach['cpu']}, Linux {mach['kernel']}]: fot_mem "
                f"{r['fot_mem_qps_at_0.95']:.0f} q/s at >= 0.95 = {r['qps_ratio']:.2f}x hnswlib "
                f"({ref['qps']:.0f} q/s at {ref['recall']:.3f}); build "
                f"{s['build_ratio']:.2f}x hnswlib"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="clustered,normal,real")
    ap.add_argument("--keys", type=int, default=262144)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--efs", default="32,64,96,128,192,256,384,512")
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--efc", type=int, default=100)
    ap.add_argument("--linking", default="hybrid")
    ap.add_argument("--dtype", default="float32", help="fot_mem store dtype (float32, bfloat16)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--real-dir", default="bench-data")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    mach = machine()
    print(
        f"{mach['cpu']} ({mach['cores']} cores; {', '.join(mach['features'])}), Linux "
        f"{mach['kernel']}; hnsw kernels: {mach['hnsw_kernels']}; medians of {args.repeats}"
    )
    out = {"machine": mach, "args": vars(args), "sets": []}
    for name, (keys, queries) in key_sets(args).items():
        res = run_set(name, keys, queries, args, args.threads)
        res["summary"] = summarise(res)
        print_set(res, mach)
        out["sets"].append(res)
    path = Path(args.json or f"bench-results/compare_ann-{time.strftime('%Y%m%d-%H%M%S')}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
