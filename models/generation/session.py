"""DecoderSession: one encoder-decoder model's state for a set of rows being decoded together.

It owns what is per-row during decoding: the encoder output and padding mask (for cross-attention)
and the KV cache in the contract format (tuple over layers of `(self_k, self_v, cross_k, cross_v)`,
each [rows, heads, seq, head_dim]). The decoding loops only ever ask it to
- `step(tokens)`: run the decoder on the new tokens and return next-token logits;
- `keep(rows)`: drop rows that finished (index_select on every per-row tensor);
- `repeat(n)`: turn each row into n identical rows (beams / several samples per input) AFTER the
  first step, so the first decoder step and the cross-attention keys/values are computed once per
  input instead of once per beam;
- `reorder_self_attention(rows)`: beam search reorders hypotheses. Cross-attention keys/values are
  identical for all beams of one input, so (unlike the reference, which copies them every step)
  only the self-attention part of the cache is reordered.
"""

from __future__ import annotations

import torch

from ..outputs import BaseModelOutput


class DecoderSession:
    def __init__(self, model, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor | None,
                 extra_model_kwargs: dict | None = None):
        self.model = model
        self.encoder_hidden_states = encoder_hidden_states
        self.encoder_attention_mask = encoder_attention_mask
        self.past_key_values = None
        self.extra_model_kwargs = extra_model_kwargs or {}

    @property
    def num_rows(self) -> int:
        return self.encoder_hidden_states.shape[0]

    def step(self, decoder_input_ids: torch.Tensor, decoder_attention_mask: torch.Tensor | None = None,
             **decoder_kwargs) -> torch.Tensor:
        """Feed the new decoder tokens [rows, new]; return float32 logits of the last position [rows, vocab]."""
        kwargs = dict(self.extra_model_kwargs)
        kwargs.update(decoder_kwargs)
        if decoder_attention_mask is not None:
            kwargs["decoder_attention_mask"] = decoder_attention_mask
        outputs = self.model(
            attention_mask=self.encoder_attention_mask,
            encoder_outputs=BaseModelOutput(last_hidden_state=self.encoder_hidden_states),
            decoder_input_ids=decoder_input_ids,
            past_key_values=self.past_key_values,
            use_cache=True,
            return_dict=True,
            **kwargs,
        )
        self.past_key_values = outputs.past_key_values
        if self.past_key_values is None:
            raise RuntimeError(
                f"{type(self.model).__name__} returned no past_key_values with use_cache=True; generation needs "
                "the KV cache (see rayformers.models.generation.utils for the model contract)."
            )
        logits = outputs.logits[:, -1, :]
        return logits if logits.dtype == torch.float32 else logits.float()

    def keep(self, rows: torch.Tensor, self_attention_rows: torch.Tensor | None = None) -> None:
        """Keep only `rows` (a LongTensor of row indices, in the new order).

        `self_attention_rows` (beam search) takes the self-attention cache from other rows of the same
        inputs in the same pass, so a departure and a beam reorder cost one copy, not two.
        """
        self_rows = rows if self_attention_rows is None else self_attention_rows
        self.encoder_hidden_states = self.encoder_hidden_states.index_select(0, rows)
        if self.encoder_attention_mask is not None:
            self.encoder_attention_mask = self.encoder_attention_mask.index_select(0, rows)
        if self.past_key_values is not None:
            self.past_key_values = tuple(
                tuple(t.index_select(0, self_rows) for t in layer[:2]) + tuple(t.index_select(0, rows) for t in layer[2:])
                for layer in self.past_key_values
            )

    def repeat(self, n: int) -> None:
        """Each row becomes n consecutive identical rows (row i -> rows i*n .. i*n+n-1)."""
        if n == 1:
            return
        self.encoder_hidden_states = self.encoder_hidden_states.repeat_interleave(n, dim=0)
        if self.encoder_attention_mask is not None:
            self.encoder_attention_mask = self.encoder_attention_mask.repeat_interleave(n, dim=0)
        if self.past_key_values is not None:
            self.past_key_values = tuple(
                tuple(t.repeat_interleave(n, dim=0) for t in layer) for layer in self.past_key_values
            )

    def reorder_self_attention(self, rows: torch.Tensor) -> None:
        """Beam reorder: `rows` only ever maps beams within the same input, so cross K/V stay as they are."""
        self.past_key_values = tuple(
            tuple(t.index_select(0, rows) for t in layer[:2]) + tuple(layer[2:]) for layer in self.past_key_values
        )

    def append(self, other: "DecoderSession") -> None:
        """Concatenate another session's rows after ours (continuous batching refill).

        Both caches must have the same self-attention length (the caller left-pads the shorter one with
        `pad_self_attention`) and the same encoder length (the caller pads encoder states).
        """
        self.encoder_hidden_states = torch.cat([self.encoder_hidden_states, other.encoder_hidden_states], dim=0)
        if (self.encoder_attention_mask is None) != (other.encoder_attention_mask is None):
            raise ValueError("cannot merge sessions with and without encoder attention masks")
        if self.encoder_attention_mask is not None:
            self.encoder_attention_mask = torch.cat([self.encoder_attention_mask, other.encoder_attention_mask], dim=0)
        self.past_key_values = tuple(
            tuple(torch.cat([a, b], dim=0) for a, b in zip(mine, theirs))
            for mine, theirs in zip(self.past_key_values, other.past_key_values)
        )

    def self_attention_length(self) -> int:
        return 0 if self.past_key_values is None else self.past_key_values[0][0].shape[2]

    def pad_self_attention(self, new_length: int) -> None:
        """Left-pad the self-attention cache with zeros to `new_length` (padded keys are masked out)."""
        pad = new_length - self.self_attention_length()
        if pad <= 0:
            return
        padded = []
        for layer in self.past_key_values:
            k, v = layer[0], layer[1]
            zeros = k.new_zeros(k.shape[0], k.shape[1], pad, k.shape[3])
            padded.append((torch.cat([zeros, k], dim=2), torch.cat([zeros, v], dim=2)) + tuple(layer[2:]))
        self.past_key_values = tuple(padded)

    def trim_left(self, columns: int) -> None:
        """Drop the first `columns` self-attention positions (padding for every row)."""
        if columns <= 0:
            return
        self.past_key_values = tuple(
            (layer[0][:, :, columns:], layer[1][:, :, columns:]) + tuple(layer[2:]) for layer in self.past_key_values
        )

    def pad_encoder(self, new_length: int) -> None:
        """Right-pad encoder states, mask and cross K/V to `new_length` source positions (masked out)."""
        src = self.encoder_hidden_states.shape[1]
        pad = new_length - src
        if pad <= 0:
            return
        hs = self.encoder_hidden_states
        self.encoder_hidden_states = torch.cat([hs, hs.new_zeros(hs.shape[0], pad, hs.shape[2])], dim=1)
        mask = self.encoder_attention_mask
        if mask is None:
            mask = torch.ones(hs.shape[0], src, dtype=torch.long, device=hs.device)
        self.encoder_attention_mask = torch.cat([mask, mask.new_zeros(mask.shape[0], pad)], dim=1)
        if self.past_key_values is not None:
            padded = []
            for layer in self.past_key_values:
                cross = tuple(
                    torch.cat([t, t.new_zeros(t.shape[0], t.shape[1], pad, t.shape[3])], dim=2) for t in layer[2:]
                )
                padded.append(tuple(layer[:2]) + cross)
            self.past_key_values = tuple(padded)
