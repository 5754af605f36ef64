"""Configuration of Phi-3 (see decoder_llms.py for the models): transformers 4.57.6's `Phi3Config`."""

from __future__ import annotations

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
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.resid_pdrop = resid_pdrop
        self.embd_pdrop = embd_pdrop
        self.attention_dropout = attention_dropout
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.original_max_position_embeddings = original_max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.partial_rotary_factor = partial_rotary_factor
        if rope_scaling is not None and rope_scaling.get("type") in ("su", "yarn"):
            rope_scaling["type"] = "longrope"  # transformers' backward compatibility
        self.sliding_window = sliding_window
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
