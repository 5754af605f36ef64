"""Embedding-model fine-tuning (``model.task: embed``): pairs in, a sentence-transformers directory out.

Rows are (anchor, positive[, hard negative]) texts. The loss is sentence-transformers'
``MultipleNegativesRankingLoss`` in its default form: for each anchor, a softmax over
``scale · cos(anchor, candidate)`` of every candidate of the batch (all positives, then all hard
negatives), whose target is the anchor's own positive; the loss is the mean cross entropy.

Why the gather: the other rows' positives are the negatives, so more rows means a harder and
better task. With W workers each worker embeds only its own B rows, then
:func:`~rayformers.jobs.collectives.all_gather_with_grad` gathers every worker's candidates,
so each anchor sees W·B positives (as one worker with the whole batch would). The gather keeps
the autograd graph of the local slice and sends the other slices' gradients back to their
workers, so the summed gradient equals the single-worker gradient; DDP's averaging then matches
the mean over all anchors.

All texts of a micro-batch (anchors, positives, negatives) are padded to one width and embedded
in one forward pass (one DDP forward per backward, and one larger matrix product).

The checkpoint is a sentence-transformers directory: the encoder in HF format at the root, plus
``modules.json``, ``sentence_bert_config.json``, ``1_Pooling/config.json`` and, when
normalising, a ``Normalize`` module, so ``SentenceTransformer(path)`` and ``rayformers run``'s
``embed`` task load it with its pooling and normalisation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import torch

ROLES = ("anchor", "positive", "negative")
ID_COLUMNS = {"anchor": "input_ids", "positive": "positive_input_ids", "negative": "negative_input_ids"}
POOLING_KEYS = {
    "cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}


@dataclass
class EmbeddingSettings:
    """How the model embeds and is scored (plain values, shipped to every worker)."""

    pooling: str = "mean"
    normalize: bool = False
    scale: float = 20.0
    max_seq_length: Optional[int] = None
    roles: int = 2
    """Texts per row: 2 (anchor, positive) or 3 (with a hard negative)."""


def resolve_settings(model_path: str, pooling: str, normalize: Optional[bool], scale: float,
                     max_seq_length: Optional[int], has_negative: bool) -> EmbeddingSettings:
    """``train.pooling: auto`` / ``train.normalize: null`` resolved from the base model's
    sentence-transformers files (mean pooling, no normalisation when it has none)."""
    from rayformers.operators.embedding_outputs import sentence_transformers_defaults

    st = sentence_transformers_defaults(model_path) if os.path.isdir(model_path) else {}
    return EmbeddingSettings(
        pooling=st.get("pooling", "mean") if pooling == "auto" else pooling,
        normalize=bool(st.get("normalize", False)) if normalize is None else bool(normalize),
        scale=float(scale),
        max_seq_length=max_seq_length,
        roles=3 if has_negative else 2,
    )


# ------------------------------------------------------------------------------------------------
# Data: tokenize each role, pad them together.


def tokenize_pairs(tokenizer: Any, texts: dict, max_length: Optional[int], truncation: Any) -> dict:
    """Ray Data stage: ``{role: [text, ...]}`` → one list<int32> column of token ids per role."""
    out = {}
    for role in ROLES:
        if role in texts:
            enc = tokenizer(texts[role], truncation=truncation, max_length=max_length)
            out[ID_COLUMNS[role]] = pa.array(enc["input_ids"], type=pa.list_(pa.int32()))
    return out


def collate_pairs(batch: pa.Table, pad_token_id: int) -> dict:
    """A micro-batch of B rows → ``input_ids``/``attention_mask`` of k·B texts (anchors, then
    positives, then negatives) padded to one width; ``_micro`` keeps its B entries."""
    from .batch_columns import MICRO_COLUMN, pad_list_column

    chunks = []
    for role in ROLES:
        if ID_COLUMNS[role] in batch.column_names:
            column = batch.column(ID_COLUMNS[role])
            chunks.extend(column.chunks if isinstance(column, pa.ChunkedArray) else [column])
    ids, lengths = pad_list_column(pa.chunked_array(chunks), pad_token_id)
    out = {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy((np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)),
    }
    if MICRO_COLUMN in batch.column_names:
        out[MICRO_COLUMN] = torch.from_numpy(batch.column(MICRO_COLUMN).to_numpy().astype(np.int64))
    return out


# ------------------------------------------------------------------------------------------------
# Loss.


def freeze_unused_heads(model: torch.nn.Module) -> list[str]:
    """Freeze the parameters the sentence embedding never uses (BERT's ``pooler``: pooling reads
    the last hidden state). Left trainable they would get no gradient, which DDP treats as an
    error; frozen they are saved unchanged. Returns the frozen parameter names."""
    frozen = []
    for name, parameter in model.named_parameters():
        if name.split(".")[0] == "pooler" or ".pooler." in name:
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen


def embed(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pooled (not normalised) sentence embeddings, float32, as sentence-transformers' Pooling."""
    from rayformers.operators.embed import pool

    out = model(input_ids=input_ids, attention_mask=attention_mask)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return pool(hidden, attention_mask, pooling)


def mnrl_loss(anchors: torch.Tensor, candidates: list, scale: float, device: torch.device,
              gather: bool = True) -> torch.Tensor:
    """MultipleNegativesRankingLoss of this worker's anchors ([B, D]) against the candidates of
    every worker (``candidates``: this worker's positives, then hard negatives, each [B, D]).

    The result is the mean over this worker's anchors; averaged over workers (DDP) it is the
    loss of one worker holding the whole global batch."""
    from .collectives import all_gather_with_grad, rank_and_world

    rank, world = rank_and_world() if gather else (0, 1)
    if world > 1:
        candidates = [all_gather_with_grad(c, device) for c in candidates]
    every = torch.cat(candidates, dim=0)
    scores = torch.nn.functional.normalize(anchors, p=2, dim=1) @ torch.nn.functional.normalize(every, p=2, dim=1).T
    targets = torch.arange(anchors.shape[0], device=scores.device) + rank * anchors.shape[0]
    return torch.nn.functional.cross_entropy(scores * scale, targets)


def split_roles(embeddings: torch.Tensor, rows: int) -> tuple[torch.Tensor, list]:
    """[k·B, D] → (anchors [B, D], [positives, negatives...])."""
    parts = list(embeddings.split(rows, dim=0))
    return parts[0], parts[1:]


def step_loss(model: torch.nn.Module, batch: dict, settings: EmbeddingSettings, rows: int,
              device: torch.device) -> torch.Tensor:
    """The training loss of one micro-batch of ``rows`` pairs (all texts in one forward)."""
    embeddings = embed(model, batch["input_ids"], batch["attention_mask"], settings.pooling)
    anchors, candidates = split_roles(embeddings, rows)
    return mnrl_loss(anchors, candidates, settings.scale, device)


def eval_statistics(model: torch.nn.Module, batch: dict, settings: EmbeddingSettings, rows: int) -> tuple[float, int]:
    """(summed loss, anchors whose best candidate is their own positive) of one eval batch,
    with the batch's own candidates only (no gather: eval batches differ in size per worker)."""
    embeddings = embed(model, batch["input_ids"], batch["attention_mask"], settings.pooling)
    anchors, candidates = split_roles(embeddings, rows)
    every = torch.cat(candidates, dim=0)
    scores = torch.nn.functional.normalize(anchors, dim=1) @ torch.nn.functional.normalize(every, dim=1).T
    targets = torch.arange(rows, device=scores.device)
    loss = torch.nn.functional.cross_entropy(scores * settings.scale, targets, reduction="sum")
    return float(loss), int((scores.argmax(dim=1) == targets).sum())


# ------------------------------------------------------------------------------------------------
# Checkpoint.


def save_sentence_transformers(directory: str, model: Any, tokenizer: Any, settings: EmbeddingSettings,
                               state_dict: Optional[dict] = None) -> None:
    """The encoder (HF format) plus the sentence-transformers module files in ``directory``."""
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if settings.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        os.makedirs(os.path.join(directory, "2_Normalize"), exist_ok=True)
    _write_json(os.path.join(directory, "modules.json"), modules)
    dim = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "d_model"))
    pooling = {key: settings.pooling == mode for mode, key in POOLING_KEYS.items()}
    pooling.update({"word_embedding_dimension": dim, "pooling_mode_mean_sqrt_len_tokens": False,
                    "pooling_mode_weightedmean_tokens": False, "include_prompt": True})
    os.makedirs(os.path.join(directory, "1_Pooling"), exist_ok=True)
    _write_json(os.path.join(directory, "1_Pooling", "config.json"), pooling)
    _write_json(os.path.join(directory, "sentence_bert_config.json"),
                {"max_seq_length": settings.max_seq_length, "do_lower_case": False})


def _write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


__all__ = [
    "EmbeddingSettings",
    "collate_pairs",
    "embed",
    "eval_statistics",
    "freeze_unused_heads",
    "mnrl_loss",
    "resolve_settings",
    "save_sentence_transformers",
    "step_loss",
    "tokenize_pairs",
]
