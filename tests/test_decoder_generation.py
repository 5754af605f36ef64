"""Decoder-only generation: the causal-LM heads of BERT, RoBERTa, CamemBERT, XLM-R and MEGA.

BERT family: tiny random checkpoints built and saved by transformers 4.57.6, loaded by ours; both
generate from the same LEFT-padded prompt batch and the token ids must be identical (greedy, beam
search, sampling, beam sampling, the logits processors). transformers 4.57.6's MegaForCausalLM has
no generate(): its reference is greedy decoding by repeated full forward passes of transformers'
model on each prompt alone, and beam search is checked against an exhaustive search on a tiny
vocabulary (with enough beams, beam search keeps every hypothesis).
"""

from __future__ import annotations

import logging
import random

import pytest
import torch
import transformers

from rayformers.models import AutoModelForCausalLM
from rayformers.models.bert import BertLMHeadModel, RobertaForCausalLM
from rayformers.models.generation import stream_generate
from rayformers.models.generation.continuous import _cut_after_eos
from rayformers.models.generation.continuous_causal import _continuation
from rayformers.models.mega import MegaForCausalLM

from model_test_utils import single_thread  # noqa: F401  (autouse: one thread per test module)

transformers.logging.set_verbosity_error()

VOCAB = 60
PAD = 1
EOS_LIST = [2, 10, 11, 12, 13, 14, 15]  # several eos ids: rows stop at different steps


def _bert_like(config_class, **extra):
    return config_class(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=64, is_decoder=True, pad_token_id=PAD,
                        bos_token_id=0, eos_token_id=2, initializer_range=0.5, **extra)


def _heads():
    return {
        "bert": (transformers.BertLMHeadModel, _bert_like(transformers.BertConfig)),
        "roberta": (transformers.RobertaForCausalLM, _bert_like(transformers.RobertaConfig)),
        "camembert": (transformers.CamembertForCausalLM, _bert_like(transformers.CamembertConfig)),
        "xlm-roberta": (transformers.XLMRobertaForCausalLM, _bert_like(transformers.XLMRobertaConfig)),
    }


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """name -> (transformers model, our model loaded from its checkpoint)."""
    models = {}
    for name, (cls, config) in _heads().items():
        torch.manual_seed(0)
        hf = cls(config).eval()
        path = tmp_path_factory.mktemp(name)
        hf.save_pretrained(path)
        models[name] = (hf, AutoModelForCausalLM.from_pretrained(path))
    return models


def _prompts(rows=4, width=7, lengths=(7, 4, 2, 6), seed=5):
    """A LEFT-padded prompt batch (padding = PAD, mask 0)."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(17, VOCAB, (rows, width), generator=g)
    mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths[:rows]):
        mask[row, width - length:] = 1
    input_ids[mask == 0] = PAD
    return input_ids, mask


SETTINGS = {
    "greedy": dict(max_new_tokens=12),
    "greedy-eos-list-ngram-penalty": dict(max_new_tokens=14, eos_token_id=EOS_LIST, no_repeat_ngram_size=3,
                                          repetition_penalty=1.3),
    "greedy-min-new-forced-eos": dict(max_new_tokens=10, min_new_tokens=4, forced_eos_token_id=6,
                                      eos_token_id=EOS_LIST),
    "greedy-max-length-min-length": dict(max_length=15, min_length=11, eos_token_id=EOS_LIST),
    "beam4-lp2-nrs2": dict(num_beams=4, max_new_tokens=10, length_penalty=2.0, num_return_sequences=2,
                           eos_token_id=EOS_LIST),
    "beam3-ngram-min-early": dict(num_beams=3, max_new_tokens=12, no_repeat_ngram_size=3, min_new_tokens=5,
                                  early_stopping=True, eos_token_id=EOS_LIST),
    "beam3-never-lp05": dict(num_beams=3, max_new_tokens=10, early_stopping="never", length_penalty=0.5,
                             eos_token_id=EOS_LIST),
    "beam3-bad-words-rep": dict(num_beams=3, max_new_tokens=8, bad_words_ids=[[20], [21, 22]],
                                repetition_penalty=1.5, eos_token_id=EOS_LIST),
    "sample-topk-temp-nrs2": dict(do_sample=True, max_new_tokens=10, top_k=12, temperature=0.7,
                                  num_return_sequences=2, eos_token_id=EOS_LIST),
    "sample-topp-rep": dict(do_sample=True, max_new_tokens=10, top_p=0.8, top_k=0, repetition_penalty=1.2,
                            eos_token_id=EOS_LIST),
    "beam-sample3-nrs2": dict(do_sample=True, num_beams=3, max_new_tokens=8, top_k=20, num_return_sequences=2,
                              eos_token_id=EOS_LIST),
}
# Every setting on BERT and RoBERTa (absolute vs padding-offset positions); CamemBERT and XLM-R get a
# representative subset to keep the file fast.
SUBSET = ["greedy-eos-list-ngram-penalty", "beam4-lp2-nrs2", "sample-topk-temp-nrs2", "beam-sample3-nrs2"]


@pytest.mark.parametrize("name", list(_heads()))
def test_generate_matches_transformers_with_left_padding(heads, name):
    hf, ours = heads[name]
    input_ids, mask = _prompts()
    for setting in (list(SETTINGS) if name in ("bert", "roberta") else SUBSET):
        kwargs = SETTINGS[setting]
        torch.manual_seed(42)
        expected = hf.generate(input_ids, attention_mask=mask, **kwargs)
        torch.manual_seed(42)
        got = ours.generate(input_ids, attention_mask=mask, **kwargs)
        assert torch.equal(got, expected), f"{name} {setting}:\n{got}\n!=\n{expected}"


def test_rows_stop_at_different_steps_and_defaults_match(heads):
    hf, ours = heads["bert"]
    input_ids, mask = _prompts()
    out = ours.generate(input_ids, attention_mask=mask, **SETTINGS["greedy-eos-list-ngram-penalty"])
    lengths = {len(_cut_after_eos(row, EOS_LIST, input_ids.shape[1])) for row in out.tolist()}
    assert len(lengths) > 1, out  # finished rows left the batch at different steps
    # No attention mask: both infer it from the padding; default max_length (20 new tokens).
    assert torch.equal(ours.generate(input_ids), hf.generate(input_ids))
    # An unpadded single prompt.
    assert torch.equal(ours.generate(input_ids[:1], max_new_tokens=6), hf.generate(input_ids[:1], max_new_tokens=6))


def test_token_type_ids_extend_like_transformers(heads):
    """Generated tokens take the prompt's last token type (what `generate(**tokenizer(...))` passes)."""
    hf, ours = heads["bert"]
    input_ids, mask = _prompts()
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 4:] = 1
    token_type_ids[1, 5:] = 0
    for setting in ("greedy", "beam4-lp2-nrs2"):
        kwargs = SETTINGS[setting]
        expected = hf.generate(input_ids, attention_mask=mask, token_type_ids=token_type_ids, **kwargs)
        got = ours.generate(input_ids, attention_mask=mask, token_type_ids=token_type_ids, **kwargs)
        assert torch.equal(got, expected), setting
        assert not torch.equal(got, ours.generate(input_ids, attention_mask=mask, **kwargs))


def test_left_padded_row_equals_the_row_alone(heads):
    _, ours = heads["roberta"]
    input_ids, mask = _prompts()
    batch = ours.generate(input_ids, attention_mask=mask, max_new_tokens=8)
    for row in range(input_ids.shape[0]):
        alone = ours.generate(input_ids[row:row + 1, mask[row] == 1], max_new_tokens=8)
        assert batch[row, input_ids.shape[1]:].tolist() == alone[0, int(mask[row].sum()):].tolist(), row


@pytest.mark.parametrize("position_embedding_type", ["relative_key", "relative_key_query"])
def test_relative_position_decoders_equal_uncached_full_forward(position_embedding_type, tmp_path):
    """transformers 4.57.6 gives every prompt position the LAST position's relative distances when a
    cache is passed (its generate's prefill), so its generate differs from its own uncached forward
    there; ours computes the true distances and equals greedy by repeated uncached forward passes."""
    torch.manual_seed(0)
    hf = transformers.BertLMHeadModel(
        _bert_like(transformers.BertConfig, position_embedding_type=position_embedding_type)).eval()
    hf.save_pretrained(tmp_path)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    input_ids, mask = _prompts()
    out = ours.generate(input_ids, attention_mask=mask, max_new_tokens=8, eos_token_id=EOS_LIST)
    sequence, sequence_mask = input_ids, mask
    with torch.no_grad():
        for _ in range(8):
            positions = (sequence_mask.cumsum(-1) - 1).masked_fill(sequence_mask == 0, 1)
            logits = hf(input_ids=sequence, attention_mask=sequence_mask, position_ids=positions, use_cache=False).logits
            sequence = torch.cat([sequence, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            sequence_mask = torch.cat([sequence_mask, torch.ones_like(sequence_mask[:, :1])], dim=1)
    width = input_ids.shape[1]
    for row in range(input_ids.shape[0]):
        expected = _cut_after_eos(sequence[row].tolist(), EOS_LIST, width)
        assert out[row, :len(expected)].tolist() == expected, row


def test_left_pad_moves_right_padded_prompts_to_the_right_end(heads):
    """The pipeline's micro-batch fallback pads on the right; prompts are moved before generate."""
    from rayformers.models.generation.utils import left_pad

    input_ids, mask = _prompts()
    right_ids = torch.stack([torch.cat([r[m == 1], r[m == 0]]) for r, m in zip(input_ids, mask)])
    right_mask = mask.sort(dim=1, descending=True).values
    ids, moved_mask = left_pad(right_ids, right_mask)
    assert torch.equal(ids, input_ids) and torch.equal(moved_mask, mask)


def test_decoder_only_errors_are_clear(heads, tmp_path, caplog):
    _, ours = heads["bert"]
    input_ids, mask = _prompts()
    with pytest.raises(ValueError, match=r"7 tokens wide \(rows \[0\] have 7 prompt tokens\).*max_length.*counts "
                                         r"the prompt.*max_new_tokens"):
        ours.generate(input_ids, attention_mask=mask, max_length=7)
    with pytest.raises(ValueError, match=r"decoder-only: pass the prompt as input_ids"):
        ours.generate(input_ids, attention_mask=mask, decoder_input_ids=input_ids)
    with pytest.raises(ValueError, match="max_position_embeddings=64.*Lower max_new_tokens"):
        ours.generate(input_ids, attention_mask=mask, max_new_tokens=60)
    with pytest.raises(ValueError, match=r"rows \[1\] of the batch have no tokens"):
        ours.generate(input_ids[:2], attention_mask=torch.stack([mask[0], torch.zeros_like(mask[0])]))
    with caplog.at_level(logging.WARNING):
        ours.generate(input_ids.flip(1), attention_mask=mask.flip(1), max_new_tokens=2)
    assert "right-padding was detected" in caplog.text

    torch.manual_seed(0)
    transformers.BertLMHeadModel(_bert_like(transformers.BertConfig, )).save_pretrained(tmp_path)
    bidirectional = BertLMHeadModel.from_pretrained(tmp_path, is_decoder=False)
    with pytest.raises(ValueError, match="needs config.is_decoder=True"):
        bidirectional.generate(input_ids, max_new_tokens=2)


# ---------------------------------------------------------------------------------- MEGA

MEGA_TINY = dict(hidden_size=16, num_hidden_layers=2, intermediate_size=32, ema_projection_size=4,
                 shared_representation_size=8, nffn_hidden_size=24, max_positions=64, is_decoder=True,
                 bidirectional=False, pad_token_id=PAD, eos_token_id=2)
MEGA_VARIANTS = {
    "rotary-scalenorm": dict(),
    "simple-layernorm-nffn": dict(relative_positional_bias="simple", normalization_type="layernorm",
                                  use_normalized_ffn=True),
    "chunk1-rmsnorm": dict(use_chunking=True, chunk_size=1, normalization_type="rmsnorm"),
}


def _mega(tmp_path, vocab=VOCAB, **extra):
    torch.manual_seed(0)
    config = transformers.MegaConfig(vocab_size=vocab, **{**MEGA_TINY, **extra})
    hf = transformers.MegaForCausalLM(config).eval()
    for module in hf.modules():  # random init is nearly uniform; sharpen it so rows differ
        if isinstance(module, torch.nn.Embedding):
            module.weight.data.normal_(0, 1.0)
    hf.save_pretrained(tmp_path)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(ours, MegaForCausalLM)
    return hf, ours


def _full_forward_greedy(hf, prompt: list[int], max_new: int, eos: list[int]) -> list[int]:
    """The reference: greedy by repeated full forward passes of transformers' model (no cache)."""
    sequence = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(max_new):
            token = hf(input_ids=sequence).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, token], dim=1)
            if int(token) in eos:
                break
    return sequence[0, len(prompt):].tolist()


@pytest.mark.parametrize("variant", list(MEGA_VARIANTS))
def test_mega_greedy_equals_repeated_full_forward(variant, tmp_path):
    hf, ours = _mega(tmp_path, **MEGA_VARIANTS[variant])
    input_ids, mask = _prompts()
    out = ours.generate(input_ids, attention_mask=mask, max_new_tokens=10, eos_token_id=EOS_LIST)
    width = input_ids.shape[1]
    for row in range(input_ids.shape[0]):
        prompt = input_ids[row, mask[row] == 1].tolist()
        expected = _full_forward_greedy(hf, prompt, 10, EOS_LIST)
        assert out[row, width:width + len(expected)].tolist() == expected, (variant, row)
        assert (out[row, width + len(expected):] == PAD).all()  # finished rows are padded


def test_mega_greedy_with_processors_equals_full_forward(tmp_path):
    """Processors on an unpadded batch (their input then equals the reference's row alone)."""
    hf, ours = _mega(tmp_path)
    from transformers.generation import logits_process as hf_lp

    prompts = torch.randint(17, VOCAB, (2, 5), generator=torch.Generator().manual_seed(1))
    out = ours.generate(prompts, max_new_tokens=9, repetition_penalty=1.5, no_repeat_ngram_size=2)
    processors = hf_lp.LogitsProcessorList([hf_lp.RepetitionPenaltyLogitsProcessor(1.5),
                                            hf_lp.NoRepeatNGramLogitsProcessor(2)])
    sequence = prompts.clone()
    with torch.no_grad():
        for _ in range(9):
            scores = processors(sequence, hf(input_ids=sequence).logits[:, -1].float())
            sequence = torch.cat([sequence, scores.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, sequence)


def _exhaustive_best(hf, prompt: list[int], vocab: int, max_new: int, eos: int, count: int) -> list[list[int]]:
    """All continuations (eos ends one early), ranked by summed log-probability (length_penalty=0)."""
    finished: list[tuple[float, list[int]]] = []
    frontier: list[tuple[float, list[int]]] = [(0.0, [])]
    with torch.no_grad():
        for depth in range(max_new):
            batch = torch.tensor([prompt + tokens for _, tokens in frontier])
            log_probs = torch.log_softmax(hf(input_ids=batch).logits[:, -1].float(), dim=-1)
            grown = []
            for (score, tokens), row in zip(frontier, log_probs):
                for token in range(vocab):
                    item = (score + float(row[token]), tokens + [token])
                    (finished if token == eos or depth == max_new - 1 else grown).append(item)
            frontier = grown
    finished.sort(key=lambda item: -item[0])
    return [tokens for _, tokens in finished[:count]]


def test_mega_beam_search_equals_exhaustive_search(tmp_path):
    vocab, max_new, eos = 6, 3, 2
    hf, ours = _mega(tmp_path, vocab=vocab)
    input_ids = torch.tensor([[3, 4, 5, 0, 3], [1, 1, 4, 3, 5], [1, 1, 1, 5, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]])
    # 25 beams hold every unfinished 2-token prefix (5 * 5), so nothing is pruned.
    out = ours.generate(input_ids, attention_mask=mask, num_beams=25, num_return_sequences=3, max_new_tokens=max_new,
                        length_penalty=0.0, eos_token_id=eos, pad_token_id=PAD)
    width = input_ids.shape[1]
    for row in range(input_ids.shape[0]):
        expected = _exhaustive_best(hf, input_ids[row, mask[row] == 1].tolist(), vocab, max_new, eos, 3)
        got = [_cut_after_eos(seq, [eos], width)[width:] for seq in out[row * 3:(row + 1) * 3].tolist()]
        assert got == expected, row


def test_mega_refuses_what_it_cannot_decode_with_a_cache(tmp_path):
    input_ids, mask = _prompts()
    for extra, message in [(dict(use_chunking=True, chunk_size=2), "chunk_size=2"),
                           (dict(attention_activation="laplace"), "attention_activation='laplace'"),
                           (dict(truncation=4), "truncation=4")]:
        _, ours = _mega(tmp_path / message[:5], **extra)
        with pytest.raises(NotImplementedError, match=message):
            ours.generate(input_ids, attention_mask=mask, max_new_tokens=2)
    _, ours = _mega(tmp_path / "ok")
    with pytest.raises(ValueError, match=r"rows \[1, 2, 3\] are not left-padded"):
        ours.generate(input_ids.flip(1), attention_mask=mask.flip(1), max_new_tokens=2)


# ---------------------------------------------------------------------------------- stream_generate


def _stream_prompts(n=13, seed=0):
    rng = random.Random(seed)
    return [(f"doc-{i}", [rng.randrange(17, VOCAB) for _ in range(rng.randrange(1, 12))]) for i in range(n)]


STREAM_SETTINGS = [
    dict(max_new_tokens=12, eos_token_id=EOS_LIST, no_repeat_ngram_size=2, repetition_penalty=1.4, min_new_tokens=2),
    dict(max_new_tokens=10, eos_token_id=EOS_LIST, do_sample=True, top_k=12, num_return_sequences=2),
    dict(max_length=16, min_length=9, forced_eos_token_id=5, eos_token_id=EOS_LIST),  # limits include the prompt
    dict(max_new_tokens=8, eos_token_id=EOS_LIST, num_beams=3),  # batched generate per prompt length
]


def _assert_stream_equals_generate(model, inputs, settings, **stream_kwargs):
    out = list(stream_generate(model, iter(inputs), seed=100, **stream_kwargs, **settings))
    assert sorted(k for k, _ in out) == sorted(k for k, _ in inputs), "every key exactly once"
    got = dict(out)
    lengths = set()
    for index, (key, ids) in enumerate(inputs):
        if settings.get("do_sample"):
            torch.manual_seed(100 + index)
        rows = model.generate(torch.tensor([ids]), **settings).tolist()
        expected = [_continuation(row, len(ids), EOS_LIST) for row in rows]  # the prompt is not repeated
        value = got[key] if settings.get("num_return_sequences", 1) > 1 else [got[key]]
        assert value == expected, f"{settings} {key}: {value} != {expected}"
        lengths.update(len(v) for v in value)
    return lengths


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_stream_generate_yields_continuations_equal_to_generate(heads, name):
    _, ours = heads[name]
    inputs = _stream_prompts()
    for settings in STREAM_SETTINGS:
        lengths = _assert_stream_equals_generate(ours, inputs, settings, max_batch_size=5, max_batch_tokens=80)
        if not settings.get("do_sample") and settings.get("num_beams", 1) == 1:
            assert len(lengths) > 1  # rows finished at different steps: slots were freed and refilled


@pytest.mark.parametrize("variant", ["rotary-scalenorm", "chunk1-rmsnorm"])
def test_mega_stream_generate_equals_generate(variant, tmp_path):
    _, ours = _mega(tmp_path, **MEGA_VARIANTS[variant])
    lengths = _assert_stream_equals_generate(ours, _stream_prompts(), dict(max_new_tokens=10, eos_token_id=EOS_LIST),
                                             max_batch_size=5)
    if variant == "rotary-scalenorm":
        assert len(lengths) > 1


def test_stream_generate_names_prompts_that_leave_no_room(heads):
    _, ours = heads["bert"]
    with pytest.raises(ValueError, match=r"input 'long' \(9 prompt tokens\).*max_length"):
        list(stream_generate(ours, [("short", [20, 21]), ("long", [20] * 9)], max_length=9))
    with pytest.raises(ValueError, match=r"input 'long' \(40 prompt tokens\).*max_position_embeddings=64"):
        list(stream_generate(ours, [("long", [20] * 40)], max_new_tokens=30))
