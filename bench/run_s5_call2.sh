#!/bin/bash
# session 5, second device call (nvidia-h100-x1): launch settings of the fused head + loss kernel
# (bench/lce_tune.py), then train_throughput of lm (fused) and lm-nolce against hf-compiled on the
# three shapes, 5 timed repeats of 30 steps
set -o pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi -L; python3 -c "import torch; print(torch.__version__)"
timeout 150 python3 bench/lce_tune.py 2>&1 | tee "$OUT/lce_tune.txt" | tail -90
timeout 400 python3 bench/train_throughput.py --shapes tiny5m,cs336,gpt2s \
    --impls hf-compiled,lm,lm-nolce --repeats 5 --steps 30 --parallel 3 --budget 380 \
    --session s5b --out "$OUT" 2>&1 | tail -16
