#!/usr/bin/env bash
# Issue 6's H200 runs, one step per device call (see README "Training"). Run from the repo root
# on the GPU machine, with python/fot_mem/_core.abi3.so, carry/ (the SmolLM2 GGUF in parts) and
# data/code-smollm2-s05v carried. Everything it makes lies under /tmp/fot (kept while warm).
#
# The calls behind bench-results/train-h200 (2 x H200 for the first four, then one H200):
#   train.sh part     (carry: the .so, wheels/gguf-*.whl, carry/gguf.part.aa)
#   train.sh bench --batch 16 --window 1024 --d 1,8,16 --json $OUT/step-w1024.json
#   train.sh bench --batch 16 --window 2048 --d 8 --json $OUT/step-w2048.json
#   train.sh join     (carry: carry/gguf.part.ab, .ac, gguf.sha256)
#   train.sh single 1500 100 0:2,300:16; train.sh wait 480      (carry: the data)
#   train.sh ddp 1500 100 0:2,300:16; train.sh wait 500
#   train.sh one 0 fot-rand 1500 100 0:2,300:1-16; train.sh wait 420
set -euo pipefail
export PYTHONPATH=$PWD/python:/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
G=${G:-/tmp/fot/smollm2.gguf}
DATA=${DATA:-$PWD/data/code-smollm2-s05v}
mkdir -p /tmp/fot/parts
# One model, one data set; the FoT run, its d = 1 control and the two-GPU run differ only in
# the named options.
common() {
  echo --data "$DATA" --init "$G" --memory-layers 8,16,24 --no-qk-norm --window 1024 --prev 1 \
    --steps "$STEPS" --lr 1e-4 --min-lr 1e-5 --warmup 50 --eval-every "$EVAL" \
    --eval-batches 16 --eval-batch 12 --eval-d 1,8 --checkpoint-every "$STEPS" --no-progress
}
case "$1" in
  part)  # copy the carried GGUF parts aside (they do not survive the next call's tree)
    cp carry/gguf.part.* /tmp/fot/parts/
    python3 -m pip install -q --no-index --no-deps --target /tmp/site wheels/gguf-*.whl ;;
  join)
    cp carry/gguf.part.* /tmp/fot/parts/
    cat /tmp/fot/parts/gguf.part.* > "$G"
    (cd /tmp/fot && sha256sum smollm2.gguf) | cut -d' ' -f1 | cmp - <(cut -d' ' -f1 carry/gguf.sha256)
    echo "GGUF ok"
    if [ -d data/books-smollm2 ]; then cp -r data/books-smollm2 /tmp/fot/; fi ;;
  args)  # the shared options, for a look
    STEPS=${2:-1} EVAL=${3:-1}; common ;;
  bench)  # step time and MFU: plain against crossbatch at equal tokens
    shift
    python benches/measure/crossbatch_step.py --device cuda "$@" ;;
  single)  # the FoT run on GPU 0 and the d = 1 control on GPU 1, side by side
    STEPS=$2 EVAL=$3 D=$4
    for run in fot control; do
      gpu=0; d=$D
      if [ $run = control ]; then gpu=1; d=0:1; fi
      CUDA_VISIBLE_DEVICES=$gpu setsid python -m fot_mem train $(common) --batch 16 \
        --d-schedule "$d" --out /tmp/fot/$run > /tmp/fot/$run.log 2>&1 &
    done ;;
  one)  # one FoT variant on one GPU: one GPU NAME STEPS EVAL D
    gpu=$2 name=$3 STEPS=$4 EVAL=$5 D=$6
    CUDA_VISIBLE_DEVICES=$gpu setsid python -m fot_mem train $(common) --batch 16 \
      --d-schedule "$D" --out /tmp/fot/$name > /tmp/fot/$name.log 2>&1 & ;;
  ddp)  # the FoT run on both GPUs: half the slots each, negatives gathered across ranks
    STEPS=$2 EVAL=$3 D=$4
    setsid torchrun --standalone --nproc-per-node 2 -m fot_mem train $(common) --batch 8 \
      --gather-negatives --d-schedule "$D" --out /tmp/fot/ddp > /tmp/fot/ddp.log 2>&1 & ;;
  wait)  # until no run is left or $2 seconds pass; then the logs' ends and the metrics
    end=$((SECONDS + $2))
    while pgrep -f "fot_mem train" > /dev/null && [ $SECONDS -lt $end ]; do sleep 5; done
    for f in /tmp/fot/*.log; do echo "== $f"; tail -c 1500 "$f"; done
    for r in /tmp/fot/*/; do
      n=$(basename "$r"); mkdir -p "$OUT/$n"
      cp "$r"/metrics.jsonl "$r"/config.json "$OUT/$n/" 2>/dev/null || true
      cp /tmp/fot/$n.log "$OUT/$n/" 2>/dev/null || true
    done ;;
esac
