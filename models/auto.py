"""Auto classes: pick the config and model class of a checkpoint from its `model_type`.

The registry is declarative (model_type -> module and class names) and imports a family's module
only when a checkpoint of that family is loaded, so importing `rayformers.models` stays cheap and a
family never needs to edit this file beyond its row. `register` adds user classes at run time.

Configs live in torch-free `configuration_<family>.py` modules (transformers' layout), and
`check_supported` answers "has this task a class for this checkpoint?" from the tables alone: the
job driver loads a checkpoint's config and validates the task without importing torch (seconds of
CPU before the first row is read).
"""

from __future__ import annotations

import importlib
from collections import OrderedDict

from .configuration_decoder import DECODER_CONFIGS, DECODER_MODEL_NAMES
from .configuration_utils import PretrainedConfig

# model_type -> module (inside rayformers.models) holding the family.
MODEL_TYPE_TO_MODULE: dict[str, str] = OrderedDict(
    [
        ("bert", "bert"),
        ("roberta", "bert"),
        ("camembert", "bert"),
        ("xlm-roberta", "bert"),
        ("distilbert", "distilbert"),
        ("bart", "bart"),
        ("mbart", "bart"),
        ("marian", "bart"),
        ("pegasus", "bart"),
        ("m2m_100", "m2m_100"),
        ("t5", "t5"),
        ("mt5", "t5"),
        ("mega", "mega"),
        ("deberta-v2", "deberta_v2"),
        ("mpnet", "mpnet"),
        ("modernbert", "modernbert"),
        ("encoder-decoder", "encoder_decoder"),
        # Decoder-only LLM families: one shared module (decoder.py) and their classes in decoder_llms.py.
        *((model_type, "decoder_llms") for model_type in DECODER_MODEL_NAMES),
    ]
)

# model_type -> module holding its config class: `configuration_<family module>`, imports no torch.
# The LLM families share a modelling module but keep one config module each.
MODEL_TYPE_TO_CONFIG_MODULE: dict[str, str] = OrderedDict(
    (model_type, DECODER_CONFIGS[model_type][0] if model_type in DECODER_CONFIGS else f"configuration_{module}")
    for model_type, module in MODEL_TYPE_TO_MODULE.items()
)

CONFIG_MAPPING_NAMES: dict[str, str] = {
    "bert": "BertConfig",
    "roberta": "RobertaConfig",
    "camembert": "CamembertConfig",
    "xlm-roberta": "XLMRobertaConfig",
    "distilbert": "DistilBertConfig",
    "bart": "BartConfig",
    "mbart": "MBartConfig",
    "marian": "MarianConfig",
    "pegasus": "PegasusConfig",
    "m2m_100": "M2M100Config",
    "t5": "T5Config",
    "mt5": "MT5Config",
    "mega": "MegaConfig",
    "deberta-v2": "DebertaV2Config",
    "mpnet": "MPNetConfig",
    "modernbert": "ModernBertConfig",
    "encoder-decoder": "EncoderDecoderConfig",
    **{model_type: class_name for model_type, (_, class_name) in DECODER_CONFIGS.items()},
}


def _bert_like(prefix: str) -> dict[str, str]:
    return {
        "base": f"{prefix}Model",
        "sequence_classification": f"{prefix}ForSequenceClassification",
        "token_classification": f"{prefix}ForTokenClassification",
        "question_answering": f"{prefix}ForQuestionAnswering",
        "multiple_choice": f"{prefix}ForMultipleChoice",
        "masked_lm": f"{prefix}ForMaskedLM",
        "causal_lm": f"{prefix}ForCausalLM",
    }


# model_type -> {task: class name}
MODEL_NAMES: dict[str, dict[str, str]] = {
    "bert": {**_bert_like("Bert"), "causal_lm": "BertLMHeadModel"},
    "roberta": _bert_like("Roberta"),
    "camembert": _bert_like("Camembert"),
    "xlm-roberta": _bert_like("XLMRoberta"),
    "distilbert": {k: v for k, v in _bert_like("DistilBert").items() if k != "causal_lm"},
    "bart": {"base": "BartModel", "seq2seq_lm": "BartForConditionalGeneration",
             "sequence_classification": "BartForSequenceClassification"},
    "mbart": {"base": "MBartModel", "seq2seq_lm": "MBartForConditionalGeneration"},
    "marian": {"base": "MarianModel", "seq2seq_lm": "MarianMTModel"},
    "pegasus": {"base": "PegasusModel", "seq2seq_lm": "PegasusForConditionalGeneration"},
    "m2m_100": {"base": "M2M100Model", "seq2seq_lm": "M2M100ForConditionalGeneration"},
    "t5": {"base": "T5Model", "seq2seq_lm": "T5ForConditionalGeneration"},
    "mt5": {"base": "MT5Model", "seq2seq_lm": "MT5ForConditionalGeneration"},
    "mega": _bert_like("Mega"),
    "deberta-v2": {k: v for k, v in _bert_like("DebertaV2").items() if k != "causal_lm"},
    "mpnet": {k: v for k, v in _bert_like("MPNet").items() if k != "causal_lm"},
    "modernbert": {k: v for k, v in _bert_like("ModernBert").items() if k != "causal_lm"},
    "encoder-decoder": {"seq2seq_lm": "EncoderDecoderModel"},
    **DECODER_MODEL_NAMES,
}

# Known model types we do not load, and what to use instead.
_UNSUPPORTED_HINTS = {
    "gemma3": "Multimodal Gemma 3 (vision tower) is not supported; its text decoder is: load a text-only "
              "checkpoint (model_type 'gemma3_text', e.g. google/gemma-3-1b-it).",
}

_REGISTERED_CONFIGS: dict[str, type[PretrainedConfig]] = {}
_REGISTERED_MODELS: dict[tuple[str, type[PretrainedConfig]], type] = {}


def supported_model_types() -> list[str]:
    return sorted(set(MODEL_TYPE_TO_MODULE) | set(_REGISTERED_CONFIGS))


def _import_class(model_type: str, class_name: str, modules: dict[str, str] = MODEL_TYPE_TO_MODULE):
    module = importlib.import_module(f".{modules[model_type]}", __package__)
    return getattr(module, class_name)


def config_class_for(model_type: str) -> type[PretrainedConfig]:
    if model_type in _REGISTERED_CONFIGS:
        return _REGISTERED_CONFIGS[model_type]
    if model_type not in CONFIG_MAPPING_NAMES:
        hint = _UNSUPPORTED_HINTS.get(model_type, "")
        raise ValueError(
            f"Unrecognized model type {model_type!r}. Supported model types: {', '.join(supported_model_types())}."
            + (f" {hint}" if hint else "")
        )
    return _import_class(model_type, CONFIG_MAPPING_NAMES[model_type], MODEL_TYPE_TO_CONFIG_MODULE)


class AutoConfig:
    """`AutoConfig.from_pretrained(path_or_hub_id)` returns the family's config class instance."""

    def __init__(self, *args, **kwargs):
        raise EnvironmentError("AutoConfig is designed to be instantiated with AutoConfig.from_pretrained(...).")

    @staticmethod
    def for_model(model_type: str, *args, **kwargs) -> PretrainedConfig:
        return config_class_for(model_type)(*args, **kwargs)

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path, **kwargs) -> PretrainedConfig:
        config_dict, unused = PretrainedConfig.get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type is None:
            # Very old checkpoints lack model_type: fall back to a type named in the path.
            name = str(pretrained_model_name_or_path)
            model_type = next((t for t in sorted(supported_model_types(), key=len, reverse=True) if t in name), None)
            if model_type is None:
                raise ValueError(
                    f"config.json of {name} has no 'model_type' and none of the supported types appears in its "
                    f"name. Add \"model_type\" to config.json; supported: {', '.join(supported_model_types())}."
                )
        return config_class_for(model_type).from_dict(config_dict, **unused)

    @staticmethod
    def register(model_type: str, config_class: type[PretrainedConfig], exist_ok: bool = False) -> None:
        if config_class.model_type and config_class.model_type != model_type:
            raise ValueError(f"{config_class.__name__}.model_type is {config_class.model_type!r}, not {model_type!r}.")
        if not exist_ok and (model_type in CONFIG_MAPPING_NAMES or model_type in _REGISTERED_CONFIGS):
            raise ValueError(f"model type {model_type!r} is already registered; pass exist_ok=True to replace it.")
        _REGISTERED_CONFIGS[model_type] = config_class


class _BaseAutoModel:
    """Shared machinery of the AutoModelFor* classes; `_task` selects the column of MODEL_NAMES."""

    _task: str = ""

    def __init__(self, *args, **kwargs):
        raise EnvironmentError(
            f"{type(self).__name__} is designed to be instantiated with {type(self).__name__}.from_pretrained(...) "
            f"or {type(self).__name__}.from_config(config)."
        )

    @classmethod
    def _registered_model(cls, config: PretrainedConfig):
        for (task, config_class), model_class in _REGISTERED_MODELS.items():
            if task == cls._task and type(config) is config_class:
                return model_class
        return None

    @classmethod
    def check_supported(cls, config: PretrainedConfig) -> None:
        """Raise the ValueError `from_pretrained` would raise when this task has no class for `config`.

        Answered from MODEL_NAMES and the registered models only, without importing the family's
        modelling module (and so torch): the job driver validates a job with it before any row flows.
        """
        if cls._registered_model(config) is not None:
            return
        if cls._task not in MODEL_NAMES.get(config.model_type, {}):
            supported = sorted(t for t, n in MODEL_NAMES.items() if cls._task in n)
            supported += sorted({c.__name__ for (t, c) in _REGISTERED_MODELS if t == cls._task})
            raise ValueError(
                f"Unrecognized configuration class {type(config).__name__} (model_type {config.model_type!r}) for "
                f"{cls.__name__}. Model type should be one of {', '.join(supported)}."
            )

    @classmethod
    def _model_class(cls, config: PretrainedConfig):
        registered = cls._registered_model(config)
        if registered is not None:
            return registered
        cls.check_supported(config)
        return _import_class(config.model_type, MODEL_NAMES[config.model_type][cls._task])

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs):
        return cls._model_class(config).from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        config = kwargs.pop("config", None)
        hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "force_download", "local_files_only", "token", "revision",
                                             "subfolder") if k in kwargs}
        if not isinstance(config, PretrainedConfig):
            load_kwargs = {k: v for k, v in kwargs.items() if k not in _MODEL_LOAD_ARGS}
            config, unused = AutoConfig.from_pretrained(
                config if config is not None else pretrained_model_name_or_path, return_unused_kwargs=True, **load_kwargs
            )
            kwargs = {**{k: v for k, v in kwargs.items() if k in _MODEL_LOAD_ARGS}, **unused, **hub_kwargs}
        return cls._model_class(config).from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

    @classmethod
    def register(cls, config_class: type[PretrainedConfig], model_class, exist_ok: bool = False) -> None:
        key = (cls._task, config_class)
        if key in _REGISTERED_MODELS and not exist_ok:
            raise ValueError(f"{config_class.__name__} is already registered for {cls.__name__}.")
        if getattr(model_class, "config_class", None) not in (None, config_class):
            raise ValueError(f"{model_class.__name__}.config_class is not {config_class.__name__}.")
        _REGISTERED_MODELS[key] = model_class


# from_pretrained arguments that belong to the model loader, not to the config.
_MODEL_LOAD_ARGS = {
    "state_dict", "dtype", "torch_dtype", "ignore_mismatched_sizes", "output_loading_info", "use_safetensors",
    "device",
}


def _auto_class(name: str, task: str, doc: str) -> type[_BaseAutoModel]:
    return type(name, (_BaseAutoModel,), {"_task": task, "__doc__": doc})


AutoModel = _auto_class("AutoModel", "base", "The bare encoder (or encoder-decoder) of a checkpoint.")
AutoModelForSequenceClassification = _auto_class(
    "AutoModelForSequenceClassification", "sequence_classification", "Text classification / regression heads.")
AutoModelForTokenClassification = _auto_class(
    "AutoModelForTokenClassification", "token_classification", "Per-token classification heads (NER).")
AutoModelForQuestionAnswering = _auto_class(
    "AutoModelForQuestionAnswering", "question_answering", "Extractive QA (start/end span) heads.")
AutoModelForMultipleChoice = _auto_class("AutoModelForMultipleChoice", "multiple_choice", "Multiple choice heads.")
AutoModelForMaskedLM = _auto_class("AutoModelForMaskedLM", "masked_lm", "Masked language modelling heads.")
AutoModelForCausalLM = _auto_class("AutoModelForCausalLM", "causal_lm", "Left-to-right LM heads (decoders).")
AutoModelForSeq2SeqLM = _auto_class("AutoModelForSeq2SeqLM", "seq2seq_lm", "Encoder-decoder generation models.")

TASK_TO_AUTO_CLASS = {
    cls._task: cls
    for cls in (AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification,
                AutoModelForQuestionAnswering, AutoModelForMultipleChoice, AutoModelForMaskedLM,
                AutoModelForCausalLM, AutoModelForSeq2SeqLM)
}
