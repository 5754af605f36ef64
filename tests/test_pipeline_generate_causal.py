"""The pipeline's ``generate`` task on a decoder-only checkpoint (a tiny BertLMHeadModel).

One local Ray session for the module and one dataset execution: ``rayformers.pipeline.run`` over
real Parquet must write, for every row, the continuation of its prompt (not the prompt itself),
equal to our ``generate`` on that prompt alone and to transformers' ``generate``.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rayformers.pipeline import read_output, run

from model_test_utils import tiny_bert


TEXTS = ["once upon a time", "", "the quick brown fox " * 6, "hi", "漢字 🙂 text", "a b c d e f g"]
SETTINGS = {"max_new_tokens": 6, "no_repeat_ngram_size": 2}


def test_generate_task_continues_prompts_of_a_causal_lm(ray_session, tmp_path):
    from transformers import BertLMHeadModel as HFBertLMHeadModel

    from rayformers.models import AutoModelForCausalLM, AutoTokenizer

    model_dir = tiny_bert(tmp_path / "bert-lm", hidden=16, layers=2, head="BertLMHeadModel", intermediate=32,
                          is_decoder=True)
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.table({"text": TEXTS}), inp / "part0.parquet")
    report = run(
        {
            "input": {"path": str(inp)},
            "model": {"path": str(model_dir), "task": "generate"},
            "task": {"generation": {**SETTINGS, "max_batch_size": 3}},
            "output": {"path": str(tmp_path / "out"), "max_error_fraction": 0.5},
        }
    )
    assert report.rows == len(TEXTS) and report.errors == 1
    rows = {r["id"]: r for r in read_output(str(tmp_path / "out")).to_pylist()}
    ours = AutoModelForCausalLM.from_pretrained(model_dir)
    hf = HFBertLMHeadModel.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    for i, text in enumerate(TEXTS):
        row = rows[f"part0.parquet:{i}"]
        if not text:
            assert row["generated_text"] is None and "empty" in row["error"]
            continue
        # The prompt is truncated so that it and its continuation fit the 64 positions.
        prompt = tok([text], truncation=True, max_length=64 - SETTINGS["max_new_tokens"], return_tensors="pt")
        want = ours.generate(**prompt, **SETTINGS)
        assert want.tolist() == hf.generate(**prompt, **SETTINGS).tolist()
        continuation = want[0, prompt["input_ids"].shape[1]:]
        assert row["error"] is None
        assert row["generated_text"] == tok.decode(continuation, skip_special_tokens=True), text
        assert row["generated_tokens"] == SETTINGS["max_new_tokens"]  # the continuation only, not the prompt


def test_generate_task_continues_prompts_of_an_llm_family(ray_session, tmp_path):
    """A Llama checkpoint (config without is_decoder, as every LLM's) runs through the same task."""
    import transformers

    from rayformers.models import AutoModelForCausalLM, AutoTokenizer
    from model_test_utils import with_minilm_tokenizer

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      pad_token_id=0, bos_token_id=101, eos_token_id=102, initializer_range=0.2)
    model_dir = tmp_path / "llama"
    transformers.LlamaForCausalLM(config).eval().save_pretrained(model_dir)
    with_minilm_tokenizer(model_dir)
    inp = tmp_path / "in"
    inp.mkdir()
    texts = [t for t in TEXTS if t]
    pq.write_table(pa.table({"text": texts}), inp / "part0.parquet")
    report = run({
        "input": {"path": str(inp)},
        "model": {"path": str(model_dir), "task": "generate"},
        "task": {"generation": {**SETTINGS, "max_batch_size": 3}},
        "output": {"path": str(tmp_path / "out")},
    })
    assert report.rows == len(texts) and report.errors == 0
    rows = {r["id"]: r for r in read_output(str(tmp_path / "out")).to_pylist()}
    ours = AutoModelForCausalLM.from_pretrained(model_dir)
    hf = transformers.LlamaForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    for i, text in enumerate(texts):
        prompt = tok([text], truncation=True, max_length=64 - SETTINGS["max_new_tokens"], return_tensors="pt")
        prompt.pop("token_type_ids")  # BERT's tokenizer makes them; Llama has no token types
        want = ours.generate(**prompt, **SETTINGS)
        assert want.tolist() == hf.generate(**prompt, **SETTINGS).tolist()
        continuation = want[0, prompt["input_ids"].shape[1]:]
        assert rows[f"part0.parquet:{i}"]["generated_text"] == tok.decode(continuation, skip_special_tokens=True)


def test_generate_task_holds_the_kv_budget_and_refuses_a_row_over_it(ray_session, tmp_path):
    """`compute.max_kv_tokens`: rows wait for room in the KV budget and still get their own
    continuation; a row whose prompt + new tokens alone exceed it is an error record naming the
    budget, and the job goes on."""
    import transformers

    from rayformers.models import AutoModelForCausalLM, AutoTokenizer
    from model_test_utils import with_minilm_tokenizer

    torch.manual_seed(1)
    config = transformers.Qwen2Config(vocab_size=30522, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      pad_token_id=0, bos_token_id=101, eos_token_id=102)
    model_dir = tmp_path / "qwen2"
    transformers.Qwen2ForCausalLM(config).eval().save_pretrained(model_dir)
    with_minilm_tokenizer(model_dir)
    inp = tmp_path / "in"
    inp.mkdir()
    texts = [t for t in TEXTS if t]
    long = texts.index("the quick brown fox " * 6)  # 26 tokens + 6 new, over a budget of 24
    pq.write_table(pa.table({"text": texts}), inp / "part0.parquet")
    report = run({
        "input": {"path": str(inp)},
        "model": {"path": str(model_dir), "task": "generate"},
        "task": {"generation": {**SETTINGS, "max_batch_size": 3}},
        "compute": {"max_kv_tokens": 24, "max_tokens_per_batch": 4},
        "output": {"path": str(tmp_path / "out"), "max_error_fraction": 0.5},
    })
    assert report.rows == len(texts) and report.errors == 1
    rows = {r["id"]: r for r in read_output(str(tmp_path / "out")).to_pylist()}
    ours = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    for i, text in enumerate(texts):
        row = rows[f"part0.parquet:{i}"]
        if i == long:
            assert row["generated_text"] is None
            assert "32 KV-cache positions" in row["error"] and "max_kv_tokens=24" in row["error"], row["error"]
            continue
        prompt = tok([text], truncation=True, max_length=64 - SETTINGS["max_new_tokens"], return_tensors="pt")
        prompt.pop("token_type_ids")
        want = ours.generate(**prompt, **SETTINGS)[0, prompt["input_ids"].shape[1]:]
        assert row["error"] is None
        assert row["generated_text"] == tok.decode(want, skip_special_tokens=True), text
