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

The steps live in their own modules: reading runs into tables (:mod:`.collect`, groups and
shared runs explained there), statistics (:mod:`.summary`), findings (:mod:`.findings`), the
text outputs (:mod:`.text`); this module runs them in order and writes the files.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmablate.errors import DataError
from lmablate.io import atomic_write_bytes, atomic_write_text
from lmablate.results.collect import collect
from lmablate.results.summary import summarize_runs
from lmablate.results.text import analysis_text, epoch_table, results_markdown

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["harvest", "write_outputs", "summary_json", "load_results", "load_reliability"]


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
                                                           epochs=epochs,
                                                           results_dir=out.as_posix()))
    return summary


def harvest(run_dirs: Sequence[str | Path], out_dir: str | Path, *, study: str,
            baseline: str = "baseline",
            figures: Mapping[str, str] | Callable[[list[dict[str, Any]]], Mapping[str, str]]
            | None = None,
            shared: Mapping[str, Sequence[Sequence[Any]]] | None = None,
            settings: Mapping[str, Sequence[str]] | None = None,
            swept: Sequence[str] = ()) -> dict[str, Any]:
    """Collect lmablate run directories and write every table and text output to ``out_dir``.

    ``figures``: RESULTS.md's figure links, figure name -> the line under it, or a function of
    the runs table's rows that gives them (the workflow plans the figures from the harvested
    runs, :func:`lmablate.figures.plan.plan_figures`); None: no figure section. ``shared``: run
    ID -> the other sweep points ``(variant, axes)`` that resolve to it
    (:func:`lmablate.results.collect.shared_points`); it counts in their groups.
    ``settings``: variant -> the settings the study writes for it
    (:func:`lmablate.study.sweep.written_settings`), for the findings' confound warnings.
    ``swept``: the axes the study varies (:func:`lmablate.results.collect.swept_axes`): group
    names show them even where the runs at hand share a value (a two-phase study's phase 2).
    """
    runs, curves, reliability = collect(run_dirs, shared=shared, swept=swept)
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
