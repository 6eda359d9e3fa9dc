#!/bin/bash
# session 4, first device call (nvidia-h100-x1): train_throughput with the engine's defaults,
# lmablate's model as train() builds it (cs336's vocab padded to 10048) and with HF's 10000 rows
# (lm-nopad), 5 timed repeats of 30 steps each; a torch.profiler summary of cs336's lm step
set -o pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi -L; python3 -c "import torch; print(torch.__version__)"
timeout 560 python3 bench/train_throughput.py --shapes tiny5m,cs336,gpt2s \
    --impls hf-compiled,lm,lm-nopad --repeats 5 --steps 30 --parallel 3 --budget 500 \
    --session s4 --profile --profile-shapes cs336 --profile-impls lm,hf-compiled \
    --out "$OUT" 2>&1 | tail -40
