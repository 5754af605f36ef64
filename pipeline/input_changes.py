"""What changed in the input since an output was published or its rows were staged.

``resume`` must never keep predictions of an input that is no longer there, nor stop at
"already complete" while new rows wait. A file's version is its path, byte size, mtime and the
digest of its Parquet footer (:func:`.source.read_footer`); the manifest of a published output
records each input file's version (``InputFile.version``) and every staged row carries its
row group's key, which names the version too (:func:`.source.row_group_key`). Compared with
the input as it is now:

* a **new** file is scored (the published rows are kept, see ``commit.prepare_output``);
* a **changed** or **vanished** file is refused, naming the file and what changed: a Parquet
  file is rewritten, never appended to, so which of its rows are new cannot be told, and
  keeping its old predictions would leave the output stale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional, Sequence

from .output_safety import OutputError
from .source import InputFile, parse_row_group_key


@dataclass
class InputChanges:
    """The input as it is now against what an output recorded of it."""

    new: list[InputFile] = field(default_factory=list)
    changed: list[tuple[dict, InputFile]] = field(default_factory=list)
    """``(recorded version, file as it is now)``."""
    vanished: list[dict] = field(default_factory=list)
    versioned: bool = True
    """False for an output of an earlier format that recorded only paths and row counts."""

    @property
    def unchanged(self) -> bool:
        return not (self.new or self.changed or self.vanished)


def compare_input(recorded: Sequence[dict], current: Sequence[InputFile]) -> InputChanges:
    """Compare the recorded versions (a manifest's ``input_files``) with the files now listed."""
    by_path = {r["path"]: r for r in recorded}
    changes = InputChanges(versioned=all("footer_sha1" in r for r in recorded))
    for f in current:
        old = by_path.pop(f.path, None)
        if old is None:
            changes.new.append(f)
        elif differences(old, f):
            changes.changed.append((old, f))
    changes.vanished = sorted(by_path.values(), key=lambda r: r["path"])
    return changes


def differences(old: dict, f: InputFile) -> list[str]:
    """What differs between a recorded version and ``f``, in words; empty when it is the same
    version. Only the fields ``old`` recorded are compared."""
    now = f.version()
    out = []
    if "rows" in old and int(old["rows"]) != now["rows"]:
        out.append(f"rows {int(old['rows']):,} -> {now['rows']:,}")
    elif "row_groups" in old and list(old["row_groups"]) != now["row_groups"]:
        out.append(f"row groups {len(old['row_groups'])} -> {len(now['row_groups'])} (rows regrouped)")
    if "size" in old and int(old["size"]) != now["size"]:
        out.append(f"size {int(old['size']):,} -> {now['size']:,} bytes")
    if "mtime_ns" in old and int(old["mtime_ns"]) != now["mtime_ns"]:
        out.append(f"modified {_when(int(old['mtime_ns']))} -> {_when(now['mtime_ns'])}")
    if old.get("footer_sha1") and old["footer_sha1"] != now["footer_sha1"]:
        if not out:
            out.append(
                "same size and modification time but a different Parquet footer (row group sizes or column "
                "statistics): rewritten in place with its mtime kept, as cp -p or rsync -t do"
            )
        else:
            out.append("a different Parquet footer")
    return out


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def _first_and_more(paths: list[str]) -> str:
    return paths[0] + (f" (and {len(paths) - 1} more)" if len(paths) > 1 else "")


def refuse_finished_changes(changes: InputChanges, output_path: str) -> None:
    """Raise :class:`OutputError` when ``resume`` may not extend a published output: an input
    file it scored changed or vanished, or it is of an earlier format that cannot tell."""
    if changes.unchanged:
        return
    if not changes.versioned:
        raise OutputError(
            f"output.mode=resume: the input of {output_path} changed since it was published, and that output was "
            f"published by an earlier version that did not record its input files' versions, so resume cannot tell "
            f"which rows are new; rescore with output.mode=overwrite"
        )
    if changes.changed:
        old, f = changes.changed[0]
        raise OutputError(
            f"output.mode=resume: input file {_first_and_more([f.path for _, f in changes.changed])} changed since "
            f"{output_path} was published ({', '.join(differences(old, f))}). Resume scores new input files only: it "
            f"cannot tell which rows of a rewritten file are new (a Parquet file is rewritten, never appended to), "
            f"and keeping the old predictions would leave the output stale. Rescore the input as it is now with "
            f"output.mode=overwrite; to add rows later without rescoring, write them as new files under input.path."
        )
    if changes.vanished:
        raise OutputError(
            f"output.mode=resume: input file {_first_and_more([r['path'] for r in changes.vanished])}, scored in "
            f"{output_path}, is no longer in input.path; resume cannot take its rows out of the output. Restore the "
            f"file, or rescore the input as it is now with output.mode=overwrite."
        )


def refuse_stale_staged_rows(stale_keys: Sequence[str], staging: str, current: Optional[Sequence[InputFile]]) -> None:
    """Raise :class:`OutputError` naming the input file whose staged rows are of another version
    (``stale_keys``: row group keys of staged rows that the input as it is now does not have)."""
    if not stale_keys:
        return
    versions = sorted((parse_row_group_key(k) for k in stale_keys), key=lambda v: v["path"])
    old = versions[0]
    paths = sorted({v["path"] for v in versions})
    now = {f.path: f for f in current or []}
    f = now.get(old["path"])
    if f is not None:
        what = ", ".join(differences(old, f)) or "a different version"
        why = f"which changed since they were staged ({what})"
    elif current is not None:
        why = "which is no longer in input.path"
    else:
        why = "which changed or vanished since they were staged"
    raise OutputError(
        f"output.mode=resume: the staged run in {staging} holds rows of input file {_first_and_more(paths)}, {why}; "
        f"resuming would mix two versions of the input. Rescore with output.mode=overwrite (the staged rows are "
        f"discarded), or restore the file as it was to resume."
    )


__all__ = ["InputChanges", "compare_input", "differences", "refuse_finished_changes", "refuse_stale_staged_rows"]
