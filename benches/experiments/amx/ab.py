"""One exact search setting on real keys, for A/B runs of the kernel's knobs (run.sh `ab`): builds
a bfloat16 store of KEYS (.npy [n, d]), searches it with QUERIES (.npy [m, d]), k = 32, and prints
the CPU model, the kernel, the knobs set in the environment, and the median and best wall and
CPU seconds of REPEATS searches after one warm-up, for the default path and, in alternation, the
AMX kernel on packed keys (FOT_MEM_EXACT_AMX_PACKED=1, read at every search). Settings read once
per process (such as FOT_MEM_EXACT_TASKS_PER_THREAD) need one process each."""

import os
import sys
import tempfile
import time

import fot_mem
import numpy as np

PATHS = ("default", "packed")


def main() -> None:
    keys_path, queries_path = sys.argv[1], sys.argv[2]
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 7
    keys = np.ascontiguousarray(np.load(keys_path), dtype=np.float32)
    queries = np.ascontiguousarray(np.load(queries_path), dtype=np.float32)[:, None, :]
    n, d = keys.shape
    with tempfile.TemporaryDirectory() as tmp:
        store = fot_mem.MemoryStore.create(
            f"{tmp}/s", layers=[0], kv_heads=1, head_dim=d, dtype="bfloat16", chunk_tokens=65536
        )
        doc = store.document("ab")
        for s in range(0, n, 65536):
            blk = keys[s : s + 65536, None, :]
            doc.append(0, blk, blk)
        doc.search(0, queries, k=32)
        times: dict[str, tuple[list[float], list[float]]] = {p: ([], []) for p in PATHS}
        for _ in range(repeats):
            for path, (walls, cpus) in times.items():
                if path == "packed":
                    os.environ["FOT_MEM_EXACT_AMX_PACKED"] = "1"
                w, c = time.perf_counter(), time.process_time()
                doc.search(0, queries, k=32)
                walls.append(time.perf_counter() - w)
                cpus.append(time.process_time() - c)
                os.environ.pop("FOT_MEM_EXACT_AMX_PACKED", None)
    info = fot_mem.exact_kernel_info()
    knobs = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("FOT_MEM_"))
    for path, (walls, cpus) in times.items():
        print(
            f"{info['cpu']}; {info['kernel']} ({path}); {knobs or 'defaults'}; "
            f"{len(queries)} x {n} x {d}: wall median {np.median(walls):.4f} s "
            f"best {min(walls):.4f}; CPU median {np.median(cpus):.4f} s; "
            f"fallback rows {info['fallback_rows']}"
        )


if __name__ == "__main__":
    main()
