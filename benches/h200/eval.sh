#!/usr/bin/env bash
# Issue 7's pipeline on one H200, after train.sh's part/join (the GGUF at /tmp/fot/smollm2.gguf)
# with data/code-smollm2-s05v and data/books-smollm2 carried: train the FoT model and its d = 1
# control side by side on the one GPU, then evaluate both and the base model. Sizes come from
# the environment so that a first run can be cut to fit; results go to $OUT/eval.
#   eval.sh train [STEPS]    both runs, in the background (setsid); poll with train.sh wait
#   eval.sh evals            distraction, perplexity (exact, hnsw, multi-document), passkey
set -euo pipefail
export PYTHONPATH=$PWD/python:/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
G=${G:-/tmp/fot/smollm2.gguf}
CODE=$PWD/data/code-smollm2-s05v
BOOKS=$PWD/data/books-smollm2
R=${OUT:-/tmp/fot/out}/eval
mkdir -p "$R"
MODELS=(/tmp/fot/fot-rand /tmp/fot/control "$G")
NAMES=(fot control base)
case "$1" in
  train)
    steps=${2:-1500}
    bash benches/h200/train.sh one 0 fot-rand "$steps" 100 0:2,300:1-16
    bash benches/h200/train.sh one 0 control "$steps" 100 0:1 ;;
  evals)
    dev="--device cuda --dtype bfloat16"
    args=(); for i in 0 1 2; do args+=(--model "${MODELS[$i]}" --name "${NAMES[$i]}"); done
    python -m fot_mem.eval.distraction "${args[@]}" --data "$CODE" --d 1,2,4,8,16,32,64,128 \
      --windows "${WINDOWS:-32}" --window 1024 $dev --json "$R/distraction.json" --png "$R/distraction.png"
    for i in 0 1 2; do
      n=${NAMES[$i]}
      python -m fot_mem.eval.perplexity --model "${MODELS[$i]}" --name "$n" --data "$CODE" \
        --memory "${MEMORY:-0,2048,8192,32768,131072}" --span 2048 --window 1024 --limit-memory \
        --docs "${DOCS:-2}" --mirror cuda $dev --json "$R/ppl-$n.json" --quiet
      python -m fot_mem.eval.perplexity --model "${MODELS[$i]}" --name "$n multi-doc" --data "$CODE" \
        --memory "${MEMORY:-0,2048,8192,32768,131072}" --span 2048 --window 1024 --limit-memory \
        --docs "${DOCS:-2}" --multi-doc "${MULTI:-4}" --mirror cuda $dev --json "$R/ppl-$n-multi.json" --quiet
      python -m fot_mem.eval.passkey --model "${MODELS[$i]}" --name "$n" --gguf "$G" \
        --lengths "${LENGTHS:-4096,16384,65536,131072,262144}" --depths 0.1,0.5,0.9 \
        --trials "${TRIALS:-3}" --window 1024 --filler data --filler-data "$BOOKS" \
        --filler-split train --mirror cuda $dev --json "$R/passkey-$n.json" --quiet
    done
    python -m fot_mem.eval.perplexity --model "${MODELS[0]}" --name "fot hnsw" --data "$CODE" \
      --memory "${MEMORY:-0,2048,8192,32768,131072}" --span 2048 --window 1024 --limit-memory \
      --docs "${DOCS:-2}" --backend hnsw $dev --json "$R/ppl-fot-hnsw.json" --quiet
    python -m fot_mem.eval.perplexity --plot "$R"/ppl-*.json --png "$R/perplexity.png"
    python -m fot_mem.eval.passkey --plot "$R"/passkey-*.json --png "$R/passkey.png" ;;
esac
