"""The per-worker training loop that Ray Train's ``TorchTrainer`` runs on every rank.

One function, :func:`train_loop_per_worker`, reading a plain :class:`WorkerSpec`. It knows
nothing of YAML or Parquet: batches arrive tokenized from ``get_dataset_shard("train")`` and are
only padded here. What it does, in order:

* build the model (``AutoModelFor…`` of the task, :data:`AUTO_CLASSES`, from the base checkpoint
  with the run's label space, or from ``ray.train.get_checkpoint()`` when resuming) and wrap it
  for DDP (gloo on CPU, NCCL on GPU) or shard it with FSDP2, optionally with gradient
  checkpointing (:mod:`.strategies`);
* AdamW (no decay on biases/LayerNorm), warmup + linear/cosine/constant schedule, gradient
  accumulation with ``no_sync``, global-norm clipping, optional bf16 autocast;
* loss normalisation that makes the result independent of the worker count: classification
  averages a fixed number of rows per step; seq2seq and token classification divide the summed
  token loss by the number of labelled tokens of the whole global batch (one all-reduce);
  embedding training gathers every worker's candidates (:mod:`.embedding_training`); so 1 worker
  and W workers compute the same gradient for the same rows;
* every collective on the worker's device (:mod:`.collectives`; NCCL takes only CUDA tensors),
  and no host synchronisation per micro-batch: batches are checked on the host before they are
  copied to the device, step losses stay on the device until the next logging step;
* evaluation sharded over workers with additive statistics (:mod:`.metrics`), its batches kept on
  the host and moved to the device one at a time;
* ``ray.train.report`` every ``log_every`` steps (metrics, with every worker's peak memory) and
  every checkpoint step (metrics + an HF-format or sentence-transformers checkpoint written by
  rank 0 from full state dicts, RNG state by every rank, see :mod:`.checkpoints`).

A resumed worker skips micro-batches older than its checkpoint (normally none: the data stream
is rebuilt to start at the checkpoint's step), and checks every batch carries the expected
micro-batch index, so a data/plan mismatch stops the run instead of silently training on the
wrong rows.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from . import checkpoints as ckpt
from . import strategies
from .collectives import all_reduce_sum
from .lora import LoraSettings, apply_lora, load_adapter_weights, merged_state_dict, save_adapter
from .metrics import MetricState, format_metrics
from .sft_data import PROMPT_LENGTH_COLUMN, causal_token_loss_sum, left_padded_prompts
from .train_data import MICRO_COLUMN, make_collate_fn


@dataclass
class WorkerSpec:
    """Everything a worker needs, as plain values (pickled to every rank)."""

    task: str
    model_path: str
    tokenizer_path: str
    revision: Optional[str]
    local_files_only: bool
    label_kwargs: dict
    metric_kind: str
    num_labels: int
    ignore_mismatched_sizes: bool
    pad_token_id: int
    batch_size: int
    accumulation: int
    world_size: int
    total_steps: int
    steps_per_epoch: int
    eval_every: int
    checkpoint_every: int
    log_every: int
    learning_rate: float
    weight_decay: float
    adam_epsilon: float
    lr_scheduler: str
    warmup_steps: int
    max_grad_norm: Optional[float]
    bf16: bool
    seed: int
    has_eval: bool
    eval_generate: bool
    generation_kwargs: dict
    eval_batch_size: int
    best_metric: str
    best_metric_order: str
    torch_threads: Optional[int]
    data_fingerprint: str
    config_snapshot: dict = field(default_factory=dict)
    embedding: Optional[Any] = None
    """embed: the :class:`~.embedding_training.EmbeddingSettings` (pooling, scale, ...)."""
    strategy: str = "ddp"
    """``ddp`` or ``fsdp`` (see :mod:`.strategies`)."""
    fsdp_param_dtype: str = "auto"
    gradient_checkpointing: bool = False
    on_step_end: Optional[Callable[[int, int], None]] = None
    """Called after every optimizer step as ``on_step_end(step, rank)``, before that step's
    evaluation and checkpoint (tests, custom logging)."""
    causal_lm: bool = False
    """``generate`` on a decoder-only model: supervised fine-tuning, next-token loss on the response."""
    lora: Optional[LoraSettings] = None
    """Train LoRA adapters (checkpoints are PEFT adapter directories); None: the whole model."""
    pack_capacity: Optional[int] = None
    """SFT packing: tokens per packed sequence (None: no packing)."""


# ------------------------------------------------------------------------------------------------
# Model, optimizer, schedule.


AUTO_CLASSES = {
    "classify": "AutoModelForSequenceClassification",
    "generate": "AutoModelForSeq2SeqLM",
    "token-classify": "AutoModelForTokenClassification",
    "embed": "AutoModel",
}
"""The model class each training task builds (``embed`` trains the bare encoder; ``generate`` on a
decoder-only checkpoint builds a causal LM instead, see :func:`auto_class`)."""

TOKEN_LEVEL_TASKS = ("generate", "token-classify")
"""Tasks whose loss is a mean over labelled tokens of the whole global batch."""


def auto_class(spec: WorkerSpec):
    import rayformers.models as models

    if spec.causal_lm:
        return models.AutoModelForCausalLM
    return getattr(models, AUTO_CLASSES[spec.task])


def load_model(spec: WorkerSpec, checkpoint_dir: Optional[str]):
    """The model to train: from a resumed checkpoint, or the base checkpoint with the run's labels.
    With LoRA: always the base checkpoint, adapters injected, then a resumed adapter's weights."""
    auto = auto_class(spec)
    if spec.lora is not None:
        model = _load_base(spec, auto)
        info = apply_lora(model, spec.lora, spec.task)
        _log(0, f"LoRA: {len(info['targets'])} adapted linear layers, trainable parameters {info['trainable']:,} of "
                f"{info['total']:,}" + (f"; trained in full: {', '.join(info['modules_to_save'])}"
                                         if info["modules_to_save"] else ""))
        if checkpoint_dir is not None:
            load_adapter_weights(model, checkpoint_dir)
        return model
    if checkpoint_dir is not None:
        model = auto.from_pretrained(checkpoint_dir, dtype=torch.float32)
        return model
    return _load_base(spec, auto)


def _load_base(spec: WorkerSpec, auto):
    """The base checkpoint with the run's label space (a new head initialised when it does not fit)."""
    kwargs: dict = {"dtype": torch.float32}
    if spec.revision:
        kwargs["revision"] = spec.revision
    if spec.local_files_only:
        kwargs["local_files_only"] = True
    if spec.task in ("classify", "token-classify"):
        kwargs.update(spec.label_kwargs)
        kwargs["ignore_mismatched_sizes"] = spec.ignore_mismatched_sizes
    model, info = auto.from_pretrained(spec.model_path, output_loading_info=True, **kwargs)
    if info.get("mismatched_keys"):
        shapes = ", ".join(f"{k} {a}->{b}" for k, a, b in info["mismatched_keys"])
        _log(0, f"new head: checkpoint weights with another shape re-initialised ({shapes})")
    if info.get("missing_keys"):
        _log(0, f"newly initialised weights: {', '.join(info['missing_keys'][:8])}"
                + (" ..." if len(info["missing_keys"]) > 8 else ""))
    return model


def make_optimizer(model: torch.nn.Module, spec: WorkerSpec) -> torch.optim.Optimizer:
    """AdamW; biases and normalisation weights (1-d parameters) are not decayed (as transformers)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": spec.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=spec.learning_rate, eps=spec.adam_epsilon)


def lr_lambda(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the peak learning rate after ``step`` scheduler steps (transformers' shapes)."""

    def fn(step: int) -> float:
        if warmup and step < warmup:
            return step / max(1, warmup)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
        return max(0.0, (total - step) / max(1, total - warmup))

    return fn


# ------------------------------------------------------------------------------------------------
# Loss.


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in (MICRO_COLUMN, PROMPT_LENGTH_COLUMN)}


def forward_inputs(spec: WorkerSpec, inputs: dict) -> dict:
    """What the model is called with: a causal LM without ``labels`` (the loop computes the loss
    itself; the model would compute a second, unused cross entropy), seq2seq with them (they
    give the decoder inputs), classification with them (the model's own loss is used)."""
    return {k: v for k, v in inputs.items() if k != "labels"} if spec.causal_lm else inputs


def loss_sum(spec: WorkerSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed token loss of a generate task: shifted next-token loss for a causal LM, else seq2seq's."""
    return causal_token_loss_sum(logits, labels) if spec.causal_lm else token_loss_sum(logits, labels)


def to_device(batch: dict, device: torch.device) -> dict:
    """A host batch's tensors on ``device`` (asynchronous from pinned memory on CUDA)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross entropy over target tokens (labels of -100 are ignored)."""
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )


# ------------------------------------------------------------------------------------------------
# Evaluation.


EVAL_CACHE_ROWS = 50_000
"""Eval shards up to this many rows per worker are kept in host memory after the first
evaluation, so later evaluations do not read and tokenize the eval data again."""


class EvalBatches:
    """This worker's eval batches, on ``device`` one at a time.

    ``source()`` yields host (CPU) batches: the first evaluation streams them (from Ray Data in a
    run), later ones replay a host-memory copy when the shard has at most
    :data:`EVAL_CACHE_ROWS` rows. The copy is never kept on the device: the eval set would
    otherwise hold GPU memory for the whole run, unbounded by anything but its size. Each batch
    moves to the device when it is used and is freed after."""

    def __init__(self, source: Callable[[], Any], device: torch.device, cache_rows: int = EVAL_CACHE_ROWS):
        self.source, self.device, self.cache_rows = source, torch.device(device), cache_rows
        self.cached: Optional[list] = None

    def __iter__(self):
        if self.cached is not None:
            for batch in self.cached:
                yield to_device(batch, self.device)
            return
        keep: Optional[list] = []
        rows = 0
        for batch in self.source():
            rows += batch["input_ids"].shape[0]
            if keep is not None and rows <= self.cache_rows:
                keep.append({k: v.cpu() for k, v in batch.items()})
            else:
                keep = None
            yield to_device(batch, self.device)
        self.cached = keep


def ray_eval_source(spec: WorkerSpec, device: torch.device) -> Callable[[], Any]:
    """This worker's eval shard as host batches (pinned for fast copies when training on CUDA)."""

    def source():
        import ray.train

        return ray.train.get_dataset_shard("eval").iter_torch_batches(
            batch_size=spec.eval_batch_size, collate_fn=make_collate_fn(spec.pad_token_id), device="cpu",
            pin_memory=torch.device(device).type == "cuda",
        )

    return source


def evaluate(model: torch.nn.Module, spec: WorkerSpec, tokenizer: Any, batches: EvalBatches,
             device: torch.device) -> dict:
    """Loss and task metrics over this worker's eval shard, summed over all workers."""
    state = MetricState(spec.metric_kind, spec.num_labels)
    id2label = spec.label_kwargs.get("id2label", {})
    was_training = model.training
    model.eval()
    autocast = _autocast(spec, device)
    with torch.no_grad():
        for item in _in_lockstep(batches, model, device):
            if item is None:
                _idle_forward(model, spec, device)
                continue
            batch, inputs = item
            if spec.task == "embed":
                from .embedding_training import eval_statistics

                rows = inputs["input_ids"].shape[0] // spec.embedding.roles
                with autocast:
                    ranking_loss, correct = eval_statistics(model, inputs, spec.embedding, rows)
                state.add_loss(ranking_loss, rows)
                state.add_retrieval(correct, rows)
                continue
            with autocast:
                out = model(**forward_inputs(spec, inputs))
            labels = inputs["labels"]
            if spec.task == "token-classify":
                tokens = int((labels != -100).sum())
                state.add_loss(float(token_loss_sum(out.logits, labels)), tokens)
                state.add_tagging(out.logits, labels, id2label)
            elif spec.task == "generate":
                tokens = int((labels[:, 1:] != -100).sum()) if spec.causal_lm else int((labels != -100).sum())
                state.add_loss(float(loss_sum(spec, out.logits, labels)), tokens)
                if spec.eval_generate:
                    if spec.causal_lm:  # continue each prompt alone; keep only the new tokens
                        prompt_ids, prompt_mask = left_padded_prompts(inputs["input_ids"], batch[PROMPT_LENGTH_COLUMN],
                                                                      spec.pad_token_id)
                        generated = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                                   pad_token_id=spec.pad_token_id, **spec.generation_kwargs)
                        generated = generated[:, prompt_ids.shape[1]:]
                    else:
                        generated = model.generate(
                            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            **spec.generation_kwargs
                        )
                    predictions = tokenizer.batch_decode(generated.tolist(), skip_special_tokens=True)
                    references = tokenizer.batch_decode(
                        [[t for t in row if t != -100] for row in labels.tolist()], skip_special_tokens=True
                    )
                    state.add_generations(predictions, references)
                else:
                    state.head[2] += labels.shape[0]
            else:
                n = labels.shape[0]
                state.add_loss(float(out.loss) * n, n)
                state.add_classification(out.logits, labels)
    state.all_reduce(device)
    if was_training:
        model.train()
    return state.totals("eval_")


def _in_lockstep(batches, model: torch.nn.Module, device: torch.device):
    """This worker's eval batches with their model inputs, ``(batch, inputs)``; under FSDP also
    ``None`` while other workers still have batches.

    A sharded model's forward is a collective (each layer all-gathers its parameters), so every
    worker must run the same number of forwards, but eval shards may differ by a batch. Before
    each batch the workers count who still has one (one all-reduce); a worker that has run out
    runs an idle forward (:func:`_idle_forward`) until all have."""
    if not strategies.is_sharded(model):
        for batch in batches:
            yield batch, _model_inputs(batch)
        return
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        active = all_reduce_sum(torch.tensor(0.0 if batch is None else 1.0), device)
        if float(active) == 0:
            return
        yield None if batch is None else (batch, _model_inputs(batch))


def _idle_forward(model: torch.nn.Module, spec: WorkerSpec, device: torch.device) -> None:
    """A one-token forward whose output is discarded (keeps FSDP's collectives in step)."""
    ids = torch.full((1, 1), int(spec.pad_token_id), dtype=torch.long, device=device)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if spec.task == "generate":
        kwargs["labels"] = torch.full((1, 1), -100, dtype=torch.long, device=device)
    model(**kwargs)


def _autocast(spec: WorkerSpec, device: torch.device):
    if not spec.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# ------------------------------------------------------------------------------------------------
# The loop.


def _log(rank: int, message: str) -> None:
    if rank == 0:
        print(f"[rayformers train {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _schedule_hits(step: int, every: int, total: int) -> bool:
    return step == total or (every > 0 and step % every == 0)


def train_loop_per_worker(spec: WorkerSpec) -> None:
    """Ray Train entry point (``TorchTrainer(train_loop_per_worker, train_loop_config=spec)``)."""
    import ray.train
    import ray.train.torch

    from rayformers.models import AutoTokenizer

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if spec.torch_threads:
        torch.set_num_threads(int(spec.torch_threads))
    device = ray.train.torch.get_device()
    torch.manual_seed(spec.seed)  # the same new head on every rank (DDP also broadcasts rank 0's)

    checkpoint = ray.train.get_checkpoint()
    resume_dir = None
    state: dict = {}
    checkpoint_ctx = checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext()
    with checkpoint_ctx as resume_dir:
        model = load_model(spec, resume_dir)
        model.to(device)
        model.train()
        wrapped = _wrap_model(model, spec, device, world, rank)
        optimizer = make_optimizer(model, spec)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(spec.lr_scheduler, spec.warmup_steps, spec.total_steps)
        )
        if resume_dir is not None:
            sharded = strategies.is_sharded(model)
            state = ckpt.load_training_state(resume_dir, rank=rank, optimizer=None if sharded else optimizer,
                                             scheduler=scheduler)
            if sharded:
                strategies.load_full_optimizer_state(model, optimizer, ckpt.load_optimizer_file(resume_dir))
            if state.get("data_fingerprint") != spec.data_fingerprint:
                raise RuntimeError(
                    f"checkpoint {resume_dir} was written with another data plan or batch configuration; "
                    "resume it with the original config or start a new run (train.name)"
                )
    tokenizer = AutoTokenizer.from_pretrained(
        spec.tokenizer_path, revision=spec.revision, local_files_only=spec.local_files_only
    )

    step = int(state.get("global_step", 0))
    log_history: list = list(state.get("log_history", []))
    if step >= spec.total_steps:
        _log(rank, f"run already complete at step {step}")
        return
    if resume_dir is not None:
        _log(rank, f"resuming from step {step} ({resume_dir})")
        log_history.append({"step": step, "resumed_from_step": step})
    else:
        _log(rank, f"starting: {spec.total_steps} steps")

    ddp_model = wrapped
    unwrapped = model
    autocast = _autocast(spec, device)
    shard = ray.train.get_dataset_shard("train")
    # Batches arrive on the host: the micro-batch index is checked there (on the device every
    # check would be a host synchronisation), then the model inputs are copied to the device.
    batches = shard.iter_torch_batches(
        batch_size=spec.batch_size, collate_fn=make_collate_fn(spec.pad_token_id, spec.pack_capacity), device="cpu",
        prefetch_batches=2,
        pin_memory=device.type == "cuda",
    )

    eval_batches = EvalBatches(ray_eval_source(spec, device), device)
    pending: list = []
    unlogged = StepLosses()
    window_rows = 0
    window_start = time.perf_counter()
    last_eval: dict = {}
    timed = _TimedIterator(batches)
    waited_before = 0.0
    for batch in timed:
        micro = batch[MICRO_COLUMN]
        first = int(micro[0])
        if first < step * spec.accumulation:
            continue  # consumed before the checkpoint we resumed from
        expected = step * spec.accumulation + len(pending)
        if first != expected or int(micro[-1]) != expected or micro.shape[0] != spec.batch_size:
            raise RuntimeError(
                f"rank {rank}: data stream out of step: got micro-batch {first}..{int(micro[-1])} of "
                f"{micro.shape[0]} rows, expected micro-batch {expected} of {spec.batch_size} rows"
            )
        pending.append(to_device(_model_inputs(batch), device))
        if len(pending) < spec.accumulation:
            continue

        step_loss = _optimizer_step(ddp_model, unwrapped, optimizer, scheduler, pending, spec, autocast, world, device)
        pending = []
        step += 1
        unlogged.add(step, step_loss, scheduler.get_last_lr()[0])
        window_rows += spec.batch_size * spec.accumulation * world
        if spec.on_step_end is not None:
            spec.on_step_end(step, rank)

        do_eval = spec.has_eval and _schedule_hits(step, spec.eval_every, spec.total_steps)
        do_checkpoint = _schedule_hits(step, spec.checkpoint_every, spec.total_steps)
        do_eval = do_eval or (do_checkpoint and spec.has_eval)
        do_log = do_checkpoint or do_eval or step % spec.log_every == 0
        if not do_log:
            continue
        step_entries = unlogged.read()  # the window's one host synchronisation
        log_history.extend(step_entries)
        elapsed = max(time.perf_counter() - window_start, 1e-9)
        metrics = {
            "step": step,
            "epoch": step / max(1, spec.steps_per_epoch),
            "train_loss": sum(e["loss"] for e in step_entries) / max(1, len(step_entries)),
            "learning_rate": scheduler.get_last_lr()[0],
            "samples_per_s": window_rows / elapsed,
            "data_wait_fraction": min(1.0, (timed.waited - waited_before) / elapsed),
        }
        metrics.update(_memory_per_worker(device, rank, world))
        log_history.append({k: metrics[k] for k in ("step", "samples_per_s", "data_wait_fraction", "peak_rss_mb")})
        if do_eval:
            last_eval = evaluate(unwrapped, spec, tokenizer, eval_batches, device)
            log_history.append({"step": step, **last_eval})
        metrics.update(last_eval)
        _log(rank, f"step {step}/{spec.total_steps} " + format_metrics(metrics, [k for k in metrics if k != "step"]))
        if do_checkpoint:
            _report_with_checkpoint(unwrapped, tokenizer, optimizer, scheduler, spec, rank, step, metrics, log_history)
        else:
            ray.train.report(metrics)
        window_rows = 0
        waited_before = timed.waited
        window_start = time.perf_counter()
        if step >= spec.total_steps:
            break
    if step < spec.total_steps:
        raise RuntimeError(
            f"rank {rank}: the training data ended at step {step} of {spec.total_steps}; the data plan and the "
            "stream disagree (were input files modified during the run?)"
        )


class _TimedIterator:
    """Counts the seconds the loop waits for its next batch (``data_wait_fraction`` in the
    metrics: near 0 means the data pipeline keeps up; near 1 means training is input-bound)."""

    def __init__(self, iterable):
        self.iterator = iter(iterable)
        self.waited = 0.0

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            return next(self.iterator)
        finally:
            self.waited += time.perf_counter() - start


class StepLosses:
    """Per-step losses kept on the device until the next logging step.

    Reading a device tensor (``float``, ``.item()``) waits for the GPU to finish all queued work;
    doing it per micro-batch or per step starves the GPU. The loop adds each step's loss tensor
    here and :meth:`read` copies all of them to the host at once, one synchronisation per
    logging window."""

    def __init__(self):
        self.entries: list = []

    def add(self, step: int, loss: torch.Tensor, learning_rate: float) -> None:
        self.entries.append((step, loss.detach(), learning_rate))

    def read(self) -> list:
        """``{"step", "loss", "learning_rate"}`` of every step since the last read."""
        if not self.entries:
            return []
        losses = torch.stack([loss for _, loss, _ in self.entries]).tolist()
        out = [{"step": s, "loss": loss, "learning_rate": lr} for (s, _, lr), loss in zip(self.entries, losses)]
        self.entries = []
        return out


def _wrap_model(model: torch.nn.Module, spec: WorkerSpec, device: torch.device, world: int, rank: int,
                make_ddp: Optional[Callable] = None):
    """Gradient checkpointing, then DDP or FSDP2 (:mod:`.strategies`); returns the module the
    loop calls (FSDP2 shards ``model`` in place, so it is that same module). ``make_ddp``: the
    DDP wrapper (default Ray Train's ``prepare_model``; a plain process group passes
    ``DistributedDataParallel``)."""
    if spec.task == "embed":
        from .embedding_training import freeze_unused_heads

        freeze_unused_heads(model)
    if spec.gradient_checkpointing:
        layers = strategies.enable_gradient_checkpointing(model)
        _log(rank, f"gradient checkpointing on {layers} layers")
    if spec.strategy == "fsdp" and world > 1:
        dtype = strategies.fsdp_param_dtype(spec.fsdp_param_dtype, device)
        layers = strategies.shard_model(model, dtype)
        _log(rank, f"FSDP2: {layers} layers + root sharded over {world} workers, compute in {dtype}, "
                   "gradients reduced in float32")
        return model
    if world > 1:
        if make_ddp is not None:
            return make_ddp(model)
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=False)
    return model


def _memory_per_worker(device: torch.device, rank: int, world: int) -> dict:
    """``peak_rss_mb`` (the largest of the workers) and ``peak_rss_mb_per_worker`` (rank order),
    plus the CUDA allocator's peak when on a GPU; one all-reduce."""
    own = strategies.memory_metrics(device)
    keys = sorted(own)
    table = torch.zeros(len(keys), world, dtype=torch.float64)
    table[:, rank] = torch.tensor([float(own[k]) for k in keys], dtype=torch.float64)
    table = all_reduce_sum(table, device).cpu()
    out: dict = {}
    for i, key in enumerate(keys):
        values = [round(v, 1) for v in table[i].tolist()]
        out[key] = max(values)
        out[f"{key}_per_worker"] = values
    return out


def _optimizer_step(ddp_model, model, optimizer, scheduler, micro_batches, spec, autocast, world,
                    device: torch.device) -> torch.Tensor:
    """Forward/backward over the accumulated micro-batches, then one optimizer step; returns the
    step's loss averaged over the whole global batch (all workers) as a 0-d tensor on ``device``.

    Nothing here reads a device value on the host: the target-token count, the loss total and
    their all-reduces stay on the device (see :class:`StepLosses`)."""
    seq2seq = spec.task in TOKEN_LEVEL_TASKS
    if seq2seq:
        targets = [mb["labels"][:, 1:] if spec.causal_lm else mb["labels"] for mb in micro_batches]
        tokens = sum((t != -100).sum() for t in targets).float()
        global_tokens = all_reduce_sum(tokens, device).clamp(min=1.0)
    loss_total = torch.zeros((), dtype=torch.float64, device=device)
    for i, mb in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = strategies.gradient_sync(ddp_model, last or world == 1)
        with sync:
            if spec.task == "embed":
                from .embedding_training import step_loss

                with autocast:
                    embed_loss = step_loss(ddp_model, mb, spec.embedding, spec.batch_size, device).float()
                loss = embed_loss / len(micro_batches)
                loss_total += loss.detach().double() / world
                loss.backward()
                continue
            with autocast:
                out = ddp_model(**forward_inputs(spec, mb))
            if seq2seq:
                summed = loss_sum(spec, out.logits, mb["labels"])
                loss = summed * world / global_tokens
                loss_total += summed.detach().double() / global_tokens
            else:
                loss = out.loss.float() / len(micro_batches)
                loss_total += loss.detach().double() / world
            loss.backward()
    if spec.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(ddp_model.parameters(), spec.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return all_reduce_sum(loss_total, device)


def save_checkpoint_files(directory: str, model, tokenizer, spec: WorkerSpec, state_dict: Optional[dict] = None) -> None:
    """The model part of a checkpoint: the HF-format model (``state_dict``: the full weights gathered
    from FSDP shards), or with LoRA a PEFT adapter directory (plus ``merged/``, the full merged
    model, with ``train.lora.merge``); tokenizer files either way."""
    if spec.lora is None:
        ckpt.save_model_checkpoint(directory, model, tokenizer, state_dict=state_dict)
        return
    task_type = "CAUSAL_LM" if spec.causal_lm else ("SEQ_CLS" if spec.task == "classify" else "SEQ_2_SEQ_LM")
    save_adapter(directory, model, spec.model_path, task_type)
    tokenizer.save_pretrained(directory)
    if spec.lora.merge:
        merged = f"{directory}/merged"
        model.save_pretrained(merged, state_dict=merged_state_dict(model))
        tokenizer.save_pretrained(merged)


def _report_with_checkpoint(model, tokenizer, optimizer, scheduler, spec, rank, step, metrics, log_history):
    import ray.train

    state = {
        "global_step": step,
        "total_steps": spec.total_steps,
        "epoch": step / max(1, spec.steps_per_epoch),
        "metrics": metrics,
        "best_metric": spec.best_metric,
        "best_metric_order": spec.best_metric_order,
        "world_size": spec.world_size,
        "global_batch_size": spec.batch_size * spec.world_size * spec.accumulation,
        "data_fingerprint": spec.data_fingerprint,
        "log_history": log_history,
        "config": spec.config_snapshot,
    }
    # Under FSDP every rank takes part in gathering the full state to rank 0.
    model_state = strategies.full_model_state(model)
    optimizer_state = strategies.full_optimizer_state(model, optimizer)
    with tempfile.TemporaryDirectory(prefix="rayformers-ckpt-") as tmp:
        if rank == 0:
            if spec.task == "embed":
                from .embedding_training import save_sentence_transformers

                save_sentence_transformers(tmp, model, tokenizer, spec.embedding, state_dict=model_state)
            else:
                save_checkpoint_files(tmp, model, tokenizer, spec, state_dict=model_state)
            strategies.fix_saved_architecture(tmp, model)
        ckpt.save_training_state(
            tmp, state, rank=rank, optimizer=optimizer if rank == 0 else None, scheduler=scheduler if rank == 0 else None,
            optimizer_state=optimizer_state,
        )
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=ckpt.checkpoint_dir_name(step),
        )


__all__ = ["WorkerSpec", "evaluate", "lr_lambda", "make_optimizer", "train_loop_per_worker"]
