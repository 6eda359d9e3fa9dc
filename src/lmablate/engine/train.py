"""The training loop: setup -> resume -> loop -> finalize, the run's state in one TrainState.

    setup (config, data, model, optimiser) -> resume from the newest checkpoint, if any -> loop:
        lr = get_lr(step)  ->  grad_accum micro-steps  ->  clip  ->  AdamW step
        every log_every: train line   every eval_every: validation   every checkpoint_every: save
    -> finalize: final evaluation -> model.safetensors, trainer_state.json, metrics.jsonl,
       final.json (last)

A run ends ``completed`` or ``diverged`` (NaN/inf, or train loss above ``diverge_loss``); both
write every output and return normally, so a diverged run never fails the workflow. SIGTERM /
SIGUSR1 (Slurm preemption) save a checkpoint at the next step and exit with status 75
(EX_TEMPFAIL) so Snakemake / Slurm retries the job, which then resumes.

Determinism: initialisation from ``train.seed``; batch ``i`` is a pure function of (seed, i)
(:class:`~lmablate.data.tokens.Batches`); RNG states are checkpointed
(:class:`~lmablate.engine.state.TrainState`). On CPU with a fixed thread count, a run killed and
resumed at any step ends with bitwise the same metrics.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmablate.data.tokens import Batches, TokenStore, val_windows
from lmablate.engine.checkpoint import load_latest, save_checkpoint
from lmablate.engine.earlystop import EarlyStop, same_training
from lmablate.engine.integrity import file_manifest
from lmablate.engine.metrics import entropy, gini
from lmablate.engine.schedule import Plan, epoch_ended, get_lr, make_plan
from lmablate.engine.state import TrainState
from lmablate.engine.step import (
    DeviceBatches,
    StepParts,
    build_step,
    keep_cpu_buffers,
    optimizer_step,
    select_device,
)
from lmablate.engine.tracking import Trackers, open_trackers
from lmablate.engine.validation import evaluate, measure_latency
from lmablate.io import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from lmablate.study import accounting
from lmablate.study.config import RunConfig, from_dict, to_dict
from lmablate.units import fmt_params

__all__ = ["EXIT_PREEMPTED", "Preempted", "TrainSetup", "train"]

log = logging.getLogger("lmablate.engine.train")
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"


def train(run: RunConfig | Mapping[str, Any], tokens_path: str | Path, out_dir: str | Path, *,
          ckpt_dir: str | Path | None = None, run_id: str | None = None,
          meta: Mapping[str, Any] | None = None, device: str = "auto", threads: int | None = None,
          resume: bool | str = "auto", progress: bool | None = None,
          stop_after_steps: int | None = None,
          cohort: str | Path | Sequence[str | Path] | None = None,
          init_from: str | Path | None = None,
          tracking: Mapping[str, Any] | None = None,
          on_first_step: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train one run; write its outputs to ``out_dir``; return the contents of final.json.

    ``run``: a RunConfig or its dict; ``meta``: extra identity written to config.yaml (study,
    variant, seed, run_id, ...); ``ckpt_dir``: resumable state (default ``out_dir/ckpt``);
    ``resume``: "auto" (continue from the newest valid checkpoint), False (start over).
    ``stop_after_steps``: stop (checkpointed, not final) after this many steps — for tests.
    ``cohort``: a JSON-lines file the runs of one phase share for early stopping (each appends its
    validation metric per evaluation; without it a run compares against its own best), or a list
    of them (a run in several cohorts is stopped only when it is behind in all of them).
    ``init_from``: a checkpoint dir to continue when ``ckpt_dir`` has none (phase 2 continuing a
    phase-1 run of the same config whose ``train.stop_tokens`` ended it early).
    ``tracking``: the study's ``logging:`` block (TensorBoard, MLflow, W&B;
    lmablate.engine.tracking).
    ``on_first_step``: called once, when this process's first optimiser step is done (a GPU
    slot records its start-up: lmablate.gpu.record_startup).
    """
    t_start = time.perf_counter()
    with TokenStore(tokens_path) as store:  # closed however the run ends
        s = setup(run, store, out_dir, ckpt_dir=ckpt_dir, run_id=run_id, meta=meta, device=device,
                  threads=threads, cohort=cohort, t_start=t_start)
        state = start_or_resume(s, resume=resume, init_from=init_from)
        _write_metrics(s.metrics_path, state.records)  # drop lines logged after the checkpoint
        trackers = open_trackers(tracking, run_id=s.run_id, study=str(s.meta.get("study", "")),
                                 config=s.resolved, state_dir=s.ckpt, step=state.step,
                                 resumed=state.resumed_from is not None)
        stopped = fit(s, state, trackers, progress=progress, stop_after_steps=stop_after_steps,
                      on_first_step=on_first_step)
        if stopped is not None:
            return stopped
        return finalize(s, state, trackers)


# --------------------------------------------------------------------------------------------------
# setup


@dataclass
class TrainSetup:
    """What :func:`setup` builds once per run; the loop reads it and changes only ``parts``'
    model and optimiser (through :class:`~lmablate.engine.state.TrainState`)."""

    cfg: RunConfig
    run_id: str
    meta: Mapping[str, Any]
    resolved: dict[str, Any]  # config.yaml: run_id, meta, config
    out: Path
    ckpt: Path
    device: torch.device
    plan: Plan
    end_step: int  # plan.total_steps, or the step where train.stop_tokens ends phase 1
    parts: StepParts  # model, optimiser, scaler, autocast, the step's loss
    batches: DeviceBatches
    val: np.ndarray  # validation windows of the periodic evaluations
    val_final: np.ndarray  # those of the final one (more tokens)
    test_final: np.ndarray | None  # the test split's, evaluated once on the final model
    train_split_tokens: int
    vocab: int  # the tokenizer's ids
    padded: int  # the model's embedding rows
    max_len: int
    counts: dict[str, int]  # parameter counts
    flops: float  # FLOPs per token
    replaced_chars: int  # non-UTF-8 byte sequences of the corpus that became U+FFFD
    stopper: EarlyStop | None
    diverge_limit: float  # a train loss above this after warmup ends the run as diverged
    t_start: float

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def by_epoch(self) -> bool:
        """An epoch budget: evaluate at each epoch boundary."""
        return self.cfg.train.epochs is not None


def setup(run: RunConfig | Mapping[str, Any], store: TokenStore, out_dir: str | Path, *,
          ckpt_dir: str | Path | None, run_id: str | None, meta: Mapping[str, Any] | None,
          device: str, threads: int | None,
          cohort: str | Path | Sequence[str | Path] | None, t_start: float) -> TrainSetup:
    """Write config.yaml, pick the device, load the splits, build the model and its step."""
    cfg = run if isinstance(run, RunConfig) else from_dict(RunConfig, dict(run))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    run_id = run_id or meta.get("run_id") or out.name
    resolved = {"run_id": run_id, **meta, **to_dict(cfg)}
    _write_config(out / "config.yaml", resolved)

    if threads:
        torch.set_num_threads(threads)
    dev = select_device(device)
    if dev.type == "cpu":
        keep_cpu_buffers()
    train_tokens = store.split("train")
    vocab = store.vocab_size
    padded = cfg.model.padded_vocab(vocab)
    if padded < vocab:
        raise ValueError(f"model.vocab_size {padded} is smaller than the tokenizer's {vocab}")
    plan = make_plan(cfg, len(train_tokens))
    seq_len = cfg.train.seq_len
    max_len = cfg.model.context_length or seq_len
    final_cap = cfg.train.final_eval_tokens or 2_000_000
    batches = Batches(train_tokens, seq_len, cfg.train.batch_size, cfg.train.seed)

    # evaluation runs the model uncompiled: a forward over the evaluation windows takes
    # milliseconds where compiling it took seconds (more with a cold cache), once per run
    parts = build_step(cfg, padded, max_len, dev)
    stop_tokens = cfg.train.stop_tokens
    return TrainSetup(
        cfg=cfg, run_id=run_id, meta=meta, resolved=resolved, out=out,
        ckpt=Path(ckpt_dir) if ckpt_dir else out / "ckpt", device=dev, plan=plan,
        end_step=plan.total_steps if not stop_tokens else min(
            plan.total_steps, math.ceil(stop_tokens / plan.tokens_per_step)),
        parts=parts, batches=DeviceBatches(batches, dev),
        val=val_windows(store.split("val"), seq_len, cfg.train.eval_tokens),
        val_final=val_windows(store.split("val"), seq_len, final_cap),
        test_final=(val_windows(store.split("test"), seq_len, final_cap, split="test")
                    if store.has_split("test") else None),  # a corpus with a `test` source
        train_split_tokens=int(len(train_tokens)), vocab=vocab, padded=padded, max_len=max_len,
        counts=accounting.param_counts(cfg.model, padded, max_len),
        flops=accounting.flops_per_token(cfg.model, padded, seq_len),
        replaced_chars=int(store.attrs.get("replaced_chars", 0)),
        stopper=EarlyStop(cfg, run_id, cohort) if cfg.train.early_stop_delta else None,
        diverge_limit=cfg.train.diverge_loss or (math.log(vocab) + 2.0), t_start=t_start)


def _write_config(path: Path, resolved: Mapping[str, Any]) -> None:
    """config.yaml; the same config leaves a finished run's file (and its time) as it is."""
    import yaml

    text = yaml.safe_dump(dict(resolved), sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)


# --------------------------------------------------------------------------------------------------
# resume


def start_or_resume(s: TrainSetup, *, resume: bool | str,
                    init_from: str | Path | None) -> TrainState:
    """The state of the newest valid checkpoint in ``s.ckpt`` (``resume``), else of a completed
    phase-1 run's in ``init_from``, else step 0."""
    ckpt = load_latest(s.ckpt, map_location=s.device) if resume else None
    if ckpt is None and resume and init_from is not None:
        ckpt = load_latest(Path(init_from), map_location=s.device)
        if ckpt is not None and ckpt.get("status") != "completed":
            log.warning("%s ended %s: not continuing it, starting over", init_from,
                        ckpt.get("status"))
            ckpt = None
    p, config = s.parts, to_dict(s.cfg)
    if ckpt is None:
        log.info("starting %s: %s params, %d steps x %d tokens, device %s, precision %s",
                 s.run_id, fmt_params(s.counts["total"]), s.plan.total_steps,
                 s.plan.tokens_per_step, s.device, p.autocast or "fp32")
        return TrainState.start(p.model, p.optimizer, p.scaler, config, s.run_id, s.device)
    if not same_training(ckpt.get("config"), config, phase=init_from is not None):
        raise ValueError(f"{ckpt['_path']}: checkpoint belongs to a different config; "
                         f"remove {s.ckpt} to start over")
    state = TrainState.from_checkpoint(ckpt, p.model, p.optimizer, p.scaler, config, s.run_id,
                                       s.device)
    log.info("resumed from %s at step %d/%d (%d tokens)", ckpt["_path"], state.step,
             s.plan.total_steps, state.tokens_seen)
    return state


# --------------------------------------------------------------------------------------------------
# the loop


def fit(s: TrainSetup, state: TrainState, trackers: Trackers, *, progress: bool | None,
        stop_after_steps: int | None,
        on_first_step: Callable[[], None] | None = None) -> dict[str, Any] | None:
    """Train from ``state.step`` to the end, a divergence or an early stop; None then.

    Logs, evaluates and checkpoints on the plan's intervals. A SIGTERM / SIGUSR1 checkpoints and
    raises :class:`Preempted`; ``stop_after_steps`` returns ``{"status": "stopped", "step"}``."""
    bar = _progress_bar(s, state, progress)
    t = s.cfg.train
    state.model.train()
    t_window = time.perf_counter()
    with _Preemption() as pre:
        while state.step < s.end_step and state.status == "completed":
            lr, grad_norm = train_step(s, state)
            if on_first_step is not None:
                on_first_step()
                on_first_step = None
            last = state.step == s.end_step
            if state.step % t.log_every == 0 or last or state.step == 1:
                log_train(s, state, lr, grad_norm, t_window, trackers, bar)
                t_window = time.perf_counter()
            epoch = (epoch_ended(state.tokens_seen, s.plan.tokens_per_step, s.train_split_tokens)
                     if s.by_epoch else None)
            if state.status == "completed" and (state.step % s.plan.eval_every == 0 or last
                                                or epoch):
                validate(s, state, trackers, epoch=epoch, last=last)
            if (state.step % s.plan.checkpoint_every == 0 or last or state.status != "completed"
                    or pre.signal):
                save_checkpoint(state.to_checkpoint(), s.ckpt, state.step, keep=t.keep_checkpoints)
            if pre.signal:
                log.warning("signal %d: checkpointed at step %d, exiting for requeue", pre.signal,
                            state.step)
                _close(bar, trackers)
                raise Preempted(pre.signal, s.ckpt)
            if stop_after_steps is not None and state.step >= stop_after_steps and not last:
                _close(bar, trackers)
                return {"status": "stopped", "step": state.step}
    if bar is not None:
        bar.close()
    return None


def train_step(s: TrainSetup, state: TrainState) -> tuple[float, torch.Tensor]:
    """One optimiser step: ``grad_accum`` micro-batches forward and backward, clip, AdamW.
    Returns (learning rate, gradient norm before clipping)."""
    t0 = time.perf_counter()
    p, accum = s.parts, s.cfg.train.grad_accum
    lr = get_lr(state.step, s.cfg, s.plan)
    for group in p.optimizer.param_groups:
        group["lr"] = lr
    for micro in range(accum):
        w = s.batches.get(state.step * accum + micro)  # (B, T + 1)
        if p.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss, total_loss = p.loss(w)
        if p.scaler is not None:
            p.scaler.scale(total_loss).backward()
        else:
            total_loss.backward()
        state.window_loss += loss.detach() / accum
        if s.by_epoch:
            state.epoch_loss += loss.detach() / accum
    grad_norm = optimizer_step(p.model, p.optimizer, p.scaler, s.cfg.train.grad_clip)
    state.step += 1
    state.tokens_seen += s.plan.tokens_per_step
    state.window_n += 1
    state.epoch_n += 1
    state.train_time += time.perf_counter() - t0
    return lr, grad_norm


def log_train(s: TrainSetup, state: TrainState, lr: float, grad_norm: torch.Tensor,
              t_window: float, trackers: Trackers, bar: Any) -> None:
    """The train line of the steps since the last one (mean loss, LR, grad norm, tokens/s, the
    window having started at ``t_window``); marks the run diverged on a non-finite loss or one
    above the limit after warmup."""
    t_sync = time.perf_counter()
    mean_loss = (state.window_loss / state.window_n).item()  # the only host sync per window
    state.train_time += time.perf_counter() - t_sync  # the device work queued until now
    elapsed = time.perf_counter() - t_window
    rec = {"step": state.step, "tokens": state.tokens_seen, "split": "train", "loss": mean_loss,
           "lr": lr, "grad_norm": float(grad_norm),
           "tokens_per_s": state.window_n * s.plan.tokens_per_step / max(elapsed, 1e-9)}
    _record(s, state, rec, trackers)
    if bar is not None:
        bar.update(state.window_n * s.plan.tokens_per_step)
        bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
    else:
        log.info("step %d/%d tokens %d loss %.4f lr %.2e %.0f tok/s", state.step,
                 s.plan.total_steps, state.tokens_seen, mean_loss, lr, rec["tokens_per_s"])
    state.window_loss.zero_()
    state.window_n = 0
    if not math.isfinite(mean_loss) or (state.step > s.plan.warmup_steps
                                        and mean_loss > s.diverge_limit):
        state.status, state.diverged_at = "diverged", state.step
        log.warning("run diverged at step %d: train loss %s (limit %.2f)", state.step, mean_loss,
                    s.diverge_limit)


def validate(s: TrainSetup, state: TrainState, trackers: Trackers, *, epoch: int | None,
             last: bool) -> None:
    """Evaluate on the validation windows and log the record (at an epoch's end with its number
    and mean train loss); early stopping then decides whether the run goes on."""
    rec = _val_record(s, state)
    if epoch:  # the epoch's number and its mean training loss, on the eval record
        rec["epoch"] = epoch
        rec["epoch_train_loss"] = (state.epoch_loss / max(1, state.epoch_n)).item()
        state.epoch_loss.zero_()
        state.epoch_n = 0
    _record(s, state, rec, trackers)
    log.info("eval step %d: val loss %.4f ppl %.2f acc %.3f", state.step, rec["loss"], rec["ppl"],
             rec["acc"])
    stopper, t = s.stopper, s.cfg.train
    if stopper is None:
        return
    # the last evaluation still informs the cohort
    state.worse_since = stopper.update(state.tokens_seen, rec, state.worse_since, state.records)
    if not last and state.worse_since is not None and \
            state.tokens_seen - state.worse_since >= t.early_stop_tokens:
        state.status = "stopped_early"
        log.warning("stopping early at step %d: val %s %.4f has been worse than the cohort's "
                    "best by >= %g since %d tokens", state.step, t.early_stop_metric,
                    stopper.value(rec), t.early_stop_delta, state.worse_since)


def _val_record(s: TrainSetup, state: TrainState) -> dict[str, Any]:
    """The validation record at this step (with the experts' routing of the training tokens
    since the last one, for MoE models); updates the best validation loss."""
    model = s.parts.model
    train_load = model.pop_expert_load()  # routing of the training tokens since last eval
    t0 = time.perf_counter()
    res = evaluate(s.parts.model, s.val, batch_size=s.cfg.train.batch_size, device=s.device,
                   autocast=s.parts.autocast, vocab_size=s.vocab)
    rec = {"step": state.step, "tokens": state.tokens_seen, "split": "val", **res,
           "eval_s": time.perf_counter() - t0}
    model.pop_expert_load()  # drop the validation tokens' routing
    if train_load is not None:
        total = np.asarray(train_load).sum(0)
        rec["expert_load"] = [float(x) for x in total / max(1.0, total.sum())]
        rec["expert_gini"] = gini(total)
        rec["expert_entropy"] = entropy(total)
    if math.isfinite(res["loss"]):
        state.best_val = min(state.best_val, res["loss"])
    return rec


def _record(s: TrainSetup, state: TrainState, rec: dict[str, Any], trackers: Trackers) -> None:
    """Append a metrics record: to the state, to metrics.jsonl, to the trackers."""
    state.records.append(rec)
    with open(s.metrics_path, "a") as fh:
        fh.write(json.dumps(rec) + "\n")
    trackers.log(rec)


def _progress_bar(s: TrainSetup, state: TrainState, progress: bool | None) -> Any:
    """A tqdm bar over the run's tokens (default: when stderr is a terminal), or None."""
    if not (sys.stderr.isatty() if progress is None else progress):
        return None
    from tqdm import tqdm

    return tqdm(total=s.plan.total_tokens, initial=state.tokens_seen, unit="tok",
                unit_scale=True, desc=s.run_id[:40], dynamic_ncols=True)


def _close(bar: Any, trackers: Trackers) -> None:
    if bar is not None:
        bar.close()
    trackers.close()


# --------------------------------------------------------------------------------------------------
# finalize: the final evaluation and the outputs (final.json last: it marks the run as done)


def finalize(s: TrainSetup, state: TrainState, trackers: Trackers) -> dict[str, Any]:
    """Evaluate the final model, write every output, return final.json's contents."""
    final = final_metrics(s, state)
    write_outputs(s, state, final)
    trackers.finish(final)
    log.info("done %s: status %s, val loss %s, %.0f tok/s, %.1f s", s.run_id, state.status,
             final.get("val_loss"), final["tokens_per_s"], final["wall_s"])
    return final


def final_metrics(s: TrainSetup, state: TrainState) -> dict[str, Any]:
    """final.json's metrics: the final validation (and test) evaluation, the curves' summary,
    sizes, speed and the machine."""
    status, dev, autocast = state.status, s.device, s.parts.autocast
    final: dict[str, Any] = {"run_id": s.run_id, "status": status, "steps": state.step,
                             "tokens": state.tokens_seen, "planned_tokens": s.plan.total_tokens,
                             "diverged_at_step": state.diverged_at}
    if status == "stopped_early":
        final["stopped_early_at_step"] = state.step
    if status in ("completed", "stopped_early"):
        batch = s.cfg.train.batch_size
        res = evaluate(s.parts.model, s.val_final, batch_size=batch, device=dev,
                       autocast=autocast, vocab_size=s.vocab, reliability=True)
        final.update({f"val_{k}": v for k, v in res.items() if k != "reliability"})
        final["reliability"] = res["reliability"]
        if s.test_final is not None:  # the test split: once, on the final model only
            res = evaluate(s.parts.model, s.test_final, batch_size=batch, device=dev,
                           autocast=autocast, vocab_size=s.vocab)
            final.update({f"test_{k}": v for k, v in res.items()})
            log.info("test loss %.4f ppl %.2f", res["loss"], res["ppl"])
        final.update(measure_latency(s.parts.model, dev, autocast, s.vocab, s.max_len))
    records = state.records
    vals = [r["loss"] for r in records if r["split"] == "val" and math.isfinite(r["loss"])]
    final["best_val_loss"] = min(vals + [final.get("val_loss", math.inf)]) if (
        vals or "val_loss" in final) else None
    trains = [r for r in records if r["split"] == "train"]
    final["final_train_loss"] = trains[-1]["loss"] if trains else None
    expert = [r for r in records if "expert_gini" in r]
    if expert:
        final["expert_gini"] = expert[-1]["expert_gini"]
        final["expert_entropy"] = expert[-1]["expert_entropy"]
    train_time = state.train_time
    final.update({
        "params": s.counts, "flops_per_token": s.flops, "vocab_size": s.vocab,
        "padded_vocab_size": s.padded, "train_split_tokens": s.train_split_tokens,
        # non-UTF-8 byte sequences of the corpus that became U+FFFD (lmablate.data.corpora)
        "data_replaced_chars": s.replaced_chars,
        "epochs": state.tokens_seen / max(1, s.train_split_tokens),
        "train_wall_s": train_time, "tokens_per_s": state.tokens_seen / max(train_time, 1e-9),
        "wall_s": time.perf_counter() - s.t_start, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        # which physical GPU (nvidia-smi's UUID): "cuda:0" is whatever CUDA_VISIBLE_DEVICES left
        "device_uuid": _gpu_uuid(dev),
        "precision": str(autocast).replace("torch.", "") if autocast else "fp32",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "peak_mem_mb": (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda"
                        else _peak_rss_mb()),
    })
    return final


def write_outputs(s: TrainSetup, state: TrainState, final: dict[str, Any]) -> None:
    """model.safetensors, metrics.jsonl, trainer_state.json, then final.json (with the hashes
    and sizes of the others: checked at every Snakefile parse and by harvest)."""
    from safetensors.torch import save

    out = s.out
    seen, unique = set(), {}
    for k, v in s.parts.model.state_dict().items():  # tied weights: store once
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            unique[k] = v.detach().contiguous().cpu()
    # atomically, with the umask's permissions (safetensors' own save_file makes 0600 files)
    atomic_write_bytes(out / "model.safetensors",
                       save(unique, metadata={"run_id": s.run_id, "format": "pt"}))
    _write_metrics(s.metrics_path, state.records)
    final["metrics_sha256"] = sha256_file(s.metrics_path)  # harvest checks metrics.jsonl with it
    atomic_write_json(out / "trainer_state.json",
                      _trainer_state(state.records, s.plan, s.cfg, s.train_split_tokens,
                                     final["best_val_loss"], s.flops))
    # what final.json vouches for: sizes checked at every Snakefile parse, hashes by harvest
    final["files"] = file_manifest(out)
    atomic_write_json(out / "final.json", final)


def _trainer_state(records: list[dict], plan: Plan, cfg: RunConfig, train_tokens: int,
                   best: float | None, flops: float) -> dict[str, Any]:
    """Hugging Face Trainer's trainer_state.json, so tools that read HF runs read ours."""
    history = []
    for r in records:
        epoch = r["tokens"] / max(1, train_tokens)
        if r["split"] == "train":
            history.append({"epoch": epoch, "grad_norm": r.get("grad_norm"),
                            "learning_rate": r["lr"], "loss": r["loss"], "step": r["step"]})
        elif r["split"] == "val":
            history.append({"epoch": epoch, "eval_loss": r["loss"], "eval_perplexity": r["ppl"],
                            "eval_accuracy": r["acc"], "eval_runtime": r.get("eval_s"),
                            "step": r["step"]})
    return {
        "best_global_step": None, "best_metric": best, "best_model_checkpoint": None,
        "epoch": plan.total_tokens / max(1, train_tokens), "eval_steps": plan.eval_every,
        "global_step": records[-1]["step"] if records else 0, "is_hyper_param_search": False,
        "is_local_process_zero": True, "is_world_process_zero": True, "log_history": history,
        "logging_steps": cfg.train.log_every, "max_steps": plan.total_steps,
        "num_input_tokens_seen": records[-1]["tokens"] if records else 0,
        "num_train_epochs": math.ceil(plan.total_tokens / max(1, train_tokens)),
        "save_steps": plan.checkpoint_every, "total_flos": flops * plan.total_tokens,
        "train_batch_size": cfg.train.batch_size, "trial_name": None, "trial_params": None,
    }


def _write_metrics(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


# --------------------------------------------------------------------------------------------------
# signals


class _Preemption:
    """SIGTERM/SIGUSR1 set a flag; the loop checkpoints at the next step boundary and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Preemption:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. notebooks' workers)
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Preempted(SystemExit):
    def __init__(self, signum: int, path: Path):
        super().__init__(EXIT_PREEMPTED)
        self.signum, self.path = signum, path


def _gpu_uuid(dev: torch.device) -> str | None:
    if dev.type != "cuda":
        return None
    uuid = getattr(torch.cuda.get_device_properties(dev), "uuid", None)
    return f"GPU-{uuid}" if uuid is not None else None


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
