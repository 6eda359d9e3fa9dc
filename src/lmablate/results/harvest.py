"""Harvest finished runs into the tables, statistics and findings a researcher reads.

    results/<study>/runs/<run_id>/{config.yaml, final.json, metrics.jsonl}
        -> runs.parquet + runs.csv   one row per run: group, status, params, final metrics, then
                                     every flattened config column
        -> curves.parquet            long format: run_id, variant, group, seed, step, tokens,
                                     split, metric, value (val/train curves, MoE expert load)
        -> reliability.parquet       calibration bins of each run's final evaluation
        -> summary.json              per run: statistics per metric (best, final, at tokens);
                                     per group: n, mean, std, 95% t-interval over seeds;
                                     deltas vs the reference with tests; findings
        -> analysis.txt, RESULTS.md  the same findings as text and as Markdown with the figures

A *group* is one configuration: the runs that differ only by seed (a variant, or a variant at one
grid point). Statistics over seeds are per group. A run that several sweep points resolve to
(one-axis sweeps sharing their centre, :attr:`lmablate.study.sweep.Run.shared`) is one row of the
runs
table, its ``groups`` column naming every group it belongs to, and it counts in each of them.
Run IDs are never parsed: every column comes from the run's own config.yaml.

pandas is imported inside the functions that need it: the Snakefile imports this module at parse
time (to decide which figures a study gets) and every job re-parses the Snakefile.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lmablate.dicts import flatten
from lmablate.engine.integrity import verify_run
from lmablate.errors import DataError
from lmablate.io import atomic_write_bytes, atomic_write_text
from lmablate.results.shape import DERIVED_AXES, present, ratio, size_bucket, spans_sizes
from lmablate.study.sweep import format_value
from lmablate.units import fmt_count

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["harvest", "load_run", "collect", "tables", "RunData", "load_results", "group_rows",
           "shared_points", "load_reliability", "summarize_runs",
           "lr_lines", "short_names", "analysis_text", "results_markdown",
           "write_outputs", "reference_group",
           "PRIMARY", "INCLUDED_STATUSES", "add_efficiency", "moe_load_summary",
           "EFFICIENCY_COLUMNS"]

PRIMARY = "val_loss"  # the metric groups are ranked by (lower is better)
# Statuses whose final metrics enter the statistics. `in_progress` is an imported Hugging Face run
# whose latest checkpoint is short of max_steps (seed 000 compared runs still training); the
# analysis then also ranks every group at the progress all runs reached.
INCLUDED_STATUSES = ("completed", "in_progress")
FINAL_METRICS = ("val_loss", "best_val_loss", "val_ppl", "val_acc", "val_top5", "val_ece",
                 "val_confidence", "val_entropy", "final_train_loss", "tokens_per_s", "wall_s",
                 "train_wall_s", "peak_mem_mb", "latency_ms_seq128", "latency_ms_seq512",
                 "expert_gini", "expert_entropy", "test_loss", "test_ppl")
# epoch and epoch_train_loss: on the evaluation at each epoch boundary of an `epochs` budget
CURVE_METRICS = ("loss", "ppl", "acc", "top5", "ece", "confidence", "entropy", "lr", "grad_norm",
                 "tokens_per_s", "expert_gini", "expert_entropy", "epoch", "epoch_train_loss")
GROUP_METRICS = ("val_loss", "best_val_loss", "val_ppl", "val_acc", "val_top5", "val_ece",
                 "tokens_per_s", "peak_mem_mb", "tokens", "loss_per_mtok", "loss_drop_per_mtok",
                 "early_drop_per_mtok", "late_drop_per_mtok", "early_late_ratio", "early_share",
                 "test_loss", "test_ppl")
COMPARE_METRICS = ("val_loss", "val_ppl", "val_acc")
# (split, metric) curves that get per-run statistics, and whether lower is better
CURVE_STATS = {("val", "loss"): ("val_loss", True), ("val", "ppl"): ("val_ppl", True),
               ("val", "acc"): ("val_acc", False), ("val", "top5"): ("val_top5", False),
               ("val", "ece"): ("val_ece", True), ("train", "loss"): ("train_loss", True)}
CURVE_COLUMNS = ["run_id", "variant", "group", "seed", "step", "tokens", "split", "metric",
                 "value"]
FRONT_COLUMNS = ["run_id", "group", "groups", "variant", "seed", "status", "source", "differs",
                 "params_total", "params_non_embedding", "tokens", "steps", *FINAL_METRICS]


# --------------------------------------------------------------------------------------------------
# reading runs


@dataclass
class RunData:
    """One run as read from disk: its table row, its curves and its calibration bins."""

    row: dict[str, Any]
    blocks: list[tuple[str, str, list, list, list]] = field(default_factory=list)
    # (split, metric, steps, tokens, values), one block per curve
    reliability: Mapping[str, Sequence[float]] | None = None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: missing (every run directory holds its config.yaml)") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster on 1,000 runs
    cfg = yaml.load(text, Loader=loader)
    if not isinstance(cfg, dict):
        raise DataError(f"{path}: expected a mapping, got {type(cfg).__name__}")
    return cfg


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing (a finished run writes final.json last)") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def _read_jsonl(path: Path, sha256: str | None = None) -> list[dict[str, Any]]:
    """metrics.jsonl parsed as one JSON array (a third of the time of a loads() per line); a
    torn last line (a killed writer) is dropped, as :func:`lmablate.io.read_jsonl` does.
    ``sha256``: the checksum final.json recorded; the file must still be the one written then."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = None
    if sha256 is not None and (data is None or hashlib.sha256(data).hexdigest() != sha256):
        raise DataError(f"{path}: {'missing' if data is None else 'changed'} since the run "
                        "finished (sha256 mismatch with final.json); restore it, or delete "
                        f"{path.parent / 'final.json'} and rerun to redo the run")
    if data is None:
        return []
    text = data.decode()
    lines = [ln for ln in text.split("\n") if ln.strip()]
    try:
        return json.loads("[" + ",".join(lines) + "]")
    except json.JSONDecodeError:
        from lmablate.io import read_jsonl

        return read_jsonl(path)


def curve_blocks(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, list, list, list]]:
    """metrics.jsonl records -> one (split, metric, steps, tokens, values) block per curve.

    MoE records carry ``expert_load`` (each expert's share of routed training tokens since the
    previous evaluation); expert ``i`` becomes metric ``load_i`` of split ``expert``.
    """
    by_split: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_split.setdefault(r.get("split", "train"), []).append(r)
    blocks = []
    for split, recs in by_split.items():
        keys = {k for r in recs for k in r}
        steps = [r["step"] for r in recs]
        toks = [r["tokens"] for r in recs]
        for m in CURVE_METRICS:
            if m not in keys:
                continue
            vals = [r.get(m) for r in recs]
            if all(type(v) is float or type(v) is int for v in vals):  # the common case
                blocks.append((split, m, steps, toks, vals))
                continue
            keep = [i for i, v in enumerate(vals) if type(v) is float or type(v) is int]
            if keep:
                blocks.append((split, m, [steps[i] for i in keep], [toks[i] for i in keep],
                               [vals[i] for i in keep]))
        if "expert_load" in keys:
            loads = [r for r in recs if isinstance(r.get("expert_load"), list)]
            steps_l = [r["step"] for r in loads]
            toks_l = [r["tokens"] for r in loads]
            for i in range(len(loads[0]["expert_load"])):
                blocks.append(("expert", f"load_{i}", steps_l, toks_l,
                               [r["expert_load"][i] for r in loads]))
    return blocks


def load_run(run_dir: str | Path) -> RunData:
    """Read one lmablate run directory (config.yaml, final.json, metrics.jsonl)."""
    d = Path(run_dir)
    cfg = _read_config(d / "config.yaml")
    final = _read_json(d / "final.json")
    row: dict[str, Any] = {"run_id": cfg.get("run_id", d.name), "study": cfg.get("study"),
                           "variant": cfg.get("variant") or "baseline",
                           "seed": cfg.get("train", {}).get("seed", cfg.get("seed")),
                           "status": final.get("status", "unknown"), "source": "lmablate",
                           "differs": ", ".join(f"{k}={format_value(v)}"
                                                for k, v in (cfg.get("diff") or {}).items())}
    sections = {s: cfg.get(s, {}) for s in ("model", "train", "data", "tokenizer")}
    for k, v in flatten(sections).items():
        row[k] = json.dumps(v) if isinstance(v, (list, dict)) else v
    for k, v in (cfg.get("axes") or {}).items():
        row[f"axis.{k}"] = v
    for k, v in (final.get("params") or {}).items():
        row[f"params_{k}"] = v
    for k in ("steps", "tokens", "planned_tokens", "diverged_at_step", "flops_per_token",
              "vocab_size", "epochs", "device", "precision", "data_replaced_chars",
              *FINAL_METRICS):
        row[k] = final.get(k)
    row["flops"] = (final.get("flops_per_token") or 0) * (final.get("tokens") or 0) or None
    for fname, prefix in (("tasks.json", "task"), ("harness.json", "harness")):
        if (d / fname).is_file():  # downstream tasks (lmablate.evaluation), joined as columns
            from lmablate.evaluation.runner import tasks_to_columns

            row.update(tasks_to_columns(_read_json(d / fname), prefix))
    rel = final.get("reliability")
    verify_run(d, final)  # the files final.json vouches for (sizes; config.yaml's hash)
    records = _read_jsonl(d / "metrics.jsonl", final.get("metrics_sha256"))
    return RunData(row, curve_blocks(records),
                   rel if isinstance(rel, Mapping) else None)


def collect(run_dirs: Iterable[str | Path], workers: int | None = None,
            shared: Mapping[str, Sequence[Sequence[Any]]] | None = None
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(runs, curves, reliability) tables of lmablate run directories.

    Parsing YAML and JSON is most of a large harvest; from 200 runs on it is spread over
    ``workers`` forked processes (default: the CPUs this process may use, at most 8).
    ``shared``: run ID -> the other sweep points ``(variant, axes)`` it stands for (see
    :func:`tables`).
    """
    dirs = list(run_dirs)
    workers = workers or min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else os.cpu_count() or 1)
    if workers < 2 or len(dirs) < 200 or "fork" not in mp.get_all_start_methods():
        return tables([load_run(d) for d in dirs], shared)
    with mp.get_context("fork").Pool(workers) as pool:
        return tables(pool.map(load_run, dirs, chunksize=max(1, len(dirs) // (4 * workers))),
                      shared)


def short_names(columns: Sequence[str]) -> dict[str, str]:
    """``axis.model.d_model`` -> ``d_model`` (the dotted name when two axes end alike)."""
    short = {k: k.rsplit(".", 1)[-1] for k in columns}
    if len(set(short.values())) < len(short):
        short = {k: k[len("axis."):] if k.startswith("axis.") else k for k in columns}
    return short


def _group_labels(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """A readable name per configuration: the variant and the grid values that vary in this
    study (``post_norm``; ``n_heads=8, d_model=256``; ``moe, d_model=64``)."""
    axis_keys = list(dict.fromkeys(k for r in rows for k in r if k.startswith("axis.")))
    varying = [k for k in axis_keys
               if len({json.dumps(r.get(k), sort_keys=True, default=str) for r in rows}) > 1]
    short = short_names(varying)
    show_variant = len({r.get("variant") for r in rows}) > 1 or not varying
    labels = []
    for r in rows:
        parts = [f"{short[k]}={format_value(r[k])}" for k in varying if r.get(k) is not None]
        variant = str(r.get("variant") or "baseline")
        if show_variant:
            labels.append(f"{variant}, {', '.join(parts)}" if parts else variant)
        else:
            labels.append(", ".join(parts))
    return labels


def _member_row(row: Mapping[str, Any], variant: str, axes: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` as the sweep point (variant, axes) that shares its run."""
    out = {k: v for k, v in row.items() if not k.startswith("axis.")}
    return {**out, "variant": variant, **{f"axis.{k}": v for k, v in axes.items()}}


def _memberships(rows: list[dict[str, Any]],
                 shared: Mapping[str, Sequence[Sequence[Any]]]) -> None:
    """Group labels of every row, and for a shared run the ``groups`` (labels, ``; ``) and
    ``memberships`` (JSON: group, variant, axes of each point, its own first) columns."""
    extra = [(i, _member_row(r, str(v), a)) for i, r in enumerate(rows)
             for v, a in shared.get(r["run_id"], ())]
    labels = _group_labels(rows + [m for _, m in extra])
    for r, label in zip(rows, labels):
        r["group"] = label
    members: dict[int, list[dict[str, Any]]] = {}
    for (i, m), label in zip(extra, labels[len(rows):]):
        own = members.setdefault(i, [_membership(rows[i], rows[i]["group"])])
        if label not in [x["group"] for x in own]:
            own.append(_membership(m, label))
    for i, own in members.items():
        rows[i]["groups"] = "; ".join(x["group"] for x in own)
        rows[i]["memberships"] = json.dumps(own, default=str)


def _membership(row: Mapping[str, Any], label: str) -> dict[str, Any]:
    return {"group": label, "variant": row["variant"],
            "axes": {k[5:]: v for k, v in row.items() if k.startswith("axis.") and present(v)}}


def group_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs table with one row per (run, group): a run that several sweep points share
    appears once in each of their groups, with that point's variant and axes (per-group
    statistics, per-group selection). Other tables come back as they are."""
    import pandas as pd

    if "memberships" not in runs or not runs["memberships"].notna().any():
        return runs
    axis_cols = [c for c in runs.columns if c.startswith("axis.")]
    out = []
    for row in runs.to_dict("records"):
        members = row.get("memberships")
        if not isinstance(members, str) or not members:
            out.append(row)
            continue
        for m in json.loads(members):
            out.append({**row, **dict.fromkeys(axis_cols), "group": m["group"],
                        "variant": m["variant"], **{f"axis.{k}": v for k, v in m["axes"].items()}})
    return pd.DataFrame(out, columns=runs.columns)


def tables(data: Sequence[RunData], shared: Mapping[str, Sequence[Sequence[Any]]] | None = None
           ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Assemble (runs, curves, reliability) DataFrames; curves are built column-wise (a few
    million points for a 1,000-run sweep), never as a list of dicts. ``shared``: run ID -> the
    other sweep points (variant, axes) it stands for: its row's ``groups`` column lists every
    group it belongs to (:func:`group_rows` expands it; curves carry its own group)."""
    import numpy as np
    import pandas as pd

    if not data:
        raise DataError("no run directories to harvest")
    rows = [d.row for d in data]
    ids = [r["run_id"] for r in rows]
    if len(set(ids)) < len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"run {dup!r} appears twice (two directories with the same run_id)")
    _memberships(rows, shared or {})
    runs = pd.DataFrame(rows)
    front = [c for c in FRONT_COLUMNS if c in runs.columns]
    runs = runs[front + [c for c in runs.columns if c not in front]]

    lengths = [len(b[2]) for d in data for b in d.blocks]
    n = int(sum(lengths))
    run_index = np.repeat(np.asarray([i for i, d in enumerate(data) for _ in d.blocks],
                                     dtype=np.int64), np.asarray(lengths, dtype=np.int64))
    split_names = [b[0] for d in data for b in d.blocks]
    metric_names = [b[1] for d in data for b in d.blocks]

    def categorical(names: list[str]) -> Any:
        cats = list(dict.fromkeys(names))
        lookup = {c: i for i, c in enumerate(cats)}
        codes = np.repeat(np.asarray([lookup[x] for x in names], dtype=np.int32), lengths)
        return pd.Categorical.from_codes(codes, categories=cats)

    def column(i: int, dtype: Any) -> np.ndarray:
        out = np.empty(n, dtype=dtype)
        pos = 0
        for d in data:
            for b in d.blocks:
                k = len(b[i])
                out[pos:pos + k] = b[i]
                pos += k
        return out

    run_ids = pd.Categorical.from_codes(run_index.astype(np.int32), categories=ids) if n else \
        pd.Categorical([], categories=ids)
    seeds = runs["seed"].to_numpy()
    curves = pd.DataFrame({
        "run_id": run_ids,
        "variant": pd.Categorical(runs["variant"].to_numpy()[run_index]),
        "group": pd.Categorical(runs["group"].to_numpy()[run_index]),
        "seed": seeds[run_index] if n else np.empty(0, dtype=np.int64),
        "step": column(2, np.int64),
        "tokens": column(3, np.float64),
        "split": categorical(split_names) if n else pd.Categorical([]),
        "metric": categorical(metric_names) if n else pd.Categorical([]),
        "value": column(4, np.float64),
    }, columns=CURVE_COLUMNS)

    rel_rows: dict[str, list] = {k: [] for k in ("run_id", "variant", "group", "seed", "bin",
                                                 "confidence", "accuracy", "count")}
    for d in data:
        rel = d.reliability
        if not rel or not rel.get("bin_confidence"):
            continue
        k = len(rel["bin_confidence"])
        for key in ("run_id", "variant", "group", "seed"):
            rel_rows[key] += [d.row[key]] * k
        rel_rows["bin"] += list(range(k))
        rel_rows["confidence"] += list(rel["bin_confidence"])
        rel_rows["accuracy"] += list(rel["bin_accuracy"])
        rel_rows["count"] += list(rel["bin_count"])
    reliability = pd.DataFrame(rel_rows)
    return add_efficiency(runs, curves), curves, reliability


def shared_points(runs: Iterable[Any]) -> dict[str, list[list[Any]]]:
    """Run ID -> the other sweep points ``[variant, axes]`` of each run several points share
    (:attr:`lmablate.study.sweep.Run.shared`), as plain data for :func:`harvest`."""
    return {r.run_id: [[v, dict(a)] for v, a in r.shared] for r in runs if r.shared}


# --------------------------------------------------------------------------------------------------
# statistics


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _py(obj: Any) -> Any:
    """numpy/pandas scalars -> Python, NaN -> None (valid JSON)."""
    import numpy as np

    if isinstance(obj, Mapping):
        return {str(k): _py(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_py(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    try:
        import pandas as pd

        if pd.isna(obj):
            return None
    except (TypeError, ValueError):
        pass
    return obj


def progress_column(curves: pd.DataFrame) -> str:
    """``tokens`` where every curve point has a token count, else ``step`` (imported HF runs
    log steps; tokens only when the Trainer counted them)."""
    return "tokens" if len(curves) and curves["tokens"].notna().all() else "step"


def reference_group(runs: pd.DataFrame, baseline: str = "baseline",
                    metric: str = PRIMARY) -> tuple[str | None, str]:
    """(group, why) every other group is compared with.

    The baseline variant's group; in a grid (the baseline variant has many groups) the one at the
    study defaults (nothing ``differs``); failing both, the best group by mean ``metric``.
    """
    ok = runs[runs.status.isin(INCLUDED_STATUSES)]
    base = ok[ok.variant == baseline]
    groups = list(dict.fromkeys(base.group))
    if len(groups) == 1:
        return groups[0], f"the {baseline} variant"
    if "differs" in base:
        defaults = list(dict.fromkeys(base[base.differs.fillna("") == ""].group))
        if len(defaults) == 1:
            return defaults[0], "the study defaults"
    if metric in ok and ok[metric].notna().any():
        best = ok.groupby("group", observed=True)[metric].mean().idxmin()
        return str(best), f"the best group by mean {metric} (no single {baseline} group)"
    return None, "none"


def _run_statistics(runs: pd.DataFrame, curves: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per run and curve: best, final, where they were reached; for the val loss also the values
    at four token marks (quarters of the longest run), comparable across runs of any length.

    Computed with grouped aggregations, not a Python loop over (run, curve) groups: a 1,000-run
    sweep has about 6,000 of them.
    """
    import numpy as np

    x = progress_column(curves)
    out: dict[str, dict[str, Any]] = {rid: {} for rid in runs.run_id}
    if not len(curves):
        return out
    sel = curves[curves.split.isin(["val", "train"]) & curves.metric.isin(
        sorted({m for _, m in CURVE_STATS}))]
    sel = sel[np.isfinite(sel.value.to_numpy())].reset_index(drop=True)
    if not len(sel):
        return out
    keys = [sel.run_id.astype(str), sel.split.astype(str), sel.metric.astype(str)]
    g = sel.groupby(keys, sort=False)
    agg = g.agg(final=("value", "last"), final_x=(x, "last"), n=("value", "size"),
                imin=("value", "idxmin"), imax=("value", "idxmax"))
    values, xs = sel.value.to_numpy(), sel[x].to_numpy()
    for (rid, split, metric), row in zip(agg.index, agg.itertuples(index=False)):
        spec = CURVE_STATS.get((split, metric))
        if spec is None or rid not in out:
            continue
        name, lower = spec
        i = row.imin if lower else row.imax
        out[rid][name] = {"best": values[i], f"best_{x}": xs[i], "final": row.final,
                          f"final_{x}": row.final_x, "n_points": int(row.n)}
    top = float(np.nanmax(xs))
    marks = sorted({int(round(top * q)) for q in (0.25, 0.5, 0.75, 1.0)}) if top else []
    val = sel[(sel.split == "val") & (sel.metric == "loss")]
    bounds = np.flatnonzero(np.diff(val.run_id.cat.codes.to_numpy())) + 1
    for chunk in np.split(np.arange(len(val)), bounds):
        if not len(chunk):
            continue
        rid = str(val.run_id.iloc[chunk[0]])
        vx, vv = val[x].to_numpy()[chunk], val.value.to_numpy()[chunk]
        if rid in out and "val_loss" in out[rid]:
            out[rid]["val_loss"][f"at_{x}"] = {str(m): float(np.interp(m, vx, vv))
                                              for m in marks if vx[0] <= m <= vx[-1]}
    ends = runs.set_index("run_id")[PRIMARY] if PRIMARY in runs else None
    if ends is not None:  # the final evaluation (all val windows) is the run's final value
        for rid, v in ends.items():
            if "val_loss" in out.get(rid, {}) and _finite(v):
                out[rid]["val_loss"]["final_eval"] = float(v)
    return out


def summarize_runs(runs: pd.DataFrame, curves: pd.DataFrame, baseline: str = "baseline",
                   metrics: Sequence[str] = GROUP_METRICS,
                   settings: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """summary.json: per-run statistics, per-group mean/std/95% CI over seeds, every group's
    difference from the reference with a test, and findings stated from the data.

    ``settings``: variant -> the settings the study writes for it
    (:func:`lmablate.study.sweep.written_settings`); a group that differs from the reference in two
    or
    more of them is listed under ``confounds``. Groups whose parameter count differs from the
    reference's by more than 1% are listed under ``size_changes``.

    Only runs with an included status (completed; imported in-progress runs) enter the group
    statistics; diverged and stopped runs are listed apart and counted per group. A run shared
    by several sweep points counts in each of their groups (:func:`group_rows`).
    """
    from lmablate.results.stats import compare, holm, summarize

    grouped = group_rows(runs)
    ref, ref_why = reference_group(grouped, baseline)
    out: dict[str, Any] = {"baseline": baseline, "reference": ref, "reference_is": ref_why,
                           "primary_metric": PRIMARY, "n_runs": int(len(runs)),
                           "status_counts": {str(k): int(v) for k, v
                                             in runs.status.value_counts().items()},
                           "runs": {}, "groups": {}, "ranking": [], "comparisons": {},
                           "excluded_runs": {}}
    stats = _run_statistics(runs, curves)
    keep = [m for m in metrics if m in runs]
    for r in runs[["run_id", "variant", "group", "seed", "status", *keep]].itertuples(index=False):
        out["runs"][r.run_id] = {"variant": r.variant, "group": r.group, "seed": r.seed,
                                 "status": r.status, "statistics": stats.get(r.run_id, {}),
                                 **{m: getattr(r, m) for m in keep}}
    x = progress_column(curves)
    last = curves.groupby("run_id", observed=True)[x].max() if len(curves) else {}
    for r in runs[~runs.status.isin(INCLUDED_STATUSES)].itertuples(index=False):
        out["excluded_runs"][r.run_id] = {
            "group": r.group, "variant": r.variant, "seed": r.seed, "status": r.status,
            "diverged_at_step": getattr(r, "diverged_at_step", None),
            f"last_{x}": last.get(r.run_id) if len(curves) else None}
    bad = grouped[~grouped.status.isin(INCLUDED_STATUSES)]
    ok = grouped[grouped.status.isin(INCLUDED_STATUSES)]
    axis_cols = [c for c in runs.columns if c.startswith("axis.")]
    axes = {g: {c[5:]: v for c, v in row.items() if present(v)}
            for g, row in ok.groupby("group", sort=False, observed=True)[axis_cols].first()
            .to_dict("index").items()} if axis_cols else {}
    for group, g in ok.groupby("group", sort=False, observed=True):
        entry: dict[str, Any] = {"variant": g.variant.iloc[0], "axes": axes.get(group, {}),
                                 "n": int(len(g)), "seeds": list(g.seed),
                                 "n_excluded": int((bad.group == group).sum()),
                                 "excluded_statuses": sorted(set(bad[bad.group == group].status))}
        if "params_total" in g and g.params_total.notna().any():
            entry["params_total"] = float(g.params_total.mean())
        for m in keep:
            s = summarize([v for v in g[m] if _finite(v)])
            if s is not None:
                entry[m] = s.as_dict()
        out["groups"][group] = entry
    for group in sorted(set(bad.group) - set(out["groups"])):  # every seed failed
        g = bad[bad.group == group]
        out["groups"][group] = {"variant": g.variant.iloc[0], "n": 0, "seeds": [],
                                "n_excluded": int(len(g)),
                                "excluded_statuses": sorted(set(g.status))}
    out["ranking"] = sorted((k for k, e in out["groups"].items() if PRIMARY in e),
                            key=lambda k: out["groups"][k][PRIMARY]["mean"])
    if ref is not None and ref in set(ok.group):
        b = ok[ok.group == ref]
        for group, g in ok.groupby("group", sort=False, observed=True):
            if group == ref:
                continue
            out["comparisons"][group] = {
                m: compare(g[m].tolist(), b[m].tolist(), g.seed.tolist(), b.seed.tolist()).as_dict()
                for m in COMPARE_METRICS if m in g and g[m].notna().any()}
        for m in COMPARE_METRICS:
            names = [k for k, c in out["comparisons"].items() if m in c]
            for k, p in zip(names, holm([out["comparisons"][k][m]["p_value"] for k in names])):
                out["comparisons"][k][m]["p_holm"] = p
    out["progress"] = _common_progress(ok, curves)
    out["params"] = _params_findings(ok, out)
    out["confounds"] = _confounds(ok, ref, out["comparisons"], settings or {})
    out["size_changes"] = _size_changes(out["groups"], ref, out["comparisons"])
    out["scaling"] = _scaling(runs[runs.status.isin(INCLUDED_STATUSES)])  # each run once
    out["efficiency_columns"] = {**EFFICIENCY_COLUMNS, "phase": PHASE}
    out["moe_load"] = moe_load_summary(runs, curves)
    out["findings"] = _findings(runs, out)
    return _py(out)


def _same(a: Any, b: Any) -> bool:
    return (not present(a) and not present(b)) or (present(a) and present(b) and a == b)


def _confounds(ok: pd.DataFrame, ref: str | None, compared: Iterable[str],
               settings: Mapping[str, Sequence[str]]) -> dict[str, dict[str, Any]]:
    """Groups compared with the reference that differ from it in two or more of the settings
    the study writes for their variants (pos_emb and lr at once): their difference cannot be
    credited to any one of them. Group -> {setting: value}."""
    if ref is None or not settings or not len(ok):
        return {}
    first = ok.drop_duplicates("group").set_index("group")
    if ref not in first.index:
        return {}
    base = first.loc[ref]
    out = {}
    for group in compared:
        row = first.loc[group]
        keys = {*settings.get(str(row.variant), ()), *settings.get(str(base.variant), ())}
        changed = {k: row[k] for k in sorted(keys) if k in first.columns
                   and not _same(row[k], base[k])}
        if len(changed) >= 2:
            out[str(group)] = changed
    return out


def _size_changes(groups: Mapping[str, Mapping[str, Any]], ref: str | None,
                  compared: Iterable[str], tolerance: float = 0.01) -> dict[str, dict[str, float]]:
    """Groups compared with the reference whose parameter count differs from its by more than
    ``tolerance`` (a SiLU FFN at a preset's fixed d_ff has a third fewer FFN weights than
    SwiGLU): their loss difference is partly one of model size. Group -> {params, change}."""
    base = groups.get(ref or "", {}).get("params_total")
    if not _finite(base) or not base:
        return {}
    out = {}
    for group in compared:
        p = groups.get(group, {}).get("params_total")
        if _finite(p) and abs(p - base) > tolerance * base:
            out[str(group)] = {"params_total": float(p), "change": float(p / base - 1)}
    return out


def _common_progress(ok: pd.DataFrame, curves: pd.DataFrame) -> dict[str, Any] | None:
    """When included runs stopped at different points (imported runs still training), rank the
    groups by validation loss at the furthest point every run reached."""
    import numpy as np

    if not len(curves) or not len(ok):
        return None
    x = progress_column(curves)
    val = curves[(curves.split == "val") & (curves.metric == "loss")
                 & curves.run_id.isin(ok.run_id)]
    val = val[np.isfinite(val.value.to_numpy())]
    if not len(val):
        return None
    ends = val.groupby("run_id", observed=True)[x].agg(["min", "max"])
    ends = ends[ends["max"].notna()]
    if not len(ends) or ends["max"].min() >= 0.99 * ends["max"].max():
        return None
    at = float(ends["max"].min())
    per_run = {}
    for rid, g in val.groupby("run_id", observed=True):
        xs, vs = g[x].to_numpy(), g.value.to_numpy()
        if xs[0] <= at:
            per_run[rid] = float(np.interp(at, xs, vs))
    groups: dict[str, list[str]] = {}  # a shared run is in several groups
    for rid, group in zip(ok.run_id, ok.group):
        groups.setdefault(rid, []).append(group)
    by_group: dict[str, list[float]] = {}
    for rid, v in per_run.items():
        for group in groups[rid]:
            by_group.setdefault(group, []).append(v)
    ranking = sorted(({"group": k, "mean": float(np.mean(v)), "n": len(v)}
                      for k, v in by_group.items()), key=lambda e: e["mean"])
    return {"column": x, "at": at, "min_end": at, "max_end": float(ends["max"].max()),
            "ranking": ranking}


def _params_findings(ok: pd.DataFrame, summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """Rank correlation of size with loss over groups, and the best group per size bucket."""
    groups = {k: e for k, e in summary["groups"].items()
              if PRIMARY in e and _finite(e.get("params_total"))}
    if not spans_sizes([e["params_total"] for e in groups.values()]):
        return None
    from scipy.stats import spearmanr

    names = list(groups)
    p = [groups[k]["params_total"] for k in names]
    loss = [groups[k][PRIMARY]["mean"] for k in names]
    rho, pval = spearmanr(p, loss)
    buckets: dict[tuple[float, float], list[str]] = {}
    for k in names:
        buckets.setdefault(size_bucket(groups[k]["params_total"]), []).append(k)
    best = []
    for (lo, hi), ks in sorted(buckets.items()):
        k = min(ks, key=lambda g: groups[g][PRIMARY]["mean"])
        best.append({"bucket": f"{fmt_count(lo)}-{fmt_count(hi)}", "low": lo, "high": hi,
                     "group": k, "params_total": groups[k]["params_total"],
                     "val_loss": groups[k][PRIMARY]["mean"], "n_groups": len(ks)})
    from lmablate.results.stats import pareto_front

    front = [names[i] for i in pareto_front(p, loss)]
    return {"spearman_rho": float(rho), "spearman_p": float(pval), "n_groups": len(names),
            "best_per_bucket": best, "pareto_front": front}


def _shape_finding(runs: pd.DataFrame, s: Mapping[str, Any]) -> str | None:
    """Shape at equal size: in each parameter bucket whose configurations differ in a ratio of
    :data:`DERIVED_AXES` (layers per head, FFN width per hidden unit, ...), whether the bucket's
    best configuration has the highest or the lowest value of it (seed 000: "for a given
    parameter count, more layers compared to attention heads performed the best")."""
    pf, groups = s.get("params") or {}, s["groups"]
    rows = group_rows(runs).drop_duplicates("group").set_index("group")
    parts = []
    for name, (num, den) in DERIVED_AXES.items():
        if num not in rows or den not in rows:
            continue
        of = {g: v for g, row in rows[[num, den]].to_dict("index").items()
              if _finite(v := ratio(row, num, den))}
        high = low = n = 0
        for b in pf.get("best_per_bucket", []):
            members = [g for g, e in groups.items() if g in of and PRIMARY in e
                       and _finite(e.get("params_total"))
                       and size_bucket(e["params_total"]) == (b["low"], b["high"])]
            values = {round(of[g], 6) for g in members}
            if len(values) < 2 or b["group"] not in members:
                continue
            best = round(of[b["group"]], 6)
            n, high, low = n + 1, high + (best == max(values)), low + (best == min(values))
        if n:
            parts.append(f"the highest {name} of its bucket in {high} of {n} buckets "
                         f"(the lowest in {low})")
    if not parts:
        return None
    return ("Shape at equal size, over the parameter buckets whose configurations differ in "
            "it: the best configuration of a bucket has " + "; ".join(parts) + ".")


def selection_finding(runs: pd.DataFrame, chosen: Mapping[str, Any],
                      maximize: bool = False) -> str | None:
    """The phase-1 selection of a two-phase study as a sentence (seed 003's top-1 per axis,
    phase1_top1.json): per selection group, the configurations that go on to phase 2 with their
    phase-1 metric. ``chosen``: :func:`lmablate.study.phases.select`'s result for ``runs``."""
    metric, per, k = chosen["metric"], chosen.get("per"), chosen["top_k"]
    rows = group_rows(runs)
    if metric not in rows or not chosen["phase1"]:
        return None
    rows = rows[rows.status.isin(INCLUDED_STATUSES) & rows[metric].notna()]
    parts = []
    for key, g in (rows.groupby(per, sort=False) if per else [(None, rows)]):
        top = g.sort_values(metric, ascending=not maximize).head(k)
        top = top[top.run_id.isin(chosen["phase1"])]
        names = ", ".join(f"{r['group']} ({metric} {r[metric]:.4f})"
                          for r in top.to_dict("records"))
        if names:
            parts.append(f"{key}: {names}" if per else names)
    n = len(chosen["selected"])
    return (f"Phase 2 trains {n} configuration{'s' if n != 1 else ''}, the top {k}"
            + (f" per {per}" if per else "") + f" by phase-1 {metric}: " + "; ".join(parts)
            + (" (one run stands for several groups)" if per and n < len(parts) else "") + ".")


def _scaling(ok: pd.DataFrame) -> dict[str, Any] | None:
    """Scaling-law fit when the completed runs span at least three sizes (see scaling.py)."""
    from lmablate.results.scaling import fit_study

    return fit_study(ok)


# --------------------------------------------------------------------------------------------------
# data efficiency, early- vs late-phase convergence, expert load (seeds 002 and 004)

PHASE = 0.25  # the early phase is the first quarter of a run's tokens, the late phase the last
EFFICIENCY_COLUMNS = {  # runs.csv column -> what it is (per run, from its training-loss curve)
    "loss_per_mtok": "final val loss / million training tokens (seed 002's loss/token "
                     "efficiency; lower is better)",
    "loss_drop_per_mtok": "training-loss drop per million tokens, first logged step to the end",
    "early_drop_per_mtok": "training-loss drop per million tokens in the first 25% of tokens",
    "late_drop_per_mtok": "training-loss drop per million tokens in the last 25% of tokens",
    "early_late_ratio": "early_drop_per_mtok / late_drop_per_mtok (empty when the late phase "
                        "did not improve)",
    "early_share": "share of the run's training-loss drop made in the first 25% of tokens",
}


def _phase_rates(xs: Any, vs: Any) -> dict[str, float | None]:
    """Efficiency columns of one training-loss curve (token counts ``xs``, losses ``vs``)."""
    import numpy as np

    t0, end = float(xs[0]), float(xs[-1])
    early, late = PHASE * end, (1 - PHASE) * end
    at = dict(zip(("early", "late"), np.interp([early, late], xs, vs)))
    first, last = float(vs[0]), float(vs[-1])
    out: dict[str, float | None] = dict.fromkeys(list(EFFICIENCY_COLUMNS)[1:])
    if end > t0:
        out["loss_drop_per_mtok"] = (first - last) / ((end - t0) / 1e6)
    if early > t0:
        out["early_drop_per_mtok"] = (first - at["early"]) / ((early - t0) / 1e6)
    if end > late > t0:
        out["late_drop_per_mtok"] = (at["late"] - last) / ((end - late) / 1e6)
    e, lt = out["early_drop_per_mtok"], out["late_drop_per_mtok"]
    if e is not None and lt is not None and lt > 0:
        out["early_late_ratio"] = e / lt
    if early > t0 and first > last:
        out["early_share"] = (first - at["early"]) / (first - last)
    return out


def add_efficiency(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with the :data:`EFFICIENCY_COLUMNS`, from each run's training-loss curve
    (the logged window means, from the first step on) and its token count. Runs whose curves
    count steps only (imported runs without token counts) get empty columns."""
    import numpy as np

    cols: dict[str, dict[str, float | None]] = {c: {} for c in EFFICIENCY_COLUMNS}
    if len(curves) and progress_column(curves) == "tokens":
        sel = curves[(curves.split == "train") & (curves.metric == "loss")]
        sel = sel[np.isfinite(sel.value.to_numpy())]
        for rid, g in sel.groupby("run_id", observed=True, sort=False):
            if len(g) >= 3:
                g = g.sort_values("tokens")
                for k, v in _phase_rates(g.tokens.to_numpy(), g.value.to_numpy()).items():
                    cols[k][str(rid)] = v
    if PRIMARY in runs and "tokens" in runs:
        for rid, loss, tok in zip(runs.run_id, runs[PRIMARY], runs.tokens):
            if _finite(loss) and _finite(tok) and tok > 0:
                cols["loss_per_mtok"][rid] = float(loss) / (tok / 1e6)
    return runs.assign(**{c: [v.get(r) for r in runs.run_id] for c, v in cols.items()})


def moe_load_summary(runs: pd.DataFrame, curves: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per MoE group: the Gini coefficient and entropy (bits) of the expert load at the first
    and the last evaluation, mean over the group's included seeds (seed 004: "Gini started at
    0.709 and finished at 0.710")."""
    import numpy as np

    if not len(curves):
        return {}
    ok = set(runs.run_id[runs.status.isin(INCLUDED_STATUSES)])
    load = curves[curves.metric.isin(["expert_gini", "expert_entropy"])
                  & curves.run_id.isin(ok)]
    load = load[np.isfinite(load.value.to_numpy())]
    experts = curves[curves.split == "expert"].groupby("run_id", observed=True).metric.nunique()
    x = progress_column(curves)
    out: dict[str, dict[str, Any]] = {}
    for group, g in load.groupby("group", observed=True, sort=False):
        entry: dict[str, Any] = {"n": int(g.run_id.nunique())}
        for metric, name in (("expert_gini", "gini"), ("expert_entropy", "entropy")):
            m = g[g.metric == metric].sort_values(x)
            ends = m.groupby("run_id", observed=True).value.agg(["first", "last"])
            if len(ends):
                entry[f"{name}_start"] = float(ends["first"].mean())
                entry[f"{name}_end"] = float(ends["last"].mean())
        n_exp = [int(experts[r]) for r in set(g.run_id.astype(str)) if r in experts]
        if n_exp:
            entry["num_experts"] = max(n_exp)
        entry[f"first_{x}"] = float(g[x].min())
        entry[f"last_{x}"] = float(g[x].max())
        out[str(group)] = entry
    return out


def _efficiency_findings(s: Mapping[str, Any], limit: int = 6) -> list[str]:
    """Data efficiency and early- vs late-phase convergence per group, stated with units."""
    groups, ref = s["groups"], s["reference"]
    order = [g for g in s["ranking"] if "loss_drop_per_mtok" in groups[g]]
    if not order:
        return []
    if ref in order:  # the reference first, then the rest best first
        order = [ref] + [g for g in order if g != ref]
    shown, more = order[:limit], len(order) - limit

    def mean(g: str, m: str) -> float | None:
        return groups[g].get(m, {}).get("mean")

    tail = f"; {more} more in summary.json" if more > 0 else ""
    out = ["Data efficiency (training-loss drop per million training tokens, first logged step "
           "to the end of the run; loss/token efficiency = final val loss per million tokens, "
           "as seed 002 reports it, lower is better; mean over seeds): " + "; ".join(
               f"{g} {mean(g, 'loss_drop_per_mtok'):.3g} nats/M tokens"
               + (f" over {fmt_count(groups[g]['tokens']['mean'])} tokens"
                  if "tokens" in groups[g] else "")
               + (f", loss/token efficiency {mean(g, 'loss_per_mtok'):.3g}"
                  if _finite(mean(g, "loss_per_mtok")) else "")
               for g in shown) + tail + "."]
    parts = []
    for g in shown:
        e, lt = mean(g, "early_drop_per_mtok"), mean(g, "late_drop_per_mtok")
        if not _finite(e) or not _finite(lt):
            continue
        ratio, share = mean(g, "early_late_ratio"), mean(g, "early_share")
        parts.append(f"{g} fell {e:.3g} nats/M tokens early and {lt:.3g} late"
                     + (f" ({ratio:.1f}x)" if _finite(ratio) and lt > 0 else
                        " (no late improvement)")
                     + (f", {share:.0%} of its drop in the early phase" if _finite(share)
                        else ""))
    if parts:
        out.append(f"Convergence (training loss; early phase = first {PHASE:.0%} of tokens, "
                   f"late phase = last {PHASE:.0%}; mean over seeds): " + "; ".join(parts)
                   + tail + ".")
    return out


def _moe_findings(s: Mapping[str, Any], limit: int = 6) -> list[str]:
    """One sentence per MoE group: Gini and entropy of the expert load, start and end."""
    out = []
    for g, e in list((s.get("moe_load") or {}).items())[:limit]:
        if "gini_start" not in e:
            continue
        n = e.get("num_experts")
        seeds = f"mean of {e['n']} seeds" if e["n"] > 1 else "one seed"
        txt = (f"Expert load of {g} ({seeds}{f', {n} experts' if n else ''}): the Gini "
               f"coefficient started at {e['gini_start']:.3f} and finished at "
               f"{e['gini_end']:.3f} (0 = even, 1 = one expert takes all)")
        if "entropy_start" in e:
            txt += (f"; the Shannon entropy started at {e['entropy_start']:.3f} and finished at "
                    f"{e['entropy_end']:.3f} bits"
                    + (f" ({math.log2(n):.3f} = even)" if n else ""))
        out.append(txt + ".")
    return out


def _findings(runs: pd.DataFrame, s: Mapping[str, Any]) -> list[str]:
    """Plain sentences stated from the numbers (analysis.txt and RESULTS.md share them)."""
    out = []
    groups, ranking, ref = s["groups"], s["ranking"], s["reference"]
    if ranking:
        best, worst = ranking[0], ranking[-1]
        out.append(f"Best group: {best} (mean val loss {groups[best][PRIMARY]['mean']:.4f}, "
                   f"n={groups[best]['n']}); worst: {worst} "
                   f"({groups[worst][PRIMARY]['mean']:.4f}, n={groups[worst]['n']}).")
    cmps = {k: c[PRIMARY] for k, c in s["comparisons"].items() if PRIMARY in c}
    if cmps:
        raw = [k for k, c in cmps.items() if c["p_value"] is not None and c["p_value"] < 0.05]
        adj = [k for k, c in cmps.items() if c.get("p_holm") is not None and c["p_holm"] < 0.05]
        out.append(f"{len(raw)} of {len(cmps)} groups differ from {ref} in val loss at p < 0.05"
                   + (f" ({', '.join(raw)})" if raw else "")
                   + f"; {len(adj)} after Holm's correction for {len(cmps)} comparisons"
                   + (f" ({', '.join(adj)})." if adj else "."))
    ns = [e["n"] for e in groups.values() if e.get("n")]
    if ns and min(ns) <= 3:
        from scipy.stats import t

        n = min(ns)
        if n >= 2:
            out.append(f"Some groups have only n={n} seeds: the 95% t-interval of a mean is then "
                       f"±{t.ppf(0.975, n - 1) / math.sqrt(n):.2f} standard deviations wide "
                       f"(t = {t.ppf(0.975, n - 1):.2f}, {n - 1} degree(s) of freedom); more seeds "
                       "narrow it faster than anything else.")
        else:
            out.append("Some groups have a single seed: they have no interval and no test.")
    spread = _seed_spread(groups)
    if spread:
        out.append(spread)
    for group, changed in s.get("confounds", {}).items():
        out.append(f"Confounded: {group} differs from {ref} in {len(changed)} settings at once ("
                   + ", ".join(f"{k.split('.')[-1]}={format_value(v)}" for k, v in changed.items())
                   + "): its difference cannot be credited to any one of them alone.")
    sizes = s.get("size_changes") or {}
    if sizes and not s.get("params"):  # a size sweep states sizes in its own findings
        base = groups[ref]["params_total"]
        listed = sorted(sizes.items(), key=lambda kv: -abs(kv[1]["change"]))
        more = f"; and {len(listed) - 6} more" if len(listed) > 6 else ""
        out.append(f"Not the same size: against {ref}'s {fmt_count(base)} parameters, "
                   + "; ".join(f"{g} has {fmt_count(e['params_total'])} ({e['change']:+.1%})"
                               for g, e in listed[:6]) + more
                   + ". Their loss differences are partly differences in model size.")
    pf = s.get("params")
    if pf:
        out.append(f"Spearman rank correlation of parameter count with mean val loss over "
                   f"{pf['n_groups']} groups: rho = {pf['spearman_rho']:+.2f} "
                   f"(p = {pf['spearman_p']:.3g}).")
        out.append("Best group per parameter bucket: " + "; ".join(
            f"{b['bucket']}: {b['group']} ({fmt_count(b['params_total'])} params, "
            f"{b['val_loss']:.4f}, best of {b['n_groups']})" for b in pf["best_per_bucket"]) + ".")
        out.append("Pareto frontier (no smaller group has lower loss): "
                   + " | ".join(pf["pareto_front"]) + ".")
        shape = _shape_finding(runs, s)
        if shape:
            out.append(shape)
    prog = s.get("progress")
    if prog:
        top = prog["ranking"][:5]
        out.append(f"Runs stopped at different points ({prog['column']} "
                   f"{prog['min_end']:,.0f} to {prog['max_end']:,.0f}); at {prog['column']} "
                   f"{prog['at']:,.0f}, which every run reached, the best groups are: "
                   + "; ".join(f"{e['group']} ({e['mean']:.4f})" for e in top) + ".")
    out += _efficiency_findings(s)
    out += _moe_findings(s)
    lr = _lr_finding(runs)
    if lr:
        out.append(lr)
    bad = runs[~runs.status.isin(INCLUDED_STATUSES)]
    if len(bad):
        per = bad.groupby("group", observed=True).status.agg(lambda v: f"{len(v)} {v.iloc[0]}")
        out.append(f"{len(bad)} run(s) did not complete and are left out of the statistics: "
                   + "; ".join(f"{g}: {v}" for g, v in per.items()) + ".")
    sc = s.get("scaling")
    if sc:
        out.append(sc["text"])
    return out


def lr_lines(runs: pd.DataFrame) -> pd.Series:
    """Per run, the name of its configuration apart from the learning rate: runs with the same
    line name differ only in LR (the lines of the LR-sensitivity plot). Configurations are
    compared by what ``differs`` from the defaults minus ``train.lr``; the name is the first
    group label on the line with its ``lr=`` part removed."""
    import pandas as pd

    if "differs" not in runs:
        return runs.group.astype(str)
    keys = runs.differs.fillna("").map(
        lambda d: ", ".join(p for p in d.split(", ") if p and not p.startswith("train.lr=")))
    names: dict[str, str] = {}
    for key, group in zip(keys, runs.group):
        if key not in names:
            parts = [p for p in str(group).split(", ") if not p.startswith("lr=")]
            names[key] = ", ".join(parts) or "defaults"
    return pd.Series([names[k] for k in keys], index=runs.index)


def _seed_spread(groups: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Groups whose seeds disagree far more than seeds usually do in this study (a seed that
    stalled or spiked): their mean, and any test on it, rests on unlike runs."""
    ranges = {g: e[PRIMARY]["max"] - e[PRIMARY]["min"] for g, e in groups.items()
              if PRIMARY in e and e[PRIMARY]["n"] >= 2}
    if len(ranges) < 3:
        return None
    typical = sorted(ranges.values())[len(ranges) // 2]
    wide = {g: r for g, r in ranges.items() if r > 3 * typical and r > 0.05}
    if not wide:
        return None
    return ("Seeds disagree unusually in " + "; ".join(
        f"{g} (val loss {groups[g][PRIMARY]['min']:.3f} to {groups[g][PRIMARY]['max']:.3f}, "
        f"{r / typical:.0f}x the median spread of {typical:.3f})" for g, r in wide.items())
        + ": look at the seeds' curves before trusting the mean.")


def _lr_finding(runs: pd.DataFrame) -> str | None:
    """The best learning rate of each configuration (runs differing only in LR), and which LRs
    did not complete."""
    if "train.lr" not in runs or runs["train.lr"].nunique() < 2:
        return None
    runs = runs.assign(line=lr_lines(runs))
    ok = runs[runs.status.isin(INCLUDED_STATUSES) & runs[PRIMARY].notna()] \
        if PRIMARY in runs else runs.iloc[0:0]
    best: dict[float, list[str]] = {}
    for line, g in ok.groupby("line", sort=False):
        means = g.groupby("train.lr")[PRIMARY].mean()
        if len(means) >= 2:
            best.setdefault(float(means.idxmin()), []).append(line)
    if not best:
        return None
    n = sum(len(v) for v in best.values())
    txt = (f"Learning rate: of {n} configurations run at two or more LRs, the lowest mean val "
           "loss is at " + "; ".join(f"lr = {lr:g} for {len(v)}" + (f" ({' | '.join(v)})"
                                                                    if len(v) <= 3 else "")
                                     for lr, v in sorted(best.items())) + ".")
    bad = runs[~runs.status.isin(INCLUDED_STATUSES)]
    if len(bad):
        txt += " Did not complete at lr = " + ", ".join(
            f"{v:g}" for v in sorted(set(bad["train.lr"]))) + "."
    return txt


# --------------------------------------------------------------------------------------------------
# text outputs


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if _finite(x) else "n/a"


def _p(x: Any) -> str:
    if not _finite(x):
        return ""
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def _ranking_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    ref = summary["reference"]
    rows = []
    for i, g in enumerate(summary["ranking"], 1):
        e = summary["groups"][g]
        s = e[PRIMARY]
        c = summary["comparisons"].get(g, {}).get(PRIMARY)
        if g == ref:
            delta, ci, p, ph = "(reference)", "", "", ""
        elif c and _finite(c["delta"]):
            delta = f"{c['delta']:+.4f} ({100 * c['rel_delta']:+.1f}%)"
            ci = (f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]" if _finite(c["ci_low"])
                  else "n/a")
            p, ph = (_p(c["p_value"]) + (" " + c["test"] if c["p_value"] is not None else "")
                     or "n/a"), _p(c.get("p_holm")) or "n/a"
        else:
            delta, ci, p, ph = "n/a", "", "", ""
        n = f"{e['n']}" + (f"+{e['n_excluded']}x" if e.get("n_excluded") else "")
        ci_mean = (f"[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]" if s["n"] > 1 else "(one seed)")
        ppl = math.exp(s["mean"]) if _finite(s["mean"]) and s["mean"] < 700 else None
        rows.append([str(i), g, n, _fmt(s["mean"]), ci_mean, _fmt(ppl, 2), delta, ci, p, ph])
    for g, e in summary["groups"].items():
        if PRIMARY not in e:
            rows.append(["-", g, f"0+{e['n_excluded']}x", "n/a", "", "", "all seeds "
                         + "/".join(e["excluded_statuses"]), "", "", ""])
    return rows


TEST_HEADER = ["group", "n", "test loss", "95% CI (mean)", "test ppl (mean)", "val loss"]
EPOCH_COLUMNS = ["run_id", "group", "seed", "epoch", "step", "tokens", "train_loss", "val_loss",
                 "val_ppl"]
EPOCH_HEADER = ["run", "epoch", "train loss", "val loss", "val ppl"]
EPOCH_ROWS_SHOWN = 200  # RESULTS.md lists at most this many; epochs.csv holds them all


def _test_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """Test loss and perplexity per group, in ranking order (none without a test split)."""
    rows = []
    for g in summary["ranking"]:
        e = summary["groups"][g]
        s = e.get("test_loss")
        if s is None:
            continue
        ci = f"[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]" if s["n"] > 1 else "(one seed)"
        ppl = (e.get("test_ppl") or {}).get("mean")
        rows.append([g, str(s["n"]), _fmt(s["mean"]), ci, _fmt(ppl, 2),
                     _fmt((e.get(PRIMARY) or {}).get("mean"))])
    return rows


TEST_NOTE = ("Test split (the corpus' `test` source; each run's final model evaluated on it "
             "once; test ppl = mean over seeds of exp(test loss)):")


def epoch_table(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, epoch) of the runs with an `epochs` budget: the mean training loss over
    the epoch and the validation loss and perplexity at its end (empty without such runs)."""
    import pandas as pd

    if not len(curves) or "epoch" not in set(curves.metric.astype(str)):
        return pd.DataFrame(columns=EPOCH_COLUMNS)
    val = curves[curves.split.astype(str) == "val"]
    wide = val[val.metric.isin(["epoch", "epoch_train_loss", "loss", "ppl"])].pivot_table(
        index=["run_id", "group", "seed", "step", "tokens"], columns="metric", values="value",
        aggfunc="first", observed=True).reset_index()
    wide = wide[wide["epoch"].notna()]
    out = pd.DataFrame({"run_id": wide.run_id.astype(str), "group": wide.group.astype(str),
                        "seed": wide.seed, "epoch": wide["epoch"].astype(int),
                        "step": wide.step.astype(int), "tokens": wide.tokens.astype(int),
                        "train_loss": wide["epoch_train_loss"], "val_loss": wide["loss"],
                        "val_ppl": wide["ppl"]})
    return out.sort_values(["group", "run_id", "epoch"]).reset_index(drop=True)


def _epoch_rows(epochs: pd.DataFrame) -> list[list[str]]:
    return [[r.run_id, str(r.epoch), _fmt(r.train_loss), _fmt(r.val_loss), _fmt(r.val_ppl, 2)]
            for r in epochs.head(EPOCH_ROWS_SHOWN).itertuples(index=False)]


EPOCH_NOTE = ("Loss per epoch (`epochs` budgets; train loss = mean training loss over the epoch, "
              "val loss and ppl = evaluation at its end; all rows in epochs.csv):")


def _text_table(header: list[str], rows: list[list[str]], left: Sequence[int]) -> list[str]:
    """An aligned plain-text table (analysis.txt)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for j, r in enumerate([header, *rows]):
        out.append("  " + "  ".join(c.ljust(w) if i in left else c.rjust(w)
                                    for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if j == 0:
            out.append("  " + "  ".join("-" * w for w in widths))
    return out


def _md_table(header: list[str], rows: list[list[str]], left: Sequence[int]) -> list[str]:
    """A Markdown table (RESULTS.md)."""
    return (["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i in left else "---:" for i in range(len(header))) + "|"]
            + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows])


RANK_HEADER = ["#", "group", "n", "val loss", "95% CI (mean)", "ppl*", "delta vs reference",
               "95% CI (delta)", "p (test)", "p Holm"]


def analysis_text(runs: pd.DataFrame, summary: Mapping[str, Any], study: str,
                  epochs: pd.DataFrame | None = None) -> str:
    """Plain-text findings: ranking, deltas vs the reference, test split and per-epoch losses
    (where the study has them: ``epochs`` is :func:`epoch_table`), excluded runs, what the data
    says."""
    title = f"lmablate analysis: study {study}"
    lines = [title, "=" * len(title), ""]
    counts = summary["status_counts"]
    n_ok = sum(v for k, v in counts.items() if k in INCLUDED_STATUSES)
    lines.append(f"{summary['n_runs']} runs in {len(summary['groups'])} groups: " + ", ".join(
        f"{v} {k}" for k, v in counts.items()) + ("." if n_ok == summary["n_runs"] else
                                                   f" ({summary['n_runs'] - n_ok} excluded)."))
    if "tokens" in runs and runs.tokens.notna().any():
        tokens = sorted({int(t) for t in runs.tokens.dropna()})
        shown = ", ".join(f"{t:,}" for t in tokens[:6]) + (" ..." if len(tokens) > 6 else "")
        lines.append(f"Tokens per run: {shown}")
    lines.append(f"Reference for deltas and tests: {summary['reference']} "
                 f"({summary['reference_is']}).")
    lines.append("")
    lines.append("Ranking by final validation loss (nats/token; mean over seeds, 95% Student-t "
                 "interval; n = seeds used, +kx = k seeds excluded; ppl* = exp(mean loss); "
                 "delta = group minus reference; test: paired t by seed, else Welch t; p Holm = "
                 "adjusted for all comparisons):")
    rows = [RANK_HEADER] + _ranking_rows(summary)
    widths = [max(len(r[i]) for r in rows) for i in range(len(RANK_HEADER))]
    for j, r in enumerate(rows):
        lines.append("  " + "  ".join(c.rjust(w) if i not in (1, 8) else c.ljust(w)
                                      for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if j == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    lines.append("")
    if test := _test_rows(summary):
        lines += [TEST_NOTE] + _text_table(TEST_HEADER, test, (0,)) + [""]
    if epochs is not None and len(epochs):
        lines += [EPOCH_NOTE] + _text_table(EPOCH_HEADER, _epoch_rows(epochs), (0,)) + [""]
    lines += _replaced_lines(runs)
    if summary["excluded_runs"]:
        lines.append("Runs excluded from the statistics:")
        for rid, e in summary["excluded_runs"].items():
            at = f" at step {e['diverged_at_step']}" if e.get("diverged_at_step") else ""
            lines.append(f"  {rid} ({e['group']}, seed {e['seed']}): {e['status']}{at}")
        lines.append("")
    if summary["findings"]:
        lines.append("Findings:")
        for f in summary["findings"]:
            lines += _wrap(f, "  - ", "    ")
        lines.append("")
    return "\n".join(lines)


def _replaced_lines(runs: pd.DataFrame) -> list[str]:
    """A note when a run's corpus had bytes that were not UTF-8 (they became U+FFFD)."""
    if "data_replaced_chars" not in runs:
        return []
    n = runs.data_replaced_chars.fillna(0)
    if not (n > 0).any():
        return []
    most = int(n.max())
    return [f"Data: the corpus of {int((n > 0).sum())} of {len(runs)} runs had bytes that were "
            f"not UTF-8: up to {most:,} characters became U+FFFD (runs.csv column "
            "data_replaced_chars; the tokenize_corpus log names the first offset).", ""]


def _wrap(text: str, first: str, rest: str, width: int = 100) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest,
                         break_long_words=False, break_on_hyphens=False) or [first]


def results_markdown(runs: pd.DataFrame, summary: Mapping[str, Any], study: str,
                     figures: Mapping[str, str] | None = None,
                     plots_dir: str = "plots", epochs: pd.DataFrame | None = None) -> str:
    """RESULTS.md: the findings of analysis.txt as Markdown, the ranking as a table (and the test
    split's and per-epoch losses where the study has them), and every figure linked (relative
    paths, so it renders beside the results on GitHub or in an editor): ``figures`` maps each
    figure's name to the line written under it
    (:func:`lmablate.figures.plan.figure_lines`)."""
    lines = [f"# Results: study `{study}`", ""]
    counts = ", ".join(f"{v} {k}" for k, v in summary["status_counts"].items())
    lines += [f"{summary['n_runs']} runs ({counts}) in {len(summary['groups'])} groups. "
              f"Deltas and tests are against **{summary['reference']}** "
              f"({summary['reference_is']}).", ""]
    lines += ["## Findings", ""] + [f"- {f}" for f in summary["findings"]] + [""]
    lines += ["## Ranking by final validation loss", "",
              "Mean over seeds with 95% Student-t intervals; n = seeds used (+kx: k seeds "
              "excluded); ppl* = exp(mean loss); delta = group minus reference; paired t-test by "
              "seed (Welch otherwise); p Holm adjusts for all comparisons.", ""]
    lines.append("| " + " | ".join(RANK_HEADER) + " |")
    lines.append("|" + "|".join("---:" if i not in (1, 8) else "---"
                                for i in range(len(RANK_HEADER))) + "|")
    for r in _ranking_rows(summary):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    lines.append("")
    if test := _test_rows(summary):
        lines += ["## Test split", "", TEST_NOTE.removesuffix(":") + ".", ""]
        lines += _md_table(TEST_HEADER, test, (0,)) + [""]
    if epochs is not None and len(epochs):
        lines += ["## Loss per epoch", "", EPOCH_NOTE.removesuffix(":") + ".", ""]
        lines += _md_table(EPOCH_HEADER, _epoch_rows(epochs), (0,)) + [""]
    if summary["excluded_runs"]:
        lines += ["## Runs left out of the statistics", ""]
        for rid, e in summary["excluded_runs"].items():
            at = f" at step {e['diverged_at_step']}" if e.get("diverged_at_step") else ""
            lines.append(f"- `{rid}` ({e['group']}, seed {e['seed']}): {e['status']}{at}")
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for name, what in figures.items():
            lines += [f"### {name}", "", what, "",
                      f"![{name}]({plots_dir}/{name}.png)", ""]
    lines += ["Tables: `runs.csv` (one row per run), `curves.parquet` (every logged point), "
              "`summary.json` (all statistics); load them with "
              f"`lmablate.load_results(\"results/{study}\")`.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# writing


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def summary_json(summary: Mapping[str, Any]) -> str:
    """summary.json text: indented, except one line per run (json's indenting encoder is pure
    Python and takes seconds on a 1,000-run study; the runs section is most of the file)."""
    parts = []
    for key, value in summary.items():
        if key == "runs":
            runs = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items())
            parts.append(f'  "runs": {{\n{runs}\n  }}' if value else '  "runs": {}')
        else:
            body = json.dumps(value, indent=2).replace("\n", "\n  ")
            parts.append(f"  {json.dumps(key)}: {body}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def write_outputs(runs: pd.DataFrame, curves: pd.DataFrame, reliability: pd.DataFrame,
                  out_dir: str | Path, *, study: str, baseline: str = "baseline",
                  figures: Mapping[str, str] | None = None,
                  settings: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Write the tables, summary.json, analysis.txt and RESULTS.md of a study to ``out_dir``
    (``figures``: see :func:`results_markdown`; ``settings``: see :func:`summarize_runs`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize_runs(runs, curves, baseline, settings=settings)
    summary = {"study": study, **summary}
    _write_parquet(runs, out / "runs.parquet")
    atomic_write_text(out / "runs.csv", runs.to_csv(index=False))
    _write_parquet(curves, out / "curves.parquet")
    _write_parquet(reliability, out / "reliability.parquet")
    atomic_write_text(out / "summary.json", summary_json(summary))
    epochs = epoch_table(curves)
    if len(epochs):  # runs with an `epochs` budget: the per-epoch losses as a long table
        atomic_write_text(out / "epochs.csv", epochs.to_csv(index=False))
    atomic_write_text(out / "analysis.txt", analysis_text(runs, summary, study, epochs))
    atomic_write_text(out / "RESULTS.md", results_markdown(runs, summary, study, figures,
                                                           epochs=epochs))
    return summary


def harvest(run_dirs: Sequence[str | Path], out_dir: str | Path, *, study: str,
            baseline: str = "baseline",
            figures: Mapping[str, str] | Callable[[list[dict[str, Any]]], Mapping[str, str]]
            | None = None,
            shared: Mapping[str, Sequence[Sequence[Any]]] | None = None,
            settings: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Collect lmablate run directories and write every table and text output to ``out_dir``.

    ``figures``: RESULTS.md's figure links, figure name -> the line under it, or a function of
    the runs table's rows that gives them (the workflow plans the figures from the harvested
    runs, :func:`lmablate.figures.plan.plan_figures`); None: no figure section. ``shared``: run
    ID -> the other sweep points ``(variant, axes)`` that resolve to it (:func:`shared_points`);
    it counts in their groups.
    ``settings``: variant -> the settings the study writes for it
    (:func:`lmablate.study.sweep.written_settings`), for the findings' confound warnings.
    """
    runs, curves, reliability = collect(run_dirs, shared=shared)
    if callable(figures):
        figures = figures(runs.to_dict("records"))
    return write_outputs(runs, curves, reliability, out_dir, study=study, baseline=baseline,
                         figures=figures, settings=settings)


def load_results(results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) DataFrames of a harvested study, e.g. ``load_results("results/default")``."""
    import pandas as pd

    d = Path(results_dir)
    for name in ("runs.parquet", "curves.parquet"):
        if not (d / name).is_file():
            raise DataError(f"{d / name}: missing; harvest the study first (snakemake -c2 or "
                            "lmablate import-hf)")
    return pd.read_parquet(d / "runs.parquet"), pd.read_parquet(d / "curves.parquet")


def load_reliability(results_dir: str | Path) -> pd.DataFrame:
    """Calibration bins (run_id, group, bin, confidence, accuracy, count) of a harvested study."""
    import pandas as pd

    path = Path(results_dir) / "reliability.parquet"
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame(
        columns=["run_id", "variant", "group", "seed", "bin", "confidence", "accuracy", "count"])
