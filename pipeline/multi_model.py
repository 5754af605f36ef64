"""Several models in one pass (``models:``): one read, each model its own actor pools, one write.

Why chain the stages on one dataset instead of running one job per model: a curation job scores
the same corpus with a quality classifier, a topic classifier and an embedder; three jobs read,
tokenize-validate and write every row three times. Here each block flows through every model's
tokenizer pool and model pool in turn and reaches the writer once, so a row is staged only when
every model has scored it, and the exactly-once commit and resume are those of a single model.

Between models a small step (:func:`namespace_columns`) renames what the model just wrote to
``<name>_<column>`` (``quality_label``, ``emb_embedding``, ``quality_num_tokens``) and its stage
timings to ``<name>_tokenize`` / ``<name>_model``, and prefixes a reason the model gave a row
with ``model <name>:``. A row that fails in one model is an error record for the whole row (the
later models skip it), whose ``error`` names the model. Input columns the output keeps under a
name a model writes for a moment (``label``, ``score``, ``num_tokens``) are set aside before the
first model and put back after the last (:func:`protect_columns` / :func:`finish_columns`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection, Optional

import pyarrow as pa

from rayformers.operators.records import ERROR_COLUMN
from rayformers.operators.tokenize import STAGE_TIME_PREFIX, WINDOW_LENGTHS

from .config import JobConfig, model_entries
from .preflight import PREDICTION_COLUMNS, PreflightError, ProcessingSpec, prompt_columns, resolve_processing

ERRORS_BEFORE = "__rf_errors_before"
"""Hidden column: the row's error as it was before the current model (see namespace_columns)."""
PROTECTED_PREFIX = "__rf_kept_"
"""Hidden prefix of an input column set aside while the models write a column of its name."""
STAGE_COLUMNS = ("tokenize", "model")
TOKENIZER_COLUMNS = ("input_ids", "token_type_ids", "offset_start", "offset_end", "special_tokens_mask", WINDOW_LENGTHS)
"""What a tokenizer stage adds for its model (``operators.model_operator.INTERNAL_COLUMNS``,
named here so that the driver does not import torch)."""


@dataclass
class ModelStage:
    """One model of a ``models:`` job: its name, its own single-model config and resolved spec."""

    name: str
    config: JobConfig
    spec: ProcessingSpec
    raw_columns: list = field(default_factory=list)
    """Columns its model stage writes under their plain names (predictions, ``num_tokens``)."""
    shares_tokenizer: bool = False
    """Its tokenizer settings equal the previous model's (same tokenizer files, limits, prompt):
    it reads the tokens the previous model's tokenizer pool made, and has no pool of its own."""

    @property
    def prediction_columns(self) -> list[str]:
        """The model's columns in the output: ``<name>_<column>`` (``num_tokens`` included)."""
        return [f"{self.name}_{c}" for c in self.raw_columns]


def raw_columns(cfg: JobConfig) -> list[str]:
    """What one model writes (before prefixing): its task's prediction columns and ``num_tokens``."""
    return [*PREDICTION_COLUMNS[cfg.model.task], "num_tokens"]


def resolve_model_stages(cfg: JobConfig) -> list[ModelStage]:
    """Every model checked and resolved as a single-model job would be (clear errors naming the
    model, before any row is read). Text columns stay until the last model has scored the row."""
    stages = []
    for name, sub in model_entries(cfg):
        try:
            spec = resolve_processing(sub, keep_text=True)
        except PreflightError as e:
            raise PreflightError(f"models[{name}]: {e}") from e
        stage = ModelStage(name, sub, spec, raw_columns(sub))
        if stages:
            stage.shares_tokenizer = same_tokens(stages[-1], stage)
        stages.append(stage)
    clash = sorted(set(text_columns(cfg)) & transient_names(stages))
    if clash:
        raise PreflightError(f"input column {clash[0]!r} is read as text by the models and is also a column a model "
                             "writes; rename it in the input")
    return stages


SHARED_TOKEN_TASKS = ("classify", "embed", "sparse-embed", "token-classify", "generate")
"""Tasks whose model actors read the tokens of the tokenizer pool (zero-shot and yes/no rerank
tokenize inside the model actor) and can keep them for the next model."""


def same_tokens(previous: ModelStage, stage: ModelStage) -> bool:
    """Whether ``stage`` can read ``previous``'s tokens: both tasks read tokenizer-pool tokens
    and the tokenizer actors would be built alike (files, revision, max_length, truncation,
    overflow, stride, prompt, offsets)."""
    from .tokenizer_args import tokenizer_kwargs

    if previous.config.model.task not in SHARED_TOKEN_TASKS or stage.config.model.task not in SHARED_TOKEN_TASKS:
        return False
    a, b = tokenizer_kwargs(previous.spec), tokenizer_kwargs(stage.spec)
    if a.pop("tokenizer_path") != b.pop("tokenizer_path"):
        same = tokenizer_files_digest(previous.spec.tokenizer_path)
        if same is None or same != tokenizer_files_digest(stage.spec.tokenizer_path):
            return False
    return a == b


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")


def tokenizer_files_digest(path: str) -> Optional[str]:
    """A digest of a local checkpoint's tokenizer files (two directories with the same files
    tokenize alike), or None where that cannot be told cheaply (a Hub id, no ``tokenizer.json``)."""
    import hashlib
    import os

    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        return None
    digest = hashlib.sha1()
    for name in TOKENIZER_FILES:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            digest.update(name.encode() + b"\0")
            with open(file, "rb") as f:
                digest.update(hashlib.sha1(f.read()).digest())
    return digest.hexdigest()


def added_columns(cfg: JobConfig) -> dict[str, tuple[Optional[str], str]]:
    """Output column → ``(model name, its plain column)`` for every prediction column a
    ``models:`` job adds."""
    return {f"{name}_{c}": (name, c) for name, sub in model_entries(cfg) for c in raw_columns(sub)}


def check_collisions(cfg: JobConfig, kept: Collection[str], where: str, id_generated: bool) -> None:
    """A kept input column with the name of a column the job writes is refused, naming both."""
    from .source import ID_COLUMN

    ours = added_columns(cfg)
    for col in kept:
        if col in ours:
            name, plain = ours[col]
            raise PreflightError(
                f"{where}: input column {col!r} has the name of model {name!r}'s prediction column {plain!r} "
                f"(written as {col!r}); rename the input column, or rename the model (models[].name)")
        if col == ERROR_COLUMN or (id_generated and col == ID_COLUMN):
            raise PreflightError(f"{where}: input column {col!r} would collide with the output column {col!r} the "
                                 "job writes; rename or drop it before scoring")


def text_columns(cfg: JobConfig) -> list[str]:
    """The input columns any model reads as text (dropped at the end unless kept)."""
    inp = cfg.input
    cols = [inp.text_column, inp.text_pair_column, inp.source_language_column]
    for _, sub in model_entries(cfg):
        cols += prompt_columns(sub)
    return list(dict.fromkeys(c for c in cols if c))


def transient_names(stages: list[ModelStage]) -> set[str]:
    """Names a model stage writes for a moment before they are prefixed."""
    return {c for s in stages for c in s.raw_columns} | set(TOKENIZER_COLUMNS)


# ------------------------------------------------------------------------------------------------
# Table steps between the model stages (plain functions on Arrow tables, run by Ray Data tasks)


def protect_columns(table: pa.Table, names: Collection[str]) -> pa.Table:
    """Set aside input columns whose names a model writes for a moment."""
    renamed = [f"{PROTECTED_PREFIX}{c}" if c in names else c for c in table.column_names]
    return table.rename_columns(renamed)


def namespace_columns(table: pa.Table, name: str, raw: Collection[str], keep_tokens: bool = False) -> pa.Table:
    """After model ``name``: its columns get the ``<name>_`` prefix, its stage timings the
    ``<name>_`` stage prefix, and each reason it gave a row (one that had none before it) the
    prefix ``model <name>: ``. ``keep_tokens``: the next model reads the same tokens, so
    ``num_tokens`` stays under its plain name too (for the next model's columns)."""
    import pyarrow.compute as pc

    order = list(raw)
    raw = set(raw)
    names = []
    for c in table.column_names:
        if c in raw:
            names.append(f"{name}_{c}")
        elif c.startswith(STAGE_TIME_PREFIX) and c[len(STAGE_TIME_PREFIX):-2] in STAGE_COLUMNS:
            names.append(f"{STAGE_TIME_PREFIX}{name}_{c[len(STAGE_TIME_PREFIX):]}")
        else:
            names.append(c)
    table = table.rename_columns(names)
    if keep_tokens and f"{name}_num_tokens" in table.column_names:
        table = table.append_column("num_tokens", table.column(f"{name}_num_tokens"))
    mine = [f"{name}_{c}" for c in raw if f"{name}_{c}" in table.column_names]
    mine.sort(key=lambda c: order.index(c[len(name) + 1:]) if c[len(name) + 1:] in order else len(order))
    rest = [c for c in table.column_names if c not in mine and c != ERROR_COLUMN]
    table = table.select([*rest, *mine, ERROR_COLUMN])  # each model's columns after the earlier ones', error last
    errors = table.column(ERROR_COLUMN)
    if ERRORS_BEFORE in table.column_names:
        before = table.column(ERRORS_BEFORE)
    else:
        before = pa.nulls(table.num_rows, pa.string())
    new = pc.and_(pc.is_null(before), pc.is_valid(errors))
    named = pc.binary_join_element_wise(pa.scalar(f"model {name}: "), errors.cast(pa.string()), "")
    merged = pc.if_else(new, named, before)
    table = table.set_column(table.column_names.index(ERROR_COLUMN), ERROR_COLUMN, merged)
    if ERRORS_BEFORE in table.column_names:
        return table.set_column(table.column_names.index(ERRORS_BEFORE), ERRORS_BEFORE, merged)
    return table.append_column(ERRORS_BEFORE, merged)


def finish_columns(table: pa.Table, drop: Collection[str]) -> pa.Table:
    """After the last model: drop the text columns the output does not keep and the hidden error
    column, and give set-aside input columns their names back."""
    drop = set(drop) | {ERRORS_BEFORE}
    table = table.drop_columns([c for c in table.column_names if c in drop])
    return table.rename_columns([c[len(PROTECTED_PREFIX):] if c.startswith(PROTECTED_PREFIX) else c
                                 for c in table.column_names])


def map_table(ds: Any, fn, num_cpus: float, **kwargs: Any):
    """``ds.map_batches(fn)`` on whole Arrow blocks (a cheap column step, no actor)."""
    return ds.map_batches(fn, fn_kwargs=kwargs, batch_format="pyarrow", batch_size=None, zero_copy_batch=True,
                          num_cpus=num_cpus)


# ------------------------------------------------------------------------------------------------
# CPU budget of several actor pools


def size_tokenizer_pools(stages: list[ModelStage], total_cpus: float) -> None:
    """Each model's ``compute.tokenizer_max_actors`` when unset: as for one model, within its
    share of the CPUs that every model pool and one read/write task leave free."""
    from .preflight import TOKENIZERS_PER_MODEL_ACTOR

    first = stages[0].config.compute
    free = total_cpus - sum(s.config.compute.model_max_actors * s.config.compute.model_num_cpus for s in stages) \
        - first.io_num_cpus
    pools = [s for s in stages if not s.shares_tokenizer]
    share = free / len(pools)
    for s in pools:
        c = s.config.compute
        if c.tokenizer_max_actors is None:
            per = TOKENIZERS_PER_MODEL_ACTOR["gpu" if c.model_num_gpus else "cpu"]
            fits = int(share // c.tokenizer_num_cpus) if c.tokenizer_num_cpus > 0 else per * c.model_max_actors
            c.tokenizer_max_actors = max(c.tokenizer_min_actors or 1, min(per * c.model_max_actors, fits))
        if c.tokenizer_min_actors is None:
            c.tokenizer_min_actors = c.tokenizer_max_actors


def check_cluster_cpus(stages: list[ModelStage], total_cpus: float) -> None:
    """Refuse pools that together reserve the CPUs the read and write tasks need (a hang)."""
    size_tokenizer_pools(stages, total_cpus)
    io = stages[0].config.compute.io_num_cpus
    parts, reserved = [], 0.0
    for s in stages:
        c = s.config.compute
        tokenizers = 0 if s.shares_tokenizer else c.tokenizer_max_actors
        reserved += tokenizers * c.tokenizer_num_cpus + c.model_max_actors * c.model_num_cpus
        parts.append(f"{s.name}: {tokenizers} x {c.tokenizer_num_cpus:g} + {c.model_max_actors} x "
                     f"{c.model_num_cpus:g}")
        for key in ("tokenizer_min_actors", "model_min_actors")[s.shares_tokenizer:]:
            lo, hi = getattr(c, key), getattr(c, key.replace("min", "max"))
            if lo < 1 or hi < lo:
                raise PreflightError(f"models[{s.name}].compute.{key}={lo} and {key.replace('min', 'max')}={hi}: "
                                     "need 1 <= min <= max")
    if reserved + io > total_cpus + 1e-9:
        raise PreflightError(
            f"compute: the tokenizer and model actors of the {len(stages)} models ({'; '.join(parts)} CPUs) reserve "
            f"{reserved:g} of the cluster's {total_cpus:g} CPUs, leaving less than compute.io_num_cpus={io:g} for "
            "read/write tasks, so the job would hang. Lower model_num_cpus / tokenizer_num_cpus / *_max_actors in "
            "the job's compute section or per model (models[].compute): a reservation, not a thread count.")


__all__ = ["ModelStage", "added_columns", "check_cluster_cpus", "finish_columns", "namespace_columns",
           "protect_columns", "resolve_model_stages"]
