"""`AutoTokenizer`: find a checkpoint's tokenizer files and build the tokenizer they describe."""

from __future__ import annotations

import logging
import os
import re

from tokenizers import AddedToken

from ..hub import resolve_file
from .fast import PreTrainedTokenizerFast
from .files import (
    _FILE_KEYS, ADDED_TOKENS_FILE, CHAT_TEMPLATE_FILE, MODEL_CONFIG_FILE, REFERENCE_TRANSFORMERS_VERSION,
    SPECIAL_TOKENS_ATTRIBUTES, SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
    TokenizerFormatError, TokenizerNotFoundError, _added_token, _added_tokens_from_json, _read_json,
)
from .profiles import _MODEL_TYPE_TO_TOKENIZER

logger = logging.getLogger(__name__)


class AutoTokenizer:
    """`AutoTokenizer.from_pretrained(dir_or_repo_id)` -> `PreTrainedTokenizerFast`, like transformers.

    Reads tokenizer.json (required), tokenizer_config.json, special_tokens_map.json,
    added_tokens.json and chat_template.jinja when present, from a local directory or a Hub repo id
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
        if os.path.isfile(name):
            raise ValueError(f"{name} is a file; pass the directory (or Hub repo id) that contains tokenizer.json.")
        if overrides.pop("use_fast", True) is False:
            raise ValueError("use_fast=False asks for a slow (Python) tokenizer; rayformers only has the fast "
                             "tokenizer.json kind.")
        for ignored in ("trust_remote_code", "_from_auto", "_commit_hash"):
            overrides.pop(ignored, None)
        hub_options = dict(subfolder=overrides.pop("subfolder", None) or "", cache_dir=cache_dir, revision=revision,
                           local_files_only=local_files_only, token=token)

        def resolve(filename: str) -> str | None:
            return resolve_file(name, filename, required=False, **hub_options)

        config_path = resolve(TOKENIZER_CONFIG_FILE)
        tokenizer_config = _read_json(config_path, "tokenizer config") if config_path else None
        tokenizer_filename = _versioned_tokenizer_file(tokenizer_config)
        tokenizer_path = _resolve_tokenizer_file(name, tokenizer_filename, resolve, **hub_options)

        class_name = overrides.pop("tokenizer_class", None)
        if class_name is None and tokenizer_config:
            class_name = tokenizer_config.get("tokenizer_class")
        if class_name is None:
            class_name = _tokenizer_class_from_model_config(resolve(MODEL_CONFIG_FILE))
        if tokenizer_config and "auto_map" in tokenizer_config:
            logger.warning("%s declares a custom tokenizer class (auto_map); rayformers does not run remote code and "
                           "loads it with the rules of %r.", name, class_name or "PreTrainedTokenizerFast")

        init_kwargs = _init_kwargs_from_files(
            tokenizer_config, overrides, tokenizer_path,
            special_tokens_map_path=resolve(SPECIAL_TOKENS_MAP_FILE),
            added_tokens_path=resolve(ADDED_TOKENS_FILE),
        )
        chat_template_path = resolve(CHAT_TEMPLATE_FILE)
        if chat_template_path is not None:
            with open(chat_template_path, encoding="utf-8") as handle:
                init_kwargs["chat_template"] = handle.read()
        init_kwargs["name_or_path"] = name
        return PreTrainedTokenizerFast(tokenizer_file=tokenizer_path, tokenizer_class=class_name or
                                       "PreTrainedTokenizerFast", **init_kwargs)


def _resolve_tokenizer_file(name: str, filename: str, resolve, **hub_options) -> str:
    """The tokenizer.json path, or an error that says why there is none and how to make one."""
    path = resolve(filename)
    if path is not None:
        return path
    if os.path.isdir(os.path.join(name, hub_options.get("subfolder") or "")):
        raise TokenizerNotFoundError(_missing_tokenizer_message(name, filename))
    try:  # a Hub id: let the hub layer say whether the repo, the cache or the file is missing
        return resolve_file(name, filename, required=True, **hub_options)
    except OSError as err:
        raise TokenizerNotFoundError(f"{err} {_missing_tokenizer_message(name, filename)}") from err


def _missing_tokenizer_message(name: str, filename: str) -> str:
    target = repr(name) if os.path.isdir(name) else "'<local dir>'"
    return (
        f"{name} has no {filename}. rayformers only supports fast tokenizers, which are stored as a single "
        "tokenizer.json (slow-tokenizer files such as vocab.txt, spiece.model or vocab.json + merges.txt are not "
        "converted). Produce one once with transformers (with sentencepiece installed for SentencePiece models): "
        f"`transformers.AutoTokenizer.from_pretrained({name!r}).save_pretrained({target})`, then load that directory."
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


def _init_kwargs_from_files(tokenizer_config: dict | None, overrides: dict, tokenizer_path: str, *,
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
        for serialized in _read_json(tokenizer_path, "tokenizer").get("added_tokens", []):
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
