"""Config helpers shared by the decoder-only LLM families (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3, Mixtral,
Qwen3-MoE).

Each family keeps its own `configuration_<family>.py` with transformers 4.57.6's field names and defaults
(its public face); what several of them derive the same way lives here. Torch-free, like every config module.
"""

from __future__ import annotations


def normalize_rope_scaling(rope_scaling):
    """transformers' backward compatibility: an old `{"type": ...}` also gets `rope_type` (both kept)."""
    if rope_scaling is not None and "type" in rope_scaling:
        rope_scaling["rope_type"] = rope_scaling["type"]
    return rope_scaling


def windowed_layer_types(sliding_window, max_window_layers: int, num_hidden_layers: int) -> list[str]:
    """Qwen2/Qwen3 default: layers from `max_window_layers` on use the sliding window (when one is set)."""
    return [
        "sliding_attention" if sliding_window is not None and i >= max_window_layers else "full_attention"
        for i in range(num_hidden_layers)
    ]


def alternating_layer_types(pattern: int, num_hidden_layers: int) -> list[str]:
    """Gemma 2 (pattern 2) and Gemma 3 (pattern 6): every `pattern`-th layer is global, the others local."""
    return ["sliding_attention" if bool((i + 1) % pattern) else "full_attention" for i in range(num_hidden_layers)]


def check_layer_types(layer_types, num_hidden_layers: int) -> None:
    allowed = {"full_attention", "sliding_attention"}
    if len(layer_types) != num_hidden_layers:
        raise ValueError(
            f"config field `layer_types` has {len(layer_types)} entries but num_hidden_layers={num_hidden_layers}; "
            "give one entry per layer."
        )
    bad = sorted({t for t in layer_types if t not in allowed})
    if bad:
        raise ValueError(f"config field `layer_types` holds {bad}; supported: {sorted(allowed)}.")


def _heads(prefix: str, *tasks: str, causal_lm: str | None = None) -> dict[str, str]:
    suffixes = {"sequence_classification": "ForSequenceClassification",
                "token_classification": "ForTokenClassification", "question_answering": "ForQuestionAnswering"}
    names = {"base": f"{prefix}Model", "causal_lm": causal_lm or f"{prefix}ForCausalLM"}
    names.update({task: prefix + suffixes[task] for task in tasks})
    return names


_ALL_HEADS = ("sequence_classification", "token_classification", "question_answering")

# model_type -> {task: class name}: transformers 4.57.6's names, and only the heads it has for the family
# (Gemma 2 and Phi-3 have no QA head; Gemma 3 text has neither QA nor token classification). The Auto
# registry reads this table without importing torch; decoder_llms.py builds the classes from it.
DECODER_MODEL_NAMES: dict[str, dict[str, str]] = {
    "llama": _heads("Llama", *_ALL_HEADS),
    "mistral": _heads("Mistral", *_ALL_HEADS),
    "qwen2": _heads("Qwen2", *_ALL_HEADS),
    "qwen3": _heads("Qwen3", *_ALL_HEADS),
    "gemma2": _heads("Gemma2", "sequence_classification", "token_classification"),
    "gemma3_text": _heads("Gemma3Text", "sequence_classification", causal_lm="Gemma3ForCausalLM"),
    "phi3": _heads("Phi3", "sequence_classification", "token_classification"),
    "mixtral": _heads("Mixtral", *_ALL_HEADS),
    "qwen3_moe": _heads("Qwen3Moe", *_ALL_HEADS),
}

# model_type -> (config module, config class name).
DECODER_CONFIGS: dict[str, tuple[str, str]] = {
    "llama": ("configuration_llama", "LlamaConfig"),
    "mistral": ("configuration_mistral", "MistralConfig"),
    "qwen2": ("configuration_qwen2", "Qwen2Config"),
    "qwen3": ("configuration_qwen3", "Qwen3Config"),
    "gemma2": ("configuration_gemma2", "Gemma2Config"),
    "gemma3_text": ("configuration_gemma3", "Gemma3TextConfig"),
    "phi3": ("configuration_phi3", "Phi3Config"),
    "mixtral": ("configuration_mixtral", "MixtralConfig"),
    "qwen3_moe": ("configuration_qwen3_moe", "Qwen3MoeConfig"),
}


BASE_CONFIG_ARGUMENTS = ("pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings")
"""Arguments of a family's ``__init__`` that ``PretrainedConfig.__init__`` itself takes."""


def assign_fields(config, arguments: dict) -> dict:
    """Set every named argument of a family config's ``__init__`` (its ``locals()``) as an attribute
    of the same name, as transformers' config classes assign each one, and return what goes on to
    ``PretrainedConfig.__init__`` (token ids, the tie flag, ``**kwargs``).

    Why: the nine families share most fields (sizes, heads, norm epsilon, RoPE base, ...) and
    differ in their defaults, which stay in each family's signature, the public face transformers
    documents. Fields derived from others (a default ``head_dim``, ``num_key_value_heads=None``
    meaning multi-head attention, a window only when enabled) are set by the family afterwards."""
    arguments = dict(arguments)
    kwargs = arguments.pop("kwargs", {})
    for name in ("self", "__class__"):
        arguments.pop(name, None)
    base = {name: arguments.pop(name) for name in BASE_CONFIG_ARGUMENTS if name in arguments}
    for name, value in arguments.items():
        setattr(config, name, value)
    return {**base, **kwargs}


def default_kv_heads(config) -> None:
    """``num_key_value_heads=None`` means one key/value head per query head (plain multi-head)."""
    if config.num_key_value_heads is None:
        config.num_key_value_heads = config.num_attention_heads


def qwen_attention_fields(config) -> None:
    """Qwen2/Qwen3 after :func:`assign_fields`: multi-head default, the window only when
    ``use_sliding_window``, normalised ``rope_scaling``, and per-layer types (from
    ``max_window_layers`` on, unless ``layer_types`` names them) checked."""
    default_kv_heads(config)
    config.sliding_window = config.sliding_window if config.use_sliding_window else None
    config.rope_scaling = normalize_rope_scaling(config.rope_scaling)
    config.layer_types = config.layer_types or windowed_layer_types(config.sliding_window, config.max_window_layers,
                                                                    config.num_hidden_layers)
    check_layer_types(config.layer_types, config.num_hidden_layers)
