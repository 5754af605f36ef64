"""Which weights make up each model class's task head, and whether a checkpoint has them.

A checkpoint without the head of the class a task loads (a bare encoder such as
all-MiniLM-L6-v2 loaded for classification or masked-LM scoring) still loads: the head is newly
(randomly) initialised and every prediction is noise. Fine-tuning wants exactly that; inference
must refuse. The table is declarative and torch-free so that the job driver can answer from the
checkpoint's tensor names alone (:mod:`.weight_names`) before any actor loads the weights; a test
instantiates every class and checks the table against its real parameters, so it cannot drift.

``HEAD_WEIGHTS`` lists, per class, the head parameters outside the base model that only the
checkpoint can supply; ``TIED_HEAD_WEIGHTS`` those that are tied to the input embeddings when the
config says ``tie_word_embeddings`` (then they are not missing; untied, they must be present).
Parameters the loader ignores when missing (BART's ``final_logits_bias``) are in neither.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from .auto import MODEL_NAMES

_CLASSIFIER = ("classifier.weight", "classifier.bias")
_QA = ("qa_outputs.weight", "qa_outputs.bias")
_CLASSIFIER_MLP = ("classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
                   "classifier.out_proj.bias")
_BERT_LM = ("cls.predictions.bias", "cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
            "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias")
_BERT_LM_TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
_ROBERTA_LM = ("lm_head.bias", "lm_head.dense.weight", "lm_head.dense.bias", "lm_head.layer_norm.weight",
               "lm_head.layer_norm.bias")
_ROBERTA_LM_TIED = ("lm_head.decoder.weight", "lm_head.decoder.bias")
_DISTILBERT_CLASSIFIER = ("pre_classifier.weight", "pre_classifier.bias", *_CLASSIFIER)
_DEBERTA_CLASSIFIER = ("pooler.dense.weight", "pooler.dense.bias", *_CLASSIFIER)
_MODERNBERT_HEAD = ("head.dense.weight", "head.norm.weight")

_LLM_FAMILIES = ("Llama", "Mistral", "Qwen2", "Qwen3", "Gemma2", "Gemma3", "Phi3", "Mixtral", "Qwen3Moe")

HEAD_WEIGHTS: dict[str, tuple[str, ...]] = {
    "BertForSequenceClassification": _CLASSIFIER,
    "BertForTokenClassification": _CLASSIFIER,
    "BertForQuestionAnswering": _QA,
    "BertForMultipleChoice": _CLASSIFIER,
    "BertForMaskedLM": _BERT_LM,
    "BertLMHeadModel": _BERT_LM,
    **{f"{family}{head}": weights
       for family in ("Roberta", "Camembert", "XLMRoberta")
       for head, weights in (("ForSequenceClassification", _CLASSIFIER_MLP), ("ForTokenClassification", _CLASSIFIER),
                             ("ForQuestionAnswering", _QA), ("ForMultipleChoice", _CLASSIFIER),
                             ("ForMaskedLM", _ROBERTA_LM), ("ForCausalLM", _ROBERTA_LM))},
    "DistilBertForSequenceClassification": _DISTILBERT_CLASSIFIER,
    "DistilBertForTokenClassification": _CLASSIFIER,
    "DistilBertForQuestionAnswering": _QA,
    "DistilBertForMultipleChoice": _DISTILBERT_CLASSIFIER,
    "DistilBertForMaskedLM": ("vocab_transform.weight", "vocab_transform.bias", "vocab_layer_norm.weight",
                              "vocab_layer_norm.bias", "vocab_projector.bias"),
    "BartForConditionalGeneration": (),
    "BartForSequenceClassification": ("classification_head.dense.weight", "classification_head.dense.bias",
                                      "classification_head.out_proj.weight", "classification_head.out_proj.bias"),
    "MBartForConditionalGeneration": (),
    "MarianMTModel": (),
    "PegasusForConditionalGeneration": (),
    "M2M100ForConditionalGeneration": (),
    "T5ForConditionalGeneration": (),
    "MT5ForConditionalGeneration": (),
    "MegaForSequenceClassification": _CLASSIFIER_MLP,
    "MegaForTokenClassification": _CLASSIFIER,
    "MegaForQuestionAnswering": _QA,
    "MegaForMultipleChoice": _CLASSIFIER,
    "MegaForMaskedLM": ("dense.weight", "dense.bias", "mlm_head.bias"),
    "MegaForCausalLM": ("dense.weight", "dense.bias", "lm_head.bias"),
    "DebertaV2ForSequenceClassification": _DEBERTA_CLASSIFIER,
    "DebertaV2ForTokenClassification": _CLASSIFIER,
    "DebertaV2ForQuestionAnswering": _QA,
    "DebertaV2ForMultipleChoice": _DEBERTA_CLASSIFIER,
    "DebertaV2ForMaskedLM": _BERT_LM,
    "MPNetForSequenceClassification": _CLASSIFIER_MLP,
    "MPNetForTokenClassification": _CLASSIFIER,
    "MPNetForQuestionAnswering": _QA,
    "MPNetForMultipleChoice": _CLASSIFIER,
    "MPNetForMaskedLM": _ROBERTA_LM,
    **{f"ModernBertFor{head}": (*_MODERNBERT_HEAD, *_CLASSIFIER)
       for head in ("SequenceClassification", "TokenClassification", "QuestionAnswering", "MultipleChoice")},
    "ModernBertForMaskedLM": (*_MODERNBERT_HEAD, "decoder.bias"),
    # Decoder-only LLM families: a bias-free ``score`` for sequence classification (last non-pad
    # token), ``score`` with bias for tokens, ``qa_outputs`` for spans; the LM head may be tied.
    **{f"{family}ForCausalLM": () for family in _LLM_FAMILIES},
    **{f"{family}ForSequenceClassification": ("score.weight",) for family in _LLM_FAMILIES if family != "Gemma3"},
    "Gemma3TextForSequenceClassification": ("score.weight",),
    **{f"{family}ForTokenClassification": ("score.weight", "score.bias")
       for family in _LLM_FAMILIES if family != "Gemma3"},
    **{f"{family}ForQuestionAnswering": _QA for family in _LLM_FAMILIES if family not in ("Gemma2", "Gemma3", "Phi3")},
}

TIED_HEAD_WEIGHTS: dict[str, tuple[str, ...]] = {
    "BertForMaskedLM": _BERT_LM_TIED,
    "BertLMHeadModel": _BERT_LM_TIED,
    **{f"{family}{head}": _ROBERTA_LM_TIED
       for family in ("Roberta", "Camembert", "XLMRoberta") for head in ("ForMaskedLM", "ForCausalLM")},
    "DistilBertForMaskedLM": ("vocab_projector.weight",),
    **{name: ("lm_head.weight",)
       for name in ("BartForConditionalGeneration", "MBartForConditionalGeneration", "MarianMTModel",
                    "PegasusForConditionalGeneration", "M2M100ForConditionalGeneration", "T5ForConditionalGeneration",
                    "MT5ForConditionalGeneration", "MegaForCausalLM")},
    "MegaForMaskedLM": ("mlm_head.weight",),
    "DebertaV2ForMaskedLM": _BERT_LM_TIED,
    "MPNetForMaskedLM": _ROBERTA_LM_TIED,
    "ModernBertForMaskedLM": ("decoder.weight",),
    **{f"{family}ForCausalLM": ("lm_head.weight",) for family in _LLM_FAMILIES},
}


def head_weight_names(class_name: str, config: Any) -> Optional[tuple[str, ...]]:
    """The head weights ``class_name`` needs from a checkpoint with ``config`` (tied ones only when
    the config unties them); ``()`` for a class without a head (``AutoModel``), None for a class
    this table does not know (a registered user class: not checked here)."""
    if class_name == "EncoderDecoderModel":
        decoder = getattr(config, "decoder", None)
        causal = MODEL_NAMES.get(getattr(decoder, "model_type", ""), {}).get("causal_lm")
        inner = head_weight_names(causal, decoder) if causal else None
        return None if inner is None else tuple(f"decoder.{name}" for name in inner)
    if class_name not in HEAD_WEIGHTS:
        base_classes = {names.get("base") for names in MODEL_NAMES.values()}
        return () if class_name in base_classes else None
    names = HEAD_WEIGHTS[class_name]
    if not getattr(config, "tie_word_embeddings", True):
        names = names + TIED_HEAD_WEIGHTS.get(class_name, ())
    return names


def _legacy_renamed(name: str) -> str:
    """``LayerNorm.gamma/beta`` as the loader renames them."""
    if name.endswith("LayerNorm.gamma"):
        return name[: -len("gamma")] + "weight"
    if name.endswith("LayerNorm.beta"):
        return name[: -len("beta")] + "bias"
    return name


def absent_head(class_name: str, config: Any, weight_names: Iterable[str]) -> list[str]:
    """The head weights of ``class_name`` when the checkpoint (its tensor names ``weight_names``)
    has none of them, i.e. loading would initialise the whole head at random; else ``[]``.

    Only a wholly absent head is reported here: which optional head parameters exist can depend on
    the config (MEGA's extra dense layer, ModernBERT's biases), so a partly present head is left to
    the loader's exact report (``missing_keys``), which the model actors check as well."""
    names = head_weight_names(class_name, config)
    if not names:
        return []
    present = {_legacy_renamed(n) for n in weight_names}
    if any(name in present for name in names):
        return []
    return list(names)


__all__ = ["HEAD_WEIGHTS", "TIED_HEAD_WEIGHTS", "absent_head", "head_weight_names"]
