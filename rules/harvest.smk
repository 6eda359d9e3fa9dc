# All finished runs -> tables, summary statistics, the written analysis and RESULTS.md.
# A copy of the last successful harvest's tables stays in results/<study>/last_good/.
import lmablate.workflow.migrate

# Finished runs are checked at every parse (one stat per file, scan_runs): a
# file that changed size stops here with one line; a run with a file missing, or changed since
# the last harvest, has its files made targets of `rule all` and inputs of harvest
# (get_run_files in common.smk), so Snakemake re-trains or re-harvests it.
_DAMAGED, _RECHECK = scan_runs((run_dir(r) for r in RUNS), f"{STUDY_DIR}/runs.csv")
_RECHECK = {str(d) for d in _RECHECK}
if _DAMAGED:
    _more = f" ({len(_DAMAGED) - 1} more damaged files)" if len(_DAMAGED) > 1 else ""
    sys.exit(f"lmablate: {damage_message(*_DAMAGED[0])}{_more}")
# Finished runs under the 8-digit IDs of an older lmablate would be retrained: say how to keep them.
_LEGACY = lmablate.workflow.migrate.legacy_runs(paths.fill(paths.RUNS_DIR, study=NAME), RUNS)
if _LEGACY:
    print(
        f"lmablate: note: {len(_LEGACY)} finished runs of study {NAME} have IDs with the older "
        f"8-digit hash and would be retrained; keep them: "
        f"lmablate migrate-ids {STUDY.source} --apply",
        file=sys.stderr,
    )


rule harvest_metrics:
    input:
        finals=get_run_finals,
        run_files=get_run_files,
        tasks=get_task_outputs,
    output:
        runs_csv=report(
            f"{STUDY_DIR}/runs.csv",
            category="Tables",
            caption="../report/runs.rst",
            labels={"table": "runs"},
        ),
        runs_parquet=f"{STUDY_DIR}/runs.parquet",
        curves=f"{STUDY_DIR}/curves.parquet",
        reliability=f"{STUDY_DIR}/reliability.parquet",
        summary=f"{STUDY_DIR}/summary.json",
        analysis=report(
            f"{STUDY_DIR}/analysis.txt",
            category="Analysis",
            caption="../report/analysis.rst",
            labels={"text": "analysis.txt"},
        ),
        results_md=report(
            f"{STUDY_DIR}/RESULTS.md",
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
        # runs several sweep points share (one-axis sweeps meeting at their centre)
        shared=canonical(shared_points(STUDY.runs)),
        # the settings each variant writes (the findings name variants that change two at once)
        settings=canonical(lmablate.study.sweep.written_settings(STUDY.doc)),
        # the axes the study varies: a two-phase study's phase 2 names its groups as phase 1 did
        swept=swept_axes(STUDY.runs),
    script:
        "../workflow_scripts/harvest_metrics.py"
