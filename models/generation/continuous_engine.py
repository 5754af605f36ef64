"""The continuous-batching engine: one running batch for greedy search and sampling, for every model kind.

`ContinuousEngine.run(reader)` keeps a batch of decoder rows (one per input and sample) decoding:
rows that finish leave at once and yield their input's output when its last sample is done; free
slots are refilled with pending inputs, which are prefilled together and join the running batch
with their shorter cache left-padded. What differs between model kinds is a strategy object
(`continuous_seq2seq.EncoderDecoderRows`, `continuous_causal.DecoderOnlyRows`):

- `take(engine, reader, max_inputs)`: which pending inputs fit the token budget;
- `prefill(group)`: a session for them, their first logits, their per-row tensors (at least
  `history` [rows, width] and `lengths` [rows]) and each input's (length, max_length);
- `width_tensors`: per-row tensors with one column per cached position, and how to left-pad them
  (`"first"`: repeat the first column, or a fill value);
- `join(session, newcomer, width)`: pad both sessions to `width` cached positions and append;
- `after_token(state)`: per-row tensors that grow with each token besides `history`;
- `row_limits(state)`: per-row length limits for the logits processors (keywords, may be empty);
- `step(session, state, padded)`: the next decoder step over the last tokens, `padded` telling
  whether some rows are left-padded;
- `output_prefix(item)`: what precedes an output's generated tokens (the decoder start token);
- `cost(item)`: the token budget one input holds while its rows run.

One decode step reads the device once (`decoding.read_step`: the new tokens, plus the invalid-row
flags when sampling). Lengths, limits, which rows finished, the outputs and the rows to keep live on
the host; what goes to the device (kept rows, sampling noise order) goes through
`transfer.to_device`, which does not wait.

Constrained outputs (`constraint`, a constraints.TokenConstraint): each row holds a grammar
matcher; the rows' token bitmask is applied to the logits on the device before the logits processors
(so top-k / top-p keep allowed tokens),
each new token is fed to its row's matcher on the host, and the next bitmask is computed on the host
right after the next forward is launched (overlapping it on a GPU). A row whose answer is complete
ends with an end token at once (the only token its mask would allow) instead of another step.

Sampling: input number i draws from its own `torch.Generator` seeded `seed + i` exactly the noise
`generate` of that input alone draws, so outputs do not depend on what else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import transfer
from .continuous_inputs import _Input, _InputReader
from .decoding import invalid_probability_rows, read_step


@dataclass
class _Row:
    """One running decoder row, on the host: its input, sample number, length and generated tokens."""

    item: _Input
    sample: int
    length: int  # tokens in its history (decoder start token / prompt included)
    max_length: int
    tokens: list[int] = field(default_factory=list)  # generated so far
    matcher: object = None  # its grammar state, with a constraint


def _replay_global_draws(generator: torch.Generator, count: int) -> None:
    """Advance `generator` as `count` `torch.rand([])` calls advance the CPU global generator (a CUDA
    generator is untouched by them, so it is not advanced)."""
    if generator.device.type != "cpu":
        return
    for _ in range(count):
        torch.rand([], generator=generator)


def left_pad_columns(tensor: torch.Tensor, width: int, fill) -> torch.Tensor:
    """Left-pad [rows, w] to `width` columns with `fill` ("first": the row's first column)."""
    pad = width - tensor.shape[1]
    if pad <= 0:
        return tensor
    if fill == "first":
        return torch.cat([tensor[:, :1].expand(-1, pad), tensor], dim=1)
    return torch.cat([tensor.new_full((tensor.shape[0], pad), fill), tensor], dim=1)


class ContinuousEngine:
    """The running batch (see the module docstring); `strategy` supplies the model kind."""

    def __init__(self, model, strategy, processors, *, eos: list[int] | None, do_sample: bool, nrs: int, device,
                 max_batch_size: int, max_batch_tokens: int | None, seed: int | None, refill: bool,
                 stats: dict | None = None, constraint=None, eos_order: list[int] | None = None):
        self.model = model
        self.strategy = strategy
        self.processors = processors
        self.eos = frozenset(eos or ())
        self.do_sample = do_sample
        self.nrs = nrs
        self.device = device
        self.max_rows = max_batch_size
        self.max_tokens = max_batch_tokens
        self.seed = seed
        self.refill = refill
        # What the run held at most (`peak_kv_tokens`: KV-cache positions, padding included, of the
        # sessions that expose `cached_tokens`); the strategy adds its own counts.
        self.stats = stats if stats is not None else {}
        self.stats.setdefault("peak_kv_tokens", 0)
        self.constraint = constraint
        self.end_token = (eos_order or sorted(self.eos) or [None])[0]  # what a complete constrained answer ends with
        self._mask: torch.Tensor | None = None  # the host bitmask of the running rows, computed after each step
        # running state
        self.session = None
        self.state: dict[str, torch.Tensor] = {}  # per-row tensors: history, lengths, the strategy's own
        self.rows: list[_Row] = []
        self.source_tokens = 0  # token budget held by the running inputs (strategy.cost)
        self.generators: dict[int, torch.Generator] = {}
        self._noise_rows: torch.Tensor | None = None  # row -> its noise row, when some samples left
        # Scalar draws a forward takes from torch's (CPU) global generator (M2M100's LayerDrop coins);
        # replayed on each input's generator so its samples equal generate() on that input alone.
        self.rng_draws = getattr(model, "global_rng_draws_per_forward", (0, 0))

    # -- admission
    def _admit(self, reader: _InputReader) -> torch.Tensor | None:
        """Prefill newcomers and merge them into the running batch; return their logits."""
        free_rows = self.max_rows - len(self.rows)
        if free_rows < self.nrs or (not self.refill and self.rows):
            return None
        # A prefill costs about one decoder step over all weights, however few rows it admits: wait
        # until a quarter of the batch is free (or the batch is empty) before refilling.
        if self.rows and free_rows < max(self.nrs, self.max_rows // 4):
            return None
        group = self.strategy.take(self, reader, free_rows // self.nrs)
        if not group:
            return None
        newcomer, logits, tensors, limits = self.strategy.prefill(group)
        if self.nrs > 1:
            newcomer.repeat(self.nrs)
            logits = logits.repeat_interleave(self.nrs, dim=0)
            tensors = {name: t.repeat_interleave(self.nrs, dim=0) for name, t in tensors.items()}
        for item, (length, max_length) in zip(group, limits):
            if self.do_sample:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(self.seed + item.index)
                _replay_global_draws(generator, self.rng_draws[0])
                self.generators[item.index] = generator
            self.rows.extend(_Row(item, sample, length, max_length,
                                  matcher=None if self.constraint is None else self.constraint.new_matcher())
                             for sample in range(self.nrs))
        if self.session is None:
            self.session, self.state = newcomer, tensors
        else:
            width = max(self.state["history"].shape[1], tensors["history"].shape[1])
            for name, fill in self.strategy.width_tensors.items():
                self.state[name] = left_pad_columns(self.state[name], width, fill)
                tensors[name] = left_pad_columns(tensors[name], width, fill)
            self.state = {name: torch.cat([t, tensors[name]]) for name, t in self.state.items()}
            self.strategy.join(self.session, newcomer, width)
        self._note_kv()
        self._rows_changed()
        return logits

    # -- token choice
    def _choose(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next token of every row, and (sampling) the [rows] flags of rows without a valid distribution."""
        if not self.do_sample:
            return torch.argmax(scores, dim=-1), None
        probs = F.softmax(scores, dim=-1)
        invalid = invalid_probability_rows(probs)
        # one draw of [num_return_sequences, vocab] per input and step, as generate(that input) draws;
        # an input's rows are consecutive, so the draws in row order are the inputs' in row order
        draws = []
        previous = None
        for row in self.rows:
            if row.item.index == previous:
                continue
            previous = row.item.index
            generator = self.generators[previous]
            _replay_global_draws(generator, self.rng_draws[1])
            draw = torch.empty((self.nrs, probs.shape[-1]), dtype=probs.dtype, device=probs.device)
            draws.append(draw.exponential_(1, generator=generator))
        noise = torch.cat(draws) if len(draws) > 1 else draws[0]
        if self._noise_rows is not None:
            noise = noise.index_select(0, self._noise_rows)
        return (probs / noise).argmax(dim=-1), invalid

    def _rows_changed(self) -> None:
        """Recompute which noise row each row takes (identity unless some samples already left)."""
        self._noise_rows = None
        if not self.do_sample or self.nrs == 1:
            return
        index, offset, previous = [], -self.nrs, None
        for row in self.rows:
            if row.item.index != previous:
                offset, previous = offset + self.nrs, row.item.index
            index.append(offset + row.sample)
        if offset + self.nrs != len(index) or index != list(range(len(index))):  # not every sample of every input
            self._noise_rows = transfer.to_device(index, self.device)

    # -- finishing
    def _finish(self, done: list[bool]):
        finished = []
        for row, flag in zip(self.rows, done):
            if flag:
                row.item.outputs[row.sample] = self.strategy.output_prefix(row.item) + row.tokens
                if len(row.item.outputs) == self.nrs:
                    finished.append(row.item)
        staying = [number for number, flag in enumerate(done) if not flag]
        self.rows = [self.rows[number] for number in staying]
        for item in finished:
            self.source_tokens -= self.strategy.cost(item)
            self.generators.pop(item.index, None)
        if self.rows:
            keep = transfer.to_device(staying, self.device)
            self.session.keep(keep)
            self.state = {name: t.index_select(0, keep) for name, t in self.state.items()}
            # drop cache columns that are padding for every remaining row (after long rows left)
            unused = self.state["history"].shape[1] - max(row.length for row in self.rows)
            if unused > 0:
                for name in self.strategy.width_tensors:
                    self.state[name] = self.state[name][:, unused:]
                self.session.trim_left(unused)
        else:
            self.session, self.state = None, {}
        self._rows_changed()
        for item in finished:
            outputs = [item.outputs[s] for s in range(self.nrs)]
            yield item.key, (outputs[0] if self.nrs == 1 else outputs)

    def _note_kv(self) -> None:
        cached = getattr(self.session, "cached_tokens", None)
        if cached is not None:
            self.stats["peak_kv_tokens"] = max(self.stats["peak_kv_tokens"], cached())
    def _constrained(self, scores: torch.Tensor) -> torch.Tensor:
        """The scores with each row's constraint mask applied (rows admitted since the mask was
        computed come last and start fresh)."""
        if self.constraint is None:
            return scores
        known = 0 if self._mask is None else self._mask.shape[0]
        mask = self._mask
        if known < len(self.rows):
            fresh = self.constraint.initial(len(self.rows) - known)
            mask = fresh if mask is None else torch.cat([mask, fresh])
        self._mask = None
        return self.constraint.apply(scores, mask)

    def _is_padded(self) -> bool:
        width = self.state["history"].shape[1]
        return any(row.length != width for row in self.rows)

    # -- main loop
    def run(self, reader: _InputReader):
        logits = None
        while True:
            new_logits = self._admit(reader)
            if new_logits is not None:
                logits = new_logits if logits is None else torch.cat([logits, new_logits])
            if logits is None:
                return  # nothing running, nothing pending
            state = self.state
            lengths = state["lengths"] if self._is_padded() else None
            # the constraint masks the raw logits, so top-k / top-p then choose among allowed tokens only
            scores = self.processors(state["history"], self._constrained(logits), lengths,
                                     **self.strategy.row_limits(state))
            next_tokens, invalid = self._choose(scores)
            state["history"] = torch.cat([state["history"], next_tokens[:, None]], dim=1)
            state["lengths"] = state["lengths"] + 1
            self.strategy.after_token(state)
            tokens, _ = read_step(next_tokens, invalid)  # the step's one device read
            done = []
            for row, token in zip(self.rows, tokens):
                row.tokens.append(token)
                row.length += 1
                finished = row.length >= row.max_length or token in self.eos
                if row.matcher is not None:
                    self.constraint.consume(row.matcher, token, row.item.key)
                    if not finished and self.constraint.complete(row.matcher):
                        row.tokens.append(self.end_token)  # the only token its mask allows now
                        row.length += 1
                        finished = True
                done.append(finished)
            if any(done):
                yield from self._finish(done)
            if not self.rows:
                logits = None
                continue
            logits = self.strategy.step(self.session, self.state, self._is_padded())
            self._note_kv()
            if self.constraint is not None:  # on the host while the device runs the step
                self._mask = self.constraint.fill([row.matcher for row in self.rows])
