"""The tensor names of a checkpoint, read without loading a tensor and without torch.

A safetensors file starts with an 8-byte little-endian header length and a JSON header naming
every tensor; a sharded checkpoint's ``model.safetensors.index.json`` maps every name to its
shard. Reading either costs a few kilobytes, so the job driver can ask "does this checkpoint have
the task's head?" before any actor loads the weights (see :mod:`.head_weights`).
"""

from __future__ import annotations

import json
import struct
from typing import Optional

from .hub import CheckpointNotFoundError, resolve_file

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""safetensors' own limit on a header's size."""


def safetensors_tensor_names(path: str) -> list[str]:
    """The tensor names in one safetensors file's header (the tensors are not read)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: safetensors header of {length} bytes is implausible (damaged file?)")
        header = json.loads(f.read(length))
    return [name for name in header if name != "__metadata__"]


def checkpoint_weight_names(name_or_path: str, revision: Optional[str] = None) -> Optional[list[str]]:
    """Every tensor name of a checkpoint's safetensors weights, or None when they cannot be listed
    cheaply: ``pytorch_model.bin`` checkpoints (names only come with unpickling), a Hub id whose
    weights are not in the local cache yet (nothing is downloaded here), or an unreadable file
    (loading reports that one with its own message)."""
    try:
        index = resolve_file(name_or_path, SAFE_WEIGHTS_INDEX_NAME, revision=revision, local_files_only=True,
                             required=False)
        if index is not None:
            with open(index, encoding="utf-8") as f:
                return sorted(json.load(f)["weight_map"])
        single = resolve_file(name_or_path, SAFE_WEIGHTS_NAME, revision=revision, local_files_only=True,
                              required=False)
        if single is None:
            return None
        return safetensors_tensor_names(single)
    except (CheckpointNotFoundError, OSError, ValueError, KeyError, TypeError):
        return None


__all__ = ["checkpoint_weight_names", "safetensors_tensor_names"]
