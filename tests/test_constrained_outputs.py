"""Constrained outputs (``task.choices`` / ``task.json_schema`` / ``task.regex``): a token mask from
the grammar engine (llguidance) applied inside continuous batching, on tiny random checkpoints.

Every answer must be valid by construction (one of the choices, JSON with the schema's keys and
types, a full regex match), end with the end token (``finish_reason: stop``) unless the token limit
cut it, and equal the unconstrained greedy answer where that answer is already valid. Invalid
constraints are refused by ``preflight``, before any row is read; the grammar engine stays an
optional dependency.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers
from tokenizers import AddedToken

from rayformers.models import AutoModelForCausalLM
from rayformers.models.generation import stream_generate
from rayformers.models.generation.constraints import ConstraintError, TokenConstraint, grammar
from rayformers.pipeline import read_output, run
from rayformers.pipeline.config import load_config
from rayformers.pipeline.preflight import PreflightError, preflight
from model_test_utils import single_thread  # noqa: F401  (autouse)
from test_llm_tokenizers import QWEN2_PATTERN, _byte_level_bpe

transformers.logging.set_verbosity_error()

TEMPLATE = (Path(__file__).parent / "data" / "chat_templates" / "qwen2.5.jinja").read_text(encoding="utf-8")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MESSAGES = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Label: {text}"}]
TEXTS = ["the quick brown fox", "it rained all day", "a", "some more words here to say", "the lazy dog sleeps",
         "sun", "brown and quick", "over the fox", "hello world", "over and over", "the end", "a quick word"]
SCHEMA = {"type": "object", "properties": {
    "product": {"type": "string", "maxLength": 6},
    "sentiment": {"enum": ["positive", "negative", "neutral"]},
    "urgent": {"type": "boolean"}}, "required": ["product", "sentiment", "urgent"], "additionalProperties": False}
REGEX = r"(yes|no): [a-z]{1,6}"


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory) -> Path:
    """A tiny random Qwen2 with a byte-level BPE tokenizer and Qwen2.5's chat template."""
    directory = tmp_path_factory.mktemp("constrained") / "qwen2"
    directory.mkdir()
    tok = _byte_level_bpe(QWEN2_PATTERN)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "model_input_names": ["input_ids", "attention_mask"], "chat_template": TEMPLATE}))
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=512, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
        pad_token_id=tok.token_to_id("<|endoftext|>"), eos_token_id=tok.token_to_id("<|im_end|>"), bos_token_id=None)
    transformers.Qwen2ForCausalLM(config).eval().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf_tok(qwen2):
    return transformers.AutoTokenizer.from_pretrained(qwen2)


def _prompt(tok, text: str) -> list[int]:
    chat = [{"role": m["role"], "content": m["content"].format(text=text)} for m in MESSAGES]
    return tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)


def _json_valid(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and (set(value) == {"product", "sentiment", "urgent"} and isinstance(value["product"], str)
            and len(value["product"]) <= 6 and value["sentiment"] in ("positive", "negative", "neutral")
            and isinstance(value["urgent"], bool))


VALID = {"choices": lambda text: text in ("yes", "no", "maybe so"),
         "json_schema": _json_valid,
         "regex": lambda text: re.fullmatch(REGEX, text) is not None}
VALUES = {"choices": ["yes", "no", "maybe so"], "json_schema": SCHEMA, "regex": REGEX}


# ------------------------------------------------------------------ model layer (no Ray)


@pytest.mark.parametrize("kind", ["choices", "json_schema", "regex"])
def test_stream_generate_answers_are_valid(qwen2, hf_tok, kind):
    """Greedy and sampled (two per input), rows joining and leaving the batch: every answer valid,
    ending with eos."""
    model = AutoModelForCausalLM.from_pretrained(qwen2).eval()
    eos = hf_tok.convert_tokens_to_ids("<|im_end|>")
    constraint = TokenConstraint.build(kind, VALUES[kind], hf_tok, 512, [eos])
    prompts = [(i, _prompt(hf_tok, t)) for i, t in enumerate(TEXTS)]
    greedy = dict(stream_generate(model, prompts, max_new_tokens=96, do_sample=False, max_batch_size=3,
                                  constraint=constraint))
    sampled = dict(stream_generate(model, prompts, max_new_tokens=96, do_sample=True, top_k=5, seed=7,
                                   num_return_sequences=2, max_batch_size=4, constraint=constraint))
    answers = list(greedy.values()) + [ids for pair in sampled.values() for ids in pair]
    assert len(answers) == 3 * len(TEXTS)
    for ids in answers:
        assert ids[-1] == eos and eos not in ids[:-1]
        text = hf_tok.decode(ids, skip_special_tokens=True)
        assert VALID[kind](text), text
    unconstrained = dict(stream_generate(model, prompts, max_new_tokens=96, do_sample=False, max_batch_size=3))
    assert not all(VALID[kind](hf_tok.decode(ids, skip_special_tokens=True)) for ids in unconstrained.values())


def _clean_answers(model, tok, prompts, new_tokens: int) -> dict:
    """Unconstrained greedy answers (no eos within `new_tokens`) that are plain text: no special or
    unknown token, no partial UTF-8 character."""
    out = {}
    for key, ids in stream_generate(model, prompts, max_new_tokens=new_tokens, do_sample=False):
        text = tok.decode(ids, skip_special_tokens=False)
        known = all(t < len(tok) for t in ids)  # the model's vocabulary is wider than the tokenizer's
        if len(ids) == new_tokens and known and "\ufffd" not in text and not any(s in text for s in SPECIALS):
            out[key] = (ids, text)
    return out


def test_choices_keep_an_already_valid_greedy_answer(qwen2, hf_tok):
    """Where the unconstrained greedy answer is one of the choices, the constrained one is the
    same tokens (then eos): the mask changes nothing a valid answer needs."""
    model = AutoModelForCausalLM.from_pretrained(qwen2).eval()
    eos = hf_tok.convert_tokens_to_ids("<|im_end|>")
    prompts = [(i, _prompt(hf_tok, t)) for i, t in enumerate(TEXTS)]
    clean = _clean_answers(model, hf_tok, prompts, 2)
    assert len(clean) >= 2, "the test needs unconstrained answers that are plain text"
    choices = sorted({text for _, text in clean.values()}) + ["zzz unlikely"]
    constraint = TokenConstraint.build("choices", choices, hf_tok, 512, [eos])
    got = dict(stream_generate(model, prompts, max_new_tokens=12, do_sample=False, max_batch_size=2,
                               constraint=constraint))
    for key, (ids, _) in clean.items():
        assert got[key] == ids + [eos], key
    for ids in got.values():
        assert hf_tok.decode(ids, skip_special_tokens=True) in choices


def test_generate_takes_the_same_constraint(qwen2, hf_tok):
    """``model.generate(..., constraint=)``: left-padded batch, same answers as continuous batching
    (each then padded after its eos, as generate pads finished rows)."""
    model = AutoModelForCausalLM.from_pretrained(qwen2).eval()
    eos = hf_tok.convert_tokens_to_ids("<|im_end|>")
    pad = hf_tok.convert_tokens_to_ids("<|endoftext|>")
    constraint = TokenConstraint.build("json_schema", SCHEMA, hf_tok, 512, [eos])
    prompts = [_prompt(hf_tok, t) for t in TEXTS[:4]]
    streamed = dict(stream_generate(model, enumerate(prompts), max_new_tokens=96, do_sample=False,
                                    constraint=constraint))
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=96, do_sample=False, pad_token_id=pad,
                         constraint=constraint)[:, width:].tolist()
    for i, row in enumerate(out):
        assert row[: len(streamed[i])] == streamed[i] and set(row[len(streamed[i]):]) <= {pad}, i
        assert _json_valid(hf_tok.decode(streamed[i], skip_special_tokens=True))
    with pytest.raises(ValueError, match="not beam search"):
        model.generate(ids, attention_mask=mask, max_new_tokens=4, num_beams=2, constraint=constraint)


def test_token_limit_cuts_an_answer_without_eos(qwen2, hf_tok):
    """An answer the token limit cuts has no eos (the pipeline's finish_reason ``length``) and is
    still a prefix the constraint allows."""
    model = AutoModelForCausalLM.from_pretrained(qwen2).eval()
    eos = hf_tok.convert_tokens_to_ids("<|im_end|>")
    constraint = TokenConstraint.build("regex", "[a-z]{40}", hf_tok, 512, [eos])
    out = dict(stream_generate(model, [(0, _prompt(hf_tok, "sun"))], max_new_tokens=5, do_sample=False,
                               constraint=constraint))
    assert len(out[0]) == 5 and eos not in out[0]
    assert re.fullmatch("[a-z]{5,40}", hf_tok.decode(out[0]))


def test_conflicting_settings_raise_naming_the_input(qwen2, hf_tok):
    """A constraint whose only allowed token the generation settings forbid (a bad word) raises
    naming the input, never a silently wrong token; settings that cannot hold with a constraint
    (a minimum length, beam search) are refused up front."""
    model = AutoModelForCausalLM.from_pretrained(qwen2).eval()
    eos = hf_tok.convert_tokens_to_ids("<|im_end|>")
    constraint = TokenConstraint.build("choices", ["y"], hf_tok, 512, [eos])
    y = hf_tok.convert_tokens_to_ids("y")
    with pytest.raises(ConstraintError, match=r"input 'row-7': no token satisfies both the constraint and the generation"):
        list(stream_generate(model, [("row-7", _prompt(hf_tok, "sun"))], max_new_tokens=8, bad_words_ids=[[y]],
                             do_sample=False, constraint=constraint))
    with pytest.raises(ValueError, match="min_new_tokens=4 cannot apply"):
        list(stream_generate(model, [(0, [5, 6])], max_new_tokens=8, min_new_tokens=4, constraint=constraint))
    with pytest.raises(ValueError, match="not beam search"):
        list(stream_generate(model, [(0, [5, 6])], max_new_tokens=4, num_beams=2, constraint=constraint))


def test_bitmask_unpacks_the_same_on_host_and_accelerator_path():
    """The accelerator path (torch shifts on the device) and the CPU path (numpy) agree bit for bit,
    sign bit included."""
    from rayformers.models.generation import transfer

    mask = torch.randint(-2**31, 2**31 - 1, (5, 7), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    host = transfer.bitmask_to_device(mask, "cpu")
    assert torch.equal(host, transfer.unpack_bits(mask))
    word = int(mask[2, 3]) & 0xFFFFFFFF
    assert host[2, 3 * 32: 4 * 32].tolist() == [bool(word >> b & 1) for b in range(32)]


def test_grammar_refuses_bad_constraints_naming_the_key():
    with pytest.raises(ConstraintError, match=r"(?s)task.regex is not valid: .*unclosed character class"):
        grammar("regex", "[a-z")
    with pytest.raises(ConstraintError, match=r"task.json_schema is not valid: .*objet"):
        grammar("json_schema", {"type": "objet"})
    with pytest.raises(ConstraintError, match=r"task.choices\[1\] must be a non-empty string"):
        grammar("choices", ["a", ""])
    with pytest.raises(ConstraintError, match=r"task.choices lists \['a'\] more than once"):
        grammar("choices", ["a", "b", "a"])
    assert grammar("choices", ['say "hi"', "back\\slash", "é"])  # quotes, backslashes, non-ASCII


def test_grammar_engine_is_optional():
    """The model layer imports without llguidance, and a constraint without it names the install."""
    code = (
        "import sys; sys.modules['llguidance'] = None\n"
        "import rayformers.models.generation.continuous, rayformers.models.generation.constraints as c\n"
        "import rayformers.operators.generate, rayformers.pipeline.preflight\n"
        "try:\n    c.grammar('regex', 'a+')\nexcept ImportError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ERR" in out and "pip install rayformers[constrained]" in out
    loaded = subprocess.run([sys.executable, "-c", "import sys, rayformers.models.generation.continuous, "
                             "rayformers.operators.generate, rayformers.pipeline.preflight; "
                             "print('llguidance' in sys.modules)"], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"


# ------------------------------------------------------------------ pipeline


def _input(tmp_path: Path) -> Path:
    inp = tmp_path / "in"
    inp.mkdir(parents=True)
    pq.write_table(pa.table({"text": TEXTS}), inp / "part0.parquet")
    return inp


def _job(tmp_path: Path, model: Path, **task) -> dict:
    generation = task.pop("generation", {"max_new_tokens": 96, "do_sample": False})
    return {"input": {"path": str(_input(tmp_path))}, "model": {"path": str(model), "task": "generate"},
            "task": {"messages": MESSAGES, "generation": generation, **task},
            "output": {"path": str(tmp_path / "out")}}


def _rows(tmp_path: Path) -> list[dict]:
    rows = {r["id"]: r for r in read_output(str(tmp_path / "out")).to_pylist()}
    return [rows[f"part0.parquet:{i}"] for i in range(len(TEXTS))]


def test_pipeline_choices_equal_greedy_where_valid(ray_session, qwen2, hf_tok, tmp_path):
    """``task.choices`` on a chat-templated job: every row one of the choices with finish_reason
    stop; rows whose unconstrained greedy answer is a choice keep it."""
    model = AutoModelForCausalLM.from_pretrained(qwen2).eval()
    prompts = [(i, _prompt(hf_tok, t)) for i, t in enumerate(TEXTS)]
    clean = _clean_answers(model, hf_tok, prompts, 2)
    assert clean
    choices = sorted({text for _, text in clean.values()}) + ["yes", "no"]
    report = run(_job(tmp_path, qwen2, choices=choices))
    assert report.errors == 0
    for i, row in enumerate(_rows(tmp_path)):
        assert row["generated_text"] in choices and row["finish_reason"] == "stop", row
        if i in clean:
            assert row["generated_text"] == clean[i][1] and row["num_generated_tokens"] == 3


@pytest.mark.parametrize("kind", ["json_schema", "regex"])
def test_pipeline_json_schema_and_regex_valid_by_construction(ray_session, qwen2, tmp_path, kind):
    report = run(_job(tmp_path, qwen2, **{kind: VALUES[kind]}))
    assert report.errors == 0
    for row in _rows(tmp_path):
        assert row["finish_reason"] == "stop" and VALID[kind](row["generated_text"]), row


def test_constraint_refusals_before_any_row(qwen2, tmp_path):
    import ray

    was_up = ray.is_initialized()
    cases = [
        ({"regex": "[a-z"}, r"task.regex is not valid"),
        ({"json_schema": {"type": "objet"}}, r"task.json_schema is not valid: .*objet"),
        ({"choices": ["a", "a"]}, r"task.choices lists \['a'\] more than once"),
        ({"choices": ["a"], "regex": "a"}, r"set one of .* not choices and regex"),
        ({"choices": ["a"], "generation": {"num_beams": 2}}, r"task.choices runs greedy search or sampling"),
        ({"regex": "a+", "generation": {"min_new_tokens": 2}}, r"task.regex decides where the answer ends"),
    ]
    for n, (task, message) in enumerate(cases):
        with pytest.raises(PreflightError, match=message):
            preflight(load_config(_job(tmp_path / str(n), qwen2, **task)))
    assert ray.is_initialized() == was_up


def test_pipeline_never_writes_unconstrained_answers(ray_session, qwen2, tmp_path):
    """A checkpoint whose generation config cannot hold with a constraint (a minimum length): the
    batch fails, the rows are retried through ``generate`` (still constrained) and each becomes an
    error record naming the setting; no row is written unconstrained."""
    import shutil

    model = tmp_path / "min-length"
    shutil.copytree(qwen2, model)
    config = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**config, "min_length": 3}))
    job = _job(tmp_path, model, choices=["yes", "no"])
    job["output"]["max_error_fraction"] = 1.0
    report = run(job)
    assert report.errors == len(TEXTS)
    for row in _rows(tmp_path):
        assert row["generated_text"] is None and "min_length=3 cannot apply" in row["error"], row
