"""The raw ``tokenizers.Tokenizer`` an operator encodes with, configured for the job.

Apart from :mod:`.tokenize` so that the prompt renderer (:mod:`.prompts`), which the tokenizer
operator uses, can build its own without importing the operator back."""

from __future__ import annotations

from typing import Optional


def configured_backend(tokenizer, max_length: Optional[int], truncation: str, stride: int = 0):
    """A private copy of the raw ``tokenizers.Tokenizer`` with our padding/truncation settings.

    ``tokenizer.json`` files often carry padding and truncation from their export (MiniLM's pads
    every row to 128); we turn padding off (the model actor pads dynamically) and truncate per
    the job config. ``stride`` is what the overflowing windows repeat of the previous one (only
    read back with ``overflow="chunk"``)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    if truncation == "none" or max_length is None:
        backend.no_truncation()
    else:
        backend.enable_truncation(max_length, stride=stride, strategy=truncation, direction="right")
    return backend
