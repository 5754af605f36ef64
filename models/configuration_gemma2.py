"""Configuration of Gemma 2 (see decoder_llms.py for the models): transformers 4.57.6's `Gemma2Config`."""

from __future__ import annotations

from .configuration_decoder import alternating_layer_types, assign_fields, check_layer_types
from .configuration_utils import PretrainedConfig


class Gemma2Config(PretrainedConfig):
    """Gemma 2: (1 + w) RMSNorms before and after attention and MLP, GELU-tanh gated MLP, embeddings scaled
    by sqrt(hidden_size), attention scale `query_pre_attn_scalar`**-0.5, attention and final logit
    soft-capping, local (`sliding_window`) and global layers alternating (`layer_types`)."""

    model_type = "gemma2"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
                 max_position_embeddings=8192, initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True,
                 pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True, rope_theta=10000.0,
                 attention_bias=False, attention_dropout=0.0, query_pre_attn_scalar=256, sliding_window=4096,
                 layer_types=None, final_logit_softcapping=30.0, attn_logit_softcapping=50.0, **kwargs):
        super().__init__(**assign_fields(self, locals()))
        self.layer_types = layer_types or alternating_layer_types(2, num_hidden_layers)
        check_layer_types(self.layer_types, num_hidden_layers)
