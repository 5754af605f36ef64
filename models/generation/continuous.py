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

One engine runs the batch for every model kind (continuous_engine.py); what differs between
encoder-decoder and decoder-only models is its strategy (continuous_seq2seq.py,
continuous_causal.py). Each decode step reads the device once (see transfer.py).

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

import copy
from typing import Any, Hashable, Iterable, Iterator

import torch

from .continuous_causal import DecoderOnlyRows, _RowLimits, beam_groups
from .continuous_engine import ContinuousEngine
from .continuous_inputs import _InputReader
from .continuous_seq2seq import EncoderDecoderRows, _cut_after_eos, beam_chunks  # noqa: F401 (_cut_after_eos is public here)
from .logits_process import build_processors
from .utils import _resolve_lengths, check_constrainable, prepare_decoding


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
    max_kv_tokens: int | None = None,
    on_reject=None,
    stats: dict | None = None,
    share_prefix: bool = True,
    constraint=None,
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

    Decoder-only models (greedy search and sampling): `max_kv_tokens` bounds the KV cache of the
    rows in flight (rows x cached positions, left padding included); prompts wait for admission
    while it is full, and one that alone exceeds it is refused: `on_reject(key, message)` when given
    (nothing is yielded for it), else a ValueError. `max_batch_tokens` bounds one prefill forward
    (rows x positions fed): a longer prompt is prefilled in pieces (models declaring
    `_generation_chunked_prefill`; other models refuse a prompt longer than it). `stats`, a dict,
    receives `peak_kv_tokens` (the most KV positions the batch held), `max_prefill_tokens`,
    `prefill_forwards` and `admission_waits` (and `shared_prefix_tokens`). `share_prefix`: prompts
    admitted together that start with the same tokens have that prefix prefilled once
    (continuous_causal.DecoderOnlyRows). `constraint` (a `constraints.TokenConstraint`) masks every
    row's tokens to its grammar (greedy search and sampling; not beam search).
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if max_batch_tokens is not None and max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
    if max_kv_tokens is not None and max_kv_tokens < 1:
        raise ValueError(f"max_kv_tokens must be >= 1, got {max_kv_tokens}")
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
    if constraint is not None:
        check_constrainable(cfg)
    lookahead = lookahead or 4 * max_batch_size
    device = next(model.parameters()).device
    # A model that prefills in pieces takes prompts longer than one forward's budget.
    chunked = decoder_only and cfg.num_beams == 1 and bool(getattr(model, "_generation_chunked_prefill", False))
    reader = _InputReader(model, inputs, lookahead, None if chunked else max_batch_tokens)
    stats = {} if stats is None else stats
    nrs = cfg.num_return_sequences if cfg.do_sample else 1
    pad_id = special["pad"] if special["pad"] is not None else 0
    if decoder_only:  # prompts in, continuations out (continuous_causal.py)
        limits = _RowLimits(model, cfg, kwargs)
        # Which processors exist (and their order) is decided once, as for a one-token prompt; their
        # length limits then come per row (`limits` raises, naming the input, where one does not fit).
        probe = copy.deepcopy(cfg)
        try:
            _resolve_lengths(model, probe, 1, kwargs)
        except ValueError:
            pass
        if cfg.num_beams > 1:
            yield from beam_groups(model, cfg, special, reader, limits, kwargs, max_batch_size, max_batch_tokens, device)
            return
        refill = True if refill is None else refill
        strategy = DecoderOnlyRows(model, limits, pad_id=pad_id, nrs=nrs, device=device, max_kv_tokens=max_kv_tokens,
                                   prefill_tokens=max_batch_tokens, on_reject=on_reject, stats=stats,
                                   share_prefix=share_prefix)
    else:
        if cfg.num_beams > 1:
            yield from beam_chunks(model, cfg, special, reader, max_batch_size, max_batch_tokens, device)
            return
        supported = bool(getattr(model, "_supports_left_padded_decoder", False))
        if refill and not supported:
            raise ValueError(
                f"{type(model).__name__} does not support slot refill (it does not declare "
                "`_supports_left_padded_decoder`); use refill=None or False (waves)."
            )
        refill = supported if refill is None else refill
        probe = cfg
        strategy = EncoderDecoderRows(model, start=int(special["decoder_start"]), pad_id=pad_id,
                                      max_length=cfg.max_length, nrs=nrs, refill=refill, device=device)
    processors = build_processors(probe, decoder_prompt_length=1, eos_token_ids=special["eos"])
    engine = ContinuousEngine(model, strategy, processors, eos=special["eos"], do_sample=bool(cfg.do_sample), nrs=nrs,
                              device=device, max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens,
                              seed=seed, refill=refill, stats=stats, constraint=constraint, eos_order=special["eos"])
    yield from engine.run(reader)
