"""stream_generate: continuous batching for encoder-decoder generation.

The inference pipeline feeds an iterator of already-tokenised inputs and gets each input's output
as soon as it is finished, while the decoder batch stays full:

    for key, ids in stream_generate(model, ((row_id, token_ids) for ...), max_new_tokens=64):
        ...

How it works (greedy search and sampling):
- inputs are read ahead `lookahead` at a time and sorted by length, so inputs admitted together
  need little encoder padding;
- a row that emits eos (or reaches max_length) is yielded and leaves the batch at once;
- free slots are refilled from pending inputs: the newcomers are encoded and take their first
  decoder step together, then join the running batch. Their shorter self-attention cache is
  left-padded (masked by `decoder_attention_mask`), their encoder states right-padded (masked by
  the encoder attention mask), and they decode with their own positions. This needs a model that
  declares `_supports_left_padded_decoder = True` (and `_decoder_position_ids_kwarg`, the forward
  keyword taking per-row positions [rows, new_tokens], for absolute position embeddings); other
  models are served in waves: a new group starts when the previous one has finished, finished rows
  still leave the batch.
- beam search falls back to batched `generate` per length-sorted chunk.

Every output equals the corresponding row of `model.generate` for the same settings, cut after its
first generated eos (generate pads it further). With `do_sample=True`, input number i (0-based,
in iteration order) samples from its own `torch.Generator` seeded `seed + i`, so its output equals
`torch.manual_seed(seed + i); model.generate(that input alone, ...)` whatever else is in the batch;
without `seed`, one base seed is drawn from torch's global generator (reproducible under
`torch.manual_seed`).

Bad inputs (empty, non-integer, out-of-vocabulary ids, longer than the model's positions) raise a
ValueError naming their key before any output of their group is produced; no input is ever dropped.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Iterator

import torch
import torch.nn.functional as F

from .decoding import _check_probs
from .logits_process import build_processors
from .session import DecoderSession
from .utils import _decode_settings, _max_source_positions, _resolve_lengths, prepare_decoding


@dataclass
class _Input:
    index: int
    key: Hashable
    ids: list[int]
    outputs: dict[int, list[int]] = field(default_factory=dict)  # sample number -> tokens


@torch.inference_mode()
def stream_generate(
    model,
    inputs: Iterable[tuple[Hashable, list[int]]],
    generation_config=None,
    *,
    max_batch_size: int = 16,
    max_batch_tokens: int | None = None,
    lookahead: int | None = None,
    seed: int | None = None,
    refill: bool | None = None,
    **kwargs,
) -> Iterator[tuple[Hashable, Any]]:
    """Yield `(key, token_ids)` for every `(key, input_ids)` of `inputs`, each as soon as it is done.

    `token_ids` is the list of decoder tokens (starting with the decoder start token, ending with eos
    unless max_length was reached); with `num_return_sequences > 1` it is a list of such lists. For
    decoder-only models `input_ids` is the prompt and `token_ids` its continuation only
    (continuous_causal.py).
    `max_batch_size` caps the decoder rows decoded together, `max_batch_tokens` the source tokens held
    by them (encoder states and cross-attention cache grow with it); `lookahead` (default
    4 * max_batch_size) inputs are read ahead and sorted by length. `refill` (default: whether the model
    supports it) chooses slot refill over waves. Generation settings come from `generation_config` /
    kwargs exactly as for `generate`.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if max_batch_tokens is not None and max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
    cfg, model_kwargs, special = prepare_decoding(model, generation_config, None, dict(kwargs))
    if model_kwargs:
        raise ValueError(f"stream_generate got unknown arguments {sorted(model_kwargs)}; inputs come from `inputs`.")
    if isinstance(special["decoder_start"], (list, tuple)):
        raise ValueError("stream_generate needs a single decoder_start_token_id (one per row is not supported).")
    decoder_only = not getattr(model.config, "is_encoder_decoder", False)
    if not decoder_only:
        _resolve_lengths(model, cfg, 1, kwargs)
    if cfg.do_sample and seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    lookahead = lookahead or 4 * max_batch_size
    device = next(model.parameters()).device
    reader = _InputReader(model, inputs, lookahead, max_batch_tokens)
    if decoder_only:  # prompts in, continuations out (continuous_causal.py)
        from .continuous_causal import stream_generate_causal

        yield from stream_generate_causal(model, cfg, special, reader, kwargs, max_batch_size=max_batch_size,
                                          max_batch_tokens=max_batch_tokens, seed=seed,
                                          refill=True if refill is None else refill, device=device)
        return
    if cfg.num_beams > 1:
        yield from _beam_chunks(model, cfg, special, reader, max_batch_size, max_batch_tokens, device)
        return
    supported = bool(getattr(model, "_supports_left_padded_decoder", False))
    if refill and not supported:
        raise ValueError(
            f"{type(model).__name__} does not support slot refill (it does not declare "
            "`_supports_left_padded_decoder`); use refill=None or False (waves)."
        )
    engine = _Engine(model, cfg, special, device, max_batch_size, max_batch_tokens, seed,
                     supported if refill is None else refill)
    yield from engine.run(reader)


# ---------------------------------------------------------------------------------- input handling


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


def _pad_inputs(group: list[_Input], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x.ids) for x in group)
    input_ids = torch.full((len(group), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(group), width), dtype=torch.long, device=device)
    for row, item in enumerate(group):
        input_ids[row, : len(item.ids)] = torch.tensor(item.ids, dtype=torch.long)
        mask[row, : len(item.ids)] = 1
    return input_ids, mask


def _cut_after_eos(row: list[int], eos: list[int] | None, prompt_len: int) -> list[int]:
    if eos is None:
        return row
    for position in range(prompt_len, len(row)):
        if row[position] in eos:
            return row[: position + 1]
    return row


# ---------------------------------------------------------------------------------- beams: chunks


def _beam_chunks(model, cfg, special, reader: _InputReader, max_batch_size, max_batch_tokens, device):
    nrs = cfg.num_return_sequences
    per_chunk = max(1, max_batch_size // cfg.num_beams)
    pad_id = special["pad"] if special["pad"] is not None else 0
    while reader.has_pending():
        group = reader.take(per_chunk, max_batch_tokens)
        input_ids, mask = _pad_inputs(group, pad_id, device)
        plan = {
            "config": cfg, "input_ids": input_ids, "attention_mask": mask, "encoder_outputs": None,
            "decoder_input_ids": torch.full((len(group), 1), int(special["decoder_start"]), dtype=torch.long, device=device),
            "eos": special["eos"], "pad": special["pad"], "device": device,
        }
        output = model._run_plan(plan).tolist()
        for number, item in enumerate(group):
            rows = [_cut_after_eos(output[number * nrs + i], special["eos"], 1) for i in range(nrs)]
            yield item.key, (rows[0] if nrs == 1 else rows)


# ---------------------------------------------------------------------------------- greedy / sample


def _replay_global_draws(generator: torch.Generator, count: int) -> None:
    """Advance `generator` as `count` `torch.rand([])` calls advance the CPU global generator (a CUDA
    generator is untouched by them, so it is not advanced)."""
    if generator.device.type != "cpu":
        return
    for _ in range(count):
        torch.rand([], generator=generator)


class _Engine:
    """The running batch for greedy search / sampling with refill (or waves)."""

    def __init__(self, model, cfg, special, device, max_batch_size, max_batch_tokens, seed, refill: bool):
        self.model = model
        self.cfg = cfg
        self.device = device
        self.eos = special["eos"]
        self.pad_id = special["pad"] if special["pad"] is not None else 0
        self.start = None if special["decoder_start"] is None else int(special["decoder_start"])  # None: decoder-only
        self.settings = _decode_settings(cfg, self.eos, special["pad"], device)
        self.processors = build_processors(cfg, decoder_prompt_length=1, eos_token_ids=self.eos)
        self.nrs = cfg.num_return_sequences if cfg.do_sample else 1
        self.max_rows = max_batch_size
        self.max_tokens = max_batch_tokens
        self.seed = seed
        self.refill = refill
        self.position_kwarg = getattr(model, "_decoder_position_ids_kwarg", None) if self.refill else None
        # running state, one entry per decoder row
        self.session: DecoderSession | None = None
        self.history = torch.empty((0, 0), dtype=torch.long, device=device)  # left-padded with the start token
        self.lengths = torch.empty((0,), dtype=torch.long, device=device)
        self.decoder_mask = torch.empty((0, 0), dtype=torch.long, device=device)
        self.rows: list[tuple[_Input, int]] = []  # (input, sample number)
        self.source_tokens = 0
        self.generators: dict[int, torch.Generator] = {}
        # Scalar draws a forward takes from torch's (CPU) global generator (M2M100's LayerDrop coins);
        # replayed on each input's generator so its samples equal generate() on that input alone.
        self.rng_draws = getattr(model, "global_rng_draws_per_forward", (0, 0))

    # -- admission
    def _admit(self, reader: _InputReader) -> torch.Tensor | None:
        """Encode newcomers, run their first decoder step, merge them; return their logits."""
        free_rows = self.max_rows - len(self.rows)
        if free_rows < self.nrs or (not self.refill and self.rows):
            return None
        # A prefill costs about one decoder step over all weights, however few rows it admits: wait
        # until a quarter of the batch is free (or the batch is empty) before refilling.
        if self.rows and free_rows < max(self.nrs, self.max_rows // 4):
            return None
        budget = None if self.max_tokens is None else self.max_tokens - self.source_tokens
        if budget is not None and budget <= 0:
            return None
        group = reader.take(free_rows // self.nrs, budget)
        if not group:
            return None
        input_ids, mask = _pad_inputs(group, self.pad_id, self.device)
        hidden = self.model.get_encoder()(input_ids=input_ids, attention_mask=mask, return_dict=True).last_hidden_state
        newcomer = DecoderSession(self.model, hidden, mask)
        logits = newcomer.step(torch.full((len(group), 1), self.start, dtype=torch.long, device=self.device))
        if self.nrs > 1:
            newcomer.repeat(self.nrs)
            logits = logits.repeat_interleave(self.nrs, dim=0)
        count = len(group) * self.nrs
        for item in group:
            self.source_tokens += len(item.ids) * self.nrs
            if self.cfg.do_sample:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(self.seed + item.index)
                _replay_global_draws(generator, self.rng_draws[0])
                self.generators[item.index] = generator
            self.rows.extend((item, sample) for sample in range(self.nrs))

        width = self.history.shape[1] if self.session is not None else 1
        new_history = torch.full((count, width), self.start, dtype=torch.long, device=self.device)
        new_mask = torch.zeros((count, width), dtype=torch.long, device=self.device)
        new_mask[:, -1] = 1
        if self.session is None:
            self.session = newcomer
            self.history, self.decoder_mask = new_history, new_mask
        else:
            source = max(self.session.encoder_hidden_states.shape[1], newcomer.encoder_hidden_states.shape[1])
            self.session.pad_encoder(source)
            newcomer.pad_encoder(source)
            newcomer.pad_self_attention(self.session.self_attention_length())
            self.session.append(newcomer)
            self.history = torch.cat([self.history, new_history])
            self.decoder_mask = torch.cat([self.decoder_mask, new_mask])
        self.lengths = torch.cat([self.lengths, torch.ones(count, dtype=torch.long, device=self.device)])
        return logits

    # -- token choice
    def _choose(self, scores: torch.Tensor) -> torch.Tensor:
        if not self.cfg.do_sample:
            return torch.argmax(scores, dim=-1)
        probs = F.softmax(scores, dim=-1)
        _check_probs(probs)
        noise = torch.empty_like(probs)
        # one draw of [num_return_sequences, vocab] per input and step, as generate(that input) draws
        by_input: dict[int, list[int]] = {}
        for row, (item, _) in enumerate(self.rows):
            by_input.setdefault(item.index, []).append(row)
        for index, rows in by_input.items():
            _replay_global_draws(self.generators[index], self.rng_draws[1])
            draw = torch.empty((self.nrs, probs.shape[-1]), dtype=probs.dtype, device=probs.device)
            draw.exponential_(1, generator=self.generators[index])
            samples = torch.tensor([self.rows[r][1] for r in rows], device=probs.device)
            noise[rows] = draw.index_select(0, samples)
        return (probs / noise).argmax(dim=-1)

    # -- finishing
    def _finish(self, done: torch.Tensor):
        finished = []
        lengths = self.lengths.tolist()
        width = self.history.shape[1]
        for row in done.nonzero().flatten().tolist():
            item, sample = self.rows[row]
            item.outputs[sample] = self.history[row, width - lengths[row]:].tolist()
            if len(item.outputs) == self.nrs:
                finished.append(item)
        keep = (~done).nonzero().flatten()
        self.rows = [self.rows[r] for r in keep.tolist()]
        for item in finished:
            self.source_tokens -= len(item.ids) * self.nrs
            self.generators.pop(item.index, None)
        if self.rows:
            self.session.keep(keep)
            self.history = self.history[keep]
            self.lengths = self.lengths[keep]
            self.decoder_mask = self.decoder_mask[keep]
            self._trim_left_padding()
        else:
            self.session = None
            self.history = self.history[:0, :1]
            self.lengths = self.lengths[:0]
            self.decoder_mask = self.decoder_mask[:0, :1]
        for item in finished:
            outputs = [item.outputs[s] for s in range(self.nrs)]
            yield item.key, (outputs[0] if self.nrs == 1 else outputs)

    def _trim_left_padding(self) -> None:
        """Drop cache columns that are padding for every remaining row (after long rows left)."""
        unused = int(self.history.shape[1] - self.lengths.max())
        if unused <= 0:
            return
        self.history = self.history[:, unused:]
        self.decoder_mask = self.decoder_mask[:, unused:]
        self.session.past_key_values = tuple(
            (layer[0][:, :, unused:], layer[1][:, :, unused:]) + tuple(layer[2:])
            for layer in self.session.past_key_values
        )

    # -- main loop
    def run(self, reader: _InputReader):
        logits = None
        while True:
            new_logits = self._admit(reader)
            if new_logits is not None:
                logits = new_logits if logits is None else torch.cat([logits, new_logits])
            if logits is None:
                return  # nothing running, nothing pending
            padded = bool((self.lengths != self.history.shape[1]).any())
            scores = self.processors(self.history, logits, self.lengths if padded else None)
            next_tokens = self._choose(scores)
            self.history = torch.cat([self.history, next_tokens[:, None]], dim=1)
            self.decoder_mask = torch.cat([self.decoder_mask, torch.ones_like(next_tokens)[:, None]], dim=1)
            self.lengths = self.lengths + 1
            done = self.lengths >= self.settings.max_length
            if self.settings.eos_token_ids is not None:
                done |= torch.isin(next_tokens, self.settings.eos_token_ids)
            if bool(done.any()):
                yield from self._finish(done)
            if not self.rows:
                logits = None
                continue
            step_kwargs = {}
            if bool((self.lengths != self.history.shape[1]).any()):  # some rows are left-padded
                step_kwargs["decoder_attention_mask"] = self.decoder_mask
                if self.position_kwarg is not None:
                    step_kwargs[self.position_kwarg] = (self.lengths - 1)[:, None]
            logits = self.session.step(self.history[:, -1:], **step_kwargs)
