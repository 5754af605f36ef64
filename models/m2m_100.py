"""M2M100 and NLLB-200: the BART-family encoder-decoder with fairseq's padding-aware sinusoids.

An M2M100 checkpoint is an mBART-like Transformer (pre-norm, final `layer_norm` after each stack, no
`layernorm_embedding`, embeddings scaled by sqrt(d_model) inside `embed_tokens`) whose positions are
fixed sinusoids that skip padding tokens (offset pad_token_id + 1, see
`bart.PaddingAwareSinusoidalPositionalEmbedding`) and whose LM head has no `final_logits_bias`.
So this module only declares thin subclasses whose config (configuration_m2m_100.py) selects
`M2M100_VARIANT`: every layer, the KV cache, `generate` and continuous batching
(`_supports_left_padded_decoder`, per-row `decoder_position_ids`) are BART's. NLLB-200 dense
checkpoints (`model_type: "m2m_100"`) load here; the target language is chosen with
`forced_bos_token_id` (the language token's id) at generate time.

Parameter names are transformers 4.57's (`model.shared`, `model.encoder.layers.0.self_attn.q_proj`,
`model.encoder.layer_norm`, `lm_head`); the position table (`embed_positions.weights`) is computed,
never stored, as in transformers.

LayerDrop skips layers in training only; in eval its coins are still drawn from torch's global
generator, as transformers does, so seeded sampling is token-identical (see
`BartVariant.layerdrop_draws_in_eval` and `global_rng_draws_per_forward` below).

Not supported: NLLB-MoE (`model_type: "nllb-moe"`), inputs longer than `max_position_embeddings`
(transformers silently grows the sinusoid table; we raise, since the checkpoints were never trained
on longer inputs).
"""

from __future__ import annotations

from .bart import (
    BartForConditionalGeneration,
    BartModel,
    BartPreTrainedModel,
)
from .configuration_m2m_100 import M2M100Config, M2M100_VARIANT


class M2M100PreTrainedModel(BartPreTrainedModel):
    config_class = M2M100Config


class M2M100Model(BartModel):
    config_class = M2M100Config


class M2M100ForConditionalGeneration(BartForConditionalGeneration):
    config_class = M2M100Config
    _keys_to_ignore_on_load_missing = None

    @property
    def global_rng_draws_per_forward(self) -> tuple[int, int]:
        """(per encoder pass, per decoder step) scalar draws the forward takes from torch's global
        generator (the LayerDrop coins, drawn in eval too). Continuous batching replays them on each
        input's own generator so its samples equal `generate` on that input alone."""
        return self.config.encoder_layers, self.config.decoder_layers


__all__ = ["M2M100Config", "M2M100PreTrainedModel", "M2M100Model", "M2M100ForConditionalGeneration",
           "M2M100_VARIANT"]
