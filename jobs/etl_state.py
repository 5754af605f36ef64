"""What the incremental ETL remembers between runs, and the lock that keeps runs from overlapping.

The state file (``<output>/_etl_state.json``) is the ETL's commit log and the top-level manifest
readers use: which input file versions (path + size + modification time) are in the output, the
published run directories holding them, the config fingerprint they were scored with, and the
run that is planned but not yet committed (``pending``), so that a crash anywhere is finished by
the next invocation instead of being redone or lost. It is replaced atomically (write a temp
file, rename), so a reader sees either the old or the new state, never half of one.

The lock is ``fcntl.flock`` on a lock file: the kernel drops it when its holder dies, so a lock
left behind by a killed run is stale by construction and the next run simply takes it (the file
holds the last holder's pid/host/time for messages only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import socket
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import pyarrow.fs as pafs

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


class LockBusy(RuntimeError):
    """Another ETL run on this output holds the lock."""


def default_lock_path(fs: pafs.FileSystem, root: str) -> str:
    """Next to the state for a local output; for object stores (no file locks) a local file keyed
    by the output URI, which serialises the runs of one machine."""
    if isinstance(fs, pafs.LocalFileSystem):
        return os.path.join(root, LOCK_FILE)
    key = hashlib.sha1(f"{fs.type_name}:{root}".encode()).hexdigest()[:16]
    return os.path.join(os.path.expanduser("~/.cache/rayformers/etl-locks"), f"{key}.lock")


class RunLock:
    """Non-blocking exclusive lock; ``with RunLock(path):`` raises :class:`LockBusy` if held.

    A killed holder's lock is released by the kernel, so stale locks need no timeout; the file's
    content (last holder) only improves the messages."""

    def __init__(self, path: str):
        self.path = path
        self._fd: Optional[int] = None
        self.previous_holder: Optional[dict] = None

    def _read_holder(self) -> Optional[dict]:
        try:
            return json.loads(Path(self.path).read_text() or "null")
        except (OSError, ValueError):
            return None

    def acquire(self) -> "RunLock":
        import fcntl

        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self._read_holder() or {}
            raise LockBusy(
                f"another ETL run holds {self.path} (pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
                f"since {holder.get('since', '?')}); this run is skipped"
            ) from None
        self._fd = fd
        holder = self._read_holder()
        if holder and holder.get("active"):
            # The file says "held" but the kernel lock was free: its holder died mid-run.
            self.previous_holder = holder
            logger.warning(
                "etl: taking over the lock %s left by pid %s on %s (since %s), which is no longer running",
                self.path, holder.get("pid"), holder.get("host"), holder.get("since"),
            )
        self._write_holder(active=True)
        return self

    def _write_holder(self, active: bool) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now(), "active": active}
        data = json.dumps(info).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        import fcntl

        if self._fd is None:
            return
        try:
            self._write_holder(active=False)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            # A simulated crash (see etl.InjectedCrash) must leave the lock file as a killed process
            # would: marked active. The kernel lock is dropped when the descriptor closes.
            os.close(self._fd)  # type: ignore[arg-type]
            self._fd = None
            return
        self.release()
