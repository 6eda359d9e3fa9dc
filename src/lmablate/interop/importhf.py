"""Import Hugging Face Trainer output directories as a study (the shape sweep's layout).

    10_22_160_240/checkpoint-20000/trainer_state.json      (+ config.json, model.safetensors)
    10_22_160_240/checkpoint-40000/trainer_state.json
    14_24_448_896/...

The shape sweep this mirrors copied each run's latest ``trainer_state.json`` by hand and parsed
the directory name with a bash regex. Here the latest checkpoint's ``log_history`` becomes the
run's curves (train loss, learning rate, grad norm; every ``eval_*`` metric), the named groups of
``--name-pattern`` become config columns and sweep axes, ``config.json`` gives the model shape
and ``model.safetensors``'s header the exact parameter count. The result is the same runs/curves
tables, summary, analysis and figures as a native study:

    PATTERN='(?P<heads>\\d+)_(?P<layers>\\d+)_\\d+_single_gpu_(?P<hidden>\\d+)_(?P<inter>\\d+)_.*'
    lmablate import-hf ablations/*_from_scratch_* --out results/ablations --name-pattern "$PATTERN"
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmablate.errors import ConfigError, DataError
from lmablate.figures.plan import figure_lines, plan_figures
from lmablate.results.collect import RunData, tables
from lmablate.results.harvest import write_outputs

__all__ = ["import_hf", "load_hf_run", "latest_state", "safetensors_params", "compile_pattern"]

# Trainer log keys -> lmablate curve metrics
TRAIN_KEYS = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm"}
EVAL_RENAME = {"loss": "loss", "perplexity": "ppl", "accuracy": "acc"}
EVAL_SKIP = {"runtime", "samples_per_second", "steps_per_second"}
# config.json -> lmablate model columns (so sizes, heatmaps and the scaling fit work alike)
CONFIG_KEYS = {"hidden_size": "model.d_model", "num_hidden_layers": "model.n_layers",
               "num_attention_heads": "model.n_heads", "num_key_value_heads": "model.n_kv_heads",
               "intermediate_size": "model.d_ff", "vocab_size": "model.vocab_size",
               "tie_word_embeddings": "model.tie_embeddings",
               "num_local_experts": "model.num_experts", "num_experts": "model.num_experts"}
EMBEDDING_NAMES = ("embed_tokens", "wte", "wpe", "word_embeddings", "position_embeddings",
                   "lm_head", "embed_out")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    try:
        rx = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"not a valid regular expression: {err}", key="--name-pattern") from None
    if not rx.groupindex:
        raise ConfigError("expected named groups, e.g. '(?P<heads>\\d+)_(?P<layers>\\d+)'; they "
                          "become the runs' config columns", key="--name-pattern")
    return rx


def latest_state(run_dir: str | Path) -> Path:
    """The trainer_state.json with the highest ``global_step`` among ``checkpoint-*/`` (and the
    run directory itself, where ``trainer.save_state()`` writes the final one)."""
    d = Path(run_dir)
    if not d.is_dir():
        raise DataError(f"{d}: not a directory")
    candidates = [p for p in d.glob("checkpoint-*/trainer_state.json")]
    if (d / "trainer_state.json").is_file():
        candidates.append(d / "trainer_state.json")
    if not candidates:
        raise DataError(f"{d}: no trainer_state.json (expected checkpoint-*/trainer_state.json as "
                        "the Hugging Face Trainer writes it)")

    def step(p: Path) -> tuple[int, int]:
        try:
            gs = int(json.loads(p.read_text()).get("global_step") or 0)
        except (json.JSONDecodeError, OSError, ValueError):
            gs = -1
        m = re.search(r"checkpoint-(\d+)$", p.parent.name)
        return gs, int(m.group(1)) if m else -1

    return max(candidates, key=step)


def safetensors_params(path: str | Path) -> dict[str, int] | None:
    """Total and embedding parameter counts from a safetensors header (no tensor is read)."""
    p = Path(path)
    if not p.is_file():
        return None
    with open(p, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    total = emb = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        count = math.prod(info["shape"])
        total += count
        if any(k in name for k in EMBEDDING_NAMES):
            emb += count
    return {"total": total, "embedding": emb, "non_embedding": total - emb}


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _history_blocks(history: Sequence[dict[str, Any]], tokens_per_step: int | None
                    ) -> list[tuple[str, str, list, list, list]]:
    """log_history -> (split, metric, steps, tokens, values) blocks, in log order."""
    points: dict[tuple[str, str], tuple[list, list, list]] = {}

    def add(split: str, metric: str, entry: dict[str, Any], value: float) -> None:
        s, t, v = points.setdefault((split, metric), ([], [], []))
        step = int(entry["step"])
        tok = entry.get("num_input_tokens_seen")
        if tok is None and tokens_per_step:
            tok = step * tokens_per_step
        s.append(step)
        t.append(float(tok) if tok is not None else math.nan)
        v.append(float(value))

    for e in history:
        if "step" not in e:
            continue
        if "eval_loss" in e:
            for k, v in e.items():
                name = k[len("eval_"):] if k.startswith("eval_") else None
                if name and name not in EVAL_SKIP and isinstance(v, (int, float)):
                    add("val", EVAL_RENAME.get(name, name), e, v)
        elif "loss" in e:
            for k, m in TRAIN_KEYS.items():
                if isinstance(e.get(k), (int, float)):
                    add("train", m, e, e[k])
    return [(split, metric, *cols) for (split, metric), cols in points.items()]


def load_hf_run(run_dir: str | Path, pattern: re.Pattern[str], *, study: str | None = None,
                tokens_per_step: int | None = None) -> RunData:
    """One Trainer output directory -> :class:`~lmablate.results.collect.RunData`."""
    d = Path(run_dir)
    name = d.resolve().name
    m = pattern.fullmatch(name)
    if m is None:
        raise DataError(f"{d}: the name {name!r} does not match --name-pattern "
                        f"{pattern.pattern!r}")
    fields = {k: _value(v) for k, v in m.groupdict().items() if v is not None}
    state_path = latest_state(d)
    try:
        state = json.loads(state_path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{state_path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    history = state.get("log_history")
    if not isinstance(history, list):
        raise DataError(f"{state_path}: no log_history list (not a Trainer state?)")
    blocks = _history_blocks(history, tokens_per_step)
    global_step, max_steps = int(state.get("global_step") or 0), state.get("max_steps")
    status = "completed" if not max_steps or global_step >= int(max_steps) else "in_progress"
    row: dict[str, Any] = {"run_id": name, "study": study,
                           "variant": str(fields.get("variant", "baseline")),
                           "seed": fields.get("seed", 0), "status": status, "source": "hf",
                           "differs": "", "steps": global_step,
                           "checkpoint": str(state_path.parent.name), "max_steps": max_steps}
    for k, v in fields.items():
        row[k] = v
        row[f"axis.{k}"] = v
        if k in ("lr", "learning_rate"):
            row["train.lr"] = v
    config = state_path.parent / "config.json"
    if config.is_file():
        cfg = json.loads(config.read_text())
        row["model.type"] = cfg.get("model_type")
        for key, col in CONFIG_KEYS.items():
            if key in cfg and cfg[key] is not None:
                row[col] = cfg[key]
    counts = safetensors_params(state_path.parent / "model.safetensors")
    if counts:
        row.update({f"params_{k}": v for k, v in counts.items()})
    evals = [e for e in history if "eval_loss" in e and isinstance(e["eval_loss"], (int, float))]
    trains = [e for e in history if "loss" in e and "eval_loss" not in e]
    if evals:
        row["val_loss"] = float(evals[-1]["eval_loss"])
        row["best_val_loss"] = min(float(e["eval_loss"]) for e in evals)
        row["val_ppl"] = math.exp(row["val_loss"]) if row["val_loss"] < 700 else math.inf
        if "eval_accuracy" in evals[-1]:
            row["val_acc"] = evals[-1]["eval_accuracy"]
    if trains:
        row["final_train_loss"] = float(trains[-1]["loss"])
    summary = next((e for e in reversed(history) if "train_runtime" in e), None)
    if summary:
        row["train_wall_s"] = summary.get("train_runtime")
    seen = next((e["num_input_tokens_seen"] for e in reversed(history)
                 if "num_input_tokens_seen" in e), None)
    row["tokens"] = seen if seen is not None else (
        global_step * tokens_per_step if tokens_per_step else None)
    return RunData(row, blocks, None)


def import_hf(run_dirs: Sequence[str | Path], out_dir: str | Path, *, name_pattern: str,
              study: str | None = None, baseline: str = "baseline",
              tokens_per_step: int | None = None, plots: bool = True) -> dict[str, Any]:
    """Import Trainer output directories into ``out_dir`` (tables, summary.json, analysis.txt,
    RESULTS.md and, with ``plots``, every figure the runs' axes support under plots/)."""
    if not run_dirs:
        raise ConfigError("expected at least one run directory", key="DIR")
    pattern = compile_pattern(name_pattern)
    study = study or Path(out_dir).name
    data = [load_hf_run(d, pattern, study=study, tokens_per_step=tokens_per_step)
            for d in run_dirs]
    runs, curves, reliability = tables(data)
    figures = plan_figures(runs.to_dict("records"))
    summary = write_outputs(runs, curves, reliability, out_dir, study=study, baseline=baseline,
                            figures=figure_lines(figures))
    if plots:
        from lmablate.figures.registry import draw
        from lmablate.figures.style import save

        for name, spec in figures.items():
            opts = {k: v for k, v in spec.items() if k != "kind"}
            save(draw(spec["kind"], runs, curves, baseline=baseline, summary=summary,
                      reliability=reliability, **opts), Path(out_dir) / "plots" / f"{name}.png")
    return summary
