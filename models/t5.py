"""T5, mT5 and Flan-T5: encoder-decoder with relative position buckets and RMS layer norms.

What makes T5 differ from the BART family (and why it has its own file):
- no absolute positions: each stack's first self-attention layer owns a `relative_attention_bias`
  table indexed by log-spaced relative-distance buckets (bidirectional in the encoder,
  unidirectional in the decoder); the bias is computed once per forward and shared by every layer;
- attention scores are NOT scaled by 1/sqrt(head_dim) (the scale is folded into the init);
- `T5LayerNorm` is an RMS norm (no mean, no bias) with the variance taken in float32;
- feed-forward is `relu` (T5) or gated (`gated-gelu`: mT5, Flan-T5, T5 v1.1);
- with tied embeddings (T5) the decoder output is scaled by `d_model**-0.5` before the LM head;
  mT5 / Flan-T5 keep an untied `lm_head` and no rescale;
- `wo` stays float32 when the rest is loaded in float16 (`_keep_in_fp32_modules`).

Parameter names are transformers' (`shared`, `encoder.block.0.layer.0.SelfAttention.q`,
`encoder.block.0.layer.0.SelfAttention.relative_attention_bias`, `decoder.block.0.layer.1.EncDecAttention.k`,
`...layer.2.DenseReluDense.wi_0`, `final_layer_norm`, `lm_head`), so checkpoints load 1:1.

KV cache: the project's contract format, a tuple over decoder layers of
`(self_k, self_v, cross_k, cross_v)`, each `[batch, heads, seq, d_kv]`.

Not supported: `T5ForSequenceClassification`, `T5ForTokenClassification`, `T5ForQuestionAnswering`,
head pruning, model parallelism, gradient checkpointing.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import nn

from .configuration_t5 import MT5Config, T5Config, parse_feed_forward_proj
from .configuration_utils import PretrainedConfig
from .generation import GenerationConfig, GenerationMixin
from .layers import (
    attend,
    causal_additive_mask,
    check_input_ids,
    check_legacy_cache,
    combine_additive_masks,
    get_activation,
    merge_heads,
    padding_mask_to_additive,
    shift_tokens_right,
    split_heads,
    token_cross_entropy,
    uses_eager_attention,
)
from .modeling_utils import PreTrainedModel
from .outputs import (
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    as_tuple,
    encode_unless_given,
    seq2seq_output,
    with_loss,
)

# ============================================================================ building blocks


class T5LayerNorm(nn.Module):
    """RMS norm without mean subtraction or bias; the variance is always computed in float32."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            hidden_states = hidden_states.to(self.weight.dtype)
        return self.weight * hidden_states


def _to_wo_dtype(hidden_states: torch.Tensor, wo: nn.Linear) -> torch.Tensor:
    """`wo` may be kept in float32 inside a float16 model; feed it its own dtype."""
    if hidden_states.dtype != wo.weight.dtype and wo.weight.dtype != torch.int8:
        return hidden_states.to(wo.weight.dtype)
    return hidden_states


class T5DenseActDense(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = get_activation(config.dense_act_fn)

    def forward(self, hidden_states):
        hidden_states = self.dropout(self.act(self.wi(hidden_states)))
        return self.wo(_to_wo_dtype(hidden_states, self.wo))


class T5DenseGatedActDense(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = get_activation(config.dense_act_fn)

    def forward(self, hidden_states):
        hidden_states = self.act(self.wi_0(hidden_states)) * self.wi_1(hidden_states)
        hidden_states = self.dropout(hidden_states)
        return self.wo(_to_wo_dtype(hidden_states, self.wo))


class T5LayerFF(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(config) if config.is_gated_act else T5DenseActDense(config)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, hidden_states):
        return hidden_states + self.dropout(self.DenseReluDense(self.layer_norm(hidden_states)))


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool = True, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
    """Mesh TensorFlow's bucketing of `key_position - query_position`.

    Half the buckets hold exact small distances, the rest log-spaced distances up to `max_distance`
    (everything farther shares the last bucket). Bidirectional (encoder) buckets also encode the
    sign; the decoder only ever sees the past, so future positions collapse to bucket 0.
    """
    relative_buckets = 0
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    relative_position_if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    relative_position_if_large = torch.min(
        relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1)
    )
    relative_buckets += torch.where(is_small, relative_position, relative_position_if_large)
    return relative_buckets


class T5Attention(nn.Module):
    """Unscaled multi-head attention; `position_bias` (relative bias + mask) is added to the scores."""

    def __init__(self, config, has_relative_attention_bias: bool = False):
        super().__init__()
        self.is_decoder = config.is_decoder
        self.has_relative_attention_bias = has_relative_attention_bias
        self.relative_attention_num_buckets = config.relative_attention_num_buckets
        self.relative_attention_max_distance = config.relative_attention_max_distance
        self.d_model = config.d_model
        self.key_value_proj_dim = config.d_kv
        self.n_heads = config.num_heads
        self.dropout = config.dropout_rate
        self.inner_dim = self.n_heads * self.key_value_proj_dim
        self.eager = uses_eager_attention(config)
        self.q = nn.Linear(self.d_model, self.inner_dim, bias=False)
        self.k = nn.Linear(self.d_model, self.inner_dim, bias=False)
        self.v = nn.Linear(self.d_model, self.inner_dim, bias=False)
        self.o = nn.Linear(self.inner_dim, self.d_model, bias=False)
        if self.has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(self.relative_attention_num_buckets, self.n_heads)

    def compute_bias(self, query_positions: torch.Tensor, key_length: int) -> torch.Tensor:
        """[1, heads, len(query_positions), key_length] learned bias for each relative distance bucket."""
        device = self.relative_attention_bias.weight.device
        memory_position = torch.arange(key_length, dtype=torch.long, device=device)[None, :]
        relative_position = memory_position - query_positions.to(device)[:, None]
        buckets = relative_position_bucket(
            relative_position,
            bidirectional=not self.is_decoder,
            num_buckets=self.relative_attention_num_buckets,
            max_distance=self.relative_attention_max_distance,
        )
        return self.relative_attention_bias(buckets).permute([2, 0, 1]).unsqueeze(0)

    def forward(self, hidden_states, position_bias, key_value_states=None, past_key_value=None, layer_head_mask=None,
                output_attentions=False):
        """Returns (output, attention_probs or None, (key, value)) — the pair is what the cache stores."""
        query = split_heads(self.q(hidden_states), self.n_heads)
        if key_value_states is None:
            key = split_heads(self.k(hidden_states), self.n_heads)
            value = split_heads(self.v(hidden_states), self.n_heads)
            if past_key_value is not None:
                key = torch.cat([past_key_value[0], key], dim=2)
                value = torch.cat([past_key_value[1], value], dim=2)
        elif past_key_value is not None:
            key, value = past_key_value
        else:
            key = split_heads(self.k(key_value_states), self.n_heads)
            value = split_heads(self.v(key_value_states), self.n_heads)
        if position_bias is not None:
            position_bias = position_bias.to(query.dtype)
        dropout = self.dropout if self.training else 0.0
        output, weights = attend(query, key, value, position_bias, dropout_p=dropout, scale=1.0,
                                 head_mask=layer_head_mask, need_weights=output_attentions, eager=self.eager)
        return self.o(merge_heads(output)), weights, (key, value)


class T5LayerSelfAttention(nn.Module):
    def __init__(self, config, has_relative_attention_bias: bool = False):
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_attention_bias=has_relative_attention_bias)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, hidden_states, position_bias, layer_head_mask=None, past_key_value=None, output_attentions=False):
        out, weights, kv = self.SelfAttention(
            self.layer_norm(hidden_states), position_bias, past_key_value=past_key_value,
            layer_head_mask=layer_head_mask, output_attentions=output_attentions,
        )
        return hidden_states + self.dropout(out), weights, kv


class T5LayerCrossAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.EncDecAttention = T5Attention(config, has_relative_attention_bias=False)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, hidden_states, key_value_states, position_bias, layer_head_mask=None, past_key_value=None,
                output_attentions=False):
        out, weights, kv = self.EncDecAttention(
            self.layer_norm(hidden_states), position_bias, key_value_states=key_value_states,
            past_key_value=past_key_value, layer_head_mask=layer_head_mask, output_attentions=output_attentions,
        )
        return hidden_states + self.dropout(out), weights, kv


def _clamp_fp16(hidden_states: torch.Tensor) -> torch.Tensor:
    """The reference's fp16 guard: clamp only when an inf appeared."""
    if hidden_states.dtype != torch.float16:
        return hidden_states
    clamp_value = torch.where(
        torch.isinf(hidden_states).any(),
        torch.finfo(hidden_states.dtype).max - 1000,
        torch.finfo(hidden_states.dtype).max,
    )
    return torch.clamp(hidden_states, min=-clamp_value, max=clamp_value)


class T5Block(nn.Module):
    def __init__(self, config, has_relative_attention_bias: bool = False):
        super().__init__()
        self.is_decoder = config.is_decoder
        self.layer = nn.ModuleList()
        self.layer.append(T5LayerSelfAttention(config, has_relative_attention_bias=has_relative_attention_bias))
        if self.is_decoder:
            self.layer.append(T5LayerCrossAttention(config))
        self.layer.append(T5LayerFF(config))

    def forward(self, hidden_states, position_bias, encoder_hidden_states=None, encoder_decoder_position_bias=None,
                layer_head_mask=None, cross_attn_layer_head_mask=None, past_key_value=None, output_attentions=False):
        """Returns (hidden_states, self_attn_weights, cross_attn_weights, present_key_value)."""
        self_past = past_key_value[:2] if past_key_value is not None else None
        cross_past = past_key_value[2:4] if past_key_value is not None and len(past_key_value) == 4 else None
        hidden_states, self_weights, self_kv = self.layer[0](
            hidden_states, position_bias, layer_head_mask=layer_head_mask, past_key_value=self_past,
            output_attentions=output_attentions,
        )
        hidden_states = _clamp_fp16(hidden_states)
        cross_weights, cross_kv = None, ()
        if self.is_decoder and encoder_hidden_states is not None:
            hidden_states, cross_weights, cross_kv = self.layer[1](
                hidden_states, encoder_hidden_states, encoder_decoder_position_bias,
                layer_head_mask=cross_attn_layer_head_mask, past_key_value=cross_past,
                output_attentions=output_attentions,
            )
            hidden_states = _clamp_fp16(hidden_states)
        hidden_states = _clamp_fp16(self.layer[-1](hidden_states))
        return hidden_states, self_weights, cross_weights, tuple(self_kv) + tuple(cross_kv)


# ============================================================================ base class and stack


class T5PreTrainedModel(PreTrainedModel):
    config_class = T5Config
    base_model_prefix = "transformer"
    _keep_in_fp32_modules = ["wo"]

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' T5 init (std folded from the missing 1/sqrt(d) attention scale)."""
        factor = self.config.initializer_factor
        d_model, d_kv, n_heads, d_ff = self.config.d_model, self.config.d_kv, self.config.num_heads, self.config.d_ff
        if isinstance(module, T5LayerNorm):
            module.weight.data.fill_(factor * 1.0)
        elif isinstance(module, (T5Model, T5ForConditionalGeneration, T5EncoderModel)):
            module.shared.weight.data.normal_(mean=0.0, std=factor * 1.0)
            if hasattr(module, "lm_head") and not self.config.tie_word_embeddings:
                module.lm_head.weight.data.normal_(mean=0.0, std=factor * 1.0)
        elif isinstance(module, T5DenseActDense):
            module.wi.weight.data.normal_(mean=0.0, std=factor * (d_model**-0.5))
            module.wo.weight.data.normal_(mean=0.0, std=factor * (d_ff**-0.5))
        elif isinstance(module, T5DenseGatedActDense):
            module.wi_0.weight.data.normal_(mean=0.0, std=factor * (d_model**-0.5))
            module.wi_1.weight.data.normal_(mean=0.0, std=factor * (d_model**-0.5))
            module.wo.weight.data.normal_(mean=0.0, std=factor * (d_ff**-0.5))
        elif isinstance(module, T5Attention):
            module.q.weight.data.normal_(mean=0.0, std=factor * ((d_model * d_kv) ** -0.5))
            module.k.weight.data.normal_(mean=0.0, std=factor * (d_model**-0.5))
            module.v.weight.data.normal_(mean=0.0, std=factor * (d_model**-0.5))
            module.o.weight.data.normal_(mean=0.0, std=factor * ((n_heads * d_kv) ** -0.5))
            if module.has_relative_attention_bias:
                module.relative_attention_bias.weight.data.normal_(mean=0.0, std=factor * (d_model**-0.5))
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            # A lone module materialised on load (e.g. a missing untied lm_head / shared embedding);
            # inside attention / feed-forward blocks the branches above run afterwards and win.
            module.weight.data.normal_(mean=0.0, std=factor * 1.0)

    def _shift_right(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Decoder inputs from labels: decoder_start_token_id (the pad id in T5) first, -100 -> pad."""
        if self.config.decoder_start_token_id is None:
            raise ValueError(
                "config.decoder_start_token_id must be set to build decoder inputs from labels; in T5 it is usually "
                "the pad_token_id (0). Set it in config.json or pass decoder_start_token_id=... to from_pretrained."
            )
        return shift_tokens_right(input_ids, self.config.pad_token_id, self.config.decoder_start_token_id)


class T5Stack(T5PreTrainedModel):
    """Encoder (`is_decoder=False`) or decoder stack of T5 blocks sharing one position bias."""

    def __init__(self, config, embed_tokens: nn.Embedding | None = None):
        super().__init__(config)
        self.embed_tokens = embed_tokens
        self.is_decoder = config.is_decoder
        self.block = nn.ModuleList(
            [T5Block(config, has_relative_attention_bias=(i == 0)) for i in range(config.num_layers)]
        )
        self.final_layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, new_embeddings):
        self.embed_tokens = new_embeddings

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        inputs_embeds=None,
        head_mask=None,
        cross_attn_head_mask=None,
        past_key_values=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache_position=None,
    ):
        config = self.config
        use_cache = use_cache if use_cache is not None else config.use_cache
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        return_dict = return_dict if return_dict is not None else config.use_return_dict
        prefix = "decoder_" if self.is_decoder else ""

        if input_ids is not None and inputs_embeds is not None:
            raise ValueError(f"You cannot specify both {prefix}input_ids and {prefix}inputs_embeds at the same time")
        if input_ids is not None:
            if not self.is_decoder or input_ids.dim() != 2 or input_ids.shape[1] != 1:
                check_input_ids(input_ids, self.embed_tokens.num_embeddings, f"{prefix}input_ids")
            inputs_embeds = self.embed_tokens(input_ids)
        elif inputs_embeds is None:
            raise ValueError(f"You have to specify either {prefix}input_ids or {prefix}inputs_embeds")
        batch_size, seq_len = inputs_embeds.shape[:2]
        if seq_len == 0:
            raise ValueError(f"{prefix}inputs_embeds has no positions; every row needs at least one token.")
        if use_cache and not self.is_decoder:
            raise ValueError("`use_cache` can only be set to `True` if the T5 stack is used as a decoder")
        if not self.is_decoder:
            past_key_values = None
        past_key_values = check_legacy_cache(past_key_values, len(self.block))
        past_len = past_key_values[0][0].shape[2] if past_key_values is not None else 0
        if cache_position is None:
            cache_position = torch.arange(past_len, past_len + seq_len, device=inputs_embeds.device)
        dtype = inputs_embeds.dtype

        # One bias for all layers: relative-position bias (from block 0) plus the attention mask.
        mask = self._self_attention_mask(attention_mask, batch_size, seq_len, past_len, inputs_embeds)
        bias = self.block[0].layer[0].SelfAttention.compute_bias(cache_position, past_len + seq_len)
        position_bias = combine_additive_masks(bias.to(dtype), mask)
        encoder_decoder_position_bias = None
        if self.is_decoder and encoder_hidden_states is not None and encoder_attention_mask is not None:
            encoder_decoder_position_bias = padding_mask_to_additive(encoder_attention_mask, dtype, tgt_len=1)

        head_mask = _per_layer_head_mask(head_mask, len(self.block))
        cross_attn_head_mask = _per_layer_head_mask(cross_attn_head_mask, len(self.block))
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        all_cross_attentions = () if (output_attentions and self.is_decoder) else None
        next_cache = () if use_cache else None
        hidden_states = self.dropout(inputs_embeds)
        for i, block in enumerate(self.block):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, self_weights, cross_weights, present = block(
                hidden_states,
                position_bias,
                encoder_hidden_states=encoder_hidden_states,
                encoder_decoder_position_bias=encoder_decoder_position_bias,
                layer_head_mask=head_mask[i],
                cross_attn_layer_head_mask=cross_attn_head_mask[i],
                past_key_value=past_key_values[i] if past_key_values is not None else None,
                output_attentions=output_attentions,
            )
            if use_cache:
                next_cache += (present,)
            if output_attentions:
                all_attentions += (self_weights,)
                if self.is_decoder:
                    all_cross_attentions += (cross_weights,)
        hidden_states = self.dropout(self.final_layer_norm(hidden_states))
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        if not return_dict:
            return tuple(
                v for v in (hidden_states, next_cache, all_hidden_states, all_attentions, all_cross_attentions)
                if v is not None
            )
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states,
            past_key_values=next_cache,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            cross_attentions=all_cross_attentions,
        )

    def _self_attention_mask(self, attention_mask, batch_size, seq_len, past_len, inputs_embeds):
        dtype, device = inputs_embeds.dtype, inputs_embeds.device
        kv_len = past_len + seq_len
        causal = None
        if self.is_decoder and seq_len > 1:
            causal = causal_additive_mask(seq_len, kv_len, dtype, device, past_len=past_len)
        if attention_mask is None:
            return causal
        if tuple(attention_mask.shape) != (batch_size, kv_len):
            name = "decoder_attention_mask" if self.is_decoder else "attention_mask"
            raise ValueError(
                f"{name} has shape {tuple(attention_mask.shape)}; expected [{batch_size}, {kv_len}]"
                + (f" (cached {past_len} + new {seq_len} positions)." if self.is_decoder else ".")
            )
        return combine_additive_masks(causal, padding_mask_to_additive(attention_mask, dtype, tgt_len=1))


def _per_layer_head_mask(head_mask, num_layers: int) -> list:
    """[heads] (every layer) or [layers, heads] -> one [heads] mask (or None) per layer."""
    if head_mask is None:
        return [None] * num_layers
    if head_mask.dim() == 1:
        return [head_mask] * num_layers
    if head_mask.size(0) != num_layers:
        raise ValueError(f"head_mask must cover {num_layers} layers, got {head_mask.size(0)}.")
    return list(head_mask)


# ============================================================================ models


def _stack_configs(config) -> tuple[PretrainedConfig, PretrainedConfig]:
    """Encoder and decoder copies of the config, as transformers builds them."""
    encoder_config = copy.deepcopy(config)
    encoder_config.is_decoder = False
    encoder_config.use_cache = False
    encoder_config.tie_encoder_decoder = False
    decoder_config = copy.deepcopy(config)
    decoder_config.is_decoder = True
    decoder_config.tie_encoder_decoder = False
    decoder_config.num_layers = config.num_decoder_layers
    return encoder_config, decoder_config


# Old checkpoints carry a relative bias for cross-attention that no layer uses.
_UNUSED_CROSS_ATTENTION_BIAS = r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight"

_HEAD_MASK_WARNING = (
    "head_mask was given without decoder_head_mask: as in transformers, the decoder uses head_mask too. Pass "
    "decoder_head_mask=torch.ones(num_layers, num_heads) to avoid this."
)


class _T5EncoderDecoderMixin:
    """Shared by T5Model and T5ForConditionalGeneration: embeddings, stacks and the seq2seq pass."""

    def _build(self, config) -> None:
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        encoder_config, decoder_config = _stack_configs(config)
        self.encoder = T5Stack(encoder_config, self.shared)
        self.decoder = T5Stack(decoder_config, self.shared)

    def get_input_embeddings(self):
        return self.shared

    def set_input_embeddings(self, new_embeddings):
        self.shared = new_embeddings
        self.encoder.set_input_embeddings(new_embeddings)
        self.decoder.set_input_embeddings(new_embeddings)

    def _tie_weights(self) -> None:
        # The stacks hold the `shared` module itself; after a load by assignment make sure of it.
        self.encoder.embed_tokens = self.shared
        self.decoder.embed_tokens = self.shared

    def get_encoder(self):
        return self.encoder

    def get_decoder(self):
        return self.decoder

    def _encode_and_decode(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, head_mask,
                           decoder_head_mask, cross_attn_head_mask, encoder_outputs, past_key_values, inputs_embeds,
                           decoder_inputs_embeds, use_cache, output_attentions, output_hidden_states, return_dict,
                           cache_position):
        if head_mask is not None and decoder_head_mask is None:
            if self.config.num_layers == self.config.num_decoder_layers:
                warnings.warn(_HEAD_MASK_WARNING, FutureWarning)
                decoder_head_mask = head_mask
        encoder_outputs = encode_unless_given(
            self.encoder, encoder_outputs, return_dict, input_ids=input_ids, attention_mask=attention_mask,
            inputs_embeds=inputs_embeds, head_mask=head_mask, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            inputs_embeds=decoder_inputs_embeds,
            past_key_values=past_key_values,
            encoder_hidden_states=encoder_outputs[0],
            encoder_attention_mask=attention_mask,
            head_mask=decoder_head_mask,
            cross_attn_head_mask=cross_attn_head_mask,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            cache_position=cache_position,
        )
        return encoder_outputs, decoder_outputs


class T5Model(_T5EncoderDecoderMixin, T5PreTrainedModel):
    """The bare T5 encoder-decoder (decoder hidden states out, no LM head)."""

    _keys_to_ignore_on_load_unexpected = [_UNUSED_CROSS_ATTENTION_BIAS]
    _tied_weights_keys = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]

    def __init__(self, config):
        super().__init__(config)
        self._build(config)
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
        past_key_values=None,
        inputs_embeds=None,
        decoder_inputs_embeds=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache_position=None,
    ):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        encoder_outputs, decoder_outputs = self._encode_and_decode(
            input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, head_mask, decoder_head_mask,
            cross_attn_head_mask, encoder_outputs, past_key_values, inputs_embeds, decoder_inputs_embeds, use_cache,
            output_attentions, output_hidden_states, return_dict, cache_position,
        )
        if not return_dict:
            return as_tuple(decoder_outputs) + as_tuple(encoder_outputs)
        return seq2seq_output(Seq2SeqModelOutput, decoder_outputs, encoder_outputs,
                              last_hidden_state=decoder_outputs.last_hidden_state)


class T5ForConditionalGeneration(_T5EncoderDecoderMixin, T5PreTrainedModel, GenerationMixin):
    """T5 with its LM head: tied to `shared` with a d_model**-0.5 rescale (T5), or untied (mT5, Flan-T5)."""

    main_input_name = "input_ids"
    _keys_to_ignore_on_load_unexpected = [_UNUSED_CROSS_ATTENTION_BIAS]
    _tied_weights_keys = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"]
    # Continuous batching: a left-padded decoder cache (masked by decoder_attention_mask) needs no
    # per-row positions, because relative-position buckets only see distances between tokens.
    _supports_left_padded_decoder = True

    def __init__(self, config):
        super().__init__(config)
        self.model_dim = config.d_model
        self._build(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.generation_config = GenerationConfig.from_model_config(config) if self.can_generate() else None
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return self._shift_right(labels)

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
    ):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self._shift_right(labels)
        encoder_outputs, decoder_outputs = self._encode_and_decode(
            input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, head_mask, decoder_head_mask,
            cross_attn_head_mask, encoder_outputs, past_key_values, inputs_embeds, decoder_inputs_embeds, use_cache,
            output_attentions, output_hidden_states, return_dict, cache_position,
        )
        sequence_output = decoder_outputs[0]
        if self.config.tie_word_embeddings:
            # The tied embedding was trained at unit scale; rescale before projecting onto it.
            sequence_output = sequence_output * (self.model_dim**-0.5)
        lm_logits = self.lm_head(sequence_output)

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
            return with_loss(loss, (lm_logits,) + as_tuple(decoder_outputs)[1:] + as_tuple(encoder_outputs))
        return seq2seq_output(Seq2SeqLMOutput, decoder_outputs, encoder_outputs, loss=loss, logits=lm_logits)


class T5EncoderModel(T5PreTrainedModel):
    """Only T5's encoder (sentence embeddings, classification features); decoder weights are ignored."""

    _tied_weights_keys = ["encoder.embed_tokens.weight"]
    _keys_to_ignore_on_load_unexpected = [r"decoder", r"lm_head"]

    def __init__(self, config):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        # As transformers: the model's own config is marked encoder-only.
        config.use_cache = False
        config.is_encoder_decoder = False
        self.encoder = T5Stack(config, self.shared)
        self.post_init()

    def get_input_embeddings(self):
        return self.shared

    def set_input_embeddings(self, new_embeddings):
        self.shared = new_embeddings
        self.encoder.set_input_embeddings(new_embeddings)

    def _tie_weights(self) -> None:
        self.encoder.embed_tokens = self.shared

    def get_encoder(self):
        return self.encoder

    def forward(self, input_ids=None, attention_mask=None, head_mask=None, inputs_embeds=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        return self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            head_mask=head_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )


# ============================================================================ mT5: same code, its own config


class MT5Model(T5Model):
    config_class = MT5Config


class MT5ForConditionalGeneration(T5ForConditionalGeneration):
    config_class = MT5Config


class MT5EncoderModel(T5EncoderModel):
    config_class = MT5Config


__all__ = [
    "T5Config", "MT5Config", "T5PreTrainedModel", "T5Model", "T5ForConditionalGeneration", "T5EncoderModel",
    "MT5Model", "MT5ForConditionalGeneration", "MT5EncoderModel", "relative_position_bucket",
    "parse_feed_forward_proj",
]
