"""Host <-> device transfers of the decoding loops, in one place.

On a GPU every read of device data by the host (`.item()`, `bool(tensor)`, `.tolist()`, `.cpu()`,
`nonzero`, boolean-mask indexing) waits until every queued kernel has run: the host stops feeding
the device, the device then idles while the host catches up. The decode loops (continuous.py /
continuous_engine.py and `greedy_or_sample` in decoding.py) therefore read the device exactly once
per decode step, through `to_host` (the step's new tokens, plus a flag for invalid sampling rows),
and keep everything else they decide on (lengths, which rows finished, which rows to keep) on the
host. What they copy to the device goes through `to_device`, which does not wait for the queue
(pinned memory, non-blocking copy). tests/test_decode_syncs.py counts both per step and checks that
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
