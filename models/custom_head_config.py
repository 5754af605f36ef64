"""The config of a classifier checkpoint with a head of its own on a known backbone (torch-free).

Checkpoints saved with ``huggingface_hub.PyTorchModelHubMixin`` (NVIDIA's quality and domain
classifiers, many in-house curation models) are an ``nn.Module`` holding a backbone
(``self.model = AutoModel.from_pretrained(config["base_model"])``), a dropout and a Linear
(``self.fc``). Their ``config.json`` is the dict the module was built from (``base_model``,
``fc_dropout``, ``id2label``, sometimes a custom ``architectures`` such as ``QualityModel``), not
a transformers config: it has no ``model_type`` and no backbone sizes. Loading one would mean
running the checkpoint's Python class; instead, a ``head`` declaration says where the backbone
and the Linear live in the state dict, and the backbone's config comes from:

1. ``backbone_config`` when given (a directory or Hub id with the backbone's ``config.json``),
2. the checkpoint's own ``config.json`` when it is a transformers config (has ``model_type``),
3. the checkpoint config's ``base_model`` (what the module itself loads), a Hub id or directory.

The labels are the checkpoint config's ``id2label``. This module only reads JSON (the driver
validates a job with it before any worker imports torch); :mod:`.custom_heads` builds the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from .configuration_utils import PretrainedConfig
from .hub import resolve_file

HEAD_TYPES = ("linear",)
POOLINGS = ("cls", "mean")


class CustomHeadError(ValueError):
    """A ``head`` declaration that does not fit its checkpoint; the message says what to change."""


@dataclass(frozen=True)
class HeadSpec:
    """Where a custom head's weights are and how it reads the backbone's output."""

    type: str = "linear"
    weights: str = "fc"
    """State-dict prefix of the Linear layer: ``<weights>.weight`` and ``<weights>.bias``."""
    backbone_prefix: str = "model."
    """State-dict prefix of the backbone's weights (``model.`` for ``self.model``); stripped
    before they are loaded into our backbone class."""
    pooling: str = "cls"
    """``cls``: the first token's last hidden state (``last_hidden_state[:, 0, :]``, what the
    mixin classifiers' ``forward`` does); ``mean``: the mean over the attended tokens."""
    backbone_config: Optional[str] = None

    @classmethod
    def from_dict(cls, data: dict) -> "HeadSpec":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise CustomHeadError(f"model.head: unknown keys {', '.join(unknown)}; "
                                  f"known: {', '.join(cls.__dataclass_fields__)}")
        spec = cls(**{k: v for k, v in data.items() if v is not None or k == "backbone_config"})
        if spec.type not in HEAD_TYPES:
            raise CustomHeadError(f"model.head.type {spec.type!r} is not supported; use {', '.join(HEAD_TYPES)}")
        if spec.pooling not in POOLINGS:
            raise CustomHeadError(f"model.head.pooling {spec.pooling!r} is not supported; use {', '.join(POOLINGS)}")
        if not spec.weights:
            raise CustomHeadError("model.head.weights is empty: give the state-dict prefix of the Linear layer, e.g. fc")
        return spec


def checkpoint_config_dict(path: str, **hub_kwargs: Any) -> dict:
    """The checkpoint's ``config.json`` as it is (whatever dict the module was saved with)."""
    with open(resolve_file(path, "config.json", **hub_kwargs), encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise CustomHeadError(f"{path}: config.json is not a JSON object")
    return data


def backbone_source(path: str, raw: dict, spec: HeadSpec) -> str:
    """Where the backbone's transformers config is read from (see the module docstring)."""
    if spec.backbone_config:
        return spec.backbone_config
    if raw.get("model_type"):
        return path
    base = raw.get("base_model") or raw.get("base_model_name_or_path")
    if isinstance(base, str) and base:
        return base
    raise CustomHeadError(
        f"{path}: config.json has no model_type and no base_model, so the backbone's architecture is unknown; "
        "set model.head.backbone_config to a directory or Hub id holding the backbone's config.json "
        "(e.g. microsoft/deberta-v3-base)")


def _labels(raw: dict) -> Optional[dict[int, str]]:
    id2label = raw.get("id2label")
    if not id2label:
        return None
    try:
        return {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError, AttributeError) as e:
        raise CustomHeadError(f"config.json id2label must map class indices to names, got {id2label!r}") from e


def head_model_config(path: str, spec: HeadSpec, **hub_kwargs: Any) -> PretrainedConfig:
    """The backbone's config with the checkpoint's labels (``id2label``, ``label2id``,
    ``num_labels``, ``problem_type``) and ``architectures``: the config the classify task reads."""
    from .auto import AutoConfig

    raw = checkpoint_config_dict(path, **hub_kwargs)
    source = backbone_source(path, raw, spec)
    try:
        config = AutoConfig.from_pretrained(source, **hub_kwargs)
    except Exception as e:  # noqa: BLE001 - any problem is reported with the key that fixes it
        raise CustomHeadError(f"backbone config {source!r} of {path!r} cannot be loaded ({type(e).__name__}: {e}); "
                              "set model.head.backbone_config to a directory or Hub id with the backbone's "
                              "config.json") from e
    labels = _labels(raw)
    if labels is not None:
        config.id2label = labels
        config.label2id = {v: k for k, v in labels.items()}
    if raw.get("problem_type"):
        config.problem_type = raw["problem_type"]
    if raw.get("architectures"):
        config.architectures = list(raw["architectures"])
    return config
