"""What the harvested tables hold: the metric groups are ranked by, the statuses whose runs
enter the statistics, the final metrics and curves read from each run, the column order of
runs.parquet and curves.parquet, and the progress column (tokens or steps) of a curves table."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PRIMARY", "INCLUDED_STATUSES", "FINAL_METRICS", "CURVE_METRICS", "GROUP_METRICS",
           "COMPARE_METRICS", "CURVE_STATS", "CURVE_COLUMNS", "FRONT_COLUMNS",
           "progress_column"]

PRIMARY = "val_loss"  # the metric groups are ranked by (lower is better)
# Statuses whose final metrics enter the statistics. `in_progress` is an imported Hugging Face run
# whose latest checkpoint is short of max_steps (a shape sweep compared runs still training); the
# analysis then also ranks every group at the progress all runs reached.
INCLUDED_STATUSES = ("completed", "in_progress")
FINAL_METRICS = ("val_loss", "best_val_loss", "val_ppl", "val_acc", "val_top5", "val_ece",
                 "val_confidence", "val_entropy", "final_train_loss", "tokens_per_s", "wall_s",
                 "train_wall_s", "peak_mem_mb", "latency_ms_seq128", "latency_ms_seq512",
                 "expert_gini", "expert_entropy", "test_loss", "test_ppl")
# epoch and epoch_train_loss: on the evaluation at each epoch boundary of an `epochs` budget
CURVE_METRICS = ("loss", "ppl", "acc", "top5", "ece", "confidence", "entropy", "lr", "grad_norm",
                 "tokens_per_s", "expert_gini", "expert_entropy", "epoch", "epoch_train_loss")
GROUP_METRICS = ("val_loss", "best_val_loss", "val_ppl", "val_acc", "val_top5", "val_ece",
                 "tokens_per_s", "peak_mem_mb", "tokens", "loss_per_mtok", "loss_drop_per_mtok",
                 "early_drop_per_mtok", "late_drop_per_mtok", "early_late_ratio", "early_share",
                 "test_loss", "test_ppl")
COMPARE_METRICS = ("val_loss", "val_ppl", "val_acc")
# (split, metric) curves that get per-run statistics, and whether lower is better
CURVE_STATS = {("val", "loss"): ("val_loss", True), ("val", "ppl"): ("val_ppl", True),
               ("val", "acc"): ("val_acc", False), ("val", "top5"): ("val_top5", False),
               ("val", "ece"): ("val_ece", True), ("train", "loss"): ("train_loss", True)}
CURVE_COLUMNS = ["run_id", "variant", "group", "seed", "step", "tokens", "split", "metric",
                 "value"]
FRONT_COLUMNS = ["run_id", "group", "groups", "variant", "seed", "status", "source", "differs",
                 "params_total", "params_non_embedding", "tokens", "steps", *FINAL_METRICS]


def progress_column(curves: pd.DataFrame) -> str:
    """``tokens`` where every curve point has a token count, else ``step`` (imported HF runs
    log steps; tokens only when the Trainer counted them)."""
    return "tokens" if len(curves) and curves["tokens"].notna().all() else "step"
