"""`lmablate export-hf`: a run directory -> a Hugging Face directory that transformers' Auto
classes load and that computes lmablate's logits (fp32, CPU, 1e-4), per supported family; the
knobs no standard class represents are refused in one line; lm-eval's own `hf` model runs on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import planned, snakemake, write_yaml

from lmablate.__main__ import main
from lmablate.data.tokenizer import build_tokenizer
from lmablate.engine.model import LM
from lmablate.errors import ConfigError, DataError
from lmablate.interop.exporthf import export_hf, hf_family
from lmablate.study.config import RunConfig, from_dict, to_dict

pytest.importorskip("transformers")

TEXT = "Once upon a time, a little fox found a red ball. The end!"
DEBUG = {"d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, "vocab_multiple": 64}


def make_run(root: Path, model: dict, *, name: str = "r", seed: int = 0) -> Path:
    """``root/results/s/runs/<name>`` as train() leaves it (config.yaml + model.safetensors, tied
    weights stored once) and its byte-level tokenizer under ``root/resources/tokenizers/``.

    The weights are random and every norm weight and bias is moved off its init (ones, zeros),
    so a norm or bias mapped to the wrong place shows in the logits."""
    from safetensors.torch import save_file

    cfg = from_dict(RunConfig, {"model": model, "train": {"seq_len": 24},
                                "data": {"corpus": "c"}, "tokenizer": {"kind": "byte"}})
    tok = root / "resources/tokenizers/c-d1/tokenizer.json"
    tok.parent.mkdir(parents=True, exist_ok=True)
    if not tok.is_file():
        build_tokenizer(cfg.tokenizer, [], tok)
    run = root / "results/s/runs" / name
    run.mkdir(parents=True)
    torch.manual_seed(seed)
    lm = LM(cfg.model, cfg.model.padded_vocab(257), max_seq_len=cfg.train.seq_len)
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    seen, unique = set(), {}
    for k, v in lm.state_dict().items():
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            unique[k] = v.detach().contiguous()
    save_file(unique, str(run / "model.safetensors"))
    meta = {"run_id": name, "study": "s", "variant": "baseline", "seed": 0, "data_id": "d1"}
    (run / "config.yaml").write_text(yaml.safe_dump({**meta, **to_dict(cfg)}, sort_keys=False))
    return run


FAMILIES = [
    pytest.param({}, "LlamaForCausalLM", id="llama-tied"),
    pytest.param({"tie_embeddings": False, "n_kv_heads": 2, "bias": True, "rope_theta": 500.0,
                  "norm_eps": 1e-6}, "LlamaForCausalLM", id="llama-untied-gqa-bias"),
    pytest.param({"ffn": "geglu"}, "LlamaForCausalLM", id="llama-geglu"),
    pytest.param({"qk_norm": True, "n_kv_heads": 2}, "Qwen3ForCausalLM", id="qwen3-qk_norm"),
    pytest.param({"num_experts": 4, "top_k": 2, "expert_d_ff": 48, "tie_embeddings": False},
                 "MixtralForCausalLM", id="mixtral-moe"),
    pytest.param({"norm": "layer", "pos_emb": "learned", "ffn": "gelu", "bias": True},
                 "GPT2LMHeadModel", id="gpt2"),
    pytest.param({"norm": "layer", "pos_emb": "learned", "ffn": "relu2", "n_kv_heads": 2,
                  "tie_embeddings": False, "context_length": 40}, "GPT2LMHeadModel",
                 id="gpt2-nobias-gqa-untied-relu2"),
]


@pytest.mark.parametrize(("knobs", "cls"), FAMILIES)
def test_export_loads_with_auto_classes_and_gives_lmablate_logits(tmp_path: Path, knobs: dict,
                                                                   cls: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmablate.evaluation import load_run_model

    run = make_run(tmp_path, {**DEBUG, **knobs})
    out = tmp_path / "hf"
    info = export_hf(run, out, tokenizer=tmp_path / "resources/tokenizers/c-d1/tokenizer.json")
    assert info == {"class": cls, "vocab_size": 257, "out": str(out)}
    assert json.loads((out / "config.json").read_text())["architectures"] == [cls]
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"

    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert type(hf).__name__ == cls
    assert hf.get_output_embeddings().weight.shape == (257, 32)  # padding rows (320) cut
    ours = load_run_model(run, tokenizer=tmp_path / "resources/tokenizers/c-d1/tokenizer.json")
    ids = ours.tokenizer.encode(TEXT).ids[:24]
    assert tok(TEXT, add_special_tokens=False)["input_ids"][:24] == ids
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == ours.eot_id == 0
    x = torch.tensor([ids, ids[::-1]])
    with torch.no_grad():
        want = ours.model(x)[..., :257]
        got = hf(x).logits
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert want.std() > 0.1  # the models are not trivially flat


REFUSED = [
    pytest.param({"norm_position": "post"}, "model.norm_position: 'post'", id="post-norm"),
    pytest.param({"norm": "none"}, "model.norm: 'none'", id="no-norm"),
    pytest.param({"pos_emb": "none"}, "model.pos_emb: 'none'", id="nope"),
    pytest.param({"pos_emb": "learned"}, "model.pos_emb: 'learned'", id="rms-learned"),
    pytest.param({"ffn": "silu"}, "model.ffn: 'silu'", id="rms-plain-ffn"),
    pytest.param({"norm": "layer"}, "model.pos_emb: 'rope'", id="layernorm-rope"),
    pytest.param({"norm": "layer", "pos_emb": "learned"}, "model.ffn: 'swiglu'",
                 id="layernorm-gated"),
    pytest.param({"qk_norm": True, "bias": True}, "model.bias: True", id="qk_norm-bias"),
    pytest.param({"num_experts": 4, "bias": True}, "model.bias: True", id="moe-bias"),
    pytest.param({"num_experts": 4, "qk_norm": True}, "model.qk_norm: True", id="moe-qk_norm"),
]


@pytest.mark.parametrize(("knobs", "where"), REFUSED)
def test_unrepresentable_models_are_refused_in_one_line(tmp_path: Path, knobs: dict, where: str,
                                                        capsys: pytest.CaptureFixture) -> None:
    cfg = from_dict(RunConfig, {"model": {**DEBUG, **knobs}}).model
    with pytest.raises(ConfigError, match="has no Hugging Face equivalent"):
        hf_family(cfg)
    run = make_run(tmp_path, {**DEBUG, **knobs})
    assert main(["export-hf", str(run), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"lmablate: error: {run / 'config.yaml'}: {where} has no Hugging Face "
                          "equivalent: ")
    assert not (tmp_path / "hf").exists()


def test_cli_finds_the_workflow_tokenizer_or_says_where_it_looked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path, DEBUG)
    monkeypatch.chdir(tmp_path)  # the workflow's working directory
    assert main(["export-hf", "results/s/runs/r", "hf"]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    assert (tmp_path / "hf/tokenizer.json").is_file() and (tmp_path / "hf/config.json").is_file()

    (tmp_path / "resources/tokenizers/c-d1/tokenizer.json").unlink()
    monkeypatch.chdir(run)
    with pytest.raises(DataError, match=r"resources/tokenizers/c-d1/tokenizer.json: tokenizer "
                       r"of run 'r' not found .*pass its path explicitly"):
        export_hf(run, tmp_path / "hf2")
    assert main(["export-hf", str(run), str(tmp_path / "hf2")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.slow
def test_lm_eval_hf_model_runs_on_the_export(tmp_path: Path) -> None:
    """`lm_eval --model hf --model_args pretrained=OUT` on a local task: the accuracies equal
    those of lmablate's own lm-eval adapter on the run itself."""
    from lm_eval.utils import make_table  # noqa: F401 (lm-eval installed)

    from lmablate.evaluation.harness import run_harness

    run = make_run(tmp_path, DEBUG)
    tok = tmp_path / "resources/tokenizers/c-d1/tokenizer.json"
    export_hf(run, tmp_path / "hf", tokenizer=tok)
    rows = [{"text": f"The fox saw {w} ball.", "label": i % 2}
            for i, w in enumerate(["a red", "the blue", "one small", "a big", "the old", "a new"])]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"task": "export_local", "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"validation": str(tmp_path / "rows.jsonl")}},
            "output_type": "multiple_choice", "validation_split": "validation",
            "doc_to_text": "{{text}} Was it nice?", "doc_to_target": "label",
            "doc_to_choice": [" no", " yes, very much"],
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
            "metadata": {"version": 1.0}}
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks/export_local.yaml").write_text(yaml.safe_dump(task))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "ds-cache"), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
         f"pretrained={tmp_path / 'hf'},dtype=float32", "--tasks", "export_local",
         "--include_path", str(tmp_path / "tasks"), "--device", "cpu", "--batch_size", "4",
         "--output_path", str(tmp_path / "lm_eval_out")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next((tmp_path / "lm_eval_out").rglob("results_*.json")).read_text())
    theirs = result["results"]["export_local"]
    ours = run_harness(run, ["export_local"], tokenizer=tok, device="cpu",
                       include_path=tmp_path / "tasks", include_defaults=False)
    ours = ours["results"]["export_local"]
    for metric in ("acc,none", "acc_norm,none"):
        assert theirs[metric] == pytest.approx(ours[metric])
    assert result["n-samples"]["export_local"]["effective"] == len(rows)


@pytest.mark.workflow
@pytest.mark.slow
def test_workflow_rule_exports_a_trained_run(tmp_path: Path, tiny_study: dict) -> None:
    """`snakemake results/<study>/hf/<run_id>` trains the run if needed, then exports it."""
    from transformers import AutoModelForCausalLM

    from lmablate.evaluation import load_run_model

    tiny_study["sweep"] = {"variants": {"baseline": {}}, "seeds": [0]}
    write_yaml(tmp_path / "study.yaml", tiny_study)
    _, run_ids = planned(tmp_path)
    (run_id,) = run_ids
    target = f"results/tiny/hf/{run_id}"
    rules, _ = planned(tmp_path, target)
    assert rules["export_hf"] == 1 and rules["train_model"] == 1 and "harvest_metrics" not in rules
    snakemake(tmp_path, "-c1", target)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / target, dtype=torch.float32).eval()
    tok = next((tmp_path / "resources/tokenizers").glob("*/tokenizer.json"))
    ours = load_run_model(tmp_path / f"results/tiny/runs/{run_id}", tokenizer=tok)
    x = torch.tensor([ours.tokenizer.encode(TEXT).ids[:32]])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours.model(x)[..., :ours.vocab_size], atol=1e-4,
                                   rtol=0)
