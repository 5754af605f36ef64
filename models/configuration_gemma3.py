"""Configuration of Gemma 3's text model (see decoder_llms.py): transformers 4.57.6's `Gemma3TextConfig`.

Only the text decoder (`model_type` "gemma3_text"); the multimodal "gemma3" checkpoints (vision tower)
are not supported.
"""

from __future__ import annotations

from .configuration_decoder import alternating_layer_types, assign_fields, check_layer_types, normalize_rope_scaling
from .configuration_utils import PretrainedConfig


class Gemma3TextConfig(PretrainedConfig):
    """Gemma 3 text: Gemma 2's block plus q/k RMSNorm, local layers with RoPE base `rope_local_base_freq`
    and global layers with `rope_theta` (and `rope_scaling`), five local layers per global one by default."""

    model_type = "gemma3_text"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
                 max_position_embeddings=131072, initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True,
                 pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True, rope_theta=1_000_000.0,
                 attention_bias=False, attention_dropout=0.0, query_pre_attn_scalar=256, sliding_window=4096,
                 layer_types=None, final_logit_softcapping=None, attn_logit_softcapping=None, rope_scaling=None,
                 rope_local_base_freq=10_000.0, use_bidirectional_attention=False, **kwargs):
        super().__init__(**assign_fields(self, locals()))
        if use_bidirectional_attention:
            self.sliding_window = (self.sliding_window // 2) + 1
        self.rope_scaling = normalize_rope_scaling(rope_scaling)
        self._sliding_window_pattern = kwargs.get("sliding_window_pattern", 6)
        self.layer_types = layer_types or alternating_layer_types(self._sliding_window_pattern, num_hidden_layers)
        check_layer_types(self.layer_types, num_hidden_layers)
