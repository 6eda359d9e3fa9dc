# On request only, not part of `rule all`: a finished run as a Hugging Face model directory that
# transformers' Auto classes load (lmablate.interop.exporthf, as `lmablate export-hf`), e.g.
#   snakemake -c1 results/<study>/hf/<run_id>


rule export_hf:
    input:
        final=f"{RUN_DIR}/final.json",
        weights=f"{RUN_DIR}/model.safetensors",
        tokenizer=get_run_tokenizer,
    output:
        hf=directory(paths.fill(paths.HF_DIR, study=NAME)),
    log:
        f"logs/{NAME}/export_hf/{{run_id}}.log",
    benchmark:
        f"benchmarks/{NAME}/export_hf/{{run_id}}.tsv"
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/export_hf.py"
