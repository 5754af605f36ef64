"""`apply_chat_template` against transformers 4.57.6 with real-world chat templates.

The Llama-3, Qwen2.5, Mistral-instruct and Gemma templates (tests/data/chat_templates) are stored in
every layout checkpoints use -- tokenizer_config.json "chat_template" as a string or as a list of
`{name, template}`, chat_template.jinja, additional_chat_templates/<name>.jinja -- next to one tiny
byte-level BPE tokenizer that knows all their special tokens. Text and ids must equal transformers'
for system prompts, multi-turn chats, generation prompts, continued final messages, tools, batches,
templates that call raise_exception, and what transformers adds to Jinja (strftime_now, tojson
options, loop controls, {% generation %} blocks and assistant masks).
"""

from __future__ import annotations

import json
import os
import pathlib

import jinja2
import pytest
import transformers
from tokenizers import AddedToken

from rayformers.models import AutoTokenizer
from rayformers.models.tokenization.chat_template import ChatTemplateError
from test_llm_tokenizers import QWEN2_PATTERN, _byte_level_bpe

transformers.logging.set_verbosity_error()

TEMPLATE_DIR = pathlib.Path(__file__).parent / "data" / "chat_templates"
TEMPLATES = {name: (TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8")
             for name in ("llama3", "qwen2.5", "mistral", "gemma", "features")}
SPECIALS = ["<s>", "</s>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|im_start|>", "<|im_end|>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "[INST]", "[/INST]"]

SYSTEM_CHAT = [
    {"role": "system", "content": "You are a terse assistant.\nAnswer in one line."},
    {"role": "user", "content": "  What is 2+2? café 😀 "},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And <b>3+3</b> & \"quotes\"?"},
]
ALTERNATING_CHAT = SYSTEM_CHAT[1:]
ONE_TURN = [{"role": "user", "content": "Hello!"}]


def _write_tokenizer(directory: pathlib.Path, **config) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    tok = _byte_level_bpe(QWEN2_PATTERN)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "model_input_names": ["input_ids", "attention_mask"], **config}))
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    out = {}
    for name, template in TEMPLATES.items():
        out[f"{name}-config"] = _write_tokenizer(root / f"{name}-config", chat_template=template)
        directory = _write_tokenizer(root / f"{name}-jinja")
        (directory / "chat_template.jinja").write_text(template, encoding="utf-8")
        out[f"{name}-jinja"] = directory
    out["named-list"] = _write_tokenizer(root / "named-list", chat_template=[
        {"name": "default", "template": TEMPLATES["qwen2.5"]}, {"name": "llama3", "template": TEMPLATES["llama3"]},
        {"name": "tool_use", "template": TEMPLATES["qwen2.5"]}])
    out["named-list-no-default"] = _write_tokenizer(root / "named-list-no-default", chat_template=[
        {"name": "gemma", "template": TEMPLATES["gemma"]}, {"name": "mistral", "template": TEMPLATES["mistral"]}])
    directory = _write_tokenizer(root / "additional-files", chat_template="ignored: files win")
    (directory / "chat_template.jinja").write_text(TEMPLATES["llama3"], encoding="utf-8")
    (directory / "additional_chat_templates").mkdir()
    (directory / "additional_chat_templates" / "gemma.jinja").write_text(TEMPLATES["gemma"], encoding="utf-8")
    out["additional-files"] = directory
    out["none"] = _write_tokenizer(root / "none")
    return out


def _both(directory):
    return AutoTokenizer.from_pretrained(directory), transformers.AutoTokenizer.from_pretrained(directory)


def _assert_same_output(ours, ref, conversation, **kwargs):
    want_text = ref.apply_chat_template(conversation, tokenize=False, **kwargs)
    got_text = ours.apply_chat_template(conversation, tokenize=False, **kwargs)
    assert got_text == want_text
    assert ours.apply_chat_template(conversation, **kwargs) == ref.apply_chat_template(conversation, **kwargs)
    return got_text


CASES = [
    ("llama3", SYSTEM_CHAT), ("qwen2.5", SYSTEM_CHAT), ("qwen2.5", ALTERNATING_CHAT), ("mistral", ALTERNATING_CHAT),
    ("gemma", ALTERNATING_CHAT), ("llama3", ONE_TURN), ("gemma", ONE_TURN),
]


@pytest.mark.parametrize("layout", ["config", "jinja"])
@pytest.mark.parametrize("name,conversation", CASES, ids=[f"{n}-{len(c)}" for n, c in CASES])
def test_real_templates_match_transformers(checkpoints, layout, name, conversation):
    ours, ref = _both(checkpoints[f"{name}-{layout}"])
    for add_generation_prompt in (False, True):
        text = _assert_same_output(ours, ref, conversation, add_generation_prompt=add_generation_prompt)
        assert conversation[-1]["content"].strip() in text
    # The template writes bos itself: tokenize=True must not add a second one.
    ids = ours.apply_chat_template(conversation)
    if name in ("llama3", "mistral", "gemma"):
        assert ids[0] == ours.bos_token_id and ids[1] != ours.bos_token_id


def test_continue_final_message_matches_transformers(checkpoints):
    prefill = ALTERNATING_CHAT + [{"role": "assistant", "content": "The answer is "}]
    for name in ("llama3", "qwen2.5", "gemma"):
        ours, ref = _both(checkpoints[f"{name}-jinja"])
        text = _assert_same_output(ours, ref, prefill, continue_final_message=True)
        assert text.rstrip().endswith("The answer is")
        with pytest.raises(ValueError, match="not compatible"):
            ours.apply_chat_template(prefill, continue_final_message=True, add_generation_prompt=True)


def test_template_that_raises_reaches_the_caller_with_its_message(checkpoints):
    for name, chat, message in (("gemma", SYSTEM_CHAT, "System role not supported"),
                                ("mistral", ONE_TURN * 2, "Conversation roles must alternate")):
        ours, ref = _both(checkpoints[f"{name}-jinja"])
        with pytest.raises(jinja2.TemplateError, match=message):
            ref.apply_chat_template(chat)
        with pytest.raises(jinja2.TemplateError, match=message):
            ours.apply_chat_template(chat)


def test_tools_and_extra_template_variables_match_transformers(checkpoints):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather <now> & later",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string", "description": "Zürich"}}}}}]
    chat = ALTERNATING_CHAT + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]},
        {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "22°C"}]
    ours, ref = _both(checkpoints["qwen2.5-jinja"])
    _assert_same_output(ours, ref, chat, tools=tools, add_generation_prompt=True)
    with pytest.raises(TypeError, match="JSON schema"):
        ours.apply_chat_template(chat, tools=[len])


def test_transformers_jinja_extensions_match(checkpoints):
    """strftime_now, tojson without HTML escaping and with indent/sort_keys, break/continue, generation blocks."""
    ours, ref = _both(checkpoints["features-config"])
    chat = [{"role": "user", "content": "hi"}, {"role": "skip", "content": "never"},
            {"role": "assistant", "content": "hello <b>there</b>"}, {"role": "user", "content": "again"},
            {"role": "stop", "content": ""}, {"role": "user", "content": "never either"}]
    extra = {"b": "<tag> & \"q\" ü", "a": [1, 2]}
    text = _assert_same_output(ours, ref, chat, add_generation_prompt=True, extra=extra)
    assert "never" not in text and '"<tag> & \\"q\\" ü"' in text
    got = ours.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
    want = ref.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
    assert got["input_ids"] == want["input_ids"] and got["assistant_masks"] == want["assistant_masks"]
    assert 1 in got["assistant_masks"]
    # Special tokens are template variables; keyword arguments override them.
    assert ours.apply_chat_template(chat, tokenize=False, bos_token="[B]").startswith("[B]")


def test_batches_padding_and_tensors_match_transformers(checkpoints):
    ours, ref = _both(checkpoints["qwen2.5-config"])
    ours.pad_token = ref.pad_token = "<|im_end|>"
    batch = [SYSTEM_CHAT, ONE_TURN]
    assert (ours.apply_chat_template(batch, tokenize=False, add_generation_prompt=True)
            == ref.apply_chat_template(batch, tokenize=False, add_generation_prompt=True))
    got = ours.apply_chat_template(batch, padding=True, return_dict=True, return_tensors="pt")
    want = ref.apply_chat_template(batch, padding=True, return_dict=True, return_tensors="pt")
    assert got["input_ids"].tolist() == want["input_ids"].tolist()
    assert got["attention_mask"].tolist() == want["attention_mask"].tolist()
    got = ours.apply_chat_template(batch, truncation=True, max_length=7)
    assert got == ref.apply_chat_template(batch, truncation=True, max_length=7)


def test_named_templates_are_chosen_as_in_transformers(checkpoints):
    ours, ref = _both(checkpoints["named-list"])
    assert isinstance(ours.chat_template, dict) and set(ours.chat_template) == {"default", "llama3", "tool_use"}
    for kwargs in ({}, {"chat_template": "llama3"}, {"chat_template": TEMPLATES["gemma"]},
                   {"tools": [{"type": "function", "function": {"name": "f"}}]}):
        _assert_same_output(ours, ref, ALTERNATING_CHAT, **kwargs)
    ours, ref = _both(checkpoints["named-list-no-default"])
    _assert_same_output(ours, ref, ALTERNATING_CHAT, chat_template="mistral")
    with pytest.raises(ValueError, match=r"\['gemma', 'mistral'\]"):
        ours.apply_chat_template(ALTERNATING_CHAT)


def test_template_files_win_over_the_config(checkpoints):
    ours, ref = _both(checkpoints["additional-files"])
    assert ours.chat_template == ref.chat_template == {"default": TEMPLATES["llama3"], "gemma": TEMPLATES["gemma"]}
    for kwargs in ({}, {"chat_template": "gemma"}):
        _assert_same_output(ours, ref, ALTERNATING_CHAT, add_generation_prompt=True, **kwargs)


def test_saved_templates_load_back_in_both_libraries(checkpoints, tmp_path):
    for case in ("llama3-config", "named-list"):
        ours = AutoTokenizer.from_pretrained(checkpoints[case])
        ours.save_pretrained(tmp_path / case)
        for reloaded in (AutoTokenizer.from_pretrained(tmp_path / case),
                         transformers.AutoTokenizer.from_pretrained(tmp_path / case)):
            assert reloaded.chat_template == ours.chat_template


def test_checkpoint_without_template_names_the_fix(checkpoints):
    ours = AutoTokenizer.from_pretrained(checkpoints["none"])
    with pytest.raises(ChatTemplateError, match="has no chat template.*chat_template=.*chat_template.jinja") as err:
        ours.apply_chat_template(ONE_TURN)
    assert os.fspath(checkpoints["none"]) in str(err.value)
    # An explicit template string works without one in the checkpoint.
    ref = transformers.AutoTokenizer.from_pretrained(checkpoints["none"])
    _assert_same_output(ours, ref, ONE_TURN, chat_template=TEMPLATES["llama3"])
