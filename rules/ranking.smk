# Two-phase studies (`ranking:`: rank every configuration on a short budget, train the best
# long): harvest phase 1 and pick the runs phase 2 trains.
# A checkpoint: once it has run, Snakemake re-evaluates the DAG and schedules the selected runs
# (rules/common.smk: get_run_finals reads selected.json).


checkpoint rank_phase1:
    input:
        finals=lambda w: [f"{run_dir(r)}/final.json" for r in RANKING.phase1],
    output:
        selected=f"{PHASE1_DIR}/selected.json",
        runs_csv=f"{PHASE1_DIR}/runs.csv",
        analysis=f"{PHASE1_DIR}/analysis.txt",
        ranking=report(
            f"{PHASE1_DIR}/ranking.png",
            category="Figures",
            subcategory="Phase 1: every configuration",
            caption="../report/phase1_ranking.rst",
            labels={"figure": "phase1/ranking"},
        ),
        runs=f"{PHASE1_DIR}/runs.parquet",
        curves=f"{PHASE1_DIR}/curves.parquet",
    log:
        f"logs/{NAME}/rank_phase1.log",
    benchmark:
        f"benchmarks/{NAME}/rank_phase1.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        study=NAME,
        baseline=STUDY.baseline,
        ranking=RANKING.selection() if RANKING else {},
        # the figures drawn from phase 1 (rule plot_phase1), which its RESULTS.md links
        figures=PHASE1_FIGURES,
    script:
        "../workflow_scripts/rank_phase1.py"


# The figures over the sweep axes of a two-phase study, drawn from phase 1 (every configuration;
# phase 2 holds only the selected ones): loss vs each axis, compute vs quality, heatmap, ...
if PHASE1_FIGURES:

    localrules:
        plot_phase1,

    rule plot_phase1:
        input:
            runs=f"{PHASE1_DIR}/runs.parquet",
            curves=f"{PHASE1_DIR}/curves.parquet",
        output:
            **phase1_figure_outputs(),
        log:
            f"logs/{NAME}/plot_phase1.log",
        benchmark:
            f"benchmarks/{NAME}/plot_phase1.tsv"
        conda:
            "../envs/analysis.yaml"
        params:
            baseline=STUDY.baseline,
            study=f"{NAME} (phase 1)",
            figures=PHASE1_FIGURES,
        script:
            "../workflow_scripts/plot_study.py"
