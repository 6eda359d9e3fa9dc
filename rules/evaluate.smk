# Downstream tasks, only for studies with an `eval_tasks:` block (lmablate.evaluation).
#
# Each task's rows are prepared once, under resources/tasks/<task_id>/ (downloaded from the hub,
# copied from jsonl or built from a corpus), and shared by every run of every study; then each
# trained run is scored into results/<study>/runs/<run_id>/tasks.json, and with
# `eval_tasks.harness.tasks` also through lm-evaluation-harness into harness.json.

if EVAL is not None:

    rule prepare_eval_task:
        input:
            get_eval_task_inputs,
        output:
            task=paths.TASK,
        log:
            "logs/prepare_eval_task/{task_id}.log",
        benchmark:
            "benchmarks/prepare_eval_task/{task_id}.tsv"
        wildcard_constraints:
            task_id=r"[A-Za-z0-9_-]+",
        conda:
            "../envs/train.yaml"
        params:
            name=lambda w: EVAL.specs[w.task_id].name,
            identity=lambda w: canonical(EVAL.identity(w.task_id)),
            context=lambda w: canonical(EVAL.context[w.task_id]),
            base_dir=EVAL.base_dir,
        script:
            "../workflow_scripts/prepare_eval_task.py"

    rule evaluate_tasks:
        input:
            final=f"{RUN_DIR}/final.json",
            weights=f"{RUN_DIR}/model.safetensors",
            tokenizer=get_run_tokenizer,
            tasks=list(EVAL.task_files().values()),
        output:
            tasks=f"{RUN_DIR}/tasks.json",
        log:
            f"logs/{NAME}/evaluate_tasks/{{run_id}}.log",
        benchmark:
            f"benchmarks/{NAME}/evaluate_tasks/{{run_id}}.tsv"
        conda:
            "../envs/train.yaml"
        threads: EXECUTION.get("train_threads", 1)
        resources:
            gpu=gpus_per_run(),
            mem_mb=EXECUTION.get("train_mem_mb", 4000),
            runtime=EXECUTION.get("eval_runtime_min", 60),
        params:
            eval_tasks=canonical(EVAL.tasks_params()),
            task_files=EVAL.task_files(),
        script:
            "../workflow_scripts/evaluate_tasks.py"

    rule evaluate_harness:
        input:
            final=f"{RUN_DIR}/final.json",
            weights=f"{RUN_DIR}/model.safetensors",
            tokenizer=get_run_tokenizer,
        output:
            harness=f"{RUN_DIR}/harness.json",
        log:
            f"logs/{NAME}/evaluate_harness/{{run_id}}.log",
        benchmark:
            f"benchmarks/{NAME}/evaluate_harness/{{run_id}}.tsv"
        conda:
            "../envs/eval.yaml"
        threads: EXECUTION.get("train_threads", 1)
        resources:
            gpu=gpus_per_run(),
            mem_mb=EXECUTION.get("train_mem_mb", 4000),
            runtime=EXECUTION.get("eval_runtime_min", 60),
        params:
            eval_tasks=canonical(EVAL.harness_params()),
            base_dir=EVAL.base_dir,
        script:
            "../workflow_scripts/evaluate_harness.py"
