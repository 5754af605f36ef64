"""How many KV-cache positions a decoder-only generation actor may hold by default.

Continuous batching (continuous_causal.DecoderOnlyRows) admits prompts while the KV cache of the
rows in flight fits `max_kv_tokens` positions (rows x cached width). This module turns device
memory into that budget: on a GPU a share of the memory left free after loading the model, divided
by what one position costs (keys and values of every layer); on CPU, where the host's memory is
shared with everything else and the row cap binds first, a fixed number of positions per row of
the batch.
"""

from __future__ import annotations

import torch

KV_MEMORY_SHARE = 0.5
"""Share of the GPU memory free after loading that the KV cache may take; the rest is left to the
prefill's activations (bounded by the prefill budget) and the allocator's slack."""

CPU_POSITIONS_PER_ROW = 1024
"""CPU default: this many cached positions per row of `max_batch_size` (128 rows: 131,072)."""


def kv_bytes_per_token(model) -> int:
    """Bytes one cached position costs: keys and values of every layer in the model's dtype."""
    config = model.config
    layers = int(getattr(config, "num_hidden_layers", 1) or 1)
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    element = next(model.parameters()).element_size()
    return 2 * layers * kv_heads * int(head_dim) * element


def default_max_kv_tokens(model, *, max_batch_size: int, device) -> int:
    """The KV budget when the job leaves `compute.max_kv_tokens` unset (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, int(free * KV_MEMORY_SHARE) // kv_bytes_per_token(model))
    return max(1, int(max_batch_size)) * CPU_POSITIONS_PER_ROW
