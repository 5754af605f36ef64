"""Continuous batching of encoder-decoder models: the engine strategy and the beam-search fallback.

Newcomers are encoded together, take their first decoder step from the decoder start token, and join
the running batch: their shorter self-attention cache is left-padded (masked by
`decoder_attention_mask`), their encoder states right-padded (masked by the encoder attention mask),
and they decode with their own positions. This needs a model that declares
`_supports_left_padded_decoder = True` (and `_decoder_position_ids_kwarg`, the forward keyword
taking per-row positions [rows, new_tokens], for absolute position embeddings); other models are
served in waves (the engine's `refill=False`). An output is the decoder tokens: the start token,
then the generated ones, ending with eos unless `max_length` was reached.
"""

from __future__ import annotations

import torch

from .continuous_inputs import _Input, _InputReader, pad_token_lists
from .session import DecoderSession


def _cut_after_eos(row: list[int], eos: list[int] | None, prompt_len: int) -> list[int]:
    if eos is None:
        return row
    for position in range(prompt_len, len(row)):
        if row[position] in eos:
            return row[: position + 1]
    return row


class EncoderDecoderRows:
    """Engine strategy (see continuous_engine.py) for encoder-decoder models.

    Per-row tensors: `history` (left-padded with the start token), `lengths`, and `decoder_mask`
    (1 where the row has a real decoder token; the cache is left-padded where it has 0).
    """

    width_tensors = {"history": "first", "decoder_mask": 0}

    def __init__(self, model, *, start: int, pad_id: int, max_length: int, nrs: int, refill: bool, device):
        self.model = model
        self.start = start
        self.pad_id = pad_id
        self.max_length = max_length
        self.nrs = nrs
        self.device = device
        self.position_kwarg = getattr(model, "_decoder_position_ids_kwarg", None) if refill else None

    def cost(self, item: _Input) -> int:
        return len(item.ids) * self.nrs  # source tokens held (encoder states, cross-attention cache)

    def take(self, engine, reader: _InputReader, max_inputs: int) -> list[_Input]:
        budget = None if engine.max_tokens is None else engine.max_tokens - engine.source_tokens
        if budget is not None and budget <= 0:
            return []
        group = reader.take(max_inputs, budget)
        engine.source_tokens += sum(self.cost(item) for item in group)
        return group

    def prefill(self, group: list[_Input]):
        input_ids, mask = pad_token_lists(group, self.pad_id, self.device, left=False)
        hidden = self.model.get_encoder()(input_ids=input_ids, attention_mask=mask, return_dict=True).last_hidden_state
        session = DecoderSession(self.model, hidden, mask)
        count = len(group)
        logits = session.step(torch.full((count, 1), self.start, dtype=torch.long, device=self.device))
        tensors = {
            "history": torch.full((count, 1), self.start, dtype=torch.long, device=self.device),
            "lengths": torch.ones(count, dtype=torch.long, device=self.device),
            "decoder_mask": torch.ones((count, 1), dtype=torch.long, device=self.device),
        }
        return session, logits, tensors, [(1, self.max_length)] * count

    def join(self, session: DecoderSession, newcomer: DecoderSession, width: int) -> None:
        source = max(session.encoder_hidden_states.shape[1], newcomer.encoder_hidden_states.shape[1])
        session.pad_encoder(source)
        newcomer.pad_encoder(source)
        session.pad_self_attention(width)
        newcomer.pad_self_attention(width)
        session.append(newcomer)

    def after_token(self, state: dict) -> None:
        mask = state["decoder_mask"]
        state["decoder_mask"] = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)

    def row_limits(self, state: dict) -> dict:
        return {}

    def step(self, session: DecoderSession, state: dict, padded: bool) -> torch.Tensor:
        kwargs = {}
        if padded:  # some rows are left-padded
            kwargs["decoder_attention_mask"] = state["decoder_mask"]
            if self.position_kwarg is not None:
                kwargs[self.position_kwarg] = (state["lengths"] - 1)[:, None]
        return session.step(state["history"][:, -1:], **kwargs)

    def output_prefix(self, item: _Input) -> list[int]:
        return [self.start]


def beam_chunks(model, cfg, special, reader: _InputReader, max_batch_size, max_batch_tokens, device):
    """Beam search: batched `generate` per length-sorted chunk of inputs."""
    nrs = cfg.num_return_sequences
    per_chunk = max(1, max_batch_size // cfg.num_beams)
    pad_id = special["pad"] if special["pad"] is not None else 0
    while reader.has_pending():
        group = reader.take(per_chunk, max_batch_tokens)
        input_ids, mask = pad_token_lists(group, pad_id, device, left=False)
        plan = {
            "config": cfg, "input_ids": input_ids, "attention_mask": mask, "encoder_outputs": None,
            "decoder_input_ids": torch.full((len(group), 1), int(special["decoder_start"]), dtype=torch.long, device=device),
            "eos": special["eos"], "pad": special["pad"], "device": device,
        }
        output = model._run_plan(plan).tolist()
        for number, item in enumerate(group):
            rows = [_cut_after_eos(output[number * nrs + i], special["eos"], 1) for i in range(nrs)]
            yield item.key, (rows[0] if nrs == 1 else rows)
