"""Text generation for our encoder-decoder (and decoder-only) models.

`GenerationConfig` mirrors transformers' generation_config.json semantics; `GenerationMixin`
adds `generate()` to LM classes; `stream_generate` (continuous.py) is the continuous-batching
entry point used by the inference pipeline.
"""

from .configuration import GenerationConfig
from .utils import GenerationMixin

__all__ = ["GenerationConfig", "GenerationMixin", "stream_generate"]


def __getattr__(name):
    if name == "stream_generate":
        from .continuous import stream_generate

        return stream_generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
