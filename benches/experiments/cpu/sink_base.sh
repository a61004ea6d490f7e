#!/usr/bin/env bash
# SmolLM2-135M-Instruct (no FoT training) on this CPU, with and without FotConfig.sink_token:
# does a sink token before every window take the sinks out of memory, and does memory then
# hurt the base model less as it grows? Results: bench-results/eval-cpu/. About 15 minutes.
# Needs data/code-smollm2-s05v (the code set, SmolLM2 tokens; see README "Training").
set -euo pipefail
OUT=${OUT:-bench-results/eval-cpu}
DATA=${DATA:-data/code-smollm2-s05v}
SINK=0  # <|endoftext|>, SmolLM2's document separator
mkdir -p "$OUT"
python -m fot_mem eval distraction --model smollm2 --name base --data "$DATA" \
  --d 1,2,4,8,16,32 --windows 4 --window 1024 --dtype bfloat16 --device cpu \
  --json "$OUT/distraction-base.json" --png "$OUT/distraction-base.png"
python -m fot_mem eval distraction --model smollm2 --name "base, sink token" --sink-token $SINK \
  --data "$DATA" --d 1,2,4,8,16,32 --windows 4 --window 1024 --dtype bfloat16 --device cpu \
  --json "$OUT/distraction-base-sink.json" --png "$OUT/distraction-base-sink.png"
ppl="--model smollm2 --data $DATA --memory 0,2048,8192,32768 --span 2048 --window 1024
  --limit-memory --docs 2 --dtype bfloat16 --device cpu"
# shellcheck disable=SC2086
python -m fot_mem eval perplexity $ppl --name base --json "$OUT/ppl-base.json"
# shellcheck disable=SC2086
python -m fot_mem eval perplexity $ppl --name "base, sink token" --sink-token $SINK \
  --json "$OUT/ppl-base-sink.json"
python -m fot_mem eval perplexity --plot "$OUT"/ppl-base*.json --png "$OUT/perplexity.png"
# The toy models of the README's CPU-scale check (runs/cpu3k-*, trained as their configs in
# bench-results/train-cpu say): r_d at toy scale, where no sinks form.
if [ -d runs/cpu3k-0_1 ] && [ -d runs/cpu3k-0_2_500_4 ]; then
  python -m fot_mem eval distraction --model runs/cpu3k-0_1 --name control \
    --model runs/cpu3k-0_2_500_4 --name fot --data data/code-bytes --window 128 \
    --d 1,2,4,8,16,32,64 --windows 32 --device cpu --json "$OUT/distraction-toy.json" \
    --png "$OUT/distraction-toy.png"
fi
