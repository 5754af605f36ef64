"""Constrained decoding: a grammar decides which tokens each row may take next (a token mask).

A constraint is one of (the keys are the pipeline's `task.*` names):
- `choices`: a list of strings; the answer is exactly one of them;
- `json_schema`: a JSON Schema (a mapping); the answer is JSON valid against it;
- `regex`: a regular expression (Rust `regex` syntax, the usual Perl-like one without look-around
  or back-references); the answer matches it in full.

The grammar engine is llguidance (what vLLM and SGLang use): it compiles the grammar once against
the model's vocabulary (read from the `tokenizers` JSON) and, per row and step, gives a bitmask of
the tokens that keep the text a prefix of some valid answer (an end token only once the answer is
complete). Any tokenization of a valid text is allowed, so where a model's own greedy answer is
already valid, masking changes nothing.

How it runs in continuous batching (continuous_engine.py): every row holds its own matcher; the
engine applies the rows' bitmask to the step's logits on the device (before the logits processors,
so top-k / top-p sample among allowed tokens only), reads the step's tokens once as always, feeds
each row's token to its matcher on the host, and computes the next bitmask on the host right after
launching the next forward, so on a GPU the mask is computed while the forward runs. When a row's
answer is complete and only an end token may follow, the row ends with that end token without
another forward. `generate` (decoding.greedy_or_sample) does the same, except that a complete
answer takes its end token from the next step's mask.

llguidance is an optional dependency (`pip install rayformers[constrained]`): nothing here imports
it before a constraint is built.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from . import transfer
from .constraint_grammar import (  # noqa: F401  (re-exported)
    INSTALL_HINT, JSON_LAYOUT, KINDS, ConstraintError, _llguidance, constraint_of, grammar,
)


class TokenConstraint:
    """One compiled constraint for a model's vocabulary; makes each row's matcher, its bitmasks,
    and applies them to the scores (see the module docstring)."""

    def __init__(self, grammar_text: str, tokenizer_json: str, vocab_size: int, eos_token_ids: Sequence[int]):
        if not eos_token_ids:
            raise ConstraintError("constrained generation needs an end token (eos_token_id) to end a complete answer")
        ll = _llguidance()
        self.vocab_size = int(vocab_size)
        self.eos = [int(t) for t in eos_token_ids]
        try:
            self.tokenizer = ll.LLTokenizer(tokenizer_json, n_vocab=self.vocab_size, eos_token=self.eos)
        except ValueError as e:
            raise ConstraintError(f"the grammar engine cannot read this tokenizer.json: {e}") from e
        self.root = ll.LLMatcher(self.tokenizer, grammar_text, log_level=0)
        if self.root.is_error():
            raise ConstraintError(f"the constraint cannot be compiled: {self.root.get_error()}")
        self.words = (self.vocab_size + 31) // 32
        self._executor = ll.LLExecutor()
        self._initial: torch.Tensor | None = None  # a fresh matcher's mask: the same for every new row

    @classmethod
    def build(cls, kind: str, value: Any, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]):
        """From a constraint key/value and a fast tokenizer (ours or transformers', anything with a
        `backend_tokenizer`, or a `tokenizers.Tokenizer`)."""
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        if not hasattr(backend, "to_str"):
            raise ConstraintError(f"constrained outputs need a fast tokenizer (tokenizer.json); "
                                  f"{type(tokenizer).__name__} has none")
        return cls(grammar(kind, value), backend.to_str(), vocab_size, eos_token_ids)

    def new_matcher(self):
        """A row's matcher, at the start of its answer."""
        return self.root.deep_copy()

    def fill(self, matchers: list) -> torch.Tensor:
        """The rows' bitmasks [rows, ceil(vocab / 32)] int32 on the host (bit t of a row: token t allowed)."""
        mask = torch.empty((len(matchers), self.words), dtype=torch.int32)
        if matchers:
            self._executor.unsafe_compute_mask_ptr([(m, i) for i, m in enumerate(matchers)], mask.data_ptr(),
                                                   self.words * 4, len(matchers))
        return mask

    def initial(self, rows: int) -> torch.Tensor:
        """The bitmask of `rows` fresh matchers (computed once)."""
        if self._initial is None:
            self._initial = self.fill([self.root])
        return self._initial.repeat(rows, 1)

    def apply(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`scores` [rows, vocab] with every token the host `mask` forbids set to -inf (the mask goes
        to the scores' device without waiting: `transfer.bitmask_to_device`)."""
        allowed = transfer.bitmask_to_device(mask, scores.device)
        vocab = scores.shape[-1]
        if allowed.shape[1] < vocab:  # scores wider than the vocabulary the constraint knows: forbid the rest
            allowed = torch.cat([allowed, allowed.new_zeros(allowed.shape[0], vocab - allowed.shape[1])], dim=1)
        return scores.masked_fill(~allowed[:, :vocab], float("-inf"))

    @staticmethod
    def consume(matcher, token: int, key: Any) -> None:
        """Feed a row's new token to its matcher; a token the constraint forbids (every token was
        masked by the constraint together with the generation settings) raises naming the input."""
        if not matcher.consume_token(int(token)):
            raise ConstraintError(
                f"input {key!r}: no token satisfies both the constraint and the generation settings at this step "
                f"(token {token} was forced: {matcher.get_error().strip() or 'not allowed'}); check min_new_tokens, "
                "bad_words_ids, forced tokens or suppressed tokens against the constraint"
            )

    @staticmethod
    def complete(matcher) -> bool:
        """Whether the row's answer is complete and only an end token may follow."""
        return matcher.is_stopped()

