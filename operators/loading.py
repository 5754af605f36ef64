"""Loading tokenizers and models inside actors, through our own model layer (``rayformers.models``).

The task → Auto class mapping lives here so that the pipeline never needs to know model classes.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import torch

logger = logging.getLogger(__name__)

TASK_AUTO_CLASS = {
    "classify": "AutoModelForSequenceClassification",
    "token-classify": "AutoModelForTokenClassification",
    "generate": "AutoModelForSeq2SeqLM",
    "embed": "AutoModel",
}



def auto_class_name(task: str, model_config: Any = None) -> str:
    """The Auto class for ``task``; ``generate`` on a decoder-only checkpoint (config ``is_decoder``
    without ``is_encoder_decoder``: BERT-family causal heads, MEGA) continues prompts with
    ``AutoModelForCausalLM`` instead of ``AutoModelForSeq2SeqLM``."""
    name = TASK_AUTO_CLASS[task]
    if (task == "generate" and model_config is not None and getattr(model_config, "is_decoder", False)
            and not getattr(model_config, "is_encoder_decoder", False)):
        return "AutoModelForCausalLM"
    return name


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> Any:
    """Config dtype name → what ``from_pretrained(dtype=...)`` expects (``"auto"`` passes through)."""
    if name == "auto":
        return "auto"
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of float32, bfloat16, float16, auto") from None


def load_tokenizer(path: str, revision: Optional[str] = None, local_files_only: bool = False):
    """Our HF-compatible tokenizer wrapper (``tokenizer.json`` based)."""
    from rayformers.models import AutoTokenizer

    kwargs = {}
    if revision:
        kwargs["revision"] = revision
    if local_files_only:
        kwargs["local_files_only"] = True
    return AutoTokenizer.from_pretrained(path, **kwargs)


def load_model(
    task: str,
    path: str,
    dtype: str = "float32",
    revision: Optional[str] = None,
    local_files_only: bool = False,
    device: str = "cpu",
):
    """``AutoModelFor<Task>.from_pretrained`` in eval mode on ``device``."""
    import rayformers.models as models

    kwargs: dict = {}
    if revision:
        kwargs["revision"] = revision
    if local_files_only:
        kwargs["local_files_only"] = True
    model_config = models.AutoConfig.from_pretrained(path, **kwargs) if task == "generate" else None
    auto = getattr(models, auto_class_name(task, model_config))
    model = auto.from_pretrained(path, dtype=torch_dtype(dtype), **kwargs)
    model.eval()
    warn_slow_cpu_dtype(model.dtype, device)
    return model.to(device)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 / AMX), as oneDNN reports it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def warn_slow_cpu_dtype(dtype: torch.dtype, device: str) -> Optional[str]:
    """Say so when a half-precision CPU model will be slower than float32 (it is emulated there:
    measured 6x slower for all-MiniLM-L6 on an AVX2 CPU). Returns the warning, if any."""
    if device != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return None
    if dtype == torch.bfloat16 and cpu_has_native_bf16():
        return None
    message = (
        f"model.dtype={str(dtype).replace('torch.', '')} on a CPU without native support "
        f"({torch.backends.cpu.get_cpu_capability()}): matrix products are emulated and run several "
        "times slower than float32; use float32 here, half precision on GPUs or AVX512-BF16/AMX CPUs"
    )
    logger.warning(message)
    return message


def pick_device(num_gpus: float) -> str:
    """``cuda`` when this actor was given a GPU, else ``cpu``."""
    if num_gpus and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def configure_cpu_threads(torch_threads: Optional[int], actors: int = 1) -> int:
    """Set torch's intra-op threads in a CPU actor.

    Ray sets ``OMP_NUM_THREADS`` from an actor's (fractional) CPU reservation, which would run a
    0.5-CPU model actor on one thread; the reservation only keeps room for reads and writes, so
    the thread count is chosen here: the node's CPUs shared between the model actors."""
    if torch_threads is None:
        torch_threads = max(1, (os.cpu_count() or 1) // max(1, actors))
    torch.set_num_threads(int(torch_threads))
    return int(torch_threads)
