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

The run directory is Ray Train's ``<storage_path>/<name>``. Ray keeps the best ``num_to_keep``
checkpoints by the configured metric (and always the latest) and records the checkpoints it
committed in ``checkpoint_manager_snapshot.json``; a checkpoint is addressable as
``<run dir>@latest`` (highest step), ``<run dir>@best`` (best by the run's metric) or
``<run dir>@step-<N>``. :func:`resolve_model_reference` turns such a reference (or a plain path,
returned unchanged) into a local checkpoint directory, downloading remote ones once into a cache.

Why read Ray's snapshot instead of listing directories: a driver or worker that dies while a
checkpoint is uploaded can leave a partial directory behind; only checkpoints the snapshot lists
were committed. Without a snapshot (a run directory copied elsewhere), complete-looking
directories are used.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import random
import re
import shutil
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow.fs as pafs

CHECKPOINT_PREFIX = "checkpoint_step_"
TRAINER_STATE_DIR = "trainer_state"
TRAINER_STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")

_REFERENCE = re.compile(r"^(?P<run>.+)@(?P<which>best|latest|step-(?P<step>\d+))$")


class CheckpointError(ValueError):
    """A checkpoint reference that cannot be resolved; the message says what exists instead."""


def checkpoint_dir_name(step: int) -> str:
    """Directory name of the checkpoint taken after optimizer step ``step`` (sorts by step)."""
    return f"{CHECKPOINT_PREFIX}{int(step):08d}"


# ------------------------------------------------------------------------------------------------
# Writing and reading one checkpoint (inside a training worker).


def save_model_checkpoint(directory: str, model: Any, tokenizer: Any = None) -> None:
    """The HF-format part: config.json, weights, generation config, tokenizer files."""
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory)
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
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(
    directory: str,
    state: dict,
    *,
    rank: int,
    optimizer: Any = None,
    scheduler: Any = None,
) -> None:
    """``trainer_state/``: the JSON state and optimizer/scheduler (rank 0), RNG (every rank).

    Every rank writes into its own local directory; Ray Train merges the directories reported by
    all ranks for one step into one checkpoint."""
    import torch

    folder = os.path.join(directory, TRAINER_STATE_DIR)
    os.makedirs(folder, exist_ok=True)
    torch.save(capture_rng_state(), os.path.join(folder, f"rng_rank{rank}.pt"))
    if rank == 0:
        if optimizer is not None:
            torch.save(optimizer.state_dict(), os.path.join(folder, OPTIMIZER_FILE))
        if scheduler is not None:
            torch.save(scheduler.state_dict(), os.path.join(folder, SCHEDULER_FILE))
        with open(os.path.join(folder, TRAINER_STATE_FILE), "w") as f:
            json.dump(state, f, indent=2, sort_keys=True, default=_json_default)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def read_training_state(directory: str) -> dict:
    """The ``trainer_state.json`` of a local checkpoint directory."""
    path = os.path.join(directory, TRAINER_STATE_DIR, TRAINER_STATE_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{directory} has no {TRAINER_STATE_DIR}/{TRAINER_STATE_FILE}: not a training checkpoint")
    with open(path) as f:
        return json.load(f)


def load_training_state(directory: str, *, rank: int, optimizer: Any = None, scheduler: Any = None) -> dict:
    """Restore optimizer, scheduler and this rank's RNG from a checkpoint; return its JSON state.

    Everything is read with ``torch.load(weights_only=True)`` (tensors and plain data only), so a
    checkpoint from elsewhere cannot run code when resumed.

    A rank without its own RNG file (the run was restarted with more workers) keeps a fresh,
    seeded RNG."""
    import torch

    folder = os.path.join(directory, TRAINER_STATE_DIR)
    state = read_training_state(directory)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(os.path.join(folder, OPTIMIZER_FILE), weights_only=True))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(os.path.join(folder, SCHEDULER_FILE), weights_only=True))
    rng = os.path.join(folder, f"rng_rank{rank}.pt")
    if os.path.isfile(rng):
        restore_rng_state(torch.load(rng, weights_only=True))
    return state


# ------------------------------------------------------------------------------------------------
# Finding checkpoints of a run.


@dataclass
class CheckpointInfo:
    """One committed checkpoint of a run."""

    path: str
    """Path on ``filesystem`` (local paths are absolute)."""
    name: str
    step: int
    metrics: dict = field(default_factory=dict)
    best_metric: Optional[str] = None
    best_metric_order: Optional[str] = None
    filesystem: Any = None

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def score(self, metric: str) -> Optional[float]:
        value = self.metrics.get(metric)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def run_directory(storage_path: str, name: str) -> str:
    """``<storage_path>/<name>`` as Ray Train lays it out (local paths made absolute)."""
    if "://" in storage_path:
        return storage_path.rstrip("/") + "/" + name
    return os.path.join(os.path.abspath(os.path.expanduser(storage_path)), name)


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path and not path.startswith("file://"):
        return pafs.FileSystem.from_uri(path)
    local = path[len("file://"):] if path.startswith("file://") else path
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(local))


def _read_json(fs: pafs.FileSystem, path: str) -> Optional[dict]:
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read().decode("utf-8"))
    except (FileNotFoundError, OSError, ValueError):
        return None


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _looks_complete(fs: pafs.FileSystem, path: str) -> bool:
    return (
        _exists(fs, posixpath.join(path, "config.json"))
        and any(_exists(fs, posixpath.join(path, w)) for w in WEIGHT_FILES)
        and _exists(fs, posixpath.join(path, TRAINER_STATE_DIR, TRAINER_STATE_FILE))
    )


def _step_from_name(name: str) -> Optional[int]:
    if name.startswith(CHECKPOINT_PREFIX):
        try:
            return int(name[len(CHECKPOINT_PREFIX):])
        except ValueError:
            return None
    return None


def list_checkpoints(run_dir: str, committed_only: bool = False) -> list[CheckpointInfo]:
    """Checkpoints of a run, oldest first; empty if it has none (yet).

    With Ray's snapshot present, only the checkpoints it lists (committed) are returned. Without
    it, complete-looking directories are used unless ``committed_only`` — which resuming needs:
    it must see exactly what Ray's ``get_checkpoint()`` will hand the workers."""
    fs, root = _filesystem(run_dir)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return []
    snapshot = _read_json(fs, posixpath.join(root, RAY_SNAPSHOT_FILE))
    names: list[str]
    if snapshot is not None:
        results = list(snapshot.get("checkpoint_results") or [])
        latest = snapshot.get("latest_checkpoint_result")
        if latest:
            results.append(latest)
        names = sorted({r["checkpoint_dir_name"] for r in results if r.get("checkpoint_dir_name")})
    elif committed_only:
        return []
    else:
        entries = fs.get_file_info(pafs.FileSelector(root, recursive=False))
        names = sorted(posixpath.basename(e.path) for e in entries if e.type == pafs.FileType.Directory)
    found = []
    for name in names:
        path = posixpath.join(root, name)
        if not _looks_complete(fs, path):
            continue
        state = _read_json(fs, posixpath.join(path, TRAINER_STATE_DIR, TRAINER_STATE_FILE)) or {}
        step = state.get("global_step", _step_from_name(name))
        if step is None:
            continue
        found.append(
            CheckpointInfo(
                path=path,
                name=name,
                step=int(step),
                metrics=dict(state.get("metrics") or {}),
                best_metric=state.get("best_metric"),
                best_metric_order=state.get("best_metric_order"),
                filesystem=fs,
            )
        )
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(run_dir: str, committed_only: bool = False) -> Optional[CheckpointInfo]:
    """The checkpoint with the highest step, or None."""
    checkpoints = list_checkpoints(run_dir, committed_only)
    return checkpoints[-1] if checkpoints else None


def best_checkpoint(
    run_dir: str, metric: Optional[str] = None, order: Optional[str] = None
) -> Optional[CheckpointInfo]:
    """The best checkpoint by ``metric`` (default: the run's own ``best_metric``); ties go to the
    later step. Checkpoints without the metric are not candidates."""
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return None
    metric = metric or checkpoints[-1].best_metric
    if not metric:
        raise CheckpointError(f"run {run_dir} records no best metric; pass one (e.g. eval_loss)")
    if order is None:
        from .metrics import metric_order

        order = checkpoints[-1].best_metric_order or metric_order(metric)
    scored = [c for c in checkpoints if c.score(metric) is not None]
    if not scored:
        raise CheckpointError(
            f"no checkpoint of run {run_dir} has metric {metric!r}; metrics present: "
            f"{', '.join(sorted(checkpoints[-1].metrics)) or 'none'}"
        )
    sign = -1.0 if order == "min" else 1.0
    return max(scored, key=lambda c: (sign * c.score(metric), c.step))


def find_checkpoint(run_dir: str, which: str) -> CheckpointInfo:
    """``best``, ``latest`` or ``step-N`` of a run, with a clear error naming what exists."""
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise CheckpointError(
            f"run directory {run_dir} has no committed checkpoints (is it <storage_path>/<name> of a "
            "training run that reached its first checkpoint?)"
        )
    if which == "latest":
        return checkpoints[-1]
    if which == "best":
        found = best_checkpoint(run_dir)
        assert found is not None
        return found
    match = re.fullmatch(r"step-(\d+)", which)
    if match:
        step = int(match.group(1))
        for c in checkpoints:
            if c.step == step:
                return c
        raise CheckpointError(
            f"run {run_dir} has no checkpoint at step {step}; kept steps: {', '.join(str(c.step) for c in checkpoints)}"
        )
    raise CheckpointError(f"unknown checkpoint selector {which!r}; use best, latest or step-<N>")


def parse_reference(reference: str) -> Optional[tuple[str, str]]:
    """``"runs/x@best"`` → ``("runs/x", "best")``; None when ``reference`` has no selector."""
    match = _REFERENCE.match(str(reference))
    if not match:
        return None
    return match.group("run"), match.group("which")


def resolve_model_reference(reference: str, cache_dir: Optional[str] = None) -> str:
    """A model path as written in a config → a path ``from_pretrained`` can load.

    * ``<run dir>@best`` / ``@latest`` / ``@step-N`` → that checkpoint's directory;
    * an existing local path, a Hub id, or anything else without a selector → unchanged;
    * a checkpoint on remote storage (``s3://…``) is copied once into ``cache_dir`` (default
      ``$RAYFORMERS_CACHE`` or ``~/.cache/rayformers/checkpoints``) and the local copy returned.
    """
    reference = os.fspath(reference)
    if os.path.exists(reference):
        return reference
    parsed = parse_reference(reference)
    if parsed is None:
        return reference
    run_dir, which = parsed
    checkpoint = find_checkpoint(run_dir, which)
    if checkpoint.is_local:
        return checkpoint.path
    return _download(checkpoint, cache_dir)


def _download(checkpoint: CheckpointInfo, cache_dir: Optional[str]) -> str:
    """Copy a remote checkpoint (model files only) to a local cache directory, once."""
    cache_dir = cache_dir or os.environ.get("RAYFORMERS_CACHE") or os.path.expanduser("~/.cache/rayformers/checkpoints")
    key = hashlib.sha256(f"{checkpoint.path}:{checkpoint.step}".encode()).hexdigest()[:16]
    target = os.path.join(cache_dir, f"{checkpoint.name}-{key}")
    done = os.path.join(target, ".complete")
    if os.path.isfile(done):
        return target
    staging = target + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    fs = checkpoint.filesystem
    for entry in fs.get_file_info(pafs.FileSelector(checkpoint.path, recursive=False)):
        if entry.type != pafs.FileType.File:
            continue  # trainer_state/ is not needed to load the model
        pafs.copy_files(entry.path, os.path.join(staging, posixpath.basename(entry.path)),
                        source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    open(os.path.join(staging, ".complete"), "w").close()
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


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
