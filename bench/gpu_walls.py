"""The summary that bench/gpu_profile.sh and bench/gpu_multi.sh write: for each timed snakemake
run (a work directory and its wall clock), the runs that finished, their tokens, the aggregate
tokens/s, the mean per-run tokens/s, and where the runs trained (device names and physical GPUs
from each final.json).

    python3 bench/gpu_walls.py OUT.json K RATIO_NAME TAG=WORKDIR:T_START:T_END TAG2=...

RATIO_NAME is the key of the first tag's aggregate tokens/s over the second's.
"""

from __future__ import annotations

import glob
import json
import sys
from collections import Counter


def summarize(workdir: str, wall: float) -> dict:
    paths = sorted(glob.glob(f"{workdir}/results/*/runs/*/final.json"))
    finals = [json.load(open(f)) for f in paths]
    tokens = sum(f["tokens"] for f in finals)
    return {"runs": len(finals), "wall_s": wall, "tokens": tokens,
            "aggregate_tokens_per_s": tokens / wall,
            "mean_run_tokens_per_s": sum(f["tokens_per_s"] for f in finals) / max(1, len(finals)),
            "devices": sorted({f["device"] for f in finals}),
            "runs_per_physical_gpu": dict(Counter(str(f.get("device_uuid")) for f in finals)),
            "statuses": sorted({f["status"] for f in finals})}


def main(argv: list[str]) -> int:
    out, k, ratio, *timed = argv
    res: dict = {"runs_per_gpu": int(k)}
    try:
        import torch

        if torch.cuda.is_available():
            res.update(device=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                       torch=torch.__version__)
    except ImportError:
        pass
    tags = []
    for item in timed:
        tag, spec = item.split("=", 1)
        workdir, t0, t1 = spec.rsplit(":", 2)
        res[tag] = summarize(workdir, float(t1) - float(t0))
        tags.append(tag)
    res[ratio] = res[tags[0]]["aggregate_tokens_per_s"] / res[tags[1]]["aggregate_tokens_per_s"]
    with open(out, "w") as fh:
        json.dump(res, fh, indent=2)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
