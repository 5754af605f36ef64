"""``build_processor(config)``: the pipeline's scoring as a Dataset → Dataset step.

For users who compose their own Ray Data pipelines (Delta, Iceberg, BigQuery, a database,
``ray.data.from_pandas``) and write where their data lives::

    from rayformers.pipeline import build_processor
    processor = build_processor({"model": {"path": "...", "task": "classify"}})
    scored = processor(ray.data.read_parquet("s3://bucket/reviews/"))   # lazy
    scored.write_parquet("s3://bucket/scored/")

It runs exactly the stages of ``run()`` (:func:`.dataflow.processing_stages`: blocks of
``compute.batch_size`` rows, the tokenizer and model actor pools, length-sorted micro-batches,
error records), so predictions equal ``run()``'s for the same rows. What the caller gives up
against ``run()``: the staged commit (exactly once, atomic publish), ``resume``, the error budget,
the output safety checks and the report are ``run()``'s, since only it owns the write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rayformers.operators.embedding_outputs import CALIBRATED
from rayformers.operators.tokenize import STAGE_TIME_PREFIX

from .config import ALL_COLUMNS, ConfigError, JobConfig, load_config
from .preflight import (PreflightError, ProcessingSpec, check_output_collisions, resolve_model_reference_in_config,
                        resolve_processing)
from .source import HIDDEN_COLUMNS

class Processor:
    """A configured scoring step: ``processor(ds)`` returns the lazy scored dataset."""

    def __init__(self, spec: ProcessingSpec):
        self.spec = spec
        self.config = spec.config

    @property
    def required_columns(self) -> list[str]:
        inp = self.config.input
        named = [c for c in (self.spec.prompt or {}).get("columns", []) if c != inp.text_column]  # task.messages
        listed = [] if inp.passthrough_columns == ALL_COLUMNS else inp.passthrough_columns  # "*": whatever it has
        return [c for c in (inp.text_column, inp.text_pair_column, inp.id_column, *listed, *named) if c]

    def check_schema(self, ds: Any) -> None:
        """Columns named in ``input`` must exist, and no column may share a name with one the
        scoring adds (Ray may run the first block to know the schema)."""
        schema = ds.schema(fetch_if_missing=True)
        if schema is None:
            return
        names = list(schema.names)
        missing = [c for c in self.required_columns if c not in names]
        if missing:
            raise PreflightError(
                f"the dataset has no column {missing[0]!r} (configured in input.*); its columns: {', '.join(names)}"
            )
        if getattr(self.spec, "models", None):
            return  # a models: job (rayformers plan): its pre-flight checked the columns it keeps
        kept = [c for c in names if c not in self.spec.drop_after_tokenize]  # those go before predictions come
        check_output_collisions(self.config, kept, "the dataset's columns")

    def __call__(self, ds: Any, keep_stage_times: bool = False) -> Any:
        from .dataflow import calibrate_embedding_ranges, processing_stages

        self.check_schema(ds)
        t = self.config.task
        if self.config.model.task == "embed" and t.embedding_precision in CALIBRATED and not self.spec.task_options.get("ranges"):
            # int8/uint8 need each dimension's range: from the first rows of this very dataset.
            calibrate_embedding_ranges(self.spec, ds.limit(t.calibration_rows))
        out = processing_stages(ds, self.spec)
        if keep_stage_times:
            return out

        def drop_internal(table):
            drop = [c for c in table.column_names if c.startswith(STAGE_TIME_PREFIX) or c in HIDDEN_COLUMNS]
            return table.drop_columns(drop) if drop else table

        return out.map_batches(drop_internal, batch_format="pyarrow", batch_size=None, zero_copy_batch=True,
                               num_cpus=self.config.compute.io_num_cpus)


def build_processor(config: JobConfig | dict | str | Path, overrides: Optional[list[str]] = None,
                    keep_text: bool = False) -> Processor:
    """A :class:`Processor` from the ``input`` (columns only, no ``path``), ``model``,
    ``tokenizer``, ``task`` and ``compute`` sections of a job config. Checks the model, tokenizer
    and task at once (clear errors before any Ray work). ``keep_text`` keeps the text columns in
    the output (dropped by default, as ``run()`` does)."""
    cfg = config if isinstance(config, JobConfig) and not overrides else load_config(config, overrides)
    if not cfg.input.text_column:
        raise ConfigError("input.text_column is empty")
    resolve_model_reference_in_config(cfg)
    if cfg.models:
        raise ConfigError("build_processor takes one model (model:); a models: job runs with rayformers run")
    if cfg.input.passthrough_columns == ALL_COLUMNS:  # every column of the caller's dataset, its text too
        keep_text = True
    listed = [] if cfg.input.passthrough_columns == ALL_COLUMNS else cfg.input.passthrough_columns
    keep = [c for c in (cfg.input.id_column, *listed) if c]
    return Processor(resolve_processing(cfg, keep_text=keep_text, keep_columns=keep))


__all__ = ["Processor", "build_processor"]
