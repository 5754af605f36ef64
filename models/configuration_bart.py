"""Configurations of BART, mBART, Marian and Pegasus, and the `BartVariant` switches each attaches
(see bart.py for the models and the table of what the switches select).

Kept apart from the modelling code, as transformers does, so reading a checkpoint's config.json
(`AutoConfig.from_pretrained`) does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .configuration_utils import PretrainedConfig


@dataclass(frozen=True)
class BartVariant:
    """What distinguishes BART, mBART, Marian and Pegasus; everything else is shared code."""

    # LayerNorm before each sub-layer (mBART, Pegasus) instead of after the residual add (BART, Marian).
    pre_norm: bool
    # Learned position table with BART's offset of 2 (BART, mBART) instead of fixed sinusoids.
    learned_positions: bool
    # `layernorm_embedding` after token + position embeddings (BART, mBART).
    embedding_norm: bool
    # `layer_norm` after the last encoder / decoder layer (mBART, Pegasus).
    final_norm: bool
    # BART/mBART scale inside `embed_tokens` (a user's `inputs_embeds` are used as given);
    # Marian/Pegasus scale in the forward pass (and the decoder also scales a user's embeddings).
    scale_inside_embedding: bool
    # fairseq's padding-aware sinusoids (M2M100 / NLLB): positions count only non-pad tokens, start at
    # pad_token_id + 1, and a pad token reads the zero row at pad_token_id. Overrides `learned_positions`.
    padding_aware_positions: bool = False
    # A `final_logits_bias` buffer added to the LM logits (every family here but M2M100).
    final_logits_bias: bool = True
    # M2M100's reference draws its LayerDrop coin (`torch.rand([])`, global generator) for every layer
    # in eval mode too. Seeded sampling reads the same generator, so we draw as well to stay
    # token-identical; the coin only skips layers in training.
    layerdrop_draws_in_eval: bool = False


BART_VARIANT = BartVariant(pre_norm=False, learned_positions=True, embedding_norm=True, final_norm=False,
                           scale_inside_embedding=True)
MBART_VARIANT = BartVariant(pre_norm=True, learned_positions=True, embedding_norm=True, final_norm=True,
                            scale_inside_embedding=True)
MARIAN_VARIANT = BartVariant(pre_norm=False, learned_positions=False, embedding_norm=False, final_norm=False,
                             scale_inside_embedding=False)
PEGASUS_VARIANT = BartVariant(pre_norm=True, learned_positions=False, embedding_norm=False, final_norm=True,
                              scale_inside_embedding=False)


# ============================================================================ configs


class BartConfig(PretrainedConfig):
    """Configuration of BART (same arguments, defaults and JSON as transformers' BartConfig)."""

    model_type = "bart"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"num_attention_heads": "encoder_attention_heads", "hidden_size": "d_model"}
    # Class-level, so never written to config.json.
    variant: ClassVar[BartVariant] = BART_VARIANT

    def __init__(
        self,
        vocab_size=50265,
        max_position_embeddings=1024,
        encoder_layers=12,
        encoder_ffn_dim=4096,
        encoder_attention_heads=16,
        decoder_layers=12,
        decoder_ffn_dim=4096,
        decoder_attention_heads=16,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        activation_function="gelu",
        d_model=1024,
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        init_std=0.02,
        classifier_dropout=0.0,
        scale_embedding=False,
        use_cache=True,
        num_labels=3,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        is_encoder_decoder=True,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
        **kwargs,
    ):
        _set_common_fields(self, locals())
        self.classifier_dropout = classifier_dropout
        force_bos = kwargs.get("force_bos_token_to_be_generated", False)
        super().__init__(
            num_labels=num_labels,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            is_encoder_decoder=is_encoder_decoder,
            decoder_start_token_id=decoder_start_token_id,
            forced_eos_token_id=forced_eos_token_id,
            **kwargs,
        )
        if self.forced_bos_token_id is None and force_bos:
            self.forced_bos_token_id = self.bos_token_id


class MBartConfig(PretrainedConfig):
    """Configuration of mBART (transformers' MBartConfig). mBART has no single decoder start token:
    labels are shifted by wrapping each row's last non-pad token (the language id) to the front."""

    model_type = "mbart"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"num_attention_heads": "encoder_attention_heads", "hidden_size": "d_model"}
    variant: ClassVar[BartVariant] = MBART_VARIANT

    def __init__(
        self,
        vocab_size=50265,
        max_position_embeddings=1024,
        encoder_layers=12,
        encoder_ffn_dim=4096,
        encoder_attention_heads=16,
        decoder_layers=12,
        decoder_ffn_dim=4096,
        decoder_attention_heads=16,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        use_cache=True,
        is_encoder_decoder=True,
        activation_function="gelu",
        d_model=1024,
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        init_std=0.02,
        classifier_dropout=0.0,
        scale_embedding=False,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        forced_eos_token_id=2,
        **kwargs,
    ):
        _set_common_fields(self, locals())
        self.classifier_dropout = classifier_dropout
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            is_encoder_decoder=is_encoder_decoder,
            forced_eos_token_id=forced_eos_token_id,
            **kwargs,
        )


class MarianConfig(PretrainedConfig):
    """Configuration of Marian (transformers' MarianConfig), incl. separate source/target vocabularies
    (`share_encoder_decoder_embeddings=False`, `decoder_vocab_size`)."""

    model_type = "marian"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"num_attention_heads": "encoder_attention_heads", "hidden_size": "d_model"}
    variant: ClassVar[BartVariant] = MARIAN_VARIANT

    def __init__(
        self,
        vocab_size=58101,
        decoder_vocab_size=None,
        max_position_embeddings=1024,
        encoder_layers=12,
        encoder_ffn_dim=4096,
        encoder_attention_heads=16,
        decoder_layers=12,
        decoder_ffn_dim=4096,
        decoder_attention_heads=16,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        use_cache=True,
        is_encoder_decoder=True,
        activation_function="gelu",
        d_model=1024,
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        init_std=0.02,
        decoder_start_token_id=58100,
        scale_embedding=False,
        pad_token_id=58100,
        eos_token_id=0,
        forced_eos_token_id=0,
        share_encoder_decoder_embeddings=True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.decoder_vocab_size = decoder_vocab_size or vocab_size
        _set_common_fields(self, locals())
        self.share_encoder_decoder_embeddings = share_encoder_decoder_embeddings
        super().__init__(
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            is_encoder_decoder=is_encoder_decoder,
            decoder_start_token_id=decoder_start_token_id,
            forced_eos_token_id=forced_eos_token_id,
            **kwargs,
        )


class PegasusConfig(PretrainedConfig):
    """Configuration of Pegasus (transformers' PegasusConfig)."""

    model_type = "pegasus"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"num_attention_heads": "encoder_attention_heads", "hidden_size": "d_model"}
    variant: ClassVar[BartVariant] = PEGASUS_VARIANT

    def __init__(
        self,
        vocab_size=50265,
        max_position_embeddings=1024,
        encoder_layers=12,
        encoder_ffn_dim=4096,
        encoder_attention_heads=16,
        decoder_layers=12,
        decoder_ffn_dim=4096,
        decoder_attention_heads=16,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        use_cache=True,
        is_encoder_decoder=True,
        activation_function="gelu",
        d_model=1024,
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        init_std=0.02,
        decoder_start_token_id=0,
        scale_embedding=False,
        pad_token_id=0,
        eos_token_id=1,
        forced_eos_token_id=1,
        **kwargs,
    ):
        _set_common_fields(self, locals())
        super().__init__(
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            is_encoder_decoder=is_encoder_decoder,
            decoder_start_token_id=decoder_start_token_id,
            forced_eos_token_id=forced_eos_token_id,
            **kwargs,
        )


_COMMON_FIELDS = (
    "vocab_size", "max_position_embeddings", "d_model", "encoder_ffn_dim", "encoder_layers", "encoder_attention_heads",
    "decoder_ffn_dim", "decoder_layers", "decoder_attention_heads", "dropout", "attention_dropout",
    "activation_dropout", "activation_function", "init_std", "encoder_layerdrop", "decoder_layerdrop", "use_cache",
    "scale_embedding",
)


def _set_common_fields(config: PretrainedConfig, arguments: dict) -> None:
    """Store the architecture fields every family shares, in transformers' attribute order."""
    for name in _COMMON_FIELDS:
        setattr(config, name, arguments[name])
    config.num_hidden_layers = arguments["encoder_layers"]
