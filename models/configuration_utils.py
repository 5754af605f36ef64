"""`PretrainedConfig`: the model configuration, read and written in Hugging Face's `config.json` format.

Why a faithful copy of transformers' semantics rather than a simpler dataclass: checkpoints move both
ways between us and transformers, so the JSON we write must be the same *diff dict* transformers
writes (only values that differ from the defaults), and every config.json on the Hub must load here
with the same attribute values, aliases (`attribute_map`) and label maps.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from typing import TYPE_CHECKING, Any, ClassVar

from .adapters import adapter_base
from .hub import resolve_file

if TYPE_CHECKING:
    import torch

# torch is imported only where a dtype name becomes a `torch.dtype`: reading a config.json (the job
# driver's checks, `AutoConfig.from_pretrained`) must not pay torch's import (seconds of CPU).

CONFIG_NAME = "config.json"

VALID_PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")

# Generation parameters that older configs carry; transformers still loads them as attributes.
GLOBAL_GENERATION_DEFAULTS: dict[str, Any] = {
    "max_length": 20,
    "min_length": 0,
    "do_sample": False,
    "early_stopping": False,
    "num_beams": 1,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "typical_p": 1.0,
    "repetition_penalty": 1.0,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "num_return_sequences": 1,
    "output_scores": False,
    "return_dict_in_generate": False,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "remove_invalid_values": False,
    "exponential_decay_length_penalty": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
}

# Private attributes that live on the object but are never written to config.json.
_NOT_SERIALIZED = ("_auto_class", "_commit_hash", "_attn_implementation_internal", "base_model_tp_plan",
                   "base_model_pp_plan")


class PretrainedConfig:
    """Base class of every model configuration.

    Subclasses set `model_type`, optionally `attribute_map` (aliases such as T5's
    `hidden_size -> d_model`) and `sub_configs` (nested configs such as an encoder-decoder's), and
    pass their special token ids through to this `__init__` exactly like their transformers twin.
    """

    model_type: ClassVar[str] = ""
    attribute_map: ClassVar[dict[str, str]] = {}
    sub_configs: ClassVar[dict[str, type]] = {}
    # True for configs (encoder-decoder) that cannot be built without arguments; diffing then skips
    # the class defaults.
    has_no_defaults_at_init: ClassVar[bool] = False

    def __setattr__(self, key, value):
        if key in type(self).attribute_map:
            key = type(self).attribute_map[key]
        super().__setattr__(key, value)

    def __getattribute__(self, key):
        if key != "attribute_map" and key in type(self).attribute_map:
            key = type(self).attribute_map[key]
        return super().__getattribute__(key)

    def __init__(
        self,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        return_dict: bool = True,
        torchscript: bool = False,
        dtype: str | torch.dtype | None = None,
        pruned_heads: dict[int, list[int]] | None = None,
        tie_word_embeddings: bool = True,
        chunk_size_feed_forward: int = 0,
        is_encoder_decoder: bool = False,
        is_decoder: bool = False,
        cross_attention_hidden_size: int | None = None,
        add_cross_attention: bool = False,
        tie_encoder_decoder: bool = False,
        architectures: list[str] | None = None,
        finetuning_task: str | None = None,
        id2label: dict[int, str] | None = None,
        label2id: dict[str, int] | None = None,
        num_labels: int | None = None,
        task_specific_params: dict[str, Any] | None = None,
        problem_type: str | None = None,
        tokenizer_class: str | None = None,
        prefix: str | None = None,
        bos_token_id: int | None = None,
        pad_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        sep_token_id: int | None = None,
        decoder_start_token_id: int | None = None,
        **kwargs,
    ):
        if label2id is not None and not isinstance(label2id, dict):
            raise ValueError("config field `label2id` must be a dictionary {label name: id}.")
        if id2label is not None and not isinstance(id2label, dict):
            raise ValueError("config field `id2label` must be a dictionary {id: label name}.")
        if problem_type is not None and problem_type not in VALID_PROBLEM_TYPES:
            raise ValueError(
                f"config field `problem_type` was not understood: received {problem_type!r} but only "
                f"{', '.join(repr(p) for p in VALID_PROBLEM_TYPES)} are valid."
            )
        torch_dtype = kwargs.pop("torch_dtype", None)
        if dtype is None:
            dtype = torch_dtype

        self.return_dict = return_dict
        self.output_hidden_states = output_hidden_states
        self.torchscript = torchscript
        self.dtype = dtype
        self.output_attentions = output_attentions
        self.pruned_heads = {int(k): v for k, v in (pruned_heads or {}).items()}
        self.tie_word_embeddings = tie_word_embeddings
        self.chunk_size_feed_forward = chunk_size_feed_forward
        self.is_encoder_decoder = is_encoder_decoder
        self.is_decoder = is_decoder
        self.cross_attention_hidden_size = cross_attention_hidden_size
        self.add_cross_attention = add_cross_attention
        self.tie_encoder_decoder = tie_encoder_decoder
        self.architectures = architectures
        self.finetuning_task = finetuning_task
        self.id2label = id2label
        self.label2id = label2id
        self.task_specific_params = task_specific_params
        self.problem_type = problem_type
        if self.id2label is None:
            self._create_id_label_maps(num_labels if num_labels is not None else 2)
        else:
            # JSON keys are always strings.
            self.id2label = {int(key): value for key, value in self.id2label.items()}
            if num_labels is not None and num_labels != len(self.id2label):
                self._create_id_label_maps(num_labels)

        self.tokenizer_class = tokenizer_class
        self.prefix = prefix
        self.bos_token_id = bos_token_id
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.sep_token_id = sep_token_id
        self.decoder_start_token_id = decoder_start_token_id

        for name, default in GLOBAL_GENERATION_DEFAULTS.items():
            setattr(self, name, kwargs.pop(name, default))

        self._name_or_path = str(kwargs.pop("name_or_path", kwargs.pop("_name_or_path", "")))
        self._commit_hash = kwargs.pop("_commit_hash", None)
        self._attn_implementation_internal = kwargs.pop("attn_implementation", None)
        self.transformers_version = kwargs.pop("transformers_version", None)
        self.tf_legacy_loss = kwargs.pop("tf_legacy_loss", False)
        self.use_bfloat16 = kwargs.pop("use_bfloat16", False)

        # Unknown fields are kept as attributes, as transformers does, so nothing in a config is lost.
        for key, value in kwargs.items():
            setattr(self, key, value)

    # ------------------------------------------------------------------ label maps
    def _create_id_label_maps(self, num_labels: int) -> None:
        self.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        self.label2id = {label: i for i, label in self.id2label.items()}

    @property
    def num_labels(self) -> int:
        """Number of labels; derived from `id2label`, never stored on its own."""
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, num_labels: int) -> None:
        if self.id2label is None or len(self.id2label) != num_labels:
            self._create_id_label_maps(num_labels)

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict and not self.torchscript

    @property
    def name_or_path(self) -> str:
        return getattr(self, "_name_or_path", "")

    @name_or_path.setter
    def name_or_path(self, value) -> None:
        self._name_or_path = str(value)

    @property
    def dtype(self) -> torch.dtype | None:
        """The weights' `torch.dtype` (or None). A name given while torch is not imported yet (a
        config.json read by the job driver) is kept as its canonical name until first read here, so
        loading a config never imports torch; `to_dict` writes the same name either way."""
        value = self.__dict__.get("dtype")
        if isinstance(value, str):
            value = _dtype_from_name(value)
            self.__dict__["dtype"] = value
        return value

    @dtype.setter
    def dtype(self, value) -> None:
        if isinstance(value, str):
            value = _dtype_from_name(value) if "torch" in sys.modules else _canonical_dtype_name(value)
        self.__dict__["dtype"] = value

    @property
    def torch_dtype(self):
        """Old name of `dtype`, still used by many configs and callers."""
        return self.dtype

    @torch_dtype.setter
    def torch_dtype(self, value) -> None:
        self.dtype = value

    # ------------------------------------------------------------------ loading
    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read the raw JSON dict of a config (dir, json file or Hub id); returns (dict, unused kwargs)."""
        hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        subfolder = kwargs.pop("subfolder", "")
        path = str(pretrained_model_name_or_path)
        if os.path.isfile(path):
            config_file = path
        else:
            filename = kwargs.pop("_configuration_file", CONFIG_NAME)
            config_file = resolve_file(path, filename, subfolder=subfolder, required=False, **hub_kwargs)
            if config_file is None:
                # A PEFT LoRA adapter has no config.json: its config is the base model's (adapters.py).
                base = adapter_base(path, subfolder=subfolder, base_model=kwargs.get("base_model"), **hub_kwargs)
                if base is not None:
                    return cls.get_config_dict(base[0], **base[1], **kwargs)
                config_file = resolve_file(path, filename, subfolder=subfolder, required=True, **hub_kwargs)
        config_dict = _read_json(config_file)
        return config_dict, kwargs

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, return_unused_kwargs: bool = False, **kwargs):
        """Load from a directory holding config.json, a JSON file, or a Hub id (through the HF cache).

        Extra keyword arguments override loaded values when the config has that attribute; the rest
        are returned when `return_unused_kwargs=True`.
        """
        config_dict, kwargs = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        return cls.from_dict(config_dict, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def from_json_file(cls, json_file):
        return cls(**_read_json(json_file))

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], *, return_unused_kwargs: bool = False, **kwargs):
        config_dict = dict(config_dict)
        if "torch_dtype" in kwargs:
            kwargs.setdefault("dtype", kwargs.pop("torch_dtype"))
        if "attn_implementation" in kwargs:
            config_dict["attn_implementation"] = kwargs.pop("attn_implementation")
        if "num_labels" in kwargs and kwargs.get("id2label") is not None:
            if len(kwargs["id2label"]) != kwargs["num_labels"]:
                raise ValueError(
                    f"num_labels={kwargs['num_labels']} disagrees with id2label={kwargs['id2label']}; "
                    "pass only one of them."
                )
        config = cls(**config_dict)
        unused = {}
        for key, value in kwargs.items():
            if hasattr(config, key):
                current = getattr(config, key)
                if isinstance(current, PretrainedConfig) and isinstance(value, dict):
                    value = current.__class__(**{**current.to_dict(), **value})
                if key == "id2label":
                    value = {int(k): v for k, v in value.items()}
                setattr(config, key, value)
            else:
                unused[key] = value
        if "id2label" in kwargs and "label2id" not in kwargs:
            config.label2id = {label: i for i, label in config.id2label.items()}
        return (config, unused) if return_unused_kwargs else config

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory) -> None:
        """Write config.json (the diff dict, as transformers writes it) into `save_directory`."""
        if os.path.isfile(save_directory):
            raise AssertionError(f"save_directory ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        self.to_json_file(os.path.join(save_directory, CONFIG_NAME), use_diff=True)

    def to_dict(self) -> dict[str, Any]:
        output = copy.deepcopy(self.__dict__)
        output["model_type"] = type(self).model_type
        output.pop("transformers_version", None)
        for key, value in output.items():
            if isinstance(value, PretrainedConfig):
                output[key] = value.to_dict()
        _remove_keys_not_serialized(output)
        _dtype_to_str(output)
        return output

    def to_diff_dict(self) -> dict[str, Any]:
        """Only the values that differ from `PretrainedConfig()` or from this class's own defaults."""
        config_dict = self.to_dict()
        default_dict = PretrainedConfig().to_dict()
        class_dict = {} if self.has_no_defaults_at_init else self.__class__().to_dict()
        diff: dict[str, Any] = {}
        for key, value in config_dict.items():
            attr = self.__dict__.get(key)  # not getattr: reading `dtype` would import torch
            if isinstance(attr, PretrainedConfig) or key in self.sub_configs:
                sub = _recursive_diff(value, default_dict, attr)
                if isinstance(value, dict) and "model_type" in value:
                    sub["model_type"] = value["model_type"]
                diff[key] = sub
            elif (
                key not in default_dict
                or value != default_dict[key]
                or (key in class_dict and value != class_dict[key])
            ):
                diff[key] = value
        diff.pop("_name_or_path", None)
        _dtype_to_str(diff)
        return diff

    def to_json_string(self, use_diff: bool = True) -> str:
        config_dict = self.to_diff_dict() if use_diff else self.to_dict()
        return json.dumps(config_dict, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path, use_diff: bool = True) -> None:
        with open(json_file_path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string(use_diff=use_diff))

    # ------------------------------------------------------------------ updating
    def update(self, config_dict: dict[str, Any]) -> None:
        for key, value in config_dict.items():
            setattr(self, key, value)

    def update_from_string(self, update_str: str) -> None:
        """Apply "a=1,b=true,c=name" to existing attributes, parsing each by its current type."""
        for item in update_str.split(","):
            if "=" not in item:
                raise ValueError(f"expected key=value in {update_str!r}, got {item!r}")
            key, raw = item.split("=", 1)
            if not hasattr(self, key):
                raise ValueError(f"key {key} isn't in the original config dict")
            old = getattr(self, key)
            if isinstance(old, bool):
                if raw.lower() in ("true", "1", "y", "yes"):
                    value: Any = True
                elif raw.lower() in ("false", "0", "n", "no"):
                    value = False
                else:
                    raise ValueError(f"can't derive true or false from {raw} (key {key})")
            elif isinstance(old, int):
                value = int(raw)
            elif isinstance(old, float):
                value = float(raw)
            elif isinstance(old, str) or old is None:
                value = raw
            else:
                raise TypeError(f"You can only update int, float, bool or string values in the config, got {raw} for key {key}")
            setattr(self, key, value)

    def __eq__(self, other) -> bool:
        return isinstance(other, PretrainedConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{self.__class__.__name__} {self.to_json_string(use_diff=False)}"

    def __deepcopy__(self, memo):
        new = self.__class__.__new__(self.__class__)
        for key, value in self.__dict__.items():
            object.__setattr__(new, key, copy.deepcopy(value, memo))
        return new


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision")


def _read_json(path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise OSError(f"{path} is not valid JSON ({err}); re-save the config or fix the file.") from err
    if not isinstance(data, dict):
        raise OSError(f"{path} must hold a JSON object, found {type(data).__name__}.")
    return data


def _dtype_from_name(name: str) -> torch.dtype:
    import torch

    dtype = getattr(torch, name.replace("torch.", ""), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}; use e.g. 'float32', 'bfloat16' or 'float16'.")
    return dtype


# torch's alias names and the dtype each one is (`str(torch.half)` is "torch.float16").
_DTYPE_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "int": "int32", "long": "int64",
                  "short": "int16", "cfloat": "complex64", "cdouble": "complex128", "chalf": "complex32"}


def _canonical_dtype_name(name: str) -> str:
    """The name `str(torch_dtype)` would give, without importing torch (checked when first read)."""
    name = name.replace("torch.", "")
    return _DTYPE_ALIASES.get(name, name)


def _dtype_to_str(d: dict[str, Any]) -> None:
    value = d.get("dtype")
    torch = sys.modules.get("torch")  # a torch.dtype value exists only once torch is imported
    if torch is not None and isinstance(value, torch.dtype):
        d["dtype"] = str(value).split(".")[1]
    for sub in d.values():
        if isinstance(sub, dict):
            _dtype_to_str(sub)


def _remove_keys_not_serialized(d: dict[str, Any]) -> None:
    for key in _NOT_SERIALIZED:
        d.pop(key, None)
    for sub in d.values():
        if isinstance(sub, dict):
            _remove_keys_not_serialized(sub)


def _recursive_diff(dict_a: dict[str, Any], dict_b: dict[str, Any], config_obj) -> dict[str, Any]:
    default = config_obj.__class__().to_dict() if config_obj is not None else {}
    diff = {}
    for key, value in dict_a.items():
        obj_value = getattr(config_obj, str(key), None) if config_obj is not None else None
        if isinstance(obj_value, PretrainedConfig) and isinstance(dict_b.get(key), dict):
            diff[key] = _recursive_diff(value, dict_b[key], obj_value)
        elif key not in dict_b or value != default.get(key, dict_b.get(key)):
            diff[key] = value
    return diff
