"""Length-sorted micro-batches under a padded-token budget, with dynamic padding.

Why: padding is the main waste of transformer inference on mixed-length text (HF ``pipeline`` on
unsorted rows runs ~4x slower than the same model on sorted batches). Inside each Ray batch we
sort rows by length and cut micro-batches so that ``rows x longest row`` stays under
``max_tokens``: short rows travel in big batches, long rows in small ones, and almost no compute
is spent on pad tokens. Results are scattered back to the original row order by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch


@dataclass
class MicroBatch:
    """Row positions (into the Ray batch) and their padded tensors."""

    rows: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: Optional[torch.Tensor]

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.numel())


BATCH_COST_TOKENS = 64
"""The fixed cost of one forward call (Python, kernel launches, small-matrix inefficiency), in
padded-token equivalents: what a cut between two micro-batches must save in padding to pay off.
Measured for all-MiniLM-L6 on 2 CPU threads at ~20-60 tokens per call; 64 errs toward fewer calls."""


def plan_micro_batches(
    lengths: Sequence[int], max_tokens: int, max_rows: int, batch_cost_tokens: int = BATCH_COST_TOKENS
) -> list[list[int]]:
    """Group row positions, longest first, so each group's ``len(group) * max_len <= max_tokens``.

    The cuts between groups of the length-sorted rows are chosen by dynamic programming to
    minimise padded tokens plus ``batch_cost_tokens`` per group. Filling each group greedily
    wastes most at the long tail of a block, where neighbouring lengths differ most: on 2,048
    mixed-length rows in blocks of 256 greedy filling padded 24% over the real tokens, the
    optimal cuts 6% (with 2x more, smaller calls). A row longer than the budget on its own still
    gets a group of one (it must be scored).
    """
    if max_tokens < 1 or max_rows < 1:
        raise ValueError("max_tokens and max_rows must be positive")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    sizes = [max(int(lengths[i]), 1) for i in order]
    n = len(sizes)
    # cost[i]: cheapest plan for sorted rows i..n-1; cut[i]: where the group starting at i ends.
    cost = [0] * (n + 1)
    cut = [n] * (n + 1)
    for i in range(n - 1, -1, -1):
        longest = sizes[i]  # sorted descending: the first row of a group is its longest
        fit = max(1, min(max_rows, max_tokens // longest, n - i))
        best_cost, best_end = None, i + 1
        for end in range(i + 1, i + fit + 1):
            c = longest * (end - i) + batch_cost_tokens + cost[end]
            if best_cost is None or c < best_cost:
                best_cost, best_end = c, end
        cost[i], cut[i] = best_cost, best_end
    groups: list[list[int]] = []
    i = 0
    while i < n:
        groups.append(order[i : cut[i]])
        i = cut[i]
    return groups


def pad_rows(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    dtype: torch.dtype = torch.long,
    pad_to_multiple_of: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest row only (dynamic padding); returns ids and attention mask.

    ``pad_to_multiple_of`` rounds that length up, for models that need whole chunks (chunked MEGA
    exposes it as ``model.pad_to_multiple_of``); the extra positions are masked out.
    """
    longest = max(len(s) for s in sequences)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(sequences), longest), pad_id, dtype=dtype)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for r, seq in enumerate(sequences):
        n = len(seq)
        if n:
            ids[r, :n] = torch.as_tensor(seq, dtype=dtype)
            mask[r, :n] = 1
    return ids, mask


def iter_micro_batches(
    input_ids: Sequence[Sequence[int]],
    positions: Sequence[int],
    pad_id: int,
    max_tokens: int,
    max_rows: int,
    token_type_ids: Optional[Sequence[Sequence[int]]] = None,
    pad_to_multiple_of: Optional[int] = None,
) -> Iterator[MicroBatch]:
    """Yield padded micro-batches over the rows at ``positions`` (the rows without errors)."""
    lengths = [len(input_ids[p]) for p in positions]
    for group in plan_micro_batches(lengths, max_tokens, max_rows):
        rows = [positions[g] for g in group]
        ids, mask = pad_rows([input_ids[r] for r in rows], pad_id, pad_to_multiple_of=pad_to_multiple_of)
        types = None
        if token_type_ids is not None:
            types, _ = pad_rows([token_type_ids[r] for r in rows], 0, pad_to_multiple_of=pad_to_multiple_of)
        yield MicroBatch(rows=rows, input_ids=ids, attention_mask=mask, token_type_ids=types)
