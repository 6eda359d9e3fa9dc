"""The training loop: one function, an explicit state dict, resumable at any step.

    setup (config, data, model, optimiser) -> load checkpoint if any -> loop:
        lr = get_lr(step)  ->  grad_accum micro-steps  ->  clip  ->  AdamW step
        every log_every: train line   every eval_every: validation   every checkpoint_every: save
    -> final evaluation -> model.safetensors, trainer_state.json, metrics.jsonl, final.json (last)

A run ends ``completed`` or ``diverged`` (NaN/inf, or train loss above ``diverge_loss``); both
write every output and return normally, so a diverged run never fails the workflow. SIGTERM /
SIGUSR1 (Slurm preemption) save a checkpoint at the next step and exit with status 75
(EX_TEMPFAIL) so Snakemake / Slurm retries the job, which then resumes.

Determinism: initialisation from ``train.seed``; batch ``i`` is a pure function of (seed, i)
(:class:`~lmablate.data.tokens.Batches`); RNG states are checkpointed. On CPU with a fixed thread
count, a run killed and resumed at any step ends with bitwise the same metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmablate.data.tokens import Batches, TokenStore, val_windows
from lmablate.engine.checkpoint import load_latest, save_checkpoint
from lmablate.engine.integrity import file_manifest
from lmablate.engine.metrics import EvalAccumulator, entropy, gini
from lmablate.engine.model import LM
from lmablate.io import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from lmablate.study import accounting
from lmablate.study.config import RunConfig, from_dict, to_dict
from lmablate.units import fmt_params

__all__ = ["EXIT_PREEMPTED", "DeviceBatches", "Plan", "get_lr", "keep_cpu_buffers",
           "loss_function", "make_plan", "select_device", "train"]

log = logging.getLogger("lmablate.engine.train")
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"


# --------------------------------------------------------------------------------------------------
# the plan: step counts derived from the budget


@dataclass(frozen=True)
class Plan:
    total_steps: int
    tokens_per_step: int
    warmup_steps: int
    eval_every: int
    checkpoint_every: int

    @property
    def total_tokens(self) -> int:
        return self.total_steps * self.tokens_per_step


def make_plan(cfg: RunConfig, train_tokens: int | None = None) -> Plan:
    t = cfg.train
    per_step = t.batch_size * t.grad_accum * t.seq_len
    budget = t.tokens
    if t.epochs is not None:
        if train_tokens is None:
            raise ValueError("an epoch budget needs the size of the train split")
        budget = int(t.epochs * train_tokens)
    total = max(1, math.ceil(budget / per_step))
    warmup = int(t.warmup * total) if t.warmup < 1 else math.ceil(t.warmup / per_step)
    return Plan(total_steps=total, tokens_per_step=per_step, warmup_steps=min(warmup, total),
                eval_every=t.eval_every or max(1, total // 10),
                checkpoint_every=t.checkpoint_every or max(1, total // 10))


def get_lr(step: int, cfg: RunConfig, plan: Plan) -> float:
    """Learning rate at optimiser step ``step`` (0-based): linear warmup, then the schedule."""
    t = cfg.train
    if step < plan.warmup_steps:
        return t.lr * (step + 1) / plan.warmup_steps
    if t.schedule == "constant":
        return t.lr
    decay_steps = max(1, plan.total_steps - plan.warmup_steps)
    progress = min(1.0, (step - plan.warmup_steps) / decay_steps)
    floor = t.lr * t.min_lr_ratio
    if t.schedule == "linear":
        return floor + (t.lr - floor) * (1 - progress)
    return floor + (t.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------------
# devices and precision


def keep_cpu_buffers() -> bool:
    """Make glibc keep freed large blocks in the heap for reuse (``mallopt``), instead of
    returning every buffer above its mmap threshold to the kernel and faulting fresh zeroed
    pages in at the next step: the default study's (1024 x 2048) fp32 logits and their gradient
    are 8 MB each, and the CPU step runs ~10-20% faster (bench/cpu_study.py).
    Costs up to the trim threshold of unreturned memory. False where there is no glibc."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 256 << 20)
                    and libc.mallopt(m_trim_threshold, 512 << 20))
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False


def select_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        try:
            return torch.device(requested)
        except RuntimeError:
            from lmablate.errors import ConfigError

            raise ConfigError(f"expected auto, cpu, cuda or cuda:N, got {requested!r}",
                              key="--device") from None
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _precision(cfg: RunConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler)."""
    p = cfg.train.precision
    if device.type != "cuda":
        if p in ("fp16",):
            raise ValueError("precision fp16 needs a CUDA device")
        return (torch.bfloat16, False) if p == "bf16" else (None, False)
    if p == "auto":
        p = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"bf16": (torch.bfloat16, False), "fp16": (torch.float16, True),
            "fp32": (None, False)}[p]


def _optimizer(model: torch.nn.Module, cfg: RunConfig,
               device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices (dim >= 2) only, not on norms or biases."""
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kwargs: dict[str, Any] = {"lr": t.lr, "betas": (t.beta1, t.beta2), "eps": t.eps}
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: Any,
                   grad_clip: float) -> torch.Tensor:
    """Unscale (fp16), clip the global gradient norm (0 = no clipping), step, zero the grads.
    Returns the norm before clipping."""
    if scaler is not None:
        scaler.unscale_(opt)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                          grad_clip if grad_clip > 0 else float("inf"))
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return norm


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    # the checkpoint is loaded onto the training device; RNG states must be CPU ByteTensors
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        # a run resumed with fewer GPUs visible (each job sees only its own) restores those
        for i, s in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), i)


# --------------------------------------------------------------------------------------------------
# the step's pieces on the device: batches gathered there, the loss compiled with the model

# torch.compile mode of the training loss on CUDA. "reduce-overhead" replays the forward and the
# backward as CUDA graphs: small models are bound by kernel launches, not FLOPs (bench/README.md).
# It needs static shapes and no state kept across steps, so it is used only for dense models
# without grad_accum (see :func:`loss_function`); others get the default mode.
CUDA_COMPILE_MODE: str | None = "reduce-overhead"
# the compile modes that use CUDA graphs, each with its fallback without them
_GRAPH_MODES = {"reduce-overhead": None, "max-autotune": "max-autotune-no-cudagraphs"}
# extra torch._inductor.config options for that compile on CUDA, on top of the mode's own. The
# two-pass logsumexp (online_softmax off) makes the cross-entropy's forward reduction 1.6x faster
# where model.cross_entropy falls back to F.cross_entropy (cs336 step +2.6% on an H100,
# bench/train_throughput.py's lm-noonline); it changes no other kernel of these models.
CUDA_COMPILE_OPTIONS: dict[str, Any] = {"online_softmax": False}
DEVICE_DATA_MAX_BYTES = 2 << 30  # keep the train split on the GPU (int32) when it is this small


class DeviceBatches:
    """:class:`~lmablate.data.tokens.Batches` whose windows are gathered on the device.

    The window starts are the same numpy draws as ``Batches.starts`` (so a batch is still a pure
    function of (seed, index) and equal to the host path's), copied through pinned memory without
    blocking; the token split lives on the GPU as int32, so a step moves ``batch_size`` integers
    to the device instead of a (batch, seq_len + 1) matrix from pageable memory (a host sync).
    On the CPU, or when the split is larger than ``DEVICE_DATA_MAX_BYTES``, it is ``Batches.get``.
    """

    def __init__(self, batches: Batches, device: torch.device):
        self.batches, self.device = batches, device
        tokens = batches.tokens
        self.on_device = (device.type == "cuda" and batches.in_memory
                          and len(tokens) * 4 <= DEVICE_DATA_MAX_BYTES)
        if self.on_device:
            self.tokens = torch.from_numpy(np.asarray(tokens, dtype=np.int32)).to(device)
            self.offsets = torch.arange(batches.seq_len + 1, device=device)  # (T+1,)

    def get(self, index: int) -> torch.Tensor:
        """(batch_size, seq_len + 1) int64 windows of batch ``index``, on the device."""
        if not self.on_device:
            return torch.from_numpy(self.batches.get(index)).to(self.device, non_blocking=True)
        starts = torch.from_numpy(self.batches.starts(index)).pin_memory()
        starts = starts.to(self.device, non_blocking=True)  # (B,)
        return self.tokens[starts[:, None] + self.offsets].long()  # (B, T+1)


def loss_function(model: LM, cfg: RunConfig, device: torch.device,
                  autocast: torch.dtype | None) -> tuple[Any, bool]:
    """(fn, uses CUDA graphs): ``fn(windows) -> (lm loss, loss to backpropagate)``.

    Compiled (CUDA): the cross-entropy sits inside the compiled graph with the model, so inductor
    fuses the fp32 upcast of the logits into the log-softmax instead of writing a (tokens, vocab)
    fp32 copy. Eager fp32 (the CPU): the head and the loss are one chunked op
    (:func:`lmablate.engine.model.linear_cross_entropy`) that never holds all the logits.
    """
    from lmablate.engine.model import cross_entropy, fused_cross_entropy_op, linear_cross_entropy

    # F.cross_entropy in fp32, its Triton forward on CUDA (built here, not while compiling)
    if device.type == "cuda":
        fused_cross_entropy_op()
    t = cfg.train
    accum = t.grad_accum
    compiled = t.compile == "true" or (t.compile == "auto" and device.type == "cuda")
    chunked = not compiled and device.type == "cpu" and autocast is None  # eager fp32 CPU

    def fn(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = w[:, 1:].reshape(-1)
        with _autocast(device, autocast):
            if chunked:  # head and loss as one chunked op, no (tokens, vocab) logits
                h = model.hidden(w[:, :-1])  # (B, T, C)
                loss = linear_cross_entropy(h.reshape(-1, h.size(-1)), model.head.weight, targets)
            else:
                logits = model(w[:, :-1])  # (B, T, V)
                loss = cross_entropy(logits.view(-1, logits.size(-1)), targets)
            total = (loss + cfg.model.router_aux_loss * model.aux_loss()) / accum
        return loss, total

    if not compiled:
        return fn, False
    mode = CUDA_COMPILE_MODE if device.type == "cuda" else None
    if mode in _GRAPH_MODES and (cfg.model.num_experts or accum > 1):
        mode = _GRAPH_MODES[mode]  # MoE load counters and accumulated grads outlive a replay
    if device.type == "cuda" and CUDA_COMPILE_OPTIONS:  # torch.compile takes mode or options
        import torch._inductor as inductor
        from torch._inductor import config as inductor_config

        known = {k: v for k, v in CUDA_COMPILE_OPTIONS.items() if hasattr(inductor_config, k)}
        opts = {**(inductor.list_mode_options(mode) if mode else {}), **known}  # newer torch:
        # an option it no longer has is dropped, not an error
        return torch.compile(fn, options=opts), mode in _GRAPH_MODES
    return torch.compile(fn, mode=mode), mode in _GRAPH_MODES


# --------------------------------------------------------------------------------------------------
# outputs


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


def epoch_ended(tokens_seen: int, tokens_per_step: int, split_tokens: int) -> int | None:
    """The number (1-based) of the last epoch completed by the step that brought the tokens seen
    to ``tokens_seen``; None when that step crossed no epoch boundary."""
    done = tokens_seen // max(1, split_tokens)
    return done if done > (tokens_seen - tokens_per_step) // max(1, split_tokens) else None


# --------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: np.ndarray, *, batch_size: int,
             device: torch.device, autocast: torch.dtype | None, vocab_size: int,
             reliability: bool = False) -> dict[str, Any]:
    was_training = model.training
    model.eval()
    acc = EvalAccumulator()
    for i in range(0, len(windows), batch_size):
        w = torch.from_numpy(windows[i:i + batch_size]).to(device, non_blocking=True)
        with _autocast(device, autocast):
            logits = model(w[:, :-1])
        acc.add(logits, w[:, 1:], vocab_size)
    model.train(was_training)
    out: dict[str, Any] = acc.result()
    if reliability:
        out["reliability"] = acc.reliability()
    return out


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def measure_latency(model: torch.nn.Module, device: torch.device, autocast: torch.dtype | None,
                    vocab_size: int, max_len: int, lengths: tuple[int, ...] = (128, 512),
                    repeats: int = 5) -> dict[str, float]:
    """Forward latency (ms, median of ``repeats``) at batch 1 for each sequence length."""
    model.eval()
    out = {}
    for n in lengths:
        if n > max_len:
            continue
        x = torch.randint(0, vocab_size, (1, n), device=device,
                          generator=torch.Generator(device=device).manual_seed(0))
        times = []
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with _autocast(device, autocast):
                model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out[f"latency_ms_seq{n}"] = float(np.median(times[1:]) * 1e3)
    return out


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


# --------------------------------------------------------------------------------------------------
# the loop


def train(run: RunConfig | Mapping[str, Any], tokens_path: str | Path, out_dir: str | Path, *,
          ckpt_dir: str | Path | None = None, run_id: str | None = None,
          meta: Mapping[str, Any] | None = None, device: str = "auto", threads: int | None = None,
          resume: bool | str = "auto", progress: bool | None = None,
          stop_after_steps: int | None = None,
          cohort: str | Path | Sequence[str | Path] | None = None,
          init_from: str | Path | None = None,
          tracking: Mapping[str, Any] | None = None) -> dict[str, Any]:
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
    """
    with TokenStore(tokens_path) as store:  # closed however the run ends
        return _train(run, store, out_dir, ckpt_dir=ckpt_dir, run_id=run_id, meta=meta,
                      device=device, threads=threads, resume=resume, progress=progress,
                      stop_after_steps=stop_after_steps, cohort=cohort, init_from=init_from,
                      tracking=tracking)


def _train(run: RunConfig | Mapping[str, Any], store: TokenStore, out_dir: str | Path, *,
           ckpt_dir: str | Path | None, run_id: str | None, meta: Mapping[str, Any] | None,
           device: str, threads: int | None, resume: bool | str, progress: bool | None,
           stop_after_steps: int | None, cohort: str | Path | Sequence[str | Path] | None,
           init_from: str | Path | None, tracking: Mapping[str, Any] | None) -> dict[str, Any]:
    """:func:`train` on an open token store."""
    t_start = time.perf_counter()
    cfg = run if isinstance(run, RunConfig) else from_dict(RunConfig, dict(run))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(ckpt_dir) if ckpt_dir else out / "ckpt"
    run_id = run_id or (meta or {}).get("run_id") or out.name
    resolved = {"run_id": run_id, **dict(meta or {}), **to_dict(cfg)}
    import yaml

    text = yaml.safe_dump(resolved, sort_keys=False)
    path = out / "config.yaml"
    if not path.is_file() or path.read_text() != text:  # the same config leaves a finished run's
        atomic_write_text(path, text)                  # file (and its time) as it is

    if threads:
        torch.set_num_threads(threads)
    dev = select_device(device)
    if dev.type == "cpu":
        keep_cpu_buffers()
    autocast, use_scaler = _precision(cfg, dev)
    train_tokens = store.split("train")
    vocab = store.vocab_size
    padded = cfg.model.padded_vocab(vocab)
    if padded < vocab:
        raise ValueError(f"model.vocab_size {padded} is smaller than the tokenizer's {vocab}")
    plan = make_plan(cfg, len(train_tokens))
    seq_len = cfg.train.seq_len
    max_len = cfg.model.context_length or seq_len
    val = val_windows(store.split("val"), seq_len, cfg.train.eval_tokens)
    final_cap = cfg.train.final_eval_tokens or 2_000_000
    val_final = val_windows(store.split("val"), seq_len, final_cap)
    test_final = (val_windows(store.split("test"), seq_len, final_cap, split="test")
                  if store.has_split("test") else None)  # a corpus with a `test` source
    batches = Batches(train_tokens, seq_len, cfg.train.batch_size, cfg.train.seed)

    torch.manual_seed(cfg.train.seed)
    model = LM(cfg.model, padded, max_seq_len=max_len).to(dev)
    counts = accounting.param_counts(cfg.model, padded, max_len)
    flops = accounting.flops_per_token(cfg.model, padded, seq_len)
    opt = _optimizer(model, cfg, dev)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    compiled = model
    if cfg.train.compile == "true" or (cfg.train.compile == "auto" and dev.type == "cuda"):
        compiled = torch.compile(model)
    step_loss, graphs = loss_function(model, cfg, dev, autocast)
    device_batches = DeviceBatches(batches, dev)

    records: list[dict[str, Any]] = []
    window_loss, window_n = torch.zeros((), device=dev), 0  # train loss summed since last log
    epoch_loss, epoch_n = torch.zeros((), device=dev), 0  # train loss summed in this epoch
    by_epoch = cfg.train.epochs is not None  # an epoch budget: evaluate at each epoch boundary
    step, tokens_seen, best_val, train_time = 0, 0, math.inf, 0.0
    status, diverged_at = "completed", None
    worse_since: int | None = None  # early stopping: tokens when the run fell behind its cohort
    end_step = plan.total_steps if not cfg.train.stop_tokens else min(
        plan.total_steps, math.ceil(cfg.train.stop_tokens / plan.tokens_per_step))
    stopper = EarlyStop(cfg, run_id, cohort) if cfg.train.early_stop_delta else None
    state = load_latest(ckpt, map_location=dev) if resume else None
    if state is None and resume and init_from is not None:
        state = load_latest(Path(init_from), map_location=dev)
        if state is not None and state.get("status") != "completed":
            log.warning("%s ended %s: not continuing it, starting over", init_from,
                        state.get("status"))
            state = None
    if state is not None:
        if not same_training(state.get("config"), to_dict(cfg), phase=init_from is not None):
            raise ValueError(f"{state['_path']}: checkpoint belongs to a different config; "
                             f"remove {ckpt} to start over")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, tokens_seen = state["step"], state["tokens_seen"]
        records, best_val = state["records"], state["best_val"]
        train_time = state.get("train_time", 0.0)
        status, diverged_at = state.get("status", "completed"), state.get("diverged_at")
        worse_since = state.get("worse_since")
        _set_rng_state(state["rng"])
        window_loss, window_n = state["window"][0].to(dev), state["window"][1]
        if state.get("epoch_window") is not None:
            epoch_loss, epoch_n = state["epoch_window"][0].to(dev), state["epoch_window"][1]
        log.info("resumed from %s at step %d/%d (%d tokens)", state["_path"], step,
                 plan.total_steps, tokens_seen)
    else:
        log.info("starting %s: %s params, %d steps x %d tokens, device %s, precision %s",
                 run_id, fmt_params(counts["total"]), plan.total_steps,
                 plan.tokens_per_step, dev, autocast or "fp32")
    metrics_path = out / "metrics.jsonl"
    _write_metrics(metrics_path, records)  # drop lines logged after the checkpoint we resumed
    from lmablate.engine.tracking import open_trackers

    trackers = open_trackers(tracking, run_id=run_id, study=str((meta or {}).get("study", "")),
                             config=resolved, state_dir=ckpt, step=step,
                             resumed=state is not None)

    limit = cfg.train.diverge_loss or (math.log(vocab) + 2.0)
    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show_bar:
        from tqdm import tqdm

        bar = tqdm(total=plan.total_tokens, initial=tokens_seen, unit="tok", unit_scale=True,
                   desc=run_id[:40], dynamic_ncols=True)

    def checkpoint_state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict() if scaler else None, "step": step,
                "tokens_seen": tokens_seen, "records": records, "best_val": best_val,
                "train_time": train_time, "status": status, "diverged_at": diverged_at,
                "worse_since": worse_since,
                "window": (window_loss.detach().clone(), window_n), "rng": _rng_state(),
                "epoch_window": (epoch_loss.detach().clone(), epoch_n),
                "config": to_dict(cfg), "run_id": run_id}

    def run_eval() -> dict[str, Any]:
        nonlocal best_val
        train_load = model.pop_expert_load()  # routing of the training tokens since last eval
        t0 = time.perf_counter()
        res = evaluate(compiled, val, batch_size=cfg.train.batch_size, device=dev,
                       autocast=autocast, vocab_size=vocab)
        rec = {"step": step, "tokens": tokens_seen, "split": "val", **res,
               "eval_s": time.perf_counter() - t0}
        model.pop_expert_load()  # drop the validation tokens' routing
        if train_load is not None:
            total = np.asarray(train_load).sum(0)
            rec["expert_load"] = [float(x) for x in total / max(1.0, total.sum())]
            rec["expert_gini"] = gini(total)
            rec["expert_entropy"] = entropy(total)
        best_val = min(best_val, res["loss"]) if math.isfinite(res["loss"]) else best_val
        return rec

    model.train()
    t_window = time.perf_counter()
    with _Preemption() as pre:
        while step < end_step and status == "completed":
            t_step = time.perf_counter()
            lr = get_lr(step, cfg, plan)
            for group in opt.param_groups:
                group["lr"] = lr
            for micro in range(cfg.train.grad_accum):
                w = device_batches.get(step * cfg.train.grad_accum + micro)
                if graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                loss, total_loss = step_loss(w)
                if scaler is not None:
                    scaler.scale(total_loss).backward()
                else:
                    total_loss.backward()
                window_loss += loss.detach() / cfg.train.grad_accum
                if by_epoch:
                    epoch_loss += loss.detach() / cfg.train.grad_accum
            grad_norm = optimizer_step(model, opt, scaler, cfg.train.grad_clip)
            step += 1
            tokens_seen += plan.tokens_per_step
            window_n += 1
            epoch_n += 1
            train_time += time.perf_counter() - t_step

            last = step == end_step
            if step % cfg.train.log_every == 0 or last or step == 1:
                t_sync = time.perf_counter()
                mean_loss = (window_loss / window_n).item()  # the only host sync per window
                train_time += time.perf_counter() - t_sync  # the device work queued until now
                elapsed = time.perf_counter() - t_window
                rec = {"step": step, "tokens": tokens_seen, "split": "train", "loss": mean_loss,
                       "lr": lr, "grad_norm": float(grad_norm),
                       "tokens_per_s": window_n * plan.tokens_per_step / max(elapsed, 1e-9)}
                records.append(rec)
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                trackers.log(rec)
                if bar is not None:
                    bar.update(window_n * plan.tokens_per_step)
                    bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
                else:
                    log.info("step %d/%d tokens %d loss %.4f lr %.2e %.0f tok/s", step,
                             plan.total_steps, tokens_seen, mean_loss, lr, rec["tokens_per_s"])
                window_loss.zero_()
                window_n = 0
                t_window = time.perf_counter()
                if not math.isfinite(mean_loss) or (step > plan.warmup_steps and mean_loss > limit):
                    status, diverged_at = "diverged", step
                    log.warning("run diverged at step %d: train loss %s (limit %.2f)", step,
                                mean_loss, limit)
            epoch = epoch_ended(tokens_seen, plan.tokens_per_step, len(train_tokens)) \
                if by_epoch else None
            if status == "completed" and (step % plan.eval_every == 0 or last or epoch):
                rec = run_eval()
                if epoch:  # the epoch's number and its mean training loss, on the eval record
                    rec["epoch"] = epoch
                    rec["epoch_train_loss"] = (epoch_loss / max(1, epoch_n)).item()
                    epoch_loss.zero_()
                    epoch_n = 0
                records.append(rec)
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                trackers.log(rec)
                log.info("eval step %d: val loss %.4f ppl %.2f acc %.3f", step, rec["loss"],
                         rec["ppl"], rec["acc"])
                if stopper is not None:  # the last evaluation still informs the cohort
                    worse_since = stopper.update(tokens_seen, rec, worse_since, records)
                    if not last and worse_since is not None and tokens_seen - worse_since >= \
                            cfg.train.early_stop_tokens:
                        status = "stopped_early"
                        log.warning("stopping early at step %d: val %s %.4f has been worse than "
                                    "the cohort's best by >= %g since %d tokens", step,
                                    cfg.train.early_stop_metric, stopper.value(rec),
                                    cfg.train.early_stop_delta, worse_since)
            if step % plan.checkpoint_every == 0 or last or status != "completed" or pre.signal:
                save_checkpoint(checkpoint_state(), ckpt, step, keep=cfg.train.keep_checkpoints)
            if pre.signal:
                log.warning("signal %d: checkpointed at step %d, exiting for requeue", pre.signal,
                            step)
                if bar is not None:
                    bar.close()
                trackers.close()
                raise Preempted(pre.signal, ckpt)
            if stop_after_steps is not None and step >= stop_after_steps and not last:
                if bar is not None:
                    bar.close()
                trackers.close()
                return {"status": "stopped", "step": step}
    if bar is not None:
        bar.close()

    # ---- final evaluation and outputs (final.json last: it marks the run as done)
    final: dict[str, Any] = {"run_id": run_id, "status": status, "steps": step,
                             "tokens": tokens_seen, "planned_tokens": plan.total_tokens,
                             "diverged_at_step": diverged_at}
    if status == "stopped_early":
        final["stopped_early_at_step"] = step
    if status in ("completed", "stopped_early"):
        res = evaluate(compiled, val_final, batch_size=cfg.train.batch_size, device=dev,
                       autocast=autocast, vocab_size=vocab, reliability=True)
        final.update({f"val_{k}": v for k, v in res.items() if k != "reliability"})
        final["reliability"] = res["reliability"]
        if test_final is not None:  # the test split: once, on the final model only
            res = evaluate(compiled, test_final, batch_size=cfg.train.batch_size, device=dev,
                           autocast=autocast, vocab_size=vocab)
            final.update({f"test_{k}": v for k, v in res.items()})
            log.info("test loss %.4f ppl %.2f", res["loss"], res["ppl"])
        final.update(measure_latency(model, dev, autocast, vocab, max_len))
    vals = [r["loss"] for r in records if r["split"] == "val" and math.isfinite(r["loss"])]
    final["best_val_loss"] = min(vals + [final.get("val_loss", math.inf)]) if (
        vals or "val_loss" in final) else None
    trains = [r for r in records if r["split"] == "train"]
    final["final_train_loss"] = trains[-1]["loss"] if trains else None
    expert = [r for r in records if "expert_gini" in r]
    if expert:
        final["expert_gini"] = expert[-1]["expert_gini"]
        final["expert_entropy"] = expert[-1]["expert_entropy"]
    final.update({
        "params": counts, "flops_per_token": flops, "vocab_size": vocab,
        "padded_vocab_size": padded, "train_split_tokens": int(len(train_tokens)),
        # non-UTF-8 byte sequences of the corpus that became U+FFFD (lmablate.data.corpora)
        "data_replaced_chars": int(store.attrs.get("replaced_chars", 0)),
        "epochs": tokens_seen / max(1, len(train_tokens)),
        "train_wall_s": train_time, "tokens_per_s": tokens_seen / max(train_time, 1e-9),
        "wall_s": time.perf_counter() - t_start, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        # which physical GPU (nvidia-smi's UUID): "cuda:0" is whatever CUDA_VISIBLE_DEVICES left
        "device_uuid": _gpu_uuid(dev),
        "precision": str(autocast).replace("torch.", "") if autocast else "fp32",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "peak_mem_mb": (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda"
                        else _peak_rss_mb()),
    })
    from safetensors.torch import save

    seen, unique = set(), {}
    for k, v in model.state_dict().items():  # tied weights: store once
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            unique[k] = v.detach().contiguous().cpu()
    # atomically, with the umask's permissions (safetensors' own save_file makes 0600 files)
    atomic_write_bytes(out / "model.safetensors",
                       save(unique, metadata={"run_id": run_id, "format": "pt"}))
    _write_metrics(metrics_path, records)
    final["metrics_sha256"] = sha256_file(metrics_path)  # harvest checks metrics.jsonl with it
    atomic_write_json(out / "trainer_state.json",
                      _trainer_state(records, plan, cfg, len(train_tokens),
                                     final["best_val_loss"], flops))
    # what final.json vouches for: sizes checked at every Snakefile parse, hashes by harvest
    final["files"] = file_manifest(out)
    atomic_write_json(out / "final.json", final)
    trackers.finish(final)
    log.info("done %s: status %s, val loss %s, %.0f tok/s, %.1f s", run_id, status,
             final.get("val_loss"), final["tokens_per_s"], final["wall_s"])
    return final


# --------------------------------------------------------------------------------------------------
# phases: early stopping against a cohort, continuing a phase-1 checkpoint

# settings that may differ between a phase-1 run and the phase-2 run continuing its checkpoint
PHASE_KEYS = ("stop_tokens", "early_stop_delta", "early_stop_metric", "early_stop_tokens")


def same_training(saved: Mapping[str, Any] | None, current: Mapping[str, Any], *,
                  phase: bool = False) -> bool:
    """Whether a checkpoint's config trains the same run as ``current``.

    Fields added in a later version at their default are ignored (a checkpoint written before they
    existed still resumes); with ``phase``, so are the phase settings (:data:`PHASE_KEYS`)."""
    from lmablate.study.config import later_fields

    if saved is None:
        return False
    later = later_fields()

    def norm(cfg: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for section, values in cfg.items():
            out[section] = {k: v for k, v in dict(values).items()
                            if not (phase and section == "train" and k in PHASE_KEYS)
                            and not (f"{section}.{k}" in later and later[f"{section}.{k}"] == v)}
        return out

    return norm(saved) == norm(current)


class EarlyStop:
    """Seed 003's rule: stop when the dev metric is worse than the cohort's best-so-far by delta.

    The cohort file (JSON lines ``{"run_id", "tokens", "value"}``, appended under a lock) is shared
    by the runs of one phase; the best-so-far at ``t`` tokens is the lowest value any of them logged
    at <= t tokens. Which peers have logged by then depends on scheduling, so with parallel runs the
    decision can differ between repeats (the reference run and value are logged). Without a cohort
    file a run compares against its own best (plain patience). A run in several cohorts (a point
    two sweep axes share, ``ranking.per``) logs to each and is behind only when it is behind the
    best of every one of them.
    """

    def __init__(self, cfg: RunConfig, run_id: str,
                 cohort: str | Path | Sequence[str | Path] | None):
        self.delta = float(cfg.train.early_stop_delta or 0)
        self.metric = cfg.train.early_stop_metric
        cohorts = [cohort] if isinstance(cohort, (str, Path)) else list(cohort or [])
        self.run_id, self.cohorts = run_id, [Path(c) for c in cohorts]

    def value(self, rec: Mapping[str, Any]) -> float:
        return float(rec["ppl"] if self.metric == "ppl" else rec["loss"])

    def _peers(self, tokens: int, value: float,
               records: list[dict]) -> list[list[tuple[int, float]]]:
        """Per cohort, the (tokens, value) every member logged (this evaluation included)."""
        if not self.cohorts:  # its own evaluations (from the records: survives a resume)
            return [[(r["tokens"], self.value(r)) for r in records if r["split"] == "val"]]
        return [self._logged(path, tokens, value) for path in self.cohorts]

    def _logged(self, path: Path, tokens: int, value: float) -> list[tuple[int, float]]:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"run_id": self.run_id, "tokens": tokens, "value": value}) + "\n"
        with open(path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(line)
            fh.flush()
            fh.seek(0)
            rows = [json.loads(x) for x in fh.read().splitlines() if x.strip()]
        return [(int(r["tokens"]), float(r["value"])) for r in rows
                if math.isfinite(float(r["value"]))]

    def update(self, tokens: int, rec: Mapping[str, Any], worse_since: int | None,
               records: list[dict]) -> int | None:
        """The new ``worse_since`` (tokens since which the run is behind, or None)."""
        value = self.value(rec)
        best = max(min((v for t, v in peers if t <= tokens and math.isfinite(v)), default=math.inf)
                   for peers in self._peers(tokens, value, records))  # the most lenient cohort
        if math.isfinite(value) and value - best < self.delta:
            return None
        return tokens if worse_since is None else worse_since


def _gpu_uuid(dev: torch.device) -> str | None:
    if dev.type != "cuda":
        return None
    uuid = getattr(torch.cuda.get_device_properties(dev), "uuid", None)
    return f"GPU-{uuid}" if uuid is not None else None


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
