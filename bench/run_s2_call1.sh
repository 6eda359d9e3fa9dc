#!/bin/bash
# session 2, device call 1: attention backends, then train_throughput variants
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src
nvidia-smi --query-gpu=name,memory.used,clocks.sm,power.draw --format=csv
timeout 150 python3 bench/attn_backends.py --out $OUT/2026-11-23-s2-attn_backends.json 2>&1 | grep -v Warning | tee $OUT/attn.txt
timeout 330 python3 bench/train_throughput.py --shapes cs336,gpt2s,tiny5m \
  --impls lm-max,hf-compiled,lm,lm-fuse --skip tiny5m:lm-max --parallel 5 --budget 300 \
  --profile --profile-shapes cs336,gpt2s --profile-impls lm,lm-max \
  --date 2026-11-23 --session s2 --copy-to $OUT 2>&1 | tee $OUT/tt.txt
