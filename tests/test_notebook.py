"""The example notebook runs (nbclient, a real Jupyter kernel) against a study trained here:
five real runs of lmablate.engine.train.train on a token store built from the shipped stories
(two variants x two seeds, and one run that diverges), harvested as the workflow would."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from lmablate.data.corpora import is_val, iter_documents, load_manifest, prepare_corpus
from lmablate.data.tokenizer import build_tokenizer
from lmablate.data.tokens import encode_corpus
from lmablate.engine.train import train
from lmablate.results.harvest import harvest
from lmablate.study.config import RunConfig, from_dict
from lmablate.study.corpus_spec import resolve_corpora

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "explore_study.ipynb"
TRAIN = {"tokens": 6144, "batch_size": 8, "seq_len": 32, "lr": 3e-3, "eval_every": 8,
         "eval_tokens": 2048, "log_every": 4}


def _tokens(d: Path) -> Path:
    spec = {"source": "file", "path": "package:tinystories_valid_1k.txt", "separator": "\n\n",
            "max_documents": 300}
    manifest = prepare_corpus(resolve_corpora({"s": spec}, d)["s"], d / "corpus")
    docs = (t for t in iter_documents(load_manifest(manifest)) if not is_val(t, 0.1))
    cfg = from_dict(RunConfig, {"tokenizer": {"vocab_size": 320}}).tokenizer
    build_tokenizer(cfg, docs, d / "tok" / "tokenizer.json")
    encode_corpus(manifest, d / "tok" / "tokenizer.json", d / "tokens.h5", val_fraction=0.1)
    return d / "tokens.h5"


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("nb")
    tokens = _tokens(root / "data")
    runs = []
    plan = [("baseline", {}, s) for s in (0, 1)] + \
        [("post_norm", {"model": {"norm_position": "post"}}, s) for s in (0, 1)] + \
        [("boom", {"train": {"lr": 10.0, "grad_clip": 0.0, "warmup": 0}}, 0)]
    for variant, delta, seed in plan:
        cfg = {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64,
                         **delta.get("model", {})},
               "train": {**TRAIN, "seed": seed, **delta.get("train", {})},
               "tokenizer": {"vocab_size": 320}}
        run_id = f"{variant}-s{seed}"
        diff = {f"{k}.{kk}": vv for k, v in delta.items() for kk, vv in v.items()}
        train(from_dict(RunConfig, cfg), tokens, root / "results" / "runs" / run_id,
              run_id=run_id, meta={"study": "nb", "variant": variant, "seed": seed,
                                   "axes": {}, "diff": diff}, progress=False)
        runs.append(root / "results" / "runs" / run_id)
    harvest(runs, root / "results", study="nb")
    return root / "results"


@pytest.mark.slow
def test_study_has_a_diverged_run(study):
    import json

    summary = json.loads((study / "summary.json").read_text())
    assert summary["excluded_runs"]["boom-s0"]["status"] == "diverged"
    assert summary["groups"]["baseline"]["n"] == 2


@pytest.mark.slow
def test_example_notebook_reproduces_figures(study, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("LMABLATE_RESULTS", str(study))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    images = [base64.b64decode(o.data["image/png"]) for c in code for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the final-loss figure and the training curves, once each
    assert all(img.startswith(b"\x89PNG") and len(img) > 20_000 for img in images)
    table = code[0].outputs[-1]["data"]["text/plain"]
    assert "post_norm" in table and "diverged" in table
    summary = code[3].outputs[-1]["data"]["text/plain"]
    assert "baseline" in summary and "post_norm" in summary and "boom" not in summary
