# corpus -> tokenizer -> tokens.h5


# A corpus is prepared into a folder named by its spec's identity (manifest_path, common.smk),
# so a study that redefines a corpus name never deletes, or reuses, another spec's corpus.
rule prepare_corpus:
    output:
        manifest=paths.CORPUS_MANIFEST,
    log:
        "logs/prepare_corpus/{corpus}-{corpus_hash}.log",
    benchmark:
        "benchmarks/prepare_corpus/{corpus}-{corpus_hash}.tsv"
    wildcard_constraints:
        corpus_hash=r"[0-9a-f]{8}",
    conda:
        "../envs/train.yaml"
    params:
        spec=lambda w: canonical(portable(STUDY.corpora[w.corpus])),
    script:
        "../workflow_scripts/prepare_corpus.py"


rule train_tokenizer:
    input:
        manifest=get_corpus_manifest,
    output:
        tokenizer=paths.TOKENIZER,
        meta=paths.TOKENIZER_META,
    log:
        "logs/train_tokenizer/{dataset}.log",
    benchmark:
        "benchmarks/train_tokenizer/{dataset}.tsv"
    conda:
        "../envs/train.yaml"
    params:
        # settings added in a later version leave it at their default: no retrained tokenizer
        tokenizer=lambda w: canonical(
            lmablate.study.sweep.without_later_defaults(
                "tokenizer", lmablate.to_dict(DATASETS[w.dataset].config.tokenizer)
            )
        ),
        val_fraction=lambda w: DATASETS[w.dataset].config.data.val_fraction,
    script:
        "../workflow_scripts/train_tokenizer.py"


rule tokenize_corpus:
    input:
        unpack(get_tokenize_inputs),
    output:
        tokens=paths.TOKENS,
    log:
        "logs/tokenize_corpus/{dataset}.log",
    benchmark:
        "benchmarks/tokenize_corpus/{dataset}.tsv"
    conda:
        "../envs/train.yaml"
    threads: 2
    params:
        spec=lambda w: canonical(portable(corpus_of(w.dataset))),
        val_fraction=lambda w: DATASETS[w.dataset].config.data.val_fraction,
    script:
        "../workflow_scripts/tokenize_corpus.py"
