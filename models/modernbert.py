"""ModernBERT: a pre-norm encoder with rotary positions and alternating local / global attention.

What sets it apart from BERT (and why it is its own module rather than a BERT switch):
- no position embeddings: rotary embeddings on queries and keys, with `global_rope_theta` in the
  global layers and `local_rope_theta` in the local ones;
- every `global_attn_every_n_layers`-th layer (0, n, 2n, ...) attends globally, the others within a
  sliding window of `local_attention // 2` tokens on each side;
- pre-norm layers (the first layer's attention norm is the identity, as the embedding norm precedes
  it) without biases by default (`norm_bias`, `attention_bias`, `mlp_bias`), a GeGLU MLP (`Wi` makes
  input and gate, `Wo` projects back), a final norm after the last layer;
- heads go through `head` (dense, activation, norm) before their classifier; sequence
  classification pools the first token or the masked mean (`classifier_pooling`).

Parameter names are transformers 4.57's (`model.embeddings.tok_embeddings`, `model.layers.1.attn.Wqkv`,
`model.final_norm`, `head.dense`, `decoder`), so checkpoints load 1:1 both ways.

Padding: we run the padded batch with additive masks, exactly as transformers' eager / sdpa paths
do, so every position (real or padded) equals theirs. `attn_implementation="eager"` (or
`output_attentions`) selects the explicit attention computation, otherwise SDPA runs.
The unpadded (varlen) layout of transformers' flash-attention path is not built: on CPU there is no
varlen attention kernel, and our pipeline already sorts micro-batches by length so little padding
is computed (see BENCHMARKS.md). Passing `indices` / `cu_seqlens` / `max_seqlen` raises.

Not supported: the flash-attention-2 unpadded path, `reference_compile` (torch.compile of parts;
accepted in the config and ignored), gradient checkpointing, `resize_token_embeddings`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_modernbert import ModernBertConfig
from .layers import (
    apply_rotary,
    attend,
    check_input_ids,
    flatten_choices,
    get_activation,
    merge_heads,
    padding_mask_to_additive,
    rotary_cos_sin,
    rotary_inverse_frequencies,
    sequence_classification_loss,
    span_logits_and_loss,
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
)

def _is_global_layer(config, layer_id: int) -> bool:
    return layer_id % config.global_attn_every_n_layers == 0


def _layer_norm(config) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)


# ============================================================================ modules


class ModernBertEmbeddings(nn.Module):
    """Token embedding -> norm -> dropout; there are no position embeddings (rotary in attention)."""

    def __init__(self, config):
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.norm = _layer_norm(config)
        self.drop = nn.Dropout(config.embedding_dropout)

    def forward(self, input_ids=None, inputs_embeds=None) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.tok_embeddings(input_ids)
        return self.drop(self.norm(inputs_embeds))


class ModernBertMLP(nn.Module):
    """GeGLU: `Wi` yields [input | gate]; act(input) * gate -> dropout -> `Wo`."""

    def __init__(self, config):
        super().__init__()
        self.Wi = nn.Linear(config.hidden_size, int(config.intermediate_size) * 2, bias=config.mlp_bias)
        self.act = get_activation(config.hidden_activation)
        self.drop = nn.Dropout(config.mlp_dropout)
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        inputs, gate = self.Wi(hidden_states).chunk(2, dim=-1)
        return self.Wo(self.drop(self.act(inputs) * gate))


class ModernBertRotaryEmbedding(nn.Module):
    """The layer's RoPE frequencies (a non-persistent buffer `inv_freq`: computed, never saved)."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        self.register_buffer("inv_freq", rotary_inverse_frequencies(head_dim, base), persistent=False)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype):
        return rotary_cos_sin(self.inv_freq, position_ids, dtype)


class ModernBertAttention(nn.Module):
    """Self-attention with a fused `Wqkv` projection and rotary positions, global or windowed.

    Local layers get the sliding-window mask (|i - j| <= local_attention // 2, and no padding keys),
    global layers the padding mask; both are additive masks built once per forward by the model.
    """

    def __init__(self, config, layer_id: int):
        super().__init__()
        if config.hidden_size % config.num_attention_heads != 0:
            raise ValueError(
                f"The hidden size ({config.hidden_size}) is not a multiple of the number of attention heads "
                f"({config.num_attention_heads})"
            )
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.attention_dropout = config.attention_dropout
        self.eager = uses_eager_attention(config)
        self.is_global = _is_global_layer(config, layer_id)
        if self.is_global:
            rope_theta = config.global_rope_theta
        else:
            rope_theta = config.local_rope_theta if config.local_rope_theta is not None else config.global_rope_theta
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attention_bias)
        self.rotary_emb = ModernBertRotaryEmbedding(self.head_dim, rope_theta)
        self.Wo = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)
        self.out_drop = nn.Dropout(config.attention_dropout) if config.attention_dropout > 0.0 else nn.Identity()

    def forward(self, hidden_states, global_mask, window_mask, position_ids, output_attentions=False):
        bsz = hidden_states.shape[0]
        qkv = self.Wqkv(hidden_states).view(bsz, -1, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.transpose(3, 1).unbind(dim=2)  # each [batch, heads, seq, head_dim]
        cos, sin = self.rotary_emb(position_ids, qkv.dtype)
        query, key = apply_rotary(query, key, cos, sin)
        eager = self.eager or output_attentions
        output, weights = attend(
            query, key, value, global_mask if self.is_global else window_mask,
            dropout_p=self.attention_dropout if self.training else 0.0,
            # transformers' eager path multiplies by head_dim**-0.5; its SDPA path uses SDPA's default.
            scale=self.head_dim**-0.5 if eager else None,
            need_weights=output_attentions, eager=eager,
        )
        return self.out_drop(self.Wo(merge_heads(output))), weights


class ModernBertEncoderLayer(nn.Module):
    """Pre-norm attention and GeGLU MLP with residuals; layer 0 skips its attention norm."""

    def __init__(self, config, layer_id: int):
        super().__init__()
        self.attn_norm = nn.Identity() if layer_id == 0 else _layer_norm(config)
        self.attn = ModernBertAttention(config, layer_id)
        self.mlp_norm = _layer_norm(config)
        self.mlp = ModernBertMLP(config)

    def forward(self, hidden_states, global_mask, window_mask, position_ids, output_attentions=False):
        attn_output, weights = self.attn(self.attn_norm(hidden_states), global_mask, window_mask, position_ids,
                                         output_attentions)
        hidden_states = hidden_states + attn_output
        hidden_states = hidden_states + self.mlp(self.mlp_norm(hidden_states))
        return hidden_states, weights


class ModernBertPredictionHead(nn.Module):
    """dense -> activation -> norm, shared by every head before its output projection."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, config.classifier_bias)
        self.act = get_activation(config.classifier_activation)
        self.norm = _layer_norm(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(hidden_states)))


# ============================================================================ masks


def attention_masks(attention_mask: torch.Tensor, local_attention: int, dtype: torch.dtype):
    """(global, sliding-window) additive masks for a [batch, seq] 1/0 padding mask.

    The global mask is [batch, 1, 1, seq] (None without padding, so SDPA may take its unmasked
    kernel); the window mask adds |i - j| > local_attention // 2 -> dtype min, [batch, 1, seq, seq].
    """
    seq_len = attention_mask.shape[1]
    padding = None if bool(attention_mask.all()) else padding_mask_to_additive(attention_mask, dtype, tgt_len=1)
    positions = torch.arange(seq_len, device=attention_mask.device)
    outside = (positions[None, :] - positions[:, None]).abs() > local_attention // 2
    window = torch.zeros((seq_len, seq_len), dtype=dtype, device=attention_mask.device)
    window = window.masked_fill(outside, torch.finfo(dtype).min)[None, None]
    if padding is not None:
        # masked_fill rather than a sum: a padded key outside the window stays exactly dtype min.
        window = padding.expand(-1, -1, seq_len, -1).masked_fill(outside, torch.finfo(dtype).min)
    return padding, window


# ============================================================================ base class


class ModernBertPreTrainedModel(PreTrainedModel):
    config_class = ModernBertConfig
    base_model_prefix = "model"

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' scheme: truncated normals, `out` projections scaled down by depth."""
        config = self.config
        cutoff = config.initializer_cutoff_factor if config.initializer_cutoff_factor is not None else 3
        stds = {
            "in": config.initializer_range,
            "out": config.initializer_range / math.sqrt(2.0 * config.num_hidden_layers),
            "embedding": config.initializer_range,
            "final_out": config.hidden_size**-0.5,
        }

        def init(layer: nn.Module, std: float) -> None:
            nn.init.trunc_normal_(layer.weight, mean=0.0, std=std, a=-cutoff * std, b=cutoff * std)
            if isinstance(layer, nn.Linear) and layer.bias is not None:
                nn.init.zeros_(layer.bias)

        if isinstance(module, ModernBertEmbeddings):
            init(module.tok_embeddings, stds["embedding"])
        elif isinstance(module, (ModernBertMLP, ModernBertAttention)):
            init(module.Wi if isinstance(module, ModernBertMLP) else module.Wqkv, stds["in"])
            init(module.Wo, stds["out"])
        elif isinstance(module, ModernBertPredictionHead):
            init(module.dense, stds["out"])
        elif isinstance(module, ModernBertForMaskedLM):
            init(module.decoder, stds["out"])
        elif isinstance(module, _ModernBertClassifierModel):
            init(module.classifier, stds["final_out"])
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            if module.bias is not None:
                module.bias.data.zero_()


# ============================================================================ models


class ModernBertModel(ModernBertPreTrainedModel):
    """Embeddings, the alternating local / global layers and the final norm."""

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = ModernBertEmbeddings(config)
        self.layers = nn.ModuleList([ModernBertEncoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.final_norm = _layer_norm(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.tok_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.tok_embeddings = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        sliding_window_mask=None,
        position_ids=None,
        inputs_embeds=None,
        indices=None,
        cu_seqlens=None,
        max_seqlen=None,
        batch_size=None,
        seq_len=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        config = self.config
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        return_dict = return_dict if return_dict is not None else config.use_return_dict
        if indices is not None or cu_seqlens is not None or max_seqlen is not None:
            raise NotImplementedError(
                "ModernBertModel runs padded batches only (the unpadded flash-attention layout is not supported): "
                "pass input_ids [batch, seq] with attention_mask instead of indices / cu_seqlens / max_seqlen."
            )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            check_input_ids(input_ids, self.embeddings.tok_embeddings.num_embeddings, "input_ids")
            batch_size, seq_len = input_ids.shape
            device = input_ids.device
        else:
            batch_size, seq_len = inputs_embeds.shape[:2]
            device = inputs_embeds.device
        if attention_mask is None:
            attention_mask = torch.ones((batch_size, seq_len), device=device, dtype=torch.long)
        elif tuple(attention_mask.shape) != (batch_size, seq_len):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but the input is [{batch_size}, {seq_len}]."
            )
        if position_ids is None:
            position_ids = torch.arange(seq_len, device=device).unsqueeze(0)

        hidden_states = self.embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds)
        # A caller's `sliding_window_mask` is ignored, as transformers' eager / sdpa paths ignore it
        # (they rebuild it from attention_mask); the argument exists for signature compatibility.
        global_mask, window_mask = attention_masks(attention_mask, config.local_attention, hidden_states.dtype)

        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, weights = layer(hidden_states, global_mask, window_mask, position_ids, output_attentions)
            if output_attentions:
                all_attentions += (weights,)
        if output_hidden_states:  # as transformers: the last entry is taken before the final norm
            all_hidden_states += (hidden_states,)
        hidden_states = self.final_norm(hidden_states)

        if not return_dict:
            return tuple(v for v in (hidden_states, all_hidden_states, all_attentions) if v is not None)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden_states,
                               attentions=all_attentions)


def _run_base(model, input_ids, attention_mask, sliding_window_mask, position_ids, inputs_embeds,
              output_attentions, output_hidden_states, unpadded):
    return model.model(
        input_ids=input_ids, attention_mask=attention_mask, sliding_window_mask=sliding_window_mask,
        position_ids=position_ids, inputs_embeds=inputs_embeds, output_attentions=output_attentions,
        output_hidden_states=output_hidden_states, return_dict=True, **unpadded,
    )


def _unpadded(indices, cu_seqlens, max_seqlen) -> dict:
    return {k: v for k, v in (("indices", indices), ("cu_seqlens", cu_seqlens), ("max_seqlen", max_seqlen))
            if v is not None}


def _head_tuple(fields: tuple, outputs, with_base_outputs: bool) -> tuple:
    """transformers' `return_dict=False` tuples: MaskedLM and SequenceClassification return only
    (loss, logits); the token-level heads append the base model's hidden states / attentions."""
    loss, *rest = fields
    output = tuple(rest)
    if with_base_outputs:
        output += tuple(v for v in (outputs.hidden_states, outputs.attentions) if v is not None)
    return ((loss,) + output) if loss is not None else output


class ModernBertForMaskedLM(ModernBertPreTrainedModel):
    """`head` then `decoder` (tied to the token embedding); `sparse_prediction` scores only labelled tokens."""

    _tied_weights_keys = ["decoder.weight"]

    def __init__(self, config):
        super().__init__(config)
        self.model = ModernBertModel(config)
        self.head = ModernBertPredictionHead(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.decoder_bias)
        self.sparse_prediction = config.sparse_prediction
        self.sparse_pred_ignore_index = config.sparse_pred_ignore_index
        self.post_init()

    def get_output_embeddings(self):
        return self.decoder

    def set_output_embeddings(self, new_embeddings):
        self.decoder = new_embeddings

    def forward(self, input_ids=None, attention_mask=None, sliding_window_mask=None, position_ids=None,
                inputs_embeds=None, labels=None, indices=None, cu_seqlens=None, max_seqlen=None, batch_size=None,
                seq_len=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = _run_base(self, input_ids, attention_mask, sliding_window_mask, position_ids, inputs_embeds,
                            output_attentions, output_hidden_states, _unpadded(indices, cu_seqlens, max_seqlen))
        hidden = outputs.last_hidden_state
        if self.sparse_prediction and labels is not None:
            labels = labels.view(-1)
            hidden = hidden.view(labels.shape[0], -1)
            keep = labels != self.sparse_pred_ignore_index
            hidden, labels = hidden[keep], labels[keep]
        logits = self.decoder(self.head(hidden))
        loss = token_cross_entropy(logits.float(), labels) if labels is not None else None
        if not return_dict:
            return _head_tuple((loss, logits), outputs, with_base_outputs=False)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                              attentions=outputs.attentions)


class _ModernBertClassifierModel(ModernBertPreTrainedModel):
    """Base model + `head` + dropout + `classifier` (n outputs); the subclass says what it pools."""

    _classifier_outputs: str = "num_labels"

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = ModernBertModel(config)
        self.head = ModernBertPredictionHead(config)
        self.drop = nn.Dropout(config.classifier_dropout)
        outputs = 1 if self._classifier_outputs == "one" else config.num_labels
        self.classifier = nn.Linear(config.hidden_size, outputs)
        self.post_init()

    def _classify(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.drop(self.head(hidden_states)))


def _pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str,
          cls_at_first_real_token: bool = False) -> torch.Tensor:
    """`classifier_pooling`: the first token ("cls") or the attention-masked mean ("mean")."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden_states.shape[:2], dtype=torch.long, device=hidden_states.device)
    if pooling == "cls":
        if cls_at_first_real_token:  # transformers' multiple-choice head: argmax of the mask
            rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
            return hidden_states[rows, attention_mask.argmax(dim=-1).to(hidden_states.device)]
        return hidden_states[:, 0]
    mask = attention_mask.unsqueeze(-1)
    return (hidden_states * mask).sum(dim=1) / attention_mask.sum(dim=1, keepdim=True)


class ModernBertForSequenceClassification(_ModernBertClassifierModel):
    """Pools per `classifier_pooling` ("cls" / "mean"), then head -> dropout -> classifier."""

    def forward(self, input_ids=None, attention_mask=None, sliding_window_mask=None, position_ids=None,
                inputs_embeds=None, labels=None, indices=None, cu_seqlens=None, max_seqlen=None, batch_size=None,
                seq_len=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = _run_base(self, input_ids, attention_mask, sliding_window_mask, position_ids, inputs_embeds,
                            output_attentions, output_hidden_states, _unpadded(indices, cu_seqlens, max_seqlen))
        pooled = _pool(outputs.last_hidden_state, attention_mask, self.config.classifier_pooling)
        logits = self._classify(pooled)
        loss = sequence_classification_loss(logits, labels, self.config) if labels is not None else None
        if not return_dict:
            return _head_tuple((loss, logits), outputs, with_base_outputs=False)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)


class ModernBertForTokenClassification(_ModernBertClassifierModel):
    """head -> dropout -> classifier on every token (NER)."""

    def forward(self, input_ids=None, attention_mask=None, sliding_window_mask=None, position_ids=None,
                inputs_embeds=None, labels=None, indices=None, cu_seqlens=None, max_seqlen=None, batch_size=None,
                seq_len=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = _run_base(self, input_ids, attention_mask, sliding_window_mask, position_ids, inputs_embeds,
                            output_attentions, output_hidden_states, _unpadded(indices, cu_seqlens, max_seqlen))
        logits = self._classify(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.to(logits.device).view(-1))
        if not return_dict:
            return _head_tuple((loss, logits), outputs, with_base_outputs=True)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                     attentions=outputs.attentions)


class ModernBertForQuestionAnswering(_ModernBertClassifierModel):
    """Extractive QA: per-token start / end logits (`num_labels` = 2)."""

    def forward(self, input_ids=None, attention_mask=None, sliding_window_mask=None, position_ids=None,
                start_positions=None, end_positions=None, indices=None, cu_seqlens=None, max_seqlen=None,
                batch_size=None, seq_len=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                inputs_embeds=None, **kwargs):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = _run_base(self, input_ids, attention_mask, sliding_window_mask, position_ids, inputs_embeds,
                            output_attentions, output_hidden_states, _unpadded(indices, cu_seqlens, max_seqlen))
        logits = self._classify(outputs.last_hidden_state)
        start_logits, end_logits, loss = span_logits_and_loss(logits, start_positions, end_positions)
        if not return_dict:
            return _head_tuple((loss, start_logits, end_logits), outputs, with_base_outputs=True)
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                            hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class ModernBertForMultipleChoice(_ModernBertClassifierModel):
    """[batch, choices, seq] inputs; one score per choice from the pooled state of each."""

    _classifier_outputs = "one"

    def forward(self, input_ids=None, attention_mask=None, sliding_window_mask=None, position_ids=None,
                inputs_embeds=None, labels=None, indices=None, cu_seqlens=None, max_seqlen=None, batch_size=None,
                seq_len=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        num_choices = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]
        attention_mask = flatten_choices(attention_mask)
        inputs_embeds = inputs_embeds.reshape(-1, *inputs_embeds.shape[-2:]) if inputs_embeds is not None else None
        outputs = _run_base(self, flatten_choices(input_ids), attention_mask, sliding_window_mask,
                            flatten_choices(position_ids), inputs_embeds, output_attentions, output_hidden_states,
                            _unpadded(indices, cu_seqlens, max_seqlen))
        pooled = _pool(outputs.last_hidden_state, attention_mask, self.config.classifier_pooling,
                       cls_at_first_real_token=True)
        logits = self._classify(pooled).view(-1, num_choices)
        loss = F.cross_entropy(logits, labels.to(logits.device)) if labels is not None else None
        if not return_dict:
            return _head_tuple((loss, logits), outputs, with_base_outputs=True)
        return MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                         attentions=outputs.attentions)


__all__ = [
    "ModernBertConfig", "ModernBertModel", "ModernBertPreTrainedModel", "ModernBertForMaskedLM",
    "ModernBertForSequenceClassification", "ModernBertForTokenClassification", "ModernBertForQuestionAnswering",
    "ModernBertForMultipleChoice",
]
