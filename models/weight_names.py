"""The tensor names of a checkpoint, read without loading a tensor and without torch.

A safetensors file starts with an 8-byte little-endian header length and a JSON header naming
every tensor; a sharded checkpoint's ``*.index.json`` maps every name to its shard; a
``pytorch_model.bin`` is a zip whose small pickle member names the tensors stored in the other
members. Reading any of them costs a few kilobytes, so the job driver can ask "does this
checkpoint have the task's head?" before any actor loads the weights (see :mod:`.head_weights`).
"""

from __future__ import annotations

import json
import struct
from typing import Optional

from .hub import CheckpointNotFoundError, resolve_file

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
WEIGHT_FILES = ((SAFE_WEIGHTS_NAME, False), (SAFE_WEIGHTS_INDEX_NAME, True), (WEIGHTS_NAME, False),
                (WEIGHTS_INDEX_NAME, True))
"""The files the loader (``checkpoint_io.resolve_weight_files``) looks for, in its order; True
for a shard index."""

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""safetensors' own limit on a header's size."""

_PICKLE_STRINGS = ("BINUNICODE", "SHORT_BINUNICODE", "UNICODE", "BINUNICODE8")


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


def torch_pickle_names(path: str) -> list[str]:
    """The strings of a ``torch.save`` zip's pickle (``*/data.pkl``; the tensors are separate
    members, not read): the state dict's keys plus a few storage tokens (``storage``, ``cpu``,
    storage numbers), left out here. Read with ``pickletools``, which decodes opcodes and runs
    nothing. Legacy (pre-zip) files raise ValueError."""
    import pickletools
    import zipfile

    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path} is not a zip-format torch file") from err
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise ValueError(f"{path} has no data.pkl")
        data = archive.read(pickles[0])
    names = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in _PICKLE_STRINGS and arg not in ("storage", "cpu") and not arg.isdigit() \
                and not arg.startswith("cuda"):
            names.append(arg)
    return names


def checkpoint_weight_names(name_or_path: str, revision: Optional[str] = None) -> Optional[list[str]]:
    """The tensor names of a checkpoint's weights, from the file the loader would read, or None
    when they cannot be listed cheaply: a Hub id whose weights are not in the local cache yet
    (nothing is downloaded here), a pre-zip ``torch.save`` file, or an unreadable file (loading
    reports that one with its own message). For a ``pytorch_model.bin`` the names are the
    strings of its pickle (see :func:`torch_pickle_names`)."""
    try:
        for filename, is_index in WEIGHT_FILES:
            path = resolve_file(name_or_path, filename, revision=revision, local_files_only=True, required=False)
            if path is None:
                continue
            if is_index:
                with open(path, encoding="utf-8") as f:
                    return sorted(json.load(f)["weight_map"])
            if filename == SAFE_WEIGHTS_NAME:
                return safetensors_tensor_names(path)
            return torch_pickle_names(path)
        return None
    except (CheckpointNotFoundError, OSError, ValueError, KeyError, TypeError):
        return None


__all__ = ["checkpoint_weight_names", "safetensors_tensor_names", "torch_pickle_names"]
