"""Decoder-only generation driven by the checkpoint's own generation defaults, as modern LLMs ship them.

Llama-3 / Qwen2 / Gemma checkpoints carry several eos ids (a list, in config.json and in
generation_config.json) and sampling defaults (`do_sample`, `temperature`, `top_p`, `top_k`,
`repetition_penalty`) in generation_config.json; Gemma's also says `cache_implementation: "hybrid"`.
A tiny BERT causal LM saved by transformers 4.57.6 with such files must generate exactly what
transformers generates from them, stop at every id of the eos list (in `generate` and in
`stream_generate`), and accept the cache-layout setting.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import transformers

from rayformers.models import AutoModelForCausalLM
from rayformers.models.generation import stream_generate
from rayformers.models.generation.continuous_causal import _continuation
from rayformers.models.generation.utils import _check_decoder_only_model

from model_test_utils import single_thread  # noqa: F401  (autouse: one thread per test module)

transformers.logging.set_verbosity_error()

VOCAB = 60
EOS = [2, 30, 31, 32, 33, 34, 35, 36, 37]  # several stop ids, as Llama-3's [128001, 128008, 128009]
GENERATION_CONFIG = {  # the shape of Llama-3.1 / Qwen2's generation_config.json
    "bos_token_id": 0, "eos_token_id": EOS, "pad_token_id": 1, "do_sample": True, "temperature": 0.6,
    "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05, "transformers_version": "4.45.0",
}


def _save(path, generation_config: dict):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=64, is_decoder=True,
                                     pad_token_id=1, bos_token_id=0, eos_token_id=EOS, initializer_range=0.5)
    hf = transformers.BertLMHeadModel(config).eval()
    hf.save_pretrained(path)
    (path / "generation_config.json").write_text(json.dumps(generation_config))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = _save(tmp_path_factory.mktemp("llm-defaults"), GENERATION_CONFIG)
    return transformers.BertLMHeadModel.from_pretrained(path).eval(), AutoModelForCausalLM.from_pretrained(path)


def _prompts():
    input_ids = torch.tensor([[5, 8, 9, 11, 4, 6], [1, 1, 7, 3, 12, 13], [1, 1, 1, 20, 21, 22], [1, 9, 8, 7, 6, 5]])
    return input_ids, (input_ids != 1).long()


def test_generation_config_json_defaults_are_read_like_transformers(checkpoint):
    hf, ours = checkpoint
    cfg = ours.generation_config
    assert (cfg.eos_token_id, cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k) == (EOS, True, 0.6, 0.9, 20)
    input_ids, mask = _prompts()
    for seed in (0, 1):  # sampling with the file's settings, nothing passed to generate
        torch.manual_seed(seed)
        expected = hf.generate(input_ids, attention_mask=mask, max_new_tokens=12)
        torch.manual_seed(seed)
        got = ours.generate(input_ids, attention_mask=mask, max_new_tokens=12)
        assert torch.equal(got, expected), f"seed {seed}:\n{got}\n!=\n{expected}"


def test_every_eos_id_of_the_list_stops_a_row(checkpoint):
    hf, ours = checkpoint
    input_ids, mask = _prompts()
    stops = set()
    for seed in range(4):
        torch.manual_seed(seed)
        expected = hf.generate(input_ids, attention_mask=mask, max_new_tokens=15)
        torch.manual_seed(seed)
        got = ours.generate(input_ids, attention_mask=mask, max_new_tokens=15)
        assert torch.equal(got, expected)
        for row in got.tolist():
            tail = _continuation(row, input_ids.shape[1], EOS)
            if tail and tail[-1] in EOS:
                stops.add(tail[-1])
    assert len(stops - {2}) >= 1, f"only {stops} ended rows: the list beyond its first id was not exercised"


def test_stream_generate_stops_at_the_eos_list_of_the_checkpoint(checkpoint):
    _, ours = checkpoint
    rng = random.Random(0)
    inputs = [(f"p{i}", [rng.randrange(3, 29) for _ in range(rng.randrange(1, 9))]) for i in range(10)]
    for settings in (dict(max_new_tokens=15), dict(max_new_tokens=15, do_sample=False, num_return_sequences=1)):
        got = dict(stream_generate(ours, iter(inputs), max_batch_size=4, seed=11, **settings))
        ended_by = set()
        for index, (key, ids) in enumerate(inputs):
            torch.manual_seed(11 + index)
            row = ours.generate(torch.tensor([ids]), **settings)[0].tolist()
            assert got[key] == _continuation(row, len(ids), EOS), key
            if got[key] and got[key][-1] in EOS:
                ended_by.add(got[key][-1])
        assert ended_by, "no row stopped at an eos id"


def test_cache_layout_settings_are_served_and_quantized_caches_refused(tmp_path, checkpoint):
    _, plain = checkpoint
    path = _save(tmp_path / "gemma-like", {**GENERATION_CONFIG, "cache_implementation": "hybrid"})
    ours = AutoModelForCausalLM.from_pretrained(path)
    assert ours.generation_config.cache_implementation == "hybrid"
    input_ids, mask = _prompts()
    torch.manual_seed(3)
    got = ours.generate(input_ids, attention_mask=mask, max_new_tokens=8)
    torch.manual_seed(3)
    assert torch.equal(got, plain.generate(input_ids, attention_mask=mask, max_new_tokens=8))
    with pytest.raises(NotImplementedError, match="cache_implementation='quantized'"):
        ours.generate(input_ids, attention_mask=mask, max_new_tokens=8, cache_implementation="quantized")


def test_always_causal_models_need_no_is_decoder_flag(checkpoint):
    _, ours = checkpoint
    ours.config.is_decoder = False
    try:
        with pytest.raises(ValueError, match="needs config.is_decoder=True"):
            _check_decoder_only_model(ours)
        ours._generation_always_causal = True  # what a Llama-style LM class declares
        _check_decoder_only_model(ours)
    finally:
        ours.config.is_decoder = True
        ours.__dict__.pop("_generation_always_causal", None)
