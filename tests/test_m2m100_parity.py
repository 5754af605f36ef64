"""Parity of our M2M100 / NLLB with transformers 4.57.6 on tiny random checkpoints.

Checkpoints are written by transformers and read by ours (and the other way round); forward passes
run on padded batches (pad tokens in the encoder and in the decoder input, which M2M100's positions
skip), generation must be token-identical (greedy, beam search, seeded sampling, forced BOS = the
target-language token), and the continuous-batching `stream_generate` and the pipeline's
GenerateOperator must return what `generate` returns per row.
"""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest
import torch
import transformers

from rayformers.models import AutoConfig, AutoModel, AutoModelForSeq2SeqLM
from rayformers.models import m2m_100 as ours_m2m
from rayformers.models.generation import stream_generate
from rayformers.models.generation.continuous import _cut_after_eos
from rayformers.models.layers import shift_tokens_right
from rayformers.operators.generate import GenerateOperator
from rayformers.operators.records import ERROR_COLUMN

from model_test_utils import ATOL_KW, assert_all_close, left_padded_step_matches_row_alone, single_thread  # noqa: F401

transformers.logging.set_verbosity_error()

VOCAB = 99
PAD, EOS = 1, 2
EOS_LIST = [2, 10, 11, 12, 13, 14, 15, 16]  # several eos ids: rows stop at different steps
LANGUAGE_TOKEN = 90  # stands for an NLLB language code such as fra_Latn

COMMON = dict(vocab_size=VOCAB, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
              decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=24, max_position_embeddings=40,
              dropout=0.0, attention_dropout=0.0, init_std=0.3)
# A tiny model with NLLB-200's config.json fields (what facebook/nllb-200-distilled-600M declares).
NLLB = dict(COMMON, activation_function="relu", scale_embedding=True, encoder_layerdrop=0, decoder_layerdrop=0,
            tokenizer_class="NllbTokenizer", architectures=["M2M100ForConditionalGeneration"])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (transformers model, directory it saved to)."""
    out = {}
    for name, config in {"m2m100": dict(COMMON, activation_function="gelu"), "nllb": NLLB}.items():
        torch.manual_seed(0)
        hf_config = transformers.M2M100Config(**config)
        hf_config._attn_implementation = "eager"  # transformers returns attention weights only in eager mode
        model = transformers.M2M100ForConditionalGeneration(hf_config).eval()
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        out[name] = (model, path)
    return out


def _batch():
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, VOCAB - 2, (3, 9), generator=g)
    mask = torch.ones_like(input_ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    input_ids[mask == 0] = PAD
    labels = torch.randint(3, VOCAB - 2, (3, 6), generator=g)
    labels[1, 4:] = -100
    labels[2, 2:] = -100
    return input_ids, mask, labels


@pytest.mark.parametrize("name", ["m2m100", "nllb"])
def test_lm_forward_matches_transformers(checkpoints, name):
    hf, path = checkpoints[name]
    ours, info = AutoModelForSeq2SeqLM.from_pretrained(path, output_loading_info=True)
    assert type(ours) is ours_m2m.M2M100ForConditionalGeneration
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    assert ours.final_logits_bias is None and "final_logits_bias" not in ours.state_dict()

    input_ids, mask, labels = _batch()
    kwargs = dict(input_ids=input_ids, attention_mask=mask, labels=labels, output_hidden_states=True,
                  output_attentions=True)
    with torch.no_grad():
        ref, got = hf(**kwargs), ours(**kwargs)
    torch.testing.assert_close(got.logits, ref.logits, **ATOL_KW)
    torch.testing.assert_close(got.loss, ref.loss, **ATOL_KW)
    for field in ("encoder_last_hidden_state", "encoder_hidden_states", "decoder_hidden_states", "encoder_attentions",
                  "decoder_attentions", "cross_attentions"):
        assert_all_close(getattr(ref, field), getattr(got, field))

    # Decoder inputs with pad tokens in the middle: their positions are skipped, as in fairseq.
    decoder_input_ids = shift_tokens_right(labels, PAD, EOS)
    decoder_input_ids[0, 2] = PAD
    kwargs = dict(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_input_ids, use_cache=True)
    with torch.no_grad():
        ref, got = hf(**kwargs), ours(**kwargs)
    torch.testing.assert_close(got.logits, ref.logits, **ATOL_KW)
    assert_all_close(ref.past_key_values.to_legacy_cache(), got.past_key_values)
    # ... and one more step from the cache
    step = dict(attention_mask=mask, encoder_outputs=(got.encoder_last_hidden_state,),
                decoder_input_ids=torch.tensor([[7], [PAD], [9]]))
    with torch.no_grad():
        ref_step = hf(**step, past_key_values=ref.past_key_values)
        got_step = ours(**step, past_key_values=got.past_key_values)
    torch.testing.assert_close(got_step.logits, ref_step.logits, **ATOL_KW)


def test_base_model_and_inputs_embeds_match_transformers(checkpoints):
    hf, path = checkpoints["m2m100"]
    base, info = AutoModel.from_pretrained(path, output_loading_info=True)
    assert type(base) is ours_m2m.M2M100Model and info["missing_keys"] == [] and info["unexpected_keys"] == []
    input_ids, mask, labels = _batch()
    decoder_input_ids = shift_tokens_right(labels, PAD, EOS)
    with torch.no_grad():
        ref = hf.model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_input_ids)
        got = base(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_input_ids)
        embeds = hf.model.shared(input_ids)
        ref_embeds = hf.model(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_input_ids)
        got_embeds = base(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_input_ids)
    torch.testing.assert_close(got.last_hidden_state, ref.last_hidden_state, **ATOL_KW)
    torch.testing.assert_close(got.encoder_last_hidden_state, ref.encoder_last_hidden_state, **ATOL_KW)
    torch.testing.assert_close(got_embeds.last_hidden_state, ref_embeds.last_hidden_state, **ATOL_KW)
    with pytest.raises(ValueError, match="decoder_input_ids"):
        base(input_ids=input_ids, attention_mask=mask)  # M2M100 does not denoise: no default decoder input


def test_our_save_loads_in_transformers_with_identical_outputs(checkpoints, tmp_path):
    _, path = checkpoints["nllb"]
    ours = AutoModelForSeq2SeqLM.from_pretrained(path)
    ours.save_pretrained(tmp_path)
    hf, info = transformers.M2M100ForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "m2m_100" and saved["architectures"] == ["M2M100ForConditionalGeneration"]
    input_ids, mask, labels = _batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=input_ids, attention_mask=mask, labels=labels).logits,
                                   hf.eval()(input_ids=input_ids, attention_mask=mask, labels=labels).logits,
                                   **ATOL_KW)
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is ours_m2m.M2M100Config and config.tokenizer_class == "NllbTokenizer"


def test_left_padded_decoder_step_matches_row_alone(checkpoints):
    _, path = checkpoints["m2m100"]
    ours = AutoModelForSeq2SeqLM.from_pretrained(path)
    assert ours._supports_left_padded_decoder and ours._decoder_position_ids_kwarg == "decoder_position_ids"
    left_padded_step_matches_row_alone(ours, "decoder_position_ids", VOCAB, VOCAB)


GENERATE_SETTINGS = {
    "greedy": dict(max_new_tokens=12),
    "greedy-forced-bos-eos-list": dict(max_new_tokens=12, forced_bos_token_id=LANGUAGE_TOKEN, eos_token_id=EOS_LIST,
                                       no_repeat_ngram_size=3),
    "beam4-nrs2": dict(num_beams=4, max_new_tokens=10, num_return_sequences=2, length_penalty=1.5,
                       eos_token_id=EOS_LIST),
    "beam3-forced-bos": dict(num_beams=3, max_new_tokens=10, forced_bos_token_id=LANGUAGE_TOKEN, early_stopping=True),
}


@pytest.mark.parametrize("name", ["m2m100", "nllb"])
def test_generate_is_token_identical(checkpoints, name):
    hf, path = checkpoints[name]
    ours = AutoModelForSeq2SeqLM.from_pretrained(path)
    input_ids, mask, _ = _batch()
    for setting, kwargs in GENERATE_SETTINGS.items():
        expected = hf.generate(input_ids, attention_mask=mask, **kwargs)
        got = ours.generate(input_ids, attention_mask=mask, **kwargs)
        assert torch.equal(got, expected), f"{name} {setting}:\n{got}\n!=\n{expected}"
        if "forced_bos_token_id" in kwargs:
            assert bool((got[:, 1] == LANGUAGE_TOKEN).all())
    for kwargs in (dict(do_sample=True, max_new_tokens=12, eos_token_id=EOS_LIST),
                   dict(do_sample=True, top_k=10, top_p=0.9, temperature=0.8, num_return_sequences=2,
                        max_new_tokens=10, forced_bos_token_id=LANGUAGE_TOKEN)):
        torch.manual_seed(7)
        expected = hf.generate(input_ids, attention_mask=mask, **kwargs)
        torch.manual_seed(7)
        got = ours.generate(input_ids, attention_mask=mask, **kwargs)
        assert torch.equal(got, expected), f"{name} {kwargs}:\n{got}\n!=\n{expected}"


def _stream_inputs(n=11, seed=0):
    rng = random.Random(seed)
    return [(f"doc-{i}", [rng.randrange(3, VOCAB - 2) for _ in range(rng.randrange(1, 12))] + [EOS])
            for i in range(n)]


@pytest.mark.parametrize("refill", [True, False])
def test_stream_generate_equals_generate_per_row(checkpoints, refill):
    _, path = checkpoints["nllb"]
    ours = AutoModelForSeq2SeqLM.from_pretrained(path)
    inputs = _stream_inputs()
    for settings in (
        dict(max_new_tokens=12, eos_token_id=EOS_LIST, forced_bos_token_id=LANGUAGE_TOKEN, no_repeat_ngram_size=1),
        dict(max_new_tokens=10, eos_token_id=EOS_LIST, do_sample=True, top_k=12, num_return_sequences=2),
        dict(max_new_tokens=8, eos_token_id=EOS_LIST, num_beams=3, forced_bos_token_id=LANGUAGE_TOKEN),
    ):
        got = dict(stream_generate(ours, iter(inputs), max_batch_size=4, max_batch_tokens=40, seed=50, refill=refill,
                                   **settings))
        assert sorted(got) == sorted(k for k, _ in inputs)
        lengths = set()
        for index, (key, ids) in enumerate(inputs):
            if settings.get("do_sample"):
                torch.manual_seed(50 + index)
            rows = [_cut_after_eos(r, EOS_LIST, 1) for r in ours.generate(torch.tensor([ids]), **settings).tolist()]
            value = got[key] if settings.get("num_return_sequences", 1) > 1 else [got[key]]
            assert value == rows, f"{settings} {key}: {value} != {rows}"
            lengths.update(len(v) for v in value)
        if settings.get("num_beams", 1) == 1:
            assert len(lengths) > 1  # rows finished at different steps: slots were freed (and refilled)


class _IdTokenizer:
    """Decodes token ids to 't<id>' words: the test feeds token ids, so no vocabulary is involved."""

    all_special_ids = [0, PAD, EOS, LANGUAGE_TOKEN]

    def batch_decode(self, token_lists, skip_special_tokens=True):
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [" ".join(f"t{t}" for t in ids if t not in skip) for ids in token_lists]


def test_generate_operator_matches_transformers(checkpoints):
    hf, path = checkpoints["nllb"]
    settings = dict(max_new_tokens=10, forced_bos_token_id=LANGUAGE_TOKEN, eos_token_id=EOS_LIST, no_repeat_ngram_size=1)
    op = GenerateOperator(model=AutoModelForSeq2SeqLM.from_pretrained(path), tokenizer=_IdTokenizer(),
                          generation=settings, max_batch_size=3)
    assert op.stream_generate is stream_generate  # the continuous-batching path
    inputs = [ids for _, ids in _stream_inputs(7, seed=2)]
    out = op(pa.table({"id": list(range(len(inputs))), "input_ids": inputs, ERROR_COLUMN: [None] * len(inputs)}))
    tokenizer = _IdTokenizer()
    for i, ids in enumerate(inputs):
        expected = _cut_after_eos(hf.generate(torch.tensor([ids]), **settings)[0].tolist(), EOS_LIST, 1)
        assert out.column("generated_text")[i].as_py() == tokenizer.batch_decode([expected])[0]
        assert out.column("generated_tokens")[i].as_py() == sum(t not in tokenizer.all_special_ids for t in expected)
        # seq2seq rows: the decoder start token is not generated; an end token means "stop"
        assert out.column("finish_reason")[i].as_py() == ("stop" if set(expected[1:]) & set(EOS_LIST) else "length")
        assert out.column("num_generated_tokens")[i].as_py() == len(expected) - 1
        assert out.column(ERROR_COLUMN)[i].as_py() is None


def test_too_long_input_is_refused_with_a_clear_error(checkpoints):
    _, path = checkpoints["m2m100"]
    ours = AutoModelForSeq2SeqLM.from_pretrained(path)
    with pytest.raises(ValueError, match="max_position_embeddings=40"):
        ours(input_ids=torch.full((1, 41), 5), decoder_input_ids=torch.tensor([[EOS]]))
