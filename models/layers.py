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
