"""MPNet, checkpoint-compatible with transformers (`all-mpnet-base-v2` and its fine-tunes).

A BERT-shaped post-LayerNorm encoder with two differences:
- positions as RoBERTa's (count from `padding_idx + 1`, padding keeps the padding position), with
  the padding index fixed at 1 whatever `pad_token_id` says (as transformers hard-codes it),
- a T5-style relative position bias (bidirectional log buckets, one learned scalar per head and
  bucket, `encoder.relative_attention_bias`) added to every layer's scores. transformers always
  buckets with 32 buckets and max distance 128, whatever `relative_attention_num_buckets` is (that
  only sizes the table); so does this implementation.
No token types. The bias joins the padding mask as one additive SDPA mask; the feed-forward block
and the heads are BERT's / RoBERTa's (same parameter names).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .bert import FeedForwardAfterAttention, RobertaLMHead, create_position_ids_from_input_ids
from .configuration_mpnet import MPNetConfig
from .layers import (
    FirstTokenClassificationHead,
    FirstTokenPooler,
    attend,
    combine_additive_masks,
    expand_head_mask,
    expand_padding_mask,
    flatten_choice_embeds,
    flatten_choices,
    init_linear_embedding_norm,
    merge_heads,
    sequence_classification_loss,
    span_logits_and_loss,
    split_heads,
    token_cross_entropy,
    uses_eager_attention,
)
from .modeling_utils import PreTrainedModel
from .outputs import (
    BaseModelOutput,
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
    head_output,
)

MPNET_PADDING_IDX = 1
"""transformers' MPNetEmbeddings uses 1 as padding index for words and positions, not pad_token_id."""


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
    """Bidirectional T5 buckets of `key - query`: half the buckets per direction, exact below a
    quarter of them, logarithmic up to `max_distance` (MPNet's arithmetic, bit for bit)."""
    ret = 0
    n = -relative_position
    num_buckets //= 2
    ret += (n < 0).to(torch.long) * num_buckets
    n = torch.abs(n)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    val_if_large = max_exact + (
        torch.log(n.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).to(torch.long)
    val_if_large = torch.min(val_if_large, torch.full_like(val_if_large, num_buckets - 1))
    return ret + torch.where(is_small, n, val_if_large)


class MPNetEmbeddings(nn.Module):
    """Word + RoBERTa-style position embeddings, LayerNorm, dropout."""

    def __init__(self, config):
        super().__init__()
        self.padding_idx = MPNET_PADDING_IDX
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=self.padding_idx)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                padding_idx=self.padding_idx)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)),
                             persistent=False)

    def forward(self, input_ids=None, position_ids=None, inputs_embeds=None):
        if position_ids is None:
            if input_ids is not None:
                position_ids = create_position_ids_from_input_ids(input_ids, self.padding_idx)
            else:  # padding cannot be seen in embeddings: sequential positions after the padding index
                seq_length = inputs_embeds.shape[1]
                start = self.padding_idx + 1
                position_ids = torch.arange(start, start + seq_length, dtype=torch.long, device=inputs_embeds.device)
                position_ids = position_ids.unsqueeze(0).expand(inputs_embeds.shape[:-1])
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        return self.dropout(self.LayerNorm(inputs_embeds + self.position_embeddings(position_ids)))


class MPNetSelfAttention(nn.Module):
    """q / k / v / o projections (MPNet's names) around the shared attention kernel."""

    def __init__(self, config):
        super().__init__()
        if config.hidden_size % config.num_attention_heads != 0:
            raise ValueError(
                f"The hidden size ({config.hidden_size}) is not a multiple of the number of attention "
                f"heads ({config.num_attention_heads})"
            )
        self.num_attention_heads = config.num_attention_heads
        all_head_size = config.hidden_size
        self.q = nn.Linear(config.hidden_size, all_head_size)
        self.k = nn.Linear(config.hidden_size, all_head_size)
        self.v = nn.Linear(config.hidden_size, all_head_size)
        self.o = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.eager = uses_eager_attention(config)

    def forward(self, hidden_states, bias=None, head_mask=None, output_attentions=False):
        """`bias`: position bias plus padding mask, additive, broadcastable to [batch, heads, q, k]."""
        query, key, value = (split_heads(proj(hidden_states), self.num_attention_heads)
                             for proj in (self.q, self.k, self.v))
        context, probs = attend(query, key, value, bias, dropout_p=self.dropout_prob if self.training else 0.0,
                                head_mask=head_mask, need_weights=output_attentions, eager=self.eager,
                                head_mask_after_dropout=True)
        return self.o(merge_heads(context)), probs


class MPNetAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attn = MPNetSelfAttention(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, bias=None, head_mask=None, output_attentions=False):
        context, probs = self.attn(hidden_states, bias, head_mask, output_attentions)
        return self.LayerNorm(self.dropout(context) + hidden_states), probs


class MPNetLayer(FeedForwardAfterAttention):
    """MPNet's attention then BERT's feed-forward; called as (hidden, bias, head_mask)."""

    def __init__(self, config):
        super().__init__(config, MPNetAttention(config))


class MPNetEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([MPNetLayer(config) for _ in range(config.num_hidden_layers)])
        self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_attention_heads)

    def compute_position_bias(self, seq_length: int, device) -> torch.Tensor:
        """[1, heads, seq, seq]: one learned scalar per head for each bucketed distance (shared by the batch)."""
        positions = torch.arange(seq_length, dtype=torch.long, device=device)
        relative_position = positions[None, :] - positions[:, None]
        values = self.relative_attention_bias(relative_position_bucket(relative_position))
        return values.permute(2, 0, 1).unsqueeze(0)

    def forward(self, hidden_states, attention_mask=None, head_mask=None, output_attentions=False,
                output_hidden_states=False):
        """`attention_mask`: additive [batch, 1, 1|q, k] padding mask or None."""
        position_bias = self.compute_position_bias(hidden_states.shape[1], hidden_states.device)
        bias = combine_additive_masks(position_bias.to(hidden_states.dtype), attention_mask)
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for i, layer_module in enumerate(self.layer):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, probs = layer_module(hidden_states, bias, head_mask[i], output_attentions=output_attentions)
            if output_attentions:
                all_attentions += (probs,)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden_states,
                               attentions=all_attentions)


class MPNetPreTrainedModel(PreTrainedModel):
    config_class = MPNetConfig
    base_model_prefix = "mpnet"

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' init: N(0, initializer_range), zero biases, unit LayerNorms, zero LM bias."""
        init_linear_embedding_norm(module, self.config.initializer_range)
        if isinstance(module, RobertaLMHead):
            module.bias.data.zero_()

    def _encode(self, input_ids, attention_mask, position_ids, head_mask, inputs_embeds, output_attentions,
                output_hidden_states):
        """The base model's forward as the heads call it (always a ModelOutput)."""
        return self.mpnet(input_ids, attention_mask=attention_mask, position_ids=position_ids, head_mask=head_mask,
                          inputs_embeds=inputs_embeds, output_attentions=output_attentions,
                          output_hidden_states=output_hidden_states, return_dict=True)


class MPNetModel(MPNetPreTrainedModel):
    def __init__(self, config, add_pooling_layer: bool = True):
        super().__init__(config)
        if config.pruned_heads:
            raise NotImplementedError(
                f"config.pruned_heads={config.pruned_heads}: checkpoints with pruned attention heads are not "
                "supported; use a checkpoint without pruning."
            )
        self.embeddings = MPNetEmbeddings(config)
        self.encoder = MPNetEncoder(config)
        self.pooler = FirstTokenPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        """`**kwargs` swallows what transformers' MPNetModel swallows (e.g. a tokenizer's token_type_ids)."""
        config = self.config
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        return_dict = return_dict if return_dict is not None else config.use_return_dict
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        if input_ids is None and inputs_embeds is None:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        embedding_output = self.embeddings(input_ids=input_ids, position_ids=position_ids, inputs_embeds=inputs_embeds)
        dtype = embedding_output.dtype
        encoder_outputs = self.encoder(
            embedding_output,
            attention_mask=expand_padding_mask(attention_mask, dtype, "attention_mask"),
            head_mask=expand_head_mask(head_mask, config.num_hidden_layers, dtype),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        sequence_output = encoder_outputs.last_hidden_state
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        if not return_dict:
            # transformers' tuple layout: the pooled slot is kept even when None.
            rest = tuple(v for v in (encoder_outputs.hidden_states, encoder_outputs.attentions) if v is not None)
            return (sequence_output, pooled_output) + rest
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled_output,
                                          hidden_states=encoder_outputs.hidden_states,
                                          attentions=encoder_outputs.attentions)


class _MPNetHead(MPNetPreTrainedModel):
    """The forward shared by the single-sequence heads: base model, `_logits`, `_loss`."""

    _output_class = SequenceClassifierOutput

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self._encode(input_ids, attention_mask, position_ids, head_mask, inputs_embeds, output_attentions,
                               output_hidden_states)
        logits = self._logits(outputs.last_hidden_state)
        loss = self._loss(logits, labels) if labels is not None else None
        return head_output(self._output_class, outputs, return_dict, loss=loss, logits=logits)

    def _loss(self, logits, labels):
        return token_cross_entropy(logits, labels)


class MPNetForMaskedLM(_MPNetHead):
    """RoBERTa's `lm_head` (dense, GELU, layer_norm, decoder tied to the word embeddings)."""

    _tied_weights_keys = ["lm_head.decoder.weight", "lm_head.decoder.bias"]
    _output_class = MaskedLMOutput

    def __init__(self, config):
        super().__init__(config)
        self.mpnet = MPNetModel(config, add_pooling_layer=False)
        self.lm_head = RobertaLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings
        self.lm_head.bias = new_embeddings.bias

    def _logits(self, hidden_states):
        return self.lm_head(hidden_states)


class MPNetForSequenceClassification(_MPNetHead):
    """RoBERTa's first-token classifier (`classifier.dense/out_proj`); loss by `config.problem_type`."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mpnet = MPNetModel(config, add_pooling_layer=False)
        self.classifier = FirstTokenClassificationHead(config, dropout=config.hidden_dropout_prob)
        self.post_init()

    def _logits(self, hidden_states):
        return self.classifier(hidden_states)

    def _loss(self, logits, labels):
        return sequence_classification_loss(logits, labels, self.config)


class MPNetForTokenClassification(_MPNetHead):
    _output_class = TokenClassifierOutput

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mpnet = MPNetModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _logits(self, hidden_states):
        return self.classifier(self.dropout(hidden_states))


class MPNetForQuestionAnswering(MPNetPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mpnet = MPNetModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
                start_positions=None, end_positions=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self._encode(input_ids, attention_mask, position_ids, head_mask, inputs_embeds, output_attentions,
                               output_hidden_states)
        start_logits, end_logits, loss = span_logits_and_loss(
            self.qa_outputs(outputs.last_hidden_state), start_positions, end_positions)
        return head_output(QuestionAnsweringModelOutput, outputs, return_dict, loss=loss, start_logits=start_logits,
                           end_logits=end_logits)


class MPNetForMultipleChoice(MPNetPreTrainedModel):
    """Scores each [batch, choices, seq] candidate with the pooled output."""

    def __init__(self, config):
        super().__init__(config)
        self.mpnet = MPNetModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        num_choices = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]
        outputs = self._encode(flatten_choices(input_ids), flatten_choices(attention_mask),
                               flatten_choices(position_ids), head_mask, flatten_choice_embeds(inputs_embeds),
                               output_attentions, output_hidden_states)
        logits = self.classifier(self.dropout(outputs.pooler_output)).view(-1, num_choices)
        loss = F.cross_entropy(logits, labels.to(logits.device)) if labels is not None else None
        return head_output(MultipleChoiceModelOutput, outputs, return_dict, loss=loss, logits=logits)


__all__ = [
    "MPNetConfig", "MPNetModel", "MPNetPreTrainedModel", "MPNetForMaskedLM", "MPNetForSequenceClassification",
    "MPNetForTokenClassification", "MPNetForQuestionAnswering", "MPNetForMultipleChoice",
    "relative_position_bucket",
]
