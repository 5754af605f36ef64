"""Continuous batching of decoder-only models: the engine strategy and the beam-search fallback.

`continuous.stream_generate` serves decoder-only models with `DecoderOnlyRows` (the strategy of the
engine in continuous_engine.py) and `beam_groups`. Each input is a prompt; what is
yielded is its continuation only (the generated tokens, ending with eos unless a length limit was
reached), equal to `model.generate(that prompt alone)[0, len(prompt):]` cut after its first eos.

Greedy search and sampling keep the batch full exactly as for encoder-decoder models: finished rows
leave at once, and free slots are refilled with pending (length-sorted) prompts, which are
prefilled together and join the running batch with their shorter cache left-padded and masked.
Positions come from each row's attention mask, so a row decodes with the positions it has alone.
Lengths are per row, as `generate` of that row alone resolves them: `max_new_tokens` /
`min_new_tokens` count from the row's own prompt, `max_length` / `min_length` include it (a prompt
already at `max_length` is an error naming its key). Beam search runs batched `generate` on groups
of equal-length prompts (no padding, so each output equals that prompt's own `generate`).
"""

from __future__ import annotations

import copy

import torch

from . import transfer
from .causal_session import CausalSession
from .continuous_inputs import _Input, _InputReader
from .utils import _resolve_lengths


class _RowLimits:
    """Per-prompt-length (max_length, min_length) as `generate` would resolve them for that prompt."""

    def __init__(self, model, cfg, kwargs):
        self.model, self.cfg, self.kwargs = model, cfg, kwargs
        self.cache: dict[int, tuple[int, int]] = {}

    def __call__(self, item: _Input) -> tuple[int, int]:
        length = len(item.ids)
        if length not in self.cache:
            cfg = copy.deepcopy(self.cfg)
            try:
                _resolve_lengths(self.model, cfg, length, self.kwargs)
            except ValueError as exc:
                raise ValueError(f"input {item.key!r} ({length} prompt tokens): {exc}") from None
            self.cache[length] = (int(cfg.max_length), int(cfg.min_length or 0))
        return self.cache[length]


PREFILL_PADDING_SLACK = 0.75
"""A prompt shorter than this share of the longest prompt of its prefill chunk starts a new chunk."""


def prefill_chunks(group: list[_Input]) -> list[list[_Input]]:
    """Split prompts admitted together into consecutive chunks of similar length, each prefilled on
    its own (then the caches are left-padded and joined).

    A left-padded prefill computes every padding position in full: prompts of 8 to 96 tokens padded
    together cost about twice their real tokens, the largest share of a batch job's decoder work on
    CPU. A chunk takes prompts down to `PREFILL_PADDING_SLACK` of its longest, so padding stays
    under about a third of the computed positions, while each extra forward (one pass over the
    weights) is only paid for a real length difference. `group` comes longest first (the reader
    sorts); any order works, the chunks keep it."""
    chunks: list[list[_Input]] = []
    longest = 0
    for item in group:
        if chunks and len(item.ids) >= PREFILL_PADDING_SLACK * longest and len(item.ids) <= longest:
            chunks[-1].append(item)
        else:
            chunks.append([item])
            longest = len(item.ids)
    return chunks


class DecoderOnlyRows:
    """Engine strategy (see continuous_engine.py) for decoder-only models.

    Prompt and continuation share one left-padded `history` [rows, width], padded with the row's own
    first token (repetition penalty then sees only the row's tokens); `lengths` is its real length,
    `prompt_lengths`, `max_lengths`, `min_lengths` its limits. The session's attention mask covers
    the same `width` positions. The token budget an input holds is its full length (prompt + new
    tokens) times the samples per input.
    """

    width_tensors = {"history": "first"}

    def __init__(self, model, limits: _RowLimits, *, pad_id: int, nrs: int, device):
        self.model = model
        self.limits = limits
        self.pad_id = pad_id
        self.nrs = nrs
        self.device = device

    def cost(self, item: _Input) -> int:
        return self.limits(item)[0] * self.nrs

    def take(self, engine, reader: _InputReader, max_inputs: int) -> list[_Input]:
        """Pending prompts whose full length (prompt + new tokens) fits the token budget."""
        taken = []
        while len(taken) < max_inputs and reader.has_pending():
            cost = self.cost(reader.pending[0])
            if engine.max_tokens is not None and (engine.rows or taken) and (
                    engine.source_tokens + cost > engine.max_tokens):
                break
            taken.append(reader.pending.pop(0))
            engine.source_tokens += cost
        return taken

    def _prefill_chunk(self, chunk: list[_Input]) -> tuple[CausalSession, torch.Tensor]:
        width = max(len(x.ids) for x in chunk)
        ids = [[self.pad_id] * (width - len(x.ids)) + x.ids for x in chunk]
        mask = [[0] * (width - len(x.ids)) + [1] * len(x.ids) for x in chunk]
        input_ids, mask = transfer.to_device(ids, self.device), transfer.to_device(mask, self.device)
        session = CausalSession(self.model, mask)
        return session, session.step(input_ids)

    def prefill(self, group: list[_Input]):
        width = max(len(x.ids) for x in group)
        rows = [[x.ids[0]] * (width - len(x.ids)) + x.ids for x in group]  # history padding: the row's first token
        limits = [self.limits(x) for x in group]
        session, logits = None, []
        for chunk in prefill_chunks(group):
            part, part_logits = self._prefill_chunk(chunk)
            logits.append(part_logits)
            part.pad_self_attention(width)
            if session is None:
                session = part
            else:
                session.append(part)
        logits = logits[0] if len(logits) == 1 else torch.cat(logits)
        lengths, max_lengths, min_lengths = transfer.to_device(
            [[len(x.ids) for x in group], [m for m, _ in limits], [m for _, m in limits]], self.device)
        tensors = {"history": transfer.to_device(rows, self.device), "lengths": lengths, "prompt_lengths": lengths,
                   "max_lengths": max_lengths, "min_lengths": min_lengths}
        return session, logits, tensors, [(len(x.ids), m) for x, (m, _) in zip(group, limits)]

    def join(self, session: CausalSession, newcomer: CausalSession, width: int) -> None:
        session.pad_self_attention(width)
        newcomer.pad_self_attention(width)
        session.append(newcomer)

    def after_token(self, state: dict) -> None:
        pass  # the session extends its own attention mask

    def row_limits(self, state: dict) -> dict:
        return {"prompt_lengths": state["prompt_lengths"], "min_lengths": state["min_lengths"],
                "max_lengths": state["max_lengths"]}

    def step(self, session: CausalSession, state: dict, padded: bool) -> torch.Tensor:
        return session.step(state["history"][:, -1:])

    def output_prefix(self, item: _Input) -> list[int]:
        return []  # the continuation only


def beam_groups(model, cfg, special, reader, limits, kwargs, max_batch_size, max_batch_tokens, device):
    nrs = cfg.num_return_sequences
    per_chunk = max(1, max_batch_size // cfg.num_beams)
    eos = special["eos"]
    while reader.has_pending():
        chunk = reader.take(per_chunk, max_batch_tokens)
        for length in sorted({len(x.ids) for x in chunk}, reverse=True):
            group = [x for x in chunk if len(x.ids) == length]
            limits(group[0])  # a clear error naming the input when its prompt leaves no room
            input_ids = torch.tensor([x.ids for x in group], dtype=torch.long, device=device)
            plan = model._plan_generation(input_ids, torch.ones_like(input_ids), copy.deepcopy(cfg), False, dict(kwargs))
            output = model._run_plan(plan).tolist()
            for number, item in enumerate(group):
                rows = [_continuation(output[number * nrs + i], length, eos) for i in range(nrs)]
                yield item.key, (rows[0] if nrs == 1 else rows)


def _continuation(row: list[int], prompt_len: int, eos) -> list[int]:
    tokens = row[prompt_len:]
    if eos is not None:
        for position, token in enumerate(tokens):
            if token in eos:
                return tokens[: position + 1]
    return tokens
