# corpus -> tokenizer -> tokens.h5


rule prepare_corpus:
    output:
        manifest="resources/corpora/{corpus}/manifest.json",
    params:
        spec=lambda w: canonical(lmablate.corpora.portable(STUDY.corpora[w.corpus])),
    log:
        "logs/prepare_corpus/{corpus}.log",
    benchmark:
        "benchmarks/prepare_corpus/{corpus}.tsv"
    script:
        "../workflow_scripts/prepare_corpus.py"


rule train_tokenizer:
    input:
        manifest=get_corpus_manifest,
    output:
        tokenizer="resources/tokenizers/{dataset}/tokenizer.json",
        meta="resources/tokenizers/{dataset}/tokenizer_meta.json",
    params:
        tokenizer=lambda w: canonical(lmablate.to_dict(DATASETS[w.dataset].config.tokenizer)),
        val_fraction=lambda w: DATASETS[w.dataset].config.data.val_fraction,
    log:
        "logs/train_tokenizer/{dataset}.log",
    benchmark:
        "benchmarks/train_tokenizer/{dataset}.tsv"
    script:
        "../workflow_scripts/train_tokenizer.py"


rule tokenize_corpus:
    input:
        unpack(get_tokenize_inputs),
    output:
        tokens="resources/tokens/{dataset}.h5",
    params:
        spec=lambda w: canonical(lmablate.corpora.portable(corpus_of(w.dataset))),
        val_fraction=lambda w: DATASETS[w.dataset].config.data.val_fraction,
    threads: 2
    log:
        "logs/tokenize_corpus/{dataset}.log",
    benchmark:
        "benchmarks/tokenize_corpus/{dataset}.tsv"
    script:
        "../workflow_scripts/tokenize_corpus.py"
