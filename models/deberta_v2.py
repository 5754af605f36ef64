"""DeBERTa-v2 and DeBERTa-v3 (one architecture), checkpoint-compatible with transformers.

DeBERTa differs from BERT in where positions enter: instead of (or besides, `position_biased_input`)
adding absolute position embeddings to the input, every layer scores *disentangled* attention,
    q·k  +  q·pos_k[rel(i, j)]  (c2p)  +  k·pos_q[rel(j, i)]  (p2c),
over one table of relative-position embeddings shared by all layers (`rel_embeddings`, optionally
LayerNorm'ed: `norm_rel_ebd`). v3 buckets relative distances logarithmically (`position_buckets`)
and projects positions with the content projections (`share_att_key`). Other switches: a
convolution after the first layer (`conv_kernel_size`), embeddings narrower than the hidden size
(`embedding_size`, projected by `embed_proj`), token types only when `type_vocab_size > 0`.

The relative terms become one additive bias per layer, so attention runs through PyTorch's fused
SDPA kernel with that bias (transformers runs the explicit bmm/softmax path). Padding follows
transformers exactly: a padded *query* row attends uniformly to every key (its scores are all the
dtype minimum), and embeddings / the conv output are zeroed at padded positions, so hidden states
of padding tokens match too.

Not supported: `z_steps` (enhanced mask decoder replays, never set by checkpoints), 3-D attention
masks (transformers' embeddings break on them as well), `head_mask` (transformers has none).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .bert import BertLMPredictionHead, BertOnlyMLMHead, BertSelfOutput, FeedForwardAfterAttention
from .configuration_deberta_v2 import DebertaV2Config
from .layers import (
    attend,
    flatten_choice_embeds,
    flatten_choices,
    get_activation,
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
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
    head_output,
)

# ============================================================================== relative positions


def make_log_bucket_position(relative_pos: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """DeBERTa-v3's buckets: distances below `bucket_size // 2` stay exact, longer ones share
    logarithmically wider buckets up to `max_position` (same arithmetic as transformers, in fp32)."""
    sign = torch.sign(relative_pos)
    mid = bucket_size // 2
    abs_pos = torch.where((relative_pos < mid) & (relative_pos > -mid),
                          torch.tensor(mid - 1).type_as(relative_pos), torch.abs(relative_pos))
    log_pos = torch.ceil(torch.log(abs_pos / mid) / torch.log(torch.tensor((max_position - 1) / mid))
                         * (mid - 1)) + mid
    return torch.where(abs_pos <= mid, relative_pos.type_as(log_pos), log_pos * sign)


def build_relative_position(query_size: int, key_size: int, bucket_size: int, max_position: int,
                            device) -> torch.Tensor:
    """[query, key] relative distances `i - j`, bucketed when `bucket_size > 0`."""
    q_ids = torch.arange(query_size, dtype=torch.long, device=device)
    k_ids = torch.arange(key_size, dtype=torch.long, device=device)
    rel_pos_ids = q_ids[:, None] - k_ids[None, :]
    if bucket_size > 0 and max_position > 0:
        rel_pos_ids = make_log_bucket_position(rel_pos_ids, bucket_size, max_position)
    return rel_pos_ids.to(torch.long)


class RelativePositions(NamedTuple):
    """What every layer needs of the relative positions, built once per forward by the encoder.

    Only the window of the embedding table that this sequence length can reach is kept: a
    128-token batch touches 255 of DeBERTa-v3's 512 rows, a 32-token one 63, and the position
    projections and position scores shrink with it (transformers projects and scores all rows in
    every layer, then gathers). Indices point into that window."""

    embeddings: torch.Tensor  # [window, hidden] rows of rel_embeddings (LayerNorm'ed if configured)
    c2p_index: torch.Tensor  # [query, key] row of query i's score for key j
    p2c_index: torch.Tensor  # [key, query] row of key i's score for query j (transposed after the gather)


def relative_positions(rel_embeddings: torch.Tensor, seq_length: int, position_buckets: int,
                       max_relative_positions: int) -> RelativePositions:
    """The c2p / p2c gather indices of transformers (`clamp(+-rel + span, 0, 2*span - 1)`) and the
    embedding rows between their extremes. Bucketing is odd-symmetric and monotonic, so the
    extremes are the buckets of +-(seq_length - 1), computed on the CPU without a device sync."""
    span = rel_embeddings.shape[0] // 2
    relative_pos = build_relative_position(seq_length, seq_length, position_buckets, max_relative_positions,
                                           rel_embeddings.device)
    reach = seq_length - 1
    if position_buckets > 0 and max_relative_positions > 0:
        reach = int(make_log_bucket_position(torch.tensor([reach]), position_buckets, max_relative_positions))
    low, high = max(span - reach, 0), min(span + reach, 2 * span - 1)
    c2p_index = torch.clamp(relative_pos + span, 0, 2 * span - 1) - low
    p2c_index = torch.clamp(-relative_pos + span, 0, 2 * span - 1) - low
    return RelativePositions(rel_embeddings[low: high + 1], c2p_index, p2c_index)


def _relative_settings(config) -> tuple[int, int]:
    """(position_buckets, max_relative_positions) with transformers' fallbacks."""
    max_relative_positions = getattr(config, "max_relative_positions", -1)
    if max_relative_positions < 1:
        max_relative_positions = config.max_position_embeddings
    return getattr(config, "position_buckets", -1), max_relative_positions


# ============================================================================== building blocks


class DebertaV2Embeddings(nn.Module):
    """Word (+ absolute position when `position_biased_input`) (+ token type when `type_vocab_size`)
    embeddings, `embed_proj` to the hidden size when `embedding_size` differs, LayerNorm, padding
    positions zeroed, dropout."""

    def __init__(self, config):
        super().__init__()
        self.embedding_size = getattr(config, "embedding_size", config.hidden_size)
        self.word_embeddings = nn.Embedding(config.vocab_size, self.embedding_size,
                                            padding_idx=getattr(config, "pad_token_id", 0))
        self.position_biased_input = getattr(config, "position_biased_input", True)
        self.position_embeddings = (nn.Embedding(config.max_position_embeddings, self.embedding_size)
                                    if self.position_biased_input else None)
        self.token_type_embeddings = (nn.Embedding(config.type_vocab_size, self.embedding_size)
                                      if config.type_vocab_size > 0 else None)
        self.embed_proj = (nn.Linear(self.embedding_size, config.hidden_size, bias=False)
                           if self.embedding_size != config.hidden_size else None)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)),
                             persistent=False)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, mask=None, inputs_embeds=None):
        """`mask`: [batch, seq] 1/0, or None when nothing is padded."""
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        embeddings = inputs_embeds
        if self.position_embeddings is not None:
            if position_ids is None:
                position_ids = self.position_ids[:, : inputs_embeds.shape[1]]
            embeddings = embeddings + self.position_embeddings(position_ids.long())
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(inputs_embeds.shape[:-1], dtype=torch.long, device=inputs_embeds.device)
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        if self.embed_proj is not None:
            embeddings = self.embed_proj(embeddings)
        embeddings = self.LayerNorm(embeddings)
        if mask is not None:
            embeddings = embeddings * mask.unsqueeze(2).to(embeddings.dtype)
        return self.dropout(embeddings)


class DisentangledSelfAttention(nn.Module):
    """Content-to-content attention plus the c2p / p2c relative terms as one additive SDPA bias."""

    def __init__(self, config):
        super().__init__()
        if config.hidden_size % config.num_attention_heads != 0:
            raise ValueError(
                f"The hidden size ({config.hidden_size}) is not a multiple of the number of attention "
                f"heads ({config.num_attention_heads})"
            )
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = getattr(config, "attention_head_size",
                                           config.hidden_size // config.num_attention_heads)
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query_proj = nn.Linear(config.hidden_size, self.all_head_size, bias=True)
        self.key_proj = nn.Linear(config.hidden_size, self.all_head_size, bias=True)
        self.value_proj = nn.Linear(config.hidden_size, self.all_head_size, bias=True)
        self.share_att_key = getattr(config, "share_att_key", False)
        self.pos_att_type = config.pos_att_type if config.pos_att_type is not None else []
        unknown = set(self.pos_att_type) - {"c2p", "p2c"}
        if unknown:
            raise ValueError(f"pos_att_type {sorted(unknown)} not understood; use 'c2p', 'p2c' or both.")
        self.relative_attention = getattr(config, "relative_attention", False)
        if self.relative_attention:
            self.pos_dropout = nn.Dropout(config.hidden_dropout_prob)
            if not self.share_att_key:
                if "c2p" in self.pos_att_type:
                    self.pos_key_proj = nn.Linear(config.hidden_size, self.all_head_size, bias=True)
                if "p2c" in self.pos_att_type:
                    self.pos_query_proj = nn.Linear(config.hidden_size, self.all_head_size)
        # Each score term adds variance: transformers divides by sqrt(head_dim * number of terms).
        self.scale_factor = 1 + len(set(self.pos_att_type))
        self.dropout_prob = config.attention_probs_dropout_prob
        self.eager = uses_eager_attention(config)

    def forward(self, hidden_states, keep_mask=None, positions: RelativePositions | None = None,
                output_attentions=False):
        """`keep_mask`: [batch, 1, query, key] bool (True = attend) or None; returns (context, probs)."""
        query = split_heads(self.query_proj(hidden_states), self.num_attention_heads)
        key = split_heads(self.key_proj(hidden_states), self.num_attention_heads)
        value = split_heads(self.value_proj(hidden_states), self.num_attention_heads)
        scale = math.sqrt(query.size(-1) * self.scale_factor)
        bias = None
        if self.relative_attention and self.pos_att_type:
            bias = self._disentangled_bias(query, key, positions, scale)
        if keep_mask is not None:
            # Scores are *replaced* (not shifted) by the minimum, as transformers' masked_fill: a padded
            # query row then attends uniformly to all keys and its output matches.
            minimum = torch.finfo(query.dtype).min
            if bias is None:
                bias = torch.zeros(keep_mask.shape, dtype=query.dtype, device=query.device)
            bias = bias.masked_fill_(~keep_mask, minimum)
        context, probs = attend(query, key, value, bias, scale=1.0 / scale,
                                dropout_p=self.dropout_prob if self.training else 0.0,
                                need_weights=output_attentions, eager=self.eager)
        return merge_heads(context), probs

    def _disentangled_bias(self, query, key, positions: RelativePositions, scale: float) -> torch.Tensor:
        """[batch, heads, query, key] c2p + p2c scores, already divided by `scale`.

        Position projections are [1, heads, window, dim] and broadcast over the batch (transformers
        repeats them per row); each pair's score is gathered from the scores against the window."""
        rel_embeddings = self.pos_dropout(positions.embeddings).unsqueeze(0)
        heads = self.num_attention_heads
        if self.share_att_key:
            pos_query = split_heads(self.query_proj(rel_embeddings), heads) if "p2c" in self.pos_att_type else None
            pos_key = split_heads(self.key_proj(rel_embeddings), heads) if "c2p" in self.pos_att_type else None
        else:
            pos_key = split_heads(self.pos_key_proj(rel_embeddings), heads) if "c2p" in self.pos_att_type else None
            pos_query = (split_heads(self.pos_query_proj(rel_embeddings), heads)
                         if "p2c" in self.pos_att_type else None)
        batch, _, q_len, _ = query.shape
        k_len = key.shape[2]
        score = None
        if pos_key is not None:
            c2p = torch.matmul(query, pos_key.transpose(-1, -2))
            score = torch.gather(c2p, -1, positions.c2p_index.expand(batch, heads, q_len, k_len))
        if pos_query is not None:
            p2c = torch.matmul(key, pos_query.transpose(-1, -2))
            p2c = torch.gather(p2c, -1, positions.p2c_index.expand(batch, heads, k_len, k_len)).transpose(-1, -2)
            score = p2c.contiguous() if score is None else score.add_(p2c)
        return score.div_(scale)  # in place: the gathered scores are fresh tensors owned here


class DebertaV2Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = DisentangledSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden_states, keep_mask=None, positions=None, output_attentions=False):
        context, probs = self.self(hidden_states, keep_mask, positions, output_attentions)
        return self.output(context, hidden_states), probs


class DebertaV2Layer(FeedForwardAfterAttention):
    """Disentangled attention then BERT's feed-forward; called as (hidden, keep_mask, positions)."""

    def __init__(self, config):
        super().__init__(config, DebertaV2Attention(config))


class ConvLayer(nn.Module):
    """The convolution over the embeddings added to the first layer's output (`conv_kernel_size > 0`)."""

    def __init__(self, config):
        super().__init__()
        kernel_size = getattr(config, "conv_kernel_size", 3)
        groups = getattr(config, "conv_groups", 1)
        self.conv_act = get_activation(getattr(config, "conv_act", "tanh"))
        self.conv = nn.Conv1d(config.hidden_size, config.hidden_size, kernel_size, padding=(kernel_size - 1) // 2,
                              groups=groups)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, residual_states, input_mask=None):
        out = self.conv(hidden_states.permute(0, 2, 1)).permute(0, 2, 1)
        if input_mask is not None:
            out = out.masked_fill(~input_mask.bool().unsqueeze(-1), 0)
        out = self.conv_act(self.dropout(out))
        output = self.LayerNorm(residual_states + out)
        if input_mask is not None:
            output = output * input_mask.unsqueeze(2).to(output.dtype)
        return output


class DebertaV2Encoder(nn.Module):
    """The layers plus what they share: relative positions, their embeddings, the optional conv."""

    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([DebertaV2Layer(config) for _ in range(config.num_hidden_layers)])
        self.relative_attention = getattr(config, "relative_attention", False)
        if self.relative_attention:
            self.position_buckets, self.max_relative_positions = _relative_settings(config)
            pos_ebd_size = self.position_buckets if self.position_buckets > 0 else self.max_relative_positions
            self.rel_embeddings = nn.Embedding(pos_ebd_size * 2, config.hidden_size)
        self.norm_rel_ebd = [x.strip() for x in getattr(config, "norm_rel_ebd", "none").lower().split("|")]
        if "layer_norm" in self.norm_rel_ebd:
            self.LayerNorm = nn.LayerNorm(config.hidden_size, config.layer_norm_eps, elementwise_affine=True)
        self.conv = ConvLayer(config) if getattr(config, "conv_kernel_size", 0) > 0 else None

    def get_rel_embedding(self):
        if not self.relative_attention:
            return None
        rel_embeddings = self.rel_embeddings.weight
        if "layer_norm" in self.norm_rel_ebd:
            rel_embeddings = self.LayerNorm(rel_embeddings)
        return rel_embeddings

    def forward(self, hidden_states, input_mask=None, output_hidden_states=False, output_attentions=False):
        """`input_mask`: [batch, seq] 1/0 or None (nothing padded)."""
        keep_mask = None
        if input_mask is not None:
            keep = input_mask.bool()
            keep_mask = keep[:, None, None, :] & keep[:, None, :, None]
        positions = None
        if self.relative_attention:
            positions = relative_positions(self.get_rel_embedding(), hidden_states.shape[1], self.position_buckets,
                                           self.max_relative_positions)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        output_states = hidden_states
        for i, layer_module in enumerate(self.layer):
            output_states, probs = layer_module(output_states, keep_mask, positions,
                                                output_attentions=output_attentions)
            if i == 0 and self.conv is not None:
                output_states = self.conv(hidden_states, output_states, input_mask)
            if output_hidden_states:
                all_hidden_states += (output_states,)
            if output_attentions:
                all_attentions += (probs,)
        return BaseModelOutput(last_hidden_state=output_states, hidden_states=all_hidden_states,
                               attentions=all_attentions)


class ContextPooler(nn.Module):
    """dropout, dense, `pooler_hidden_act` over the first token ([CLS])."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.pooler_hidden_size, config.pooler_hidden_size)
        self.dropout = nn.Dropout(config.pooler_dropout)
        self.activation = get_activation(config.pooler_hidden_act)
        self.output_dim = config.hidden_size

    def forward(self, hidden_states):
        return self.activation(self.dense(self.dropout(hidden_states[:, 0])))


class DebertaV2LMPredictionHead(nn.Module):
    """The non-legacy (`legacy=False`) MLM head: dense, act, LayerNorm, then the word embeddings
    themselves as the decoder (stored as `lm_predictions.lm_head.*`)."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = get_activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states, word_embeddings: nn.Embedding):
        hidden_states = self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))
        return torch.matmul(hidden_states, word_embeddings.weight.t()) + self.bias


class DebertaV2OnlyMLMHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.lm_head = DebertaV2LMPredictionHead(config)

    def forward(self, sequence_output, word_embeddings):
        return self.lm_head(sequence_output, word_embeddings)


# ============================================================================== models


class DebertaV2PreTrainedModel(PreTrainedModel):
    config_class = DebertaV2Config
    base_model_prefix = "deberta"
    # v3 checkpoints without absolute positions may still carry the unused table.
    _keys_to_ignore_on_load_unexpected = ["position_embeddings"]

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' init: N(0, initializer_range), zero biases, unit LayerNorms, zero LM biases."""
        init_linear_embedding_norm(module, self.config.initializer_range)
        if isinstance(module, (DebertaV2LMPredictionHead, BertLMPredictionHead)):
            module.bias.data.zero_()

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
                output_hidden_states):
        """The base model's forward as the heads call it (always a ModelOutput)."""
        return self.deberta(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds,
                            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                            return_dict=True)


class DebertaV2Model(DebertaV2PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embeddings = DebertaV2Embeddings(config)
        self.encoder = DebertaV2Encoder(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, new_embeddings):
        self.embeddings.word_embeddings = new_embeddings

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        config = self.config
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        return_dict = return_dict if return_dict is not None else config.use_return_dict
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        if input_ids is None and inputs_embeds is None:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        input_mask = None
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError(
                    f"attention_mask must have shape [batch, seq] (1 = token, 0 = padding), got "
                    f"{tuple(attention_mask.shape)}; DeBERTa-v2 does not take [batch, query, key] masks.")
            if not bool(attention_mask.all()):
                input_mask = attention_mask
        embedding_output = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids,
                                           position_ids=position_ids, mask=input_mask, inputs_embeds=inputs_embeds)
        outputs = self.encoder(embedding_output, input_mask, output_hidden_states=output_hidden_states,
                               output_attentions=output_attentions)
        return outputs if return_dict else outputs.to_tuple()


def deberta_sequence_classification_loss(logits, labels, config):
    """DeBERTa's loss when `problem_type` is unset (it is *not* inferred and stored, unlike BERT):
    one label -> MSE over flattened logits (cast to the labels' dtype, which is also what the model
    returns as logits); class ids -> cross-entropy over the rows whose label is >= 0; a
    [batch, num_labels] float target -> soft-label cross-entropy. Returns (loss, logits)."""
    if config.problem_type is not None:
        return sequence_classification_loss(logits, labels, config), logits
    labels = labels.to(logits.device)
    if config.num_labels == 1:
        logits = logits.view(-1).to(labels.dtype)
        return F.mse_loss(logits, labels.view(-1)), logits
    if labels.dim() == 1 or labels.size(-1) == 1:
        label_index = (labels >= 0).nonzero()
        labels = labels.long()
        if label_index.size(0) == 0:
            return torch.tensor(0).to(logits), logits
        labeled_logits = torch.gather(logits, 0, label_index.expand(label_index.size(0), logits.size(1)))
        labels = torch.gather(labels, 0, label_index.view(-1))
        return F.cross_entropy(labeled_logits.view(-1, config.num_labels).float(), labels.view(-1)), logits
    return -((F.log_softmax(logits, -1) * labels).sum(-1)).mean(), logits


class _DebertaV2Head(DebertaV2PreTrainedModel):
    """The forward shared by the single-sequence heads: base model, `_logits`, `_loss` -> (loss, logits)."""

    _output_class = SequenceClassifierOutput

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states)
        logits = self._logits(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss, logits = self._loss(logits, labels)
        return head_output(self._output_class, outputs, return_dict, loss=loss, logits=logits)

    def _loss(self, logits, labels):
        return token_cross_entropy(logits, labels), logits


def _classifier_dropout(config) -> float:
    """`cls_dropout`, falling back to `hidden_dropout_prob` (the pooled heads)."""
    drop_out = getattr(config, "cls_dropout", None)
    return config.hidden_dropout_prob if drop_out is None else drop_out


class DebertaV2ForSequenceClassification(_DebertaV2Head):
    """ContextPooler over [CLS], dropout, linear classifier; see `deberta_sequence_classification_loss`."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.deberta = DebertaV2Model(config)
        self.pooler = ContextPooler(config)
        self.classifier = nn.Linear(self.pooler.output_dim, config.num_labels)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.post_init()

    def _logits(self, hidden_states):
        return self.classifier(self.dropout(self.pooler(hidden_states)))

    def _loss(self, logits, labels):
        return deberta_sequence_classification_loss(logits, labels, self.config)


class DebertaV2ForTokenClassification(_DebertaV2Head):
    _output_class = TokenClassifierOutput

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.deberta = DebertaV2Model(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _logits(self, hidden_states):
        return self.classifier(self.dropout(hidden_states))


class DebertaV2ForMaskedLM(_DebertaV2Head):
    """Masked LM. `legacy=True` (every released checkpoint): BERT's `cls.predictions` head, tied to
    the word embeddings. `legacy=False`: `lm_predictions.lm_head`, whose decoder *is* the word
    embedding matrix (transformers 4.57 additionally ties its `dense` to the embeddings when
    `tie_word_embeddings` is set, which breaks that model; here nothing is tied for it)."""

    _output_class = MaskedLMOutput
    _keys_to_ignore_on_load_unexpected = [r"mask_predictions.*"]

    def __init__(self, config):
        super().__init__(config)
        self.legacy = config.legacy
        self.deberta = DebertaV2Model(config)
        if self.legacy:
            self._tied_weights_keys = ["cls.predictions.decoder.weight", "cls.predictions.decoder.bias"]
            self.cls = BertOnlyMLMHead(config, output_size=getattr(config, "embedding_size", config.hidden_size))
        else:
            self.lm_predictions = DebertaV2OnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder if self.legacy else None

    def set_output_embeddings(self, new_embeddings):
        if not self.legacy:
            raise NotImplementedError("legacy=False DeBERTa decodes with the input embeddings; set those instead.")
        self.cls.set_decoder(new_embeddings)

    def _logits(self, hidden_states):
        if self.legacy:
            return self.cls(hidden_states)
        return self.lm_predictions(hidden_states, self.deberta.embeddings.word_embeddings)


class DebertaV2ForQuestionAnswering(DebertaV2PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.deberta = DebertaV2Model(config)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, start_positions=None, end_positions=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states)
        start_logits, end_logits, loss = span_logits_and_loss(
            self.qa_outputs(outputs.last_hidden_state), start_positions, end_positions)
        return head_output(QuestionAnsweringModelOutput, outputs, return_dict, loss=loss, start_logits=start_logits,
                           end_logits=end_logits)


class DebertaV2ForMultipleChoice(DebertaV2PreTrainedModel):
    """Scores each [batch, choices, seq] candidate with the ContextPooler over its [CLS]."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.deberta = DebertaV2Model(config)
        self.pooler = ContextPooler(config)
        self.classifier = nn.Linear(self.pooler.output_dim, 1)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        num_choices = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]
        outputs = self._encode(flatten_choices(input_ids), flatten_choices(attention_mask),
                               flatten_choices(token_type_ids), flatten_choices(position_ids),
                               flatten_choice_embeds(inputs_embeds), output_attentions, output_hidden_states)
        pooled = self.dropout(self.pooler(outputs.last_hidden_state))
        logits = self.classifier(pooled).view(-1, num_choices)
        loss = F.cross_entropy(logits, labels.to(logits.device)) if labels is not None else None
        return head_output(MultipleChoiceModelOutput, outputs, return_dict, loss=loss, logits=logits)


__all__ = [
    "DebertaV2Config", "DebertaV2Model", "DebertaV2PreTrainedModel", "DebertaV2ForSequenceClassification",
    "DebertaV2ForTokenClassification", "DebertaV2ForQuestionAnswering", "DebertaV2ForMultipleChoice",
    "DebertaV2ForMaskedLM", "build_relative_position", "make_log_bucket_position", "relative_positions",
]
