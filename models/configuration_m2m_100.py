"""Configuration of M2M100 / NLLB-200 (see m2m_100.py for the models).

Kept apart from the modelling code, as transformers does, so reading a checkpoint's config.json
(`AutoConfig.from_pretrained`) does not import torch.
"""

from __future__ import annotations

from typing import ClassVar

from .configuration_bart import BartVariant, _set_common_fields
from .configuration_utils import PretrainedConfig


M2M100_VARIANT = BartVariant(pre_norm=True, learned_positions=False, embedding_norm=False, final_norm=True,
                             scale_inside_embedding=True, padding_aware_positions=True, final_logits_bias=False,
                             layerdrop_draws_in_eval=True)


class M2M100Config(PretrainedConfig):
    """Configuration of M2M100 / NLLB (same arguments, defaults and JSON as transformers' M2M100Config)."""

    model_type = "m2m_100"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"num_attention_heads": "encoder_attention_heads", "hidden_size": "d_model"}
    variant: ClassVar[BartVariant] = M2M100_VARIANT

    def __init__(
        self,
        vocab_size=128112,
        max_position_embeddings=1024,
        encoder_layers=12,
        encoder_ffn_dim=4096,
        encoder_attention_heads=16,
        decoder_layers=12,
        decoder_ffn_dim=4096,
        decoder_attention_heads=16,
        encoder_layerdrop=0.05,
        decoder_layerdrop=0.05,
        use_cache=True,
        is_encoder_decoder=True,
        activation_function="relu",
        d_model=1024,
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.0,
        init_std=0.02,
        decoder_start_token_id=2,
        scale_embedding=True,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        **kwargs,
    ):
        _set_common_fields(self, locals())
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            is_encoder_decoder=is_encoder_decoder,
            decoder_start_token_id=decoder_start_token_id,
            **kwargs,
        )
