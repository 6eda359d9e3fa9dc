"""What the Snakefile needs while it parses, from the packages below the workflow: its one door.

The rules (rules/*.smk) import only lmablate, lmablate.study.* and lmablate.workflow.*; what
they need from data, engine, evaluation and results to build the DAG comes through here::

    canonical          params that compare equal whatever the YAML order
    manifest_path      where a text corpus is prepared (resources/corpora/<name>-<hash>/)
    portable           a corpus spec as a rule's params (no machine-local keys)
    study_lr_find      the runs of a study's `lr_find:` block and the test's options
    study_eval         a study's downstream-task plan (`eval_tasks:`), or None
    planned_rows       one row per planned run, as the harvest will see it
    study_figures      the figures those rows support (or the study's own `figures:` pick),
                       and a two-phase study's figures of phase 1
    figure_summary     a figure's one-line summary on the results page
    figure_caption     the name of a figure's report caption
    caption_text       a caption's text (reStructuredText), from its figure kind's row
    write_captions     every caption written where `snakemake --report` reads it
    figure_subcategory a figure's section of the report
    shared_points      runs several sweep points share
    swept_axes         the axes whose value differs between the study's runs
    scan_runs          finished runs checked at each parse: damaged files, runs to recheck
    damage_message     the one line a damaged run stops the parse with
    MANIFEST_FILES     the files a run's final.json vouches for

Nothing here loads torch, pandas or matplotlib: every `snakemake` invocation (each job's own
parse included) imports this module.
"""

from __future__ import annotations

import json
from typing import Any

from lmablate.data.corpora import manifest_path
from lmablate.dicts import canonical_json
from lmablate.engine.integrity import MANIFEST_FILES, damage_message, scan_runs
from lmablate.evaluation import study_eval
from lmablate.figures.plan import planned_rows, study_figures
from lmablate.figures.registry import (
    caption_text,
    figure_caption,
    figure_subcategory,
    figure_summary,
    write_captions,
)
from lmablate.results.collect import shared_points, swept_axes
from lmablate.study.corpus_spec import portable
from lmablate.study.lrfind_spec import study_lr_find

__all__ = ["MANIFEST_FILES", "canonical", "caption_text", "damage_message", "figure_caption",
           "figure_subcategory", "figure_summary", "manifest_path", "planned_rows", "portable",
           "scan_runs", "shared_points", "study_figures", "swept_axes",
           "study_eval", "study_lr_find", "write_captions"]


def canonical(obj: Any) -> Any:
    """``obj`` with every mapping's keys sorted: params compare equal whatever the YAML order,
    so Snakemake's params trigger never re-runs a job because keys were reordered."""
    return json.loads(canonical_json(obj))
