"""A full disk while staging: one clear error instead of Ray's traceback, and the rows kept.

When the output location fills up, a write task fails with ``ENOSPC`` and Ray Data aborts the
dataset, logging hundreds of lines of its internals (and asking for a bug report). What the user
needs is where it happened, how many rows are staged (they stay: the commit protocol never loses
a staged file), and that ``output.mode=resume`` continues from them once space is freed.
"""

from __future__ import annotations

import errno
import logging
from contextlib import contextmanager
from typing import Iterator

from .commit import IncompleteOutputError, OutputState, read_staged

RAY_DATA_LOGGER = "ray.data"


class OutputSpaceError(IncompleteOutputError):
    """The output location ran out of space while rows were staged; the staged rows are kept."""


def is_no_space_left(exc: BaseException) -> bool:
    """True when ``exc`` or anything it wraps (a Ray task error's cause included) is ENOSPC."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e):
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return False


class _HoldErrors(logging.Filter):
    """Holds back ERROR records from a console handler until the outcome is known."""

    def __init__(self):
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            self.held.append(record)
            return False
        return True


@contextmanager
def _ray_data_errors_held() -> Iterator[list]:
    """While the block runs, Ray Data's console handlers hold back ERROR records (its log file
    still gets them). Yields a one-item list: set ``[0] = True`` to drop them, else they are
    printed on exit as they would have been."""
    handlers = [
        h for h in logging.getLogger(RAY_DATA_LOGGER).handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    holds = [(h, _HoldErrors()) for h in handlers]
    for h, f in holds:
        h.addFilter(f)
    drop = [False]
    try:
        yield drop
    finally:
        for h, f in holds:
            h.removeFilter(f)
            if not drop[0]:
                for record in f.held:
                    try:
                        h.handle(record)
                    except Exception:  # noqa: BLE001 - a broken log stream must not fail the job
                        pass


@contextmanager
def reporting_full_disk(state: OutputState, total_rows: int) -> Iterator[None]:
    """Turn "no space left on device" while staging into one :class:`OutputSpaceError`: where,
    how many rows are staged and kept, and that a resume continues from them once space is freed.
    Any other failure passes through unchanged (with Ray Data's log records)."""
    with _ray_data_errors_held() as drop:
        try:
            yield
        except Exception as e:  # noqa: BLE001 - re-raised unless it is a full disk
            if not is_no_space_left(e):
                raise
            drop[0] = True
            failure = e
    if not drop[0]:
        return
    try:
        staged = sum(f.rows for f in read_staged(state.fs, state.data_dir))
        kept = f"{staged} of {total_rows} input rows are staged there and kept"
    except Exception as count_error:  # noqa: BLE001 - the message matters more than the count
        kept = f"the rows staged so far are kept (not counted: {count_error})"
    raise OutputSpaceError(
        f"no space left on the device holding {state.staging_dir} while staging rows: {kept}. Free space "
        f"there and re-run with --set output.mode=resume to continue (staged rows are not scored again), "
        f"or start over elsewhere with another output.path"
    ) from failure
