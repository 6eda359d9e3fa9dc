"""Fused sweep members: K runs trained as one batched model match each run trained alone."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lmablate.data.tokens import FORMAT, TokenStore
from lmablate.engine.fused import FusedBatches, FusedTrainer, check_fusable, padded_vocab
from lmablate.engine.train import train
from lmablate.errors import ConfigError
from lmablate.study.config import RunConfig, from_dict

VOCAB, SEQ, BATCH, STEPS = 250, 16, 4, 12


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A token store of Zipf-distributed ids (learnable unigram statistics), written directly."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("fused") / "tokens.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": FORMAT, "vocab_size": VOCAB})
        for split, n in (("train", 20_000), ("val", 2_000)):
            f.create_dataset(split, data=(rng.zipf(1.3, n) % VOCAB).astype(np.uint16))
    return path


def member(model: dict, **train_kw) -> RunConfig:
    base = {"tokens": STEPS * BATCH * SEQ, "batch_size": BATCH, "seq_len": SEQ, "lr": 3e-3,
            "warmup": 0.25, "eval_every": 1000, "checkpoint_every": 1000, "log_every": 1,
            "eval_tokens": 2 * SEQ, "final_eval_tokens": 2 * SEQ, "precision": "fp32"}
    return from_dict(RunConfig, {"model": {"d_model": 32, "n_layers": 2, "n_heads": 4,
                                           "d_ff": 48, **model},
                                 "train": {**base, **train_kw}})


MEMBERS = [{"lr": 3e-3, "seed": 0}, {"lr": 1e-2, "seed": 1, "schedule": "linear"},
           {"lr": 1e-3, "seed": 2, "weight_decay": 0.0, "grad_clip": 0.05}]


@pytest.mark.parametrize("model", [
    pytest.param({}, id="llama-like"),
    pytest.param({"norm_position": "post", "pos_emb": "learned", "ffn": "relu2",
                  "tie_embeddings": False, "qk_norm": True, "n_kv_heads": 2}, id="other-knobs"),
])
def test_members_trained_together_match_each_trained_alone(tmp_path, store, model):
    cfgs = [member(model, **m) for m in MEMBERS]
    tokens = TokenStore(store).split("train")
    rows = padded_vocab(cfgs[0], VOCAB)
    fused = FusedTrainer(cfgs, rows, len(tokens), "cpu")
    batches = FusedBatches(tokens, SEQ, BATCH, [c.train.seed for c in cfgs], torch.device("cpu"))
    assert fused.total_steps == STEPS
    curves = torch.stack([fused.step(batches.get(i)) for i in range(STEPS)]).T  # (K, steps)

    for k, cfg in enumerate(cfgs):
        out = tmp_path / f"alone{k}"
        train(cfg, store, out, device="cpu", threads=1, progress=False)
        lines = (out / "metrics.jsonl").read_text().splitlines()
        alone = [json.loads(line) for line in lines]
        alone = torch.tensor([r["loss"] for r in alone if r["split"] == "train"])
        assert len(alone) == STEPS
        torch.testing.assert_close(curves[k], alone.to(curves.dtype), rtol=2e-5, atol=2e-5)
        weights = load_file(out / "model.safetensors")
        ours = fused.member_state_dict(k)
        for name, w in weights.items():
            torch.testing.assert_close(ours[name], w, rtol=1e-4, atol=1e-5, msg=name)
    # the members really differ (different seeds, learning rates, schedules)
    assert (curves[:, -1] - curves[0, -1]).abs()[1:].min() > 1e-3


def test_reset_starts_new_members_that_train_as_a_fresh_trainer(store):
    tokens = TokenStore(store).split("train")
    first = [member({}, **m) for m in MEMBERS[:2]]
    second = [member({}, **m) for m in (MEMBERS[2], {"lr": 5e-3, "seed": 7})]
    reused = FusedTrainer(first, VOCAB, len(tokens), "cpu")
    for i in range(3):
        reused.step(FusedBatches(tokens, SEQ, BATCH, [0, 1], torch.device("cpu")).get(i))
    reused.reset(second, len(tokens))
    fresh = FusedTrainer(second, VOCAB, len(tokens), "cpu")
    data = FusedBatches(tokens, SEQ, BATCH, [2, 7], torch.device("cpu"))
    for i in range(4):
        torch.testing.assert_close(reused.step(data.get(i)), fresh.step(data.get(i)),
                                   rtol=0, atol=0)


def test_unfusable_members_are_refused_with_the_key():
    cfgs = [member({}), member({"d_model": 64})]
    with pytest.raises(ConfigError, match=r"^model: member 1 has another model config"):
        check_fusable(cfgs, 20_000)
    with pytest.raises(ConfigError, match=r"^train.batch_size: member 1 differs"):
        check_fusable([member({}), member({}, batch_size=8)], 20_000)
    with pytest.raises(ConfigError, match=r"^num_experts: fused members support dense"):
        check_fusable([member({"num_experts": 4})], 20_000)
    with pytest.raises(ConfigError, match=r"^train.tokens: member 1 trains 24 steps"):
        check_fusable([member({}), member({}, tokens=2 * STEPS * BATCH * SEQ)], 20_000)
