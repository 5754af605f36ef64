"""The model actors' device and precision, settled on the driver before any row is read.

Why a probe: what ``model.dtype: auto`` (the default on GPU actors) means depends on the GPU the
actors get (bfloat16 on Ampere and later, float16 before), which the driver (often a CPU-only
head node) cannot see; and a GPU node whose torch has no CUDA (a CPU-only wheel) should stop the
job before the plan starts, not in every model actor. So one short Ray task with the model
actors' resources reports the facts, the dtype is resolved here, and the actors load exactly
that dtype: the report and manifest record what was used. CPU jobs in float32 (the CPU default)
need no probe. The driver never imports torch.
"""

from __future__ import annotations

from typing import Any

from rayformers.operators.loading import device_facts, resolve_dtype_name

from .config import resolved_dtype_setting
from .preflight_error import PreflightError


def needs_probe(cfg) -> bool:
    """GPU actors (device check and dtype), or ``auto`` on CPU actors (native bfloat16 or not)."""
    return bool(cfg.compute.model_num_gpus) or resolved_dtype_setting(cfg) == "auto"


def probe_model_device(cfg) -> dict:
    """:func:`rayformers.operators.loading.device_facts` on a worker with the model actors'
    resources (it waits, as the actors would, for a node that has them). ``max_calls=1``: the
    worker exits after it, so no model actor inherits a process where torch is already loaded."""
    import ray

    c = cfg.compute
    probe = ray.remote(max_calls=1)(device_facts).options(
        num_cpus=c.model_num_cpus, num_gpus=c.model_num_gpus or 0, resources=c.model_resources or None,
        name="rayformers-model-device-probe")
    try:
        return ray.get(probe.remote(c.model_num_gpus))
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None) or e
        raise PreflightError(f"model actors' device: {cause}") from e


def resolve_model_dtype(spec: Any) -> str:
    """The concrete ``model.dtype`` of ``spec``'s model actors (set on ``spec.model_dtype``)."""
    if getattr(spec, "model_dtype", None):
        return spec.model_dtype
    cfg = spec.config
    setting = resolved_dtype_setting(cfg)
    facts = probe_model_device(cfg) if needs_probe(cfg) else {}
    spec.model_dtype = resolve_dtype_name(setting, bool(cfg.compute.model_num_gpus), spec.model_type,
                                          cuda_bf16=bool(facts.get("cuda_bf16")), cpu_bf16=bool(facts.get("cpu_bf16")))
    spec.device_facts = facts
    return spec.model_dtype
