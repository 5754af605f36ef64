"""What a job's tokenizer actors are built with (apart from :mod:`.dataflow`, which plans the
stages, so that the several-model plan can compare two models' tokenizers without importing it)."""

from __future__ import annotations

from typing import Any

from .config import overflow_mode


def exploded_windows(cfg) -> bool:
    """Embeddings per window (``overflow: chunk`` with ``chunk_aggregate: none``)."""
    return cfg.model.task == "embed" and overflow_mode(cfg.tokenizer) == "chunk" and cfg.task.chunk_aggregate == "none"


def tokenizer_kwargs(spec: Any) -> dict:
    """What the tokenizer actors of ``spec`` (a ``ProcessingSpec`` or ``ResolvedJob``) are built
    with: two models whose tokenizer kwargs are equal get the same tokens (one tokenizer pool can
    serve both)."""
    cfg = spec.config
    return dict(
            tokenizer_path=spec.tokenizer_path,
            text_column=cfg.input.text_column,
            text_pair_column=cfg.input.text_pair_column,
            max_length=spec.max_length,
            truncation=cfg.tokenizer.truncation,
            overflow=overflow_mode(cfg.tokenizer),
            stride=spec.stride,
            # token-classify reads offsets; so do per-window embeddings (their chunk_start/end)
            with_offsets=cfg.model.task == "token-classify" or exploded_windows(cfg),
            revision=cfg.model.revision,
            local_files_only=cfg.model.local_files_only,
            drop_columns=tuple(spec.drop_after_tokenize),
            source_language=cfg.input.source_language,
            source_language_column=cfg.input.source_language_column,
            text_prefix=spec.text_prefix,
            prompt=spec.prompt,
            single_thread=True,
    )
