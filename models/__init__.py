"""rayformers.models: our own PyTorch implementation of the Hugging Face model layer.

Configs, Auto classes, checkpoint I/O (config.json, safetensors, tokenizer.json) and the model
families, numerically equal to transformers and checkpoint-compatible with it. Names are
resolved lazily so `import rayformers.models` does not import every family.
"""

import importlib

_EXPORTS = {
    "PretrainedConfig": "configuration_utils",
    "PreTrainedModel": "modeling_utils",
    "AutoConfig": "auto",
    "AutoModel": "auto",
    "AutoModelForSequenceClassification": "auto",
    "AutoModelForTokenClassification": "auto",
    "AutoModelForQuestionAnswering": "auto",
    "AutoModelForMultipleChoice": "auto",
    "AutoModelForMaskedLM": "auto",
    "AutoModelForCausalLM": "auto",
    "AutoModelForSeq2SeqLM": "auto",
    "AutoTokenizer": "tokenization",
    "PreTrainedTokenizerFast": "tokenization",
    "GenerationConfig": "generation",
    "T5EncoderModel": "t5",
    "MT5EncoderModel": "t5",
    "EncoderDecoderConfig": "configuration_encoder_decoder",
    "EncoderDecoderModel": "encoder_decoder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    # Family classes (BertModel, BartForConditionalGeneration, ...) resolve through the registry;
    # config classes through their torch-free configuration module.
    from .auto import CONFIG_MAPPING_NAMES, MODEL_NAMES, MODEL_TYPE_TO_CONFIG_MODULE, MODEL_TYPE_TO_MODULE

    for model_type, module_name in MODEL_TYPE_TO_MODULE.items():
        if name == CONFIG_MAPPING_NAMES[model_type]:
            return getattr(importlib.import_module(f".{MODEL_TYPE_TO_CONFIG_MODULE[model_type]}", __name__), name)
        if name in MODEL_NAMES.get(model_type, {}).values():
            return getattr(importlib.import_module(f".{module_name}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
