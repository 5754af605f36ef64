"""`PreTrainedTokenizerFast`: a `tokenizers.Tokenizer` with transformers' API and semantics."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from tokenizers import AddedToken, Encoding, Tokenizer
from tokenizers import pre_tokenizers as backend_pre_tokenizers

from .batch_encoding import BatchEncoding, _to_py_obj
from .files import (
    _FILE_KEYS, ADDED_TOKENS_FILE, CHAT_TEMPLATE_FILE, LARGE_INTEGER, PADDING_STRATEGIES, SPECIAL_TOKENS_ATTRIBUTES,
    SLOW_FILES_KWARG, SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, TRUNCATION_STRATEGIES, VERY_LARGE_INTEGER,
    _added_tokens_to_json, _read_backend, _write_json,
)
from .chat_template import render_conversations, select_chat_template
from .converters import backend_from_slow_files, slow_class_defaults, slow_file_names
from .profiles import TokenizerProfile, tokenizer_profile

logger = logging.getLogger(__name__)


def _special_token_property(name: str) -> property:
    def getter(self):
        value = self._special_tokens_map.get(name)
        return None if value is None else str(value)

    def setter(self, value):
        if value is not None and not isinstance(value, (str, AddedToken)):
            raise ValueError(f"Cannot set a non-string value as the {name}: {value!r}")
        self._special_tokens_map[name] = value

    return property(getter, setter, doc=f"The {name} as a string (None when the tokenizer has none).")


def _special_token_id_property(name: str) -> property:
    def getter(self):
        token = getattr(self, name)
        return None if token is None else self.convert_tokens_to_ids(token)

    def setter(self, value):
        setattr(self, name, None if value is None else self.convert_ids_to_tokens(value))

    return property(getter, setter, doc=f"The id of the {name} (None when the tokenizer has none).")


class PreTrainedTokenizerFast:
    """A `tokenizers.Tokenizer` with transformers' `PreTrainedTokenizerFast` API and semantics.

    Build it with `AutoTokenizer.from_pretrained(dir_or_repo_id)`, or directly from a backend:
    `PreTrainedTokenizerFast(tokenizer_object=tok, tokenizer_class="BertTokenizerFast", **config)`.

    The backend (`backend_tokenizer`) rests with truncation and padding switched off; every call
    configures them for that call only and switches them off again, so code that calls the backend
    directly (the pipeline's tokenize actors) never inherits settings from an earlier call or from
    the `truncation`/`padding` sections of tokenizer.json (which are kept and written back on save).
    """

    def __init__(self, tokenizer_object: Tokenizer | None = None, *, tokenizer_file: str | None = None,
                 tokenizer_class: str = "PreTrainedTokenizerFast", **kwargs):
        profile = tokenizer_profile(tokenizer_class)
        self.tokenizer_class = profile.name  # the transformers class whose behaviour is mirrored
        self._profile = profile
        # Saved back as given, so transformers still picks its own class for a checkpoint whose class
        # we only load generically.
        self._declared_tokenizer_class = tokenizer_class
        given = set(kwargs)  # keys set by the files or the caller, not by class defaults
        kwargs = self._apply_class_defaults(profile, kwargs)

        from_slow = kwargs.pop("from_slow", False)
        if from_slow:
            for key, path in kwargs.get(SLOW_FILES_KWARG, {}).items():
                kwargs.setdefault(key, path)
        kwargs.pop(SLOW_FILES_KWARG, None)
        for unused in ("__slow_tokenizer", "gguf_file"):
            kwargs.pop(unused, None)
        added_tokens_decoder = kwargs.pop("added_tokens_decoder", {})
        self.add_prefix_space = kwargs.get("add_prefix_space", False)

        if tokenizer_object is not None:
            backend = Tokenizer.from_str(tokenizer_object.to_str())
        elif tokenizer_file is not None and not from_slow:
            backend = _read_backend(tokenizer_file)
        elif slow_file_names(profile.name) and any(kwargs.get(key) for key in slow_file_names(profile.name)):
            # transformers builds the slow tokenizer from these files and converts it (convert_slow_tokenizer).
            # transformers converts a slow tokenizer built from the files with the slow class's defaults.
            slow_kwargs = {**kwargs, **{key: value for key, value in profile.slow_defaults.items() if key not in given}}
            backend = backend_from_slow_files(profile.name, {**slow_kwargs, "added_tokens_decoder": added_tokens_decoder})
            for key, value in slow_class_defaults(profile.name).items():
                kwargs.setdefault(key, value)
        elif from_slow:
            raise ValueError(
                f"from_slow=True asks to rebuild the tokenizer from slow-tokenizer files, but no "
                f"{' / '.join(slow_file_names(profile.name).values()) or 'slow-tokenizer file'} was given for "
                f"{profile.name}. Load the checkpoint directory that holds them, or drop from_slow."
            )
        else:
            raise ValueError("PreTrainedTokenizerFast needs a tokenizers.Tokenizer (tokenizer_object=), a "
                             "tokenizer.json path (tokenizer_file=) or slow-tokenizer files (vocab_file=...).")
        self._tokenizer = backend

        # tokenizer.json may carry truncation/padding settings; transformers turns them into init kwargs
        # (saved to tokenizer_config.json) and keeps them on the backend. We keep them only for saving.
        self._file_truncation = backend.truncation
        self._file_padding = backend.padding
        if self._file_truncation is not None:
            kwargs.setdefault("max_length", self._file_truncation["max_length"])
            kwargs.setdefault("truncation_side", self._file_truncation["direction"])
            kwargs.setdefault("stride", self._file_truncation["stride"])
            kwargs.setdefault("truncation_strategy", self._file_truncation["strategy"])
        if self._file_padding is not None:
            kwargs.setdefault("pad_token", self._file_padding["pad_token"])
            kwargs.setdefault("pad_token_type_id", self._file_padding["pad_type_id"])
            kwargs.setdefault("padding_side", self._file_padding["direction"])
            kwargs.setdefault("max_length", self._file_padding["length"])
            kwargs.setdefault("pad_to_multiple_of", self._file_padding["pad_to_multiple_of"])
        backend.no_truncation()
        backend.no_padding()

        self._init_base(kwargs)
        backend.encode_special_tokens = self.split_special_tokens
        self._add_missing_tokens(added_tokens_decoder)
        self._sync_pre_tokenizer_prefix_space()
        for name in profile.attributes:
            setattr(self, name, kwargs[name])
        if profile.finish is not None:
            profile.finish(self, kwargs)

    # ---- construction helpers (transformers' __init__ chain, flattened) ----

    @staticmethod
    def _apply_class_defaults(profile: TokenizerProfile, kwargs: dict) -> dict:
        """Keyword defaults of the transformers class, then its own adjustments of the kwargs."""
        merged = copy.deepcopy(dict(profile.defaults))
        merged.update(kwargs)
        if profile.wrap_string_tokens is not None:
            for key in SPECIAL_TOKENS_ATTRIBUTES[:-1]:
                if isinstance(merged.get(key), str):
                    merged[key] = AddedToken(merged[key], **profile.wrap_string_tokens)
        if profile.mask_token_options is not None and isinstance(merged.get("mask_token"), str):
            merged["mask_token"] = AddedToken(merged["mask_token"], **profile.mask_token_options)
        if profile.prepare is not None:
            profile.prepare(merged)
        return merged

    def _init_base(self, kwargs: dict) -> None:
        """transformers' PreTrainedTokenizerBase + SpecialTokensMixin __init__."""
        self.init_kwargs = copy.deepcopy(kwargs)
        self.init_inputs = ()
        kwargs = dict(kwargs)
        self.name_or_path = kwargs.pop("name_or_path", "")
        model_max_length = kwargs.pop("model_max_length", kwargs.pop("max_len", None))
        self.model_max_length = model_max_length if model_max_length is not None else VERY_LARGE_INTEGER
        self.padding_side = kwargs.pop("padding_side", self._profile.padding_side)
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}.")
        self.truncation_side = kwargs.pop("truncation_side", self._profile.truncation_side)
        if self.truncation_side not in ("right", "left"):
            raise ValueError(f"truncation_side must be 'right' or 'left', got {self.truncation_side!r}.")
        self.model_input_names = list(kwargs.pop("model_input_names", self._profile.model_input_names))
        self.clean_up_tokenization_spaces = kwargs.pop("clean_up_tokenization_spaces", False)
        self.split_special_tokens = kwargs.pop("split_special_tokens", False)
        self.deprecation_warnings: dict[str, bool] = {}
        chat_template = kwargs.pop("chat_template", None)
        if isinstance(chat_template, (list, tuple)):
            chat_template = {item["name"]: item["template"] for item in chat_template}
        self.chat_template = chat_template

        self._pad_token_type_id = 0
        self.verbose = kwargs.pop("verbose", False)
        self.special_tokens_attributes = list(SPECIAL_TOKENS_ATTRIBUTES)
        self._special_tokens_map: dict[str, Any] = dict.fromkeys(SPECIAL_TOKENS_ATTRIBUTES)
        self._special_tokens_map["additional_special_tokens"] = []
        for key, value in kwargs.items():
            if value is None or key not in SPECIAL_TOKENS_ATTRIBUTES:
                continue
            if key == "additional_special_tokens":
                if not isinstance(value, (list, tuple)) or not all(isinstance(t, (str, AddedToken)) for t in value):
                    raise TypeError(f"additional_special_tokens must be a list of strings, got {value!r}.")
                self._special_tokens_map[key] = list(value)
            elif isinstance(value, (str, AddedToken)):
                self._special_tokens_map[key] = value
            else:
                raise TypeError(f"Special token {key} must be a string or AddedToken, got {type(value).__name__}.")

        self.extra_special_tokens = kwargs.pop("extra_special_tokens", {}) or {}
        for key, value in self.extra_special_tokens.items():
            if not isinstance(value, (str, AddedToken)):
                raise TypeError(f"Special token {key} must be a string or AddedToken, got {type(value).__name__}.")
            self.special_tokens_attributes.append(key)
            self._special_tokens_map[key] = value

    def _add_missing_tokens(self, added_tokens_decoder: dict[int, AddedToken]) -> None:
        """Register added tokens of tokenizer_config.json and special tokens the backend lacks.

        Mirrors transformers exactly, including its quirk that special tokens held as `AddedToken`
        are always re-registered (an `AddedToken` never equals the plain string it is compared with),
        which refreshes their flags on the backend. A special token that is not in the vocabulary
        at all is appended to it, as transformers does -- so ids match transformers.
        """
        known = {hash(repr(token)) for token in self.added_tokens_decoder.values()}
        tokens_to_add = [
            token for _, token in sorted(added_tokens_decoder.items(), key=lambda item: item[0])
            if hash(repr(token)) not in known
        ]
        encoder = list(self.added_tokens_encoder.keys()) + [str(token) for token in tokens_to_add]
        tokens_to_add += [
            token for token in self.all_special_tokens_extended if token not in encoder and token not in tokens_to_add
        ]
        if not tokens_to_add:
            return
        special_tokens = self.all_special_tokens
        tokens = []
        for token in tokens_to_add:
            if isinstance(token, AddedToken):
                token.special = token.special or str(token) in special_tokens
            else:
                token = AddedToken(token, special=str(token) in special_tokens)
            tokens.append(token)
        self.add_tokens(tokens)

    def _sync_pre_tokenizer_prefix_space(self) -> None:
        """transformers forces the pre-tokenizer's `add_prefix_space` to the tokenizer's (default False)."""
        try:
            state = json.loads(self._tokenizer.pre_tokenizer.__getstate__())
            if state.get("add_prefix_space", self.add_prefix_space) != self.add_prefix_space:
                pre_tokenizer_class = getattr(backend_pre_tokenizers, state.pop("type"))
                state["add_prefix_space"] = self.add_prefix_space
                self._tokenizer.pre_tokenizer = pre_tokenizer_class(**state)
        except Exception:  # no pre-tokenizer, or one that cannot be serialized: nothing to align
            pass

    # ---- vocabulary ----

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The Rust `tokenizers.Tokenizer`. It has no truncation or padding configured (see class doc)."""
        return self._tokenizer

    @property
    def is_fast(self) -> bool:
        return True

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens (as transformers)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        """Size of the full vocabulary, added tokens included (the embedding matrix needs this many rows)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __bool__(self) -> bool:
        return True

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def vocab(self) -> dict[str, int]:
        return self.get_vocab()

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return self._tokenizer.get_added_tokens_decoder()

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return {token.content: index for index, token in sorted(self.added_tokens_decoder.items())}

    def get_added_vocab(self) -> dict[str, int]:
        return self.added_tokens_encoder

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """Token string(s) to id(s); unknown tokens map to `unk_token_id` (None without an unk token)."""
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(token) for token in tokens]

    def _token_to_id(self, token: str) -> int | None:
        index = self._tokenizer.token_to_id(token)
        return self.unk_token_id if index is None else index

    def convert_ids_to_tokens(self, ids: int | list[int], skip_special_tokens: bool = False) -> str | list[str]:
        ids = _to_py_obj(ids)
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(int(index)) for index in ids if int(index) not in skip]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self._tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def add_tokens(self, new_tokens, special_tokens: bool = False) -> int:
        """Add tokens to the vocabulary (new ids after the current ones); returns how many were new."""
        if not new_tokens:
            return 0
        if not isinstance(new_tokens, (list, tuple)):
            new_tokens = [new_tokens]
        if special_tokens:
            return self._tokenizer.add_special_tokens(list(new_tokens))
        return self._tokenizer.add_tokens(list(new_tokens))

    def add_special_tokens(self, special_tokens_dict: Mapping[str, Any],
                           replace_additional_special_tokens: bool = True) -> int:
        """Set special tokens (`{"pad_token": "[PAD]"}`), adding the ones the vocabulary lacks."""
        if not special_tokens_dict:
            return 0
        added = []
        for key, value in special_tokens_dict.items():
            if key not in self.special_tokens_attributes:
                raise ValueError(f"{key!r} is not a special token attribute; use one of {self.special_tokens_attributes}.")
            if key == "additional_special_tokens":
                if not isinstance(value, (list, tuple)) or not all(isinstance(t, (str, AddedToken)) for t in value):
                    raise ValueError(f"additional_special_tokens must be a list of strings or AddedTokens, got {value!r}.")
                to_add = []
                for token in value:
                    if isinstance(token, str):
                        token = AddedToken(token, rstrip=False, lstrip=False, normalized=False, special=True)
                    if not replace_additional_special_tokens and str(token) in self.additional_special_tokens:
                        continue
                    to_add.append(token)
                if replace_additional_special_tokens and to_add:
                    self._special_tokens_map[key] = list(to_add)
                else:
                    self._special_tokens_map[key].extend(to_add)
                added += to_add
            else:
                if not isinstance(value, (str, AddedToken)):
                    raise ValueError(f"Token {value!r} for {key} must be a string or an AddedToken.")
                if isinstance(value, str):
                    value = AddedToken(value, rstrip=False, lstrip=False, normalized=False, special=True)
                self._special_tokens_map[key] = value
                if value not in added:
                    added.append(value)
        return self.add_tokens(added, special_tokens=True)

    # ---- special tokens ----

    bos_token = _special_token_property("bos_token")
    eos_token = _special_token_property("eos_token")
    unk_token = _special_token_property("unk_token")
    sep_token = _special_token_property("sep_token")
    pad_token = _special_token_property("pad_token")
    cls_token = _special_token_property("cls_token")
    mask_token = _special_token_property("mask_token")
    bos_token_id = _special_token_id_property("bos_token")
    eos_token_id = _special_token_id_property("eos_token")
    unk_token_id = _special_token_id_property("unk_token")
    sep_token_id = _special_token_id_property("sep_token")
    pad_token_id = _special_token_id_property("pad_token")
    cls_token_id = _special_token_id_property("cls_token")
    mask_token_id = _special_token_id_property("mask_token")

    @property
    def additional_special_tokens(self) -> list[str]:
        return [str(token) for token in self._special_tokens_map["additional_special_tokens"] or []]

    @additional_special_tokens.setter
    def additional_special_tokens(self, value) -> None:
        self._special_tokens_map["additional_special_tokens"] = list(value or [])

    @property
    def additional_special_tokens_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.additional_special_tokens)

    def __getattr__(self, name: str):
        # Model-specific extra special tokens (tokenizer_config.json "extra_special_tokens") are
        # attributes in transformers (`tokenizer.image_token`, `tokenizer.image_token_id`).
        special = self.__dict__.get("_special_tokens_map")
        if special is not None and not name.startswith("__"):
            base = name[:-3] if name.endswith("_id") else name
            if base in special and base not in SPECIAL_TOKENS_ATTRIBUTES:
                token = special[base]
                if token is None:
                    return None
                return self.convert_tokens_to_ids(str(token)) if name.endswith("_id") else str(token)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def pad_token_type_id(self) -> int:
        return self._pad_token_type_id

    @property
    def special_tokens_map(self) -> dict[str, str | list[str]]:
        """Special-token attribute -> token string(s), for the attributes that are set."""
        out = {}
        for attr in self.special_tokens_attributes:
            value = self._special_tokens_map.get(attr)
            if value:
                out[attr] = [str(t) for t in value] if attr == "additional_special_tokens" else str(value)
        return out

    @property
    def special_tokens_map_extended(self) -> dict[str, Any]:
        """Like `special_tokens_map` but keeping `AddedToken` objects (with their strip/normalize flags)."""
        return {attr: self._special_tokens_map[attr] for attr in self.special_tokens_attributes
                if self._special_tokens_map.get(attr)}

    @property
    def all_special_tokens_extended(self) -> list[str | AddedToken]:
        tokens, seen = [], set()
        for value in self.special_tokens_map_extended.values():
            candidates = value if isinstance(value, (list, tuple)) else [value]
            new = [token for token in candidates if str(token) not in seen]
            seen.update(map(str, new))
            tokens.extend(new)
        return tokens

    @property
    def all_special_tokens(self) -> list[str]:
        return [str(token) for token in self.all_special_tokens_extended]

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """How many tokens the post-processor adds around one text (or a pair)."""
        return self._tokenizer.num_special_tokens_to_add(pair)

    @property
    def max_len_single_sentence(self) -> int:
        return self.model_max_length - self.num_special_tokens_to_add(pair=False)

    @property
    def max_len_sentences_pair(self) -> int:
        return self.model_max_length - self.num_special_tokens_to_add(pair=True)

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        """1 where an id is a special token. Fast tokenizers only support already-encoded ids here."""
        if not already_has_special_tokens or token_ids_1 is not None:
            raise ValueError(
                "get_special_tokens_mask only supports already_has_special_tokens=True with one sequence; call the "
                "tokenizer with return_special_tokens_mask=True to get the mask while encoding."
            )
        special = set(self.all_special_ids)
        return [1 if token in special else 0 for token in token_ids_0]

    # ---- strategies ----

    def _warn_once(self, key: str, message: str) -> None:
        if not self.deprecation_warnings.get(key, False):
            logger.warning(message)
        self.deprecation_warnings[key] = True

    def _padding_truncation_strategies(self, padding=False, truncation=None, max_length=None,
                                       pad_to_multiple_of=None, verbose=True) -> tuple[str, str, int | None]:
        """transformers' `_get_padding_truncation_strategies`, with its defaults and errors."""
        if max_length is not None and padding is False and truncation is None:
            if verbose:
                self._warn_once(
                    "Truncation-not-explicitly-activated",
                    "Truncation was not explicitly activated but `max_length` is provided a specific value, please "
                    "use `truncation=True` to explicitly truncate examples to max length. Defaulting to "
                    "'longest_first' truncation strategy.",
                )
            truncation = "longest_first"

        padding = getattr(padding, "value", padding)
        truncation = getattr(truncation, "value", truncation)
        if padding is False or padding is None:
            padding_strategy = "do_not_pad"
        elif padding is True:
            padding_strategy = "longest"
        elif padding in PADDING_STRATEGIES:
            padding_strategy = padding
        else:
            raise ValueError(f"padding={padding!r} is not valid; use True, False or one of {PADDING_STRATEGIES}.")

        if truncation is False or truncation is None:
            truncation_strategy = "do_not_truncate"
        elif truncation is True:
            truncation_strategy = "longest_first"
        elif truncation in TRUNCATION_STRATEGIES:
            truncation_strategy = truncation
        else:
            raise ValueError(
                f"truncation={truncation!r} is not valid; use True, False or one of {TRUNCATION_STRATEGIES}."
            )

        if max_length is None:
            if padding_strategy == "max_length":
                if self.model_max_length > LARGE_INTEGER:
                    if verbose:
                        self._warn_once(
                            "Asking-to-pad-to-max_length",
                            "Asking to pad to max_length but no maximum length is provided and the model has no "
                            "predefined maximum length. Default to no padding.",
                        )
                    padding_strategy = "do_not_pad"
                else:
                    max_length = self.model_max_length
            if truncation_strategy != "do_not_truncate":
                if self.model_max_length > LARGE_INTEGER:
                    if verbose:
                        self._warn_once(
                            "Asking-to-truncate-to-max_length",
                            "Asking to truncate to max_length but no maximum length is provided and the model has "
                            "no predefined maximum length. Default to no truncation.",
                        )
                    truncation_strategy = "do_not_truncate"
                else:
                    max_length = self.model_max_length

        if padding_strategy != "do_not_pad":
            pad_id = self.pad_token_id if self.pad_token is not None else None
            if pad_id is None or pad_id < 0:
                raise ValueError(
                    f"Asking to pad but the tokenizer {self.name_or_path!r} has no padding token. Set one, e.g. "
                    "`tokenizer.pad_token = tokenizer.eos_token`, or add one with "
                    "`tokenizer.add_special_tokens({'pad_token': '[PAD]'})` (then resize the model's embeddings)."
                )
        if (truncation_strategy != "do_not_truncate" and padding_strategy != "do_not_pad"
                and pad_to_multiple_of is not None and max_length is not None and max_length % pad_to_multiple_of):
            raise ValueError(
                "Truncation and padding are both activated but "
                f"truncation length ({max_length}) is not a multiple of pad_to_multiple_of ({pad_to_multiple_of})."
            )
        return padding_strategy, truncation_strategy, max_length

    @contextlib.contextmanager
    def _backend_configured(self, padding_strategy: str, truncation_strategy: str, max_length: int | None,
                            stride: int, pad_to_multiple_of: int | None, padding_side: str | None,
                            split_special_tokens: bool):
        """Configure truncation/padding on the backend for one call, then return it to rest."""
        backend = self._tokenizer
        try:
            if truncation_strategy != "do_not_truncate":
                backend.enable_truncation(max_length=max_length, stride=stride, strategy=truncation_strategy,
                                          direction=self.truncation_side)
            if padding_strategy != "do_not_pad":
                backend.enable_padding(
                    length=max_length if padding_strategy == "max_length" else None,
                    direction=padding_side if padding_side is not None else self.padding_side,
                    pad_id=self.pad_token_id, pad_token=self.pad_token, pad_type_id=self.pad_token_type_id,
                    pad_to_multiple_of=pad_to_multiple_of,
                )
            if backend.encode_special_tokens != split_special_tokens:
                backend.encode_special_tokens = split_special_tokens
            yield backend
        finally:
            backend.no_truncation()
            backend.no_padding()
            backend.encode_special_tokens = self.split_special_tokens

    # ---- encoding ----

    def __call__(self, text=None, text_pair=None, text_target=None, text_pair_target=None, *,
                 add_special_tokens: bool = True, padding=False, truncation=None, max_length: int | None = None,
                 stride: int = 0, is_split_into_words: bool = False, pad_to_multiple_of: int | None = None,
                 padding_side: str | None = None, return_tensors: str | None = None,
                 return_token_type_ids: bool | None = None, return_attention_mask: bool | None = None,
                 return_overflowing_tokens: bool = False, return_special_tokens_mask: bool = False,
                 return_offsets_mapping: bool = False, return_length: bool = False, verbose: bool = True,
                 split_special_tokens: bool | None = None) -> BatchEncoding:
        """Tokenize one text, a batch of texts, or (batches of) text pairs -- transformers' semantics.

        `text` is a str (one example) or a list of str (a batch; a tuple item is a pair). `text_pair`
        gives the second texts. `text_target` encodes targets and returns them as `labels`.
        `truncation=True` without `max_length` truncates to `model_max_length`. A single example
        returns flat lists unless `return_tensors` is set, which always adds the batch axis.
        """
        options = dict(
            add_special_tokens=add_special_tokens, padding=padding, truncation=truncation, max_length=max_length,
            stride=stride, is_split_into_words=is_split_into_words, pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side, return_tensors=return_tensors, return_token_type_ids=return_token_type_ids,
            return_attention_mask=return_attention_mask, return_overflowing_tokens=return_overflowing_tokens,
            return_special_tokens_mask=return_special_tokens_mask, return_offsets_mapping=return_offsets_mapping,
            return_length=return_length, verbose=verbose,
            split_special_tokens=self.split_special_tokens if split_special_tokens is None else split_special_tokens,
        )
        if text is None and text_target is None:
            raise ValueError("Pass the texts to tokenize as `text` (or targets as `text_target`).")
        encodings = None
        if text is not None:
            self._switch_to_input_mode()
            encodings = self._call_one(text, text_pair, **options)
        if text_target is None:
            return encodings
        self._switch_to_target_mode()
        try:
            targets = self._call_one(text_target, text_pair_target, **options)
        finally:
            self._switch_to_input_mode()
        if encodings is None:
            return targets
        encodings["labels"] = targets["input_ids"]
        return encodings

    def _switch_to_input_mode(self) -> None:
        """Hook for tokenizers that encode targets differently (language tokens, Marian's target model)."""

    def _switch_to_target_mode(self) -> None:
        """Hook: set the tokenizer up for `text_target` (undone by `_switch_to_input_mode`)."""

    def _call_one(self, text, text_pair, *, is_split_into_words: bool, **options) -> BatchEncoding:
        _check_text_input(text, "text", is_split_into_words)
        if text_pair is not None:
            _check_text_input(text_pair, "text_pair", is_split_into_words)
        if is_split_into_words:
            is_batched = isinstance(text, (list, tuple)) and bool(text) and isinstance(text[0], (list, tuple))
        else:
            is_batched = isinstance(text, (list, tuple))
        if is_batched:
            if isinstance(text_pair, str):
                raise TypeError("When tokenizing a batch of texts, `text_pair` must be a list of the same length "
                                "as `text`, not a single string.")
            if text_pair is not None and len(text) != len(text_pair):
                raise ValueError(
                    f"batch length of `text`: {len(text)} does not match batch length of `text_pair`: "
                    f"{len(text_pair)}. Pass one second text per first text."
                )
            batch = list(zip(text, text_pair)) if text_pair is not None else list(text)
            return self._batch_encode(batch, is_split_into_words=is_split_into_words, unbatch=False, **options)
        batch = [(text, text_pair)] if text_pair else [text]
        return self._batch_encode(batch, is_split_into_words=is_split_into_words, unbatch=True, **options)

    def encode_plus(self, text, text_pair=None, **options) -> BatchEncoding:
        """One example (a text or a pair) -> BatchEncoding without batch axis (transformers' encode_plus)."""
        options.setdefault("split_special_tokens", self.split_special_tokens)
        options = {**_CALL_DEFAULTS, **options}
        _check_text_input(text, "text", options["is_split_into_words"])
        if text_pair is not None:
            _check_text_input(text_pair, "text_pair", options["is_split_into_words"])
        batch = [(text, text_pair)] if text_pair else [text]
        return self._batch_encode(batch, unbatch=True, **options)

    def batch_encode_plus(self, batch_text_or_text_pairs, **options) -> BatchEncoding:
        """A list of texts or (text, pair) tuples -> BatchEncoding (transformers' batch_encode_plus)."""
        options.setdefault("split_special_tokens", self.split_special_tokens)
        options = {**_CALL_DEFAULTS, **options}
        return self._batch_encode(list(batch_text_or_text_pairs), unbatch=False, **options)

    def _batch_encode(self, batch: list, *, unbatch: bool, add_special_tokens: bool, padding, truncation,
                      max_length, stride: int, is_split_into_words: bool, pad_to_multiple_of, padding_side,
                      return_tensors, return_token_type_ids, return_attention_mask, return_overflowing_tokens: bool,
                      return_special_tokens_mask: bool, return_offsets_mapping: bool, return_length: bool,
                      verbose: bool, split_special_tokens: bool) -> BatchEncoding:
        if is_split_into_words and self._profile.requires_prefix_space_for_words and not self.add_prefix_space:
            raise ValueError(f"You need to instantiate {self.tokenizer_class} with add_prefix_space=True to use it "
                             "with pretokenized inputs (is_split_into_words=True).")
        padding_strategy, truncation_strategy, max_length = self._padding_truncation_strategies(
            padding=padding, truncation=truncation, max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of, verbose=verbose,
        )
        with self._backend_configured(padding_strategy, truncation_strategy, max_length, stride,
                                      pad_to_multiple_of, padding_side, split_special_tokens) as backend:
            try:
                encodings = backend.encode_batch(batch, add_special_tokens=add_special_tokens,
                                                 is_pretokenized=is_split_into_words)
            except Exception as err:
                raise ValueError(f"The tokenizer could not encode this batch ({truncation_strategy} truncation, "
                                 f"max_length={max_length}, stride={stride}): {err}") from err

        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        fields = ["input_ids"]
        fields += ["token_type_ids"] if return_token_type_ids else []
        fields += ["attention_mask"] if return_attention_mask else []
        fields += ["special_tokens_mask"] if return_special_tokens_mask else []
        fields += ["offset_mapping"] if return_offsets_mapping else []
        fields += ["length"] if return_length else []
        data: dict[str, list] = {name: [] for name in fields}
        flat_encodings: list[Encoding] = []
        sample_mapping: list[int] = []
        for index, encoding in enumerate(encodings):
            rows = [encoding] + encoding.overflowing if return_overflowing_tokens and encoding.overflowing else [
                encoding]
            for row in rows:
                data["input_ids"].append(row.ids)
                if return_token_type_ids:
                    data["token_type_ids"].append(row.type_ids)
                if return_attention_mask:
                    data["attention_mask"].append(row.attention_mask)
                if return_special_tokens_mask:
                    data["special_tokens_mask"].append(row.special_tokens_mask)
                if return_offsets_mapping:
                    data["offset_mapping"].append(row.offsets)
                if return_length:
                    data["length"].append(len(row.ids))
                flat_encodings.append(row)
                sample_mapping.append(index)
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = sample_mapping
        for ids in data["input_ids"]:
            self._warn_if_too_long(ids, max_length, verbose)

        if unbatch and return_tensors is None and not return_overflowing_tokens:
            data = {key: (value[0] if value and isinstance(value[0], list) else value) for key, value in data.items()}
            return BatchEncoding(data, flat_encodings)
        return BatchEncoding(data, flat_encodings, tensor_type=return_tensors)

    def _warn_if_too_long(self, ids: list[int], max_length: int | None, verbose: bool) -> None:
        if max_length is None and len(ids) > self.model_max_length and verbose and self.model_max_length != 0:
            self._warn_once(
                "sequence-length-is-longer-than-the-specified-maximum",
                "Token indices sequence length is longer than the specified maximum sequence length for this model "
                f"({len(ids)} > {self.model_max_length}). Running this sequence through the model will result in "
                "indexing errors",
            )

    def encode(self, text, text_pair=None, add_special_tokens: bool = True, padding=False, truncation=None,
               max_length: int | None = None, stride: int = 0, padding_side: str | None = None,
               return_tensors: str | None = None, **options) -> list[int]:
        """Token ids of one text (or pair), special tokens included by default."""
        return self.encode_plus(
            text, text_pair, add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
            max_length=max_length, stride=stride, padding_side=padding_side, return_tensors=return_tensors, **options,
        )["input_ids"]

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False, **options) -> list[str]:
        """Token strings of one text (no special tokens unless asked)."""
        return self.encode_plus(text, pair, add_special_tokens=add_special_tokens, **options).tokens()

    def encode_batch_for_model(self, texts, text_pairs=None, max_length: int | None = None, *,
                               return_token_type_ids: bool = False):
        """The pipeline's fast path: token ids per text, truncated, not padded, as plain lists.

        Equivalent to `self(texts, text_pairs, truncation=True, max_length=max_length)["input_ids"]`
        (`max_length=None` means `model_max_length`), but skips offsets and Python-side padding
        bookkeeping. With `return_token_type_ids=True` returns `(input_ids, token_type_ids)`; pairs fed
        to BERT-style models need the type ids.
        """
        _check_text_input(texts, "texts", False)
        if isinstance(texts, str):
            raise TypeError("encode_batch_for_model takes a list of texts; wrap a single text in a list.")
        if text_pairs is not None:
            _check_text_input(text_pairs, "text_pairs", False)
            if isinstance(text_pairs, str) or len(text_pairs) != len(texts):
                raise ValueError(f"text_pairs must be a list with one second text per text: got {len(texts)} texts "
                                 f"and {1 if isinstance(text_pairs, str) else len(text_pairs)} text_pairs.")
            batch = list(zip(texts, text_pairs))
        else:
            batch = list(texts)
        _, truncation_strategy, max_length = self._padding_truncation_strategies(
            padding=False, truncation=True, max_length=max_length, verbose=False)
        if not batch:
            return ([], []) if return_token_type_ids else []
        with self._backend_configured("do_not_pad", truncation_strategy, max_length, 0, None, None,
                                      self.split_special_tokens) as backend:
            try:
                encodings = backend.encode_batch_fast(batch, add_special_tokens=True)
            except Exception as err:
                raise ValueError(f"The tokenizer could not encode this batch (max_length={max_length}): {err}") from err
        input_ids = [encoding.ids for encoding in encodings]
        if return_token_type_ids:
            return input_ids, [encoding.type_ids for encoding in encodings]
        return input_ids

    # ---- padding already-encoded inputs ----

    def pad(self, encoded_inputs, padding=True, max_length: int | None = None, pad_to_multiple_of: int | None = None,
            padding_side: str | None = None, return_attention_mask: bool | None = None,
            return_tensors: str | None = None, verbose: bool = True) -> BatchEncoding:
        """Pad encoded examples (a dict of lists, a list of dicts, or a BatchEncoding) to one length.

        Usable as a DataLoader collate function. Tensor inputs come back as tensors of the same kind.
        """
        if isinstance(encoded_inputs, (list, tuple)) and encoded_inputs and isinstance(encoded_inputs[0], Mapping):
            encoded_inputs = {key: [example[key] for example in encoded_inputs] for key in encoded_inputs[0]}
        else:
            encoded_inputs = dict(encoded_inputs)
        main_input = self.model_input_names[0]
        if main_input not in encoded_inputs:
            raise ValueError(f"pad() needs the field {main_input!r}; got fields {list(encoded_inputs.keys())}.")
        required = encoded_inputs[main_input]
        if required is None or (hasattr(required, "__len__") and len(required) == 0):
            if return_attention_mask:
                encoded_inputs["attention_mask"] = []
            return BatchEncoding(encoded_inputs)

        first = required[0]
        if isinstance(first, (list, tuple)):
            for row in required:
                if len(row) != 0:
                    first = row[0]
                    break
        if not isinstance(first, (int, list, tuple)):
            if type(first).__module__.startswith("torch"):
                return_tensors = "pt" if return_tensors is None else return_tensors
            elif isinstance(first, (np.ndarray, np.generic)):
                return_tensors = "np" if return_tensors is None else return_tensors
            else:
                raise ValueError(f"pad() got values of type {type(first).__name__}; use Python lists, NumPy arrays "
                                 "or PyTorch tensors.")
            encoded_inputs = {key: _to_py_obj(value) for key, value in encoded_inputs.items()}

        padding_strategy, _, max_length = self._padding_truncation_strategies(
            padding=padding, max_length=max_length, verbose=verbose)
        required = encoded_inputs[main_input]
        if required and not isinstance(required[0], (list, tuple)):
            padded = self._pad_one(dict(encoded_inputs), max_length, padding_strategy, pad_to_multiple_of,
                                   padding_side, return_attention_mask)
            return BatchEncoding(padded, tensor_type=return_tensors)

        batch_size = len(required)
        for key, value in encoded_inputs.items():
            if len(value) != batch_size:
                raise ValueError(f"pad(): field {key!r} has {len(value)} rows but {main_input!r} has {batch_size}.")
        if padding_strategy == "longest":
            max_length = max(len(row) for row in required)
            padding_strategy = "max_length"
        outputs: dict[str, list] = {}
        for index in range(batch_size):
            row = {key: value[index] for key, value in encoded_inputs.items()}
            padded = self._pad_one(row, max_length, padding_strategy, pad_to_multiple_of, padding_side,
                                   return_attention_mask)
            for key, value in padded.items():
                outputs.setdefault(key, []).append(value)
        return BatchEncoding(outputs, tensor_type=return_tensors)

    def _pad_one(self, row: dict, max_length, padding_strategy: str, pad_to_multiple_of, padding_side,
                 return_attention_mask) -> dict:
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        main_input = self.model_input_names[0]
        required = list(row[main_input])
        if padding_strategy == "longest":
            max_length = len(required)
        if max_length is not None and pad_to_multiple_of is not None and max_length % pad_to_multiple_of:
            max_length = (max_length // pad_to_multiple_of + 1) * pad_to_multiple_of
        if return_attention_mask and "attention_mask" not in row:
            row["attention_mask"] = [1] * len(required)
        if padding_strategy == "do_not_pad" or len(required) == max_length:
            return row
        difference = max_length - len(required)
        side = padding_side if padding_side is not None else self.padding_side
        if side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}.")

        def extend(values, filler):
            values = list(values)
            return values + [filler] * difference if side == "right" else [filler] * difference + values

        if return_attention_mask:
            row["attention_mask"] = extend(row["attention_mask"], 0)
        if "token_type_ids" in row:
            row["token_type_ids"] = extend(row["token_type_ids"], self.pad_token_type_id)
        if "special_tokens_mask" in row:
            row["special_tokens_mask"] = extend(row["special_tokens_mask"], 1)
        row[main_input] = extend(required, self.pad_token_id)
        return row

    # ---- chat templates ----

    def get_chat_template(self, chat_template: str | None = None, tools=None) -> str:
        """The template string `apply_chat_template` would render with (transformers' rules; see chat_template.py)."""
        return select_chat_template(self.chat_template, chat_template, tools, self.name_or_path)

    def apply_chat_template(self, conversation, tools=None, documents=None, chat_template: str | None = None,
                            add_generation_prompt: bool = False, continue_final_message: bool = False,
                            tokenize: bool = True, padding=False, truncation: bool = False,
                            max_length: int | None = None, return_tensors: str | None = None,
                            return_dict: bool = False, return_assistant_tokens_mask: bool = False,
                            tokenizer_kwargs: dict | None = None, **kwargs):
        """Render a conversation (list of `{"role", "content"}` dicts, or a batch of them) with the chat template.

        Same arguments and results as transformers: the text (`tokenize=False`), its ids, or a
        BatchEncoding (`return_dict=True`). Extra keyword arguments become template variables, after
        the special tokens (`bos_token`, `eos_token`, ...), which they override. The rendered text is
        tokenized without adding special tokens, since the template writes them itself.
        """
        if return_dict and not tokenize:
            raise ValueError("`return_dict=True` is incompatible with `tokenize=False`, because there is no dict of "
                             "tokenizer outputs to return.")
        if return_assistant_tokens_mask and not return_dict:
            raise ValueError("`return_assistant_tokens_mask=True` is incompatible with `return_dict=False`")
        template = self.get_chat_template(chat_template, tools)
        if isinstance(conversation, (list, tuple)) and conversation and (
                isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages")):
            conversations, is_batched = conversation, True
        else:
            conversations, is_batched = [conversation], False
        if continue_final_message:
            if add_generation_prompt:
                raise ValueError(
                    "continue_final_message and add_generation_prompt are not compatible. Use continue_final_message "
                    "when you want the model to continue the final message, and add_generation_prompt when you want "
                    "to add a header that will prompt it to start a new assistant message instead.")
            if return_assistant_tokens_mask:
                raise ValueError("continue_final_message is not compatible with return_assistant_tokens_mask.")
        rendered, generation_indices = render_conversations(
            conversations, template, tools=tools, documents=documents, add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message, return_assistant_tokens_mask=return_assistant_tokens_mask,
            **{**self.special_tokens_map, **kwargs})
        if not is_batched:
            rendered = rendered[0]
        if not tokenize:
            return rendered
        out = self(rendered, padding=padding, truncation=truncation, max_length=max_length, add_special_tokens=False,
                   return_tensors=return_tensors, **(tokenizer_kwargs or {}))
        if not return_dict:
            return out["input_ids"]
        if return_assistant_tokens_mask:
            input_ids = out["input_ids"] if is_batched or return_tensors else [out["input_ids"]]
            masks = []
            for index in range(len(input_ids)):
                mask = [0] * len(input_ids[index])
                for start_char, end_char in generation_indices[index]:
                    start_token = out.char_to_token(index, start_char)
                    end_token = out.char_to_token(index, end_char - 1)
                    if start_token is None:
                        break  # past a truncation
                    for token_index in range(start_token, end_token + 1 if end_token else len(input_ids[index])):
                        mask[token_index] = 1
                masks.append(mask)
            out["assistant_masks"] = masks if is_batched or return_tensors else masks[0]
            if return_tensors:
                out.convert_to_tensors(tensor_type=return_tensors)
        return out

    # ---- decoding ----

    def decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None,
               **kwargs) -> str:
        """Ids (list, tensor or array) -> text."""
        token_ids = _to_py_obj(token_ids)
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        text = self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)
        return self._clean_up(text, clean_up_tokenization_spaces)

    def batch_decode(self, sequences, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None, **kwargs) -> list[str]:
        """Rows of ids -> texts, decoded in one call to the backend."""
        sequences = [[seq] if isinstance(seq, int) else seq for seq in _to_py_obj(sequences)]
        texts = self._tokenizer.decode_batch(sequences, skip_special_tokens=skip_special_tokens)
        return [self._clean_up(text, clean_up_tokenization_spaces) for text in texts]

    def _clean_up(self, text: str, clean_up_tokenization_spaces: bool | None) -> str:
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return self.clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    @staticmethod
    def clean_up_tokenization(out_string: str) -> str:
        """Remove the spaces a word-level tokenizer leaves before punctuation and English contractions."""
        return (
            out_string.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
            .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
            .replace(" 've", "'ve").replace(" 're", "'re")
        )

    # ---- saving ----

    def save_pretrained(self, save_directory, filename_prefix: str | None = None, **kwargs) -> tuple[str, ...]:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json as transformers does.

        transformers' AutoTokenizer loads the result back to the same tokenizer, and so do we. Slow
        vocabulary files (vocab.txt, vocab.json + merges.txt) are written too for the classes where
        transformers writes them; SentencePiece models are not (they cannot be rebuilt from
        tokenizer.json, and nothing here needs them).
        """
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise NotADirectoryError(f"save_pretrained needs a directory, but {save_directory} is a file.")
        os.makedirs(save_directory, exist_ok=True)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        config_file = os.path.join(save_directory, prefix + TOKENIZER_CONFIG_FILE)
        special_tokens_file = os.path.join(save_directory, prefix + SPECIAL_TOKENS_MAP_FILE)
        tokenizer_file = os.path.join(save_directory, prefix + TOKENIZER_FILE)
        written = [config_file, special_tokens_file]

        config = copy.deepcopy(self.init_kwargs)
        for key in set(self.init_kwargs) | {"model_max_length", "clean_up_tokenization_spaces"}:
            if key in _FILE_KEYS or key == "name_or_path":
                continue
            value = getattr(self, key, _MISSING)
            if value is not _MISSING and not callable(value):
                config[key] = value
        # transformers keeps a changed padding/truncation side only by accident (through the padding
        # section its last call left in tokenizer.json); we write it whenever it is not the default.
        for key in ("padding_side", "truncation_side"):
            if getattr(self, key) != getattr(self._profile, key):
                config[key] = getattr(self, key)
        config.update(self.special_tokens_map)
        if "extra_special_tokens" not in config:
            config["extra_special_tokens"] = self.extra_special_tokens
            config.update(self.extra_special_tokens)
        config.pop("chat_template", None)
        if isinstance(self.chat_template, str):
            chat_template_file = os.path.join(save_directory, prefix + CHAT_TEMPLATE_FILE)
            with open(chat_template_file, "w", encoding="utf-8") as handle:
                handle.write(self.chat_template)
            written.append(chat_template_file)
        elif isinstance(self.chat_template, dict):
            config["chat_template"] = [{"name": k, "template": v} for k, v in self.chat_template.items()]
        for key in (*_FILE_KEYS, "name_or_path", "device_map"):
            config.pop(key, None)
        config = _added_tokens_to_json(config, add_type_field=True)
        config["added_tokens_decoder"] = {
            index: token.__getstate__() for index, token in self.added_tokens_decoder.items()}
        if self._profile.name == "PreTrainedTokenizerFast" and self._declared_tokenizer_class:
            config["tokenizer_class"] = self._declared_tokenizer_class
        elif self._profile.writes_slow_vocabulary:
            config["tokenizer_class"] = self.tokenizer_class[:-4]
        else:
            config["tokenizer_class"] = self.tokenizer_class
        _write_json(config_file, config)
        _write_json(special_tokens_file, _added_tokens_to_json(self.special_tokens_map_extended, add_type_field=False))

        if self._profile.writes_slow_vocabulary:
            added_vocab = {token: index for token, index in self.added_tokens_encoder.items()
                           if index >= self.vocab_size}
            if added_vocab:
                added_tokens_file = os.path.join(save_directory, prefix + ADDED_TOKENS_FILE)
                _write_json(added_tokens_file, added_vocab)
                written.append(added_tokens_file)
            written += self._tokenizer.model.save(save_directory, filename_prefix)

        with self._file_settings_restored():
            self._tokenizer.save(tokenizer_file)
        written.append(tokenizer_file)
        return tuple(written)

    @contextlib.contextmanager
    def _file_settings_restored(self):
        """Put tokenizer.json's own truncation/padding sections back while saving, so they round-trip."""
        try:
            if self._file_truncation is not None:
                self._tokenizer.enable_truncation(**self._file_truncation)
            if self._file_padding is not None:
                self._tokenizer.enable_padding(**self._file_padding)
            yield
        finally:
            self._tokenizer.no_truncation()
            self._tokenizer.no_padding()

    def __repr__(self) -> str:
        return (
            f"PreTrainedTokenizerFast(tokenizer_class='{self.tokenizer_class}', name_or_path='{self.name_or_path}', "
            f"vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
            f"padding_side='{self.padding_side}', truncation_side='{self.truncation_side}', "
            f"special_tokens={self.special_tokens_map})"
        )


_MISSING = object()

_CALL_DEFAULTS = dict(
    add_special_tokens=True, padding=False, truncation=None, max_length=None, stride=0, is_split_into_words=False,
    pad_to_multiple_of=None, padding_side=None, return_tensors=None, return_token_type_ids=None,
    return_attention_mask=None, return_overflowing_tokens=False, return_special_tokens_mask=False,
    return_offsets_mapping=False, return_length=False, verbose=True,
)


def _check_text_input(value, name: str, is_split_into_words: bool) -> None:
    """Reject anything but str / list of str (/ list of pairs) with the offending row named."""
    if isinstance(value, str):
        return
    if not isinstance(value, (list, tuple)):
        hint = " (convert it with .tolist())" if hasattr(value, "tolist") else ""
        raise ValueError(f"`{name}` must be a str or a list of str, got {type(value).__name__}{hint}.")
    if is_split_into_words and value and not isinstance(value[0], (list, tuple)):
        rows = [value]  # one pre-split example
    else:
        rows = value
    for index, item in enumerate(rows):
        if isinstance(item, str):
            if is_split_into_words and rows is value:
                raise ValueError(f"`{name}[{index}]` is a str; with is_split_into_words=True each example must be "
                                 "a list of words.")
            continue
        if isinstance(item, (list, tuple)):
            if is_split_into_words and all(isinstance(word, str) for word in item):
                continue
            if not is_split_into_words and len(item) == 2 and all(isinstance(part, str) for part in item):
                continue  # a (text, text_pair) tuple inside a batch
        raise ValueError(
            f"`{name}[{index}]` is {type(item).__name__} ({item!r:.60}); every example must be a str"
            + (" list of words" if is_split_into_words else " (or a (text, text_pair) pair)") + "."
        )


