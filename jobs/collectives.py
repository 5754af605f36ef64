"""Collectives of the training workers, always on the worker's device.

Why a module of its own: NCCL (the backend of GPU workers) only accepts CUDA tensors, gloo (CPU
workers) only CPU tensors. A count or loss built with ``torch.tensor(...)`` lives on the CPU, so an
all-reduce of it works in every CPU test and crashes the first multi-GPU run. Every collective of
``rayformers.jobs`` goes through :func:`all_reduce_sum`, which takes the worker's device (the
device of the model, ``ray.train.torch.get_device()``) and moves the tensor there first, as does
:func:`all_gather_with_grad` (the in-batch negatives of embedding training); nothing else in the
package calls ``torch.distributed`` collectives (a test checks this).
"""

from __future__ import annotations

import torch


def world_size() -> int:
    """Number of ranks of the default process group (1 without one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` summed over all ranks, as a tensor on ``device``.

    The tensor is moved to ``device`` before the collective (a no-op when it is already there), so
    the backend always receives a tensor of the worker's device. The result stays on the device:
    reading it (``float``/``.item``/``.tolist``) is the caller's one host synchronisation. Without a
    process group, or with one rank, the sum is the tensor itself (still moved to ``device``)."""
    import torch.distributed as dist

    tensor = tensor.to(torch.device(device))
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def rank_and_world() -> tuple[int, int]:
    """(rank, number of ranks) of the default process group ((0, 1) without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_with_grad(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Every rank's ``tensor`` (same shape on all ranks) concatenated along dim 0, in rank order.

    Differentiable: ``torch.distributed.nn.functional.all_gather`` keeps this rank's slice in the
    autograd graph and, in the backward pass, sums the gradients every rank computed for each
    slice and sends them to the slice's owner. So a loss built from the gathered tensor on every
    rank trains each rank's encoder with the gradient of the whole global batch. Without a
    process group (or with one rank) the tensor itself."""
    from torch.distributed.nn import functional

    tensor = tensor.to(torch.device(device))
    if world_size() <= 1:
        return tensor
    return torch.cat(functional.all_gather(tensor), dim=0)


__all__ = ["all_gather_with_grad", "all_reduce_sum", "rank_and_world", "world_size"]
