# lmablate: ablation and sweep studies of small transformer language models.
#
#   snakemake -c2                                   the default study (config.yaml)
#   snakemake -c2 --configfile studies/X.yaml       another study (replaces config.yaml)
#   snakemake --profile profiles/slurm              on a Slurm cluster
#   snakemake --report results/<study>/report.html  the HTML report after a run


# A study given with --configfile replaces the default study instead of being merged into it.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/ranking.smk"
include: "rules/evaluate.smk"
include: "rules/harvest.smk"
include: "rules/report.smk"
include: "rules/export.smk"


localrules:
    all,
    harvest_metrics,
    plot_study,
    rank_phase1,
    plot_lr_find,
    write_results_page,


rule all:
    default_target: True
    input:
        get_final_output(),
        get_task_outputs,
        # every file of a run that lost or changed one since the last harvest (rules/harvest.smk)
        get_run_files,
