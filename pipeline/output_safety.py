"""Rules that keep a job from destroying or mixing data that is not its own.

Three checks, each run before any row is read:

* **Inputs and outputs never overlap** (:func:`check_disjoint`): an output that equals, contains
  or sits inside an input path is refused in every mode, after resolving symlinks, ``..`` and
  trailing slashes (local paths) or comparing bucket + prefix (object stores). A glob counts as
  its fixed prefix, since ``fnmatch``'s ``*`` also matches ``/`` and would read our own output
  back as input on the next run. Spark refuses the same ("Cannot overwrite a path that is also
  being read from").
* **Overwrite only what is ours** (:func:`check_replaceable`): a path is replaced only when it
  is missing, empty, or a rayformers output whose manifest lists every file in it. Anything else
  (someone's files, an ETL root, a rayformers output with extra files dropped in by hand) is
  refused with what was found there. The same check runs again at publish time, so files added
  while the job ran are not deleted either.
* **Staging directories are ours** (:func:`check_staging_is_ours`): a staging directory is only
  deleted when it holds our ``job.json`` (or nothing).

The per-output lock (one writer per output) lives in :mod:`.locks`.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from typing import Iterable, Optional

import pyarrow.fs as pafs

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
JOB_FILE = "job.json"
OUTPUT_FORMAT = "rayformers-output/1"
"""Written into every manifest: what marks a directory as a rayformers output we may replace."""

ETL_STATE_FILE = "_etl_state.json"
_GLOB_CHARS = set("*?[")


class OutputError(RuntimeError):
    """The output location is in a state the chosen ``output.mode`` does not allow."""


class UnsafeOutputError(OutputError):
    """The configured output would overwrite or mix data that this job does not own."""


def sibling_path(output_path: str, role: str) -> str:
    """``<parent>/.<name>.rayformers-<role>``: a hidden sibling of the output (staging, lock,
    lease), so it exists before the output does and listing the output never shows it."""
    parent, name = posixpath.split(output_path.rstrip("/"))
    return posixpath.join(parent, f".{name}.rayformers-{role}")


@dataclass(frozen=True)
class Location:
    """A path normalised for comparison: filesystem kind plus an absolute, resolved key."""

    kind: str
    key: str
    shown: str

    def contains(self, other: "Location") -> bool:
        """True when ``other`` is this location or lies below it."""
        if self.kind != other.kind:
            return False
        if self.key == other.key:
            return True
        prefix = self.key if self.key.endswith("/") else self.key + "/"
        return other.key.startswith(prefix)


def _fixed_prefix(path: str) -> str:
    """The part of a glob before its first wildcard component (the whole path when none)."""
    if not any(c in path for c in _GLOB_CHARS):
        return path
    base = path
    while any(c in base for c in _GLOB_CHARS):
        base = posixpath.dirname(base)
    return base or "/"


def location(fs: pafs.FileSystem, path: str, shown: Optional[str] = None) -> Location:
    """Normalise ``path`` on ``fs``: symlinks, ``..``, ``.`` and trailing slashes resolved."""
    shown = shown or path
    path = _fixed_prefix(path)
    if isinstance(fs, pafs.LocalFileSystem):
        return Location("local", os.path.realpath(os.path.abspath(os.path.expanduser(path))), shown)
    key = posixpath.normpath("/" + path.strip("/"))
    return Location(fs.type_name, key, shown)


def check_disjoint(inputs: Iterable[Location], outputs: Iterable[tuple[str, Location]]) -> None:
    """Refuse any ``(role, output)`` that equals, contains or sits inside one of ``inputs``."""
    inputs = list(inputs)
    for role, out in outputs:
        for inp in inputs:
            if out.kind != inp.kind:
                continue
            if out.key == inp.key:
                how = "is the same path as"
            elif inp.contains(out):
                how = "lies inside"
            elif out.contains(inp):
                how = "contains"
            else:
                continue
            raise UnsafeOutputError(
                f"{role} {out.shown!r} {how} the input {inp.shown!r} (resolved: {out.key} vs {inp.key}); "
                f"writing there would overwrite or re-read the input. Choose an output outside the input paths."
            )


def _listing(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type == pafs.FileType.File:
        raise UnsafeOutputError(f"{path} is a file, not a directory; it is not a rayformers output and is left alone")
    return list(fs.get_file_info(pafs.FileSelector(path, recursive=True)))


def _read_json(fs: pafs.FileSystem, path: str) -> Optional[dict]:
    try:
        with fs.open_input_stream(path) as f:
            data = json.loads(f.read().decode())
    except (FileNotFoundError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_rayformers_manifest(manifest: Optional[dict]) -> bool:
    """Ours: the format marker, or (manifests written before the marker) fingerprint + file list."""
    if not manifest:
        return False
    if manifest.get("format") == OUTPUT_FORMAT:
        return True
    return "config_fingerprint" in manifest and isinstance(manifest.get("output_files"), list)


def _describe(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (", ..." if len(names) > limit else "")


def foreign_entries(fs: pafs.FileSystem, path: str) -> tuple[Optional[dict], list[str]]:
    """``(manifest, entries not written by rayformers)`` of an existing output directory."""
    infos = _listing(fs, path)
    if not infos:
        return None, []
    manifest = _read_json(fs, posixpath.join(path, MANIFEST))
    if not is_rayformers_manifest(manifest):
        return manifest, [posixpath.relpath(i.path, path) for i in infos]
    listed = {str(f.get("path")) for f in manifest.get("output_files", []) if isinstance(f, dict)}
    ours = listed | {MANIFEST, SUCCESS}
    foreign = []
    for i in infos:
        rel = posixpath.relpath(i.path, path)
        if i.type == pafs.FileType.Directory:
            if not any(o.startswith(rel + "/") for o in ours):
                foreign.append(rel + "/")
        elif rel not in ours:
            foreign.append(rel)
    return manifest, foreign


def check_replaceable(fs: pafs.FileSystem, path: str, why: str = "output.mode=overwrite") -> bool:
    """Raise unless ``path`` is missing, empty, or entirely a rayformers output.

    Returns whether there is something to replace."""
    infos = _listing(fs, path)
    if not infos:
        return False
    manifest, foreign = foreign_entries(fs, path)
    if not foreign:
        return True
    files = [i for i in infos if i.type == pafs.FileType.File]
    if fs.get_file_info(posixpath.join(path, ETL_STATE_FILE)).type == pafs.FileType.File:
        what = f"an incremental ETL output ({ETL_STATE_FILE}); manage it with `rayformers etl`, not `rayformers run`"
    elif is_rayformers_manifest(manifest):
        what = (
            f"a rayformers output plus {len(foreign)} entries its manifest does not list ({_describe(foreign)}); "
            f"move them away first"
        )
    else:
        what = f"{len(files)} files, not a rayformers output (no {MANIFEST}; e.g. {_describe(foreign)})"
    raise UnsafeOutputError(
        f"{why} refuses to replace {path}: it holds {what}. rayformers only replaces empty paths and its own "
        f"outputs; point output.path at a new or empty directory."
    )


def check_staging_is_ours(fs: pafs.FileSystem, staging: str) -> bool:
    """Raise unless ``staging`` is missing, empty, or holds our ``job.json``; returns whether it exists."""
    info = fs.get_file_info(staging)
    if info.type == pafs.FileType.NotFound:
        return False
    if info.type == pafs.FileType.File:
        raise UnsafeOutputError(f"{staging} is a file, not a rayformers staging directory; move it away")
    entries = list(fs.get_file_info(pafs.FileSelector(staging, recursive=False)))
    if not entries:
        return True
    job = _read_json(fs, posixpath.join(staging, JOB_FILE))
    if job is None or "config_fingerprint" not in job:
        raise UnsafeOutputError(
            f"{staging} looks like a rayformers staging directory by its name but holds no {JOB_FILE} of ours "
            f"({len(entries)} entries); it is left alone: move it away or choose another output.path"
        )
    return True


__all__ = [
    "Location",
    "OUTPUT_FORMAT",
    "OutputError",
    "UnsafeOutputError",
    "check_disjoint",
    "check_replaceable",
    "check_staging_is_ours",
    "foreign_entries",
    "is_rayformers_manifest",
    "location",
]
