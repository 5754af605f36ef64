"""MEGA (Moving Average Equipped Gated Attention), numerically equal to transformers 4.57.6.

transformers removed MEGA in v5; this file keeps MEGA checkpoints runnable. Every parameter and
buffer name is the one transformers uses, so an HF MEGA checkpoint loads with no missing or
unexpected keys, and what we save loads back into transformers 4.57.6.

A MEGA layer (`MegaBlock`) is:

1. `MegaMovingAverageGatedAttention` (attribute `mega_layer`):
   norm (before or after) -> multi-dimensional damped EMA over the sequence (`ema_gate`) ->
   one projection `mx_proj` split into a residual gate, a shared query/key representation, an
   attention-output gate and an intermediate state -> single-head attention whose query and key
   are two per-dimension affine maps (`qk_weight`, `qk_bias`) of the same shared representation,
   plus a relative position bias ("simple" or "rotary") -> gated residual update.
   The attention function is softmax, "laplace" or "relu2" (`attention_activation`); the last two
   are element-wise and normalised by the number of visible keys instead of by a softmax.
   With `use_chunking` the attention runs independently inside chunks of `chunk_size` tokens
   (linear cost); the EMA always sees the whole sequence.
2. optional gated cross-attention (`cross_attn`, decoders with `add_cross_attention`).
3. optional normalized feed-forward network (`nffn`, `use_normalized_ffn`).

Tensors are batch-first here ([batch, seq, hidden]); transformers works sequence-first inside the
layers. Each op is the same, so results agree to float rounding (tests: <= 1e-5 in fp32).

Behaviour of the reference that looks wrong but is reproduced on purpose (checkpoints were trained
with it), each marked "REFERENCE QUIRK" below:
- `MegaRMSNorm` does not normalise: it returns `x * weight`.
- the "simple" position bias is sized by `chunk_size` whenever `chunk_size >= 0`, even with
  `use_chunking=False`.
- padded positions are zeroed before the EMA, but their EMA residual and outputs are still
  computed; the incremental decoder keeps decaying the EMA state through padded steps.
- a chunk whose keys are all padding is attended to as if unpadded (softmax), and in incremental
  decoding the attention does not mask earlier padded positions (only the current token's
  padding flag is used).
- laplace/relu2 attention in incremental decoding divides by 1 instead of by the number of
  visible keys; the cross-attention position of an incremental step is one past the true position.
- `truncation` is ignored when `use_cache=True` (the decoder's EMA always uses the full kernel).

Deliberate deviations (documented in docs/model-layer.md):
- inputs the reference cannot run fail here with a clear `MegaSequenceLengthError` (a ValueError
  that is also a RuntimeError, the type transformers' own failure has) instead of a reshape or
  broadcast error deep inside the layer;
- `normalization_type="layernorm"` with `norm_affine=False` builds (transformers crashes in its
  weight init);
- the EMA kernel cached in eval mode is rebuilt when the EMA weights change (transformers keeps
  serving the stale kernel after an in-place weight edit, a dtype or a device move), and is not
  cached while autograd records (numerically the same);
- loading with dtype=bfloat16/float16 also casts the rotary bias' `_float_tensor` buffer
  (transformers leaves it float32 and then fails with a dtype mismatch);
- token-type ids default to zeros of any length (transformers slices a max_positions-long buffer);
- `_reorder_cache` passes None cache entries (chunk boundaries) through instead of failing.

MEGA's cache (`past_key_values`, `MegaForCausalLM` with `use_cache=True`) is a tuple over layers;
each entry is
`(self_key [batch, ctx, shared_representation_size], self_value [batch, ctx, intermediate_size],
ema_state [batch, hidden_size, ema_projection_size])` followed, with cross-attention, by
`(cross_key [batch, src, shared_representation_size], cross_value [batch, src, hidden_size])`.
With `use_chunking` the self key/value are None right after a chunk boundary (as in transformers).
Every tensor is batch-first, so generation can reorder rows with `index_select(0, idx)`.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_mega import MegaConfig
from .generation import GenerationConfig, GenerationMixin
from .layers import (
    ACT2FN,
    FirstTokenClassificationHead,
    FirstTokenPooler,
    classifier_dropout,
    gelu_new,
    sequence_classification_loss,
    span_logits_and_loss,
    token_cross_entropy,
)
from .modeling_utils import PreTrainedModel
from .outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
    head_output,
    with_loss,
)

logger = logging.getLogger(__name__)


# ================================================================================== errors


class MegaSequenceLengthError(ValueError, RuntimeError):
    """An input length MEGA cannot process (chunking). Also a RuntimeError because that is what
    transformers 4.57.6 raises for the same input, so code written against it keeps working."""


# ================================================================================== activations
# MEGA's attention functions and its "gelu_accurate" are not in the shared table; they are defined
# here exactly as transformers defines them (could move to layers.py if another family needs them).


def laplace_attention(x: torch.Tensor, mu: float = 0.707107, sigma: float = 0.282095) -> torch.Tensor:
    """MEGA's "laplace" attention function: a Gaussian CDF centred at ~1/sqrt(2), bounded in (0, 1)."""
    x = (x - mu).div(sigma * math.sqrt(2.0))
    return 0.5 * (1.0 + torch.erf(x))


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    return torch.square(F.relu(x))


_MEGA_ACT2FN = {**ACT2FN, "laplace": laplace_attention, "relu2": relu_squared, "gelu_accurate": gelu_new}


def _activation(name: str):
    try:
        return _MEGA_ACT2FN[name]
    except KeyError:
        raise ValueError(f"MEGA activation {name!r} is not supported; choose one of {sorted(_MEGA_ACT2FN)}") from None


# ================================================================================== small pieces


class MegaDropout(nn.Module):
    """Standard dropout, or feature dropout (`use_feature_dropout`) that drops whole channels.

    Inputs are batch-first with features last. For [batch, seq, feat] the channels are the
    features (each feature is dropped across the whole sequence). For the chunked attention values
    [batch, chunks, chunk_len, feat] transformers' transpose makes the chunks the channels; we
    apply the same op to the same layout, so training behaves as in the reference.
    """

    def __init__(self, p: float, featurewise: bool = False):
        super().__init__()
        self.p = p
        self.featurewise = featurewise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.featurewise:
            return F.dropout(x, p=self.p, training=self.training)
        channels_first = x.transpose(-1, -2)
        if x.dim() == 3:
            # transformers calls dropout2d on this 3-D tensor, which PyTorch runs as dropout1d.
            dropped = F.dropout1d(channels_first, p=self.p, training=self.training)
        else:
            dropped = F.dropout2d(channels_first, p=self.p, training=self.training)
        return dropped.transpose(-1, -2)


class MegaRMSNorm(nn.Module):
    """REFERENCE QUIRK: transformers' MegaRMSNorm computes the RMS but throws the result away
    (`input * torch.rsqrt(...)` is never assigned), so the layer is just `x * weight`. Checkpoints
    trained with it expect exactly that, so we do the same."""

    def __init__(self, num_features: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.affine = affine
        self.weight = nn.Parameter(torch.empty(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight if self.weight is not None else x

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"


class MegaScaleNorm(nn.Module):
    """x * scalar / sqrt(mean(x^2) + eps): RMS normalisation with a single learned gain.

    The gain is applied before dividing by the RMS (of the un-scaled input), as in the reference;
    `MegaSequenceNorm` passes eps=1e-5, not this class's default."""

    def __init__(self, dim: int = -1, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.affine = affine
        self.scalar = nn.Parameter(torch.empty(1)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_square = torch.mean(torch.square(x), dim=self.dim, keepdim=True)
        if self.scalar is not None:
            x = self.scalar * x
        return x * torch.rsqrt(mean_square + self.eps)


class MegaSequenceNorm(nn.Module):
    """The configured normalisation, held as `.norm` (the checkpoint names are `...norm.norm.*`).

    Batch norms normalise each feature over batch and sequence, so they see [batch, feat, seq]."""

    def __init__(self, norm_type: str, dim: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        if norm_type == "layernorm":
            self.norm = nn.LayerNorm(dim, eps, elementwise_affine=affine)
        elif norm_type == "scalenorm":
            self.norm = MegaScaleNorm(dim=-1, eps=eps, affine=affine)
        elif norm_type == "rmsnorm":
            self.norm = MegaRMSNorm(dim, eps=eps, affine=affine)
        elif norm_type == "batchnorm":
            self.norm = nn.BatchNorm1d(dim, eps=eps, affine=affine)
        elif norm_type == "syncbatchnorm":
            self.norm = nn.SyncBatchNorm(dim, eps=eps, affine=affine)
        else:
            raise ValueError(
                f"config.normalization_type={norm_type!r} is not supported; choose one of "
                "'scalenorm', 'layernorm', 'rmsnorm', 'batchnorm', 'syncbatchnorm'."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.norm, nn.modules.batchnorm._BatchNorm):
            if x.dim() != 3:
                raise ValueError(
                    f"batch normalisation in MEGA expects [batch, seq, hidden], got shape {tuple(x.shape)}"
                )
            return self.norm(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(x)


def _relative_bias_span(config: MegaConfig) -> int:
    # REFERENCE QUIRK: the bias is sized by chunk_size whenever chunk_size >= 0, even when
    # use_chunking is False.
    return config.max_positions if config.chunk_size < 0 else config.chunk_size


class MegaSimpleRelativePositionalBias(nn.Module):
    """A learned scalar per relative offset: bias[i, j] = rel_pos_bias[span - 1 + j - i].

    `span` (max_positions, or chunk_size when set) is a hard limit on the attended length."""

    def __init__(self, config: MegaConfig):
        super().__init__()
        self.max_positions = _relative_bias_span(config)
        self.rel_pos_bias = nn.Parameter(torch.empty(2 * config.max_positions - 1))

    def forward(self, seq_len: int) -> torch.Tensor:
        if seq_len > self.max_positions:
            raise ValueError(
                f"MEGA's 'simple' relative position bias covers at most {self.max_positions} positions "
                f"(config.max_positions, or config.chunk_size when set) but the attention spans {seq_len}; "
                "shorten the input or use relative_positional_bias='rotary'."
            )
        positions = torch.arange(seq_len, device=self.rel_pos_bias.device)
        offsets = positions[None, :] - positions[:, None]
        return self.rel_pos_bias[self.max_positions - 1 + offsets]


class MegaRotaryRelativePositionalBias(nn.Module):
    """bias[m, n] = <rotate(alpha, m), rotate(b_param, n)>: two learned vectors rotated by their
    absolute positions (RoPE-style), so the product depends on positions and extrapolates past
    `max_positions` (the sinusoid table grows on demand)."""

    def __init__(self, config: MegaConfig):
        super().__init__()
        if config.hidden_size % 2 != 0:
            raise RuntimeError("Rotary positional bias requires `hidden_size` to be a multiple of 2")
        self.embed_dim = config.shared_representation_size
        self.table_size = config.max_positions
        self.alpha = nn.Parameter(torch.empty(1, self.embed_dim))
        self.b_param = nn.Parameter(torch.empty(1, self.embed_dim))
        # Persistent in transformers (so it is in checkpoints); it only carries the dtype/device.
        self.register_buffer("_float_tensor", torch.FloatTensor([0.0]))
        self._sinusoids: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    @staticmethod
    def sinusoids(num_positions: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        half_dim = dim // 2
        frequency = math.log(10000) / half_dim
        frequency = torch.exp(torch.arange(half_dim, dtype=torch.int64).float() * -frequency)
        angles = torch.arange(num_positions, dtype=torch.float).unsqueeze(1) * frequency.unsqueeze(0)
        return torch.sin(angles), torch.cos(angles)

    def _table(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._sinusoids is None or self._sinusoids[0].size(0) < seq_len:
            self._sinusoids = self.sinusoids(max(self.table_size, seq_len), self.embed_dim)
        sin, cos = (t.to(self._float_tensor) for t in self._sinusoids)
        return sin[:seq_len], cos[:seq_len]

    def _rotate(self, vector: torch.Tensor, seq_len: int) -> torch.Tensor:
        first, second = torch.chunk(vector.expand(seq_len, self.embed_dim), 2, dim=-1)
        sin, cos = self._table(seq_len)
        return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=1)

    def forward(self, seq_len: int) -> torch.Tensor:
        return torch.einsum("mk,nk->mn", self._rotate(self.alpha, seq_len), self._rotate(self.b_param, seq_len))


def _relative_position_bias(config: MegaConfig) -> nn.Module:
    if config.relative_positional_bias == "simple":
        return MegaSimpleRelativePositionalBias(config)
    if config.relative_positional_bias == "rotary":
        return MegaRotaryRelativePositionalBias(config)
    raise ValueError(
        f"config.relative_positional_bias={config.relative_positional_bias!r} is not supported; "
        "use 'rotary' or 'simple'."
    )


# ================================================================================== EMA


class MegaMultiDimensionDampedEma(nn.Module):
    """Multi-dimensional damped EMA: each hidden channel is expanded into `ema_projection_size`
    EMAs h_t = p * beta * x_t + (1 - p * a) * h_{t-1}, projected back with gamma.

    Over a whole sequence this equals a causal convolution with the kernel
    k[d, t] = sum_n gamma[d, n] * scale * p[d, n] * beta[d, n] * q[d, n]^t   (q = 1 - p * a),
    computed with an FFT. Bidirectional EMA adds a second, time-reversed kernel (the second half of
    the parameters). Parameter names follow transformers: damping_factor = delta (p = sigmoid),
    decay_factor = alpha, ema_expansion_matrix = beta, kernel_projection_matrix = gamma,
    residual_weight = omega.
    """

    def __init__(self, config: MegaConfig):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.ndim = config.ema_projection_size
        self.bidirectional = config.bidirectional
        self.truncation = config.truncation
        self.scale = math.sqrt(1.0 / self.ndim)
        kernel_dim = 2 * config.hidden_size if self.bidirectional else config.hidden_size
        self.damping_factor = nn.Parameter(torch.empty(kernel_dim, self.ndim, 1))
        self.decay_factor = nn.Parameter(torch.empty(kernel_dim, self.ndim, 1))
        self.ema_expansion_matrix = nn.Parameter(torch.empty(kernel_dim, self.ndim, 1))
        self.kernel_projection_matrix = nn.Parameter(torch.empty(kernel_dim, self.ndim))
        self.residual_weight = nn.Parameter(torch.empty(config.hidden_size))
        # Eval-mode cache: (signature of the EMA weights, tensor). See `_cached`.
        self._cache: dict[str, tuple[tuple, object]] = {}

    # ---------------------------------------------------------------- kernel and coefficients
    def _coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """p = sigmoid(delta) (input weight) and q = 1 - p * sigmoid(alpha) (decay per step)."""
        damping = torch.sigmoid(self.damping_factor)
        decay = torch.sigmoid(self.decay_factor)
        return damping, 1.0 - damping * decay

    def _kernel(self, length: int) -> torch.Tensor:
        """[kernel_dim, length] convolution kernel of the EMA."""
        damping, previous_weight = self._coefficients()
        powers = torch.exp(torch.arange(length).to(damping).view(1, 1, length) * torch.log(previous_weight))
        kernel = (damping * self.ema_expansion_matrix) * powers
        return torch.einsum("dnl,dn->dl", kernel, self.kernel_projection_matrix * self.scale)

    def _weights_signature(self) -> tuple:
        return tuple(
            (p.data_ptr(), p._version, p.dtype, p.device)
            for p in (self.damping_factor, self.decay_factor, self.ema_expansion_matrix, self.kernel_projection_matrix)
        )

    def _cached(self, name: str, build, fits=lambda value: True):
        """The reference caches the kernel and coefficients while in eval mode. We cache too, keyed
        on the EMA weights (rebuilt after an in-place edit, dtype or device change) and only when
        no autograd graph is being built (a cached graph could not be back-propagated twice)."""
        if self.training or torch.is_grad_enabled():
            self._cache.clear()
            return build()
        signature = self._weights_signature()
        entry = self._cache.get(name)
        if entry is None or entry[0] != signature or not fits(entry[1]):
            entry = (signature, build())
            self._cache[name] = entry
        return entry[1]

    def coefficients(self):
        return self._cached("coefficients", self._coefficients)

    def kernel(self, length: int) -> torch.Tensor:
        kernel_size = length if self.truncation is None else min(self.truncation, length)
        kernel = self._cached("kernel", lambda: self._kernel(kernel_size), fits=lambda k: k.size(-1) >= kernel_size)
        return kernel[..., :kernel_size]

    @staticmethod
    def fft_convolution(inputs: torch.Tensor, kernel: torch.Tensor, length: int) -> torch.Tensor:
        """Linear convolution along the last dim via FFT (zero-padded to 2 * length), in float32."""
        inputs_fft = torch.fft.rfft(inputs.float(), n=2 * length)
        kernel_fft = torch.fft.rfft(kernel.float(), n=2 * length)
        return torch.fft.irfft(inputs_fft * kernel_fft, n=2 * length)

    # ---------------------------------------------------------------- sequence forms
    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        """EMA of a whole sequence, x: [batch, hidden, seq] -> [batch, hidden, seq]."""
        seq_len = x.size(-1)
        kernel = self.kernel(seq_len)
        kernel_size = kernel.size(1)
        fft_len, start = seq_len, 0
        if self.bidirectional:
            # One two-sided kernel of length 2 * kernel_size - 1: the forward kernel on the left of
            # the centre, the backward kernel flipped on the right (both share the centre tap).
            forward_kernel, backward_kernel = torch.split(kernel, [self.embed_dim, self.embed_dim], dim=0)
            kernel = F.pad(forward_kernel, (kernel_size - 1, 0)) + F.pad(backward_kernel.flip(-1), (0, kernel_size - 1))
            x = F.pad(x, (kernel_size - 1, 0))
            fft_len = fft_len + kernel_size - 1
            start = 2 * kernel_size - 2
        out = self.fft_convolution(x, kernel, length=fft_len)[..., start : start + seq_len]
        return out.type_as(x)

    def _scan_with_state(self, x: torch.Tensor, past_state: Optional[torch.Tensor]):
        """Causal EMA that also returns the final hidden state [batch, hidden, ndim] for decoding.

        REFERENCE QUIRK: this path ignores `truncation` (the kernel spans the whole input)."""
        seq_len = x.size(-1)
        if seq_len == 1:
            return self._one_step(x, past_state)
        damping, previous_weight = self.coefficients()
        powers = torch.exp(torch.arange(seq_len + 1).to(damping).view(1, 1, seq_len + 1) * torch.log(previous_weight))
        kernel = (damping * self.ema_expansion_matrix) * powers[:, :, :-1]
        projected_kernel = torch.einsum("dnl,dn->dl", kernel, self.kernel_projection_matrix * self.scale)
        out = self.fft_convolution(x, projected_kernel, length=seq_len)[..., 0:seq_len].type_as(x)
        state = torch.einsum("bdl,dnl->bdn", x, torch.flip(kernel, dims=[2]))
        if past_state is not None:
            past_projection = powers[:, :, 1:] * (self.kernel_projection_matrix * self.scale).unsqueeze(-1)
            out = out + torch.einsum("bdn,dnl->bdl", past_state, past_projection)
            state = state + powers[:, :, -1] * past_state
        return out, state

    def _one_step(self, x: torch.Tensor, past_state: Optional[torch.Tensor]):
        """One recurrent step, x: [batch, hidden, 1]."""
        damping, previous_weight = self.coefficients()
        state = (damping * self.ema_expansion_matrix).squeeze(-1) * x
        if past_state is not None:
            state = state + previous_weight.squeeze(-1) * past_state
        out = torch.einsum("bdn,dn->bd", state, self.kernel_projection_matrix * self.scale)
        return out.unsqueeze(-1), state

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                past_state: Optional[torch.Tensor] = None, use_cache: bool = False):
        """x: [batch, seq, hidden] -> (silu(EMA(x) + omega * x), new EMA state or None).

        REFERENCE QUIRK: padded positions are zeroed before the EMA (so they feed nothing into it),
        but the residual `omega * x` uses the unmasked input and padded outputs are still produced.
        """
        residual = x * self.residual_weight
        x = x.transpose(1, 2)
        if padding_mask is not None:
            x = x * padding_mask.unsqueeze(1).type_as(x)
        if use_cache:
            if self.bidirectional:
                raise RuntimeError(
                    "Bidirectional EMA does not support incremental state: a MEGA decoder with use_cache=True "
                    "needs config.bidirectional=False (or pass use_cache=False)."
                )
            out, state = self._scan_with_state(x, past_state)
        else:
            out, state = self._convolve(x), None
        return F.silu(out.transpose(1, 2) + residual), state


# ================================================================================== attention


def _split_into_chunks(tensor: Optional[torch.Tensor], chunk_size: Optional[int]) -> Optional[torch.Tensor]:
    """[batch, len, ...] -> [batch, chunks, chunk_size, ...]; one chunk when not chunking or when
    the sequence is shorter than a chunk (the caller has checked that lengths divide evenly)."""
    if tensor is None:
        return None
    if chunk_size is None or tensor.size(1) < chunk_size:
        return tensor.unsqueeze(1)
    batch, length = tensor.shape[:2]
    return tensor.reshape(batch, length // chunk_size, chunk_size, *tensor.shape[2:])


class MegaMovingAverageGatedAttention(nn.Module):
    """The MEGA sub-layer: EMA, then single-head gated attention with a shared Q/K projection."""

    def __init__(self, config: MegaConfig):
        super().__init__()
        self.config = config
        self.activation = _activation(config.activation)
        self.attention_activation = config.attention_activation
        if self.attention_activation != "softmax":
            self.element_activation = _activation(self.attention_activation)
        self.scaling = config.shared_representation_size**-0.5 if self.attention_activation == "softmax" else None
        self.dropout = MegaDropout(config.dropout_prob, featurewise=config.use_feature_dropout)
        self.hidden_dropout = MegaDropout(config.hidden_dropout_prob, featurewise=config.use_feature_dropout)
        self.attention_dropout = MegaDropout(config.attention_probs_dropout_prob, featurewise=False)

        self.norm = MegaSequenceNorm(config.normalization_type, config.hidden_size, affine=config.norm_affine)
        self.ema_gate = MegaMultiDimensionDampedEma(config)
        self.v_proj = nn.Linear(config.hidden_size, config.intermediate_size)
        self.mx_proj = nn.Linear(
            config.hidden_size, config.shared_representation_size + config.intermediate_size + 2 * config.hidden_size
        )
        self.h_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.qk_weight = nn.Parameter(torch.empty(2, config.shared_representation_size))
        self.qk_bias = nn.Parameter(torch.empty(2, config.shared_representation_size))
        self.rel_pos_bias = _relative_position_bias(config)

    # ---------------------------------------------------------------- attention functions
    def _position_bias(self, query: torch.Tensor, key_len: int) -> torch.Tensor:
        bias = self.rel_pos_bias(key_len)
        if key_len != query.size(2):
            if query.size(2) != 1:
                raise ValueError("Size mismatch between Q and K in MEGA attention")
            bias = bias[-1:]  # incremental decoding: the last row, for the newest token
        return bias

    def softmax_attention(self, query, key, padding_mask, causal_mask):
        """Scaled dot-product + position bias; padded keys get -inf, except in a chunk whose keys
        are all padding, which is attended as if unpadded (REFERENCE QUIRK, keeps rows finite)."""
        bias = self._position_bias(query, key.size(2))
        scores = torch.matmul(query * self.scaling, key.transpose(2, 3)) + bias
        if causal_mask is not None:
            additive_causal = torch.zeros_like(causal_mask, dtype=scores.dtype)
            scores = scores + additive_causal.masked_fill(causal_mask == 0, float("-inf"))
        if padding_mask is not None:
            padded = 1 - padding_mask
            padded = torch.logical_and(padded, ~padded.all(dim=-1, keepdim=True))
            scores = scores.masked_fill(padded.unsqueeze(2).to(torch.bool), float("-inf"))
        return torch.softmax(scores, dim=-1).type_as(scores)

    def element_attention(self, query, key, padding_mask, causal_mask):
        """laplace / relu2 of (q.k / number of visible keys + bias), zeroed at masked keys.

        The number of visible keys is the count of unpadded keys in the chunk, or with a causal
        mask the count the causal mask allows (1 during incremental decoding: REFERENCE QUIRK)."""
        key_len = key.size(2)
        if padding_mask is not None:
            lengths = padding_mask.sum(-1, keepdim=True).clamp(min=1.0).unsqueeze(-1)
        else:
            lengths = key_len
        if causal_mask is not None:
            lengths = causal_mask.sum(dim=-1, keepdim=True)
        bias = self._position_bias(query, key_len)
        scores = torch.matmul(query, key.transpose(2, 3)) / lengths + bias
        weights = self.element_activation(scores).type_as(scores)
        if padding_mask is not None:
            weights = weights * padding_mask.unsqueeze(2)
        if causal_mask is not None:
            weights = weights * causal_mask
        return weights

    # ---------------------------------------------------------------- forward
    def forward(self, hidden_states, padding_mask=None, causal_mask=None, past_key_values=None,
                output_attentions=False, use_cache=False, key_padding_mask=None):
        """hidden_states [batch, seq, hidden] -> (out, attention weights?, key, value, ema state?).

        `key_padding_mask` [batch, keys] (incremental decoding only) masks the attention over cached
        keys; `padding_mask` then masks the new token for the EMA."""
        config = self.config
        batch, seq_len, _ = hidden_states.shape
        residual = hidden_states
        if config.normalize_before_mega:
            hidden_states = self.norm(hidden_states)
        value = self.activation(self.v_proj(hidden_states))

        prev_key = prev_value = prev_ema_state = None
        if config.is_decoder and past_key_values is not None:
            if seq_len > 1:
                raise ValueError(f"Incremental decoding only supports self sequence length of 1; received {seq_len}")
            prev_key, prev_value, prev_ema_state = past_key_values[0:3]

        ema_out, ema_state = self.ema_gate(hidden_states, padding_mask, past_state=prev_ema_state, use_cache=use_cache)
        ema_out = self.dropout(ema_out)

        residual_weight, query_key_gates, intermediate_state = torch.split(
            self.mx_proj(ema_out),
            [config.hidden_size, config.shared_representation_size + config.intermediate_size, config.hidden_size],
            dim=-1,
        )
        residual_weight = torch.sigmoid(residual_weight)
        shared_qk, attention_gate = torch.split(
            F.silu(query_key_gates), [config.shared_representation_size, config.intermediate_size], dim=-1
        )
        # Query and key are two affine maps of the same shared representation.
        query, key = torch.unbind(shared_qk.unsqueeze(2) * self.qk_weight + self.qk_bias, dim=2)

        new_key = new_value = None
        if config.is_decoder:
            if prev_key is not None:
                key = torch.cat([prev_key, key], dim=1)
            if prev_value is not None:
                value = torch.cat([prev_value, value], dim=1)
            # With chunking the history restarts at every chunk boundary.
            if not (config.use_chunking and key.size(1) % config.chunk_size == 0):
                new_key, new_value = key, value

        chunk_size = config.chunk_size if config.use_chunking else None
        query = _split_into_chunks(query, chunk_size)
        key = _split_into_chunks(key, chunk_size)
        value = _split_into_chunks(value, chunk_size)
        attention_mask = padding_mask
        if key_padding_mask is not None and key_padding_mask.shape[1] == key.shape[1]:
            attention_mask = key_padding_mask
        chunked_mask = _split_into_chunks(attention_mask, chunk_size)

        if self.attention_activation == "softmax":
            weights = self.softmax_attention(query, key, chunked_mask, causal_mask)
        else:
            weights = self.element_attention(query, key, chunked_mask, causal_mask)

        value = self.hidden_dropout(value)
        attended = torch.matmul(self.attention_dropout(weights), value)
        attended = attended.reshape(batch, seq_len, config.intermediate_size)
        update = self.activation(intermediate_state + self.h_proj(attended * attention_gate))
        update = self.dropout(update)
        out = torch.addcmul(residual, residual_weight, update - residual)  # gated residual
        if not config.normalize_before_mega:
            out = self.norm(out)

        outputs = (out, weights) if output_attentions else (out,)
        if config.is_decoder:
            outputs = outputs + (new_key, new_value, ema_state)
        return outputs


class MegaGatedCrossAttention(nn.Module):
    """Decoder cross-attention over the encoder output, gated like the MEGA sub-layer."""

    def __init__(self, config: MegaConfig):
        super().__init__()
        self.config = config
        self.activation = _activation(config.activation)
        self.attention_activation = config.attention_activation
        if self.attention_activation != "softmax":
            self.element_activation = _activation(self.attention_activation)
        self.scaling = config.shared_representation_size**-0.5 if self.attention_activation == "softmax" else None
        self.dropout = MegaDropout(config.dropout_prob, featurewise=config.use_feature_dropout)
        self.hidden_dropout = MegaDropout(config.hidden_dropout_prob, featurewise=config.use_feature_dropout)
        self.attention_dropout = MegaDropout(config.attention_probs_dropout_prob, featurewise=False)
        self.prenorm = config.normalize_before_mega
        self.norm = MegaSequenceNorm(config.normalization_type, config.hidden_size, affine=config.norm_affine)
        self.k_proj = nn.Linear(config.hidden_size, config.shared_representation_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.q_proj = nn.Linear(config.hidden_size, 2 * config.hidden_size + config.shared_representation_size)
        self.h_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.rel_pos_bias = _relative_position_bias(config)

    def _position_bias(self, query, src_len, step):
        tgt_len = query.size(1) if step is None else step + 1
        bias = self.rel_pos_bias(max(tgt_len, src_len))[:, :src_len]
        if step is None:
            return bias[:tgt_len]
        if query.size(1) != 1:
            raise ValueError("Position offset provided with queries longer than 1 token")
        return bias[step]

    def _weights(self, query, key, key_padding_mask, step):
        bias = self._position_bias(query, key.size(1), step)
        if self.attention_activation == "softmax":
            scores = torch.bmm(query * self.scaling, key.transpose(1, 2)) + bias
            if key_padding_mask is not None:
                # No guard for fully padded sources here (unlike self-attention): such rows are NaN,
                # as in the reference.
                scores = scores.masked_fill((1 - key_padding_mask).unsqueeze(1).to(torch.bool), float("-inf"))
            return torch.softmax(scores, dim=-1).type_as(scores)
        lengths = key_padding_mask.sum(dim=-1).view(key.size(0), 1, 1) if key_padding_mask is not None else key.size(1)
        weights = self.element_activation(torch.bmm(query, key.transpose(1, 2)) / lengths + bias).type_as(query)
        if key_padding_mask is not None:
            weights = weights * key_padding_mask.unsqueeze(1)
        return weights

    def forward(self, query, key, key_padding_mask=None, past_key_values=None, output_attentions=False,
                use_cache=False):
        """query [batch, tgt, hidden], key (= value) [batch, src, hidden] -> (out, weights?, cross k, v?)."""
        config = self.config
        tgt_len = query.size(1)
        if past_key_values is not None:
            if tgt_len != 1:
                raise ValueError(f"Incremental decoding requested with self-sequence length > 1: {tgt_len}")
            if past_key_values[0] is None:
                raise ValueError(
                    "MEGA cross-attention cannot locate the decoding step: the cached self-attention keys were reset "
                    "at a chunk boundary (use_chunking=True). Decode without chunking."
                )
            projected_key, projected_value = past_key_values[-2:]
            # REFERENCE QUIRK: the new token sits at position past_len, but the bias row used is past_len + 1.
            step = past_key_values[0].size(1) + 1
        else:
            projected_key = self.k_proj(key)
            projected_value = self.activation(self.v_proj(key))
            step = 0 if use_cache and tgt_len == 1 else None

        normed = self.norm(query) if self.prenorm else query
        residual_weight, target_gate, attention_query = torch.split(
            self.q_proj(normed), [config.hidden_size, config.hidden_size, config.shared_representation_size], dim=-1
        )
        residual_weight = torch.sigmoid(residual_weight)
        target_gate = F.silu(target_gate)

        src_len = projected_key.size(1)
        if key_padding_mask is not None and key_padding_mask.dim() == 0:
            key_padding_mask = None
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != (query.size(0), src_len):
            raise ValueError(
                f"encoder_attention_mask has shape {tuple(key_padding_mask.shape)} but the encoder states are "
                f"[batch={query.size(0)}, src_len={src_len}]"
            )
        weights = self._weights(attention_query, projected_key, key_padding_mask, step)

        attended = torch.bmm(self.attention_dropout(weights), self.hidden_dropout(projected_value))
        update = self.dropout(self.activation(self.h_proj(attended * target_gate)))
        out = torch.addcmul(query, residual_weight, update - query)
        if not self.prenorm:
            out = self.norm(out)

        outputs = (out, weights) if output_attentions else (out,)
        if use_cache:
            outputs = outputs + (projected_key, projected_value)
        return outputs


class MegaNormalizedFeedForwardNetwork(nn.Module):
    """Residual two-layer FFN with the configured norm before (`normalize_before_ffn`) or after."""

    def __init__(self, config: MegaConfig):
        super().__init__()
        self.activation = _activation(config.activation)
        self.dropout = MegaDropout(config.dropout_prob, featurewise=config.use_feature_dropout)
        self.hidden_dropout = MegaDropout(config.nffn_activation_dropout_prob, featurewise=config.use_feature_dropout)
        self.prenorm = config.normalize_before_ffn
        self.norm = MegaSequenceNorm(config.normalization_type, config.hidden_size, affine=config.norm_affine)
        self.fc1 = nn.Linear(config.hidden_size, config.nffn_hidden_size)
        self.fc2 = nn.Linear(config.nffn_hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        if self.prenorm:
            x = self.norm(x)
        x = self.hidden_dropout(self.activation(self.fc1(x)))
        x = self.dropout(self.fc2(x)) + residual
        if not self.prenorm:
            x = self.norm(x)
        return x


class MegaBlock(nn.Module):
    """One MEGA layer: MEGA sub-layer, optional cross-attention, optional normalized FFN."""

    def __init__(self, config: MegaConfig):
        super().__init__()
        self.mega_layer = MegaMovingAverageGatedAttention(config)
        self.nffn = MegaNormalizedFeedForwardNetwork(config) if config.use_normalized_ffn else None
        if config.add_cross_attention and not config.is_decoder:
            raise ValueError("MEGA cross-attention (add_cross_attention=True) needs is_decoder=True.")
        self.cross_attn = MegaGatedCrossAttention(config) if config.add_cross_attention else None

    def forward(self, hidden_states, attention_mask=None, causal_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, past_key_values=None, output_attentions=False, use_cache=False,
                mask_past_padding=False):
        """Returns (hidden, self weights?, cross weights?, layer cache?)."""
        # REFERENCE QUIRK: in incremental decoding only the newest token's padding flag reaches the
        # MEGA sub-layer, so earlier padded positions in the cache are attended to again, unless
        # `mask_past_padding` (our generation, whose caches are left-padded) asks to mask them.
        mega_padding_mask = attention_mask
        key_padding_mask = None
        if use_cache and past_key_values is not None and attention_mask is not None:
            mega_padding_mask = attention_mask[:, -1].unsqueeze(-1)
            if mask_past_padding:
                key_padding_mask = attention_mask
        mega_out = self.mega_layer(hidden_states, padding_mask=mega_padding_mask, causal_mask=causal_mask,
                                   past_key_values=past_key_values, output_attentions=output_attentions,
                                   use_cache=use_cache, key_padding_mask=key_padding_mask)
        hidden_states = mega_out[0]
        layer_cache = tuple(mega_out[-3:]) if use_cache else None

        cross_weights = None
        if self.cross_attn is not None:
            if encoder_hidden_states is None:
                raise ValueError("Requested cross-attention without providing encoder hidden states")
            cross_out = self.cross_attn(hidden_states, encoder_hidden_states, key_padding_mask=encoder_attention_mask,
                                        past_key_values=past_key_values, output_attentions=output_attentions,
                                        use_cache=use_cache)
            hidden_states = cross_out[0]
            if output_attentions:
                cross_weights = cross_out[1]
            if use_cache:
                layer_cache = layer_cache + tuple(cross_out[-2:])

        if self.nffn is not None:
            hidden_states = self.nffn(hidden_states)

        outputs = (hidden_states,)
        if output_attentions:
            outputs = outputs + (mega_out[1],)
            if self.cross_attn is not None:
                outputs = outputs + (cross_weights,)
        if use_cache:
            outputs = outputs + (layer_cache,)
        return outputs


# ================================================================================== embeddings / heads


class MegaEmbeddings(nn.Module):
    """Word embeddings, plus token-type embeddings when `add_token_type_embeddings` (no positions:
    MEGA encodes order through its EMA and relative bias)."""

    def __init__(self, config: MegaConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.use_token_types = config.add_token_type_embeddings
        if self.use_token_types:
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.padding_idx = config.pad_token_id

    def forward(self, input_ids=None, token_type_ids=None, inputs_embeds=None):
        if input_ids is None and inputs_embeds is None:
            raise ValueError("Must provide one of input_ids or inputs_embeds")
        if input_ids is not None:
            inputs_embeds = self.word_embeddings(input_ids)
        if not self.use_token_types:
            return inputs_embeds  # token_type_ids are ignored, as in the reference
        if token_type_ids is None:
            batch, length = inputs_embeds.shape[:2]
            token_type_ids = torch.zeros(batch, length, dtype=torch.long, device=inputs_embeds.device)
        return inputs_embeds + self.token_type_embeddings(token_type_ids)


class MegaPooler(FirstTokenPooler):
    """tanh(dense(first token)), as in BERT/RoBERTa."""


class MegaClassificationHead(FirstTokenClassificationHead):
    """RoBERTa-style sentence head on the first token: dropout, dense, tanh, dropout, projection."""


# ================================================================================== models


class MegaPreTrainedModel(PreTrainedModel):
    """Shared loading/saving and the reference's weight initialisation."""

    config_class = MegaConfig
    base_model_prefix = "mega"

    @property
    def pad_to_multiple_of(self) -> Optional[int]:
        """Inputs must be right-padded to a multiple of this (chunked MEGA), else None.

        Extra right padding (with attention_mask zeros) does not change the outputs of real tokens,
        so batching code can pad dynamic batches up to this multiple."""
        return self.config.chunk_size if self.config.use_chunking else None

    def _init_weights(self, module: nn.Module) -> None:
        config = self.config
        if isinstance(module, MegaMultiDimensionDampedEma):
            with torch.no_grad():
                nn.init.normal_(module.damping_factor, mean=0.0, std=config.ema_delta_alpha_range)
                nn.init.normal_(module.decay_factor, mean=0.0, std=config.ema_delta_alpha_range)
                # beta alternates +1, -1, +1, ... (plus noise): more stable, per the MEGA authors.
                signs = torch.ones(config.ema_projection_size, 1)
                if config.ema_projection_size > 1:
                    signs.index_fill_(0, torch.arange(1, config.ema_projection_size, 2), -1.0)
                module.ema_expansion_matrix.normal_(mean=0.0, std=config.ema_beta_range).add_(signs)
                nn.init.normal_(module.kernel_projection_matrix, mean=0.0, std=config.ema_gamma_omega_range)
                nn.init.normal_(module.residual_weight, mean=0.0, std=config.ema_gamma_omega_range)
        elif isinstance(module, MegaSimpleRelativePositionalBias):
            nn.init.normal_(module.rel_pos_bias, mean=0.0, std=config.initializer_range)
        elif isinstance(module, MegaRotaryRelativePositionalBias):
            nn.init.normal_(module.alpha, mean=0.0, std=config.initializer_range)
            nn.init.normal_(module.b_param, mean=0.0, std=config.initializer_range)
        elif isinstance(module, MegaScaleNorm):
            if module.scalar is not None:
                nn.init.constant_(module.scalar, 1.0)
        elif isinstance(module, MegaRMSNorm):
            if module.weight is not None:
                nn.init.constant_(module.weight, 1.0)
        elif isinstance(module, MegaMovingAverageGatedAttention):
            nn.init.normal_(module.qk_weight, mean=0.0, std=config.initializer_range)
            nn.init.constant_(module.qk_bias, 0.0)
        elif isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=config.initializer_range)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=config.initializer_range)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            # transformers crashes here when norm_affine=False (no weight/bias); we skip instead.
            if module.weight is not None:
                module.weight.data.fill_(1.0)
                module.bias.data.zero_()
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            # Not in the reference (torch's own init applies there); needed when a checkpoint lacks them.
            module.reset_parameters()

    def _warn_if_padding_and_no_attention_mask(self, input_ids, attention_mask) -> None:
        pad = self.config.pad_token_id
        if attention_mask is not None or pad is None or getattr(self, "_warned_padding", False):
            return
        if pad in input_ids[:, [-1, 0]]:
            logger.warning(
                "input_ids seem to contain padding (pad_token_id=%s) but no attention_mask was given; pass "
                "attention_mask so padded positions are ignored.", pad,
            )
            self._warned_padding = True

    def _encode(self, input_ids, attention_mask, token_type_ids, inputs_embeds, output_attentions,
                output_hidden_states, **decoder_inputs):
        """The base model's forward as the heads call it (always a ModelOutput; the head picks its form)."""
        return self.mega(
            input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
            **decoder_inputs,
        )


def _tuple_tail(outputs: BaseModelOutputWithPoolingAndCrossAttentions) -> tuple:
    """What transformers' MEGA heads append after their logits when return_dict=False (None kept)."""
    return (outputs.hidden_states, outputs.past_key_values, outputs.attentions, outputs.cross_attentions)


class MegaModel(MegaPreTrainedModel):
    """The MEGA encoder (or decoder with `is_decoder=True`, `bidirectional=False`, optionally with
    cross-attention). Outputs: last_hidden_state, pooler_output (first token), hidden_states
    (embeddings + every layer), past_key_values (decoder with cache), attentions (self-attention
    weights [batch, chunks, chunk_len, chunk_len]), cross_attentions ([batch, tgt, src])."""

    def __init__(self, config: MegaConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embedding_layer = MegaEmbeddings(config)
        self.layers = nn.ModuleList([MegaBlock(config) for _ in range(config.num_hidden_layers)])
        self.pooler = MegaPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embedding_layer.word_embeddings

    def set_input_embeddings(self, value):
        self.embedding_layer.word_embeddings = value

    def _check_chunking(self, seq_len: int) -> None:
        """Refuse lengths chunked MEGA cannot process, with the fix in the message (transformers
        fails on the same inputs with a RuntimeError from a reshape or a broadcast)."""
        config = self.config
        if not config.use_chunking:
            return
        chunk = config.chunk_size
        if chunk is None or chunk <= 0:
            raise MegaSequenceLengthError(
                f"config.use_chunking=True needs a positive config.chunk_size, got {chunk}. "
                "Set chunk_size (e.g. 128) or use_chunking=False."
            )
        if config.is_decoder and seq_len % chunk != 0:
            raise MegaSequenceLengthError(
                f"MEGA decoder with use_chunking=True: the input has {seq_len} tokens but must have a multiple of "
                f"config.chunk_size={chunk} (its causal mask spans one whole chunk; incremental decoding with "
                "past_key_values therefore needs chunk_size=1). Right-pad the input to a multiple of "
                f"{chunk} with attention_mask zeros."
            )
        if seq_len > chunk and seq_len % chunk != 0:
            raise MegaSequenceLengthError(
                f"MEGA with use_chunking=True attends within chunks of config.chunk_size={chunk} tokens; the input has "
                f"{seq_len} tokens, longer than one chunk but not a multiple of it. Right-pad the batch to a multiple "
                f"of {chunk} (attention_mask 0 on the padding, e.g. tokenizer pad_to_multiple_of={chunk}) or truncate "
                f"to at most {chunk} tokens."
            )

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        past_key_values: Optional[tuple] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        mask_past_padding: bool = False,
    ):
        config = self.config
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        return_dict = return_dict if return_dict is not None else config.use_return_dict

        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        if input_ids is not None:
            self._warn_if_padding_and_no_attention_mask(input_ids, attention_mask)
            seq_len, device = input_ids.size(1), input_ids.device
        elif inputs_embeds is not None:
            seq_len, device = inputs_embeds.size(1), inputs_embeds.device
        else:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        self._check_chunking(seq_len)

        if config.is_decoder:
            use_cache = use_cache if use_cache is not None else config.use_cache
            # 1 where a query may see a key; it spans one chunk with chunking (the reference builds it
            # from [batch, chunk_size]), and is a 1x1 "all visible" mask for an incremental step.
            span = config.chunk_size if config.use_chunking else seq_len
            causal_mask = torch.tril(torch.ones(span, span, dtype=torch.long, device=device))
        else:
            use_cache = False
            causal_mask = None

        if past_key_values is not None and len(past_key_values) != config.num_hidden_layers:
            raise ValueError(
                f"Received past key/value cache with size mismatch; expected {config.num_hidden_layers}, "
                f"received {len(past_key_values)}"
            )

        embeddings = self.embedding_layer(
            input_ids=input_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds
        )
        hidden_states = embeddings
        all_hidden_states = (embeddings,) if output_hidden_states else None
        all_self_attentions = () if output_attentions else None
        all_cross_attentions = () if output_attentions and config.add_cross_attention else None
        next_cache = () if use_cache else None

        for index, layer in enumerate(self.layers):
            layer_out = layer(
                hidden_states,
                attention_mask=attention_mask,
                causal_mask=causal_mask,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
                past_key_values=past_key_values[index] if past_key_values is not None else None,
                output_attentions=output_attentions,
                use_cache=use_cache,
                mask_past_padding=mask_past_padding,
            )
            hidden_states = layer_out[0]
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_self_attentions += (layer_out[1],)
                if config.add_cross_attention:
                    all_cross_attentions += (layer_out[2],)
            if use_cache:
                next_cache += (layer_out[-1],)

        pooled = self.pooler(hidden_states) if self.pooler is not None else None
        if not return_dict:
            # transformers' MEGA keeps the None entries in its tuple; the heads slice it by position.
            return (hidden_states, pooled, all_hidden_states, next_cache, all_self_attentions, all_cross_attentions)
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=hidden_states,
            pooler_output=pooled,
            past_key_values=next_cache,
            hidden_states=all_hidden_states,
            attentions=all_self_attentions,
            cross_attentions=all_cross_attentions,
        )


class _MegaLMHead(MegaPreTrainedModel):
    """Shared by the causal and masked LM: optional tanh(dense) then the vocabulary projection,
    stored under `head_name` ("lm_head" / "mlm_head") and tied to the word embeddings."""

    head_name = ""

    def _build_lm_head(self, config: MegaConfig) -> None:
        self.mega = MegaModel(config, add_pooling_layer=False)
        if config.add_lm_hidden_dense_layer:
            self.dense = nn.Linear(config.hidden_size, config.hidden_size)
            self.hidden_activation = nn.Tanh()
        else:
            self.dense = None
            self.hidden_activation = None
        setattr(self, self.head_name, nn.Linear(config.hidden_size, config.vocab_size))

    def get_output_embeddings(self):
        return getattr(self, self.head_name)

    def set_output_embeddings(self, new_embeddings):
        setattr(self, self.head_name, new_embeddings)

    def _prediction_scores(self, sequence_output: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            sequence_output = self.hidden_activation(self.dense(sequence_output))
        return self.get_output_embeddings()(sequence_output)


class MegaForCausalLM(_MegaLMHead, GenerationMixin):
    """Left-to-right LM (needs `is_decoder=True`, `bidirectional=False` to use the cache).

    `generate()` (transformers 4.57.6's MegaForCausalLM has none) decodes with the cache: each group
    of equal-length prompts is prefilled unpadded (transformers' MEGA returns NaN for a left-padded
    batch), their caches are left-padded and merged, and cached steps mask that padding
    (`mask_past_padding`). Tokens equal greedy decoding by repeated full forward passes.
    """

    head_name = "lm_head"
    _tied_weights_keys = ["lm_head.weight"]
    # Decoder-only generation contract (generation/causal_session.py).
    _cache_sequence_dims = (1, 1, None)  # self key, self value: [rows, seq, dim]; EMA state has no seq
    _generation_prefill_unpadded = True
    _generation_step_kwargs = {"mask_past_padding": True}

    def __init__(self, config: MegaConfig):
        super().__init__(config)
        if not config.is_decoder:
            logger.warning("If you want to use `MegaForCausalLM` as a standalone, add `is_decoder=True.`")
        self._build_lm_head(config)
        self.generation_config = GenerationConfig.from_model_config(config) if self.can_generate() else None
        self.post_init()

    def _check_generation_supported(self) -> None:
        """Settings where cached decoding is not what a full forward pass computes are refused."""
        config = self.config
        problems = []
        if config.bidirectional:
            problems.append("bidirectional=True (a bidirectional EMA sees future tokens and has no cache)")
        if config.use_chunking and config.chunk_size != 1:
            problems.append(f"use_chunking=True with chunk_size={config.chunk_size} (transformers' cache allows "
                            "chunked decoding only with chunk_size=1)")
        if config.attention_activation != "softmax":
            problems.append(f"attention_activation={config.attention_activation!r} (its cached step normalises by 1 "
                            "instead of by the number of visible keys, unlike a full forward pass)")
        if config.truncation is not None:
            problems.append(f"truncation={config.truncation} (the cached EMA ignores truncation)")
        if config.add_cross_attention:
            problems.append("add_cross_attention=True (generate has no encoder states to attend to)")
        if problems:
            raise NotImplementedError(
                "MegaForCausalLM.generate does not support " + "; ".join(problems) + "."
            )

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        inputs_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        labels=None,
        past_key_values=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        mask_past_padding=False,
    ):
        """`mask_past_padding=True`: in a cached step, `attention_mask` [batch, cached + new] also masks
        cached positions (transformers uses only its last column there); generation needs it."""
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if labels is not None:
            use_cache = False
        outputs = self._encode(
            input_ids, attention_mask, token_type_ids, inputs_embeds, output_attentions, output_hidden_states,
            encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
            past_key_values=past_key_values, use_cache=use_cache, mask_past_padding=mask_past_padding,
        )
        logits = self._prediction_scores(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            # next-token prediction: position t predicts token t + 1
            loss = token_cross_entropy(logits[:, :-1, :].contiguous(), labels[:, 1:].contiguous())
        if not return_dict:
            return with_loss(loss, (logits,) + _tuple_tail(outputs))
        return CausalLMOutputWithCrossAttentions(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions, cross_attentions=outputs.cross_attentions,
        )

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, **model_kwargs):
        if attention_mask is None:
            attention_mask = input_ids.new_ones(input_ids.shape)
        if past_key_values is not None:
            input_ids = input_ids[:, -1:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "past_key_values": past_key_values}

    @staticmethod
    def _reorder_cache(past_key_values, beam_idx):
        return tuple(
            tuple(None if state is None else state.index_select(0, beam_idx.to(state.device)) for state in layer)
            for layer in past_key_values
        )


class MegaForMaskedLM(_MegaLMHead):
    head_name = "mlm_head"
    _tied_weights_keys = ["mlm_head.weight"]

    def __init__(self, config: MegaConfig):
        super().__init__(config)
        if config.is_decoder:
            logger.warning(
                "If you want to use `MegaForMaskedLM`, set `config.is_decoder=False` for bi-directional self-attention."
            )
        self._build_lm_head(config)
        self.dropout = nn.Dropout(config.dropout_prob)  # present (and unused) in the reference too
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        inputs_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self._encode(
            input_ids, attention_mask, token_type_ids, inputs_embeds, output_attentions, output_hidden_states,
            encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
        )
        logits = self._prediction_scores(outputs.last_hidden_state)
        loss = token_cross_entropy(logits, labels) if labels is not None else None
        if not return_dict:
            return with_loss(loss, (logits,) + _tuple_tail(outputs))
        return head_output(MaskedLMOutput, outputs, True, loss=loss, logits=logits)


class _MegaClassifier(MegaPreTrainedModel):
    """The forward shared by sequence and token classification: base model, `_logits`, `_loss`."""

    _output_class = SequenceClassifierOutput

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self._encode(input_ids, attention_mask, token_type_ids, inputs_embeds, output_attentions,
                               output_hidden_states)
        logits = self._logits(outputs.last_hidden_state)
        loss = self._loss(logits, labels) if labels is not None else None
        if not return_dict:
            return with_loss(loss, (logits,) + _tuple_tail(outputs))
        return head_output(self._output_class, outputs, True, loss=loss, logits=logits)


class MegaForSequenceClassification(_MegaClassifier):
    """Classification / regression on the first token; the loss follows `config.problem_type`."""

    def __init__(self, config: MegaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mega = MegaModel(config, add_pooling_layer=False)
        self.classifier = MegaClassificationHead(config)
        self.post_init()

    def _logits(self, hidden_states):
        return self.classifier(hidden_states)

    def _loss(self, logits, labels):
        return sequence_classification_loss(logits, labels, self.config)


class MegaForMultipleChoice(MegaPreTrainedModel):
    """Scores each choice from the pooled first token; inputs are [batch, num_choices, seq]."""

    def __init__(self, config: MegaConfig):
        super().__init__(config)
        self.mega = MegaModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, token_type_ids=None, attention_mask=None, labels=None, inputs_embeds=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        num_choices = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]

        def flat(t):
            return None if t is None else t.reshape(-1, *t.shape[2:])

        outputs = self._encode(flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(inputs_embeds),
                               output_attentions, output_hidden_states)
        logits = self.classifier(self.dropout(outputs.pooler_output)).view(-1, num_choices)
        loss = token_cross_entropy(logits, labels) if labels is not None else None
        if not return_dict:
            return with_loss(loss, (logits,) + _tuple_tail(outputs))
        return head_output(MultipleChoiceModelOutput, outputs, True, loss=loss, logits=logits)


class MegaForTokenClassification(_MegaClassifier):
    _output_class = TokenClassifierOutput

    def __init__(self, config: MegaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mega = MegaModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _logits(self, hidden_states):
        return self.classifier(self.dropout(hidden_states))

    def _loss(self, logits, labels):
        return token_cross_entropy(logits, labels)


class MegaForQuestionAnswering(MegaPreTrainedModel):
    def __init__(self, config: MegaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mega = MegaModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None,
                start_positions=None, end_positions=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self._encode(input_ids, attention_mask, token_type_ids, inputs_embeds, output_attentions,
                               output_hidden_states)
        start_logits, end_logits, loss = span_logits_and_loss(
            self.qa_outputs(outputs.last_hidden_state), start_positions, end_positions)
        if not return_dict:
            return with_loss(loss, (start_logits, end_logits) + _tuple_tail(outputs))
        return head_output(QuestionAnsweringModelOutput, outputs, True, loss=loss, start_logits=start_logits,
                           end_logits=end_logits)


__all__ = [
    "MegaConfig",
    "MegaSequenceLengthError",
    "MegaPreTrainedModel",
    "MegaModel",
    "MegaForCausalLM",
    "MegaForMaskedLM",
    "MegaForSequenceClassification",
    "MegaForMultipleChoice",
    "MegaForTokenClassification",
    "MegaForQuestionAnswering",
]
