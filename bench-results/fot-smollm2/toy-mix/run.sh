cd /work/main
name=$1; d=$2
OMP_NUM_THREADS=1 .venv/bin/python -m fot_mem train --data data/mix --out /tmp/toy/$name --init scratch \
  --hidden-size 128 --intermediate-size 256 --num-layers 4 --num-heads 4 --num-kv-heads 4 --memory-layers 2 \
  --window 128 --batch 8 --prev 1 --mix-sources --d-schedule $d --steps 600 --lr 1e-3 --min-lr 1e-4 --warmup 50 \
  --eval-every 300 --eval-batches 8 --eval-batch 8 --eval-d 1,8 --checkpoint-every 100000 --device cpu --no-progress > /tmp/toy/$name.log 2>&1
