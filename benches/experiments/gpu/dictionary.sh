#!/usr/bin/env bash
# The dictionary lookup experiment (issue 17) on one lent GPU machine, in one lease:
#   install  the carried wheel's extension into python/fot_mem
#   start    install, then run `fot-mem dictionary run` detached (setsid)
#   poll     the log's tail, GPU and disk use; results and metrics so far into $OUT
#   collect  results.json, the log, the plots and train.tgz (every run's metrics and config, the
#            fill and answer JSONs): 5 files, within a call's 8
#   weights  FoT's weights as bfloat16 safetensors (a tgz in 15 MB parts) into $OUT, parts
#            PARTS (sed's range, default 1,4); about 5 parts, so two calls: PARTS=1,4 then 5,8.
#            Do it before the lease ends: the 2026-12-07 run's r_d could not be split by answer
#            slot afterwards because its weights were gone.
# Here: `maturin build --release -o .whl` first; each device call carries .whl.
set -uo pipefail
W=/tmp/dictionary
verb=${1:-poll}
shift || true
case "$verb" in
install)  # the repository's Python, the carried wheel's core
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  cp /tmp/site/fot_mem/_core*.so python/fot_mem/
  ;;
start)
  bash "$0" install || exit 1
  mkdir -p "$W"
  PYTHONPATH=python PYTHONUNBUFFERED=1 setsid nohup python3 -m fot_mem dictionary run \
    --out "$W/out" --store "$W/stores" "$@" >"$W/log" 2>&1 </dev/null &
  sleep "${WAIT:-45}"
  tail -n 20 "$W/log"
  ;;
poll)
  sleep "${WAIT:-0}"
  tail -n 25 "$W/log"
  nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv,noheader
  df -h /tmp | tail -1
  # what is done so far comes back with every poll: the lease may end before collect
  cp "$W/log" "$OUT/pipeline.log"
  tar czf "$OUT/partial.tgz" -C "$W/out" --exclude='checkpoint-*' --exclude='stores' . 2>/dev/null
  ;;
weights)
  [ -f "$W/fot-bf16.tgz" ] || PYTHONPATH=python python3 - "$W" <<"PY"
import json, pathlib, subprocess, sys
import torch
from safetensors.torch import load_file, save_file
w = pathlib.Path(sys.argv[1]); run = w / "out" / "fot"
ckpt = run / (run / "latest").read_text().strip()
state = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(ckpt / "model.safetensors").items()}
keep = w / "fot-bf16"; keep.mkdir(exist_ok=True)
save_file(state, keep / "model.safetensors")
for name in ("config.json", "metrics.jsonl"):
    (keep / name).write_bytes((run / name).read_bytes())
subprocess.run(["tar", "czf", str(w / "fot-bf16.tgz"), "-C", str(keep), "."], check=True)
subprocess.run(["split", "-b", "15M", "-d", str(w / "fot-bf16.tgz"), str(w / "fot-bf16.part")], check=True)
PY
  ls "$W"/fot-bf16.part* | sed -n "${PARTS:-1,4}p" | xargs -I{} cp {} "$OUT/"
  ls -la "$OUT"
  ;;
collect)
  cp "$W/log" "$OUT/pipeline.log"
  cp "$W"/out/results.json "$W"/out/*.png "$OUT/" 2>/dev/null
  tar czf "$OUT/train.tgz" -C "$W/out" --exclude='checkpoint-*' --exclude='stores' . 2>/dev/null
  ls -la "$OUT"
  ;;
esac
