"""Harvest finished runs into tables a researcher reads.

    results/<study>/runs/<run_id>/{config.yaml, final.json, metrics.jsonl}
        -> runs.parquet + runs.csv   one row per run: config columns, params, status, final metrics
        -> curves.parquet            long format: run_id, variant, seed, step, tokens, split,
                                     metric, value
        -> summary.json              per run: statistics per metric (best, final); per variant:
                                     n, mean, std, 95% CI over seeds; deltas vs the baseline
        -> analysis.txt              ranked table, deltas with CIs and tests, diverged runs,
                                     findings stated from the data

Run IDs are never parsed: every column comes from the run's own config.yaml.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_jsonl
from .stats import compare, summarize
from .sweep import flatten

__all__ = ["harvest", "load_run", "collect", "load_results", "summarize_runs", "analysis_text",
           "PRIMARY"]

PRIMARY = "val_loss"  # the metric tables rank by (lower is better)
FINAL_METRICS = ("val_loss", "best_val_loss", "val_ppl", "val_acc", "val_top5", "val_ece",
                 "val_confidence", "val_entropy", "final_train_loss", "tokens_per_s", "wall_s",
                 "train_wall_s", "peak_mem_mb", "latency_ms_seq128", "latency_ms_seq512",
                 "expert_gini", "expert_entropy")
CURVE_METRICS = ("loss", "ppl", "acc", "top5", "ece", "confidence", "entropy", "lr", "grad_norm",
                 "tokens_per_s", "expert_gini", "expert_entropy")


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(row, curve records) of one run directory."""
    d = Path(run_dir)
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    final = json.loads((d / "final.json").read_text())
    records = read_jsonl(d / "metrics.jsonl") if (d / "metrics.jsonl").exists() else []
    row: dict[str, Any] = {"run_id": cfg.get("run_id", d.name), "study": cfg.get("study"),
                           "variant": cfg.get("variant", "baseline"),
                           "seed": cfg.get("train", {}).get("seed"),
                           "status": final.get("status", "unknown")}
    for k, v in flatten({s: cfg.get(s, {}) for s in ("model", "train", "data", "tokenizer")}).items():
        row[k] = json.dumps(v) if isinstance(v, (list, dict)) else v
    for k, v in (cfg.get("axes") or {}).items():
        row[f"axis.{k}"] = v
    for k, v in (final.get("params") or {}).items():
        row[f"params_{k}"] = v
    for k in ("steps", "tokens", "planned_tokens", "diverged_at_step", "flops_per_token",
              "vocab_size", "epochs", "device", "precision", *FINAL_METRICS):
        row[k] = final.get(k)
    row["flops"] = (final.get("flops_per_token") or 0) * (final.get("tokens") or 0)
    curves = []
    for r in records:
        for m in CURVE_METRICS:
            if m in r and isinstance(r[m], (int, float)):
                curves.append({"run_id": row["run_id"], "variant": row["variant"],
                               "seed": row["seed"], "step": r["step"], "tokens": r["tokens"],
                               "split": r["split"], "metric": m, "value": float(r[m])})
        if "expert_load" in r:
            for i, share in enumerate(r["expert_load"]):
                curves.append({"run_id": row["run_id"], "variant": row["variant"],
                               "seed": row["seed"], "step": r["step"], "tokens": r["tokens"],
                               "split": "expert", "metric": f"load_{i}", "value": float(share)})
    return row, curves


def collect(run_dirs: Iterable[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, curves = [], []
    for d in run_dirs:
        row, c = load_run(d)
        rows.append(row)
        curves.extend(c)
    runs = pd.DataFrame(rows)
    cols = ["run_id", "variant", "seed", "step", "tokens", "split", "metric", "value"]
    return runs, pd.DataFrame(curves, columns=cols)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def summarize_runs(runs: pd.DataFrame, curves: pd.DataFrame, baseline: str = "baseline",
                   metrics: Sequence[str] = ("val_loss", "best_val_loss", "val_ppl", "val_acc",
                                             "val_top5", "val_ece", "tokens_per_s")) -> dict:
    """summary.json: per-run statistics, per-variant mean/std/CI over seeds, deltas vs baseline.

    Only ``completed`` runs enter variant statistics; diverged/stopped runs are listed apart.
    """
    out: dict[str, Any] = {"baseline": baseline, "primary_metric": PRIMARY, "runs": {},
                           "variants": {}, "comparisons": {}, "excluded_runs": {}}
    for _, r in runs.iterrows():
        stats: dict[str, Any] = {}
        c = curves[curves.run_id == r.run_id] if len(curves) else curves
        for split, metric in (("val", "loss"), ("train", "loss"), ("val", "acc")):
            s = c[(c.split == split) & (c.metric == metric)].sort_values("step") if len(c) else c
            vals = [v for v in s.value.tolist() if math.isfinite(v)] if len(s) else []
            name = f"{split}_{metric}"
            if vals:
                best = min(vals) if metric == "loss" else max(vals)
                stats[name] = {"best": best, "final": vals[-1], "n_evals": len(vals),
                               "at_tokens": s.tokens.tolist()[-1]}
        out["runs"][r.run_id] = {"variant": r.variant, "seed": _py(r.seed), "status": r.status,
                                 "statistics": stats,
                                 **{m: _py(r.get(m)) for m in metrics if m in r}}
        if r.status != "completed":
            out["excluded_runs"][r.run_id] = {"variant": r.variant, "status": r.status,
                                              "diverged_at_step": _py(r.get("diverged_at_step"))}
    ok = runs[runs.status == "completed"]
    for variant, g in ok.groupby("variant", sort=False):
        entry: dict[str, Any] = {"n": int(len(g)), "seeds": [_py(s) for s in g.seed]}
        for m in metrics:
            if m in g:
                s = summarize([v for v in g[m] if _finite(v)])
                if s is not None:
                    entry[m] = s.as_dict()
        out["variants"][variant] = entry
    if baseline in set(ok.variant):
        b = ok[ok.variant == baseline]
        for variant, g in ok.groupby("variant", sort=False):
            if variant == baseline:
                continue
            cmp = compare(g[PRIMARY].tolist(), b[PRIMARY].tolist(), g.seed.tolist(),
                          b.seed.tolist())
            out["comparisons"][variant] = {"metric": PRIMARY, **cmp.as_dict()}
    return _py(out)


def _py(obj: Any) -> Any:
    """numpy/pandas scalars -> Python, NaN -> None (valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): _py(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_py(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if obj is pd.NA:
        return None
    return obj


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if _finite(x) else "n/a"


def analysis_text(runs: pd.DataFrame, summary: dict, study: str) -> str:
    """Plain-text findings: ranking, deltas vs baseline, excluded runs, what the data says."""
    baseline = summary["baseline"]
    lines = [f"lmablate analysis: study {study}", "=" * (26 + len(study)), ""]
    n_ok = int((runs.status == "completed").sum())
    lines.append(f"{len(runs)} runs: {n_ok} completed, "
                 + ", ".join(f"{int(n)} {s}" for s, n in runs.status.value_counts().items()
                             if s != "completed") if n_ok < len(runs) else
                 f"{len(runs)} runs, all completed.")
    tokens = sorted({int(t) for t in runs.tokens.dropna()})
    lines.append("Token budget per run: " + ", ".join(f"{t:,}" for t in tokens))
    lines.append("")
    lines.append(f"Ranking by final validation loss (mean over seeds, 95% t-interval):")
    ranked = sorted(summary["variants"].items(),
                    key=lambda kv: kv[1].get(PRIMARY, {}).get("mean", math.inf))
    width = max([len(v) for v, _ in ranked] + [7])
    lines.append(f"  {'#':>2}  {'variant':<{width}}  {'n':>2}  {'val loss':>9}  {'95% CI':>19}  "
                 f"{'ppl':>8}  {'delta vs ' + baseline:>22}  {'p':>6}")
    for i, (v, e) in enumerate(ranked, 1):
        s = e.get(PRIMARY, {})
        ppl = e.get("val_ppl", {}).get("mean")
        c = summary["comparisons"].get(v)
        delta = (f"{c['delta']:+.4f} ({100 * c['rel_delta']:+.1f}%)" if c and _finite(c["delta"])
                 else ("(baseline)" if v == baseline else "n/a"))
        p = _fmt(c["p_value"], 3) if c and c.get("p_value") is not None else ""
        lines.append(f"  {i:>2}  {v:<{width}}  {e['n']:>2}  {_fmt(s.get('mean')):>9}  "
                     f"[{_fmt(s.get('ci_low'))}, {_fmt(s.get('ci_high'))}]  {_fmt(ppl, 2):>8}  "
                     f"{delta:>22}  {p:>6}")
    lines.append("")
    if summary["comparisons"]:
        lines.append(f"Differences from {baseline} (variant minus baseline; 95% interval; test):")
        for v, c in summary["comparisons"].items():
            if not _finite(c["delta"]):
                continue
            verdict = ("not distinguishable from the baseline at these seeds"
                       if c["p_value"] is None or c["p_value"] >= 0.05 else
                       ("worse than the baseline" if c["delta"] > 0 else "better than the baseline"))
            lines.append(f"  {v}: {c['delta']:+.4f} [{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}], "
                         f"{c['test']}, p = {_fmt(c['p_value'], 3)} -> {verdict}")
        lines.append("")
    if summary["excluded_runs"]:
        lines.append("Runs excluded from the statistics:")
        for rid, e in summary["excluded_runs"].items():
            at = f" at step {e['diverged_at_step']}" if e.get("diverged_at_step") else ""
            lines.append(f"  {rid} ({e['variant']}): {e['status']}{at}")
        lines.append("")
    findings = _findings(runs, summary)
    if findings:
        lines.append("Findings:")
        lines += [f"  - {f}" for f in findings]
        lines.append("")
    return "\n".join(lines)


def _findings(runs: pd.DataFrame, summary: dict) -> list[str]:
    out = []
    ranked = sorted(((v, e[PRIMARY]["mean"]) for v, e in summary["variants"].items()
                     if PRIMARY in e), key=lambda kv: kv[1])
    if ranked:
        out.append(f"Best variant: {ranked[0][0]} (mean val loss {ranked[0][1]:.4f}); worst: "
                   f"{ranked[-1][0]} ({ranked[-1][1]:.4f}).")
    sig = [v for v, c in summary["comparisons"].items()
           if c.get("p_value") is not None and c["p_value"] < 0.05]
    if summary["comparisons"]:
        out.append(f"{len(sig)} of {len(summary['comparisons'])} variants differ from the baseline "
                   "at p < 0.05" + (f": {', '.join(sig)}." if sig else "."))
    ok = runs[(runs.status == "completed") & runs[PRIMARY].notna()]
    if "params_total" in ok and ok.params_total.nunique() >= 3:
        from scipy.stats import spearmanr

        rho, p = spearmanr(ok.params_total, ok[PRIMARY])
        out.append(f"Spearman rank correlation of parameter count with val loss: rho = {rho:+.2f} "
                   f"(p = {p:.3g}, {len(ok)} runs).")
    diverged = runs[runs.status == "diverged"]
    if len(diverged):
        out.append(f"{len(diverged)} run(s) diverged: "
                   + ", ".join(sorted(set(diverged.variant))) + ".")
    return out


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def harvest(run_dirs: Sequence[str | Path], out_dir: str | Path, *, study: str,
            baseline: str = "baseline") -> dict:
    """Write runs.{parquet,csv}, curves.parquet, summary.json and analysis.txt to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs, curves = collect(run_dirs)
    summary = summarize_runs(runs, curves, baseline)
    summary["study"] = study
    _write_parquet(runs, out / "runs.parquet")
    atomic_write_text(out / "runs.csv", runs.to_csv(index=False))
    _write_parquet(curves, out / "curves.parquet")
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "analysis.txt", analysis_text(runs, summary, study))
    return summary


def load_results(results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) DataFrames of a harvested study, e.g. ``load_results("results/default")``."""
    d = Path(results_dir)
    return pd.read_parquet(d / "runs.parquet"), pd.read_parquet(d / "curves.parquet")
