#!/bin/bash
# session 2b, device call 2: the Triton cross-entropy forward checked against F.cross_entropy,
# then lm, lm-ce (that forward) and lm-noonline (inductor's online softmax off) against HF
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src
mkdir -p /tmp/s2b
timeout 35 python3 bench/ce_check.py 2>&1 | grep -v "warn" | tee $OUT/ce_check.txt
timeout 175 python3 bench/train_throughput.py --shapes cs336,gpt2s \
  --impls hf-compiled,lm,lm-ce,lm-noonline --parallel 4 --budget 165 \
  --profile --profile-shapes cs336,gpt2s --profile-impls lm-ce,lm-noonline \
  --date 2026-11-23 --session s2b-call2 --out /tmp/s2b 2>&1 | grep -v "warn" | tee $OUT/tt.txt
cp /tmp/s2b/*.json $OUT/ 2>/dev/null
tar czf $OUT/2026-11-23-s2b-call2-profiles.tgz -C /tmp/s2b . 2>/dev/null
