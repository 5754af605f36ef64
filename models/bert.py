"""BERT, RoBERTa, CamemBERT and XLM-RoBERTa: one implementation, checkpoint-compatible with transformers.

The four families are the same encoder; they differ only in
- where positions come from: BERT counts 0..n-1; the RoBERTa family counts from `pad_token_id + 1`
  and gives padding tokens the padding position (fairseq's `make_positions`),
- the names and shape of the heads: BERT's `cls.predictions.*` LM head and pooled `classifier` vs
  RoBERTa's `lm_head.*` and `classifier.dense/out_proj` head over the first token,
- the config class and `base_model_prefix` ("bert" vs "roberta").
Those switches are class attributes of `BertPreTrainedModel` / `RobertaPreTrainedModel`; every
RoBERTa/CamemBERT/XLM-R class is a thin subclass of the BERT class with the same role.

Every model can also run as a decoder (`config.is_decoder`): causal self-attention, cross-attention
over `encoder_hidden_states` when `config.add_cross_attention`, and a key/value cache in the
project's format (a tuple over layers of `(self_k, self_v)` or `(self_k, self_v, cross_k, cross_v)`,
each `[batch, heads, seq, head_dim]`), which the encoder-decoder models build on.

Attention runs through PyTorch's fused SDPA kernel; the explicit computation is used only when
attention probabilities (`output_attentions`) or a `head_mask` are requested.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_bert import BertConfig, CamembertConfig, RobertaConfig, XLMRobertaConfig
from .generation import GenerationConfig, GenerationMixin
from .layers import (
    FirstTokenClassificationHead,
    FirstTokenPooler,
    attend,
    causal_additive_mask,
    causal_lm_loss,
    classifier_dropout,
    combine_additive_masks,
    expand_head_mask,
    expand_padding_mask,
    flatten_choice_embeds,
    flatten_choices,
    get_activation,
    init_linear_embedding_norm,
    invert_mask,
    merge_heads,
    sequence_classification_loss,
    span_logits_and_loss,
    split_heads,
    to_legacy_cache,
    token_cross_entropy,
)
from .modeling_utils import PreTrainedModel
from .outputs import (
    BaseModelOutputWithPastAndCrossAttentions,
    BaseModelOutputWithPoolingAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
    head_output,
)

# ============================================================================== shared helpers


def create_position_ids_from_input_ids(input_ids: torch.Tensor, padding_idx: int, past_key_values_length: int = 0):
    """RoBERTa positions: non-padding tokens count from `padding_idx + 1`; padding keeps `padding_idx`."""
    mask = input_ids.ne(padding_idx).int()
    incremental_indices = (torch.cumsum(mask, dim=1).type_as(mask) + past_key_values_length) * mask
    return incremental_indices.long() + padding_idx


# ============================================================================== building blocks


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout.

    `position_ids` and `token_type_ids` are non-persistent buffers as in transformers: they are not in
    checkpoints, and the all-zero `token_type_ids` stands in when the caller passes none.
    """

    def __init__(self, config, positions_from_padding: bool = False):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        # RoBERTa's position table has a padding row (position `pad_token_id` is what padding tokens get).
        self.padding_idx = config.pad_token_id if positions_from_padding else None
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                padding_idx=self.padding_idx)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.position_embedding_type = getattr(config, "position_embedding_type", "absolute")
        self.positions_from_padding = positions_from_padding
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)),
                             persistent=False)
        self.register_buffer("token_type_ids", torch.zeros(self.position_ids.size(), dtype=torch.long),
                             persistent=False)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                past_key_values_length: int = 0) -> torch.Tensor:
        input_shape = input_ids.size() if input_ids is not None else inputs_embeds.size()[:-1]
        batch_size, seq_length = input_shape
        if position_ids is None:
            position_ids = self._default_position_ids(input_ids, inputs_embeds, seq_length, past_key_values_length)
        if token_type_ids is None:
            token_type_ids = self.token_type_ids[:, :seq_length].expand(batch_size, seq_length)
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        if self.position_embedding_type == "absolute":
            embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))

    def _default_position_ids(self, input_ids, inputs_embeds, seq_length: int, past_length: int) -> torch.Tensor:
        if not self.positions_from_padding:
            return self.position_ids[:, past_length: past_length + seq_length]
        if input_ids is not None:
            return create_position_ids_from_input_ids(input_ids, self.padding_idx, past_length)
        # From embeddings alone padding cannot be seen: sequential positions after the padding index.
        # (transformers ignores the cache length here; we continue after it so cached decoding matches.)
        start = self.padding_idx + 1 + past_length
        positions = torch.arange(start, start + seq_length, dtype=torch.long, device=inputs_embeds.device)
        return positions.unsqueeze(0).expand(inputs_embeds.shape[:-1])


class BertSelfAttention(nn.Module):
    """Multi-head attention projections; self-attention (with cache) or cross-attention to encoder states.

    Relative position embeddings (`relative_key`, `relative_key_query`) enter as an additive bias
    before the softmax, which keeps the fused kernel usable for them too.
    """

    def __init__(self, config, position_embedding_type: str | None = None):
        super().__init__()
        if config.hidden_size % config.num_attention_heads != 0 and not hasattr(config, "embedding_size"):
            raise ValueError(
                f"The hidden size ({config.hidden_size}) is not a multiple of the number of attention heads "
                f"({config.num_attention_heads})"
            )
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = int(config.hidden_size / config.num_attention_heads)
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.position_embedding_type = position_embedding_type or getattr(config, "position_embedding_type", "absolute")
        if self.position_embedding_type in ("relative_key", "relative_key_query"):
            self.max_position_embeddings = config.max_position_embeddings
            self.distance_embedding = nn.Embedding(2 * config.max_position_embeddings - 1, self.attention_head_size)
        elif self.position_embedding_type != "absolute":
            raise ValueError(
                f"position_embedding_type {self.position_embedding_type!r} is not supported; use 'absolute', "
                "'relative_key' or 'relative_key_query'."
            )

    def forward(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
                past_key_value=None, output_attentions=False):
        """Returns (context [batch, len, hidden], probabilities or None, (key, value) to cache)."""
        query = split_heads(self.query(hidden_states), self.num_attention_heads)
        is_cross_attention = encoder_hidden_states is not None
        if is_cross_attention and past_key_value is not None:
            key, value = past_key_value  # the encoder's keys/values never change between decoding steps
        else:
            source = encoder_hidden_states if is_cross_attention else hidden_states
            key = split_heads(self.key(source), self.num_attention_heads)
            value = split_heads(self.value(source), self.num_attention_heads)
            if past_key_value is not None:
                key = torch.cat([past_key_value[0], key], dim=2)
                value = torch.cat([past_key_value[1], value], dim=2)
        bias = attention_mask
        if self.position_embedding_type != "absolute":
            bias = combine_additive_masks(bias, self._relative_position_bias(query, key))
        context, probs = attend(query, key, value, bias, dropout_p=self.dropout_prob if self.training else 0.0,
                                head_mask=head_mask, need_weights=output_attentions, head_mask_after_dropout=True)
        return merge_heads(context), probs, (key, value)

    def _relative_position_bias(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Shaw et al. / Huang et al. relative scores, pre-scaled so SDPA's own scaling stays correct."""
        query_length, key_length = query.shape[2], key.shape[2]
        past_length = key_length - query_length
        device = query.device
        positions_l = torch.arange(past_length, key_length, dtype=torch.long, device=device).view(-1, 1)
        positions_r = torch.arange(key_length, dtype=torch.long, device=device).view(1, -1)
        distance = positions_l - positions_r
        positional = self.distance_embedding(distance + self.max_position_embeddings - 1).to(query.dtype)
        scores = torch.einsum("bhld,lrd->bhlr", query, positional)
        if self.position_embedding_type == "relative_key_query":
            scores = scores + torch.einsum("bhrd,lrd->bhlr", key, positional)
        return scores / (self.attention_head_size ** 0.5)


class BertSelfOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class BertAttention(nn.Module):
    def __init__(self, config, position_embedding_type: str | None = None):
        super().__init__()
        self.self = BertSelfAttention(config, position_embedding_type=position_embedding_type)
        self.output = BertSelfOutput(config)

    def forward(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
                past_key_value=None, output_attentions=False):
        context, probs, present = self.self(hidden_states, attention_mask, head_mask, encoder_hidden_states,
                                            past_key_value, output_attentions)
        return self.output(context, hidden_states), probs, present


class BertIntermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = get_activation(config.hidden_act)

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class BertOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class FeedForwardAfterAttention(nn.Module):
    """An encoder layer around any self-attention block: `attention(hidden_states, *args,
    output_attentions)` returning (attention output with its residual LayerNorm, probabilities),
    then BERT's post-LayerNorm feed-forward (`intermediate`, `output`). DeBERTa-v2 and MPNet
    layers are this with their own attention."""

    def __init__(self, config, attention: nn.Module):
        super().__init__()
        self.attention = attention
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden_states, *attention_args, output_attentions=False):
        attention_output, probs = self.attention(hidden_states, *attention_args, output_attentions=output_attentions)
        return self.output(self.intermediate(attention_output), attention_output), probs


class BertLayer(nn.Module):
    """Self-attention, optional cross-attention (decoders), feed-forward; post-LayerNorm residuals."""

    def __init__(self, config):
        super().__init__()
        self.attention = BertAttention(config)
        self.is_decoder = config.is_decoder
        self.add_cross_attention = config.add_cross_attention
        if self.add_cross_attention:
            if not self.is_decoder:
                raise ValueError(f"{self} should be used as a decoder model if cross attention is added "
                                 "(set config.is_decoder=True)")
            self.crossattention = BertAttention(config, position_embedding_type="absolute")
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, past_key_value=None, output_attentions=False):
        """Returns (hidden states, self-attention probs, cross-attention probs, cache entry of this layer)."""
        self_past = past_key_value[:2] if past_key_value is not None else None
        attention_output, self_probs, present = self.attention(
            hidden_states, attention_mask, head_mask, past_key_value=self_past, output_attentions=output_attentions)
        cross_probs = None
        if self.is_decoder and encoder_hidden_states is not None:
            if not hasattr(self, "crossattention"):
                raise ValueError(
                    f"If `encoder_hidden_states` are passed, {self} has to be instantiated with cross-attention "
                    "layers by setting `config.add_cross_attention=True`"
                )
            cross_past = past_key_value[2:] if past_key_value is not None and len(past_key_value) == 4 else None
            attention_output, cross_probs, cross_present = self.crossattention(
                attention_output, encoder_attention_mask, head_mask, encoder_hidden_states, cross_past,
                output_attentions)
            present = present + cross_present
        layer_output = self.output(self.intermediate(attention_output), attention_output)
        return layer_output, self_probs, cross_probs, present


class BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, past_key_values=None, use_cache=False, output_attentions=False,
                output_hidden_states=False, return_dict=True):
        all_hidden_states = () if output_hidden_states else None
        all_self_attentions = () if output_attentions else None
        all_cross_attentions = () if output_attentions and self.config.add_cross_attention else None
        next_cache = () if use_cache else None
        head_mask = head_mask if head_mask is not None else [None] * len(self.layer)
        for i, layer_module in enumerate(self.layer):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, self_probs, cross_probs, present = layer_module(
                hidden_states, attention_mask, head_mask[i], encoder_hidden_states, encoder_attention_mask,
                past_key_values[i] if past_key_values is not None else None, output_attentions)
            if use_cache:
                next_cache += (present,)
            if output_attentions:
                all_self_attentions += (self_probs,)
                if all_cross_attentions is not None and cross_probs is not None:
                    all_cross_attentions += (cross_probs,)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        if not return_dict:
            return tuple(v for v in (hidden_states, next_cache, all_hidden_states, all_self_attentions,
                                     all_cross_attentions) if v is not None)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states, past_key_values=next_cache, hidden_states=all_hidden_states,
            attentions=all_self_attentions, cross_attentions=all_cross_attentions or None)


class BertPooler(FirstTokenPooler):
    """dense + tanh over the first token ([CLS] / <s>)."""


# ------------------------------------------------------------------------------ heads


class BertPredictionHeadTransform(nn.Module):
    """dense, activation, LayerNorm; `output_size` (default hidden_size) is the width of the word
    embeddings the decoder projects back to (DeBERTa-v2's `embedding_size`)."""

    def __init__(self, config, output_size: int | None = None):
        super().__init__()
        output_size = output_size or config.hidden_size
        self.dense = nn.Linear(config.hidden_size, output_size)
        self.transform_act_fn = get_activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(output_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states):
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


def _tie_decoder_bias(head: nn.Module) -> None:
    """The vocabulary bias is one Parameter reachable as `head.bias` and `head.decoder.bias`.

    Loading assigns fresh tensors, which separates them; re-link them keeping whichever was loaded.
    """
    decoder_bias = head.decoder.bias
    if decoder_bias is not None and not decoder_bias.is_meta and head.bias.is_meta:
        head.bias = decoder_bias
    else:
        head.decoder.bias = head.bias


class BertLMPredictionHead(nn.Module):
    def __init__(self, config, output_size: int | None = None):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config, output_size)
        self.decoder = nn.Linear(output_size or config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def _tie_weights(self):
        _tie_decoder_bias(self)

    def forward(self, hidden_states):
        return self.decoder(self.transform(hidden_states))


class BertOnlyMLMHead(nn.Module):
    """BERT's LM head, stored as `cls.predictions.*` (also DeBERTa-v2's legacy head)."""

    def __init__(self, config, output_size: int | None = None):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, output_size)

    @property
    def decoder(self) -> nn.Linear:
        return self.predictions.decoder

    def set_decoder(self, new_embeddings: nn.Linear) -> None:
        self.predictions.decoder = new_embeddings
        self.predictions.bias = new_embeddings.bias

    def forward(self, sequence_output):
        return self.predictions(sequence_output)


class RobertaLMHead(nn.Module):
    """RoBERTa's LM head, stored as `lm_head.*`: dense, exact GELU, layer_norm, decoder."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def set_decoder(self, new_embeddings: nn.Linear) -> None:
        self.decoder = new_embeddings

    def _tie_weights(self):
        _tie_decoder_bias(self)

    def forward(self, features, **kwargs):
        return self.decoder(self.layer_norm(F.gelu(self.dense(features))))


class RobertaClassificationHead(FirstTokenClassificationHead):
    """RoBERTa's sentence classifier over the first token: dropout, dense, tanh, dropout, out_proj."""


# ============================================================================== pretrained bases


class BertPreTrainedModel(PreTrainedModel):
    """BERT variant switches; the RoBERTa family overrides them in `RobertaPreTrainedModel`."""

    config_class = BertConfig
    base_model_prefix = "bert"
    # Positions count from pad_token_id + 1 and padding keeps the padding position (RoBERTa family).
    _positions_from_padding = False
    # Attribute holding the LM head and its class.
    _lm_head_name = "cls"
    _lm_head_class = BertOnlyMLMHead
    # Sequence classification on the pooler output (BERT) or with RobertaClassificationHead (RoBERTa).
    _classify_from_pooler = True

    @classmethod
    def _base_model_class(cls):
        return BertModel

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' BERT init: N(0, initializer_range) weights, zero biases, unit LayerNorms."""
        init_linear_embedding_norm(module, self.config.initializer_range)
        if isinstance(module, (BertLMPredictionHead, RobertaLMHead)):
            module.bias.data.zero_()

    def _attach_base_model(self, config, add_pooling_layer: bool) -> None:
        """Heads hold the encoder under `base_model_prefix` ("bert" / "roberta"), as in checkpoints."""
        setattr(self, self.base_model_prefix, self._base_model_class()(config, add_pooling_layer=add_pooling_layer))

    def _multiple_choice_dropout(self, config) -> float:
        return classifier_dropout(config)

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                output_attentions, output_hidden_states, **decoder_inputs):
        """The base model's forward as the heads call it (always a ModelOutput; the head picks its form)."""
        return self.base_model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                               position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                               output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                               return_dict=True, **decoder_inputs)


class RobertaPreTrainedModel(BertPreTrainedModel):
    config_class = RobertaConfig
    base_model_prefix = "roberta"
    _positions_from_padding = True
    _lm_head_name = "lm_head"
    _lm_head_class = RobertaLMHead
    _classify_from_pooler = False

    @classmethod
    def _base_model_class(cls):
        return RobertaModel

    def _multiple_choice_dropout(self, config) -> float:
        return config.hidden_dropout_prob


class CamembertPreTrainedModel(RobertaPreTrainedModel):
    config_class = CamembertConfig

    @classmethod
    def _base_model_class(cls):
        return CamembertModel


class XLMRobertaPreTrainedModel(RobertaPreTrainedModel):
    config_class = XLMRobertaConfig

    @classmethod
    def _base_model_class(cls):
        return XLMRobertaModel


# ============================================================================== base model


class BertModel(BertPreTrainedModel):
    """The encoder; with `config.is_decoder` a causal decoder, with `add_cross_attention` a seq2seq decoder."""

    def __init__(self, config, add_pooling_layer: bool = True):
        super().__init__(config)
        if config.pruned_heads:
            raise NotImplementedError(
                f"config.pruned_heads={config.pruned_heads}: checkpoints with pruned attention heads are not "
                "supported; use a checkpoint without pruning."
            )
        self.embeddings = BertEmbeddings(config, positions_from_padding=self._positions_from_padding)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        past_key_values=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache_position=None,
    ):
        config = self.config
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        return_dict = return_dict if return_dict is not None else config.use_return_dict
        use_cache = (use_cache if use_cache is not None else config.use_cache) if config.is_decoder else False

        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        if input_ids is not None:
            batch_size, seq_length = input_ids.shape
        elif inputs_embeds is not None:
            batch_size, seq_length = inputs_embeds.shape[:-1]
        else:
            raise ValueError("You have to specify either input_ids or inputs_embeds")

        past_key_values = to_legacy_cache(past_key_values)
        past_length = past_key_values[0][0].shape[-2] if past_key_values is not None else 0
        embedding_output = self.embeddings(input_ids=input_ids, position_ids=position_ids,
                                           token_type_ids=token_type_ids, inputs_embeds=inputs_embeds,
                                           past_key_values_length=past_length)
        dtype = embedding_output.dtype
        self_mask = self._self_attention_mask(attention_mask, seq_length, past_length, dtype, embedding_output.device)
        cross_mask = None
        if config.is_decoder and encoder_hidden_states is not None:
            cross_mask = expand_padding_mask(encoder_attention_mask, dtype, "encoder_attention_mask")

        encoder_outputs = self.encoder(
            embedding_output,
            attention_mask=self_mask,
            head_mask=expand_head_mask(head_mask, config.num_hidden_layers, dtype),
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=cross_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        sequence_output = encoder_outputs.last_hidden_state
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        if not return_dict:
            # transformers' tuple layout: the pooled slot is kept even when None.
            rest = (encoder_outputs.past_key_values, encoder_outputs.hidden_states, encoder_outputs.attentions,
                    encoder_outputs.cross_attentions)
            return (sequence_output, pooled_output) + tuple(v for v in rest if v is not None)
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            past_key_values=encoder_outputs.past_key_values,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
            cross_attentions=encoder_outputs.cross_attentions,
        )

    def _self_attention_mask(self, attention_mask, seq_length, past_length, dtype, device):
        """Additive [batch|1, 1, query, key] mask: padding, plus causality for decoders (None = attend all)."""
        key_length = past_length + seq_length
        if attention_mask is not None and attention_mask.dim() == 3:
            # A caller-built [batch, query, key] mask is used as given (transformers adds no causality to it).
            return invert_mask(attention_mask[:, None], dtype)
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[1] != key_length:
            raise ValueError(
                f"attention_mask has {attention_mask.shape[1]} positions but the keys are {key_length} long "
                f"({past_length} cached + {seq_length} new); pass the mask of the whole sequence so far."
            )
        padding = expand_padding_mask(attention_mask, dtype, "attention_mask")
        causal = None
        if self.config.is_decoder and seq_length > 1:
            causal = causal_additive_mask(seq_length, key_length, dtype, device, past_len=past_length)
        return combine_additive_masks(padding, causal)


# ============================================================================== heads


class _BertClassifier(BertPreTrainedModel):
    """The forward shared by sequence and token classification: base model, `_logits`, `_loss`."""

    _output_class = SequenceClassifierOutput

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                               output_attentions, output_hidden_states)
        logits = self._logits(outputs)
        loss = self._loss(logits, labels) if labels is not None else None
        return head_output(self._output_class, outputs, return_dict, loss=loss, logits=logits)


class BertForSequenceClassification(_BertClassifier):
    """Sentence classification / regression; the loss follows `config.problem_type`."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self._attach_base_model(config, add_pooling_layer=self._classify_from_pooler)
        if self._classify_from_pooler:
            self.dropout = nn.Dropout(classifier_dropout(config))
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        else:
            self.classifier = RobertaClassificationHead(config)
        self.post_init()

    def _logits(self, outputs):
        if self._classify_from_pooler:
            return self.classifier(self.dropout(outputs.pooler_output))
        return self.classifier(outputs.last_hidden_state)

    def _loss(self, logits, labels):
        return sequence_classification_loss(logits, labels, self.config)


class BertForTokenClassification(_BertClassifier):
    """Per-token classification (NER); labels of -100 are ignored."""

    _output_class = TokenClassifierOutput

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self._attach_base_model(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _logits(self, outputs):
        return self.classifier(self.dropout(outputs.last_hidden_state))

    def _loss(self, logits, labels):
        return token_cross_entropy(logits, labels)


class BertForQuestionAnswering(BertPreTrainedModel):
    """Extractive QA: start/end logits per token; positions outside the input are ignored in the loss."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self._attach_base_model(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, start_positions=None, end_positions=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                               output_attentions, output_hidden_states)
        start_logits, end_logits, loss = span_logits_and_loss(
            self.qa_outputs(outputs.last_hidden_state), start_positions, end_positions)
        return head_output(QuestionAnsweringModelOutput, outputs, return_dict, loss=loss, start_logits=start_logits,
                           end_logits=end_logits)


class BertForMultipleChoice(BertPreTrainedModel):
    """Scores each of `num_choices` candidate sequences ([batch, choices, seq] inputs) with the pooled output."""

    def __init__(self, config):
        super().__init__(config)
        self._attach_base_model(config, add_pooling_layer=True)
        self.dropout = nn.Dropout(self._multiple_choice_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        num_choices = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]
        outputs = self._encode(flatten_choices(input_ids), flatten_choices(attention_mask),
                               flatten_choices(token_type_ids), flatten_choices(position_ids), head_mask,
                               flatten_choice_embeds(inputs_embeds), output_attentions, output_hidden_states)
        logits = self.classifier(self.dropout(outputs.pooler_output)).view(-1, num_choices)
        loss = F.cross_entropy(logits, labels.to(logits.device)) if labels is not None else None
        return head_output(MultipleChoiceModelOutput, outputs, return_dict, loss=loss, logits=logits)


class _BertWithLMHead(BertPreTrainedModel):
    """Shared plumbing of the masked-LM and causal-LM models: the LM head tied to the word embeddings."""

    def _attach_lm_head(self, config) -> None:
        setattr(self, self._lm_head_name, self._lm_head_class(config))

    @property
    def lm_head_module(self) -> nn.Module:
        return getattr(self, self._lm_head_name)

    def get_output_embeddings(self):
        return self.lm_head_module.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head_module.set_decoder(new_embeddings)


class BertForMaskedLM(_BertWithLMHead):
    """Masked language modelling (bidirectional); labels of -100 are ignored."""

    _tied_weights_keys = ["cls.predictions.decoder.bias", "cls.predictions.decoder.weight"]

    def __init__(self, config):
        super().__init__(config)
        self._attach_base_model(config, add_pooling_layer=False)
        self._attach_lm_head(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                               output_attentions, output_hidden_states, encoder_hidden_states=encoder_hidden_states,
                               encoder_attention_mask=encoder_attention_mask)
        logits = self.lm_head_module(outputs.last_hidden_state)
        loss = token_cross_entropy(logits, labels) if labels is not None else None
        return head_output(MaskedLMOutput, outputs, return_dict, loss=loss, logits=logits)


class BertLMHeadModel(_BertWithLMHead, GenerationMixin):
    """Left-to-right LM (`config.is_decoder=True`); the decoder half of BERT2BERT encoder-decoders.

    With `use_cache=True` it returns `past_key_values`; feed them back with only the new tokens (and
    the attention mask of the whole sequence so far) to decode incrementally. `generate()` continues
    left-padded prompts (see rayformers.models.generation), token-identical to transformers.
    """

    _tied_weights_keys = ["cls.predictions.decoder.bias", "cls.predictions.decoder.weight"]
    # Decoder-only generation contract (generation/causal_session.py): positions from the attention
    # mask as transformers' generate passes them, cache tensors [rows, heads, seq, head_dim].
    _generation_position_ids = True
    _cache_sequence_dims = (2, 2)

    def __init__(self, config):
        super().__init__(config)
        self._attach_base_model(config, add_pooling_layer=False)
        self._attach_lm_head(config)
        self.generation_config = GenerationConfig.from_model_config(config) if self.can_generate() else None
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, labels=None,
                past_key_values=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache_position=None, **loss_kwargs):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if labels is not None:
            use_cache = False
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                               output_attentions, output_hidden_states, encoder_hidden_states=encoder_hidden_states,
                               encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values,
                               use_cache=use_cache)
        logits = self.lm_head_module(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, self.config.vocab_size, **loss_kwargs)
        out = CausalLMOutputWithCrossAttentions(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions, cross_attentions=outputs.cross_attentions)
        return out if return_dict else out.to_tuple()


# ============================================================================== RoBERTa family
# Thin subclasses: the variant comes from RobertaPreTrainedModel's switches, the behaviour from BERT's class.

_ROBERTA_TIED_KEYS = ["lm_head.decoder.weight", "lm_head.decoder.bias"]


class RobertaModel(RobertaPreTrainedModel, BertModel):
    """BERT encoder with RoBERTa positions."""


class RobertaForSequenceClassification(RobertaPreTrainedModel, BertForSequenceClassification):
    """Classification with `classifier.dense/out_proj` over the first token (no pooler)."""


class RobertaForTokenClassification(RobertaPreTrainedModel, BertForTokenClassification):
    pass


class RobertaForQuestionAnswering(RobertaPreTrainedModel, BertForQuestionAnswering):
    pass


class RobertaForMultipleChoice(RobertaPreTrainedModel, BertForMultipleChoice):
    def forward(self, input_ids=None, token_type_ids=None, attention_mask=None, labels=None, position_ids=None,
                head_mask=None, inputs_embeds=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        """Same as BERT's; only transformers' positional argument order differs for RoBERTa."""
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                               position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                               labels=labels, output_attentions=output_attentions,
                               output_hidden_states=output_hidden_states, return_dict=return_dict)


class RobertaForMaskedLM(RobertaPreTrainedModel, BertForMaskedLM):
    _tied_weights_keys = _ROBERTA_TIED_KEYS


class RobertaForCausalLM(RobertaPreTrainedModel, BertLMHeadModel):
    _tied_weights_keys = _ROBERTA_TIED_KEYS


class CamembertModel(CamembertPreTrainedModel, RobertaModel):
    pass


class CamembertForSequenceClassification(CamembertPreTrainedModel, RobertaForSequenceClassification):
    pass


class CamembertForTokenClassification(CamembertPreTrainedModel, RobertaForTokenClassification):
    pass


class CamembertForQuestionAnswering(CamembertPreTrainedModel, RobertaForQuestionAnswering):
    pass


class CamembertForMultipleChoice(CamembertPreTrainedModel, RobertaForMultipleChoice):
    pass


class CamembertForMaskedLM(CamembertPreTrainedModel, RobertaForMaskedLM):
    pass


class CamembertForCausalLM(CamembertPreTrainedModel, RobertaForCausalLM):
    pass


class XLMRobertaModel(XLMRobertaPreTrainedModel, RobertaModel):
    pass


class XLMRobertaForSequenceClassification(XLMRobertaPreTrainedModel, RobertaForSequenceClassification):
    pass


class XLMRobertaForTokenClassification(XLMRobertaPreTrainedModel, RobertaForTokenClassification):
    pass


class XLMRobertaForQuestionAnswering(XLMRobertaPreTrainedModel, RobertaForQuestionAnswering):
    pass


class XLMRobertaForMultipleChoice(XLMRobertaPreTrainedModel, RobertaForMultipleChoice):
    pass


class XLMRobertaForMaskedLM(XLMRobertaPreTrainedModel, RobertaForMaskedLM):
    pass


class XLMRobertaForCausalLM(XLMRobertaPreTrainedModel, RobertaForCausalLM):
    pass


__all__ = [
    "BertConfig", "BertModel", "BertForSequenceClassification", "BertForTokenClassification",
    "BertForQuestionAnswering", "BertForMultipleChoice", "BertForMaskedLM", "BertLMHeadModel",
    "BertPreTrainedModel",
    "RobertaConfig", "RobertaModel", "RobertaForSequenceClassification", "RobertaForTokenClassification",
    "RobertaForQuestionAnswering", "RobertaForMultipleChoice", "RobertaForMaskedLM", "RobertaForCausalLM",
    "RobertaPreTrainedModel",
    "CamembertConfig", "CamembertModel", "CamembertForSequenceClassification", "CamembertForTokenClassification",
    "CamembertForQuestionAnswering", "CamembertForMultipleChoice", "CamembertForMaskedLM", "CamembertForCausalLM",
    "XLMRobertaConfig", "XLMRobertaModel", "XLMRobertaForSequenceClassification",
    "XLMRobertaForTokenClassification", "XLMRobertaForQuestionAnswering", "XLMRobertaForMultipleChoice",
    "XLMRobertaForMaskedLM", "XLMRobertaForCausalLM",
    "create_position_ids_from_input_ids", "causal_lm_loss", "expand_head_mask", "attend",
]
