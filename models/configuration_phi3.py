"""Configuration of Phi-3 (see decoder_llms.py for the models): transformers 4.57.6's `Phi3Config`."""

from __future__ import annotations

from .configuration_decoder import assign_fields, default_kv_heads
from .configuration_utils import PretrainedConfig


class Phi3Config(PretrainedConfig):
    """Phi-3: fused `qkv_proj` and `gate_up_proj`, `partial_rotary_factor`, LongRoPE scaling
    (`rope_scaling` {"type": "longrope", "short_factor", "long_factor"} with `original_max_position_embeddings`),
    optional `sliding_window`."""

    model_type = "phi3"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=None, resid_pdrop=0.0, embd_pdrop=0.0,
                 attention_dropout=0.0, hidden_act="silu", max_position_embeddings=4096,
                 original_max_position_embeddings=4096, initializer_range=0.02, rms_norm_eps=1e-5, use_cache=True,
                 tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None, partial_rotary_factor=1.0,
                 bos_token_id=1, eos_token_id=32000, pad_token_id=32000, sliding_window=None, **kwargs):
        base = assign_fields(self, locals())
        default_kv_heads(self)
        if rope_scaling is not None and rope_scaling.get("type") in ("su", "yarn"):
            rope_scaling["type"] = "longrope"  # transformers' backward compatibility
        super().__init__(**base)
