"""``rayformers etl CONFIG.yaml``: score only the input files that are new or changed, on a schedule.

Supports: the same YAML as ``rayformers run`` (plus an optional ``etl:`` section with ``every`` /
``cron``); local, glob and pyarrow-URI inputs; ``--once`` for external schedulers and a built-in
``--every 15m`` / ``--cron '*/15 * * * *'`` loop; exactly-once output across crashes; refusal to
mix outputs of different configurations unless ``--reprocess``.
Does not support: input formats other than Parquet (as the pipeline); removing the rows of input
files that were deleted (they stay, and each run logs them). Runs on one root exclude each other
through the pipeline's per-output lock (kernel lock locally, a renewed lease object on object
stores); an external scheduler's no-overlap policy (a Kubernetes CronJob with
``concurrencyPolicy: Forbid``) still saves the refused start.

Output layout under ``output.path`` (the *root*)::

    _etl_state.json              the commit log / top-level manifest: committed runs, input file
                                 versions (path, size, mtime) and the run each one is in, config
                                 fingerprint, the pending (planned, uncommitted) run
    run-000001/                  one published pipeline output per ETL run (part-*.parquet,
    run-000002/                  _manifest.json, _SUCCESS), written by the pipeline's commit
    run-000001-v2/               protocol; "-vN": rows of a since-changed input file removed
    _etl/ids/run-000001.parquet  lineage: (input file, row id) of every row a run scored
    _etl.lock                    the lock (local outputs; object stores: ../.<root>.rayformers-lease)

Readers trust only the runs listed in ``_etl_state.json`` (:func:`committed_run_paths`,
:func:`read_etl_output`): each input row is in exactly one of them.

One ETL run:

1. under the lock, finish or discard the pending run left by a crash (below);
2. list the inputs (a listing only, no file is opened) and compare with the state: new files,
   changed files (another size or mtime), vanished files; nothing new → say so, write nothing;
3. plan: validate the run with the pipeline's pre-flight on exactly its files (a config that
   cannot run records nothing), write the run's lineage file, then record the plan as
   ``pending`` in the state;
4. run the pipeline on exactly those files into ``run-NNNNNN`` with ``output.mode=resume``:
   a crash before its publish is resumed by the next invocation (rows already staged are not
   scored again), a crash after it finds the run published and goes on;
5. for changed files, rewrite the older runs that hold their previous version without those rows
   (a new ``-vN`` directory; the old one stays until the commit);
6. commit: one atomic replace of the state file (runs, file versions, pending cleared);
7. delete directories no longer referenced.

Between any two steps a crash leaves either the old committed state plus a pending plan
(finished by the next run) or the new committed state, so every input row ends up exactly once.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import posixpath
import re
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayformers.pipeline.commit import (
    SUCCESS,
    OutputState,
    collect_staged,
    publish,
    read_manifest,
    staging_path,
    write_part,
)
from rayformers.pipeline.config import ConfigError, JobConfig, build_dataclass, describe, load_config
from rayformers.pipeline.output_safety import UnsafeOutputError, check_disjoint, location
from rayformers.pipeline.source import ID_COLUMN, resolve_filesystem

from .etl_state import (
    STATE_FILE,
    EtlState,
    FileVersion,
    LockBusy,
    PendingRun,
    RunRecord,
    LOCK_FILE,
    etl_lock,
    exists,
    list_input_files,
    load_state,
    save_state,
    stat_files,
    utc_now,
)
from .schedule import ScheduleError, parse_schedule, run_loop

logger = logging.getLogger("rayformers.etl")

IDS_DIR = "_etl/ids"
RUN_DIR_RE = re.compile(r"^run-(\d{6,})(?:-v(\d+))?$")

CRASH_ENV = "RAYFORMERS_ETL_CRASH_AT"
"""Fault injection for tests: ``after-plan``, ``before-publish`` (all rows staged, nothing
published), ``after-publish`` (published, state not advanced), ``after-retract``, ``after-commit``."""
CRASH_POINTS = ("after-plan", "before-publish", "after-publish", "after-retract", "after-commit")


# ------------------------------------------------------------------------------------------------
# Config


@dataclass
class EtlSettings:
    """Scheduling defaults for ``rayformers etl`` (command-line flags override them)."""

    every: Optional[str] = None
    """Run every DURATION (``30s``, ``15m``, ``2h``, ``1d``): first run at once, then on that grid."""
    cron: Optional[str] = None
    """Run at the minutes a 5-field cron expression matches (local time), e.g. ``*/15 * * * *``."""


@dataclass
class EtlJobConfig(JobConfig):
    """``rayformers run`` config plus the ``etl`` section. ``output.path`` is the ETL root and
    ``output.mode`` is managed by the ETL (each run resumes its own directory)."""

    etl: EtlSettings = field(default_factory=EtlSettings)

    def job_config(self) -> JobConfig:
        d = dataclasses.asdict(self)
        d.pop("etl")
        return build_dataclass(JobConfig, d)


def describe_etl() -> list[str]:
    """Every accepted ``etl.*`` key with its default and documentation (``rayformers describe``)."""
    return describe(EtlSettings, "etl.")


class EtlError(RuntimeError):
    """The ETL cannot proceed; the message says what to do."""


class ConfigChangedError(EtlError):
    """The config differs from the one the committed runs were scored with."""


class InjectedCrash(BaseException):
    """Raised at a ``RAYFORMERS_ETL_CRASH_AT`` point: a BaseException, so that no ``except
    Exception`` on the way cleans anything up, as with a killed process."""


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        logger.error("etl: injected crash at %s (%s)", name, CRASH_ENV)
        if os.environ.get(CRASH_ENV + "_MODE") == "exit":
            os._exit(70)
        raise InjectedCrash(name)


# ------------------------------------------------------------------------------------------------
# Results


@dataclass
class RunSummary:
    run_id: str
    files: int
    rows: int
    errors: int
    recovered: bool = False
    retracted: dict = field(default_factory=dict)


@dataclass
class EtlOutcome:
    """What one ``rayformers etl --once`` did."""

    status: str
    """``published`` (at least one run committed), ``nothing-new`` or ``locked`` (another run
    holds the lock; nothing done)."""
    root: str
    runs: list = field(default_factory=list)
    new_files: int = 0
    changed_files: int = 0
    unchanged_files: int = 0
    vanished_files: int = 0
    message: str = ""

    def format(self) -> str:
        lines = [self.message] if self.message else []
        for r in self.runs:
            how = "finished after an interrupted attempt" if r.recovered else "published"
            extra = ""
            if r.retracted:
                extra = "; replaced older rows of changed files in " + ", ".join(
                    f"{k}→{v or 'removed'}" for k, v in r.retracted.items()
                )
            lines.append(f"{r.run_id}: {r.files} input files, {r.rows} rows, {r.errors} errors {how}{extra}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Paths, listings, lineage


def _input_roots(cfg: JobConfig) -> tuple[pafs.FileSystem, list[tuple[str, str]]]:
    paths = cfg.input.path if isinstance(cfg.input.path, list) else [cfg.input.path]
    if not paths or not all(isinstance(p, str) and p for p in paths):
        raise ConfigError("input.path is empty: set it to a Parquet file, directory or glob")
    fs = None
    roots = []
    for raw in paths:
        fs_i, p = resolve_filesystem(raw, cfg.input.filesystem)
        fs = fs or fs_i
        roots.append((raw, p))
    return fs, roots


def _ids_path(root: str, run_id: str) -> str:
    return posixpath.join(root, IDS_DIR, f"{run_id}.parquet")


def _file_ids(fs: pafs.FileSystem, f: FileVersion, id_column: Optional[str]) -> pa.Array:
    """The ids the pipeline gives this file's rows: its id column, or ``<relpath>:<row>``."""
    try:
        if id_column:
            return pq.read_table(f.path, columns=[id_column], filesystem=fs).column(id_column).combine_chunks()
        n = pq.ParquetFile(f.path, filesystem=fs).metadata.num_rows
    except Exception as e:  # noqa: BLE001 - name the file that cannot be read
        raise EtlError(f"input file {f.path} cannot be read as Parquet ({type(e).__name__}: {e}); fix or remove it") from e
    return pa.array([f"{f.relpath}:{i}" for i in range(n)], type=pa.string())


def _write_lineage(in_fs, out_fs, root: str, run_id: str, files: list[FileVersion], id_column: Optional[str]) -> pa.Table:
    """``(file, id)`` of every row the run will score; what lets a changed file's old rows be
    removed later, and what ties every output row to its input file."""
    chunks, names = [], []
    for f in files:
        ids = _file_ids(in_fs, f, id_column)
        chunks.append(ids)
        names.append(pa.array([f.path] * len(ids), type=pa.string()))
    # Files may store ids as int32 in one and int64 in another: one column type for all.
    id_type = pa.int64() if chunks and all(pa.types.is_integer(c.type) for c in chunks) else pa.string()
    ids = pa.concat_arrays([c.cast(id_type) for c in chunks]) if chunks else pa.array([], type=id_type)
    table = pa.table({"file": pa.concat_arrays(names) if names else pa.array([], type=pa.string()), "id": ids})
    path = _ids_path(root, run_id)
    out_fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    pq.write_table(table, tmp, filesystem=out_fs)
    out_fs.move(tmp, path)
    return table


def _read_lineage(fs: pafs.FileSystem, root: str, run_id: str) -> pa.Table:
    path = _ids_path(root, run_id)
    if not exists(fs, path):
        raise EtlError(f"lineage file {path} of committed run {run_id} is missing; the output under {root} was edited by hand")
    return pq.read_table(path, filesystem=fs)


def _check_ids_unique_across_runs(out_fs, root: str, state: EtlState, retract: dict, new_ids: pa.Array) -> None:
    """With ``input.id_column``, ids must be unique over the whole output, not only in one run."""
    import pyarrow.compute as pc

    for r in state.runs:
        lineage = _read_lineage(out_fs, root, r.run_id)
        keep_files = set(r.files) - set(retract.get(r.run_id, []))
        mask = pc.is_in(lineage.column("file"), value_set=pa.array(sorted(keep_files), type=pa.string()))
        old = lineage.filter(mask).column("id")
        if not len(old):
            continue
        dup = pc.is_in(new_ids, value_set=old.combine_chunks().cast(new_ids.type))
        n = pc.sum(dup.cast(pa.int64())).as_py() or 0
        if n:
            example = new_ids.filter(dup)[0].as_py()
            raise EtlError(
                f"input.id_column: {n} ids of the new input files are already in committed run {r.run_id} "
                f"(e.g. {example!r}); ids must be unique across all input files (or unset input.id_column)"
            )


def _run_pipeline(run_cfg: JobConfig, files: list[FileVersion], ray_init_kwargs: Optional[dict]):
    """Score exactly ``files`` with the pipeline (same ids and hive columns as a whole-input run);
    the ``before-publish`` fault point sits between the staged write and the publish."""
    from rayformers.pipeline import run as pipeline_run

    return pipeline_run(
        run_cfg,
        input_files=[f.path for f in files],
        before_publish=lambda report: _crash_point("before-publish"),
        ray_init_kwargs=ray_init_kwargs,
    )


def _run_config(cfg: EtlJobConfig, root_uri: str, run_id: str) -> JobConfig:
    job = cfg.job_config()
    job.output.path = posixpath.join(root_uri.rstrip("/"), run_id)
    job.output.mode = "resume"
    return job


def _config_diff(old: Optional[dict], new: dict) -> list[str]:
    def flat(d: Any, prefix: str = "") -> dict:
        if isinstance(d, dict):
            out = {}
            for k, v in d.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: d}

    if not old:
        return []
    a, b = flat(old), flat(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _fingerprinted_config(cfg: JobConfig) -> dict:
    d = cfg.to_dict()
    return {k: d[k] for k in ("input", "model", "tokenizer", "task")}


# ------------------------------------------------------------------------------------------------
# Runs: retraction, commit, garbage collection


def _dir_version(dirname: str) -> int:
    m = RUN_DIR_RE.match(dirname)
    return int(m.group(2) or 1) if m else 1


def _retract(out_fs, root: str, record: RunRecord, paths: list[str]) -> Optional[RunRecord]:
    """A copy of ``record``'s output without the rows of ``paths`` (their previous version), as a
    new published directory; ``None`` when no row is left. Idempotent: a copy already published
    by an interrupted attempt is reused."""
    import pyarrow.compute as pc

    lineage = _read_lineage(out_fs, root, record.run_id)
    drop_mask = pc.is_in(lineage.column("file"), value_set=pa.array(sorted(paths), type=pa.string()))
    drop_ids = lineage.filter(drop_mask).column("id").combine_chunks()
    src = posixpath.join(root, record.dir)
    manifest = read_manifest(out_fs, src) or {}
    id_column = manifest.get("id_column") or ID_COLUMN
    kept_files = [p for p in record.files if p not in set(paths)]
    if not kept_files:
        return None
    new_dir = f"{record.run_id}-v{_dir_version(record.dir) + 1}"
    dst = posixpath.join(root, new_dir)
    if exists(out_fs, posixpath.join(dst, SUCCESS)):
        m = read_manifest(out_fs, dst) or {}
        return dataclasses.replace(record, dir=new_dir, files=kept_files, rows=int(m.get("output_rows", 0)), errors=int(m.get("error_rows", 0)))
    staging = staging_path(dst)
    if exists(out_fs, staging):
        out_fs.delete_dir(staging)
    if exists(out_fs, dst):
        out_fs.delete_dir(dst)  # moved in but never marked _SUCCESS: not trusted, redo
    state = OutputState(out_fs, dst, staging, posixpath.join(staging, "data"))
    out_fs.create_dir(state.data_dir, recursive=True)
    compression = (manifest.get("config", {}).get("output", {}) or {}).get("compression", "snappy")
    kept = 0
    for info in out_fs.get_file_info(pafs.FileSelector(src, recursive=False)):
        name = posixpath.basename(info.path)
        if info.type != pafs.FileType.File or not name.endswith(".parquet") or name.startswith("."):
            continue
        table = pq.read_table(info.path, filesystem=out_fs)
        if len(drop_ids):
            col = table.column(id_column)
            table = table.filter(pc.invert(pc.is_in(col, value_set=drop_ids.cast(col.type))))
        if table.num_rows:
            write_part(out_fs, state.data_dir, table, compression, name_hint=f"{new_dir}/{name}")
            kept += table.num_rows
    counts = collect_staged(out_fs, state.data_dir, None, expected_rows=kept)
    new_manifest = {
        **manifest,
        "created_at": utc_now(),
        "output_rows": counts.rows,
        "error_rows": counts.errors,
        "output_files": counts.manifest_files(),
        "input_files": [f for f in manifest.get("input_files", []) if f.get("path") not in set(paths)],
        "input_rows": counts.rows,
        "derived_from": record.dir,
        "retracted_input_files": sorted(paths),
    }
    publish(state, new_manifest, counts.files)
    return dataclasses.replace(record, dir=new_dir, files=kept_files, rows=counts.rows, errors=counts.errors)


def _collect_garbage(out_fs, root: str, state: EtlState) -> list[str]:
    """Remove run directories, staging directories and lineage files that neither a committed run
    nor the pending run refers to (left by a crash or superseded by a commit)."""
    keep_dirs = {r.dir for r in state.runs}
    keep_ids = {r.run_id for r in state.runs}
    if state.pending:
        keep_dirs.add(state.pending.run_id)
        keep_ids.add(state.pending.run_id)
    removed = []
    pending_staging = f".{state.pending.run_id}.rayformers-staging" if state.pending else None
    for info in out_fs.get_file_info(pafs.FileSelector(root, recursive=False)):
        name = posixpath.basename(info.path)
        if info.type == pafs.FileType.File and name.startswith(".run-") and name.endswith(".rayformers-lock"):
            # The per-run pipeline lock; under the ETL lock no other writer can hold it.
            pending_lock = f".{state.pending.run_id}.rayformers-lock" if state.pending else None
            if name != pending_lock:
                out_fs.delete_file(info.path)
            continue
        if info.type != pafs.FileType.Directory:
            continue
        if RUN_DIR_RE.match(name):
            if name in keep_dirs:
                continue
        elif name.startswith(".run-") and ".rayformers-staging" in name:
            if name == pending_staging:
                continue  # the pending run's staged rows: resumed, not redone
        else:
            continue
        out_fs.delete_dir(info.path)
        removed.append(name)
    ids_dir = posixpath.join(root, IDS_DIR)
    if exists(out_fs, ids_dir):
        for info in out_fs.get_file_info(pafs.FileSelector(ids_dir, recursive=False)):
            name = posixpath.basename(info.path)
            run_id = name.split(".parquet", 1)[0]
            if name.startswith(".") or run_id not in keep_ids:
                out_fs.delete_file(info.path)
                removed.append(posixpath.join(IDS_DIR, name))
    if removed:
        logger.info("etl: removed %d unreferenced entries under %s: %s", len(removed), root, ", ".join(removed))
    return removed


def _finish_pending(
    cfg: EtlJobConfig, in_fs, out_fs, root: str, root_uri: str, state: EtlState, ray_init_kwargs: Optional[dict], recovered: bool
) -> RunSummary:
    """Run (or resume) the pending run, retract changed files, commit, clean up."""
    pending = state.pending
    assert pending is not None
    files = pending.file_versions()
    run_cfg = _run_config(cfg, root_uri, pending.run_id)
    report = _run_pipeline(run_cfg, files, ray_init_kwargs)
    _crash_point("after-publish")
    run_dir = posixpath.join(root, pending.run_id)
    manifest = read_manifest(out_fs, run_dir)
    if manifest is None or not exists(out_fs, posixpath.join(run_dir, SUCCESS)):
        raise EtlError(f"the pipeline returned ({report.status}) but {run_dir} is not published")

    # A file rewritten while it was being read would leave rows that match neither version.
    now = stat_files(in_fs, [f.path for f in files])
    moved = [f.path for f in files if now.get(f.path) != f.version]
    lineage = _read_lineage(out_fs, root, pending.run_id)
    expected = {p: n for p, n in zip(*_counts_by_file(lineage))}
    scored = {d["path"]: int(d["rows"]) for d in manifest.get("input_files", [])}
    mismatch = [p for p, n in expected.items() if scored.get(p) != n]
    if sum(scored.values()) != lineage.num_rows:
        mismatch.append(f"{sum(scored.values())} rows scored for {lineage.num_rows} planned")
    if moved or mismatch:
        out_fs.delete_dir(run_dir)
        state.pending = None
        save_state(out_fs, root, state)
        raise EtlError(
            f"input files changed while {pending.run_id} was running ({', '.join((moved or mismatch)[:5])}); "
            f"its output was discarded and they are picked up again by the next run"
        )

    retracted: dict = {}
    if pending.reprocess:
        runs: list[RunRecord] = []
        retracted = {r.run_id: None for r in state.runs}
    else:
        runs = []
        for r in state.runs:
            paths = pending.retract.get(r.run_id)
            if not paths:
                runs.append(r)
                continue
            new = _retract(out_fs, root, r, paths)
            retracted[r.run_id] = new.dir if new else None
            if new is not None:
                runs.append(new)
    _crash_point("after-retract")

    record = RunRecord(
        run_id=pending.run_id,
        dir=pending.run_id,
        files=[f.path for f in files],
        rows=int(manifest.get("output_rows", 0)),
        errors=int(manifest.get("error_rows", 0)),
        config_fingerprint=pending.config_fingerprint,
        published_at=utc_now(),
    )
    runs.append(record)
    file_map = {} if pending.reprocess else dict(state.files)
    rows_by_file = dict(expected)
    for f in files:
        file_map[f.path] = {
            "relpath": f.relpath,
            "size": f.size,
            "mtime_ns": f.mtime_ns,
            "rows": rows_by_file.get(f.path, 0),
            "run_id": pending.run_id,
        }
    state.runs = runs
    state.files = file_map
    state.config_fingerprint = pending.config_fingerprint
    state.config = _fingerprinted_config(cfg)
    state.pending = None
    save_state(out_fs, root, state)
    _crash_point("after-commit")
    _collect_garbage(out_fs, root, state)
    logger.info(
        "etl: committed %s: %d files, %d rows, %d errors%s",
        record.run_id, len(files), record.rows, record.errors,
        f" (retracted older rows from {', '.join(retracted)})" if retracted else "",
    )
    return RunSummary(record.run_id, len(files), record.rows, record.errors, recovered=recovered, retracted=retracted)


def _counts_by_file(lineage: pa.Table) -> tuple[list, list]:
    import pyarrow.compute as pc

    if lineage.num_rows == 0:
        return [], []
    vc = pc.value_counts(lineage.column("file").combine_chunks())
    return vc.field("values").to_pylist(), vc.field("counts").to_pylist()


# ------------------------------------------------------------------------------------------------
# One ETL run


def run_once(
    config: EtlJobConfig | JobConfig | dict | str,
    overrides: Optional[list[str]] = None,
    *,
    reprocess: bool = False,
    lock_path: Optional[str] = None,
    ray_init_kwargs: Optional[dict] = None,
) -> EtlOutcome:
    """One incremental run (what ``rayformers etl CONFIG --once`` does); see the module docstring.

    Raises :class:`ConfigChangedError` when the config's fingerprint differs from the committed
    runs' and ``reprocess`` is false, :class:`EtlError` for ETL-level problems, and whatever the
    pipeline raises for a failed run (the plan stays pending and the next run resumes it)."""
    if isinstance(config, EtlJobConfig) and not overrides:
        cfg = config
    else:
        source = dataclasses.asdict(config) if isinstance(config, JobConfig) else config
        cfg = load_config(source, overrides, cls=EtlJobConfig)
    if not cfg.output.path:
        raise ConfigError("output.path is empty: set the ETL output root")
    if os.environ.get(CRASH_ENV) not in (None, "", *CRASH_POINTS):
        raise EtlError(f"{CRASH_ENV}={os.environ[CRASH_ENV]!r} is not one of {', '.join(CRASH_POINTS)}")
    fingerprint = cfg.fingerprint()
    out_fs, root = resolve_filesystem(cfg.output.path, cfg.output.filesystem)
    root_uri = cfg.output.path
    in_fs, roots = _input_roots(cfg)
    if isinstance(out_fs, pafs.LocalFileSystem):
        root_uri = root
    _check_disjoint_from_input(cfg, out_fs, root)
    # Refusals come before the lock, whose file would otherwise be left in a folder that is not
    # ours (or in a new root that then holds nothing else); they are checked again under it.
    _check_root(out_fs, root)
    validated = _validate_first_run(cfg, in_fs, roots, out_fs, root, root_uri)
    lock = etl_lock(out_fs, root, lock_path, ttl_s=cfg.output.lock_ttl_s)
    try:
        with lock:
            return _run_locked(
                cfg, fingerprint, in_fs, roots, out_fs, root, root_uri, reprocess, ray_init_kwargs, validated
            )
    except LockBusy as e:
        logger.warning("etl: %s", e)
        return EtlOutcome(status="locked", root=root, message=str(e))


def _classify(state: EtlState, listing: list[FileVersion]) -> tuple[list, list, list]:
    """``(new, changed, unchanged)`` input files relative to the committed state."""
    new, changed, unchanged = [], [], []
    for f in listing:
        old = state.files.get(f.path)
        if old is None:
            new.append(f)
        elif (int(old["size"]), int(old["mtime_ns"])) != f.version:
            changed.append(f)
        else:
            unchanged.append(f)
    return new, changed, unchanged


def _validate_run(cfg: EtlJobConfig, root_uri: str, run_id: str, files: list[FileVersion]) -> None:
    """The pipeline's pre-flight (model, tokenizer, columns, settings) on exactly the files a run
    will score, before the run is recorded: a config that cannot run must not leave a pending run
    whose fingerprint then refuses the corrected config. Raises ``PreflightError``."""
    from rayformers.pipeline.preflight import preflight

    preflight(_run_config(cfg, root_uri, run_id), [f.path for f in files])


def _validate_first_run(cfg: EtlJobConfig, in_fs, roots, out_fs, root: str, root_uri: str) -> frozenset:
    """For a root that does not exist yet, validate every input file before the lock creates the
    root: a config that cannot run then leaves nothing behind. (No one can hold the lock of a
    root that does not exist; an existing root is validated under its lock, so that a run that
    finds the lock taken stays cheap.) Returns the paths validated."""
    if exists(out_fs, root):
        return frozenset()
    listing = list_input_files(in_fs, roots)
    if not listing:
        return frozenset()
    _validate_run(cfg, root_uri, "run-000001", listing)
    return frozenset(f.path for f in listing)


def _staged_nothing(out_fs: pafs.FileSystem, root: str, run_id: str) -> bool:
    """True when a pending run left no rows anywhere: not published, and no staged part file."""
    if exists(out_fs, posixpath.join(root, run_id)):
        return False
    data_dir = posixpath.join(staging_path(posixpath.join(root, run_id)), "data")
    if not exists(out_fs, data_dir):
        return True
    return not any(
        posixpath.basename(i.path).endswith(".parquet") and not posixpath.basename(i.path).startswith(".")
        for i in out_fs.get_file_info(pafs.FileSelector(data_dir, recursive=False))
    )


def _check_disjoint_from_input(cfg: JobConfig, out_fs: pafs.FileSystem, root: str) -> None:
    """The ETL root holds every run's output: it must not overlap an input path (a run would
    read earlier runs' predictions as new input, or garbage collection would delete input)."""
    paths = cfg.input.path if isinstance(cfg.input.path, list) else [cfg.input.path]
    inputs = [location(*resolve_filesystem(raw, cfg.input.filesystem), shown=raw) for raw in paths]
    try:
        check_disjoint(inputs, [("output.path (the ETL root)", location(out_fs, root, shown=cfg.output.path))])
    except UnsafeOutputError as e:
        raise ConfigError(str(e)) from e


def _check_root(out_fs: pafs.FileSystem, root: str) -> None:
    """A root without a state file must be new or empty: garbage collection deletes ``run-*``
    directories it does not know, so it must never run over someone else's files."""
    if exists(out_fs, posixpath.join(root, STATE_FILE)) or not exists(out_fs, root):
        return
    foreign = [
        posixpath.basename(i.path)
        for i in out_fs.get_file_info(pafs.FileSelector(root, recursive=False))
        if posixpath.basename(i.path) not in (LOCK_FILE, "_etl") and not posixpath.basename(i.path).startswith(f".{STATE_FILE}")
    ]
    if foreign:
        raise EtlError(
            f"output.path {root} already holds files that are not an ETL output (no {STATE_FILE}; e.g. "
            f"{', '.join(sorted(foreign)[:3])}); point output.path at a new or empty directory"
        )


def _run_locked(
    cfg: EtlJobConfig, fingerprint: str, in_fs, roots, out_fs, root: str, root_uri: str, reprocess: bool,
    ray_init_kwargs: Optional[dict], validated: frozenset = frozenset(),
) -> EtlOutcome:
    _check_root(out_fs, root)
    out_fs.create_dir(root, recursive=True)
    state = load_state(out_fs, root)
    _collect_garbage(out_fs, root, state)
    outcome = EtlOutcome(status="nothing-new", root=root)

    if state.pending is not None:
        p = state.pending
        current = {f.path: f for f in list_input_files(in_fs, roots)}
        stale = [f.path for f in p.file_versions() if f.path not in current or current[f.path].version != f.version]
        # A pending run that staged nothing (its config failed, or it was killed before scoring)
        # pins nothing: replacing it loses no work, so a corrected config is not refused.
        empty = p.config_fingerprint != fingerprint and _staged_nothing(out_fs, root, p.run_id)
        if p.config_fingerprint != fingerprint and not reprocess and not empty:
            raise _config_changed(state, cfg, fingerprint, root, pending=True)
        if p.config_fingerprint != fingerprint or stale:
            why = (
                "it staged nothing and the config changed since it was planned" if empty
                else "the config changed (--reprocess)" if p.config_fingerprint != fingerprint
                else f"{len(stale)} of its input files changed since it was planned (e.g. {stale[0]})"
            )
            logger.warning("etl: discarding interrupted run %s: %s", p.run_id, why)
            state.pending = None
            save_state(out_fs, root, state)
            _collect_garbage(out_fs, root, state)
        else:
            logger.info("etl: finishing interrupted run %s (%d files)", p.run_id, len(p.files))
            outcome.runs.append(_finish_pending(cfg, in_fs, out_fs, root, root_uri, state, ray_init_kwargs, recovered=True))
            if p.reprocess:
                reprocess = False  # that run was the rebuild asked for

    if state.config_fingerprint not in (None, fingerprint) and not reprocess:
        raise _config_changed(state, cfg, fingerprint, root, pending=False)

    listing = list_input_files(in_fs, roots)
    new, changed, unchanged = _classify(state, listing)
    vanished = sorted(set(state.files) - {f.path for f in listing})
    outcome.new_files, outcome.changed_files = len(new), len(changed)
    outcome.unchanged_files, outcome.vanished_files = len(unchanged), len(vanished)
    if vanished:
        logger.warning(
            "etl: %d input files scored earlier no longer exist (e.g. %s); their rows stay in the output",
            len(vanished), vanished[0],
        )
    todo = listing if reprocess else new + changed
    if not todo:
        last = state.runs[-1].run_id if state.runs else "none yet"
        outcome.message = (
            f"nothing new: {len(unchanged)} input files unchanged since the last committed run ({last}); "
            f"nothing written"
        )
        if outcome.runs:
            outcome.status = "published"
        logger.info("etl: %s", outcome.message)
        return outcome

    run_id = f"run-{state.next_run:06d}"
    if frozenset(f.path for f in todo) != validated:
        _validate_run(cfg, root_uri, run_id, todo)  # the plan changed since the check before the lock
    retract: dict = {}
    if not reprocess:
        for f in changed:
            retract.setdefault(state.files[f.path]["run_id"], []).append(f.path)
    lineage = _write_lineage(in_fs, out_fs, root, run_id, todo, cfg.input.id_column)
    if cfg.input.id_column and cfg.input.check_unique_ids and not reprocess and state.runs:
        _check_ids_unique_across_runs(out_fs, root, state, retract, lineage.column("id").combine_chunks())
    state.pending = PendingRun(
        run_id=run_id,
        files=[f.to_dict() for f in todo],
        config_fingerprint=fingerprint,
        reprocess=reprocess,
        planned_at=utc_now(),
        retract=retract,
    )
    state.next_run += 1
    save_state(out_fs, root, state)
    logger.info(
        "etl: planned %s: %d new, %d changed, %d unchanged input files%s",
        run_id, len(new), len(changed), len(unchanged), " (reprocessing everything)" if reprocess else "",
    )
    _crash_point("after-plan")
    outcome.runs.append(_finish_pending(cfg, in_fs, out_fs, root, root_uri, state, ray_init_kwargs, recovered=False))
    outcome.status = "published"
    return outcome


def _config_changed(state: EtlState, cfg: JobConfig, fingerprint: str, root: str, pending: bool) -> ConfigChangedError:
    changed = _config_diff(state.config, _fingerprinted_config(cfg))
    what = f" (changed: {', '.join(changed[:8])})" if changed else ""
    old = state.pending.config_fingerprint if pending and state.pending else state.config_fingerprint
    return ConfigChangedError(
        f"the config's fingerprint {fingerprint} differs from {old}, which the "
        f"{'interrupted run' if pending else f'{len(state.runs)} committed runs'} in {root} were scored with{what}. "
        f"Mixing them would put two kinds of predictions in one output: re-run with --reprocess to score every "
        f"input file again with this config (the old runs are replaced when the new one is committed), or "
        f"use another output.path"
    )


# ------------------------------------------------------------------------------------------------
# Readers


def committed_run_paths(output_path: str, filesystem: Optional[pafs.FileSystem] = None) -> list[str]:
    """Directories of the committed runs (oldest first): the only ones a reader should read."""
    fs, root = (filesystem, output_path) if filesystem is not None else resolve_filesystem(output_path)
    state = load_state(fs, root)
    return [posixpath.join(root, r.dir) for r in state.runs]


def read_etl_output(output_path: str, filesystem: Optional[pafs.FileSystem] = None) -> pa.Table:
    """Every committed row of an ETL output as one table (each input row exactly once)."""
    from rayformers.pipeline import read_output

    fs, root = (filesystem, output_path) if filesystem is not None else resolve_filesystem(output_path)
    tables = [read_output(p, filesystem=fs) for p in committed_run_paths(root, fs)]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")


# ------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rayformers etl",
        description="Score only the input files that are new or changed since the last committed run.",
    )
    p.add_argument("config", help="job YAML (the same as for rayformers run; output.path is the ETL root)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help="one run, then exit (for cron, Kubernetes CronJob, Airflow)")
    when.add_argument("--every", metavar="DURATION", help="run now and then every DURATION (30s, 15m, 2h, 1d)")
    when.add_argument("--cron", metavar="EXPR", help="run at the minutes a 5-field cron expression matches (local time)")
    p.add_argument("--reprocess", action="store_true", help="score every input file again (needed after a config change)")
    p.add_argument("--max-ticks", type=int, default=None, help="with --every/--cron: stop after N runs")
    p.add_argument("--lock-file", default=None, help="lock file (default: <output>/_etl.lock, or ~/.cache for object stores)")
    p.add_argument("--status", action="store_true", help="print the committed runs and the pending one, then exit")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors in the log")
    return p


def _print_status(cfg: EtlJobConfig) -> None:
    out_fs, root = resolve_filesystem(cfg.output.path, cfg.output.filesystem)
    state = load_state(out_fs, root)
    print(f"ETL output {root} ({STATE_FILE}, config {state.config_fingerprint}, updated {state.updated_at})")
    for r in state.runs:
        print(f"  {r.dir:<18} {len(r.files):>6} files {r.rows:>10} rows {r.errors:>8} errors  {r.published_at}")
    if state.pending:
        print(f"  pending {state.pending.run_id}: {len(state.pending.files)} files planned {state.pending.planned_at}")
    print(f"  {len(state.files)} input files tracked")


def main(argv: Optional[list[str]] = None) -> int:
    from rayformers.pipeline.commit import ErrorBudgetExceeded, IncompleteOutputError, OutputError
    from rayformers.pipeline.preflight import PreflightError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = load_config(args.config, args.set, cls=EtlJobConfig)
        if args.status:
            _print_status(cfg)
            return 0
        every = args.every if not args.once else None
        cron = args.cron if not args.once else None
        if not args.once and not every and not cron:
            every, cron = cfg.etl.every, cfg.etl.cron
        schedule = parse_schedule(every, cron) if (every or cron) else None
    except (ConfigError, ScheduleError) as e:
        print(f"rayformers etl: error: {e}", file=sys.stderr)
        return 2

    def one(reprocess: bool) -> EtlOutcome:
        outcome = run_once(args.config, args.set, reprocess=reprocess, lock_path=args.lock_file)
        print(outcome.format() or outcome.status, flush=True)
        return outcome

    if schedule is None:
        try:
            one(args.reprocess)
            return 0
        except (ConfigError, ConfigChangedError, PreflightError, OutputError, FileNotFoundError) as e:
            print(f"rayformers etl: error: {e}", file=sys.stderr)
            return 2
        except ErrorBudgetExceeded as e:
            print(f"rayformers etl: error budget exceeded: {e}", file=sys.stderr)
            return 3
        except IncompleteOutputError as e:
            print(f"rayformers etl: incomplete output: {e}. (The pending run is resumed by the next "
                  f"`rayformers etl` run; output.mode is managed by the ETL.)", file=sys.stderr)
            return 4
        except EtlError as e:
            print(f"rayformers etl: error: {e}", file=sys.stderr)
            return 1

    pending_reprocess = [args.reprocess]

    def tick() -> EtlOutcome:
        outcome = one(pending_reprocess[0])
        if outcome.status != "locked":
            pending_reprocess[0] = False  # --reprocess means "rebuild once", not on every tick
        return outcome

    logger.info("etl: scheduling %s (%s)", args.config, schedule.describe())
    try:
        records = run_loop(tick, schedule, max_ticks=args.max_ticks)
    except KeyboardInterrupt:
        logger.info("etl: stopped")
        return 0
    return 0 if not records or records[-1].ok else 1


if __name__ == "__main__":
    sys.exit(main())
