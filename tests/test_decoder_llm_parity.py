"""Decoder-only LLM families (Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 text, Phi-3, Mixtral,
Qwen3-MoE) against transformers 4.57.6.

Every family's tiny random config switches on what sets it apart (biases, q/k norm, sliding windows
shorter than the prompts, soft-caps, local/global RoPE, partial rotary, LongRoPE, routed experts), its
parameters are randomised (norm weights included, so nothing is an identity), transformers builds and
saves the checkpoint and ours loads it: outputs must agree within 1e-5 (scale-aware) on a batch with left
and right padding, at the real tokens. transformers runs with eager attention, its reference
implementation (its SDPA path drops Gemma 2's attention soft-cap). Generation (greedy, beam search,
seeded sampling) on a left-padded batch must give identical token ids, and our save_pretrained must load
in transformers with the same logits.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from rayformers.models import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForQuestionAnswering,
                               AutoModelForSequenceClassification, AutoModelForTokenClassification)
from rayformers.models.configuration_decoder import DECODER_MODEL_NAMES

from model_test_utils import single_thread  # noqa: F401  (autouse: one thread per test module)

transformers.logging.set_verbosity_error()

VOCAB, PAD, BOS, EOS = 97, 0, 1, 2
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, bos_token_id=BOS,
              eos_token_id=EOS)

FAMILIES = {
    "llama": ("LlamaConfig", dict(attention_bias=True, mlp_bias=True, rope_scaling={
        "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})),
    "mistral": ("MistralConfig", dict(sliding_window=4, head_dim=16)),
    "qwen2": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1)),
    "qwen3": ("Qwen3Config", dict(head_dim=16, attention_bias=True, tie_word_embeddings=True)),
    "gemma2": ("Gemma2Config", dict(head_dim=16, sliding_window=4, query_pre_attn_scalar=12,
                                    attn_logit_softcapping=4.0, final_logit_softcapping=3.0)),
    "gemma3_text": ("Gemma3TextConfig", dict(head_dim=16, sliding_window=4, sliding_window_pattern=2,
                                             query_pre_attn_scalar=16, rope_local_base_freq=100.0,
                                             rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "phi3": ("Phi3Config", dict(partial_rotary_factor=0.5, original_max_position_embeddings=16,
                                max_position_embeddings=64, rope_scaling={
                                    "type": "longrope", "short_factor": [1.0, 1.5], "long_factor": [2.0, 3.0]})),
    "mixtral": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=5)),
    "qwen3_moe": ("Qwen3MoeConfig", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                                         decoder_sparse_step=2, norm_topk_prob=False, head_dim=8)),
}

TASKS = {
    "base": (transformers.AutoModel, AutoModel),
    "causal_lm": (transformers.AutoModelForCausalLM, AutoModelForCausalLM),
    "sequence_classification": (transformers.AutoModelForSequenceClassification, AutoModelForSequenceClassification),
    "token_classification": (transformers.AutoModelForTokenClassification, AutoModelForTokenClassification),
    "question_answering": (transformers.AutoModelForQuestionAnswering, AutoModelForQuestionAnswering),
}

CASES = [(family, task) for family in FAMILIES for task in DECODER_MODEL_NAMES[family]]


def _hf_config(family, **overrides):
    class_name, extra = FAMILIES[family]
    config = getattr(transformers, class_name)(**{**COMMON, **extra, **overrides})
    config._attn_implementation = "eager"
    return config


def _randomise(model, seed=0):
    """Every parameter random (norm weights around their neutral value), so no block is an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                neutral = 0.0 if "Gemma" in type(model).__name__ else 1.0
                p.copy_(neutral + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)


def _hf_model(family, task, seed=0, **overrides):
    torch.manual_seed(seed)
    model = TASKS[task][0].from_config(_hf_config(family, **overrides), attn_implementation="eager").eval()
    _randomise(model, seed)
    return model


def _batch():
    """Rows: full, left-padded, right-padded (pad id 0 never occurs as a real token)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, 6:] = 0
    ids[mask == 0] = PAD
    return ids, mask


def _assert_close(ours, ref, what):
    ours, ref = ours.float(), ref.float()
    scale = max(1.0, ref.abs().max().item())
    err = (ours - ref).abs().max().item()
    assert err <= 1e-5 * scale, f"{what}: max abs difference {err:.3g} (reference scale {scale:.3g})"


def _compare(task, ref_out, our_out, mask):
    real = mask.bool()
    if task == "base":
        _assert_close(our_out.last_hidden_state[real], ref_out.last_hidden_state[real], "last_hidden_state")
    elif task == "question_answering":
        _assert_close(our_out.start_logits[real], ref_out.start_logits[real], "start_logits")
        _assert_close(our_out.end_logits[real], ref_out.end_logits[real], "end_logits")
    elif task == "sequence_classification":
        _assert_close(our_out.logits, ref_out.logits, "logits")
    else:
        _assert_close(our_out.logits[real], ref_out.logits[real], "logits")


@pytest.mark.parametrize("family,task", CASES)
def test_forward_parity(family, task, tmp_path):
    hf = _hf_model(family, task)
    hf.save_pretrained(tmp_path)
    ours, info = TASKS[task][1].from_pretrained(tmp_path, output_loading_info=True)
    assert type(ours).__name__ == type(hf).__name__
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask = _batch()
    with torch.no_grad():
        ref_out = hf(input_ids=ids, attention_mask=mask)
        our_out = ours(input_ids=ids, attention_mask=mask)
    _compare(task, ref_out, our_out, mask)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_save_pretrained_loads_in_transformers(family, tmp_path):
    """Our checkpoint (config.json + safetensors) loads in transformers, same class, same logits."""
    hf = _hf_model(family, "causal_lm", seed=3)
    hf.save_pretrained(tmp_path / "hf")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    assert type(back) is type(hf)
    ids, mask = _batch()
    with torch.no_grad():
        ref, again = hf(input_ids=ids, attention_mask=mask).logits, back(input_ids=ids, attention_mask=mask).logits
    _assert_close(again[mask.bool()], ref[mask.bool()], "logits after our save_pretrained")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cached_steps_match_full_forward(family, tmp_path):
    """Prefill + one-token steps with our KV cache give the logits of a full forward on the whole sequence
    (sliding windows shorter than the sequence, so cached positions must leave the window)."""
    hf = _hf_model(family, "causal_lm", seed=4)
    hf.save_pretrained(tmp_path)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids, mask = _batch()
    ids, mask = ids[:2], mask[:2]  # full and left-padded rows
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = ours(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        out = ours(input_ids=ids[:, :5], attention_mask=mask[:, :5], position_ids=positions[:, :5], use_cache=True)
        past, steps = out.past_key_values, [out.logits]
        for t in range(5, ids.shape[1]):
            out = ours(input_ids=ids[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=positions[:, t:t + 1],
                       past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits)
    stepped = torch.cat(steps, dim=1)
    _assert_close(stepped[mask.bool()], full[mask.bool()], "cached logits")


GENERATE = {
    "greedy": dict(max_new_tokens=8, do_sample=False),
    "beam": dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False),
    "sample": dict(max_new_tokens=8, do_sample=True, top_k=20, temperature=0.9),
}


@pytest.mark.parametrize("mode", list(GENERATE))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_generate_token_identical(family, mode, tmp_path):
    hf = _hf_model(family, "causal_lm", seed=5)
    hf.save_pretrained(tmp_path)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids, mask = _batch()
    ids, mask = ids[:2], mask[:2]  # full and left-padded prompts
    kwargs = dict(GENERATE[mode], pad_token_id=PAD, eos_token_id=EOS)
    torch.manual_seed(7)
    with torch.no_grad():
        expected = hf.generate(input_ids=ids, attention_mask=mask, **kwargs)
    torch.manual_seed(7)
    actual = ours.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert actual.tolist() == expected.tolist()


@pytest.mark.parametrize("rope_scaling", [
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "dynamic", "factor": 2.0},
    {"type": "dynamic", "factor": 3.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4},
    {"rope_type": "yarn", "factor": 2.0, "beta_fast": 16, "mscale": 1.0, "mscale_all_dim": 0.5},
    {"rope_type": "longrope", "factor": 2.0, "short_factor": [1.0] * 4, "long_factor": [2.0, 3.0, 4.0, 5.0]},
], ids=lambda r: r.get("rope_type", r.get("type")) + str(len(r)))
def test_llama_rope_variants(rope_scaling, tmp_path):
    """Positions beyond max_position_embeddings=6, where dynamic and LongRoPE switch to their long tables."""
    hf = _hf_model("llama", "causal_lm", rope_scaling=rope_scaling, max_position_embeddings=6, head_dim=8,
                   attention_bias=False, mlp_bias=False, tie_word_embeddings=True)
    hf.save_pretrained(tmp_path)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids, mask = _batch()
    for width in (5, 9, 5):  # short, long, short again: the stateful tables reset as transformers' do
        with torch.no_grad():
            ref = hf(input_ids=ids[:, :width], attention_mask=mask[:, :width]).logits
            got = ours(input_ids=ids[:, :width], attention_mask=mask[:, :width]).logits
        real = mask[:, :width].bool()
        _assert_close(got[real], ref[real], f"logits at width {width}")


def test_dtype_kept_and_sharded_checkpoint(tmp_path):
    """bf16 weights load as bf16 with dtype="auto"; a sharded checkpoint with an index loads whole."""
    hf = _hf_model("qwen3", "causal_lm")
    hf.to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = AutoModelForCausalLM.from_pretrained(tmp_path, dtype="auto")
    assert ours.dtype == torch.bfloat16
    ids, mask = _batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(input_ids=ids, attention_mask=mask).logits
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got[mask.bool()].float(), ref[mask.bool()].float(), rtol=0, atol=0.05)


def test_unknown_rope_type_fails_naming_the_field(tmp_path):
    hf = _hf_model("llama", "causal_lm")
    hf.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    config.rope_scaling = {"rope_type": "fancy", "factor": 2.0}
    with pytest.raises(ValueError, match=r"`rope_scaling`.*'fancy'"):
        AutoModelForCausalLM.from_pretrained(tmp_path, config=config)
    config.rope_scaling = {"rope_type": "linear", "factor": 2.0, "wobble": 1}
    with pytest.raises(ValueError, match=r"`rope_scaling`.*wobble"):
        AutoModelForCausalLM.from_pretrained(tmp_path, config=config)


def test_unimplemented_fields_fail_naming_them():
    from rayformers.models import Gemma3TextConfig, LlamaConfig

    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        AutoModel.from_config(Gemma3TextConfig(**COMMON, head_dim=8, use_bidirectional_attention=True))
    with pytest.raises(ValueError, match="hidden_act"):
        AutoModel.from_config(LlamaConfig(**COMMON, hidden_act="bogus"))


def test_unknown_model_type_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama9"}')
    with pytest.raises(ValueError, match=r"Unrecognized model type 'llama9'.*gemma2.*llama.*qwen3_moe"):
        AutoConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("family", ["llama", "gemma2", "mixtral"])
def test_stream_generate_equals_generate(family, tmp_path):
    """Continuous batching (slot refill, caches of joining rows left-padded) yields each prompt's own
    generate() continuation, sliding windows and soft-caps included."""
    import random

    from rayformers.models.generation import stream_generate
    from rayformers.models.generation.continuous_causal import _continuation

    hf = _hf_model(family, "causal_lm", seed=6)
    hf.save_pretrained(tmp_path)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    rng = random.Random(0)
    inputs = [(f"doc-{i}", [rng.randrange(3, VOCAB) for _ in range(rng.randrange(1, 10))]) for i in range(9)]
    eos = [EOS, 5, 6, 7]  # several eos ids: rows finish at different steps and free their slots
    for settings in (dict(max_new_tokens=9, eos_token_id=eos),
                     dict(max_new_tokens=7, eos_token_id=eos, do_sample=True, top_k=10)):
        got = dict(stream_generate(ours, iter(inputs), seed=100, max_batch_size=4, pad_token_id=PAD, **settings))
        for index, (key, ids) in enumerate(inputs):
            if settings.get("do_sample"):
                torch.manual_seed(100 + index)
            row = ours.generate(torch.tensor([ids]), pad_token_id=PAD, **settings)[0].tolist()
            assert got[key] == _continuation(row, len(ids), eos), (settings, key)


def test_generation_projects_only_the_last_position_to_the_vocabulary(tmp_path):
    """The prompt's other positions never go through the LM head (one vocab-wide projection each,
    the largest matmul of a small LLM's prefill): `generate` and `stream_generate` ask for the last
    position's logits only, as transformers' generate does (`logits_to_keep=1`)."""
    from rayformers.models.generation import stream_generate

    hf = _hf_model("qwen2", "causal_lm", seed=3)
    hf.save_pretrained(tmp_path)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    positions = []
    ours.lm_head.register_forward_hook(lambda module, args, out: positions.append(args[0].shape[1]))
    ids, mask = _batch()
    ids, mask = ids[:2], mask[:2]
    ours.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, pad_token_id=PAD, eos_token_id=None)
    assert positions == [1, 1, 1]
    positions.clear()
    list(stream_generate(ours, [("a", [5, 6, 7, 8]), ("b", [9, 10])], max_new_tokens=2, pad_token_id=PAD,
                         eos_token_id=None))
    assert positions and set(positions) == {1}


def test_stream_generate_prefills_prompts_of_different_lengths_without_padding_them_together(tmp_path):
    """Prompts admitted together are prefilled in chunks of similar length (a 10-token and a 3-token
    prompt are not padded to 2 x 10 positions), and the continuations still equal each prompt's own
    generate()."""
    from rayformers.models.generation import stream_generate
    from rayformers.models.generation.continuous_causal import _continuation

    hf = _hf_model("qwen2", "causal_lm", seed=4)
    hf.save_pretrained(tmp_path)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    shapes = []
    ours.get_input_embeddings().register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    inputs = [("long", [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]), ("short", [15, 16, 21]), ("long-ish", [17] * 9),
              ("tiny", [18, 19, 20])]
    eos = [EOS, 5, 6]
    got = dict(stream_generate(ours, inputs, max_batch_size=4, max_new_tokens=5, pad_token_id=PAD, eos_token_id=eos))
    prefill = [shape for shape in shapes if shape[1] > 1]
    assert prefill == [(2, 10), (2, 3)], shapes
    for key, ids in inputs:
        row = ours.generate(torch.tensor([ids]), max_new_tokens=5, pad_token_id=PAD, eos_token_id=eos)[0].tolist()
        assert got[key] == _continuation(row, len(ids), eos), key


def test_head_missing_from_checkpoint_is_initialised(tmp_path):
    """A causal-LM checkpoint loaded for classification: the new `score` gets real, initialised weights
    (the rest is built on the meta device and replaced by the checkpoint's tensors)."""
    hf = _hf_model("mistral", "causal_lm")
    hf.save_pretrained(tmp_path)
    ours, info = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=3, output_loading_info=True)
    assert info["missing_keys"] == ["score.weight"] and info["unexpected_keys"] == ["lm_head.weight"]
    assert not any(p.is_meta for p in ours.parameters())
    assert 0 < ours.score.weight.std().item() < 0.1  # normal(0, initializer_range=0.02)
    ids, mask = _batch()
    with torch.no_grad():
        assert torch.isfinite(ours(input_ids=ids, attention_mask=mask).logits).all()


def test_pipeline_generate_task_picks_the_causal_lm_class():
    """The `generate` task continues prompts of an LLM family with AutoModelForCausalLM (their configs
    leave is_decoder False); encoder-decoder checkpoints keep AutoModelForSeq2SeqLM."""
    from rayformers.models import BartConfig, Qwen2Config
    from rayformers.operators.loading import auto_class_name

    assert auto_class_name("generate", Qwen2Config(**COMMON)) == "AutoModelForCausalLM"
    assert auto_class_name("generate", BartConfig()) == "AutoModelForSeq2SeqLM"
    assert auto_class_name("classify", Qwen2Config(**COMMON)) == "AutoModelForSequenceClassification"


@pytest.mark.parametrize("family", ["llama", "gemma2", "phi3"])
def test_dropout_applies_in_training_only(family, tmp_path):
    """attention_dropout (and Phi-3's resid_pdrop) act in train mode, as in transformers; eval is exact."""
    extra = {"resid_pdrop": 0.3} if family == "phi3" else {"attention_dropout": 0.3}  # each on its own
    hf = _hf_model(family, "causal_lm", **extra)
    hf.save_pretrained(tmp_path)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids, mask = _batch()
    with torch.no_grad():
        _assert_close(ours(input_ids=ids).logits, hf(input_ids=ids).logits, "eval logits")
        ours.train()
        first, second = ours(input_ids=ids).logits, ours(input_ids=ids).logits
    assert not torch.allclose(first, second)


def test_multimodal_gemma3_is_refused_with_the_text_alternative(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gemma3", "text_config": {}}')
    with pytest.raises(ValueError, match=r"Unrecognized model type 'gemma3'.*gemma3_text"):
        AutoConfig.from_pretrained(tmp_path)
