"""stream_generate for decoder-only models (BertLMHeadModel family, MegaForCausalLM).

`continuous.stream_generate` hands decoder-only models here. Each input is a prompt; what is
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

from .causal_session import CausalSession
from .continuous import _Engine, _Input, _InputReader
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


def stream_generate_causal(model, cfg, special, reader: _InputReader, kwargs, *, max_batch_size, max_batch_tokens,
                           seed, refill, device):
    limits = _RowLimits(model, cfg, kwargs)
    # Which processors exist (and their order) is decided once, as for a one-token prompt; their
    # length limits then come per row (`limits` raises, naming the input, where one does not fit).
    probe = copy.deepcopy(cfg)
    try:
        _resolve_lengths(model, probe, 1, kwargs)
    except ValueError:
        pass
    if cfg.num_beams > 1:
        yield from _beam_groups(model, cfg, special, reader, limits, kwargs, max_batch_size, max_batch_tokens, device)
        return
    engine = _CausalEngine(model, probe, special, device, max_batch_size, max_batch_tokens, seed, refill, limits)
    yield from engine.run(reader)


def _left_pad(group: list[_Input], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x.ids) for x in group)
    input_ids = torch.full((len(group), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(group), width), dtype=torch.long, device=device)
    for row, item in enumerate(group):
        input_ids[row, width - len(item.ids):] = torch.tensor(item.ids, dtype=torch.long)
        mask[row, width - len(item.ids):] = 1
    return input_ids, mask


def _beam_groups(model, cfg, special, reader, limits, kwargs, max_batch_size, max_batch_tokens, device):
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


class _CausalEngine(_Engine):
    """The running batch of decoder-only rows: prompt and continuation share one left-padded history.

    `history` [rows, width] holds every row's tokens so far, left-padded with the row's own first
    token (repetition penalty then sees only the row's tokens); `lengths` its real length;
    `prompt_lengths`, `max_lengths`, `min_lengths` its limits. The session's mask covers the same
    `width` positions. `source_tokens` counts the full lengths (prompt + new tokens) budgeted for
    the running rows.
    """

    def __init__(self, model, cfg, special, device, max_batch_size, max_batch_tokens, seed, refill, limits):
        super().__init__(model, cfg, special, device, max_batch_size, max_batch_tokens, seed, refill)
        self.limits = limits
        self.session: CausalSession | None = None
        self.prompt_lengths, self.max_lengths, self.min_lengths = self.lengths, self.lengths, self.lengths

    def _row_tensors(self):
        return ("history", "lengths", "prompt_lengths", "max_lengths", "min_lengths")

    def _budget(self, item: _Input) -> int:
        return self.limits(item)[0] * self.nrs

    def _take(self, reader: _InputReader, max_inputs: int) -> list[_Input]:
        """Pending prompts whose full length (prompt + new tokens) fits the token budget."""
        taken = []
        while len(taken) < max_inputs and reader.has_pending():
            candidate = reader.pending[0]
            cost = self._budget(candidate)
            if self.max_tokens is not None and (self.rows or taken) and (
                    self.source_tokens + cost > self.max_tokens):
                break
            taken.append(reader.pending.pop(0))
            self.source_tokens += cost
        return taken

    def _admit(self, reader: _InputReader) -> torch.Tensor | None:
        free_rows = self.max_rows - len(self.rows)
        if free_rows < self.nrs or (not self.refill and self.rows):
            return None
        if self.rows and free_rows < max(self.nrs, self.max_rows // 4):
            return None
        group = self._take(reader, free_rows // self.nrs)
        if not group:
            return None
        input_ids, mask = _left_pad(group, self.pad_id, self.device)
        newcomer = CausalSession(self.model, mask)
        logits = newcomer.step(input_ids)
        first = torch.tensor([x.ids[0] for x in group], dtype=torch.long, device=self.device)
        history = torch.where(mask.bool(), input_ids, first[:, None])
        limits = [self.limits(x) for x in group]
        lengths = mask.sum(dim=1)
        max_lengths = torch.tensor([m for m, _ in limits], dtype=torch.long, device=self.device)
        min_lengths = torch.tensor([m for _, m in limits], dtype=torch.long, device=self.device)
        if self.nrs > 1:
            newcomer.repeat(self.nrs)
            logits = logits.repeat_interleave(self.nrs, dim=0)
            history, lengths, max_lengths, min_lengths = (
                t.repeat_interleave(self.nrs, dim=0) for t in (history, lengths, max_lengths, min_lengths))
        for item in group:
            if self.cfg.do_sample:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(self.seed + item.index)
                self.generators[item.index] = generator
            self.rows.extend((item, sample) for sample in range(self.nrs))
        if self.session is None:
            self.session = newcomer
            self.history = history
        else:
            width = max(self.history.shape[1], history.shape[1])
            self.history = torch.cat([_pad_history(self.history, width), _pad_history(history, width)])
            self.session.pad_self_attention(width)
            newcomer.pad_self_attention(width)
            self.session.append(newcomer)
        self.lengths = torch.cat([self.lengths, lengths])
        self.prompt_lengths = torch.cat([self.prompt_lengths, lengths])
        self.max_lengths = torch.cat([self.max_lengths, max_lengths])
        self.min_lengths = torch.cat([self.min_lengths, min_lengths])
        return logits

    def _finish(self, done: torch.Tensor):
        finished = []
        lengths, prompts = self.lengths.tolist(), self.prompt_lengths.tolist()
        width = self.history.shape[1]
        for row in done.nonzero().flatten().tolist():
            item, sample = self.rows[row]
            item.outputs[sample] = self.history[row, width - lengths[row] + prompts[row]:].tolist()
            if len(item.outputs) == self.nrs:
                finished.append(item)
        keep = (~done).nonzero().flatten()
        self.rows = [self.rows[r] for r in keep.tolist()]
        for item in finished:
            self.source_tokens -= self._budget(item)
            self.generators.pop(item.index, None)
        for name in self._row_tensors():
            setattr(self, name, getattr(self, name)[keep])
        if self.rows:
            self.session.keep(keep)
            unused = int(self.history.shape[1] - self.lengths.max())
            if unused > 0:
                self.history = self.history[:, unused:]
                self.session.trim_left(unused)
        else:
            self.session = None
        for item in finished:
            outputs = [item.outputs[s] for s in range(self.nrs)]
            yield item.key, (outputs[0] if self.nrs == 1 else outputs)

    def run(self, reader: _InputReader):
        logits = None
        while True:
            new_logits = self._admit(reader)
            if new_logits is not None:
                logits = new_logits if logits is None else torch.cat([logits, new_logits])
            if logits is None:
                return
            scores = self.processors(self.history, logits, self.lengths, prompt_lengths=self.prompt_lengths,
                                     min_lengths=self.min_lengths, max_lengths=self.max_lengths)
            next_tokens = self._choose(scores)
            self.history = torch.cat([self.history, next_tokens[:, None]], dim=1)
            self.lengths = self.lengths + 1
            done = self.lengths >= self.max_lengths
            if self.settings.eos_token_ids is not None:
                done |= torch.isin(next_tokens, self.settings.eos_token_ids)
            if bool(done.any()):
                yield from self._finish(done)
            if not self.rows:
                logits = None
                continue
            logits = self.session.step(self.history[:, -1:])


def _pad_history(history: torch.Tensor, width: int) -> torch.Tensor:
    pad = width - history.shape[1]
    if pad <= 0:
        return history
    return torch.cat([history[:, :1].expand(-1, pad), history], dim=1)
