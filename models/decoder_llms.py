"""The decoder-only LLM families: each family's config mapped onto `decoder.DecoderSpec`, and its classes.

Classes carry transformers' names (LlamaForCausalLM, Qwen2ForSequenceClassification, ...) and parameter
names, and exist for the heads transformers 4.57.6 has for that family (Gemma 2 and Phi-3 have no QA head,
Gemma 3 text has neither QA nor token classification). What a family reads from its config, and every
value it refuses, is in its `_<family>_spec` function below.
"""

from __future__ import annotations

from .configuration_decoder import DECODER_MODEL_NAMES
from .configuration_gemma2 import Gemma2Config
from .configuration_gemma3 import Gemma3TextConfig
from .configuration_llama import LlamaConfig
from .configuration_mistral import MistralConfig
from .configuration_mixtral import MixtralConfig
from .configuration_phi3 import Phi3Config
from .configuration_qwen2 import Qwen2Config
from .configuration_qwen3 import Qwen3Config
from .configuration_qwen3_moe import Qwen3MoeConfig
from .decoder import (DecoderForCausalLM, DecoderForQuestionAnswering, DecoderForSequenceClassification,
                      DecoderForTokenClassification, DecoderModel, DecoderSpec, rope_spec)
from .layers import ACT2FN


def _check(config, field: str, ok: bool, why: str) -> None:
    if not ok:
        raise ValueError(f"{type(config).__name__} field `{field}`={getattr(config, field, None)!r}: {why}")


def _common(config, *, head_dim: int, activation_field: str, windows, rope_scaling=None, **fields) -> DecoderSpec:
    """Fields every family reads the same way, checked so a bad value fails here naming its field."""
    activation = getattr(config, activation_field)
    _check(config, activation_field, activation in ACT2FN, f"unsupported activation; supported: {sorted(ACT2FN)}")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    _check(config, "num_key_value_heads", kv_heads and heads % kv_heads == 0,
           f"must divide num_attention_heads={heads} (grouped-query attention)")
    for window in windows:
        if window is not None:
            _check(config, "sliding_window", isinstance(window, int) and window > 0, "must be a positive integer")
    fields.setdefault("scaling", head_dim**-0.5)
    return DecoderSpec(
        hidden_size=config.hidden_size, num_layers=config.num_hidden_layers, num_heads=heads, num_kv_heads=kv_heads,
        head_dim=head_dim, intermediate_size=config.intermediate_size, vocab_size=config.vocab_size,
        eps=config.rms_norm_eps, activation=activation,
        rope=rope_spec(config, config.rope_theta, head_dim, getattr(config, "rope_scaling", None)
                       if rope_scaling is None else rope_scaling),
        windows=tuple(windows), pad_token_id=config.pad_token_id,
        attention_dropout=float(getattr(config, "attention_dropout", 0.0) or 0.0), **fields,
    )


def _layer_windows(config) -> list:
    return [config.sliding_window if t == "sliding_attention" else None for t in config.layer_types]


def _llama_spec(config) -> DecoderSpec:
    return _common(config, head_dim=config.head_dim, activation_field="hidden_act",
                   windows=[None] * config.num_hidden_layers, qkv_bias=bool(config.attention_bias),
                   o_bias=bool(config.attention_bias), mlp_bias=bool(config.mlp_bias))


def _mistral_head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _mistral_spec(config) -> DecoderSpec:
    return _common(config, head_dim=_mistral_head_dim(config), activation_field="hidden_act",
                   windows=[config.sliding_window] * config.num_hidden_layers)


def _mixtral_spec(config) -> DecoderSpec:
    return _common(config, head_dim=_mistral_head_dim(config), activation_field="hidden_act",
                   windows=[config.sliding_window] * config.num_hidden_layers, mlp_name="block_sparse_moe",
                   moe_layers=(True,) * config.num_hidden_layers, moe_experts=config.num_local_experts,
                   moe_top_k=config.num_experts_per_tok, moe_intermediate_size=config.intermediate_size,
                   moe_normalize=True, moe_expert_names=("w1", "w3", "w2"))


def _qwen2_spec(config) -> DecoderSpec:
    return _common(config, head_dim=config.hidden_size // config.num_attention_heads, activation_field="hidden_act",
                   windows=_layer_windows(config), qkv_bias=True)


def _qwen3_spec(config) -> DecoderSpec:
    return _common(config, head_dim=config.head_dim, activation_field="hidden_act", windows=_layer_windows(config),
                   qk_norm=True, qkv_bias=bool(config.attention_bias), o_bias=bool(config.attention_bias))


def _qwen3_moe_spec(config) -> DecoderSpec:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    moe = tuple(
        i not in config.mlp_only_layers and config.num_experts > 0 and (i + 1) % config.decoder_sparse_step == 0
        for i in range(config.num_hidden_layers)
    )
    return _common(config, head_dim=head_dim, activation_field="hidden_act",
                   windows=[config.sliding_window] * config.num_hidden_layers, qk_norm=True,
                   qkv_bias=bool(config.attention_bias), o_bias=bool(config.attention_bias), moe_layers=moe,
                   moe_experts=config.num_experts, moe_top_k=config.num_experts_per_tok,
                   moe_intermediate_size=config.moe_intermediate_size, moe_normalize=bool(config.norm_topk_prob))


def _gemma_fields(config) -> dict:
    return dict(norm="gemma", sandwich_norms=True, qkv_bias=bool(config.attention_bias),
                o_bias=bool(config.attention_bias), scaling=config.query_pre_attn_scalar**-0.5,
                attn_softcap=config.attn_logit_softcapping, final_softcap=config.final_logit_softcapping,
                embed_scale=config.hidden_size**0.5)


def _gemma2_spec(config) -> DecoderSpec:
    return _common(config, head_dim=config.head_dim, activation_field="hidden_activation",
                   windows=_layer_windows(config), **_gemma_fields(config))


def _gemma3_spec(config) -> DecoderSpec:
    _check(config, "use_bidirectional_attention", not config.use_bidirectional_attention,
           "bidirectional attention (Gemma 3 embedding models) is not implemented; only causal Gemma 3 text models")
    local = rope_spec(config, config.rope_local_base_freq, config.head_dim, None, field="rope_local_base_freq")
    return _common(config, head_dim=config.head_dim, activation_field="hidden_activation",
                   windows=_layer_windows(config), qk_norm=True, local_rope=local, embed_scale_on_lookup=True,
                   **_gemma_fields(config))


def _phi3_spec(config) -> DecoderSpec:
    return _common(config, head_dim=config.hidden_size // config.num_attention_heads, activation_field="hidden_act",
                   windows=[config.sliding_window] * config.num_hidden_layers, fused_qkv=True,
                   mlp_kind="fused_gated", resid_dropout=float(config.resid_pdrop or 0.0))


# model_type -> (config class, spec builder, base attribute of the QA head: transformers keeps the old
# name `transformer` for Llama and the Qwen families).
_FAMILIES = {
    "llama": (LlamaConfig, _llama_spec, "transformer"),
    "mistral": (MistralConfig, _mistral_spec, "model"),
    "qwen2": (Qwen2Config, _qwen2_spec, "transformer"),
    "qwen3": (Qwen3Config, _qwen3_spec, "transformer"),
    "gemma2": (Gemma2Config, _gemma2_spec, None),
    "gemma3_text": (Gemma3TextConfig, _gemma3_spec, None),
    "phi3": (Phi3Config, _phi3_spec, None),
    "mixtral": (MixtralConfig, _mixtral_spec, "model"),
    "qwen3_moe": (Qwen3MoeConfig, _qwen3_moe_spec, "transformer"),
}

_TASK_BASES = {
    "base": DecoderModel,
    "causal_lm": DecoderForCausalLM,
    "sequence_classification": DecoderForSequenceClassification,
    "token_classification": DecoderForTokenClassification,
    "question_answering": DecoderForQuestionAnswering,
}


def _make_families() -> list[str]:
    """Define every family class (named as in DECODER_MODEL_NAMES) in this module; returns their names."""
    names = []
    for model_type, tasks in DECODER_MODEL_NAMES.items():
        config_class, builder, qa_prefix = _FAMILIES[model_type]
        for task, name in tasks.items():
            base = _TASK_BASES[task]
            attrs = {"config_class": config_class, "spec_builder": staticmethod(builder), "__module__": __name__,
                     "__qualname__": name, "__doc__": f"{base.__doc__}\n\n{config_class.__name__} ({model_type})."}
            if task == "question_answering":
                attrs["base_model_prefix"] = qa_prefix
            globals()[name] = type(name, (base,), attrs)
            names.append(name)
    return names


__all__ = sorted(_make_families())
