"""The steps behind the Snakemake rules, as plain functions (no Snakemake import).

Each ``workflow_scripts/*.py`` redirects stderr to the rule's log and calls one of these through
:func:`run_step`, which logs timing, turns a user-fixable :class:`LmablateError` into one line
(the full traceback stays in the log) and lets real bugs fail the job loudly.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn, TextIO

from lmablate.errors import LmablateError, missing_extra, require

__all__ = ["run_step", "fail", "error_line", "setup_logging", "open_attempt_log",
           "train_tokenizer_step", "tokenize_step", "train_run_step", "harvest_step",
           "plot_study_step"]


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


ATTEMPT_MARK = "=== lmablate: attempt"


class _Tee(io.TextIOBase):
    """A text stream that writes (and flushes) to ``main`` and a ``copy``; a copy that fails
    (a full disk) is dropped, so it never hides what is written to ``main``."""

    def __init__(self, main: TextIO, copy: TextIO) -> None:
        self.main, self.copy = main, copy

    def _to_copy(self, op: Callable[[TextIO], Any]) -> None:
        if self.copy is not None:
            try:
                op(self.copy)
            except OSError:
                self.copy = None

    def write(self, text: str) -> int:
        self.main.write(text)
        self._to_copy(lambda f: f.write(text))
        return len(text)

    def flush(self) -> None:
        self.main.flush()
        self._to_copy(lambda f: f.flush())

    def fileno(self) -> int:
        return self.main.fileno()

    def close(self) -> None:
        if not self.closed:
            super().close()  # flushes both
            self._to_copy(lambda f: f.close())
            self.main.close()


def open_attempt_log(log: str | Path, history: str | Path) -> TextIO:
    """The stream for one attempt of a job whose earlier attempts' lines must survive.

    Snakemake deletes a job's ``log:`` before every attempt (a retry, a Slurm requeue, a rerun),
    so the lines also go to ``history``, a file Snakemake does not manage: ``log`` is rewritten as
    the history so far, then a marker line (attempt number, UTC time, ``SLURM_JOB_ID``,
    ``SLURM_RESTART_COUNT``), then this attempt's lines, each written to both files."""
    history = Path(history)
    try:
        history.parent.mkdir(parents=True, exist_ok=True)
        earlier = history.read_text(errors="replace") if history.exists() else ""
        copy = open(history, "a", buffering=1)
    except OSError as err:  # (a file where the folder belongs): the step meets it and says so
        out = open(log, "w", buffering=1)
        out.write(f"lmablate: warning: earlier attempts' lines are not kept: {history}: "
                  f"{err.strerror}\n")
        return out
    attempt = sum(line.startswith(ATTEMPT_MARK) for line in earlier.splitlines()) + 1
    out = open(log, "w", buffering=1)
    stream = _Tee(out, copy)
    job = os.environ.get("SLURM_JOB_ID", "-")
    try:
        out.write(earlier)
        if earlier and not earlier.endswith("\n"):
            stream.write("\n")  # the earlier attempt was killed mid-line
        stream.write(f"{ATTEMPT_MARK} {attempt} at "
                     f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ} "
                     f"SLURM_JOB_ID={job} SLURM_RESTART_COUNT={_slurm_restarts(job)}\n")
    except OSError:  # the log's disk is full: the step's lines (and its error) go to stderr
        for fh in (out, copy):
            try:
                fh.close()
            except OSError:
                pass
        return sys.__stderr__
    return stream


def _slurm_restarts(job: str) -> str:
    """How often Slurm restarted (requeued) job ``job``: ``SLURM_RESTART_COUNT``, else
    ``scontrol``'s ``Restarts=`` (the Slurm executor's job step drops that variable); "-"
    outside Slurm or where scontrol does not answer."""
    if "SLURM_RESTART_COUNT" in os.environ or job == "-":
        return os.environ.get("SLURM_RESTART_COUNT", "-")
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "-"
    found = re.search(r"\bRestarts=(\d+)", out)
    return found[1] if found else "-"


def run_step(fn: Callable[[], Any]) -> Any:
    setup_logging()
    log = logging.getLogger("lmablate")
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as err:  # noqa: BLE001 (every failure ends as one line; bugs keep a traceback)
        fail(err)
    log.info("step finished in %.1f s", time.perf_counter() - t0)
    return result


def error_line(err: BaseException) -> str:
    """The one line a failed step leaves: an LmablateError's message; an OSError's path and cause
    (a read-only or full file system, a file where a folder belongs); else, for a bug, the
    exception's type and first line."""
    err = missing_extra(err) or err  # a module an extra installs: the extra, in one line
    if isinstance(err, LmablateError):
        return f"lmablate: error: {err}"
    if isinstance(err, OSError) and err.strerror:
        where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        return f"lmablate: error: {where or _file_of(err) or 'writing'}: {err.strerror}"
    first = (str(err).strip().splitlines() or [""])[0]
    return (f"lmablate: error: {type(err).__name__}{': ' if first else ''}{first} (unexpected: "
            "a bug in lmablate or a library it uses; the traceback is in the job's log)")


def _file_of(err: BaseException) -> str | None:
    """The file an OSError without a file name was about (a write or flush that found the disk
    full): an open file, else a ``path``, of the innermost frame of its traceback that has one."""
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        names = frame.f_locals
        for value in names.values():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return value.name
        if isinstance(names.get("path"), (str, Path)):
            return str(names["path"])
    return None


def _say(line: str, stream: Any) -> bool:
    """Write ``line`` to ``stream`` now; False when it cannot (a full disk, a closed file)."""
    try:
        print(line, file=stream, flush=True)
        return True
    except (OSError, ValueError):
        return False


def fail(err: BaseException) -> NoReturn:
    """End the step: the traceback and :func:`error_line` in the rule's log (when the script
    pointed stderr there and the log can still be written), the line on the terminal (the real
    stderr Snakemake shows), exit status 1."""
    line = error_line(err)
    logged = sys.stderr is not sys.__stderr__
    if logged:
        try:
            traceback.print_exception(err, file=sys.stderr)
        except (OSError, ValueError):
            pass
        logged = _say(line, sys.stderr)
        if not logged:  # a full disk or a broken log: drop it, so exiting adds no noise
            broken, sys.stderr = sys.stderr, sys.__stderr__
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.StreamHandler):
                    handler.stream = sys.__stderr__  # not setStream(): it flushes the old one
            try:
                broken.close()
            except (OSError, ValueError):
                pass
    _say(line, sys.__stderr__)
    raise SystemExit(1) from None


def train_tokenizer_step(manifest: str | None, tokenizer: Mapping[str, Any], val_fraction: float,
                         out: str) -> dict:
    """Build the tokenizer from the train side of the corpus (a copy for ``kind: file``)."""
    from lmablate.data.corpora import load_manifest, split_documents
    from lmablate.data.tokenizer import build_tokenizer
    from lmablate.study.config import TokenizerConfig, from_dict

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
    from lmablate.data.tokens import encode_corpus, import_hdf5
    from lmablate.study.corpus_spec import located

    if spec["source"] == "hdf5":
        return import_hdf5(located(spec), out, tokenizer_path=tokenizer)
    return encode_corpus(manifest, tokenizer, out, val_fraction=val_fraction)


RUN_META_KEYS = ("run_id", "variant", "seed", "axes", "diff", "data_id", "tok_id")


def train_run_step(run: Mapping[str, Any], tokens: str, out_dir: str | Path, *, study: str,
                   ckpt_dir: str, threads: int | None = None, device: str = "auto",
                   runs_per_gpu: int | None = None, cohort: str | list[str] | None = None,
                   init_from: str | None = None,
                   tracking: Mapping[str, Any] | None = None) -> dict:
    """Train one run of a study from its ``Run.to_dict()`` on a GPU slot (or the CPU).

    ``runs_per_gpu``: runs sharing one GPU; default from the model size
    (:func:`lmablate.gpu.default_runs_per_gpu`). ``cohort``, ``init_from``: see
    :func:`lmablate.engine.train.train` (two-phase studies); ``tracking``: the study's ``logging:``
    block (:mod:`lmablate.engine.tracking`)."""
    require("torch", "training")
    from lmablate.engine.train import train
    from lmablate.gpu import (claim_device, default_runs_per_gpu, process_age, record_startup,
                              warn_uncached_bytecode)
    from lmablate.study import accounting
    from lmablate.study.config import SECTIONS, ModelConfig, from_dict

    cfg = {k: run[k] for k in SECTIONS}
    meta = {"study": study, **{k: run[k] for k in RUN_META_KEYS if k in run}}
    if runs_per_gpu is None:
        model = from_dict(ModelConfig, cfg["model"])
        vocab = model.vocab_size or cfg["tokenizer"].get("vocab_size", 50_000)
        runs_per_gpu = default_runs_per_gpu(accounting.param_counts(model, vocab, 1024)["total"])
    with claim_device(device, slots=runs_per_gpu) as dev:
        logging.getLogger("lmablate").info("device %s, runs_per_gpu %d", dev, runs_per_gpu)
        warn_uncached_bytecode()
        return train(cfg, tokens, out_dir, ckpt_dir=ckpt_dir, run_id=run["run_id"], meta=meta,
                     device=dev, threads=threads, cohort=cohort, init_from=init_from,
                     tracking=tracking, on_first_step=lambda: record_startup(process_age()))


def rank_phase1_step(finals: list[str], selected_path: str, ranking: Mapping[str, Any], *,
                     study: str, baseline: str, figure: str | None = None,
                     figures: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Harvest phase 1 beside ``selected_path`` (runs.csv, analysis.txt, ...), write the
    selection (:func:`lmablate.results.selection.select`) to it and draw the ranking to
    ``figure``: each configuration's phase-1 metric, best first, the selected runs starred.
    ``figures``: the plan of the figures drawn from phase 1 (``plots/`` beside it), the ones its
    RESULTS.md links."""
    from lmablate.figures.finals import final_metric
    from lmablate.figures.plan import figure_lines
    from lmablate.figures.style import save
    from lmablate.io import atomic_write_json
    from lmablate.results.harvest import harvest, load_results
    from lmablate.results.selection import select, selection_finding

    out = Path(selected_path).parent
    harvest([Path(f).parent for f in finals], out, study=f"{study} (phase 1)", baseline=baseline,
            shared=ranking.get("shared"), figures=figure_lines(figures or {}))
    runs, _ = load_results(out)
    chosen = select(ranking, runs)
    if not chosen["selected"]:
        from lmablate.errors import DataError

        raise DataError("no phase-1 run finished with a finite "
                        f"{chosen['metric']}: nothing to train in phase 2 (see {out}/runs.csv)")
    if figure:
        per = f" per {chosen['per']}" if chosen["per"] else ""
        n_go = len(chosen["selected"])
        go = "goes" if n_go == 1 else "go"
        fig = final_metric(
            runs, baseline, metric=chosen["metric"], selected=chosen["phase1"],
            higher=bool(ranking.get("maximize")),
            title=f"Phase 1 of {study}: {n_go} of {len(runs)} runs {go} on "
                  f"(top {chosen['top_k']}{per} by {chosen['metric']})")
        save(fig, figure)
    said = selection_finding(runs, chosen, bool(ranking.get("maximize")))
    if said:  # the selection, stated beside phase 1's findings
        with open(out / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(f"\n## Selected for phase 2\n\n- {said}\n")
        with open(out / "analysis.txt", "a", encoding="utf-8") as f:
            f.write(f"\nSelected for phase 2:\n  - {said}\n")
    atomic_write_json(selected_path, chosen)
    print(f"phase 2: {len(chosen['selected'])} of {len(finals)} configurations "
          f"({', '.join(chosen['selected'])})", file=sys.__stderr__)
    return chosen


# harvest's tables, copied to results/<study>/last_good/ after every successful harvest
HARVEST_TABLES = ("runs.csv", "runs.parquet", "curves.parquet", "reliability.parquet",
                  "summary.json", "analysis.txt", "RESULTS.md")
LAST_GOOD = "last_good"


def harvest_step(finals: list[str], out_dir: str | Path, *, study: str, baseline: str,
                 figures: Any = None, **options: Any) -> dict[str, Any]:
    """Harvest the study's runs into ``out_dir`` and keep a copy of the tables in
    ``out_dir/last_good/``, outside the rule's outputs: Snakemake deletes a job's outputs before
    it runs and again when it fails, so a harvest that meets a damaged run would otherwise leave
    no tables at all. When it fails, the figures drawn from the previous tables move to
    ``last_good/plots/`` beside them, so no stale figure poses as current in ``plots/``.
    ``figures``: the study's figure plan or ``figures:`` pick (None: every figure the harvested
    runs support, :func:`lmablate.figures.plan.plan_figures`), linked from RESULTS.md.
    ``options`` go to :func:`lmablate.results.harvest.harvest`."""
    from lmablate.figures.plan import figure_lines, plan_figures
    from lmablate.results.harvest import harvest

    out = Path(out_dir)
    try:
        summary = harvest([Path(f).parent for f in finals], out, study=study, baseline=baseline,
                          figures=lambda rows: figure_lines(plan_figures(rows, figures)),
                          **options)
    except Exception:
        moved = _retire_figures(out, figures)
        logging.getLogger("lmablate").warning(
            "harvest failed; the last good tables%s are in %s", " and figures" if moved else "",
            out / LAST_GOOD)
        raise
    _keep_last_good(out)
    return summary


def _keep_last_good(out: Path) -> None:
    from lmablate.io import atomic_write_bytes

    for name in HARVEST_TABLES:
        atomic_write_bytes(out / LAST_GOOD / name, (out / name).read_bytes())


def _retire_figures(out: Path, figures: Any) -> list[Path]:
    """Move the study's figures (``plots/<name>.png``; all of ``plots/`` without a plan) to
    ``last_good/plots/``; the ones moved."""
    plots = out / "plots"
    if isinstance(figures, Mapping) and figures:
        paths = [plots / f"{name}.png" for name in figures]
    else:
        paths = sorted(plots.glob("*.png")) if plots.is_dir() else []
    moved = []
    for path in paths:
        if path.is_file():
            dest = out / LAST_GOOD / "plots" / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            moved.append(dest)
    return moved


def plot_study_step(runs_path: str, curves_path: str, outputs: Mapping[str, str], *,
                    baseline: str, study: str,
                    figures: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Draw each requested figure (output name -> path) from the harvested tables.

    ``figures`` maps output names to ``{"kind": ..., options}`` (the plan the Snakefile made with
    :func:`lmablate.figures.plan.plan_figures`); without it the plan is rebuilt from the runs
    table, which gives the same names because it reads the same config columns. The calibration
    bins and the scaling fit are read from reliability.parquet and summary.json beside the runs
    table.
    lmablate's PNGs in the output folders that the plan no longer lists are removed
    (:func:`lmablate.figures.style.remove_stale`).
    """
    import json

    import pandas as pd

    from lmablate.figures.plan import plan_figures
    from lmablate.figures.registry import DEFAULT_FIGURES, draw
    from lmablate.figures.style import remove_stale, save
    from lmablate.results.harvest import load_reliability

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
        fig = draw(spec["kind"], runs, curves, baseline=baseline, summary=summary,
                   reliability=reliability, **opts)
        save(fig, path)
        log.info("%s: %s -> %s", study, name, path)
    folders = {Path(p).parent for p in outputs.values()}  # the LR range test has its own rule
    keep = [*outputs.values(), *(f / "lr_finder.png" for f in folders)]
    for folder in folders:
        for stale in remove_stale(folder, keep):
            log.info("%s: removed %s, a figure the current plan does not list", study, stale)
