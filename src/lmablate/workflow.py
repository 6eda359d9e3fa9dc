"""The steps behind the Snakemake rules, as plain functions (no Snakemake import).

Each ``workflow_scripts/*.py`` redirects stderr to the rule's log and calls one of these through
:func:`run_step`, which logs timing, turns a user-fixable :class:`LmablateError` into one line
(the full traceback stays in the log) and lets real bugs fail the job loudly.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import LmablateError

__all__ = ["run_step", "setup_logging", "train_tokenizer_step", "tokenize_step", "train_run_step",
           "plot_study_step"]


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_step(fn: Callable[[], Any]) -> Any:
    setup_logging()
    log = logging.getLogger("lmablate")
    t0 = time.perf_counter()
    try:
        result = fn()
    except LmablateError as err:
        traceback.print_exc(file=sys.stderr)
        print(f"lmablate: error: {err}", file=sys.stderr, flush=True)
        if sys.stderr is not sys.__stderr__:  # the rule's log took stderr; tell the terminal too
            print(f"lmablate: error: {err}", file=sys.__stderr__, flush=True)
        raise SystemExit(1) from None
    log.info("step finished in %.1f s", time.perf_counter() - t0)
    return result


def train_tokenizer_step(manifest: str | None, tokenizer: Mapping[str, Any], val_fraction: float,
                         out: str) -> dict:
    """Build the tokenizer from the train side of the corpus (a copy for ``kind: file``)."""
    from .config import TokenizerConfig, from_dict
    from .corpora import load_manifest, split_documents
    from .tokenizer import build_tokenizer

    cfg = from_dict(TokenizerConfig, dict(tokenizer), "tokenizer")
    docs = iter(())
    if manifest:
        man = load_manifest(manifest)
        docs = (d for _, d in split_documents(man, val_fraction, split="train"))
    meta = build_tokenizer(cfg, docs, out)
    logging.getLogger("lmablate").info("tokenizer: %s", meta)
    return meta


def tokenize_step(spec: Mapping[str, Any], manifest: str | None, tokenizer: str | None, out: str,
                  val_fraction: float) -> dict:
    """Text corpora are encoded with the tokenizer; pre-tokenized (hdf5) ones are imported."""
    from .corpora import located
    from .tokens import encode_corpus, import_hdf5

    if spec["source"] == "hdf5":
        return import_hdf5(located(spec), out, tokenizer_path=tokenizer)
    return encode_corpus(manifest, tokenizer, out, val_fraction=val_fraction)


RUN_META_KEYS = ("run_id", "variant", "seed", "axes", "diff", "data_id", "tok_id")


def train_run_step(run: Mapping[str, Any], tokens: str, out_dir: str | Path, *, study: str,
                   ckpt_dir: str, threads: int | None = None, device: str = "auto",
                   runs_per_gpu: int | None = None, cohort: str | None = None,
                   init_from: str | None = None) -> dict:
    """Train one run of a study from its ``Run.to_dict()`` on a GPU slot (or the CPU).

    ``runs_per_gpu``: runs sharing one GPU; default from the model size
    (:func:`lmablate.gpu.default_runs_per_gpu`). ``cohort``, ``init_from``: see
    :func:`lmablate.train.train` (two-phase studies)."""
    from . import accounting
    from .config import SECTIONS, ModelConfig, from_dict
    from .gpu import claim_device, default_runs_per_gpu
    from .train import train

    cfg = {k: run[k] for k in SECTIONS}
    meta = {"study": study, **{k: run[k] for k in RUN_META_KEYS if k in run}}
    if runs_per_gpu is None:
        model = from_dict(ModelConfig, cfg["model"])
        vocab = model.vocab_size or cfg["tokenizer"].get("vocab_size", 50_000)
        runs_per_gpu = default_runs_per_gpu(accounting.param_counts(model, vocab, 1024)["total"])
    with claim_device(device, slots=runs_per_gpu) as dev:
        return train(cfg, tokens, out_dir, ckpt_dir=ckpt_dir, run_id=run["run_id"], meta=meta,
                     device=dev, threads=threads, cohort=cohort, init_from=init_from)


def rank_phase1_step(finals: list[str], selected_path: str, ranking: Mapping[str, Any], *,
                     study: str, baseline: str, figure: str | None = None) -> dict[str, Any]:
    """Harvest phase 1 beside ``selected_path`` (runs.csv, analysis.txt, ...), write the
    selection (:func:`lmablate.phases.select`) to it and draw the ranking to ``figure``: each
    configuration's phase-1 metric, best first, the selected runs starred."""
    from . import plots
    from .harvest import harvest, load_results
    from .io import atomic_write_json
    from .phases import select

    out = Path(selected_path).parent
    harvest([Path(f).parent for f in finals], out, study=f"{study} (phase 1)", baseline=baseline)
    runs, _ = load_results(out)
    chosen = select(ranking, runs)
    if not chosen["selected"]:
        from .errors import DataError

        raise DataError("no phase-1 run finished with a finite "
                        f"{chosen['metric']}: nothing to train in phase 2 (see {out}/runs.csv)")
    if figure:
        per = f" per {chosen['per']}" if chosen["per"] else ""
        fig = plots.final_metric(
            runs, baseline, metric=chosen["metric"], selected=chosen["phase1"],
            higher=bool(ranking.get("maximize")),
            title=f"Phase 1 of {study}: {len(chosen['selected'])} of {len(runs)} runs go on "
                  f"(top {chosen['top_k']}{per} by {chosen['metric']})")
        plots.save(fig, figure)
    atomic_write_json(selected_path, chosen)
    print(f"phase 2: {len(chosen['selected'])} of {len(finals)} configurations "
          f"({', '.join(chosen['selected'])})", file=sys.__stderr__)
    return chosen


def plot_study_step(runs_path: str, curves_path: str, outputs: Mapping[str, str], *,
                    baseline: str, study: str,
                    figures: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Draw each requested figure (output name -> path) from the harvested tables.

    ``figures`` maps output names to ``{"kind": ..., options}`` (the plan the Snakefile made with
    :func:`lmablate.harvest.plan_figures`); without it the plan is rebuilt from the runs table,
    which gives the same names because it reads the same config columns. The calibration bins and
    the scaling fit are read from reliability.parquet and summary.json beside the runs table.
    """
    import json

    import pandas as pd

    from . import plots
    from .harvest import DEFAULT_FIGURES, load_reliability, plan_figures

    runs, curves = pd.read_parquet(runs_path), pd.read_parquet(curves_path)
    results = Path(runs_path).parent
    summary_path = results / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    reliability = load_reliability(results)
    plan = dict(figures) if figures else plan_figures(runs.to_dict("records"))
    log = logging.getLogger("lmablate")
    for name, path in outputs.items():
        spec = plan.get(name)
        if spec is None and name in DEFAULT_FIGURES:
            kind, opts = DEFAULT_FIGURES[name]
            spec = {"kind": kind, **opts}
        if spec is None:
            raise ValueError(f"figure {name!r} is not in the figure plan {sorted(plan)}")
        opts = {k: v for k, v in spec.items() if k != "kind"}
        fig = plots.draw(spec["kind"], runs, curves, baseline=baseline, summary=summary,
                         reliability=reliability, **opts)
        plots.save(fig, path)
        log.info("%s: %s -> %s", study, name, path)
