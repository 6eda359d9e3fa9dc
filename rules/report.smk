# Figures for the report (snakemake --report results/<study>/report.html collects them).


rule plot_study:
    input:
        runs=f"results/{NAME}/runs.parquet",
        curves=f"results/{NAME}/curves.parquet",
    output:
        loss_curves=report(
            f"results/{NAME}/plots/loss_curves.png",
            category="Figures",
            caption="../report/loss_curves.rst",
        ),
        final_val_loss=report(
            f"results/{NAME}/plots/final_val_loss.png",
            category="Figures",
            caption="../report/final_val_loss.rst",
        ),
    params:
        baseline=STUDY.baseline,
        study=NAME,
    log:
        f"logs/{NAME}/plot_study.log",
    benchmark:
        f"benchmarks/{NAME}/plot_study.tsv"
    script:
        "../workflow_scripts/plot_study.py"
