"""The Ray Data plan of an inference job, built from a :class:`ResolvedJob`.

read (row-group tasks, streamed in slices) → blocks of ``compute.batch_size`` rows → tokenize
(CPU actor pool) → model (actor pool, GPU or CPU) → staged write. Every stage reserves a fraction
of a CPU chosen by ``compute``, so on a small machine the read and write tasks always find room
next to the actors.

Why ``repartition(target_num_rows_per_block=...)`` after the read: a read task's yields are
coalesced by Ray into blocks of up to ``DataContext.target_max_block_size`` (128 MiB), so a
Parquet file with one 250k-row row group would flow as one 250k-row block: one tokenizer call,
one model call, nothing staged until all of it is done. Ray's streaming repartition cuts blocks
back to ``batch_size`` rows without a shuffle; they stay that size through the actor stages
(one block per call), and each row carries its place in the input, so block boundaries never
matter for correctness, only for latency and memory.
"""

from __future__ import annotations

import dataclasses

from typing import Optional

from rayformers.operators import TokenizeOperator
from rayformers.operators.actors import ACTOR_FOR_TASK

from .tokenizer_args import exploded_windows, tokenizer_kwargs  # noqa: F401  (re-exported)
from .model_device import resolve_model_dtype
from .preflight import ProcessingSpec, ResolvedJob, size_tokenizer_pool


def build_dataset(job: ResolvedJob, done: Optional[dict] = None):
    """The lazy dataset up to (not including) the write; ``done`` (unit key → row ranges staged
    by an interrupted attempt) is skipped by the read."""
    import ray

    from .source import make_datasource

    cfg = job.config
    c = cfg.compute
    source = make_datasource(
        job.input_fs,
        job.files,
        job.read_columns,
        cfg.input.id_column,
        done=done,
        block_rows=c.block_rows(),
        rows_per_task=c.read_rows_per_task,
    )
    # One read task per planned unit: without this Ray splits small inputs into ~200 tiny blocks,
    # and every block costs a scheduling round trip through each stage.
    ds = ray.data.read_datasource(source, num_cpus=c.io_num_cpus, override_num_blocks=max(1, source.num_units))
    return processing_stages(ds, job)


def blocks_of(ds, rows: int, num_cpus: float):
    """``ds.repartition(target_num_rows_per_block=rows)`` with its tasks reserving ``num_cpus``.

    Ray 2.60's streaming repartition takes no resource arguments and its tasks ask for a whole
    CPU each: on a 2-CPU node with two model actors (1.25 CPUs reserved) they can never be
    scheduled and the job hangs. The logical operator's ``ray_remote_args`` is where Ray reads
    them from, so the read/write share is set there; if a later Ray moves it, the job still runs
    wherever a whole CPU is free."""
    out = ds.repartition(target_num_rows_per_block=rows)
    args = getattr(getattr(getattr(out, "_logical_plan", None), "dag", None), "ray_remote_args", None)
    if isinstance(args, dict):
        args.setdefault("num_cpus", num_cpus)
    return out


def processing_stages(ds, spec: ProcessingSpec | ResolvedJob):
    """Blocks of ``compute.batch_size`` rows → tokenizer actor pool → model actor pool: the one
    plan behind both ``run()`` and ``build_processor()``."""

    import ray

    cfg = spec.config
    c = cfg.compute
    stages = getattr(spec, "models", None)
    if stages:
        return model_chain(ds, spec, stages)
    if c.tokenizer_max_actors is None or c.tokenizer_min_actors is None:
        size_tokenizer_pool(cfg, float(ray.cluster_resources().get("CPU", 0)))
    ds = blocks_of(ds, c.block_rows(), c.io_num_cpus)
    return model_stages(ds, spec)


def model_chain(ds, job, stages: list):
    """A ``models:`` job: blocks → (tokenizer pool → model pool → prefix its columns) for each
    model in turn → drop the text columns (see :mod:`.multi_model`). Blocks keep one size from the
    read to the write, whatever the models."""
    import ray

    from .multi_model import finish_columns, map_table, namespace_columns, protect_columns, size_tokenizer_pools, \
        transient_names

    c = job.config.compute
    size_tokenizer_pools(stages, float(ray.cluster_resources().get("CPU", 0)))
    ds = blocks_of(ds, c.block_rows(), c.io_num_cpus)
    kept = set(job.passthrough) | {job.id_column}
    if job.config.output.keep_text:
        kept.add(job.config.input.text_column)
    clashes = transient_names(stages) & kept
    if clashes:
        ds = map_table(ds, protect_columns, c.io_num_cpus, names=sorted(clashes))
    for k, stage in enumerate(stages):
        stage.spec.config.compute.batch_size = c.block_rows()  # the job's blocks, whatever the spec was built with
        next_shares = k + 1 < len(stages) and stages[k + 1].shares_tokenizer
        ds = model_stages(ds, stage.spec, tokenize=not stage.shares_tokenizer, keep_token_columns=next_shares)
        ds = map_table(ds, namespace_columns, c.io_num_cpus, name=stage.name, raw=tuple(stage.raw_columns),
                       keep_tokens=next_shares)
    return map_table(ds, finish_columns, c.io_num_cpus, drop=tuple(job.drop_at_end))


def model_stages(ds, spec: ProcessingSpec | ResolvedJob, tokenize: bool = True, keep_token_columns: bool = False):
    """One model's tokenizer actor pool and model actor pool, on blocks already cut. Without
    ``tokenize`` the blocks already carry this model's tokens (a several-model pass whose previous
    model has the same tokenizer settings, kept by its ``keep_token_columns``)."""
    if tokenize:
        ds = tokenizer_stage(ds, spec)
    return model_stage(ds, spec, keep_token_columns)


def tokenizer_stage(ds, spec: ProcessingSpec | ResolvedJob):
    """The tokenizer actor pool of ``spec``."""
    from ray.data import ActorPoolStrategy

    c = spec.config.compute
    return ds.map_batches(
        TokenizeOperator,
        fn_constructor_kwargs=tokenizer_kwargs(spec),
        compute=ActorPoolStrategy(min_size=c.tokenizer_min_actors, max_size=c.tokenizer_max_actors),
        num_cpus=c.tokenizer_num_cpus,
        resources=c.tokenizer_resources or None,
        batch_size=None,  # one block (compute.batch_size rows) per call
        batch_format="pyarrow",
        zero_copy_batch=True,
    )


def model_stage(ds, spec: ProcessingSpec | ResolvedJob, keep_token_columns: bool = False):
    """The model actor pool of ``spec``."""
    from ray.data import ActorPoolStrategy

    cfg = spec.config
    c = cfg.compute
    extra = {"keep_token_columns": True} if keep_token_columns else {}
    # A torch-free class: the driver that builds this plan never imports torch.
    return ds.map_batches(
        ACTOR_FOR_TASK[cfg.model.task],
        fn_constructor_kwargs=dict(
            model_path=cfg.model.path,
            dtype=resolve_model_dtype(spec),
            revision=cfg.model.revision,
            local_files_only=cfg.model.local_files_only,
            num_gpus=c.model_num_gpus,
            torch_threads=c.torch_threads,
            model_actors=c.model_max_actors,
            max_tokens_per_batch=c.max_tokens_per_batch,
            max_rows_per_batch=c.max_rows_per_batch,
            pad_token_id=spec.pad_token_id,
            quantization=cfg.model.quantization,
            allow_new_head=cfg.model.allow_new_head,
            adapter=cfg.model.adapter,
            head=dataclasses.asdict(cfg.model.head) if cfg.model.head else None,
            drop_columns=tuple(spec.drop_after_model),
            **extra,
            **spec.task_options,
        ),
        compute=ActorPoolStrategy(min_size=c.model_min_actors, max_size=c.model_max_actors),
        num_cpus=c.model_num_cpus,
        num_gpus=c.model_num_gpus or None,
        resources=c.model_resources or None,
        batch_size=model_batch_rows(c),
        batch_format="pyarrow",
        zero_copy_batch=True,
    )


def model_batch_rows(compute) -> Optional[int]:
    """Rows per model call: one block. CPU actors take each block as it comes (``None``); Ray Data
    refuses GPU actors without an explicit size, so GPU actors ask for the block size itself.
    Blocks leave the repartition at that size, so a batch is one whole block; only a short block
    (a read unit's last) is topped up from the next one, which each row's place column makes
    harmless (a row is never split, only its neighbours change)."""
    return compute.block_rows() if compute.model_num_gpus else None


def calibrate_embedding_ranges(spec: ProcessingSpec | ResolvedJob, sample) -> list:
    """Per-dimension ``[min, max]`` of the job's own embeddings over ``sample`` (a Dataset), for
    int8/uint8 storage: the sample runs through the same stages with float32 output. Sets
    ``spec.task_options["ranges"]`` and returns it."""
    import numpy as np

    from rayformers.operators.embedding_outputs import calibration_ranges

    float_spec = dataclasses.replace(spec, task_options={**spec.task_options, "precision": "float32", "ranges": None})
    rows = [r["embedding"] for r in processing_stages(sample, float_spec).select_columns(["embedding"]).take_all()
            if r["embedding"] is not None]
    if not rows:
        raise ValueError("no row of the calibration sample could be embedded; int8/uint8 need a calibration sample")
    ranges = calibration_ranges(np.asarray(rows, dtype=np.float32)).tolist()
    spec.task_options["ranges"] = ranges
    return ranges
