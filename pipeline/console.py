"""What a job prints on the console: quiet by default, everything with ``--verbose``.

A successful run should show the user three things: that it is moving (progress), what went wrong
(warnings and errors) and the report. Ray, left alone, also prints its start-up chatter, the
execution plan, a 15-line progress block every 10 s when stdout is not a terminal, a token-auth
notice, and an error-level line from its core worker on every run that uses an actor pool ("has
constructor arguments in the object store and max_restarts > 0": Ray Data always passes the
actor's ``DataContext`` by reference; ray-project/ray#53727). None of that is actionable for a
user of this tool, and an error-level line in a run that succeeded teaches people to ignore error
lines.

Quiet mode (the default) therefore, for the driver's console only:

* filters Ray's Python log records below WARNING from the console handlers (Ray Data's own
  ``ray-data.log`` file handler still gets everything);
* drops the token-auth notice of a local cluster this process starts;
* turns Ray Data's non-terminal progress block into one line every 10 s (``read 400/400 ·
  tokenized 400/400 · scored 128/400 · written 0/400``); on a terminal Ray's progress bars stay;
* starts a *local* cluster with its C++ components logging at ``fatal`` (``RAY_BACKEND_LOG_LEVEL``)
  unless the user set that variable: the only way to silence the core worker's line, since it is
  written by C++ straight to the process's stderr. The cost is that the local session's C++ log
  files hold no error lines either; ``--verbose`` (or ``RAYFORMERS_VERBOSE=1``) keeps Ray exactly
  as it is. A cluster joined through ``RAY_ADDRESS`` is never touched. Ray's C++ logger announces
  that level on stderr when it starts ("Set ray log level from environment variable"); that one
  line is held back while ``ray.init`` runs (everything else written meanwhile is passed on).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import time
from typing import Iterator, Optional

VERBOSE_ENV = "RAYFORMERS_VERBOSE"
_PROGRESS_LOGGER = "ray.data._internal.progress.logging_progress"
_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_STAGE_PROGRESS = re.compile(r"^(\S+): (\d+)/(\S+)$")
_STAGE_WORDS = {"ReadReadParquetRows": "read", "Write": "written"}
_LEVEL_ANNOUNCEMENT = re.compile(rb"logging\.cc:\d+\] Set ray log level from environment variable|"
                                 rb"logging\.cc:\d+: Set ray log level from environment variable")


def verbose() -> bool:
    """``--verbose`` on the command line, or ``RAYFORMERS_VERBOSE=1`` in the environment."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class _QuietConsole(logging.Filter):
    """Console filter: warnings and errors pass; Ray Data's progress block becomes one line.

    Ray Data logs, every 10 s when stdout is not a terminal, a block of lines: a ``=== Running
    Dataset ===`` header, ``Total Progress: n/?``, one ``<operator>: done/total`` line per stage
    (with a resources line under each) and a ``====`` footer. The filter keeps the per-stage
    counts and, at the footer, prints one line: ``read 400/400 · tokenized 400/400 · scored
    128/400 · written 0/400``."""

    def __init__(self) -> None:
        super().__init__("rayformers-quiet-console")
        self.total_rows: Optional[int] = None
        self._stages: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == _AUTH_LOGGER:
            return False
        if record.levelno >= logging.WARNING:
            return True
        # Ray may attach several console handlers to one logger (it configures Ray Data's logging
        # again per dataset): a progress record is read once, whichever handler sees it first.
        if record.name == _PROGRESS_LOGGER and not getattr(record, "rayformers_seen", False):
            record.rayformers_seen = True
            self._progress(record.getMessage())
        return False

    def _progress(self, message: str) -> None:
        if message.startswith("======= Running"):
            self._stages = {}
            return
        if message and set(message) == {"="}:
            if self._stages:
                print(f"[rayformers] {time.strftime('%H:%M:%S')}  " + " · ".join(
                    f"{k} {v}" for k, v in self._stages.items()), file=sys.stderr, flush=True)
            return
        match = _STAGE_PROGRESS.match(message)
        if not match:
            return
        name, done, total = match.groups()
        word = _STAGE_WORDS.get(name)
        if word is None and name.startswith("MapBatches("):
            word = "tokenized" if "Tokenize" in name else "scored"
        if word is not None:
            total = f"{self.total_rows:,}" if self.total_rows else total
            self._stages[word] = f"{int(done):,}/{total}"


_FILTER = _QuietConsole()


def _console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    """Stream handlers that are not files (Ray Data's session file handler is a plain Handler)."""
    return [h for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def quiet_ray_console(total_rows: Optional[int] = None) -> None:
    """Install the quiet console filter on Ray's loggers (idempotent); a no-op when verbose.

    ``total_rows`` (the job's input rows) turns the progress line into ``done/total``."""
    if verbose():
        return
    import ray.data  # noqa: F401  (Ray Data configures its loggers on import)

    _FILTER.total_rows = total_rows
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        for handler in _console_handlers(logging.getLogger(name)):
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
    # the auth notice is logged before a handler of ours could see it if Ray's logger has none yet
    logging.getLogger(_AUTH_LOGGER).addFilter(_FILTER)


def quiet_local_cluster_env() -> None:
    """Before ``ray.init`` starts a local cluster: C++ components log at ``fatal`` (see above)."""
    if verbose() or os.environ.get("RAY_ADDRESS"):
        return
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")


@contextlib.contextmanager
def without_log_level_announcement() -> Iterator[None]:
    """Around ``ray.init`` of a quiet local cluster: stderr (the file descriptor, since C++ writes
    there) goes to a temporary file and is passed on afterwards without the level announcement.
    A no-op when verbose or when the level was not set by :func:`quiet_local_cluster_env`."""
    if verbose() or os.environ.get("RAY_BACKEND_LOG_LEVEL") != "fatal":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = b"".join(line for line in held if not _LEVEL_ANNOUNCEMENT.search(line))
            if kept:
                os.write(2, kept)
