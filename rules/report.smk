# Figures for the report (snakemake --report results/<study>/report.html collects them).
#
# The figure list is fixed at parse time from the study's runs (lmablate.harvest.plan_figures):
# every figure the sweep axes support (no heatmap without two numeric axes, no MoE figure for a
# dense study, no LR figure unless the LR varies, no scaling fit below three sizes), or the
# study's own `figures:` pick. The harvested tables give plot_study the same list.

FIGURES = lmablate.harvest.plan_figures(
    lmablate.harvest.planned_rows(STUDY), STUDY.doc.get("figures")
)
FIGURE_SUBCATEGORY = {
    "loss_curves": "1 Loss",
    "final_metric": "1 Loss",
    "params_vs_loss": "2 Size and scaling",
    "scaling_law": "2 Size and scaling",
    "heatmap": "3 Sweep axes",
    "lr_sensitivity": "3 Sweep axes",
    "efficiency": "4 Efficiency and calibration",
    "calibration": "4 Efficiency and calibration",
    "moe_load": "5 Mixture of experts",
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


rule plot_study:
    input:
        runs=f"results/{NAME}/runs.parquet",
        curves=f"results/{NAME}/curves.parquet",
        reliability=f"results/{NAME}/reliability.parquet",
        summary=f"results/{NAME}/summary.json",
    output:
        **figure_outputs(),
    params:
        baseline=STUDY.baseline,
        study=NAME,
        figures=FIGURES,
    log:
        f"logs/{NAME}/plot_study.log",
    benchmark:
        f"benchmarks/{NAME}/plot_study.tsv"
    script:
        "../workflow_scripts/plot_study.py"
