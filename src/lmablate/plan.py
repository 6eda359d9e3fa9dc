"""The run table ``lmablate plan`` prints: what a study will train, before it trains."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from . import accounting
from .study import Study

__all__ = ["plan_table", "render", "measured_throughput"]


def _padded_vocab(run: Any) -> int:
    m, t = run.config.model, run.config.tokenizer
    if m.vocab_size:
        return m.vocab_size
    v = {"byte": 257, "char": 256}.get(t.kind, t.vocab_size)
    return math.ceil(v / m.vocab_multiple) * m.vocab_multiple


def measured_throughput(study: Study, results_root: str | Path = "results") -> float | None:
    """Median training tokens/s of this study's finished runs (final.json), if any."""
    d = Path(results_root) / study.name / "runs"
    rates = []
    for f in d.glob("*/final.json") if d.is_dir() else []:
        try:
            tps = json.loads(f.read_text()).get("tokens_per_s")
        except (OSError, json.JSONDecodeError):
            continue
        if tps:
            rates.append(float(tps))
    return sorted(rates)[len(rates) // 2] if rates else None


def plan_table(study: Study, tokens_per_second: float | None = None) -> list[dict[str, Any]]:
    tps = tokens_per_second or measured_throughput(study)
    rows = []
    for r in study.runs:
        vocab = _padded_vocab(r)
        seq = r.config.train.seq_len
        ctx = r.config.model.context_length or seq
        counts = accounting.param_counts(r.config.model, vocab, ctx)
        t = r.config.train
        per_step = t.batch_size * t.grad_accum * seq
        tokens = math.ceil(t.tokens / per_step) * per_step if t.epochs is None else None
        fpt = accounting.flops_per_token(r.config.model, vocab, seq)
        rows.append({
            "run_id": r.run_id, "variant": r.variant, "seed": r.seed,
            "differs": ", ".join(f"{k}={v}" for k, v in r.diff.items()) or "-",
            "params": counts["total"], "non_embedding": counts["non_embedding"],
            "trainable": counts["trainable"], "tokens": tokens,
            "flops": fpt * tokens if tokens else None,
            "est_seconds": tokens / tps if (tps and tokens) else None,
        })
    return rows


def _fmt_count(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


def render(rows: list[dict[str, Any]], fmt: str, study: Study) -> str:
    if fmt == "json":
        return json.dumps({"study": study.name, "runs": rows}, indent=2)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")
    cols = [("run_id", "run ID", str), ("differs", "differs from defaults", str),
            ("params", "params", _fmt_count), ("non_embedding", "non-emb", _fmt_count),
            ("tokens", "tokens", _fmt_count), ("flops", "FLOPs", _fmt_count),
            ("est_seconds", "est. time", _fmt_time)]
    table = [[f(r[k]) for k, _, f in cols] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, (_, h, _) in enumerate(cols)]
    widths[1] = min(widths[1], 48)
    lines = ["  ".join(h.ljust(w) for (_, h, _), w in zip(cols, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for row in table:
        cells = [c if len(c) <= w else c[: w - 1] + "…" for c, w in zip(row, widths)]
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)))
    tokens = sum(r["tokens"] or 0 for r in rows)
    flops = sum(r["flops"] or 0 for r in rows)
    secs = [r["est_seconds"] for r in rows if r["est_seconds"] is not None]
    lines.append("")
    lines.append(f"{len(rows)} runs ({len({r['variant'] for r in rows})} variants x seeds) in "
                 f"study {study.name!r}: {_fmt_count(tokens)} tokens, {_fmt_count(flops)} FLOPs"
                 + (f", about {_fmt_time(sum(secs))} of training at the measured throughput"
                    if secs else "; no throughput measured yet (pass --tokens-per-second)"))
    return "\n".join(lines)
