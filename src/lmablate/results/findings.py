"""The findings of a harvest as plain sentences stated from the numbers (summary.json's
``findings``; analysis.txt, RESULTS.md and the results page show them): best and worst group,
tests against the reference, seeds, confounds, size trends and shape at equal size, learning
rates, data efficiency and expert load."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lmablate.results.collect import group_rows, lr_lines
from lmablate.results.columns import INCLUDED_STATUSES, PRIMARY
from lmablate.results.efficiency import PHASE
from lmablate.results.shape import DERIVED_AXES, finite, ratio, size_bucket
from lmablate.study.sweep import format_value
from lmablate.units import fmt_count, plural

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["state_findings"]


def state_findings(runs: pd.DataFrame, s: Mapping[str, Any]) -> list[str]:
    """Plain sentences stated from the numbers (analysis.txt and RESULTS.md share them)."""
    out = []
    groups, ranking, ref = s["groups"], s["ranking"], s["reference"]
    if len(ranking) == 1:  # one group with a final value: nothing to be best or worst of
        only = ranking[0]
        out.append(f"One group has a final val loss: {only} (mean "
                   f"{groups[only][PRIMARY]['mean']:.4f}, n={groups[only]['n']}).")
    elif ranking:
        best, worst = ranking[0], ranking[-1]
        out.append(f"Best group: {best} (mean val loss {groups[best][PRIMARY]['mean']:.4f}, "
                   f"n={groups[best]['n']}); worst: {worst} "
                   f"({groups[worst][PRIMARY]['mean']:.4f}, n={groups[worst]['n']}).")
    cmps = {k: c[PRIMARY] for k, c in s["comparisons"].items() if PRIMARY in c}
    if cmps:
        raw = [k for k, c in cmps.items() if c["p_value"] is not None and c["p_value"] < 0.05]
        adj = [k for k, c in cmps.items() if c.get("p_holm") is not None and c["p_holm"] < 0.05]
        out.append(f"{len(raw)} of {plural(len(cmps), 'group')} "
                   f"{'differs' if len(raw) == 1 else 'differ'} from {ref} in val loss at "
                   "p < 0.05" + (f" ({', '.join(raw)})" if raw else "")
                   + f"; {len(adj)} after Holm's correction for "
                   f"{plural(len(cmps), 'comparison')}"
                   + (f" ({', '.join(adj)})." if adj else "."))
    ns = [e["n"] for e in groups.values() if e.get("n")]
    if ns and min(ns) <= 3:
        from scipy.stats import t

        n = min(ns)
        if n >= 2:
            out.append(f"Some groups have only n={n} seeds: the 95% t-interval of a mean is then "
                       f"±{t.ppf(0.975, n - 1) / math.sqrt(n):.2f} standard deviations wide "
                       f"(t = {t.ppf(0.975, n - 1):.2f}, "
                       f"{plural(n - 1, 'degree of freedom', 'degrees of freedom')}); more seeds "
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
        out.append(f"{plural(len(bad), 'run')} did not complete and "
                   f"{'is' if len(bad) == 1 else 'are'} left out of the statistics: "
                   + "; ".join(f"{g}: {v}" for g, v in per.items()) + ".")
    sc = s.get("scaling")
    if sc:
        out.append(sc["text"])
    return out


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


def _shape_finding(runs: pd.DataFrame, s: Mapping[str, Any]) -> str | None:
    """Shape at equal size: in each parameter bucket whose configurations differ in a ratio of
    :data:`DERIVED_AXES` (layers per head, FFN width per hidden unit, ...), whether the bucket's
    best configuration has the highest or the lowest value of it (a shape sweep's "for a
    given parameter count, more layers compared to attention heads performed the best")."""
    pf, groups = s.get("params") or {}, s["groups"]
    rows = group_rows(runs).drop_duplicates("group").set_index("group")
    parts = []
    for name, (num, den) in DERIVED_AXES.items():
        if num not in rows or den not in rows:
            continue
        of = {g: v for g, row in rows[[num, den]].to_dict("index").items()
              if finite(v := ratio(row, num, den))}
        high = low = n = 0
        for b in pf.get("best_per_bucket", []):
            members = [g for g, e in groups.items() if g in of and PRIMARY in e
                       and finite(e.get("params_total"))
                       and size_bucket(e["params_total"]) == (b["low"], b["high"])]
            values = {round(of[g], 6) for g in members}
            if len(values) < 2 or b["group"] not in members:
                continue
            best = round(of[b["group"]], 6)
            n, high, low = n + 1, high + (best == max(values)), low + (best == min(values))
        if n:
            parts.append(f"the highest {name} of its bucket in {high} of {plural(n, 'bucket')} "
                         f"(the lowest in {low})")
    if not parts:
        return None
    return ("Shape at equal size, over the parameter buckets whose configurations differ in "
            "it: the best configuration of a bucket has " + "; ".join(parts) + ".")


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
    txt = (f"Learning rate: of {plural(n, 'configuration')} run at two or more LRs, the lowest "
           "mean val loss is at " + "; ".join(f"lr = {lr:g} for {len(v)}" + (f" ({' | '.join(v)})"
                                                                    if len(v) <= 3 else "")
                                     for lr, v in sorted(best.items())) + ".")
    bad = runs[~runs.status.isin(INCLUDED_STATUSES)]
    if len(bad):
        txt += " Did not complete at lr = " + ", ".join(
            f"{v:g}" for v in sorted(set(bad["train.lr"]))) + "."
    return txt


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
           "to the end of the run; loss/token efficiency = final val loss divided by the millions "
           "of tokens trained on, lower is better, comparable between equal budgets; mean over "
           "seeds): " + "; ".join(
               f"{g} {mean(g, 'loss_drop_per_mtok'):.3g} nats/M tokens"
               + (f" over {fmt_count(groups[g]['tokens']['mean'])} tokens"
                  if "tokens" in groups[g] else "")
               + (f", loss/token efficiency {mean(g, 'loss_per_mtok'):.3g}"
                  if finite(mean(g, "loss_per_mtok")) else "")
               for g in shown) + tail + "."]
    parts = []
    for g in shown:
        e, lt = mean(g, "early_drop_per_mtok"), mean(g, "late_drop_per_mtok")
        if not finite(e) or not finite(lt):
            continue
        ratio, share = mean(g, "early_late_ratio"), mean(g, "early_share")
        parts.append(f"{g} fell {e:.3g} nats/M tokens early and {lt:.3g} late"
                     + (f" ({ratio:.1f}x)" if finite(ratio) and lt > 0 else
                        " (no late improvement)")
                     + (f", {share:.0%} of its drop in the early phase" if finite(share)
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
