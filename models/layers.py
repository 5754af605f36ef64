"""Pieces shared by every model family: activations, attention masks, attention kernels, losses.

They live once here so that BERT, BART, T5, MEGA, ... differ only where the architectures really
differ (parameter names, norm placement, position schemes).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------- activations


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU written out as in the original BERT/GPT-2 code (bit-exact to HF)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


ACT2FN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_python": F.gelu,
    "gelu_new": gelu_new,
    "gelu_fast": gelu_fast,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,
    "relu": F.relu,
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
}


def get_activation(name) -> Callable[[torch.Tensor], torch.Tensor]:
    """Look up an activation by its config name; a callable is returned unchanged."""
    if callable(name):
        return name
    try:
        return ACT2FN[name]
    except KeyError:
        raise ValueError(f"activation {name!r} is not supported; choose one of {sorted(ACT2FN)}") from None


# ---------------------------------------------------------------------------------- masks


def padding_mask_to_additive(mask: torch.Tensor, dtype: torch.dtype, tgt_len: int | None = None) -> torch.Tensor:
    """[batch, src] 1/0 mask -> [batch, 1, tgt, src] additive mask (0 keep, dtype-min drop).

    The minimum of the dtype (not -inf) keeps fully padded rows finite, as transformers does.
    """
    bsz, src_len = mask.shape
    tgt_len = src_len if tgt_len is None else tgt_len
    expanded = mask[:, None, None, :].expand(bsz, 1, tgt_len, src_len).to(dtype)
    return (1.0 - expanded).masked_fill((1.0 - expanded).bool(), torch.finfo(dtype).min)


def causal_additive_mask(q_len: int, kv_len: int, dtype: torch.dtype, device, past_len: int | None = None) -> torch.Tensor:
    """[1, 1, q_len, kv_len] additive mask letting query i see keys up to past_len + i."""
    past_len = kv_len - q_len if past_len is None else past_len
    q_pos = torch.arange(q_len, device=device)[:, None] + past_len
    k_pos = torch.arange(kv_len, device=device)[None, :]
    mask = torch.zeros(q_len, kv_len, dtype=dtype, device=device)
    mask.masked_fill_(k_pos > q_pos, torch.finfo(dtype).min)
    return mask[None, None]


def combine_additive_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """Sum broadcastable additive masks, clamping at the dtype minimum so the sum never overflows."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    total = present[0]
    for m in present[1:]:
        total = total + m
    return total.clamp(min=torch.finfo(total.dtype).min)


def invert_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """1/0 keep mask of any shape -> additive mask (0 keep, dtype-min drop)."""
    mask = mask.to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


def expand_padding_mask(mask: torch.Tensor | None, dtype: torch.dtype, name: str) -> torch.Tensor | None:
    """[batch, key] (or [batch, query, key]) 1/0 mask -> additive mask; None when nothing is masked,
    so the fused kernel can run without a mask.

    Whether nothing is masked is only asked of a CPU mask: on an accelerator ``bool(mask.all())``
    waits for every queued kernel (the copy of this micro-batch and the forward of the one before),
    which would serialise the host with the device once per forward. There the additive mask is
    always built; an all-zero additive mask gives the same attention."""
    if mask is None:
        return None
    if mask.dim() == 3:
        return invert_mask(mask[:, None], dtype)
    if mask.dim() != 2:
        raise ValueError(f"{name} must have shape [batch, seq] or [batch, query, key], got {tuple(mask.shape)}")
    if mask.device.type == "cpu" and bool(mask.all()):
        return None
    return padding_mask_to_additive(mask, dtype, tgt_len=1)


# ---------------------------------------------------------------------------------- attention


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    additive_mask: torch.Tensor | None = None,
    *,
    dropout_p: float = 0.0,
    scale: float | None = None,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention over [batch, heads, len, dim] tensors.

    Uses PyTorch's fused SDPA kernel unless the caller asks for the attention probabilities
    (`output_attentions`), which only the explicit (eager) computation can return.
    """
    if not need_weights:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=additive_mask, dropout_p=dropout_p, scale=scale)
        return out, None
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if additive_mask is not None:
        scores = scores + additive_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs_dropped = F.dropout(probs, p=dropout_p, training=dropout_p > 0)
    return torch.matmul(probs_dropped, value), probs


def uses_eager_attention(config) -> bool:
    """`attn_implementation="eager"` (from_pretrained / config) selects the explicit attention path."""
    return getattr(config, "_attn_implementation_internal", None) == "eager"


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    additive_mask: torch.Tensor | None = None,
    *,
    dropout_p: float = 0.0,
    scale: float | None = None,
    head_mask: torch.Tensor | None = None,
    need_weights: bool = False,
    eager: bool = False,
    head_mask_after_dropout: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention entry point of every family: `attention` plus transformers' per-head mask and
    the `attn_implementation="eager"` switch. Returns (output, probabilities if `need_weights`).

    - `head_mask` ([heads] or [1, heads, 1, 1], 1 keep / 0 drop) multiplies each head's
      probabilities; SDPA cannot do that, so it forces the explicit computation.
    - `eager=True` always takes the explicit matmul-softmax path, bit-identical to transformers'
      eager attention; otherwise SDPA runs unless the probabilities are needed.
    - `head_mask_after_dropout` keeps each family's order of the two multiplications, which differs
      in training mode only: BERT-style (dropout, then head mask; the dropped probabilities are
      returned, as transformers' BERT returns them) or BART/T5-style (head mask, then dropout; the
      undropped probabilities are returned).
    """
    if head_mask is None:
        out, probs = attention(query, key, value, additive_mask, dropout_p=dropout_p, scale=scale,
                               need_weights=need_weights or eager)
        return out, (probs if need_weights else None)
    head_mask = head_mask.view(1, -1, 1, 1)
    _, probs = attention(query, key, value, additive_mask, scale=scale, need_weights=True)
    if head_mask_after_dropout:
        probs = F.dropout(probs, p=dropout_p, training=dropout_p > 0) * head_mask
        return torch.matmul(probs, value), (probs if need_weights else None)
    probs = probs * head_mask
    output = torch.matmul(F.dropout(probs, p=dropout_p, training=dropout_p > 0), value)
    return output, (probs if need_weights else None)


def expand_head_mask(head_mask: torch.Tensor | None, num_layers: int, dtype: torch.dtype) -> list:
    """transformers' `get_head_mask`: [heads] or [layers, heads] (1 keep, 0 drop) -> one mask per layer,
    each broadcastable to the [batch, heads, query, key] attention probabilities."""
    if head_mask is None:
        return [None] * num_layers
    if head_mask.dim() == 1:
        head_mask = head_mask[None, None, :, None, None].expand(num_layers, -1, -1, -1, -1)
    elif head_mask.dim() == 2:
        head_mask = head_mask[:, None, :, None, None]
    else:
        raise ValueError(
            f"head_mask must have shape [num_heads] or [num_layers, num_heads], got {tuple(head_mask.shape)}")
    return list(head_mask.to(dtype))


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[batch, len, heads*dim] -> [batch, heads, len, dim]."""
    bsz, length, _ = x.shape
    return x.view(bsz, length, num_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[batch, heads, len, dim] -> [batch, len, heads*dim]."""
    bsz, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(bsz, length, heads * dim)


# ---------------------------------------------------------------------------------- losses


def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    """Loss chosen by `config.problem_type`, inferred (and stored) the way transformers infers it.

    regression -> MSE, single-label -> cross-entropy, multi-label -> BCE with logits.
    """
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif num_labels > 1 and labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    labels = labels.to(logits.device)
    if config.problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze())
        return F.mse_loss(logits, labels)
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, num_items_in_batch=None,
                   ignore_index: int = -100, **_) -> torch.Tensor:
    """Next-token loss as transformers' `ForCausalLMLoss`: token i predicts label i+1, computed in fp32.

    With `num_items_in_batch` (gradient accumulation) the summed loss is divided by that count.
    """
    logits = logits.float()
    shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:].contiguous().to(logits.device)
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = F.cross_entropy(logits.view(-1, vocab_size), shift_labels.view(-1), ignore_index=ignore_index,
                           reduction=reduction)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    if num_items_in_batch is not None:
        loss = loss / num_items_in_batch
    return loss


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every position; label -100 is ignored (HF convention)."""
    return F.cross_entropy(logits.view(-1, logits.size(-1)), labels.to(logits.device).view(-1), ignore_index=-100)


def span_loss(start_logits, end_logits, start_positions, end_positions) -> torch.Tensor:
    """Extractive QA loss: mean of start and end cross-entropy; out-of-range positions are ignored."""
    if start_positions.dim() > 1:
        start_positions = start_positions.squeeze(-1)
    if end_positions.dim() > 1:
        end_positions = end_positions.squeeze(-1)
    ignored = start_logits.size(1)
    start_positions = start_positions.clamp(0, ignored)
    end_positions = end_positions.clamp(0, ignored)
    start = F.cross_entropy(start_logits, start_positions, ignore_index=ignored)
    end = F.cross_entropy(end_logits, end_positions, ignore_index=ignored)
    return (start + end) / 2


def span_logits_and_loss(logits: torch.Tensor, start_positions=None, end_positions=None):
    """Extractive QA head: [batch, seq, 2] logits -> (start_logits, end_logits, loss or None)."""
    start_logits, end_logits = logits.split(1, dim=-1)
    start_logits = start_logits.squeeze(-1).contiguous()
    end_logits = end_logits.squeeze(-1).contiguous()
    loss = None
    if start_positions is not None and end_positions is not None:
        loss = span_loss(start_logits, end_logits, start_positions, end_positions)
    return start_logits, end_logits, loss


def flatten_choices(x: torch.Tensor | None) -> torch.Tensor | None:
    """Multiple choice: [batch, choices, seq] ids / masks -> [batch * choices, seq]."""
    return x.reshape(-1, x.size(-1)) if x is not None else None


def flatten_choice_embeds(x: torch.Tensor | None) -> torch.Tensor | None:
    """Multiple choice: [batch, choices, seq, hidden] embeddings -> [batch * choices, seq, hidden]."""
    return x.reshape(-1, *x.shape[-2:]) if x is not None else None


def shift_tokens_right(input_ids: torch.Tensor, pad_token_id: int | None, decoder_start_token_id: int | None) -> torch.Tensor:
    """Build decoder inputs from labels: prepend the start token, drop the last, -100 -> pad."""
    if decoder_start_token_id is None:
        raise ValueError("config.decoder_start_token_id must be set to build decoder inputs from labels.")
    if pad_token_id is None:
        raise ValueError("config.pad_token_id must be set to build decoder inputs from labels.")
    shifted = input_ids.new_zeros(input_ids.shape)
    shifted[:, 1:] = input_ids[:, :-1].clone()
    shifted[:, 0] = decoder_start_token_id
    shifted.masked_fill_(shifted == -100, pad_token_id)
    return shifted


# ---------------------------------------------------------------------------------- rotary positions


def rotary_inverse_frequencies(head_dim: int, base: float) -> torch.Tensor:
    """transformers' default RoPE frequencies 1 / base^(2i / head_dim), in float32."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (base**exponents)


def rotary_cos_sin(inv_freq: torch.Tensor, position_ids: torch.Tensor, dtype: torch.dtype):
    """cos / sin tables [batch, seq, head_dim] for `position_ids` [batch, seq], computed in float32 (as
    transformers does, autocast off) and cast to `dtype`; both halves of the head share frequencies."""
    inv = inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1).to(position_ids.device)
    with torch.autocast(device_type=position_ids.device.type if position_ids.device.type != "mps" else "cpu",
                        enabled=False):
        freqs = (inv @ position_ids[:, None, :].float()).transpose(1, 2)
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate [batch, heads, seq, head_dim] queries and keys by [batch, seq, head_dim] tables."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return query * cos + rotate_half(query) * sin, key * cos + rotate_half(key) * sin


# ---------------------------------------------------------------------------------- KV cache


def to_legacy_cache(past_key_values):
    """Accept our tuple cache or a transformers Cache object (converted by duck typing, its empty
    cross-attention slots dropped); an empty cache means none."""
    if past_key_values is None:
        return None
    if hasattr(past_key_values, "to_legacy_cache"):
        past_key_values = past_key_values.to_legacy_cache()
    return tuple(tuple(t for t in layer if t is not None) for layer in past_key_values) or None


def check_legacy_cache(past_key_values, num_layers: int):
    """`to_legacy_cache`, then insist on the contract format (a tuple over layers of 2 or 4 tensors)."""
    past_key_values = to_legacy_cache(past_key_values)
    if past_key_values is None:
        return None
    if len(past_key_values) != num_layers or any(len(entry) not in (2, 4) for entry in past_key_values):
        raise ValueError(
            f"past_key_values must be a tuple of {num_layers} per-layer tuples (self_k, self_v[, cross_k, cross_v]); "
            f"got {len(past_key_values)} entries. Pass back the `past_key_values` returned by the previous call."
        )
    return past_key_values


# ---------------------------------------------------------------------------------- input checks


def check_input_ids(input_ids: torch.Tensor, vocab_size: int, name: str) -> None:
    """Empty or out-of-vocabulary ids would fail deep inside torch with an index error; say what is wrong.

    The values are checked only on the CPU: on an accelerator reading them back is a host sync per
    forward (per decoded token in generation). Ids bound for a GPU are checked on the host before
    the copy (the pipeline's model operators take one numpy max per micro-batch)."""
    if input_ids.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [batch, sequence] tensor, got shape {tuple(input_ids.shape)}.")
    if input_ids.numel() == 0:
        raise ValueError(
            f"{name} is empty (shape {tuple(input_ids.shape)}): every row needs at least one token. Drop empty "
            "inputs or give them a special token (e.g. eos) before calling the model."
        )
    if input_ids.device.type != "cpu":
        return
    low, high = torch.aminmax(input_ids)
    if low.item() < 0 or high.item() >= vocab_size:
        bad = int(low) if low.item() < 0 else int(high)
        row = int((input_ids == bad).any(dim=1).nonzero()[0])
        raise ValueError(
            f"{name} row {row} holds token id {bad}, outside this model's vocabulary [0, {vocab_size}). Check that the "
            "tokenizer matches the checkpoint (and that -100 label padding is not fed as input ids)."
        )


# ---------------------------------------------------------------------------------- heads


def classifier_dropout(config) -> float:
    """`config.classifier_dropout`, falling back to `hidden_dropout_prob` (BERT, RoBERTa, MEGA)."""
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


class FirstTokenPooler(nn.Module):
    """dense + tanh over the first token ([CLS] / <s>): BERT's and MEGA's `pooler`."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class FirstTokenClassificationHead(nn.Module):
    """RoBERTa's sentence classifier over the first token: dropout, dense, tanh, dropout, out_proj
    (also MEGA's and MPNet's); the dropout is `classifier_dropout(config)` unless `dropout` is given
    (MPNet always drops with `hidden_dropout_prob`)."""

    def __init__(self, config, dropout: float | None = None):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(classifier_dropout(config) if dropout is None else dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, features: torch.Tensor, **kwargs) -> torch.Tensor:
        x = self.dropout(features[:, 0, :])
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)


# ---------------------------------------------------------------------------------- init


def init_linear_embedding_norm(module: nn.Module, std: float) -> None:
    """The BERT-style initialisation most families share: N(0, std) weights, zero bias, unit norms."""
    if isinstance(module, nn.Linear):
        module.weight.data.normal_(mean=0.0, std=std)
        if module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.Embedding):
        module.weight.data.normal_(mean=0.0, std=std)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            module.weight.data.fill_(1.0)
        if module.bias is not None:
            module.bias.data.zero_()
