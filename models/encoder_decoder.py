"""`EncoderDecoderModel`: any encoder (AutoModel) + any causal-LM decoder with cross-attention.

The classic use is BERT2BERT / RoBERTa2RoBERTa summarisation: two separately pre-trained
checkpoints become one seq2seq model with `from_encoder_decoder_pretrained` (the decoder config gets
`is_decoder=True` and `add_cross_attention=True`; its cross-attention weights are new and randomly
initialised), fine-tuned, saved as ONE checkpoint (`encoder.*` / `decoder.*` keys, nested
`EncoderDecoderConfig`) and reloaded with `from_pretrained`, in the same layout transformers 4.57
reads and writes.

When the encoder's hidden size differs from the decoder's (and the decoder does not declare
`cross_attention_hidden_size`), encoder states go through `enc_to_dec_proj` first.

Labels become decoder inputs by `shift_tokens_right` with the TOP-LEVEL config's
`decoder_start_token_id` and `pad_token_id` (-100 -> pad), and the loss is a plain token
cross-entropy over the decoder's logits (the decoder itself never sees the labels).

Not supported: `tie_encoder_decoder=True` (sharing encoder weights with the decoder), TensorFlow
checkpoints (`from_tf`), `resize_token_embeddings` (resize the wrapped models instead).
"""

from __future__ import annotations

import inspect
import logging

import torch
from torch import nn

from .auto import AutoConfig, AutoModel, AutoModelForCausalLM
from .configuration_encoder_decoder import EncoderDecoderConfig
from .generation import GenerationConfig, GenerationMixin
from .layers import check_input_ids, shift_tokens_right, token_cross_entropy
from .modeling_utils import PreTrainedModel
from .outputs import BaseModelOutput, Seq2SeqLMOutput, as_tuple, seq2seq_output, with_loss

logger = logging.getLogger(__name__)


class EncoderDecoderModel(PreTrainedModel, GenerationMixin):
    """Encoder (`AutoModel`) + decoder (`AutoModelForCausalLM` with cross-attention) as one seq2seq model."""

    config_class = EncoderDecoderConfig
    base_model_prefix = "encoder_decoder"
    main_input_name = "input_ids"
    # Continuous batching (generation/continuous.py) passes each new token's 0-based index in its row
    # under this keyword when rows join with a left-padded decoder cache; see `_supports_left_padded_decoder`.
    _decoder_position_ids_kwarg = "decoder_position_index"

    def __init__(self, config: EncoderDecoderConfig | None = None, encoder: PreTrainedModel | None = None,
                 decoder: PreTrainedModel | None = None):
        if config is None and (encoder is None or decoder is None):
            raise ValueError("Either a configuration or an encoder and a decoder has to be provided.")
        if config is None:
            config = EncoderDecoderConfig.from_encoder_decoder_configs(encoder.config, decoder.config)
        elif not isinstance(config, EncoderDecoderConfig):
            raise ValueError(f"Config: {type(config).__name__} has to be of type EncoderDecoderConfig")
        cross_size = config.decoder.cross_attention_hidden_size
        if cross_size is not None and cross_size != config.encoder.hidden_size:
            raise ValueError(
                "If `cross_attention_hidden_size` is specified in the decoder's configuration, it has to be equal to "
                f"the encoder's `hidden_size`. Got {cross_size} for `config.decoder.cross_attention_hidden_size` and "
                f"{config.encoder.hidden_size} for `config.encoder.hidden_size`."
            )
        if config.tie_encoder_decoder:
            raise NotImplementedError(
                "tie_encoder_decoder=True (sharing encoder weights with the decoder) is not supported; set it to False."
            )
        super().__init__(config)
        if encoder is None:
            encoder = AutoModel.from_config(config.encoder)
        if decoder is None:
            decoder = AutoModelForCausalLM.from_config(config.decoder)
        self.encoder = encoder
        self.decoder = decoder
        for side, model in (("encoder", encoder), ("decoder", decoder)):
            if model.config.to_dict() != getattr(config, side).to_dict():
                logger.warning("Config of the %s %s is overwritten by the shared %s config.", side,
                               type(model).__name__, side)
        # One source of truth: the sub-models read the nested configs.
        self.encoder.config = self.config.encoder
        self.decoder.config = self.config.decoder

        if self._needs_projection():
            self.enc_to_dec_proj = nn.Linear(self.encoder.config.hidden_size, self.decoder.config.hidden_size)
        if self.encoder.get_output_embeddings() is not None:
            raise ValueError(
                f"The encoder {type(self.encoder).__name__} should not have a LM Head. Please use a model without LM "
                "Head (AutoModel)."
            )
        if "encoder_hidden_states" not in inspect.signature(self.decoder.forward).parameters:
            raise ValueError(
                f"The decoder {type(self.decoder).__name__} cannot attend to encoder hidden states (its forward has no "
                "`encoder_hidden_states`); use a causal LM with cross-attention such as BertLMHeadModel."
            )
        self.generation_config = GenerationConfig.from_model_config(config) if self.can_generate() else None
        # No post_init: the wrapped models arrive initialised (or loaded); only ties are refreshed.
        self.tie_weights()

    @property
    def _supports_left_padded_decoder(self) -> bool:
        """True when the decoder takes explicit `position_ids` (BERT/RoBERTa decoders), so rows whose cached
        prefix is left-padded can be given their own positions."""
        return "position_ids" in inspect.signature(self.decoder.forward).parameters

    def _decoder_position_ids(self, position_index: torch.Tensor) -> torch.Tensor:
        """0-based token index -> the decoder's position ids (RoBERTa counts from pad_token_id + 1)."""
        if getattr(self.decoder, "_positions_from_padding", False):
            return position_index + self.decoder.config.pad_token_id + 1
        return position_index

    def _needs_projection(self) -> bool:
        return (
            self.encoder.config.hidden_size != self.decoder.config.hidden_size
            and self.decoder.config.cross_attention_hidden_size is None
        )

    # ------------------------------------------------------------------ weights
    def _tie_embeddings(self) -> None:
        """Each wrapped model ties its own embeddings; the encoder's input embedding is never the decoder's
        output embedding (the base class would tie exactly that)."""

    def _init_weights(self, module: nn.Module) -> None:
        encoder_modules = {id(m) for m in self.encoder.modules()}
        decoder_modules = {id(m) for m in self.decoder.modules()}
        if id(module) in encoder_modules:
            self.encoder._init_weights(module)
        elif id(module) in decoder_modules:
            self.decoder._init_weights(module)
        elif isinstance(module, nn.Linear):  # enc_to_dec_proj: torch's default init, as in transformers
            module.reset_parameters()

    def get_encoder(self):
        return self.encoder

    def get_decoder(self):
        return self.decoder

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def get_output_embeddings(self):
        return self.decoder.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings):
        return self.decoder.set_output_embeddings(new_embeddings)

    def resize_token_embeddings(self, *args, **kwargs):
        raise NotImplementedError(
            "Resizing the embedding layers via the EncoderDecoderModel directly is not supported. Please use the "
            "respective methods of the wrapped objects (model.encoder.resize_token_embeddings(...) or "
            "model.decoder.resize_token_embeddings(...))"
        )

    # ------------------------------------------------------------------ construction from two checkpoints
    @classmethod
    def from_encoder_decoder_pretrained(cls, encoder_pretrained_model_name_or_path=None,
                                        decoder_pretrained_model_name_or_path=None, *model_args, **kwargs):
        """Build from two checkpoints (local dirs or Hub ids).

        Keyword arguments prefixed `encoder_` / `decoder_` go to that side's `from_pretrained` (e.g.
        `decoder_config=...`, `encoder_model=<an already built model>`); the rest go to the
        EncoderDecoderConfig (e.g. `pad_token_id=0`). `decoder_start_token_id=` also goes to that
        top-level config (transformers would hand it to the decoder's constructor and fail).
        """
        kwargs_encoder = {k[len("encoder_"):]: v for k, v in kwargs.items() if k.startswith("encoder_")}
        kwargs_decoder = {k[len("decoder_"):]: v for k, v in kwargs.items() if k.startswith("decoder_")}
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith(("encoder_", "decoder_"))}
        # `decoder_start_token_id` names a top-level config field, not a decoder-side argument.
        if "start_token_id" in kwargs_decoder:
            kwargs["decoder_start_token_id"] = kwargs_decoder.pop("start_token_id")

        encoder = kwargs_encoder.pop("model", None)
        if encoder is None:
            if encoder_pretrained_model_name_or_path is None:
                raise ValueError(
                    "If `encoder_model` is not defined as an argument, a `encoder_pretrained_model_name_or_path` has "
                    "to be defined."
                )
            if "config" not in kwargs_encoder:
                encoder_config, kwargs_encoder = AutoConfig.from_pretrained(
                    encoder_pretrained_model_name_or_path, **kwargs_encoder, return_unused_kwargs=True
                )
                if encoder_config.is_decoder is True or encoder_config.add_cross_attention is True:
                    logger.info("Initializing %s as an encoder: cross-attention and causal mask are disabled.",
                                encoder_pretrained_model_name_or_path)
                    encoder_config.is_decoder = False
                    encoder_config.add_cross_attention = False
                kwargs_encoder["config"] = encoder_config
            encoder = AutoModel.from_pretrained(encoder_pretrained_model_name_or_path, *model_args, **kwargs_encoder)

        decoder = kwargs_decoder.pop("model", None)
        if decoder is None:
            if decoder_pretrained_model_name_or_path is None:
                raise ValueError(
                    "If `decoder_model` is not defined as an argument, a `decoder_pretrained_model_name_or_path` has "
                    "to be defined."
                )
            if "config" not in kwargs_decoder:
                decoder_config, kwargs_decoder = AutoConfig.from_pretrained(
                    decoder_pretrained_model_name_or_path, **kwargs_decoder, return_unused_kwargs=True
                )
                if decoder_config.is_decoder is False or decoder_config.add_cross_attention is False:
                    logger.info("Initializing %s as a decoder: cross-attention layers are added and randomly "
                                "initialised.", decoder_pretrained_model_name_or_path)
                    decoder_config.is_decoder = True
                    decoder_config.add_cross_attention = True
                kwargs_decoder["config"] = decoder_config
            if kwargs_decoder["config"].is_decoder is False or kwargs_decoder["config"].add_cross_attention is False:
                logger.warning(
                    "Decoder model %s is not initialized as a decoder: the decoder_config passed has is_decoder=%s, "
                    "add_cross_attention=%s; set both to True.", decoder_pretrained_model_name_or_path,
                    kwargs_decoder["config"].is_decoder, kwargs_decoder["config"].add_cross_attention,
                )
            decoder = AutoModelForCausalLM.from_pretrained(decoder_pretrained_model_name_or_path, **kwargs_decoder)

        config = EncoderDecoderConfig.from_encoder_decoder_configs(encoder.config, decoder.config, **kwargs)
        return cls(encoder=encoder, decoder=decoder, config=config).eval()

    # ------------------------------------------------------------------ forward
    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        encoder_outputs=None,
        past_key_values=None,
        inputs_embeds=None,
        decoder_inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        """As transformers: `decoder_*` keyword arguments go to the decoder, other extras to the encoder.

        Our extension `decoder_position_index` [batch, new_tokens] gives each new decoder token its 0-based
        position in its row (translated to the decoder's own position ids), for left-padded caches.
        """
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        kwargs_encoder = {k: v for k, v in kwargs.items() if not k.startswith("decoder_")}
        kwargs_decoder = {k[len("decoder_"):]: v for k, v in kwargs.items() if k.startswith("decoder_")}
        kwargs_encoder.pop("num_items_in_batch", None)
        position_index = kwargs_decoder.pop("position_index", None)
        if position_index is not None:
            kwargs_decoder["position_ids"] = self._decoder_position_ids(position_index)

        if encoder_outputs is None:
            if input_ids is not None:
                check_input_ids(input_ids, self.config.encoder.vocab_size, "input_ids")
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=return_dict,
                **kwargs_encoder,
            )
        elif isinstance(encoder_outputs, torch.Tensor):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs)
        elif isinstance(encoder_outputs, tuple):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        encoder_hidden_states = encoder_outputs[0]
        if self._needs_projection():
            encoder_hidden_states = self.enc_to_dec_proj(encoder_hidden_states)

        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
            if decoder_attention_mask is None:
                decoder_attention_mask = (decoder_input_ids != self.config.pad_token_id).to(decoder_input_ids.dtype)
        if decoder_input_ids is not None and (decoder_input_ids.dim() != 2 or decoder_input_ids.shape[1] != 1):
            check_input_ids(decoder_input_ids, self.config.decoder.vocab_size, "decoder_input_ids")

        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=attention_mask,
            inputs_embeds=decoder_inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            use_cache=use_cache,
            past_key_values=past_key_values,
            return_dict=return_dict,
            **kwargs_decoder,
        )

        loss = None
        if labels is not None:
            logits = decoder_outputs.logits if return_dict else decoder_outputs[0]
            if labels.shape[:2] != logits.shape[:2]:
                raise ValueError(
                    f"labels have shape {tuple(labels.shape)} but the decoder produced logits for "
                    f"{tuple(logits.shape[:2])} positions; pass labels without decoder_input_ids, or both of the "
                    "same length."
                )
            loss = token_cross_entropy(logits.reshape(-1, self.decoder.config.vocab_size), labels.reshape(-1))

        if not return_dict:
            return with_loss(loss, as_tuple(decoder_outputs) + as_tuple(encoder_outputs))
        return seq2seq_output(Seq2SeqLMOutput, decoder_outputs, encoder_outputs, loss=loss,
                              logits=decoder_outputs.logits)


__all__ = ["EncoderDecoderConfig", "EncoderDecoderModel"]
