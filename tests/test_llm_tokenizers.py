"""Decoder-only LLM tokenizers as they sit on the Hub, against transformers 4.57.6 on the same files.

- SentencePiece-only `tokenizer.model` checkpoints (Llama-2, Mistral v0.1: LlamaTokenizer; Gemma:
  GemmaTokenizer), with transformers' `legacy`, `add_prefix_space`, `add_bos_token` and
  `add_eos_token` behaviour, converted at load like transformers' LlamaConverter / GemmaConverter
  (byte fallback kept). Tiny models are trained here with the `sentencepiece` trainer.
- The same tokenizers saved as tokenizer.json (how most Llama-2 / Mistral / Gemma repos ship), where
  `add_bos_token` / `add_eos_token` of tokenizer_config.json rebuild the post-processor.
- Byte-level BPE tokenizer.json files in the Llama-3 (PreTrainedTokenizerFast + TemplateProcessing)
  and Qwen2 (Qwen2Tokenizer) layouts, built with the `tokenizers` library.

Texts cover leading/inner/trailing spaces, tabs and newlines, unicode and emoji (byte fallback),
digits, and special tokens written inside the text.
"""

from __future__ import annotations

import json
import os

import pytest
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from rayformers.models import AutoTokenizer
from rayformers.models.tokenization import TokenizerNotFoundError
from test_slow_tokenizers import CORPUS, _spm_checkpoint, _train_spm, _write_config

transformers.logging.set_verbosity_error()

TEXTS = [
    "Hello world!",
    " leading space and trailing space ",
    "two  spaces\tand a tab\nnewline\n\nblank line\r\nwindows",
    "café naïve 你好 日本語 😀👍🏽",
    "digits 1234567 and 3.14, don't I'LL",
    "Hello <s>. and </s> inline <unk> <pad>",
    "<bos>gemma <eos> <start_of_turn>user\nhi<end_of_turn>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhey<|im_end|>",
    "   ",
    "\n",
    "",
]
# Texts on which transformers' slow sentencepiece classes and its fast ones agree (inline special
# tokens and runs of whitespace are where the slow classes differ from the fast ones in transformers).
SIMPLE_TEXTS = ["Hello world!", "café naïve 你好 日本語 😀👍🏽", "digits 1234567 and 3.14, don't", "x"]


def _assert_same(ours, ref, texts=TEXTS):
    pairs = texts[::-1]
    for args in ((texts,), (texts, pairs)):
        got, want = ours(*args), ref(*args)
        assert list(got.keys()) == list(want.keys())
        for key in want:
            assert got[key] == want[key], (key, args)
    for text in texts:
        assert ours.tokenize(text) == ref.tokenize(text), text
    ids = ref(texts)["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == ref.batch_decode(ids, skip_special_tokens=skip)
    assert ours.get_vocab() == ref.get_vocab()
    assert ours.all_special_ids == ref.all_special_ids
    assert ours.padding_side == ref.padding_side and ours.model_input_names == ref.model_input_names


@pytest.fixture(scope="module")
def spm_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm-spm")
    return {
        # Llama-2 / Mistral v0.1: BPE with byte fallback, <unk>=0 <s>=1 </s>=2.
        "llama": _train_spm(str(root / "llama"), CORPUS, "bpe", 420, byte_fallback=True, unk_id=0, bos_id=1,
                            eos_id=2, pad_id=-1),
        # Gemma: <pad>=0 <eos>=1 <bos>=2 <unk>=3, turn markers as user-defined pieces, spaces kept.
        "gemma": _train_spm(str(root / "gemma"), CORPUS, "bpe", 420, byte_fallback=True, pad_id=0, eos_id=1,
                            bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
                            unk_piece="<unk>", split_digits=True, allow_whitespace_only_pieces=True,
                            remove_extra_whitespaces=False, normalization_rule_name="identity", add_dummy_prefix=False,
                            user_defined_symbols=["<start_of_turn>", "<end_of_turn>"]),
    }


SPM_LAYOUTS = {
    "llama": ("llama", {"tokenizer_class": "LlamaTokenizer"}),
    "llama-not-legacy": ("llama", {"tokenizer_class": "LlamaTokenizer", "legacy": False}),
    "llama-no-prefix-space": ("llama", {"tokenizer_class": "LlamaTokenizer", "legacy": False,
                                        "add_prefix_space": False}),
    "llama-legacy-no-prefix-space": ("llama", {"tokenizer_class": "LlamaTokenizer", "add_prefix_space": False}),
    "llama-eos-no-bos": ("llama", {"tokenizer_class": "LlamaTokenizer", "add_bos_token": False,
                                   "add_eos_token": True}),
    "gemma": ("gemma", {"tokenizer_class": "GemmaTokenizer"}),
    "gemma-eos": ("gemma", {"tokenizer_class": "GemmaTokenizer", "add_eos_token": True}),
}


@pytest.fixture(scope="module")
def spm_dirs(spm_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("llm-spm-checkpoints")
    return {name: _spm_checkpoint(root, name, spm_files[key], "tokenizer.model", **config)
            for name, (key, config) in SPM_LAYOUTS.items()}


@pytest.mark.parametrize("case", list(SPM_LAYOUTS))
def test_sentencepiece_only_checkpoints_match_transformers(spm_dirs, case):
    ref = transformers.AutoTokenizer.from_pretrained(spm_dirs[case])
    assert type(ref).__name__ in ("LlamaTokenizerFast", "GemmaTokenizerFast")
    ours = AutoTokenizer.from_pretrained(spm_dirs[case])
    _assert_same(ours, ref)
    # Padding side is left for these classes; padded batches must agree too (Llama has no pad token).
    if ref.pad_token is None:
        ref.pad_token = ours.pad_token = ref.eos_token
    got = ours(TEXTS, padding=True, truncation=True, max_length=9)
    want = ref(TEXTS, padding=True, truncation=True, max_length=9)
    assert dict(got) == dict(want)


@pytest.mark.parametrize("case", ["llama-not-legacy", "gemma"])
def test_sentencepiece_only_checkpoints_match_the_slow_classes(spm_dirs, case):
    slow = transformers.AutoTokenizer.from_pretrained(spm_dirs[case], use_fast=False)
    assert type(slow).__name__ in ("LlamaTokenizer", "GemmaTokenizer")
    ours = AutoTokenizer.from_pretrained(spm_dirs[case])
    assert ours(SIMPLE_TEXTS)["input_ids"] == slow(SIMPLE_TEXTS)["input_ids"]


def test_byte_fallback_pieces_are_kept(spm_dirs):
    """Characters outside the tiny model's alphabet become <0x..> byte pieces, not <unk> (Llama-2)."""
    ours = AutoTokenizer.from_pretrained(spm_dirs["llama"])
    tokens = ours.tokenize("Ж")
    assert tokens and all(token.startswith("<0x") or token == "▁" for token in tokens), tokens
    assert ours.decode(ours("Ж Ж", add_special_tokens=False)["input_ids"]) == "Ж Ж"


def test_model_type_picks_the_class_without_tokenizer_class(spm_files, tmp_path):
    """Mistral v0.1 style: config.json names model_type "mistral", tokenizer_config.json no class."""
    directory = _spm_checkpoint(tmp_path, "mistral", spm_files["llama"], "tokenizer.model")
    (directory / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    ref = transformers.AutoTokenizer.from_pretrained(directory)
    ours = AutoTokenizer.from_pretrained(directory)
    assert type(ref).__name__ == "LlamaTokenizerFast" and ours.tokenizer_class == "LlamaTokenizerFast"
    _assert_same(ours, ref)


@pytest.mark.parametrize("case", ["llama", "llama-not-legacy", "gemma"])
def test_tokenizer_json_with_add_bos_eos_overrides_match_transformers(spm_dirs, tmp_path, case):
    """The Hub layout: tokenizer.json next to tokenizer_config.json, whose add_bos_token / add_eos_token
    rebuild the post-processor at load (a Mistral config with add_eos_token=true)."""
    transformers.AutoTokenizer.from_pretrained(spm_dirs[case]).save_pretrained(tmp_path)
    os.remove(tmp_path / "tokenizer.model")  # only tokenizer.json remains
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    for add_bos, add_eos in ((True, False), (False, True), (True, True)):
        config.update(add_bos_token=add_bos, add_eos_token=add_eos)
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
        ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
        ours = AutoTokenizer.from_pretrained(tmp_path)
        _assert_same(ours, ref)
        assert ours("x")["input_ids"][0] == (ref.bos_token_id if add_bos else ref("x")["input_ids"][0])


@pytest.mark.parametrize("overrides", [{"legacy": False, "from_slow": True}, {"from_slow": True},
                                       {"add_prefix_space": False}, {"legacy": False}])
def test_saved_llama_tokenizer_rebuilt_from_tokenizer_model_matches_transformers(spm_dirs, tmp_path, overrides):
    """A saved fast tokenizer (tokenizer.json + tokenizer.model, "add_prefix_space": null in its config)
    rebuilt from the SentencePiece model: the explicit null reaches the slow class, unlike a missing key."""
    transformers.AutoTokenizer.from_pretrained(spm_dirs["llama"]).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["add_prefix_space"] is None
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, **overrides)
    ours = AutoTokenizer.from_pretrained(tmp_path, **overrides)
    _assert_same(ours, ref)


def test_setting_add_eos_token_rebuilds_the_post_processor(spm_dirs):
    ref = transformers.AutoTokenizer.from_pretrained(spm_dirs["llama"])
    ours = AutoTokenizer.from_pretrained(spm_dirs["llama"])
    for tokenizer in (ref, ours):
        tokenizer.add_eos_token = True
        tokenizer.add_bos_token = False
    assert ours(TEXTS, TEXTS[::-1])["input_ids"] == ref(TEXTS, TEXTS[::-1])["input_ids"]
    assert ours("x")["input_ids"][-1] == ours.eos_token_id


def test_saved_llama_tokenizer_round_trips_through_transformers(spm_dirs, tmp_path):
    ours = AutoTokenizer.from_pretrained(spm_dirs["llama-eos-no-bos"])
    ours.save_pretrained(tmp_path)
    ref = transformers.AutoTokenizer.from_pretrained(spm_dirs["llama-eos-no-bos"])
    for reloaded in (transformers.AutoTokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert reloaded(TEXTS)["input_ids"] == ref(TEXTS)["input_ids"]


def test_add_prefix_space_without_tokenizer_model_is_refused(spm_dirs, tmp_path):
    transformers.AutoTokenizer.from_pretrained(spm_dirs["llama"]).save_pretrained(tmp_path)
    os.remove(tmp_path / "tokenizer.model")
    with pytest.raises(ValueError, match="tokenizer.model"):
        AutoTokenizer.from_pretrained(tmp_path, add_prefix_space=False)


# ---- byte-level BPE tokenizer.json (Llama-3, Qwen2) ----

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_level_bpe(pattern: str) -> Tokenizer:
    tok = Tokenizer(models.BPE(fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=500, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@pytest.fixture(scope="module")
def byte_level_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("byte-level")
    llama3 = _byte_level_bpe(LLAMA3_PATTERN)
    llama3.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIALS])
    bos = llama3.token_to_id("<|begin_of_text|>")
    llama3.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    (root / "llama3").mkdir()
    llama3.save(str(root / "llama3" / "tokenizer.json"))
    _write_config(root / "llama3", tokenizer_class="PreTrainedTokenizerFast", bos_token="<|begin_of_text|>",
                  eos_token="<|eot_id|>", clean_up_tokenization_spaces=True,
                  model_input_names=["input_ids", "attention_mask"], model_max_length=131072)

    qwen2 = _byte_level_bpe(QWEN2_PATTERN)
    qwen2.normalizer = normalizers.NFC()
    qwen2.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    qwen2.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN2_SPECIALS])
    (root / "qwen2").mkdir()
    qwen2.save(str(root / "qwen2" / "tokenizer.json"))
    qwen2.model.save(str(root / "qwen2"))  # vocab.json + merges.txt, as Qwen2 repos ship them too
    _write_config(root / "qwen2", tokenizer_class="Qwen2Tokenizer", bos_token=None, eos_token="<|im_end|>",
                  pad_token="<|endoftext|>", unk_token=None, errors="replace", split_special_tokens=False,
                  clean_up_tokenization_spaces=False, model_max_length=32768,
                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    return {"llama3": root / "llama3", "qwen2": root / "qwen2"}


@pytest.mark.parametrize("case", ["llama3", "qwen2"])
def test_byte_level_bpe_tokenizer_json_matches_transformers(byte_level_dirs, case):
    ref = transformers.AutoTokenizer.from_pretrained(byte_level_dirs[case])
    ours = AutoTokenizer.from_pretrained(byte_level_dirs[case])
    assert type(ref).__name__ == {"llama3": "PreTrainedTokenizerFast", "qwen2": "Qwen2TokenizerFast"}[case]
    _assert_same(ours, ref)
    assert ours.eos_token_id == ref.eos_token_id and ours.pad_token_id == ref.pad_token_id
    assert ours.bos_token_id == ref.bos_token_id
    # Decoding a generated continuation (what generate() does) agrees with transformers too.
    ids = ref("café 😀 <|im_end|> 12345", add_special_tokens=False)["input_ids"]
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


def test_qwen2_config_from_model_type(byte_level_dirs, tmp_path):
    """Qwen2 checkpoints whose tokenizer_config.json names no class: config.json's model_type decides."""
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((byte_level_dirs["qwen2"] / name).read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = AutoTokenizer.from_pretrained(tmp_path)
    assert type(ref).__name__ == "Qwen2TokenizerFast" and ours.tokenizer_class == "Qwen2TokenizerFast"
    _assert_same(ours, ref)


def test_gemma_directory_without_tokenizer_files_names_tokenizer_model(tmp_path):
    _write_config(tmp_path, tokenizer_class="GemmaTokenizer")
    with pytest.raises(TokenizerNotFoundError, match="tokenizer.model"):
        AutoTokenizer.from_pretrained(tmp_path)
