#!/usr/bin/env bash
# The dictionary lookup experiment (issue 17) on one lent GPU machine, in one lease:
#   install  the carried wheel's extension into python/fot_mem
#   start    install, then run `fot-mem dictionary run` detached (setsid)
#   poll     the log's tail, GPU and disk use; results and metrics so far into $OUT
#   collect  results.json, plots, logs and training metrics into $OUT
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
collect)
  cp "$W/log" "$OUT/pipeline.log"
  cp "$W"/out/*.json "$W"/out/*.png "$OUT/" 2>/dev/null
  tar czf "$OUT/train.tgz" -C "$W/out" --exclude='checkpoint-*' --exclude='stores' . 2>/dev/null
  ls -la "$OUT"
  ;;
esac
