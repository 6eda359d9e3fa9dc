#!/bin/bash
# session 2, device call 2: train_throughput (new step vs session 1's vs HF), then the sweep
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src
S="--date 2026-11-23 --session s2 --copy-to $OUT"
timeout 215 python3 bench/train_throughput.py --shapes gpt2s,cs336,tiny5m \
  --impls hf-compiled,lm,lm-s1,lm-nofuse --skip gpt2s:lm-nofuse --parallel 5 --budget 195 \
  $S 2>&1 | grep -v "warn" | tee $OUT/tt.txt
timeout 285 python3 bench/sweep_throughput.py --steps 60 --timeout 125 \
  --executors fused-8,sequential,processes-4,fused-4x4 $S 2>&1 | grep -v "warn" | tee $OUT/sweep.txt
