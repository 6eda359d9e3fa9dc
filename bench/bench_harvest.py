"""Harvest 1,000 run directories: time lmablate's harvest against a straightforward peer.

    python3 bench/bench_harvest.py                 # 1,000 runs, 200 train + 20 val records each
    python3 bench/bench_harvest.py --runs 200 --train-records 50

The runs are a real sweep (5 widths x 5 depths x 5 learning rates x 8 seeds, expanded by
lmablate.expand, so every config.yaml is a fully resolved config as train.py writes it), with
final.json (reliability bins included) and metrics.jsonl shaped like train.py's; 2% diverge.
Values follow a noisy scaling law so the statistics, findings and scaling fit all run.

The peer is what a researcher would write by hand (as in an ablation notebook): yaml.safe_load,
json.load, pandas.read_json(lines=True) per run, then pandas.concat and a groupby. Target: the
full harvest (tables, summary.json with the scaling fit, analysis.txt, RESULTS.md) in <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lmablate import study_from_dict  # noqa: E402
from lmablate.results.harvest import harvest  # noqa: E402

STUDY = {
    "study": "bench", "data": {"corpus": "tinystories-1k"},
    "tokenizer": {"kind": "bpe", "vocab_size": 8192},
    "defaults": {"model": {"n_heads": 4}, "train": {"tokens": 2_000_000, "batch_size": 32,
                                                    "seq_len": 128}},
    "sweep": {"grid": {"model.d_model": [64, 128, 256, 512, 1024],
                       "model.n_layers": [2, 4, 6, 8, 12],
                       "train.lr": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]},
              "seeds": list(range(8))},
}


def write_runs(root: Path, n_runs: int, train_records: int, val_records: int) -> list[Path]:
    study = study_from_dict(STUDY)
    rng = np.random.default_rng(0)
    dirs = []
    for run in study.runs[:n_runs]:
        d = root / run.run_id
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(yaml.safe_dump({**run.to_dict(), "study": "bench"},
                                                      sort_keys=False))
        m = run.config.model
        params = 12 * m.n_layers * m.d_model**2 + 8192 * m.d_model
        lr = run.config.train.lr
        final_loss = (1.8 + 300 / (params / 1e3) ** 0.3 + 0.3 * abs(math.log10(lr / 3e-3))
                      + rng.normal(0, 0.02))
        diverged = rng.random() < 0.02
        steps, per_step = train_records * 10, 4096
        lines = []
        for i in range(1, train_records + 1):
            s = i * 10
            frac = s / steps
            loss = final_loss + 5 * math.exp(-6 * frac) + 0.05 + rng.normal(0, 0.02)
            lines.append({"step": s, "tokens": s * per_step, "split": "train", "loss": loss,
                          "lr": lr * min(1, frac * 20), "grad_norm": 0.5 + rng.random(),
                          "tokens_per_s": 50_000 + 1000 * rng.random()})
            if i % (train_records // val_records) == 0:
                v = final_loss + 5 * math.exp(-6 * frac)
                lines.append({"step": s, "tokens": s * per_step, "split": "val", "loss": v,
                              "ppl": math.exp(v), "acc": 0.3, "top5": 0.5, "confidence": 0.3,
                              "entropy": 3.0, "ece": 0.02, "eval_tokens": 16384,
                              "eval_s": 0.4})
        final = {"run_id": run.run_id, "steps": steps, "tokens": steps * per_step,
                 "planned_tokens": steps * per_step, "params": {
                     "total": params, "trainable": params, "embedding": 8192 * m.d_model,
                     "non_embedding": params - 8192 * m.d_model},
                 "tokens_per_s": 50_000.0, "peak_mem_mb": params / 1e5, "device": "cuda:0",
                 "wall_s": 100.0, "flops_per_token": 6.0 * params}
        if diverged:
            lines = lines[: len(lines) // 3]
            lines[-1]["loss"] = float("nan")
            final.update({"status": "diverged", "diverged_at_step": lines[-1]["step"]})
        else:
            final.update({"status": "completed", "val_loss": final_loss,
                          "val_ppl": math.exp(final_loss), "best_val_loss": final_loss,
                          "val_acc": 0.3, "val_top5": 0.5, "val_ece": 0.02,
                          "reliability": {"bin_confidence": list(np.linspace(0.03, 0.97, 15)),
                                          "bin_accuracy": list(np.linspace(0.05, 0.95, 15)),
                                          "bin_count": [int(x) for x in
                                                        rng.integers(10, 2000, 15)]}})
        (d / "final.json").write_text(json.dumps(final, indent=2))
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        dirs.append(d)
    return dirs


def peer(dirs: list[Path]) -> None:
    """The hand-written harvest: load everything with pandas, concat, one groupby."""
    import pandas as pd

    rows, curves = [], []
    for d in dirs:
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        final = json.loads((d / "final.json").read_text())
        rows.append({"run_id": cfg["run_id"], **pd.json_normalize(cfg, sep=".").iloc[0].to_dict(),
                     "status": final["status"], "val_loss": final.get("val_loss")})
        m = pd.read_json(d / "metrics.jsonl", lines=True)
        m["run_id"] = cfg["run_id"]
        curves.append(m.melt(id_vars=["run_id", "step", "tokens", "split"], var_name="metric"))
    runs = pd.DataFrame(rows)
    pd.concat(curves).dropna(subset=["value"])
    runs.groupby(["model.d_model", "model.n_layers", "train.lr"]).val_loss.agg(["mean", "std"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--train-records", type=int, default=200)
    ap.add_argument("--val-records", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3, help="timed harvests (best is reported)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_harvest_"))
    try:
        t = time.perf_counter()
        dirs = write_runs(tmp / "runs", args.runs, args.train_records, args.val_records)
        size = sum(f.stat().st_size for d in dirs for f in d.iterdir())
        print(f"wrote {len(dirs)} run dirs ({size / 2**20:.1f} MiB; config.yaml "
              f"{(dirs[0] / 'config.yaml').stat().st_size} B, final.json "
              f"{(dirs[0] / 'final.json').stat().st_size} B, metrics.jsonl "
              f"{(dirs[0] / 'metrics.jsonl').stat().st_size} B) in {time.perf_counter() - t:.1f} s")
        import pandas  # noqa: F401  (imports are not part of the timings)
        import scipy.stats  # noqa: F401

        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            summary = harvest(dirs, tmp / "out", study="bench")
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        peer(dirs)
        peer_s = time.perf_counter() - t
        best = min(times)
        print(f"lmablate harvest: {best:.2f} s (best of {args.repeat}: "
              f"{', '.join(f'{x:.2f}' for x in times)}) for {summary['n_runs']} runs, "
              f"{len(summary['groups'])} groups, scaling fit "
              f"{'yes' if summary.get('scaling') else 'no'}")
        print(f"peer (yaml + pandas.read_json per run, no statistics): {peer_s:.2f} s")
        print(f"ratio peer / lmablate: {peer_s / best:.2f}x; target <= 5 s: "
              f"{'met' if best <= 5 else 'MISSED'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
