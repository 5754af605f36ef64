"""One decoder-only transformer block for every LLM family (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3,
Mixtral, Qwen3-MoE), configured by a small `DecoderSpec`.

Why one module: these families differ in a handful of switches (norm kind, q/k norm, extra Gemma norms,
biases, fused projections, soft-caps, sliding windows, RoPE variant, dense or routed MLP), not in structure.
`decoder_llms.py` maps each family's config (transformers' field names) onto a spec; the modules here
carry transformers' parameter names so checkpoints load 1:1 in both directions. A config value this
module does not implement raises at model construction, naming the field, instead of computing
something else.

The KV cache is the decoder-only generation contract (generation/causal_session.py): a tuple over layers
of `(key, value)` [batch, kv_heads, seq, head_dim], the full history (sliding-window layers mask older
positions instead of dropping them, which gives the same attention), with the 2-D attention mask covering
cached + new positions. Positions default to `past_len + arange(new)` as in transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .generation import GenerationConfig, GenerationMixin
from .layers import (causal_lm_loss, check_input_ids, get_activation, init_linear_embedding_norm,
                     sequence_classification_loss, span_logits_and_loss, to_legacy_cache, token_cross_entropy)
from .modeling_utils import _EMPTY_INIT, PreTrainedModel, clone_empty
from .outputs import (BaseModelOutputWithPast, CausalLMOutputWithPast, QuestionAnsweringModelOutput,
                      SequenceClassifierOutputWithPast, TokenClassifierOutput)

# ---------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class RopeSpec:
    """One rotary table: its kind and parameters (transformers' `rope_scaling` dict, validated)."""

    rope_type: str  # default | linear | dynamic | yarn | longrope | llama3
    theta: float
    dim: int  # rotated dims per head (head_dim * partial_rotary_factor)
    scaling: tuple = ()  # sorted (key, value) pairs of rope_scaling
    max_position_embeddings: int = 2048
    original_max_position_embeddings: int | None = None  # top-level config field (Phi-3 LongRoPE)


@dataclass(frozen=True)
class DecoderSpec:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    eps: float
    activation: str
    scaling: float  # attention score scale
    rope: RopeSpec
    norm: str = "rms"  # "rms": w * x (Llama); "gemma": (1 + w) * x in float32
    qk_norm: bool = False
    sandwich_norms: bool = False  # Gemma 2/3: norms after attention and around the MLP
    qkv_bias: bool = False
    o_bias: bool = False
    fused_qkv: bool = False  # Phi-3 qkv_proj
    mlp_kind: str = "gated"  # "gated" (gate/up/down), "fused_gated" (Phi-3 gate_up_proj)
    mlp_bias: bool = False
    mlp_name: str = "mlp"  # layer attribute of the MLP / MoE block ("block_sparse_moe" for Mixtral)
    moe_layers: tuple = ()  # per layer: routed experts instead of the dense MLP
    moe_experts: int = 0
    moe_top_k: int = 0
    moe_intermediate_size: int = 0
    moe_normalize: bool = True  # renormalise the top-k routing weights (Mixtral; Qwen3-MoE norm_topk_prob)
    moe_expert_names: tuple = ("gate_proj", "up_proj", "down_proj")  # Mixtral: ("w1", "w3", "w2")
    windows: tuple = ()  # per layer: sliding window or None
    local_rope: RopeSpec | None = None  # Gemma 3: RoPE of the sliding layers
    attn_softcap: float | None = None
    final_softcap: float | None = None
    embed_scale: float | None = None  # Gemma: embeddings times sqrt(hidden_size), in the weights' dtype
    embed_scale_on_lookup: bool = False  # Gemma 3 scales in the embedding lookup (not given inputs_embeds)
    pad_token_id: int | None = None
    attention_dropout: float = 0.0  # on the attention weights, in training
    resid_dropout: float = 0.0  # Phi-3 resid_pdrop: on the attention and MLP outputs, in training


# ---------------------------------------------------------------------------------- RoPE

_ROPE_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor"},
    "yarn": {"factor"},
    "longrope": {"short_factor", "long_factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}
_ROPE_OPTIONAL = {
    "yarn": {"attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
             "original_max_position_embeddings", "truncate"},
    "longrope": {"attention_factor", "factor", "original_max_position_embeddings"},
    "linear": set(), "dynamic": {"original_max_position_embeddings"}, "default": set(), "llama3": set(),
}


def rope_spec(config, theta: float, head_dim: int, rope_scaling=None, field: str = "rope_scaling") -> RopeSpec:
    """Validate `config.rope_scaling` (or the given dict) and turn it into a RopeSpec; unknown kinds or
    missing keys raise naming the field."""
    scaling = dict(rope_scaling or {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in _ROPE_KEYS:
        raise ValueError(
            f"config field `{field}` has rope type {rope_type!r}, which rayformers does not implement; supported: "
            f"{sorted(_ROPE_KEYS)}."
        )
    missing = sorted(_ROPE_KEYS[rope_type] - set(scaling))
    if missing:
        raise ValueError(f"config field `{field}` (rope type {rope_type!r}) lacks {missing}.")
    known = _ROPE_KEYS[rope_type] | _ROPE_OPTIONAL[rope_type] | {"rope_type", "type"}
    unknown = sorted(set(scaling) - known)
    if unknown:
        raise ValueError(
            f"config field `{field}` holds {unknown}, which rope type {rope_type!r} does not use in transformers "
            "4.57.6 and rayformers does not implement; remove them or use a supported checkpoint."
        )
    partial = getattr(config, "partial_rotary_factor", 1.0)
    return RopeSpec(
        rope_type=rope_type, theta=float(theta), dim=int(head_dim * partial),
        scaling=tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in scaling.items())),
        max_position_embeddings=config.max_position_embeddings,
        original_max_position_embeddings=getattr(config, "original_max_position_embeddings", None),
    )


def rope_inverse_frequencies(spec: RopeSpec, seq_len=None) -> tuple[torch.Tensor, float]:
    """(inv_freq float32 [dim/2], attention scaling) exactly as transformers' ROPE_INIT_FUNCTIONS."""
    scaling = dict(spec.scaling)
    dim, base = spec.dim, spec.theta

    def default(base_):
        return 1.0 / (base_ ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))

    kind = spec.rope_type
    if kind == "default":
        return default(base), 1.0
    if kind == "linear":
        return default(base) / scaling["factor"], 1.0
    if kind == "dynamic":
        factor, max_pos = scaling["factor"], spec.max_position_embeddings
        seq_len = max_pos if seq_len is None else max(int(seq_len), max_pos)
        base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        return default(base), 1.0
    if kind == "llama3":
        inv_freq = default(base)
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_context_len = scaling["original_max_position_embeddings"]
        low_freq_wavelen, high_freq_wavelen = old_context_len / low, old_context_len / high
        wavelen = 2 * math.pi / inv_freq
        inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(is_medium, smoothed, inv_freq_llama), 1.0
    if kind == "yarn":
        return _yarn(spec, scaling)
    if kind == "longrope":
        factor = scaling.get("factor")
        attention_factor = scaling.get("attention_factor")
        original = spec.original_max_position_embeddings
        if original:
            factor = spec.max_position_embeddings / original
        else:
            original = spec.max_position_embeddings
        if attention_factor is None:
            attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        ext = scaling["long_factor"] if seq_len and seq_len > original else scaling["short_factor"]
        ext_factors = torch.tensor(ext, dtype=torch.float32)
        shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
        return 1.0 / (ext_factors * base**shape), attention_factor
    raise AssertionError(kind)


def _yarn(spec: RopeSpec, scaling: dict) -> tuple[torch.Tensor, float]:
    dim, base = spec.dim, spec.theta
    factor = scaling["factor"]
    attention_factor = scaling.get("attention_factor")
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    original = scaling.get("original_max_position_embeddings") or spec.max_position_embeddings

    def get_mscale(scale, m=1):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
    extrapolation_factor = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation_factor) + (1.0 / pos_freqs) * extrapolation_factor
    return inv_freq, attention_factor


class RotaryEmbedding(nn.Module):
    """cos / sin tables for position ids; `dynamic` and `longrope` recompute their frequencies from the
    largest position of each call (stateful, as transformers' `dynamic_rope_update`)."""

    def __init__(self, spec: RopeSpec):
        super().__init__()
        self.spec = spec
        inv_freq, self.attention_scaling = rope_inverse_frequencies(spec)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.original_inv_freq = inv_freq
        self.max_seq_len_cached = spec.max_position_embeddings
        self.original_max_seq_len = spec.max_position_embeddings

    def _update(self, position_ids: torch.Tensor) -> None:
        kind = self.spec.rope_type
        if kind not in ("dynamic", "longrope"):
            return
        seq_len = int(position_ids.max()) + 1
        device = self.inv_freq.device
        if kind == "dynamic":
            if seq_len > self.max_seq_len_cached:
                inv_freq, self.attention_scaling = rope_inverse_frequencies(self.spec, seq_len)
                self.inv_freq = inv_freq.to(device)
                self.max_seq_len_cached = seq_len
            if seq_len < self.original_max_seq_len and self.max_seq_len_cached > self.original_max_seq_len:
                self.inv_freq = self.original_inv_freq.to(device)
                self.max_seq_len_cached = self.original_max_seq_len
            return
        original = self.spec.original_max_position_embeddings or self.spec.max_position_embeddings
        if seq_len > original:
            if not hasattr(self, "long_inv_freq"):
                self.long_inv_freq = rope_inverse_frequencies(self.spec, original + 1)[0]
            self.inv_freq = self.long_inv_freq.to(device)
        else:
            self.inv_freq = self.original_inv_freq.to(device)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        self._update(position_ids)
        inv = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1).to(position_ids.device)
        device_type = position_ids.device.type if position_ids.device.type != "mps" else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            freqs = (inv @ position_ids[:, None, :].float()).transpose(1, 2)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos = emb.cos() * self.attention_scaling
            sin = emb.sin() * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate the first `cos.shape[-1]` dims of [batch, heads, seq, head_dim] q and k (Phi-3's partial
    rotary leaves the rest unchanged)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rotary = cos.shape[-1]
    if rotary == q.shape[-1]:
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    q_rot, q_pass = q[..., :rotary], q[..., rotary:]
    k_rot, k_pass = k[..., :rotary], k[..., rotary:]
    return (torch.cat([q_rot * cos + _rotate_half(q_rot) * sin, q_pass], dim=-1),
            torch.cat([k_rot * cos + _rotate_half(k_rot) * sin, k_pass], dim=-1))


# ---------------------------------------------------------------------------------- blocks


def _param_device():
    """"meta" while `from_pretrained` builds the model (parameters are about to be replaced by the
    checkpoint's tensors): creating them there directly skips allocating, then discarding, real storage
    for every weight, which costs more than the rest of the load on a large checkpoint."""
    return "meta" if _EMPTY_INIT.active else None


def _linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=bias, device=_param_device())


class RMSNorm(nn.Module):
    """Llama's RMSNorm: normalise in float32, cast back, then multiply by the weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=_param_device()))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(dtype)


class GemmaRMSNorm(nn.Module):
    """Gemma's RMSNorm: (1 + weight) * normalised x, all in float32, then cast (weight starts at zero)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim, device=_param_device()))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)


def _norm(spec: DecoderSpec, dim: int) -> nn.Module:
    return GemmaRMSNorm(dim, spec.eps) if spec.norm == "gemma" else RMSNorm(dim, spec.eps)


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)); names configurable for Mixtral's experts (w1, w3, w2)."""

    def __init__(self, hidden: int, intermediate: int, activation: str, bias: bool = False,
                 names: tuple = ("gate_proj", "up_proj", "down_proj")):
        super().__init__()
        self._names = names
        setattr(self, names[0], _linear(hidden, intermediate, bias=bias))
        setattr(self, names[1], _linear(hidden, intermediate, bias=bias))
        setattr(self, names[2], _linear(intermediate, hidden, bias=bias))
        self.act_fn = get_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up, down = (getattr(self, n) for n in self._names)
        return down(self.act_fn(gate(x)) * up(x))


class FusedGatedMLP(nn.Module):
    """Phi-3: one `gate_up_proj`, split in halves (gate first)."""

    def __init__(self, hidden: int, intermediate: int, activation: str):
        super().__init__()
        self.gate_up_proj = _linear(hidden, 2 * intermediate, bias=False)
        self.down_proj = _linear(intermediate, hidden, bias=False)
        self.activation_fn = get_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * self.activation_fn(gate))


class SparseMoeBlock(nn.Module):
    """Top-k routed experts (Mixtral, Qwen3-MoE): softmax over experts in float32, keep the top k,
    optionally renormalise, and sum the chosen experts' outputs, expert by expert as transformers does."""

    def __init__(self, spec: DecoderSpec):
        super().__init__()
        self.top_k = spec.moe_top_k
        self.num_experts = spec.moe_experts
        self.normalize = spec.moe_normalize
        self.gate = _linear(spec.hidden_size, spec.moe_experts, bias=False)
        self.experts = nn.ModuleList(
            GatedMLP(spec.hidden_size, spec.moe_intermediate_size, spec.activation, names=spec.moe_expert_names)
            for _ in range(spec.moe_experts)
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = hidden_states.shape
        flat = hidden_states.view(-1, dim)
        router_logits = self.gate(flat)
        weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        weights, chosen = torch.topk(weights, self.top_k, dim=-1)
        if self.normalize:
            weights /= weights.sum(dim=-1, keepdim=True)
        weights = weights.to(flat.dtype)
        out = torch.zeros((batch * seq, dim), dtype=flat.dtype, device=flat.device)
        expert_mask = F.one_hot(chosen, num_classes=self.num_experts).permute(2, 1, 0)
        for expert in torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero().flatten().tolist():
            idx, top_x = torch.where(expert_mask[expert])
            current = self.experts[expert](flat[top_x]) * weights[top_x, idx, None]
            out.index_add_(0, top_x, current.to(flat.dtype))
        return out.reshape(batch, seq, dim)


class DecoderAttention(nn.Module):
    def __init__(self, spec: DecoderSpec, layer_idx: int):
        super().__init__()
        self.spec = spec
        self.head_dim = spec.head_dim
        self.num_heads, self.num_kv_heads = spec.num_heads, spec.num_kv_heads
        self.scaling = spec.scaling
        self.sliding_window = spec.windows[layer_idx]
        q_size, kv_size = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        if spec.fused_qkv:
            self.qkv_proj = _linear(spec.hidden_size, q_size + 2 * kv_size, bias=spec.qkv_bias)
        else:
            self.q_proj = _linear(spec.hidden_size, q_size, bias=spec.qkv_bias)
            self.k_proj = _linear(spec.hidden_size, kv_size, bias=spec.qkv_bias)
            self.v_proj = _linear(spec.hidden_size, kv_size, bias=spec.qkv_bias)
        self.o_proj = _linear(q_size, spec.hidden_size, bias=spec.o_bias)
        if spec.qk_norm:
            self.q_norm = _norm(spec, spec.head_dim)
            self.k_norm = _norm(spec, spec.head_dim)

    def forward(self, x, cos, sin, mask, past, output_attentions: bool):
        batch, seq, _ = x.shape
        if self.spec.fused_qkv:
            qkv = self.qkv_proj(x)
            q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            q, k, v = qkv[..., :q_size], qkv[..., q_size:q_size + kv_size], qkv[..., q_size + kv_size:]
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(batch, seq, -1, self.head_dim)
        k = k.view(batch, seq, -1, self.head_dim)
        v = v.view(batch, seq, -1, self.head_dim).transpose(1, 2)
        if self.spec.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        present = (k, v)
        weights = None
        if self.spec.attn_softcap is not None or output_attentions:
            groups = self.num_heads // self.num_kv_heads
            kr = k.repeat_interleave(groups, dim=1) if groups > 1 else k
            vr = v.repeat_interleave(groups, dim=1) if groups > 1 else v
            scores = torch.matmul(q, kr.transpose(2, 3)) * self.scaling
            if self.spec.attn_softcap is not None:
                scores = torch.tanh(scores / self.spec.attn_softcap) * self.spec.attn_softcap
            scores = scores + mask
            weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            dropped = F.dropout(weights, p=self.spec.attention_dropout, training=self.training)
            out = torch.matmul(dropped, vr)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling,
                                                 dropout_p=self.spec.attention_dropout if self.training else 0.0,
                                                 enable_gqa=self.num_heads != self.num_kv_heads)
        out = out.transpose(1, 2).reshape(batch, seq, -1)
        return self.o_proj(out), present, (weights if output_attentions else None)


class DecoderLayer(nn.Module):
    def __init__(self, spec: DecoderSpec, layer_idx: int):
        super().__init__()
        self.spec = spec
        self.self_attn = DecoderAttention(spec, layer_idx)
        if spec.moe_layers and spec.moe_layers[layer_idx]:
            mlp = SparseMoeBlock(spec)
        elif spec.mlp_kind == "fused_gated":
            mlp = FusedGatedMLP(spec.hidden_size, spec.intermediate_size, spec.activation)
        else:
            mlp = GatedMLP(spec.hidden_size, spec.intermediate_size, spec.activation, bias=spec.mlp_bias)
        setattr(self, spec.mlp_name, mlp)
        self.input_layernorm = _norm(spec, spec.hidden_size)
        self.post_attention_layernorm = _norm(spec, spec.hidden_size)
        if spec.sandwich_norms:
            self.pre_feedforward_layernorm = _norm(spec, spec.hidden_size)
            self.post_feedforward_layernorm = _norm(spec, spec.hidden_size)
        self.resid_dropout = nn.Dropout(spec.resid_dropout)

    def forward(self, x, cos, sin, mask, past, output_attentions: bool):
        sandwich = self.spec.sandwich_norms
        h, present, weights = self.self_attn(self.input_layernorm(x), cos, sin, mask, past, output_attentions)
        if sandwich:
            h = self.post_attention_layernorm(h)
        x = x + self.resid_dropout(h)
        h = self.pre_feedforward_layernorm(x) if sandwich else self.post_attention_layernorm(x)
        h = getattr(self, self.spec.mlp_name)(h)
        if sandwich:
            h = self.post_feedforward_layernorm(h)
        return x + self.resid_dropout(h), present, weights


def packed_sequence_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Which packed sequence each token belongs to, from position ids that restart per sequence
    (transformers' `find_packed_sequence_indices`): [[0, 1, 0, 1, 2]] -> [[0, 0, 1, 1, 1]]."""
    first = position_ids[:, :1] - 1
    return (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)


def _layer_kind(spec: DecoderSpec, layer_idx: int) -> tuple:
    """What a layer's construction depends on besides the spec: its window and whether it is routed."""
    return spec.windows[layer_idx], bool(spec.moe_layers and spec.moe_layers[layer_idx])


def _build_layers(spec: DecoderSpec) -> list[DecoderLayer]:
    """The decoder layers. While loading (parameters on the meta device, about to be replaced) a
    layer of a kind already built is a `clone_empty` of it: ~10x cheaper than constructing it."""
    layers, built = [], {}
    for i in range(spec.num_layers):
        kind = _layer_kind(spec, i)
        if _EMPTY_INIT.active and kind in built:
            layers.append(clone_empty(built[kind]))
        else:
            layers.append(DecoderLayer(spec, i))
            built.setdefault(kind, layers[-1])
    return layers


def attention_masks(attention_mask: torch.Tensor, query_len: int, windows, dtype: torch.dtype,
                    sequence_ids: torch.Tensor | None = None) -> dict:
    """Additive [batch, 1, query, key] masks, one per distinct window: causal, padding and (for a window w)
    `key > query - w`, on absolute cache indices as transformers' masks; masked entries get dtype's min.
    With `sequence_ids` (packed rows, no cache) a token also attends only within its own sequence."""
    batch, key_len = attention_mask.shape
    device = attention_mask.device
    q_idx = torch.arange(key_len - query_len, key_len, device=device)[:, None]
    k_idx = torch.arange(key_len, device=device)[None, :]
    causal = k_idx <= q_idx
    padding = attention_mask.bool()[:, None, None, :]
    if sequence_ids is not None:
        padding = padding & (sequence_ids[:, None, :, None] == sequence_ids[:, None, None, :])
    masks = {}
    for window in set(windows):
        allowed = causal if window is None else causal & (k_idx > q_idx - window)
        allowed = allowed[None, None] & padding
        masks[window] = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
            ~allowed, torch.finfo(dtype).min)
    return masks


# ---------------------------------------------------------------------------------- models


class DecoderPreTrainedModel(PreTrainedModel):
    """Base of every decoder-only family class; `spec_builder` (set per family) maps a config to a spec."""

    base_model_prefix = "model"
    spec_builder = None  # staticmethod(config) -> DecoderSpec, set by decoder_llms

    def _spec(self, config) -> DecoderSpec:
        return type(self).spec_builder(config)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, RMSNorm):
            module.weight.data.fill_(1.0)
        elif isinstance(module, GemmaRMSNorm):
            module.weight.data.zero_()
        else:
            init_linear_embedding_norm(module, getattr(self.config, "initializer_range", 0.02))


class DecoderModel(DecoderPreTrainedModel):
    """The bare decoder: embeddings, layers, final norm; returns the last hidden state and the KV cache."""

    def __init__(self, config, spec: DecoderSpec | None = None, post_init: bool = True):
        super().__init__(config)
        spec = spec or self._spec(config)
        self.spec = spec
        pad = spec.pad_token_id if spec.pad_token_id is not None and 0 <= spec.pad_token_id < spec.vocab_size else None
        self.padding_idx = pad
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size, pad, device=_param_device())
        self.layers = nn.ModuleList(_build_layers(spec))
        self.norm = _norm(spec, spec.hidden_size)
        self.rotary_emb = RotaryEmbedding(spec.rope)
        if spec.local_rope is not None:
            self.rotary_emb_local = RotaryEmbedding(spec.local_rope)
        if post_init:  # a head initialises (or, loading, ties) the whole model in its own post_init
            self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache_position=None, **unused):
        config, spec = self.config, self.spec
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else config.output_hidden_states)
        use_cache = use_cache if use_cache is not None else getattr(config, "use_cache", True)
        return_dict = return_dict if return_dict is not None else config.use_return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            check_input_ids(input_ids, spec.vocab_size, "input_ids")
            inputs_embeds = self.embed_tokens(input_ids)
        batch, seq = inputs_embeds.shape[:2]
        past = to_legacy_cache(past_key_values)
        if past is not None and len(past) != spec.num_layers:
            raise ValueError(
                f"past_key_values has {len(past)} layers, this model {spec.num_layers}; pass back the "
                "past_key_values returned by the previous call."
            )
        past_len = past[0][0].shape[2] if past is not None else 0
        device = inputs_embeds.device
        sequence_ids = None
        if attention_mask is None and position_ids is not None and past is None:
            # Packed rows (position ids restarting per row, no padding mask), as transformers: block-diagonal
            # causal attention, so no token attends across rows.
            sequence_ids = packed_sequence_ids(position_ids.expand(batch, -1))
        if attention_mask is None:
            attention_mask = torch.ones((batch, past_len + seq), dtype=torch.long, device=device)
        elif attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch, past_len + seq):
            raise ValueError(
                f"attention_mask must be [batch, cached + new] = {[batch, past_len + seq]} (a 2-D padding mask "
                f"over every position so far), got {list(attention_mask.shape)}."
            )
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + seq, device=device)[None, :].expand(batch, -1)
        hidden = inputs_embeds
        if spec.embed_scale is not None and (input_ids is not None or not spec.embed_scale_on_lookup):
            hidden = hidden * torch.tensor(spec.embed_scale, dtype=hidden.dtype)
        masks = attention_masks(attention_mask, seq, spec.windows, hidden.dtype, sequence_ids)
        cos, sin = self.rotary_emb(position_ids, hidden.dtype)
        local = self.rotary_emb_local(position_ids, hidden.dtype) if spec.local_rope is not None else None

        all_hidden, all_attn, presents = [], [], []
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden.append(hidden)
            window = spec.windows[i]
            c, s = local if (local is not None and window is not None) else (cos, sin)
            hidden, present, weights = layer(hidden, c, s, masks[window], past[i] if past is not None else None,
                                             output_attentions)
            presents.append(present)
            if output_attentions:
                all_attn.append(weights)
        hidden = self.norm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)
        out = BaseModelOutputWithPast(
            last_hidden_state=hidden, past_key_values=tuple(presents) if use_cache else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None)
        return out if return_dict else out.to_tuple()


class _DecoderHead(DecoderPreTrainedModel):
    """A base decoder under `base_model_prefix` plus a head."""

    def _attach_decoder(self, config) -> DecoderModel:
        decoder = DecoderModel(config, self._spec(config), post_init=False)
        setattr(self, self.base_model_prefix, decoder)
        return decoder

    def get_input_embeddings(self):
        return self.base_model.embed_tokens

    def set_input_embeddings(self, value):
        self.base_model.embed_tokens = value

    def _run_decoder(self, input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache,
                     output_attentions, output_hidden_states):
        return self.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                               output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                               return_dict=True)


class DecoderForCausalLM(_DecoderHead, GenerationMixin):
    """Next-token logits (`lm_head`, tied to the embeddings when `tie_word_embeddings`); `generate()` continues
    left-padded prompts with the KV cache (rayformers.models.generation), token-identical to transformers."""

    _tied_weights_keys = ["lm_head.weight"]
    # Decoder-only generation contract (generation/causal_session.py).
    _generation_position_ids = True
    _generation_chunked_prefill = True  # a cached forward takes several new tokens (attention_masks)
    _cache_sequence_dims = (2, 2)
    _generation_always_causal = True  # a decoder-only LM: causal whatever config.is_decoder says

    def __init__(self, config):
        super().__init__(config)
        decoder = self._attach_decoder(config)
        self.lm_head = _linear(decoder.spec.hidden_size, decoder.spec.vocab_size, bias=False)
        self.generation_config = GenerationConfig.from_model_config(config)
        # A prompt prefix's cache may be computed once and reused behind other rows' padding only
        # when no layer has a sliding window (its window counts cache columns, padding included).
        self._generation_prefix_sharing = all(window is None for window in decoder.spec.windows)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache_position=None, logits_to_keep=0, **loss_kwargs):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if labels is not None and getattr(self.config, "output_router_logits", False):
            raise NotImplementedError(
                "config field `output_router_logits=True` adds the router auxiliary loss to the LM loss in "
                "transformers; rayformers does not compute it. Set output_router_logits=False."
            )
        outputs = self._run_decoder(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds,
                                    use_cache, output_attentions, output_hidden_states)
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:, :]
        logits = self.lm_head(hidden)
        softcap = self.base_model.spec.final_softcap
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, self.base_model.spec.vocab_size, **loss_kwargs)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                     hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return out if return_dict else out.to_tuple()


class DecoderForSequenceClassification(_DecoderHead):
    """`score` over the last non-padding token of each row (the rightmost token != pad_token_id, as
    transformers; left- and right-padded batches both work)."""

    def __init__(self, config):
        super().__init__(config)
        decoder = self._attach_decoder(config)
        self.num_labels = config.num_labels
        self.score = _linear(decoder.spec.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **unused):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self._run_decoder(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds,
                                    use_cache, output_attentions, output_hidden_states)
        logits = self.score(outputs.last_hidden_state)
        batch = logits.shape[0]
        pad = self.config.pad_token_id
        if pad is None and batch != 1:
            raise ValueError(
                "Cannot handle batch sizes > 1 if no padding token is defined: set config.pad_token_id (the "
                "tokenizer's pad id) so the last real token of each row can be found."
            )
        if pad is None or input_ids is None:
            last = torch.full((batch,), logits.shape[1] - 1, device=logits.device, dtype=torch.long)
        else:
            non_pad = (input_ids != pad).to(logits.device, torch.int32)
            positions = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
            last = (positions * non_pad).argmax(-1)
        pooled = logits[torch.arange(batch, device=logits.device), last]
        loss = sequence_classification_loss(pooled, labels, self.config) if labels is not None else None
        out = SequenceClassifierOutputWithPast(loss=loss, logits=pooled, past_key_values=outputs.past_key_values,
                                               hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return out if return_dict else out.to_tuple()


class DecoderForTokenClassification(_DecoderHead):
    """Per-token `score` (with bias) after dropout (`classifier_dropout`, else `hidden_dropout`, else 0.1)."""

    def __init__(self, config):
        super().__init__(config)
        decoder = self._attach_decoder(config)
        self.num_labels = config.num_labels
        if getattr(config, "classifier_dropout", None) is not None:
            dropout = config.classifier_dropout
        elif getattr(config, "hidden_dropout", None) is not None:
            dropout = config.hidden_dropout
        else:
            dropout = 0.1
        self.dropout = nn.Dropout(dropout)
        self.score = _linear(decoder.spec.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **unused):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self._run_decoder(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds,
                                    use_cache, output_attentions, output_hidden_states)
        logits = self.score(self.dropout(outputs.last_hidden_state))
        loss = token_cross_entropy(logits, labels) if labels is not None else None
        out = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                    attentions=outputs.attentions)
        return out if return_dict else out.to_tuple()


class DecoderForQuestionAnswering(_DecoderHead):
    """Span start / end logits (`qa_outputs`); the base model sits under `transformer` for Llama and the
    Qwen families (transformers' backward-compatible name), `model` otherwise."""

    def __init__(self, config):
        super().__init__(config)
        decoder = self._attach_decoder(config)
        self.qa_outputs = _linear(decoder.spec.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, start_positions=None, end_positions=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **unused):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self._run_decoder(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds,
                                    False, output_attentions, output_hidden_states)
        start, end, loss = span_logits_and_loss(self.qa_outputs(outputs.last_hidden_state), start_positions,
                                                end_positions)
        out = QuestionAnsweringModelOutput(loss=loss, start_logits=start, end_logits=end,
                                           hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return out if return_dict else out.to_tuple()
