"""Configuration of Qwen3-MoE (see decoder_llms.py for the models): transformers 4.57.6's `Qwen3MoeConfig`."""

from __future__ import annotations

from .configuration_decoder import assign_fields, normalize_rope_scaling
from .configuration_utils import PretrainedConfig


class Qwen3MoeConfig(PretrainedConfig):
    """Qwen3-MoE: Qwen3's attention; every `decoder_sparse_step`-th layer not in `mlp_only_layers` has
    `num_experts` experts of width `moe_intermediate_size`, the top `num_experts_per_tok` per token
    (weights renormalised only with `norm_topk_prob`)."""

    model_type = "qwen3_moe"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
                 num_attention_heads=32, num_key_value_heads=4, hidden_act="silu", max_position_embeddings=32768,
                 initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True, tie_word_embeddings=False,
                 rope_theta=10000.0, rope_scaling=None, attention_bias=False, use_sliding_window=False,
                 sliding_window=4096, attention_dropout=0.0, decoder_sparse_step=1, moe_intermediate_size=768,
                 num_experts_per_tok=8, num_experts=128, norm_topk_prob=False, output_router_logits=False,
                 router_aux_loss_coef=0.001, mlp_only_layers=None, **kwargs):
        base = assign_fields(self, locals())
        self.sliding_window = sliding_window if use_sliding_window else None
        self.rope_scaling = normalize_rope_scaling(rope_scaling)
        self.mlp_only_layers = [] if mlp_only_layers is None else mlp_only_layers
        super().__init__(**base)
