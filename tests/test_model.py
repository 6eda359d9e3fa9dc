"""model.py and accounting.py: Llama equivalence, causality and trainability of every knob,
parameter and FLOP accounting, MoE dispatch and bookkeeping."""

from __future__ import annotations

import dataclasses
import math
import re
import typing

import pytest
import torch

from lmablate.engine.model import LM, SPARSE_EXPERT_DENSITY, Experts, MoE
from lmablate.interop.llama import load_hf_llama
from lmablate.study.accounting import count_module, flops_per_token, param_counts
from lmablate.study.config import ModelConfig
from lmablate.units import fmt_params

VOCAB = 64
TINY = {"d_model": 32, "n_layers": 2, "n_heads": 4}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core box spinning OpenMP
    workers make them 10-40x slower; restore the setting for the other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**kw) -> ModelConfig:
    return ModelConfig(**{**TINY, **kw})


# One row per knob setting; together they cover every value of every knob (and a few mixes).
KNOBS = [
    pytest.param({}, id="default-swiglu-rms-pre-rope-tied"),
    pytest.param({"ffn": "geglu", "norm": "layer", "bias": True}, id="geglu-layernorm-bias"),
    pytest.param({"ffn": "silu", "norm_position": "post"}, id="silu-postnorm"),
    pytest.param({"ffn": "gelu", "pos_emb": "learned", "tie_embeddings": False},
                 id="gelu-learned-untied"),
    pytest.param({"ffn": "relu", "pos_emb": "none", "norm": "none"}, id="relu-nope-nonorm"),
    pytest.param({"ffn": "relu2", "qk_norm": True, "n_kv_heads": 2}, id="relu2-qknorm-gqa"),
    pytest.param({"norm": "layer", "norm_position": "post", "bias": True, "pos_emb": "learned"},
                 id="layernorm-post-bias-learned"),
    pytest.param({"norm": "none", "norm_position": "post", "qk_norm": True, "n_kv_heads": 1},
                 id="nonorm-post-qknorm-mqa"),
    pytest.param({"init_scaled_residual": False, "dropout": 0.1, "pos_emb": "none"},
                 id="unscaled-init-dropout-nope"),
    pytest.param({"num_experts": 4, "top_k": 2, "init": "trunc_normal"},
                 id="moe-dense-truncnormal"),
    pytest.param({"init": "small", "tie_embeddings": False}, id="small-init-untied"),
    pytest.param({"init": "xavier", "ffn": "gelu"}, id="xavier-init"),
    pytest.param({"init": "mitchell", "num_experts": 2, "top_k": 1}, id="mitchell-init-moe"),
    pytest.param({"num_experts": 4, "top_k": 1, "moe_init": "sparse", "ffn": "relu", "bias": True,
                  "expert_d_ff": 48}, id="moe-sparse-top1-bias"),
    pytest.param({"num_experts": 3, "top_k": 2, "moe_init": "sparse", "freeze_experts": True,
                  "norm_position": "post", "n_kv_heads": 2}, id="moe-frozen-post-gqa"),
]


def test_knob_table_covers_every_value():
    rows = [tiny(**p.values[0]) for p in KNOBS]
    hints = typing.get_type_hints(ModelConfig)
    for name in ("ffn", "norm", "norm_position", "pos_emb", "moe_init", "init"):
        assert {getattr(r, name) for r in rows} == set(typing.get_args(hints[name])), name
    for name in ("qk_norm", "bias", "tie_embeddings", "init_scaled_residual", "freeze_experts"):
        assert {getattr(r, name) for r in rows} == {True, False}, name
    assert {r.kv_heads < r.n_heads for r in rows} == {True, False}
    assert {r.num_experts > 0 for r in rows} == {True, False}


# --------------------------------------------------------------------------------------------------
# 1. equivalence with Hugging Face Llama


@pytest.mark.parametrize("n_kv_heads", [pytest.param(2, id="gqa"), pytest.param(4, id="mha")])
@pytest.mark.parametrize("tie", [pytest.param(False, id="untied"), pytest.param(True, id="tied")])
def test_matches_hf_llama(n_kv_heads, tie):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hc = transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=n_kv_heads, intermediate_size=160, rope_theta=10000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=tie, attention_bias=False,
        max_position_embeddings=64, initializer_range=0.1, attn_implementation="eager")
    hf = transformers.LlamaForCausalLM(hc).float().eval()
    with torch.no_grad():  # non-trivial norm gains, so a mis-mapped norm shows
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, d_ff=160,
                      rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=tie, bias=False)
    model = load_hf_llama(LM(cfg, 256, max_seq_len=64), hf).eval()
    idx = torch.randint(0, 256, (2, 33))
    with torch.no_grad():
        ours, theirs = model(idx), hf(idx).logits
    assert theirs.abs().max() > 1.0  # the comparison is not between near-zero logits
    assert (ours - theirs).abs().max().item() <= 1e-4

    n_hf = sum(p.numel() for p in hf.parameters())  # shared tensors once
    assert param_counts(cfg, 256, 64)["total"] == n_hf
    assert count_module(model)["total"] == n_hf


def test_load_hf_llama_rejects_mismatched_knobs():
    transformers = pytest.importorskip("transformers")
    hc = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64)
    with pytest.raises(ValueError, match="ffn"):
        load_hf_llama(LM(tiny(ffn="gelu", d_ff=64), 64, max_seq_len=32),
                      transformers.LlamaForCausalLM(hc))


# --------------------------------------------------------------------------------------------------
# 2. causality


@pytest.mark.parametrize("knobs", KNOBS)
def test_causal(knobs):
    torch.manual_seed(0)
    T = 12
    model = LM(tiny(**knobs), VOCAB, max_seq_len=T).eval()
    base = torch.randint(0, VOCAB, (1, T))
    changed = [2, 6, T - 1]
    batch = base.repeat(len(changed) + 1, 1)  # row 0 = base, row j = base with token changed[j-1]
    for row, t in enumerate(changed, start=1):
        batch[row, t] = (batch[row, t] + 1 + row) % VOCAB
    with torch.no_grad():
        logits = model(batch)  # (1 + len(changed), T, V)
    for row, t in enumerate(changed, start=1):
        torch.testing.assert_close(logits[row, :t], logits[0, :t], atol=1e-5, rtol=0)
        assert (logits[row, t] - logits[0, t]).abs().max() > 1e-5  # token t is seen at t


# --------------------------------------------------------------------------------------------------
# 3. every knob trains


@pytest.mark.parametrize("knobs", KNOBS)
def test_trains(knobs):
    torch.manual_seed(0)
    cfg = tiny(**knobs)
    model = LM(cfg, VOCAB, max_seq_len=32).train()
    pattern = torch.randint(0, VOCAB, (7,))
    data = torch.stack([pattern.roll(s).repeat(5)[:33] for s in range(4)])  # (4, 33)
    x, y = data[:, :-1], data[:, 1:]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(30):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        losses.append(loss.item())
        opt.zero_grad(set_to_none=True)
        (loss + cfg.router_aux_loss * model.aux_loss()).backward()
        if step == 0:  # every trainable non-expert tensor gets a gradient
            missing = [n for n, p in model.named_parameters()
                       if p.requires_grad and p.grad is None and ".experts." not in n]
            assert not missing
        opt.step()
    assert math.isfinite(losses[-1])
    assert losses[-1] < 0.8 * losses[0], losses
    assert bool(frozen) == cfg.freeze_experts
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name


# --------------------------------------------------------------------------------------------------
# 4. parameter accounting


COUNT_CONFIGS = [
    *KNOBS,
    pytest.param({"n_layers": 3, "d_model": 48, "n_heads": 6, "n_kv_heads": 3, "bias": True,
                  "norm": "layer", "qk_norm": True, "pos_emb": "learned", "tie_embeddings": False,
                  "context_length": 40}, id="everything-on-context_length"),
    pytest.param({"num_experts": 8, "top_k": 2, "freeze_experts": True, "expert_d_ff": 16,
                  "pos_emb": "learned", "bias": True, "norm": "layer"}, id="moe8-frozen"),
]


@pytest.mark.parametrize("knobs", COUNT_CONFIGS)
def test_param_counts_closed_form_equals_module(knobs):
    cfg = tiny(**knobs)
    model = LM(cfg, VOCAB, max_seq_len=24)
    closed, counted = param_counts(cfg, VOCAB, 24), count_module(model)
    assert closed == counted
    assert closed["total"] == sum(p.numel() for p in model.parameters())
    assert closed["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert closed["embedding"] + closed["non_embedding"] == closed["total"]
    if not cfg.num_experts:
        assert closed["active"] == closed["total"]


def test_moe_trainable_vs_total():
    """Seed 004's statement shape: "N trainable of M total parameters" with experts frozen."""
    cfg = tiny(num_experts=8, top_k=2, freeze_experts=True, moe_init="sparse")
    model = LM(cfg, VOCAB, max_seq_len=32)
    counts = param_counts(cfg, VOCAB, 32)
    expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert expert == cfg.n_layers * cfg.num_experts * 3 * cfg.d_model * cfg.d_ff
    assert counts["trainable"] == counts["total"] - expert
    assert counts["trainable"] < counts["total"]
    assert counts["active"] == counts["total"] - expert + expert * cfg.top_k // cfg.num_experts
    statement = f"{fmt_params(counts['trainable'])} trainable of {fmt_params(counts['total'])}"
    assert re.fullmatch(r"\d+\.\d\dK trainable of \d+\.\d\dK", statement), statement


def test_fmt_params():
    assert fmt_params(10_740_000) == "10.74M"
    assert fmt_params(1_500) == "1.50K"
    assert fmt_params(2_000_000_000) == "2.00B"
    assert fmt_params(512) == "512"


# --------------------------------------------------------------------------------------------------
# 5. MoE bookkeeping and init


def test_moe_aux_loss_and_load():
    torch.manual_seed(0)
    cfg = tiny(num_experts=4, top_k=2)
    model = LM(cfg, VOCAB, max_seq_len=16)
    B, T = 3, 16
    model(torch.randint(0, VOCAB, (B, T)))
    aux = model.aux_loss()
    assert aux.ndim == 0 and aux.item() > 0 and aux.requires_grad
    aux.backward()
    assert all(m.router.weight.grad is not None and m.router.weight.grad.abs().sum() > 0
               for m in model.modules() if isinstance(m, MoE))

    model(torch.randint(0, VOCAB, (B, T)))  # loads accumulate over forwards
    load = model.pop_expert_load()
    assert load.shape == (cfg.n_layers, cfg.num_experts) and load.dtype.name == "float64"
    assert (load.sum(axis=1) == 2 * B * T * cfg.top_k).all()
    assert (model.pop_expert_load() == 0).all()  # reset by the pop

    dense = LM(tiny(), VOCAB, max_seq_len=16)
    dense(torch.randint(0, VOCAB, (1, 4)))
    assert dense.pop_expert_load() is None
    assert dense.aux_loss().item() == 0.0


def _expert_ffn(experts, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert e applied to one token x (C,), the slow obvious way."""
    def lin(w, b, h):
        return w[e] @ h + (0 if b is None else b[e])
    h = experts.act(lin(experts.w1, experts.b1, x))
    if experts.w3 is not None:
        h = h * lin(experts.w3, experts.b3, x)
    return lin(experts.w2, experts.b2, h)


@pytest.mark.parametrize("ffn", ["geglu", "relu2"])
def test_moe_matches_per_token_reference(ffn):
    """The sorted dispatch equals a naive per-token loop over the chosen experts."""
    torch.manual_seed(0)
    cfg = tiny(num_experts=5, top_k=3, ffn=ffn, bias=True)
    moe = LM(cfg, VOCAB, max_seq_len=8).blocks[0].ffn.eval()
    with torch.no_grad():
        for name, p in moe.named_parameters():
            if name.startswith("experts.b"):
                p.normal_(0, 0.1)  # make the biases matter
    x = torch.randn(2, 7, cfg.d_model)
    with torch.no_grad():
        y = moe(x)
        probs = moe.router(x).softmax(-1)
        gate, expert = probs.topk(cfg.top_k, dim=-1)
        gate = gate / gate.sum(-1, keepdim=True)
        ref = torch.zeros_like(x)
        for b in range(2):
            for t in range(7):
                for j in range(cfg.top_k):
                    ref[b, t] += gate[b, t, j] * _expert_ffn(moe.experts, expert[b, t, j], x[b, t])
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the grouped GEMM path needs CUDA")
@pytest.mark.parametrize("bias", [False, True])
def test_moe_grouped_mm_matches_loop(bias):
    torch.manual_seed(0)
    cfg = tiny(d_model=64, num_experts=4, top_k=2, bias=bias, expert_d_ff=96)
    model = LM(cfg, VOCAB, max_seq_len=32).cuda()
    idx = torch.randint(0, VOCAB, (4, 32), device="cuda")
    outs, grads = [], []
    for grouped in (None, False):  # auto (grouped GEMM under bf16 autocast), forced loop
        Experts.use_grouped_mm = grouped
        try:
            model.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(idx)
            logits.float().square().mean().backward()
        finally:
            Experts.use_grouped_mm = None
        outs.append(logits.float())
        grads.append(model.blocks[0].ffn.experts.w1.grad.float().clone())
    torch.testing.assert_close(outs[0], outs[1], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-3, rtol=5e-2)


@pytest.mark.parametrize("moe_init", ["dense", "sparse"])
def test_moe_init(moe_init):
    torch.manual_seed(0)
    model = LM(tiny(num_experts=2, moe_init=moe_init), VOCAB, max_seq_len=8)
    for name, p in model.named_parameters():
        if ".experts.w" in name:
            for w in p:  # each expert's matrix
                density = (w != 0).float().mean().item()
                if moe_init == "sparse":
                    assert density == pytest.approx(SPARSE_EXPERT_DENSITY, abs=1 / w.numel()), name
                else:
                    assert density > 0.99, name


def test_init_scheme():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=256, n_layers=8, n_heads=4, bias=True, norm="layer",
                      pos_emb="learned", init_std=0.05)
    model = LM(cfg, 512, max_seq_len=64)
    scaled = cfg.init_std / math.sqrt(2 * cfg.n_layers)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert (p == 0).all(), name
        elif "norm" in name:
            assert (p == 1).all(), name
        elif name.endswith(("attn.wo.weight", "w2.weight")):
            assert p.std().item() == pytest.approx(scaled, rel=0.1), name
        else:
            assert p.std().item() == pytest.approx(cfg.init_std, rel=0.1), name


@pytest.mark.parametrize("scheme", ["trunc_normal", "small", "xavier", "mitchell"])
def test_other_init_schemes_give_their_stds(scheme):
    torch.manual_seed(0)
    d, L = 256, 8
    cfg = ModelConfig(d_model=d, n_layers=L, n_heads=4, d_ff=512, init=scheme, init_std=0.05,
                      tie_embeddings=False)
    model = LM(cfg, 512, max_seq_len=64)
    for name, p in model.named_parameters():
        if "norm" in name:
            continue
        out, fan_in = p.shape[0], p.shape[-1]
        is_out = name.endswith(("attn.wo.weight", "w2.weight"))
        layer = int(name.split(".")[1]) if name.startswith("blocks.") else 0
        if scheme == "xavier":
            want = cfg.init_std if name == "embed.weight" else math.sqrt(2 / (fan_in + out))
        elif scheme == "mitchell":
            want = (1 / math.sqrt(d) if name == "embed.weight" else
                    1 / math.sqrt(2 * fan_in * (layer + 1)) if is_out else 1 / math.sqrt(fan_in))
            want *= 0.986  # a normal cut at 3 std keeps 98.6% of its std
        else:
            want = math.sqrt(2 / (5 * d)) if scheme == "small" else cfg.init_std
            want /= math.sqrt(2 * L) if is_out else 1
            want *= 0.986 if scheme == "trunc_normal" else 1
        assert p.std().item() == pytest.approx(want, rel=0.08), name
        if scheme in ("trunc_normal", "mitchell"):
            assert p.abs().max().item() <= 3 * want / 0.986 + 1e-6, name


def test_post_norm_has_no_final_norm():
    assert sum(p.numel() for n, p in LM(tiny(norm_position="pre"), VOCAB, 8).named_parameters()
               if n.startswith("norm_f")) == TINY["d_model"]
    assert not [n for n, _ in LM(tiny(norm_position="post"), VOCAB, 8).named_parameters()
                if n.startswith("norm_f")]


# --------------------------------------------------------------------------------------------------
# 6. FLOPs


def test_flops_per_token_by_hand():
    # dense, tied, rope, swiglu: d=64, L=2, d_ff=176, V=256, T=128
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=176)
    d, L, ff, V, T = 64, 2, 176, 256, 128
    per_layer = 4 * d * d + 3 * d * ff + 2 * d  # attention + SwiGLU + two RMSNorm gains
    n = L * per_layer + d  # + final norm; the tied embedding is not in N
    assert flops_per_token(cfg, V, T) == 6 * n + 6 * d * V + 12 * L * d * T

    # MoE: only top_k of the experts (plus the router) count
    moe = dataclasses.replace(cfg, num_experts=4, top_k=1, expert_d_ff=32)
    per_layer = 4 * d * d + d * 4 + 1 * 3 * d * 32 + 2 * d
    n = L * per_layer + d
    assert flops_per_token(moe, V, T) == 6 * n + 6 * d * V + 12 * L * d * T


def test_forward_rejects_too_long_sequences():
    model = LM(tiny(pos_emb="learned"), VOCAB, max_seq_len=8)
    with pytest.raises(AssertionError):
        model(torch.zeros(1, 9, dtype=torch.long))
