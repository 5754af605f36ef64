"""DistilBERT, checkpoint-compatible with transformers.

A 6-layer BERT distilled from BERT-base, with its own parameter names (`q_lin`, `sa_layer_norm`,
`ffn.lin1`, ...): no token types, no pooler, learned (or sinusoidal) absolute positions. The heads
mirror transformers' DistilBert* classes. Shared pieces (attention with head masks, head-mask
expansion, losses, masks) come from layers.py.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from .configuration_distilbert import DistilBertConfig
from .layers import (
    attend,
    expand_head_mask,
    flatten_choice_embeds,
    flatten_choices,
    get_activation,
    init_linear_embedding_norm,
    merge_heads,
    padding_mask_to_additive,
    sequence_classification_loss,
    span_logits_and_loss,
    split_heads,
    token_cross_entropy,
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


def sinusoidal_position_table(n_pos: int, dim: int) -> torch.Tensor:
    """The fixed sin/cos table of "Attention is all you need", computed in float64 like transformers."""
    positions = torch.arange(n_pos, dtype=torch.float64)[:, None]
    exponents = torch.tensor([2 * (j // 2) / dim for j in range(dim)], dtype=torch.float64)
    angles = positions / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponents)
    table = torch.empty(n_pos, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float()


class Embeddings(nn.Module):
    """Word + absolute position embeddings, LayerNorm, dropout (no token types)."""

    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.dim, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.dim)
        # Marks the table that `_init_weights` fills with sinusoids instead of random values.
        self.position_embeddings.is_sinusoidal = bool(config.sinusoidal_pos_embds)
        if config.sinusoidal_pos_embds:
            self.position_embeddings.weight.requires_grad = False
        self.LayerNorm = nn.LayerNorm(config.dim, eps=1e-12)
        self.dropout = nn.Dropout(config.dropout)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)),
                             persistent=False)

    def forward(self, input_ids: torch.Tensor | None, input_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if input_ids is not None:
            input_embeds = self.word_embeddings(input_ids)
        seq_length = input_embeds.size(1)
        embeddings = input_embeds + self.position_embeddings(self.position_ids[:, :seq_length])
        return self.dropout(self.LayerNorm(embeddings))


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_heads = config.n_heads
        self.dim = config.dim
        if self.dim % self.n_heads != 0:
            raise ValueError(f"self.n_heads: {self.n_heads} must divide self.dim: {self.dim} evenly")
        self.dropout_prob = config.attention_dropout
        self.q_lin = nn.Linear(config.dim, config.dim)
        self.k_lin = nn.Linear(config.dim, config.dim)
        self.v_lin = nn.Linear(config.dim, config.dim)
        self.out_lin = nn.Linear(config.dim, config.dim)

    def forward(self, hidden_states, additive_mask=None, head_mask=None, output_attentions=False):
        q = split_heads(self.q_lin(hidden_states), self.n_heads)
        k = split_heads(self.k_lin(hidden_states), self.n_heads)
        v = split_heads(self.v_lin(hidden_states), self.n_heads)
        context, probs = attend(q, k, v, additive_mask, dropout_p=self.dropout_prob if self.training else 0.0,
                                head_mask=head_mask, need_weights=output_attentions, head_mask_after_dropout=True)
        return self.out_lin(merge_heads(context)), probs


class FFN(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dropout = nn.Dropout(p=config.dropout)
        self.lin1 = nn.Linear(config.dim, config.hidden_dim)
        self.lin2 = nn.Linear(config.hidden_dim, config.dim)
        self.activation = get_activation(config.activation)

    def forward(self, x):
        return self.dropout(self.lin2(self.activation(self.lin1(x))))


class TransformerBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.dim % config.n_heads != 0:
            raise ValueError(f"config.n_heads {config.n_heads} must divide config.dim {config.dim} evenly")
        self.attention = MultiHeadSelfAttention(config)
        self.sa_layer_norm = nn.LayerNorm(config.dim, eps=1e-12)
        self.ffn = FFN(config)
        self.output_layer_norm = nn.LayerNorm(config.dim, eps=1e-12)

    def forward(self, x, additive_mask=None, head_mask=None, output_attentions=False):
        sa_output, probs = self.attention(x, additive_mask, head_mask, output_attentions)
        sa_output = self.sa_layer_norm(sa_output + x)
        return self.output_layer_norm(self.ffn(sa_output) + sa_output), probs


class Transformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_layers = config.n_layers
        self.layer = nn.ModuleList([TransformerBlock(config) for _ in range(config.n_layers)])

    def forward(self, x, additive_mask=None, head_mask=None, output_attentions=False, output_hidden_states=False,
                return_dict=True):
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        hidden_state = x
        for i, layer_module in enumerate(self.layer):
            if output_hidden_states:
                all_hidden_states += (hidden_state,)
            hidden_state, probs = layer_module(hidden_state, additive_mask, head_mask[i], output_attentions)
            if output_attentions:
                all_attentions += (probs,)
        if output_hidden_states:
            all_hidden_states += (hidden_state,)
        if not return_dict:
            return tuple(v for v in (hidden_state, all_hidden_states, all_attentions) if v is not None)
        return BaseModelOutput(last_hidden_state=hidden_state, hidden_states=all_hidden_states,
                               attentions=all_attentions)


class DistilBertPreTrainedModel(PreTrainedModel):
    config_class = DistilBertConfig
    base_model_prefix = "distilbert"

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' init; a sinusoidal position table is computed rather than sampled."""
        init_linear_embedding_norm(module, self.config.initializer_range)
        if getattr(module, "is_sinusoidal", False):
            with torch.no_grad():
                module.weight.copy_(sinusoidal_position_table(*module.weight.shape).to(module.weight.dtype))

    def _encode(self, input_ids, attention_mask, head_mask, inputs_embeds, output_attentions, output_hidden_states):
        """The base model's forward as the heads call it (always a ModelOutput; the head picks its form)."""
        return self.distilbert(input_ids=input_ids, attention_mask=attention_mask, head_mask=head_mask,
                               inputs_embeds=inputs_embeds, output_attentions=output_attentions,
                               output_hidden_states=output_hidden_states, return_dict=True)


class DistilBertModel(DistilBertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        if config.pruned_heads:
            raise NotImplementedError(
                f"config.pruned_heads={config.pruned_heads}: checkpoints with pruned attention heads are not "
                "supported; use a checkpoint without pruning."
            )
        self.embeddings = Embeddings(config)
        self.transformer = Transformer(config)
        self.post_init()

    def get_position_embeddings(self) -> nn.Embedding:
        return self.embeddings.position_embeddings

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, new_embeddings: nn.Embedding):
        self.embeddings.word_embeddings = new_embeddings

    def forward(self, input_ids=None, attention_mask=None, head_mask=None, inputs_embeds=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        config = self.config
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        return_dict = return_dict if return_dict is not None else config.use_return_dict
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        if input_ids is None and inputs_embeds is None:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        embeddings = self.embeddings(input_ids, inputs_embeds)
        additive_mask = None
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError(f"attention_mask must have shape [batch, seq], got {tuple(attention_mask.shape)}")
            if not bool(attention_mask.all()):
                additive_mask = padding_mask_to_additive(attention_mask, embeddings.dtype, tgt_len=1)
        return self.transformer(
            embeddings,
            additive_mask=additive_mask,
            head_mask=expand_head_mask(head_mask, config.num_hidden_layers, embeddings.dtype),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )


def _pool_first_token(pre_classifier: nn.Linear, dropout: nn.Dropout, hidden_state: torch.Tensor) -> torch.Tensor:
    """DistilBERT's pooling for sentence-level heads: first token -> pre_classifier -> ReLU -> dropout."""
    return dropout(F.relu(pre_classifier(hidden_state[:, 0])))


class _DistilBertLabelledHead(DistilBertPreTrainedModel):
    """The forward shared by the masked-LM, sequence- and token-classification heads: base model, then
    `_logits` of the last hidden state and `_loss`."""

    _output_class = SequenceClassifierOutput

    def forward(self, input_ids=None, attention_mask=None, head_mask=None, inputs_embeds=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self._encode(input_ids, attention_mask, head_mask, inputs_embeds, output_attentions,
                               output_hidden_states)
        logits = self._logits(outputs.last_hidden_state)
        loss = self._loss(logits, labels) if labels is not None else None
        return head_output(self._output_class, outputs, return_dict, loss=loss, logits=logits)

    def _loss(self, logits, labels):
        return token_cross_entropy(logits, labels)


class DistilBertForMaskedLM(_DistilBertLabelledHead):
    _tied_weights_keys = ["vocab_projector.weight"]
    _output_class = MaskedLMOutput

    def __init__(self, config):
        super().__init__(config)
        self.activation = get_activation(config.activation)
        self.distilbert = DistilBertModel(config)
        self.vocab_transform = nn.Linear(config.dim, config.dim)
        self.vocab_layer_norm = nn.LayerNorm(config.dim, eps=1e-12)
        self.vocab_projector = nn.Linear(config.dim, config.vocab_size)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.vocab_projector

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.vocab_projector = new_embeddings

    def _logits(self, hidden_state):
        return self.vocab_projector(self.vocab_layer_norm(self.activation(self.vocab_transform(hidden_state))))


class DistilBertForSequenceClassification(_DistilBertLabelledHead):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.distilbert = DistilBertModel(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, config.num_labels)
        self.dropout = nn.Dropout(config.seq_classif_dropout)
        self.post_init()

    def _logits(self, hidden_state):
        return self.classifier(_pool_first_token(self.pre_classifier, self.dropout, hidden_state))

    def _loss(self, logits, labels):
        return sequence_classification_loss(logits, labels, self.config)


class DistilBertForQuestionAnswering(DistilBertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.qa_outputs = nn.Linear(config.dim, config.num_labels)
        if config.num_labels != 2:
            raise ValueError(f"config.num_labels should be 2, but it is {config.num_labels}")
        self.dropout = nn.Dropout(config.qa_dropout)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, head_mask=None, inputs_embeds=None, start_positions=None,
                end_positions=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self._encode(input_ids, attention_mask, head_mask, inputs_embeds, output_attentions,
                               output_hidden_states)
        start_logits, end_logits, loss = span_logits_and_loss(
            self.qa_outputs(self.dropout(outputs.last_hidden_state)), start_positions, end_positions)
        return head_output(QuestionAnsweringModelOutput, outputs, return_dict, loss=loss, start_logits=start_logits,
                           end_logits=end_logits)


class DistilBertForTokenClassification(_DistilBertLabelledHead):
    _output_class = TokenClassifierOutput

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.distilbert = DistilBertModel(config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _logits(self, hidden_state):
        return self.classifier(self.dropout(hidden_state))


class DistilBertForMultipleChoice(DistilBertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, 1)
        self.dropout = nn.Dropout(config.seq_classif_dropout)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, head_mask=None, inputs_embeds=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        num_choices = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]
        outputs = self._encode(flatten_choices(input_ids), flatten_choices(attention_mask), head_mask,
                               flatten_choice_embeds(inputs_embeds), output_attentions, output_hidden_states)
        pooled = _pool_first_token(self.pre_classifier, self.dropout, outputs.last_hidden_state)
        logits = self.classifier(pooled).view(-1, num_choices)
        loss = F.cross_entropy(logits, labels.to(logits.device)) if labels is not None else None
        return head_output(MultipleChoiceModelOutput, outputs, return_dict, loss=loss, logits=logits)


__all__ = [
    "DistilBertConfig", "DistilBertModel", "DistilBertPreTrainedModel", "DistilBertForMaskedLM",
    "DistilBertForSequenceClassification", "DistilBertForQuestionAnswering", "DistilBertForTokenClassification",
    "DistilBertForMultipleChoice", "sinusoidal_position_table",
]
