#!/usr/bin/env bash
# A study (default: bench/gpu_pack32_study.yaml, 32 tiny runs) through `snakemake --profile
# profiles/gpu` on every GPU of this machine vs on GPU 0 alone (CUDA_VISIBLE_DEVICES=0), K runs
# packed per GPU both times. Writes to $OUT (or bench/out): gpu_multi.json, each job's claimed GPU
# (from the training logs) and the physical GPU its final.json recorded, and nvidia-smi samples
# (per GPU utilisation/memory, and per process: which GPU each training process had a context on).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$repo/bench/out}
study=${1:-$repo/bench/gpu_pack32_study.yaml}
K=${LMABLATE_RUNS_PER_GPU:-4}
mkdir -p "$out"
work=$(mktemp -d)
sm() { python3 -m snakemake -s "$repo/Snakefile" --configfile "$study" "$@"; }
mkdir -p "$work/all" "$work/one"
(cd "$work/all" && sm -d . -c8 --until tokenize_corpus -q >/dev/null 2>"$out/data.log")
cp -r "$work/all/resources" "$work/all/.snakemake" "$work/one/"   # data once, for both
nvidia-smi -L >"$out/gpus.txt"
sample() {  # $1: tag; per-GPU and per-process samples every second until killed
  nvidia-smi --query-gpu=timestamp,index,uuid,utilization.gpu,memory.used --format=csv -l 1 \
    >"$out/nvidia_smi_$1.csv" &
  echo $! >"$work/smi1"
  nvidia-smi --query-compute-apps=timestamp,pid,gpu_uuid,used_memory --format=csv -l 1 \
    >"$out/nvidia_smi_apps_$1.csv" &
  echo $! >"$work/smi2"
}
stop() { kill "$(cat "$work/smi1")" "$(cat "$work/smi2")"; }
sample all
t0=$(date +%s.%N)
(cd "$work/all" && LMABLATE_RUNS_PER_GPU=$K sm -d . --profile "$repo/profiles/gpu" -q \
  --until train_model >"$out/all.log" 2>&1)
t1=$(date +%s.%N); stop
sample one
(cd "$work/one" && CUDA_VISIBLE_DEVICES=0 LMABLATE_RUNS_PER_GPU=$K sm -d . \
  --profile "$repo/profiles/gpu" -q --until train_model >"$out/one.log" 2>&1)
t2=$(date +%s.%N); stop
for tag in all one; do
  grep -H "claimed GPU" "$work/$tag"/logs/*/train_model/*.log | sed "s|$work/$tag/logs/||" \
    >"$out/assignments_$tag.txt" || true
done
python3 "$repo/bench/gpu_walls.py" "$out/gpu_multi.json" "$K" speedup_all_vs_one_gpu \
  "all=$work/all:$t0:$t1" "one=$work/one:$t1:$t2"
