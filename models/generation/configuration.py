"""GenerationConfig: the parameters of `generate()`, read from and written to generation_config.json.

Field names, defaults, JSON layout (the diff against the defaults) and the fallback to generation
fields of config.json follow transformers 4.57.6, so a checkpoint's generation_config.json means the
same thing here and there, and a file we write loads in transformers. Validation is stricter than
the reference where the reference would only fail deep inside `generate` (or silently misbehave):
bad values raise a ValueError that names the field and what to do.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any

from ..hub import resolve_file

logger = logging.getLogger(__name__)

GENERATION_CONFIG_NAME = "generation_config.json"
# Written as `transformers_version` so that transformers applies its own (>= 4.50) semantics to files
# we save; this is the version whose behaviour this module reproduces.
REFERENCE_TRANSFORMERS_VERSION = "4.57.6"
METADATA_FIELDS = ("_from_model_config", "_commit_hash", "_original_object_hash", "transformers_version")

# Every field of transformers 4.57.6's GenerationConfig with its default, in its order.
DEFAULTS: dict[str, Any] = {
    # length
    "max_length": 20,
    "max_new_tokens": None,
    "min_length": 0,
    "min_new_tokens": None,
    "early_stopping": False,
    "max_time": None,
    "stop_strings": None,
    # strategy
    "do_sample": False,
    "num_beams": 1,
    # cache
    "use_cache": True,
    "cache_implementation": None,
    "cache_config": None,
    "return_legacy_cache": None,
    "prefill_chunk_size": None,
    # logits manipulation
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "renormalize_logits": False,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "remove_invalid_values": False,
    "exponential_decay_length_penalty": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "token_healing": False,
    "guidance_scale": None,
    "watermarking_config": None,
    # outputs
    "num_return_sequences": 1,
    "output_attentions": False,
    "output_hidden_states": False,
    "output_scores": False,
    "output_logits": None,
    "return_dict_in_generate": False,
    # special tokens
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
    # encoder-decoder
    "encoder_no_repeat_ngram_size": 0,
    "decoder_start_token_id": None,
    # assisted generation
    "num_assistant_tokens": 20,
    "num_assistant_tokens_schedule": "constant",
    "assistant_confidence_threshold": 0.4,
    "prompt_lookup_num_tokens": None,
    "max_matching_ngram_size": None,
    "assistant_early_exit": None,
    "assistant_lookbehind": 10,
    "target_lookbehind": 10,
    # performance
    "compile_config": None,
    "disable_compile": False,
    # deprecated in the reference, still fields
    "low_memory": None,
    "penalty_alpha": None,
    "dola_layers": None,
    "diversity_penalty": 0.0,
    "num_beam_groups": 1,
    "constraints": None,
    "force_words_ids": None,
}

# Arguments of `generate()` itself that users sometimes put into a generation config by mistake.
_GENERATE_ARGUMENTS = (
    "logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus", "assistant_model",
    "streamer", "negative_prompt_ids", "negative_prompt_attention_mask", "use_model_defaults",
)
_SPECIAL_TOKEN_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
                         "forced_bos_token_id", "forced_eos_token_id")


class GenerationConfig:
    """Parameters of `generate()` with transformers' names and defaults (see DEFAULTS).

    Unknown keyword arguments become attributes (model-specific fields such as Whisper's), except when
    built from a model config (`_from_model_config=True`), where only generation fields are taken.
    """

    def __init__(self, **kwargs):
        for name, default in DEFAULTS.items():
            setattr(self, name, copy.deepcopy(kwargs.pop(name, default)))
        self.is_assistant = False
        self._from_model_config = kwargs.pop("_from_model_config", False)
        self._commit_hash = kwargs.pop("_commit_hash", None)
        self.transformers_version = kwargs.pop("transformers_version", REFERENCE_TRANSFORMERS_VERSION)
        if not self._from_model_config:
            for key, value in kwargs.items():
                setattr(self, key, value)
        self.validate()

    # ------------------------------------------------------------------ comparison / display
    def __eq__(self, other) -> bool:
        if not isinstance(other, GenerationConfig):
            return False
        return self.to_json_string(use_diff=False, ignore_metadata=True) == other.to_json_string(
            use_diff=False, ignore_metadata=True
        )

    def __hash__(self) -> int:
        return hash(self.to_json_string(ignore_metadata=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string(ignore_metadata=True)}"

    # ------------------------------------------------------------------ validation
    def validate(self, strict: bool = False) -> None:
        """Raise ValueError for values `generate` cannot honour; warn (or raise if `strict`) for flags that
        would be ignored. Length checks that need the input (min_length > max_length) happen in generate."""
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"`early_stopping` must be True, False or 'never', but is {self.early_stopping!r}.")
        for name in ("max_new_tokens", "max_length"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value <= 0):
                raise ValueError(
                    f"`{name}` must be a positive integer (the number of tokens to generate), but is {value!r}."
                )
        for name in ("min_length", "min_new_tokens", "no_repeat_ngram_size"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 0):
                raise ValueError(f"`{name}` must be a non-negative integer, but is {value!r}.")
        if not _is_int(self.num_beams) or self.num_beams < 1:
            raise ValueError(f"`num_beams` must be a positive integer, but is {self.num_beams!r}.")
        if not _is_int(self.num_return_sequences) or self.num_return_sequences < 1:
            raise ValueError(f"`num_return_sequences` must be a positive integer, but is {self.num_return_sequences!r}.")
        if self.num_return_sequences != 1:
            if self.num_beams == 1 and not self.do_sample:
                raise ValueError(
                    "Greedy methods without beam search do not support `num_return_sequences` different than 1 "
                    f"(got {self.num_return_sequences}). Use num_beams >= num_return_sequences or do_sample=True."
                )
            if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
                raise ValueError(
                    f"`num_return_sequences` ({self.num_return_sequences}) has to be smaller or equal to `num_beams` "
                    f"({self.num_beams})."
                )
        if self.repetition_penalty is not None and not (_is_number(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ValueError(f"`repetition_penalty` has to be a strictly positive float, but is {self.repetition_penalty!r}.")
        if not _is_number(self.length_penalty):
            raise ValueError(f"`length_penalty` must be a number, but is {self.length_penalty!r}.")
        if self.bad_words_ids is not None:
            if not isinstance(self.bad_words_ids, list) or not self.bad_words_ids or any(
                not isinstance(seq, list) or not seq or any(not _is_int(t) or t < 0 for t in seq)
                for seq in self.bad_words_ids
            ):
                raise ValueError(
                    f"`bad_words_ids` has to be a non-empty list of non-empty lists of token ids, but is "
                    f"{self.bad_words_ids!r}."
                )
        for arg in _GENERATE_ARGUMENTS:
            if hasattr(self, arg):
                raise ValueError(
                    f"Argument `{arg}` is not a valid argument of `GenerationConfig`. It should be passed to "
                    "`generate()` directly."
                )

        minor = self._minor_issues()
        if minor:
            message = "\n".join(f"- `{name}`: {issue}" for name, issue in minor.items())
            if strict:
                raise ValueError("GenerationConfig is invalid: \n" + message)
            logger.warning("These generation flags are not valid and may be ignored: %s\n%s", list(minor), message)

    def validate_for_generate(self, vocab_size: int | None = None) -> None:
        """Checks that only matter when generating (token ids against the vocabulary, sampling values).

        Kept out of `validate()` so that a model whose config.json holds an odd value still loads; the
        error comes when `generate` would actually use the value.
        """
        self.validate()
        if self.do_sample:
            if self.temperature is not None and not (_is_number(self.temperature) and self.temperature > 0):
                hint = " For greedy decoding set do_sample=False." if self.temperature == 0 else ""
                raise ValueError(f"`temperature` (={self.temperature!r}) has to be a strictly positive float.{hint}")
            if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 0):
                raise ValueError(f"`top_k` has to be a non-negative integer (0 disables it), but is {self.top_k!r}.")
            if self.top_p is not None and not (_is_number(self.top_p) and 0.0 <= self.top_p <= 1.0):
                raise ValueError(f"`top_p` has to be a float in [0, 1], but is {self.top_p!r}.")
        self._validate_token_ids(vocab_size)

    def _validate_token_ids(self, vocab_size: int | None) -> None:
        for name in _SPECIAL_TOKEN_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            many_allowed = name in ("eos_token_id", "forced_eos_token_id", "decoder_start_token_id")
            if isinstance(value, (list, tuple)) and not many_allowed:
                raise ValueError(f"`{name}` must be a single token id, but is {value!r}.")
            ids = list(value) if isinstance(value, (list, tuple)) else [value]
            if not ids or any(not _is_int(i) or i < 0 for i in ids):
                raise ValueError(
                    f"`{name}` must be a non-negative integer token id{' (or a list of them)' if many_allowed else ''}, "
                    f"but is {value!r}. Fix it in generation_config.json / config.json or pass {name}=... to generate()."
                )
            if vocab_size is not None and any(i >= vocab_size for i in ids):
                raise ValueError(
                    f"`{name}`={value!r} is outside the model's vocabulary [0, {vocab_size}). The generation config "
                    "does not match this checkpoint; fix generation_config.json / config.json or pass "
                    f"{name}=... to generate()."
                )
        if self.bad_words_ids is not None and vocab_size is not None:
            bad = sorted({t for seq in self.bad_words_ids for t in seq if t >= vocab_size})
            if bad:
                raise ValueError(f"`bad_words_ids` holds ids {bad} outside the model's vocabulary [0, {vocab_size}).")

    def _minor_issues(self) -> dict[str, str]:
        issues: dict[str, str] = {}
        if self.do_sample is False:
            sampling_only = {"temperature": 1.0, "top_p": 1.0, "typical_p": 1.0, "top_k": 50,
                             "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}
            for name, default in sampling_only.items():
                value = getattr(self, name)
                if value is not None and value != default:
                    issues[name] = f"`do_sample` is False but `{name}` is {value!r}; it only affects sampling."
            if self.min_p is not None:
                issues["min_p"] = "`do_sample` is False but `min_p` is set; it only affects sampling."
        if self.num_beams == 1:
            if self.early_stopping is not False:
                issues["early_stopping"] = "`num_beams` is 1 but `early_stopping` is set; it only affects beam search."
            if self.length_penalty is not None and self.length_penalty != 1.0:
                issues["length_penalty"] = "`num_beams` is 1 but `length_penalty` is set; it only affects beam search."
        if self.return_dict_in_generate is not True:
            for flag in ("output_attentions", "output_hidden_states", "output_scores", "output_logits"):
                if getattr(self, flag) is True:
                    issues[flag] = f"`return_dict_in_generate` is not True, so `{flag}` is ignored."
        return issues

    # ------------------------------------------------------------------ update
    def update(self, **kwargs) -> dict[str, Any]:
        """Set the attributes that exist; return the other kwargs (e.g. model inputs) untouched."""
        unused = {}
        for key, value in kwargs.items():
            if hasattr(self, key):
                setattr(self, key, value)
            else:
                unused[key] = value
        self.validate()
        return unused

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        output = copy.deepcopy(self.__dict__)
        for key in ("_commit_hash", "_original_object_hash", "compile_config"):
            output.pop(key, None)
        # Like the reference, a written file records the version whose semantics it was written with.
        output["transformers_version"] = REFERENCE_TRANSFORMERS_VERSION
        return output

    def to_diff_dict(self) -> dict[str, Any]:
        """Only the values that differ from `GenerationConfig()` (plus the version), as the reference writes."""
        defaults = GenerationConfig().to_dict()
        return {
            key: value
            for key, value in self.to_dict().items()
            if key not in defaults or key == "transformers_version" or value != defaults[key]
        }

    def to_json_string(self, use_diff: bool = True, ignore_metadata: bool = False) -> str:
        config_dict = self.to_diff_dict() if use_diff else self.to_dict()
        if ignore_metadata:
            for field in METADATA_FIELDS:
                config_dict.pop(field, None)
        return json.dumps(_string_keys(config_dict), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path, use_diff: bool = True) -> None:
        with open(json_file_path, "w", encoding="utf-8") as writer:
            writer.write(self.to_json_string(use_diff=use_diff))

    def save_pretrained(self, save_directory, config_file_name: str | None = None) -> None:
        """Write generation_config.json; refuses configs with flags that would be ignored (as the reference)."""
        try:
            self.validate(strict=True)
        except ValueError as exc:
            raise ValueError(f"{exc}\n\nFix these issues to save the configuration.") from None
        if os.path.isfile(save_directory):
            raise AssertionError(f"Provided path ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        self.to_json_file(os.path.join(save_directory, config_file_name or GENERATION_CONFIG_NAME), use_diff=True)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        return_unused_kwargs = kwargs.pop("return_unused_kwargs", False)
        kwargs.pop("_from_auto", None)
        kwargs.pop("_from_pipeline", None)
        config = cls(**{**config_dict, **kwargs})
        unused = config.update(**kwargs)
        return (config, unused) if return_unused_kwargs else config

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name,
        config_file_name: str | None = None,
        *,
        subfolder: str = "",
        cache_dir=None,
        revision: str | None = None,
        local_files_only: bool = False,
        token=None,
        force_download: bool = False,
        **kwargs,
    ):
        """Load generation_config.json from a checkpoint directory or Hub id (through models/hub.py).

        Raises `CheckpointNotFoundError` (an OSError) when the file is absent, as the reference does.
        Extra kwargs override loaded values; with `return_unused_kwargs=True` the unknown ones come back.
        """
        path = resolve_file(
            pretrained_model_name, config_file_name or GENERATION_CONFIG_NAME, subfolder=subfolder,
            cache_dir=cache_dir, revision=revision, local_files_only=local_files_only, token=token,
            force_download=force_download, required=True,
        )
        try:
            with open(path, encoding="utf-8") as reader:
                config_dict = json.load(reader)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise OSError(f"The generation config file at '{path}' is not valid JSON: {exc}") from None
        if not isinstance(config_dict, dict):
            raise OSError(f"The generation config file at '{path}' must hold a JSON object.")
        try:
            result = cls.from_dict(config_dict, **kwargs)
        except ValueError as exc:
            raise ValueError(f"Invalid generation config in '{path}': {exc}") from None
        config = result[0] if isinstance(result, tuple) else result
        config._original_object_hash = hash(config)
        return result

    @classmethod
    def from_model_config(cls, model_config) -> "GenerationConfig":
        """Generation defaults from a model config (legacy config.json generation fields), as the reference.

        Non-None values of config.json that are generation fields win over the defaults; for composite
        configs (encoder-decoder) fields still at their default are then taken from the decoder config.
        """
        config_dict = {k: v for k, v in model_config.to_dict().items() if v is not None}
        config_dict.pop("_from_model_config", None)
        # The reference carries the model's own transformers_version over (it decides, in generate, whether
        # model-specific defaults apply to a user-given config); ours keeps it off config.json's dict.
        if getattr(model_config, "transformers_version", None):
            config_dict["transformers_version"] = model_config.transformers_version
        config = cls.from_dict(config_dict, return_unused_kwargs=False, _from_model_config=True)

        decoder_config = getattr(model_config, "decoder", None)
        if decoder_config is not None and hasattr(decoder_config, "to_dict"):
            defaults = GenerationConfig()
            decoder_dict = decoder_config.to_dict()
            for attr in config.to_dict():
                if attr in decoder_dict and getattr(config, attr) == getattr(defaults, attr, None):
                    setattr(config, attr, decoder_dict[attr])

        if config.return_dict_in_generate is False and any(
            getattr(config, flag, False) for flag in ("output_attentions", "output_hidden_states", "output_scores", "output_logits")
        ):
            config.return_dict_in_generate = True
        config._original_object_hash = hash(config)
        return config


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _string_keys(obj):
    if isinstance(obj, dict):
        return {str(k): _string_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_string_keys(v) for v in obj]
    if hasattr(obj, "to_dict") and not isinstance(obj, GenerationConfig):
        return obj.to_dict()
    return obj
