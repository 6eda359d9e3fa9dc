"""The results page of a study: findings, ranking, the test split and per-epoch losses where the
study has them, runs and every figure with its caption, as one self-contained HTML fragment
(``results/<study>/results.html``).

``snakemake --report`` shows it on the report's landing page (``report/workflow.rst`` inserts it
with docutils' ``raw:: html`` directive), so the report opens on the results, not only on links
to them. The file also opens on its own in any browser: figures are embedded as data URIs and
the styles are scoped to the fragment's ``#lmablate-results`` section.

The findings, the ranking, the test-split and the per-epoch tables are those of ``analysis.txt``
and RESULTS.md (:mod:`lmablate.results.text` shares their code); captions are the report's
(reStructuredText, each figure kind's in :mod:`lmablate.figures.registry`) rendered by docutils.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmablate.io import atomic_write_text
from lmablate.results.columns import INCLUDED_STATUSES
from lmablate.results.selection import selection_finding
from lmablate.results.text import (
    EPOCH_HEADER,
    EPOCH_NOTE,
    RANK_HEADER,
    TEST_HEADER,
    TEST_NOTE,
    epoch_rows,
    ended_at,
    epoch_table,
    ranking_rows,
    test_rows,
)
from lmablate.units import fmt_count, plural

__all__ = ["RUN_COLUMNS", "caption_html", "results_html", "write_results_page"]

# runs.csv column -> (heading, format); the runs table shows those present with a value
RUN_COLUMNS: dict[str, tuple[str, str]] = {
    "run_id": ("run ID", "text"),
    "group": ("group", "text"),
    "seed": ("seed", "int"),
    "status": ("status", "text"),
    "differs": ("differs", "text"),
    "params_total": ("params", "count"),
    "tokens": ("tokens", "count"),
    "val_loss": ("val loss", "4f"),
    "val_ppl": ("val ppl", "2f"),
    "val_acc": ("top-1 acc", "3f"),
    "val_ece": ("ECE", "3f"),
    "test_loss": ("test loss", "4f"),
    "test_ppl": ("test ppl", "2f"),
    "tokens_per_s": ("tokens/s", "count"),
    "wall_s": ("wall (s)", "1f"),
}

STYLE = """
#lmablate-results { font-size: 14px; line-height: 1.45; max-width: 1200px; }
#lmablate-results h2 { font-size: 1.35em; font-weight: 600; margin: 1.2em 0 0.4em; }
#lmablate-results h3 { font-size: 1.1em; font-weight: 600; margin: 1em 0 0.3em; }
#lmablate-results table { border-collapse: collapse; margin: 0.4em 0 1em; font-size: 12.5px; }
#lmablate-results th, #lmablate-results td { border: 1px solid #ccc; padding: 2px 6px;
  white-space: nowrap; }
#lmablate-results th { background: #f0f0f0; text-align: left; }
#lmablate-results td.num { text-align: right; font-variant-numeric: tabular-nums; }
#lmablate-results .table-scroll { overflow-x: auto; max-width: 100%; }
#lmablate-results ul { list-style: disc; padding-left: 1.4em; margin: 0.3em 0 1em; }
#lmablate-results figure { margin: 0.6em 0 1.6em; }
#lmablate-results figure img { max-width: 100%; max-height: 90vh; width: auto; height: auto;
  border: 1px solid #ddd; }
#lmablate-results figcaption { font-size: 13px; color: #333; max-width: 1000px; }
#lmablate-results figcaption p { margin: 0.3em 0; }
#lmablate-results .note { color: #555; }
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _cell(value: Any, fmt: str) -> tuple[str, bool]:
    """(text, numeric) of one runs-table cell; NaN and missing values are empty."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "", fmt != "text"
    if fmt == "text":
        return str(value), False
    if fmt == "int":
        return str(int(value)), True
    if fmt == "count":
        return fmt_count(float(value)), True
    return format(float(value), f".{fmt}"), True


def _table(header: Sequence[str], rows: Sequence[Sequence[tuple[str, bool]]], cls: str) -> str:
    """An HTML table; each cell is (text, numeric), numeric cells right-aligned."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(
        f'<td class="num">{_esc(t)}</td>' if num else f"<td>{_esc(t)}</td>" for t, num in row)
        + "</tr>" for row in rows)
    return (f'<div class="table-scroll"><table class="{cls}">\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody></table></div>")


def _ranking(summary: Mapping[str, Any]) -> str:
    """The ranking of analysis.txt as a table (numeric columns right-aligned)."""
    rows = [[(c, i not in (1, 8)) for i, c in enumerate(r)] for r in ranking_rows(summary)]
    return _table(RANK_HEADER, rows, "ranking")


def _task_columns(runs: Any) -> dict[str, tuple[str, str]]:
    """The downstream-task columns of a runs table (``task.<name>``, ``harness.<name>``: the
    value of the task's metric) -> (heading "<name> <metric>", format)."""
    cols = {}
    for c in runs.columns:
        prefix, _, name = str(c).partition(".")
        if prefix in ("task", "harness") and name and "." not in name and runs[c].notna().any():
            metric = runs.get(f"{c}.metric")
            metric = metric.dropna().iloc[0] if metric is not None and metric.notna().any() \
                else "acc"
            cols[c] = (f"{name} {metric}", "3f")
    return cols


def _runs_table(runs: Any) -> str:
    """One row per run: ID, group, seed, status, what differs, size, the final metrics and the
    downstream tasks' scores (before throughput and time)."""
    shown = {c: f for c, f in RUN_COLUMNS.items() if c in runs and runs[c].notna().any()}
    tail = [c for c in ("tokens_per_s", "wall_s") if c in shown]
    shown = {**{c: f for c, f in shown.items() if c not in tail}, **_task_columns(runs),
             **{c: shown[c] for c in tail}}
    order = [c for c in ("group", "seed", "run_id") if c in runs]
    records = runs.sort_values(order).to_dict("records") if order else runs.to_dict("records")
    rows = [[_cell(r.get(c), f[1]) for c, f in shown.items()] for r in records]
    return _table([f[0] for f in shown.values()], rows, "runs")


def _note(text: str) -> str:
    """A note paragraph; Markdown's `code` spans (the notes RESULTS.md shares) as <code>."""
    parts = _esc(text.removesuffix(":")).split("`")
    body = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    return f'<p class="note">{body}.</p>'


def _numeric_table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str) -> str:
    """A table of formatted cells, the first column text and the others right-aligned."""
    return _table(header, [[(c, i > 0) for i, c in enumerate(r)] for r in rows], cls)


def _split_tables(summary: Mapping[str, Any], epochs: Any) -> list[str]:
    """The test split's loss and perplexity per group and the losses per epoch, as RESULTS.md
    shows them (nothing for a study without a test source or an `epochs` budget)."""
    parts = []
    if test := test_rows(summary):
        parts += ["<h3>Test split</h3>",
                  _note(TEST_NOTE),
                  _numeric_table(TEST_HEADER, test, "test-split")]
    if epochs is not None and len(epochs):
        parts += ["<h3>Loss per epoch</h3>",
                  _note(EPOCH_NOTE),
                  _numeric_table(EPOCH_HEADER, epoch_rows(epochs), "epochs")]
    return parts


def caption_html(rst: str) -> str:
    """A report caption (reStructuredText) as an HTML fragment."""
    from docutils.core import publish_parts

    return publish_parts(rst, writer_name="html",
                         settings_overrides={"report_level": 5, "halt_level": 5})["body"]


def _data_uri(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _figure(name: str, spec: Mapping[str, Any]) -> str:
    """One figure: heading, the PNG embedded, its one-line summary and the report caption."""
    caption = caption_html(spec["caption"]) if spec.get("caption") else ""
    what = f'<p class="note">{_esc(spec["what"])}</p>' if spec.get("what") else ""
    return (f'<figure id="figure-{_esc(name)}">\n<h3>{_esc(name)}</h3>\n'
            f'<img alt="{_esc(name)}" src="{_data_uri(spec["path"])}">\n'
            f"<figcaption>{what}\n{caption}</figcaption>\n</figure>")


def _phase1_section(phase1: Mapping[str, Any]) -> list[str]:
    """A two-phase study's phase 1: the configurations it ranked and at what budget, the
    selection (as phase1/RESULTS.md states it), the runs it stopped early or lost, and its
    ranking figure. ``phase1``: {"runs": phase 1's runs table, "chosen": its selected.json,
    "maximize": bool, "figure": ranking.png or None}."""
    runs, chosen = phase1["runs"], phase1["chosen"]
    counts = ", ".join(f"{v} {k}" for k, v in runs.status.value_counts(sort=False).items())
    budget = runs.planned_tokens.max() if "planned_tokens" in runs else math.nan
    each = f" for {fmt_count(float(budget))} tokens each" if math.isfinite(budget) else ""
    said = selection_finding(runs, chosen, bool(phase1.get("maximize")))
    items = [said] if said else []
    items += [f"{r['run_id']} ({r['group']}, seed {r['seed']}): {r['status']}{ended_at(r)}"
              for r in runs[~runs.status.isin(INCLUDED_STATUSES)].to_dict("records")]
    parts = ["<h3>Phase 1: every configuration, short</h3>",
             f"<p>Phase 1 trained {plural(len(runs), 'configuration')} ({_esc(counts)}){each}; "
             "the ranking, runs and figures of this page are phase 2's, the selected "
             "configurations at the full budget, except the figures named phase1/. Phase 1's "
             "tables and "
             "RESULTS.md are in <code>phase1/</code>.</p>",
             "<ul>" + "".join(f"<li>{_esc(x)}</li>" for x in items) + "</ul>"]
    if phase1.get("figure"):
        parts.append(_figure("phase1/ranking", {"path": phase1["figure"], "what": (
            f"Phase 1: each configuration's {chosen['metric']}, best first (mean over seeds "
            "with a 95% interval); the configurations that go on to phase 2 are starred, their "
            "labels green; a run that stopped early is a hollow dot at its last evaluated "
            "value, marked with its step; runs that stopped early or diverged are never "
            "selected.")}))
    return parts


def results_html(runs: Any, summary: Mapping[str, Any], study: str,
                 figures: Mapping[str, Mapping[str, Any]] | None = None,
                 epochs: Any = None, phase1: Mapping[str, Any] | None = None) -> str:
    """The results page as an HTML fragment. ``figures``: name -> {"path": PNG, "caption":
    report caption in reStructuredText (optional), "what": one-line summary (optional)}, in
    display order; ``epochs``: the per-epoch losses (:func:`lmablate.results.text.epoch_table`)
    or None;
    ``phase1``: a two-phase study's phase 1 (see :func:`_phase1_section`) or None."""
    counts = ", ".join(f"{v} {k}" for k, v in summary["status_counts"].items())
    parts = [f'<section id="lmablate-results">\n<style>{STYLE}</style>',
             f"<h2>Results: study {_esc(study)}</h2>",
             f"<p>{plural(summary['n_runs'], 'run')} ({_esc(counts)}) in "
             f"{plural(len(summary['groups']), 'group')}. "
             f"Deltas and tests are against <b>{_esc(summary['reference'])}</b> "
             f"({_esc(summary['reference_is'])}).</p>",
             *(_phase1_section(phase1) if phase1 else []),
             "<h3>Findings</h3>",
             "<ul>" + "".join(f"<li>{_esc(f)}</li>" for f in summary["findings"]) + "</ul>",
             "<h3>Ranking by final validation loss</h3>",
             '<p class="note">Mean over seeds with 95% Student-t intervals; n = seeds used (+kx: '
             "k seeds excluded); ppl* = exp(mean loss); delta = group minus reference; paired "
             "t-test by seed (Welch otherwise); p Holm adjusts for all comparisons.</p>",
             _ranking(summary)]
    parts += _split_tables(summary, epochs)
    if summary.get("excluded_runs"):
        parts.append("<h3>Runs left out of the statistics</h3><ul>" + "".join(
            f"<li>{_esc(rid)} ({_esc(e['group'])}, seed {_esc(e['seed'])}): "
            f"{_esc(e['status'] + ended_at(e))}</li>"
            for rid, e in summary["excluded_runs"].items()) + "</ul>")
    parts += [f"<h3>Runs ({len(runs)})</h3>",
              '<p class="note">Final metrics of every run; runs.csv has these and every resolved '
              "configuration column.</p>", _runs_table(runs)]
    if figures:
        parts.append("<h2>Figures</h2>")
        parts += [_figure(name, spec) for name, spec in figures.items()]
    parts.append("</section>")
    return "\n".join(parts) + "\n"


def write_results_page(runs_csv: str | Path, summary_json: str | Path, out: str | Path, *,
                       study: str, figures: Mapping[str, Mapping[str, Any]] | None = None,
                       curves: str | Path | None = None, phase1_dir: str | Path | None = None,
                       maximize: bool = False) -> Path:
    """Read a harvested study's runs.csv and summary.json (and curves.parquet, for the losses
    per epoch; a two-phase study's ``phase1_dir`` with its runs.csv, selected.json and
    ranking.png, ranked higher first with ``maximize``) and write its results page to ``out``."""
    import pandas as pd

    runs = pd.read_csv(runs_csv)
    summary = json.loads(Path(summary_json).read_text())
    epochs = epoch_table(pd.read_parquet(curves)) if curves is not None else None
    phase1 = None
    if phase1_dir is not None:
        d = Path(phase1_dir)
        phase1 = {"runs": pd.read_csv(d / "runs.csv"), "maximize": maximize,
                  "chosen": json.loads((d / "selected.json").read_text()),
                  "figure": d / "ranking.png" if (d / "ranking.png").is_file() else None}
    atomic_write_text(Path(out), results_html(runs, summary, study, figures, epochs, phase1))
    return Path(out)
