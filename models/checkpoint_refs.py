"""Checkpoint references: ``<run dir>@best`` / ``@latest`` / ``@step-N`` → a checkpoint directory.

Both the inference pipeline (``model.path: runs/sentiment@best``) and training (resuming, the
result it returns) resolve references, so this lives below both, beside the model loading code.
It knows the checkpoint *layout* only (Hugging Face files plus ``trainer_state/``, and the
``checkpoint_manager_snapshot.json`` Ray Train writes); it imports neither Ray nor torch::

    <run dir>/checkpoint_step_00000120/
        config.json, model.safetensors, tokenizer files, generation_config.json
        trainer_state/trainer_state.json   step, epoch, metrics, best-metric name and order

Why read Ray's snapshot instead of listing directories: a driver or worker that dies while a
checkpoint is uploaded can leave a partial directory behind; only checkpoints the snapshot lists
were committed. Without a snapshot (a run directory copied elsewhere), complete-looking
directories are used. Remote checkpoints are downloaded once into a local cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow.fs as pafs

from .adapters import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILES

CHECKPOINT_PREFIX = "checkpoint_step_"
TRAINER_STATE_DIR = "trainer_state"
TRAINER_STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")

_REFERENCE = re.compile(r"^(?P<run>.+)@(?P<which>best|latest|step-(?P<step>\d+))$")


def metric_order(name: str) -> str:
    """``min`` for losses and errors, ``max`` for scores: how "best" compares for ``name``."""
    lowered = name.lower()
    return "min" if ("loss" in lowered or "mse" in lowered or "error" in lowered) else "max"


class CheckpointError(ValueError):
    """A checkpoint reference that cannot be resolved; the message says what exists instead."""


def checkpoint_dir_name(step: int) -> str:
    """Directory name of the checkpoint taken after optimizer step ``step`` (sorts by step)."""
    return f"{CHECKPOINT_PREFIX}{int(step):08d}"


# ------------------------------------------------------------------------------------------------
# Writing and reading one checkpoint (inside a training worker).


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
    """A full model (config + weights) or a LoRA adapter (adapter config + weights), with training state."""
    model = _exists(fs, posixpath.join(path, "config.json")) and any(
        _exists(fs, posixpath.join(path, w)) for w in WEIGHT_FILES)
    adapter = _exists(fs, posixpath.join(path, ADAPTER_CONFIG_FILE)) and any(
        _exists(fs, posixpath.join(path, w)) for w in ADAPTER_WEIGHTS_FILES)
    return (model or adapter) and _exists(fs, posixpath.join(path, TRAINER_STATE_DIR, TRAINER_STATE_FILE))


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
    "RAY_SNAPSHOT_FILE",
    "WEIGHT_FILES",
    "CheckpointError",
    "CheckpointInfo",
    "TRAINER_STATE_DIR",
    "TRAINER_STATE_FILE",
    "best_checkpoint",
    "checkpoint_dir_name",
    "find_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "metric_order",
    "parse_reference",
    "resolve_model_reference",
    "run_directory",
]
