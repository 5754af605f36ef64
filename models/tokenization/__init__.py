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

What loads: a `tokenizer.json` (every "fast" tokenizer), or the slow-tokenizer files alone, which
are converted at load exactly as transformers' `convert_slow_tokenizer` does (`converters.py`):
BERT `vocab.txt`, GPT-2/RoBERTa/BART `vocab.json` + `merges.txt`, and SentencePiece models (T5,
Pegasus, ALBERT, XLM-R, CamemBERT, DeBERTa-v2, NLLB, mBART, mBART-50, Llama, Gemma) read with our
own protobuf schema (`sentencepiece_model.py`). Marian and M2M100, which transformers only has as slow classes,
are rebuilt on the same wrapper (`translation.py`), as are the language codes (`src_lang` /
`tgt_lang`) of NLLB, mBART, mBART-50 and M2M100.

Modules: `fast.py` (the wrapper), `profiles.py` (per-class rules), `auto.py` (finding the files),
`bos_eos.py` (Llama/Gemma bos/eos rules), `chat_template.py` (apply_chat_template's rendering),
`converters.py` + `sentencepiece_model.py` (slow files -> backend), `translation.py` (language
codes, Marian, M2M100), `batch_encoding.py`, `files.py` (names, errors, JSON helpers).

Class-specific behaviour is described by a `TokenizerProfile` per transformers class name
(`BertTokenizerFast`, `RobertaTokenizerFast`, `T5TokenizerFast`, ...). A checkpoint naming a class
without a profile loads with the generic `PreTrainedTokenizerFast` rules and a warning.
"""

from __future__ import annotations

from tokenizers import AddedToken

from .auto import AutoTokenizer
from .batch_encoding import BatchEncoding
from .chat_template import ChatTemplateError
from .fast import PreTrainedTokenizerFast
from .files import TokenizerFormatError, TokenizerNotFoundError
from .language_codes import UnknownLanguageCodeError
from .profiles import TokenizerProfile
from .translation import LanguageCodeTokenizerFast, M2M100Tokenizer, MarianTokenizer

__all__ = [
    "AddedToken",
    "AutoTokenizer",
    "BatchEncoding",
    "ChatTemplateError",
    "LanguageCodeTokenizerFast",
    "M2M100Tokenizer",
    "MarianTokenizer",
    "PreTrainedTokenizerFast",
    "TokenizerFormatError",
    "TokenizerNotFoundError",
    "TokenizerProfile",
    "UnknownLanguageCodeError",
]

