"""LoRA adapters as PEFT saves them, merged into the base weights at load.

A PEFT LoRA checkpoint is a directory (or Hub repo) with `adapter_config.json` and
`adapter_model.safetensors` (or `adapter_model.bin`), naming its base model in
`base_model_name_or_path`. `AutoModelFor*.from_pretrained(adapter_dir)` loads that base (a local
path, or a Hub id through the usual hub resolution and cache; `base_model=` overrides it) and adds
each adapted weight's low-rank update before the model is built:

    W' = W + scale * B @ A        (transposed for `fan_in_fan_out`, i.e. GPT-2 Conv1D weights)
    scale = lora_alpha / r        (lora_alpha / sqrt(r) with `use_rslora`)

with `r` and `lora_alpha` per module from `rank_pattern` / `alpha_pattern` (PEFT's regex match on
the module name). `lora_bias` adds `scale * lora_B.bias` to the base bias; `modules_to_save` (a
classification head trained in full) and trained biases replace the base tensors. Which modules
were adapted (`target_modules` as a list, a regex or `all-linear`) is read from the saved tensors,
which hold exactly those modules.

Why merge instead of running the adapter as PEFT does: after merging the model is an ordinary
model of the base's architecture, so scoring costs nothing extra and every model family works.
Whatever cannot be merged exactly (DoRA, other PEFT methods, LoRA on embeddings or convolutions,
layer replication, ...) is refused with an error naming the field, never approximated.

This module imports torch only when it merges: reading configs stays torch-free.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .hub import resolve_file

if TYPE_CHECKING:
    import torch

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# PEFT's prefix of every saved key (PeftModel.base_model is a LoraModel whose .model is the base).
_PEFT_PREFIX = "base_model.model."

# adapter_config.json fields whose non-default values change the model in ways a merge cannot express.
_UNSUPPORTED_OPTIONS = {
    "use_dora": "DoRA rescales each weight column by a learned magnitude",
    "layer_replication": "layer replication changes the number of layers",
    "target_parameters": "LoRA on raw parameters (MoE experts) is not merged here",
    "trainable_token_indices": "trainable token embeddings are not merged here",
    "megatron_config": "Megatron-parallel LoRA layers are not supported",
    "use_qalora": "QALoRA pools the input features",
    "alora_invocation_tokens": "activated LoRA only applies after its invocation tokens",
}


class AdapterError(ValueError):
    """An adapter checkpoint that cannot be merged exactly: unsupported method, option or layer."""


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter read from disk; `base` is where its base model is loaded from."""

    location: str
    config: dict[str, Any]
    base: str
    base_hub_kwargs: dict[str, Any] = field(default_factory=dict)
    weights_path: str = ""

    def scale(self, module: str, rank: int) -> float:
        """lora_alpha / r (or / sqrt(r) with rsLoRA), with PEFT's per-module rank and alpha patterns."""
        r = _pattern_value(self.config.get("rank_pattern") or {}, module, self.config.get("r", 8))
        if r != rank:
            raise AdapterError(f"{self.weights_path}: {module} has LoRA rank {rank} but adapter_config.json gives "
                               f"r={r} for it (r / rank_pattern); the adapter files do not belong together.")
        alpha = _pattern_value(self.config.get("alpha_pattern") or {}, module, self.config.get("lora_alpha", 8))
        return alpha / math.sqrt(r) if self.config.get("use_rslora", False) else alpha / r


def find_adapter(name_or_path, *, subfolder: str = "", base_model=None, **hub_kwargs) -> LoraAdapter | None:
    """The LoRA adapter at `name_or_path`, or None when it is not an adapter checkpoint.

    Refuses (AdapterError) what cannot be merged exactly, and an adapter without a base model.
    """
    config_path = resolve_file(name_or_path, ADAPTER_CONFIG_FILE, subfolder=subfolder, required=False, **hub_kwargs)
    if config_path is None:
        return None
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterError(f"{config_path} is not readable JSON ({err}); re-save the adapter with PEFT.") from err
    if not isinstance(config, dict):
        raise AdapterError(f"{config_path} must hold a JSON object, found {type(config).__name__}.")
    _check_supported(config, config_path)

    if base_model is not None:
        if not isinstance(base_model, (str, os.PathLike)):
            raise TypeError(f"base_model= must be a local path or Hub id, got {type(base_model).__name__}.")
        base, base_hub_kwargs = os.fspath(base_model), _base_hub_kwargs(hub_kwargs, None)
    else:
        base = config.get("base_model_name_or_path")
        if not base:
            raise AdapterError(
                f"{config_path} names no base model (base_model_name_or_path is empty). Pass the base model's "
                "directory or Hub id: from_pretrained(adapter_dir, base_model='org/base-model')."
            )
        base, base_hub_kwargs = str(base), _base_hub_kwargs(hub_kwargs, config.get("revision"))
    location = os.path.join(os.fspath(name_or_path), subfolder) if subfolder else os.fspath(name_or_path)
    adapter = LoraAdapter(location=location, config=config, base=base, base_hub_kwargs=base_hub_kwargs)
    for filename in ADAPTER_WEIGHTS_FILES:
        path = resolve_file(name_or_path, filename, subfolder=subfolder, required=False, **hub_kwargs)
        if path is not None:
            adapter.weights_path = path
            return adapter
    raise AdapterError(f"{location} has {ADAPTER_CONFIG_FILE} but no adapter weights "
                       f"({' or '.join(ADAPTER_WEIGHTS_FILES)}); save the adapter again with PEFT's save_pretrained.")


def adapter_base(name_or_path, *, subfolder: str = "", base_model=None, **hub_kwargs) -> tuple[str, dict] | None:
    """(base location, its hub kwargs) when `name_or_path` is a LoRA adapter, else None (for config loading)."""
    adapter = find_adapter(name_or_path, subfolder=subfolder, base_model=base_model, **hub_kwargs)
    return None if adapter is None else (adapter.base, adapter.base_hub_kwargs)


def merge_adapter(adapter: LoraAdapter, state_dict: dict[str, torch.Tensor],
                  base_model_prefix: str = "") -> dict[str, torch.Tensor]:
    """The base state dict with the adapter merged in (new tensors; the input is not modified)."""
    from .checkpoint_io import load_state_dict_file  # imports torch; config loading must not

    tensors = load_state_dict_file(adapter.weights_path)
    merged = dict(state_dict)
    lora: dict[str, dict[str, torch.Tensor]] = {}
    plain: dict[str, torch.Tensor] = {}
    trained: dict[str, torch.Tensor] = {}  # modules_to_save copies win over other tensors of the same name
    for key, tensor in tensors.items():
        name = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
        match = re.fullmatch(r"(.+)\.(lora_A|lora_B)\.(weight|bias)", name)
        if match:
            module, part, kind = match.groups()
            lora.setdefault(module, {})[f"{part}.{kind}"] = tensor
        elif re.search(r"\.lora_[A-Za-z_]+(\.|$)", name):
            kind = re.search(r"lora_[A-Za-z_]+", name).group(0)
            raise AdapterError(f"{adapter.weights_path}: {key} is a {kind} tensor (LoRA on embeddings or "
                               "convolutions, or another variant), which is not merged here; only LoRA on linear "
                               "layers is supported.")
        elif ".original_module." in name:
            continue  # the untouched original next to a modules_to_save copy; PEFT runs the copy
        elif ".modules_to_save." in name:
            trained[name.replace(".modules_to_save", "")] = tensor
        else:  # modules_to_save (saved under the module's own name) and trained biases
            plain[name.replace(".base_layer", "")] = tensor

    fan_in_fan_out = bool(adapter.config.get("fan_in_fan_out", False))
    for module, parts in sorted(lora.items()):
        if "lora_A.weight" not in parts or "lora_B.weight" not in parts:
            raise AdapterError(f"{adapter.weights_path}: {module} has {sorted(parts)} but LoRA needs both lora_A "
                               "and lora_B weights; the adapter file is incomplete.")
        a, b = parts["lora_A.weight"], parts["lora_B.weight"]
        weight_key = _base_key(f"{module}.weight", merged, base_model_prefix)
        if weight_key is None:
            raise AdapterError(f"{adapter.weights_path}: the adapter changes {module}, but the base model "
                               f"{adapter.base} has no weight {module}.weight; is base_model_name_or_path the model "
                               "the adapter was trained on?")
        weight = merged[weight_key]
        if a.dim() != 2 or b.dim() != 2 or weight.dim() != 2:
            raise AdapterError(f"{adapter.weights_path}: {module} is not a linear layer (weight shape "
                               f"{tuple(weight.shape)}); only LoRA on linear layers is merged here.")
        delta = (b.float() @ a.float()) * adapter.scale(module, a.shape[0])
        if fan_in_fan_out:
            delta = delta.T
        if tuple(delta.shape) != tuple(weight.shape):
            raise AdapterError(f"{adapter.weights_path}: the update of {module} has shape {tuple(delta.shape)} but "
                               f"the base weight has {tuple(weight.shape)}"
                               + ("" if fan_in_fan_out else " (set fan_in_fan_out for Conv1D-style weights?)") + ".")
        merged[weight_key] = (weight.float() + delta).to(weight.dtype)
        if "lora_B.bias" in parts:  # lora_bias=True
            bias_key = _base_key(f"{module}.bias", merged, base_model_prefix)
            if bias_key is None:
                raise AdapterError(f"{adapter.weights_path}: {module} has a LoRA bias but the base layer has none.")
            bias = merged[bias_key]
            scale = adapter.scale(module, a.shape[0])
            merged[bias_key] = (bias.float() + parts["lora_B.bias"].float() * scale).to(bias.dtype)
    for name, tensor in {**plain, **trained}.items():
        key = _base_key(name, merged, base_model_prefix) or name
        merged[key] = tensor
    return merged


def _check_supported(config: dict, where: str) -> None:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"{where}: peft_type is {config.get('peft_type')!r}; only LoRA adapters (peft_type "
                           "'LORA') are merged. Merge other adapters with PEFT (merge_and_unload) and save the result.")
    for option, why in _UNSUPPORTED_OPTIONS.items():
        if config.get(option):
            raise AdapterError(f"{where}: {option}={config[option]!r} is not supported ({why}). Merge the adapter "
                               "with PEFT (`PeftModel.from_pretrained(base, dir).merge_and_unload()`), save that model "
                               "and load it instead.")


def _base_hub_kwargs(hub_kwargs: dict, revision: str | None) -> dict:
    """The caller's hub options for the base, except the adapter's revision (the adapter config has its own)."""
    out = {key: value for key, value in hub_kwargs.items() if key != "revision"}
    if revision:
        out["revision"] = revision
    return out


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's get_pattern_key: the first pattern matching the end of the module name (at a dot boundary)."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _base_key(name: str, state_dict: dict, prefix: str) -> str | None:
    """The base checkpoint's key for an adapter tensor: as is, or with the base-model prefix added/removed
    (an adapter trained on BertForSequenceClassification names bert.encoder...; a BertModel checkpoint encoder...)."""
    if name in state_dict:
        return name
    if prefix:
        if name.startswith(prefix + ".") and name[len(prefix) + 1:] in state_dict:
            return name[len(prefix) + 1:]
        if f"{prefix}.{name}" in state_dict:
            return f"{prefix}.{name}"
    return None
