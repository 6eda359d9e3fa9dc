# All finished runs -> tables, summary statistics and the written analysis.


rule harvest_metrics:
    input:
        finals=get_run_finals,
    output:
        runs_csv=report(
            f"results/{NAME}/runs.csv",
            category="Tables",
            caption="../report/runs.rst",
        ),
        runs_parquet=f"results/{NAME}/runs.parquet",
        curves=f"results/{NAME}/curves.parquet",
        summary=f"results/{NAME}/summary.json",
        analysis=report(
            f"results/{NAME}/analysis.txt",
            category="Analysis",
            caption="../report/analysis.rst",
        ),
    params:
        run_ids=list(RUNS),
        study=NAME,
        baseline=STUDY.baseline,
    log:
        f"logs/{NAME}/harvest_metrics.log",
    benchmark:
        f"benchmarks/{NAME}/harvest_metrics.tsv"
    script:
        "../workflow_scripts/harvest_metrics.py"
