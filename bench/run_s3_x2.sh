#!/bin/bash
# session 3, device call on nvidia-h200-x2: bench/gpu_multi.sh (32 tiny runs on 2 GPUs vs 1)
set -o pipefail
python3 -m pip install -q --no-index --find-links .whl snakemake 2>&1 | tail -2
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi -L; python3 -c "import torch; print(torch.__version__)"
OUT=$OUT timeout 540 bash bench/gpu_multi.sh 2>&1 | tail -60
