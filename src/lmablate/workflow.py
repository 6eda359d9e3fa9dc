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

__all__ = ["run_step", "setup_logging", "train_tokenizer_step", "train_run_step",
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
        raise SystemExit(1) from None
    log.info("step finished in %.1f s", time.perf_counter() - t0)
    return result


def train_tokenizer_step(manifest: str, tokenizer: Mapping[str, Any], val_fraction: float,
                         out: str) -> dict:
    from .config import TokenizerConfig, from_dict
    from .corpora import is_val, iter_documents, load_manifest
    from .tokenizer import build_tokenizer

    cfg = from_dict(TokenizerConfig, dict(tokenizer), "tokenizer")
    man = load_manifest(manifest)
    docs = (d for d in iter_documents(man) if not is_val(d, val_fraction))
    meta = build_tokenizer(cfg, docs, out)
    logging.getLogger("lmablate").info("tokenizer: %s", meta)
    return meta


RUN_META_KEYS = ("run_id", "variant", "seed", "axes", "diff", "data_id", "tok_id")


def train_run_step(run: Mapping[str, Any], tokens: str, out_dir: str | Path, *, study: str,
                   ckpt_dir: str, threads: int | None = None, device: str = "auto") -> dict:
    """Train one run of a study from its ``Run.to_dict()``."""
    from .config import SECTIONS
    from .gpu import claim_device
    from .train import train

    cfg = {k: run[k] for k in SECTIONS}
    meta = {"study": study, **{k: run[k] for k in RUN_META_KEYS if k in run}}
    with claim_device(device) as dev:
        return train(cfg, tokens, out_dir, ckpt_dir=ckpt_dir, run_id=run["run_id"], meta=meta,
                     device=dev, threads=threads)


def plot_study_step(runs_path: str, curves_path: str, outputs: Mapping[str, str], *,
                    baseline: str, study: str) -> None:
    import pandas as pd

    from . import plots

    runs, curves = pd.read_parquet(runs_path), pd.read_parquet(curves_path)
    figures = {
        "loss_curves": lambda: plots.loss_curves(runs, curves, baseline,
                                                 title=f"{study}: validation loss vs {baseline} "
                                                       "(mean, 95% CI over seeds)"),
        "final_val_loss": lambda: plots.final_metric(runs, baseline, "val_loss",
                                                     title=f"{study}: final validation loss per "
                                                           "variant (mean, 95% CI; dots = seeds)"),
    }
    for name, path in outputs.items():
        plots.save(figures[name](), path)
