# All finished runs -> tables, summary statistics, the written analysis and RESULTS.md.


rule harvest_metrics:
    input:
        finals=get_run_finals,
        tasks=get_task_outputs,
    output:
        runs_csv=report(
            f"results/{NAME}/runs.csv",
            category="Tables",
            caption="../report/runs.rst",
            labels={"table": "runs"},
        ),
        runs_parquet=f"results/{NAME}/runs.parquet",
        curves=f"results/{NAME}/curves.parquet",
        reliability=f"results/{NAME}/reliability.parquet",
        summary=f"results/{NAME}/summary.json",
        analysis=report(
            f"results/{NAME}/analysis.txt",
            category="Analysis",
            caption="../report/analysis.rst",
            labels={"text": "analysis.txt"},
        ),
        results_md=report(
            f"results/{NAME}/RESULTS.md",
            category="Analysis",
            caption="../report/results_md.rst",
            labels={"text": "RESULTS.md"},
        ),
    log:
        f"logs/{NAME}/harvest_metrics.log",
    benchmark:
        f"benchmarks/{NAME}/harvest_metrics.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        run_ids=sorted(STUDY.by_id),
        study=NAME,
        baseline=STUDY.baseline,
        figures=FIGURES,
    script:
        "../workflow_scripts/harvest_metrics.py"
