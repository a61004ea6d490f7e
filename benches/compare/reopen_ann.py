"""Reopen time of a document with hnsw indexes: builds (once) a store holding one document of
`--tokens` clustered keys (1,048,576 by default; spans of 65,536 tokens, so 16 index files per kv
head), then, in fresh processes, times opening the store, mapping every index, and the first
hnsw search, with no rebuild. Prints medians and writes JSON.

    python benches/compare/reopen_ann.py [--tokens 1048576] [--dim 64] [--kv-heads 1] [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_exact import clustered

PROBE = """
import sys, time, numpy as np, fot_mem
t0 = time.perf_counter()
s = fot_mem.MemoryStore.open(sys.argv[1], readonly=True)
d = s.document("d")
n = d.indexed_tokens(0)
t1 = time.perf_counter()
q = np.ones((1, int(sys.argv[2]), int(sys.argv[3])), np.float32)
d.search(0, q, 32, backend="hnsw")
t2 = time.perf_counter()
print(t1 - t0, t2 - t0, n, d.length(0))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=1 << 20)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--kv-heads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--store", default=None, help="reuse this store (built if absent)")
    ap.add_argument("--json", default="bench-results/reopen_ann.json")
    args = ap.parse_args()
    import fot_mem

    path = Path(args.store or tempfile.mkdtemp(prefix="reopen_ann-")) / "store"
    build_s = None
    if not path.exists():
        st = fot_mem.MemoryStore.create(
            path, layers=[0], kv_heads=args.kv_heads, head_dim=args.dim, hnsw=True
        )
        doc = st.document("d")
        rng = np.random.default_rng(0)
        t = time.perf_counter()
        for s in range(0, args.tokens, 65536):
            n = min(65536, args.tokens - s)
            keys = np.stack([clustered(rng, n, args.dim) for _ in range(args.kv_heads)], 1)
            doc.append(0, keys, keys)
        stats = st.wait_for_indexes()
        build_s = time.perf_counter() - t
        print(f"built {args.tokens} tokens: {stats['built']} span files, {stats['seconds']:.1f} s")
        st.close()
    opens, firsts = [], []
    for _ in range(args.runs):
        out = subprocess.run(
            [sys.executable, "-c", PROBE, str(path), str(args.kv_heads), str(args.dim)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        opens.append(float(out[0]) * 1e3)
        firsts.append(float(out[1]) * 1e3)
        indexed, length = int(out[2]), int(out[3])
    res = {
        "tokens": length,
        "indexed_tokens": indexed,
        "kv_heads": args.kv_heads,
        "dim": args.dim,
        "open_and_map_ms_median": statistics.median(opens),
        "open_map_first_search_ms_median": statistics.median(firsts),
        "runs": args.runs,
        "build_seconds": build_s,
    }
    print(json.dumps(res, indent=1))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
