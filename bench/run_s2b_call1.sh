#!/bin/bash
# session 2b, one device call: profile cs336 and gpt2s (lm, HF compiled), then two inductor option
# variants of lmablate's compile (coordinate-descent tuning; GEMM-only autotuning, cs336 only)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src
nvidia-smi --query-gpu=name,memory.used,clocks.sm,power.draw --format=csv
mkdir -p /tmp/s2b
timeout 365 python3 bench/train_throughput.py --shapes cs336,gpt2s \
  --impls hf-compiled,lm,lm-cdt,lm-agemm --skip gpt2s:lm-agemm --parallel 4 --budget 340 \
  --profile --profile-shapes cs336,gpt2s --profile-impls lm,hf-compiled,lm-cdt \
  --date 2026-11-23 --session s2b --out /tmp/s2b 2>&1 | grep -v "warn" | tee $OUT/tt.txt
cp /tmp/s2b/*.json $OUT/ 2>/dev/null
tar czf $OUT/2026-11-23-s2b-profiles.tgz -C /tmp/s2b . 2>/dev/null
ls -la $OUT
