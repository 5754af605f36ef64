"""Generation: GenerationConfig, logits processors, generate() and stream_generate() against transformers.

Tiny random checkpoints of every encoder-decoder family are built and saved by transformers 4.57.6,
loaded by ours, and both generate from the same padded batch: the token ids must be identical
(greedy, beam search in several settings, seeded sampling). Rows are made to stop at different
steps (lists of eos ids) so that finished rows / inputs leaving the batch is exercised.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import transformers
from transformers.generation import logits_process as hf_lp

from rayformers.models import AutoModelForSeq2SeqLM
from rayformers.models.generation import GenerationConfig, stream_generate
from rayformers.models.generation import logits_process as ours_lp
from rayformers.models.generation.continuous import _cut_after_eos

transformers.logging.set_verbosity_error()

VOCAB = 99
EOS_LIST = [2, 10, 11, 12, 13, 14, 15, 16]  # several eos ids: rows stop at different steps


def _families():
    bart_like = dict(vocab_size=VOCAB, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, max_position_embeddings=64,
                     init_std=0.3)
    return {
        "bart": (transformers.BartForConditionalGeneration, transformers.BartConfig(
            **bart_like, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
            forced_eos_token_id=2)),
        "mbart": (transformers.MBartForConditionalGeneration, transformers.MBartConfig(
            **bart_like, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
            scale_embedding=True)),
        "marian": (transformers.MarianMTModel, transformers.MarianConfig(
            **bart_like, pad_token_id=98, eos_token_id=0, decoder_start_token_id=98, bad_words_ids=[[98]])),
        "pegasus": (transformers.PegasusForConditionalGeneration, transformers.PegasusConfig(
            **bart_like, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)),
        "t5": (transformers.T5ForConditionalGeneration, transformers.T5Config(
            vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=24, num_layers=2, num_heads=2, relative_attention_num_buckets=8,
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, initializer_factor=4.0)),
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> (transformers model, our model loaded from its checkpoint)."""
    models = {}
    for name, (cls, config) in _families().items():
        torch.manual_seed(0)
        hf = cls(config).eval()
        path = tmp_path_factory.mktemp(name)
        hf.save_pretrained(path)
        models[name] = (hf, AutoModelForSeq2SeqLM.from_pretrained(path))
    return models


def _batch(pad_id: int, rows: int = 4, width: int = 9):
    g = torch.Generator().manual_seed(5)
    input_ids = torch.randint(17, VOCAB - 2, (rows, width), generator=g)
    mask = torch.ones_like(input_ids)
    for row, length in enumerate([width, 6, 3, width - 1][:rows]):
        mask[row, length:] = 0
    input_ids[mask == 0] = pad_id
    return input_ids, mask


SEARCH_SETTINGS = {
    "greedy": dict(max_new_tokens=12),
    "greedy-eos-list-ngram-penalty": dict(max_new_tokens=14, eos_token_id=EOS_LIST, no_repeat_ngram_size=3,
                                          repetition_penalty=1.3),
    "greedy-min-forced": dict(max_new_tokens=10, min_length=8, forced_bos_token_id=5, forced_eos_token_id=6),
    "beam4-lp2-nrs2": dict(num_beams=4, max_new_tokens=10, length_penalty=2.0, num_return_sequences=2,
                           eos_token_id=EOS_LIST),
    "beam3-ngram-min-early": dict(num_beams=3, max_new_tokens=12, no_repeat_ngram_size=3, min_length=6,
                                  early_stopping=True, eos_token_id=EOS_LIST),
    "beam3-never-lp05": dict(num_beams=3, max_new_tokens=10, early_stopping="never", length_penalty=0.5,
                             eos_token_id=EOS_LIST),
    "beam4-neg-lp-nrs4": dict(num_beams=4, max_new_tokens=9, length_penalty=-0.5, num_return_sequences=4,
                              eos_token_id=EOS_LIST),
    "beam2-forced-bos-eos": dict(num_beams=2, max_new_tokens=8, forced_bos_token_id=5, forced_eos_token_id=[6, 7]),
    "beam3-bad-words-rep": dict(num_beams=3, max_new_tokens=8, bad_words_ids=[[20], [21, 22]], repetition_penalty=1.5,
                                eos_token_id=EOS_LIST),
}


# Every setting on BART and T5; the variants of the BART family (pre-norm, sinusoidal positions, scaled
# embeddings, Marian's bad_words_ids in config.json) get a representative subset to keep the file fast.
SUBSET = ["greedy-eos-list-ngram-penalty", "beam4-lp2-nrs2", "beam3-ngram-min-early", "beam2-forced-bos-eos"]


@pytest.mark.parametrize("family", list(_families()))
def test_generate_matches_transformers(checkpoints, family):
    hf, ours = checkpoints[family]
    input_ids, mask = _batch(hf.config.pad_token_id)
    names = list(SEARCH_SETTINGS) if family in ("bart", "t5") else SUBSET
    for name in names:
        settings = SEARCH_SETTINGS[name]
        expected = hf.generate(input_ids, attention_mask=mask, **settings)
        got = ours.generate(input_ids, attention_mask=mask, **settings)
        assert torch.equal(got, expected), f"{family} {name}:\n{got}\n!=\n{expected}"


def test_rows_really_stop_at_different_steps(checkpoints):
    """The settings above exercise finished rows leaving the batch (else the test proves less)."""
    hf, ours = checkpoints["bart"]
    input_ids, mask = _batch(1)
    out = ours.generate(input_ids, attention_mask=mask, **SEARCH_SETTINGS["greedy-eos-list-ngram-penalty"])
    lengths = {len(_cut_after_eos(row, EOS_LIST, 1)) for row in out.tolist()}
    assert len(lengths) > 1, out
    assert (out == 1).any(), "finished rows are padded with pad_token_id"


def test_generate_defaults_and_attention_mask_inference(checkpoints):
    hf, ours = checkpoints["bart"]
    input_ids, mask = _batch(1)
    # no attention_mask: both infer it from pad_token_id; default max_length (20) + model defaults
    assert torch.equal(ours.generate(input_ids), hf.generate(input_ids))
    start = torch.full((4, 1), 2)
    prompt = torch.cat([start, torch.tensor([[30], [31], [32], [33]])], dim=1)
    assert torch.equal(
        ours.generate(input_ids, attention_mask=mask, decoder_input_ids=prompt[:, 1:], max_new_tokens=5),
        hf.generate(input_ids, attention_mask=mask, decoder_input_ids=prompt[:, 1:], max_new_tokens=5),
    )


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_sampling_is_seeded_and_matches_transformers(checkpoints, family):
    hf, ours = checkpoints[family]
    input_ids, mask = _batch(hf.config.pad_token_id)
    for settings in (
        dict(do_sample=True, max_new_tokens=12, eos_token_id=EOS_LIST),
        dict(do_sample=True, top_k=8, temperature=0.7, top_p=0.9, num_return_sequences=3, max_new_tokens=10),
        dict(do_sample=True, num_beams=3, top_k=20, max_new_tokens=8, eos_token_id=EOS_LIST),
    ):
        torch.manual_seed(11)
        first = ours.generate(input_ids, attention_mask=mask, **settings)
        torch.manual_seed(11)
        again = ours.generate(input_ids, attention_mask=mask, **settings)
        torch.manual_seed(11)
        reference = hf.generate(input_ids, attention_mask=mask, **settings)
        assert torch.equal(first, again)
        assert torch.equal(first, reference), f"{settings}:\n{first}\n!=\n{reference}"
    torch.manual_seed(12)
    other = ours.generate(input_ids, attention_mask=mask, do_sample=True, max_new_tokens=12)
    torch.manual_seed(11)
    assert not torch.equal(other, ours.generate(input_ids, attention_mask=mask, do_sample=True, max_new_tokens=12))


def test_encoder_decoder_model_generate_matches_transformers(tmp_path):
    from rayformers.models.encoder_decoder import EncoderDecoderModel

    bert = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                max_position_embeddings=64, initializer_range=0.3)
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**bert)).save_pretrained(tmp_path / "enc")
    transformers.BertForMaskedLM(transformers.BertConfig(**bert)).save_pretrained(tmp_path / "dec")
    hf = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(str(tmp_path / "enc"), str(tmp_path / "dec"))
    hf.config.decoder_start_token_id, hf.config.pad_token_id = 3, 0
    hf.generation_config.decoder_start_token_id, hf.generation_config.pad_token_id = 3, 0
    hf.eval()
    ours = EncoderDecoderModel.from_encoder_decoder_pretrained(tmp_path / "enc", tmp_path / "dec",
                                                               decoder_start_token_id=3, pad_token_id=0)
    ours.load_state_dict(hf.state_dict())
    input_ids, mask = _batch(0)
    for settings in (dict(max_new_tokens=8, eos_token_id=EOS_LIST), dict(num_beams=3, max_new_tokens=8, eos_token_id=EOS_LIST)):
        assert torch.equal(ours.generate(input_ids, attention_mask=mask, **settings),
                           hf.generate(input_ids, attention_mask=mask, **settings)), settings
    # continuous batching with slot refill: the BERT decoder takes per-row positions
    assert ours._supports_left_padded_decoder
    inputs = _stream_inputs(9, seed=4)
    settings = dict(max_new_tokens=10, eos_token_id=EOS_LIST, no_repeat_ngram_size=1)
    streamed = dict(stream_generate(ours, inputs, max_batch_size=3, **settings))
    for key, ids in inputs:
        expected = _cut_after_eos(ours.generate(torch.tensor([ids]), **settings)[0].tolist(), EOS_LIST, 1)
        assert streamed[key] == expected, key
    assert len({len(v) for v in streamed.values()}) > 1


# ---------------------------------------------------------------------------------- stream_generate


def _refill_capable(model):
    """BART-family models take per-row decoder positions through `cache_position` ([rows, new])."""
    if getattr(model, "_supports_left_padded_decoder", False):
        return model
    model._supports_left_padded_decoder = True
    model._decoder_position_ids_kwarg = "cache_position"
    return model


def _stream_inputs(n=19, seed=0):
    rng = random.Random(seed)
    return [(f"doc-{i}", [rng.randrange(17, VOCAB - 2) for _ in range(rng.randrange(1, 14))]) for i in range(n)]


@pytest.mark.parametrize("family,refill", [("bart", True), ("bart", False), ("t5", True)])
def test_stream_generate_equals_generate_per_row(checkpoints, family, refill):
    _, ours = checkpoints[family]
    if refill:
        _refill_capable(ours)
    inputs = _stream_inputs(13)
    all_settings = [
        dict(max_new_tokens=12, eos_token_id=EOS_LIST, no_repeat_ngram_size=2, repetition_penalty=1.4,
             min_new_tokens=2),
        dict(max_new_tokens=10, eos_token_id=EOS_LIST, do_sample=True, top_k=12, num_return_sequences=2),
    ]
    if family == "bart" and refill:
        all_settings.append(dict(max_new_tokens=8, eos_token_id=EOS_LIST, num_beams=3))  # batched-generate fallback
    for settings in all_settings:
        out = list(stream_generate(ours, iter(inputs), max_batch_size=5, max_batch_tokens=60, seed=100,
                                   refill=refill, **settings))
        assert sorted(k for k, _ in out) == sorted(k for k, _ in inputs), "every key exactly once"
        got = dict(out)
        lengths = set()
        for index, (key, ids) in enumerate(inputs):
            if settings.get("do_sample"):
                torch.manual_seed(100 + index)
            rows = ours.generate(torch.tensor([ids]), **settings).tolist()
            expected = [_cut_after_eos(r, EOS_LIST, 1) for r in rows]
            value = got[key] if settings.get("num_return_sequences", 1) > 1 else [got[key]]
            assert value == expected, f"{family} {settings} {key}: {value} != {expected}"
            lengths.update(len(v) for v in value)
        if settings.get("num_beams", 1) == 1:
            assert len(lengths) > 1  # rows finished at different steps, so slots were freed / refilled


def test_stream_generate_yields_as_rows_finish(checkpoints):
    _, ours = checkpoints["t5"]
    inputs = _stream_inputs(12, seed=3)
    stream = stream_generate(ours, iter(inputs), max_batch_size=12, max_new_tokens=15, eos_token_id=EOS_LIST)
    order = [len(ids) for _, ids in stream]
    assert order[0] < max(order), "a short output is yielded before the long ones finish"


# ---------------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors(checkpoints):
    _, ours = checkpoints["bart"]
    with pytest.raises(ValueError, match="input_ids is empty"):
        ours.generate(torch.zeros((2, 0), dtype=torch.long))
    with pytest.raises(ValueError, match="`max_new_tokens` must be a positive integer"):
        ours.generate(torch.tensor([[5, 6]]), max_new_tokens=0)
    with pytest.raises(ValueError, match=r"input too long: rows \[1\].*max_position_embeddings=64"):
        ids = torch.full((2, 70), 5)
        mask = torch.ones_like(ids)
        mask[0, 60:] = 0
        ours.generate(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="max_position_embeddings=64.*Lower max_new_tokens"):
        ours.generate(torch.tensor([[5, 6]]), max_new_tokens=100)
    with pytest.raises(ValueError, match=r"`eos_token_id`=\[2, 150\] is outside the model's vocabulary \[0, 99\)"):
        ours.generate(torch.tensor([[5, 6]]), eos_token_id=[2, 150])
    with pytest.raises(ValueError, match="`pad_token_id` must be a non-negative integer"):
        ours.generate(torch.tensor([[5, 6]]), pad_token_id=-1)
    with pytest.raises(ValueError, match=r"rows \[1\] of the batch have no tokens"):
        ours.generate(torch.tensor([[5, 6], [1, 1]]), attention_mask=torch.tensor([[1, 1], [0, 0]]))
    with pytest.raises(ValueError, match="num_return_sequences.*smaller or equal to `num_beams`"):
        ours.generate(torch.tensor([[5, 6]]), num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="not used by the model or generate: \\['decoder_attentoin_mask'\\]"):
        ours.generate(torch.tensor([[5, 6]]), decoder_attentoin_mask=None)
    with pytest.raises(NotImplementedError, match="typical_p=0.5"):
        ours.generate(torch.tensor([[5, 6]]), do_sample=True, typical_p=0.5)
    with pytest.raises(ValueError, match="`decoder_start_token_id` or `bos_token_id` has to be defined"):
        ours.generate(torch.tensor([[5, 6]]), generation_config=GenerationConfig(eos_token_id=2),
                      use_model_defaults=False, decoder_start_token_id=None, bos_token_id=None)
    with pytest.raises(ValueError, match="temperature.*strictly positive"):
        ours.generate(torch.tensor([[5, 6]]), do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="input 'b' is empty"):
        list(stream_generate(ours, [("a", [5, 6]), ("b", [])], max_new_tokens=3))
    with pytest.raises(ValueError, match="input 'a' has 70 tokens, more than max_position_embeddings=64"):
        list(stream_generate(ours, [("a", [5] * 70)], max_new_tokens=3))
    with pytest.raises(ValueError, match=r"input 'a' holds token ids \[120\] outside the vocabulary"):
        list(stream_generate(ours, [("a", [5, 120])], max_new_tokens=3))


def test_models_without_the_decoder_only_contract_are_refused_clearly():
    from rayformers.models.generation import GenerationMixin

    class Decoder(GenerationMixin):
        config = transformers.BertConfig(is_decoder=True)

    with pytest.raises(NotImplementedError, match="does not declare the decoder-only generation contract"):
        Decoder().generate(torch.tensor([[1, 2]]))


# ---------------------------------------------------------------------------------- GenerationConfig


def _without_metadata(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("transformers_version", "_from_model_config", "_commit_hash",
                                                      "_original_object_hash")}


def test_generation_config_fields_and_defaults_match_transformers():
    ours = GenerationConfig().to_dict()
    reference = transformers.GenerationConfig().to_dict()
    assert _without_metadata(ours) == _without_metadata(reference)


def test_generation_config_round_trips_with_transformers(tmp_path):
    ours = GenerationConfig(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3, eos_token_id=[2, 3],
                            max_new_tokens=30, early_stopping="never", forced_bos_token_id=0, custom_field=7)
    ours.save_pretrained(tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "generation_config.json").read_text())
    assert written["num_beams"] == 4 and "top_k" not in written and written["custom_field"] == 7
    reference = transformers.GenerationConfig.from_pretrained(tmp_path / "ours")
    assert (reference.num_beams, reference.eos_token_id, reference.early_stopping, reference.custom_field) == \
        (4, [2, 3], "never", 7)
    reference.top_p = 0.5
    reference.do_sample = True
    reference.save_pretrained(tmp_path / "hf")
    loaded = GenerationConfig.from_pretrained(tmp_path / "hf")
    assert _without_metadata(loaded.to_dict()) == _without_metadata(reference.to_dict())
    config, unused = GenerationConfig.from_pretrained(tmp_path / "hf", top_k=3, foo=1, return_unused_kwargs=True)
    assert config.top_k == 3 and config.foo == 1 and unused == {}  # as the reference: unknown keys become fields
    assert GenerationConfig(top_k=3).update(top_k=4, attention_mask=None) == {"attention_mask": None}


def test_generation_config_validation_errors(tmp_path):
    with pytest.raises(ValueError, match="`max_new_tokens` must be a positive integer"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="`early_stopping` must be True, False or 'never'"):
        GenerationConfig(early_stopping="sometimes")
    with pytest.raises(ValueError, match="Greedy methods without beam search do not support `num_return_sequences`"):
        GenerationConfig(num_return_sequences=2)
    with pytest.raises(ValueError, match="smaller or equal to `num_beams`"):
        GenerationConfig(num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="`bad_words_ids` has to be a non-empty list"):
        GenerationConfig(bad_words_ids=[5])
    with pytest.raises(ValueError, match="`forced_bos_token_id` must be a single token id"):
        GenerationConfig(forced_bos_token_id=[1, 2]).validate_for_generate(10)
    with pytest.raises(ValueError, match="Fix these issues to save"):
        GenerationConfig(temperature=0.5).save_pretrained(tmp_path)  # would be ignored without do_sample
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "generation_config.json").write_text("{not json")
    with pytest.raises(OSError, match="not valid JSON"):
        GenerationConfig.from_pretrained(tmp_path / "bad")


def test_from_model_config_matches_transformers():
    kwargs = dict(vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                  decoder_attention_heads=2, num_beams=4, max_length=142, min_length=56, length_penalty=2.0,
                  no_repeat_ngram_size=3, early_stopping=True, forced_bos_token_id=0, forced_eos_token_id=2)
    from rayformers.models.bart import BartConfig

    ours = GenerationConfig.from_model_config(BartConfig(**kwargs))
    reference = transformers.GenerationConfig.from_model_config(transformers.BartConfig(**kwargs))
    assert _without_metadata(ours.to_dict()) == _without_metadata(reference.to_dict())
    assert ours.decoder_start_token_id == 2 and ours.num_beams == 4 and ours._from_model_config


def test_model_loads_generation_config_json_or_falls_back(tmp_path):
    kwargs = dict(vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                  decoder_attention_heads=2, encoder_ffn_dim=8, decoder_ffn_dim=8, max_position_embeddings=32)
    hf = transformers.BartForConditionalGeneration(transformers.BartConfig(**kwargs))
    hf.generation_config.num_beams = 3
    hf.generation_config.max_new_tokens = 7
    hf.save_pretrained(tmp_path / "with")
    ours = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "with")
    assert (ours.generation_config.num_beams, ours.generation_config.max_new_tokens) == (3, 7)
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(ours.generate(ids), hf.eval().generate(ids))

    (tmp_path / "with" / "generation_config.json").unlink()
    legacy = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "with")
    assert legacy.generation_config.num_beams == 1 and legacy.generation_config.decoder_start_token_id == 2
    legacy.generation_config.length_penalty = 1.5
    legacy.generation_config.num_beams = 2
    legacy.save_pretrained(tmp_path / "ours")
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "ours").length_penalty == 1.5
    assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "ours").generation_config.num_beams == 2


# ---------------------------------------------------------------------------------- logits processors


def _ids_and_scores(rows=6, width=9, vocab=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 6, (rows, width), generator=g)  # few distinct tokens: n-grams repeat
    scores = torch.randn(rows, vocab, generator=g)
    scores[0, 3] = -2.5
    return ids, scores


PROCESSOR_PAIRS = [
    (lambda: ours_lp.RepetitionPenalty(1.7), lambda: hf_lp.RepetitionPenaltyLogitsProcessor(1.7)),
    (lambda: ours_lp.NoRepeatNGram(1), lambda: hf_lp.NoRepeatNGramLogitsProcessor(1)),
    (lambda: ours_lp.NoRepeatNGram(2), lambda: hf_lp.NoRepeatNGramLogitsProcessor(2)),
    (lambda: ours_lp.NoRepeatNGram(3), lambda: hf_lp.NoRepeatNGramLogitsProcessor(3)),
    (lambda: ours_lp.NoRepeatNGram(12), lambda: hf_lp.NoRepeatNGramLogitsProcessor(12)),
    (lambda: ours_lp.NoBadWords([[4], [1, 2], [3, 3, 5], [2]], [2]),
     lambda: hf_lp.NoBadWordsLogitsProcessor([[4], [1, 2], [3, 3, 5], [2]], [2])),
    (lambda: ours_lp.MinLength(12, [2, 7]), lambda: hf_lp.MinLengthLogitsProcessor(12, [2, 7])),
    (lambda: ours_lp.MinLength(5, [2, 7]), lambda: hf_lp.MinLengthLogitsProcessor(5, [2, 7])),
    (lambda: ours_lp.MinNewTokens(2, 9, [3]), lambda: hf_lp.MinNewTokensLengthLogitsProcessor(2, 9, [3])),
    (lambda: ours_lp.ForcedToken(1, 4), lambda: hf_lp.ForcedBOSTokenLogitsProcessor(4)),
    (lambda: ours_lp.ForcedToken(9, [5, 6]), lambda: hf_lp.ForcedEOSTokenLogitsProcessor(10, [5, 6])),
    (lambda: ours_lp.Temperature(0.6), lambda: hf_lp.TemperatureLogitsWarper(0.6)),
    (lambda: ours_lp.TopK(4, 1), lambda: hf_lp.TopKLogitsWarper(4, min_tokens_to_keep=1)),
    (lambda: ours_lp.TopK(2, 3), lambda: hf_lp.TopKLogitsWarper(2, min_tokens_to_keep=3)),
    (lambda: ours_lp.TopP(0.7, 1), lambda: hf_lp.TopPLogitsWarper(0.7, min_tokens_to_keep=1)),
    (lambda: ours_lp.TopP(0.1, 3), lambda: hf_lp.TopPLogitsWarper(0.1, min_tokens_to_keep=3)),
]


@pytest.mark.parametrize("pair", range(len(PROCESSOR_PAIRS)))
def test_processor_matches_transformers(pair):
    make_ours, make_reference = PROCESSOR_PAIRS[pair]
    for seed, width in [(0, 9), (1, 1), (2, 2), (3, 13)]:
        ids, scores = _ids_and_scores(width=width, seed=seed)
        expected = make_reference()(ids, scores.clone())
        got = make_ours()(ids, scores.clone())
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("pair", range(len(PROCESSOR_PAIRS)))
def test_processor_on_left_padded_rows_matches_unpadded(pair):
    """Continuous batching pads shorter rows on the left; each row must be processed as if alone."""
    make_ours, make_reference = PROCESSOR_PAIRS[pair]
    ids, scores = _ids_and_scores(rows=5, width=11, seed=7)
    lengths = torch.tensor([11, 1, 4, 9, 2])
    padded = ids.clone()
    for row, length in enumerate(lengths.tolist()):
        padded[row, : 11 - length] = ids[row, 11 - length]  # padding repeats the row's first (start) token
    got = make_ours()(padded, scores.clone(), lengths)
    for row, length in enumerate(lengths.tolist()):
        alone = make_reference()(padded[row:row + 1, 11 - length:], scores[row:row + 1].clone())
        torch.testing.assert_close(got[row:row + 1], alone, rtol=0, atol=0)
