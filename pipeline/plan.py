"""The Ray Data plan of an inference job, built from a :class:`ResolvedJob`.

read (row-group tasks) → tokenize (CPU actor pool) → model (actor pool, GPU or CPU) → staged
write. Every stage reserves a fraction of a CPU chosen by ``compute``, so on a small machine the
read and write tasks always find room next to the actors.
"""

from __future__ import annotations

from typing import Any

from rayformers.operators import OPERATOR_FOR_TASK, TokenizeOperator

from .preflight import ResolvedJob


def build_dataset(job: ResolvedJob, skip_ids_ref: Any = None):
    """The lazy dataset up to (not including) the write."""
    import ray
    from ray.data import ActorPoolStrategy

    from .source import make_datasource

    cfg = job.config
    c = cfg.compute
    source = make_datasource(
        job.input_fs,
        job.files,
        job.read_columns,
        cfg.input.id_column,
        skip_ids_ref=skip_ids_ref,
        block_rows=c.batch_size,
    )
    # One block per read unit: without this Ray splits small inputs into ~200 tiny blocks, and
    # every block costs a scheduling round trip through each stage.
    ds = ray.data.read_datasource(source, num_cpus=c.io_num_cpus, override_num_blocks=max(1, source.num_units))
    ds = ds.map_batches(
        TokenizeOperator,
        fn_constructor_kwargs=dict(
            tokenizer_path=job.tokenizer_path,
            text_column=cfg.input.text_column,
            text_pair_column=cfg.input.text_pair_column,
            max_length=job.max_length,
            truncation=cfg.tokenizer.truncation,
            with_offsets=cfg.model.task == "token-classify",
            revision=cfg.model.revision,
            local_files_only=cfg.model.local_files_only,
            drop_columns=tuple(job.drop_after_tokenize),
            source_language=cfg.input.source_language,
            source_language_column=cfg.input.source_language_column,
        ),
        compute=ActorPoolStrategy(min_size=c.tokenizer_min_actors, max_size=c.tokenizer_max_actors),
        num_cpus=c.tokenizer_num_cpus,
        resources=c.tokenizer_resources or None,
        batch_size=None,  # one read block per call: blocks stay aligned with part files
        batch_format="pyarrow",
        zero_copy_batch=True,
    )
    operator_cls = OPERATOR_FOR_TASK[cfg.model.task]
    ds = ds.map_batches(
        operator_cls,
        fn_constructor_kwargs=dict(
            model_path=cfg.model.path,
            dtype=cfg.model.dtype,
            revision=cfg.model.revision,
            local_files_only=cfg.model.local_files_only,
            num_gpus=c.model_num_gpus,
            torch_threads=c.torch_threads,
            model_actors=c.model_max_actors,
            max_tokens_per_batch=c.max_tokens_per_batch,
            max_rows_per_batch=c.max_rows_per_batch,
            pad_token_id=job.pad_token_id,
            drop_columns=tuple(job.drop_after_model),
            **job.task_options,
        ),
        compute=ActorPoolStrategy(min_size=c.model_min_actors, max_size=c.model_max_actors),
        num_cpus=c.model_num_cpus,
        num_gpus=c.model_num_gpus or None,
        resources=c.model_resources or None,
        batch_size=None,
        batch_format="pyarrow",
        zero_copy_batch=True,
    )
    return ds
