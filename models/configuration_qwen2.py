"""Configuration of Qwen2 (see decoder_llms.py for the models): transformers 4.57.6's `Qwen2Config`."""

from __future__ import annotations

from .configuration_decoder import assign_fields, qwen_attention_fields
from .configuration_utils import PretrainedConfig


class Qwen2Config(PretrainedConfig):
    """Qwen2 / Qwen2.5: Llama's block with q/k/v biases; with `use_sliding_window` the layers from
    `max_window_layers` on (or those `layer_types` names) attend within `sliding_window`."""

    model_type = "qwen2"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, hidden_act="silu", max_position_embeddings=32768,
                 initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True, tie_word_embeddings=False,
                 rope_theta=10000.0, rope_scaling=None, use_sliding_window=False, sliding_window=4096,
                 max_window_layers=28, layer_types=None, attention_dropout=0.0, **kwargs):
        base = assign_fields(self, locals())
        qwen_attention_fields(self)
        super().__init__(**base)
