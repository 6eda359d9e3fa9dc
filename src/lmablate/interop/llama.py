"""Hugging Face Llama weights -> :class:`~lmablate.engine.model.LM` (the reverse of
:mod:`lmablate.interop.exporthf`): the equivalence test's loader, and a way to start from
Llama-style weights."""

from __future__ import annotations

from typing import Any

from lmablate.engine.model import LM

__all__ = ["load_hf_llama"]


def load_hf_llama(model: LM, hf_model: Any) -> LM:
    """Copy the weights of a transformers ``LlamaForCausalLM`` into ``model`` (in place).

    ``model`` must be built with the matching knobs: norm=rms, norm_position=pre, pos_emb=rope,
    ffn=swiglu, bias=False, qk_norm=False, num_experts=0, and the same shape / eps / theta / tying.
    Both use the rotate_half RoPE layout, so no permutation of q/k rows is needed.
    """
    cfg, hc = model.cfg, hf_model.config
    rope_params = getattr(hc, "rope_parameters", None) or {}
    theta = rope_params.get("rope_theta", getattr(hc, "rope_theta", None))
    want = {
        "d_model": (cfg.d_model, hc.hidden_size), "n_layers": (cfg.n_layers, hc.num_hidden_layers),
        "n_heads": (cfg.n_heads, hc.num_attention_heads),
        "n_kv_heads": (cfg.kv_heads, hc.num_key_value_heads or hc.num_attention_heads),
        "d_ff": (cfg.d_ff, hc.intermediate_size), "vocab_size": (model.vocab_size, hc.vocab_size),
        "norm_eps": (cfg.norm_eps, hc.rms_norm_eps), "rope_theta": (cfg.rope_theta, theta),
        "tie_embeddings": (cfg.tie_embeddings, bool(hc.tie_word_embeddings)),
        "norm": (cfg.norm, "rms"), "norm_position": (cfg.norm_position, "pre"),
        "pos_emb": (cfg.pos_emb, "rope"), "ffn": (cfg.ffn, "swiglu"),
        "bias": (cfg.bias, bool(getattr(hc, "attention_bias", False) or
                                getattr(hc, "mlp_bias", False))),
        "qk_norm": (cfg.qk_norm, False), "num_experts": (cfg.num_experts, 0),
        "head_dim": (cfg.head_dim, getattr(hc, "head_dim", None) or cfg.head_dim),
    }
    bad = [f"{k}: LM has {a!r}, Llama has {b!r}" for k, (a, b) in want.items() if a != b]
    if bad:
        raise ValueError("load_hf_llama: mismatched knobs: " + "; ".join(bad))

    src = hf_model.state_dict()
    sd = {"embed.weight": src["model.embed_tokens.weight"],
          "norm_f.weight": src["model.norm.weight"]}
    sd["head.weight"] = sd["embed.weight"] if cfg.tie_embeddings else src["lm_head.weight"]
    names = {"attn.wq": "self_attn.q_proj", "attn.wk": "self_attn.k_proj",
             "attn.wv": "self_attn.v_proj", "attn.wo": "self_attn.o_proj",
             "ffn.w1": "mlp.gate_proj", "ffn.w3": "mlp.up_proj", "ffn.w2": "mlp.down_proj",
             "norm1": "input_layernorm", "norm2": "post_attention_layernorm"}
    for i in range(cfg.n_layers):
        for ours, theirs in names.items():
            sd[f"blocks.{i}.{ours}.weight"] = src[f"model.layers.{i}.{theirs}.weight"]
    model.load_state_dict(sd, strict=True)
    return model
