"""summary.json's statistics: per run (best, final, values at token marks), per group (mean,
std and 95% interval over seeds), every group against the reference (delta, test, Holm), the
reference itself, confounds and size changes, the size trend and scaling fit, the ranking at
common progress, and the findings (:mod:`lmablate.results.findings`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lmablate.results.collect import group_rows
from lmablate.results.columns import (
    COMPARE_METRICS,
    CURVE_STATS,
    GROUP_METRICS,
    INCLUDED_STATUSES,
    PRIMARY,
    progress_column,
)
from lmablate.results.efficiency import EFFICIENCY_COLUMNS, PHASE, moe_load_summary
from lmablate.results.findings import state_findings
from lmablate.results.shape import finite, present, size_bucket, spans_sizes
from lmablate.units import fmt_count

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["summarize_runs", "reference_group"]


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


def reference_group(runs: pd.DataFrame, baseline: str = "baseline",
                    metric: str = PRIMARY) -> tuple[str | None, str]:
    """(group, why) every other group is compared with.

    The baseline variant's group; in a grid (the baseline variant has many groups) the one at the
    study defaults (nothing ``differs``); failing both, the best group by mean ``metric``.
    """
    ok = runs[runs.status.isin(INCLUDED_STATUSES)]
    base = ok[ok.variant == baseline]
    groups = list(dict.fromkeys(base.group))
    if len(groups) == 1:  # the variant, or the one point of its grid in these runs
        grid = base[[c for c in base.columns if c.startswith("axis.")]].notna().any().any()
        return groups[0], f"the {baseline} variant" + ("'s only grid point here" if grid else "")
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
            if "val_loss" in out.get(rid, {}) and finite(v):
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
            "stopped_early_at_step": getattr(r, "stopped_early_at_step", None),
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
            s = summarize([v for v in g[m] if finite(v)])
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
    out["findings"] = state_findings(runs, out)
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
    if not finite(base) or not base:
        return {}
    out = {}
    for group in compared:
        p = groups.get(group, {}).get("params_total")
        if finite(p) and abs(p - base) > tolerance * base:
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
              if PRIMARY in e and finite(e.get("params_total"))}
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


def _scaling(ok: pd.DataFrame) -> dict[str, Any] | None:
    """Scaling-law fit when the completed runs span at least three sizes (see scaling.py)."""
    from lmablate.results.scaling import fit_study

    return fit_study(ok)
