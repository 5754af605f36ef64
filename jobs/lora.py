"""LoRA training: low-rank adapters injected into a model's linear layers, saved as PEFT saves them.

Why our own injection instead of peft: peft is not a runtime dependency (it pulls transformers),
and the layout it saves is small and documented. What training needs is:

* :func:`apply_lora` replaces every targeted ``nn.Linear`` with a :class:`LoraLinear` holding the
  frozen original as ``base_layer`` plus ``lora_A`` / ``lora_B`` (PEFT's module names, so the
  parameter names of the wrapped model are PEFT's saved names minus ``base_model.model.``), and
  freezes everything except the adapters and the ``modules_to_save``;
* targets are matched as PEFT matches them (a list: a module name or a ``.``-suffix of it; a string:
  a regex that must match the whole module name; ``all-linear``: every linear layer except the
  output embeddings), and a target that matches no module is an error naming the modules that exist;
* :func:`save_adapter` writes ``adapter_config.json`` + ``adapter_model.safetensors`` with the keys
  ``base_model.model.<module>.lora_A.weight`` ..., which ``PeftModel.from_pretrained`` loads onto the
  transformers model and :mod:`rayformers.models.adapters` merges for inference;
* :func:`merged_state_dict` gives the full weights with ``W + scale * B @ A`` folded in (for
  ``train.lora.merge``), without modifying the training model;
* :func:`load_adapter_weights` puts a saved adapter back into a wrapped model (resuming a run).

Initialisation follows PEFT's default (``init_lora_weights=True``): ``lora_A`` Kaiming-uniform with
``a=sqrt(5)`` (``nn.Linear``'s own init), ``lora_B`` zeros, so training starts at the base model.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import nn

from rayformers.models.adapters import ADAPTER_CONFIG_FILE

PEFT_PREFIX = "base_model.model."
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ALL_LINEAR = "all-linear"


class LoraError(ValueError):
    """A LoRA setting that cannot be applied to this model (no matching module, not a linear layer)."""


@dataclass
class LoraSettings:
    """``train.lora``: train low-rank adapters instead of the whole model."""

    r: int = 8
    """Rank of the update ``B @ A``."""
    alpha: float = 16.0
    """Scale numerator: the update is multiplied by ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA)."""
    dropout: float = 0.0
    """Dropout on the adapter's input (training only)."""
    target_modules: Union[str, list] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Linear layers to adapt: a list of module names or name suffixes (``q_proj`` matches every
    ``...self_attn.q_proj``), a regex matching whole module names, or ``all-linear`` (every linear
    layer except the output embeddings). A target that matches no module is an error."""
    use_rslora: bool = False
    """Rank-stabilised LoRA: scale by ``alpha / sqrt(r)``."""
    modules_to_save: Optional[list] = None
    """Modules trained in full and saved with the adapter (names or suffixes, e.g. ``[score]``).
    Default: none, except for ``classify``, where the classification head (every top-level module
    outside the base model: ``classifier``, ``score``, ``pre_classifier``, ``classification_head``,
    ...) is trained and saved, as PEFT does for sequence classification."""
    merge: bool = False
    """Also write the merged full model (``W + scale * B @ A``) into ``merged/`` of every
    checkpoint, loadable without any adapter support."""

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r


def validate_settings(lora: LoraSettings) -> None:
    """Value checks; errors name the ``train.lora`` key."""
    from rayformers.pipeline.config import ConfigError

    if lora.r < 1:
        raise ConfigError(f"config key 'train.lora.r' must be at least 1, got {lora.r}")
    if lora.alpha <= 0:
        raise ConfigError(f"config key 'train.lora.alpha' must be positive, got {lora.alpha}")
    if not 0.0 <= lora.dropout < 1.0:
        raise ConfigError(f"config key 'train.lora.dropout' must be in [0, 1), got {lora.dropout}")
    targets = lora.target_modules
    if isinstance(targets, list):
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ConfigError("config key 'train.lora.target_modules' must be a non-empty list of module names, "
                              "a regex or all-linear")
    elif not targets:
        raise ConfigError("config key 'train.lora.target_modules' is empty")
    elif targets != ALL_LINEAR:
        try:
            re.compile(targets)
        except re.error as e:
            raise ConfigError(f"config key 'train.lora.target_modules': {targets!r} is not a valid regex ({e})") from e


class LoraLinear(nn.Module):
    """``base_layer(x) + lora_B(lora_A(dropout(x))) * scaling``, PEFT's LoRA linear layer (one adapter)."""

    def __init__(self, base_layer: nn.Linear, r: int, scaling: float, dropout: float):
        super().__init__()
        self.base_layer = base_layer
        self.scaling = scaling
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, **factory)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    @property
    def weight(self) -> torch.Tensor:  # code that reads `layer.weight` (dtype/device checks) sees the base
        return self.base_layer.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.base_layer.bias

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        update = self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype))))
        return result + (update * self.scaling).to(result.dtype)


def _output_embedding_name(model: nn.Module) -> Optional[str]:
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if head is None:
        return None
    for name, module in model.named_modules():
        if module is head:
            return name
    return None


def _matches(name: str, targets: Union[str, list]) -> bool:
    """PEFT's ``check_target_module_exists`` for a list (exact or ``.``-suffix) or a regex (full match)."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def target_module_names(model: nn.Module, lora: LoraSettings, modules_to_save: list) -> list:
    """Names of the modules ``lora.target_modules`` selects; refuses no match and non-linear matches."""
    saved = [n for n, _ in model.named_modules() if n and _matches(n, modules_to_save)]
    inside_saved = lambda n: any(n == s or n.startswith(s + ".") for s in saved)  # noqa: E731
    if lora.target_modules == ALL_LINEAR:
        output = _output_embedding_name(model)
        names = [n for n, m in model.named_modules()
                 if isinstance(m, nn.Linear) and n != output and not inside_saved(n)]
    else:
        names = [n for n, _ in model.named_modules() if n and _matches(n, lora.target_modules)
                 and not inside_saved(n)]
    if not names:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise LoraError(
            f"train.lora.target_modules {lora.target_modules!r} matches no module of {type(model).__name__}; "
            f"its linear layers are named: {', '.join(linear)}"
        )
    modules = dict(model.named_modules())
    wrong = [n for n in names if not isinstance(modules[n], nn.Linear)]
    if wrong:
        raise LoraError(
            f"train.lora.target_modules {lora.target_modules!r} matches {', '.join(wrong[:5])} "
            f"({type(modules[wrong[0]]).__name__}), which is not a linear layer; LoRA is trained on nn.Linear only. "
            "Name the projections inside it (e.g. q_proj, v_proj)."
        )
    return names


def resolve_modules_to_save(model: nn.Module, lora: LoraSettings, task: str) -> list:
    """``modules_to_save`` as given (each must exist), or the classification head for ``classify``."""
    names = [n for n, _ in model.named_modules() if n]
    if lora.modules_to_save is None:
        if task != "classify":
            return []
        # The head: every top-level module with weights outside the base model (classifier, score,
        # DistilBERT's pre_classifier, BART's classification_head, DeBERTa's pooler). It is new
        # (initialised for this run's labels), so it must train.
        prefix = getattr(model, "base_model_prefix", "")
        return [n for n, m in model.named_children() if n != prefix and any(True for _ in m.parameters())]
    for target in lora.modules_to_save:
        if not any(_matches(n, [target]) for n in names):
            raise LoraError(f"train.lora.modules_to_save: {target!r} matches no module of {type(model).__name__}")
    return list(lora.modules_to_save)


def apply_lora(model: nn.Module, lora: LoraSettings, task: str) -> dict:
    """Wrap the targeted linear layers in place and freeze the rest; returns what was done
    (``targets``, ``modules_to_save``, ``trainable``/``total`` parameter counts)."""
    modules_to_save = resolve_modules_to_save(model, lora, task)
    targets = target_module_names(model, lora, modules_to_save)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoraLinear(getattr(parent, child), lora.r, lora.scaling, lora.dropout))
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            module.lora_A.weight.requires_grad_(True)
            module.lora_B.weight.requires_grad_(True)
        elif name and _matches(name, modules_to_save):
            for p in module.parameters():
                p.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    model._rayformers_lora = {"settings": lora, "targets": targets, "modules_to_save": modules_to_save}
    return {"targets": targets, "modules_to_save": modules_to_save, "trainable": trainable, "total": total}


def is_lora_model(model: nn.Module) -> bool:
    return hasattr(model, "_rayformers_lora")


def adapter_state_dict(model: nn.Module) -> dict:
    """The trained tensors under PEFT's saved names (``base_model.model.<param>``)."""
    return {PEFT_PREFIX + name: p.detach().cpu().contiguous() for name, p in model.named_parameters()
            if p.requires_grad}


_TASK_TYPES = {"classify": "SEQ_CLS", "generate-causal": "CAUSAL_LM", "generate": "SEQ_2_SEQ_LM"}


def adapter_config(model: nn.Module, base_model: str, task_type: Optional[str]) -> dict:
    """``adapter_config.json`` as PEFT writes it for this adapter."""
    info = model._rayformers_lora
    lora: LoraSettings = info["settings"]
    targets = lora.target_modules if lora.target_modules != ALL_LINEAR else sorted(info["targets"])
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": targets,
        "use_rslora": lora.use_rslora,
        "modules_to_save": info["modules_to_save"] or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def save_adapter(directory: str, model: nn.Module, base_model: str, task_type: Optional[str]) -> None:
    """``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's adapter directory)."""
    import safetensors.torch

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ADAPTER_CONFIG_FILE), "w") as f:
        json.dump(adapter_config(model, base_model, task_type), f, indent=2, sort_keys=True)
    safetensors.torch.save_file(adapter_state_dict(model), os.path.join(directory, ADAPTER_WEIGHTS_FILE),
                                metadata={"format": "pt"})


def merged_state_dict(model: nn.Module) -> dict:
    """The model's weights with every adapter folded in, under the base model's own names."""
    merged = {}
    wrappers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}
    for key, value in model.state_dict().items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        merged[key.replace(".base_layer.", ".")] = value.detach()
    for name, module in wrappers.items():
        weight = module.base_layer.weight
        merged[f"{name}.weight"] = (weight.detach().float() + module.delta_weight().detach()).to(weight.dtype)
    tied = getattr(model, "_tied_weights_keys", None) or []
    if getattr(model.config, "tie_word_embeddings", False):
        for key in tied:
            merged.pop(key, None)
    return {k: v.cpu().contiguous() for k, v in merged.items()}


def load_adapter_weights(model: nn.Module, directory: str) -> None:
    """Copy a saved adapter (and its modules_to_save) into a model wrapped by :func:`apply_lora`."""
    import safetensors.torch

    tensors = safetensors.torch.load_file(os.path.join(directory, ADAPTER_WEIGHTS_FILE))
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    found = set()
    with torch.no_grad():
        for key, value in tensors.items():
            name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
            if name not in expected:
                raise LoraError(f"{directory}: adapter tensor {key} does not belong to this run's LoRA settings "
                                "(train.lora changed since the checkpoint?)")
            if tuple(value.shape) != tuple(params[name].shape):
                raise LoraError(f"{directory}: adapter tensor {key} has shape {tuple(value.shape)}, this run's "
                                f"{tuple(params[name].shape)} (train.lora changed since the checkpoint?)")
            params[name].copy_(value)
            found.add(name)
    missing = expected - found
    if missing:
        raise LoraError(f"{directory}: adapter lacks {', '.join(sorted(missing)[:5])} (train.lora changed since the "
                        "checkpoint?)")


__all__ = [
    "LoraError",
    "LoraLinear",
    "LoraSettings",
    "adapter_config",
    "adapter_state_dict",
    "apply_lora",
    "is_lora_model",
    "load_adapter_weights",
    "merged_state_dict",
    "save_adapter",
    "target_module_names",
    "validate_settings",
]
