"""Logits processors: the reference's score manipulations, vectorised over every row at once.

Each processor is a callable `(input_ids, scores, lengths=None) -> scores`:
- `input_ids` [rows, seq]: the decoder tokens so far (decoder start token included), one row per
  hypothesis;
- `scores` [rows, vocab] float32: logits (greedy / sampling) or log-probabilities (beam search);
- `lengths` [rows] (optional): each row's own current length when rows are LEFT-padded to a common
  width (continuous batching, where rows started at different steps). None means every row has
  `input_ids.shape[1]` tokens, which is the case inside `generate`.
- length-dependent processors also take per-row limits as keywords when rows have prompts of their
  own (continuous batching of decoder-only models): `prompt_lengths`, `min_lengths`, `max_lengths`
  ([rows] tensors, what `generate` of that row alone would resolve); absent, their own values hold.

Numerically each processor performs the same floating-point operations as its transformers 4.57.6
namesake (so token choices match bit for bit), but no processor loops over hypotheses in Python:
no-repeat-ngram and bad-words matching are tensor comparisons. No processor reads the device either
(no `.item()`, `bool(tensor)`, `nonzero`, list-indexed assignment): decisions that are the same for
every row are taken from host values (shapes, configured limits), per-row ones are masks, and the
token-id tensors they need are built once (through `transfer.to_device`) and cached per vocabulary
size and device. See transfer.py for why.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from . import transfer

Processor = Callable[..., torch.Tensor]

# Fields of GenerationConfig that change the scores and that this module implements, with the value
# meaning "off". Anything else set to a non-default value is rejected by `check_supported`.
UNSUPPORTED_FIELDS: dict[str, object] = {
    "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
    "encoder_repetition_penalty": 1.0, "encoder_no_repeat_ngram_size": 0, "renormalize_logits": False,
    "remove_invalid_values": False, "exponential_decay_length_penalty": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "sequence_bias": None, "token_healing": False, "guidance_scale": None,
    "watermarking_config": None, "max_time": None, "stop_strings": None, "penalty_alpha": None,
    "dola_layers": None, "num_beam_groups": 1, "diversity_penalty": 0.0, "constraints": None,
    "force_words_ids": None, "prompt_lookup_num_tokens": None, "assistant_early_exit": None,
    "prefill_chunk_size": None, "return_dict_in_generate": False, "output_scores": False,
    "output_logits": None, "output_attentions": False, "output_hidden_states": False,
}


# transformers' `cache_implementation` values that only choose how the KV cache is laid out in memory
# (static / sliding-window / offloaded buffers; Gemma's generation_config.json says "hybrid"): the
# attention computed is the same, so our own cache serves them. "quantized" changes the keys and
# values themselves and is refused.
CACHE_LAYOUTS = (None, "dynamic", "dynamic_full", "offloaded", "static", "offloaded_static", "sliding_window",
                 "hybrid", "hybrid_chunked", "offloaded_hybrid", "offloaded_hybrid_chunked")


def check_supported(generation_config) -> None:
    """Refuse settings we do not implement instead of silently generating something else."""
    unsupported = []
    for name, off in UNSUPPORTED_FIELDS.items():
        value = getattr(generation_config, name, off)
        if value is not None and value != off:
            unsupported.append(f"{name}={value!r}")
    if generation_config.cache_implementation not in CACHE_LAYOUTS:
        unsupported.append(f"cache_implementation={generation_config.cache_implementation!r}")
    if unsupported:
        raise NotImplementedError(
            "rayformers generate does not support these generation settings: " + ", ".join(unsupported)
            + ". Unset them (in generate() kwargs or generation_config.json) or use transformers for them."
        )


def _row_lengths(input_ids: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    if lengths is not None:
        return lengths
    return torch.full((input_ids.shape[0],), input_ids.shape[1], dtype=torch.long, device=input_ids.device)


class _TokenMask:
    """A [vocab] bool mask of `token_ids`, built once per (vocabulary size, device) and cached."""

    def __init__(self, token_ids: Sequence[int]):
        self.token_ids = list(token_ids)
        self._cache: dict[tuple[int, torch.device], torch.Tensor] = {}

    def __call__(self, vocab_size: int, device) -> torch.Tensor:
        key = (vocab_size, torch.device(device))
        mask = self._cache.get(key)
        if mask is None:
            flags = [False] * vocab_size
            for token in self.token_ids:
                flags[token] = True
            mask = self._cache[key] = transfer.to_device(flags, device, torch.bool)
        return mask


# ---------------------------------------------------------------------------------- processors


class RepetitionPenalty:
    """Divide positive / multiply negative scores of tokens already in the row (CTRL paper).

    With left-padded rows the padding must hold a token of the row itself (we use the decoder start
    token): scattering the same penalised value twice changes nothing.
    """

    def __init__(self, penalty: float):
        self.penalty = float(penalty)

    def __call__(self, input_ids, scores, lengths=None):
        score = torch.gather(scores, 1, input_ids)
        score = torch.where(score < 0, score * self.penalty, score / self.penalty)
        return scores.scatter(1, input_ids, score)


class NoRepeatNGram:
    """Ban every token that would complete an n-gram already present in the row.

    For each row, the n-grams are all windows of `input_ids`; a window whose first n-1 tokens equal
    the row's last n-1 tokens bans its last token. Computed with one unfold + comparison for all rows.
    """

    def __init__(self, ngram_size: int):
        self.n = int(ngram_size)

    def __call__(self, input_ids, scores, lengths=None):
        n = self.n
        rows, width = input_ids.shape
        if width < n:
            return scores
        windows = input_ids.unfold(1, n, 1)  # [rows, width - n + 1, n]
        if n > 1:
            suffix = input_ids[:, width - n + 1:]  # the last n-1 tokens of each row
            match = (windows[:, :, : n - 1] == suffix[:, None, :]).all(dim=-1)
        else:
            match = torch.ones(windows.shape[:2], dtype=torch.bool, device=input_ids.device)
        if lengths is not None:
            # Windows starting in the left padding are not n-grams of the row; rows shorter than n-1
            # tokens (reference: cur_len + 1 < n) ban nothing.
            start = torch.arange(windows.shape[1], device=input_ids.device)[None, :]
            match &= start >= (width - lengths)[:, None]
            match &= (lengths + 1 >= n)[:, None]
        # Count, per row and token, the matching windows that end in that token (a scatter-add, so
        # windows banning the same token cannot overwrite each other); any count bans the token.
        hits = torch.zeros(scores.shape, dtype=torch.int32, device=scores.device)
        hits.scatter_add_(1, windows[:, :, n - 1], match.to(torch.int32))
        return scores.masked_fill(hits > 0, -float("inf"))


class NoBadWords:
    """Forbid token sequences: single tokens always, longer ones when the row ends with their prefix.

    As in the reference, single-token entries equal to an eos token are dropped, and a sequence
    longer than the row is ignored.
    """

    def __init__(self, bad_words_ids: list[list[int]], eos_token_ids: Sequence[int] | None):
        eos = set(eos_token_ids or [])
        words = [list(w) for w in bad_words_ids if not (len(w) == 1 and w[0] in eos)]
        single = sorted({w[0] for w in words if len(w) == 1})
        self.single = _TokenMask(single) if single else None
        self.multi = [w for w in words if len(w) > 1]
        self._prefixes: dict[torch.device, list[torch.Tensor]] = {}

    def _prefix_tensors(self, device) -> list[torch.Tensor]:
        prefixes = self._prefixes.get(device)
        if prefixes is None:
            prefixes = self._prefixes[device] = [transfer.to_device(w[:-1], device) for w in self.multi]
        return prefixes

    def __call__(self, input_ids, scores, lengths=None):
        banned = torch.zeros_like(scores, dtype=torch.bool)
        if self.single is not None:
            banned |= self.single(scores.shape[1], scores.device)[None, :]
        row_lengths = _row_lengths(input_ids, lengths)
        for word, prefix in zip(self.multi, self._prefix_tensors(input_ids.device)):  # never loops over rows
            if len(word) > input_ids.shape[1]:
                continue
            hit = (input_ids[:, -prefix.numel():] == prefix).all(dim=1) & (row_lengths >= len(word))
            banned[:, word[-1]] |= hit
        return scores.masked_fill(banned, -float("inf"))


class MinLength:
    """No eos while the row (decoder start included) is shorter than `min_length`."""

    def __init__(self, min_length: int, eos_token_ids: Sequence[int]):
        self.min_length = int(min_length)
        self.eos = _TokenMask(eos_token_ids)

    def __call__(self, input_ids, scores, lengths=None, min_lengths=None, **row_limits):
        min_length = self.min_length if min_lengths is None else min_lengths
        if lengths is None and not isinstance(min_length, torch.Tensor):
            # every row has input_ids.shape[1] tokens: one decision for all (reference semantics)
            return _ban_eos(scores, input_ids.shape[1] < min_length, self.eos)
        return _ban_eos(scores, _row_lengths(input_ids, lengths) < min_length, self.eos)


class MinNewTokens:
    """No eos before `min_new_tokens` tokens were generated after the `prompt_length` decoder prompt."""

    def __init__(self, prompt_length: int, min_new_tokens: int, eos_token_ids: Sequence[int]):
        self.prompt_length = int(prompt_length)
        self.min_new_tokens = int(min_new_tokens)
        self.eos = _TokenMask(eos_token_ids)

    def __call__(self, input_ids, scores, lengths=None, prompt_lengths=None, **row_limits):
        prompt_length = self.prompt_length if prompt_lengths is None else prompt_lengths
        if lengths is None and not isinstance(prompt_length, torch.Tensor):
            return _ban_eos(scores, input_ids.shape[1] - prompt_length < self.min_new_tokens, self.eos)
        too_short = _row_lengths(input_ids, lengths) - prompt_length < self.min_new_tokens
        return _ban_eos(scores, too_short, self.eos)


def _ban_eos(scores, rows: torch.Tensor | bool, eos: _TokenMask):
    """-inf for the eos tokens of `rows` (a [rows] bool mask, or one host bool for every row)."""
    mask = eos(scores.shape[1], scores.device)
    if isinstance(rows, torch.Tensor):
        return scores.masked_fill(mask[None, :] & rows[:, None], -math.inf)
    if not rows:
        return scores.clone()
    return scores.masked_fill(mask[None, :], -math.inf)


class ForcedToken:
    """At one position (length == `at_length`), every token but `token_ids` gets -inf and they get 0.

    Forced BOS is `at_length=1` (right after the decoder start token); forced EOS is
    `at_length=max_length-1` (the last position; `before_max_length=True`, so per-row `max_lengths`
    move it).
    """

    def __init__(self, at_length: int, token_ids: Sequence[int] | int, before_max_length: bool = False):
        self.at_length = int(at_length)
        self.token_ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        self.mask = _TokenMask(self.token_ids)
        self.before_max_length = before_max_length

    def __call__(self, input_ids, scores, lengths=None, max_lengths=None, **row_limits):
        at_length = self.at_length
        if self.before_max_length and max_lengths is not None:
            at_length = max_lengths - 1
        if lengths is None and not isinstance(at_length, torch.Tensor):
            if input_ids.shape[1] != at_length:
                return scores
            return self._forced(scores)
        return torch.where((_row_lengths(input_ids, lengths) == at_length)[:, None], self._forced(scores), scores)

    def _forced(self, scores):
        forced = torch.full_like(scores, -math.inf)
        return forced.masked_fill(self.mask(scores.shape[1], scores.device)[None, :], 0.0)


class Temperature:
    def __init__(self, temperature: float):
        self.temperature = float(temperature)

    def __call__(self, input_ids, scores, lengths=None):
        return scores / self.temperature


class TopK:
    def __init__(self, top_k: int, min_tokens_to_keep: int = 1):
        self.top_k = max(int(top_k), min_tokens_to_keep)

    def __call__(self, input_ids, scores, lengths=None):
        k = min(self.top_k, scores.size(-1))
        kth = torch.topk(scores, k)[0][..., -1, None]
        return scores.masked_fill(scores < kth, -float("inf"))


class TopP:
    def __init__(self, top_p: float, min_tokens_to_keep: int = 1):
        self.top_p = float(top_p)
        self.min_tokens_to_keep = int(min_tokens_to_keep)

    def __call__(self, input_ids, scores, lengths=None):
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - self.top_p)
        remove_sorted[..., -self.min_tokens_to_keep:].fill_(False)  # fill_: no host scalar made into a tensor
        remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
        return scores.masked_fill(remove, -float("inf"))


class ProcessorList(list):
    def __call__(self, input_ids, scores, lengths=None, **row_limits):
        for processor in self:
            if row_limits and isinstance(processor, _ROW_LIMITED):
                scores = processor(input_ids, scores, lengths, **row_limits)
            else:
                scores = processor(input_ids, scores, lengths)
        return scores


_ROW_LIMITED = (MinLength, MinNewTokens, ForcedToken)


def build_processors(generation_config, *, decoder_prompt_length: int, eos_token_ids: list[int] | None) -> ProcessorList:
    """The processors `generate` applies, in the reference's order (`_get_logits_processor`).

    `generation_config.max_length` / `min_length` must already be resolved against the decoder prompt.
    """
    cfg = generation_config
    processors = ProcessorList()
    if cfg.repetition_penalty is not None and cfg.repetition_penalty != 1.0:
        processors.append(RepetitionPenalty(cfg.repetition_penalty))
    if cfg.no_repeat_ngram_size is not None and cfg.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGram(cfg.no_repeat_ngram_size))
    if cfg.bad_words_ids is not None:
        processors.append(NoBadWords(cfg.bad_words_ids, eos_token_ids))
    if cfg.min_length is not None and eos_token_ids is not None and cfg.min_length > 0:
        processors.append(MinLength(cfg.min_length, eos_token_ids))
    if cfg.min_new_tokens is not None and eos_token_ids is not None and cfg.min_new_tokens > 0:
        processors.append(MinNewTokens(decoder_prompt_length, cfg.min_new_tokens, eos_token_ids))
    if cfg.forced_bos_token_id is not None:
        processors.append(ForcedToken(1, cfg.forced_bos_token_id))
    if cfg.forced_eos_token_id is not None:
        processors.append(ForcedToken(cfg.max_length - 1, cfg.forced_eos_token_id, before_max_length=True))
    if cfg.do_sample:
        if cfg.num_beams > 1:
            min_tokens_to_keep = (len(eos_token_ids) + 1) if eos_token_ids is not None else 2
        else:
            min_tokens_to_keep = 1
        if cfg.temperature is not None and cfg.temperature != 1.0:
            processors.append(Temperature(cfg.temperature))
        if cfg.top_k is not None and cfg.top_k != 0:
            processors.append(TopK(cfg.top_k, min_tokens_to_keep))
        if cfg.top_p is not None and cfg.top_p < 1.0:
            processors.append(TopP(cfg.top_p, min_tokens_to_keep))
    return processors
