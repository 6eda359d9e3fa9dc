# One training job per run. Resumable state lives in checkpoints/<study>/<run_id>/, which is not
# a Snakemake output: a failed or killed job leaves it in place and the retry resumes from it.


rule train_model:
    input:
        # ancient: the store's identity is in the run ID (data_id), so its mtime (a rebuilt or
        # touched file) must never re-run, and so delete, finished runs
        unpack(get_train_inputs),
    output:
        final=f"{RUN_DIR}/final.json",
        config=f"{RUN_DIR}/config.yaml",
        metrics=f"{RUN_DIR}/metrics.jsonl",
        trainer_state=f"{RUN_DIR}/trainer_state.json",
        weights=f"{RUN_DIR}/model.safetensors",
    log:
        f"logs/{NAME}/train_model/{{run_id}}.log",
    benchmark:
        f"benchmarks/{NAME}/train_model/{{run_id}}.tsv"
    # On a cluster, `--group-components train=K` packs K training runs into one job.
    group:
        train_group
    conda:
        "../envs/train.yaml"
    threads: EXECUTION.get("train_threads", 1)
    resources:
        gpu=gpus_per_run(),
        mem_mb=EXECUTION.get("train_mem_mb", 4000),
        runtime=train_runtime,
    params:
        run=run_params,
        study=NAME,
        ckpt_dir=lambda w: paths.fill(paths.CHECKPOINT_DIR, study=NAME, run_id=w.run_id),
        phase=get_train_phase,
    script:
        "../workflow_scripts/train_model.py"


# `lr_find:` in the study: Smith's LR range test of the chosen runs (lmablate lr-find).
rule lr_find:
    input:
        tokens=ancient(get_tokens),
    output:
        result=f"{LR_FIND_DIR}/lr_find.json",
        plot=f"{LR_FIND_DIR}/lr_find.png",
    log:
        f"logs/{NAME}/lr_find/{{run_id}}.log",
    benchmark:
        f"benchmarks/{NAME}/lr_find/{{run_id}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: EXECUTION.get("train_threads", 1)
    resources:
        gpu=gpus_per_run(),
        mem_mb=EXECUTION.get("train_mem_mb", 4000),
    params:
        run=run_params,
        options=LR_FIND[1] if LR_FIND else {},
    script:
        "../workflow_scripts/lr_find.py"
