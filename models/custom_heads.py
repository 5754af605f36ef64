"""A classifier head declared in the job config, on one of our backbones, without remote code.

The checkpoints this serves (see :mod:`.custom_head_config`) compute, in their own ``forward``::

    features = self.model(input_ids=..., attention_mask=...).last_hidden_state
    logits = self.fc(self.dropout(features))[:, 0, :]        # NVIDIA quality / domain classifiers

:class:`LinearHeadClassifier` computes the same with our backbone class (``AutoModel`` for the
backbone's ``model_type``) and a ``torch.nn.Linear``; dropout is the identity at inference. The
state dict is split by the declaration: ``<backbone_prefix>*`` goes into the backbone,
``<weights>.weight`` / ``<weights>.bias`` into the Linear. Loading is strict: a backbone weight
the checkpoint lacks, a tensor that belongs to neither part (a second layer the declaration does
not describe) or a Linear whose shape does not match the backbone and the labels is an error
naming the weights, never a randomly initialised part.

The backbone sees ``input_ids`` and ``attention_mask`` only, as these checkpoints' ``forward``
passes them (no ``token_type_ids``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .custom_head_config import CustomHeadError, HeadSpec, head_model_config
from .outputs import SequenceClassifierOutput


class LinearHeadClassifier(nn.Module):
    """Backbone + pooling + Linear; ``forward`` returns ``SequenceClassifierOutput(logits=...)``."""

    def __init__(self, backbone: nn.Module, classifier: nn.Linear, pooling: str, config: Any):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.pooling = pooling
        self.config = config

    @property
    def dtype(self) -> torch.dtype:
        return self.classifier.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.classifier.weight.device

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def pool(self, hidden: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0, :]
        if attention_mask is None:
            return hidden.mean(dim=1)
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                **ignored: Any) -> SequenceClassifierOutput:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return SequenceClassifierOutput(logits=self.classifier(self.pool(hidden, attention_mask)))


def split_state_dict(state_dict: dict[str, torch.Tensor], spec: HeadSpec, path: str
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(backbone weights without the prefix, {"weight", "bias"} of the Linear)``; any other
    tensor is an error (the declaration would leave part of the checkpoint unused)."""
    head_prefix = spec.weights.rstrip(".") + "."
    backbone, head, other = {}, {}, []
    for key, tensor in state_dict.items():
        if key.startswith(head_prefix):
            head[key[len(head_prefix):]] = tensor
        elif key.startswith(spec.backbone_prefix):
            backbone[key[len(spec.backbone_prefix):]] = tensor
        else:
            other.append(key)
    if "weight" not in head:
        raise CustomHeadError(
            f"{path}: no tensor {head_prefix}weight for model.head.weights {spec.weights!r}; the checkpoint's "
            f"top-level weight names are {', '.join(sorted({k.split('.')[0] for k in state_dict}))}")
    extra = sorted(set(head) - {"weight", "bias"})
    if other or extra:
        shown = other + [head_prefix + k for k in extra]
        raise CustomHeadError(
            f"{path}: weights outside the declared backbone ({spec.backbone_prefix!r}) and Linear head "
            f"({head_prefix!r}): {', '.join(shown[:8])}{' ...' if len(shown) > 8 else ''}; the head is more than "
            "one Linear layer, which model.head.type linear cannot run")
    if not backbone:
        raise CustomHeadError(f"{path}: no weights start with model.head.backbone_prefix {spec.backbone_prefix!r}")
    return backbone, head


def load_linear_head_classifier(path: str, head: dict, dtype: Optional[torch.dtype] = None,
                                **hub_kwargs: Any) -> LinearHeadClassifier:
    """Build and load the classifier declared by ``head`` (the ``model.head`` mapping) from ``path``."""
    from . import checkpoint_io
    from .auto import AutoModel

    spec = HeadSpec.from_dict(head)
    config = head_model_config(path, spec, **hub_kwargs)
    state_dict = checkpoint_io.load_state_dict_files(checkpoint_io.resolve_weight_files(path, **hub_kwargs))
    backbone_weights, head_weights = split_state_dict(state_dict, spec, path)
    backbone, info = AutoModel.from_pretrained(path, config=config, state_dict=backbone_weights, dtype=dtype,
                                               output_loading_info=True)
    if info["missing_keys"] or info["unexpected_keys"]:
        missing, unexpected = info["missing_keys"], info["unexpected_keys"]
        raise CustomHeadError(
            f"{path}: the weights under {spec.backbone_prefix!r} do not fit {type(backbone).__name__} "
            f"(model_type {config.model_type}): missing {', '.join(missing[:8]) or 'none'}; "
            f"not in the backbone {', '.join(unexpected[:8]) or 'none'}. Check model.head.backbone_prefix and "
            "model.head.backbone_config")
    weight = head_weights["weight"]
    hidden = int(config.hidden_size)
    labels = config.num_labels if config.id2label and not all(
        v == f"LABEL_{k}" for k, v in config.id2label.items()) else int(weight.shape[0])
    if weight.ndim != 2 or tuple(weight.shape) != (labels, hidden):
        raise CustomHeadError(
            f"{path}: {spec.weights}.weight has shape {tuple(weight.shape)}, expected ({labels}, {hidden}) for "
            f"{labels} labels (config.json id2label) on a backbone of hidden size {hidden}")
    if config.num_labels != labels:
        config.num_labels = labels
    bias = head_weights.get("bias")
    linear = nn.Linear(hidden, labels, bias=bias is not None, dtype=backbone.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight.to(backbone.dtype))
        if bias is not None:
            linear.bias.copy_(bias.to(backbone.dtype))
    return LinearHeadClassifier(backbone, linear, spec.pooling, config).eval()
