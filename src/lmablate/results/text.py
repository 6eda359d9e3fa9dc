"""The harvest's text outputs: analysis.txt (plain text) and RESULTS.md (Markdown with the
figures linked): the ranking table, the test split's and per-epoch losses where a study has them,
excluded runs and the findings. The results page (:mod:`lmablate.results.page`) shares the
tables' rows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lmablate.results.columns import INCLUDED_STATUSES, PRIMARY
from lmablate.results.shape import finite, present
from lmablate.units import plural

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RANK_HEADER", "TEST_HEADER", "TEST_NOTE", "EPOCH_COLUMNS", "EPOCH_HEADER",
           "EPOCH_NOTE", "ranking_rows", "test_rows", "epoch_table", "epoch_rows",
           "analysis_text", "results_markdown", "ended_at"]

RANK_HEADER = ["#", "group", "n", "val loss", "95% CI (mean)", "ppl*", "delta vs reference",
               "95% CI (delta)", "p (test)", "p Holm"]
TEST_HEADER = ["group", "n", "test loss", "95% CI (mean)", "test ppl (mean)", "val loss"]
TEST_NOTE = ("Test split (the corpus' `test` source; each run's final model evaluated on it "
             "once; test ppl = mean over seeds of exp(test loss)):")
EPOCH_COLUMNS = ["run_id", "group", "seed", "epoch", "step", "tokens", "train_loss", "val_loss",
                 "val_ppl"]
EPOCH_HEADER = ["run", "epoch", "train loss", "val loss", "val ppl"]
EPOCH_ROWS_SHOWN = 200  # RESULTS.md lists at most this many; epochs.csv holds them all
EPOCH_NOTE = ("Loss per epoch (`epochs` budgets; train loss = mean training loss over the epoch, "
              "val loss and ppl = evaluation at its end; all rows in epochs.csv):")


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if finite(x) else "n/a"


def _p(x: Any) -> str:
    if not finite(x):
        return ""
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def ranking_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    ref = summary["reference"]
    rows = []
    for i, g in enumerate(summary["ranking"], 1):
        e = summary["groups"][g]
        s = e[PRIMARY]
        c = summary["comparisons"].get(g, {}).get(PRIMARY)
        if g == ref:
            delta, ci, p, ph = "(reference)", "", "", ""
        elif c and finite(c["delta"]):
            delta = f"{c['delta']:+.4f} ({100 * c['rel_delta']:+.1f}%)"
            ci = (f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]" if finite(c["ci_low"])
                  else "n/a")
            p, ph = (_p(c["p_value"]) + (" " + c["test"] if c["p_value"] is not None else "")
                     or "n/a"), _p(c.get("p_holm")) or "n/a"
        else:
            delta, ci, p, ph = "n/a", "", "", ""
        n = f"{e['n']}" + (f"+{e['n_excluded']}x" if e.get("n_excluded") else "")
        ci_mean = (f"[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]" if s["n"] > 1 else "(one seed)")
        ppl = math.exp(s["mean"]) if finite(s["mean"]) and s["mean"] < 700 else None
        rows.append([str(i), g, n, _fmt(s["mean"]), ci_mean, _fmt(ppl, 2), delta, ci, p, ph])
    for g, e in summary["groups"].items():
        if PRIMARY not in e:
            rows.append(["-", g, f"0+{e['n_excluded']}x", "n/a", "", "", "all seeds "
                         + "/".join(e["excluded_statuses"]), "", "", ""])
    return rows


def test_rows(summary: Mapping[str, Any]) -> list[list[str]]:
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


def epoch_rows(epochs: pd.DataFrame) -> list[list[str]]:
    return [[r.run_id, str(r.epoch), _fmt(r.train_loss), _fmt(r.val_loss), _fmt(r.val_ppl, 2)]
            for r in epochs.head(EPOCH_ROWS_SHOWN).itertuples(index=False)]


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


def analysis_text(runs: pd.DataFrame, summary: Mapping[str, Any], study: str,
                  epochs: pd.DataFrame | None = None) -> str:
    """Plain-text findings: ranking, deltas vs the reference, test split and per-epoch losses
    (where the study has them: ``epochs`` is :func:`epoch_table`), excluded runs, what the data
    says."""
    title = f"lmablate analysis: study {study}"
    lines = [title, "=" * len(title), ""]
    counts = summary["status_counts"]
    n_ok = sum(v for k, v in counts.items() if k in INCLUDED_STATUSES)
    lines.append(f"{plural(summary['n_runs'], 'run')} in "
                 f"{plural(len(summary['groups']), 'group')}: " + ", ".join(
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
    rows = [RANK_HEADER] + ranking_rows(summary)
    widths = [max(len(r[i]) for r in rows) for i in range(len(RANK_HEADER))]
    for j, r in enumerate(rows):
        lines.append("  " + "  ".join(c.rjust(w) if i not in (1, 8) else c.ljust(w)
                                      for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if j == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    lines.append("")
    if test := test_rows(summary):
        lines += [TEST_NOTE] + _text_table(TEST_HEADER, test, (0,)) + [""]
    if epochs is not None and len(epochs):
        lines += [EPOCH_NOTE] + _text_table(EPOCH_HEADER, epoch_rows(epochs), (0,)) + [""]
    lines += _replaced_lines(runs)
    if summary["excluded_runs"]:
        lines.append("Runs excluded from the statistics:")
        for rid, e in summary["excluded_runs"].items():
            at = ended_at(e)
            lines.append(f"  {rid} ({e['group']}, seed {e['seed']}): {e['status']}{at}")
        lines.append("")
    if summary["findings"]:
        lines.append("Findings:")
        for f in summary["findings"]:
            lines += _wrap(f, "  - ", "    ")
        lines.append("")
    return "\n".join(lines)


def ended_at(e: Mapping[str, Any]) -> str:
    """" at step N" of an excluded run that diverged or stopped early there (summary.json's
    excluded_runs entry or a runs-table row), else ""."""
    steps = [e.get(k) for k in ("diverged_at_step", "stopped_early_at_step")]
    return next((f" at step {int(v)}" for v in steps if present(v)), "")


def _replaced_lines(runs: pd.DataFrame) -> list[str]:
    """A note when a run's corpus had bytes that were not UTF-8 (they became U+FFFD)."""
    if "data_replaced_chars" not in runs:
        return []
    n = runs.data_replaced_chars.fillna(0)
    if not (n > 0).any():
        return []
    most = int(n.max())
    return [f"Data: the corpus of {int((n > 0).sum())} of {plural(len(runs), 'run')} had bytes "
            f"that were not UTF-8: up to {most:,} characters became U+FFFD (runs.csv column "
            "data_replaced_chars; the tokenize_corpus log names the first offset).", ""]


def _wrap(text: str, first: str, rest: str, width: int = 100) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest,
                         break_long_words=False, break_on_hyphens=False) or [first]


def results_markdown(runs: pd.DataFrame, summary: Mapping[str, Any], study: str,
                     figures: Mapping[str, str] | None = None,
                     plots_dir: str = "plots", epochs: pd.DataFrame | None = None,
                     results_dir: str | None = None) -> str:
    """RESULTS.md: the findings of analysis.txt as Markdown, the ranking as a table (and the test
    split's and per-epoch losses where the study has them), and every figure linked (relative
    paths, so it renders beside the results on GitHub or in an editor): ``figures`` maps each
    figure's name to the line written under it
    (:func:`lmablate.figures.plan.figure_lines`). ``results_dir``: where the tables are (its
    last line says how to load them; default ``results/<study>``)."""
    lines = [f"# Results: study `{study}`", ""]
    counts = ", ".join(f"{v} {k}" for k, v in summary["status_counts"].items())
    lines += [f"{plural(summary['n_runs'], 'run')} ({counts}) in "
              f"{plural(len(summary['groups']), 'group')}. "
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
    for r in ranking_rows(summary):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    lines.append("")
    if test := test_rows(summary):
        lines += ["## Test split", "", TEST_NOTE.removesuffix(":") + ".", ""]
        lines += _md_table(TEST_HEADER, test, (0,)) + [""]
    if epochs is not None and len(epochs):
        lines += ["## Loss per epoch", "", EPOCH_NOTE.removesuffix(":") + ".", ""]
        lines += _md_table(EPOCH_HEADER, epoch_rows(epochs), (0,)) + [""]
    if summary["excluded_runs"]:
        lines += ["## Runs left out of the statistics", ""]
        for rid, e in summary["excluded_runs"].items():
            at = ended_at(e)
            lines.append(f"- `{rid}` ({e['group']}, seed {e['seed']}): {e['status']}{at}")
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for name, what in figures.items():
            lines += [f"### {name}", "", what, "",
                      f"![{name}]({plots_dir}/{name}.png)", ""]
    lines += ["Tables: `runs.csv` (one row per run), `curves.parquet` (every logged point), "
              "`summary.json` (all statistics); load them with "
              f"`lmablate.load_results(\"{results_dir or f'results/{study}'}\")`.", ""]
    return "\n".join(lines)
