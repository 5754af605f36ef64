"""What the incremental ETL remembers between runs, and the lock that keeps runs from overlapping.

The state file (``<output>/_etl_state.json``) is the ETL's commit log and the top-level manifest
readers use: which input file versions (path + size + modification time) are in the output, the
published run directories holding them, the config fingerprint they were scored with, and the
run that is planned but not yet committed (``pending``), so that a crash anywhere is finished by
the next invocation instead of being redone or lost. It is replaced atomically (write a temp
file, rename), so a reader sees either the old or the new state, never half of one.

The lock is the pipeline's per-output lock (:mod:`rayformers.pipeline.locks`): ``fcntl.flock`` on
``_etl.lock`` for a local root (the kernel drops it when its holder dies, so a killed run leaves no
stale lock), a renewed lease object beside the root on object stores.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Optional

import pyarrow.fs as pafs

from rayformers.pipeline.locks import FileLock, LockBusy, output_lock  # noqa: F401 - LockBusy re-exported for the ETL
from rayformers.pipeline.source import list_input_path

logger = logging.getLogger("rayformers.etl")

STATE_FILE = "_etl_state.json"
LOCK_FILE = "_etl.lock"
STATE_FORMAT = "rayformers-etl/1"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------
# Input file versions


@dataclass(frozen=True)
class FileVersion:
    """One input file as seen by a listing: a change in size or mtime is a new version.

    ``base`` and ``relpath`` are the listing root and the path under it, exactly as the pipeline's
    input discovery computes them, so generated row ids (``<relpath>:<row>``) and hive partition
    columns are the same whether a file is scored by ``rayformers run`` or by an ETL run."""

    path: str
    base: str
    relpath: str
    size: int
    mtime_ns: int

    @property
    def version(self) -> tuple:
        return (self.size, self.mtime_ns)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FileVersion":
        return cls(d["path"], d["base"], d["relpath"], int(d["size"]), int(d["mtime_ns"]))


def _mtime_ns(info: pafs.FileInfo) -> int:
    ns = getattr(info, "mtime_ns", None)
    if ns is not None:
        return int(ns)
    return int(info.mtime.timestamp() * 1e9) if info.mtime is not None else 0


def list_input_files(fs: pafs.FileSystem, roots: list[tuple[str, str]]) -> list[FileVersion]:
    """List ``(raw, path)`` input roots with the pipeline's own expansion (``list_input_path``),
    from the listing alone: no footers are read, so a tick over a large, mostly unchanged dataset
    costs one listing. Errors name the configured path."""
    out: dict[str, FileVersion] = {}
    for raw, path in roots:
        try:
            listed = list_input_path(fs, path)
        except FileNotFoundError:
            raise FileNotFoundError(f"input.path {raw!r} does not exist") from None
        for info, base, rel in listed:
            out.setdefault(info.path, FileVersion(info.path, base, rel, int(info.size), _mtime_ns(info)))
    return sorted(out.values(), key=lambda f: f.path)


def stat_files(fs: pafs.FileSystem, paths: list[str]) -> dict:
    """Path → ``(size, mtime_ns)`` of the files that exist (one batched call)."""
    out = {}
    for info in fs.get_file_info(list(paths)) if paths else []:
        if info.type == pafs.FileType.File:
            out[info.path] = (int(info.size), _mtime_ns(info))
    return out


# ------------------------------------------------------------------------------------------------
# The state file


@dataclass
class RunRecord:
    """One committed ETL run: a published pipeline output directory under the output root."""

    run_id: str
    dir: str
    """Directory name under the output root (``run-000003``, or ``run-000003-v2`` after rows of a
    since-changed input file were retracted from it)."""
    files: list
    """Input file paths whose rows this directory holds."""
    rows: int
    errors: int
    config_fingerprint: str
    published_at: str


@dataclass
class PendingRun:
    """A run planned but not committed; the next invocation finishes (or discards) it."""

    run_id: str
    files: list
    """``FileVersion.to_dict()`` of every input file the run scores."""
    config_fingerprint: str
    reprocess: bool
    planned_at: str
    retract: dict = field(default_factory=dict)
    """Committed run id → input file paths whose (older) rows must leave that run once this run
    is published: files that changed since they were scored."""

    def file_versions(self) -> list[FileVersion]:
        return [FileVersion.from_dict(d) for d in self.files]


@dataclass
class EtlState:
    config_fingerprint: Optional[str] = None
    next_run: int = 1
    runs: list = field(default_factory=list)
    """:class:`RunRecord` of every committed run, oldest first."""
    files: dict = field(default_factory=dict)
    """Input path → ``{"size", "mtime_ns", "relpath", "run_id"}`` of the version in the output."""
    pending: Optional[PendingRun] = None
    updated_at: Optional[str] = None
    config: Optional[dict] = None
    """The fingerprinted config sections of the committed runs (to say what changed)."""

    def run(self, run_id: str) -> Optional[RunRecord]:
        return next((r for r in self.runs if r.run_id == run_id), None)

    def to_json(self) -> str:
        d = {
            "format": STATE_FORMAT,
            "config_fingerprint": self.config_fingerprint,
            "next_run": self.next_run,
            "updated_at": self.updated_at,
            "runs": [asdict(r) for r in self.runs],
            "files": self.files,
            "pending": asdict(self.pending) if self.pending else None,
            "config": self.config,
        }
        return json.dumps(d, indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str, where: str) -> "EtlState":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"ETL state file {where} is not valid JSON ({e}); restore it or start a new output path") from e
        if d.get("format") != STATE_FORMAT:
            raise ValueError(f"ETL state file {where} has format {d.get('format')!r}, expected {STATE_FORMAT!r}")
        return cls(
            config_fingerprint=d.get("config_fingerprint"),
            next_run=int(d.get("next_run", 1)),
            runs=[RunRecord(**r) for r in d.get("runs", [])],
            files=dict(d.get("files", {})),
            pending=PendingRun(**d["pending"]) if d.get("pending") else None,
            updated_at=d.get("updated_at"),
            config=d.get("config"),
        )


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Temp file then rename: a reader (or a crash) never sees a half-written file."""
    fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def read_text(fs: pafs.FileSystem, path: str) -> Optional[str]:
    if not exists(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def load_state(fs: pafs.FileSystem, root: str) -> EtlState:
    path = posixpath.join(root, STATE_FILE)
    text = read_text(fs, path)
    return EtlState() if text is None else EtlState.from_json(text, path)


def save_state(fs: pafs.FileSystem, root: str, state: EtlState) -> None:
    state.updated_at = utc_now()
    write_atomic(fs, posixpath.join(root, STATE_FILE), state.to_json().encode())


# ------------------------------------------------------------------------------------------------
# The lock


def default_lock_path(fs: pafs.FileSystem, root: str) -> Optional[str]:
    """``<root>/_etl.lock`` for a local output; ``None`` for object stores, whose runs take the
    pipeline's lease object beside the root instead (see :mod:`rayformers.pipeline.locks`)."""
    if isinstance(fs, pafs.LocalFileSystem):
        return os.path.join(root, LOCK_FILE)
    return None


def etl_lock(fs: pafs.FileSystem, root: str, lock_path: Optional[str] = None, ttl_s: float = 300.0):
    """The lock one ETL run holds on its root: an explicit lock file, the kernel lock of a local
    root, or a renewed lease object on an object store (so runs on different machines exclude
    each other too)."""
    path = lock_path or default_lock_path(fs, root)
    if path is not None:
        return RunLock(path)
    return output_lock(fs, root, ttl_s=ttl_s, what="ETL run")


class RunLock(FileLock):
    """The ETL's kernel lock (a :class:`~rayformers.pipeline.locks.FileLock` named for messages)."""

    def __init__(self, path: str):
        super().__init__(path, what="ETL run")
