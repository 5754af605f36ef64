"""One writer per output: a kernel lock on local/NFS paths, a lease object on object stores.

Two runs on one output would share its staging directory and publish over each other (both may
"succeed" with one model's predictions). Every run (``rayformers run``, each ETL root, each
training run directory) therefore takes the lock of its output before it touches anything there,
and a second run refuses at once, naming the holder.

* **Local and NFS** (:class:`FileLock`): ``fcntl.flock`` on a lock file beside the output. The
  kernel drops it when its holder dies, so a SIGKILLed driver leaves no stale lock: the next run
  takes it at once and logs that it took over. The file's content (pid, host, start) only improves
  the messages.
* **Object stores** (:class:`ObjectLease`): there is no kernel to drop a lock, so a lease object
  ``{owner, host, pid, started_at, expires_at}`` is written beside the output and renewed by a
  background thread every ``ttl/3``. A run refuses while an unexpired lease of someone else
  exists; after ``expires_at`` (a killed driver stops renewing) the lease is taken over.
  pyarrow's object-store filesystems have no conditional put, so creation is *write, wait
  ``settle_s``, read back*: of two runs that race within that window only the one whose write
  landed last keeps the lease; the other sees a foreign owner and refuses. Before publishing, the
  holder checks the lease is still its own (:meth:`ObjectLease.verify`), so a run that stalled past
  its expiry and lost the lease never publishes over the new holder.

``resume`` after a killed driver: locally it can start at once; on an object store it waits for
(or is refused until) the old lease expires, ``output.lock_ttl_s`` after the driver's last renewal.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import pyarrow.fs as pafs

from .output_safety import OutputError, sibling_path

logger = logging.getLogger("rayformers.pipeline")


class LockBusy(OutputError):
    """Another run holds the lock of this output."""


class LockUnavailable(OutputError):
    """The lock cannot be created: the output location is not writable (read-only, no permission)."""


def unwritable_message(path: str, err: OSError) -> str:
    """What to say when the lock ``path`` cannot be created (before anything else is written):
    which path, why, and the fix."""
    why = err.strerror or type(err).__name__
    return (
        f"cannot write {path} ({why}): the output location is not writable (a read-only filesystem or "
        f"missing permissions); nothing was written. Point output.path at a writable location, or make "
        f"{posixpath.dirname(path) or path} writable (fix its permissions, or remount it read-write)"
    )


def check_lock_creatable(fs: pafs.FileSystem, output_path: str) -> None:
    """Refuse at once (before a cluster starts) a local output whose lock could not be created:
    on a read-only filesystem, or in a directory this user may not write. Writes nothing; the
    lock itself still reports what this cheap check cannot see."""
    if not isinstance(fs, pafs.LocalFileSystem):
        return
    path = lock_path_for(output_path, "lock")
    target = path if os.path.exists(path) else os.path.dirname(path)
    while not os.path.exists(target) and os.path.dirname(target) != target:
        target = os.path.dirname(target)  # the directory the lock's parents would be created in
    if os.access(target, os.W_OK):
        return
    read_only = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
    code = errno.EROFS if read_only else errno.EACCES
    raise LockUnavailable(unwritable_message(path, OSError(code, os.strerror(code), target)))


def _utc(ts: Optional[float] = None) -> str:
    return datetime.fromtimestamp(ts if ts is not None else time.time(), timezone.utc).isoformat(timespec="seconds")


def lock_path_for(output_path: str, suffix: str) -> str:
    """The lock's (``lock``) or lease's (``lease``) hidden sibling of the output."""
    return sibling_path(output_path, suffix)


class FileLock:
    """Non-blocking exclusive ``flock``; ``with FileLock(path):`` raises :class:`LockBusy` if held."""

    def __init__(self, path: str, what: str = "run"):
        self.path = path
        self.what = what
        self._fd: Optional[int] = None
        self.previous_holder: Optional[dict] = None

    def _read_holder(self) -> Optional[dict]:
        try:
            return json.loads(Path(self.path).read_text() or "null")
        except (OSError, ValueError):
            return None

    def acquire(self) -> "FileLock":
        import fcntl

        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise LockUnavailable(unwritable_message(self.path, e)) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self._read_holder() or {}
            raise LockBusy(
                f"another {self.what} holds {self.path} (pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
                f"since {holder.get('since', '?')}); wait for it to finish or stop it"
            ) from None
        self._fd = fd
        holder = self._read_holder()
        if holder and holder.get("active"):
            # The file says "held" but the kernel lock was free: its holder died mid-run.
            self.previous_holder = holder
            logger.warning(
                "taking over the lock %s left by pid %s on %s (since %s), which is no longer running",
                self.path, holder.get("pid"), holder.get("host"), holder.get("since"),
            )
        self._write_holder(active=True)
        return self

    def _write_holder(self, active: bool) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": _utc(), "active": active}
        data = json.dumps(info).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def verify(self) -> None:
        """A held kernel lock cannot be lost; nothing to check."""

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

    def abandon(self) -> None:
        """Close without marking the file released: what a killed process leaves behind."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            self.abandon()  # a simulated crash (BaseException) leaves the lock as a killed process would
            return
        self.release()


class ObjectLease:
    """A renewed lease object on a filesystem without locks (S3, GCS, ...); see the module text."""

    def __init__(self, fs: pafs.FileSystem, path: str, ttl_s: float = 300.0, settle_s: float = 1.0, what: str = "run"):
        if ttl_s <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl_s}")
        self.fs = fs
        self.path = path
        self.ttl_s = float(ttl_s)
        self.settle_s = float(settle_s)
        self.what = what
        self.owner = uuid.uuid4().hex
        self.started_at = time.time()
        self.previous_holder: Optional[dict] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.lost: Optional[str] = None

    def _read(self) -> Optional[dict]:
        try:
            with self.fs.open_input_stream(self.path) as f:
                data = json.loads(f.read().decode())
        except (FileNotFoundError, OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write(self) -> None:
        now = time.time()
        info = {
            "owner": self.owner,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": _utc(self.started_at),
            "renewed_at": _utc(now),
            "expires_at_epoch": now + self.ttl_s,
            "expires_at": _utc(now + self.ttl_s),
        }
        parent = posixpath.dirname(self.path)
        if parent:
            self.fs.create_dir(parent, recursive=True)
        with self.fs.open_output_stream(self.path) as f:
            f.write(json.dumps(info).encode())

    def _busy(self, holder: dict) -> LockBusy:
        return LockBusy(
            f"another {self.what} holds the lease {self.path} (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, since {holder.get('started_at', '?')}, expires {holder.get('expires_at', '?')} "
            f"unless renewed); wait for it to finish, or for its lease to expire if its driver was killed"
        )

    def acquire(self) -> "ObjectLease":
        holder = self._read()
        if holder and holder.get("owner") != self.owner:
            if float(holder.get("expires_at_epoch", 0)) > time.time():
                raise self._busy(holder)
            self.previous_holder = holder
            logger.warning(
                "taking over the expired lease %s of pid %s on %s (expired %s)",
                self.path, holder.get("pid"), holder.get("host"), holder.get("expires_at"),
            )
        try:
            self._write()
        except OSError as e:
            raise LockUnavailable(unwritable_message(self.path, e)) from e
        time.sleep(self.settle_s)
        now = self._read()
        if not now or now.get("owner") != self.owner:
            raise self._busy(now or {})
        self._thread = threading.Thread(target=self._renew_loop, name="rayformers-lease", daemon=True)
        self._thread.start()
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                holder = self._read()
                if not holder or holder.get("owner") != self.owner:
                    self.lost = f"the lease {self.path} was taken over by pid {(holder or {}).get('pid', '?')} on {(holder or {}).get('host', '?')}"
                    logger.error("%s; this run will not publish", self.lost)
                    return
                self._write()
            except Exception as e:  # noqa: BLE001 - a failed renewal is retried; expiry guards the rest
                logger.warning("renewing the lease %s failed (%s); retrying", self.path, e)

    def verify(self) -> None:
        """Raise :class:`LockBusy` if the lease is no longer ours (checked right before publishing)."""
        holder = self._read()
        if self.lost or not holder or holder.get("owner") != self.owner:
            raise LockBusy(
                (self.lost or f"the lease {self.path} is no longer held by this run")
                + "; nothing was published (the staged rows stay; re-run with output.mode=resume)"
            )

    def _stop_renewing(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def release(self) -> None:
        self._stop_renewing()
        holder = self._read()
        if holder and holder.get("owner") == self.owner:
            try:
                self.fs.delete_file(self.path)
            except OSError as e:
                logger.warning("could not delete the lease %s (%s); it expires by itself", self.path, e)

    def abandon(self) -> None:
        """Stop renewing but leave the lease in place: what a killed driver leaves behind."""
        self._stop_renewing()

    def __enter__(self) -> "ObjectLease":
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            self.abandon()
            return
        self.release()


def output_lock(fs: pafs.FileSystem, output_path: str, ttl_s: float = 300.0, what: str = "run"):
    """The lock for one output: :class:`FileLock` on local paths, :class:`ObjectLease` elsewhere."""
    if isinstance(fs, pafs.LocalFileSystem):
        return FileLock(lock_path_for(output_path, "lock"), what=what)
    return ObjectLease(fs, lock_path_for(output_path, "lease"), ttl_s=ttl_s, what=what)


__all__ = ["FileLock", "LockBusy", "LockUnavailable", "check_lock_creatable", "unwritable_message", "ObjectLease", "lock_path_for", "output_lock"]
