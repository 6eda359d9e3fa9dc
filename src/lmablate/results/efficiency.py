"""Per-run data efficiency and convergence, from each run's training-loss curve (runs.csv's
:data:`EFFICIENCY_COLUMNS`: loss drop per million tokens, early- against late-phase drop rate),
and the expert load of mixture-of-experts groups (Gini coefficient and entropy, first and last
evaluation)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmablate.results.columns import INCLUDED_STATUSES, PRIMARY, progress_column
from lmablate.results.shape import finite

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PHASE", "EFFICIENCY_COLUMNS", "add_efficiency", "moe_load_summary"]

PHASE = 0.25  # the early phase is the first quarter of a run's tokens, the late phase the last
EFFICIENCY_COLUMNS = {  # runs.csv column -> what it is (per run, from its training-loss curve)
    "loss_per_mtok": "final val loss / million training tokens (loss/token efficiency; lower "
                     "is better, comparable between equal budgets)",
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
            if finite(loss) and finite(tok) and tok > 0:
                cols["loss_per_mtok"][rid] = float(loss) / (tok / 1e6)
    return runs.assign(**{c: [v.get(r) for r in runs.run_id] for c, v in cols.items()})


def moe_load_summary(runs: pd.DataFrame, curves: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per MoE group: the Gini coefficient and entropy (bits) of the expert load at the first
    and the last evaluation, mean over the group's included seeds (as MoE ablations report it:
    "Gini started at 0.709 and finished at 0.710")."""
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
