"""BART, mBART, Marian and Pegasus: one encoder-decoder Transformer with config switches.

The four families share every module (attention, encoder/decoder layers, heads, cache handling) and
differ only in a handful of architectural choices, collected in `BartVariant` and attached to each
config class:

| family  | norm placement | positions                   | `layernorm_embedding` | final `layer_norm` |
|---------|----------------|-----------------------------|-----------------------|--------------------|
| BART    | post-norm      | learned, offset 2           | yes                   | no                 |
| mBART   | pre-norm       | learned, offset 2           | yes                   | yes                |
| Marian  | post-norm      | sinusoidal (not trainable)  | no                    | no                 |
| Pegasus | pre-norm       | sinusoidal (not trainable)  | no                    | yes                |
| M2M100  | pre-norm       | fairseq sinusoids, skip pad | no                    | yes                |

M2M100 (and NLLB, which is an M2M100 checkpoint) has its classes in m2m_100.py (its config in
configuration_m2m_100.py); its only architectural differences are its position scheme and the absent
`final_logits_bias`, both switches here.

Parameter and buffer names are those of transformers 4.57 (`model.shared`,
`model.encoder.layers.0.self_attn.k_proj`, `model.decoder.embed_positions`, `lm_head`,
`final_logits_bias`), so checkpoints load 1:1 both ways.

KV cache (the project's contract format): `past_key_values` is a tuple over decoder layers of
`(self_k, self_v, cross_k, cross_v)`, each `[batch, heads, seq, head_dim]`. Cross-attention keys and
values are computed from the encoder output on the first step and then read from the cache.

Attention runs through SDPA; `attn_implementation="eager"` (or `output_attentions` / a head mask)
selects the explicit computation, bit-identical to transformers' eager attention. Our one extension
to the forward signature is `decoder_position_ids` [batch, new_tokens] (0-based), which lets rows
with a left-padded cache keep their own positions (continuous batching in generation/continuous.py).

Not supported (raise or are absent): gradient checkpointing, `*ForQuestionAnswering`,
`*ForCausalLM` (decoder-only use of these families), `MBartForSequenceClassification`,
`resize_token_embeddings`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_bart import BartConfig, BartVariant, MarianConfig, MBartConfig, PegasusConfig
from .configuration_utils import PretrainedConfig
from .generation import GenerationConfig, GenerationMixin
from .layers import (
    attend,
    causal_additive_mask,
    combine_additive_masks,
    get_activation,
    merge_heads,
    padding_mask_to_additive,
    sequence_classification_loss,
    shift_tokens_right,
    check_input_ids,
    check_legacy_cache,
    split_heads,
    token_cross_entropy,
    uses_eager_attention,
)
from .modeling_utils import PreTrainedModel
from .outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    Seq2SeqSequenceClassifierOutput,
    as_tuple,
    encode_unless_given,
    seq2seq_head_output,
    seq2seq_output,
    with_loss,
)

# ============================================================================ architecture switches
# BartVariant and the configs that attach one live in configuration_bart.py (torch-free).


def _variant(config: PretrainedConfig) -> BartVariant:
    variant = getattr(type(config), "variant", None)
    if not isinstance(variant, BartVariant):
        raise TypeError(
            f"{type(config).__name__} is not a BART-family config; use BartConfig, MBartConfig, MarianConfig, "
            "PegasusConfig or M2M100Config."
        )
    return variant


# ============================================================================ embeddings


class BartScaledWordEmbedding(nn.Embedding):
    """Token embedding that multiplies by `embed_scale` (sqrt(d_model) when `scale_embedding`)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None, embed_scale: float = 1.0):
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        self.embed_scale = embed_scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) * self.embed_scale


class BartLearnedPositionalEmbedding(nn.Embedding):
    """Learned positions; fairseq reserved the first two rows, so position p reads row p + 2."""

    offset = 2

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__(num_embeddings + self.offset, embedding_dim)

    def forward(self, position_ids: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """`token_ids` is unused: these positions do not skip padding (see PaddingAwareSinusoidal...)."""
        return super().forward(position_ids + self.offset)


class SinusoidalPositionalEmbedding(nn.Embedding):
    """Fixed sin/cos positions (Marian, Pegasus): sin features in the first half, cos in the second.

    The table is a non-trainable Parameter named `weight` (as in transformers); it is computed, not
    learned, so checkpoints may omit it (Marian never saves it) and it is rebuilt on load.
    """

    def __init__(self, num_positions: int, embedding_dim: int):
        super().__init__(num_positions, embedding_dim)
        self.weight.requires_grad_(False)

    @torch.no_grad()
    def reset_sinusoids(self) -> None:
        n_pos, dim = self.weight.shape
        # float64 like transformers' numpy code, then rounded once to the parameter dtype.
        position = torch.arange(n_pos, dtype=torch.float64)[:, None]
        exponent = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim
        angles = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)
        sentinel = dim // 2 if dim % 2 == 0 else dim // 2 + 1
        table = torch.empty(n_pos, dim, dtype=torch.float64)
        table[:, :sentinel] = torch.sin(angles[:, 0::2])
        table[:, sentinel:] = torch.cos(angles[:, 1::2])
        self.weight.copy_(table.to(torch.float32).to(self.weight.dtype))

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(position_ids)


class PaddingAwareSinusoidalPositionalEmbedding(nn.Module):
    """fairseq's sinusoidal positions as M2M100 / NLLB use them (transformers'
    M2M100SinusoidalPositionalEmbedding).

    Unlike Marian's table: frequencies 10000^(-i / (half - 1)), sin half then cos half, and positions
    that skip padding: a token's row is pad_token_id + 1 + (number of non-pad tokens before it), a pad
    token reads the all-zero row pad_token_id. The table is a non-persistent buffer `weights` (never in
    checkpoints), computed in __init__.
    """

    offset = 2

    def __init__(self, num_positions: int, embedding_dim: int, padding_idx: int):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        # Rows up to padding_idx + max positions are reachable; transformers sizes the table
        # num_positions + 2 and regrows it on demand, which yields the same values.
        rows = max(num_positions + self.offset, padding_idx + 1 + num_positions)
        self.register_buffer("weights", self.sinusoids(rows, embedding_dim, padding_idx), persistent=False)

    @staticmethod
    def sinusoids(num_embeddings: int, embedding_dim: int, padding_idx: int) -> torch.Tensor:
        half_dim = embedding_dim // 2
        frequency = math.log(10000) / (half_dim - 1)
        frequency = torch.exp(torch.arange(half_dim, dtype=torch.int64).float() * -frequency)
        angles = torch.arange(num_embeddings, dtype=torch.int64).float().unsqueeze(1) * frequency.unsqueeze(0)
        table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).view(num_embeddings, -1)
        if embedding_dim % 2 == 1:
            table = torch.cat([table, torch.zeros(num_embeddings, 1)], dim=1)
        table[padding_idx, :] = 0
        return table.to(torch.get_default_dtype())

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """`position_ids` are the 0-based positions of the new tokens ([seq] or [batch, seq]), as for the
        other position modules; `token_ids` [batch, seq] (None for `inputs_embeds`) mark the pads.

        With pads, a token's index is reference's (cumsum(non_pad) + past_length) * non_pad + pad,
        written relative to each row's first new position so per-row positions (continuous batching)
        work too: (first_position + cumsum(non_pad)) * non_pad + pad.
        """
        if token_ids is None:
            index = position_ids + self.padding_idx + 1
        else:
            non_pad = token_ids.ne(self.padding_idx).long()
            steps = torch.arange(token_ids.shape[1], device=token_ids.device)
            first = position_ids - steps  # the position the new tokens start at, per row
            index = (first + torch.cumsum(non_pad, dim=1)) * non_pad + self.padding_idx
        if index.dim() == 1:
            index = index[None]
        return self.weights.index_select(0, index.reshape(-1)).view(*index.shape, -1)


def _position_embedding(config, variant: BartVariant) -> nn.Module:
    if variant.padding_aware_positions:
        return PaddingAwareSinusoidalPositionalEmbedding(config.max_position_embeddings, config.d_model,
                                                         config.pad_token_id)
    if variant.learned_positions:
        return BartLearnedPositionalEmbedding(config.max_position_embeddings, config.d_model)
    return SinusoidalPositionalEmbedding(config.max_position_embeddings, config.d_model)


def _token_embedding(num_embeddings: int, config, variant: BartVariant) -> nn.Embedding:
    if variant.scale_inside_embedding:
        return BartScaledWordEmbedding(num_embeddings, config.d_model, config.pad_token_id, _embed_scale(config))
    return nn.Embedding(num_embeddings, config.d_model, config.pad_token_id)


def _embed_scale(config) -> float:
    return math.sqrt(config.d_model) if config.scale_embedding else 1.0


# ============================================================================ attention


class BartAttention(nn.Module):
    """Multi-head attention used for encoder self-attention, decoder self- and cross-attention.

    Returns `(output, attention_probs or None, (key, value))`; the key/value pair is what the decoder
    stores in its cache (self-attention: all keys so far; cross-attention: the encoder's keys).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 eager: bool = False):
        super().__init__()
        self.eager = eager
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.head_dim = embed_dim // num_heads
        if self.head_dim * num_heads != embed_dim:
            raise ValueError(
                f"d_model ({embed_dim}) must be divisible by the number of attention heads ({num_heads})."
            )
        self.scaling = self.head_dim**-0.5
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        past_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        layer_head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ):
        query = split_heads(self.q_proj(hidden_states), self.num_heads)
        if key_value_states is None:  # self-attention: new keys are appended to the cached ones
            key = split_heads(self.k_proj(hidden_states), self.num_heads)
            value = split_heads(self.v_proj(hidden_states), self.num_heads)
            if past_key_value is not None:
                key = torch.cat([past_key_value[0], key], dim=2)
                value = torch.cat([past_key_value[1], value], dim=2)
        elif past_key_value is not None:  # cross-attention after the first step: encoder keys are cached
            key, value = past_key_value
        else:
            key = split_heads(self.k_proj(key_value_states), self.num_heads)
            value = split_heads(self.v_proj(key_value_states), self.num_heads)

        dropout = self.dropout if self.training else 0.0
        output, weights = attend(query, key, value, attention_mask, dropout_p=dropout, scale=self.scaling,
                                 head_mask=layer_head_mask, need_weights=output_attentions, eager=self.eager)
        return self.out_proj(merge_heads(output)), weights, (key, value)


# ============================================================================ layers


class BartEncoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.pre_norm = _variant(config).pre_norm
        self.embed_dim = config.d_model
        self.self_attn = BartAttention(self.embed_dim, config.encoder_attention_heads, config.attention_dropout,
                                       eager=uses_eager_attention(config))
        self.self_attn_layer_norm = nn.LayerNorm(self.embed_dim)
        self.dropout = config.dropout
        self.activation_fn = get_activation(config.activation_function)
        self.activation_dropout = config.activation_dropout
        self.fc1 = nn.Linear(self.embed_dim, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, self.embed_dim)
        self.final_layer_norm = nn.LayerNorm(self.embed_dim)

    def forward(self, hidden_states, attention_mask, layer_head_mask=None, output_attentions=False):
        residual = hidden_states
        if self.pre_norm:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, attn_weights, _ = self.self_attn(
            hidden_states, attention_mask=attention_mask, layer_head_mask=layer_head_mask,
            output_attentions=output_attentions,
        )
        hidden_states = residual + F.dropout(hidden_states, p=self.dropout, training=self.training)
        if not self.pre_norm:
            hidden_states = self.self_attn_layer_norm(hidden_states)

        hidden_states = _feed_forward(self, hidden_states)
        if hidden_states.dtype == torch.float16:
            # fp16 overflow guard of the reference implementation.
            clamp_value = torch.finfo(hidden_states.dtype).max - 1000
            hidden_states = torch.clamp(hidden_states, min=-clamp_value, max=clamp_value)
        return hidden_states, attn_weights


class BartDecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.pre_norm = _variant(config).pre_norm
        self.embed_dim = config.d_model
        self.self_attn = BartAttention(self.embed_dim, config.decoder_attention_heads, config.attention_dropout,
                                       eager=uses_eager_attention(config))
        self.dropout = config.dropout
        self.activation_fn = get_activation(config.activation_function)
        self.activation_dropout = config.activation_dropout
        self.self_attn_layer_norm = nn.LayerNorm(self.embed_dim)
        self.encoder_attn = BartAttention(self.embed_dim, config.decoder_attention_heads, config.attention_dropout,
                                       eager=uses_eager_attention(config))
        self.encoder_attn_layer_norm = nn.LayerNorm(self.embed_dim)
        self.fc1 = nn.Linear(self.embed_dim, config.decoder_ffn_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, self.embed_dim)
        self.final_layer_norm = nn.LayerNorm(self.embed_dim)

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        layer_head_mask=None,
        cross_attn_layer_head_mask=None,
        past_key_value=None,
        output_attentions=False,
    ):
        """Returns (hidden_states, self_attn_weights, cross_attn_weights, present_key_value)."""
        self_past = past_key_value[:2] if past_key_value is not None else None
        cross_past = past_key_value[2:4] if past_key_value is not None and len(past_key_value) == 4 else None

        residual = hidden_states
        if self.pre_norm:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, self_weights, self_kv = self.self_attn(
            hidden_states, past_key_value=self_past, attention_mask=attention_mask, layer_head_mask=layer_head_mask,
            output_attentions=output_attentions,
        )
        hidden_states = residual + F.dropout(hidden_states, p=self.dropout, training=self.training)
        if not self.pre_norm:
            hidden_states = self.self_attn_layer_norm(hidden_states)

        cross_weights, cross_kv = None, ()
        if encoder_hidden_states is not None:
            residual = hidden_states
            if self.pre_norm:
                hidden_states = self.encoder_attn_layer_norm(hidden_states)
            hidden_states, cross_weights, cross_kv = self.encoder_attn(
                hidden_states, key_value_states=encoder_hidden_states, past_key_value=cross_past,
                attention_mask=encoder_attention_mask, layer_head_mask=cross_attn_layer_head_mask,
                output_attentions=output_attentions,
            )
            hidden_states = residual + F.dropout(hidden_states, p=self.dropout, training=self.training)
            if not self.pre_norm:
                hidden_states = self.encoder_attn_layer_norm(hidden_states)

        hidden_states = _feed_forward(self, hidden_states)
        return hidden_states, self_weights, cross_weights, tuple(self_kv) + tuple(cross_kv)


def _feed_forward(layer, hidden_states):
    """fc1 -> activation -> fc2 with residual; the norm sits before (pre-norm) or after it."""
    residual = hidden_states
    if layer.pre_norm:
        hidden_states = layer.final_layer_norm(hidden_states)
    hidden_states = layer.activation_fn(layer.fc1(hidden_states))
    hidden_states = F.dropout(hidden_states, p=layer.activation_dropout, training=layer.training)
    hidden_states = F.dropout(layer.fc2(hidden_states), p=layer.dropout, training=layer.training)
    hidden_states = residual + hidden_states
    if not layer.pre_norm:
        hidden_states = layer.final_layer_norm(hidden_states)
    return hidden_states


class BartClassificationHead(nn.Module):
    """Sentence-level head on the final <eos> state: dropout -> dense -> tanh -> dropout -> out_proj."""

    def __init__(self, input_dim: int, inner_dim: int, num_classes: int, pooler_dropout: float):
        super().__init__()
        self.dense = nn.Linear(input_dim, inner_dim)
        self.dropout = nn.Dropout(p=pooler_dropout)
        self.out_proj = nn.Linear(inner_dim, num_classes)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = torch.tanh(self.dense(self.dropout(hidden_states)))
        return self.out_proj(self.dropout(hidden_states))


# ============================================================================ base class


class BartPreTrainedModel(PreTrainedModel):
    config_class = BartConfig
    base_model_prefix = "model"
    _keys_to_ignore_on_load_unexpected = [r"encoder\.version", r"decoder\.version"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, SinusoidalPositionalEmbedding):
            if not module.weight.is_meta:
                module.reset_sinusoids()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    def save_pretrained(self, save_directory, *, state_dict=None, **kwargs) -> None:
        """As the base class, except that with `tie_word_embeddings=False` the encoder/decoder copies of
        the shared embedding are written too: transformers does not re-tie them on load in that case and
        would otherwise initialise them randomly."""
        if state_dict is None and not getattr(self.config, "tie_word_embeddings", True):
            state_dict = _state_dict_with_embedding_copies(self)
        super().save_pretrained(save_directory, state_dict=state_dict, **kwargs)


def _state_dict_with_embedding_copies(model: nn.Module) -> dict[str, torch.Tensor]:
    state_dict = model.state_dict()
    seen: set[tuple] = set()
    out = {}
    for key, tensor in state_dict.items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        out[key] = tensor.clone() if ident in seen else tensor
        seen.add(ident)
    return out


def _check_positions(length: int, max_positions: int, what: str) -> None:
    if length > max_positions:
        raise ValueError(
            f"{what} has {length} positions but this model supports at most max_position_embeddings={max_positions}. "
            f"Truncate the input to {max_positions} tokens (e.g. tokenizer truncation=True, "
            f"max_length={max_positions})."
        )


# ============================================================================ encoder / decoder stacks


class BartEncoder(BartPreTrainedModel):
    """Token + position embeddings followed by `config.encoder_layers` self-attention layers."""

    def __init__(self, config, embed_tokens: nn.Embedding | None = None):
        super().__init__(config)
        variant = _variant(config)
        self.variant = variant
        self.dropout = config.dropout
        self.layerdrop = config.encoder_layerdrop
        self.padding_idx = config.pad_token_id
        self.max_source_positions = config.max_position_embeddings
        self.embed_scale = _embed_scale(config)
        if embed_tokens is None:
            embed_tokens = _token_embedding(config.vocab_size, config, variant)
        self.embed_tokens = embed_tokens
        self.embed_positions = _position_embedding(config, variant)
        self.layers = nn.ModuleList([BartEncoderLayer(config) for _ in range(config.encoder_layers)])
        if variant.embedding_norm:
            self.layernorm_embedding = nn.LayerNorm(config.d_model)
        if variant.final_norm:
            self.layer_norm = nn.LayerNorm(config.d_model)

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        head_mask=None,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        config = self.config
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        return_dict = return_dict if return_dict is not None else config.use_return_dict

        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        if input_ids is not None:
            check_input_ids(input_ids, self.embed_tokens.num_embeddings, "input_ids")
            inputs_embeds = self.embed_tokens(input_ids)
            if not self.variant.scale_inside_embedding:
                inputs_embeds = inputs_embeds * self.embed_scale
        elif inputs_embeds is None:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        batch_size, seq_len = inputs_embeds.shape[:2]
        if seq_len == 0:
            raise ValueError("inputs_embeds has no positions; every row needs at least one token.")
        _check_positions(seq_len, config.max_position_embeddings, "The encoder input")
        if attention_mask is not None and tuple(attention_mask.shape) != (batch_size, seq_len):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but the input is [{batch_size}, {seq_len}]."
            )

        positions = torch.arange(seq_len, device=inputs_embeds.device)
        hidden_states = inputs_embeds + self.embed_positions(positions, input_ids).to(inputs_embeds.dtype)
        if self.variant.embedding_norm:
            hidden_states = self.layernorm_embedding(hidden_states)
        hidden_states = F.dropout(hidden_states, p=self.dropout, training=self.training)

        additive_mask = None
        if attention_mask is not None:
            additive_mask = padding_mask_to_additive(attention_mask, hidden_states.dtype, tgt_len=1)
        _check_head_mask(head_mask, len(self.layers), "head_mask")

        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for idx, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if _layer_dropped(self):
                layer_attn = None
            else:
                hidden_states, layer_attn = layer(
                    hidden_states, additive_mask, head_mask[idx] if head_mask is not None else None,
                    output_attentions=output_attentions,
                )
            if output_attentions:
                all_attentions += (layer_attn,)
        if self.variant.final_norm:
            hidden_states = self.layer_norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        if not return_dict:
            return tuple(v for v in (hidden_states, all_hidden_states, all_attentions) if v is not None)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden_states,
                               attentions=all_attentions)


class BartDecoder(BartPreTrainedModel):
    """Causal self-attention + cross-attention layers with a KV cache in the contract format."""

    def __init__(self, config, embed_tokens: nn.Embedding | None = None):
        super().__init__(config)
        variant = _variant(config)
        self.variant = variant
        self.dropout = config.dropout
        self.layerdrop = config.decoder_layerdrop
        self.padding_idx = config.pad_token_id
        self.max_target_positions = config.max_position_embeddings
        self.embed_scale = _embed_scale(config)
        vocab = getattr(config, "decoder_vocab_size", None) or config.vocab_size
        self.embed_tokens = embed_tokens if embed_tokens is not None else _token_embedding(vocab, config, variant)
        self.embed_positions = _position_embedding(config, variant)
        self.layers = nn.ModuleList([BartDecoderLayer(config) for _ in range(config.decoder_layers)])
        if variant.embedding_norm:
            self.layernorm_embedding = nn.LayerNorm(config.d_model)
        if variant.final_norm:
            self.layer_norm = nn.LayerNorm(config.d_model)

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        head_mask=None,
        cross_attn_head_mask=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache_position=None,
        position_ids=None,
    ):
        """`position_ids` [batch, new_tokens] (our extension) gives each row its own positions, for rows
        whose cached prefix is left-padded (continuous batching); by default positions continue from the
        cache length (`cache_position`) for every row."""
        config = self.config
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        use_cache = use_cache if use_cache is not None else config.use_cache
        return_dict = return_dict if return_dict is not None else config.use_return_dict

        past_key_values = check_legacy_cache(past_key_values, len(self.layers))
        past_len = past_key_values[0][0].shape[2] if past_key_values is not None else 0

        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of decoder_input_ids and decoder_inputs_embeds.")
        if input_ids is not None:
            if input_ids.dim() != 2 or input_ids.shape[1] != 1:  # single incremental steps come from generate()
                check_input_ids(input_ids, self.embed_tokens.num_embeddings, "decoder_input_ids")
            inputs_embeds = self.embed_tokens(input_ids)
        if not self.variant.scale_inside_embedding:
            inputs_embeds = inputs_embeds * self.embed_scale
        batch_size, seq_len = inputs_embeds.shape[:2]
        _check_positions(past_len + seq_len, config.max_position_embeddings, "The decoder sequence")

        if position_ids is None:
            position_ids = cache_position
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + seq_len, device=inputs_embeds.device)
        hidden_states = inputs_embeds + self.embed_positions(position_ids, input_ids).to(inputs_embeds.dtype)
        if self.variant.embedding_norm:
            hidden_states = self.layernorm_embedding(hidden_states)
        hidden_states = F.dropout(hidden_states, p=self.dropout, training=self.training)

        self_mask = _decoder_self_attention_mask(attention_mask, batch_size, seq_len, past_len, hidden_states)
        cross_mask = None
        if encoder_hidden_states is not None and encoder_attention_mask is not None:
            cross_mask = padding_mask_to_additive(encoder_attention_mask, hidden_states.dtype, tgt_len=1)
        _check_head_mask(head_mask, len(self.layers), "head_mask")
        _check_head_mask(cross_attn_head_mask, len(self.layers), "cross_attn_head_mask")

        all_hidden_states = () if output_hidden_states else None
        all_self_attns = () if output_attentions else None
        all_cross_attentions = () if (output_attentions and encoder_hidden_states is not None) else None
        next_cache = () if use_cache else None
        for idx, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if _layer_dropped(self):
                continue
            hidden_states, self_attn, cross_attn, present = layer(
                hidden_states,
                attention_mask=self_mask,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=cross_mask,
                layer_head_mask=head_mask[idx] if head_mask is not None else None,
                cross_attn_layer_head_mask=cross_attn_head_mask[idx] if cross_attn_head_mask is not None else None,
                past_key_value=past_key_values[idx] if past_key_values is not None else None,
                output_attentions=output_attentions,
            )
            if use_cache:
                next_cache += (present,)
            if output_attentions:
                all_self_attns += (self_attn,)
                if encoder_hidden_states is not None:
                    all_cross_attentions += (cross_attn,)
        if self.variant.final_norm:
            hidden_states = self.layer_norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        if not return_dict:
            return tuple(
                v for v in (hidden_states, next_cache, all_hidden_states, all_self_attns, all_cross_attentions)
                if v is not None
            )
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states,
            past_key_values=next_cache,
            hidden_states=all_hidden_states,
            attentions=all_self_attns,
            cross_attentions=all_cross_attentions,
        )


def _layer_dropped(stack) -> bool:
    """LayerDrop: skip this layer (training only); the coin is drawn whenever the reference draws it."""
    if not (stack.training or stack.variant.layerdrop_draws_in_eval):
        return False
    coin = torch.rand([])
    return bool(stack.training and coin < stack.layerdrop)


def _decoder_self_attention_mask(attention_mask, batch_size, seq_len, past_len, hidden_states):
    """Causal mask over cache + new tokens, combined with the decoder padding mask when given.

    A single new token with no padding mask needs no mask at all (it may see every cached key), which
    keeps SDPA on its fastest path during generation.
    """
    dtype, device = hidden_states.dtype, hidden_states.device
    kv_len = past_len + seq_len
    causal = None if seq_len == 1 else causal_additive_mask(seq_len, kv_len, dtype, device, past_len=past_len)
    if attention_mask is None:
        return causal
    if tuple(attention_mask.shape) != (batch_size, kv_len):
        raise ValueError(
            f"decoder_attention_mask has shape {tuple(attention_mask.shape)}; expected [{batch_size}, {kv_len}] "
            f"(cached {past_len} + new {seq_len} decoder positions)."
        )
    padding = padding_mask_to_additive(attention_mask, dtype, tgt_len=1)
    return combine_additive_masks(causal, padding)


def _check_head_mask(head_mask, num_layers: int, name: str) -> None:
    if head_mask is not None and head_mask.size(0) != num_layers:
        raise ValueError(
            f"The `{name}` should be specified for {num_layers} layers, but it is for {head_mask.size(0)}."
        )


# ============================================================================ models


class BartModel(BartPreTrainedModel):
    """The bare encoder-decoder (shared token embedding, encoder, decoder)."""

    _tied_weights_keys = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]

    def __init__(self, config):
        super().__init__(config)
        variant = _variant(config)
        if getattr(config, "share_encoder_decoder_embeddings", True):
            self.shared = _token_embedding(config.vocab_size, config, variant)
            self.encoder = BartEncoder(config, self.shared)
            self.decoder = BartDecoder(config, self.shared)
        else:  # Marian with separate encoder / decoder embeddings
            # Both have `vocab_size` rows (as in transformers); `decoder_vocab_size` sizes only the LM head.
            self.shared = None
            self.encoder = BartEncoder(config, _token_embedding(config.vocab_size, config, variant))
            self.decoder = BartDecoder(config, _token_embedding(config.vocab_size, config, variant))
        self.post_init()

    def _tie_weights(self) -> None:
        """`shared`, `encoder.embed_tokens` and `decoder.embed_tokens` are one tensor.

        Some checkpoints (e.g. facebook/bart-large-cnn) store it only under the decoder's name, so the
        tie starts from whichever of the three was actually loaded (is not on the meta device).
        """
        if self.shared is None:
            return
        modules = [self.shared, self.encoder.embed_tokens, self.decoder.embed_tokens]
        source = next((m.weight for m in modules if not m.weight.is_meta), modules[0].weight)
        for module in modules:
            module.weight = source

    def get_input_embeddings(self):
        return self.shared if self.shared is not None else self.encoder.embed_tokens

    def set_input_embeddings(self, value):
        if self.shared is None:
            self.encoder.embed_tokens = value
            return
        self.shared = value
        self.encoder.embed_tokens = value
        self.decoder.embed_tokens = value

    def get_encoder(self):
        return self.encoder

    def get_decoder(self):
        return self.decoder

    def _default_decoder_input_ids(self, input_ids):
        """BART and mBART denoise: without decoder inputs they shift the encoder input right."""
        if isinstance(self.config, MBartConfig):
            return shift_tokens_right_mbart(input_ids, self.config.pad_token_id)
        if isinstance(self.config, BartConfig):
            return shift_tokens_right(input_ids, self.config.pad_token_id, self.config.decoder_start_token_id)
        return None

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        head_mask=None,
        decoder_head_mask=None,
        cross_attn_head_mask=None,
        encoder_outputs=None,
        past_key_values=None,
        inputs_embeds=None,
        decoder_inputs_embeds=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache_position=None,
        decoder_position_ids=None,
    ):
        config = self.config
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if input_ids is None:
                raise ValueError(
                    "If no `decoder_input_ids` or `decoder_inputs_embeds` are passed, `input_ids` cannot be `None`. "
                    "Please pass either `input_ids` or `decoder_input_ids` or `decoder_inputs_embeds`."
                )
            decoder_input_ids = self._default_decoder_input_ids(input_ids)
            if decoder_input_ids is None:
                raise ValueError(
                    f"{type(self).__name__} needs `decoder_input_ids` (or `decoder_inputs_embeds`, or `labels` on the "
                    "conditional-generation head)."
                )
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        use_cache = use_cache if use_cache is not None else config.use_cache
        return_dict = return_dict if return_dict is not None else config.use_return_dict

        encoder_outputs = encode_unless_given(
            self.encoder, encoder_outputs, return_dict, input_ids=input_ids, attention_mask=attention_mask,
            head_mask=head_mask, inputs_embeds=inputs_embeds, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )

        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs[0],
            encoder_attention_mask=attention_mask,
            head_mask=decoder_head_mask,
            cross_attn_head_mask=cross_attn_head_mask,
            past_key_values=past_key_values,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            cache_position=cache_position,
            position_ids=decoder_position_ids,
        )
        if not return_dict:
            return as_tuple(decoder_outputs) + as_tuple(encoder_outputs)
        return seq2seq_output(Seq2SeqModelOutput, decoder_outputs, encoder_outputs,
                              last_hidden_state=decoder_outputs.last_hidden_state)


class BartForConditionalGeneration(BartPreTrainedModel, GenerationMixin):
    """Encoder-decoder with the LM head (tied to the shared embedding) and `final_logits_bias`."""

    base_model_prefix = "model"
    main_input_name = "input_ids"
    _tied_weights_keys = ["lm_head.weight"]
    # Continuous batching (generation/continuous.py): rows may join with a left-padded decoder cache,
    # masked by decoder_attention_mask, and then need their own absolute positions.
    _supports_left_padded_decoder = True
    _decoder_position_ids_kwarg = "decoder_position_ids"
    _keys_to_ignore_on_load_missing = [r"final_logits_bias"]

    def __init__(self, config):
        super().__init__(config)
        self.model = BartModel(config)
        target_vocab = self._target_vocab_size(config)
        if _variant(config).final_logits_bias:
            self.register_buffer("final_logits_bias", torch.zeros((1, target_vocab)))
        else:
            self.final_logits_bias = None
        self.lm_head = nn.Linear(config.d_model, target_vocab, bias=False)
        self.generation_config = GenerationConfig.from_model_config(config) if self.can_generate() else None
        self.post_init()

    @staticmethod
    def _target_vocab_size(config) -> int:
        if getattr(config, "share_encoder_decoder_embeddings", True):
            return config.vocab_size
        return config.decoder_vocab_size

    def get_encoder(self):
        return self.model.get_encoder()

    def get_decoder(self):
        return self.model.get_decoder()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def _tie_embeddings(self) -> None:
        """The LM head shares the decoder's token embedding (== `shared` unless Marian keeps them apart)."""
        self.model._tie_weights()
        if getattr(self.config, "tie_word_embeddings", True):
            self.lm_head.weight = self.model.decoder.embed_tokens.weight

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return self._shift_labels(labels)

    def _shift_labels(self, labels: torch.Tensor) -> torch.Tensor:
        if isinstance(self.config, MBartConfig):
            return shift_tokens_right_mbart(labels, self.config.pad_token_id)
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        head_mask=None,
        decoder_head_mask=None,
        cross_attn_head_mask=None,
        encoder_outputs=None,
        past_key_values=None,
        inputs_embeds=None,
        decoder_inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache_position=None,
        decoder_position_ids=None,
    ):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self._shift_labels(labels)

        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            encoder_outputs=encoder_outputs,
            decoder_attention_mask=decoder_attention_mask,
            head_mask=head_mask,
            decoder_head_mask=decoder_head_mask,
            cross_attn_head_mask=cross_attn_head_mask,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            cache_position=cache_position,
            decoder_position_ids=decoder_position_ids,
        )
        lm_logits = self.lm_head(outputs[0])
        if self.final_logits_bias is not None:
            lm_logits = lm_logits + self.final_logits_bias.to(lm_logits.dtype)

        loss = None
        if labels is not None:
            if labels.shape[:2] != lm_logits.shape[:2]:
                raise ValueError(
                    f"labels have shape {tuple(labels.shape)} but the decoder produced logits for "
                    f"{tuple(lm_logits.shape[:2])} positions; pass labels without decoder_input_ids, or both of the "
                    "same length."
                )
            loss = token_cross_entropy(lm_logits, labels)

        if not return_dict:
            return with_loss(loss, (lm_logits,) + tuple(outputs[1:]))
        return seq2seq_head_output(Seq2SeqLMOutput, outputs, loss=loss, logits=lm_logits)


class BartForSequenceClassification(BartPreTrainedModel):
    """Classifies a sequence from the decoder state at its last <eos> token (BART's recipe)."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.model = BartModel(config)
        self.classification_head = BartClassificationHead(
            config.d_model, config.d_model, config.num_labels, config.classifier_dropout
        )
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        head_mask=None,
        decoder_head_mask=None,
        cross_attn_head_mask=None,
        encoder_outputs=None,
        inputs_embeds=None,
        decoder_inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache_position=None,
    ):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if labels is not None:
            use_cache = False
        if input_ids is None:
            raise NotImplementedError(
                f"{type(self).__name__} pools the hidden state at the <eos> tokens of input_ids; passing only "
                "inputs_embeds is not supported."
            )
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            head_mask=head_mask,
            decoder_head_mask=decoder_head_mask,
            cross_attn_head_mask=cross_attn_head_mask,
            encoder_outputs=encoder_outputs,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            cache_position=cache_position,
        )
        hidden_states = outputs[0]
        sentence_representation = _last_eos_states(input_ids, hidden_states, self.config.eos_token_id)
        logits = self.classification_head(sentence_representation)

        loss = sequence_classification_loss(logits, labels, self.config) if labels is not None else None
        if not return_dict:
            return with_loss(loss, (logits,) + tuple(outputs[1:]))
        return seq2seq_head_output(Seq2SeqSequenceClassifierOutput, outputs, loss=loss, logits=logits)


def _last_eos_states(input_ids: torch.Tensor, hidden_states: torch.Tensor, eos_token_id) -> torch.Tensor:
    """Decoder state at each row's last <eos>; rows must share the <eos> count, as in transformers."""
    if isinstance(eos_token_id, (list, tuple)):
        eos_token_id = eos_token_id[0]
    if input_ids.shape[1] != hidden_states.shape[1]:
        raise ValueError(
            "BartForSequenceClassification pools the decoder states at the <eos> tokens of input_ids, so decoder "
            f"inputs must be as long as input_ids ({input_ids.shape[1]} != {hidden_states.shape[1]})."
        )
    eos_mask = input_ids.eq(eos_token_id).to(hidden_states.device)
    counts = eos_mask.sum(1)
    if len(torch.unique_consecutive(counts)) > 1:
        raise ValueError(
            f"All examples must have the same number of <eos> tokens (eos_token_id={eos_token_id}); per-row counts "
            f"are {counts.tolist()}. End every row with exactly one eos token."
        )
    if int(counts[0]) == 0:
        raise ValueError(
            f"No row contains the <eos> token (id {eos_token_id}); BartForSequenceClassification classifies from the "
            "last <eos>. Tokenize with special tokens enabled."
        )
    return hidden_states[eos_mask, :].view(hidden_states.size(0), -1, hidden_states.size(-1))[:, -1, :]


def shift_tokens_right_mbart(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """mBART's shift: each row's last non-pad token (the target language id) moves to the front.

    mBART has no single `decoder_start_token_id`; -100 label padding becomes `pad_token_id` first.
    """
    if pad_token_id is None:
        raise ValueError("config.pad_token_id must be set to build mBART decoder inputs from labels.")
    shifted = input_ids.clone()
    shifted.masked_fill_(shifted == -100, pad_token_id)
    index_of_eos = (shifted.ne(pad_token_id).sum(dim=1) - 1).unsqueeze(-1)
    if bool((index_of_eos < 0).any()):
        row = int((index_of_eos.squeeze(-1) < 0).nonzero()[0])
        raise ValueError(
            f"labels row {row} holds only padding; mBART needs a language id token at the end of every row."
        )
    decoder_start_tokens = shifted.gather(1, index_of_eos).squeeze(-1)
    shifted[:, 1:] = shifted[:, :-1].clone()
    shifted[:, 0] = decoder_start_tokens
    return shifted


# ============================================================================ family classes
# Thin subclasses: the family only selects its config class (and with it the BartVariant).


class MBartPreTrainedModel(BartPreTrainedModel):
    config_class = MBartConfig


class MBartModel(BartModel):
    config_class = MBartConfig


class MBartForConditionalGeneration(BartForConditionalGeneration):
    config_class = MBartConfig


class MarianPreTrainedModel(BartPreTrainedModel):
    config_class = MarianConfig


class MarianModel(BartModel):
    config_class = MarianConfig
    # Computed sinusoids, rebuilt on load: absent from MarianMTModel checkpoints by design.
    _keys_to_ignore_on_load_missing = [r"encoder\.embed_positions\.weight", r"decoder\.embed_positions\.weight"]


class MarianMTModel(BartForConditionalGeneration):
    config_class = MarianConfig
    # The sinusoidal tables are computed, not learned: transformers never saves them.
    _keys_to_ignore_on_load_missing = [r"final_logits_bias", r"encoder\.embed_positions\.weight",
                                       r"decoder\.embed_positions\.weight"]
    _keys_to_ignore_on_save = [r"model\.encoder\.embed_positions\.weight", r"model\.decoder\.embed_positions\.weight"]


class PegasusPreTrainedModel(BartPreTrainedModel):
    config_class = PegasusConfig


class PegasusModel(BartModel):
    config_class = PegasusConfig


class PegasusForConditionalGeneration(BartForConditionalGeneration):
    config_class = PegasusConfig


__all__ = [
    "BartConfig", "BartModel", "BartForConditionalGeneration", "BartForSequenceClassification", "BartPreTrainedModel",
    "MBartConfig", "MBartModel", "MBartForConditionalGeneration",
    "MarianConfig", "MarianModel", "MarianMTModel",
    "PegasusConfig", "PegasusModel", "PegasusForConditionalGeneration",
    "BartVariant", "shift_tokens_right_mbart",
]
