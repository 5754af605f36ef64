"""Hugging Face tokenizers (`tokenizer.json`) with transformers' `PreTrainedTokenizerFast` behaviour.

Why our own wrapper instead of transformers: transformers is not a runtime dependency, and the
inference pipeline wants the Rust `tokenizers.Tokenizer` itself (`backend_tokenizer`) to call
`encode_batch` in CPU actors. Why a faithful copy of transformers' semantics instead of a thin
wrapper: a checkpoint's `tokenizer_config.json` and `special_tokens_map.json` change what the
tokenizer does (special tokens that get added to the vocabulary, `model_max_length`, the padding
side, which inputs the model takes), and the class named in `tokenizer_class` rewrites parts of the
backend when it loads (BERT's normalizer flags, RoBERTa's post-processor, T5's sentinel tokens).
Token ids that differ from what transformers produces on the same files silently change model
outputs, so every such rule is mirrored here from transformers 4.57.6 and tested against it.

What is supported: checkpoints that ship a `tokenizer.json` (every "fast" tokenizer). What is not:
building a tokenizer from slow-tokenizer files alone (`vocab.txt`, `spiece.model`, `vocab.json` +
`merges.txt`) -- transformers converts those in Python and that conversion is not copied here; the
error message says how to produce a `tokenizer.json` once with transformers.

Class-specific behaviour is described by a `TokenizerProfile` per transformers class name
(`BertTokenizerFast`, `RobertaTokenizerFast`, `T5TokenizerFast`, ...). A checkpoint naming a class
without a profile loads with the generic `PreTrainedTokenizerFast` rules and a warning.
"""

from __future__ import annotations

from tokenizers import AddedToken

from .auto import AutoTokenizer
from .batch_encoding import BatchEncoding
from .fast import PreTrainedTokenizerFast
from .files import TokenizerFormatError, TokenizerNotFoundError
from .profiles import TokenizerProfile

__all__ = [
    "AddedToken",
    "AutoTokenizer",
    "BatchEncoding",
    "PreTrainedTokenizerFast",
    "TokenizerFormatError",
    "TokenizerNotFoundError",
    "TokenizerProfile",
]

