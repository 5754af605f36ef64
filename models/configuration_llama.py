"""Configuration of Llama (see decoder_llms.py for the models): transformers 4.57.6's `LlamaConfig`."""

from __future__ import annotations

from .configuration_decoder import assign_fields, default_kv_heads, normalize_rope_scaling
from .configuration_utils import PretrainedConfig


class LlamaConfig(PretrainedConfig):
    """Llama 1/2/3: `rope_scaling` (linear, dynamic, yarn, llama3, longrope), `attention_bias`, `mlp_bias`,
    `head_dim`, grouped-query attention (`num_key_value_heads`), tied or untied head."""

    model_type = "llama"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=None, hidden_act="silu", max_position_embeddings=2048,
                 initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True, pad_token_id=None, bos_token_id=1,
                 eos_token_id=2, pretraining_tp=1, tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None,
                 attention_bias=False, attention_dropout=0.0, mlp_bias=False, head_dim=None, **kwargs):
        base = assign_fields(self, locals())
        default_kv_heads(self)
        self.rope_scaling = normalize_rope_scaling(rope_scaling)
        self.head_dim = head_dim if head_dim is not None else self.hidden_size // self.num_attention_heads
        super().__init__(**base)
