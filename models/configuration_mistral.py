"""Configuration of Mistral (see decoder_llms.py for the models): transformers 4.57.6's `MistralConfig`."""

from __future__ import annotations

from .configuration_decoder import assign_fields, default_kv_heads
from .configuration_utils import PretrainedConfig


class MistralConfig(PretrainedConfig):
    """Mistral: Llama's block with a `sliding_window` (every layer; None = full attention)."""

    model_type = "mistral"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, head_dim=None, hidden_act="silu",
                 max_position_embeddings=4096 * 32, initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True,
                 pad_token_id=None, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, rope_theta=10000.0,
                 sliding_window=4096, attention_dropout=0.0, **kwargs):
        base = assign_fields(self, locals())
        default_kv_heads(self)
        super().__init__(**base)
