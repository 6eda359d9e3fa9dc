"""Reading finished run directories into the harvest's tables.

    results/<study>/runs/<run_id>/{config.yaml, final.json, metrics.jsonl}
        -> RunData (:func:`load_run`; many in parallel: :func:`collect`)
        -> runs, curves, reliability DataFrames (:func:`tables`)

A *group* is one configuration: the runs that differ only by seed (a variant, or a variant at one
grid point). A run that several sweep points resolve to (one-axis sweeps sharing their centre,
:attr:`lmablate.study.sweep.Run.shared`) is one row of the runs table, its ``groups`` column
naming every group it belongs to; :func:`group_rows` expands it to one row per group. Run IDs are
never parsed: every column comes from the run's own config.yaml.

pandas is imported inside the functions that need it: the Snakefile imports this module at parse
time (:func:`shared_points`) and every job re-parses the Snakefile.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lmablate.dicts import flatten
from lmablate.engine.integrity import verify_run
from lmablate.errors import DataError
from lmablate.results.columns import CURVE_COLUMNS, CURVE_METRICS, FINAL_METRICS, FRONT_COLUMNS
from lmablate.results.efficiency import add_efficiency
from lmablate.results.shape import present
from lmablate.study.sweep import format_value

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RunData", "curve_blocks", "load_run", "collect", "short_names", "group_rows",
           "tables", "shared_points", "swept_axes", "lr_lines"]


@dataclass
class RunData:
    """One run as read from disk: its table row, its curves and its calibration bins."""

    row: dict[str, Any]
    blocks: list[tuple[str, str, list, list, list]] = field(default_factory=list)
    # (split, metric, steps, tokens, values), one block per curve
    reliability: Mapping[str, Sequence[float]] | None = None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: missing (every run directory holds its config.yaml)") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster on 1,000 runs
    cfg = yaml.load(text, Loader=loader)
    if not isinstance(cfg, dict):
        raise DataError(f"{path}: expected a mapping, got {type(cfg).__name__}")
    return cfg


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing (a finished run writes final.json last)") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def _read_jsonl(path: Path, sha256: str | None = None) -> list[dict[str, Any]]:
    """metrics.jsonl parsed as one JSON array (a third of the time of a loads() per line); a
    torn last line (a killed writer) is dropped, as :func:`lmablate.io.read_jsonl` does.
    ``sha256``: the checksum final.json recorded; the file must still be the one written then."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = None
    if sha256 is not None and (data is None or hashlib.sha256(data).hexdigest() != sha256):
        raise DataError(f"{path}: {'missing' if data is None else 'changed'} since the run "
                        "finished (sha256 mismatch with final.json); restore it, or delete "
                        f"{path.parent / 'final.json'} and rerun to redo the run")
    if data is None:
        return []
    text = data.decode()
    lines = [ln for ln in text.split("\n") if ln.strip()]
    try:
        return json.loads("[" + ",".join(lines) + "]")
    except json.JSONDecodeError:
        from lmablate.io import read_jsonl

        return read_jsonl(path)


def curve_blocks(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, list, list, list]]:
    """metrics.jsonl records -> one (split, metric, steps, tokens, values) block per curve.

    MoE records carry ``expert_load`` (each expert's share of routed training tokens since the
    previous evaluation); expert ``i`` becomes metric ``load_i`` of split ``expert``.
    """
    by_split: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_split.setdefault(r.get("split", "train"), []).append(r)
    blocks = []
    for split, recs in by_split.items():
        keys = {k for r in recs for k in r}
        steps = [r["step"] for r in recs]
        toks = [r["tokens"] for r in recs]
        for m in CURVE_METRICS:
            if m not in keys:
                continue
            vals = [r.get(m) for r in recs]
            if all(type(v) is float or type(v) is int for v in vals):  # the common case
                blocks.append((split, m, steps, toks, vals))
                continue
            keep = [i for i, v in enumerate(vals) if type(v) is float or type(v) is int]
            if keep:
                blocks.append((split, m, [steps[i] for i in keep], [toks[i] for i in keep],
                               [vals[i] for i in keep]))
        if "expert_load" in keys:
            loads = [r for r in recs if isinstance(r.get("expert_load"), list)]
            steps_l = [r["step"] for r in loads]
            toks_l = [r["tokens"] for r in loads]
            for i in range(len(loads[0]["expert_load"])):
                blocks.append(("expert", f"load_{i}", steps_l, toks_l,
                               [r["expert_load"][i] for r in loads]))
    return blocks


def load_run(run_dir: str | Path) -> RunData:
    """Read one lmablate run directory (config.yaml, final.json, metrics.jsonl)."""
    d = Path(run_dir)
    cfg = _read_config(d / "config.yaml")
    final = _read_json(d / "final.json")
    row: dict[str, Any] = {"run_id": cfg.get("run_id", d.name), "study": cfg.get("study"),
                           "variant": cfg.get("variant") or "baseline",
                           "seed": cfg.get("train", {}).get("seed", cfg.get("seed")),
                           "status": final.get("status", "unknown"), "source": "lmablate",
                           "differs": ", ".join(f"{k}={format_value(v)}"
                                                for k, v in (cfg.get("diff") or {}).items())}
    sections = {s: cfg.get(s, {}) for s in ("model", "train", "data", "tokenizer")}
    for k, v in flatten(sections).items():
        row[k] = json.dumps(v) if isinstance(v, (list, dict)) else v
    for k, v in (cfg.get("axes") or {}).items():
        row[f"axis.{k}"] = v
    for k, v in (final.get("params") or {}).items():
        row[f"params_{k}"] = v
    for k in ("steps", "tokens", "planned_tokens", "diverged_at_step", "stopped_early_at_step",
              "flops_per_token",
              "vocab_size", "epochs", "device", "precision", "data_replaced_chars",
              *FINAL_METRICS):
        row[k] = final.get(k)
    row["flops"] = (final.get("flops_per_token") or 0) * (final.get("tokens") or 0) or None
    for fname, prefix in (("tasks.json", "task"), ("harness.json", "harness")):
        if (d / fname).is_file():  # downstream tasks (lmablate.evaluation), joined as columns
            from lmablate.evaluation.runner import tasks_to_columns

            row.update(tasks_to_columns(_read_json(d / fname), prefix))
    rel = final.get("reliability")
    verify_run(d, final)  # the files final.json vouches for (sizes; config.yaml's hash)
    records = _read_jsonl(d / "metrics.jsonl", final.get("metrics_sha256"))
    return RunData(row, curve_blocks(records),
                   rel if isinstance(rel, Mapping) else None)


def collect(run_dirs: Iterable[str | Path], workers: int | None = None,
            shared: Mapping[str, Sequence[Sequence[Any]]] | None = None,
            swept: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(runs, curves, reliability) tables of lmablate run directories.

    Parsing YAML and JSON is most of a large harvest; from 200 runs on it is spread over
    ``workers`` forked processes (default: the CPUs this process may use, at most 8).
    ``shared``: run ID -> the other sweep points ``(variant, axes)`` it stands for, ``swept``:
    the axes the study sweeps (see :func:`tables`).
    """
    dirs = list(run_dirs)
    workers = workers or min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else os.cpu_count() or 1)
    if workers < 2 or len(dirs) < 200 or "fork" not in mp.get_all_start_methods():
        return tables([load_run(d) for d in dirs], shared, swept)
    with mp.get_context("fork").Pool(workers) as pool:
        return tables(pool.map(load_run, dirs, chunksize=max(1, len(dirs) // (4 * workers))),
                      shared, swept)


def short_names(columns: Sequence[str]) -> dict[str, str]:
    """``axis.model.d_model`` -> ``d_model`` (the dotted name when two axes end alike)."""
    short = {k: k.rsplit(".", 1)[-1] for k in columns}
    if len(set(short.values())) < len(short):
        short = {k: k[len("axis."):] if k.startswith("axis.") else k for k in columns}
    return short


def _group_labels(rows: Sequence[Mapping[str, Any]], swept: Sequence[str] = ()) -> list[str]:
    """A readable name per configuration: the variant and the grid values that vary in this
    study (``post_norm``; ``n_heads=8, d_model=256``; ``moe, d_model=64``). ``swept``: axes the
    study varies, named even where the rows at hand share one value (a two-phase study's
    phase 2 keeps the names phase 1 gave its configurations)."""
    axis_keys = list(dict.fromkeys(k for r in rows for k in r if k.startswith("axis.")))
    always = {f"axis.{k}" for k in swept}
    varying = [k for k in axis_keys if k in always
               or len({json.dumps(r.get(k), sort_keys=True, default=str) for r in rows}) > 1]
    short = short_names(varying)
    show_variant = len({r.get("variant") for r in rows}) > 1 or not varying
    labels = []
    for r in rows:
        parts = [f"{short[k]}={format_value(r[k])}" for k in varying if r.get(k) is not None]
        variant = str(r.get("variant") or "baseline")
        if show_variant:
            labels.append(f"{variant}, {', '.join(parts)}" if parts else variant)
        else:
            labels.append(", ".join(parts))
    return labels


def _member_row(row: Mapping[str, Any], variant: str, axes: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` as the sweep point (variant, axes) that shares its run."""
    out = {k: v for k, v in row.items() if not k.startswith("axis.")}
    return {**out, "variant": variant, **{f"axis.{k}": v for k, v in axes.items()}}


def _memberships(rows: list[dict[str, Any]],
                 shared: Mapping[str, Sequence[Sequence[Any]]], swept: Sequence[str] = ()) -> None:
    """Group labels of every row, and for a shared run the ``groups`` (labels, ``; ``) and
    ``memberships`` (JSON: group, variant, axes of each point, its own first) columns."""
    extra = [(i, _member_row(r, str(v), a)) for i, r in enumerate(rows)
             for v, a in shared.get(r["run_id"], ())]
    labels = _group_labels(rows + [m for _, m in extra], swept)
    for r, label in zip(rows, labels):
        r["group"] = label
    members: dict[int, list[dict[str, Any]]] = {}
    for (i, m), label in zip(extra, labels[len(rows):]):
        own = members.setdefault(i, [_membership(rows[i], rows[i]["group"])])
        if label not in [x["group"] for x in own]:
            own.append(_membership(m, label))
    for i, own in members.items():
        rows[i]["groups"] = "; ".join(x["group"] for x in own)
        rows[i]["memberships"] = json.dumps(own, default=str)


def _membership(row: Mapping[str, Any], label: str) -> dict[str, Any]:
    return {"group": label, "variant": row["variant"],
            "axes": {k[5:]: v for k, v in row.items() if k.startswith("axis.") and present(v)}}


def group_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs table with one row per (run, group): a run that several sweep points share
    appears once in each of their groups, with that point's variant and axes (per-group
    statistics, per-group selection). Other tables come back as they are."""
    import pandas as pd

    if "memberships" not in runs or not runs["memberships"].notna().any():
        return runs
    axis_cols = [c for c in runs.columns if c.startswith("axis.")]
    out = []
    for row in runs.to_dict("records"):
        members = row.get("memberships")
        if not isinstance(members, str) or not members:
            out.append(row)
            continue
        for m in json.loads(members):
            out.append({**row, **dict.fromkeys(axis_cols), "group": m["group"],
                        "variant": m["variant"], **{f"axis.{k}": v for k, v in m["axes"].items()}})
    return pd.DataFrame(out, columns=runs.columns)


def tables(data: Sequence[RunData], shared: Mapping[str, Sequence[Sequence[Any]]] | None = None,
           swept: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Assemble (runs, curves, reliability) DataFrames; curves are built column-wise (a few
    million points for a 1,000-run sweep), never as a list of dicts. ``shared``: run ID -> the
    other sweep points (variant, axes) it stands for: its row's ``groups`` column lists every
    group it belongs to (:func:`group_rows` expands it; curves carry its own group).
    ``swept``: the axes the study varies (:func:`swept_axes`), in every group name."""
    import numpy as np
    import pandas as pd

    if not data:
        raise DataError("no run directories to harvest")
    rows = [d.row for d in data]
    ids = [r["run_id"] for r in rows]
    if len(set(ids)) < len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"run {dup!r} appears twice (two directories with the same run_id)")
    _memberships(rows, shared or {}, swept)
    runs = pd.DataFrame(rows)
    front = [c for c in FRONT_COLUMNS if c in runs.columns]
    runs = runs[front + [c for c in runs.columns if c not in front]]

    lengths = [len(b[2]) for d in data for b in d.blocks]
    n = int(sum(lengths))
    run_index = np.repeat(np.asarray([i for i, d in enumerate(data) for _ in d.blocks],
                                     dtype=np.int64), np.asarray(lengths, dtype=np.int64))
    split_names = [b[0] for d in data for b in d.blocks]
    metric_names = [b[1] for d in data for b in d.blocks]

    def categorical(names: list[str]) -> Any:
        cats = list(dict.fromkeys(names))
        lookup = {c: i for i, c in enumerate(cats)}
        codes = np.repeat(np.asarray([lookup[x] for x in names], dtype=np.int32), lengths)
        return pd.Categorical.from_codes(codes, categories=cats)

    def column(i: int, dtype: Any) -> np.ndarray:
        out = np.empty(n, dtype=dtype)
        pos = 0
        for d in data:
            for b in d.blocks:
                k = len(b[i])
                out[pos:pos + k] = b[i]
                pos += k
        return out

    run_ids = pd.Categorical.from_codes(run_index.astype(np.int32), categories=ids) if n else \
        pd.Categorical([], categories=ids)
    seeds = runs["seed"].to_numpy()
    curves = pd.DataFrame({
        "run_id": run_ids,
        "variant": pd.Categorical(runs["variant"].to_numpy()[run_index]),
        "group": pd.Categorical(runs["group"].to_numpy()[run_index]),
        "seed": seeds[run_index] if n else np.empty(0, dtype=np.int64),
        "step": column(2, np.int64),
        "tokens": column(3, np.float64),
        "split": categorical(split_names) if n else pd.Categorical([]),
        "metric": categorical(metric_names) if n else pd.Categorical([]),
        "value": column(4, np.float64),
    }, columns=CURVE_COLUMNS)

    rel_rows: dict[str, list] = {k: [] for k in ("run_id", "variant", "group", "seed", "bin",
                                                 "confidence", "accuracy", "count")}
    for d in data:
        rel = d.reliability
        if not rel or not rel.get("bin_confidence"):
            continue
        k = len(rel["bin_confidence"])
        for key in ("run_id", "variant", "group", "seed"):
            rel_rows[key] += [d.row[key]] * k
        rel_rows["bin"] += list(range(k))
        rel_rows["confidence"] += list(rel["bin_confidence"])
        rel_rows["accuracy"] += list(rel["bin_accuracy"])
        rel_rows["count"] += list(rel["bin_count"])
    reliability = pd.DataFrame(rel_rows)
    return add_efficiency(runs, curves), curves, reliability


def shared_points(runs: Iterable[Any]) -> dict[str, list[list[Any]]]:
    """Run ID -> the other sweep points ``[variant, axes]`` of each run several points share
    (:attr:`lmablate.study.sweep.Run.shared`), as plain data for
    :func:`lmablate.results.harvest.harvest`."""
    return {r.run_id: [[v, dict(a)] for v, a in r.shared] for r in runs if r.shared}


def swept_axes(runs: Iterable[Any]) -> list[str]:
    """The axes (``train.lr``, ``model.d_model``) whose value differs between the study's planned
    runs (:class:`lmablate.study.sweep.Run`), for :func:`lmablate.results.harvest.harvest`."""
    runs = list(runs)
    keys = dict.fromkeys(k for r in runs for k in r.axes)
    return [k for k in keys
            if len({json.dumps(r.axes.get(k), sort_keys=True, default=str) for r in runs}) > 1]


def lr_lines(runs: pd.DataFrame) -> pd.Series:
    """Per run, the name of its configuration apart from the learning rate: runs with the same
    line name differ only in LR (the lines of the LR-sensitivity plot). Configurations are
    compared by what ``differs`` from the defaults minus ``train.lr``; the name is the first
    group label on the line with its ``lr=`` part removed."""
    import pandas as pd

    if "differs" not in runs:
        return runs.group.astype(str)
    keys = runs.differs.fillna("").map(
        lambda d: ", ".join(p for p in d.split(", ") if p and not p.startswith("train.lr=")))
    names: dict[str, str] = {}
    for key, group in zip(keys, runs.group):
        if key not in names:
            parts = [p for p in str(group).split(", ") if not p.startswith("lr=")]
            names[key] = ", ".join(parts) or "defaults"
    return pd.Series([names[k] for k in keys], index=runs.index)
