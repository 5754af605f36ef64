"""Parity of our T5 / mT5 (relu and gated-gelu, tied and untied heads) with transformers 4.57.6.

transformers' T5 always computes attention explicitly; ours uses SDPA by default and the explicit
path with `attn_implementation="eager"`. Both are compared: eager must match to float32 rounding,
SDPA within atol 1e-5 (it accumulates the softmax in blocks).
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from rayformers.models import AutoConfig, AutoModel, AutoModelForSeq2SeqLM
from rayformers.models import t5 as ours_t5

from model_test_utils import assert_all_close as _assert_all_close
from model_test_utils import left_padded_step_matches_row_alone as _left_padded_step_matches_row_alone

ATOL = dict(rtol=0, atol=1e-5)

COMMON = dict(
    vocab_size=99, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=3, num_heads=4,
    relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0, decoder_start_token_id=0,
)

# name -> (transformers config class, transformers LM class, our LM class, our encoder class, extra config)
FAMILIES = {
    "t5": (transformers.T5Config, transformers.T5ForConditionalGeneration, ours_t5.T5ForConditionalGeneration,
           ours_t5.T5EncoderModel, {}),
    "flan-t5": (transformers.T5Config, transformers.T5ForConditionalGeneration, ours_t5.T5ForConditionalGeneration,
                ours_t5.T5EncoderModel, dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    "mt5": (transformers.MT5Config, transformers.MT5ForConditionalGeneration, ours_t5.MT5ForConditionalGeneration,
            ours_t5.MT5EncoderModel, {}),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for name, (config_cls, model_cls, _, _, extra) in FAMILIES.items():
        torch.manual_seed(0)
        model = model_cls(config_cls(**{**COMMON, **extra})).eval()
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        out[name] = (model, path)
    return out


def _batch():
    """Encoder rows of 30 tokens (distances beyond max_distance exercise the log buckets), padded."""
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, 97, (3, 30), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 17:] = 0
    attention_mask[2, 4:] = 0
    input_ids[attention_mask == 0] = 0
    labels = torch.randint(2, 97, (3, 24), generator=g)
    labels[1, 10:] = -100
    labels[2, 3:] = -100
    return input_ids, attention_mask, labels


@pytest.mark.parametrize("name", list(FAMILIES))
def test_lm_forward_matches_transformers(checkpoints, name):
    hf, path = checkpoints[name]
    eager, info = AutoModelForSeq2SeqLM.from_pretrained(path, output_loading_info=True, attn_implementation="eager")
    sdpa = AutoModelForSeq2SeqLM.from_pretrained(path)
    assert type(eager) is FAMILIES[name][2]
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []

    input_ids, attention_mask, labels = _batch()
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels, output_hidden_states=True,
                  output_attentions=True)
    with torch.no_grad():
        ref = hf(**kwargs)
        got = eager(**kwargs)
        fast = sdpa(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(got.logits, ref.logits, **ATOL)
    torch.testing.assert_close(got.loss, ref.loss, **ATOL)
    for field in ("encoder_last_hidden_state", "encoder_hidden_states", "decoder_hidden_states",
                  "encoder_attentions", "decoder_attentions", "cross_attentions"):
        _assert_all_close(getattr(ref, field), getattr(got, field))
    torch.testing.assert_close(fast.logits, ref.logits, **ATOL)
    torch.testing.assert_close(fast.loss, ref.loss, **ATOL)

    # Decoder padding mask + returned cache (transformers' legacy tuple layout equals our contract format).
    decoder_input_ids = hf.prepare_decoder_input_ids_from_labels(labels)
    decoder_attention_mask = (labels != -100).long()
    decoder_attention_mask[:, 0] = 1
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                  decoder_attention_mask=decoder_attention_mask, use_cache=True)
    with torch.no_grad():
        ref = hf(**kwargs)
        got = eager(**kwargs)
    torch.testing.assert_close(got.logits, ref.logits, **ATOL)
    _assert_all_close(ref.past_key_values.to_legacy_cache(), got.past_key_values)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_base_and_encoder_models(checkpoints, name):
    hf, path = checkpoints[name]
    _, _, _, encoder_cls, _ = FAMILIES[name]
    base, info = AutoModel.from_pretrained(path, output_loading_info=True, attn_implementation="eager")
    assert type(base).__name__ == ("MT5Model" if name == "mt5" else "T5Model")
    assert info["missing_keys"] == []
    encoder, info = encoder_cls.from_pretrained(path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []  # decoder weights ignored by design
    assert encoder.config.is_encoder_decoder is False

    input_ids, attention_mask, labels = _batch()
    decoder_input_ids = hf.prepare_decoder_input_ids_from_labels(labels)
    with torch.no_grad():
        ref = hf(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                 output_hidden_states=True)
        got = base(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        enc = encoder(input_ids=input_ids, attention_mask=attention_mask)
    torch.testing.assert_close(got.last_hidden_state, ref.decoder_hidden_states[-1], **ATOL)
    torch.testing.assert_close(got.encoder_last_hidden_state, ref.encoder_last_hidden_state, **ATOL)
    torch.testing.assert_close(enc.last_hidden_state, ref.encoder_last_hidden_state, **ATOL)


@pytest.mark.parametrize("name", ["t5", "mt5"])
def test_incremental_decoding_with_cache_equals_full_forward(checkpoints, name):
    _, path = checkpoints[name]
    ours = AutoModelForSeq2SeqLM.from_pretrained(path)
    input_ids, attention_mask, labels = _batch()
    decoder_input_ids = ours.prepare_decoder_input_ids_from_labels(labels)
    with torch.no_grad():
        full = ours(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                    use_cache=False).logits
        encoder_outputs = ours.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        past, steps = None, []
        for t in range(decoder_input_ids.shape[1]):
            out = ours(encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                       decoder_input_ids=decoder_input_ids[:, t:t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits)
        head = ours(encoder_outputs=(encoder_outputs.last_hidden_state,), attention_mask=attention_mask,
                    decoder_input_ids=decoder_input_ids[:, :9], use_cache=True)
        tail = ours(encoder_outputs=(encoder_outputs.last_hidden_state,), attention_mask=attention_mask,
                    decoder_input_ids=decoder_input_ids[:, 9:], past_key_values=head.past_key_values)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **ATOL)
    torch.testing.assert_close(torch.cat([head.logits, tail.logits], dim=1), full, **ATOL)
    config = ours.config
    assert len(past) == config.num_decoder_layers
    self_k, self_v, cross_k, cross_v = past[0]
    assert self_k.shape == (3, config.num_heads, decoder_input_ids.shape[1], config.d_kv)
    assert cross_v.shape == (3, config.num_heads, input_ids.shape[1], config.d_kv)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_our_save_loads_in_transformers(checkpoints, name, tmp_path):
    hf, path = checkpoints[name]
    _, hf_cls, ours_cls, _, _ = FAMILIES[name]
    ours = ours_cls.from_pretrained(path)
    ours.save_pretrained(tmp_path)
    reloaded, info = hf_cls.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [], info
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == hf.config.model_type and saved["feed_forward_proj"] == hf.config.feed_forward_proj
    input_ids, attention_mask, labels = _batch()
    with torch.no_grad():
        ref = hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        got = reloaded.eval()(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(got.logits, ref.logits, rtol=0, atol=0)
    assert reloaded.config.tie_word_embeddings == hf.config.tie_word_embeddings


def test_tied_head_rescale_and_untied_head(checkpoints):
    """Tied T5 scales decoder output by d_model**-0.5 onto `shared`; Flan-T5 / mT5 use their own lm_head."""
    _, t5_path = checkpoints["t5"]
    _, flan_path = checkpoints["flan-t5"]
    tied = AutoModelForSeq2SeqLM.from_pretrained(t5_path)
    untied = AutoModelForSeq2SeqLM.from_pretrained(flan_path)
    assert tied.lm_head.weight is tied.shared.weight
    assert untied.lm_head.weight is not untied.shared.weight
    assert tied.encoder.embed_tokens is tied.shared and tied.decoder.embed_tokens is tied.shared
    input_ids, attention_mask, labels = _batch()
    decoder_input_ids = tied.prepare_decoder_input_ids_from_labels(labels)
    with torch.no_grad():
        out = tied(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                   output_hidden_states=True)
    expected = (out.decoder_hidden_states[-1] * tied.config.d_model**-0.5) @ tied.shared.weight.T
    torch.testing.assert_close(out.logits, expected, **ATOL)
    # Gated activation: two input projections and the tanh-GELU.
    ff = untied.decoder.block[0].layer[2].DenseReluDense
    assert isinstance(ff, ours_t5.T5DenseGatedActDense) and untied.config.dense_act_fn == "gelu_new"


def test_config_parsing_aliases_and_round_trip(tmp_path):
    assert ours_t5.parse_feed_forward_proj("relu") == ("relu", False)
    assert ours_t5.parse_feed_forward_proj("gated-gelu") == ("gelu_new", True)
    assert ours_t5.parse_feed_forward_proj("gated-silu") == ("silu", True)
    with pytest.raises(ValueError, match="is not a valid activation function"):
        ours_t5.T5Config(feed_forward_proj="double-gated-gelu")
    with pytest.raises(ValueError):
        transformers.T5Config(feed_forward_proj="double-gated-gelu")

    config = ours_t5.T5Config(d_model=32, num_heads=2, num_layers=3, d_kv=8)
    assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers, config.head_dim) == (32, 2, 3, 8)
    assert config.num_decoder_layers == 3 and config.decoder_start_token_id is None
    config.save_pretrained(tmp_path)
    ref = transformers.T5Config.from_pretrained(tmp_path)
    assert (ref.d_model, ref.num_heads, ref.num_layers, ref.dense_act_fn, ref.is_gated_act) == (32, 2, 3, "relu", False)
    mt5 = ours_t5.MT5Config()
    assert (mt5.model_type, mt5.tie_word_embeddings, mt5.decoder_start_token_id, mt5.is_gated_act) == \
        ("mt5", False, 0, True)
    transformers.MT5Config(d_model=16).save_pretrained(tmp_path / "mt5")
    loaded = AutoConfig.from_pretrained(tmp_path / "mt5")
    assert type(loaded) is ours_t5.MT5Config and loaded.dense_act_fn == "gelu_new" and loaded.d_model == 16


def test_fp16_keeps_wo_in_fp32(checkpoints):
    hf, path = checkpoints["flan-t5"]
    half = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=torch.float16)
    assert half.decoder.block[0].layer[2].DenseReluDense.wo.weight.dtype == torch.float32
    assert half.decoder.block[0].layer[2].DenseReluDense.wi_0.weight.dtype == torch.float16
    assert half.shared.weight.dtype == torch.float16
    ref_half = transformers.T5ForConditionalGeneration.from_pretrained(path, dtype=torch.float16)
    for (name, a), (_, b) in zip(ref_half.state_dict().items(), half.state_dict().items()):
        assert a.dtype == b.dtype, name
    input_ids, attention_mask, labels = _batch()
    with torch.no_grad():
        got = half(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits
        ref = hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), ref, rtol=0, atol=0.1)


def test_bad_input_gives_clear_errors(checkpoints, tmp_path):
    _, path = checkpoints["t5"]
    ours = AutoModelForSeq2SeqLM.from_pretrained(path)
    with pytest.raises(ValueError, match="input_ids is empty"):
        ours(input_ids=torch.zeros((1, 0), dtype=torch.long), decoder_input_ids=torch.tensor([[0]]))
    with pytest.raises(ValueError, match="row 0 holds token id 99"):
        ours(input_ids=torch.tensor([[5, 99]]), decoder_input_ids=torch.tensor([[0]]))
    with pytest.raises(ValueError, match="You have to specify either decoder_input_ids"):
        ours(input_ids=torch.tensor([[5, 6]]))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        ours(input_ids=torch.tensor([[5, 6]]), attention_mask=torch.ones(1, 3), decoder_input_ids=torch.tensor([[0]]))
    # A T5 config without decoder_start_token_id (transformers' T5Config default) cannot shift labels.
    torch.manual_seed(0)
    config = transformers.T5Config(**{**COMMON, "decoder_start_token_id": None})
    transformers.T5ForConditionalGeneration(config).save_pretrained(tmp_path)
    no_start = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="decoder_start_token_id must be set.*usually the pad_token_id"):
        no_start(input_ids=torch.tensor([[5, 6]]), labels=torch.tensor([[7, 8]]))
    with pytest.raises(ValueError, match="use_cache` can only be set"):
        ours.get_encoder()(input_ids=torch.tensor([[5, 6]]), use_cache=True)


def test_generation_hooks_present(checkpoints):
    from rayformers.models.generation import GenerationMixin

    _, path = checkpoints["mt5"]
    ours = AutoModelForSeq2SeqLM.from_pretrained(path)
    assert isinstance(ours, GenerationMixin) and ours.main_input_name == "input_ids"
    assert ours.get_encoder() is ours.encoder and ours.get_decoder() is ours.decoder
    assert ours.config.is_encoder_decoder and ours.generation_config is not None


def test_left_padded_decoder_cache_needs_no_positions(checkpoints):
    """Relative buckets see only distances, so a left-padded, masked cache row decodes as if alone."""

    _, path = checkpoints["t5"]
    ours = AutoModelForSeq2SeqLM.from_pretrained(path)
    assert ours._supports_left_padded_decoder and getattr(ours, "_decoder_position_ids_kwarg", None) is None
    _left_padded_step_matches_row_alone(ours, None, 99, 99)
