"""Loading tokenizers and models inside actors, through our own model layer (``rayformers.models``).

The task → Auto class mapping lives here so that the pipeline never needs to know model classes.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import torch


logger = logging.getLogger(__name__)

TASK_AUTO_CLASS = {
    "classify": "AutoModelForSequenceClassification",
    "token-classify": "AutoModelForTokenClassification",
    "generate": "AutoModelForSeq2SeqLM",
    "embed": "AutoModel",
    "zero-shot-classify": "AutoModelForSequenceClassification",
    "sparse-embed": "AutoModelForMaskedLM",
    "rerank": "AutoModelForSequenceClassification",
}


def auto_class_name(task: str, model_config: Any = None) -> str:
    """The Auto class for ``task``; ``generate`` on a decoder-only checkpoint (config ``is_decoder``
    without ``is_encoder_decoder``: BERT-family causal heads, MEGA; or a family that is only ever
    decoder-only: Llama, Qwen, Gemma, ...) continues prompts with ``AutoModelForCausalLM`` instead of
    ``AutoModelForSeq2SeqLM``; ``rerank`` on a decoder-only family's causal LM (a yes/no reranker,
    ``rerank_settings.rerank_kind``) loads ``AutoModelForCausalLM``."""
    name = TASK_AUTO_CLASS[task]
    if task == "rerank" and model_config is not None:
        from .rerank_settings import rerank_kind

        return "AutoModelForCausalLM" if rerank_kind(model_config) == "yes-no" else name
    if task != "generate" or model_config is None or getattr(model_config, "is_encoder_decoder", False):
        return name
    if getattr(model_config, "is_decoder", False) or _decoder_only_family(getattr(model_config, "model_type", "")):
        return "AutoModelForCausalLM"
    return name


def _decoder_only_family(model_type: str) -> bool:
    """One of the decoder-only LLM families (Llama, Qwen, Gemma, ...; a torch-free table)."""
    from rayformers.models.configuration_decoder import DECODER_MODEL_NAMES

    return model_type in DECODER_MODEL_NAMES


_DTYPES = ("float32", "bfloat16", "float16")
"""Names ``model.dtype`` accepts besides ``auto``. torch is imported inside the functions that
need it: tokenizer actors import this module for ``load_tokenizer`` and must not load torch."""


FLOAT16_OVERFLOW_MODEL_TYPES = ("t5", "mt5", "umt5")
"""Families whose activations overflow float16's range (T5's feed-forward outputs reach ~1e5):
``auto`` keeps them in float32 where bfloat16 is not available."""


def torch_dtype(name: str, device: str = "cpu", model_type: str = "") -> torch.dtype:
    """Config dtype name → torch dtype; ``auto`` becomes :func:`auto_dtype` for ``device``."""
    import torch

    if name == "auto":
        return auto_dtype(device, model_type)
    try:
        if name not in _DTYPES:
            raise KeyError(name)
        return getattr(torch, name)
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of float32, bfloat16, float16, auto") from None


def auto_dtype_name(gpu: bool, model_type: str = "", cuda_bf16: bool = False, cpu_bf16: bool = False) -> str:
    """What ``auto`` means, from the hardware facts alone (no torch: the driver calls it).

    * a GPU with bfloat16 (Ampere and later): bfloat16 (float32's range, so no overflow).
    * older GPUs (Volta, Turing): float16, whose tensor cores they have; float32 for the
      families known to overflow in float16 (:data:`FLOAT16_OVERFLOW_MODEL_TYPES`).
    * CPU with native bfloat16 (AVX512-BF16 / AMX): bfloat16; any other CPU: float32 (half
      precision is emulated there and runs several times slower)."""
    if gpu:
        if cuda_bf16:
            return "bfloat16"
        return "float32" if model_type in FLOAT16_OVERFLOW_MODEL_TYPES else "float16"
    return "bfloat16" if cpu_bf16 else "float32"


def resolve_dtype_name(requested: Optional[str], gpu: bool, model_type: str = "", cuda_bf16: bool = False,
                       cpu_bf16: bool = False) -> str:
    """The concrete precision a model actor loads: ``model.dtype`` as set, ``auto`` per
    :func:`auto_dtype_name`, and unset (``None``) as ``auto`` on a GPU actor (float32 there runs
    ~10x below bfloat16 on an H100) and float32 on a CPU actor (as always)."""
    if requested is None:
        requested = "auto" if gpu else "float32"
    if requested == "auto":
        return auto_dtype_name(gpu, model_type, cuda_bf16, cpu_bf16)
    if requested not in _DTYPES:
        raise ValueError(f"unknown dtype {requested!r}; use one of float32, bfloat16, float16, auto")
    return requested


def auto_dtype(device: str, model_type: str = "", cuda_bf16: Optional[bool] = None,
               cpu_bf16: Optional[bool] = None) -> torch.dtype:
    """:func:`auto_dtype_name` for ``device`` as a torch dtype, probing this machine's hardware.
    ``cuda_bf16`` / ``cpu_bf16`` override the hardware probes (tests)."""
    import torch

    gpu = device != "cpu"
    if gpu and cuda_bf16 is None:
        cuda_bf16 = cuda_has_bf16()
    if not gpu and cpu_bf16 is None:
        cpu_bf16 = cpu_has_native_bf16()
    return getattr(torch, auto_dtype_name(gpu, model_type, bool(cuda_bf16), bool(cpu_bf16)))


def cuda_has_bf16() -> bool:
    """Whether this process's GPU computes bfloat16 natively; True for the test-only stand-in GPU
    (:data:`GPU_ON_CPU_ENV`), whose CPU computes bfloat16 (slowly) whatever it is."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return gpu_on_cpu_for_tests()


def load_tokenizer(path: str, revision: Optional[str] = None, local_files_only: bool = False,
                   source_language: Optional[str] = None):
    """Our HF-compatible tokenizer (``tokenizer.json`` or slow-tokenizer files); ``source_language``
    sets a translation tokenizer's ``src_lang`` (its language token goes into every row)."""
    from rayformers.models import AutoTokenizer

    kwargs = {}
    if source_language:
        kwargs["src_lang"] = source_language
    if revision:
        kwargs["revision"] = revision
    if local_files_only:
        kwargs["local_files_only"] = True
    return AutoTokenizer.from_pretrained(path, **kwargs)


def forced_target_language_id(tokenizer, target_language: str) -> int:
    """The id of ``target_language``'s token, forced as the first generated token (as transformers'
    translation pipeline does); an unknown code raises naming the accepted ones."""
    if not hasattr(tokenizer, "get_lang_id"):
        raise ValueError(
            f"task.target_language={target_language!r}, but the tokenizer ({type(tokenizer).__name__}, "
            f"{getattr(tokenizer, 'tokenizer_class', '?')}) has no language codes; it is for NLLB, mBART, mBART-50 "
            "and M2M100 checkpoints (multilingual Marian models take a '>>xx<<' prefix in the text instead)."
        )
    return tokenizer.get_lang_id(target_language)


def load_model(
    task: str,
    path: str,
    dtype: Optional[str] = "float32",
    revision: Optional[str] = None,
    local_files_only: bool = False,
    device: str = "cpu",
    quantization: str = "none",
    allow_new_head: bool = False,
    gpu: Optional[bool] = None,
    adapter: Optional[str] = None,
    head: Optional[dict] = None,
):
    """``AutoModelFor<Task>.from_pretrained`` in eval mode on ``device`` (``quantization:
    int8-dynamic``: its Linear layers int8, :func:`quantize_int8_dynamic`, CPU only).

    Refuses a checkpoint without the task's head (:class:`MissingHeadError`) unless
    ``allow_new_head``: the driver checks the same before the job
    (``pipeline.preflight.check_task_head``); this is the check of what was really loaded.

    ``dtype`` ``auto`` or unset is resolved first (:func:`resolve_dtype_name`, for a GPU actor
    when ``gpu``, default: ``device`` is not the CPU) and the checkpoint is loaded in that dtype
    by the same ``from_pretrained`` path as an explicit dtype: loading float32 and casting the
    whole model afterwards would also cast what must stay float32 (rotary ``inv_freq`` buffers,
    ``_keep_in_fp32_modules``). float32 on a CUDA device allows TF32 matrix products.

    ``adapter`` (a PEFT LoRA directory or Hub id) is merged into ``path``'s weights while they
    load (``models.adapters``): the result is an ordinary model, so scoring costs nothing extra.

    ``head`` (the ``model.head`` mapping, ``classify`` only) loads a checkpoint whose classifier is
    a Linear on a known backbone, saved outside transformers (``models.custom_heads``)."""
    import torch

    import rayformers.models as models

    if quantization not in ("none", "int8-dynamic"):
        raise ValueError(f"unknown model.quantization {quantization!r}; use none or int8-dynamic")
    if quantization != "none" and device != "cpu":
        raise ValueError(f"model.quantization {quantization} runs on CPU only (set compute.model_num_gpus: 0)")

    kwargs: dict = {}
    if revision:
        kwargs["revision"] = revision
    if local_files_only:
        kwargs["local_files_only"] = True
    gpu = device != "cpu" if gpu is None else gpu
    if head is not None:
        model = load_head_model(task, path, head, dtype, gpu, adapter, kwargs)
        return finish_loading(model, device, gpu, quantization, model_dtype_for(dtype, gpu, model.config.model_type))
    needs_config = task in ("generate", "rerank") or dtype in (None, "auto")
    model_config = models.AutoConfig.from_pretrained(path, **kwargs) if needs_config else None
    name = model_dtype_for(dtype, gpu, getattr(model_config, "model_type", ""))
    auto = getattr(models, auto_class_name(task, model_config))
    source = path
    if adapter:
        source, kwargs = adapter, {**kwargs, "base_model": path}
    model, info = auto.from_pretrained(source, dtype=torch_dtype(name), output_loading_info=True, **kwargs)
    refuse_new_head(model, info, task, path, allow_new_head)
    return finish_loading(model, device, gpu, quantization, name)


def finish_loading(model, device: str, gpu: bool, quantization: str, dtype_name: str):
    """Eval mode, onto ``device``, TF32 for float32 on CUDA, int8 quantisation when asked."""
    model.eval()
    if not gpu:
        warn_slow_cpu_dtype(model.dtype, device)
    model = model.to(device)
    if device != "cpu" and dtype_name == "float32":
        allow_tf32()
    if quantization == "int8-dynamic":
        model = quantize_int8_dynamic(model, device)
    return model


def load_head_model(task: str, path: str, head: dict, dtype: Optional[str], gpu: bool, adapter: Optional[str],
                    hub_kwargs: dict):
    """The ``model.head`` classifier of ``path`` in the resolved dtype (``models.custom_heads``)."""
    from rayformers.models.custom_head_config import HeadSpec, head_model_config
    from rayformers.models.custom_heads import load_linear_head_classifier

    if task != "classify":
        raise ValueError(f"model.head is for model.task classify, not {task}")
    if adapter:
        raise ValueError("model.head cannot be combined with model.adapter")
    model_type = head_model_config(path, HeadSpec.from_dict(head), **hub_kwargs).model_type if dtype in (None, "auto") else ""
    name = model_dtype_for(dtype, gpu, model_type)
    return load_linear_head_classifier(path, head, dtype=torch_dtype(name), **hub_kwargs)


class MissingHeadError(ValueError):
    """The checkpoint has no weights for the task's head: loading would initialise it at random."""


def missing_head_message(task: str, path: str, class_name: str, missing: list[str],
                         architectures: Optional[list] = None) -> str:
    """What to tell a user whose checkpoint lacks the head ``task`` needs (driver and actors)."""
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    made_as = f" (its config.json names {', '.join(map(str, architectures))})" if architectures else ""
    return (
        f"model.task {task!r}: checkpoint {path!r}{made_as} has no weights for the {class_name} head "
        f"({shown}); they would be initialised at random and every prediction would be noise. Use a "
        f"checkpoint fine-tuned for {task}, or the task this checkpoint was made for (a bare encoder, e.g. a "
        "sentence-embedding model: model.task: embed). model.allow_new_head: true runs it anyway (random head, "
        "for tests/debugging only)."
    )


def missing_head_keys(model: Any, info: dict) -> list[str]:
    """The weights ``from_pretrained`` reported missing (``info["missing_keys"]``) that belong to the
    task's head, i.e. lie outside the base model; ``[]`` for a bare base model (no head)."""
    from rayformers.models.head_weights import head_weight_names

    missing = list(info.get("missing_keys") or [])
    if not missing or head_weight_names(type(model).__name__, model.config) == ():
        return []
    prefix = getattr(model, "base_model_prefix", "") or ""
    return [k for k in missing if not (prefix and k.startswith(prefix + "."))]


def refuse_new_head(model: Any, info: dict, task: str, path: str, allow_new_head: bool = False) -> list[str]:
    """Raise :class:`MissingHeadError` when loading left head weights at their random
    initialisation; with ``allow_new_head`` log them instead. Returns them."""
    missing = missing_head_keys(model, info)
    if not missing:
        return []
    message = missing_head_message(task, path, type(model).__name__, missing,
                                   getattr(model.config, "architectures", None))
    if not allow_new_head:
        raise MissingHeadError(message)
    logger.warning("model.allow_new_head is set, running with a random head: %s", message)
    return missing


def model_dtype_for(dtype: Optional[str], gpu: bool, model_type: str = "") -> str:
    """:func:`resolve_dtype_name` with this process's hardware as the probes."""
    if dtype not in (None, "auto"):
        return resolve_dtype_name(dtype, gpu)
    return resolve_dtype_name(dtype, gpu, model_type, cuda_bf16=gpu and cuda_has_bf16(),
                              cpu_bf16=not gpu and cpu_has_native_bf16())


def allow_tf32() -> None:
    """float32 matrix products and convolutions on TF32 tensor cores (Ampere and later): ~8x the
    float32 rate at a 10-bit mantissa, the precision transformers' own GPU pipelines accept."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def quantize_int8_dynamic(model, device: str = "cpu"):
    """int8 Linear layers with a scale per weight output channel and per activation row
    (``models.int8``: mean cosine 0.997 with float32 on all-MiniLM-L6-v2, where torch's stock
    per-tensor dynamic quantisation gave 0.91-0.95), the task head kept float32. CPU only,
    float32 models only. Logs a warning on a CPU without int8 dot-product instructions (VNNI,
    AMX, Arm dot product), where the int8 products are emulated and may not beat float32."""
    import torch

    from rayformers.models.int8 import cpu_int8_dot_product, quantize_linear_int8

    if device != "cpu":
        raise ValueError("model.quantization int8-dynamic runs on CPU only (set compute.model_num_gpus: 0)")
    if next(model.parameters()).dtype != torch.float32:
        raise ValueError("model.quantization int8-dynamic needs model.dtype float32")
    if not cpu_int8_dot_product():
        logger.warning("model.quantization int8-dynamic: this CPU reports no int8 dot-product instructions "
                       "(avx512_vnni, avx_vnni, amx_int8, asimddp, i8mm in /proc/cpuinfo); int8 may be no faster "
                       "than float32 here")
    quantize_linear_int8(model)
    model.eval()
    return model


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 / AMX), as oneDNN reports it."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def warn_slow_cpu_dtype(dtype: torch.dtype, device: str) -> Optional[str]:
    """Say so when a half-precision CPU model will be slower than float32 (it is emulated there:
    measured 6x slower for all-MiniLM-L6 on an AVX2 CPU). Returns the warning, if any."""
    import torch

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


GPU_ON_CPU_ENV = "RAYFORMERS_TEST_GPU_ON_CPU"
"""Test-only switch: ``1`` lets a model actor that Ray gave a GPU compute on the CPU, so the GPU
plan (resources, batch sizes, GPU defaults, one-ahead loop) runs end to end on machines without
one. Never set it in production: a job would silently score on the CPU."""


def gpu_on_cpu_for_tests() -> bool:
    """Whether :data:`GPU_ON_CPU_ENV` is set (tests only)."""
    return os.environ.get(GPU_ON_CPU_ENV, "") not in ("", "0")


def pick_device(num_gpus: float) -> str:
    """``cuda`` when this actor was given a GPU, else ``cpu``.

    An actor given a GPU whose torch cannot use CUDA (a CPU-only torch wheel on a GPU node, the
    usual install mistake) raises instead of scoring on the CPU at a fraction of the speed,
    unless the test-only :data:`GPU_ON_CPU_ENV` is set."""
    import torch

    if not num_gpus:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if gpu_on_cpu_for_tests():
        return "cpu"
    raise RuntimeError(no_cuda_message(num_gpus))


def no_cuda_message(num_gpus: float) -> str:
    """Why an actor given a GPU cannot use it, and how to fix the install."""
    import torch

    build = torch.version.cuda
    cause = (f"this torch build ({torch.__version__}) has no CUDA support: a CPU-only wheel" if build is None else
             f"torch {torch.__version__} (built for CUDA {build}) finds no usable CUDA device: check the NVIDIA driver "
             "(nvidia-smi) and CUDA_VISIBLE_DEVICES")
    return (f"compute.model_num_gpus={num_gpus:g}: Ray gave this model actor a GPU, but CUDA is not available: {cause}. "
            "Install a CUDA build of torch on the GPU nodes (e.g. pip install torch --index-url "
            "https://download.pytorch.org/whl/cu124, matching the driver's CUDA version), or set "
            "compute.model_num_gpus: 0 to score on CPUs.")


def device_facts(num_gpus: float) -> dict:
    """What the pipeline's driver needs to know about a model actor's machine before the job (run
    as a Ray task with the model actors' resources): its device (raising as :func:`pick_device`
    does when a GPU cannot be used) and the precision facts ``auto`` is resolved from."""
    import torch

    device = pick_device(num_gpus)
    gpu = bool(num_gpus)
    return {
        "device": device,
        "gpu": gpu,
        "gpu_name": torch.cuda.get_device_name() if device == "cuda" else ("cpu (test stand-in)" if gpu else None),
        "cuda_bf16": gpu and cuda_has_bf16(),
        "cpu_bf16": cpu_has_native_bf16(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }


MODEL_ACTOR_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
"""Environment of the model actors' processes, read by OpenMP when torch loads: set by
:func:`apply_model_actor_env` in the actor before it imports torch. Not a Ray ``runtime_env``:
an actor with its own runtime_env cannot take one of Ray's prestarted workers and waits for a
new process (measured: 1.9-2.2 s to a ready actor against 0.35-1.15 s on 2 CPUs)."""


def apply_model_actor_env() -> bool:
    """Put :data:`MODEL_ACTOR_ENV` into this process's environment (a value the user set wins).
    Returns False, changing nothing, when torch is already loaded here (OpenMP has read its
    settings; only a worker that ran torch code before could be in that state)."""
    if "torch" in sys.modules:
        return False
    for key, value in MODEL_ACTOR_ENV.items():
        os.environ.setdefault(key, value)
    return True


def configure_cpu_threads(torch_threads: Optional[int], actors: int = 1) -> int:
    """Set torch's intra-op threads in a CPU actor.

    Ray sets ``OMP_NUM_THREADS`` from an actor's (fractional) CPU reservation, which would run a
    0.5-CPU model actor on one thread; the reservation only keeps room for reads and writes, so
    the thread count is chosen here: the node's CPUs shared between the model actors. The
    pipeline's model actors set ``OMP_WAIT_POLICY=PASSIVE`` (:data:`MODEL_ACTOR_ENV`) before torch loads:
    OpenMP's default spins at every barrier, so when a tokenizer or write task takes one of the
    cores, every op of the forward waits for the preempted thread. Measured on 2 CPUs: a tiny
    classifier over 300k rows ran 1,032 rows/s end to end with 2 spinning threads (other work
    sharing the machine), 7,022 with 2
    passive ones (7,211 with 1); all-MiniLM-L6 embed 36-38 rows/s with 2 spinning threads, 41.6
    with 2 passive ones, 30.3 with 1."""
    import torch

    if torch_threads is None:
        torch_threads = max(1, (os.cpu_count() or 1) // max(1, actors))
    torch.set_num_threads(int(torch_threads))
    return int(torch_threads)
