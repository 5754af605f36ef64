"""Memory-bounded continuous batching of decoder-only models (`stream_generate` with `max_kv_tokens`).

A tiny random Qwen2 (sliding-window layer included) that transformers builds and saves; ours loads
it. Under a KV budget that holds only a few prompts at once and a prefill budget shorter than the
long prompts, every continuation must equal the unbounded engine's and transformers' greedy
`generate` of that prompt alone; the KV positions held (the engine's own peak, padding included)
never exceed the budget, no forward is fed more than the prefill budget, and a prompt that alone
exceeds the budget is refused naming it, while the others still run.
"""

from __future__ import annotations

import random

import pytest
import torch
import transformers

from rayformers.models import AutoModelForCausalLM
from rayformers.models.generation import stream_generate
from rayformers.models.generation.continuous_causal import _continuation

from model_test_utils import single_thread  # noqa: F401  (autouse: one thread per test module)

transformers.logging.set_verbosity_error()

VOCAB, PAD, EOS = 97, 0, 2
MAX_NEW = 8
EOS_IDS = [EOS, 5, 6]  # several eos ids: rows finish at different steps


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      pad_token_id=PAD, bos_token_id=1, eos_token_id=EOS, use_sliding_window=True,
                                      sliding_window=6, max_window_layers=1)
    hf = transformers.Qwen2ForCausalLM(config).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_((1.0 if "norm" in name else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
    path = tmp_path_factory.mktemp("qwen2")
    hf.save_pretrained(path)
    return hf, AutoModelForCausalLM.from_pretrained(path)


def _prompts():
    rng = random.Random(7)
    lengths = [40, 3, 17, 9, 1, 25, 5, 12, 33, 2, 8, 21]
    return [(f"doc-{i}", [rng.randrange(7, VOCAB) for _ in range(n)]) for i, n in enumerate(lengths)]


def _transformers_greedy(hf, ids):
    out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                      max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=EOS_IDS, pad_token_id=PAD)
    return _continuation(out[0].tolist(), len(ids), EOS_IDS)


def test_tight_kv_budget_waits_prefills_in_pieces_and_stays_token_identical(qwen2):
    hf, ours = qwen2
    inputs = _prompts()
    settings = dict(max_new_tokens=MAX_NEW, eos_token_id=EOS_IDS, pad_token_id=PAD)
    unbounded_stats: dict = {}
    unbounded = dict(stream_generate(ours, iter(inputs), max_batch_size=8, stats=unbounded_stats, **settings))

    budget, prefill = 3 * (40 + MAX_NEW), 8  # three of the longest rows at once; forwards of 8 tokens
    fed = []
    hook = ours.get_input_embeddings().register_forward_hook(lambda m, args, out: fed.append(args[0].numel()))
    stats: dict = {}
    try:
        bounded = dict(stream_generate(ours, iter(inputs), max_batch_size=8, max_kv_tokens=budget,
                                       max_batch_tokens=prefill, stats=stats, **settings))
    finally:
        hook.remove()

    for key, ids in inputs:
        want = _transformers_greedy(hf, ids)
        assert unbounded[key] == want, key
        assert bounded[key] == want, key
    assert 0 < stats["peak_kv_tokens"] <= budget, stats
    assert unbounded_stats["peak_kv_tokens"] > budget  # the budget did bind
    assert stats["admission_waits"] > 0, stats  # rows waited for admission
    assert max(fed) <= prefill and stats["max_prefill_tokens"] <= prefill, (fed, stats)
    assert stats["prefill_forwards"] >= 40 // prefill  # the 40-token prompt went in pieces


def test_sampling_under_a_budget_equals_unbounded(qwen2):
    _, ours = qwen2
    inputs = _prompts()
    settings = dict(max_new_tokens=MAX_NEW, eos_token_id=EOS_IDS, pad_token_id=PAD, do_sample=True, top_k=10,
                    num_return_sequences=2)
    unbounded = dict(stream_generate(ours, iter(inputs), seed=11, max_batch_size=8, **settings))
    stats: dict = {}
    bounded = dict(stream_generate(ours, iter(inputs), seed=11, max_batch_size=8, max_kv_tokens=2 * 2 * (40 + MAX_NEW),
                                   max_batch_tokens=16, stats=stats, **settings))
    assert bounded == unbounded
    assert stats["peak_kv_tokens"] <= 2 * 2 * (40 + MAX_NEW)


def test_a_prompt_over_the_budget_is_refused_naming_it(qwen2):
    _, ours = qwen2
    inputs = [("short", [9, 10, 11]), ("long", list(range(10, 40))), ("mid", [12] * 6)]
    settings = dict(max_new_tokens=MAX_NEW, eos_token_id=None, pad_token_id=PAD)
    with pytest.raises(ValueError, match=r"input 'long' needs 38 KV-cache positions .*max_kv_tokens=20"):
        list(stream_generate(ours, iter(inputs), max_kv_tokens=20, **settings))
    refused = []
    got = dict(stream_generate(ours, iter(inputs), max_kv_tokens=20, on_reject=lambda k, why: refused.append(k),
                               **settings))
    assert refused == ["long"] and sorted(got) == ["mid", "short"]
    alone = dict(stream_generate(ours, iter([inputs[0], inputs[2]]), **settings))
    assert got == alone


def test_default_budget_comes_from_the_row_cap_on_cpu_and_from_free_memory_on_gpu(qwen2):
    from rayformers.models.generation.kv_budget import (CPU_POSITIONS_PER_ROW, KV_MEMORY_SHARE,
                                                        default_max_kv_tokens, kv_bytes_per_token)

    _, ours = qwen2
    # keys and values x 2 layers x 2 KV heads x head_dim 8 x 4 bytes (float32)
    assert kv_bytes_per_token(ours) == 2 * 2 * 2 * 8 * 4
    assert default_max_kv_tokens(ours, max_batch_size=16, device="cpu") == 16 * CPU_POSITIONS_PER_ROW
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(0)
        got = default_max_kv_tokens(ours, max_batch_size=16, device="cuda:0")
        assert abs(got - free * KV_MEMORY_SHARE / kv_bytes_per_token(ours)) < 0.01 * got


def test_generate_operator_takes_the_configured_budget_or_derives_one(qwen2, tmp_path):
    from rayformers.models import AutoTokenizer
    from rayformers.models.generation.kv_budget import CPU_POSITIONS_PER_ROW
    from rayformers.operators.generate import GenerateOperator

    from model_test_utils import with_minilm_tokenizer

    _, ours = qwen2
    tokenizer = AutoTokenizer.from_pretrained(with_minilm_tokenizer(tmp_path))
    derived = GenerateOperator(model=ours, tokenizer=tokenizer, max_batch_size=16)
    assert derived.max_kv_tokens == 16 * CPU_POSITIONS_PER_ROW
    assert GenerateOperator(model=ours, tokenizer=tokenizer, max_kv_tokens=500).max_kv_tokens == 500


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    torch.manual_seed(1)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      pad_token_id=PAD, bos_token_id=1, eos_token_id=EOS)
    hf = transformers.LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_((1.0 if "norm" in name else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
    path = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(path)
    return hf, AutoModelForCausalLM.from_pretrained(path)


def test_a_shared_prompt_prefix_is_prefilled_once_and_outputs_do_not_change(llama):
    """Prompts that start with the same 20 tokens (a system prompt): the prefix is prefilled once
    per admitted group, each row's own tokens behind it; every continuation still equals
    transformers' greedy generate of the prompt alone, under a tight budget and short prefill
    forwards too."""
    hf, ours = llama
    rng = random.Random(3)
    system = [rng.randrange(7, VOCAB) for _ in range(20)]
    inputs = [(f"doc-{i}", system + [rng.randrange(7, VOCAB) for _ in range(rng.randrange(1, 16))])
              for i in range(10)]
    inputs.append(("other", [rng.randrange(7, VOCAB) for _ in range(9)]))  # no shared prefix
    settings = dict(max_new_tokens=MAX_NEW, eos_token_id=EOS_IDS, pad_token_id=PAD)
    for limits in (dict(), dict(max_kv_tokens=4 * (35 + MAX_NEW), max_batch_tokens=12)):
        stats: dict = {}
        shared = dict(stream_generate(ours, iter(inputs), max_batch_size=6, stats=stats, **limits, **settings))
        assert stats.get("shared_prefix_tokens", 0) >= 20, stats
        if "max_kv_tokens" in limits:
            assert stats["peak_kv_tokens"] <= limits["max_kv_tokens"] and stats["max_prefill_tokens"] <= 12, stats
        for key, ids in inputs:
            assert shared[key] == _transformers_greedy(hf, ids), (limits, key)
    plain_stats: dict = {}
    plain = dict(stream_generate(ours, iter(inputs), max_batch_size=6, share_prefix=False, stats=plain_stats,
                                 **settings))
    assert "shared_prefix_tokens" not in plain_stats and plain == shared


def test_prefix_sharing_is_off_for_sliding_window_models(qwen2):
    _, ours = qwen2
    assert ours._generation_prefix_sharing is False
    prompts = [(i, list(range(10, 30)) + [40 + i]) for i in range(3)]
    stats: dict = {}
    list(stream_generate(ours, iter(prompts), max_new_tokens=2, pad_token_id=PAD, stats=stats))
    assert "shared_prefix_tokens" not in stats
