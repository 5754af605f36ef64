"""The ``train`` section of a fine-tuning config, and the whole training job config.

A training YAML shares its ``input``, ``model``, ``tokenizer``, ``task`` and ``compute`` sections
with inference (imported from :mod:`rayformers.pipeline.config`, never redefined), so one file can
describe the data and model for both ``rayformers train`` and ``rayformers run``. Only the keys
that exist for training live here. Loading is as strict as inference's: unknown keys, wrong
types and values outside a fixed set raise :class:`ConfigError` naming the key.

In a training config ``model.path`` is the checkpoint training starts from (a base model such as
all-MiniLM-L6-v2 gets a new, randomly initialised head) and ``model.task`` picks the objective:
``classify`` (sequence classification / regression), ``generate`` (seq2seq), ``token-classify``
(word tags, NER) or ``embed`` (sentence embeddings from pairs). ``input.path`` is
the training data. ``model.dtype`` applies to inference only: training keeps float32 weights
and optimizer state (``train.bf16`` adds bfloat16 autocast).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from rayformers.pipeline.config import (  # noqa: I001
    ConfigError,
    JobConfig,
    build_dataclass,
    deep_merge,
    describe,
    load_yaml,
    parse_overrides,
)

from .lora import LoraSettings, validate_settings as validate_lora

TRAIN_TASKS = ("classify", "generate", "token-classify", "embed")
PROBLEM_TYPES = ("auto", "single_label_classification", "multi_label_classification", "regression")
SCHEDULERS = ("linear", "cosine", "constant")
BAD_ROW_POLICIES = ("fail", "skip")
STRATEGIES = ("ddp", "fsdp")
PARAM_DTYPES = ("auto", "bfloat16", "float32")
EMBED_POOLINGS = ("auto", "mean", "cls", "max", "lasttoken")
ORDERS = ("auto", "min", "max")


@dataclass
class TrainConfig:
    """Training-only settings (``rayformers train``)."""

    storage_path: str = "runs"
    """Where runs are stored (local directory or a pyarrow URI such as ``s3://bucket/runs``); the
    run directory is ``<storage_path>/<name>``."""
    name: str = ""
    """Run name. Re-running with the same ``storage_path`` and ``name`` resumes the run from its
    latest checkpoint instead of starting over."""

    epochs: int = 1
    """Passes over the training data (ignored when ``max_steps`` is set)."""
    max_steps: Optional[int] = None
    """Optimizer steps to run; overrides ``epochs`` (the data is repeated as needed)."""
    batch_size_per_worker: int = 8
    """Rows per worker per forward pass. Global batch = this × num_workers ×
    gradient_accumulation_steps."""
    gradient_accumulation_steps: int = 1
    """Forward/backward passes per optimizer step."""
    learning_rate: float = 5e-5
    """Peak learning rate of AdamW."""
    lr_scheduler: str = "linear"
    """``linear`` (warmup then linear decay to 0, as transformers), ``cosine`` or ``constant``
    (after warmup)."""
    warmup_steps: int = 0
    """Linear warmup steps (takes precedence over ``warmup_ratio``)."""
    warmup_ratio: float = 0.0
    """Warmup as a share of the total steps."""
    weight_decay: float = 0.0
    """AdamW weight decay; never applied to biases and LayerNorm weights."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    max_grad_norm: Optional[float] = 1.0
    """Clip the global gradient norm to this (``null``: no clipping)."""
    bf16: bool = False
    """Run forward passes under bfloat16 autocast (weights and optimizer stay float32)."""
    seed: int = 42
    """Seed for the head initialisation, dropout, the data order and the eval split."""
    shuffle: bool = True
    """Shuffle the training rows each epoch (read units in a seeded order, rows within a unit
    permuted); the order is deterministic for a given seed and does not depend on num_workers."""

    label_column: str = "label"
    """classify: column with the label (token-classify: a list of word tags, one per word of the
    list-of-words ``input.text_column``): a name (string), an id (integer), a list of names/ids
    (multi-label) or a number / list of numbers (regression)."""
    target_column: str = "target"
    """generate: column with the target text."""
    labels: Optional[list] = None
    """classify: label names in id order. Default: the model's own labels when it has named ones,
    else the sorted names found in the training data (ids: 0..max id)."""
    problem_type: str = "auto"
    """``auto`` (from the label column's type: list → multi-label, float → regression, else
    single-label), ``single_label_classification``, ``multi_label_classification``, ``regression``."""
    max_target_length: Optional[int] = 128
    """generate: token limit of targets (labels) including special tokens."""
    ignore_mismatched_sizes: bool = True
    """Replace a classification head whose shape does not fit the labels (printed when it happens)."""

    eval_path: Optional[Union[str, list]] = None
    """Held-out Parquet data (file, directory, glob or list), same columns as ``input``."""
    eval_split: float = 0.0
    """Without ``eval_path``: share of the training rows held out for evaluation (chosen by a
    seeded hash of file and row, so the split is stable across re-runs)."""
    eval_every: Optional[int] = None
    """Evaluate every N optimizer steps (default: at the end of every epoch) and after the last
    step."""
    checkpoint_every: Optional[int] = None
    """Checkpoint every N optimizer steps (default: whenever evaluating); the last step always
    checkpoints."""
    log_every: int = 10
    """Print and report the training loss every N steps."""
    num_to_keep: Optional[int] = 2
    """Checkpoints kept on storage: the best ``num_to_keep`` by ``best_metric`` (the latest is
    always kept as well)."""
    best_metric: str = "auto"
    """Metric that ranks checkpoints (e.g. ``eval_loss``, ``eval_accuracy``, ``eval_f1_macro``,
    ``eval_rougeL``, ``train_loss``). ``auto``: ``eval_loss`` with eval data, else ``train_loss``."""
    best_metric_order: str = "auto"
    """``min``, ``max`` or ``auto`` (min for losses/errors, max otherwise)."""
    eval_generate: bool = True
    """generate: also decode the eval rows with ``generate`` and report ROUGE-L."""

    lora: Optional[LoraSettings] = None
    """Train LoRA adapters instead of the whole model (any family; see the ``train.lora.*`` keys).
    Checkpoints are then PEFT adapter directories."""
    prompt_column: Optional[str] = None
    """generate on a decoder-only model (SFT): column with the prompt (default ``input.text_column``)."""
    response_column: Optional[str] = None
    """SFT: column with the response the model learns (default ``train.target_column``); the loss
    covers the response tokens only."""
    messages_column: Optional[str] = None
    """SFT: a column of conversations (lists of ``{role, content}``, the last one the assistant's
    answer) instead of prompt/response columns; the loss covers the last assistant message."""
    chat_template: Optional[str] = None
    """SFT: how rows are rendered: unset = the tokenizer's chat template (plain prompt + response +
    EOS when it has none), a template name of the tokenizer or a Jinja string, or ``none`` for
    plain prompt + response + EOS."""
    packing: bool = False
    """SFT: pack each micro-batch's rows into as few sequences of at most ``tokenizer.max_length``
    tokens as fit, without attention across rows (position ids restart per row)."""

    positive_column: str = "positive"
    """embed: column with the text that matches the anchor (``input.text_column``)."""
    negative_column: Optional[str] = None
    """embed: optional column with a hard negative per row (an extra candidate in the loss)."""
    pooling: str = "auto"
    """embed: ``mean``, ``cls``, ``max`` or ``lasttoken``; ``auto``: the base model's
    sentence-transformers pooling when it has one, else ``mean``."""
    normalize: Optional[bool] = None
    """embed: whether the saved model L2-normalises its embeddings (a ``Normalize`` module);
    ``null``: as the base sentence-transformers model, else false. The loss always uses cosine
    similarity."""
    loss_scale: float = 20.0
    """embed: MultipleNegativesRankingLoss scale (the inverse temperature of the cosine scores)."""

    strategy: str = "ddp"
    """``ddp`` (every worker holds the whole model) or ``fsdp`` (FSDP2 ``fully_shard`` per
    transformer layer, then the root: parameters, gradients and optimizer state sharded)."""
    fsdp_param_dtype: str = "auto"
    """fsdp: dtype of the gathered parameters for compute (gradients are reduced in float32 and
    the sharded master weights stay float32). ``auto``: bfloat16 where the device computes it
    natively, else float32."""
    gradient_checkpointing: bool = False
    """Recompute each transformer layer's activations in the backward pass instead of storing
    them (less memory, about a third more compute)."""

    bad_rows: str = "fail"
    """Rows with a missing text or label, an unknown label name or an empty target: ``fail``
    (stop before training with the file and rows named) or ``skip`` (leave them out, counted and
    reported)."""

    num_workers: int = 1
    """Ray Train workers (DDP ranks)."""
    use_gpu: bool = False
    """One GPU per worker (DDP over NCCL); otherwise CPU workers over gloo."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker (a reservation; ``compute.torch_threads`` sets the thread count)."""
    max_failures: int = 1
    """Worker failures to recover from (each restart resumes from the latest checkpoint); -1:
    unlimited."""


@dataclass
class TrainJobConfig(JobConfig):
    """A whole fine-tuning job (``rayformers train``): the inference job's sections plus
    ``train``. ``output`` is accepted (and unused) so one YAML can serve ``rayformers run`` too."""

    train: TrainConfig = field(default_factory=TrainConfig)


_TRAIN_CHOICES = {
    "problem_type": PROBLEM_TYPES,
    "lr_scheduler": SCHEDULERS,
    "bad_rows": BAD_ROW_POLICIES,
    "best_metric_order": ORDERS,
    "strategy": STRATEGIES,
    "fsdp_param_dtype": PARAM_DTYPES,
    "pooling": EMBED_POOLINGS,
}


def validate(cfg: TrainJobConfig) -> TrainJobConfig:
    """Checks that need more than one key's type; each error names the key to change."""
    t = cfg.train
    for key, choices in _TRAIN_CHOICES.items():
        if getattr(t, key) not in choices:
            raise ConfigError(f"config key 'train.{key}': {getattr(t, key)!r} is not one of {', '.join(choices)}")
    if cfg.model.task not in TRAIN_TASKS:
        raise ConfigError(
            f"config key 'model.task': training supports {', '.join(TRAIN_TASKS)}, got {cfg.model.task!r}"
        )
    if not cfg.model.path:
        raise ConfigError("config key 'model.path' is empty: set the checkpoint to start from")
    if not cfg.input.path:
        raise ConfigError("config key 'input.path' is empty: set the training Parquet data")
    if not t.name:
        raise ConfigError("config key 'train.name' is empty: name the run (re-running the same name resumes it)")
    if "/" in t.name or t.name in (".", ".."):
        raise ConfigError(f"config key 'train.name': {t.name!r} must be a plain directory name")
    positive = ["epochs", "batch_size_per_worker", "gradient_accumulation_steps", "num_workers", "log_every"]
    for key in positive:
        if getattr(t, key) < 1:
            raise ConfigError(f"config key 'train.{key}' must be at least 1, got {getattr(t, key)}")
    for key in ("max_steps", "eval_every", "checkpoint_every", "num_to_keep", "max_target_length"):
        value = getattr(t, key)
        if value is not None and value < 1:
            raise ConfigError(f"config key 'train.{key}' must be at least 1 (or null), got {value}")
    if t.learning_rate <= 0:
        raise ConfigError(f"config key 'train.learning_rate' must be positive, got {t.learning_rate}")
    if not 0.0 <= t.eval_split < 1.0:
        raise ConfigError(f"config key 'train.eval_split' must be in [0, 1), got {t.eval_split}")
    if not 0.0 <= t.warmup_ratio <= 1.0:
        raise ConfigError(f"config key 'train.warmup_ratio' must be in [0, 1], got {t.warmup_ratio}")
    if t.warmup_steps < 0 or t.weight_decay < 0:
        raise ConfigError("config keys 'train.warmup_steps' and 'train.weight_decay' must not be negative")
    if t.max_grad_norm is not None and t.max_grad_norm <= 0:
        raise ConfigError(f"config key 'train.max_grad_norm' must be positive or null, got {t.max_grad_norm}")
    if t.cpus_per_worker < 0:
        raise ConfigError(f"config key 'train.cpus_per_worker' must not be negative, got {t.cpus_per_worker}")
    if t.max_failures < -1:
        raise ConfigError(f"config key 'train.max_failures' must be -1 (unlimited) or more, got {t.max_failures}")
    if t.loss_scale <= 0:
        raise ConfigError(f"config key 'train.loss_scale' must be positive, got {t.loss_scale}")
    if cfg.model.task == "embed" and t.gradient_accumulation_steps > 1:
        raise ConfigError(
            "config key 'train.gradient_accumulation_steps' must be 1 for model.task embed: in-batch negatives "
            "come from one forward pass, so accumulation would not enlarge them; raise batch_size_per_worker"
        )
    if t.strategy == "fsdp" and cfg.model.task == "generate" and t.eval_generate and t.num_workers > 1:
        raise ConfigError(
            "config key 'train.eval_generate' must be false with train.strategy fsdp: generation runs a different "
            "number of forward passes on each worker, which a sharded model cannot (eval_loss is still reported)"
        )
    if t.eval_path and t.eval_split:
        raise ConfigError("config keys 'train.eval_path' and 'train.eval_split' are exclusive: set one")
    if t.labels is not None:
        if not t.labels or len(set(map(str, t.labels))) != len(t.labels):
            raise ConfigError("config key 'train.labels' must be a non-empty list of distinct label names")
    if t.lora is not None:
        validate_lora(t.lora)
        if t.strategy == "fsdp":
            raise ConfigError("config key 'train.lora' is not supported with train.strategy fsdp (adapters are saved "
                              "from the unsharded model): use strategy ddp, which LoRA's small trainable state suits")
        if cfg.model.task in ("token-classify", "embed"):
            raise ConfigError(f"config key 'train.lora' is not supported for task {cfg.model.task!r} yet: train the "
                              "whole model (leave train.lora unset)")
    sft_keys = [k for k in ("prompt_column", "response_column", "messages_column", "chat_template") if getattr(t, k)]
    if (sft_keys or t.packing) and cfg.model.task != "generate":
        raise ConfigError(f"config key(s) 'train.{', train.'.join(sft_keys or ['packing'])}' are for model.task "
                          "generate on a decoder-only model (supervised fine-tuning)")
    if t.messages_column and (t.prompt_column or t.response_column):
        raise ConfigError("config key 'train.messages_column' excludes 'train.prompt_column' and "
                          "'train.response_column': rows are either conversations or prompt/response pairs")
    has_eval = bool(t.eval_path) or t.eval_split > 0
    if t.best_metric.startswith("eval_") and not has_eval:
        raise ConfigError(
            f"config key 'train.best_metric' is {t.best_metric!r} but there is no eval data: set "
            "train.eval_path or train.eval_split, or use best_metric: train_loss"
        )
    return cfg


def best_metric(cfg: TrainJobConfig) -> tuple[str, str]:
    """``(metric, order)`` that ranks checkpoints, with ``auto`` resolved."""
    from .metrics import metric_order

    t = cfg.train
    has_eval = bool(t.eval_path) or t.eval_split > 0
    name = t.best_metric if t.best_metric != "auto" else ("eval_loss" if has_eval else "train_loss")
    order = t.best_metric_order if t.best_metric_order != "auto" else metric_order(name)
    return name, order


def load_train_config(
    source: Union[str, Path, dict, TrainJobConfig, None] = None, overrides: Optional[list[str]] = None
) -> TrainJobConfig:
    """Build and validate a training config from a YAML path, a dict or a config, plus ``--set``."""
    if isinstance(source, TrainJobConfig):
        data = dataclasses.asdict(source)
    elif isinstance(source, dict):
        data = source
    elif source is None:
        data = {}
    else:
        data = load_yaml(source)
    data = deep_merge(data, parse_overrides(overrides))
    _numbers_from_strings(data.get("train"))
    return validate(build_dataclass(TrainJobConfig, data))


def _numbers_from_strings(section) -> None:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; accept it for the float keys of ``train``."""
    if not isinstance(section, dict):
        return
    floats = {f.name for f in dataclasses.fields(TrainConfig) if f.type in ("float", "Optional[float]")}
    for key in floats & set(section):
        value = section[key]
        if isinstance(value, str):
            try:
                section[key] = float(value)
            except ValueError:
                pass


def describe_train() -> list[str]:
    """Every accepted ``train.*`` key with its default and documentation (``describe`` walks the
    optional ``train.lora`` section itself)."""
    return describe(TrainConfig, "train.", {("train", key): values for key, values in _TRAIN_CHOICES.items()})


__all__ = [
    "ConfigError",
    "TrainConfig",
    "TrainJobConfig",
    "best_metric",
    "build_dataclass",
    "describe_train",
    "load_train_config",
    "validate",
]
