"""Checkpoints shared by training and inference: layout, training state, and ``@best``/``@latest``.

A checkpoint is a directory in Hugging Face format, so transformers, ``rayformers run`` and our
own ``from_pretrained`` load it unchanged::

    <run dir>/checkpoint_step_00000120/
        config.json              model config, with id2label/label2id/problem_type of the run
        model.safetensors        weights (float32)
        generation_config.json   seq2seq models
        tokenizer.json, tokenizer_config.json, special_tokens_map.json, ...
        trainer_state/           only what resuming needs (ignored by every model loader)
            trainer_state.json   step, epoch, metrics, log history, best-metric name and order
            optimizer.pt, scheduler.pt
            rng_rank<k>.pt       python/numpy/torch RNG state of worker k

Finding checkpoints and resolving references lives in :mod:`rayformers.models.checkpoint_refs`
(the pipeline needs it too, and layers import downward only); its names are re-exported here.

The run directory is Ray Train's ``<storage_path>/<name>``. Ray keeps the best ``num_to_keep``
checkpoints by the configured metric (and always the latest) and records the checkpoints it
committed in ``checkpoint_manager_snapshot.json``; a checkpoint is addressable as
``<run dir>@latest`` (highest step), ``<run dir>@best`` (best by the run's metric) or
``<run dir>@step-<N>``. :func:`resolve_model_reference` turns such a reference (or a plain path,
returned unchanged) into a local checkpoint directory, downloading remote ones once into a cache.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any, Optional

from rayformers.models.checkpoint_refs import (  # noqa: F401 - re-exported for training code and users
    CHECKPOINT_PREFIX,
    RAY_SNAPSHOT_FILE,
    WEIGHT_FILES,
    TRAINER_STATE_DIR,
    TRAINER_STATE_FILE,
    CheckpointError,
    CheckpointInfo,
    best_checkpoint,
    checkpoint_dir_name,
    find_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    parse_reference,
    resolve_model_reference,
    run_directory,
)

OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"


def save_model_checkpoint(directory: str, model: Any, tokenizer: Any = None, state_dict: Optional[dict] = None) -> None:
    """The HF-format part: config.json, weights, generation config, tokenizer files
    (``state_dict``: the full weights when the model itself holds only a shard, FSDP)."""
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def capture_rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) RNG states of this process."""
    import numpy as np
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    state = {"python": list(random.getstate()), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda_states = cuda_rng_states_to_restore(state, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if cuda_states is not None:
        torch.cuda.set_rng_state_all(cuda_states)


def cuda_rng_states_to_restore(state: dict, visible_gpus: int):
    """The saved per-GPU RNG states when this process sees as many GPUs as the saver did; else
    ``None`` with a warning.

    ``torch.cuda.set_rng_state_all`` assigns the i-th saved state to the i-th visible GPU: with
    another GPU count (a resume on CPU, on fewer or more GPUs) the states either do not fit or
    would be applied to the wrong devices, so they are skipped and the CUDA generators keep the
    run's seed. Python, numpy and CPU torch states are restored either way."""
    import warnings

    saved = state.get("cuda")
    if not saved:
        return None
    if len(saved) != visible_gpus:
        warnings.warn(
            f"checkpoint holds the CUDA RNG state of {len(saved)} GPU(s) but this worker sees {visible_gpus}: "
            "CUDA RNG state not restored (dropout draws on the GPU differ from the original run)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return saved


def save_training_state(
    directory: str,
    state: dict,
    *,
    rank: int,
    optimizer: Any = None,
    scheduler: Any = None,
    optimizer_state: Optional[dict] = None,
) -> None:
    """``trainer_state/``: the JSON state and optimizer/scheduler (rank 0), RNG (every rank).

    ``optimizer_state`` replaces ``optimizer.state_dict()`` when given (the gathered, unsharded
    state of an FSDP run, keyed by parameter name).

    Every rank writes into its own local directory; Ray Train merges the directories reported by
    all ranks for one step into one checkpoint."""
    import torch

    folder = os.path.join(directory, TRAINER_STATE_DIR)
    os.makedirs(folder, exist_ok=True)
    torch.save(capture_rng_state(), os.path.join(folder, f"rng_rank{rank}.pt"))
    if rank == 0:
        if optimizer_state is not None:
            torch.save(optimizer_state, os.path.join(folder, OPTIMIZER_FILE))
        elif optimizer is not None:
            torch.save(optimizer.state_dict(), os.path.join(folder, OPTIMIZER_FILE))
        if scheduler is not None:
            torch.save(scheduler.state_dict(), os.path.join(folder, SCHEDULER_FILE))
        with open(os.path.join(folder, TRAINER_STATE_FILE), "w") as f:
            json.dump(state, f, indent=2, sort_keys=True, default=_json_default)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _load(path: str) -> Any:
    """``torch.load`` of a training-state file: plain data only, every tensor onto the CPU."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def read_training_state(directory: str) -> dict:
    """The ``trainer_state.json`` of a local checkpoint directory."""
    path = os.path.join(directory, TRAINER_STATE_DIR, TRAINER_STATE_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{directory} has no {TRAINER_STATE_DIR}/{TRAINER_STATE_FILE}: not a training checkpoint")
    with open(path) as f:
        return json.load(f)


def load_optimizer_file(directory: str) -> dict:
    """The saved optimizer state of a checkpoint (loaded onto the CPU)."""
    return _load(os.path.join(directory, TRAINER_STATE_DIR, OPTIMIZER_FILE))


def load_training_state(directory: str, *, rank: int, optimizer: Any = None, scheduler: Any = None) -> dict:
    """Restore optimizer, scheduler and this rank's RNG from a checkpoint; return its JSON state.

    Everything is read with ``torch.load(weights_only=True)`` (tensors and plain data only), so a
    checkpoint from elsewhere cannot run code when resumed, and with ``map_location="cpu"``: a
    checkpoint written on ``cuda:k`` resumes on a CPU or on another GPU index
    (``optimizer.load_state_dict`` then moves the optimizer state to its parameters' device).

    A rank without its own RNG file (the run was restarted with more workers) keeps a fresh,
    seeded RNG."""
    folder = os.path.join(directory, TRAINER_STATE_DIR)
    state = read_training_state(directory)
    if optimizer is not None:
        optimizer.load_state_dict(_load(os.path.join(folder, OPTIMIZER_FILE)))
    if scheduler is not None:
        scheduler.load_state_dict(_load(os.path.join(folder, SCHEDULER_FILE)))
    rng = os.path.join(folder, f"rng_rank{rank}.pt")
    if os.path.isfile(rng):
        restore_rng_state(_load(rng))
    return state


__all__ = [
    "CHECKPOINT_PREFIX",
    "CheckpointError",
    "CheckpointInfo",
    "TRAINER_STATE_DIR",
    "best_checkpoint",
    "checkpoint_dir_name",
    "find_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_training_state",
    "parse_reference",
    "read_training_state",
    "resolve_model_reference",
    "run_directory",
    "save_model_checkpoint",
    "save_training_state",
]
