"""Reading and writing weight files in the Hugging Face layout.

Formats: `model.safetensors`, sharded `model-0000i-of-0000n.safetensors` with
`model.safetensors.index.json`, and the legacy `pytorch_model.bin` (also sharded), which is read
with `torch.load(weights_only=True)` so a checkpoint can never run code on load.
"""

from __future__ import annotations

import glob
import json
import os

import huggingface_hub
import safetensors
import safetensors.torch
import torch

from .hub import CheckpointNotFoundError, resolve_file
from .weight_names import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME


class CorruptCheckpointError(OSError):
    """A weight file exists but cannot be parsed."""


def resolve_weight_files(name_or_path, *, subfolder: str = "", use_safetensors: bool | None = None, **hub_kwargs) -> list[str]:
    """Local paths of every weight file of a checkpoint, safetensors preferred over .bin."""
    candidates = [(SAFE_WEIGHTS_NAME, False), (SAFE_WEIGHTS_INDEX_NAME, True)]
    if use_safetensors is not True:
        candidates += [(WEIGHTS_NAME, False), (WEIGHTS_INDEX_NAME, True)]
    if use_safetensors is False:
        candidates = candidates[2:]
    for filename, is_index in candidates:
        path = resolve_file(name_or_path, filename, subfolder=subfolder, required=False, **hub_kwargs)
        if path is None:
            continue
        if not is_index:
            return [path]
        index = _read_index(path)
        shard_names = sorted(set(index["weight_map"].values()))
        return [resolve_file(name_or_path, shard, subfolder=subfolder, required=True, **hub_kwargs) for shard in shard_names]
    wanted = ", ".join(name for name, _ in candidates)
    raise CheckpointNotFoundError(
        f"no weights found for {name_or_path}{'/' + subfolder if subfolder else ''}: looked for {wanted}. "
        "Save the model with save_pretrained() to produce them."
    )


def _read_index(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except json.JSONDecodeError as err:
        raise CorruptCheckpointError(f"shard index {path} is not valid JSON: {err}") from err
    if "weight_map" not in index:
        raise CorruptCheckpointError(f"shard index {path} has no 'weight_map'; re-save the checkpoint.")
    return index


def load_state_dict_files(paths: list[str]) -> dict[str, torch.Tensor]:
    state_dict: dict[str, torch.Tensor] = {}
    for path in paths:
        state_dict.update(load_state_dict_file(path))
    return state_dict


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """Read one weight file; a damaged file gets an error naming it and the likely cause."""
    if path.endswith(".safetensors"):
        try:
            return safetensors.torch.load_file(path, device="cpu")
        except (safetensors.SafetensorError, OSError, ValueError) as err:
            raise CorruptCheckpointError(
                f"cannot read safetensors file {path}: {err}. The file is damaged or truncated "
                "(an interrupted download or copy?); fetch or save it again."
            ) from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad pickles
        raise CorruptCheckpointError(
            f"cannot read {path} with torch.load(weights_only=True): {err}. Only plain tensor state dicts "
            "are accepted; convert the checkpoint to safetensors."
        ) from err


def save_state_dict(state_dict: dict[str, torch.Tensor], save_directory: str, *, safe_serialization: bool = True,
                    max_shard_size: int | str = "5GB") -> list[str]:
    """Write a state dict (already free of shared duplicates), sharded above `max_shard_size`.

    Splitting uses huggingface_hub's own shard planner so shard names and the index match what
    transformers writes. Weight files of an earlier save that the new one does not use are removed.
    """
    pattern = "model{suffix}.safetensors" if safe_serialization else "pytorch_model{suffix}.bin"
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    split = huggingface_hub.split_torch_state_dict_into_shards(tensors, filename_pattern=pattern, max_shard_size=max_shard_size)
    index_name = SAFE_WEIGHTS_INDEX_NAME if safe_serialization else WEIGHTS_INDEX_NAME
    written = list(split.filename_to_tensors)
    _remove_stale_weight_files(save_directory, keep=set(written) | ({index_name} if split.is_sharded else set()))
    for filename, names in split.filename_to_tensors.items():
        shard = {name: tensors[name] for name in names}
        path = os.path.join(save_directory, filename)
        if safe_serialization:
            safetensors.torch.save_file(shard, path, metadata={"format": "pt"})
        else:
            torch.save(shard, path)
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": split.tensor_to_filename}
        with open(os.path.join(save_directory, index_name), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")
        written.append(index_name)
    return written


def _remove_stale_weight_files(directory: str, keep: set[str]) -> None:
    for pattern in ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                    "pytorch_model.bin.index.json"):
        for path in glob.glob(os.path.join(directory, pattern)):
            if os.path.basename(path) not in keep:
                os.remove(path)
