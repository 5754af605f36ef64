"""CausalSession: a decoder-only model's state for a set of rows being decoded together.

It offers the decoding loops (decoding.py) the same operations as `DecoderSession` (`step`, `keep`,
`repeat`, `reorder_self_attention`, and for continuous batching `append` / `pad_self_attention`),
so greedy search, sampling and beam search run unchanged on decoder-only models. What is per row:
- the attention mask over every position so far ([rows, cached + new]; prompts are LEFT-padded);
- the KV cache, a tuple over layers of per-layer tuples whose tensors are all batch-first
  (BERT family: `(self_k, self_v)` [rows, heads, seq, head_dim]; MEGA: `(self_key, self_value,
  ema_state)`, key/value [rows, seq, dim], None after a chunk boundary).

Position ids follow transformers 4.57.6's `prepare_inputs_for_generation`: when the model's
forward takes `position_ids` they are `cumsum(attention_mask) - 1` (padding gets 1), recomputed
every step, so a left-padded row sees the positions it would see alone (for RoBERTa this replaces
its padding-offset positions exactly as transformers' generate does).

What a decoder-only LM implements to generate (`generate`, beam search included, and continuous
batching with `stream_generate`); nothing else is called:
- `class XForCausalLM(XPreTrainedModel, GenerationMixin)`, with
  `self.generation_config = GenerationConfig.from_model_config(config)` in `__init__` (from_pretrained
  then loads generation_config.json), `config.is_encoder_decoder` False, and `config.is_decoder`
  True unless the class declares `_generation_always_causal = True` (Llama-style LMs are causal
  whatever `is_decoder` says);
- `forward(input_ids, attention_mask, past_key_values=None, use_cache=True, return_dict=True,
  position_ids=...)` returning `.logits` [rows, new, vocab] (only the last position is read; any
  float dtype, upcast to float32 here) and `.past_key_values`:
  * the first call gets the whole LEFT-padded prompt batch and `past_key_values=None`; later calls
    one new token per row ([rows, 1]) and the cache the previous call returned;
  * `attention_mask` [rows, cached + new] always covers every position so far, 0 for padding;
    padding is always on the left of a row (a row that joins a running batch gets zero columns
    prepended, and columns that are padding for every row are cut off the left);
  * the cache is a tuple over layers of tuples of tensors, all batch-first: the session drops,
    repeats and reorders rows with `index_select(0, rows)` / `repeat_interleave(n, 0)` on every
    tensor, and left-pads (zeros) or left-trims each tensor along its sequence dimension
    (`_cache_sequence_dims`). No other per-row state may live in the model between calls;
  * with `_generation_position_ids = True` the forward gets `position_ids` [rows, new] =
    `cumsum(attention_mask) - 1` (1 on padding), as transformers' `prepare_inputs_for_generation`
    makes them: rotary / absolute positions then equal those of the row alone;
  * a forward with a `logits_to_keep` parameter gets `logits_to_keep=1` (as transformers' generate
    passes it): only the last position goes through the LM head;
- `get_output_embeddings()` (its `out_features` is the vocabulary size checked against token ids)
  and `config.max_position_embeddings` (prompt + new tokens must fit it).
The class attributes (only `_cache_sequence_dims` is required: it declares this contract):
- `_cache_sequence_dims`: for each tensor of a layer's cache its sequence dimension, or None for
  state without one (MEGA's EMA state); used to left-pad caches when rows of different lengths join
  (a Llama-style `(key, value)` [rows, kv_heads, seq, head_dim] layer: `(2, 2)`);
- `_generation_position_ids` (bool): pass positions as above;
- `_generation_always_causal` (bool): skip the `config.is_decoder` check;
- `_generation_prefill_unpadded` (bool): the model cannot prefill a left-padded batch (MEGA gives
  NaN for padded queries, as transformers does), so each group of equal-length prompts is
  prefilled without padding and their caches are left-padded and merged;
- `_generation_step_kwargs` (dict): extra forward keywords for cached steps (MEGA:
  `mask_past_padding=True`, so cached padded positions stay masked);
- `_generation_chunked_prefill` (bool): a forward may take several new tokens per row on top of a
  cache (causal among themselves, attending to every cached position), so a long prompt can be
  prefilled a piece at a time (`prefill(input_ids, columns)`): the attention of one piece is
  [rows, heads, columns, cached + columns] instead of [rows, heads, width, width].
"""

from __future__ import annotations

import inspect

import torch


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def _map_cache(past, fn):
    """Apply `fn(tensor, dim)` to every cache tensor (None entries stay None)."""
    return tuple(tuple(None if t is None else fn(t, i) for i, t in enumerate(layer)) for layer in past)


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class CausalSession:
    def __init__(self, model, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        self.model = model
        self.attention_mask = attention_mask.long()
        # Optional prompt token types; generated tokens take the prompt's last type (as transformers).
        self.token_type_ids = token_type_ids
        self.next_token_type = None if token_type_ids is None else token_type_ids[:, -1:]
        self.past_key_values = None
        self.sequence_dims = tuple(getattr(model, "_cache_sequence_dims", (2, 2)))
        self.uses_positions = bool(getattr(model, "_generation_position_ids", False))
        self.step_kwargs = dict(getattr(model, "_generation_step_kwargs", {}) or {})
        # Only the last position's logits are used: a model that can skip the LM head elsewhere does
        # (the prompt's other positions would cost one vocab-wide projection each at prefill).
        self.last_logits_only = _accepts_logits_to_keep(model)

    @property
    def num_rows(self) -> int:
        return self.attention_mask.shape[0]

    def _forward(self, input_ids, attention_mask, past, token_type_ids=None, **kwargs) -> tuple[torch.Tensor, tuple]:
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if self.uses_positions:
            kwargs["position_ids"] = _positions(attention_mask)[:, -input_ids.shape[1]:]
        if self.last_logits_only:
            kwargs["logits_to_keep"] = 1
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past,
                             use_cache=True, return_dict=True, **kwargs)
        if outputs.past_key_values is None:
            raise RuntimeError(
                f"{type(self.model).__name__} returned no past_key_values with use_cache=True; generation needs the "
                "KV cache (see rayformers.models.generation.causal_session for the model contract)."
            )
        logits = outputs.logits[:, -1, :]
        return (logits if logits.dtype == torch.float32 else logits.float()), tuple(outputs.past_key_values)

    def step(self, input_ids: torch.Tensor, **unused) -> torch.Tensor:
        """Feed the new tokens [rows, new] (the whole prompt first); return float32 next-token logits."""
        if self.past_key_values is None:
            if tuple(input_ids.shape) != tuple(self.attention_mask.shape):
                raise ValueError("the first step of a CausalSession must feed the whole prompt")
            if getattr(self.model, "_generation_prefill_unpadded", False):
                return self._prefill_by_length(input_ids)
            logits, self.past_key_values = self._forward(input_ids, self.attention_mask, None, self.token_type_ids)
            return logits
        ones = self.attention_mask.new_ones(input_ids.shape)
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)
        types = None if self.next_token_type is None else self.next_token_type.expand(-1, input_ids.shape[1])
        logits, self.past_key_values = self._forward(input_ids, self.attention_mask, self.past_key_values, types,
                                                     **self.step_kwargs)
        return logits

    def prefill(self, input_ids: torch.Tensor, columns: int | None = None) -> torch.Tensor:
        """The first step over the whole prompt, fed `columns` positions at a time when the model
        declares `_generation_chunked_prefill` (otherwise, or with `columns` None, in one forward).

        Each piece attends to the cache of the pieces before it and takes its positions from the
        mask up to its end, so the cache and the last logits are those of one forward over the prompt."""
        width = input_ids.shape[1]
        chunked = bool(getattr(self.model, "_generation_chunked_prefill", False))
        if columns is None or columns >= width or not chunked or self.past_key_values is not None:
            return self.step(input_ids)
        if tuple(input_ids.shape) != tuple(self.attention_mask.shape):
            raise ValueError("the first step of a CausalSession must feed the whole prompt")
        if self.token_type_ids is not None:
            raise ValueError("chunked prefill does not take token_type_ids")
        logits, past = None, None
        for start in range(0, width, columns):
            end = min(width, start + columns)
            logits, past = self._forward(input_ids[:, start:end], self.attention_mask[:, :end], past)
        self.past_key_values = past
        return logits

    def prefill_after(self, past, past_length: int, input_ids: torch.Tensor, columns: int | None = None) -> torch.Tensor:
        """The first step when the first `past_length` positions are already cached (`past`, e.g. a
        shared prompt prefix expanded to every row): feed the rest of the prompt, `columns` at a time.
        The attention mask covers both; padding may sit between the two parts (see `move_padding_left`)."""
        width = input_ids.shape[1]
        if self.attention_mask.shape[1] != past_length + width:
            raise ValueError("the attention mask must cover the cached positions and the new ones")
        columns = width if columns is None else columns
        logits = None
        for start in range(0, width, columns):
            end = min(width, start + columns)
            logits, past = self._forward(input_ids[:, start:end], self.attention_mask[:, :past_length + end], past)
        self.past_key_values = past
        return logits

    def move_padding_left(self) -> None:
        """Make every row left-padded again (0...0 1...1) by moving its padding columns, mask and
        cache alike, to the left end; the real positions keep their order (so their positions, which
        come from the mask, do not change)."""
        mask = self.attention_mask
        order = torch.sort(mask, dim=1, stable=True).indices  # padding (0) first, real positions in order
        self.attention_mask = torch.gather(mask, 1, order)

        def gather(t, index):
            dim = self.sequence_dims[index] if index < len(self.sequence_dims) else None
            if dim is None:
                return t
            shape = [1] * t.dim()
            shape[0], shape[dim] = order.shape[0], order.shape[1]
            return torch.gather(t, dim, order.view(shape).expand(*t.shape[:dim], order.shape[1], *t.shape[dim + 1:]))

        self.past_key_values = _map_cache(self.past_key_values, gather)

    def cached_tokens(self) -> int:
        """Positions held in the KV cache, padding included: rows x cached width."""
        if self.past_key_values is None:
            return 0
        return self.num_rows * self.attention_mask.shape[1]

    def _prefill_by_length(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Prefill each group of equal-length (left-padded) prompts unpadded, then merge their caches."""
        width = input_ids.shape[1]
        lengths = self.attention_mask.sum(dim=1)
        expected = torch.arange(width, device=input_ids.device)[None, :] >= (width - lengths)[:, None]
        bad = (expected.long() != self.attention_mask).any(dim=1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"rows {bad[:20]} are not left-padded (attention_mask must be 0...0 1...1): "
                f"{type(self.model).__name__} generation needs left-padded prompts (tokenizer padding_side='left')."
            )
        logits = None
        groups = []
        for length in sorted(set(lengths.tolist()), reverse=True):
            rows = (lengths == length).nonzero().flatten()
            tokens = input_ids.index_select(0, rows)[:, width - length:]
            types = None if self.token_type_ids is None else self.token_type_ids.index_select(0, rows)[:, width - length:]
            group_logits, past = self._forward(tokens, torch.ones_like(tokens), None, types)
            if logits is None:
                logits = group_logits.new_empty((input_ids.shape[0], group_logits.shape[1]))
            logits[rows] = group_logits
            groups.append((rows, self._left_pad(past, width - length)))
        order = torch.cat([rows for rows, _ in groups]).argsort()
        merged = tuple(
            tuple(None if parts[0] is None else torch.cat(parts, dim=0).index_select(0, order)
                  for parts in zip(*layers))
            for layers in zip(*[past for _, past in groups])
        )
        self.past_key_values = merged
        return logits

    def _left_pad(self, past, pad: int):
        if pad <= 0:
            return past

        def pad_tensor(t, index):
            dim = self.sequence_dims[index] if index < len(self.sequence_dims) else None
            if dim is None:
                return t
            shape = list(t.shape)
            shape[dim] = pad
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        return _map_cache(past, pad_tensor)

    def keep(self, rows: torch.Tensor, self_attention_rows: torch.Tensor | None = None) -> None:
        """Keep only `rows`; `self_attention_rows` (beam search) takes the cache from other beams of the same input."""
        cache_rows = rows if self_attention_rows is None else self_attention_rows
        self.attention_mask = self.attention_mask.index_select(0, rows)
        if self.next_token_type is not None:
            self.next_token_type = self.next_token_type.index_select(0, rows)
        self.past_key_values = _map_cache(self.past_key_values, lambda t, _: t.index_select(0, cache_rows))

    def repeat(self, n: int) -> None:
        """Each row becomes n consecutive identical rows (after the first step: the prompt runs once per input)."""
        if n == 1:
            return
        self.attention_mask = self.attention_mask.repeat_interleave(n, dim=0)
        if self.next_token_type is not None:
            self.next_token_type = self.next_token_type.repeat_interleave(n, dim=0)
        self.past_key_values = _map_cache(self.past_key_values, lambda t, _: t.repeat_interleave(n, dim=0))

    def reorder_self_attention(self, rows: torch.Tensor) -> None:
        """Beam reorder (beams only move within their input, whose attention masks are identical)."""
        self.past_key_values = _map_cache(self.past_key_values, lambda t, _: t.index_select(0, rows))

    # -- continuous batching
    def self_attention_length(self) -> int:
        return self.attention_mask.shape[1]

    def pad_self_attention(self, new_length: int) -> None:
        """Left-pad mask (zeros) and cache to `new_length` positions."""
        pad = new_length - self.self_attention_length()
        if pad <= 0:
            return
        self.attention_mask = torch.cat([self.attention_mask.new_zeros(self.num_rows, pad), self.attention_mask], 1)
        self.past_key_values = self._left_pad(self.past_key_values, pad)

    def trim_left(self, columns: int) -> None:
        """Drop the first `columns` positions (padding for every row)."""
        if columns <= 0:
            return
        self.attention_mask = self.attention_mask[:, columns:]

        def trim(t, index):
            dim = self.sequence_dims[index] if index < len(self.sequence_dims) else None
            return t if dim is None else t.narrow(dim, columns, t.shape[dim] - columns)

        self.past_key_values = _map_cache(self.past_key_values, trim)

    def append(self, other: "CausalSession") -> None:
        """Concatenate another session's rows after ours (both padded to the same length first)."""
        self.attention_mask = torch.cat([self.attention_mask, other.attention_mask], dim=0)
        if (self.next_token_type is None) != (other.next_token_type is None):
            raise ValueError("cannot merge sessions with and without token_type_ids")
        if self.next_token_type is not None:
            self.next_token_type = torch.cat([self.next_token_type, other.next_token_type], dim=0)
        self.past_key_values = tuple(
            tuple(None if a is None else torch.cat([a, b], dim=0) for a, b in zip(mine, theirs))
            for mine, theirs in zip(self.past_key_values, other.past_key_values)
        )
