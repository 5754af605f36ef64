"""Per-class rules: what each transformers fast-tokenizer class does on top of `tokenizer.json`.

The rules see the tokenizer being loaded only through :class:`LoadingTokenizer` (its backend and
attributes), so this module does not import the tokenizer class that applies them: ``fast.py``
depends on the profiles, never the other way round."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from tokenizers import AddedToken, Tokenizer
from tokenizers import normalizers as backend_normalizers
from tokenizers import processors as backend_processors

from .files import SLOW_FILES_KWARG
from .language_codes import FAIRSEQ_MBART50_CODES, FAIRSEQ_MBART_CODES, FAIRSEQ_NLLB_CODES



class LoadingTokenizer(Protocol):
    """What a profile's rules touch of the tokenizer being loaded (``PreTrainedTokenizerFast``)."""

    backend_tokenizer: Tokenizer


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizerProfile:
    """What a transformers fast-tokenizer class adds to a `tokenizer.json` when it loads.

    `defaults` are the keyword defaults of the class `__init__` (they end up in `init_kwargs` and so
    in a saved tokenizer_config.json, exactly as transformers writes them). `mask_token_options`
    turns a plain-string mask token into an `AddedToken` with those options (RoBERTa-style
    `lstrip=True`), `wrap_string_tokens` does the same for every special token (MPNet). `prepare`
    edits the keyword arguments before the generic set-up, `finish` edits the backend after it.
    """

    name: str
    model_input_names: tuple[str, ...] = ("input_ids", "token_type_ids", "attention_mask")
    padding_side: str = "right"
    truncation_side: str = "right"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    mask_token_options: Mapping[str, Any] | None = None
    wrap_string_tokens: Mapping[str, Any] | None = None
    # transformers saves "XTokenizer" (without Fast) when it could also write the slow files
    # (WordPiece / BPE vocabularies); SentencePiece classes keep "XTokenizerFast".
    writes_slow_vocabulary: bool = False
    requires_prefix_space_for_words: bool = False
    attributes: tuple[str, ...] = ()
    # Defaults of the slow class that differ from the fast one's, used when converting slow files
    # (transformers builds the slow tokenizer from the files, so it sees its own defaults).
    slow_defaults: Mapping[str, Any] = field(default_factory=dict)
    prepare: Callable[[dict], None] | None = None
    finish: Callable[[LoadingTokenizer, dict], None] | None = None


def _sync_bert_normalizer(tokenizer: LoadingTokenizer, kwargs: dict) -> None:
    """BertTokenizerFast: `do_lower_case`/`strip_accents`/`tokenize_chinese_chars` override the JSON."""
    _sync_normalizer(tokenizer, {
        "lowercase": kwargs["do_lower_case"],
        "strip_accents": kwargs["strip_accents"],
        "handle_chinese_chars": kwargs["tokenize_chinese_chars"],
    })


def _sync_mpnet_normalizer(tokenizer: LoadingTokenizer, kwargs: dict) -> None:
    """MPNetTokenizerFast: like BERT but without the Chinese-characters flag."""
    _sync_normalizer(tokenizer, {"lowercase": kwargs["do_lower_case"], "strip_accents": kwargs["strip_accents"]})


def _sync_normalizer(tokenizer: LoadingTokenizer, wanted: dict) -> None:
    normalizer = tokenizer.backend_tokenizer.normalizer
    if normalizer is None:
        return
    state = json.loads(normalizer.__getstate__())
    if any(state.get(key, value) != value for key, value in wanted.items()):
        normalizer_class = getattr(backend_normalizers, state.pop("type"))
        state.update(wanted)
        tokenizer.backend_tokenizer.normalizer = normalizer_class(**state)


def _sync_roberta_post_processor(tokenizer: LoadingTokenizer, kwargs: dict) -> None:
    """RobertaTokenizerFast & co: `add_prefix_space`/`trim_offsets` override the post-processor."""
    post_processor = tokenizer.backend_tokenizer.post_processor
    if not post_processor:
        return
    state = json.loads(post_processor.__getstate__())
    for key in ("sep", "cls"):
        if key in state:
            state[key] = tuple(state[key])
    changed = False
    for key in ("add_prefix_space", "trim_offsets"):
        if state.get(key, kwargs[key]) != kwargs[key]:
            state[key] = kwargs[key]
            changed = True
    if changed:
        processor_class = getattr(backend_processors, state.pop("type"))
        tokenizer.backend_tokenizer.post_processor = processor_class(**state)


def _has_slow_vocabulary(kwargs: dict) -> bool:
    return bool(kwargs.get("vocab_file") or kwargs.get(SLOW_FILES_KWARG, {}).get("vocab_file"))


def _prepare_t5(kwargs: dict) -> None:
    """T5TokenizerFast: `extra_ids` sentinel tokens (<extra_id_0>...) become additional special tokens."""
    extra_ids = kwargs["extra_ids"]
    additional = kwargs.get("additional_special_tokens")
    if additional is not None:
        sentinels = [token for token in additional if "<extra_id_" in str(token)]
        if len(sentinels) < 1:
            additional = list(additional) + [f"<extra_id_{i}>" for i in range(extra_ids)]
        elif extra_ids > 0 and extra_ids != len(sentinels):
            raise ValueError(
                f"Both extra_ids ({extra_ids}) and additional_special_tokens ({additional}) are provided to "
                "T5TokenizerFast. In this case the additional_special_tokens must include the extra_ids tokens."
            )
    else:
        additional = [f"<extra_id_{i}>" for i in range(extra_ids)]
    kwargs["additional_special_tokens"] = additional
    if kwargs.get("add_prefix_space") is not None:
        if not _has_slow_vocabulary(kwargs):
            raise ValueError(
                "T5TokenizerFast with add_prefix_space set is rebuilt from the slow SentencePiece model (spiece.model) "
                "by transformers, and this checkpoint has none. Remove add_prefix_space, or load a directory that "
                "holds spiece.model."
            )
        kwargs["from_slow"] = True


def _prepare_pegasus(kwargs: dict) -> None:
    """PegasusTokenizerFast: <mask_1> and <unk_2>..<unk_{offset-1}> fill the additional special tokens.

    Like transformers it ignores tokenizer_config.json's added_tokens_decoder, and it rebuilds from the
    slow SentencePiece model (spiece.model must then be in the checkpoint) when pad/eos/unk are not the
    standard ones.
    """
    offset, mask_token_sent = kwargs["offset"], kwargs["mask_token_sent"]
    additional = kwargs.get("additional_special_tokens")
    if additional is not None:
        if not isinstance(additional, list):
            raise TypeError(f"additional_special_tokens should be a list, but is {type(additional).__name__}.")
        extended = ([mask_token_sent] + additional
                    if mask_token_sent not in additional and mask_token_sent is not None else additional)
        extended = list(extended) + [f"<unk_{i}>" for i in range(len(extended), offset - 1)]
        if len(set(map(str, extended))) != len(extended):
            raise ValueError("Please make sure that the provided additional_special_tokens do not contain an "
                             f"incorrectly shifted list of <unk_x> tokens. Found {extended}.")
        additional = extended
    else:
        additional = [mask_token_sent] if mask_token_sent is not None else []
        additional += [f"<unk_{i}>" for i in range(2, offset)]
    kwargs["additional_special_tokens"] = additional
    standard = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    if any(str(kwargs[key]) != value for key, value in standard.items()):
        if not _has_slow_vocabulary(kwargs):
            raise ValueError(
                "PegasusTokenizerFast with non-standard pad/eos/unk tokens is rebuilt from the slow SentencePiece "
                "model (spiece.model) by transformers, and this checkpoint has none. Load a directory that holds it."
            )
        kwargs["from_slow"] = True
    kwargs.pop("added_tokens_decoder", None)


def _prepare_llama(kwargs: dict) -> None:
    """LlamaTokenizerFast: `legacy` unset means True; `add_prefix_space` set rebuilds from tokenizer.model."""
    if kwargs.get("legacy") is None:
        kwargs["legacy"] = True
    if kwargs.get("add_prefix_space") is not None:
        if not _has_slow_vocabulary(kwargs):
            raise ValueError(
                "LlamaTokenizerFast with add_prefix_space set is rebuilt from the SentencePiece model (tokenizer.model) "
                "by transformers, and this checkpoint has none. Remove add_prefix_space, or load a directory that "
                "holds tokenizer.model."
            )
        kwargs["from_slow"] = True


def _prepare_qwen2(kwargs: dict) -> None:
    """Qwen2TokenizerFast: string bos/eos/unk/pad tokens become special, unnormalized AddedTokens."""
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        if isinstance(kwargs.get(key), str):
            kwargs[key] = AddedToken(kwargs[key], lstrip=False, rstrip=False, special=True, normalized=False)


def _set_gpt2_attributes(tokenizer: LoadingTokenizer, kwargs: dict) -> None:
    tokenizer.add_bos_token = kwargs.get("add_bos_token", False)


def _prepare_nllb(kwargs: dict) -> None:
    """NllbTokenizerFast: without additional special tokens, the 202 language codes are the additional ones."""
    if kwargs.get("additional_special_tokens") is None:
        kwargs["additional_special_tokens"] = list(FAIRSEQ_NLLB_CODES)


def _prepare_mbart(kwargs: dict) -> None:
    """MBartTokenizerFast: the 25 language codes first, then any other additional special tokens."""
    additional = list(FAIRSEQ_MBART_CODES)
    additional += [token for token in kwargs.get("additional_special_tokens") or [] if token not in additional]
    kwargs["additional_special_tokens"] = additional


def _prepare_mbart50(kwargs: dict) -> None:
    """MBart50TokenizerFast: the given additional special tokens, then the 52 language codes not among them."""
    additional = list(kwargs.get("additional_special_tokens") or [])
    additional += [code for code in FAIRSEQ_MBART50_CODES if code not in additional]
    kwargs["additional_special_tokens"] = additional


_BERT_DEFAULTS = {
    "do_lower_case": True,
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
    "tokenize_chinese_chars": True,
    "strip_accents": None,
}
_ROBERTA_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}
_ROBERTA_DEFAULTS = {"errors": "replace", **_ROBERTA_TOKENS, "add_prefix_space": False, "trim_offsets": True}
_TWO_INPUTS = ("input_ids", "attention_mask")


def _bert_like(name: str, model_input_names=("input_ids", "token_type_ids", "attention_mask")) -> TokenizerProfile:
    return TokenizerProfile(
        name=name, model_input_names=tuple(model_input_names), defaults=_BERT_DEFAULTS,
        writes_slow_vocabulary=True, attributes=("do_lower_case",), finish=_sync_bert_normalizer,
    )


def _roberta_like(name: str, mask_token_options: Mapping[str, Any]) -> TokenizerProfile:
    return TokenizerProfile(
        name=name, model_input_names=_TWO_INPUTS, defaults=_ROBERTA_DEFAULTS,
        mask_token_options=mask_token_options, writes_slow_vocabulary=True,
        requires_prefix_space_for_words=True, finish=_sync_roberta_post_processor,
    )


def _t5(name: str) -> TokenizerProfile:
    return TokenizerProfile(
        name=name, model_input_names=_TWO_INPUTS,
        defaults={"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "extra_ids": 100,
                  "additional_special_tokens": None, "add_prefix_space": None},
        prepare=_prepare_t5,
    )


_PROFILES: dict[str, TokenizerProfile] = {
    profile.name: profile
    for profile in (
        TokenizerProfile(name="PreTrainedTokenizerFast"),
        _bert_like("BertTokenizerFast"),
        _bert_like("DistilBertTokenizerFast", _TWO_INPUTS),
        _bert_like("ElectraTokenizerFast"),
        TokenizerProfile(
            name="MPNetTokenizerFast", model_input_names=_TWO_INPUTS,
            defaults={"do_lower_case": True, "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
                      "cls_token": "<s>", "unk_token": "[UNK]", "pad_token": "<pad>", "mask_token": "<mask>",
                      "tokenize_chinese_chars": True, "strip_accents": None},
            wrap_string_tokens={"lstrip": False, "rstrip": False},
            mask_token_options={"lstrip": True, "rstrip": False},
            writes_slow_vocabulary=True, attributes=("do_lower_case",), finish=_sync_mpnet_normalizer,
        ),
        _roberta_like("RobertaTokenizerFast", {"lstrip": True, "rstrip": False, "normalized": False}),
        _roberta_like("LongformerTokenizerFast", {"lstrip": True, "rstrip": False, "normalized": False}),
        _roberta_like("BartTokenizerFast", {"lstrip": True, "normalized": True, "special": True}),
        TokenizerProfile(
            name="XLMRobertaTokenizerFast", model_input_names=_TWO_INPUTS, defaults=_ROBERTA_TOKENS,
            mask_token_options={"lstrip": True, "rstrip": False},
        ),
        TokenizerProfile(
            name="CamembertTokenizerFast", model_input_names=_TWO_INPUTS,
            defaults={**_ROBERTA_TOKENS,
                      "additional_special_tokens": ["<s>NOTUSED", "</s>NOTUSED", "<unk>NOTUSED"]},
            mask_token_options={"lstrip": True, "special": True},
        ),
        _t5("T5TokenizerFast"),
        _t5("MT5TokenizerFast"),
        TokenizerProfile(
            name="PegasusTokenizerFast", model_input_names=_TWO_INPUTS,
            defaults={"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "mask_token": "<mask_2>",
                      "mask_token_sent": "<mask_1>", "additional_special_tokens": None, "offset": 103},
            attributes=("offset",), prepare=_prepare_pegasus,
        ),
        TokenizerProfile(
            name="GPT2TokenizerFast", model_input_names=_TWO_INPUTS,
            defaults={"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                      "add_prefix_space": False},
            writes_slow_vocabulary=True, requires_prefix_space_for_words=True, finish=_set_gpt2_attributes,
        ),
        TokenizerProfile(
            name="DebertaV2TokenizerFast",
            defaults={"do_lower_case": False, "split_by_punct": False, "bos_token": "[CLS]", "eos_token": "[SEP]",
                      "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                      "mask_token": "[MASK]"},
            attributes=("do_lower_case", "split_by_punct"),
        ),
        TokenizerProfile(
            name="NllbTokenizerFast", model_input_names=_TWO_INPUTS,
            defaults={**_ROBERTA_TOKENS, "src_lang": None, "tgt_lang": None, "additional_special_tokens": None,
                      "legacy_behaviour": False},
            mask_token_options={"normalized": True, "lstrip": True, "special": True},
            attributes=("legacy_behaviour",), prepare=_prepare_nllb,
        ),
        TokenizerProfile(
            name="MBartTokenizerFast", model_input_names=_TWO_INPUTS,
            defaults={**_ROBERTA_TOKENS, "src_lang": None, "tgt_lang": None, "additional_special_tokens": None},
            mask_token_options={"lstrip": True, "rstrip": False}, prepare=_prepare_mbart,
        ),
        TokenizerProfile(
            name="MBart50TokenizerFast", model_input_names=_TWO_INPUTS,
            defaults={key: value for key, value in {**_ROBERTA_TOKENS, "src_lang": None, "tgt_lang": None}.items()
                      if key != "bos_token"},
            mask_token_options={"lstrip": True, "rstrip": False}, prepare=_prepare_mbart50,
        ),
        # transformers has only slow classes for these two; ours are built on the fast wrapper (translation.py).
        TokenizerProfile(
            name="MarianTokenizer", model_input_names=_TWO_INPUTS,
            defaults={"source_lang": None, "target_lang": None, "unk_token": "<unk>", "eos_token": "</s>",
                      "pad_token": "<pad>", "model_max_length": 512, "separate_vocabs": False},
        ),
        TokenizerProfile(
            name="M2M100Tokenizer", model_input_names=_TWO_INPUTS,
            defaults={"src_lang": None, "tgt_lang": None, "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
                      "pad_token": "<pad>", "unk_token": "<unk>", "language_codes": "m2m100", "num_madeup_words": 8},
        ),
        TokenizerProfile(
            name="LlamaTokenizerFast", model_input_names=_TWO_INPUTS, padding_side="left",
            defaults={"clean_up_tokenization_spaces": False, "unk_token": "<unk>", "bos_token": "<s>",
                      "eos_token": "</s>", "add_bos_token": True, "add_eos_token": False,
                      "use_default_system_prompt": False, "legacy": None, "add_prefix_space": None},
            attributes=("legacy",), prepare=_prepare_llama, slow_defaults={"add_prefix_space": True},
        ),
        TokenizerProfile(
            name="GemmaTokenizerFast", model_input_names=_TWO_INPUTS, padding_side="left",
            defaults={"clean_up_tokenization_spaces": False, "unk_token": "<unk>", "bos_token": "<bos>",
                      "eos_token": "<eos>", "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False},
        ),
        TokenizerProfile(
            name="Qwen2TokenizerFast", model_input_names=_TWO_INPUTS,
            defaults={"unk_token": "<|endoftext|>", "bos_token": None, "eos_token": "<|endoftext|>",
                      "pad_token": "<|endoftext|>"},
            prepare=_prepare_qwen2,
        ),
        TokenizerProfile(
            name="AlbertTokenizerFast",
            defaults={"do_lower_case": True, "remove_space": True, "keep_accents": False, "bos_token": "[CLS]",
                      "eos_token": "[SEP]", "unk_token": "<unk>", "sep_token": "[SEP]", "pad_token": "<pad>",
                      "cls_token": "[CLS]", "mask_token": "[MASK]"},
            mask_token_options={"lstrip": True, "rstrip": False, "normalized": False},
            attributes=("do_lower_case", "remove_space", "keep_accents"),
        ),
    )
}

# transformers' TOKENIZER_MAPPING_NAMES for the model types we run: used when tokenizer_config.json
# names no class and config.json tells only the model_type.
_MODEL_TYPE_TO_TOKENIZER = {
    "albert": "AlbertTokenizerFast",
    "bart": "BartTokenizerFast",
    "bert": "BertTokenizerFast",
    "camembert": "CamembertTokenizerFast",
    "deberta-v2": "DebertaV2TokenizerFast",
    "distilbert": "DistilBertTokenizerFast",
    "electra": "ElectraTokenizerFast",
    "gemma": "GemmaTokenizerFast",
    "gemma2": "GemmaTokenizerFast",
    "gpt2": "GPT2TokenizerFast",
    "llama": "LlamaTokenizerFast",
    "mistral": "LlamaTokenizerFast",
    "mixtral": "LlamaTokenizerFast",
    "phi3": "LlamaTokenizerFast",
    "qwen2": "Qwen2TokenizerFast",
    "qwen3": "Qwen2TokenizerFast",
    "longformer": "LongformerTokenizerFast",
    "m2m_100": "M2M100Tokenizer",
    "marian": "MarianTokenizer",
    "mbart": "MBartTokenizerFast",
    "mega": "RobertaTokenizerFast",
    "modernbert": "PreTrainedTokenizerFast",
    "mpnet": "MPNetTokenizerFast",
    "mt5": "MT5TokenizerFast",
    "pegasus": "PegasusTokenizerFast",
    "roberta": "RobertaTokenizerFast",
    "t5": "T5TokenizerFast",
    "umt5": "T5TokenizerFast",
    "xlm-roberta": "XLMRobertaTokenizerFast",
}


def known_profile_name(class_name: str | None) -> str | None:
    """The profile name for a class name ("BertTokenizer" -> "BertTokenizerFast"), None when unknown."""
    if not class_name:
        return None
    fast_name = class_name if class_name.endswith("Fast") else f"{class_name}Fast"
    for candidate in (fast_name, class_name):
        if candidate in _PROFILES:
            return candidate
    return None


def tokenizer_profile(class_name: str | None) -> TokenizerProfile:
    """The profile for a transformers tokenizer class name ("BertTokenizer" or "BertTokenizerFast").

    Unknown names get the generic `PreTrainedTokenizerFast` profile and a warning: tokenizer.json and
    tokenizer_config.json still define the tokenizer, but class defaults transformers would add
    (default special tokens, `model_input_names`) are not known here.
    """
    if not class_name:
        return _PROFILES["PreTrainedTokenizerFast"]
    fast_name = class_name if class_name.endswith("Fast") else f"{class_name}Fast"
    if fast_name in _PROFILES:
        return _PROFILES[fast_name]
    if class_name in _PROFILES:
        return _PROFILES[class_name]
    logger.warning(
        "tokenizer_class %r has no specific support in rayformers; loading it with the generic "
        "PreTrainedTokenizerFast rules (tokenizer.json + tokenizer_config.json). transformers' %s may use other "
        "default special tokens or model_input_names. Supported classes: %s.",
        class_name, fast_name, ", ".join(sorted(_PROFILES)),
    )
    return _PROFILES["PreTrainedTokenizerFast"]


