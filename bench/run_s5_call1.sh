#!/bin/bash
# session 5, first device call (nvidia-h100-x1): the CUDA tests of the fused head + loss
# (model.FUSED_LINEAR_CROSS_ENTROPY), then train_throughput with it (lm) and without (lm-nolce)
# against hf-compiled on cs336 and gpt2s, 5 timed repeats of 30 steps; a profile of cs336's lm step
set -o pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi -L; python3 -c "import torch; print(torch.__version__)"
python3 -m pip install -q --no-index --find-links .whl pytest hypothesis 2>&1 | tail -2
timeout 200 python3 -m pytest -q -x -p no:logging -p no:benchmark -p no:cacheprovider \
    tests/test_perf_paths.py 2>&1 | tail -15
timeout 380 python3 bench/train_throughput.py --shapes cs336,gpt2s \
    --impls hf-compiled,lm,lm-nolce --repeats 5 --steps 30 --parallel 3 --budget 360 \
    --session s5 --profile --profile-shapes cs336 --profile-impls lm \
    --out "$OUT" 2>&1 | tail -30
