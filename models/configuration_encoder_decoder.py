"""Configuration of `EncoderDecoderModel` (see encoder_decoder.py): two nested sub-configs.

Kept apart from the modelling code, as transformers does, so reading a checkpoint's config.json
(`AutoConfig.from_pretrained`) does not import torch.
"""

from __future__ import annotations

import copy

from .auto import AutoConfig
from .configuration_utils import PretrainedConfig


class EncoderDecoderConfig(PretrainedConfig):
    """Nested config: `encoder` and `decoder` sub-configs (any registered model type) plus the seq2seq
    fields (`decoder_start_token_id`, `pad_token_id`, ...) at the top level."""

    model_type = "encoder-decoder"
    sub_configs = {"encoder": AutoConfig, "decoder": AutoConfig}
    has_no_defaults_at_init = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if "encoder" not in kwargs or "decoder" not in kwargs:
            raise ValueError(
                f"A configuration of type {self.model_type} cannot be instantiated because both `encoder` and "
                f"`decoder` sub-configurations were not passed, only {sorted(kwargs)}. Build it with "
                "EncoderDecoderConfig.from_encoder_decoder_configs(encoder_config, decoder_config)."
            )
        self.encoder = _sub_config(kwargs.pop("encoder"), "encoder")
        self.decoder = _sub_config(kwargs.pop("decoder"), "decoder")
        self.is_encoder_decoder = True

    @classmethod
    def from_encoder_decoder_configs(cls, encoder_config: PretrainedConfig, decoder_config: PretrainedConfig,
                                     **kwargs) -> "EncoderDecoderConfig":
        """Combine two configs; the decoder one is switched to a cross-attending causal decoder (in place,
        as transformers does)."""
        decoder_config.is_decoder = True
        decoder_config.add_cross_attention = True
        return cls(encoder=encoder_config.to_dict(), decoder=decoder_config.to_dict(), **kwargs)


def _sub_config(value, name: str) -> PretrainedConfig:
    if isinstance(value, PretrainedConfig):
        return copy.deepcopy(value)
    if not isinstance(value, dict) or "model_type" not in value:
        raise ValueError(
            f"EncoderDecoderConfig `{name}` must be a config dict with a 'model_type' entry, got {value!r}."
        )
    fields = dict(value)
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, **fields)
