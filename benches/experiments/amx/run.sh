#!/usr/bin/env bash
# The AMX exact kernel on the GPU machine's host CPU (Intel Xeon with AMX-BF16): the Rust and
# Python exact-search tests there, then exact search against faiss.knn and torch (bf16 matmul +
# topk) in the same runs, pinned to 2 cores as on the development machines, with the AMX kernel
# and with the AVX-512 BF16 one (FOT_MEM_EXACT_KERNEL=avx512-bf16).
#
# Here first (no Rust toolchain there):
#   maturin build --release -o .whl
#   cargo test --release --no-run, then strip + gzip the unit-test binaries into carry-amx/
#   pip download faiss-cpu (cp312, manylinux) into wheels312/
#   real keys: carry-real/keys-L15-h0.npy + queries-L15-h0.npy (benches/compare/extract_keys.py)
# There, one lease (each `run` within 30 s of the last, so the machine stays warm):
#   1. carry .whl wheels312 carry-amx:  bash benches/experiments/amx/run.sh start; ... wait 540
#   2. carry carry-real:                bash benches/experiments/amx/run.sh real;  ... wait 540
# `start` installs and launches the stages in the background (setsid); `real` hands the real keys
# to the waiting stage; `wait S` sleeps until the stages end or S seconds pass, then packs
# the results into $OUT/amx.tar.gz.
set -u
ROOT=/root/amx
RES=$ROOT/res
KEYS=keys-L15-h0.npy
export PYTHONPATH=$ROOT/site PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 RAYON_NUM_THREADS=2
PIN="taskset -c 0,1"
command -v taskset >/dev/null || PIN=""

stage() {  # stage NAME CMD...: runs CMD, output to $RES/NAME.txt, timing to the log
  local name=$1
  shift
  echo "== $(date +%T) $name: $*"
  local t=$SECONDS
  "$@" >"$RES/$name.txt" 2>&1
  echo "== $(date +%T) $name rc $? in $((SECONDS - t)) s"
}

exact() {  # exact KERNEL NAME ARGS...: compare_exact.py under that kernel, pinned
  local kernel=$1 name=$2
  shift 2
  stage "$name" env FOT_MEM_EXACT_KERNEL="$kernel" $PIN python3 benches/compare/compare_exact.py \
    --threads 2 --no-extra --no-fot-faiss --json "$RES/$name.json" "$@"
}

stages() {
  stage info bash -c 'lscpu; uname -r; nproc; grep -o -w -E "amx_[a-z0-9]+|avx512_[a-z0-9]+" /proc/cpuinfo | sort -u'
  stage rust-lib $ROOT/bin/fot_mem --test-threads 16
  stage rust-kernels $ROOT/bin/search_kernels --test-threads 16
  # The real keys arrive with the second call.
  for _ in $(seq 120); do [ -f $ROOT/real/$KEYS ] && break; sleep 2; done
  if [ -f $ROOT/real/$KEYS ]; then
    for k in amx-bf16 avx512-bf16; do
      exact "$k" "real-$k" --set real --real $ROOT/real/$KEYS --dtypes float32,bfloat16 --repeats 5
    done
    FOT_MEM_EXACT_ROWS_MAX=2048 exact amx-bf16 real-amx-bf16-rows2048 --set real \
      --real $ROOT/real/$KEYS --dtypes bfloat16 --repeats 5
  fi
  stage few8m-amx-bf16 $PIN python3 benches/compare/exact_few_queries.py
  stage few8m-avx512-bf16 env FOT_MEM_EXACT_KERNEL=avx512-bf16 $PIN \
    python3 benches/compare/exact_few_queries.py
  for k in amx-bf16 avx512-bf16; do
    exact "$k" "clustered-$k" --keys 262144,1048576 --dim 128 --batch 2048 --dtypes float32,bfloat16
  done
  stage pytest-exact python3 -m pytest -q -p no:cacheprovider tests/python/search/test_exact_kernels.py
  stage few64m-amx-bf16 $PIN python3 benches/compare/exact_few_queries.py --keys 67108864 --no-faiss
  stage few8m-ties-amx-bf16 $PIN python3 benches/compare/exact_few_queries.py --set ties
  echo "== done"
  touch $RES/done
}

pack() {
  cp $ROOT/log $RES/log.txt 2>/dev/null
  tar -czf "$OUT/amx.tar.gz" -C $ROOT res
}

case "${1:-}" in
  start)
    rm -rf $ROOT && mkdir -p $RES $ROOT/bin $ROOT/real
    python3 -m pip install -q --no-index --no-deps --no-compile --target $ROOT/site \
      .whl/*.whl wheels312/faiss_cpu-*.whl || exit 1
    for f in carry-amx/*.gz; do gunzip -c "$f" >$ROOT/bin/"$(basename "$f" .gz)"; done
    chmod +x $ROOT/bin/*
    setsid nohup bash "$0" stages >$ROOT/log 2>&1 </dev/null &
    ;;
  stages) stages ;;
  short)  # one call, no second carry: real keys (f16-rounded, 98,304 of them) with faiss, then 8M
    rm -rf $ROOT && mkdir -p $RES
    python3 -m pip install -q --no-index --no-deps --no-compile --target $ROOT/site \
      .whl/*.whl wheels312/faiss_cpu-*.whl || exit 1
    for k in amx-bf16 avx512-bf16; do
      exact "$k" "real-$k" --set real --real carry-real/$KEYS --dtypes float32,bfloat16 --repeats 5
    done
    stage few8m-amx-bf16 timeout "${2:-150}" $PIN python3 benches/compare/exact_few_queries.py \
      --repeats 2
    pack
    ;;
  ab)  # one call: real keys under each setting of the task plan, AMX and AVX-512 (no faiss)
    rm -rf $ROOT && mkdir -p $RES
    python3 -m pip install -q --no-index --no-deps --no-compile --target $ROOT/site .whl/*.whl \
      || exit 1
    for k in amx-bf16 avx512-bf16; do
      for x in 4 2 1; do
        env FOT_MEM_EXACT_KERNEL=$k FOT_MEM_EXACT_TASKS_PER_THREAD=$x $PIN python3 \
          benches/experiments/amx/ab.py carry-real/$KEYS carry-real/queries-L15-h0.npy 7 \
          | tee -a $RES/ab.txt
      done
    done
    pack
    ;;
  real)
    [ -d $ROOT/site ] || { echo "cold machine: nothing started here"; exit 3; }
    cp carry-real/queries-L15-h0.npy $ROOT/real/ && cp carry-real/$KEYS $ROOT/real/keys.tmp \
      && mv $ROOT/real/keys.tmp $ROOT/real/$KEYS
    ;;
  wait)
    end=$((SECONDS + ${2:-540}))
    while [ $SECONDS -lt $end ] && [ ! -f $RES/done ]; do sleep 5; done
    cat $ROOT/log
    pack
    ;;
  *) echo "usage: run.sh start|real|wait [seconds]|short|ab"; exit 2 ;;
esac
