# Load and check the study, expand its runs, and the small path helpers every rule uses.
# All logic lives in the lmablate library; this file only calls it.
import json
import sys
from pathlib import Path

import lmablate
import lmablate.paths as paths
import lmablate.study.phases
from lmablate.workflow.dag import (
    MANIFEST_FILES,
    canonical,
    caption_text,
    damage_message,
    figure_caption,
    figure_subcategory,
    figure_summary,
    manifest_path,
    planned_rows,
    portable,
    scan_runs,
    shared_points,
    study_eval,
    study_figures,
    study_lr_find,
    swept_axes,
    write_captions,
)
from snakemake.utils import min_version

min_version("9.0")

# The study is read from its files by lmablate, as `lmablate plan` reads it (the same checks,
# schema included, and the same one-line messages), not taken from Snakemake's `config`: study
# files are data, and lmablate's loader never evaluates them. profiles/default/config.yaml makes
# Snakemake itself read --configfile with that loader too (lmablate.workflow.snakemake_guard); without that
# profile (`--workflow-profile none`), Snakemake has read them with its YAML templating already.
try:
    STUDY = lmablate.study.load.read_workflow_study(
        workflow.configfiles or ["config.yaml"], workflow.config_settings.config
    )
except lmablate.ConfigError as err:
    sys.exit(f"lmablate: {err}")

NAME = STUDY.name
# the study's folders (lmablate.paths), {run_id} left a wildcard
STUDY_DIR = paths.fill(paths.STUDY_DIR, study=NAME)
RUN_DIR = paths.fill(paths.RUN_DIR, study=NAME)
PHASE1_DIR = paths.fill(paths.PHASE1_DIR, study=NAME)
LR_FIND_DIR = paths.fill(paths.LR_FIND_DIR, study=NAME)
EXECUTION = STUDY.execution
# the checked `execution:` block (include, scale and overrides applied) for the training jobs,
# which read it from the config, not from params: changing it must not re-run finished runs
config["execution"] = EXECUTION
# the checked `logging:` block (experiment trackers), the same way: a change re-runs nothing
config["logging"] = STUDY.doc.get("logging") or {}
# Two-phase studies (`ranking:`): phase-1 runs train first; the checkpoint rule rank_phase1 picks
# the study runs that phase 2 trains (rules/ranking.smk).
try:
    RANKING = lmablate.study.phases.ranking_of(STUDY)
except lmablate.ConfigError as err:
    sys.exit(f"lmablate: {err}")
RUNS = {**STUDY.by_id, **(RANKING.phase1 if RANKING else {})}
# `lr_find:` LR range tests of some runs (rules/train.smk: lr_find, rules/report.smk)
try:
    LR_FIND = study_lr_find(STUDY)
except lmablate.ConfigError as err:
    sys.exit(f"lmablate: {err}")
# A run that cannot fit the device it would train on stops here, before any job, where jobs run
# on this machine (not under Slurm, whose nodes are elsewhere): lmablate.study.plan.check_memory.
if workflow.is_main_process and workflow.local_exec:
    import lmablate.study.plan

    try:
        lmablate.study.plan.check_memory(STUDY)
    except lmablate.ConfigError as err:
        sys.exit(f"lmablate: {err}")
# A folder the workflow writes (results/<study>, resources, ...) that is read-only stops here in
# one line, before any job (lmablate.workflow.writable); a dry run writes nothing and plans.
if workflow.is_main_process and not workflow.output_settings.dryrun:
    import lmablate.workflow.writable as writable

    try:
        writable.check_writable(writable.study_dirs(NAME))
    except lmablate.LmablateError as err:
        sys.exit(f"lmablate: {err}")


wildcard_constraints:
    run_id=r"[A-Za-z0-9._=+-]+",
    corpus=r"[A-Za-z0-9._-]+",
    dataset=r"[A-Za-z0-9._-]+",


_RUN_PARAMS = {}


def run_params(wildcards):
    """A run's resolved config as the train and lr_find rules' `run` param: made once per run
    (Snakemake expands a job's params more than once; a 1,000-run DAG felt it)."""
    if wildcards.run_id not in _RUN_PARAMS:
        _RUN_PARAMS[wildcards.run_id] = canonical(RUNS[wildcards.run_id].to_dict())
    return _RUN_PARAMS[wildcards.run_id]


def dataset_of(run):
    """Name of a run's tokenizer and token store: <corpus>-<data_id>."""
    return paths.dataset(run.config.data.corpus, run.data_id)


DATASETS = {dataset_of(r): r for r in STUDY.runs}


def get_tokens(wildcards):
    return paths.fill(paths.TOKENS, dataset=dataset_of(RUNS[wildcards.run_id]))


def corpus_of(dataset):
    return STUDY.corpora[DATASETS[dataset].config.data.corpus]


def get_corpus_manifest(wildcards):
    """Text corpora are prepared into a manifest; pre-tokenized (hdf5) corpora have none."""
    spec = corpus_of(wildcards.dataset)
    return [] if spec["source"] == "hdf5" else manifest_path(spec)


def get_tokenize_inputs(wildcards):
    inputs = {"manifest": get_corpus_manifest(wildcards)}
    hdf5 = corpus_of(wildcards.dataset)["source"] == "hdf5"
    if not hdf5 or DATASETS[wildcards.dataset].config.tokenizer.kind in ("file", "hub"):
        inputs["tokenizer"] = paths.fill(paths.TOKENIZER, dataset=wildcards.dataset)
    return inputs


def run_dir(run_id):
    return paths.fill(RUN_DIR, run_id=run_id)


def get_run_finals(wildcards):
    """The runs the study's results are made of: every run, or in a two-phase study the runs
    phase 1 selected (known once the rank_phase1 checkpoint has run)."""
    return [f"{run_dir(r)}/final.json" for r in selected_runs()]


def selected_runs():
    if RANKING is None:
        return list(STUDY.by_id)
    with open(checkpoints.rank_phase1.get().output.selected) as fh:
        return json.load(fh)["selected"]


def get_train_inputs(wildcards):
    """The token store, and for a phase-2 run that continues phase 1 the phase-1 run (whose
    checkpoint it resumes)."""
    inputs = {"tokens": ancient(get_tokens(wildcards))}
    phase1 = RANKING.phase1_of.get(wildcards.run_id) if RANKING else None
    if phase1 and RANKING.resume == "continue":
        inputs["phase1"] = ancient(f"{run_dir(phase1)}/final.json")
    return inputs


def get_train_phase(wildcards):
    """train() options of a run in a two-phase study: the early-stopping cohort file of phase 1,
    the phase-1 checkpoint a `resume: continue` phase-2 run starts from."""
    if RANKING is None:
        return {}
    if wildcards.run_id in RANKING.phase1:
        if not RANKING.early_stop:
            return {}
        # one cohort per value of ranking.per; a run shared by two axes is in both
        cohorts = [
            paths.fill(paths.COHORT, study=NAME, cohort=c)
            for c in RANKING.cohorts(wildcards.run_id)
        ]
        return {"cohort": cohorts[0] if len(cohorts) == 1 else cohorts}
    phase1 = RANKING.phase1_of.get(wildcards.run_id)
    if phase1 and RANKING.resume == "continue":
        return {"init_from": paths.fill(paths.CHECKPOINT_DIR, study=NAME, run_id=phase1)}
    return {}


# Downstream tasks (only for studies with `eval_tasks:`; rules/evaluate.smk).
EVAL = None
try:
    EVAL = study_eval(STUDY)
except lmablate.ConfigError as err:
    sys.exit(f"lmablate: {err}")


def get_task_outputs(wildcards=None):
    """tasks.json (and harness.json) of the runs the study's results are made of (every run, or
    in a two-phase study exactly the selected ones, known once rank_phase1 has run), for `rule
    all` and harvest; [] without eval_tasks. Phase-1 runs are ranked, never scored on tasks."""
    if EVAL is None:
        return []
    names = (["tasks.json"] if EVAL.config.tasks else []) + (
        ["harness.json"] if EVAL.harness else []
    )
    return [f"{run_dir(r)}/{name}" for r in selected_runs() for name in names]


def get_eval_task_inputs(wildcards):
    return EVAL.inputs[wildcards.task_id]


def get_run_tokenizer(wildcards):
    return paths.fill(paths.TOKENIZER, dataset=dataset_of(RUNS[wildcards.run_id]))


# The figure list is fixed at parse time from the study's runs (study_figures): every figure
# the sweep axes support, or the study's own `figures:` pick; the task figure with `eval_tasks:`.
# A two-phase study's whole sweep is its phase 1: the figures over the sweep axes are drawn from
# it (results/<study>/phase1/plots/), planned from the phase-1 runs as FIGURES from the study's.
FIGURES, PHASE1_FIGURES = study_figures(
    planned_rows(STUDY),
    STUDY.doc.get("figures"),
    phase1_rows=planned_rows(STUDY, RANKING.phase1.values()) if RANKING is not None else None,
    tasks=EVAL is not None,
)


def figure_path(name):
    return paths.fill(paths.PLOT, study=NAME, name=name)


def get_lr_find_results(wildcards):
    return [f"{paths.fill(LR_FIND_DIR, run_id=r)}/lr_find.json" for r in LR_FIND[0]]


def get_figure_paths():
    """Every figure of the study, for `rule all`."""
    return [figure_path(name) for name in FIGURES]


# A figure's report caption is its kind's row in lmablate.figures.registry, written at each parse
# to a private temporary folder (removed when snakemake exits) that `snakemake --report` reads.
CAPTIONS = write_captions()


def figure_outputs():
    return {
        name: report(
            figure_path(name),
            category="Figures",
            subcategory=figure_subcategory(spec),
            caption=CAPTIONS[figure_caption(spec)],
            labels={"figure": name},
        )
        for name, spec in FIGURES.items()
    }


# the captions of the report's other files (report/<name>.rst)
REPORT_DIR = Path(workflow.basedir) / "report"


def results_page_figures():
    """Figure name -> PNG, report caption (its text) and one-line summary, in the order the
    results page shows them: the study's figures, a two-phase study's phase-1 figures, the LR
    range test."""
    figures = {
        name: {
            "path": figure_path(name),
            "caption": caption_text(figure_caption(spec)),
            "what": figure_summary(spec)
            + (f" Metric: {spec['metric']}." if spec.get("metric") else ""),
        }
        for name, spec in FIGURES.items()
    }
    for name, spec in PHASE1_FIGURES.items():  # a two-phase study's sweep figures
        figures[f"phase1/{name}"] = {
            "path": paths.fill(paths.PHASE1_PLOT, study=NAME, name=name),
            "caption": caption_text(figure_caption(spec)),
            "what": f"Phase 1, every configuration: {figure_summary(spec)}",
        }
    if LR_FIND:
        figures["lr_finder"] = {
            "path": figure_path("lr_finder"),
            "caption": (REPORT_DIR / "lr_finder.rst").read_text(),
            "what": "LR range test of the study's runs: loss against a growing learning rate.",
        }
    return figures


def phase1_figure_outputs():
    """The figures of a two-phase study's phase 1 (PHASE1_FIGURES), for rule plot_phase1."""
    return {
        name: report(
            paths.fill(paths.PHASE1_PLOT, study=NAME, name=name),
            category="Figures",
            subcategory="Phase 1: every configuration",
            caption=CAPTIONS[figure_caption(spec)],
            labels={"figure": f"phase1/{name}"},
        )
        for name, spec in PHASE1_FIGURES.items()
    }


def get_final_output():
    phase1 = [f"{PHASE1_DIR}/selected.json"] if RANKING else []
    phase1 += [paths.fill(paths.PHASE1_PLOT, study=NAME, name=name) for name in PHASE1_FIGURES]
    lr_find = [figure_path("lr_finder")] if LR_FIND else []
    tables = [f"{STUDY_DIR}/{f}" for f in ("runs.csv", "summary.json", "analysis.txt")]
    results = [f"{STUDY_DIR}/RESULTS.md", f"{STUDY_DIR}/results.html"]
    return [*phase1, *lr_find, *tables, *results, *get_figure_paths()]


def gpus_per_run():
    """Training jobs ask for a `gpu` resource only where CUDA is visible."""
    if "gpus_per_run" in EXECUTION:
        return int(EXECUTION["gpus_per_run"])
    return 1 if lmablate.cuda_available() else 0


def train_rate():
    """Throughput the training time limits assume (lmablate.study.plan.study_train_rate): the study's
    execution.tokens_per_s, else the measured rate of its finished runs; read once per parse."""
    if not hasattr(train_rate, "value"):
        import lmablate.study.plan

        train_rate.value = lmablate.study.plan.study_train_rate(STUDY, paths.RESULTS)
    return train_rate.value


def train_runtime(wildcards):
    """Slurm runtime (minutes) of a training job: execution.train_runtime_min, else the run's
    planned tokens at train_rate() with a margin (lmablate.study.plan.train_runtime_min)."""
    if "train_runtime_min" in EXECUTION:
        return int(EXECUTION["train_runtime_min"])
    import lmablate.study.plan

    return lmablate.study.plan.train_runtime_min(RUNS[wildcards.run_id], train_rate())


def train_group(wildcards):
    """`train` where `--group-components train=K` packs K runs into one cluster job, else no
    group: an ungrouped job's Slurm comment names its rule and run ID
    (`rule_train_model_wildcards_<run_id>`), a group job's only the group. A function, so that
    it runs per job: the group settings are not known yet while the Snakefile is read."""
    settings = workflow.group_settings
    return "train" if settings and "train" in settings.group_components else None


# _RECHECK: the runs rules/harvest.smk's parse-time scan found missing a file or changed
def get_run_files(wildcards):
    """final.json and every file it vouches for, of the harvested runs the parse found missing
    a file or changed since the last harvest: targets of `rule all` (Snakemake re-makes a missing
    one, which it would not do for a mere input of an up-to-date harvest) and inputs of harvest
    (a changed one is newer than the tables: harvest checks it). Only those runs: every declared
    file costs Snakemake's DAG time, and a study may hold thousands of runs."""
    return [
        f"{d}/{name}"
        for d in (final.rsplit("/", 1)[0] for final in get_run_finals(wildcards))
        if d in _RECHECK
        for name in ("final.json", *MANIFEST_FILES)
    ]
