"""Host <-> device transfers of the decoding loops, in one place.

On a GPU every read of device data by the host (`.item()`, `bool(tensor)`, `.tolist()`, `.cpu()`,
`nonzero`, boolean-mask indexing) waits until every queued kernel has run: the host stops feeding
the device, the device then idles while the host catches up. The decode loops (continuous.py /
continuous_engine.py and `greedy_or_sample` in decoding.py) therefore read the device exactly once
per decode step, through `to_host` (the step's new tokens, plus a flag for invalid sampling rows),
and keep everything else they decide on (lengths, which rows finished, which rows to keep) on the
host. What they copy to the device goes through `to_device`, which does not wait for the queue
(pinned memory, non-blocking copy), or `bitmask_to_device` (a constraint's token mask, copied packed). tests/test_decode_syncs.py counts both per step and checks that
nothing else in those loops reads the device.
"""

from __future__ import annotations

from typing import Sequence

import torch


def to_host(tensor: torch.Tensor) -> list:
    """The step's one device -> host read: `tensor` as (nested) Python lists."""
    return tensor.tolist()


def to_device(values: Sequence, device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Host values (a list, nested lists of equal lengths, or a host tensor) as a tensor on `device`,
    without waiting.

    A CUDA copy comes from pinned memory with `non_blocking=True`: it is queued behind the kernels
    already launched instead of waiting for them (the caching host allocator keeps the pinned buffer
    alive until the copy has run).
    """
    tensor = values.to(dtype) if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    device = torch.device(device)
    if device.type == "cpu":
        return tensor
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


_BITS: dict = {}  # device -> arange(32) int32, to unpack bitmasks there


def bitmask_to_device(mask: torch.Tensor, device) -> torch.Tensor:
    """A host bitmask [rows, words] int32 as bool [rows, words * 32] on `device` (bit t of a row's
    words = column t), without waiting: an accelerator gets the packed words (32 times fewer bytes
    than the unpacked mask) and unpacks them there; on the CPU numpy unpacks them."""
    device = torch.device(device)
    if device.type == "cpu":
        import numpy as np

        bits = np.unpackbits(mask.numpy().view(np.uint8), axis=1, bitorder="little")
        return torch.from_numpy(bits.view(np.bool_))
    return unpack_bits(to_device(mask, device, dtype=torch.int32))


def unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    """[rows, words] int32 -> bool [rows, words * 32] with torch ops, on the tensor's own device."""
    if packed.device not in _BITS:
        _BITS[packed.device] = torch.arange(32, dtype=torch.int32, device=packed.device)
    return ((packed[:, :, None] >> _BITS[packed.device]) & 1).bool().reshape(packed.shape[0], -1)
