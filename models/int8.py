"""int8 Linear layers for CPU inference that keep float32's answers.

torch's stock dynamic quantisation (``torch.ao.quantization.quantize_dynamic``) gives each weight
matrix one scale and each activation matrix one scale. One outlier token (or one outlier channel)
then sets the scale for all the others, and all-MiniLM-L6-v2's embeddings fall to a mean cosine of
~0.91-0.95 with float32. Here, as in ONNX Runtime's dynamic quantisation and LLM.int8():

- every **output channel** of a weight has its own scale (``max |w_row| / 127``, symmetric), and
- every **token** (row of the activation) gets its own scale at run time (``max |x_row| / 127``),

and the product runs as an int8 x int8 -> int32 matrix product (``torch._int_mm``, oneDNN's VNNI/
AMX kernels on CPUs that have them), then ``int32 * row_scale * channel_scale + bias`` in float32.
Measured on all-MiniLM-L6-v2: mean cosine 0.997 with float32 (per-layer sensitivity in
docs/int8.md), against 0.95 for the stock quantisation on the same sentences.

Activation quantisation is element-wise work outside the matrix product: Linear layers fed the
same tensor (query/key/value projections) share one quantised copy of it, outside
``torch.inference_mode`` (where tensors keep no version counter to prove the copy current).
"""

from __future__ import annotations

import fnmatch
import weakref
from typing import Iterable, Optional

import torch
from torch import nn

MIN_IN_FEATURES = 16
"""Linear layers narrower than this stay float32: no speed to win, and ``torch._int_mm`` on CPU
returns wrong sums for an inner dimension of 1 (torch 2.13, checked in the tests)."""

INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
"""/proc/cpuinfo flags of int8 dot-product instructions (x86 VNNI, AMX; Arm dot product/i8mm)."""


def cpu_int8_dot_product(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The int8 dot-product instruction sets this CPU reports (``()``: none, or no /proc/cpuinfo).
    Without one, int8 matrix products are emulated with wider instructions and may not beat
    float32: callers say so instead of assuming."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            words = set(f.read().split())
    except OSError:
        return ()
    return tuple(flag for flag in INT8_DOT_PRODUCT_FLAGS if flag in words)


class _SharedQuantizedInput:
    """The last activation quantised by any Int8Linear of one model, and its int8 copy and row
    scales: reused while the same tensor, unchanged (same object, same version counter), comes in
    again. Held by weak reference, so nothing outlives the forward pass that made it."""

    def __init__(self) -> None:
        self._source: Optional[weakref.ref] = None
        self._version = -1
        self._value: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def get(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.is_inference():
            # torch.inference_mode keeps no version counter: an in-place change could not be seen
            return quantize_rows(x.reshape(-1, x.shape[-1]))
        if self._source is not None and self._source() is x and x._version == self._version:
            return self._value
        value = quantize_rows(x.reshape(-1, x.shape[-1]))
        self._source, self._version, self._value = weakref.ref(x), x._version, value
        return value


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: ``(q, scale)`` with ``x ~= q * scale``, ``scale`` of shape (rows, 1)."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min_(1e-12).div_(127.0)
    q = (x * scale.reciprocal()).round_().to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (one scale per output channel) and int8 activations (one
    scale per row, computed at every call). Inference only, float32 in and out."""

    def __init__(self, linear: nn.Linear, shared: Optional[_SharedQuantizedInput] = None) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        q = torch.round(weight / scale[:, None]).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # (in, out) contiguous: the layout torch._int_mm reads as its second operand.
        self.register_buffer("weight_int8", q.t().contiguous())
        self.register_buffer("weight_scale", scale)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self._shared = shared or _SharedQuantizedInput()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, row_scale = self._shared.get(x)
        y = torch._int_mm(q, self.weight_int8) * row_scale
        if self.bias is None:
            y.mul_(self.weight_scale)
        else:
            torch.addcmul(self.bias, y, self.weight_scale, out=y)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel x per-row"


def head_module_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the task head's modules: everything outside ``model.base_model`` (classifier,
    ``lm_head``, ...). Their outputs are the answer itself (a label's logit, the next token), they
    cost little next to the encoder, so they stay float32."""
    base = getattr(model, "base_model", model)
    if base is model:
        return ()
    inside = {id(m) for m in base.modules()}
    return tuple(name for name, m in model.named_modules() if name and id(m) not in inside)


def quantize_linear_int8(model: nn.Module, keep_float: Iterable[str] = ()) -> list[str]:
    """Replace the model's ``nn.Linear`` layers by :class:`Int8Linear`, in place, except the task
    head (:func:`head_module_names`), layers narrower than :data:`MIN_IN_FEATURES` and those whose
    name matches a ``keep_float`` pattern (``fnmatch``: ``encoder.layer.5.*``). Returns the
    names of the layers replaced."""
    patterns = tuple(keep_float)
    heads = set(head_module_names(model))
    shared = _SharedQuantizedInput()
    replaced = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is not nn.Linear or name in heads or child.in_features < MIN_IN_FEATURES:
                continue
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                continue
            setattr(parent, child_name, Int8Linear(child, shared))
            replaced.append(name)
    return replaced


__all__ = ["Int8Linear", "cpu_int8_dot_product", "head_module_names", "quantize_linear_int8", "quantize_rows"]
