"""Exact top-k on one GPU, issue 21's table: the device mirror's torch path (float32 blocked
matmul + group-max top-k), the fused bf16 kernel (`fot_mem.torch.fused_search`) and torch's
bf16 matmul + topk per block, on random bf16 keys of one SmolLM2 memory layer (3 kv heads x 64,
2048 queries x 3 query heads each), at 64K, 1M and 16M keys, k = 32 and 128, medians of 5 in one
run; and the share of the fused kernel's ids equal to the float32 oracle's (the rest are ties).

    python benches/compare/gpu_search.py [--keys 65536,1048576,16777216] [--json PATH]

Writes `{"device", "k", "queries_per_s": {"mirror": {keys: q/s}, "fused": ..., "torch_bf16":
...}, "by_k": {...}, "ids_equal": ...}` (keys as decimal strings; default
bench-results/gpu-search/results.json). Needs CUDA.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import types
from pathlib import Path

import torch
from fot_mem.torch import fused_search
from fot_mem.torch.retrieval import DeviceMirror

KV, GROUP, T, D = 3, 3, 2048, 64


def timed(fn, reps: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_bf16(q, keys, n, k, block=1 << 16):
    best_s = torch.full((q.shape[0], q.shape[1], k), float("-inf"), device=q.device)
    best_i = torch.full_like(best_s, -1, dtype=torch.int64)
    qb = q.bfloat16()
    for start in range(0, n, block):
        s = torch.bmm(qb, keys[:, start : min(n, start + block)].transpose(1, 2))
        v, i = s.float().topk(min(k, s.shape[-1]), dim=-1)
        best_s, pick = torch.cat((best_s, v), -1).topk(k, dim=-1)
        best_i = torch.cat((best_i, i + start), -1).gather(-1, pick)
    return best_s, best_i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", default="65536,1048576,16777216")
    ap.add_argument("--json", type=Path, default=Path("bench-results/gpu-search/results.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_search.py needs a CUDA device")
    torch.manual_seed(0)
    # The torch path of DeviceMirror without a store: its search over raw tensors.
    mirror = types.SimpleNamespace(GROUP=DeviceMirror.GROUP, BLOCK=DeviceMirror.BLOCK)
    mirror.SCORE_BYTES = None
    mirror.device = torch.device("cuda")
    mirror._score_budget = lambda: DeviceMirror._score_budget(mirror)

    def rows(q, keys, n, k):
        return DeviceMirror._search_rows(mirror, q, keys, n, k)

    methods = {
        "mirror": rows,
        "fused": lambda q, keys, n, k: fused_search.fused_topk(q, keys, n, k, rows),
        "torch_bf16": torch_bf16,
    }
    by_k: dict[str, dict] = {}
    agree: dict[str, float] = {}
    for k in (32, 128):
        res: dict[str, dict[str, float]] = {"mirror": {}, "fused": {}, "torch_bf16": {}}
        for n in (int(x) for x in args.keys.split(",")):
            keys = torch.randn(KV, n, D, device="cuda").bfloat16()
            q = torch.randn(KV, GROUP * T, D, device="cuda")
            nq = KV * GROUP * T
            for name, fn in methods.items():
                res[name][str(n)] = nq / timed(lambda f=fn, a=(q, keys, n, k): f(*a))
            _, want = rows(q, keys, n, k)
            _, got = fused_search.fused_topk(q, keys, n, k, rows)
            agree[f"{n}/k{k}"] = float((got == want).float().mean())
            line = "  ".join(f"{m} {res[m][str(n)]:,.0f} q/s" for m in res)
            print(f"k {k:>3} keys {n:>10,}: {line}; fused ids = oracle {agree[f'{n}/k{k}']:.4f}")
            del keys, q
            torch.cuda.empty_cache()
        by_k[str(k)] = res
    out = {
        "device": torch.cuda.get_device_name(),
        "k": 128,
        "queries_per_s": by_k["128"],
        "by_k": by_k,
        "ids_equal": agree,
        "torch": torch.__version__,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
