"""Embeddings small enough to store by the billion: Matryoshka truncation and quantisation, with
sentence-transformers' rules (``quantize_embeddings``), and the checkpoint's own prompts.

* ``truncate_dim``: keep the first ``d`` dimensions (Matryoshka models are trained for it), then
  L2-normalise again when the job normalises.
* precisions: ``float32``; ``float16``; ``int8`` / ``uint8`` (per dimension, ``ranges`` = [min,
  max] rows from a calibration sample mapped onto 256 steps, as sentence-transformers does);
  ``binary`` / ``ubinary`` (the sign bits packed 8 per byte, ``binary`` shifted by -128 into int8).
* prompts: ``config_sentence_transformers.json``'s ``prompts`` / ``default_prompt_name`` (E5's
  ``query: ``, BGE's instruction); the prompt string is prepended to every text, as
  sentence-transformers' ``encode(prompt_name=...)`` does.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import pyarrow as pa

PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
CALIBRATED = ("int8", "uint8")


def output_type(precision: str, dim: int) -> pa.DataType:
    """The fixed-size list type an embedding of ``dim`` floats is stored as."""
    if precision in ("binary", "ubinary"):
        return pa.list_(pa.int8() if precision == "binary" else pa.uint8(), (dim + 7) // 8)
    value = {"float32": pa.float32(), "float16": pa.float16(), "int8": pa.int8(), "uint8": pa.uint8()}[precision]
    return pa.list_(value, dim)


def quantize(embeddings: np.ndarray, precision: str, ranges: Optional[np.ndarray] = None) -> np.ndarray:
    """``(rows, dim)`` float32 → the stored values, as ``sentence_transformers.quantize_embeddings``."""
    if precision == "float32":
        return embeddings.astype(np.float32, copy=False)
    if precision == "float16":
        return embeddings.astype(np.float16)
    if precision in CALIBRATED:
        if ranges is None:
            raise ValueError(f"embedding precision {precision} needs calibration ranges")
        starts = ranges[0, :]
        steps = (ranges[1, :] - ranges[0, :]) / 255
        steps = np.where(steps == 0, 1, steps)
        q_vals = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        if precision == "uint8":
            return q_vals.astype(np.uint8)
        return (q_vals - 128).astype(np.int8)
    if precision == "binary":
        return (np.packbits(embeddings > 0, axis=-1).reshape(embeddings.shape[0], -1) - 128).astype(np.int8)
    if precision == "ubinary":
        return np.packbits(embeddings > 0, axis=-1).reshape(embeddings.shape[0], -1)
    raise ValueError(f"unknown embedding precision {precision!r}; use one of {', '.join(PRECISIONS)}")


def calibration_ranges(embeddings: np.ndarray) -> np.ndarray:
    """Per-dimension ``[min, max]`` of a calibration sample (a ``(2, dim)`` array)."""
    return np.stack([embeddings.min(axis=0), embeddings.max(axis=0)]).astype(np.float32)


def sentence_transformers_prompts(model_dir: str) -> tuple[dict, Optional[str]]:
    """``(prompts, default_prompt_name)`` of a sentence-transformers checkpoint (empty if none)."""
    path = os.path.join(model_dir or "", "config_sentence_transformers.json")
    if not model_dir or not os.path.isfile(path):
        return {}, None
    with open(path) as f:
        cfg = json.load(f)
    return dict(cfg.get("prompts") or {}), cfg.get("default_prompt_name")


def resolve_prompt(model_dir: str, prompt: Optional[str], prompt_name: Optional[str]) -> str:
    """The prefix for every text: ``prompt`` as given, else the named or default prompt."""
    if prompt is not None:
        return prompt
    prompts, default = sentence_transformers_prompts(model_dir)
    name = prompt_name or default
    if name is None:
        return ""
    if name not in prompts:
        known = ", ".join(sorted(prompts)) or "none"
        raise ValueError(f"prompt name {name!r} is not among the checkpoint's prompts ({known})")
    return prompts[name]


LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                       "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                       "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
"""The boolean keys sentence-transformers before 5.x wrote into ``1_Pooling/config.json``."""


def pooling_from_config(pcfg: dict, where: str = "1_Pooling/config.json") -> str:
    """The pooling mode of a sentence-transformers Pooling config: ``pooling_mode`` (5.x) or the
    legacy ``pooling_mode_*`` booleans. Several modes at once (concatenated vectors) are refused
    rather than pooled one way: the vectors would not be the checkpoint's. A mode the embed task
    does not have is returned as is, and refused by name when the job starts."""
    mode = pcfg.get("pooling_mode")
    modes = ([mode] if isinstance(mode, str) else list(mode)) if mode else \
        [name for key, name in LEGACY_POOLING_KEYS.items() if pcfg.get(key)]
    if len(modes) > 1:
        raise ValueError(f"{where}: pooling modes {', '.join(modes)} together (concatenated) are not supported; "
                         "set task.pooling to one of them only if that is what you want")
    return modes[0] if modes else "mean"


def default_pooling(model_config) -> str:
    """The pooling sentence-transformers gives a checkpoint without a Pooling module of its own:
    ``lasttoken`` for one made as a causal LM (``architectures[0]`` ``*ForCausalLM``, unless
    ``is_causal`` is false), else ``mean``."""
    architectures = getattr(model_config, "architectures", None) or []
    causal = bool(architectures) and str(architectures[0]).endswith("ForCausalLM") and \
        getattr(model_config, "is_causal", True) is not False
    return "lasttoken" if causal else "mean"


def sentence_transformers_defaults(model_dir: str) -> dict:
    """Pooling mode, normalisation and max length from a sentence-transformers checkpoint, if any
    (``include_prompt: False`` when its Pooling leaves the prompt's tokens out)."""
    out: dict = {}
    if not model_dir or not os.path.isdir(model_dir):
        return out
    modules_path = os.path.join(model_dir, "modules.json")
    if os.path.isfile(modules_path):
        with open(modules_path) as f:
            modules = json.load(f)
        out["normalize"] = any(m.get("type", "").endswith("Normalize") for m in modules)
        for m in modules:
            if m.get("type", "").endswith("Pooling"):
                cfg_path = os.path.join(model_dir, m.get("path", ""), "config.json")
                if os.path.isfile(cfg_path):
                    with open(cfg_path) as f:
                        pcfg = json.load(f)
                    out["pooling"] = pooling_from_config(pcfg, cfg_path)
                    if pcfg.get("include_prompt") is False:
                        out["include_prompt"] = False
    st_path = os.path.join(model_dir, "sentence_bert_config.json")
    if os.path.isfile(st_path):
        with open(st_path) as f:
            st = json.load(f)
        if st.get("max_seq_length"):
            out["max_length"] = int(st["max_seq_length"])
    return out


__all__ = [
    "CALIBRATED",
    "PRECISIONS",
    "calibration_ranges",
    "default_pooling",
    "output_type",
    "quantize",
    "resolve_prompt",
    "sentence_transformers_defaults",
    "sentence_transformers_prompts",
]
