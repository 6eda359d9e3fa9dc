# One training job per run. Resumable state lives in checkpoints/<study>/<run_id>/, which is not
# a Snakemake output: a failed or killed job leaves it in place and the retry resumes from it.


rule train_model:
    input:
        # ancient: the store's identity is in the run ID (data_id), so its mtime (a rebuilt or
        # touched file) must never re-run, and so delete, finished runs
        tokens=ancient(get_tokens),
    output:
        final=f"results/{NAME}/runs/{{run_id}}/final.json",
        config=f"results/{NAME}/runs/{{run_id}}/config.yaml",
        metrics=f"results/{NAME}/runs/{{run_id}}/metrics.jsonl",
        trainer_state=f"results/{NAME}/runs/{{run_id}}/trainer_state.json",
        weights=f"results/{NAME}/runs/{{run_id}}/model.safetensors",
    log:
        f"logs/{NAME}/train_model/{{run_id}}.log",
    benchmark:
        f"benchmarks/{NAME}/train_model/{{run_id}}.tsv"
    # On a cluster, `--group-components train=K` packs K training runs into one job.
    group:
        "train"
    conda:
        "../envs/train.yaml"
    threads: EXECUTION.get("train_threads", 1)
    resources:
        gpu=gpus_per_run(),
        mem_mb=EXECUTION.get("train_mem_mb", 4000),
        runtime=EXECUTION.get("train_runtime_min", 240),
    params:
        run=lambda w: canonical(RUNS[w.run_id].to_dict()),
        study=NAME,
        ckpt_dir=lambda w: f"checkpoints/{NAME}/{w.run_id}",
    script:
        "../workflow_scripts/train_model.py"
