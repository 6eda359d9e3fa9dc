"""The run table ``lmablate plan`` prints: what a study will train, before it trains.

One row per run: its ID, the settings that differ from the study's defaults, total and
non-embedding parameters (:func:`lmablate.study.accounting.param_counts`), the memory training it
needs (:func:`train_memory_bytes`; :func:`check_memory` refuses a run that cannot fit its
device), the tokens it trains on, its training FLOPs
(:func:`lmablate.study.accounting.flops_per_token`), whether it already finished, and an estimated
wall
time. The estimate uses the training FLOP rate this study measured on runs
that finished (``final.json``: tokens/s x FLOPs/token, median), so a bigger model gets a longer
estimate; without finished runs, pass a throughput or go without. Totals close the table;
a study with ``eval_tasks:`` then lists its downstream scores and the runs they score
(:func:`task_plan`).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import statistics
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lmablate import gpu, paths
from lmablate.errors import ConfigError
from lmablate.study import accounting
from lmablate.study.config import parse_size
from lmablate.study.load import Study
from lmablate.study.solve import model_vocab
from lmablate.units import fmt_amount, fmt_bytes, fmt_flops, fmt_seconds, plural

__all__ = ["ANY_DEVICE_BYTES", "check_memory", "memory_warning", "runs_over_memory",
           "device_memory", "measured_rate", "plan_table", "plan_totals",
           "planned_tokens", "render", "study_train_rate", "task_plan", "train_memory_bytes",
           "train_runtime_min"]

# The throughput a Slurm time limit assumes when a study neither sets `execution.tokens_per_s`
# nor has finished runs to measure (:func:`train_runtime_min`): deliberately slow, a few percent
# of a current GPU's FLOP rate and at most 1e5 tokens/s however small the model, so that a first
# run is not killed at its limit. This is the one place the default lives.
DEFAULT_TRAIN_FLOPS_PER_S = 1e12
DEFAULT_TRAIN_TOKENS_PER_S = 1e5
# The limit of a run whose token count is unknown until its data is (an `epochs` budget).
DEFAULT_TRAIN_RUNTIME_MIN = 240


def _vocab(run: Any, corpora: Mapping[str, Any] | None = None,
           store: Mapping[str, int] | None = None) -> int:
    """Embedding rows ``run`` trains with. A pre-tokenized (hdf5) corpus brings its own ids:
    its ``vocab_size``, else the imported token store's, sizes the embedding, not the tokenizer
    setting (the shape sweep's 293,708,800
    parameters, not a padded byte vocabulary's 293,987,328)."""
    m, t = run.config.model, run.config.tokenizer
    spec = (corpora or {}).get(run.config.data.corpus) or {}
    if spec.get("source") == "hdf5" and t.kind != "file":
        if spec.get("vocab_size"):
            return m.padded_vocab(int(spec["vocab_size"]))
        if store and store.get("vocab_size"):
            return m.padded_vocab(int(store["vocab_size"]))
    # char/file tokenizers only know their size once trained: estimate with the configured one
    return model_vocab(m, t) or math.ceil(t.vocab_size / m.vocab_multiple) * m.vocab_multiple


def _store(run: Any, workdir: str | Path,
           corpora: Mapping[str, Any] | None = None) -> dict[str, int]:
    """``vocab_size`` and ``train_tokens`` of the run's token store, once it is built
    (``resources/tokens/<corpus>-<data_id>.h5`` under ``workdir``, :data:`lmablate.paths.TOKENS`).
    Before that, a pre-tokenized (hdf5) corpus of fixed-length rows or one stream without a mask
    is counted in its file; other corpora: {} (their size is known once tokenized)."""
    import h5py

    path = Path(workdir) / paths.tokens(run.config.data.corpus, run.data_id)
    try:
        if path.is_file():
            with h5py.File(path, "r") as f:
                return {"vocab_size": int(f.attrs["vocab_size"]),
                        "train_tokens": int(len(f["train"]))}
        spec = (corpora or {}).get(run.config.data.corpus) or {}
        if spec.get("source") != "hdf5" or spec.get("mask") or not spec.get("_abs_train"):
            return {}
        with h5py.File(spec["_abs_train"], "r") as f:
            ds = f[spec["dataset"]]
            if h5py.check_vlen_dtype(ds.dtype) is not None:
                return {}  # ragged rows: their lengths are read when the store is built
            rows = ds.shape[0] if ds.ndim == 2 else 1
            tokens = int(ds.size) + (rows if spec.get("eot_id") is not None else 0)
        budget = spec.get("max_tokens")
        return {"train_tokens": min(tokens, int(budget)) if budget else tokens}
    except (OSError, KeyError, TypeError, ValueError):
        return {}


def _finals(study: Study, results_root: str | Path,
            run_ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    runs_dir = Path(results_root) / study.name / "runs"
    out = {}
    for run_id in study.by_id if run_ids is None else run_ids:
        f = runs_dir / run_id / "final.json"
        if f.is_file():
            try:
                out[run_id] = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
    return out


def measured_rate(finals: dict[str, dict[str, Any]]) -> tuple[str, float] | None:
    """("flops", FLOP/s) or ("tokens", tokens/s): the median over finished runs, if any."""
    flops = sorted(f["tokens_per_s"] * f["flops_per_token"] for f in finals.values()
                   if f.get("tokens_per_s") and f.get("flops_per_token"))
    if flops:
        return "flops", flops[len(flops) // 2]
    tokens = sorted(float(f["tokens_per_s"]) for f in finals.values() if f.get("tokens_per_s"))
    return ("tokens", tokens[len(tokens) // 2]) if tokens else None


def planned_tokens(run: Any, train_tokens: int | None = None) -> int | None:
    """Tokens ``run`` trains on: its budget rounded up to whole steps, as training plans it
    (:func:`lmablate.engine.schedule.make_plan`), ending at ``train.stop_tokens`` where that is
    set (a phase-1 run that stops early on the full schedule). An epoch budget needs the train
    split's size, ``train_tokens``; None without it."""
    t = run.config.train
    budget = t.tokens
    if t.epochs is not None:
        if train_tokens is None:
            return None
        budget = int(t.epochs * train_tokens)
    per_step = t.batch_size * t.grad_accum * t.seq_len
    steps = max(1, math.ceil(budget / per_step))
    if t.stop_tokens:
        steps = min(steps, math.ceil(t.stop_tokens / per_step))
    return steps * per_step


def train_memory_bytes(run: Any, vocab: int | None = None, *, cuda: bool = False) -> int:
    """A rough estimate of the memory training ``run`` needs on its device, in bytes::

        4 x params + 12 x trainable params            fp32 weights; gradients, AdamW m and v
      + batch_size x seq_len x n_layers x (10 x d_model + k x d_ff) x a
                                                      activations kept for the backward pass
      + batch_size x seq_len x vocab x 8              fp32 logits and their gradient

    ``k`` is 3 for gated FFNs, else 2; ``d_ff`` is ``top_k x expert_d_ff`` for MoE layers; ``a``
    is 2 bytes on CUDA under bf16/fp16 autocast (``precision`` auto, bf16, fp16), else 4. A
    micro-batch is ``batch_size`` sequences (``grad_accum`` adds no activations). The attention
    score matrix is not counted (fused attention never stores it), nor workspace and
    fragmentation: the estimate is for refusing what cannot fit, not for packing a device.
    """
    m, t = run.config.model, run.config.train
    vocab = vocab or _vocab(run)
    counts = accounting.param_counts(m, vocab, m.context_length or t.seq_len)
    ffn = m.top_k * (m.expert_d_ff or m.d_ff) if m.num_experts else m.d_ff
    per_value = 2 if cuda and t.precision != "fp32" else 4
    tokens = t.batch_size * t.seq_len
    activations = tokens * m.n_layers * (10 * m.d_model + (3 if m.gated else 2) * ffn) * per_value
    return 4 * counts["total"] + 12 * counts["trainable"] + activations + tokens * vocab * 8


@functools.cache
def device_memory() -> tuple[int, str, bool]:
    """(bytes, what they are, whether a GPU) of the device a run trains on here, read without
    initialising CUDA: the smallest visible GPU's memory (``nvidia-smi``), else the machine's RAM.
    ``LMABLATE_DEVICE_MEMORY`` (e.g. ``80G``) sets it instead, as a GPU's: the memory of the
    GPUs a study is planned for from a machine without them (a laptop, a Slurm login node)."""
    env = os.environ.get("LMABLATE_DEVICE_MEMORY")
    if env:
        value = parse_size(env.strip())
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ConfigError(f"expected a size in bytes such as 80G, got {env!r}",
                              key="LMABLATE_DEVICE_MEMORY")
        return int(value), "LMABLATE_DEVICE_MEMORY", True
    gpus = _gpu_memory()
    if gpus:
        return min(gpus), "the GPU's memory", True
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM", False


def _gpu_memory() -> list[int]:
    """Total memory in bytes of each visible GPU, by nvidia-smi; empty without GPUs."""
    visible = gpu.visible_gpus()
    if not visible:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    sizes = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[2].isdigit() and (parts[0] in visible or parts[1] in visible):
            sizes.append(int(parts[2]) * 2**20)
    return sizes


# No single device a run trains on holds more (an 8-GPU node's memory is not one run's: lmablate
# trains a run on one device). A run above it is refused by `lmablate plan` on any machine.
ANY_DEVICE_BYTES = 2 << 40
ANY_DEVICE = (ANY_DEVICE_BYTES, "any single device", True)


def runs_over_memory(study: Study, limit: tuple[int, str, bool] | None = None
                     ) -> list[tuple[Any, int]]:
    """``(run, bytes needed)`` of the study's runs that cannot fit ``limit`` (by default
    :func:`device_memory`), largest first."""
    size, _, cuda = limit or device_memory()
    over = [(r, train_memory_bytes(r, cuda=cuda)) for r in study.runs]
    return sorted(((r, need) for r, need in over if need > size), key=lambda x: -x[1])


def check_memory(study: Study, limit: tuple[int, str, bool] | None = None) -> None:
    """Refuse a study one of whose runs cannot fit its device (:func:`train_memory_bytes`
    against ``limit``, by default :func:`device_memory`): one line naming the run."""
    size, what, _ = limit = limit or device_memory()
    over = runs_over_memory(study, limit)
    if over:
        run, need = over[0]
        raise ConfigError(f"training needs about {fmt_bytes(need)} (weights, gradients, "
                          "AdamW state, activations: lmablate.study.plan.train_memory_bytes), more "
                          f"than {what} ({fmt_bytes(size)}); to plan for another device, "
                          "set LMABLATE_DEVICE_MEMORY (e.g. 80G)", key=f"run {run.run_id}",
                          file=study.source)


def memory_warning(study: Study) -> str | None:
    """For ``lmablate plan`` on a machine a study is not meant to train on (a laptop, a login
    node): one line naming how many runs cannot fit this machine, or None. (``snakemake`` on
    this machine refuses such a study: :func:`check_memory`.)"""
    size, what, _ = limit = device_memory()
    over = runs_over_memory(study, limit)
    if not over:
        return None
    run, need = over[0]
    one = len(over) == 1
    return (f"lmablate: warning: {study.source}: {len(over)} of "
            f"{plural(len(study.runs), 'run')} {'needs' if one else 'need'} more memory than "
            f"{what} ({fmt_bytes(size)}), up to {fmt_bytes(need)} (run {run.run_id}): "
            f"{'it cannot' if one else 'they cannot'} train here; LMABLATE_DEVICE_MEMORY=80G "
            f"lmablate plan ... checks {'it' if one else 'them'} against another device")


def _flops_per_token(run: Any) -> float:
    return accounting.flops_per_token(run.config.model, _vocab(run), run.config.train.seq_len)


def study_train_rate(study: Study, results_root: str | Path = "results"
                     ) -> float | tuple[str, float] | None:
    """The throughput :func:`train_runtime_min` plans ``study``'s jobs with: the study's
    ``execution.tokens_per_s`` (tokens/s), else :func:`measured_rate` of its finished runs under
    ``results_root``, else None (the conservative default)."""
    if study.execution.get("tokens_per_s"):
        return float(study.execution["tokens_per_s"])
    return measured_rate(_finals(study, results_root))


def train_runtime_min(run: Any, tokens_per_s: float | tuple[str, float] | None = None,
                      margin: float = 2.0, floor: int = 30) -> int:
    """Wall-time limit in minutes (Slurm ``runtime``) for training ``run``: its planned tokens
    at ``tokens_per_s``, times ``margin`` (evaluation, checkpoints, start-up, a slower node),
    at least ``floor``.

    ``tokens_per_s`` is tokens/s, or a :func:`measured_rate` pair (a ``"flops"`` rate is turned
    into this run's tokens/s by its FLOPs per token, so a bigger model gets a longer limit);
    None assumes the slow default above (``DEFAULT_TRAIN_FLOPS_PER_S``, at most
    ``DEFAULT_TRAIN_TOKENS_PER_S``). An epoch budget gets ``DEFAULT_TRAIN_RUNTIME_MIN``.
    """
    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin!r}")
    tokens = planned_tokens(run)
    if tokens is None:
        return max(floor, DEFAULT_TRAIN_RUNTIME_MIN)
    if tokens_per_s is None:
        rate = min(DEFAULT_TRAIN_TOKENS_PER_S, DEFAULT_TRAIN_FLOPS_PER_S / _flops_per_token(run))
    elif isinstance(tokens_per_s, tuple):
        kind, value = tokens_per_s
        rate = value / _flops_per_token(run) if kind == "flops" else value
    else:
        rate = tokens_per_s
    if not rate or rate <= 0 or not math.isfinite(rate):
        raise ValueError(f"expected a throughput > 0, got {tokens_per_s!r}")
    return max(floor, math.ceil(margin * tokens / rate / 60))


def _short_keys(diff: dict[str, Any]) -> str:
    """``d_model=48, lr=0.001``: leaf names, dotted where two sections share a leaf."""
    leaves = [k.split(".")[-1] for k in diff]
    return ", ".join(f"{k.split('.')[-1] if leaves.count(k.split('.')[-1]) == 1 else k}={v}"
                     for k, v in diff.items()) or "-"


def plan_table(study: Study, tokens_per_second: float | None = None,
               results_root: str | Path = "results") -> list[dict[str, Any]]:
    """One dict per run (see the module doc); ``est_seconds`` is None without a rate.

    A two-phase study (``ranking:``) lists its phase-1 runs (``phase`` 1, the short budget) and
    then the runs phase 2 may train (``phase`` 2; with ``resume: continue`` only the tokens left
    after phase 1). An epoch budget's tokens come from the built token store (under
    ``resources/`` beside ``results_root``). A run several sweep points share names the others
    in ``also``."""
    from lmablate.study.phases import ranking_of

    ranking = ranking_of(study)
    planned = [(r, None) for r in study.runs] if ranking is None else [
        *((r, 1) for r in ranking.phase1.values()), *((r, 2) for r in study.runs)]
    finals = _finals(study, results_root, [r.run_id for r, _ in planned])
    rate = ("tokens", tokens_per_second) if tokens_per_second else measured_rate(finals)
    workdir = Path(results_root).parent
    shared = any(r.shared for r in study.runs)
    hdf5 = any(c.get("source") == "hdf5" for c in study.corpora.values())
    stores: dict[tuple[str, str], dict[str, int]] = {}  # one look per token store
    rows = []
    for r, phase in planned:
        key = (r.config.data.corpus, r.data_id)
        if key not in stores:
            stores[key] = _store(r, workdir, study.corpora) if (
                hdf5 or r.config.train.epochs is not None) else {}
        store = stores[key]
        vocab, t = _vocab(r, study.corpora, store), r.config.train
        ctx = r.config.model.context_length or t.seq_len
        counts = accounting.param_counts(r.config.model, vocab, ctx)
        tokens = planned_tokens(r, store.get("train_tokens"))
        if phase == 2 and tokens and ranking.resume == "continue":  # phase 1 trained the rest
            tokens -= planned_tokens(ranking.phase1[ranking.phase1_of[r.run_id]]) or 0
        flops = accounting.flops_per_token(r.config.model, vocab, t.seq_len) * tokens \
            if tokens else None
        est = None
        if rate and tokens:
            est = flops / rate[1] if rate[0] == "flops" else tokens / rate[1]
        rows.append({
            "run_id": r.run_id, "variant": r.variant, "seed": r.seed,
            **({"phase": phase} if ranking else {}),
            **({"also": "; ".join(_point(v, a) for v, a in r.shared)} if shared else {}),
            "differs": _short_keys(r.diff),
            "params": counts["total"], "non_embedding": counts["non_embedding"],
            "trainable": counts["trainable"],
            "memory": train_memory_bytes(r, vocab, cuda=device_memory()[2]),
            "tokens": tokens, "flops": flops,
            "est_seconds": est, "done": r.run_id in finals,
        })
    return rows


def _point(variant: str, axes: Mapping[str, Any]) -> str:
    parts = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in axes.items())
    return f"{variant} ({parts})" if parts else variant


def plan_totals(rows: list[dict[str, Any]], phase2_at_most: int | None = None) -> dict[str, Any]:
    """Runs, tokens, FLOPs and time of the plan. In a two-phase study phase 2 trains at most
    ``phase2_at_most`` of its runs: the totals count phase 1 and that many of the most
    expensive phase-2 runs (an upper bound; the selection is known once phase 1 has run)."""
    phase2 = [r for r in rows if r.get("phase") == 2]
    if phase2 and phase2_at_most is not None:
        phase2.sort(key=lambda r: (r["flops"] or 0, r["tokens"] or 0), reverse=True)
        kept = {id(r) for r in phase2[:phase2_at_most]}
        rows = [r for r in rows if r.get("phase") != 2 or id(r) in kept]
    todo = [r for r in rows if not r["done"]]
    secs = [r["est_seconds"] for r in todo if r["est_seconds"] is not None]
    return {"runs": len(rows), "done": len(rows) - len(todo),
            "variants": len({r["variant"] for r in rows}),
            "tokens": sum(r["tokens"] or 0 for r in rows),
            "flops": sum(r["flops"] or 0 for r in rows),
            "todo_flops": sum(r["flops"] or 0 for r in todo),
            "est_seconds": sum(secs) if secs else None}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def task_plan(study: Study, evaluations: list[Mapping[str, Any]],
              results_root: str | Path = "results") -> dict[str, Any]:
    """What ``lmablate plan`` says of a study's downstream evaluation (``eval_tasks:``).

    ``evaluations``: :meth:`lmablate.evaluation.steps.EvalPlan.evaluations`, one per score a
    run gets. Each comes back with ``rows`` (rows scored: the prepared rows under ``resources/``
    or a scored run's count, capped by its limit; None while unknown) and ``seconds`` (median
    time per run over the runs already scored, from their tasks.json; None before). Runs scored:
    every run of the study, or in a two-phase study only the phase-2 runs phase 1 selects
    (``at_most`` of them); phase-1 runs are ranked, never scored."""
    from lmablate.study.phases import ranking_of

    ranking = ranking_of(study)
    runs_dir, workdir = Path(results_root) / study.name / "runs", Path(results_root).parent
    done: dict[str, dict[str, Any]] = {}  # run ID -> tasks.json + harness.json entries
    for r in study.runs:
        for name in ("tasks.json", "harness.json"):
            data = _read_json(runs_dir / r.run_id / name)
            if data.get("status") == "completed" and isinstance(data.get("tasks"), dict):
                done.setdefault(r.run_id, {}).update(data["tasks"])
    tasks = []
    for e in evaluations:
        entries = [t[e["key"]] for t in done.values() if isinstance(t.get(e["key"]), dict)]
        walls = [float(t["wall_s"]) for t in entries if t.get("wall_s")]
        prepared = _read_json(workdir / e["task_file"]).get("rows", {}) if e["task_file"] else {}
        rows = prepared.get("eval") or next((t["n"] for t in entries if t.get("n")), None)
        if rows is not None and e["limit"]:
            rows = min(int(rows), int(e["limit"]))
        tasks.append({**e, "rows": rows, "seconds": statistics.median(walls) if walls else None,
                      "measured_on": len(walls)})
    n_runs = len(study.runs)
    at_most = min(ranking.phase2_at_most(), n_runs) if ranking else n_runs
    todo = max(0, at_most - len(done))
    secs = [t["seconds"] for t in tasks]
    return {"two_phase": ranking is not None, "runs": n_runs, "at_most": at_most,
            "scored": len(done), "tasks": tasks,
            "est_seconds": todo * sum(secs) if secs and None not in secs else None}


def _task_lines(plan: Mapping[str, Any]) -> list[str]:
    """The plan's downstream-task section: which runs are scored, then a table of the scores
    each gets (rows scored, time per run where measured)."""
    if plan["two_phase"]:
        who = (f"scored only on the phase-2 runs phase 1 selects (at most {plan['at_most']} of "
               f"{plural(plan['runs'], 'phase-2 run')}), never on phase-1 runs")
    else:
        who = f"scored on every run once it has trained ({plural(plan['runs'], 'run')})"
    done = f"; {plan['scored']} already scored" if plan["scored"] else ""
    modes = {"zeroshot": "zero-shot", "finetune": "fine-tuned", "harness": "lm-eval harness"}
    table = [("task", "evaluation", "rows scored", "time per run")]
    for t in plan["tasks"]:
        how = modes[t["mode"]]
        if t["mode"] == "finetune":
            how += f", {plural(t['epochs'], 'epoch')} on <= {t['max_train']:,} train rows"
        elif t["num_fewshot"]:
            how += f", {t['num_fewshot']}-shot"
        rows = (f"{t['rows']:,}" if t["rows"] is not None else
                f"<= {t['limit']:,}" if t["limit"] else "all")
        cost = f"{fmt_seconds(t['seconds'])} (n={t['measured_on']})" if t["seconds"] else "-"
        table.append((t["key"], how, rows, cost))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = ["", f"downstream tasks (eval_tasks): {who}{done}"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    left = plan["at_most"] - plan["scored"]
    if plan["est_seconds"] is not None and left > 0:
        lines.append(f"  about {fmt_seconds(plan['est_seconds'])} of task scoring left "
                     f"({plural(left, 'run')} at the measured times)")
    else:
        lines.append("  time per run: the median over the runs already scored (n); - until one "
                     "is")
    return lines


def render(rows: list[dict[str, Any]], fmt: str, study: Study,
           tasks: Mapping[str, Any] | None = None) -> str:
    """``table`` (aligned text + totals), ``csv`` (rows) or ``json`` (rows + totals). ``tasks``:
    the study's downstream evaluation (:func:`task_plan`), listed after the totals (json: its
    ``eval_tasks`` key)."""
    from lmablate.study.phases import ranking_of

    ranking = ranking_of(study)
    at_most = ranking.phase2_at_most() if ranking else None
    totals = plan_totals(rows, at_most)
    if fmt == "json":
        return json.dumps({"study": study.name, "runs": rows, "totals": totals,
                           **({"eval_tasks": tasks} if tasks else {})}, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")
    cols = [("run_id", "run ID", str), *([("phase", "phase", str)] if ranking else []),
            ("differs", "differs from defaults", str),
            ("params", "params", fmt_amount), ("non_embedding", "non-emb", fmt_amount),
            ("memory", "memory", fmt_bytes), ("tokens", "tokens", fmt_amount),
            ("flops", "FLOPs", fmt_flops), ("est_seconds", "est. time", fmt_seconds),
            ("done", "status", lambda d: "done" if d else "to run")]
    table = [[f(r[k]) for k, _, f in cols] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, (_, h, _) in enumerate(cols)]
    differs = [k for k, _, _ in cols].index("differs")
    widths[differs] = min(widths[differs], 48)
    lines = ["  ".join(h.ljust(w) for (_, h, _), w in zip(cols, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in table:
        cells = [c if len(c) <= w else c[: w - 1] + "…" for c, w in zip(row, widths)]
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    lines.append("")
    done = f", {totals['done']} already done" if totals["done"] else ""
    if totals["done"] == totals["runs"]:
        time_note = "; nothing left to train"
    elif totals["est_seconds"] is not None:
        time_note = (f", about {fmt_seconds(totals['est_seconds'])} of training left at the "
                     "measured rate")
    else:
        time_note = "; no throughput measured yet (pass --tokens-per-second)"
    variants = plural(totals["variants"], "variant")
    lines += [f"{r['run_id']} also stands for {r['also']}" for r in rows if r.get("also")]
    if ranking:
        n1 = sum(r.get("phase") == 1 for r in rows)
        n2 = sum(r.get("phase") == 2 for r in rows)
        per = f" per {ranking.per}" if ranking.per else ""
        lines.append(f"total: {plural(n1, 'phase-1 run')} + at most {at_most} of the "
                     f"{plural(n2, 'phase-2 run')} "
                     f"(top {ranking.top_k}{per}){done} in study {study.name!r}: at most "
                     f"{fmt_amount(totals['tokens'])} tokens, {fmt_flops(totals['flops'])} "
                     f"FLOPs{time_note}")
        return "\n".join(lines + (_task_lines(tasks) if tasks else []))
    unknown = sum(r["tokens"] is None for r in rows)
    epochs = (f" (+ {plural(unknown, 'epoch-budget run')} whose tokens are known once the "
              "token store is built)") if unknown else ""
    lines.append(f"total: {plural(totals['runs'], 'run')} ({variants}){done} in study "
                 f"{study.name!r}: {fmt_amount(totals['tokens'])} tokens, "
                 f"{fmt_flops(totals['flops'])} FLOPs{epochs}{time_note}")
    return "\n".join(lines + (_task_lines(tasks) if tasks else []))
