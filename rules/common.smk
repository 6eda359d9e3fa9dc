# Load and check the study, expand its runs, and the small path helpers every rule uses.
# All logic lives in the lmablate library; this file only calls it.
import copy
import json
import sys

import lmablate
import lmablate.corpora
import lmablate.evaluation
from lmablate.harvest import plan_figures, planned_rows
from snakemake.utils import min_version, validate

min_version("9.0")

STUDY_FILE = str((workflow.configfiles or ["config.yaml"])[-1])
try:
    STUDY = lmablate.study_from_dict(config, source=STUDY_FILE)
except lmablate.ConfigError as err:
    sys.exit(f"lmablate: {err}")
# the merged study (includes, scale, overrides applied), not the raw config; a copy, because
# validate() fills in defaults
validate(copy.deepcopy(STUDY.doc), schema="../schemas/config.schema.yaml")

NAME = STUDY.name
RUNS = STUDY.by_id
EXECUTION = STUDY.execution


wildcard_constraints:
    run_id=r"[A-Za-z0-9._=+-]+",
    corpus=r"[A-Za-z0-9._-]+",
    dataset=r"[A-Za-z0-9._-]+",


def canonical(obj):
    """``obj`` with every mapping's keys sorted: params compare equal whatever the YAML order,
    so Snakemake's params trigger never re-runs a job because keys were reordered."""
    return json.loads(lmablate.sweep.canonical_json(obj))


def dataset_of(run):
    """Name of a run's tokenizer and token store: <corpus>-<data_id>."""
    return f"{run.config.data.corpus}-{run.data_id}"


DATASETS = {dataset_of(r): r for r in STUDY.runs}


def get_tokens(wildcards):
    return f"resources/tokens/{dataset_of(RUNS[wildcards.run_id])}.h5"


def corpus_of(dataset):
    return STUDY.corpora[DATASETS[dataset].config.data.corpus]


def get_corpus_manifest(wildcards):
    """Text corpora are prepared into a manifest; pre-tokenized (hdf5) corpora have none."""
    spec = corpus_of(wildcards.dataset)
    return [] if spec["source"] == "hdf5" else f"resources/corpora/{spec['name']}/manifest.json"


def get_tokenize_inputs(wildcards):
    inputs = {"manifest": get_corpus_manifest(wildcards)}
    hdf5 = corpus_of(wildcards.dataset)["source"] == "hdf5"
    if not hdf5 or DATASETS[wildcards.dataset].config.tokenizer.kind == "file":
        inputs["tokenizer"] = f"resources/tokenizers/{wildcards.dataset}/tokenizer.json"
    return inputs


def run_dir(run_id):
    return f"results/{NAME}/runs/{run_id}"


def get_run_finals(wildcards):
    return [f"{run_dir(r)}/final.json" for r in RUNS]


# Downstream tasks (only for studies with `eval_tasks:`; rules/evaluate.smk).
EVAL = None
try:
    EVAL = lmablate.evaluation.study_eval(STUDY)
except lmablate.ConfigError as err:
    sys.exit(f"lmablate: {err}")


def get_task_outputs():
    """tasks.json (and harness.json) of every run, for `rule all` and harvest; [] without
    eval_tasks."""
    if EVAL is None:
        return []
    names = (["tasks.json"] if EVAL.config.tasks else []) + (
        ["harness.json"] if EVAL.harness else []
    )
    return [f"{run_dir(r)}/{name}" for r in RUNS for name in names]


def get_eval_task_inputs(wildcards):
    return EVAL.inputs[wildcards.task_id]


def get_run_tokenizer(wildcards):
    return f"resources/tokenizers/{dataset_of(RUNS[wildcards.run_id])}/tokenizer.json"


# The figure list is fixed at parse time from the study's runs (lmablate.harvest.plan_figures):
# every figure the sweep axes support, or the study's own `figures:` pick.
FIGURES = plan_figures(planned_rows(STUDY), STUDY.doc.get("figures"))
if EVAL is not None and not STUDY.doc.get("figures"):
    FIGURES["tasks"] = {"kind": "tasks"}
FIGURE_SUBCATEGORY = {
    "loss_curves": "Loss",
    "final_metric": "Loss",
    "params_vs_loss": "Model size and scaling",
    "scaling_law": "Model size and scaling",
    "heatmap": "Sweep axes",
    "lr_sensitivity": "Sweep axes",
    "efficiency": "Efficiency and calibration",
    "calibration": "Efficiency and calibration",
    "moe_load": "Mixture of experts",
    "tasks": "Downstream tasks",
}


def figure_path(name):
    return f"results/{NAME}/plots/{name}.png"


def get_figure_paths():
    """Every figure of the study, for `rule all`."""
    return [figure_path(name) for name in FIGURES]


def figure_outputs():
    return {
        name: report(
            figure_path(name),
            category="Figures",
            subcategory=FIGURE_SUBCATEGORY[spec["kind"]],
            caption=f"../report/{spec['kind']}.rst",
            labels={"figure": name},
        )
        for name, spec in FIGURES.items()
    }


def get_final_output():
    return [
        f"results/{NAME}/runs.csv",
        f"results/{NAME}/summary.json",
        f"results/{NAME}/analysis.txt",
        f"results/{NAME}/RESULTS.md",
        *get_figure_paths(),
    ]


def gpus_per_run():
    """Training jobs ask for a `gpu` resource only where CUDA is visible."""
    if "gpus_per_run" in EXECUTION:
        return int(EXECUTION["gpus_per_run"])
    return 1 if lmablate.cuda_available() else 0
