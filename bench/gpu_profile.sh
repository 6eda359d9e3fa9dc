#!/usr/bin/env bash
# The 16-run study of bench/gpu_pack_study.yaml through `snakemake --profile profiles/gpu`
# (K runs packed per GPU) vs the same 16 runs one at a time (-j1), on this machine's GPUs.
# Writes $OUT (or bench/out) /gpu_profile.json, the per-job GPU assignments and nvidia-smi samples.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$repo/bench/out}
mkdir -p "$out"
K=${LMABLATE_RUNS_PER_GPU:-4}
work=$(mktemp -d)
sm() { python3 -m snakemake -s "$repo/Snakefile" --configfile "$repo/bench/gpu_pack_study.yaml" "$@"; }
# data once (tokenizer + token store), shared by both runs
mkdir -p "$work/packed" "$work/serial"
(cd "$work/packed" && sm -d . -c8 --until tokenize_corpus -q >/dev/null 2>"$out/data.log")
cp -r "$work/packed/resources" "$work/packed/.snakemake" "$work/serial/"
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv -l 1 \
  >"$out/nvidia_smi_packed.csv" & smi=$!
t0=$(date +%s.%N)
(cd "$work/packed" && LMABLATE_RUNS_PER_GPU=$K sm -d . --profile "$repo/profiles/gpu" -q --until train_model \
  >"$out/packed.log" 2>&1)
t1=$(date +%s.%N); kill $smi
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv -l 1 \
  >"$out/nvidia_smi_serial.csv" & smi=$!
(cd "$work/serial" && LMABLATE_RUNS_PER_GPU=1 sm -d . -j1 -c8 --resources gpu=1 -q --until train_model \
  >"$out/serial.log" 2>&1)
t2=$(date +%s.%N); kill $smi
grep -h "claimed GPU" "$work"/packed/logs/gpu_pack/train_model/*.log >"$out/assignments_packed.txt" || true
python3 "$repo/bench/gpu_walls.py" "$out/gpu_profile.json" "$K" speedup_packed_vs_serial \
  "packed=$work/packed:$t0:$t1" "serial=$work/serial:$t1:$t2"
