"""Configurations of T5, mT5 and Flan-T5 (see t5.py for the models).

Kept apart from the modelling code, as transformers does, so reading a checkpoint's config.json
(`AutoConfig.from_pretrained`) does not import torch.
"""

from __future__ import annotations

from .configuration_utils import PretrainedConfig


class T5Config(PretrainedConfig):
    """Configuration of T5 (same arguments, defaults, aliases and JSON as transformers' T5Config).

    `feed_forward_proj` is "{act}" or "gated-{act}"; it sets `dense_act_fn` and `is_gated_act`
    ("gated-gelu" means the tanh-approximated `gelu_new`, as in the original checkpoints).
    """

    model_type = "t5"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "num_heads",
        "num_hidden_layers": "num_layers",
        "head_dim": "d_kv",
    }

    def __init__(
        self,
        vocab_size=32128,
        d_model=512,
        d_kv=64,
        d_ff=2048,
        num_layers=6,
        num_decoder_layers=None,
        num_heads=8,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        initializer_factor=1.0,
        feed_forward_proj="relu",
        is_encoder_decoder=True,
        use_cache=True,
        pad_token_id=0,
        eos_token_id=1,
        classifier_dropout=0.0,
        **kwargs,
    ):
        _set_t5_fields(self, locals())
        super().__init__(
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            is_encoder_decoder=is_encoder_decoder,
            **kwargs,
        )


class MT5Config(PretrainedConfig):
    """Configuration of mT5 (transformers' MT5Config): gated-gelu, untied LM head, 250k vocabulary."""

    model_type = "mt5"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = T5Config.attribute_map

    def __init__(
        self,
        vocab_size=250112,
        d_model=512,
        d_kv=64,
        d_ff=1024,
        num_layers=8,
        num_decoder_layers=None,
        num_heads=6,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        initializer_factor=1.0,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=True,
        use_cache=True,
        tokenizer_class="T5Tokenizer",
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        classifier_dropout=0.0,
        **kwargs,
    ):
        _set_t5_fields(self, locals())
        super().__init__(
            is_encoder_decoder=is_encoder_decoder,
            tokenizer_class=tokenizer_class,
            tie_word_embeddings=tie_word_embeddings,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            decoder_start_token_id=decoder_start_token_id,
            **kwargs,
        )


def _set_t5_fields(config: PretrainedConfig, args: dict) -> None:
    """Fields shared by T5Config and MT5Config, in transformers' order, with `feed_forward_proj` parsed."""
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers"):
        setattr(config, name, args[name])
    num_decoder_layers = args["num_decoder_layers"]
    config.num_decoder_layers = num_decoder_layers if num_decoder_layers is not None else args["num_layers"]
    for name in ("num_heads", "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate",
                 "classifier_dropout", "layer_norm_epsilon", "initializer_factor", "feed_forward_proj", "use_cache"):
        setattr(config, name, args[name])
    config.dense_act_fn, config.is_gated_act = parse_feed_forward_proj(args["feed_forward_proj"])


def parse_feed_forward_proj(feed_forward_proj: str) -> tuple[str, bool]:
    """'relu' -> ('relu', False); 'gated-gelu' -> ('gelu_new', True); 'gated-silu' -> ('silu', True)."""
    act_info = feed_forward_proj.split("-")
    if (len(act_info) > 1 and act_info[0] != "gated") or len(act_info) > 2:
        raise ValueError(
            f"`feed_forward_proj`: {feed_forward_proj} is not a valid activation function of the dense layer. "
            "Please make sure `feed_forward_proj` is of the format `gated-{ACT_FN}` or `{ACT_FN}`, e.g. "
            "'gated-gelu' or 'relu'"
        )
    dense_act_fn = "gelu_new" if feed_forward_proj == "gated-gelu" else act_info[-1]
    return dense_act_fn, act_info[0] == "gated"
