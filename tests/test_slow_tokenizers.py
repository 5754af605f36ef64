"""Checkpoints with slow-tokenizer files only, against transformers 4.57.6 on the same files.

Tiny SentencePiece models (Unigram and BPE, trained here with the `sentencepiece` trainer, a test-only
dependency) and tiny WordPiece / byte-level BPE vocabularies (trained with `tokenizers`) are saved in
each checkpoint layout -- T5/Pegasus/ALBERT `spiece.model`, XLM-R/CamemBERT/NLLB/mBART
`sentencepiece.bpe.model`, DeBERTa-v2 `spm.model`, BERT `vocab.txt`, GPT-2/RoBERTa/BART
`vocab.json` + `merges.txt`, Marian `source.spm` + `target.spm` + `vocab.json`, M2M100 `vocab.json` +
`sentencepiece.bpe.model` -- and loaded by both libraries. Ids, masks, tokens and decoded text must be
identical on texts with unicode, odd whitespace, characters the models never saw, inline special
tokens and pairs.
"""

from __future__ import annotations

import json
import os

import pytest
import sentencepiece as spm
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rayformers.models import AutoTokenizer
from rayformers.models.tokenization import TokenizerFormatError, TokenizerNotFoundError
from rayformers.models.tokenization.language_codes import UnknownLanguageCodeError

transformers.logging.set_verbosity_error()

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Don't stop believing, it's fine! Aren't they?",
    "Hello world, this is a small corpus for tiny tokenizers.",
    "café naïve résumé über straße",
    "Numbers like 1,000 and 3.14 appear here too.",
    "你好世界 今天",
    "Translation models read one sentence and write another one.",
    "A second line with other words: apple banana cherry.",
] * 20
TARGET_CORPUS = [
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Hallo Welt, das ist ein kleiner Korpus.",
    "Übersetzungsmodelle lesen einen Satz und schreiben einen anderen.",
    "Zahlen wie 1.000 und 3,14 kommen auch vor.",
] * 20

TEXTS = [
    "Hello world!",
    "The quick brown fox, Don't stop. it's fine?",
    "  leading and trailing spaces  ",
    "multiple    inner   spaces\tand a tab\nand a newline",
    "café naïve ÜBER Straße résumé",
    "unknown chars: Привет мир 😀👍🏽 ☃",
    "",
    "1,000 and 3.14 and 12,5",
    "inline specials: </s> <pad> <unk> [CLS] [SEP] [MASK] <mask> end",
]
PAIRS = ["A second text.", "zweiter Satz", "x", "", "другой 😀", "y z", "tiny", "one more", "<s> q"]


def _train_spm(path_prefix: str, corpus, model_type: str, vocab_size: int, **options) -> str:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=path_prefix, vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2, num_threads=1, **options)
    return path_prefix + ".model"


def _write_config(directory, **config) -> None:
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as handle:
        json.dump(config, handle)


@pytest.fixture(scope="module")
def spm_models(tmp_path_factory):
    """One model per special-token layout and algorithm."""
    root = tmp_path_factory.mktemp("spm")
    out = {}
    for kind in ("unigram", "bpe"):
        size = 90 if kind == "unigram" else 150
        # T5 / Pegasus: <pad>=0 </s>=1 <unk>=2.
        out["t5", kind] = _train_spm(str(root / f"t5-{kind}"), CORPUS, kind, size,
                                     pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
        # fairseq models (XLM-R, CamemBERT, NLLB, mBART, M2M100): sentencepiece's defaults <unk> <s> </s>.
        out["fairseq", kind] = _train_spm(str(root / f"fairseq-{kind}"), CORPUS, kind, size)
    # ALBERT: <pad>=0 <unk>=1 [CLS]=2 [SEP]=3 [MASK]=4.
    out["albert"] = _train_spm(str(root / "albert"), CORPUS, "unigram", 90, pad_id=0, unk_id=1, bos_id=-1,
                               eos_id=-1, control_symbols=["[CLS]", "[SEP]", "[MASK]"])
    # DeBERTa-v3: [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3.
    out["deberta"] = _train_spm(str(root / "deberta"), CORPUS, "unigram", 90, pad_id=0, bos_id=1, eos_id=2,
                                unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]")
    # Marian: a source and a target model.
    out["marian-source"] = _train_spm(str(root / "marian-src"), CORPUS, "unigram", 90)
    out["marian-target"] = _train_spm(str(root / "marian-tgt"), TARGET_CORPUS, "unigram", 80)
    return out


def _spm_checkpoint(root, name: str, model: str, model_file: str, **config):
    directory = root / name
    directory.mkdir()
    with open(model, "rb") as source, open(directory / model_file, "wb") as target:
        target.write(source.read())
    _write_config(directory, **config)
    return directory


SPM_LAYOUTS = {
    # name: (spm model key, file name, tokenizer_config)
    "t5": ("t5", "spiece.model", {"tokenizer_class": "T5Tokenizer", "extra_ids": 3}),
    "t5-not-legacy": ("t5", "spiece.model", {"tokenizer_class": "T5Tokenizer", "extra_ids": 3, "legacy": False}),
    "pegasus": ("t5", "spiece.model", {"tokenizer_class": "PegasusTokenizer", "offset": 5}),
    "albert": ("albert", "spiece.model", {"tokenizer_class": "AlbertTokenizer"}),
    "albert-cased": ("albert", "spiece.model", {"tokenizer_class": "AlbertTokenizer", "do_lower_case": False,
                                                "keep_accents": True}),
    "xlm-roberta": ("fairseq", "sentencepiece.bpe.model", {"tokenizer_class": "XLMRobertaTokenizer"}),
    "camembert": ("fairseq", "sentencepiece.bpe.model", {"tokenizer_class": "CamembertTokenizer"}),
    "deberta-v2": ("deberta", "spm.model", {"tokenizer_class": "DebertaV2Tokenizer"}),
    "deberta-v2-punct": ("deberta", "spm.model", {"tokenizer_class": "DebertaV2Tokenizer", "split_by_punct": True,
                                                  "do_lower_case": True}),
    "nllb": ("fairseq", "sentencepiece.bpe.model", {"tokenizer_class": "NllbTokenizer"}),
    "mbart": ("fairseq", "sentencepiece.bpe.model", {"tokenizer_class": "MBartTokenizer"}),
    "mbart-50": ("fairseq", "sentencepiece.bpe.model", {"tokenizer_class": "MBart50Tokenizer"}),
}


@pytest.fixture(scope="module")
def spm_dirs(spm_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("spm-checkpoints")
    out = {}
    for name, (key, file_name, config) in SPM_LAYOUTS.items():
        kinds = ("unigram", "bpe") if key in ("t5", "fairseq") else (None,)
        for kind in kinds:
            model = spm_models[key, kind] if kind else spm_models[key]
            label = f"{name}-{kind}" if kind else name
            out[label] = _spm_checkpoint(root, label, model, file_name, **config)
    return out


def _wordpiece_dir(root, lowercase: bool, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")):
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=200, show_progress=False, special_tokens=list(specials))
    tok.train_from_iterator([t.lower() for t in CORPUS] if lowercase else CORPUS, trainer)
    directory = root / f"bert-{'uncased' if lowercase else 'cased'}{'' if len(specials) == 5 else '-few-specials'}"
    directory.mkdir()
    vocab = sorted(tok.get_vocab().items(), key=lambda item: item[1])
    (directory / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab), encoding="utf-8")
    _write_config(directory, tokenizer_class="BertTokenizer", do_lower_case=lowercase)
    return directory


def _byte_level_dir(root, name: str, config: dict, specials: list[str]):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    directory = root / name
    directory.mkdir()
    tok.model.save(str(directory))  # vocab.json + merges.txt (with the "#version" header)
    _write_config(directory, **config)
    return directory


@pytest.fixture(scope="module")
def vocab_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab-checkpoints")
    roberta_specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    return {
        "bert-uncased": _wordpiece_dir(root, True),
        "bert-cased": _wordpiece_dir(root, False),
        "roberta": _byte_level_dir(root, "roberta", {"tokenizer_class": "RobertaTokenizer"}, roberta_specials),
        "bart": _byte_level_dir(root, "bart", {"tokenizer_class": "BartTokenizer"}, roberta_specials),
        "roberta-prefix-space": _byte_level_dir(root, "roberta-prefix-space", {
            "tokenizer_class": "RobertaTokenizer", "add_prefix_space": True}, roberta_specials),
        "gpt2": _byte_level_dir(root, "gpt2", {"tokenizer_class": "GPT2Tokenizer"}, ["<|endoftext|>"]),
    }


def _assert_same_encodings(ours, ref, texts=TEXTS, pairs=PAIRS, compare_tokens=True, **options):
    for args in ((texts,), (texts, pairs)):
        got, want = ours(*args, **options), ref(*args, **options)
        assert list(got.keys()) == list(want.keys())
        for key in want:
            assert got[key] == want[key], (key, args[0])
    # Slow tokenizers show an unknown piece as its text, fast ones as the unknown token.
    for text in texts if compare_tokens else ():
        assert ours.tokenize(text) == ref.tokenize(text), text


def _assert_same_decoding(ours, ref, texts=TEXTS):
    ids = ref(texts)["input_ids"]
    for skip in (True, False):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == ref.batch_decode(ids, skip_special_tokens=skip)


def _assert_same_vocabulary(ours, ref):
    assert ours.get_vocab() == ref.get_vocab()
    assert len(ours) == len(ref) and ours.vocab_size == ref.vocab_size
    assert ours.all_special_tokens == ref.all_special_tokens
    assert ours.all_special_ids == ref.all_special_ids


SPM_CASES = [f"{name}-{kind}" for name, (key, _, _) in SPM_LAYOUTS.items() if key in ("t5", "fairseq")
             for kind in ("unigram", "bpe")] + [name for name, (key, _, _) in SPM_LAYOUTS.items()
                                                 if key not in ("t5", "fairseq")]


@pytest.mark.parametrize("case", SPM_CASES)
def test_sentencepiece_checkpoints_match_transformers(spm_dirs, case):
    ref = transformers.AutoTokenizer.from_pretrained(spm_dirs[case])
    ours = AutoTokenizer.from_pretrained(spm_dirs[case])
    assert type(ref).__name__.endswith("Fast")  # transformers converted the slow files too
    _assert_same_vocabulary(ours, ref)
    _assert_same_encodings(ours, ref)
    _assert_same_encodings(ours, ref, padding=True, truncation=True, max_length=12)
    _assert_same_decoding(ours, ref)


@pytest.mark.parametrize("case", ["bert-uncased", "bert-cased", "roberta", "bart", "roberta-prefix-space", "gpt2"])
def test_vocabulary_checkpoints_match_transformers(vocab_dirs, case):
    ref = transformers.AutoTokenizer.from_pretrained(vocab_dirs[case])
    ours = AutoTokenizer.from_pretrained(vocab_dirs[case])
    _assert_same_vocabulary(ours, ref)
    _assert_same_encodings(ours, ref)
    _assert_same_decoding(ours, ref)


@pytest.mark.parametrize("case", ["t5-unigram", "camembert-bpe", "deberta-v2", "nllb-unigram", "mbart-50-bpe",
                                  "bert-cased", "roberta"])
def test_directories_saved_by_transformers_slow_classes_match(spm_dirs, vocab_dirs, tmp_path, case):
    """The Hub's usual slow layout: what a slow class's save_pretrained writes (added_tokens.json,
    special_tokens_map.json, tokenizer_config.json with added_tokens_decoder) next to the vocabulary."""
    source = spm_dirs.get(case) or vocab_dirs[case]
    transformers.AutoTokenizer.from_pretrained(source, use_fast=False).save_pretrained(tmp_path)
    assert not (tmp_path / "tokenizer.json").exists()
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = AutoTokenizer.from_pretrained(tmp_path)
    _assert_same_vocabulary(ours, ref)
    _assert_same_encodings(ours, ref)
    _assert_same_decoding(ours, ref)


@pytest.mark.parametrize("case", ["t5-unigram", "xlm-roberta-bpe", "deberta-v2", "nllb-unigram"])
def test_converted_tokenizer_saves_a_tokenizer_json_transformers_loads(spm_dirs, tmp_path, case):
    ours = AutoTokenizer.from_pretrained(spm_dirs[case])
    ours.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    ref = transformers.AutoTokenizer.from_pretrained(spm_dirs[case])
    reloaded_ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for tokenizer in (reloaded_ref, reloaded):
        assert tokenizer(TEXTS, PAIRS)["input_ids"] == ref(TEXTS, PAIRS)["input_ids"]


def test_roberta_like_vocabulary_feeds_the_pipeline_loader(vocab_dirs):
    from rayformers.operators.loading import load_tokenizer

    tok = load_tokenizer(str(vocab_dirs["roberta"]))
    ref = transformers.AutoTokenizer.from_pretrained(vocab_dirs["roberta"])
    assert tok.encode_batch_for_model(TEXTS, max_length=16) == ref(TEXTS, truncation=True, max_length=16)["input_ids"]


def test_t5_add_prefix_space_rebuilds_from_spiece_model(spm_dirs, tmp_path):
    """transformers rebuilds T5 from spiece.model when add_prefix_space is set, even next to tokenizer.json."""
    AutoTokenizer.from_pretrained(spm_dirs["t5-unigram"]).save_pretrained(tmp_path)
    with open(spm_dirs["t5-unigram"] / "spiece.model", "rb") as handle:
        (tmp_path / "spiece.model").write_bytes(handle.read())
    ours = AutoTokenizer.from_pretrained(tmp_path, add_prefix_space=False)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, add_prefix_space=False)
    _assert_same_encodings(ours, ref)


# ---------------------------------------------------------------------------------------------
# Language codes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case,src,tgt", [
    ("nllb-unigram", "fra_Latn", "deu_Latn"), ("mbart-bpe", "ro_RO", "de_DE"), ("mbart-50-unigram", "fr_XX", "ja_XX"),
])
def test_language_codes_match_transformers(spm_dirs, case, src, tgt):
    ref = transformers.AutoTokenizer.from_pretrained(spm_dirs[case], src_lang=src, tgt_lang=tgt)
    ours = AutoTokenizer.from_pretrained(spm_dirs[case], src_lang=src, tgt_lang=tgt)
    _assert_same_encodings(ours, ref)
    got = ours(TEXTS, text_target=PAIRS, padding=True)
    want = ref(TEXTS, text_target=PAIRS, padding=True)
    assert dict(got) == dict(want)
    assert ours(text_target=PAIRS)["input_ids"] == ref(text_target=PAIRS)["input_ids"]
    assert ours.convert_tokens_to_ids(tgt) == ref.convert_tokens_to_ids(tgt)
    assert ours.lang_code_to_id == getattr(ref, "lang_code_to_id", ours.lang_code_to_id)
    # Changing the source language rewrites the special tokens, in both.
    for tokenizer in (ours, ref):
        tokenizer.src_lang = tgt
    assert ours(TEXTS)["input_ids"] == ref(TEXTS)["input_ids"]
    ours.set_src_lang_special_tokens(src)
    ref.set_src_lang_special_tokens(src)
    assert ours(TEXTS)["input_ids"] == ref(TEXTS)["input_ids"]
    assert (ours.prefix_tokens, ours.suffix_tokens) == (ref.prefix_tokens, ref.suffix_tokens)


def test_nllb_legacy_behaviour_puts_the_language_last(spm_dirs):
    ref = transformers.AutoTokenizer.from_pretrained(spm_dirs["nllb-bpe"], legacy_behaviour=True, tgt_lang="fra_Latn")
    ours = AutoTokenizer.from_pretrained(spm_dirs["nllb-bpe"], legacy_behaviour=True, tgt_lang="fra_Latn")
    assert ours(TEXTS, text_target=PAIRS)["labels"] == ref(TEXTS, text_target=PAIRS)["labels"]
    assert ours(TEXTS)["input_ids"] == ref(TEXTS)["input_ids"]


def test_unknown_language_code_names_it_and_the_accepted_ones(spm_dirs):
    with pytest.raises(UnknownLanguageCodeError, match=r"src_lang='xx_YY'.*fra_Latn"):
        AutoTokenizer.from_pretrained(spm_dirs["nllb-unigram"], src_lang="xx_YY")
    tok = AutoTokenizer.from_pretrained(spm_dirs["mbart-50-bpe"])
    with pytest.raises(UnknownLanguageCodeError, match=r"tgt_lang='fr'.*fr_XX"):
        tok.tgt_lang = "fr"
        tok(["a"], text_target=["b"])
    with pytest.raises(ValueError, match="needs a target language"):
        AutoTokenizer.from_pretrained(spm_dirs["mbart-bpe"])(text_target=["b"])


# ---------------------------------------------------------------------------------------------
# Marian and M2M100 (slow-only classes in transformers)
# ---------------------------------------------------------------------------------------------


def _pieces(model_path: str) -> list[str]:
    processor = spm.SentencePieceProcessor(model_file=model_path)
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


@pytest.fixture(scope="module")
def marian_dir(spm_models, tmp_path_factory):
    directory = tmp_path_factory.mktemp("marian")
    vocab = {"</s>": 0, "<unk>": 1, ">>de<<": 2, ">>fr<<": 3}
    for piece in _pieces(spm_models["marian-source"]) + _pieces(spm_models["marian-target"]):
        if piece not in vocab and piece not in ("<s>",):
            vocab[piece] = len(vocab)
    vocab["<pad>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    for key, name in (("marian-source", "source.spm"), ("marian-target", "target.spm")):
        with open(spm_models[key], "rb") as handle:
            (directory / name).write_bytes(handle.read())
    _write_config(directory, tokenizer_class="MarianTokenizer", source_lang="en", target_lang="de")
    return directory


def test_marian_matches_transformers(marian_dir, tmp_path):
    ref = transformers.AutoTokenizer.from_pretrained(marian_dir)
    ours = AutoTokenizer.from_pretrained(marian_dir)
    assert type(ref).__name__ == "MarianTokenizer"
    # A run of several characters the source model does not know is one unknown piece for
    # sentencepiece, whose text the slow tokenizer looks up in vocab.json; we give each character
    # that vocab.json knows its id. Lone unknown characters ("Ü" in "Über") agree; "ÜBER" (four
    # unknown to the tiny source model) would not -- a documented difference.
    texts = [text.replace("ÜBER", "Über") for text in TEXTS if "<" not in text] + [
        ">>de<< Hello world", "Hallo Welt über"]
    pairs = (PAIRS * 2)[:len(texts)]
    targets = (TARGET_CORPUS[:4] + ["", "  Straße  über ", "ÜBER"] + PAIRS)[:len(texts)]
    _assert_same_encodings(ours, ref, texts=texts, pairs=pairs, compare_tokens=False)
    got = ours(texts, text_target=targets, padding=True)
    want = ref(texts, text_target=targets, padding=True)
    assert dict(got) == dict(want)
    labels = want["labels"]
    assert ours.batch_decode(labels, skip_special_tokens=True) == ref.batch_decode(labels, skip_special_tokens=True)
    assert ours.get_vocab() == ref.get_vocab() and len(ours) == len(ref)
    vocab_tokens = list(ref.get_vocab())
    assert ours.convert_tokens_to_ids(vocab_tokens + ["never-seen"]) == ref.convert_tokens_to_ids(
        vocab_tokens + ["never-seen"])
    assert [ours.convert_ids_to_tokens(row) for row in labels] == [ref.convert_ids_to_tokens(row) for row in labels]
    ours.save_pretrained(tmp_path)
    reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(texts, text_target=targets, padding=True)["labels"] == labels


@pytest.fixture(scope="module")
def m2m100_dir(spm_models, tmp_path_factory):
    directory = tmp_path_factory.mktemp("m2m100")
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for piece in _pieces(spm_models["fairseq", "bpe"])[3:]:
        vocab.setdefault(piece, len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with open(spm_models["fairseq", "bpe"], "rb") as handle:
        (directory / "sentencepiece.bpe.model").write_bytes(handle.read())
    _write_config(directory, tokenizer_class="M2M100Tokenizer")
    return directory


def test_m2m100_matches_transformers(m2m100_dir):
    ref = transformers.AutoTokenizer.from_pretrained(m2m100_dir, src_lang="fr", tgt_lang="de")
    ours = AutoTokenizer.from_pretrained(m2m100_dir, src_lang="fr", tgt_lang="de")
    assert type(ref).__name__ == "M2M100Tokenizer"
    texts = [text for text in TEXTS if "<" not in text]
    _assert_same_encodings(ours, ref, texts=texts, pairs=PAIRS[:len(texts)], compare_tokens=False)
    assert dict(ours(texts, text_target=PAIRS[:len(texts)], padding=True)) == dict(
        ref(texts, text_target=PAIRS[:len(texts)], padding=True))
    assert ours.get_lang_id("ja") == ref.get_lang_id("ja")
    assert ours.convert_tokens_to_ids("__ja__") == ref.convert_tokens_to_ids("__ja__")
    ids = ref(texts)["input_ids"]
    assert ours.batch_decode(ids, skip_special_tokens=True) == ref.batch_decode(ids, skip_special_tokens=True)
    with pytest.raises(UnknownLanguageCodeError, match="'fr_XX'.*accepted"):
        ours.src_lang = "fr_XX"


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


# Special tokens that are no piece of the vocabulary file: the slow class adds them after its
# vocabulary, and transformers' converters write those ids (not the unknown id) into the post-processor.
ADDED_SPECIALS_LAYOUTS = {
    # name: (SentencePiece model without the special pieces, file name, tokenizer_config)
    "t5-without-eos": ("no-eos", "spiece.model", {"tokenizer_class": "T5Tokenizer", "extra_ids": 2}),
    "albert-without-cls-sep": ("no-eos", "spiece.model", {"tokenizer_class": "AlbertTokenizer"}),
    "deberta-v2-without-cls-sep": ("no-eos", "spm.model", {"tokenizer_class": "DebertaV2Tokenizer",
                                                           "unk_token": "<unk>", "pad_token": "<pad>"}),
    "camembert-without-bos-eos": ("no-bos", "sentencepiece.bpe.model", {"tokenizer_class": "CamembertTokenizer"}),
}


@pytest.fixture(scope="module")
def added_specials_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("added-specials")
    models_ = {
        "no-eos": _train_spm(str(root / "no-eos"), CORPUS, "unigram", 90, pad_id=0, unk_id=1, bos_id=-1, eos_id=-1),
        "no-bos": _train_spm(str(root / "no-bos"), CORPUS, "unigram", 90, unk_id=0, bos_id=-1, eos_id=-1),
    }
    out = {name: _spm_checkpoint(root, name, models_[key], file_name, **config)
           for name, (key, file_name, config) in ADDED_SPECIALS_LAYOUTS.items()}
    bert = _wordpiece_dir(root, lowercase=True, specials=["[PAD]", "[UNK]", "[MASK]"])
    out["bert-without-cls-sep"] = bert
    return out


@pytest.mark.parametrize("case", [*ADDED_SPECIALS_LAYOUTS, "bert-without-cls-sep"])
def test_special_tokens_outside_the_vocabulary_get_the_slow_class_ids(added_specials_dirs, tmp_path, case):
    ref = transformers.AutoTokenizer.from_pretrained(added_specials_dirs[case])
    ours = AutoTokenizer.from_pretrained(added_specials_dirs[case])
    _assert_same_vocabulary(ours, ref)
    _assert_same_encodings(ours, ref)
    ids = ours("Hello world", "x")["input_ids"]
    assert ours.unk_token_id not in ids  # the wrapping tokens are real ids, not <unk>
    # The same through what the slow class saves (added_tokens_decoder in tokenizer_config.json).
    transformers.AutoTokenizer.from_pretrained(added_specials_dirs[case], use_fast=False).save_pretrained(tmp_path)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = AutoTokenizer.from_pretrained(tmp_path)
    _assert_same_vocabulary(ours, ref)
    _assert_same_encodings(ours, ref)


def test_directory_without_any_tokenizer_file_names_what_it_looked_for(tmp_path):
    _write_config(tmp_path, tokenizer_class="XLMRobertaTokenizer")
    with pytest.raises(TokenizerNotFoundError, match="sentencepiece.bpe.model") as err:
        AutoTokenizer.from_pretrained(tmp_path)
    assert "tokenizer.json" in str(err.value)
    _write_config(tmp_path, tokenizer_class="MarianTokenizer")
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(TokenizerNotFoundError, match="missing: source.spm, target.spm"):
        AutoTokenizer.from_pretrained(tmp_path)


def test_corrupt_sentencepiece_model_is_named(spm_dirs, tmp_path):
    _write_config(tmp_path, tokenizer_class="T5Tokenizer")
    (tmp_path / "spiece.model").write_bytes(b"\x0a\xff\xff\xff garbage that is not a protobuf")
    with pytest.raises(TokenizerFormatError, match="spiece.model"):
        AutoTokenizer.from_pretrained(tmp_path)
    (tmp_path / "spiece.model").write_bytes(b"")
    with pytest.raises(TokenizerFormatError, match="spiece.model.*0 pieces"):
        AutoTokenizer.from_pretrained(tmp_path)


def test_corrupt_merges_file_is_named(vocab_dirs, tmp_path):
    for name in ("vocab.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((vocab_dirs["roberta"] / name).read_bytes())
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t h e\n")
    with pytest.raises(TokenizerFormatError, match="merges.txt"):
        AutoTokenizer.from_pretrained(tmp_path)
