"""Pre-flight checks: every problem we can know about before the first row is read.

Missing input path, missing or mistyped columns, duplicate ids, an unknown task, a checkpoint
that cannot be found or has no class for the task, a tokenizer that cannot load, an output that
exists in ``error-if-exists`` mode: each gives one clear message naming the key to fix. The result
is a :class:`ResolvedJob` holding the plain values the operators need (the operators know
nothing of YAML).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Collection, Optional

import pyarrow as pa
import pyarrow.fs as pafs

from rayformers.operators.embedding_outputs import sentence_transformers_defaults
from rayformers.operators.embedding_outputs import default_pooling, resolve_prompt
from rayformers.operators.loading import auto_class_name
from rayformers.operators.records import ERROR_COLUMN
from rayformers.operators.tokenize import check_stride

from .commit import check_output_mode, staging_path
from .preflight_error import PreflightError

from .config import POOLINGS, TASKS, ConfigError, JobConfig, overflow_mode, resolved_dtype_setting
from .locks import lock_path_for
from .output_safety import UnsafeOutputError, check_disjoint, location
from .source import (
    ID_COLUMN,
    ColumnTypeConflict,
    InputError,
    InputFile,
    decoded_type,
    discover_files,
    file_schema,
    resolve_filesystem,
    unify_column_type,
)

logger = logging.getLogger(__name__)

TEXT_TYPES = (pa.string(), pa.large_string(), pa.binary(), pa.large_binary(), pa.null())

PREDICTION_COLUMNS = {
    "classify": ["label", "score", "top_k_labels", "top_k_scores", "labels"],
    "token-classify": ["entities"],
    "generate": ["generated_text", "generated_tokens", "finish_reason", "num_generated_tokens"],
    "embed": ["embedding"],
    "zero-shot-classify": ["labels", "scores"],
    "sparse-embed": ["sparse_embedding", "sparse_nnz"],
    "rerank": ["score", "scores"],
}


@dataclass
class ResolvedJob:
    """A validated job: files, columns and the resolved model/tokenizer settings."""

    config: JobConfig
    input_fs: pafs.FileSystem
    files: list[InputFile]
    read_columns: list[str]
    id_column: str
    id_generated: bool
    output_fs: pafs.FileSystem
    output_path: str
    tokenizer_path: str
    max_length: Optional[int]
    pad_token_id: int
    model_type: str
    task_options: dict = field(default_factory=dict)
    drop_after_tokenize: list[str] = field(default_factory=list)
    """Text columns not needed after tokenization (not kept in the output)."""
    drop_after_model: list[str] = field(default_factory=list)
    """Text columns the model stage still needs (token-classify) but the output does not."""

    text_prefix: str = ""
    """Prepended to every text before tokenizing (see :class:`ProcessingSpec`)."""
    stride: int = 0
    """See :class:`ProcessingSpec`."""
    prompt: Optional[dict] = None
    """See :class:`ProcessingSpec`."""
    id_check_deferred: bool = False
    """The input is too large for the driver-side id check: run the distributed one with Ray."""
    model_dtype: Optional[str] = None
    """See :class:`ProcessingSpec`."""
    device_facts: dict = field(default_factory=dict)
    """See :class:`ProcessingSpec`."""
    passthrough: list = field(default_factory=list)
    """``input.passthrough_columns`` resolved (``"*"``: every column of the input, in order)."""
    models: list = field(default_factory=list)
    """A ``models:`` job: one :class:`~.multi_model.ModelStage` per model (empty for ``model:``)."""
    drop_at_end: list = field(default_factory=list)
    """A ``models:`` job: text columns dropped once the last model has scored the row."""
    output_types: dict = field(default_factory=dict)
    """Output column → Arrow type where known before the run (None where not): what
    ``output.keep`` is checked against."""
    dropped_fs: Optional[pafs.FileSystem] = None
    dropped_path: Optional[str] = None
    """``output.dropped_path`` resolved (None: dropped rows are only counted)."""

    @property
    def total_rows(self) -> int:
        return sum(f.num_rows for f in self.files)


def _is_text_type(t: pa.DataType) -> bool:
    if any(t.equals(x) for x in TEXT_TYPES):
        return True
    is_view = getattr(pa.types, "is_string_view", None)
    return bool(is_view and is_view(t))


def check_columns(cfg: JobConfig, fs: pafs.FileSystem, files: list[InputFile],
                  passthrough: Optional[list] = None) -> list[pa.Schema]:
    """Every configured column exists in every file, text columns hold text (dictionary-encoded
    text included), and the id and passthrough columns have one type across files
    (:func:`resolve_read_types`)."""
    inp = cfg.input
    passthrough = list(inp.passthrough_columns) if passthrough is None else passthrough
    schemas = []
    for f in files:
        schema = file_schema(fs, f)
        schemas.append(schema)
        names = schema.names
        wanted = [("input.text_column", inp.text_column)]
        if inp.text_pair_column:
            wanted.append(("input.text_pair_column", inp.text_pair_column))
        if inp.id_column:
            wanted.append(("input.id_column", inp.id_column))
        wanted += [("input.passthrough_columns", c) for c in passthrough]
        if inp.source_language_column:
            wanted.append(("input.source_language_column", inp.source_language_column))
        wanted += [("task.messages", c) for c in all_prompt_columns(cfg)]
        for key, col in wanted:
            if col not in names:
                raise PreflightError(
                    f"{key}: column {col!r} is not in input file {f.path} (its columns: {', '.join(names)})"
                )
        texts = wanted[: 2 if inp.text_pair_column else 1] + [w for w in wanted if w[0] == "task.messages"]
        for key, col in texts:
            t = schema.field(col).type
            if not _is_text_type(decoded_type(t)):
                raise PreflightError(
                    f"{key}: column {col!r} in {f.path} has type {t}, expected a string column "
                    f"(string or UTF-8 binary)"
                )
        if inp.id_column:
            t = decoded_type(schema.field(inp.id_column).type)
            if not (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)):
                raise PreflightError(f"input.id_column: column {inp.id_column!r} in {f.path} has type {t}; use an integer or string id")
    resolve_read_types(cfg, files, schemas, passthrough)
    return schemas


def all_prompt_columns(cfg: JobConfig) -> list[str]:
    """The input columns the ``task.messages`` of the job's model(s) name."""
    from .config import model_entries

    return list(dict.fromkeys(c for _, sub in model_entries(cfg) for c in prompt_columns(sub)))


def resolve_passthrough(cfg: JobConfig, fs: pafs.FileSystem, files: list[InputFile]) -> list[str]:
    """``input.passthrough_columns`` as a list: ``"*"`` is every column of the first input file
    (hive partition keys included), in its order; :func:`check_columns` then requires each in
    every file."""
    from .config import ALL_COLUMNS

    value = cfg.input.passthrough_columns
    if value != ALL_COLUMNS:
        return list(value)
    return list(file_schema(fs, files[0]).names) if files else []


def resolve_read_types(cfg: JobConfig, files: list[InputFile], schemas: list[pa.Schema],
                       passthrough: Optional[list] = None) -> None:
    """Set each file's ``casts`` so that every file is read with one schema: dictionary-encoded
    columns as their values (text, id, passthrough), and the id and passthrough columns as the
    one type they share across files (integer widths unified). Without it, the duplicate-id
    check, the read's blocks and the staged files meet columns of different types across files.

    Raises :class:`PreflightError` naming the key, the files and their types when a column's
    types cannot be unified (an int64 id in one file, a string id in another)."""
    inp = cfg.input
    passthrough = list(inp.passthrough_columns) if passthrough is None else passthrough
    columns = [("input.text_column", inp.text_column), ("input.text_pair_column", inp.text_pair_column),
               ("input.source_language_column", inp.source_language_column), ("input.id_column", inp.id_column)]
    columns += [("input.passthrough_columns", c) for c in passthrough]
    columns += [("task.messages", c) for c in all_prompt_columns(cfg)]
    unify = {inp.id_column, *passthrough}
    for key, col in columns:
        if not col:
            continue
        typed = [(f.path, s.field(col).type) for f, s in zip(files, schemas) if col not in f.partition]
        if not typed:
            continue
        try:
            target = unify_column_type(col, typed, key) if col in unify else None
        except ColumnTypeConflict as e:
            hint = " or unset input.id_column to use generated <file>:<row> ids" if col == inp.id_column else ""
            raise PreflightError(f"{e}{hint}") from e
        for (_, t), f in zip(typed, [f for f in files if col not in f.partition]):
            want = target if target is not None else decoded_type(t)
            if not t.equals(want):
                f.casts[col] = want


def _duplicate_error(n_dup: int, examples: list) -> PreflightError:
    shown = ", ".join(repr(v) for v in examples[:5])
    return PreflightError(
        f"input.id_column: {n_dup} ids occur more than once (e.g. {shown}); ids must be unique "
        f"(or unset input.id_column to use generated <file>:<row> ids)"
    )


def check_unique_ids(fs: pafs.FileSystem, files: list[InputFile], id_column: str) -> None:
    """Resume and the exactly-once check rely on unique ids: verify them in driver memory (one
    column read; for inputs up to ``input.unique_ids_driver_rows`` rows)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    arrays = []
    for f in files:
        col = pq.read_table(f.path, columns=[id_column], filesystem=fs).column(id_column)
        if id_column in f.casts:  # one type across files (see resolve_read_types)
            col = col.cast(f.casts[id_column])
        if col.null_count:
            raise PreflightError(f"input.id_column: {col.null_count} null ids in {f.path}; every row needs an id")
        arrays.extend(col.chunks)
    if not arrays:
        return
    ids = pa.chunked_array(arrays)
    counts = pc.value_counts(ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dup):
        raise _duplicate_error(len(dup), dup.field("values")[:5].to_pylist())


def check_unique_ids_distributed(fs: pafs.FileSystem, files: list[InputFile], id_column: str) -> None:
    """The same check as a Ray Data hash aggregation (``groupby(id).count()``): ids are shuffled
    across the cluster's workers, and only the duplicates (at most a few) reach the driver, so
    its memory does not grow with the row count."""
    import pyarrow.compute as pc
    import ray

    ds = ray.data.read_parquet([f.path for f in files], filesystem=fs, columns=[id_column])
    target = next((f.casts[id_column] for f in files if id_column in f.casts), None)
    if target is not None:  # files of different id types (see resolve_read_types): one type first
        ds = ds.map_batches(lambda t: t.set_column(0, id_column, t.column(id_column).cast(target)),
                            batch_format="pyarrow", batch_size=None)
    counts = ds.groupby(id_column).count()

    def suspicious(t: pa.Table) -> pa.Table:
        return t.filter(pc.or_kleene(pc.greater(t["count()"], 1), pc.is_null(t[id_column])))

    dup = counts.map_batches(suspicious, batch_format="pyarrow", batch_size=None).materialize()  # only duplicates
    found = dup.take(6)
    if found:
        if any(r[id_column] is None for r in found):
            raise PreflightError("input.id_column: null ids in the input; every row needs an id")
        raise _duplicate_error(dup.count(), [r[id_column] for r in found])


def check_output_location(cfg: JobConfig, out_fs: pafs.FileSystem, out_path: str) -> None:
    """Inputs and outputs never overlap, in any mode (see :mod:`.output_safety`)."""
    paths = cfg.input.path if isinstance(cfg.input.path, list) else [cfg.input.path]
    inputs = []
    for raw in paths:
        fs_i, p = resolve_filesystem(raw, cfg.input.filesystem)
        inputs.append(location(fs_i, p, shown=raw))
    outputs = [
        ("output.path", location(out_fs, out_path, shown=cfg.output.path)),
        ("the output's staging directory", location(out_fs, staging_path(out_path))),
        ("the output's lock", location(out_fs, lock_path_for(out_path, "lock"))),
    ]
    try:
        check_disjoint(inputs, outputs)
    except UnsafeOutputError as e:
        raise PreflightError(str(e)) from e


def resolve_model(cfg: JobConfig):
    """Load the checkpoint's config (no weights) and check the task has a class for it."""
    import rayformers.models as models
    from rayformers.models.auto import AutoConfig

    m = cfg.model
    if m.task not in TASKS:
        raise PreflightError(f"model.task {m.task!r} is unknown; use one of {', '.join(TASKS)}")
    if not m.path:
        raise PreflightError("model.path is empty: set a checkpoint directory or Hub id")
    kwargs: dict = {}
    if m.revision:
        kwargs["revision"] = m.revision
    if m.local_files_only:
        kwargs["local_files_only"] = True
    if m.head is not None:
        model_config = resolve_custom_head(cfg, kwargs)
    else:
        try:
            model_config = AutoConfig.from_pretrained(m.path, **kwargs)
        except Exception as e:  # noqa: BLE001 - any loading problem is reported with the key to fix
            raise PreflightError(f"model.path {m.path!r}: cannot load the model config ({type(e).__name__}: {e})") from e
        auto = getattr(models, auto_class_name(m.task, model_config))
        try:
            auto.check_supported(model_config)
        except ValueError as e:
            raise PreflightError(f"model.task {m.task!r} is not available for model.path {m.path!r}: {e}") from e
        check_adapter(cfg)
        check_task_head(cfg, model_config)
    if m.quantization != "none" and (cfg.compute.model_num_gpus or resolved_dtype_setting(cfg) != "float32"):
        raise PreflightError(
            f"model.quantization {m.quantization} runs on CPU actors in float32: set compute.model_num_gpus: 0 "
            f"and model.dtype: float32 (or quantization: none on GPUs, where bf16/fp16 is the fast path)"
        )
    if m.dtype == "float16" and cfg.compute.model_num_gpus == 0:
        raise PreflightError("model.dtype float16 needs a GPU (compute.model_num_gpus > 0); use bfloat16 or float32 on CPU")
    return model_config


def resolve_custom_head(cfg: JobConfig, hub_kwargs: dict) -> Any:
    """``model.head``: the backbone's config with the checkpoint's labels, checked before Ray
    starts (a classify job, no adapter, a backbone we have, the Linear's weights present)."""
    import dataclasses

    import rayformers.models as models
    from rayformers.models.custom_head_config import CustomHeadError, HeadSpec, head_model_config
    from rayformers.models.weight_names import checkpoint_weight_names

    m = cfg.model
    if m.task != "classify":
        raise PreflightError(f"model.head is for model.task classify, not {m.task!r}")
    if m.adapter:
        raise PreflightError("model.head cannot be combined with model.adapter")
    try:
        spec = HeadSpec.from_dict(dataclasses.asdict(m.head))
        model_config = head_model_config(m.path, spec, **hub_kwargs)
    except (CustomHeadError, OSError) as e:
        raise PreflightError(f"model.path {m.path!r} with model.head: {e}") from e
    try:
        models.AutoModel.check_supported(model_config)
    except ValueError as e:
        raise PreflightError(f"model.head: the backbone of {m.path!r} is not available: {e}") from e
    names = checkpoint_weight_names(m.path, m.revision)
    wanted = f"{spec.weights.rstrip('.')}.weight"
    if names is not None and wanted not in names:
        tops = sorted({n.split(".")[0] for n in names})
        raise PreflightError(f"model.head.weights {spec.weights!r}: {m.path!r} has no tensor {wanted} "
                             f"(its top-level weight names: {', '.join(tops)})")
    return model_config


def check_task_head(cfg: JobConfig, model_config: Any) -> None:
    """Refuse a checkpoint that has none of the weights of the head ``model.task`` loads (a bare
    encoder asked to classify: every row would get a label from a random head). Reads only the
    tensor names (safetensors header, shard index or a ``.bin``'s pickle), no tensor and no torch;
    where the names cannot be listed cheaply (a Hub id not cached yet) the model actors' own check
    after loading (``operators.loading.refuse_new_head``) still refuses."""
    from rayformers.models.head_weights import absent_head
    from rayformers.models.weight_names import checkpoint_weight_names
    from rayformers.operators.loading import missing_head_message

    m = cfg.model
    names = checkpoint_weight_names(m.path, m.revision)
    if names is None:
        return
    names = [*names, *adapter_weight_names(m.adapter)]  # a head trained with the adapter (modules_to_save)
    class_name = _model_class_name(m.task, model_config)
    missing = absent_head(class_name, model_config, names) if class_name else []
    if not missing:
        return
    message = missing_head_message(m.task, m.path, class_name, missing, getattr(model_config, "architectures", None))
    if not m.allow_new_head:
        raise PreflightError(message)
    logger.warning("model.allow_new_head is set, running with a random head: %s", message)


def check_adapter(cfg: JobConfig) -> None:
    """``model.adapter`` names a PEFT LoRA adapter that can be merged exactly (its config and
    weights found, a LoRA method without unmergeable options), before Ray starts; the base it is
    merged into is ``model.path``."""
    from rayformers.models.adapters import AdapterError, find_adapter

    m = cfg.model
    if not m.adapter:
        return
    if m.revision:
        raise PreflightError("model.revision cannot be combined with model.adapter (it would not reach the base "
                             "model's files): use a local directory of the revision as model.path")
    kwargs = {"local_files_only": True} if m.local_files_only else {}
    try:
        adapter = find_adapter(m.adapter, base_model=m.path, **kwargs)
    except AdapterError as e:
        raise PreflightError(f"model.adapter {m.adapter!r}: {e}") from e
    except Exception as e:  # noqa: BLE001 - not found, unreadable: reported with the key to fix
        raise PreflightError(f"model.adapter {m.adapter!r}: cannot read it ({type(e).__name__}: {e})") from e
    if adapter is None:
        raise PreflightError(f"model.adapter {m.adapter!r} is not a PEFT LoRA adapter: it has no adapter_config.json "
                             "(a full checkpoint goes in model.path instead)")


def adapter_weight_names(adapter: Optional[str]) -> list[str]:
    """The base-model weights a LoRA adapter replaces in full (``modules_to_save``: a classifier
    head trained with it), named as in the base checkpoint; [] without an adapter or when its
    weights cannot be listed cheaply."""
    if not adapter:
        return []
    from rayformers.models.adapters import ADAPTER_WEIGHTS_FILES
    from rayformers.models.hub import resolve_file
    from rayformers.models.weight_names import safetensors_tensor_names, torch_pickle_names

    for filename in ADAPTER_WEIGHTS_FILES:
        try:
            path = resolve_file(adapter, filename, local_files_only=True, required=False)
            if path is None:
                continue
            names = safetensors_tensor_names(path) if filename.endswith(".safetensors") else torch_pickle_names(path)
        except (OSError, ValueError, KeyError, TypeError):
            return []
        out = []
        for name in names or []:
            name = name.removeprefix("base_model.model.")
            if ".lora_" in name or ".original_module." in name:
                continue
            out.append(name.replace(".modules_to_save", "").replace(".base_layer", ""))
        return out
    return []


def prompt_columns(cfg: JobConfig) -> list[str]:
    """The input columns ``task.messages`` name (none without messages)."""
    from rayformers.operators.prompts import PromptError, message_columns

    if not cfg.task.messages:
        return []
    try:
        return message_columns(cfg.task.messages)
    except PromptError as e:
        raise PreflightError(str(e)) from e


def resolve_prompt_template(cfg: JobConfig, tokenizer: Any, model_config: Any, tok_path: str) -> Optional[dict]:
    """``task.messages`` / ``task.chat_template`` checked and resolved to what the tokenizer
    actors render: ``{"messages", "chat_template"}`` (the template string, or None to join the
    contents), or None for a job without messages. The messages are rendered once here with
    placeholder values, so a template that refuses them fails before any row is read."""
    from rayformers.operators.prompts import NO_TEMPLATE

    t, inp = cfg.task, cfg.input
    if not t.messages:
        if t.chat_template is not None:
            raise PreflightError("task.chat_template is only used with task.messages; set the messages or remove it")
        return None
    columns = prompt_columns(cfg)
    if cfg.model.task != "generate" or auto_class_name("generate", model_config) != "AutoModelForCausalLM":
        raise PreflightError(f"task.messages are for model.task generate with a decoder-only checkpoint, not "
                             f"{cfg.model.task} with model type {getattr(model_config, 'model_type', '?')!r}")
    for key in ("text_pair_column", "source_language", "source_language_column"):
        if getattr(inp, key):
            raise PreflightError(f"input.{key} cannot be used with task.messages: name the columns in the messages")
    if overflow_mode(cfg.tokenizer) == "chunk":
        raise PreflightError("tokenizer.overflow chunk cannot be used with task.messages (use truncate or error)")
    template = None
    own = getattr(tokenizer, "chat_template", None)
    names = sorted(own) if isinstance(own, dict) else []
    if t.chat_template not in (None, NO_TEMPLATE, *names) and "{{" not in t.chat_template \
            and "{%" not in t.chat_template:
        raise PreflightError(f"task.chat_template {t.chat_template!r} is neither a Jinja template nor one of the "
                             f"checkpoint's named templates ({', '.join(names) or 'it has none'}); use "
                             f"{NO_TEMPLATE} for no template")
    if t.chat_template != NO_TEMPLATE:
        try:
            template = tokenizer.get_chat_template(t.chat_template)
        except AttributeError:
            template = None
        except ValueError as e:
            raise PreflightError(f"task.messages need a chat template: {e} Or set task.chat_template to a Jinja "
                                 f"template string, or to {NO_TEMPLATE} to join the message contents without one.") from e
        if template is None:
            raise PreflightError(f"task.messages: the tokenizer of {tok_path!r} cannot render chat templates; set "
                                 f"task.chat_template: {NO_TEMPLATE} to join the message contents without one")
    prompt = {"messages": [dict(m) for m in t.messages], "chat_template": template, "columns": columns}
    from rayformers.operators.prompts import PromptRenderer

    try:
        PromptRenderer(tokenizer, prompt["messages"], template, inp.text_column, None).render(
            {c: f"<{c}>" for c in columns})
    except Exception as e:  # noqa: BLE001 - a template error (raise_exception, syntax) names the key
        raise PreflightError(f"task.messages cannot be rendered with the chat template ({type(e).__name__}: {e})") from e
    return prompt


def _model_class_name(task: str, model_config: Any) -> Optional[str]:
    """The model class ``task`` loads for ``model_config`` (from the Auto tables, no import)."""
    from rayformers.models.auto import MODEL_NAMES, TASK_TO_AUTO_CLASS

    auto = auto_class_name(task, model_config)
    column = next((t for t, cls in TASK_TO_AUTO_CLASS.items() if cls.__name__ == auto), None)
    return MODEL_NAMES.get(getattr(model_config, "model_type", ""), {}).get(column)


def resolve_max_length(cfg: JobConfig, tokenizer: Any, model_config: Any, st: dict) -> Optional[int]:
    """Explicit ``tokenizer.max_length``, else the checkpoint's limits (see TokenizerConfig).

    An explicit value the model cannot take (more tokens than its position embeddings) is refused,
    never cut down behind the user's back: the rows would be truncated to fewer tokens than the
    config (and the manifest) say. The checkpoint's own defaults are capped to the positions."""
    explicit = cfg.tokenizer.max_length
    limit = explicit
    if limit is None:
        limit = st.get("max_length")
    if limit is None:
        mml = getattr(tokenizer, "model_max_length", None)
        if isinstance(mml, int) and 0 < mml < 1_000_000:
            limit = mml
    positions = prompt_positions(cfg, model_config)
    if positions is not None:
        if explicit is not None and explicit > positions:
            raise PreflightError(max_length_message(cfg, model_config, explicit, positions))
        limit = positions if limit is None else min(limit, positions)
    if limit is not None and limit < 2:
        raise PreflightError(f"tokenizer.max_length {limit} is too small")
    return limit


def prompt_positions(cfg: JobConfig, model_config: Any) -> Optional[int]:
    """The most tokens one row can have in this model (None when unbounded): see
    :func:`_position_reservations`."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if not (isinstance(positions, int) and positions > 0):
        return None
    return positions - sum(n for n, _ in _position_reservations(cfg, model_config))


def _position_reservations(cfg: JobConfig, model_config: Any) -> list[tuple[int, str]]:
    """Positions a row's tokens cannot use: RoBERTa-family ids start after ``padding_idx``; a
    decoder-only ``generate`` continuation shares the positions with its prompt."""
    taken = []
    if getattr(model_config, "model_type", "") in ("roberta", "camembert", "xlm-roberta"):
        taken.append((2, "2 before the first token (padding_idx)"))
    new_tokens = cfg.task.generation.max_new_tokens
    if cfg.model.task == "generate" and new_tokens \
            and auto_class_name("generate", model_config) == "AutoModelForCausalLM":
        taken.append((new_tokens, f"{new_tokens} for the continuation (task.generation.max_new_tokens)"))
    return taken


def max_length_message(cfg: JobConfig, model_config: Any, asked: int, positions: int) -> str:
    """Why ``tokenizer.max_length`` is refused, with both numbers and what to set instead."""
    why = f"max_position_embeddings {model_config.max_position_embeddings}"
    why += "".join(f", less {text}" for _, text in _position_reservations(cfg, model_config))
    return (
        f"tokenizer.max_length {asked} is more than the {positions} tokens a row can have in model.path "
        f"{cfg.model.path!r} ({why}): rows would be cut to {positions} tokens, not the {asked} the config says. "
        f"Set tokenizer.max_length to "
        f"{positions} or less, or leave it unset for the checkpoint's own limit (tokenizer.overflow: chunk scores "
        "longer rows as windows)."
    )


@dataclass
class ProcessingSpec:
    """What the tokenizer and model stages need, resolved from the config alone (no input path):
    shared by :func:`preflight` (whole jobs) and ``build_processor`` (any Ray Dataset)."""

    config: JobConfig
    tokenizer_path: str
    max_length: Optional[int]
    pad_token_id: int
    model_type: str
    task_options: dict = field(default_factory=dict)
    drop_after_tokenize: list[str] = field(default_factory=list)
    drop_after_model: list[str] = field(default_factory=list)
    text_prefix: str = ""
    """Prepended to every text before tokenizing (an embedding model's prompt)."""
    stride: int = 0
    """``tokenizer.overflow: chunk``: tokens a window repeats of the previous one (resolved)."""
    prompt: Optional[dict] = None
    """``task.messages`` resolved for the tokenizer actors (``{"messages", "chat_template"}``)."""
    model_dtype: Optional[str] = None
    """The model actors' concrete dtype, once resolved with Ray up (``model_device``)."""
    device_facts: dict = field(default_factory=dict)
    """What the model actors' device probe reported (empty when none ran)."""


def resolve_processing(cfg: JobConfig, keep_text: bool = False, keep_columns: Collection[str] = ()) -> ProcessingSpec:
    """Model, tokenizer and task settings checked and resolved (clear errors, nothing read yet)."""
    from rayformers.operators.loading import load_tokenizer

    inp = cfg.input
    model_config = resolve_model(cfg)
    tok_path = cfg.tokenizer.path or cfg.model.path
    try:
        tokenizer = load_tokenizer(tok_path, cfg.model.revision, cfg.model.local_files_only, inp.source_language)
    except Exception as e:  # noqa: BLE001
        what = "input.source_language" if type(e).__name__ == "UnknownLanguageCodeError" else "cannot load"
        raise PreflightError(f"tokenizer {tok_path!r}: {what} ({type(e).__name__}: {e})") from e
    for key in ("source_language", "source_language_column"):
        if getattr(inp, key) and not hasattr(tokenizer, "src_lang"):
            raise PreflightError(
                f"input.{key}={getattr(inp, key)!r}, but the tokenizer of {tok_path!r} has no language codes "
                "(they exist for NLLB, mBART, mBART-50 and M2M100 checkpoints); remove it."
            )
    if inp.source_language and inp.source_language_column:
        raise PreflightError("set input.source_language (one language for every row) or input.source_language_column "
                             "(per row), not both")
    check_vocabulary(tokenizer, model_config, tok_path, cfg.model.path)
    try:
        st = sentence_transformers_defaults(cfg.model.path) if os.path.isdir(cfg.model.path) else {}
    except ValueError as e:
        raise PreflightError(f"model.path {cfg.model.path!r}: {e}") from e
    max_length = resolve_max_length(cfg, tokenizer, model_config, st)
    stride = resolve_stride(cfg, tokenizer, max_length)
    prompt = resolve_prompt_template(cfg, tokenizer, model_config, tok_path)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(model_config, "pad_token_id", None) or 0

    task = cfg.model.task
    t = cfg.task
    prefix = ""
    text_needed_by_model = task in ("token-classify", "zero-shot-classify")
    options: dict
    if task == "classify":
        options = {"top_k": t.top_k, "function_to_apply": t.function_to_apply, "threshold": t.threshold}
    elif task == "embed":
        pooling = (st.get("pooling") or default_pooling(model_config)) if t.pooling == "auto" else t.pooling
        if pooling not in POOLINGS:
            raise PreflightError(f"model.path {cfg.model.path!r}: its sentence-transformers pooling {pooling!r} is not "
                                 f"available; set task.pooling to one of {', '.join(POOLINGS[1:])}")
        normalize = st.get("normalize", False) if t.normalize is None else t.normalize
        if t.truncate_dim is not None and t.truncate_dim < 1:
            raise PreflightError(f"task.truncate_dim must be at least 1, got {t.truncate_dim}")
        width = getattr(model_config, "hidden_size", None) or getattr(model_config, "d_model", None)
        if t.truncate_dim is not None and width and t.truncate_dim > width:
            raise PreflightError(f"task.truncate_dim {t.truncate_dim} is more than the model's {width} dimensions")
        options = {"pooling": pooling, "normalize": normalize, "truncate_dim": t.truncate_dim,
                   "precision": t.embedding_precision}
        try:
            prefix = resolve_prompt(cfg.model.path if os.path.isdir(cfg.model.path) else "", t.prompt, t.prompt_name)
        except ValueError as e:
            raise PreflightError(f"task.prompt_name: {e}") from e
        if prefix and st.get("include_prompt") is False and pooling != "lasttoken":
            raise PreflightError(
                f"model.path {cfg.model.path!r} pools without its prompt's tokens (include_prompt: false), which "
                f"embed does not build: the {pooling} pooling of prompt and text together would be another vector. "
                "Set task.prompt: \"\" to embed without a prompt, or use sentence-transformers for this model")
    elif task == "token-classify":
        if not getattr(model_config, "id2label", None):
            raise PreflightError(f"model.path {cfg.model.path!r} has no id2label; token-classify needs label names")
        options = {
            "text_column": inp.text_column,
            "tokenizer_path": tok_path,
            "aggregation_strategy": t.aggregation_strategy,
            "ignore_labels": list(t.ignore_labels),
        }
    elif task == "zero-shot-classify":
        options = zero_shot_options(cfg, model_config, tok_path, max_length)
    elif task == "rerank":
        options = rerank_options(cfg, model_config, tokenizer, tok_path, max_length)
        text_needed_by_model = "rerank_prompt" in options
    elif task == "sparse-embed":
        if t.sparse_top_k is not None and t.sparse_top_k < 1:
            raise PreflightError(f"task.sparse_top_k must be at least 1 (or unset), got {t.sparse_top_k}")
        options = {"threshold": t.sparse_threshold, "top_k": t.sparse_top_k, "with_tokens": t.sparse_tokens,
                   "tokenizer_path": tok_path}
    else:
        options = {
            "generation": t.generation.generate_kwargs(),
            "max_batch_size": t.generation.max_batch_size,
            "tokenizer_path": tok_path,
            "stop": list(check_stop(t.generation.stop)),
        }
        if cfg.compute.max_kv_tokens is not None:
            if cfg.compute.max_kv_tokens < 1:
                raise PreflightError(f"compute.max_kv_tokens must be at least 1 (or unset), got "
                                     f"{cfg.compute.max_kv_tokens}")
            options["max_kv_tokens"] = cfg.compute.max_kv_tokens
        if t.target_language:
            from rayformers.operators.loading import forced_target_language_id

            try:
                options["generation"]["forced_bos_token_id"] = forced_target_language_id(tokenizer, t.target_language)
            except ValueError as e:
                raise PreflightError(f"task.target_language: {e}") from e
    constraint = resolve_constraint(cfg, model_config)
    if constraint is not None:
        options["constraint"] = constraint
    if overflow_mode(cfg.tokenizer) == "chunk" and task in ("classify", "embed"):
        options["chunk_aggregate"] = t.chunk_aggregate
    if t.rerank_prompt is not None and task != "rerank":
        raise PreflightError(f"task.rerank_prompt is for model.task rerank, not {task}")
    if t.target_language and task != "generate":
        raise PreflightError(f"task.target_language is for model.task generate, not {task}")

    keep = set(keep_columns)
    if keep_text:
        keep.add(inp.text_column)
    drop = [c for c in (inp.text_column, inp.text_pair_column, inp.source_language_column, *prompt_columns(cfg))
            if c and c not in keep]
    drop = list(dict.fromkeys(drop))
    return ProcessingSpec(
        config=cfg,
        tokenizer_path=tok_path,
        max_length=max_length,
        pad_token_id=int(pad),
        model_type=getattr(model_config, "model_type", "?"),
        task_options=options,
        drop_after_tokenize=[] if text_needed_by_model else drop,
        drop_after_model=drop if text_needed_by_model else [],
        text_prefix=prefix,
        stride=stride,
        prompt=prompt,
    )


def resolve_constraint(cfg: JobConfig, model_config: Any) -> Optional[dict]:
    """``task.choices`` / ``task.json_schema`` / ``task.regex`` checked and compiled once here (an
    invalid schema or regex, or a missing grammar engine, fails before any row is read):
    ``{"kind", "value"}`` for the model actors, or None without a constraint."""
    from rayformers.models.generation.constraint_grammar import ConstraintError, constraint_of, grammar

    t = cfg.task
    try:
        chosen = constraint_of({"choices": t.choices, "json_schema": t.json_schema, "regex": t.regex})
    except ConstraintError as e:
        raise PreflightError(str(e)) from e
    if chosen is None:
        return None
    kind, value = chosen
    if cfg.model.task != "generate" or auto_class_name("generate", model_config) != "AutoModelForCausalLM":
        raise PreflightError(f"task.{kind} is for model.task generate with a decoder-only checkpoint, not "
                             f"{cfg.model.task} with model type {getattr(model_config, 'model_type', '?')!r}")
    if (t.generation.num_beams or 1) > 1:
        raise PreflightError(f"task.{kind} runs greedy search or sampling, not beam search: set "
                             "task.generation.num_beams to 1")
    if t.generation.min_new_tokens:
        raise PreflightError(f"task.{kind} decides where the answer ends: remove task.generation.min_new_tokens")
    try:
        grammar(kind, value)
    except (ConstraintError, ImportError) as e:
        raise PreflightError(str(e)) from e
    return {"kind": kind, "value": value}


def check_stop(stop: list) -> list:
    """``task.generation.stop``: non-empty strings."""
    for i, item in enumerate(stop):
        if not isinstance(item, str) or not item:
            raise PreflightError(f"task.generation.stop[{i}] must be a non-empty string, got {item!r}")
    return stop


def tokenizer_id_bound(tokenizer: Any) -> Optional[int]:
    """One past the largest token id the tokenizer can produce (added tokens included)."""
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        return None
    return max(vocab.values()) + 1 if vocab else None


def model_input_vocab_size(model_config: Any) -> Optional[int]:
    """Rows of the model's input embedding, from its config (an encoder-decoder's encoder's)."""
    encoder = getattr(model_config, "encoder", None)
    if getattr(model_config, "is_encoder_decoder", False) and getattr(encoder, "vocab_size", None):
        return int(encoder.vocab_size)
    size = getattr(model_config, "vocab_size", None)
    return int(size) if isinstance(size, int) else None


def check_vocabulary(tokenizer: Any, model_config: Any, tok_path: str, model_path: str) -> None:
    """Refuse a tokenizer whose ids go past the model's input embeddings, before any row: on a GPU
    such an id is a device-side assert that kills the model actor's CUDA context (rows that do
    meet one at run time are error records: the model actors check every micro-batch too)."""
    bound, size = tokenizer_id_bound(tokenizer), model_input_vocab_size(model_config)
    if bound is None or size is None or bound <= size:
        return
    raise PreflightError(
        f"tokenizer {tok_path!r} has {bound} token ids (0-{bound - 1}) but the model {model_path!r} embeds only "
        f"{size} (its config's vocab_size): ids from {size} on would fail the model. Use the checkpoint's own "
        "tokenizer (unset tokenizer.path) or a model trained with this tokenizer."
    )


def resolve_stride(cfg: JobConfig, tokenizer: Any, max_length: Optional[int]) -> int:
    """``tokenizer.stride`` checked against the windows it must fit in, or its default
    ``max_length // 8``; 0 when rows are not chunked."""
    if overflow_mode(cfg.tokenizer) != "chunk":
        return 0
    if max_length is None:
        raise PreflightError("tokenizer.overflow chunk needs a max_length (the checkpoint gives none): set "
                             "tokenizer.max_length")
    specials = tokenizer.backend_tokenizer.num_special_tokens_to_add(False)
    stride = cfg.tokenizer.stride if cfg.tokenizer.stride is not None else min(max_length // 8, max_length - specials - 1)
    try:
        check_stride(stride, max_length, specials)
    except ValueError as e:
        raise PreflightError(str(e)) from e
    return stride


def output_columns(cfg: JobConfig, id_generated: bool = False) -> set[str]:
    """The columns the job adds to every row (predictions, ``num_tokens``, ``error``, ...)."""
    added = {ERROR_COLUMN, "num_tokens", *PREDICTION_COLUMNS[cfg.model.task]}
    if overflow_mode(cfg.tokenizer) == "chunk" and cfg.task.chunk_aggregate == "none":
        added |= {"chunk_index", "chunk_start", "chunk_end"}
    if id_generated:
        added.add(ID_COLUMN)
    return added


def check_output_collisions(cfg: JobConfig, kept_columns: Collection[str], where: str,
                            id_generated: bool = False) -> None:
    """Refuse input columns kept in the output under the name of a column the job writes: the
    prediction would silently replace the input's value (a ``label`` column in the data would
    come out as the predicted label). Shared by ``run()`` (its id, passthrough and kept text
    columns) and ``build_processor`` (every column of the caller's dataset it keeps)."""
    added = output_columns(cfg, id_generated)
    clash = [c for c in kept_columns if c in added]
    if clash:
        raise PreflightError(
            f"{where}: {', '.join(clash)} would collide with output columns ({', '.join(sorted(added))}); "
            "rename or drop them before scoring"
        )


def resolve_model_reference_in_config(cfg: JobConfig) -> None:
    """`runs/<name>@best` / `@latest` / `@step-N`: a checkpoint of a `rayformers train` run."""
    if "@" not in cfg.model.path:
        return
    from rayformers.models.checkpoint_refs import resolve_model_reference

    try:
        cfg.model.path = resolve_model_reference(cfg.model.path)
    except Exception as e:  # noqa: BLE001 - any failure is a config problem to report
        raise PreflightError(f"model.path {cfg.model.path!r}: {e}") from e


def preflight(cfg: JobConfig, input_files: Optional[Collection[str]] = None) -> ResolvedJob:
    """Validate everything that can be validated without Ray; resolve operator settings.

    ``input_files`` restricts the job to those files of ``input.path`` (see ``discover_files``)."""
    inp, out = cfg.input, cfg.output
    resolve_model_reference_in_config(cfg)
    if not out.path:
        raise PreflightError("output.path is empty: set where predictions are written")
    for key, value in (
        ("compute.batch_size", cfg.compute.block_rows()),
        ("compute.read_rows_per_task", cfg.compute.read_rows_per_task),
        ("output.stage_rows", out.stage_rows),
        ("output.target_file_mb", out.target_file_mb),
        ("output.lock_ttl_s", out.lock_ttl_s),
    ):
        if not value > 0:
            raise PreflightError(f"{key} must be positive, got {value}")
    out_fs, out_path = resolve_filesystem(out.path, out.filesystem)
    check_output_location(cfg, out_fs, out_path)
    dropped_fs, dropped_path = check_dropped_path(cfg, out_fs, out_path)
    if not inp.text_column:
        raise PreflightError("input.text_column is empty")
    id_generated = inp.id_column is None
    id_column = inp.id_column or ID_COLUMN
    listed = [] if inp.passthrough_columns == "*" else inp.passthrough_columns
    check_kept_collisions(cfg, listed, id_generated)  # before the input is even listed
    try:
        fs, files = discover_files(inp.path, inp.filesystem, inp.partitioning, only=input_files)
    except InputError as e:
        raise PreflightError(str(e)) from e
    passthrough = resolve_passthrough(cfg, fs, files)
    if inp.passthrough_columns == "*":  # every input column: a clash with a prediction fails here, naming both
        check_kept_collisions(cfg, passthrough, id_generated, where='input.passthrough_columns "*"')
    schemas = check_columns(cfg, fs, files, passthrough)
    # output.mode's refusals (an existing output, a changed input under resume) before Ray starts
    check_output_mode(out_fs, out_path, out.mode, cfg.fingerprint(), files)

    id_check_deferred = False
    if inp.id_column and inp.check_unique_ids:
        if sum(f.num_rows for f in files) <= inp.unique_ids_driver_rows:
            check_unique_ids(fs, files, inp.id_column)
        else:
            id_check_deferred = True  # run() checks with Ray once it is up, before any scoring

    keep_text = out.keep_text or inp.text_column in passthrough
    stages: list = []
    drop_at_end: list = []
    if cfg.models:
        from .multi_model import resolve_model_stages, text_columns

        stages = resolve_model_stages(cfg)
        spec = stages[0].spec
        kept = {id_column, *passthrough, *([inp.text_column] if keep_text else [])}
        drop_at_end = [c for c in text_columns(cfg) if c not in kept]
    else:
        spec = resolve_processing(cfg, keep_text=keep_text, keep_columns=(id_column, *passthrough))

    read_columns: list[str] = []
    first = passthrough if inp.passthrough_columns == "*" else []  # "*": the input's own order
    for c in [*first, inp.id_column, inp.text_column, inp.text_pair_column, inp.source_language_column,
              *passthrough, *all_prompt_columns(cfg)]:
        if c and c not in read_columns:
            read_columns.append(c)
    job = ResolvedJob(
        config=cfg,
        input_fs=fs,
        files=files,
        read_columns=read_columns,
        id_column=id_column,
        id_generated=id_generated,
        output_fs=out_fs,
        output_path=out_path,
        tokenizer_path=spec.tokenizer_path,
        max_length=spec.max_length,
        pad_token_id=spec.pad_token_id,
        model_type=spec.model_type,
        task_options=spec.task_options,
        drop_after_tokenize=spec.drop_after_tokenize,
        drop_after_model=spec.drop_after_model,
        text_prefix=spec.text_prefix,
        stride=spec.stride,
        prompt=spec.prompt,
        id_check_deferred=id_check_deferred,
        passthrough=passthrough,
        models=stages,
        drop_at_end=drop_at_end,
        dropped_fs=dropped_fs,
        dropped_path=dropped_path,
    )
    job.output_types = known_output_types(job, schemas[0] if schemas else None, keep_text)
    check_keep_rule(job)
    return job


def check_kept_collisions(cfg: JobConfig, passthrough: list, id_generated: bool,
                          where: str = "input.passthrough_columns") -> None:
    """Input columns the output keeps must not have the name of a column the job writes."""
    inp, out = cfg.input, cfg.output
    groups = (("input.id_column", [inp.id_column] if inp.id_column else []),
              (where, passthrough),
              ("input.text_column (kept by output.keep_text)", [inp.text_column] if out.keep_text else []))
    for key, kept in groups:
        if cfg.models:
            from .multi_model import check_collisions

            check_collisions(cfg, kept, key, id_generated)
        else:
            check_output_collisions(cfg, kept, key, id_generated)


PREDICTION_TYPES = {
    "label": pa.string(), "score": pa.float32(), "top_k_labels": pa.list_(pa.string()),
    "top_k_scores": pa.list_(pa.float32()), "labels": pa.list_(pa.string()), "entities": pa.list_(pa.null()),
    "generated_text": pa.string(), "generated_tokens": pa.list_(pa.int32()), "finish_reason": pa.string(),
    "num_generated_tokens": pa.int32(), "embedding": pa.list_(pa.float32()), "scores": pa.list_(pa.float32()),
    "sparse_embedding": pa.list_(pa.null()), "sparse_nnz": pa.int32(), "num_tokens": pa.int32(),
    "chunk_index": pa.int32(), "chunk_start": pa.int32(), "chunk_end": pa.int32(), ERROR_COLUMN: pa.string(),
}
"""The kind of value each prediction column holds (numbers, strings, lists), for checking a keep
rule before the run; widths may differ from what the operators write (``zero-shot`` ``scores``
is a list either way)."""


def known_output_types(job: ResolvedJob, schema: Optional[pa.Schema], keep_text: bool) -> dict:
    """Every column a published row has → its Arrow type (where known before the run)."""
    cfg = job.config
    kept = [job.id_column, *job.passthrough, *([cfg.input.text_column] if keep_text else [])]
    types: dict = {}
    for c in kept:
        if schema is not None and c in schema.names:
            types[c] = decoded_type(schema.field(c).type)
        else:
            types[c] = pa.string()  # hive partition keys and generated ids are strings
    if job.models:
        from .multi_model import added_columns

        for col, (_, plain) in added_columns(cfg).items():
            types[col] = PREDICTION_TYPES.get(plain)
        types[ERROR_COLUMN] = pa.string()
    else:
        for c in output_columns(cfg, job.id_generated):
            types.setdefault(c, PREDICTION_TYPES.get(c))
    return types


def check_keep_rule(job: ResolvedJob) -> None:
    """``output.keep`` parses and names only columns a published row has (error at its position)."""
    from .keep_rules import KeepRuleError, check

    keep = job.config.output.keep
    if keep is None:
        return
    try:
        check(keep, job.output_types)
    except KeepRuleError as e:
        raise PreflightError(f"output.keep: {e}") from e


def check_dropped_path(cfg: JobConfig, out_fs: pafs.FileSystem, out_path: str):
    """``output.dropped_path``: only with a keep rule, apart from every input and the output, and
    (as the output) missing, empty or a rayformers output; ``(fs, path)`` or ``(None, None)``."""
    out = cfg.output
    if out.keep is not None and not (isinstance(out.keep, str) and out.keep.strip()):
        raise PreflightError("output.keep is empty: write a rule such as \"score >= 0.5\", or remove the key")
    if not out.dropped_path:
        return None, None
    if out.keep is None:
        raise PreflightError("output.dropped_path is set without output.keep: no row would be dropped; set a keep "
                             "rule or remove dropped_path")
    fs, path = resolve_filesystem(out.dropped_path, out.filesystem)
    paths = cfg.input.path if isinstance(cfg.input.path, list) else [cfg.input.path]
    inputs = [location(*resolve_filesystem(raw, cfg.input.filesystem), shown=raw) for raw in paths]
    inputs.append(location(out_fs, out_path, shown=cfg.output.path))
    for staging in (staging_path(out_path),):
        inputs.append(location(out_fs, staging))
    try:
        check_disjoint(inputs, [("output.dropped_path", location(fs, path, shown=out.dropped_path))])
    except UnsafeOutputError as e:
        raise PreflightError(str(e).replace("input", "input or output", 1)) from e
    from .output_safety import check_replaceable

    try:
        exists = check_replaceable(fs, path, why="output.dropped_path")
    except UnsafeOutputError as e:
        raise PreflightError(str(e)) from e
    if exists and out.mode == "error-if-exists":
        raise PreflightError(f"output.dropped_path {out.dropped_path} already exists; choose output.mode=overwrite "
                             "to replace it or output.mode=resume to complete it")
    return fs, path


TOKENIZERS_PER_MODEL_ACTOR = {"cpu": 1, "gpu": 4}
"""Default tokenizer actors per model actor (see ``compute.tokenizer_max_actors``)."""


def size_tokenizer_pool(cfg: JobConfig, total_cpus: float) -> int:
    """Fill in ``compute.tokenizer_max_actors`` when unset: sized to the model pool, within the
    CPUs left once model actors and one read/write task have theirs; and
    ``compute.tokenizer_min_actors`` when unset: the maximum (see there). Idempotent."""
    c = cfg.compute
    if c.tokenizer_max_actors is None:
        per = TOKENIZERS_PER_MODEL_ACTOR["gpu" if c.model_num_gpus else "cpu"]
        free = total_cpus - c.model_max_actors * c.model_num_cpus - c.io_num_cpus
        fits = int(free // c.tokenizer_num_cpus) if c.tokenizer_num_cpus > 0 else per * c.model_max_actors
        c.tokenizer_max_actors = max(c.tokenizer_min_actors or 1, min(per * c.model_max_actors, fits))
    if c.tokenizer_min_actors is None:
        c.tokenizer_min_actors = c.tokenizer_max_actors
    return c.tokenizer_max_actors


def zero_shot_options(cfg: JobConfig, model_config, tok_path: str, max_length: Optional[int]) -> dict:
    """Validate the zero-shot settings against the NLI checkpoint (before any row is read)."""
    t = cfg.task
    labels = t.candidate_labels
    if not labels or not all(isinstance(label, str) and label.strip() for label in labels):
        raise PreflightError(f"task.candidate_labels must be a non-empty list of label names for zero-shot-classify, "
                             f"got {labels!r}")
    if t.hypothesis_template.format(labels[0]) == t.hypothesis_template:
        raise PreflightError(f"task.hypothesis_template {t.hypothesis_template!r} has no {{}} where the label goes")
    if cfg.input.text_pair_column:
        raise PreflightError("input.text_pair_column cannot be used with zero-shot-classify: the second text of each "
                             "pair is the hypothesis built from task.hypothesis_template")
    id2label = getattr(model_config, "id2label", None) or {}
    if len(id2label) < 2:
        raise PreflightError(f"model.path {cfg.model.path!r} has {len(id2label)} labels; zero-shot-classify needs an NLI "
                             "checkpoint (entailment / neutral / contradiction)")
    if not any(str(name).lower().startswith("entail") for name in id2label.values()):
        logger.warning("model.path %r has no label starting with 'entail' (%s); as transformers, the last label is "
                       "taken as entailment", cfg.model.path, sorted(map(str, id2label.values())))
    return {
        "candidate_labels": list(labels),
        "hypothesis_template": t.hypothesis_template,
        "multi_label": t.multi_label,
        "text_column": cfg.input.text_column,
        "tokenizer_path": tok_path,
        "max_length": max_length,
    }


def rerank_options(cfg: JobConfig, model_config, tokenizer, tok_path: str, max_length: Optional[int]) -> dict:
    """Validate a rerank job against its checkpoint: a cross-encoder's activation (as
    CrossEncoder would pick it), or a yes/no LLM's prompt and single-token answers."""
    from rayformers.operators.rerank_settings import (
        DEFAULT_RERANK_PROMPT,
        check_rerank_prompt,
        cross_encoder_activation,
        rerank_kind,
        yes_no_token_ids,
    )

    inp, t, path = cfg.input, cfg.task, cfg.model.path
    if not inp.text_pair_column:
        raise PreflightError("model.task rerank scores (query, document) pairs: set input.text_pair_column to the "
                             "documents' column (input.text_column holds the queries)")
    if rerank_kind(model_config) == "cross-encoder":
        if t.rerank_prompt is not None:
            raise PreflightError(f"task.rerank_prompt is for yes/no LLM rerankers (a causal LM); model.path {path!r} "
                                 "is a cross-encoder (a sequence classifier), which reads the pair as it is: remove it")
        num_labels = int(getattr(model_config, "num_labels", 1) or 1)
        try:
            return {"activation": cross_encoder_activation(path if os.path.isdir(path) else "", num_labels)}
        except ValueError as e:
            raise PreflightError(f"model.path {path!r}: {e}") from e
    try:
        prompt = check_rerank_prompt(DEFAULT_RERANK_PROMPT if t.rerank_prompt is None else t.rerank_prompt)
        yes_no_token_ids(tokenizer)
    except ValueError as e:
        raise PreflightError(f"model.path {path!r} (yes/no reranker): {e}") from e
    return {"text_column": inp.text_column, "text_pair_column": inp.text_pair_column, "tokenizer_path": tok_path,
            "max_length": max_length, "rerank_prompt": prompt}


def check_cluster_cpus(cfg: JobConfig, total_cpus: float) -> None:
    """Refuse a plan whose actors reserve the CPUs that read and write tasks need (it would hang)."""
    c = cfg.compute
    size_tokenizer_pool(cfg, total_cpus)
    reserved = c.tokenizer_max_actors * c.tokenizer_num_cpus + c.model_max_actors * c.model_num_cpus
    if reserved + c.io_num_cpus > total_cpus + 1e-9:
        raise PreflightError(
            f"compute: tokenizer actors ({c.tokenizer_max_actors} x {c.tokenizer_num_cpus} CPU) and model actors "
            f"({c.model_max_actors} x {c.model_num_cpus} CPU) reserve {reserved:g} of the cluster's {total_cpus:g} "
            f"CPUs, leaving less than compute.io_num_cpus={c.io_num_cpus:g} for read/write tasks, so the job "
            f"would hang. Lower compute.model_num_cpus / *_max_actors (a reservation, not a thread count: "
            f"compute.torch_threads sets the threads)."
        )
    for key in ("tokenizer_min_actors", "model_min_actors"):
        lo = getattr(c, key)
        hi = getattr(c, key.replace("min", "max"))
        if lo < 1 or hi < lo:
            raise PreflightError(f"compute.{key}={lo} and compute.{key.replace('min', 'max')}={hi}: need 1 <= min <= max")


__all__ = ["PreflightError", "ResolvedJob", "preflight", "check_cluster_cpus", "ConfigError"]
