#!/usr/bin/env bash
# Several d = 1 phases of the dictionary task side by side on one lent GPU (issue 17), to pick
# the one that leaves chance, then the whole experiment continued from the winner's checkpoint:
#   start NAME "ARGS" [NAME "ARGS" ...]   one `dictionary run --only d1_phase ARGS` each
#   poll                                  each sweep run's last training line
#   auto [PIPELINE ARGS...]               once the sweep ends, pick the best validation accuracy
#                                         and run the pipeline with its ARGS and these (detached)
set -uo pipefail
W=/tmp/dictionary
verb=${1:-poll}
shift || true
case "$verb" in
start)
  bash "$(dirname "$0")/dictionary.sh" install || exit 1
  mkdir -p "$W/sweep"
  while [ $# -ge 2 ]; do
    name=$1 extra=$2
    shift 2
    echo "$extra" >"$W/sweep/$name.args"
    # shellcheck disable=SC2086  # ARGS is a list of options
    PYTHONPATH=python PYTHONUNBUFFERED=1 setsid nohup "${PYTHON:-python3}" -m fot_mem dictionary run \
      --out "$W/sweep/$name" --only d1_phase $extra >"$W/sweep/$name.log" 2>&1 </dev/null &
  done
  sleep "${WAIT:-60}"
  tail -n 3 "$W"/sweep/*.log
  ;;
poll)
  sleep "${WAIT:-0}"
  for m in "$W"/sweep/*/d1_phase/metrics.jsonl; do
    echo "== $m"
    grep '"accuracy"' "$m" | tail -n 1 | cut -c1-220
    grep 'val_acc' "$m" | tail -n 1 | cut -c1-220
  done
  tail -n 2 "$W"/sweep/*.log
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  tar czf "$OUT/sweep.tgz" -C "$W/sweep" --exclude='checkpoint-*' . 2>/dev/null
  ;;
auto)
  # detached: waits for the sweep, then continues from the winner (the log says which)
  setsid nohup bash -c '
    W=$1; shift
    while pgrep -f "dictionary run --out $W/sweep" >/dev/null; do sleep 5; done
    best=$(python3 - "$W" <<"PY"
import json, pathlib, sys
scores = {}
for m in pathlib.Path(sys.argv[1], "sweep").glob("*/d1_phase/metrics.jsonl"):
    rows = [json.loads(x) for x in m.read_text().splitlines() if "val_acc_d1" in x]
    if rows:
        scores[m.parent.parent.name] = rows[-1]["val_acc_d1"]
print(max(scores, key=scores.get))
PY
)
    echo "sweep winner: $best ($(cat "$W/sweep/$best.args"))"
    mkdir -p "$W/out" && cp -r "$W/sweep/$best/d1_phase" "$W/out/"
    PYTHONPATH=python PYTHONUNBUFFERED=1 exec "${PYTHON:-python3}" -m fot_mem dictionary run \
      --out "$W/out" --store "$W/stores" --reuse-d1 $(cat "$W/sweep/$best.args") "$@"
  ' auto "$W" "$@" >"$W/log" 2>&1 </dev/null &
  sleep "${WAIT:-1}"
  cat "$W/log"
  ;;
esac
