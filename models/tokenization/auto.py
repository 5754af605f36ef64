"""`AutoTokenizer`: find a checkpoint's tokenizer files and build the tokenizer they describe."""

from __future__ import annotations

import logging
import os
import re

from tokenizers import AddedToken

from ..adapters import adapter_base
from ..hub import resolve_file
from .fast import PreTrainedTokenizerFast
from .files import (
    _FILE_KEYS, ADDED_TOKENS_FILE, ADDITIONAL_CHAT_TEMPLATES_DIR, CHAT_TEMPLATE_FILE, MODEL_CONFIG_FILE, REFERENCE_TRANSFORMERS_VERSION,
    SPECIAL_TOKENS_ATTRIBUTES, SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
    SLOW_FILES_KWARG, TokenizerFormatError, TokenizerNotFoundError, _added_token, _added_tokens_from_json, _read_json,
)
from .converters import SLOW_FILE_CONVERTERS, slow_file_names
from .profiles import _MODEL_TYPE_TO_TOKENIZER, known_profile_name
from .bos_eos import BosEosTokenizerFast
from .translation import LanguageCodeTokenizerFast, M2M100Tokenizer, MarianTokenizer

logger = logging.getLogger(__name__)


class AutoTokenizer:
    """`AutoTokenizer.from_pretrained(dir_or_repo_id)` -> `PreTrainedTokenizerFast`, like transformers.

    Reads tokenizer.json -- or, without it, the slow-tokenizer files of the class (converted as
    transformers does; see `converters.py` and `translation.py`) -- plus tokenizer_config.json,
    special_tokens_map.json, added_tokens.json and chat_template.jinja when present, from a local directory or a Hub repo id
    (through `models.hub.resolve_file`: the huggingface_hub cache, `revision`, `HF_HUB_OFFLINE`).
    The tokenizer class comes from tokenizer_config.json's `tokenizer_class`, else config.json's
    `tokenizer_class` or `model_type`. Keyword overrides (`model_max_length=`, `padding_side=`,
    `pad_token=`...) win over the files.
    """

    def __init__(self, *args, **kwargs):
        raise OSError("AutoTokenizer is not meant to be instantiated; use AutoTokenizer.from_pretrained(...).")

    @classmethod
    def from_pretrained(cls, name_or_path, cache_dir=None, revision=None, local_files_only: bool = False,
                        token=None, **overrides) -> PreTrainedTokenizerFast:
        name = os.fspath(name_or_path)
        given_overrides = dict(overrides)
        if os.path.isfile(name):
            raise ValueError(f"{name} is a file; pass the directory (or Hub repo id) that contains tokenizer.json.")
        if overrides.pop("use_fast", True) is False:
            raise ValueError("use_fast=False asks for a slow (Python) tokenizer; rayformers builds every tokenizer on "
                             "the fast `tokenizers` backend (slow-tokenizer files are converted at load).")
        for ignored in ("trust_remote_code", "_from_auto", "_commit_hash"):
            overrides.pop(ignored, None)
        hub_options = dict(subfolder=overrides.pop("subfolder", None) or "", cache_dir=cache_dir, revision=revision,
                           local_files_only=local_files_only, token=token)

        def resolve(filename: str) -> str | None:
            return resolve_file(name, filename, required=False, **hub_options)

        config_path = resolve(TOKENIZER_CONFIG_FILE)
        tokenizer_config = _read_json(config_path, "tokenizer config") if config_path else None
        class_name = overrides.pop("tokenizer_class", None)
        if class_name is None and tokenizer_config:
            class_name = tokenizer_config.get("tokenizer_class")
        if class_name is None:
            class_name = _tokenizer_class_from_model_config(resolve(MODEL_CONFIG_FILE))
        if tokenizer_config and "auto_map" in tokenizer_config:
            logger.warning("%s declares a custom tokenizer class (auto_map); rayformers does not run remote code and "
                           "loads it with the rules of %r.", name, class_name or "PreTrainedTokenizerFast")
        profile_name = known_profile_name(class_name)
        tokenizer_class = _TOKENIZER_CLASSES.get(profile_name, PreTrainedTokenizerFast)

        # As transformers does, every file the class can be built from is resolved and handed to it:
        # tokenizer.json wins for fast classes, the slow files are converted when it is missing (or
        # when the class must rebuild from them, e.g. T5 with add_prefix_space).
        slow_files = {key: resolve(filename) for key, filename in _slow_file_names(profile_name).items()}
        slow_files = {key: path for key, path in slow_files.items() if path is not None}
        tokenizer_path = None
        if tokenizer_class in (PreTrainedTokenizerFast, LanguageCodeTokenizerFast, BosEosTokenizerFast):
            tokenizer_path = resolve(_versioned_tokenizer_file(tokenizer_config))
        if tokenizer_path is None and not _enough_slow_files(profile_name, slow_files):
            # A LoRA adapter saved without tokenizer files uses its base model's tokenizer.
            base = adapter_base(name, **hub_options) if tokenizer_config is None else None
            if base is not None:
                given_overrides.pop("subfolder", None)
                return cls.from_pretrained(base[0], **base[1], **given_overrides)
            _raise_no_tokenizer_files(name, class_name, profile_name, slow_files, hub_options)

        init_kwargs = _init_kwargs_from_files(
            tokenizer_config, overrides, tokenizer_path,
            special_tokens_map_path=resolve(SPECIAL_TOKENS_MAP_FILE),
            added_tokens_path=resolve(ADDED_TOKENS_FILE),
        )
        if tokenizer_path is None:
            for key, path in slow_files.items():
                init_kwargs.setdefault(key, path)
        elif slow_files:
            # Only used when the class must rebuild from them (from_slow); not part of init_kwargs then.
            init_kwargs[SLOW_FILES_KWARG] = slow_files
        chat_templates = _chat_template_files(name, resolve(CHAT_TEMPLATE_FILE), hub_options["subfolder"])
        if len(chat_templates) == 1 and "default" in chat_templates:
            init_kwargs["chat_template"] = chat_templates["default"]
        elif chat_templates:
            init_kwargs["chat_template"] = chat_templates
        init_kwargs["name_or_path"] = name
        if tokenizer_class in (MarianTokenizer, M2M100Tokenizer):
            return tokenizer_class(**init_kwargs)
        return tokenizer_class(tokenizer_file=tokenizer_path, tokenizer_class=class_name or "PreTrainedTokenizerFast",
                               **init_kwargs)


def _chat_template_files(name: str, default_path: str | None, subfolder: str) -> dict[str, str]:
    """Template files, which win over tokenizer_config.json's "chat_template" (as in transformers).

    chat_template.jinja is the "default" template; a local checkpoint's additional_chat_templates/
    folder adds one named template per `<name>.jinja` file.
    """
    templates = {}
    if default_path is not None:
        with open(default_path, encoding="utf-8") as handle:
            templates["default"] = handle.read()
    folder = os.path.join(name, subfolder, ADDITIONAL_CHAT_TEMPLATES_DIR)
    if os.path.isdir(folder):
        for file_name in sorted(os.listdir(folder)):
            if file_name.endswith(".jinja"):
                with open(os.path.join(folder, file_name), encoding="utf-8") as handle:
                    templates[file_name[: -len(".jinja")]] = handle.read()
    return templates


# transformers classes that need more than the generic wrapper (language tokens, two SentencePiece models).
_TOKENIZER_CLASSES = {
    "NllbTokenizerFast": LanguageCodeTokenizerFast,
    "MBartTokenizerFast": LanguageCodeTokenizerFast,
    "MBart50TokenizerFast": LanguageCodeTokenizerFast,
    "MarianTokenizer": MarianTokenizer,
    "M2M100Tokenizer": M2M100Tokenizer,
    "LlamaTokenizerFast": BosEosTokenizerFast,
    "GemmaTokenizerFast": BosEosTokenizerFast,
}

# Slow-only classes: init kwarg -> file, and which of them are required.
_SLOW_ONLY_FILES = {
    "MarianTokenizer": ({"source_spm": "source.spm", "target_spm": "target.spm", "vocab": "vocab.json",
                         "target_vocab_file": "target_vocab.json"}, ("source_spm", "target_spm", "vocab")),
    "M2M100Tokenizer": ({"vocab_file": "vocab.json", "spm_file": "sentencepiece.bpe.model"}, ("vocab_file", "spm_file")),
}


def _slow_file_names(profile_name: str | None) -> dict[str, str]:
    if profile_name in _SLOW_ONLY_FILES:
        return dict(_SLOW_ONLY_FILES[profile_name][0])
    return slow_file_names(profile_name) if profile_name else {}


def _enough_slow_files(profile_name: str | None, found: dict[str, str]) -> bool:
    if profile_name in _SLOW_ONLY_FILES:
        return all(key in found for key in _SLOW_ONLY_FILES[profile_name][1])
    names = _slow_file_names(profile_name)
    return bool(names) and all(key in found for key in names)


def _raise_no_tokenizer_files(name: str, class_name: str | None, profile_name: str | None, found: dict[str, str],
                              hub_options: dict) -> None:
    """No tokenizer.json and not (all) the slow files of the class: say what was looked for."""
    wanted = _slow_file_names(profile_name)
    if profile_name in _SLOW_ONLY_FILES:
        required = _SLOW_ONLY_FILES[profile_name][1]
        missing = [wanted[key] for key in required if key not in found]
        detail = f"{class_name} is built from {', '.join(wanted[key] for key in required)}; missing: {', '.join(missing)}."
    elif wanted:
        missing = [filename for key, filename in wanted.items() if key not in found]
        detail = (f"{class_name} loads from {TOKENIZER_FILE}, or from {' + '.join(wanted.values())}; missing: "
                  f"{TOKENIZER_FILE}, {', '.join(missing)}.")
    elif class_name:
        detail = (f"{class_name} can only be loaded from {TOKENIZER_FILE} here; slow-tokenizer files are converted "
                  f"for: {', '.join(sorted(SLOW_FILE_CONVERTERS) + sorted(_SLOW_ONLY_FILES))}.")
    else:
        detail = (f"Without {TOKENIZER_FILE}, the tokenizer class must be known to pick the slow files to convert, "
                  f"but neither {TOKENIZER_CONFIG_FILE} (tokenizer_class) nor {MODEL_CONFIG_FILE} (model_type) "
                  "names one.")
    if not os.path.isdir(os.path.join(name, hub_options.get("subfolder") or "")):
        try:  # a Hub id: let the hub layer say whether the repo, the cache or the file is missing
            resolve_file(name, TOKENIZER_FILE, required=True, **hub_options)
        except OSError as err:
            raise TokenizerNotFoundError(f"{err} {_missing_tokenizer_message(name, detail)}") from err
    raise TokenizerNotFoundError(_missing_tokenizer_message(name, detail))


def _missing_tokenizer_message(name: str, detail: str) -> str:
    target = repr(name) if os.path.isdir(name) else "'<local dir>'"
    return (
        f"{name} has no usable tokenizer files. {detail} Loadable layouts: tokenizer.json (any fast tokenizer); "
        "vocab.txt (BERT); vocab.json + merges.txt (GPT-2, RoBERTa, BART); a SentencePiece model (T5 spiece.model, "
        "Pegasus, ALBERT, XLM-R / CamemBERT / NLLB / mBART sentencepiece.bpe.model, DeBERTa-v2 spm.model); Marian "
        "source.spm + target.spm + vocab.json; M2M100 vocab.json + sentencepiece.bpe.model. For other layouts, save "
        f"the tokenizer once with transformers: `transformers.AutoTokenizer.from_pretrained({name!r})"
        f".save_pretrained({target})`, then load that directory."
    )


def _versioned_tokenizer_file(tokenizer_config: dict | None) -> str:
    """transformers' get_fast_tokenizer_file: newest tokenizer.<version>.json not newer than the reference."""
    if not tokenizer_config or "fast_tokenizer_files" not in tokenizer_config:
        return TOKENIZER_FILE
    candidates = {}
    for file_name in tokenizer_config["fast_tokenizer_files"]:
        match = re.search(r"tokenizer\.(.*)\.json", file_name)
        if match:
            try:
                version = tuple(int(part) for part in match.group(1).split(".")[:3])
            except ValueError:
                continue
            candidates[version] = file_name
    chosen = TOKENIZER_FILE
    for version in sorted(candidates):
        if version <= REFERENCE_TRANSFORMERS_VERSION:
            chosen = candidates[version]
        else:
            break
    return chosen


def _tokenizer_class_from_model_config(config_path: str | None) -> str | None:
    """config.json's `tokenizer_class`, else the class transformers maps its `model_type` to."""
    if config_path is None:
        return None
    config = _read_json(config_path, "model config")
    if config.get("tokenizer_class"):
        return config["tokenizer_class"]
    model_type = config.get("model_type")
    if model_type == "encoder-decoder":  # transformers uses the encoder's tokenizer
        model_type = (config.get("encoder") or {}).get("model_type")
    return _MODEL_TYPE_TO_TOKENIZER.get(model_type)


def _init_kwargs_from_files(tokenizer_config: dict | None, overrides: dict, tokenizer_path: str | None, *,
                            special_tokens_map_path: str | None, added_tokens_path: str | None) -> dict:
    """transformers' `_from_pretrained`: merge the config files and overrides into __init__ kwargs."""
    init_kwargs = dict(tokenizer_config or {})
    init_kwargs.pop("tokenizer_class", None)
    init_kwargs.pop("init_inputs", None)
    for key in _FILE_KEYS:
        init_kwargs.pop(key, None)
    init_kwargs.update(overrides)

    added_tokens_decoder: dict[int, AddedToken] = {}
    added_tokens_map: dict[str, AddedToken] = {}
    if "added_tokens_decoder" in init_kwargs:
        for index, token in init_kwargs["added_tokens_decoder"].items():
            if isinstance(token, dict):
                token = _added_token(token, f"tokenizer_config.json added_tokens_decoder[{index}]")
            if not isinstance(token, AddedToken):
                raise TokenizerFormatError(f"tokenizer_config.json added_tokens_decoder[{index}] must be an object "
                                           f"describing a token, found {token!r}.")
            added_tokens_decoder[int(index)] = token
            added_tokens_map[str(token)] = token
    else:
        # Legacy layout: special_tokens_map.json, added_tokens.json, tokenizer.json's added_tokens.
        if special_tokens_map_path is not None:
            for key, value in _read_json(special_tokens_map_path, "special tokens map").items():
                if key in overrides and overrides[key]:
                    continue
                if isinstance(value, dict):
                    value = _added_token({**value, "special": True}, f"special_tokens_map.json {key}")
                elif key == "additional_special_tokens" and isinstance(value, list):
                    additional = init_kwargs.pop("additional_special_tokens", []) or []
                    for token in value:
                        if isinstance(token, dict):
                            token = _added_token({**token, "special": True}, f"special_tokens_map.json {key}")
                        if token not in additional:
                            additional.append(token)
                    value = additional
                init_kwargs[key] = value
        if added_tokens_path is not None:
            special = []
            for key in SPECIAL_TOKENS_ATTRIBUTES:
                if init_kwargs.get(key) is not None:
                    value = init_kwargs[key]
                    special += [str(t) for t in value] if key == "additional_special_tokens" else [str(value)]
            for content, index in _read_json(added_tokens_path, "added tokens").items():
                is_special = content in special
                added_tokens_decoder[index] = AddedToken(content, rstrip=False, lstrip=False,
                                                         normalized=not is_special, special=is_special)
        serialized_tokens = _read_json(tokenizer_path, "tokenizer").get("added_tokens", []) if tokenizer_path else []
        for serialized in serialized_tokens:
            serialized = dict(serialized)
            index = serialized.pop("id")
            added_tokens_decoder[index] = _added_token(serialized, f"tokenizer.json added_tokens id {index}")
            added_tokens_map[str(added_tokens_decoder[index])] = added_tokens_decoder[index]

    init_kwargs["added_tokens_decoder"] = added_tokens_decoder
    init_kwargs = _added_tokens_from_json(init_kwargs)
    if added_tokens_map:
        for key in SPECIAL_TOKENS_ATTRIBUTES[:-1]:
            if init_kwargs.get(key) is not None:
                init_kwargs[key] = added_tokens_map.get(str(init_kwargs[key]), init_kwargs[key])
    return init_kwargs
