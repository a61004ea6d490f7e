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
#   1. carry .whl wheels312 carry-amx:  bash benches/experiments/amx/run.sh start rows
#   2. carry carry-real:                bash benches/experiments/amx/run.sh real
#   3. as often as needed:              bash benches/experiments/amx/run.sh wait 540
# (The carry limit, 64 MiB, counts the tracked tree too, so the real keys travel second.)
# `start [PLAN]` installs and launches a plan in the background (setsid): `stages` runs everything
# one stage after another; `rows` runs 256 x 64M keys (in place and packed) on cores 0-1 while the
# tests and the real keys run on other cores, then the rest on cores 0-1; `probe` times the tile
# loops of examples/amx_probe.rs alone on one core, then the clustered keys; `stationary` times
# examples/exact_scale built at two commits (carry-amx/exact_scale-new.gz and -old.gz) in turns
# while the tests run on other cores, then the store and real-key stages. `wait S` sleeps until
# the plan ends or S seconds pass, then packs the results into $OUT/amx.tar.gz. `real` hands the
# real keys to the plan, whose real-key stages wait for them.
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

info() {  # the machine: CPU model, kernel, CPUs, AMX and AVX-512 features
  stage info bash -c 'lscpu; uname -r; nproc; grep -o -w -E "amx_[a-z0-9]+|avx512_[a-z0-9]+" /proc/cpuinfo | sort -u'
}

exact() {  # exact KERNEL NAME ARGS...: compare_exact.py under that kernel, pinned
  local kernel=$1 name=$2
  shift 2
  stage "$name" env FOT_MEM_EXACT_KERNEL="$kernel" $PIN python3 benches/compare/compare_exact.py \
    --threads 2 --no-extra --no-fot-faiss --json "$RES/$name.json" "$@"
}

stages() {  # the default plan: correctness first, then every benchmark, one after another
  info
  stage rust-lib $ROOT/bin/fot_mem --test-threads 16
  stage rust-kernels $ROOT/bin/search_kernels --test-threads 16
  stage pytest-exact python3 -m pytest -q -p no:cacheprovider tests/python/search/test_exact_kernels.py
  real_stages
  few_stages
  stage few8m-ties-amx-bf16 $PIN python3 benches/compare/exact_few_queries.py --set ties --packed
  touch $RES/done
}

real_stages() {  # real keys: in place against packed (ab.py), then against faiss and torch
  # The real keys may arrive with a later call (`real`): the carry limit counts the whole tree.
  for _ in $(seq 120); do [ -f $ROOT/real/$KEYS ] && break; sleep 2; done
  [ -f $ROOT/real/$KEYS ] || { echo "no real keys"; return; }
  for x in 4 1; do
    stage "ab-tasks$x" env FOT_MEM_EXACT_TASKS_PER_THREAD=$x $PIN python3 \
      benches/experiments/amx/ab.py $ROOT/real/$KEYS $ROOT/real/queries-L15-h0.npy 7
  done
  exact amx-bf16 real-amx-bf16 --set real --real $ROOT/real/$KEYS --dtypes float32,bfloat16 \
    --repeats 5
}

few_stages() {  # few queries over 8M keys (in place, packed, faiss), clustered keys
  stage few8m-amx-bf16 $PIN python3 benches/compare/exact_few_queries.py --packed
  exact amx-bf16 clustered-amx-bf16 --keys 262144,1048576 --dim 128 --batch 2048 \
    --dtypes float32,bfloat16
}

rows() {  # the in-place AMX path: 64M keys on cores 0-1 while the short stages run on 2-3
  info
  (stage few64m-amx-bf16 taskset -c 0,1 python3 benches/compare/exact_few_queries.py \
    --keys 67108864 --no-faiss --packed; touch $RES/big-done) &
  PIN="taskset -c 2,3"
  stage rust-lib taskset -c 2-15 $ROOT/bin/fot_mem --test-threads 12
  stage rust-kernels taskset -c 2-15 $ROOT/bin/search_kernels --test-threads 12
  stage pytest-exact taskset -c 2-15 python3 -m pytest -q -p no:cacheprovider \
    tests/python/search/test_exact_kernels.py
  real_stages
  wait
  PIN="taskset -c 0,1"
  few_stages
  echo "== done"
  touch $RES/done
}

probe() {  # the tile-loop shapes alone (examples/amx_probe.rs) on one core, then clustered keys
  info
  stage probe taskset -c 0 $ROOT/bin/amx_probe 4194304 5
  exact amx-bf16 clustered-amx-bf16 --keys 262144,1048576 --dim 128 --batch 2048 \
    --dtypes float32,bfloat16
  stage probe-again taskset -c 0 $ROOT/bin/amx_probe 4194304 5
  echo "== done"
  touch $RES/done
}

stationary() {  # the stationary tile plan against the 2 x 2 one (exact_scale built at each commit)
  info
  (
    stage rust-lib taskset -c 2-15 $ROOT/bin/fot_mem --test-threads 12
    stage rust-kernels taskset -c 2-15 $ROOT/bin/search_kernels --test-threads 12
    stage pytest-exact taskset -c 2-15 python3 -m pytest -q -p no:cacheprovider \
      tests/python/search/test_exact_kernels.py
  ) &
  for r in 1 2; do
    for v in new old; do
      stage "scale8m-$v-$r" taskset -c 0,1 $ROOT/bin/exact_scale-$v 8388608 64 256 32 bf16 0 5
    done
  done
  for v in new old; do
    stage "scale64m-$v" taskset -c 0,1 $ROOT/bin/exact_scale-$v 67108864 64 256 32 bf16 0 3
  done
  wait
  PIN="taskset -c 0,1"
  stage few64m-amx-bf16 $PIN python3 benches/compare/exact_few_queries.py --keys 67108864 \
    --no-faiss --packed
  real_stages
  stage few8m-amx-bf16 $PIN python3 benches/compare/exact_few_queries.py --packed
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
    [ -f carry-real/$KEYS ] && cp carry-real/*.npy $ROOT/real/
    setsid nohup bash "$0" "${2:-stages}" >$ROOT/log 2>&1 </dev/null &
    ;;
  stages) stages ;;
  rows) rows ;;
  probe) probe ;;
  stationary) stationary ;;
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
  *) echo "usage: run.sh start [stages|rows|probe|stationary]|real|wait [seconds]|short|ab"; exit 2 ;;
esac
