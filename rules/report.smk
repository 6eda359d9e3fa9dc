# Figures for the report (snakemake --report results/<study>/report.html collects them).
#
# The figure list is fixed at parse time from the study's runs (plan_figures, common.smk):
# every figure the sweep axes support (no heatmap without two numeric axes, no MoE figure for a
# dense study, no LR figure unless the LR varies, no scaling fit below three sizes), or the
# study's own `figures:` pick. The harvested tables give plot_study the same list.
rule plot_study:
    input:
        runs=f"{STUDY_DIR}/runs.parquet",
        curves=f"{STUDY_DIR}/curves.parquet",
        reliability=f"{STUDY_DIR}/reliability.parquet",
        summary=f"{STUDY_DIR}/summary.json",
    output:
        **figure_outputs(),
    log:
        f"logs/{NAME}/plot_study.log",
    benchmark:
        f"benchmarks/{NAME}/plot_study.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        baseline=STUDY.baseline,
        study=NAME,
        figures=FIGURES,
    script:
        "../workflow_scripts/plot_study.py"


# The LR range tests of a study with `lr_find:`, in one figure.
rule plot_lr_find:
    input:
        get_lr_find_results,
    output:
        report(
            figure_path("lr_finder"),
            category="Figures",
            subcategory="Sweep axes",
            caption="../report/lr_finder.rst",
            labels={"figure": "lr_finder"},
        ),
    log:
        f"logs/{NAME}/plot_lr_find.log",
    benchmark:
        f"benchmarks/{NAME}/plot_lr_find.tsv"
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/plot_lr_find.py"


# The results page: findings, ranking, the test split and losses per epoch (where the study has
# them), a two-phase study's phase 1, runs and every figure with its caption, one self-contained
# HTML file that the report's landing page shows (report/workflow.rst inserts it).
rule write_results_page:
    input:
        runs_csv=f"{STUDY_DIR}/runs.csv",
        summary=f"{STUDY_DIR}/summary.json",
        curves=f"{STUDY_DIR}/curves.parquet",
        figures=[spec["path"] for spec in results_page_figures().values()],
        # a two-phase study's phase 1: what it ranked, the selection, its ranking figure
        phase1=(
            [f"{PHASE1_DIR}/{f}" for f in ("runs.csv", "selected.json", "ranking.png")]
            if RANKING
            else []
        ),
    output:
        report(
            f"{STUDY_DIR}/results.html",
            category="Analysis",
            caption="../report/results_page.rst",
            labels={"text": "results.html"},
        ),
    log:
        f"logs/{NAME}/write_results_page.log",
    benchmark:
        f"benchmarks/{NAME}/write_results_page.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        study=NAME,
        figures=results_page_figures(),
        phase1_dir=PHASE1_DIR if RANKING else None,
        maximize=bool(RANKING and RANKING.maximize),
    script:
        "../workflow_scripts/write_results_page.py"
