"""The decoding loops: greedy / multinomial sampling and beam search (optionally sampled).

Both reproduce transformers 4.57.6's token choices exactly (same floating-point operations on the
same scores, same tie-breaking `topk`/`argmax` calls, same finalisation and padding), but run only
the rows that still matter through the model:
- greedy / sampling: a row leaves the batch as soon as it emits eos (its cache rows are dropped);
- beam search: an input leaves once its finished hypotheses can no longer change (the reference
  keeps decoding it, with penalties that make every new candidate lose);
outputs are written back at their original positions, padded as the reference pads them.

Sampling draws its randomness exactly as `torch.multinomial` does on the reference's full batch
(`q ~ Exp(1)` of shape [all rows, candidates], choice = argmax / top-k of probs / q), so a seeded
run gives the same tokens as transformers even though finished rows are no longer computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import transfer
from .logits_process import ProcessorList
from .session import DecoderSession


@dataclass
class DecodeSettings:
    max_length: int  # total decoder length, decoder prompt included
    eos_token_ids: torch.Tensor | None  # 1-D LongTensor or None
    eos_token_list: list[int] | None  # the same ids on the host (stop checks on the step's tokens)
    pad_token_id: int | None
    do_sample: bool
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False


def _hits_eos(tokens: torch.Tensor, eos: torch.Tensor | None) -> torch.Tensor:
    if eos is None:
        return torch.zeros_like(tokens, dtype=torch.bool)
    return torch.isin(tokens, eos)


def _sampling_noise(shape, device) -> torch.Tensor:
    """Exp(1) noise exactly as torch.multinomial's sampling path draws it (global generator)."""
    return torch.empty(shape, dtype=torch.float32, device=device).exponential_(1)


def invalid_probability_rows(probs: torch.Tensor) -> torch.Tensor:
    """[rows] bool on the device: rows whose sampling distribution is unusable (NaN / inf / all zero)."""
    return ~torch.isfinite(probs).all(dim=-1) | (probs.sum(dim=-1) <= 0)


def raise_invalid_probabilities(rows: list[int]) -> None:
    """The error for sampling rows without a valid probability (`rows`: their numbers in the batch)."""
    raise RuntimeError(
        f"sampling rows {rows[:10]} have no valid probability (all scores -inf or NaN); relax top_k/top_p, "
        "bad_words_ids or forced tokens."
    )


def read_step(next_tokens: torch.Tensor, invalid: torch.Tensor | None) -> tuple[list[int], list[bool] | None]:
    """The one device read of a decode step: the new tokens (and, when sampling, the invalid-row flags).

    Raises the sampling error for invalid rows, so no caller uses tokens drawn from them.
    """
    if invalid is None:
        return transfer.to_host(next_tokens), None
    tokens, flags = transfer.to_host(torch.stack([next_tokens, invalid.to(next_tokens.dtype)]))
    bad = [row for row, flag in enumerate(flags) if flag]
    if bad:
        raise_invalid_probabilities(bad)
    return tokens, flags


# ---------------------------------------------------------------------------------- greedy / sample


def greedy_or_sample(
    session: DecoderSession,
    decoder_input_ids: torch.Tensor,
    processors: ProcessorList,
    settings: DecodeSettings,
    expand: int = 1,
    constraint=None,
) -> torch.Tensor:
    """Decode `decoder_input_ids` [inputs, prompt] (one session row per input before expansion).

    `constraint` (constraints.TokenConstraint) masks each row's logits to its grammar before the
    processors; a row whose answer is complete can then only take an end token.

    `expand` > 1 (several samples per input) repeats each input after the first step. Returns
    [inputs * expand, length] with finished rows padded with `pad_token_id`, as the reference.
    Each step reads the device once (`read_step`: the new tokens); which rows finished and which
    stay is decided on the host from them.
    """
    device = decoder_input_ids.device
    eos, pad = settings.eos_token_ids, settings.pad_token_id
    eos_ids = frozenset() if eos is None else frozenset(settings.eos_token_list)
    sequences = decoder_input_ids
    total_rows = sequences.shape[0] * expand
    cur_len = sequences.shape[1]
    active_rows = list(range(total_rows))  # original row of each active row (host)
    active = torch.arange(total_rows, device=device)  # the same on the device (sampling noise rows)
    finished_rows: list[list[int]] = []
    finished_seqs: list[torch.Tensor] = []

    logits = session.step(sequences)
    if expand > 1:
        session.repeat(expand)
        logits = logits.repeat_interleave(expand, dim=0)
        sequences = sequences.repeat_interleave(expand, dim=0)
    matchers = None if constraint is None else [constraint.new_matcher() for _ in range(total_rows)]
    mask = None if constraint is None else constraint.initial(total_rows)
    while True:
        if constraint is not None:
            logits = constraint.apply(logits, mask)
        scores = processors(sequences, logits)
        invalid = None
        if settings.do_sample:
            noise = _sampling_noise((total_rows, scores.shape[-1]), device)
            probs = F.softmax(scores, dim=-1)
            invalid = invalid_probability_rows(probs)
            next_tokens = (probs / noise.index_select(0, active)).argmax(dim=-1)
        else:
            next_tokens = torch.argmax(scores, dim=-1)
        sequences = torch.cat([sequences, next_tokens[:, None]], dim=-1)
        cur_len += 1
        tokens, _ = read_step(next_tokens, invalid)
        if matchers is not None:
            for row, token in enumerate(tokens):
                constraint.consume(matchers[row], token, active_rows[row])
        if cur_len >= settings.max_length:
            done = [True] * len(tokens)
        else:
            done = [token in eos_ids for token in tokens]
        if any(done):
            leaving = [row for row, flag in enumerate(done) if flag]
            finished_rows.append([active_rows[row] for row in leaving])
            finished_seqs.append(sequences.index_select(0, transfer.to_device(leaving, device)))
            if len(leaving) == len(done):
                break
            staying = [row for row, flag in enumerate(done) if not flag]
            keep = transfer.to_device(staying, device)
            active_rows = [active_rows[row] for row in staying]
            active, sequences = active.index_select(0, keep), sequences.index_select(0, keep)
            session.keep(keep)
            if matchers is not None:
                matchers = [matchers[row] for row in staying]
        logits = session.step(sequences[:, -1:])
        if matchers is not None:  # on the host while the device runs the step
            mask = constraint.fill(matchers)

    fill = pad if pad is not None else 0
    output = torch.full((total_rows, cur_len), fill, dtype=sequences.dtype, device=device)
    for rows, seqs in zip(finished_rows, finished_seqs):
        output[transfer.to_device(rows, device), : seqs.shape[1]] = seqs
    return output


# ---------------------------------------------------------------------------------- beam search


def _gather_beams(tensor: torch.Tensor, beam_indices: torch.Tensor) -> torch.Tensor:
    while beam_indices.dim() < tensor.dim():
        beam_indices = beam_indices.unsqueeze(-1)
    return torch.take_along_dim(tensor, beam_indices, dim=1)


class _BeamState:
    """The reference's beam bookkeeping for the inputs still being decoded ([inputs, beams, ...])."""

    FIELDS = ("running_sequences", "sequences", "running_beam_scores", "beam_scores", "is_sent_finished",
              "heuristic_unsatisfied", "running_beam_indices", "beam_indices", "original_index")

    def __init__(self, prompt: torch.Tensor, num_beams: int, max_length: int, fill_value: int):
        batch, prompt_len = prompt.shape
        device = prompt.device
        self.running_sequences = torch.full((batch, num_beams, max_length), fill_value, dtype=torch.int64, device=device)
        self.running_sequences[:, :, :prompt_len] = prompt[:, None, :]
        self.sequences = self.running_sequences.clone()
        self.running_beam_scores = torch.zeros((batch, num_beams), dtype=torch.float, device=device)
        self.running_beam_scores[:, 1:] = -1e9
        self.beam_scores = torch.full((batch, num_beams), -1e9, dtype=torch.float, device=device)
        self.is_sent_finished = torch.zeros((batch, num_beams), dtype=torch.bool, device=device)
        self.heuristic_unsatisfied = torch.ones((batch, 1), dtype=torch.bool, device=device)
        self.running_beam_indices = torch.full((batch, num_beams, max_length - prompt_len), -1, dtype=torch.int32,
                                               device=device)
        self.beam_indices = self.running_beam_indices.clone()
        self.original_index = torch.arange(batch, device=device)

    def keep(self, items: torch.Tensor) -> None:
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name).index_select(0, items))


def beam_search(
    session: DecoderSession,
    decoder_input_ids: torch.Tensor,
    processors: ProcessorList,
    settings: DecodeSettings,
) -> torch.Tensor:
    """Beam search (`do_sample=True`: beam sampling) for `decoder_input_ids` [inputs, prompt].

    The session holds one row per input; it is expanded to `num_beams` rows after the first step.
    Returns [inputs * num_return_sequences, length], as the reference. Each step reads the device
    once (the stop conditions and which inputs leave, in one small transfer).
    """
    device = decoder_input_ids.device
    num_beams, eos = settings.num_beams, settings.eos_token_ids
    early_stopping, length_penalty, max_length = settings.early_stopping, settings.length_penalty, settings.max_length
    batch, prompt_len = decoder_input_ids.shape
    cur_len = prompt_len
    n_eos = eos.shape[0] if eos is not None else 0
    beams_to_keep = max(2, 1 + n_eos) * num_beams
    top_num_beam_mask = torch.cat(
        (torch.ones(num_beams, dtype=torch.bool), torch.zeros(beams_to_keep - num_beams, dtype=torch.bool))
    ).to(device)
    # The reference fills unused positions with `pad_token_id or eos_token_id[0]` (a pad id of 0 is
    # falsy there, so T5-style models get eos), or -1 without eos.
    if eos is None:
        fill_value = -1
    else:
        fill_value = settings.pad_token_id if settings.pad_token_id else settings.eos_token_list[0]
    state = _BeamState(decoder_input_ids, num_beams, max_length, fill_value)
    done_items: list[torch.Tensor] = []
    done_sequences: list[torch.Tensor] = []
    done_lengths: list[torch.Tensor] = []
    nrs = settings.num_return_sequences

    def retire(items: torch.Tensor) -> None:
        done_items.append(state.original_index[items])
        done_sequences.append(state.sequences[items, :nrs])
        done_lengths.append((state.beam_indices[items, :nrs] + 1).bool().sum(dim=-1))

    first_logits = session.step(decoder_input_ids)
    session.repeat(num_beams)
    logits = first_logits.repeat_interleave(num_beams, dim=0)
    while True:
        items = state.running_sequences.shape[0]
        flat_running = state.running_sequences[:, :, :cur_len].reshape(items * num_beams, cur_len)
        log_probs = F.log_softmax(logits, dim=-1)
        log_probs = processors(flat_running, log_probs)
        vocab_size = log_probs.shape[-1]
        log_probs = log_probs.view(items, num_beams, vocab_size) + state.running_beam_scores[:, :, None]
        log_probs = log_probs.reshape(items, num_beams * vocab_size)

        # -- top-k continuations (sampled without replacement when do_sample)
        if settings.do_sample:
            noise = _sampling_noise((batch, num_beams * vocab_size), device)
            probs = F.softmax(log_probs, dim=-1)
            invalid = invalid_probability_rows(probs)
            topk_indices = torch.topk(probs / noise.index_select(0, state.original_index), beams_to_keep).indices
            topk_log_probs = torch.gather(log_probs, 1, topk_indices)
        else:
            invalid = None
            topk_log_probs, topk_indices = torch.topk(log_probs, k=beams_to_keep)
        topk_current_beam_indices = topk_indices // vocab_size
        topk_running_beam_indices = _gather_beams(state.running_beam_indices, topk_current_beam_indices)
        topk_running_sequences = _gather_beams(state.running_sequences, topk_current_beam_indices)
        topk_ids = topk_indices % vocab_size
        topk_running_sequences[:, :, cur_len] = topk_ids
        batch_offset = torch.arange(items, device=device).view(-1, 1) * num_beams
        topk_running_beam_indices[:, :, cur_len - prompt_len] = (topk_current_beam_indices + batch_offset).to(torch.int32)

        # -- stopping criteria on the candidates (eos, max length)
        hits = _hits_eos(topk_ids, eos)
        if cur_len + 1 >= max_length:
            hits = torch.ones_like(hits)

        # -- next running beams
        topk_running_log_probs = topk_log_probs + hits.to(torch.float32) * -1.0e9
        next_topk_indices = torch.topk(topk_running_log_probs, k=num_beams)[1]
        state.running_sequences = _gather_beams(topk_running_sequences, next_topk_indices)
        state.running_beam_scores = _gather_beams(topk_running_log_probs, next_topk_indices)
        state.running_beam_indices = _gather_beams(topk_running_beam_indices, next_topk_indices)

        # -- finished hypotheses
        did_finish = hits & top_num_beam_mask[None, :]
        finished_scores = topk_log_probs / ((cur_len + 1 - prompt_len) ** length_penalty)
        beams_full = torch.all(state.is_sent_finished, dim=-1, keepdim=True) & (early_stopping is True)
        finished_scores += beams_full.to(torch.float32) * -1.0e9
        finished_scores += (~state.heuristic_unsatisfied).to(torch.float32) * -1.0e9
        finished_scores += (~did_finish) * -1.0e9
        merged_sequences = torch.cat((state.sequences, topk_running_sequences), dim=1)
        merged_scores = torch.cat((state.beam_scores, finished_scores), dim=1)
        merged_beam_indices = torch.cat((state.beam_indices, topk_running_beam_indices), dim=1)
        merged_finished = torch.cat((state.is_sent_finished, did_finish), dim=1)
        top_merged = torch.topk(merged_scores, k=num_beams)[1]
        state.sequences = _gather_beams(merged_sequences, top_merged)
        state.beam_scores = _gather_beams(merged_scores, top_merged)
        state.beam_indices = _gather_beams(merged_beam_indices, top_merged)
        state.is_sent_finished = _gather_beams(merged_finished, top_merged)

        beam_idx = state.running_beam_indices[..., cur_len - prompt_len].reshape(-1).to(torch.long)
        cur_len += 1

        # -- early-stop heuristic (reference `_check_early_stop_heuristic`)
        if early_stopping == "never" and length_penalty > 0.0:
            best_length = max_length - prompt_len
        else:
            best_length = cur_len - prompt_len
        best_running = state.running_beam_scores[:, :1] / (best_length**length_penalty)
        worst_finished = torch.where(
            state.is_sent_finished, torch.min(state.beam_scores, dim=1, keepdim=True)[0], -1.0e9
        )
        state.heuristic_unsatisfied = state.heuristic_unsatisfied & torch.any(
            best_running > worst_finished, dim=-1, keepdim=True
        )
        all_finished = torch.all(state.is_sent_finished, dim=-1)
        # inputs whose finished hypotheses can no longer change (they leave the batch below)
        frozen = ~state.heuristic_unsatisfied[:, 0]
        if early_stopping is True:
            frozen |= all_finished
        frozen &= state.beam_scores.min(dim=-1).values > -1.0e9

        # -- the step's one device read: the stop conditions, the frozen inputs, invalid sampling rows
        checks = [torch.stack([state.heuristic_unsatisfied.any(), all_finished.all(), hits.all()]), frozen]
        flags = transfer.to_host(torch.cat(checks + ([] if invalid is None else [invalid])))
        if invalid is not None:
            bad = [item for item, flag in enumerate(flags[3 + items:]) if flag]
            if bad:
                raise_invalid_probabilities(bad)
        improvement_possible, everything_finished, every_candidate_hit = flags[:3]
        open_beam = not (everything_finished and early_stopping is True)
        if not (improvement_possible and open_beam and not every_candidate_hit):
            break

        # -- inputs whose finished hypotheses can no longer change leave the batch
        frozen_flags = flags[3:3 + items]
        if any(frozen_flags):
            retire(transfer.to_device([i for i, flag in enumerate(frozen_flags) if flag], device))
            keep_items = transfer.to_device([i for i, flag in enumerate(frozen_flags) if not flag], device)
            state.keep(keep_items)
            keep_rows = (keep_items[:, None] * num_beams + torch.arange(num_beams, device=device)).reshape(-1)
            # beam_idx holds old row numbers; beams only move within their input, so the kept inputs'
            # entries point at kept rows and one index_select does both the departure and the reorder.
            self_rows = beam_idx.view(items, num_beams).index_select(0, keep_items).reshape(-1)
            session.keep(keep_rows, self_attention_rows=self_rows)
        else:
            session.reorder_self_attention(beam_idx)
        logits = session.step(state.running_sequences[:, :, cur_len - 1].reshape(-1, 1))

    retire(torch.arange(state.running_sequences.shape[0], device=device))
    items_order = torch.cat(done_items)
    sequences = torch.empty((batch, nrs, max_length), dtype=torch.int64, device=device)
    sequences[items_order] = torch.cat(done_sequences)
    lengths = torch.empty((batch, nrs), dtype=torch.long, device=device)
    lengths[items_order] = torch.cat(done_lengths)
    output_length = prompt_len + transfer.to_host(lengths.max())  # once per call, after the last step
    return sequences.reshape(batch * nrs, max_length)[:, :output_length]
