"""How a worker holds the model: DDP or FSDP2 (``train.strategy``), gradient checkpointing
(``train.gradient_checkpointing``), full-state checkpoints, and the worker's memory figures.

* ``ddp``: every worker holds the whole model; gradients are all-reduced (Ray Train's
  ``prepare_model``).
* ``fsdp``: ``torch.distributed.fsdp.fully_shard`` (FSDP2) on every transformer layer, then on the
  root, so parameters, gradients and AdamW state are sharded across workers and each layer's
  parameters are gathered only while it runs. With ``MixedPrecisionPolicy`` the gathered
  parameters are bfloat16 where the device computes bfloat16 natively (detected, see
  :func:`bf16_supported`), gradients are reduced in float32, and the sharded master weights and
  optimizer state stay float32.
* Gradient checkpointing wraps each transformer layer's forward in
  ``torch.utils.checkpoint.checkpoint`` (non-reentrant): activations inside a layer are recomputed
  in the backward pass instead of stored.

"Transformer layers" are found structurally (:func:`transformer_layers`): the blocks of every
``nn.ModuleList`` whose children are all of one class and are composite modules (``BertLayer``,
``BartEncoderLayer``, decoder blocks...), so every family is covered without a per-family table.

Checkpoints under FSDP are written from full (unsharded) state dicts gathered to rank 0, so the
files are the same HF-format checkpoint a DDP run writes and ``rayformers run`` scores them.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
from typing import Any, Optional

import torch
from torch import nn


# ------------------------------------------------------------------------------------------------
# Layers, checkpointing, sharding.


def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of the model, outermost lists first (no list nested in another found one)."""
    found: list[nn.Module] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1 or not all(len(list(child.children())) >= 2 for child in module):
            continue
        if any(_contains(layer, module) for layer in found):
            continue
        found.extend(module)
    return found


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute each transformer layer in the backward pass; returns the number of layers wrapped."""
    from torch.utils.checkpoint import checkpoint

    layers = transformer_layers(model)
    for layer in layers:
        original = layer.forward

        def forward(*args, _original=original, _layer=layer, **kwargs):
            if not (_layer.training and torch.is_grad_enabled()):
                return _original(*args, **kwargs)
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        layer.forward = forward
    if not layers:
        raise ValueError(f"train.gradient_checkpointing: no transformer layers found in {type(model).__name__}")
    return len(layers)


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (CUDA: compute capability ≥ 8; CPU: oneDNN
    reports AVX512-BF16/AMX support). Detected on the worker, never assumed."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def fsdp_param_dtype(setting: str, device: torch.device) -> torch.dtype:
    """``train.fsdp_param_dtype`` resolved on the worker."""
    if setting == "float32":
        return torch.float32
    if setting == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if bf16_supported(device) else torch.float32


def shard_model(model: nn.Module, param_dtype: torch.dtype) -> int:
    """FSDP2 ``fully_shard`` on every transformer layer, then the root; returns the layer count."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    layers = transformer_layers(model)
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return len(layers)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def gradient_sync(wrapped: nn.Module, enabled: bool):
    """A context in which the backward pass does (``enabled``) or does not reduce gradients across
    workers: DDP's ``no_sync`` / FSDP2's ``set_requires_gradient_sync``."""
    if enabled:
        return contextlib.nullcontext()
    if is_sharded(wrapped):
        return _fsdp_no_sync(wrapped)
    if hasattr(wrapped, "no_sync"):
        return wrapped.no_sync()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


# ------------------------------------------------------------------------------------------------
# Full-state checkpoints.


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> Optional[dict]:
    """The unsharded state dict on rank 0 (a collective: every rank calls it); None when not sharded."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_full_options())
    return _drop_tied_copies(state, model)


def _drop_tied_copies(state: dict, model: nn.Module) -> dict:
    """One entry per shared parameter (tied input/output embeddings), as ``save_pretrained``
    writes them: the gathered state holds a separate copy under every name."""
    tied = set(model.tied_weight_keys()) if hasattr(model, "tied_weight_keys") else set()
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    for group in names.values():
        if len(group) > 1:
            keep = next((n for n in group if n not in tied), group[0])
            for name in group:
                if name != keep:
                    state.pop(name, None)
    return state


def full_optimizer_state(model: nn.Module, optimizer) -> Optional[dict]:
    """The unsharded optimizer state on rank 0 (every rank calls it); None when not sharded."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_options())


def load_full_optimizer_state(model: nn.Module, optimizer, state: dict) -> None:
    """Load an unsharded optimizer state (as :func:`full_optimizer_state` wrote) into the shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


def fix_saved_architecture(directory: str, model: nn.Module) -> None:
    """FSDP2 gives the root a subclass named ``FSDP<Class>``; the saved config names the model class."""
    path = os.path.join(directory, "config.json")
    if not is_sharded(model) or not os.path.isfile(path):
        return
    with open(path) as f:
        config = json.load(f)
    original = next(c for c in type(model).__mro__[1:] if not c.__name__.startswith("FSDP"))
    config["architectures"] = [original.__name__]
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


# ------------------------------------------------------------------------------------------------
# Memory.


def memory_metrics(device: torch.device) -> dict:
    """This worker's peak memory: ``peak_rss_mb`` (host, the process's maximum resident set) and,
    on CUDA, ``cuda_peak_allocated_mb`` (torch's allocator counter)."""
    out: dict[str, Any] = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if torch.device(device).type == "cuda":
        out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


__all__ = [
    "bf16_supported",
    "enable_gradient_checkpointing",
    "fix_saved_architecture",
    "fsdp_param_dtype",
    "full_model_state",
    "full_optimizer_state",
    "gradient_sync",
    "is_sharded",
    "load_full_optimizer_state",
    "memory_metrics",
    "shard_model",
    "transformer_layers",
]
