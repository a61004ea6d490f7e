#!/usr/bin/env bash
# Issue 7's pipeline on one H200, after train.sh's part/join (the GGUF at /tmp/fot/smollm2.gguf)
# with data/code-smollm2-s05v and data/books-smollm2 carried: train the FoT model and its d = 1
# control side by side on the one GPU, then evaluate both and the base model. Sizes come from
# the environment so that a first run can be cut to fit; results go to $OUT/eval.
# Carry plan (64 MiB a call; files stay while the machine is warm, 30 s idle):
#   1. python/fot_mem/_core.abi3.so, wheels/gguf-*.whl, carry/gguf.part.aa   -> train.sh part
#   2. carry/gguf.part.ab, .ac, gguf.sha256, data/books-smollm2 (7.7 MB)       -> train.sh join
#   3. data/code-smollm2-s05v (56 MB)      -> eval.sh train 1500; then train.sh wait / eval.sh evals
#   eval.sh train [STEPS]    both runs, in the background (setsid); poll with train.sh wait
#   eval.sh evals            distraction, perplexity (exact, hnsw, multi-document), passkey
set -euo pipefail
export PYTHONPATH=$PWD/python:/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
G=${G:-/tmp/fot/smollm2.gguf}
CODE=${CODE:-/tmp/fot/code-smollm2-s05v}  # copied aside by eval.sh train
BOOKS=${BOOKS:-/tmp/fot/books-smollm2}  # copied aside by train.sh join
R=${OUT:-/tmp/fot/out}/eval
mkdir -p "$R"
MODELS=(/tmp/fot/fot-rand /tmp/fot/control "$G")
NAMES=(fot control base)
# PICK (model indices, "0 1 2"), DEVICE, W (working folder) and D (distraction's d) make a
# smoke run possible: PICK=2 DEVICE=cpu W=/tmp/smoke ... eval.sh evals runs the base model alone.
PICK=(${PICK:-0 1 2})
case "$1" in
  train)
    # A carried folder need not outlive the next call's tree: the data is copied aside first.
    steps=${2:-1500}
    cp -r data/code-smollm2-s05v /tmp/fot/
    export DATA=/tmp/fot/code-smollm2-s05v
    bash benches/experiments/h200/train.sh one 0 fot-rand "$steps" 250 0:2,300:1-16
    bash benches/experiments/h200/train.sh one 0 control "$steps" 250 0:1 ;;
  evals)
    # One process runs every step (python -m fot_mem eval suite): each model loads once. A step
    # writes its JSON as soon as it is done (passkey after every prompt) and a failing step does
    # not stop the others. Results are made in /tmp/fot/eval (kept while the machine is warm)
    # and copied to $R at the end; the suite stops after $BUDGET s, before the device call's
    # 600 s limit, and a second `eval.sh evals` call runs only the steps not done yet.
    # The defaults should fit the three models in about 5.5 minutes on one H200 (estimated from
    # the forward and mirror-search rates, not measured yet): start and model loads ~15 s,
    # distraction ~15 s, perplexity ~20 s a model (multi-doc ~11 s more, hnsw ~22 s: their
    # prefixes are read once, by the first step), passkey ~60 s a model (TRIALS=2: ~40 s;
    # 262144 in LENGTHS: ~+90 s a model). Steps run in order of importance, so a timeout cuts
    # the last ones. Sizes come from the environment: WINDOWS, MEMORY, DOCS, MULTI, LENGTHS,
    # TRIALS, BUDGET (seconds for the suite).
    W=${W:-/tmp/fot/eval}; mkdir -p "$W"
    dev="--device ${DEVICE:-cuda} --dtype bfloat16"
    mem=${MEMORY:-0,2048,8192,32768,131072}
    ppl="--data $CODE --memory $mem --span 2048 --window 1024 --limit-memory --docs ${DOCS:-2} --mirror ${DEVICE:-cuda} $dev"
    steps=$W/steps.txt
    {
      args=""; for i in "${PICK[@]}"; do args+=" --model ${MODELS[$i]} --name ${NAMES[$i]}"; done
      echo "distraction $args --data $CODE --d ${D:-1,2,4,8,16,32,64,128} --windows ${WINDOWS:-32}" \
        "--window 1024 $dev --json $W/distraction.json --png $W/distraction.png"
      for i in "${PICK[@]}"; do
        echo "perplexity --model ${MODELS[$i]} --name ${NAMES[$i]} $ppl --json $W/ppl-${NAMES[$i]}.json"
      done
      for i in "${PICK[@]}"; do
        echo "passkey --model ${MODELS[$i]} --name ${NAMES[$i]} --gguf $G" \
          "--lengths ${LENGTHS:-4096,16384,65536,131072} --depths 0.1,0.5,0.9" \
          "--trials ${TRIALS:-3} --window 1024 --filler data --filler-data $BOOKS" \
          "--filler-split train --mirror ${DEVICE:-cuda} $dev --json $W/passkey-${NAMES[$i]}.json"
      done
      for i in "${PICK[@]}"; do
        echo "perplexity --model ${MODELS[$i]} --name '${NAMES[$i]} multi-doc' $ppl" \
          "--multi-doc ${MULTI:-4} --json $W/ppl-${NAMES[$i]}-multi.json"
      done
      h=${PICK[0]}
      echo "perplexity --model ${MODELS[$h]} --name '${NAMES[$h]} hnsw' $ppl --backend hnsw" \
        "--json $W/ppl-${NAMES[$h]}-hnsw.json"
    } > "$steps"
    cat "$steps"
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
    start=$SECONDS
    timeout --signal=INT --kill-after=20 "${BUDGET:-540}" python -m fot_mem eval suite "$steps" \
      --skip-done --summary "$W/suite.json" || echo "SUITE: some steps FAILED or timed out (rc $?)"
    echo "suite: $((SECONDS - start)) s"
    python -m fot_mem eval perplexity --plot "$W"/ppl-*.json --png "$W/perplexity.png" \
      || echo "FAILED: perplexity plot"
    python -m fot_mem eval passkey --plot "$W"/passkey-*.json --png "$W/passkey.png" \
      || echo "FAILED: passkey plot"
    # At most 8 files come back from a call: the JSON in one archive, beside the plots.
    cp "$W"/*.png "$R"/ 2>/dev/null || true
    tar czf "$R/results.tar.gz" -C "$W" --exclude='*.png' .
    ls -la "$R"
    echo "evals: $((SECONDS - start)) s" ;;
esac
