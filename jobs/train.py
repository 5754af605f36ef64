"""``rayformers train``: fine-tune a classifier or a seq2seq model on Parquet data with Ray Train.

    rayformers train CONFIG.yaml [--set train.num_workers=2 ...] [--json] [--describe]

Python API::

    from rayformers.jobs.train import train
    result = train("train.yaml", ["train.max_steps=100"])
    result.best_checkpoint, result.latest_checkpoint, result.metrics

What it supports: sequence classification (single-label, multi-label, regression; labels as
names or ids), seq2seq (BART/T5/EncoderDecoder families through ``AutoModelForSeq2SeqLM``,
ROUGE-L with ``generate`` at eval), supervised fine-tuning of decoder-only LMs (``generate`` on a
causal LM: prompt/response or messages rows, loss on the response, optional packing; see
:mod:`.sft_data`), LoRA adapters for any of them (``train.lora``, :mod:`.lora`), token
classification (word tags, entity-level F1 at eval) and embedding models
(MultipleNegativesRankingLoss, saved as sentence-transformers directories); Ray Train V2
``TorchTrainer`` with DDP or FSDP2 over N workers (gloo on CPU, NCCL on GPU), optional gradient
checkpointing; Parquet streamed and tokenized by Ray Data; eval/checkpoint schedules; the best N
checkpoints kept by a metric; resume after a worker failure (``FailureConfig``) and after a driver
crash (re-run the same command). What it does not: elastic worker counts, tensor or pipeline
parallelism, LoRA under FSDP, QLoRA, preference tuning (DPO), label smoothing, early stopping.

Exit codes (as ``rayformers run``): 0 success, 1 training failed, 2 bad config or data (nothing ran).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from rayformers.pipeline.locks import output_lock
from rayformers.pipeline.output_safety import UnsafeOutputError, check_disjoint, location
from rayformers.pipeline.runner import ensure_ray
from rayformers.pipeline.source import resolve_filesystem

from .checkpoints import latest_checkpoint, read_training_state, resolve_model_reference, run_directory
from .train_config import ConfigError, TrainJobConfig, best_metric, describe_train, load_train_config
from .train_data import DataError, PreparedData, Tokenization, make_data_config, prepare_data
from .train_loop import WorkerSpec, train_loop_per_worker

EXIT_OK, EXIT_FAILED, EXIT_BAD_CONFIG = 0, 1, 2


@dataclass
class TrainResult:
    """What a finished (or already complete) run left behind."""

    run_dir: str
    best_checkpoint: Optional[str]
    """Checkpoint directory that is best by ``best_metric`` (``<run_dir>@best``)."""
    latest_checkpoint: Optional[str]
    """Checkpoint directory of the last step (``<run_dir>@latest``)."""
    global_step: int
    best_metric: str
    metrics: dict = field(default_factory=dict)
    """Metrics reported with the latest checkpoint (train loss, eval metrics, ...)."""
    best_metrics: dict = field(default_factory=dict)
    log_history: list = field(default_factory=list)
    """Per-step training loss and learning rate, plus every evaluation (as trainer_state.json)."""
    data: list = field(default_factory=list)
    """Row counts per data role, with bad rows left out (``bad_rows: skip``)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lines = [
            f"run: {self.run_dir}",
            f"steps: {self.global_step}",
            f"latest checkpoint: {self.latest_checkpoint}",
            f"best checkpoint ({self.best_metric}): {self.best_checkpoint}",
        ]
        shown = {k: v for k, v in self.metrics.items() if k.startswith(("eval_", "train_loss"))}
        if shown:
            lines.append("final metrics: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                       for k, v in sorted(shown.items())))
        for d in self.data:
            if d.get("bad"):
                lines.append(f"{d['role']} data: {d['bad']} bad row(s) of {d['rows']} left out")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Pre-flight (driver).


def _absolute_if_local(path: str) -> str:
    return os.path.abspath(path) if path and os.path.exists(path) else path


def _resources_check(cfg: TrainJobConfig, total_cpus: float) -> None:
    """Training workers must leave room for the Ray Data read/tokenize tasks, or the run hangs."""
    t, c = cfg.train, cfg.compute
    reserved = t.num_workers * t.cpus_per_worker
    needed = c.io_num_cpus + c.tokenizer_num_cpus
    if reserved + needed > total_cpus + 1e-9:
        raise ConfigError(
            f"train.num_workers={t.num_workers} x train.cpus_per_worker={t.cpus_per_worker:g} reserve {reserved:g} of "
            f"the cluster's {total_cpus:g} CPUs, leaving less than compute.io_num_cpus + compute.tokenizer_num_cpus = "
            f"{needed:g} for the data pipeline, which would hang. Lower train.cpus_per_worker (a reservation; "
            "compute.torch_threads sets threads) or the workers."
        )


def _model_config(cfg: TrainJobConfig, model_path: str):
    import rayformers.models as models
    from rayformers.models.auto import AutoConfig

    kwargs: dict = {}
    if cfg.model.revision:
        kwargs["revision"] = cfg.model.revision
    if cfg.model.local_files_only:
        kwargs["local_files_only"] = True
    try:
        config = AutoConfig.from_pretrained(model_path, **kwargs)
    except Exception as e:  # noqa: BLE001 - any loading problem names the key to fix
        raise ConfigError(f"model.path {cfg.model.path!r}: cannot load the model config ({type(e).__name__}: {e})") from e
    auto = getattr(models, _auto_class_name(cfg, config))
    try:
        auto._model_class(config)
    except ValueError as e:
        raise ConfigError(f"model.task {cfg.model.task!r} is not available for model.path {cfg.model.path!r}: {e}") from e
    if cfg.train.lora is not None:
        _check_lora_targets(cfg, auto, config)
    return config


def _auto_class_name(cfg: TrainJobConfig, model_config) -> str:
    """generate: a causal LM for decoder-only checkpoints (SFT), else seq2seq; the other tasks as
    :data:`.train_loop.AUTO_CLASSES` says."""
    from rayformers.operators.loading import auto_class_name

    from .train_loop import AUTO_CLASSES

    if cfg.model.task == "generate":
        return auto_class_name("generate", model_config)
    return AUTO_CLASSES[cfg.model.task]


def _is_causal_lm(cfg: TrainJobConfig, model_config) -> bool:
    return _auto_class_name(cfg, model_config) == "AutoModelForCausalLM"


def _check_lora_targets(cfg: TrainJobConfig, auto, model_config) -> None:
    """``train.lora`` targets checked on a weightless copy of the model before any worker starts."""
    from rayformers.models.modeling_utils import init_empty_weights

    from .lora import LoraError, resolve_modules_to_save, target_module_names

    with init_empty_weights():
        model = auto._model_class(model_config)(model_config)
    try:
        target_module_names(model, cfg.train.lora, resolve_modules_to_save(model, cfg.train.lora, cfg.model.task))
    except LoraError as e:
        raise ConfigError(str(e)) from e


def _tokenizer_settings(cfg: TrainJobConfig, model_path: str, model_config) -> tuple[Tokenization, int]:
    from rayformers.operators.embedding_outputs import sentence_transformers_defaults
    from rayformers.operators.loading import load_tokenizer
    from rayformers.pipeline.preflight import PreflightError, resolve_max_length

    if cfg.tokenizer.truncation == "none":
        raise ConfigError("tokenizer.truncation none is not supported for training: rows must fit max_length")
    if cfg.tokenizer.overflow != "truncate":
        raise ConfigError(f"tokenizer.overflow {cfg.tokenizer.overflow} is for inference; training truncates rows "
                          "to max_length (leave overflow unset)")
    tok_path = _absolute_if_local(resolve_model_reference(cfg.tokenizer.path) if cfg.tokenizer.path else model_path)
    try:
        tokenizer = load_tokenizer(tok_path, cfg.model.revision, cfg.model.local_files_only)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"tokenizer {tok_path!r}: cannot load ({type(e).__name__}: {e})") from e
    st = sentence_transformers_defaults(model_path) if os.path.isdir(model_path) else {}
    try:
        max_length = resolve_max_length(cfg, tokenizer, model_config, st)
    except PreflightError as e:
        raise ConfigError(str(e)) from e
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(model_config, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None) or 0
    chat_template = _sft_chat_template(cfg, tokenizer) if _is_causal_lm(cfg, model_config) else None
    tok = Tokenization(
        tokenizer_path=tok_path,
        revision=cfg.model.revision,
        local_files_only=cfg.model.local_files_only,
        max_length=max_length,
        truncation=cfg.tokenizer.truncation,
        max_target_length=cfg.train.max_target_length,
        pass_token_type_ids="token_type_ids" in tuple(getattr(tokenizer, "model_input_names", ())),
        chat_template=chat_template,
    )
    return tok, int(pad)


def _sft_chat_template(cfg: TrainJobConfig, tokenizer) -> Optional[str]:
    """The template SFT rows are rendered with (None: plain prompt + response + EOS)."""
    from .sft_data import NO_TEMPLATE

    t = cfg.train
    if t.chat_template == NO_TEMPLATE:
        chosen = None
    elif t.chat_template:
        chosen = t.chat_template
    else:
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):
            own = own.get("default") or next(iter(own.values()), None)
        chosen = own or None
    if chosen is None and t.messages_column:
        raise ConfigError(f"train.messages_column {t.messages_column!r} needs a chat template, and the tokenizer has "
                          "none: set train.chat_template (a Jinja template) or use prompt/response columns")
    return chosen


def _metric_kind(cfg: TrainJobConfig, data: PreparedData) -> str:
    return {"generate": "seq2seq", "token-classify": "token_classification", "embed": "embedding"}.get(
        cfg.model.task, str(data.spec.problem_type))


def _worker_spec(cfg: TrainJobConfig, data: PreparedData, model_path: str, tok: Tokenization, pad: int,
                 on_step_end: Optional[Callable], causal_lm: bool = False) -> WorkerSpec:
    t = cfg.train
    plan = data.train
    metric, order = best_metric(cfg)
    has_eval = data.eval is not None
    eval_every = t.eval_every or plan.steps_per_epoch
    checkpoint_every = t.checkpoint_every or (eval_every if has_eval else plan.steps_per_epoch)
    warmup = t.warmup_steps or int(round(t.warmup_ratio * plan.total_steps))
    generation = cfg.task.generation.generate_kwargs()
    if cfg.model.task == "generate" and "max_new_tokens" not in generation and t.max_target_length:
        generation["max_new_tokens"] = t.max_target_length
    return WorkerSpec(
        task=cfg.model.task,
        model_path=model_path,
        tokenizer_path=tok.tokenizer_path,
        revision=cfg.model.revision,
        local_files_only=cfg.model.local_files_only,
        label_kwargs=data.spec.model_kwargs(),
        metric_kind=_metric_kind(cfg, data),
        num_labels=data.spec.num_outputs,
        ignore_mismatched_sizes=t.ignore_mismatched_sizes,
        pad_token_id=pad,
        batch_size=t.batch_size_per_worker,
        accumulation=t.gradient_accumulation_steps,
        world_size=t.num_workers,
        total_steps=plan.total_steps,
        steps_per_epoch=plan.steps_per_epoch,
        eval_every=eval_every,
        checkpoint_every=checkpoint_every,
        log_every=t.log_every,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        adam_epsilon=t.adam_epsilon,
        lr_scheduler=t.lr_scheduler,
        warmup_steps=warmup,
        max_grad_norm=t.max_grad_norm,
        bf16=t.bf16,
        seed=t.seed,
        has_eval=has_eval,
        eval_generate=t.eval_generate,
        generation_kwargs=generation,
        eval_batch_size=max(t.batch_size_per_worker, 32),
        best_metric=metric,
        best_metric_order=order,
        torch_threads=cfg.compute.torch_threads,
        data_fingerprint=data.fingerprint(),
        config_snapshot=cfg.to_dict(),
        on_step_end=on_step_end,
        causal_lm=causal_lm,
        lora=t.lora,
        pack_capacity=tok.max_length if (t.packing and causal_lm) else None,
        embedding=_embedding_settings(cfg, model_path, tok),
        strategy=t.strategy,
        fsdp_param_dtype=t.fsdp_param_dtype,
        gradient_checkpointing=t.gradient_checkpointing,
    )


def _embedding_settings(cfg: TrainJobConfig, model_path: str, tok: Tokenization):
    if cfg.model.task != "embed":
        return None
    from .embedding_training import resolve_settings

    t = cfg.train
    return resolve_settings(model_path, t.pooling, t.normalize, t.loss_scale, tok.max_length, bool(t.negative_column))


def _check_run_dir_apart_from_data(cfg: TrainJobConfig, run_dir: str) -> None:
    """The run directory (checkpoints Ray Train writes and prunes) never overlaps the training or
    evaluation data: a run inside its input would read its own checkpoints as rows."""
    t = cfg.train
    raw_inputs = []
    for paths in (cfg.input.path, t.eval_path):
        if paths:
            raw_inputs.extend(paths if isinstance(paths, list) else [paths])
    inputs = [location(*resolve_filesystem(raw, cfg.input.filesystem), shown=raw) for raw in raw_inputs]
    fs, path = resolve_filesystem(run_dir)
    try:
        check_disjoint(inputs, [("the run directory (train.storage_path/train.name)", location(fs, path, shown=run_dir))])
    except UnsafeOutputError as e:
        raise ConfigError(str(e)) from e


def _check_resumable(run_dir: str, fingerprint: str) -> Optional[int]:
    """The step a re-run resumes from (None: a new run); refuses a run made with another plan."""
    latest = latest_checkpoint(run_dir, committed_only=True)
    if latest is None:
        return None
    if latest.is_local:
        state = read_training_state(latest.path)
        if state.get("data_fingerprint") != fingerprint:
            raise ConfigError(
                f"run directory {run_dir} holds a run made with other data, labels, global batch size, seed or "
                "shuffle; resume it with its original config or choose a new train.name"
            )
    return latest.step


# ------------------------------------------------------------------------------------------------
# The job.


def train(
    config: Any,
    overrides: Optional[list[str]] = None,
    *,
    on_step_end: Optional[Callable[[int, int], None]] = None,
    verbose: bool = True,
) -> TrainResult:
    """Run (or resume) a fine-tuning job; returns the checkpoints and metrics.

    ``config`` is a YAML path, a dict or a :class:`TrainJobConfig`; ``overrides`` are ``--set``
    items. ``on_step_end(step, rank)`` runs in every worker after each optimizer step. Starts a
    local Ray instance when none is running. Raises :class:`ConfigError` / :class:`DataError`
    before any worker starts when the config or the data cannot work."""
    import ray

    cfg = load_train_config(config, overrides)
    t = cfg.train

    def say(message: str) -> None:
        if verbose:
            print(f"[rayformers train {time.strftime('%H:%M:%S')}] {message}", flush=True)

    ensure_ray({"address": os.environ.get("RAY_ADDRESS")})  # quiet console unless verbose, as `run`
    _resources_check(cfg, float(ray.cluster_resources().get("CPU", 0)))

    run_dir = run_directory(t.storage_path, t.name)
    _check_run_dir_apart_from_data(cfg, run_dir)
    run_fs, run_path = resolve_filesystem(run_dir)
    # One trainer per run directory: a second `rayformers train` of the same run is refused at
    # once instead of interleaving checkpoints with the first.
    with output_lock(run_fs, run_path, what="training run"):
        return _train_locked(cfg, run_dir, say, on_step_end)


def _train_locked(cfg: TrainJobConfig, run_dir: str, say, on_step_end) -> TrainResult:
    """The training job itself, under the run directory's lock."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = cfg.train
    model_path = _absolute_if_local(resolve_model_reference(cfg.model.path))
    model_config = _model_config(cfg, model_path)
    tok, pad = _tokenizer_settings(cfg, model_path, model_config)
    if not _is_causal_lm(cfg, model_config):
        sft = [k for k in ("prompt_column", "response_column", "messages_column", "chat_template", "packing")
               if getattr(t, k)]
        if sft and cfg.model.task == "generate":
            raise ConfigError(f"train.{', train.'.join(sft)} are for supervised fine-tuning of a decoder-only model; "
                              f"{cfg.model.path} is a seq2seq model (use input.text_column and train.target_column)")
    elif t.packing and not tok.max_length:
        raise ConfigError("train.packing needs a sequence length: set tokenizer.max_length")
    data = prepare_data(cfg, t.num_workers, getattr(model_config, "id2label", None),
                        causal_lm=_is_causal_lm(cfg, model_config))
    for report in data.reports:
        say(report.format())
    spec = _worker_spec(cfg, data, model_path, tok, pad, on_step_end, causal_lm=_is_causal_lm(cfg, model_config))

    resume_step = _check_resumable(run_dir, spec.data_fingerprint)
    if resume_step is not None:
        say(f"resuming run {run_dir} from step {resume_step}")
    say(
        f"{data.train.total_steps} steps ({data.train.steps_per_epoch}/epoch), global batch "
        f"{data.train.global_batch} = {t.batch_size_per_worker} x {t.num_workers} workers x "
        f"{t.gradient_accumulation_steps} accumulation; labels: "
        + (", ".join(map(str, data.spec.names[:10])) if data.spec.names else str(data.spec.problem_type or "seq2seq"))
    )

    resources = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = 1
    placeholder = ray.data.from_items([{"stream": "sharded by rayformers"}])
    datasets = {"train": placeholder}
    if data.eval is not None:
        datasets["eval"] = placeholder
    trainer = TorchTrainer(
        _entry,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=t.name,
            storage_path=t.storage_path if "://" in t.storage_path else os.path.abspath(t.storage_path),
            checkpoint_config=CheckpointConfig(
                num_to_keep=t.num_to_keep,
                checkpoint_score_attribute=spec.best_metric,
                checkpoint_score_order=spec.best_metric_order,
            ),
            failure_config=FailureConfig(max_failures=t.max_failures),
        ),
        datasets=datasets,
        dataset_config=make_data_config(data.train, data.eval, tok, cfg.compute, run_dir),
    )
    say(f"starting {t.num_workers} worker(s); run directory {run_dir}")
    trainer.fit()
    say("training finished")
    return collect_result(run_dir, spec.best_metric, data)


def _entry(config: dict) -> None:
    train_loop_per_worker(config["spec"])


def collect_result(run_dir: str, metric: str, data: Optional[PreparedData] = None) -> TrainResult:
    """The :class:`TrainResult` of a run directory (from its committed checkpoints)."""
    from .checkpoints import best_checkpoint, list_checkpoints

    checkpoints = list_checkpoints(run_dir)
    latest = checkpoints[-1] if checkpoints else None
    best = best_checkpoint(run_dir) if checkpoints else None
    history: list = []
    if latest is not None and latest.is_local:
        history = read_training_state(latest.path).get("log_history", [])
    return TrainResult(
        run_dir=run_dir,
        best_checkpoint=best.path if best else None,
        latest_checkpoint=latest.path if latest else None,
        global_step=latest.step if latest else 0,
        best_metric=metric,
        metrics=dict(latest.metrics) if latest else {},
        best_metrics=dict(best.metrics) if best else {},
        log_history=history,
        data=[r.to_dict() for r in data.reports] if data else [],
    )


# ------------------------------------------------------------------------------------------------
# CLI.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayformers train", description="Fine-tune a model with Ray Train.")
    parser.add_argument("config", nargs="?", help="training YAML file")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.num_workers=2 (repeatable; values parsed as YAML)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--describe", action="store_true", help="list every train.* key with its default")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.describe:
        print("\n".join(describe_train()))
        return EXIT_OK
    if not args.config:
        print("rayformers train: error: a config file is required (or --describe)", file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        result = train(args.config, args.set)
    except (ConfigError, DataError) as e:
        print(f"rayformers train: error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except Exception as e:  # noqa: BLE001 - Ray's TrainingFailedError and friends
        print(f"rayformers train: training failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(result.to_dict(), default=str) if args.json else result.format())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["TrainResult", "collect_result", "main", "train"]
