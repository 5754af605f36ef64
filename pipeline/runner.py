"""``run(config)``: pre-flight, output mode, the Ray Data plan, the commit, the report.

The order matters: everything that can fail without reading rows fails first (config, input,
columns, model, tokenizer, output mode, CPU budget); then rows flow; then the driver checks the
staged output (every input row exactly once), applies the error budget and publishes.
"""

from __future__ import annotations

import logging
import platform
import posixpath
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from rayformers.operators.embedding_outputs import CALIBRATED

from .commit import (
    MANIFEST,
    ErrorBudgetExceeded,
    clean_publish_leftovers,
    collect_staged,
    compact_staged,
    make_datasink,
    prepare_output,
    publish,
    read_manifest,
    write_failed_manifest,
)
from .config import JobConfig, load_config
from .full_disk import reporting_full_disk
from .locks import check_lock_creatable, output_lock
from .model_device import resolve_model_dtype
from .preflight import ResolvedJob, check_cluster_cpus, check_unique_ids_distributed, preflight
from .report import JobReport
from .source import row_groups_of

logger = logging.getLogger("rayformers.pipeline")


def ensure_ray(init_kwargs: Optional[dict] = None, total_rows: Optional[int] = None) -> None:
    """Start a local Ray session unless one is running (``RAY_ADDRESS`` joins a cluster).

    The console stays quiet unless verbose (see :mod:`.console`); ``total_rows`` makes the
    progress line read ``done/total``."""
    import ray

    from .console import quiet_local_cluster_env, quiet_ray_console, without_log_level_announcement

    quiet_ray_console(total_rows)
    if not ray.is_initialized():
        quiet_local_cluster_env()
        kwargs = {"include_dashboard": False, "log_to_driver": True}
        kwargs.update(init_kwargs or {})
        with without_log_level_announcement():
            ray.init(**kwargs)


def _manifest(job: ResolvedJob, counts, status: str, report: dict) -> dict:
    import ray

    cfg = job.config
    return {
        "status": status,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "config_fingerprint": cfg.fingerprint(),
        "config": cfg.to_dict(),
        "task": cfg.model.task,
        "model_type": job.model_type,
        "max_length": job.max_length,  # the token limit rows were cut to: tokenizer.max_length or the checkpoint's
        "model_dtype": job.model_dtype,
        "model_device": job.device_facts or None,
        "id_column": job.id_column,
        "id_generated": job.id_generated,
        "input_files": [f.version() for f in job.files],  # what resume compares the input with
        "input_rows": job.total_rows,
        "output_rows": counts.rows,
        "error_rows": counts.errors,
        # every input row is one of: kept, dropped (by output.keep), error
        "kept_rows": counts.rows - counts.errors,
        "dropped_rows": counts.dropped_rows,
        "keep": cfg.output.keep,
        "dropped_path": job.dropped_path,
        "models": models_manifest(job, written_columns(job.output_fs, counts)),
        "output_files": counts.manifest_files(),
        "embedding_ranges": job.task_options.get("ranges"),
        "report": report,
        "versions": {"ray": ray.__version__, "python": platform.python_version()},
    }


def models_manifest(job: ResolvedJob, written: Optional[list] = None) -> list[dict]:
    """``[{name, task, model_type, prediction_columns}]``: one entry per model (``name`` null for
    a ``model:`` job), its columns as named in the output. ``written`` (the columns of a staged
    file, when there is one) narrows each task's possible columns to those the job wrote
    (``top_k_labels`` only with ``task.top_k`` > 1, ...)."""
    from .multi_model import raw_columns
    from .preflight import output_columns

    def present(columns: list) -> list:
        return [c for c in columns if written is None or c in written]

    if not job.models:
        cfg = job.config
        possible = [*raw_columns(cfg), *sorted(output_columns(cfg) & {"chunk_index", "chunk_start", "chunk_end"})]
        return [{"name": None, "task": cfg.model.task, "model_type": job.model_type,
                 "prediction_columns": present(possible)}]
    return [{"name": s.name, "task": s.config.model.task, "model_type": s.spec.model_type,
             "model_dtype": s.spec.model_dtype, "max_length": s.spec.max_length,
             "prediction_columns": present(s.prediction_columns)} for s in job.models]


def written_columns(fs, counts) -> Optional[list]:
    """The column names of one staged output file (None when the output has none)."""
    import pyarrow.parquet as pq

    for f in [*counts.files, *counts.dropped_files]:
        schema = pq.read_schema(f.path, filesystem=fs)
        return list(schema.names)
    return None


def run(
    config: JobConfig | dict | str | Path,
    overrides: Optional[list[str]] = None,
    *,
    ray_init_kwargs: Optional[dict] = None,
    input_files: Optional[list[str]] = None,
    before_publish: Optional[Callable[[JobReport], None]] = None,
) -> JobReport:
    """Run an inference job end to end and return its report.

    ``input_files``: score only these files of ``input.path`` (as its listing names them), with
    the ids and partition columns they have in the whole input: how the incremental ETL hands
    over the new files of one run. ``before_publish(report)`` runs after every row is staged and
    counted, right before the atomic publish (a raise there leaves the output unpublished and
    resumable; the ETL's fault-injection tests use it).

    Raises :class:`~rayformers.pipeline.preflight.PreflightError` /
    :class:`~rayformers.pipeline.config.ConfigError` before any work,
    :class:`~rayformers.pipeline.commit.ErrorBudgetExceeded` after writing when too many rows
    failed (the staged output and its manifest stay for inspection)."""
    import ray

    start = time.perf_counter()
    cfg = config if isinstance(config, JobConfig) and not overrides else load_config(config, overrides)
    job = preflight(cfg, input_files)
    check_lock_creatable(job.output_fs, job.output_path)  # an unwritable output: refused before Ray starts
    ensure_ray(ray_init_kwargs, job.total_rows)
    check_job_cpus(job, float(ray.cluster_resources().get("CPU", 0)))
    resolve_job_dtypes(job)  # the model actors' device checked, their precision settled (see there)
    if job.id_check_deferred:
        check_unique_ids_distributed(job.input_fs, job.files, cfg.input.id_column)
    if cfg.model.task == "embed" and cfg.task.embedding_precision in CALIBRATED:
        from .dataflow import calibrate_embedding_ranges
        from .source import sample_input

        sample = sample_input(job.input_fs, job.files, job.read_columns, cfg.input.id_column, cfg.task.calibration_rows)
        calibrate_embedding_ranges(job, ray.data.from_arrow(sample))
    checks: dict = {}
    if cfg.model.quantization != "none":
        checks["quantization"] = check_quantized_agreement(job)
    # One writer per output: taken before anything under the output is touched.
    with output_lock(job.output_fs, job.output_path, ttl_s=cfg.output.lock_ttl_s) as lock:
        return _run_locked(job, start, lock, before_publish, checks)


def check_job_cpus(job: ResolvedJob, total_cpus: float) -> None:
    """The CPU budget of the job's actor pools (every model's, for a ``models:`` job)."""
    if job.models:
        from .multi_model import check_cluster_cpus as check_models_cpus

        check_models_cpus(job.models, total_cpus)
    else:
        check_cluster_cpus(job.config, total_cpus)


def resolve_job_dtypes(job: ResolvedJob) -> None:
    """Each model's actors' dtype (the job's ``model_dtype`` is the first model's)."""
    if not job.models:
        resolve_model_dtype(job)
        return
    for stage in job.models:
        resolve_model_dtype(stage.spec)
    job.model_dtype = job.models[0].spec.model_dtype
    job.device_facts = job.models[0].spec.device_facts


def check_quantized_agreement(job: ResolvedJob) -> dict:
    """Score a sample of the job's rows with and without quantisation; refuse below the bar."""
    import ray

    from .agreement import quantization_agreement
    from .preflight import PreflightError
    from .source import sample_input

    m = job.config.model
    sample = sample_input(job.input_fs, job.files, job.read_columns, job.config.input.id_column, m.agreement_rows)
    result = quantization_agreement(job, ray.data.from_arrow(sample))
    logger.info("quantization %s: %s %.4f on %d rows of the input", m.quantization, result["metric"],
                result["agreement"], result["rows"])
    if result["agreement"] < m.min_agreement:
        raise PreflightError(
            f"model.quantization {m.quantization}: {result['metric']} with float32 is {result['agreement']:.4f} on "
            f"{result['rows']} rows of this input, below model.min_agreement={m.min_agreement:g}; nothing was "
            f"scored. Use quantization: none, or lower min_agreement if that is good enough."
        )
    return result


def _run_locked(job: ResolvedJob, start: float, lock, before_publish, checks: Optional[dict] = None) -> JobReport:
    cfg = job.config
    fingerprint = cfg.fingerprint()
    units = {g.key: g.num_rows for g in row_groups_of(job.files)}
    state = prepare_output(
        job.output_fs,
        job.output_path,
        cfg.output.mode,
        fingerprint,
        {"config": cfg.to_dict(), "started_at": datetime.now(timezone.utc).isoformat()},
        plan_units=units,
        input_files=job.files,
        keep=cfg.output.keep is not None,
        dropped_path=job.dropped_path,
    )
    if state.already_complete:
        clean_publish_leftovers(job.output_fs, job.output_path)  # of a publish killed after _SUCCESS
        m = read_manifest(job.output_fs, job.output_path) or {}
        return JobReport(
            status="already-complete",
            output_path=job.output_path,
            rows=int(m.get("output_rows", 0)),
            errors=int(m.get("error_rows", 0)),
            dropped=int(m.get("dropped_rows") or 0),
            keep=m.get("keep"),
            rows_scored=0,
            rows_resumed=int(m.get("output_rows", 0)),
            tokens=0,
            wall_s=time.perf_counter() - start,
            manifest_path=posixpath.join(job.output_path, MANIFEST),
            message="output already complete for this configuration; nothing to do",
        )

    stage: dict = {}
    results: list = []
    if state.resumed_rows < job.total_rows:
        from .dataflow import build_dataset

        ds = build_dataset(job, state.done)
        sink = make_datasink(job.output_fs, state.data_dir, cfg.output.compression, cfg.output.stage_rows,
                             keep=cfg.output.keep, dropped_dir=state.dropped_dir,
                             dropped_full_rows=job.dropped_path is not None, id_column=job.id_column)
        t0 = time.perf_counter()
        with reporting_full_disk(state, job.total_rows):
            ds.write_datasink(sink, ray_remote_args={"num_cpus": cfg.compute.io_num_cpus})
        stage["plan"] = time.perf_counter() - t0
        results = [r for r in sink.results if r]
    for r in results:
        for k, v in (r.get("stages") or {}).items():
            stage[k] = stage.get(k, 0.0) + v
    scored = sum(r["rows"] for r in results)
    tokens = sum(r["tokens"] for r in results)

    t0 = time.perf_counter()
    counts = collect_staged(job.output_fs, state.data_dir, units, compression=cfg.output.compression,
                            dropped_dir=state.dropped_dir)
    wall = time.perf_counter() - start
    report = JobReport(
        status="succeeded",
        output_path=job.output_path,
        rows=counts.rows,
        errors=counts.errors,
        rows_scored=scored,
        rows_resumed=state.resumed_rows,
        tokens=tokens,
        wall_s=wall,
        stage_s=stage,
        duplicates_removed=counts.duplicates_removed,
        checks=dict(checks or {}),
        model_dtype=job.model_dtype,
        dropped=counts.dropped_rows,
        keep=cfg.output.keep,
    )
    if state.new_input_files:
        report.message = (
            f"{state.new_input_files} input files added since the output was published were scored; the "
            f"{state.resumed_rows} rows published before are kept"
        )
    budget = cfg.output.max_error_fraction
    scored_rows = counts.rows + counts.dropped_rows  # every input row
    if scored_rows and counts.errors / scored_rows > budget:
        report.status = "error-budget-exceeded"
        path = write_failed_manifest(state, _manifest(job, counts, report.status, report.to_dict()))
        report.manifest_path = path
        report.message = (
            f"{counts.errors} of {scored_rows} rows ({100 * counts.errors / scored_rows:.2f}%) are error records, "
            f"more than output.max_error_fraction={budget:g}. Nothing was published; the rows are staged in "
            f"{state.data_dir} (see the 'error' column) with a manifest in {path}. To publish these rows as "
            f"they are, raise output.max_error_fraction and re-run with output.mode=resume (rows already "
            f"written are not scored again). To fix the input instead, correct the files and re-run with "
            f"output.mode=overwrite (every row is scored again: resume refuses input files that changed since "
            f"their rows were staged)."
        )
        raise ErrorBudgetExceeded(report.message, report)
    counts = compact_staged(
        job.output_fs, state.data_dir, counts, cfg.output.target_file_mb << 20, cfg.output.compression,
        cfg.compute.io_num_cpus,
    )
    stage["finalize"] = time.perf_counter() - t0
    report.wall_s = time.perf_counter() - start
    manifest = _manifest(job, counts, "succeeded", report.to_dict())
    if before_publish is not None:
        before_publish(report)
    lock.verify()
    publish(state, manifest, counts.files)
    report.manifest_path = posixpath.join(job.output_path, MANIFEST)
    return report


def read_output(path: str, filesystem: Any = None):
    """Read a published output as a pyarrow Table (refuses one without ``_SUCCESS``)."""
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    from .commit import SUCCESS
    from .source import resolve_filesystem

    fs, p = (filesystem, path) if filesystem is not None else resolve_filesystem(path)
    if fs.get_file_info(posixpath.join(p, SUCCESS)).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path} has no {SUCCESS}: the job did not finish (or this is not a rayformers output)")
    return pads.dataset(p, filesystem=fs, format="parquet").to_table()
