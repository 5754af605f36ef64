"""What continuous batching reads: the inputs, validated and length-sorted a window at a time."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Hashable

import torch

from . import transfer
from .utils import _max_source_positions


@dataclass
class _Input:
    index: int
    key: Hashable
    ids: list[int]
    outputs: dict[int, list[int]] = field(default_factory=dict)  # sample number -> tokens


class _InputReader:
    """Reads, validates and length-sorts inputs `lookahead` at a time."""

    def __init__(self, model, inputs, lookahead: int, max_batch_tokens: int | None):
        self.iterator = iter(inputs)
        self.lookahead = lookahead
        self.counter = itertools.count()
        self.pending: list[_Input] = []
        self.exhausted = False
        self.vocab_size = model.get_input_embeddings().num_embeddings if hasattr(model, "get_input_embeddings") else None
        self.max_positions = _max_source_positions(model)
        self.max_batch_tokens = max_batch_tokens

    def _validate(self, key, ids) -> list[int]:
        if isinstance(ids, torch.Tensor):
            ids = ids.flatten().tolist()
        try:
            ids = [int(t) for t in ids]
        except (TypeError, ValueError):
            raise ValueError(f"input {key!r}: input ids must be a sequence of integer token ids, got {ids!r}") from None
        if not ids:
            raise ValueError(f"input {key!r} is empty: every input needs at least one token (e.g. eos).")
        if self.vocab_size is not None and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = [t for t in ids if t < 0 or t >= self.vocab_size][:5]
            raise ValueError(f"input {key!r} holds token ids {bad} outside the vocabulary [0, {self.vocab_size}).")
        if self.max_positions is not None and len(ids) > self.max_positions:
            raise ValueError(
                f"input {key!r} has {len(ids)} tokens, more than max_position_embeddings={self.max_positions}; "
                f"truncate it to {self.max_positions} tokens."
            )
        if self.max_batch_tokens is not None and len(ids) > self.max_batch_tokens:
            raise ValueError(
                f"input {key!r} has {len(ids)} tokens, more than max_batch_tokens={self.max_batch_tokens}; raise "
                "max_batch_tokens or truncate the input."
            )
        return ids

    def _fill(self) -> None:
        if self.exhausted or len(self.pending) >= self.lookahead:
            return
        fresh = []
        for item in itertools.islice(self.iterator, self.lookahead - len(self.pending)):
            try:
                key, ids = item
            except (TypeError, ValueError):
                raise ValueError(f"stream_generate inputs must be (key, input_ids) pairs, got {item!r}") from None
            fresh.append(_Input(next(self.counter), key, self._validate(key, ids)))
        if len(fresh) < self.lookahead - len(self.pending):
            self.exhausted = True
        # Longest first: similar lengths are admitted together and long inputs do not wait until the end.
        self.pending = sorted(self.pending + fresh, key=lambda x: (-len(x.ids), x.index))

    def has_pending(self) -> bool:
        self._fill()
        return bool(self.pending)

    def take(self, max_inputs: int, token_budget: int | None) -> list[_Input]:
        """Up to `max_inputs` pending inputs whose padded source tokens fit `token_budget`."""
        self._fill()
        taken: list[_Input] = []
        while self.pending and len(taken) < max_inputs:
            candidate = self.pending[0]
            width = max([len(candidate.ids)] + [len(x.ids) for x in taken])
            if token_budget is not None and taken and width * (len(taken) + 1) > token_budget:
                break
            taken.append(self.pending.pop(0))
        return taken


def pad_token_lists(group: list[_Input], pad_id: int, device, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs' token ids as one padded batch [inputs, longest] and its attention mask.

    Right-padded for encoders, left-padded (`left=True`) for decoder-only prompts; built on the
    host and copied to the device at once.
    """
    width = max(len(x.ids) for x in group)
    ids, mask = [], []
    for item in group:
        pad = width - len(item.ids)
        if left:
            ids.append([pad_id] * pad + item.ids)
            mask.append([0] * pad + [1] * len(item.ids))
        else:
            ids.append(item.ids + [pad_id] * pad)
            mask.append([1] * len(item.ids) + [0] * pad)
    return transfer.to_device(ids, device), transfer.to_device(mask, device)
