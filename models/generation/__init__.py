"""Text generation for our encoder-decoder (and decoder-only) models.

`GenerationConfig` mirrors transformers' generation_config.json semantics; `GenerationMixin`
adds `generate()` to LM classes; `stream_generate` (continuous.py) is the continuous-batching
entry point used by the inference pipeline.
"""

from .configuration import GenerationConfig

__all__ = ["GenerationConfig", "GenerationMixin", "stream_generate"]


def __getattr__(name):
    # Imported on first use: they need torch, and reading a generation_config.json (GenerationConfig)
    # must not import it.
    if name == "GenerationMixin":
        from .utils import GenerationMixin

        return GenerationMixin
    if name == "stream_generate":
        from .continuous import stream_generate

        return stream_generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
