"""Configuration of Mixtral (see decoder_llms.py for the models): transformers 4.57.6's `MixtralConfig`."""

from __future__ import annotations

from .configuration_decoder import assign_fields, default_kv_heads
from .configuration_utils import PretrainedConfig


class MixtralConfig(PretrainedConfig):
    """Mixtral: Mistral's attention with a sparse MoE feed-forward (`num_local_experts` experts, the top
    `num_experts_per_tok` per token, their routing weights renormalised to sum to 1)."""

    model_type = "mixtral"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, head_dim=None, hidden_act="silu",
                 max_position_embeddings=4096 * 32, initializer_range=0.02, rms_norm_eps=1e-5, use_cache=True,
                 pad_token_id=None, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, rope_theta=1e6,
                 sliding_window=None, attention_dropout=0.0, num_experts_per_tok=2, num_local_experts=8,
                 output_router_logits=False, router_aux_loss_coef=0.001, router_jitter_noise=0.0, **kwargs):
        base = assign_fields(self, locals())
        default_kv_heads(self)
        super().__init__(**base)
