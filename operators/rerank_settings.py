"""What a ``rerank`` job needs to know before any model loads (torch-free: the driver checks it).

Two kinds of rerankers score a (query, document) pair:

* cross-encoders (a sequence classifier over the pair, as sentence-transformers' ``CrossEncoder``):
  the score is the classifier's logits through CrossEncoder's activation function;
* yes/no LLM rerankers (Qwen3-Reranker style: a causal LM of a decoder-only family): the pair is
  written into a prompt, and the score is P("yes") of a softmax over the "yes" and "no" logits
  at the prompt's last token.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

logger = logging.getLogger(__name__)

QWEN3_RERANKER_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
DEFAULT_RERANK_PROMPT = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n"
    f"<Instruct>: {QWEN3_RERANKER_INSTRUCTION}\n<Query>: {{query}}\n<Document>: {{document}}"
    "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
"""The Qwen3-Reranker model card's prompt (its prefix, ``format_instruction`` with the default
instruction, and its suffix), tokenized without the tokenizer's own special tokens as the card does."""

ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "none",
    "torch.nn.modules.activation.Softmax": "softmax",
    "torch.nn.modules.activation.Tanh": "tanh",
}
"""CrossEncoder activation functions (the dotted paths sentence-transformers saves) we apply."""


def rerank_kind(model_config: Any) -> str:
    """``yes-no`` for a causal LM of a decoder-only LLM family (its config names no sequence
    classifier), else ``cross-encoder``."""
    from rayformers.models.configuration_decoder import DECODER_MODEL_NAMES

    architectures = [str(a) for a in (getattr(model_config, "architectures", None) or [])]
    if getattr(model_config, "model_type", "") in DECODER_MODEL_NAMES and \
            not any(a.endswith("ForSequenceClassification") for a in architectures):
        return "yes-no"
    return "cross-encoder"


def check_rerank_prompt(prompt: str) -> str:
    """A prompt with exactly the ``{query}`` and ``{document}`` fields (refused otherwise)."""
    import string

    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(prompt) if name is not None}
    except ValueError as e:
        raise ValueError(f"task.rerank_prompt is not a valid format string ({e}); write literal braces as {{{{ }}}}") \
            from None
    if fields != {"query", "document"}:
        raise ValueError(f"task.rerank_prompt must contain {{query}} and {{document}} and no other field, "
                         f"found {sorted(fields) or 'none'}")
    return prompt


def yes_no_token_ids(tokenizer: Any) -> tuple[int, int]:
    """The ids of "yes" and "no" in ``tokenizer``; refused unless each is one token."""
    ids = []
    for word in ("yes", "no"):
        encoded = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ValueError(f"the tokenizer encodes {word!r} as {len(encoded)} tokens {encoded}, not one: a yes/no "
                             "reranker scores the single-token answers \"yes\" and \"no\"; use its own tokenizer")
        ids.append(int(encoded[0]))
    return ids[0], ids[1]


def _activation_path(model_dir: str) -> Optional[str]:
    """The activation CrossEncoder would load: ``config_sentence_transformers.json``'s
    ``activation_fn``, else config.json's ``sentence_transformers.activation_fn`` or (before
    sentence-transformers 4) ``sbert_ce_default_activation_function``."""
    for name, keys in (("config_sentence_transformers.json", ("activation_fn",)),
                       ("config.json", ("sentence_transformers", "activation_fn")),
                       ("config.json", ("sbert_ce_default_activation_function",))):
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            value: Any = json.load(f)
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value:
            if not str(value).startswith("torch."):
                # CrossEncoder loads only torch's own classes without trust_remote_code; so do we.
                logger.warning("%s: activation %r is not one of torch's, using CrossEncoder's default instead",
                               path, value)
                continue
            return str(value)
    return None


def cross_encoder_activation(model_dir: str, num_labels: int) -> str:
    """``sigmoid``, ``softmax``, ``tanh`` or ``none``: what ``CrossEncoder.predict`` applies to the
    logits (the saved activation, else Sigmoid for one label and Identity for several)."""
    path = _activation_path(model_dir) if model_dir and os.path.isdir(model_dir) else None
    if path is None:
        return "sigmoid" if num_labels == 1 else "none"
    if path not in ACTIVATIONS:
        raise ValueError(f"the cross-encoder's activation {path!r} is not supported; supported: "
                         f"{', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[path]


__all__ = ["ACTIVATIONS", "DEFAULT_RERANK_PROMPT", "check_rerank_prompt", "cross_encoder_activation", "rerank_kind",
           "yes_no_token_ids"]
