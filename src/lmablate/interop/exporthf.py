"""Export a trained run as a Hugging Face model directory (the reverse of ``load_hf_llama``).

    lmablate export-hf results/default/runs/RUN_ID hf/RUN_ID
    AutoModelForCausalLM.from_pretrained("hf/RUN_ID"); AutoTokenizer.from_pretrained("hf/RUN_ID")

The directory holds ``config.json`` + ``model.safetensors`` (written by transformers'
``save_pretrained``) and the run's tokenizer as a ``PreTrainedTokenizerFast`` (tokenizer.json +
tokenizer_config.json; the document separator is its bos/eos/pad token). The padding rows of the
embedding and of the head (``vocab_multiple``) are cut to the tokenizer's vocabulary. Which class
a run maps to depends on its model knobs; each mapping computes the same logits (fp32):

=========================================================  =======================================
lmablate model                                             Hugging Face class
=========================================================  =======================================
norm rms, pre-norm, rope, ffn swiglu|geglu, dense          ``LlamaForCausalLM`` (hidden_act silu
                                                           | gelu; attention_bias = mlp_bias =
                                                           bias; GQA, tied or untied head)
the same with qk_norm (per-head RMSNorm before RoPE)       ``Qwen3ForCausalLM`` (bias false)
the same, num_experts > 0 (top-k softmax router,           ``MixtralForCausalLM`` (bias false,
renormalised gates, every block MoE)                       qk_norm false)
norm layer, pre-norm, learned positions, ffn gelu | relu   ``GPT2LMHeadModel`` (no bias: zero
| silu | relu2                                            biases; GQA: k/v heads repeated)
=========================================================  =======================================

Everything else is refused in one line naming the knob: post-norm, ``norm: none``, NoPE, RoPE
with LayerNorm (GPT-NeoX would need fused per-head q/k/v), learned positions with RMSNorm, plain
FFNs with RMSNorm, gated FFNs with LayerNorm, qk_norm with biases or LayerNorm, MoE with biases,
qk_norm or LayerNorm (OLMoE normalises q/k over the whole projection, not per head).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from lmablate.errors import ConfigError, DataError, LmablateError
from lmablate.study.config import ModelConfig

__all__ = ["export_hf", "hf_family"]

HF_CLASSES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
              "mixtral": "MixtralForCausalLM", "gpt2": "GPT2LMHeadModel"}
GATED_ACT = {"swiglu": "silu", "geglu": "gelu"}  # transformers' ACT2FN names (gelu: exact erf)
PLAIN_ACT = {"gelu": "gelu", "relu": "relu", "silu": "silu", "relu2": "relu2"}


def _refuse(key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{value!r} has no Hugging Face equivalent: {why}", key=f"model.{key}")


def hf_family(cfg: ModelConfig) -> str:
    """``"llama"``, ``"qwen3"``, ``"mixtral"`` or ``"gpt2"``: the transformers class that computes
    what a model of ``cfg`` computes; :class:`ConfigError` (one line, the knob) when none does."""
    if cfg.norm_position != "pre":
        raise _refuse("norm_position", cfg.norm_position, "Llama, Qwen3, Mixtral and GPT-2 are "
                      "all pre-norm")
    if cfg.norm == "none":
        raise _refuse("norm", cfg.norm, "every exportable class (Llama, GPT-2, ...) normalises")
    if cfg.norm == "rms":
        if cfg.pos_emb != "rope":
            raise _refuse("pos_emb", cfg.pos_emb, "RMSNorm models export as Llama, Qwen3 or "
                          "Mixtral, which use RoPE")
        if not cfg.gated:
            raise _refuse("ffn", cfg.ffn, "RMSNorm models export as Llama, Qwen3 or Mixtral, whose "
                          "FFNs are gated (use swiglu or geglu)")
        if cfg.num_experts:
            if cfg.bias or cfg.qk_norm:
                key = "bias" if cfg.bias else "qk_norm"
                raise _refuse(key, True, "MoE runs export as Mixtral, which has neither biases "
                              "nor qk_norm")
            return "mixtral"
        if cfg.qk_norm:
            if cfg.bias:
                raise _refuse("bias", True, "qk_norm runs export as Qwen3, whose FFN has no bias")
            return "qwen3"
        return "llama"
    # LayerNorm: GPT-2
    if cfg.pos_emb != "learned":
        raise _refuse("pos_emb", cfg.pos_emb, "LayerNorm models export as GPT-2, which uses "
                      "learned positions (RoPE + LayerNorm would be GPT-NeoX: not supported)")
    if cfg.gated:
        raise _refuse("ffn", cfg.ffn, "LayerNorm models export as GPT-2, whose FFN is not gated "
                      "(use gelu, relu, silu or relu2)")
    if cfg.num_experts:
        raise _refuse("num_experts", cfg.num_experts, "MoE runs export as Mixtral, which needs "
                      "norm rms, rope and a gated FFN")
    if cfg.qk_norm:
        raise _refuse("qk_norm", True, "GPT-2 has no query/key norm (qk_norm exports as Qwen3, "
                      "with norm rms and rope)")
    return "gpt2"


def _rope(config_cls: type, theta: float) -> dict[str, Any]:
    """RoPE base as the config class takes it (``rope_parameters`` from transformers 5 on)."""
    if "rope_parameters" in inspect.signature(config_cls.__init__).parameters:
        return {"rope_parameters": {"rope_type": "default", "rope_theta": theta}}
    return {"rope_theta": theta}


def _hf_config(family: str, cfg: ModelConfig, vocab: int, max_len: int, eot: int | None):
    """The transformers config of ``family`` for a model of ``cfg`` with ``vocab`` tokens."""
    import transformers

    ids = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot}
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab, n_positions=max_len, n_embd=cfg.d_model, n_layer=cfg.n_layers,
            n_head=cfg.n_heads, n_inner=cfg.d_ff, activation_function=PLAIN_ACT[cfg.ffn],
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
            layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings, **ids)
    cls = {"llama": transformers.LlamaConfig, "qwen3": transformers.Qwen3Config,
           "mixtral": transformers.MixtralConfig}[family]
    common = dict(vocab_size=vocab, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                  num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
                  head_dim=cfg.head_dim, hidden_act=GATED_ACT[cfg.ffn],
                  max_position_embeddings=max_len, rms_norm_eps=cfg.norm_eps,
                  tie_word_embeddings=cfg.tie_embeddings, attention_dropout=cfg.dropout,
                  **_rope(cls, cfg.rope_theta), **ids)
    if family == "llama":
        return cls(intermediate_size=cfg.d_ff, attention_bias=cfg.bias, mlp_bias=cfg.bias,
                   **common)
    if family == "qwen3":
        return cls(intermediate_size=cfg.d_ff, attention_bias=False, use_sliding_window=False,
                   **common)
    return cls(intermediate_size=cfg.expert_d_ff or cfg.d_ff, num_local_experts=cfg.num_experts,
               num_experts_per_tok=cfg.top_k, router_jitter_noise=0.0, sliding_window=None,
               **common)


def _llama_state(sd: dict, cfg: ModelConfig, family: str) -> dict:
    """lmablate state dict -> Llama / Qwen3 / Mixtral names (load_hf_llama's mapping reversed)."""
    import torch

    out = {"model.embed_tokens.weight": sd["embed.weight"],
           "model.norm.weight": sd["norm_f.weight"], "lm_head.weight": sd["head.weight"]}
    names = {"attn.wq": "self_attn.q_proj", "attn.wk": "self_attn.k_proj",
             "attn.wv": "self_attn.v_proj", "attn.wo": "self_attn.o_proj",
             "norm1": "input_layernorm", "norm2": "post_attention_layernorm",
             "attn.q_norm": "self_attn.q_norm", "attn.k_norm": "self_attn.k_norm"}
    if family != "mixtral":
        names.update({"ffn.w1": "mlp.gate_proj", "ffn.w3": "mlp.up_proj",
                      "ffn.w2": "mlp.down_proj"})
    for i in range(cfg.n_layers):
        for ours, theirs in names.items():
            for part in ("weight", "bias"):
                if f"blocks.{i}.{ours}.{part}" in sd:
                    out[f"model.layers.{i}.{theirs}.{part}"] = sd[f"blocks.{i}.{ours}.{part}"]
        if family == "mixtral":
            p = f"blocks.{i}.ffn."
            out[f"model.layers.{i}.mlp.gate.weight"] = sd[p + "router.weight"]
            out[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.cat(
                [sd[p + "experts.w1"], sd[p + "experts.w3"]], dim=1)  # (E, 2 d_ff, C)
            out[f"model.layers.{i}.mlp.experts.down_proj"] = sd[p + "experts.w2"]  # (E, C, d_ff)
    return out


def _gpt2_state(sd: dict, cfg: ModelConfig) -> dict:
    """lmablate state dict -> GPT-2 names: Conv1D weights are (in, out), absent biases are zeros,
    grouped k/v heads are repeated to one per query head (GPT-2 attention is multi-head)."""
    import torch

    rep, hs = cfg.n_heads // cfg.kv_heads, cfg.head_dim

    def kv(t: torch.Tensor) -> torch.Tensor:  # (nkv*hs, ...) -> (nh*hs, ...)
        return t.reshape(cfg.kv_heads, hs, *t.shape[1:]).repeat_interleave(rep, 0).reshape(
            cfg.n_heads * hs, *t.shape[1:])

    def get(name: str, rows: int) -> torch.Tensor:
        return sd.get(name, torch.zeros(rows))

    C = cfg.d_model
    out = {"transformer.wte.weight": sd["embed.weight"], "transformer.wpe.weight": sd["pos.weight"],
           "transformer.ln_f.weight": sd["norm_f.weight"],
           "transformer.ln_f.bias": get("norm_f.bias", C), "lm_head.weight": sd["head.weight"]}
    for i in range(cfg.n_layers):
        b, h = f"blocks.{i}.", f"transformer.h.{i}."
        for n in (1, 2):
            out[h + f"ln_{n}.weight"] = sd[b + f"norm{n}.weight"]
            out[h + f"ln_{n}.bias"] = get(b + f"norm{n}.bias", C)
        kv_rows = cfg.kv_heads * hs
        out[h + "attn.c_attn.weight"] = torch.cat(
            [sd[b + "attn.wq.weight"], kv(sd[b + "attn.wk.weight"]),
             kv(sd[b + "attn.wv.weight"])]).t().contiguous()
        out[h + "attn.c_attn.bias"] = torch.cat(
            [get(b + "attn.wq.bias", C), kv(get(b + "attn.wk.bias", kv_rows)),
             kv(get(b + "attn.wv.bias", kv_rows))])
        out[h + "attn.c_proj.weight"] = sd[b + "attn.wo.weight"].t().contiguous()
        out[h + "attn.c_proj.bias"] = get(b + "attn.wo.bias", C)
        out[h + "mlp.c_fc.weight"] = sd[b + "ffn.w1.weight"].t().contiguous()
        out[h + "mlp.c_fc.bias"] = get(b + "ffn.w1.bias", cfg.d_ff)
        out[h + "mlp.c_proj.weight"] = sd[b + "ffn.w2.weight"].t().contiguous()
        out[h + "mlp.c_proj.bias"] = get(b + "ffn.w2.bias", C)
    return out


def _save_tokenizer(tok_file: Path, out: Path, eot: str | None, max_len: int) -> None:
    """The run's tokenizer.json as a PreTrainedTokenizerFast (AutoTokenizer loads it)."""
    from transformers import PreTrainedTokenizerFast

    specials = {"bos_token": eot, "eos_token": eot, "pad_token": eot} if eot else {}
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_file), model_max_length=max_len,
                                  **specials)
    tok.save_pretrained(str(out))
    # the class name every transformers version resolves (5.x writes its own "TokenizersBackend")
    config = out / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()),
                                  "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2) + "\n")


def _transformers(cls: str):
    """The transformers module, if installed and new enough to have ``cls``."""
    try:
        import transformers
    except ImportError:
        raise LmablateError("export-hf needs transformers: pip install 'lmablate[eval]'") from None
    if not hasattr(transformers, cls):
        raise LmablateError(f"transformers {transformers.__version__} has no {cls}; upgrade it: "
                            "pip install -U transformers")
    return transformers


def export_hf(run_dir: str | Path, out_dir: str | Path, *,
              tokenizer: str | Path | None = None) -> dict[str, Any]:
    """Write ``run_dir``'s model and tokenizer to ``out_dir`` as a Hugging Face directory.

    ``tokenizer``: the run's tokenizer.json (default: the workflow's
    ``resources/tokenizers/<corpus>-<data_id>/``, see
    :func:`lmablate.evaluation.loading.tokenizer_path`). Returns ``{"class", "vocab_size",
    "out"}``. Raises :class:`ConfigError` for a model no transformers class represents.
    """
    from lmablate.evaluation.loading import load_run_model, read_run_config, tokenizer_path

    run_dir, out = Path(run_dir), Path(out_dir)
    cfg, meta = read_run_config(run_dir)
    try:
        family = hf_family(cfg.model)  # refuse before loading anything
    except ConfigError as err:
        raise err.with_file(str(run_dir / "config.yaml")) from None
    tok_file = Path(tokenizer) if tokenizer else tokenizer_path(run_dir, meta, cfg)
    loaded = load_run_model(run_dir, tokenizer=tok_file)
    vocab, eot = loaded.vocab_size, loaded.eot_id
    sd = {k: v[:vocab] if k in ("embed.weight", "head.weight") else v
          for k, v in loaded.model.state_dict().items()}  # the padding rows cut
    state = _gpt2_state(sd, cfg.model) if family == "gpt2" else _llama_state(sd, cfg.model, family)

    transformers = _transformers(HF_CLASSES[family])
    hf_cfg = _hf_config(family, cfg.model, vocab, loaded.max_len, eot)
    hf_cfg.architectures = [HF_CLASSES[family]]
    model = getattr(transformers, HF_CLASSES[family])(hf_cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(f"{run_dir}: export to {HF_CLASSES[family]} left weights unmatched "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]}) with transformers "
                        f"{transformers.__version__}; lmablate maps to the layout of 5.x")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    eot_token = loaded.tokenizer.id_to_token(eot) if eot is not None else None
    _save_tokenizer(tok_file, out, eot_token, loaded.max_len)
    return {"class": HF_CLASSES[family], "vocab_size": vocab, "out": str(out)}
