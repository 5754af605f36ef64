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


MIN_SHARED_PREFIX = 16
"""Prompts admitted together that all start with at least this many identical tokens (a chat
template's system prompt) have that prefix prefilled once (see `DecoderOnlyRows.prefill`)."""


def shared_prefix_length(group: list[_Input]) -> int:
    """Tokens every prompt of `group` starts with (each keeping at least one token of its own), or 0
    when under `MIN_SHARED_PREFIX` or fewer than two prompts."""
    if len(group) < 2:
        return 0
    first = group[0].ids
    length = min(len(x.ids) for x in group) - 1
    for item in group[1:]:
        ids, same = item.ids, 0
        while same < length and ids[same] == first[same]:
            same += 1
        length = same
        if length < MIN_SHARED_PREFIX:
            return 0
    return length


class DecoderOnlyRows:
    """Engine strategy (see continuous_engine.py) for decoder-only models.

    Prompt and continuation share one left-padded `history` [rows, width], padded with the row's own
    first token (repetition penalty then sees only the row's tokens); `lengths` is its real length,
    `prompt_lengths`, `max_lengths`, `min_lengths` its limits. The session's attention mask covers
    the same `width` positions.

    Memory: the KV cache of the rows in flight is one left-padded block of rows x width positions
    (width: the longest row so far). `max_kv_tokens` bounds it: a prompt is admitted only while
    (rows in flight + its rows) x (the largest max_length among them) fits, and since no row grows
    past its max_length that bound holds until rows leave (see `kv_bound`). A prompt that alone
    does not fit (max_length x samples > max_kv_tokens) is refused: `on_reject(key, reason)` when
    given, else a ValueError naming it. `prefill_tokens` bounds one prefill forward (rows x positions fed):
    prompts are prefilled in as many forwards as that takes, a long prompt a piece of columns at a
    time (`CausalSession.prefill`), so its attention is never computed over the whole prompt at once.

    Prefix sharing: when the prompts admitted together all start with the same tokens (at least
    `MIN_SHARED_PREFIX`: a chat template's system prompt), that prefix is prefilled once, its cache
    expanded to every row, and only the rest of each prompt is prefilled on top of it; the padding,
    which then sits between the prefix and the row's own tokens, is moved to the left end of the
    row (`CausalSession.move_padding_left`), so the batch is left-padded as everywhere else. Only for
    models declaring `_generation_prefix_sharing` (no sliding windows) with `share_prefix`.
    """

    width_tensors = {"history": "first"}

    def __init__(self, model, limits: _RowLimits, *, pad_id: int, nrs: int, device,
                 max_kv_tokens: int | None = None, prefill_tokens: int | None = None, on_reject=None,
                 stats: dict | None = None, share_prefix: bool = True):
        self.model = model
        self.limits = limits
        self.pad_id = pad_id
        self.nrs = nrs
        self.device = device
        self.max_kv_tokens = max_kv_tokens
        self.prefill_tokens = prefill_tokens
        self.on_reject = on_reject
        self.stats = stats if stats is not None else {}
        self.share_prefix = share_prefix and bool(getattr(model, "_generation_prefix_sharing", False)) and bool(
            getattr(model, "_generation_chunked_prefill", False))

    def cost(self, item: _Input) -> int:
        return self.limits(item)[0] * self.nrs

    def kv_bound(self, rows: int, longest: int) -> int:
        """The most KV positions `rows` rows can hold before one leaves, the longest allowed `longest`."""
        return rows * longest

    def _refuse(self, item: _Input) -> None:
        max_length = self.limits(item)[0]
        samples = f" x {self.nrs} samples" if self.nrs > 1 else ""
        reason = (f"needs {max_length} KV-cache positions ({len(item.ids)} prompt tokens + new tokens){samples}, "
                  f"more than the KV budget max_kv_tokens={self.max_kv_tokens}; raise the budget or shorten the "
                  "prompt / max_new_tokens.")
        if self.on_reject is None:
            raise ValueError(f"input {item.key!r} {reason}")
        self.on_reject(item.key, reason)

    def take(self, engine, reader: _InputReader, max_inputs: int) -> list[_Input]:
        """Pending prompts that fit the KV budget with the rows in flight (longest pending first)."""
        taken: list[_Input] = []
        rows = len(engine.rows)
        longest = max((row.max_length for row in engine.rows), default=0)
        while len(taken) < max_inputs and reader.has_pending():
            item = reader.pending[0]
            max_length = self.limits(item)[0]
            if self.max_kv_tokens is not None:
                if self.kv_bound(self.nrs, max_length) > self.max_kv_tokens:
                    self._refuse(reader.pending.pop(0))
                    continue
                if self.kv_bound(rows + self.nrs, max(longest, max_length)) > self.max_kv_tokens:
                    self.stats["admission_waits"] = self.stats.get("admission_waits", 0) + 1
                    break
            taken.append(reader.pending.pop(0))
            rows += self.nrs
            longest = max(longest, max_length)
            engine.source_tokens += self.cost(item)
        return taken

    def _columns(self, rows: int) -> int | None:
        return None if self.prefill_tokens is None else max(1, self.prefill_tokens // rows)

    def _prefill_prefix(self, ids: list[int]):
        """The cache of a prefix shared by the prompts admitted together (one row)."""
        session = CausalSession(self.model, transfer.to_device([[1] * len(ids)], self.device))
        session.prefill(transfer.to_device([ids], self.device), self._columns(1))
        self.stats["prefill_forwards"] = self.stats.get("prefill_forwards", 0) + 1
        self.stats["shared_prefix_tokens"] = self.stats.get("shared_prefix_tokens", 0) + len(ids)
        return session.past_key_values

    def _prefill_after_prefix(self, chunk: list[_Input], prefix: int, past) -> tuple[CausalSession, torch.Tensor]:
        """Prefill the rest of each prompt of `chunk` behind the shared prefix's cache `past`."""
        width = max(len(x.ids) for x in chunk) - prefix
        ids = [[self.pad_id] * (width - len(x.ids) + prefix) + x.ids[prefix:] for x in chunk]
        mask = [[1] * prefix + [0] * (width - len(x.ids) + prefix) + [1] * (len(x.ids) - prefix) for x in chunk]
        input_ids, mask = transfer.to_device(ids, self.device), transfer.to_device(mask, self.device)
        session = CausalSession(self.model, mask)
        rows = len(chunk)
        expanded = tuple(tuple(None if t is None else t.expand(rows, *t.shape[1:]) for t in layer) for layer in past)
        columns = self._columns(rows) or width
        self.stats["max_prefill_tokens"] = max(self.stats.get("max_prefill_tokens", 0), rows * min(columns, width))
        self.stats["prefill_forwards"] = self.stats.get("prefill_forwards", 0) + -(-width // columns)
        logits = session.prefill_after(expanded, prefix, input_ids, columns)
        session.move_padding_left()
        return session, logits

    def _prefill_chunk(self, chunk: list[_Input]) -> tuple[CausalSession, torch.Tensor]:
        width = max(len(x.ids) for x in chunk)
        ids = [[self.pad_id] * (width - len(x.ids)) + x.ids for x in chunk]
        mask = [[0] * (width - len(x.ids)) + [1] * len(x.ids) for x in chunk]
        input_ids, mask = transfer.to_device(ids, self.device), transfer.to_device(mask, self.device)
        session = CausalSession(self.model, mask)
        columns = None if self.prefill_tokens is None else max(1, self.prefill_tokens // len(chunk))
        if columns is not None and columns < width and getattr(self.model, "_generation_chunked_prefill", False):
            pieces = -(-width // columns)
            self.stats["max_prefill_tokens"] = max(self.stats.get("max_prefill_tokens", 0), len(chunk) * columns)
        else:
            pieces = 1
            self.stats["max_prefill_tokens"] = max(self.stats.get("max_prefill_tokens", 0), len(chunk) * width)
        self.stats["prefill_forwards"] = self.stats.get("prefill_forwards", 0) + pieces
        return session, session.prefill(input_ids, columns)

    def _forward_groups(self, group: list[_Input], prefix: int = 0) -> list[list[_Input]]:
        """Prefill groups of similar length (`prefill_chunks`), each cut to at most `prefill_tokens`
        rows x width (a prompt longer than that goes alone and is fed in pieces of columns); with a
        shared prefix, the lengths that count are those after it."""
        groups = []
        for chunk in prefill_chunks(group):
            if self.prefill_tokens is None:
                groups.append(chunk)
                continue
            per_forward = max(1, self.prefill_tokens // (max(len(x.ids) for x in chunk) - prefix))
            groups.extend(chunk[i:i + per_forward] for i in range(0, len(chunk), per_forward))
        return groups

    def prefill(self, group: list[_Input]):
        width = max(len(x.ids) for x in group)
        rows = [[x.ids[0]] * (width - len(x.ids)) + x.ids for x in group]  # history padding: the row's first token
        limits = [self.limits(x) for x in group]
        session, logits = None, []
        prefix = shared_prefix_length(group) if self.share_prefix else 0
        past = self._prefill_prefix(group[0].ids[:prefix]) if prefix else None
        for chunk in self._forward_groups(group, prefix):
            if prefix:
                part, part_logits = self._prefill_after_prefix(chunk, prefix, past)
            else:
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
