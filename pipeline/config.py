"""Typed job configuration: dataclasses loaded from YAML, overridable with ``--set key.sub=value``.

Why dataclasses and not a free dict: every key a user can write is declared once here, with its
default and a docstring, so a typo (``model.pth``) fails before any work starts with a message
naming the key and the keys that *are* accepted. The ``input``, ``model``, ``tokenizer`` and
``compute`` sections are shared with the training and ETL jobs (``rayformers.jobs``): import them
from here rather than redefining them.

Loading is strict: unknown keys, wrong types and values outside a fixed set of choices raise
:class:`ConfigError`. Values given with ``--set`` are parsed as YAML scalars (``3`` is an int,
``true`` a bool, ``[a, b]`` a list, ``null`` None).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from rayformers.models.custom_head_config import HEAD_TYPES
from rayformers.models.custom_head_config import POOLINGS as HEAD_POOLINGS
from rayformers.operators.tokenize import OVERFLOWS

TASKS = ("classify", "token-classify", "generate", "embed", "zero-shot-classify", "sparse-embed", "rerank")
DTYPES = ("float32", "bfloat16", "float16", "auto")
OUTPUT_MODES = ("error-if-exists", "overwrite", "resume")
POOLINGS = ("auto", "mean", "cls", "max", "lasttoken")
AGGREGATIONS = ("none", "simple", "first", "average", "max")
FUNCTIONS = ("auto", "softmax", "sigmoid", "none")
TRUNCATIONS = ("longest_first", "only_first", "only_second", "none")
CHUNK_AGGREGATES = ("mean", "max", "none")
CHUNK_TASKS = ("classify", "embed", "token-classify")
"""Tasks that can score a long row as overlapping windows (``tokenizer.overflow: chunk``)."""


logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A job configuration that cannot run; the message names the offending key."""


@dataclass
class FilesystemConfig:
    """Which pyarrow filesystem reads (or writes) a path; ``auto`` infers it from the URI."""

    kind: str = "auto"
    """``auto`` (from the path: ``s3://``, ``gs://``, ``hdfs://``, else local), ``local``, ``s3``,
    ``gcs`` or ``hdfs``."""
    options: dict = field(default_factory=dict)
    """Keyword arguments for the pyarrow filesystem class (e.g. ``region``, ``endpoint_override``,
    ``anonymous`` for S3). Never put secrets in a config you commit; use the environment."""


@dataclass
class InputConfig:
    """Where the rows come from and which columns matter."""

    path: Union[str, list] = ""
    """Parquet file, directory (read recursively), glob (``data/*.parquet``) or a list of them;
    local or any pyarrow URI (``s3://bucket/prefix``)."""
    format: str = "parquet"
    """Input format. Only ``parquet`` is supported."""
    text_column: str = "text"
    """Column holding the text to score."""
    text_pair_column: Optional[str] = None
    """Optional second text column (cross-encoders, NLI): tokenized as a pair with ``text_column``."""
    id_column: Optional[str] = None
    """Column with a unique row id. If unset, a stable id ``<file>:<row>`` is generated from the
    input file's relative path and the row's position in it (the same on every run, so a resumed
    or re-run output has the same ids)."""
    passthrough_columns: Union[str, list] = field(default_factory=list)
    """Input columns copied unchanged to the output (hive partition keys allowed), or ``"*"``: every
    column of the input (the text columns included), in the input's order, with the prediction
    columns appended. A kept input column with the name of a column the job writes is refused
    before any row is read."""
    partitioning: Optional[str] = "hive"
    """Partitioning scheme of directory inputs (``hive`` reads ``key=value`` folders as columns);
    ``null`` for none."""
    filesystem: FilesystemConfig = field(default_factory=FilesystemConfig)
    """Filesystem for reading the input."""
    check_unique_ids: bool = True
    """With ``id_column``: check before the run that ids are unique (reads that one column). Up
    to ``unique_ids_driver_rows`` rows the driver counts them in memory; above, a Ray Data
    ``groupby(id).count()`` does it across the cluster, so driver memory does not grow with rows."""
    unique_ids_driver_rows: int = 5_000_000
    """Largest input whose id check runs in driver memory (~100 bytes per id)."""
    source_language: Optional[str] = None
    """Translation tokenizers with language codes (NLLB ``eng_Latn``, mBART ``en_XX``, M2M100
    ``en``): the language of ``text_column``; its language token is added to every row."""
    source_language_column: Optional[str] = None
    """Like ``source_language``, per row: a column holding each row's language code (rows are
    tokenized in groups of one language; a null or unknown code is an error record for that row)."""


@dataclass
class HeadConfig:
    """A classifier head saved outside transformers (``PyTorchModelHubMixin`` style: a backbone, a
    dropout and one Linear; NVIDIA's quality/domain classifiers), mapped onto our backbones without
    running the checkpoint's code. ``model.task`` classify only."""

    type: str = "linear"
    """The head's kind: ``linear`` (one Linear layer on the pooled backbone output; dropout is the
    identity at inference)."""
    weights: str = "fc"
    """State-dict prefix of the Linear layer (``fc`` for ``fc.weight``/``fc.bias``, the module's
    ``self.fc``)."""
    backbone_prefix: str = "model."
    """State-dict prefix of the backbone's weights (``model.`` for the module's ``self.model``)."""
    pooling: str = "cls"
    """What the Linear reads: ``cls``, the first token's last hidden state
    (``last_hidden_state[:, 0, :]``, as NVIDIA's classifiers' ``forward``), or ``mean``, the mean
    of the attended tokens' last hidden states."""
    backbone_config: Optional[str] = None
    """Directory or Hub id holding the backbone's ``config.json`` (e.g. ``microsoft/deberta-v3-base``).
    Default: the checkpoint's ``config.json`` when it has a ``model_type``, else its ``base_model``."""


@dataclass
class ModelConfig:
    """Which checkpoint runs, for which task, in which precision."""

    path: str = ""
    """Local checkpoint directory or Hugging Face Hub id (resolved offline from the cache when
    ``HF_HUB_OFFLINE=1``)."""
    task: str = "classify"
    """``classify``, ``token-classify``, ``generate``, ``embed``, ``zero-shot-classify`` (an NLI
    checkpoint scoring ``task.candidate_labels``), ``sparse-embed`` (a SPLADE-style masked-LM
    checkpoint) or ``rerank`` (a relevance ``score`` per (``input.text_column``,
    ``input.text_pair_column``) pair: a cross-encoder, or a causal LM answering yes/no, Qwen3-Reranker
    style); picks the Auto class. The checkpoint must have the task's head (see
    ``allow_new_head``)."""
    dtype: Optional[str] = None
    """``float32``, ``bfloat16``, ``float16`` (GPU only) or ``auto``: bfloat16 on GPUs and CPUs that
    compute it natively, float16 on older GPUs (float32 for T5-family models, which overflow it),
    float32 elsewhere (``operators.loading.auto_dtype_name``). Default (unset): ``auto`` when the
    model actors have a GPU (float32 left there computes on TF32 tensor cores), ``float32`` on CPU.
    The dtype a job used is in its report and manifest (``model_dtype``)."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) when ``path`` is a Hub id."""
    local_files_only: bool = False
    """Never contact the Hub; resolve Hub ids from the local cache only."""
    quantization: str = "none"
    """``none`` or ``int8-dynamic`` (CPU actors, float32: the Linear layers in int8 with a scale
    per weight output channel and per activation row, the task head float32; docs/int8.md). Before the job, a sample of its own rows is scored both ways and the agreement
    (same label / cosine / same text) goes into the report; below ``min_agreement`` the job does
    not start."""
    min_agreement: float = 0.95
    """With ``quantization``: the least agreement with float32 on the sample that lets the job run."""
    agreement_rows: int = 256
    """With ``quantization``: rows of the input scored both ways for the agreement check."""
    adapter: Optional[str] = None
    """A PEFT LoRA adapter (directory or Hub id with ``adapter_config.json``) merged into the
    weights of ``model.path`` once per model actor, for every task; the tokenizer still comes from
    ``model.path`` (or ``tokenizer.path``). Checked before the job starts (exists, is a LoRA
    adapter that can be merged exactly)."""
    allow_new_head: bool = False
    """Run a checkpoint that lacks the task's head (classifier, LM / masked-LM head, ...) with that
    head initialised at random, instead of refusing the job. Random head, for tests/debugging only:
    every prediction is noise. Inference only: ``rayformers train`` always starts a new head."""
    head: Optional[HeadConfig] = None
    """A classifier head the checkpoint defines itself (custom ``architectures`` such as
    ``QualityModel``, a ``config.json`` without ``model_type``): where its Linear and backbone
    weights are, see the ``model.head.*`` keys. Labels come from the checkpoint's ``id2label``."""


@dataclass
class TokenizerConfig:
    """How texts become token ids."""

    path: Optional[str] = None
    """Tokenizer location; defaults to ``model.path``."""
    max_length: Optional[int] = None
    """Token limit per row including special tokens. Default: the sentence-transformers
    ``max_seq_length`` when the checkpoint has one, else the tokenizer's ``model_max_length``,
    capped by the model's ``max_position_embeddings``. A value above the positions the model has
    is refused (never cut silently); the limit used is in the manifest (``max_length``)."""
    truncation: str = "longest_first"
    """``longest_first``, ``only_first``, ``only_second`` or ``none`` (a synonym of
    ``overflow: error``: rows longer than ``max_length`` become error records instead of being cut)."""
    overflow: str = "truncate"
    """What a row longer than ``max_length`` becomes: ``truncate`` (cut per ``truncation``),
    ``error`` (an error record naming its token count) or ``chunk`` (classify, embed,
    token-classify: scored as windows of ``max_length`` tokens overlapping by ``stride``, the
    window results merged per row by ``task.chunk_aggregate``)."""
    stride: Optional[int] = None
    """With ``overflow: chunk``: tokens each window repeats from the end of the previous one
    (transformers' ``stride``). Default: ``max_length // 8``, so a token cut at a window's edge
    still sees some context in the next; must be below ``max_length`` minus the special tokens."""


@dataclass
class GenerationSettings:
    """Settings passed to ``generate`` (unset ones come from the checkpoint's generation config)."""

    max_new_tokens: Optional[int] = None
    """Maximum number of generated tokens per row."""
    min_new_tokens: Optional[int] = None
    """Minimum number of generated tokens per row."""
    num_beams: Optional[int] = None
    """Beam width (1 = greedy)."""
    do_sample: Optional[bool] = None
    """Sample instead of greedy/beam search."""
    temperature: Optional[float] = None
    """Sampling temperature."""
    top_k: Optional[int] = None
    """Sampling: keep the k most likely tokens."""
    top_p: Optional[float] = None
    """Sampling: nucleus probability mass."""
    length_penalty: Optional[float] = None
    """Beam search length penalty."""
    no_repeat_ngram_size: Optional[int] = None
    """Forbid repeating n-grams of this size."""
    repetition_penalty: Optional[float] = None
    """Penalty for repeated tokens."""
    early_stopping: Optional[Union[bool, str]] = None
    """Beam search stopping rule (``true``, ``false`` or ``never``)."""
    stop: list = field(default_factory=list)
    """Stop sequences: a row's ``generated_text`` is cut before the first of these strings that its
    continuation contains, and its ``finish_reason`` is ``stop``."""
    max_batch_size: int = 128
    """Continuous batching: rows decoded at once per model actor (their source tokens are also
    capped by ``compute.max_tokens_per_batch``). A decoder step is small matrix products, which
    run faster per row with more rows: distilbart-shaped BART, 128 rows x 32 new tokens on 2 CPUs,
    16 rows at once 14.4 s, 64 10.5-11.1 s, 128 10.1-10.3 s."""

    def generate_kwargs(self) -> dict:
        """The settings that were set, as ``generate`` keyword arguments."""
        skip = {"max_batch_size", "stop"}
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in skip and getattr(self, f.name) is not None
        }


@dataclass
class TaskConfig:
    """Task-specific post-processing."""

    top_k: int = 1
    """classify: also return the k best labels and scores (``top_k_labels``/``top_k_scores``)."""
    function_to_apply: str = "auto"
    """classify: ``softmax``, ``sigmoid``, ``none`` or ``auto`` (as transformers' pipeline:
    regression → none, multi-label or one logit → sigmoid, else softmax)."""
    threshold: float = 0.5
    """classify, multi-label: labels whose sigmoid score is at least this go to ``labels``."""
    pooling: str = "auto"
    """embed: ``mean``, ``cls``, ``max``, ``lasttoken`` (the last non-padding token: decoder embedders
    such as Qwen3-Embedding) or ``auto`` (the checkpoint's sentence-transformers pooling config,
    else, as sentence-transformers, ``lasttoken`` for a checkpoint made as a causal LM and ``mean``
    for any other)."""
    normalize: Optional[bool] = None
    """embed: L2-normalise embeddings; default from the checkpoint's sentence-transformers
    ``modules.json`` (a Normalize module), else false."""
    aggregation_strategy: str = "simple"
    """token-classify: ``none``, ``simple``, ``first``, ``average`` or ``max`` (as transformers)."""
    ignore_labels: list = field(default_factory=lambda: ["O"])
    """token-classify: entity labels left out of the output."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    """generate: decoding settings."""
    chunk_aggregate: str = "mean"
    """With ``tokenizer.overflow: chunk``, how a long row's windows become one result. embed:
    ``mean`` (of the pooled window vectors, weighted by each window's tokens), ``max``
    (element-wise), or ``none`` (one output row per window, with ``chunk_index``,
    ``chunk_start``, ``chunk_end``); classify: ``mean`` or ``max`` of the window logits before
    softmax/sigmoid. token-classify merges entities as transformers' pipeline with ``stride``."""
    truncate_dim: Optional[int] = None
    """embed: keep the first N dimensions (Matryoshka models), then normalise again if the job
    normalises."""
    embedding_precision: str = "float32"
    """embed: ``float32``, ``float16``, ``int8``, ``uint8``, ``binary`` or ``ubinary``, with
    sentence-transformers' ``quantize_embeddings`` rules; ``int8``/``uint8`` map each dimension's
    [min, max] over a calibration sample of the input onto 256 steps (ranges in the manifest)."""
    calibration_rows: int = 1024
    """embed, int8/uint8: rows of the input embedded to find each dimension's range."""
    prompt_name: Optional[str] = None
    """embed: the checkpoint's prompt to prepend (``config_sentence_transformers.json``
    ``prompts``); default: its ``default_prompt_name`` if it has one."""
    prompt: Optional[str] = None
    """embed: a literal prompt prepended to every text (wins over ``prompt_name``); ``""`` for none."""
    rerank_prompt: Optional[str] = None
    """rerank with a causal LM (yes/no reranker): the text the model answers after, with ``{query}``
    (``input.text_column``) and ``{document}`` (``input.text_pair_column``) placeholders; the score
    is P("yes") of a softmax over the "yes" and "no" logits at its last token. Default: the
    Qwen3-Reranker model card's prompt (chat turns with its default instruction)."""
    sparse_threshold: float = 0.0
    """sparse-embed: keep vocabulary weights above this (SPLADE weights are >= 0)."""
    sparse_top_k: Optional[int] = None
    """sparse-embed: keep at most this many weights per row (the largest); unset keeps all above
    the threshold."""
    sparse_tokens: bool = False
    """sparse-embed: also write each kept entry's token string."""
    candidate_labels: list = field(default_factory=list)
    """zero-shot-classify: the labels to score each text against (one NLI pair per label)."""
    hypothesis_template: str = "This example is {}."
    """zero-shot-classify: the hypothesis paired with the text; ``{}`` is replaced by the label."""
    multi_label: bool = False
    """zero-shot-classify: score every label on its own (entailment vs contradiction) instead of a
    softmax over the labels."""
    messages: list = field(default_factory=list)
    """generate, decoder-only: a prompt as chat messages ``[{role, content}, ...]``, rendered per row
    in the tokenizer actors; ``{column}`` in a content is replaced by the row's value of that
    input column (``{{``/``}}`` for literal braces). The prompt is rendered with the checkpoint's
    chat template and its generation prompt; ``input.text_column`` is the column cut to fit
    ``tokenizer.max_length``."""
    chat_template: Optional[str] = None
    """generate with ``messages``: a Jinja chat template string or the name of one of the
    checkpoint's templates, instead of its default one; ``none`` joins the message contents with
    newlines, without a template (base models without one)."""
    choices: list = field(default_factory=list)
    """generate, decoder-only: the answer is exactly one of these strings (a token mask makes every
    other text impossible); see docs/constrained-outputs.md."""
    json_schema: Optional[dict] = None
    """generate, decoder-only: a JSON Schema the answer is valid against by construction (written as
    ``json.dumps`` writes JSON)."""
    regex: Optional[str] = None
    """generate, decoder-only: a regular expression (Rust ``regex`` syntax) the whole answer matches."""
    target_language: Optional[str] = None
    """generate with a translation tokenizer (NLLB, mBART-50, M2M100, mBART): the output language;
    its language token is forced as the first generated token (``forced_bos_token_id``)."""


@dataclass
class ComputeConfig:
    """Ray resources. Defaults fit a 2-CPU machine: actors reserve fractions of a CPU so read and
    write tasks can always be scheduled next to them (a pool that reserves every CPU hangs)."""

    tokenizer_min_actors: Optional[int] = None
    """Tokenizer actor pool: minimum size. Default (unset): the pool's maximum, so every
    tokenizer actor starts with the job. Ray Data scales an actor pool up only once its tasks in
    flight reach 1.75x its size, which backpressure rarely allows a tokenizer: with a
    near-free model on 2 CPUs (1M rows, min 1, max 2) the second tokenizer came up ~20 s into a
    56 s job; started with the job, the same run took 53 s. A tokenizer actor holds no model
    (~100 MB, a quarter CPU reserved), so an idle one costs little. Set it below the maximum to
    let Ray Data autoscale instead."""
    tokenizer_max_actors: Optional[int] = None
    """Tokenizer actor pool: maximum size (Ray Data autoscales between min and max). Default
    (unset): sized to the model pool so model actors never wait on tokenization: one per CPU
    model actor (the model is ~100x slower per row than tokenization there), four per GPU model
    actor (a GPU actor scores tens of thousands of short rows/s, one tokenizer thread ~17k),
    never more than the CPUs the other stages leave free."""
    tokenizer_num_cpus: float = 0.25
    """CPUs reserved per tokenizer actor (fractions allowed). Each tokenizer actor tokenizes on
    one thread; the pool scales by actors."""
    tokenizer_batch_size: int = 512
    """Rows per tokenizer call where tokenization is not aligned with blocks (training data).
    Inference tokenizes one block (``batch_size`` rows) per call so blocks map 1:1 to part files."""
    model_min_actors: int = 1
    """Model actor pool: minimum size."""
    model_max_actors: int = 1
    """Model actor pool: maximum size."""
    model_num_gpus: float = 0.0
    """GPUs per model actor (set 1 on GPU nodes); 0 runs the model on CPU. At most 1: a model
    actor runs its whole model on one GPU, so scale with more actors (``model_max_actors`` = the
    GPUs to use); a fraction (0.5) lets actors share a GPU."""
    model_num_cpus: float = 0.5
    """CPUs reserved per model actor. A reservation, not a thread count: see ``torch_threads``."""
    torch_threads: Optional[int] = None
    """Intra-op threads per CPU model actor; default: the node's CPUs divided by
    ``model_max_actors``. The actors' OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``),
    so they lose little when tokenizer or write tasks share their cores."""
    batch_size: Optional[int] = None
    """Rows per Ray block, whatever the input's row groups (a 1M-row group is read in slices and
    kept as blocks of this size end to end): one tokenizer call and one model call (sorted by
    length inside). The unit of work and retry; staged files gather ``output.stage_rows``.
    Default: 1,024 on CPU, 16,384 with ``model_num_gpus``. Ray's own cost per block (its
    driver loop, stats and autoscaling actors, raylet, task workers) is ~0.13 CPU-seconds
    whatever the block's size (near-free model, 1M rows, 2 CPUs: 8,192-row blocks 64.0
    CPU-seconds in all, 65,536-row blocks 49.8). A real CPU model spends 1-8 s per 1,024 rows,
    so there it is a few percent and a retry loses seconds; a GPU actor scoring ~30k short
    rows/s would pay about a core of it at 4,096-row blocks, a quarter of one at 16,384 (one
    block per staged write of ``output.stage_rows``)."""
    read_rows_per_task: int = 65536
    """Rows per read task (consecutive row groups of one file; a bigger row group is one task,
    streamed in ``batch_size`` slices)."""
    max_tokens_per_batch: Optional[int] = None
    """Padded-token budget of one forward micro-batch (rows × longest row); for generate with a
    decoder-only model, of one prefill forward (a longer prompt is prefilled in pieces; the KV
    cache is bounded by ``max_kv_tokens``). Default: 2,048 on CPU for classify/embed/token-classify
    (small batches keep activations in cache: measured fastest), 8,192 on CPU for generate (decoder
    steps gain from more rows), 16,384 on GPU."""
    max_rows_per_batch: int = 128
    """Row cap of one forward micro-batch."""
    max_kv_tokens: Optional[int] = None
    """generate with a decoder-only model: KV-cache positions the rows in flight of one model actor
    may hold (rows x cached positions, left padding included). Rows wait for admission while it is
    full; a row whose prompt + new tokens alone exceed it is an error record. Prompts are prefilled
    in forwards of at most ``max_tokens_per_batch`` tokens. Default: on a GPU, half the memory left
    free after loading divided by one position's keys and values; on CPU, 1,024 positions per row of
    ``task.generation.max_batch_size``."""
    io_num_cpus: float = 0.5
    """CPUs reserved per read / write task."""
    tokenizer_resources: dict = field(default_factory=dict)
    """Custom Ray resources each tokenizer actor requires, e.g. ``{cpu_node: 0.001}`` to keep
    tokenization on the CPU nodes of cluster.yaml."""
    model_resources: dict = field(default_factory=dict)
    """Custom Ray resources each model actor requires, e.g. ``{gpu_node: 0.001}`` to place model
    actors on the GPU nodes of cluster.yaml."""

    def __post_init__(self):
        check_model_gpus(self.model_num_gpus)

    def block_rows(self) -> int:
        """``batch_size``, or its device default (see there)."""
        if self.batch_size is not None:
            return int(self.batch_size)
        return 16384 if self.model_num_gpus else 1024


@dataclass
class OutputConfig:
    """Where predictions go and how an existing output is treated."""

    path: str = ""
    """Output directory (local or pyarrow URI). Published atomically with ``_manifest.json`` and
    ``_SUCCESS``; readers should trust only those."""
    mode: str = "error-if-exists"
    """``error-if-exists``, ``overwrite`` or ``resume`` (continue an interrupted run: the input row
    ranges its staged files already hold are skipped, the rest is scored; refused when the config's
    fingerprint or the input files changed)."""
    max_error_fraction: float = 0.0
    """Share of rows allowed to be error records; past it the job writes what it has to the
    staging directory and exits non-zero."""
    filesystem: FilesystemConfig = field(default_factory=FilesystemConfig)
    """Filesystem for the output."""
    compression: str = "snappy"
    """Parquet compression codec."""
    keep_text: bool = False
    """Also write the input text column (handy for inspection)."""
    stage_rows: int = 16384
    """Rows per staged file: a write task waits for this many rows. What a crash can lose per
    write in flight (resume skips everything staged)."""
    target_file_mb: int = 256
    """Published file size: staged files under half of this are merged into files of about this
    size before publishing (what Spark, Trino and DuckDB read best: 64-512 MB)."""
    keep: Optional[str] = None
    """A keep rule (curation): rows it holds true for go to the output, the others are dropped
    (to ``dropped_path``, or only counted). An expression over the output's columns, e.g.
    ``quality_score >= 3 and topic_label in ['science', 'health']``: comparisons, ``in [...]``,
    ``and``/``or``/``not``, parentheses, ``is null``/``is not null`` (see ``pipeline.keep_rules``).
    Error records are never dropped: they stay in the output. Unset keeps every row."""
    dropped_path: Optional[str] = None
    """With ``keep``: where the dropped rows are published (same columns as the output), in the
    same commit as the output. Unset: dropped rows are counted in the manifest, not written."""
    lock_ttl_s: float = 300.0
    """Object stores: seconds a run's lease on its output lasts without renewal (renewed every
    third of it). A killed driver's lease blocks other runs this long; local outputs use a kernel
    lock, released at once when its holder dies."""


@dataclass
class JobConfig:
    """A whole inference job (``rayformers run``)."""

    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    models: list = field(default_factory=list)
    """Several models in one pass over the input, instead of ``model``: a list of
    ``{name, path, task, dtype, revision, local_files_only, adapter, allow_new_head, task_options,
    tokenizer, compute}``. Each model's prediction columns are prefixed by its ``name`` and ``_``
    (``quality_label``, ``emb_embedding``); ``task_options`` / ``tokenizer`` / ``compute`` override
    the job's ``task`` / ``tokenizer`` / ``compute`` sections for that model (compute: only its
    actor pools' keys). See :func:`model_entries`."""

    def __post_init__(self):
        check_passthrough(self.input.passthrough_columns)
        if self.models:
            model_entries(self)  # every entry checked as it loads
        else:
            check_overflow(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes predictions (not compute, not output mode/path).

        ``resume`` refuses to continue a staging directory written under another fingerprint,
        so a changed model or tokenizer setting never mixes two kinds of predictions."""
        d = self.to_dict()
        if d["tokenizer"]["overflow"] != "chunk":  # keys added later: unset, old fingerprints still match
            for section, key in (("tokenizer", "overflow"), ("tokenizer", "stride"), ("task", "chunk_aggregate")):
                if key != "overflow" or d[section][key] == "truncate":
                    d[section].pop(key)
        for section, key in (("model", "adapter"), ("model", "head"), ("task", "messages"), ("task", "chat_template"),
                             ("task", "choices"), ("task", "json_schema"), ("task", "regex")):
            if not d[section][key]:  # keys added later: unset, old fingerprints still match
                d[section].pop(key)
        if not d["task"]["generation"]["stop"]:
            d["task"]["generation"].pop("stop")
        d["model"].pop("allow_new_head")  # changes no prediction of a checkpoint that has its head
        d["model"]["dtype"] = resolved_dtype_setting(self)  # unset = its default: old fingerprints still match
        relevant = {
            "input": {k: v for k, v in d["input"].items() if k not in ("filesystem", "check_unique_ids")},
            "model": d["model"],
            "tokenizer": d["tokenizer"],
            "task": d["task"],
            "output": {"keep_text": d["output"]["keep_text"]},
        }
        if self.output.keep is not None:  # keys added later: unset, old fingerprints still match
            relevant["output"]["keep"] = self.output.keep
        if self.models:
            relevant["models"] = [{"name": name, "fingerprint": sub.fingerprint()} for name, sub in model_entries(self)]
        blob = json.dumps(relevant, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


ALL_COLUMNS = "*"
"""``input.passthrough_columns: "*"``: every input column."""


def check_passthrough(value) -> None:
    """``input.passthrough_columns`` is a list of column names or ``"*"``."""
    if isinstance(value, str) and value != ALL_COLUMNS:
        raise ConfigError(f"config key 'input.passthrough_columns': expected a list of column names or \"*\" (every "
                          f"input column), got {value!r}")
    if isinstance(value, list) and not all(isinstance(c, str) and c for c in value):
        raise ConfigError(f"config key 'input.passthrough_columns': expected column names, got {value!r}")


MODEL_ENTRY_KEYS = ("name", "path", "task", "dtype", "revision", "local_files_only", "adapter", "allow_new_head",
                    "task_options", "tokenizer", "compute")
"""Keys of one ``models:`` entry."""
MODEL_ENTRY_COMPUTE_KEYS = ("tokenizer_min_actors", "tokenizer_max_actors", "tokenizer_num_cpus",
                            "tokenizer_resources", "model_min_actors", "model_max_actors", "model_num_gpus",
                            "model_num_cpus", "model_resources", "torch_threads", "max_tokens_per_batch",
                            "max_rows_per_batch")
"""``compute`` keys one model of ``models:`` may override: its own actor pools. Blocks, reads and
writes are shared by every model of the pass (one read, one write)."""
MODEL_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def model_entries(cfg: "JobConfig") -> list[tuple[Optional[str], "JobConfig"]]:
    """``[(name, config of that model)]``: for a ``models:`` job one single-model
    :class:`JobConfig` per entry (its ``model`` from the entry, ``task`` / ``tokenizer`` /
    ``compute`` the job's with the entry's overrides, ``input`` / ``output`` the job's); for a
    ``model:`` job ``[(None, cfg)]``. Raises :class:`ConfigError` naming ``models[i].key``."""
    if not cfg.models:
        return [(None, cfg)]
    if cfg.model.path:
        raise ConfigError("set either model (one model) or models (several in one pass), not both")
    if cfg.model.quantization != "none":
        raise ConfigError("model.quantization is not available with models")
    out: list[tuple[Optional[str], JobConfig]] = []
    base = cfg.to_dict()
    for i, entry in enumerate(cfg.models):
        where = f"models[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"config key '{where}': expected a mapping with name, path, task..., got {entry!r}")
        unknown = [k for k in entry if k not in MODEL_ENTRY_KEYS]
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(f'{where}.{k}' for k in unknown)}. Accepted keys in "
                              f"'{where}': {', '.join(MODEL_ENTRY_KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name or name[0].isdigit() \
                or any(ch not in MODEL_NAME_CHARS for ch in name):
            raise ConfigError(f"config key '{where}.name': a name made of lower-case letters, digits and _ (not "
                              f"starting with a digit) is required, the prefix of the model's columns; got {name!r}")
        if name in [n for n, _ in out]:
            raise ConfigError(f"config key '{where}.name': {name!r} is the name of an earlier model; names must be "
                              "unique (they prefix the prediction columns)")
        compute = entry.get("compute") or {}
        if not isinstance(compute, dict):
            raise ConfigError(f"config key '{where}.compute': expected a mapping, got {compute!r}")
        shared = [k for k in compute if k not in MODEL_ENTRY_COMPUTE_KEYS]
        if shared:
            raise ConfigError(f"config key '{where}.compute.{shared[0]}' is shared by every model of the pass: set it "
                              f"in the job's compute section. A model may set: {', '.join(MODEL_ENTRY_COMPUTE_KEYS)}")
        model = {k: v for k, v in entry.items() if k not in ("name", "task_options", "tokenizer", "compute")}
        data = {
            "input": base["input"],
            "model": model,
            "tokenizer": deep_merge(base["tokenizer"], entry.get("tokenizer") or {}),
            "task": deep_merge(base["task"], entry.get("task_options") or {}),
            "compute": deep_merge(base["compute"], compute),
            "output": base["output"],
        }
        try:
            sub = build_dataclass(JobConfig, data)
        except ConfigError as e:
            import re

            message = str(e)  # keys named as the user wrote them: models[i].task_options.top_k
            for section, key in (("model", ""), ("task", ".task_options"), ("tokenizer", ".tokenizer"),
                                 ("compute", ".compute")):
                message = re.sub(rf"(?<![\w.\]]){section}(?=[.'])", where + key, message)
            raise ConfigError(message) from e
        if not sub.model.path:
            raise ConfigError(f"config key '{where}.path': set the model's checkpoint directory or Hub id")
        if sub.tokenizer.overflow == "chunk" and sub.task.chunk_aggregate == "none":
            raise ConfigError(f"{where}: task_options.chunk_aggregate none (one output row per window) cannot be "
                              "combined with other models (one output row per input row); use mean or max")
        if sub.model.task == "embed" and sub.task.embedding_precision in ("int8", "uint8"):
            raise ConfigError(f"{where}: task_options.embedding_precision {sub.task.embedding_precision} (calibrated "
                              "on a sample) is not available with models; use float32, float16, binary or ubinary")
        out.append((name, sub))
    return out


def check_model_gpus(num_gpus: float) -> None:
    """``compute.model_num_gpus`` above 1 would load the whole model on the actor's first GPU and
    leave the others idle (placing a model's layers across GPUs is not built)."""
    if num_gpus < 0:
        raise ConfigError(f"compute.model_num_gpus must be 0 (CPU) or up to 1, got {num_gpus:g}")
    if num_gpus > 1:
        raise ConfigError(
            f"compute.model_num_gpus={num_gpus:g}: a model actor runs its whole model on one GPU, so more would "
            "sit idle. Use model_num_gpus: 1 and one model actor per GPU (compute.model_max_actors = the GPUs to "
            "use); placing one model's layers across several GPUs (models that do not fit one) is not built.")


def resolved_dtype_setting(cfg: "JobConfig") -> str:
    """``model.dtype`` with its default spelled out: ``auto`` for GPU actors, ``float32`` on CPU."""
    if cfg.model.dtype is not None:
        return cfg.model.dtype
    return "auto" if cfg.compute.model_num_gpus else "float32"


def check_overflow(cfg: "JobConfig") -> None:
    """The ``tokenizer.overflow`` / ``stride`` / ``task.chunk_aggregate`` combinations that can
    run (what needs the resolved ``max_length`` is checked by preflight)."""
    tok, task = cfg.tokenizer, cfg.model.task
    if tok.overflow == "chunk":
        if task not in CHUNK_TASKS:
            raise ConfigError(f"tokenizer.overflow chunk is for model.task {', '.join(CHUNK_TASKS)}, not {task}; "
                              "use overflow truncate or error")
        if cfg.input.text_pair_column:
            raise ConfigError("tokenizer.overflow chunk cannot split text pairs (input.text_pair_column is set): "
                              "use overflow truncate or error")
        if tok.truncation == "none":
            raise ConfigError("tokenizer.truncation none means overflow error; it cannot go with overflow chunk")
        if task == "token-classify" and cfg.task.aggregation_strategy == "none":
            raise ConfigError("tokenizer.overflow chunk with token-classify merges entities across windows, which "
                              "needs task.aggregation_strategy simple, first, average or max (as transformers' "
                              "pipeline with stride), not none")
        allowed = ("mean", "max", "none") if task == "embed" else ("mean", "max")
        if task == "token-classify" and cfg.task.chunk_aggregate != "mean":
            raise ConfigError("task.chunk_aggregate is not used by token-classify (windows merge their entities "
                              "as transformers' pipeline does); leave it unset")
        if cfg.task.chunk_aggregate not in allowed:
            raise ConfigError(f"task.chunk_aggregate {cfg.task.chunk_aggregate!r} is not available for "
                              f"{task}; use one of {', '.join(allowed)}")
        if tok.stride is not None and tok.stride < 0:
            raise ConfigError(f"tokenizer.stride must be at least 0, got {tok.stride}")
    elif tok.stride is not None:
        raise ConfigError(f"tokenizer.stride is only used with tokenizer.overflow chunk (overflow is {tok.overflow})")
    if tok.overflow == "error" and tok.truncation not in ("longest_first", "none"):
        raise ConfigError(f"tokenizer.overflow error never truncates; tokenizer.truncation {tok.truncation} "
                          "has no effect with it, leave it unset")


def overflow_mode(tok: TokenizerConfig) -> str:
    """``truncate``, ``chunk`` or ``error``, with ``truncation: none`` read as ``error``."""
    return "error" if tok.truncation == "none" else tok.overflow


_CHOICES = {
    ("model", "task"): TASKS,
    ("model", "dtype"): DTYPES,
    ("model", "quantization"): ("none", "int8-dynamic"),
    ("output", "mode"): OUTPUT_MODES,
    ("task", "pooling"): POOLINGS,
    ("task", "embedding_precision"): ("float32", "float16", "int8", "uint8", "binary", "ubinary"),
    ("task", "aggregation_strategy"): AGGREGATIONS,
    ("task", "function_to_apply"): FUNCTIONS,
    ("tokenizer", "truncation"): TRUNCATIONS,
    ("tokenizer", "overflow"): OVERFLOWS,
    ("task", "chunk_aggregate"): CHUNK_AGGREGATES,
    ("input", "format"): ("parquet",),
    ("head", "type"): HEAD_TYPES,
    ("head", "pooling"): HEAD_POOLINGS,
}


# ------------------------------------------------------------------------------------------------
# Building dataclasses from plain data, strictly.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` (with the few safe coercions YAML needs)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:  # Optional[X]: X's own message, plus that null is allowed
            raise ConfigError(f"{errors[0]} (or null for the default)")
        raise ConfigError(
            f"config key '{key}': expected {' or '.join(_type_name(a) for a in args)}, "
            f"got {value!r} ({type(value).__name__})"
        )
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key)
    if tp is Any:
        return value
    if origin is list or tp is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a revision "1234" parsed by YAML as a number
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    return value


def _default_of(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING


def build_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a mapping; unknown keys raise a :class:`ConfigError`."""
    where = prefix or "config"
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return copy.deepcopy(data)
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        full = ", ".join(f"{prefix + '.' if prefix else ''}{k}" for k in unknown)
        raise ConfigError(
            f"unknown config key(s): {full}. Accepted keys in '{where}': {', '.join(names)}"
        )
    kwargs = {}
    for name in names:
        if name in data:
            key = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(data[name], hints[name], key)
    obj = cls(**kwargs)
    section = prefix.split(".")[-1] if prefix else ""
    for name in names:
        choices = _CHOICES.get((section, name))
        if choices is not None and getattr(obj, name) is None and _default_of(cls, name) is None:
            continue  # unset: the key's own default applies (e.g. model.dtype per device)
        if choices is not None and getattr(obj, name) not in choices:
            key = f"{prefix}.{name}" if prefix else name
            raise ConfigError(
                f"config key '{key}': {getattr(obj, name)!r} is not one of {', '.join(choices)}"
            )
    return obj


def parse_overrides(overrides: list[str] | None) -> dict:
    """``["model.dtype=bfloat16", "compute.batch_size=64"]`` → nested dict (values parsed as YAML)."""
    nested: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key.sub=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set expects key.sub=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict, override: dict) -> dict:
    """Merge ``override`` into a copy of ``base`` (nested dicts merged, everything else replaced)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and v:
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a clear error for a missing file or a non-mapping document."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must contain a mapping of sections, got {type(data).__name__}")
    return data


def load_config(
    source: str | Path | dict | JobConfig | None = None,
    overrides: list[str] | None = None,
    cls: type = JobConfig,
):
    """Build a config from a YAML file path, a dict or an existing config, plus ``--set`` items."""
    if isinstance(source, cls):
        data = dataclasses.asdict(source)
    elif isinstance(source, dict):
        data = source
    elif source is None:
        data = {}
    else:
        data = load_yaml(source)
    data = deep_merge(data, parse_overrides(overrides))
    if cls is JobConfig:
        data = without_other_commands_sections(data)
    return build_dataclass(cls, data)


OTHER_COMMANDS_SECTIONS = ("etl", "train")
"""Sections of the same YAML that belong to ``rayformers etl`` / ``rayformers train``: one file can
describe a job for every command, and ``rayformers run`` ignores them."""


def without_other_commands_sections(data: dict) -> dict:
    """``data`` less :data:`OTHER_COMMANDS_SECTIONS` (logged, so the skip is visible)."""
    ignored = [name for name in OTHER_COMMANDS_SECTIONS if name in data]
    if not ignored:
        return data
    logger.info("config section(s) %s ignored: they are for rayformers %s", ", ".join(ignored), "/".join(ignored))
    return {k: v for k, v in data.items() if k not in ignored}


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a config dataclass (for ``rayformers run --describe``)."""
    import ast
    import inspect
    import textwrap

    src = textwrap.dedent(inspect.getsource(cls))
    body = ast.parse(src).body[0].body
    docs = {}
    for prev, node in zip(body, body[1:]):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(getattr(node, "value", None), ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def describe(cls: type = JobConfig, prefix: str = "", choices: Optional[dict] = None) -> list[str]:
    """Every accepted key with its default and documentation, one line each (keys with a fixed
    set of values list them, from the same table loading checks: ``choices``, keyed by
    ``(section, key)``, default the job config's)."""
    lines = []
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        hints = typing.get_type_hints(cls)
        tp = hints[f.name]
        optional_section = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if optional_section:  # Optional[Section]: unset by default, its keys when set
            lines.append(f"{key} = None  # {docs.get(f.name, '')}")
            tp = optional_section[0]
        if dataclasses.is_dataclass(tp):
            lines.extend(describe(tp, key + ".", choices))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        accepted = (_CHOICES if choices is None else choices).get((prefix.rstrip(".").split(".")[-1], f.name))
        accepted = f" [one of: {', '.join(accepted)}]" if accepted else ""
        lines.append(f"{key} = {default!r}  # {docs.get(f.name, '')}{accepted}")
    return lines
