"""LLM jobs in the pipeline: prompted generation (``task.messages`` rendered with a chat template,
stop strings, finish reasons) and LoRA adapters (``model.adapter``), on tiny random checkpoints.

Every row's output must equal transformers run row by row (``apply_chat_template`` then greedy
``generate``; peft's ``PeftModel`` for the adapter); the refusals must come from ``preflight``,
before Ray starts. One module-scoped Ray session, a handful of rows per job.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers
from tokenizers import AddedToken

from rayformers.pipeline import read_output, run
from rayformers.pipeline.config import load_config
from rayformers.pipeline.preflight import PreflightError, preflight
from test_llm_tokenizers import QWEN2_PATTERN, _byte_level_bpe

transformers.logging.set_verbosity_error()

TEMPLATE = (Path(__file__).parent / "data" / "chat_templates" / "qwen2.5.jinja").read_text(encoding="utf-8")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MESSAGES = [{"role": "system", "content": "Answer about {title}."},
            {"role": "user", "content": "Summarise: {text}"}]
MAX_NEW = 8
MAX_LENGTH = 60  # prompt tokens; the model has 128 positions
ROWS = [
    {"title": "the fox", "text": "the quick brown fox jumps over the lazy dog"},
    {"title": "weather", "text": "it rained all day and then the sun came out"},
    {"title": "long", "text": "a very long story about many things " * 30},  # cut to fit MAX_LENGTH
    {"title": "huge " * 80, "text": "short"},  # the template and title alone do not fit
    {"title": None, "text": "no title"},  # a null column: an error record
]


def _llama(directory: Path, template: str | None) -> Path:
    """A tiny random Llama with a byte-level BPE tokenizer (and a chat template in its
    tokenizer_config.json when ``template``)."""
    directory.mkdir(parents=True)
    tok = _byte_level_bpe(QWEN2_PATTERN)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "model_input_names": ["input_ids", "attention_mask"]}
    if template:
        config["chat_template"] = template
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model_config = transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.2,
        pad_token_id=tok.token_to_id("<|endoftext|>"), eos_token_id=tok.token_to_id("<|im_end|>"), bos_token_id=None)
    transformers.LlamaForCausalLM(model_config).eval().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory):
    return _llama(tmp_path_factory.mktemp("llm") / "chat", TEMPLATE)


@pytest.fixture(scope="module")
def base_llama(tmp_path_factory):
    return _llama(tmp_path_factory.mktemp("llm") / "base", None)


def _input(tmp_path: Path, rows: list[dict]) -> Path:
    inp = tmp_path / "in"
    inp.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("title", pa.string()), ("text", pa.string())])),
                   inp / "part0.parquet")
    return inp


def _hf_generate(model_dir: Path, ids: list[int]) -> list[int]:
    hf = transformers.LlamaForCausalLM.from_pretrained(model_dir).eval()
    out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                      max_new_tokens=MAX_NEW, do_sample=False)
    return out[0, len(ids):].tolist()


def _fitted_prompt(tok, row: dict) -> list[int]:
    """transformers' prompt ids for a row, its text cut to the longest token prefix that fits."""
    def ids(text):
        chat = [{"role": m["role"], "content": m["content"].format(title=row["title"], text=text)} for m in MESSAGES]
        return tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)

    full = ids(row["text"])
    if len(full) <= MAX_LENGTH:
        return full
    offsets = tok(row["text"], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for k in range(len(offsets), 0, -1):
        cut = ids(row["text"][: offsets[k - 1][1]])
        if len(cut) <= MAX_LENGTH:
            return cut
    raise AssertionError("no prefix fits")


def test_prompted_generation_matches_transformers_row_by_row(ray_session, chat_llama, tmp_path):
    tok = transformers.AutoTokenizer.from_pretrained(chat_llama)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    want = {}
    for i, row in enumerate(ROWS[:3]):
        prompt = _fitted_prompt(tok, row)
        want[i] = (prompt, _hf_generate(chat_llama, prompt))
    assert len(_fitted_prompt(tok, ROWS[2])) < len(tok.apply_chat_template(
        [{"role": m["role"], "content": m["content"].format(**ROWS[2])} for m in MESSAGES], add_generation_prompt=True))
    # A stop string taken from the middle of row 0's continuation: its text is cut before it.
    text0 = tok.decode(want[0][1], skip_special_tokens=True)
    stop = text0[len(text0) // 2: len(text0) // 2 + 2]
    assert stop.strip() and stop in text0

    report = run({
        "input": {"path": str(_input(tmp_path, ROWS))},
        "model": {"path": str(chat_llama), "task": "generate"},
        "tokenizer": {"max_length": MAX_LENGTH},
        "task": {"messages": MESSAGES, "generation": {"max_new_tokens": MAX_NEW, "do_sample": False, "stop": [stop]}},
        "output": {"path": str(tmp_path / "out"), "max_error_fraction": 0.5},
    })
    assert report.rows == len(ROWS) and report.errors == 2
    table = read_output(str(tmp_path / "out"))
    assert "text" not in table.column_names and "title" not in table.column_names  # read, then dropped
    rows = {r["id"]: r for r in table.to_pylist()}
    for i, (prompt, continuation) in want.items():
        row = rows[f"part0.parquet:{i}"]
        assert row["error"] is None and row["num_tokens"] == len(prompt) <= MAX_LENGTH
        text = tok.decode(continuation, skip_special_tokens=True)
        if stop in text:
            cut = text.index(stop)
            k = next(k for k in range(1, len(continuation) + 1)
                     if stop in tok.decode(continuation[:k], skip_special_tokens=True))
            assert (row["generated_text"], row["finish_reason"], row["num_generated_tokens"]) == (text[:cut], "stop", k)
        else:
            done = eos in continuation
            n = continuation.index(eos) + 1 if done else len(continuation)
            assert row["generated_text"] == text, i
            assert (row["finish_reason"], row["num_generated_tokens"]) == ("stop" if done else "length", n)
    assert rows["part0.parquet:0"]["finish_reason"] == "stop"
    assert "more than tokenizer.max_length 60" in rows["part0.parquet:3"]["error"]
    assert rows["part0.parquet:3"]["generated_text"] is None
    assert "title" in rows["part0.parquet:4"]["error"]


def test_messages_without_template_join_contents(ray_session, base_llama, tmp_path):
    """``task.chat_template: none``: the contents joined by newlines, tokenized as plain text."""
    rows = ROWS[:2]
    report = run({
        "input": {"path": str(_input(tmp_path, rows)), "passthrough_columns": ["title"]},
        "model": {"path": str(base_llama), "task": "generate"},
        "task": {"messages": MESSAGES, "chat_template": "none", "generation": {"max_new_tokens": MAX_NEW}},
        "output": {"path": str(tmp_path / "out")},
    })
    assert report.errors == 0
    out = {r["id"]: r for r in read_output(str(tmp_path / "out")).to_pylist()}
    tok = transformers.AutoTokenizer.from_pretrained(base_llama)
    for i, row in enumerate(rows):
        prompt = tok("\n".join(m["content"].format(**row) for m in MESSAGES))["input_ids"]
        got = out[f"part0.parquet:{i}"]
        assert got["title"] == row["title"]  # passthrough keeps a named column
        assert got["generated_text"] == tok.decode(_hf_generate(base_llama, prompt), skip_special_tokens=True)


def _config(tmp_path: Path, model: Path, **task) -> dict:
    return {"input": {"path": str(_input(tmp_path, ROWS[:2]))},
            "model": {"path": str(model), "task": "generate"},
            "task": {"messages": MESSAGES, **task},
            "output": {"path": str(tmp_path / "out")}}


def test_prompt_refusals_before_ray(chat_llama, base_llama, tmp_path):
    import ray

    was_up = ray.is_initialized()
    missing = _config(tmp_path / "a", chat_llama)
    missing["task"]["messages"] = [{"role": "user", "content": "{question} about {text}"}]
    with pytest.raises(PreflightError, match=r"task.messages: column 'question' is not in input file"):
        preflight(load_config(missing))
    with pytest.raises(PreflightError, match=r"no chat template.*task.chat_template.*none"):
        preflight(load_config(_config(tmp_path / "b", base_llama)))
    bad = _config(tmp_path / "c", chat_llama)
    bad["task"]["messages"] = [{"role": "user", "content": "{text.upper}"}]
    with pytest.raises(PreflightError, match=r"task.messages\[0\].content: \{text.upper\} is not a column field"):
        preflight(load_config(bad))
    refusing = _config(tmp_path / "d", chat_llama, chat_template="{{ raise_exception('no system role') }}")
    with pytest.raises(PreflightError, match="no system role"):
        preflight(load_config(refusing))
    unknown = _config(tmp_path / "h", chat_llama, chat_template="tool_use")  # not a name it has, not Jinja
    with pytest.raises(PreflightError, match="neither a Jinja template nor one of the checkpoint's named templates"):
        preflight(load_config(unknown))
    # A template string overrides the checkpoint's.
    job = preflight(load_config(_config(tmp_path / "e", chat_llama, chat_template="{{ messages[-1].content }}")))
    assert job.prompt["chat_template"] == "{{ messages[-1].content }}" and "title" in job.read_columns
    assert "title" in job.drop_after_tokenize
    from rayformers.pipeline import build_processor

    # build_processor (a caller's Dataset) requires the named columns too.
    assert "title" in build_processor(_config(tmp_path / "g", chat_llama)).required_columns
    adapter = _config(tmp_path / "f", chat_llama)
    adapter["model"]["adapter"] = str(tmp_path / "no-such-adapter")
    with pytest.raises(PreflightError, match="model.adapter"):
        preflight(load_config(adapter))
    adapter["model"]["adapter"] = str(base_llama)  # a full checkpoint is not an adapter
    with pytest.raises(PreflightError, match="is not a PEFT LoRA adapter"):
        preflight(load_config(adapter))
    assert ray.is_initialized() == was_up


def test_classify_with_lora_adapter_matches_peft(ray_session, tmp_path):
    """``model.adapter``: a LoRA adapter (with its classifier head trained in full) merged into
    ``model.path`` in the model actor; labels and scores equal peft's PeftModel row by row."""
    import peft

    from model_test_utils import with_minilm_tokenizer

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=64, num_labels=3,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    transformers.BertModel(config).save_pretrained(base_dir)  # a bare encoder: the head comes with the adapter
    with_minilm_tokenizer(base_dir)
    base = transformers.BertForSequenceClassification.from_pretrained(base_dir, num_labels=3).eval()
    model = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                      target_modules=["query", "value"]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.eval().save_pretrained(adapter_dir)

    texts = ["the quick brown fox", "hello world", "rain again today", "a b c"]
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.table({"text": texts}), inp / "part0.parquet")
    report = run({
        "input": {"path": str(inp)},
        "model": {"path": str(base_dir), "task": "classify", "adapter": str(adapter_dir)},
        "task": {"top_k": 3},
        "output": {"path": str(tmp_path / "out")},
    })
    assert report.errors == 0
    rows = {r["id"]: r for r in read_output(str(tmp_path / "out")).to_pylist()}
    tok = transformers.AutoTokenizer.from_pretrained(base_dir)
    for i, text in enumerate(texts):
        with torch.no_grad():
            probs = model(**tok([text], return_tensors="pt")).logits.softmax(-1)[0]
        row = rows[f"part0.parquet:{i}"]
        assert row["label"] == f"LABEL_{int(probs.argmax())}"
        assert row["top_k_scores"] == pytest.approx(sorted(probs.tolist(), reverse=True), abs=1e-5)
    # Without the adapter the same bare encoder is refused (no classifier head): the head is the adapter's.
    with pytest.raises(PreflightError, match="no weights for the"):
        preflight(load_config({"input": {"path": str(inp)}, "model": {"path": str(base_dir), "task": "classify"},
                               "output": {"path": str(tmp_path / "out2")}}))


def test_tokenizer_actor_refuses_overlong_prompts_with_overflow_error(chat_llama):
    """``tokenizer.overflow: error``: a prompt over the limit is an error record with its count;
    the tokenizer stage renders the prompt (the model stage only sees ids)."""
    from rayformers.operators import TokenizeOperator

    tok = transformers.AutoTokenizer.from_pretrained(chat_llama)
    op = TokenizeOperator(str(chat_llama), "text", max_length=MAX_LENGTH, overflow="error",
                          prompt={"messages": MESSAGES, "chat_template": TEMPLATE}, drop_columns=("title", "text"))
    batch = pa.Table.from_pylist(ROWS[:3], schema=pa.schema([("title", pa.string()), ("text", pa.string())]))
    out = op(batch).to_pylist()
    short = tok.apply_chat_template([{"role": m["role"], "content": m["content"].format(**ROWS[0])}
                                     for m in MESSAGES], add_generation_prompt=True)
    assert out[0]["input_ids"] == short and out[0]["error"] is None
    assert "(tokenizer.overflow is error)" in out[2]["error"] and out[2]["input_ids"] is None
    assert "title" not in out[0] and "text" not in out[0]


def test_generate_model_with_lora_adapter_equals_peft(base_llama, tmp_path):
    """``model.adapter`` for a decoder-only ``generate`` job: the model actors' loader merges it
    into ``model.path``; greedy continuations equal peft's unmerged PeftModel."""
    import peft

    from rayformers.operators.loading import load_model

    base = transformers.LlamaForCausalLM.from_pretrained(base_llama).eval()
    model = peft.get_peft_model(base, peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=16,
                                                      target_modules=["q_proj", "v_proj", "down_proj"]))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.eval().save_pretrained(tmp_path / "adapter")
    ours = load_model("generate", str(base_llama), adapter=str(tmp_path / "adapter"))
    ids = torch.tensor([[5, 60, 200, 33, 7, 90]])
    settings = dict(attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False)
    with torch.no_grad():
        want = model.generate(input_ids=ids, **settings)
        # peft injected its layers into ``base`` in place: a fresh copy is the model without the adapter
        plain = transformers.LlamaForCausalLM.from_pretrained(base_llama).eval().generate(input_ids=ids, **settings)
    assert ours.generate(ids, **settings).tolist() == want.tolist()
    assert want.tolist() != plain.tolist()  # the adapter changes the continuation
