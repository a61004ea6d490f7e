"""The kill -9 crash test as a benchmark: runs `tests/store_crash.rs` with `FOT_MEM_CRASH_RUNS`
kill runs (200 by default; CI runs 21 and 16) for `kill_mid_append` and `kill_mid_first_append`,
prints the CPU model and the tally lines, and writes the figures as JSON.

    python benches/measure/crash.py [--runs 200] [--json bench-results/crash.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import fot_mem

REPO = Path(__file__).resolve().parents[2]

APPEND = re.compile(
    r"kill-mid-append: (\d+) runs, (\d+) committed tokens lost\s*\n\s*\((\d+) killed inside an "
    r"append, (\d+) finished before the kill, (\d+) tokens verified, (\d+) tokens committed but "
    r"not yet reported when killed, ([\d.]+) s\)"
)
FIRST = re.compile(
    r"kill-mid-first-append: (\d+) runs, (\d+) committed tokens lost \((\d+) killed inside a "
    r"first append, (\d+) documents reported committed, (\d+) tokens verified\)"
)
CREATE = re.compile(r"kill-mid-create: .*")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200, help="kill runs per test (default 200)")
    ap.add_argument("--json", default=str(REPO / "bench-results" / "crash.json"))
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be a positive integer")
    cpu = fot_mem.exact_kernel_info()["cpu"]
    print(f"Model name: {cpu}", flush=True)
    env = dict(os.environ, FOT_MEM_CRASH_RUNS=str(args.runs))
    cmd = ["cargo", "test", "--release", "--test", "store_crash", "--", "--nocapture"]
    print(f"FOT_MEM_CRASH_RUNS={args.runs} {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.stderr.write(out)
        print(f"cargo test failed with exit status {proc.returncode}", file=sys.stderr)
        return 1
    a, f = APPEND.search(out), FIRST.search(out)
    if a is None or f is None:
        sys.stderr.write(out)
        print("tally lines not found in the test's output", file=sys.stderr)
        return 1
    for m in (a, f, CREATE.search(out)):
        if m is not None:
            print(" ".join(m.group(0).split()))
    result = {
        "cpu": cpu,
        "runs_requested": args.runs,
        "kill_mid_append": {
            "runs": int(a[1]),
            "committed_tokens_lost": int(a[2]),
            "killed_inside_append": int(a[3]),
            "finished_before_kill": int(a[4]),
            "tokens_verified": int(a[5]),
            "committed_not_yet_reported": int(a[6]),
            "seconds": float(a[7]),
        },
        "kill_mid_first_append": {
            "runs": int(f[1]),
            "committed_tokens_lost": int(f[2]),
            "killed_inside_first_append": int(f[3]),
            "documents_reported_committed": int(f[4]),
            "tokens_verified": int(f[5]),
        },
        "cargo_test_seconds": round(seconds, 1),
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
