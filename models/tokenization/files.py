"""File names, shared constants, errors and JSON helpers of the tokenizer package.

Why one module: the wrapper, the class rules and the loaders all read and write the same
files with the same error messages; keeping them here lets each of those modules import downward only.
"""

from __future__ import annotations

import json

from tokenizers import AddedToken, Tokenizer

# Same sentinels as transformers: "no limit" and the threshold above which a limit counts as none.
VERY_LARGE_INTEGER = int(1e30)
LARGE_INTEGER = int(1e20)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
ADDITIONAL_CHAT_TEMPLATES_DIR = "additional_chat_templates"
MODEL_CONFIG_FILE = "config.json"

# `fast_tokenizer_files` in tokenizer_config.json may name versioned files (tokenizer.<version>.json);
# transformers picks the newest one not newer than itself. We pick as the reference version would.
REFERENCE_TRANSFORMERS_VERSION = (4, 57, 6)

PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")
SUPPORTED_TENSOR_TYPES = ("pt", "np")

SPECIAL_TOKENS_ATTRIBUTES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
    "additional_special_tokens",
)

# Slow-tokenizer files found next to a tokenizer.json: used only to rebuild from them (from_slow).
SLOW_FILES_KWARG = "__slow_files"

# Keys of tokenizer_config.json that name files; they are never written back (transformers pops them).
_FILE_KEYS = ("tokenizer_file", "vocab_file", "merges_file", "special_tokens_map_file", "source_spm", "target_spm", "vocab",
              "target_vocab_file", "spm_file")


class TokenizerNotFoundError(OSError):
    """The checkpoint has neither a `tokenizer.json` nor the slow-tokenizer files of its class."""


class TokenizerFormatError(ValueError):
    """A tokenizer file exists but cannot be read (corrupt JSON, unknown model type, ...)."""


def _added_tokens_to_json(obj, add_type_field: bool):
    """AddedToken objects -> JSON dicts (transformers' convert_added_tokens with save=True)."""
    if isinstance(obj, AddedToken):
        state = obj.__getstate__()
        if add_type_field:
            state["__type"] = "AddedToken"
        else:
            state.pop("special")
        return state
    if isinstance(obj, (list, tuple)):
        return [_added_tokens_to_json(item, add_type_field) for item in obj]
    if isinstance(obj, dict):
        return {key: _added_tokens_to_json(value, add_type_field) for key, value in obj.items()}
    return obj


def _added_tokens_from_json(obj):
    """JSON dicts tagged `"__type": "AddedToken"` -> AddedToken (transformers' convert_added_tokens)."""
    if isinstance(obj, dict) and obj.get("__type") == "AddedToken":
        obj = dict(obj)
        obj.pop("__type")
        return AddedToken(**obj)
    if isinstance(obj, (list, tuple)):
        return [_added_tokens_from_json(item) for item in obj]
    if isinstance(obj, dict):
        return {key: _added_tokens_from_json(value) for key, value in obj.items()}
    return obj


def _added_token(fields: dict, where: str) -> AddedToken:
    """An AddedToken from its JSON fields, or an error naming the file entry that is malformed."""
    fields = {key: value for key, value in fields.items() if key != "__type"}
    try:
        return AddedToken(**fields)
    except TypeError as err:
        raise TokenizerFormatError(f"{where} is not a valid token description ({fields!r}): {err}") from err


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TokenizerFormatError(f"{path} is not valid JSON ({err}); the {what} file is corrupt. Re-download or "
                                   "re-save the tokenizer.") from err
    if not isinstance(value, dict):
        raise TokenizerFormatError(f"{path} must hold a JSON object ({what}), found {type(value).__name__}.")
    return value


def _read_backend(path: str) -> Tokenizer:
    try:
        return Tokenizer.from_file(path)
    except Exception as err:
        raise TokenizerFormatError(
            f"Could not read {path} as a `tokenizers` tokenizer.json ({err}). The file is corrupt or was written "
            "by an incompatible tool; re-download it, or re-create it with transformers: "
            "`AutoTokenizer.from_pretrained(...).save_pretrained(...)`."
        ) from err


