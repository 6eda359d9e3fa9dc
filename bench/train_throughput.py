"""Training throughput of lmablate's step against transformers' Llama, measured in one run.

Each (shape, implementation) pair runs in its own process: it builds the model, compiles it and
takes the first steps (compilation) outside a GPU lock, then holds an exclusive ``flock`` while it
times ``--steps`` full steps (forward, backward, clip, AdamW), so that the timed sections never
share the GPU while the compilations run side by side on the CPU cores.

Implementations (same shapes, batch, bf16 autocast on CUDA, fused AdamW, grad clip 1.0, tied
embeddings, weight decay on matrices only):

==================  ===============================================================================
``hf-eager``        ``LlamaForCausalLM`` (SDPA attention), loss from ``labels``
``hf-compiled``     the same under ``torch.compile`` (default mode)
``lm-before``       lmablate's step as it was: compiled model (default mode), host windows copied
                    from pageable memory, the cross-entropy eager on an fp32 copy of the logits
``lm-nograph``      lmablate's step now (:func:`lmablate.engine.step.loss_function`,
                    :class:`lmablate.engine.step.DeviceBatches`) in default mode: loss inside the
                    compiled graph, windows gathered on the GPU
``lm``              the same in train()'s compile mode (``lmablate.engine.step.CUDA_COMPILE_MODE``,
                    ``"reduce-overhead"``: CUDA graphs)
``lm-ro``           ``lm`` with ``mode="reduce-overhead"``
``lm-max``          ``lm`` with ``mode="max-autotune"`` (Triton GEMM templates autotuned against
                    cuBLAS, coordinate-descent tuning, CUDA graphs); its compilation (autotuning
                    benchmarks kernels on the GPU) holds the GPU lock
``lm-maxng``        ``lm`` with ``mode="max-autotune-no-cudagraphs"`` (same lock)
``lm-cdt``          ``lm`` with ``lmablate.engine.step.CUDA_COMPILE_OPTIONS`` (train's inductor
                    options on top of the mode's) replaced by ``coordinate_descent_tuning``
                    (Triton kernels' block sizes tuned on the GPU; its compilation holds the GPU
                    lock, as max-autotune)
``lm-agemm``        the same with ``max_autotune_gemm`` (GEMMs only: Triton templates autotuned
                    against cuBLAS, epilogues fused into them; same lock)
``lm-noonline``     the same with ``online_softmax`` off (two-pass logsumexp; train's default);
                    ``lm-online``: no extra options (inductor's online softmax)
``lm*-ce``          with ``lmablate.engine.losses.FUSED_CROSS_ENTROPY`` on (Triton forward of
                    the loss, for 128-byte-aligned vocab rows; the default); ``lm*-noce`` with it
                    off
``lm*-nopad``       the model with the tokenizer's vocabulary exactly (HF's rows); without it, as
                    train() builds it: padded to a multiple of 64 (only cs336 changes: 10048 rows)
``lm-train``        ``lmablate.engine.train.train`` end to end on a synthetic token store
                    (tokens/s of its log windows after the first; wall includes compile, eval
                    and checkpoints)
==================  ===============================================================================

MFU = tokens/s x FLOPs/token / peak, FLOPs/token from
:func:`lmablate.study.accounting.flops_per_token`
(6 N + 6 d V + 12 L d T: attention counted over the full T x T matrix), peak the H100 SXM's dense
bf16 989 TFLOP/s (the same for an H200). HF and lmablate models have the same parameters.

    PYTHONPATH=src python3 bench/train_throughput.py [--shapes tiny5m,cs336,gpt2s] [--out DIR]
    PYTHONPATH=src python3 bench/train_throughput.py --device cpu --quick   # smoke test

Prints a table and writes ``bench/results/<date>-<device>-train_throughput.json`` (and, with
``--profile``, a torch.profiler summary of tiny5m per lmablate variant).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
PEAK_BF16_FLOPS = 989e12  # H100 SXM dense bf16 (H200: same compute)
# name: (vocab, ctx, d_model, layers, heads, d_ff, batch)
SHAPES = {
    "tiny5m": (8192, 512, 160, 22, 10, 240, 64),
    "cs336": (10000, 256, 512, 4, 16, 1344, 128),
    "gpt2s": (50304, 1024, 768, 12, 12, 2048, 32),
}
QUICK_SHAPES = {"tiny5m": (512, 32, 32, 3, 2, 48, 4), "cs336": (640, 16, 64, 2, 4, 96, 8)}
TARGETS = {"ratio_vs_hf_compiled": {"tiny5m": 1.6, "cs336": 1.3, "gpt2s": 1.15},
           "mfu": {"gpt2s": 0.45, "cs336": 0.32}}
IMPLS = ("hf-compiled", "lm-before", "lm-nograph", "lm", "hf-eager")
TRAIN_TOKENS = 4_000_000  # synthetic train split (random ids): enough distinct windows


def run_config(shape: tuple, device: str, **train: Any):
    """The lmablate RunConfig of a benchmark shape: a tokenizer of ``vocab`` ids, so the model
    has ``padded_vocab(vocab)`` embedding rows as in train() (vocab_multiple 64: cs336's 10000
    becomes 10048; tiny5m's 8192 and gpt2s's 50304 are multiples already)."""
    from lmablate.study.config import RunConfig, from_dict

    _, ctx, d, layers, heads, ff, batch = shape
    return from_dict(RunConfig, {
        "model": {"d_model": d, "n_layers": layers, "n_heads": heads, "d_ff": ff,
                  "context_length": ctx, "tie_embeddings": True},
        "train": {"batch_size": batch, "seq_len": ctx, "lr": 1e-3, "weight_decay": 0.1,
                  "grad_clip": 1.0, "precision": "bf16" if device == "cuda" else "fp32",
                  **train}})


def hf_llama(shape: tuple):
    """transformers' LlamaForCausalLM with the same parameters as ``run_config(shape)``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab, ctx, d, layers, heads, ff, _ = shape
    conf = LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=ff,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=heads, max_position_embeddings=ctx,
                       rms_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=False,
                       mlp_bias=False, attn_implementation="sdpa")
    return LlamaForCausalLM(conf)


def random_tokens(vocab: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=n).astype(
        np.uint16 if vocab <= 1 << 16 else np.uint32)


def write_token_store(path: Path, vocab: int, n_train: int, n_val: int) -> Path:
    """A synthetic lmablate token store (random ids) for train() end to end."""
    import h5py

    from lmablate.data.tokens import FORMAT

    with h5py.File(path, "w") as f:
        f.attrs.update({"format": FORMAT, "vocab_size": vocab})
        f.create_dataset("train", data=random_tokens(vocab, n_train, 1))
        f.create_dataset("val", data=random_tokens(vocab, n_val, 2))
    return path


@contextlib.contextmanager
def gpu_lock(path: str | None):
    """Exclusive use of the GPU for a timed section (no-op without a path)."""
    if not path:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def device_info(device: str) -> dict[str, Any]:
    import torch

    info = {"torch": torch.__version__, "device": device}
    if device == "cuda":
        info["device_name"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


# --------------------------------------------------------------------------------------------------
# one (shape, implementation) in this process


LM_MODES = {"lm-nograph": None, "lm-ro": "reduce-overhead", "lm-max": "max-autotune",
            "lm-maxng": "max-autotune-no-cudagraphs"}


# lmablate.engine.step.CUDA_COMPILE_OPTIONS per variant (inductor options on top of the mode's)
LM_OPTIONS = {"lm-cdt": {"coordinate_descent_tuning": True},
              "lm-agemm": {"max_autotune_gemm": True},
              "lm-cdt-agemm": {"coordinate_descent_tuning": True, "max_autotune_gemm": True},
              "lm-noonline": {"online_softmax": False}, "lm-online": {}}
TUNING_OPTIONS = ("coordinate_descent_tuning", "max_autotune_gemm", "max_autotune")


def lm_variant(impl: str) -> tuple[str, dict[str, bool]]:
    """(base impl, lmablate.engine.losses flags to set: the library's defaults for those not
    named)."""
    for suffix, flags in (("-noce", {"FUSED_CROSS_ENTROPY": False}),
                          ("-ce", {"FUSED_CROSS_ENTROPY": True})):
        if impl.endswith(suffix):
            return impl[:-len(suffix)], flags
    return impl, {}


def lm_mode(impl: str, default: str | None) -> str | None:
    base, _ = lm_variant(impl)
    return LM_MODES.get(base, default)


def make_step(impl: str, shape: tuple, device: str):
    """(step(i) -> loss tensor, model, tokens per step) for one implementation."""
    import torch
    import torch.nn.functional as F

    from lmablate.data.tokens import Batches
    from lmablate.engine import losses
    from lmablate.engine import step as st
    from lmablate.engine.model import LM

    pad = not impl.endswith("-nopad")  # -nopad: the tokenizer's vocab rows exactly, as HF
    impl = impl.removesuffix("-nopad")
    if impl.startswith("lm"):
        for flag, value in lm_variant(impl)[1].items():
            setattr(losses, flag, value)
        if device == "cpu" and impl != "lm-before":
            st.keep_cpu_buffers()  # what train() does on a CPU

    dev = torch.device(device)
    cfg = run_config(shape, device)
    vocab, ctx, *_, batch = shape
    autocast = torch.bfloat16 if device == "cuda" else None
    batches = Batches(random_tokens(vocab, TRAIN_TOKENS if device == "cuda" else 50_000), ctx,
                      batch, seed=0)
    torch.manual_seed(0)
    if impl.startswith("hf"):
        model = hf_llama(shape).to(dev)
    else:
        model = LM(cfg.model, cfg.model.padded_vocab(vocab) if pad else vocab,
                   max_seq_len=ctx).to(dev)
    model.train()
    opt = st.make_optimizer(model, cfg, dev)
    compile_on = device == "cuda"
    clip = cfg.train.grad_clip

    def finish(total: torch.Tensor) -> None:
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if impl.startswith("hf"):
        fwd = torch.compile(model) if impl == "hf-compiled" and compile_on else model
        data = st.DeviceBatches(batches, dev)

        def step(i: int) -> torch.Tensor:
            w = data.get(i)
            with st.autocast_context(dev, autocast):
                loss = fwd(input_ids=w[:, :-1], labels=w[:, :-1]).loss
            finish(loss)
            return loss.detach()
    elif impl == "lm-before":
        fwd = torch.compile(model) if compile_on else model

        def step(i: int) -> torch.Tensor:
            w = torch.from_numpy(batches.get(i)).to(dev, non_blocking=True)
            with st.autocast_context(dev, autocast):
                logits = fwd(w[:, :-1])
                loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)),
                                       w[:, 1:].reshape(-1))
            finish(loss)
            return loss.detach()
    else:
        st.CUDA_COMPILE_MODE = lm_mode(impl, st.CUDA_COMPILE_MODE)
        st.CUDA_COMPILE_OPTIONS = LM_OPTIONS.get(lm_variant(impl)[0], st.CUDA_COMPILE_OPTIONS)
        cfg = run_config(shape, device, compile="auto")
        loss_fn, graphs = st.loss_function(model, cfg, dev, autocast)
        data = st.DeviceBatches(batches, dev)

        def step(i: int) -> torch.Tensor:
            w = data.get(i)
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            loss, total = loss_fn(w)
            finish(total)
            return loss.detach()
    return step, model, batch * ctx


def measure(impl: str, shape_name: str, shape: tuple, device: str, steps: int, warmup: int,
            lock: str | None, profile: str | None, threads: int | None,
            repeats: int = 2) -> dict[str, Any]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    cuda = device == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    step, model, tokens_per_step = make_step(impl, shape, device)
    build_s = time.perf_counter() - t0
    tuning = set(LM_OPTIONS.get(lm_variant(impl)[0], {})) & set(TUNING_OPTIONS)
    autotunes = impl.startswith("lm") and ("max-autotune" in str(lm_mode(impl, None)) or tuning)
    with gpu_lock(lock if autotunes else None):  # autotuning times kernels on the GPU
        t0 = time.perf_counter()
        step(0)  # compiles
        sync()
        first_step_s = time.perf_counter() - t0
        for i in range(1, warmup):  # CUDA graph recording, autotuning, allocator warm-up
            step(i)
        sync()
    with gpu_lock(lock):
        for i in range(warmup, warmup + 3):
            step(i)
        sync()
        times, loss_sum = [], torch.zeros((), device=device)
        base = warmup + 3
        for rep in range(repeats):  # timed repeats: their spread says how stable the number is
            t0 = time.perf_counter()
            for i in range(steps):
                loss_sum += step(base + rep * steps + i)
            sync()
            times.append(time.perf_counter() - t0)
        prof_text = None
        if profile:
            prof_text = profile_steps(step, base + repeats * steps, cuda)
    best = min(times)
    tokens_s = steps * tokens_per_step / best
    from lmablate.study import accounting
    cfg = run_config(shape, device)
    flops = accounting.flops_per_token(cfg.model, shape[0], shape[1])
    out = {
        "shape": shape_name, "impl": impl, "tokens_per_step": tokens_per_step, "steps": steps,
        "tokens_per_s": tokens_s,
        "tokens_per_s_repeats": [steps * tokens_per_step / t for t in times],
        "step_ms": best / steps * 1e3, "flops_per_token": flops,
        "mfu": tokens_s * flops / PEAK_BF16_FLOPS if cuda else None,
        "params": sum(p.numel() for p in model.parameters()),
        "mean_loss_timed": float(loss_sum) / (repeats * steps),
        "build_s": build_s, "first_step_s": first_step_s,
        "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        **device_info(device),
    }
    if prof_text is not None:
        Path(profile).write_text(f"# {impl} {shape_name} {device_info(device)}\n{prof_text}")
    return out


def profile_steps(step, start: int, cuda: bool, n: int = 5) -> str:
    """torch.profiler table of ``n`` steps, top ops by device time, with the GPU busy share."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for i in range(n):
            step(start + i)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    busy = sum(getattr(e, key, 0) for e in events) / 1e6  # us -> s
    head = (f"{n} steps, wall {wall * 1e3 / n:.2f} ms/step (profiler on), "
            f"{'GPU kernel' if cuda else 'CPU'} time {busy * 1e3 / n:.2f} ms/step "
            f"({busy / wall:.0%} of wall; counts CPU ops' device time too)\n")
    table = events.table(sort_by=key, row_limit=25, max_name_column_width=60)
    if not cuda:
        return head + table
    try:
        breakdown = kernel_breakdown(events, n, wall)
    except Exception as exc:  # noqa: BLE001 (the table below is still worth writing)
        breakdown = f"kernel breakdown failed: {exc!r}\n"
    return head + breakdown + "\n" + table


# kernel name -> category: (category, lower-case substrings), first match wins; inductor's own
# kernels (names "triton_...") and library kernels are matched separately
TRITON_CATEGORIES = (
    ("GEMM (cuBLAS / Triton mm)", ("triton_tem", "_mm_")),
    ("cross-entropy / logits (Triton)", ("log_softmax", "eq_exp")),  # eq_exp: ce_rows' backward
    ("elementwise / norms (Triton)", ("rms_norm",)),  # the last norm's backward + embedding's
    ("embedding (gather / scatter-add)", ("embedding", "index_put", "scatter")),
    ("elementwise / norms (Triton)", ("",)),
)
LIBRARY_CATEGORIES = (
    ("optimizer (AdamW)", ("adam",)),
    ("grad clip (foreach norm/mul)", ("multi_tensor_apply", "lpnorm", "foreach")),
    ("attention (SDPA)", ("sdpa", "flash", "fmha", "attention", "dot_do_o", "convert_dq")),
    ("GEMM (cuBLAS / Triton mm)", ("nvjet", "gemm", "xmma", "cutlass", "splitk", "gemv")),
    ("cross-entropy / logits (Triton)", ("_ce_rows",)),
    ("embedding (gather / scatter-add)", ("embedding", "index_put", "scatter", "indexing_backward",
                                          "index_select")),
    ("copies / memset", ("memcpy", "memset", "copy")),
    ("other aten kernels", ("",)),
)


def kernel_category(name: str) -> str:
    low = name.lower()
    table = TRITON_CATEGORIES if low.startswith("triton") else LIBRARY_CATEGORIES
    return next(c for c, keys in table if any(k in low for k in keys))


def kernel_breakdown(events, n: int, wall: float) -> str:
    """ms/step of the CUDA kernels (not CPU ops) by category, then the top kernels, then a JSON
    line of every kernel (name, calls, total us) so other categorisations can be made later."""
    from torch.autograd import DeviceType

    kernels = [(e.key, e.count, e.device_time_total) for e in events  # "#": annotations
               if getattr(e, "device_type", None) == DeviceType.CUDA and "#" not in e.key]
    total = sum(t for *_, t in kernels) or 1.0
    cats: dict[str, float] = {}
    for name, _, t in kernels:
        cat = kernel_category(name)
        cats[cat] = cats.get(cat, 0.0) + t
    lines = [f"CUDA kernels only: {total / 1e3 / n:.2f} ms/step = {total / 1e6 / wall:.0%} of wall",
             f"{'category':40s} {'ms/step':>8s} {'share':>6s}"]
    for cat, t in sorted(cats.items(), key=lambda kv: -kv[1]):
        lines.append(f"{cat:40s} {t / 1e3 / n:8.3f} {t / total:6.1%}")
    lines.append("\ntop kernels (ms/step, calls/step):")
    for name, count, t in sorted(kernels, key=lambda k: -k[2])[:40]:
        lines.append(f"{t / 1e3 / n:8.3f} {count / n:6.1f}  {name[:150]}")
    lines.append("KERNELS_JSON " + json.dumps({"steps": n, "wall_s": wall,
                                               "kernels": sorted(kernels, key=lambda k: -k[2])}))
    return "\n".join(lines) + "\n"


def measure_train(shape_name: str, shape: tuple, device: str, steps: int,
                  lock: str | None) -> dict[str, Any]:
    """lmablate.engine.train.train end to end on a synthetic store; tokens/s of the log windows."""
    from lmablate.engine.train import train

    vocab, ctx, *_, batch = shape
    log_every = 10
    with tempfile.TemporaryDirectory() as tmp:
        store = write_token_store(Path(tmp) / "tokens.h5", vocab,
                                  TRAIN_TOKENS if device == "cuda" else 50_000, 8 * ctx + 1)
        cfg = run_config(shape, device, tokens=steps * batch * ctx, warmup=0.05,
                         eval_every=steps, checkpoint_every=steps, log_every=log_every,
                         eval_tokens=ctx * 4, final_eval_tokens=ctx * 4)
        with gpu_lock(lock):
            t0 = time.perf_counter()
            final = train(cfg, store, Path(tmp) / "run", device=device, progress=False)
            wall = time.perf_counter() - t0
        recs = [json.loads(line)
                for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    windows = [r["tokens_per_s"] for r in recs if r["split"] == "train" and r["step"] > log_every]
    return {"shape": shape_name, "impl": "lm-train", "steps": steps,
            "tokens_per_s": float(np.median(windows)) if windows else None,
            "tokens_per_s_final_json": final["tokens_per_s"], "wall_s": wall,
            "train_wall_s": final["train_wall_s"], "peak_mem_mb": final["peak_mem_mb"],
            "final_train_loss": final["final_train_loss"], "val_loss": final.get("val_loss"),
            **device_info(device)}


# --------------------------------------------------------------------------------------------------
# the driver: workers in parallel, timed sections one at a time


def worker_main(spec: dict[str, Any]) -> None:
    if spec["impl"] == "lm-train":
        res = measure_train(spec["shape_name"], tuple(spec["shape"]), spec["device"],
                            spec["steps"], spec["lock"])
    else:
        res = measure(spec["impl"], spec["shape_name"], tuple(spec["shape"]), spec["device"],
                      spec["steps"], spec["warmup"], spec["lock"], spec.get("profile"),
                      spec.get("threads"), spec.get("repeats", 2))
    Path(spec["result"]).write_text(json.dumps(res))


def run_workers(specs: list[dict[str, Any]], parallel: int, timeout: float,
                budget: float) -> list[dict[str, Any]]:
    """Run each spec in a fresh process, ``parallel`` at a time; failures become error rows.

    A worker is killed after ``timeout`` s, every worker once ``budget`` s have passed."""
    pending, running, results = list(specs), [], []
    deadline = time.perf_counter() + budget
    src = str(HERE.parent / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    while pending or running:
        while pending and len(running) < parallel and time.perf_counter() < deadline:
            spec = pending.pop(0)
            log = open(spec["result"] + ".log", "w")  # noqa: SIM115 (open while it runs)
            proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
            running.append((proc, spec, time.perf_counter(), log))
        time.sleep(0.2)
        for item in list(running):
            proc, spec, t0, log = item
            now = time.perf_counter()
            if proc.poll() is None and now - t0 < timeout and now < deadline:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            running.remove(item)
            wall = time.perf_counter() - t0
            path = Path(spec["result"])
            if proc.returncode == 0 and path.is_file():
                res = json.loads(path.read_text())
            else:
                tail = Path(spec["result"] + ".log").read_text()[-1500:]
                res = {"shape": spec["shape_name"], "impl": spec["impl"],
                       "error": f"exit {proc.returncode}: {tail}"}
            res["process_wall_s"] = wall
            results.append(res)
            if pending and time.perf_counter() >= deadline:
                results += [{"shape": s["shape_name"], "impl": s["impl"], "error": "not run: "
                             "out of time"} for s in pending]
                pending = []
            print(f"  {res['shape']:7s} {res['impl']:12s} "
                  + (f"{res['tokens_per_s']:>12,.0f} tok/s" if res.get("tokens_per_s")
                     else res.get("error", "")[-300:]), flush=True)
    return results


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios lmablate / HF-compiled (and / HF-eager) per shape, against the targets."""
    by = {(r["shape"], r["impl"]): r for r in rows}
    out: dict[str, Any] = {}
    for shape in dict.fromkeys(r["shape"] for r in rows):
        hf_c = by.get((shape, "hf-compiled"), {}).get("tokens_per_s")
        hf_e = by.get((shape, "hf-eager"), {}).get("tokens_per_s")
        lm = by.get((shape, "lm"), {})
        s: dict[str, Any] = {}
        impls = [i for (sh, i) in by if sh == shape and i.startswith("lm")]
        for impl in impls:
            t = by.get((shape, impl), {}).get("tokens_per_s")
            if t and hf_c:
                s[f"{impl}/hf-compiled"] = t / hf_c
            if t and hf_e:
                s[f"{impl}/hf-eager"] = t / hf_e
        s["target_ratio"] = TARGETS["ratio_vs_hf_compiled"].get(shape)
        s["mfu_lm"] = lm.get("mfu")
        for impl in impls:
            if by[(shape, impl)].get("mfu"):
                s[f"mfu_{impl}"] = by[(shape, impl)]["mfu"]
        s["target_mfu"] = TARGETS["mfu"].get(shape)
        out[shape] = s
    return out


def print_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(f"\n{'shape':7s} {'impl':11s} {'tok/s':>12s} {'ms/step':>8s} {'MFU':>6s} "
          f"{'peak MiB':>9s} {'1st step s':>10s} {'loss':>7s}")
    for r in rows:
        if "error" in r:
            print(f"{r['shape']:7s} {r['impl']:11s} ERROR {r['error'][-200:]!r}")
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        ms = f"{r['step_ms']:.2f}" if r.get("step_ms") else "-"
        first = r.get("first_step_s", r.get("wall_s"))
        loss = r.get("mean_loss_timed", r.get("final_train_loss"))
        print(f"{r['shape']:7s} {r['impl']:11s} {r['tokens_per_s'] or 0:>12,.0f} {ms:>8s} "
              f"{mfu:>6s} {r.get('peak_mem_mb') or 0:>9,.0f} {first or 0:>10.1f} "
              f"{loss if loss is not None else float('nan'):>7.3f}")
    print()
    for shape, s in summary.items():
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in s.items() if "/hf-compiled" in k)
        mfus = ", ".join(f"{k[4:]} {v:.1%}" for k, v in s.items() if k.startswith("mfu_lm-"))
        print(f"{shape}: {ratios}; target {s['target_ratio']}x"
              + (f"; MFU lm {s['mfu_lm']:.1%}" if s.get("mfu_lm") else "")
              + (f", {mfus}" if mfus else "")
              + (f" (target {s['target_mfu']:.0%})" if s.get("target_mfu") else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--quick", action="store_true", help="tiny shapes, few steps (smoke test)")
    ap.add_argument("--shapes", default=None, help="comma-separated subset of " + ",".join(SHAPES))
    ap.add_argument("--impls", default=",".join(IMPLS + ("lm-train",)))
    ap.add_argument("--steps", type=int, default=None, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats (the best counts)")
    ap.add_argument("--parallel", type=int, default=4, help="worker processes at a time")
    ap.add_argument("--e2e-shapes", default="tiny5m", help="shapes that also run lm-train")
    ap.add_argument("--profile", action="store_true", help="profile tiny5m's lmablate variants")
    ap.add_argument("--profile-shapes", default="tiny5m", help="shapes --profile profiles")
    ap.add_argument("--profile-impls", default="lm-before,lm,hf-compiled",
                    help="implementations --profile profiles")
    ap.add_argument("--skip", default="", help="comma-separated shape:impl pairs not to run")
    ap.add_argument("--date", default=None, help="date in the file names (default today)")
    ap.add_argument("--tag", default="", help="tag after the date in the file names")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    ap.add_argument("--budget", type=float, default=3600, help="seconds for all workers")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--copy-to", type=Path, default=None, help="also write the files here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return 0
    shapes = QUICK_SHAPES if args.quick else SHAPES
    names = args.shapes.split(",") if args.shapes else list(shapes)
    impls = args.impls.split(",")
    steps = args.steps or (3 if args.quick else 20)
    work = Path(tempfile.mkdtemp(prefix="lmablate-tt-"))
    lock = str(work / "gpu.lock")
    date = args.date or time.strftime("%Y-%m-%d")
    tag = "cpu" if args.device == "cpu" else "gpu"
    specs = []
    for impl in impls:  # compiled ones first: they take longest to start
        for name in names:
            if impl == "lm-train" and name not in args.e2e_shapes.split(","):
                continue
            if f"{name}:{impl}" in args.skip.split(","):
                continue
            spec = {"impl": impl, "shape_name": name, "shape": shapes[name], "device": args.device,
                    "steps": steps if impl != "lm-train" else (40 if args.quick else 200),
                    "warmup": 3, "lock": lock, "threads": args.threads,
                    "repeats": args.repeats, "result": str(work / f"{name}-{impl}.json")}
            if (args.profile and name in args.profile_shapes.split(",")
                    and impl in args.profile_impls.split(",")):
                spec["profile"] = str(work / f"profile-{name}-{impl}.txt")
            specs.append(spec)
    t0 = time.perf_counter()
    rows = run_workers(specs, args.parallel, timeout=900, budget=args.budget)
    rows.sort(key=lambda r: (names.index(r["shape"]), impls.index(r["impl"])))
    summary = summarise(rows)
    print_table(rows, summary)
    first_ok = next((r for r in rows if "torch" in r), {})
    tag = first_ok.get("device_name", tag).replace(" ", "-") if args.device == "cuda" else "cpu"
    tag = f"{args.tag}-{tag}" if args.tag else tag
    result = {"benchmark": "train_throughput", "date": date, "quick": args.quick,
              "device": args.device, "device_name": first_ok.get("device_name", "cpu"),
              "torch": first_ok.get("torch"), "peak_flops_bf16": PEAK_BF16_FLOPS,
              "targets": TARGETS, "wall_s": time.perf_counter() - t0, "rows": rows,
              "summary": summary}
    dests = [args.out] + ([args.copy_to] if args.copy_to else [])
    for dest in dests:
        dest.mkdir(parents=True, exist_ok=True)
        suffix = "-quick" if args.quick else ""
        path = dest / f"{date}-{tag}-train_throughput{suffix}.json"
        path.write_text(json.dumps(result, indent=1))
        for prof in sorted(work.glob("profile-*.txt")):
            (dest / f"{date}-{tag}-{prof.stem}{suffix}.txt").write_text(prof.read_text())
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
