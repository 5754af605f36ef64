"""Build a `tokenizers.Tokenizer` from slow-tokenizer files, as transformers' converters do.

Why: many checkpoints on the Hub ship only the files of a "slow" (Python) tokenizer -- `vocab.txt`
(BERT), `vocab.json` + `merges.txt` (GPT-2/RoBERTa/BART), a SentencePiece model (T5, Pegasus,
ALBERT, XLM-R, CamemBERT, DeBERTa-v2/v3, NLLB, mBART). transformers' `AutoTokenizer` turns them
into a fast tokenizer at load (`convert_slow_tokenizer.py`); ids only match transformers if the
backend is assembled the same way, so every converter below mirrors the transformers 4.57.6 class
of the same name: the same vocabulary order (fairseq offsets, appended language codes and sentinel
tokens), normalizers, pre-tokenizers, decoders and post-processors.

The converters read the files directly (the SentencePiece model through `sentencepiece_model`), so
neither transformers nor sentencepiece is needed at run time. Each one gets the tokenizer's keyword
arguments after the class defaults (`do_lower_case`, `extra_ids`, `offset`, ...), which is what the
transformers slow tokenizer would have seen.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import OrderedDict
from typing import Any, Callable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, Unigram, WordPiece

from .files import SPECIAL_TOKENS_ATTRIBUTES, TokenizerFormatError
from .language_codes import FAIRSEQ_MBART50_CODES, FAIRSEQ_MBART_CODES
from .sentencepiece_model import MODEL_BPE, MODEL_UNIGRAM, PIECE_CONTROL, PIECE_USER_DEFINED, load_sentencepiece_model

logger = logging.getLogger(__name__)

SPIECE_UNDERLINE = "▁"


# --------------------------------------------------------------------------------------------------
# WordPiece and byte-level BPE vocabularies
# --------------------------------------------------------------------------------------------------


def load_wordpiece_vocab(path: str) -> dict[str, int]:
    """BERT's vocab.txt: one token per line, its id is the line number (a repeated token keeps the last)."""
    vocab: dict[str, int] = OrderedDict()
    with open(path, encoding="utf-8") as handle:
        for index, line in enumerate(handle.readlines()):
            vocab[line.rstrip("\n")] = index
    if not vocab:
        raise TokenizerFormatError(f"{path} is empty; a WordPiece vocab.txt holds one token per line.")
    return vocab


def load_json_vocab(path: str) -> dict[str, int]:
    try:
        with open(path, encoding="utf-8") as handle:
            vocab = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TokenizerFormatError(f"{path} is not valid JSON ({err}); the vocabulary file is corrupt.") from err
    if not isinstance(vocab, dict) or not all(isinstance(index, int) for index in vocab.values()):
        raise TokenizerFormatError(f"{path} must map each token to an integer id.")
    return vocab


def load_bpe_merges(path: str) -> list[tuple[str, str]]:
    """merges.txt as GPT-2's slow tokenizer reads it: the first line (the `#version` header) and the
    last (empty) line are skipped, repeated merges keep their first rank."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")[1:-1]
    ranks = dict.fromkeys(tuple(line.split()) for line in lines)
    merges = list(ranks)
    bad = next((merge for merge in merges if len(merge) != 2), None)
    if bad is not None:
        raise TokenizerFormatError(f"{path}: every merge line must hold two tokens separated by a space, found {bad!r}.")
    return merges


def slow_added_token_ids(base_vocabulary, kwargs: dict) -> dict[str, int]:
    """Ids a transformers slow tokenizer gives the tokens it adds on top of its vocabulary file.

    `PreTrainedTokenizer.__init__` registers tokenizer_config.json's `added_tokens_decoder` at their
    ids, then appends each special token it still lacks (bos, eos, unk, sep, pad, cls, mask, then the
    additional ones) at the current number of distinct vocabulary entries. transformers' converters
    write these ids into the post-processor, so ours must too -- the unknown id would be wrong.
    """
    ids: dict[str, int] = {}
    for index, token in sorted((kwargs.get("added_tokens_decoder") or {}).items()):
        ids.setdefault(str(token), int(index))
    known = set(base_vocabulary) | set(ids)
    next_id = len(known)
    candidates = []
    for key in SPECIAL_TOKENS_ATTRIBUTES:  # transformers' order: bos, eos, unk, sep, pad, cls, mask, additional
        value = kwargs.get(key)
        if value is None:
            continue
        candidates += [str(item) for item in value] if key == "additional_special_tokens" else [str(value)]
    for token in candidates:
        if token and token not in known:
            ids[token] = next_id
            known.add(token)
            next_id += 1
    return ids


def _lookup(vocab: dict[str, int], token, unk_token, kwargs: dict | None = None) -> int:
    """A special token's id for a post-processor: in the vocabulary file, else as the slow class adds it."""
    token = str(token)
    if token in vocab:
        return vocab[token]
    if kwargs is not None:
        added = slow_added_token_ids(vocab, kwargs)
        if token in added:
            return added[token]
    return vocab.get(str(unk_token))


def bert_backend(files: dict[str, str], kwargs: dict) -> Tokenizer:
    """transformers' BertConverter (BERT, DistilBERT, ELECTRA)."""
    vocab = load_wordpiece_vocab(files["vocab_file"])
    unk = str(kwargs["unk_token"])
    tokenizer = Tokenizer(WordPiece(vocab, unk_token=unk))
    basic = kwargs.get("do_basic_tokenize", True)
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(kwargs.get("tokenize_chinese_chars", True)) if basic else False,
        strip_accents=kwargs.get("strip_accents") if basic else False,
        lowercase=bool(kwargs.get("do_lower_case", True)) if basic else False,
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = str(kwargs["cls_token"]), str(kwargs["sep_token"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, _lookup(vocab, cls, unk, kwargs)), (sep, _lookup(vocab, sep, unk, kwargs))],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _byte_level_bpe(files: dict[str, str], add_prefix_space: bool) -> tuple[Tokenizer, dict[str, int]]:
    vocab = load_json_vocab(files["vocab_file"])
    merges = load_bpe_merges(files["merges_file"])
    try:
        model = BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="",
                    fuse_unk=False)
    except Exception as err:
        raise TokenizerFormatError(f"{files['merges_file']} does not fit {files['vocab_file']}: {err}") from err
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer, vocab


def gpt2_backend(files: dict[str, str], kwargs: dict) -> Tokenizer:
    """transformers' GPT2Converter."""
    tokenizer, vocab = _byte_level_bpe(files, bool(kwargs.get("add_prefix_space", False)))
    if kwargs.get("add_bos_token", False):
        bos = str(kwargs["bos_token"])
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 $B:1",
            special_tokens=[(bos, _lookup(vocab, bos, kwargs.get("unk_token"), kwargs))])
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def roberta_backend(files: dict[str, str], kwargs: dict) -> Tokenizer:
    """transformers' RobertaConverter (RoBERTa, BART, Longformer)."""
    add_prefix_space = bool(kwargs.get("add_prefix_space", False))
    tokenizer, vocab = _byte_level_bpe(files, add_prefix_space)
    unk = kwargs.get("unk_token")
    sep, cls = str(kwargs["sep_token"]), str(kwargs["cls_token"])
    tokenizer.post_processor = processors.RobertaProcessing(
        sep=(sep, _lookup(vocab, sep, unk, kwargs)), cls=(cls, _lookup(vocab, cls, unk, kwargs)),
        add_prefix_space=add_prefix_space, trim_offsets=True,
    )
    return tokenizer


# --------------------------------------------------------------------------------------------------
# SentencePiece models
# --------------------------------------------------------------------------------------------------


def generate_merges(vocab: dict[str, int], vocab_scores: list[tuple[str, float]] | None) -> list[tuple[str, str]]:
    """BPE merges recovered from a SentencePiece BPE vocabulary (transformers' `generate_merges`):
    every split of a piece into two known pieces, ordered by the piece's score."""
    reverse = vocab_scores is not None
    scores = dict(vocab_scores) if reverse else vocab
    merges = []
    for merge, piece_score in scores.items():
        local = []
        for index in range(1, len(merge)):
            left, right = merge[:index], merge[index:]
            if left in vocab and right in vocab:
                local.append((left, right, piece_score))
        merges.extend(sorted(local, key=lambda item: (vocab[item[0]], vocab[item[1]])))
    merges.sort(key=lambda item: (item[2], len(item[0]), len(item[1])), reverse=reverse)
    return [(left, right) for left, right, _ in merges]


def _check_number_comma(piece: str) -> bool:
    return len(piece) < 2 or piece[-1] != "," or not piece[-2].isdigit()


def _prepend_scheme(add_prefix_space: bool, legacy: bool) -> str:
    if add_prefix_space:
        return "always" if legacy else "first"
    return "never"


class SpmConverter:
    """transformers' SpmConverter: a Unigram/BPE model from the pieces plus Metaspace pre-tokenization.

    Subclasses change the vocabulary (fairseq offsets, appended tokens), the unknown id, the
    normalizer and the post-processor, as their transformers namesakes do.
    """

    # Whether the backend keeps SentencePiece's byte fallback (<0x..> pieces for unknown characters).
    handle_byte_fallback = False
    # User-defined pieces that become special added tokens anyway (Gemma's turn markers).
    special_pieces: frozenset[str] = frozenset()
    # Converted-vocabulary entries the slow tokenizer does not have in its base vocabulary but adds
    # afterwards as a special token (CamemBERT's <mask>); see `token_id`.
    appended_by_slow_class: tuple[str, ...] = ()

    def __init__(self, files: dict[str, str], kwargs: dict, model_file_key: str = "vocab_file"):
        self.path = files[model_file_key]
        self.kwargs = kwargs
        self.proto = load_sentencepiece_model(self.path)
        if self.proto.trainer_spec.byte_fallback and not self.handle_byte_fallback:
            warnings.warn(
                f"{self.path} uses SentencePiece byte fallback, which the converted fast tokenizer does not "
                "implement (as in transformers): unknown characters become the unknown token instead of bytes.",
                stacklevel=3,
            )

    def vocab(self, proto) -> list[tuple[str, float]]:
        return [(piece.piece, piece.score) for piece in proto.pieces]

    def unk_id(self, proto) -> int:
        return proto.trainer_spec.unk_id

    def model(self, proto, vocab_scores: list[tuple[str, float]]):
        model_type = proto.trainer_spec.model_type
        if model_type == MODEL_UNIGRAM:
            return Unigram(vocab_scores, unk_id=self.unk_id(proto), byte_fallback=self.handle_byte_fallback)
        assert model_type == MODEL_BPE  # load_sentencepiece_model refuses the others
        merges = generate_merges(self.merge_vocab(proto), vocab_scores)
        bpe_vocab = {word: index for index, (word, _) in enumerate(vocab_scores)}
        return BPE(bpe_vocab, merges, unk_token=proto.trainer_spec.unk_piece, fuse_unk=True,
                   byte_fallback=self.handle_byte_fallback, dropout=None)

    def merge_vocab(self, proto) -> dict[str, int]:
        """The SentencePiece vocabulary the BPE merges are recovered from (transformers' SentencePieceExtractor)."""
        original: dict[str, int] = {}
        for index, piece in enumerate(proto.pieces):
            original[piece.piece] = index
        return original

    def tokenizer(self, proto) -> Tokenizer:
        vocab_scores = self.vocab(proto)
        self.token_ids = {}
        for index, (piece, _) in enumerate(vocab_scores):
            self.token_ids.setdefault(piece, index)
        tokenizer = Tokenizer(self.model(proto, vocab_scores))
        # Control pieces are special added tokens, user-defined pieces plain added tokens.
        added = [AddedToken(piece.piece, normalized=False,
                            special=piece.type == PIECE_CONTROL or piece.piece in self.special_pieces)
                 for piece in proto.pieces if piece.type in (PIECE_CONTROL, PIECE_USER_DEFINED)]
        tokenizer.add_tokens(added)
        return tokenizer

    def token_id(self, token) -> int:
        """The id the slow tokenizer gives a token, which transformers writes into the post-processor.

        A piece of the converted vocabulary has its place there. A special token that is no piece
        (T5 `</s>` or ALBERT `[CLS]` missing from the SentencePiece model) is an added token of the
        slow tokenizer: its id comes from tokenizer_config.json's `added_tokens_decoder`, else from the
        order in which the slow tokenizer appends missing special tokens (`slow_added_token_ids`).
        Only a token that is none of these gets the unknown id.
        """
        token = str(token)
        if token in self.token_ids:
            return self.token_ids[token]
        if not hasattr(self, "_slow_added_ids"):
            base = [piece for piece in self.token_ids if piece not in self.appended_by_slow_class]
            self._slow_added_ids = slow_added_token_ids(base, self.kwargs)
        if token not in self._slow_added_ids:
            return self.unk_id(self.proto)
        index = self._slow_added_ids[token]
        taken_by = next((piece for piece, piece_id in self.token_ids.items() if piece_id == index), None)
        if taken_by is not None:
            # CamemBERT without <s> in its model: transformers' slow class gives <s> the id its fast class
            # gives <mask>. Kept for parity, since a model trained with transformers saw that id.
            logger.warning("%s: %s is not in the SentencePiece model; as in transformers, the post-processor "
                           "inserts id %d, which the vocabulary also gives %r.", self.path, token, index, taken_by)
        return index

    def normalizer(self, proto):
        charsmap = proto.normalizer_spec.precompiled_charsmap
        steps = [normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), SPIECE_UNDERLINE)]
        if not charsmap:
            return normalizers.Sequence(steps)
        return normalizers.Sequence([normalizers.Precompiled(charsmap)] + steps)

    def add_prefix_space(self) -> bool:
        return True

    def legacy(self) -> bool:
        return True

    def pre_tokenizer(self, replacement: str, add_prefix_space: bool):
        return pre_tokenizers.Metaspace(replacement=replacement,
                                        prepend_scheme=_prepend_scheme(add_prefix_space, self.legacy()))

    def decoder(self, replacement: str, add_prefix_space: bool):
        return decoders.Metaspace(replacement=replacement,
                                  prepend_scheme=_prepend_scheme(add_prefix_space, self.legacy()))

    def post_processor(self):
        return None

    def converted(self) -> Tokenizer:
        tokenizer = self.tokenizer(self.proto)
        normalizer = self.normalizer(self.proto)
        if normalizer is not None:
            tokenizer.normalizer = normalizer
        add_prefix_space = self.add_prefix_space()
        pre_tokenizer = self.pre_tokenizer(SPIECE_UNDERLINE, add_prefix_space)
        if pre_tokenizer is not None:
            tokenizer.pre_tokenizer = pre_tokenizer
        tokenizer.decoder = self.decoder(SPIECE_UNDERLINE, add_prefix_space)
        post_processor = self.post_processor()
        if post_processor:
            tokenizer.post_processor = post_processor
        return tokenizer

    def _cls_sep_template(self, cls: str, sep: str):
        return processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, self.token_id(cls)), (sep, self.token_id(sep))],
        )

    def _roberta_template(self):
        return processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", self.token_id("<s>")), ("</s>", self.token_id("</s>"))],
        )


def _fairseq_vocab(proto, appended: list[str] = ()) -> list[tuple[str, float]]:
    """fairseq's dictionary order: <s> <pad> </s> <unk>, the pieces after SentencePiece's first three."""
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(piece.piece, piece.score) for piece in proto.pieces[3:]]
    return vocab + [(token, 0.0) for token in appended]


def _then_charsmap_and_single_spaces(proto, steps: list):
    """ALBERT / DeBERTa-v2 normalizers end with the model's character map and collapsed spaces."""
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    return normalizers.Sequence(steps)


class CLSSEPConverter(SpmConverter):
    """[CLS] A [SEP] (B [SEP]) around the text, with type ids (ALBERT, DeBERTa-v2)."""

    def post_processor(self):
        return self._cls_sep_template("[CLS]", "[SEP]")


class AlbertConverter(CLSSEPConverter):
    def vocab(self, proto):
        return [(p.piece, p.score) if _check_number_comma(p.piece) else (p.piece, p.score - 100) for p in proto.pieces]

    def normalizer(self, proto):
        steps = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]
        if not self.kwargs.get("keep_accents", False):
            steps += [normalizers.NFKD(), normalizers.StripAccents()]
        if self.kwargs.get("do_lower_case", True):
            steps.append(normalizers.Lowercase())
        return _then_charsmap_and_single_spaces(proto, steps)


class CamembertConverter(SpmConverter):
    appended_by_slow_class = ("<mask>",)

    def vocab(self, proto):
        vocab = [("<s>NOTUSED", 0.0), ("<pad>", 0.0), ("</s>NOTUSED", 0.0), ("<unk>", 0.0), ("<unk>NOTUSED", -100)]
        vocab += [(piece.piece, piece.score) for piece in proto.pieces[1:]]
        return vocab + [("<mask>", 0.0)]

    def unk_id(self, proto):
        return 3

    def post_processor(self):
        return self._roberta_template()


class DebertaV2Converter(CLSSEPConverter):
    def pre_tokenizer(self, replacement, add_prefix_space):
        steps = []
        if self.kwargs.get("split_by_punct", False):
            steps.append(pre_tokenizers.Punctuation(behavior="isolated"))
        steps.append(super().pre_tokenizer(replacement, add_prefix_space))
        return pre_tokenizers.Sequence(steps)

    def normalizer(self, proto):
        steps = [normalizers.Lowercase()] if self.kwargs.get("do_lower_case", False) else []
        steps.append(normalizers.Strip())
        return _then_charsmap_and_single_spaces(proto, steps)


class XLMRobertaConverter(SpmConverter):
    def vocab(self, proto):
        return _fairseq_vocab(proto, ["<mask>"])

    def unk_id(self, proto):
        return 3

    def post_processor(self):
        return self._roberta_template()


class LanguageCodeConverter(SpmConverter):
    """NLLB / mBART / mBART-50: fairseq vocabulary; the post-processor is set from the source language
    by the tokenizer itself (`set_src_lang_special_tokens`), so none is built here."""

    appended: tuple[str, ...] = ()

    def vocab(self, proto):
        return _fairseq_vocab(proto, list(self.appended))

    def unk_id(self, proto):
        return 3


class NllbConverter(LanguageCodeConverter):
    appended = ()  # NLLB's language codes and <mask> are added tokens, appended by the tokenizer


class MBartConverter(LanguageCodeConverter):
    appended = (*FAIRSEQ_MBART_CODES, "<mask>")


class MBart50Converter(LanguageCodeConverter):
    appended = (*FAIRSEQ_MBART50_CODES, "<mask>")


class PegasusConverter(SpmConverter):
    def vocab(self, proto):
        kwargs = self.kwargs
        offset = kwargs["offset"]
        vocab = [(str(kwargs["pad_token"]), 0.0), (str(kwargs["eos_token"]), 0.0)]
        if kwargs.get("mask_token_sent") is not None:
            vocab.append((str(kwargs["mask_token_sent"]), 0.0))
            # The slow tokenizer puts the mask token at id 3 (< offset) only next to the sentence mask.
            if kwargs.get("mask_token") is not None:
                vocab.append((str(kwargs["mask_token"]), 0.0))
        vocab += [(f"<unk_{i}>", -100.0) for i in range(2, offset)]
        vocab += [(piece.piece, piece.score) for piece in proto.pieces[2:]]
        return vocab

    def unk_id(self, proto):
        return proto.trainer_spec.unk_id + self.kwargs["offset"]

    def pre_tokenizer(self, replacement, add_prefix_space):
        return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                        super().pre_tokenizer(replacement, add_prefix_space)])

    def post_processor(self):
        eos = str(self.kwargs["eos_token"])
        return processors.TemplateProcessing(single=["$A", eos], pair=["$A", "$B", eos],
                                             special_tokens=[(eos, self.token_id(eos))])


class T5Converter(SpmConverter):
    def vocab(self, proto):
        vocab = [(piece.piece, piece.score) for piece in proto.pieces]
        return vocab + [(f"<extra_id_{i}>", 0.0) for i in range(self.kwargs["extra_ids"] - 1, -1, -1)]

    def add_prefix_space(self) -> bool:
        # The slow T5Tokenizer's own default is True; the fast class passes None when unset.
        value = self.kwargs.get("add_prefix_space")
        return True if value is None else bool(value)

    def legacy(self) -> bool:
        value = self.kwargs.get("legacy")
        return True if value is None else bool(value)

    def post_processor(self):
        return processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                             special_tokens=[("</s>", self.token_id("</s>"))])


class LlamaConverter(SpmConverter):
    """transformers' LlamaConverter (Llama-1/2, Mistral v0.1, Phi-3 `tokenizer.model`): byte fallback kept.

    `legacy` (default True) decides where the "▁" prefix comes from: a normalizer that prepends it to
    the whole text and replaces every space (legacy), or a Metaspace pre-tokenizer that prepends it only
    to the first section (legacy=False, so the text after a special token gets none). The bos/eos
    post-processor is set by the tokenizer (`add_bos_token` / `add_eos_token`), not here.
    """

    handle_byte_fallback = True

    def vocab(self, proto):
        first = [piece.piece for piece in proto.pieces[:3]]
        for index, token in (self.kwargs.get("added_tokens_decoder") or {}).items():
            if int(index) < 3:  # the slow tokenizer's ids 0-2 are its added tokens when it has them there
                first[int(index)] = str(token)
        return [(piece, 0.0) for piece in first] + [(piece.piece, piece.score) for piece in proto.pieces[3:]]

    def unk_id(self, proto):
        return 0

    def add_prefix_space(self) -> bool:
        # The slow LlamaTokenizer's default (True) arrives through the profile's slow_defaults; an
        # explicit null in tokenizer_config.json (what a saved fast tokenizer holds) means no prefix.
        return bool(self.kwargs.get("add_prefix_space", True))

    def legacy(self) -> bool:
        value = self.kwargs.get("legacy")
        return True if value is None else bool(value)

    def normalizer(self, proto):
        if not self.legacy():
            return None
        steps = [normalizers.Prepend(prepend=SPIECE_UNDERLINE)] if self.add_prefix_space() else []
        return normalizers.Sequence(steps + [normalizers.Replace(pattern=" ", content=SPIECE_UNDERLINE)])

    def pre_tokenizer(self, replacement, add_prefix_space):
        if self.legacy():
            return None
        return pre_tokenizers.Metaspace(replacement=replacement, split=False,
                                        prepend_scheme=_prepend_scheme(add_prefix_space, False))

    def decoder(self, replacement, add_prefix_space):
        steps = [decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(), decoders.Fuse()]
        if add_prefix_space:
            steps.append(decoders.Strip(content=" ", left=1))
        return decoders.Sequence(steps)


class GemmaConverter(SpmConverter):
    """transformers' GemmaConverter (Gemma `tokenizer.model`): spaces are pieces, never prefixed."""

    handle_byte_fallback = True
    special_pieces = frozenset({"<start_of_turn>", "<end_of_turn>"})

    def vocab(self, proto):
        kwargs = self.kwargs
        vocab = [(str(kwargs["pad_token"]), 0.0), (str(kwargs["eos_token"]), 0.0), (str(kwargs["bos_token"]), 0.0)]
        vocab += [(piece.piece, piece.score) for piece in proto.pieces[3:]]
        if not any(piece == "\t" for piece, _ in vocab):  # older Gemma models lack the tab piece
            index = next((i for i, (piece, _) in enumerate(vocab) if piece == "<0x09>"), None)
            if index is not None:
                vocab[index] = ("\t", 0.0)
        return vocab

    def merge_vocab(self, proto):
        original = super().merge_vocab(proto)
        if "\t" not in original:
            original["\t"] = original.get("<0x09>")
        return original

    def unk_id(self, proto):
        return 3

    def normalizer(self, proto):
        return normalizers.Replace(" ", SPIECE_UNDERLINE)

    def pre_tokenizer(self, replacement, add_prefix_space):
        return pre_tokenizers.Split(" ", "merged_with_previous")

    def decoder(self, replacement, add_prefix_space):
        return decoders.Sequence([decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(), decoders.Fuse()])


def _spm(converter_class) -> Callable[[dict, dict], Tokenizer]:
    def build(files: dict[str, str], kwargs: dict) -> Tokenizer:
        return converter_class(files, kwargs).converted()

    build.__doc__ = f"transformers' {converter_class.__name__}."
    return build


# Fast-tokenizer class -> (the slow files it is built from: init kwarg -> file name, builder).
SLOW_FILE_CONVERTERS: dict[str, tuple[dict[str, str], Callable[[dict, dict], Tokenizer]]] = {
    "BertTokenizerFast": ({"vocab_file": "vocab.txt"}, bert_backend),
    "DistilBertTokenizerFast": ({"vocab_file": "vocab.txt"}, bert_backend),
    "ElectraTokenizerFast": ({"vocab_file": "vocab.txt"}, bert_backend),
    "GPT2TokenizerFast": ({"vocab_file": "vocab.json", "merges_file": "merges.txt"}, gpt2_backend),
    "RobertaTokenizerFast": ({"vocab_file": "vocab.json", "merges_file": "merges.txt"}, roberta_backend),
    "BartTokenizerFast": ({"vocab_file": "vocab.json", "merges_file": "merges.txt"}, roberta_backend),
    "LongformerTokenizerFast": ({"vocab_file": "vocab.json", "merges_file": "merges.txt"}, roberta_backend),
    "T5TokenizerFast": ({"vocab_file": "spiece.model"}, _spm(T5Converter)),
    "MT5TokenizerFast": ({"vocab_file": "spiece.model"}, _spm(T5Converter)),
    "PegasusTokenizerFast": ({"vocab_file": "spiece.model"}, _spm(PegasusConverter)),
    "AlbertTokenizerFast": ({"vocab_file": "spiece.model"}, _spm(AlbertConverter)),
    "XLMRobertaTokenizerFast": ({"vocab_file": "sentencepiece.bpe.model"}, _spm(XLMRobertaConverter)),
    "CamembertTokenizerFast": ({"vocab_file": "sentencepiece.bpe.model"}, _spm(CamembertConverter)),
    "DebertaV2TokenizerFast": ({"vocab_file": "spm.model"}, _spm(DebertaV2Converter)),
    "NllbTokenizerFast": ({"vocab_file": "sentencepiece.bpe.model"}, _spm(NllbConverter)),
    "MBartTokenizerFast": ({"vocab_file": "sentencepiece.bpe.model"}, _spm(MBartConverter)),
    "MBart50TokenizerFast": ({"vocab_file": "sentencepiece.bpe.model"}, _spm(MBart50Converter)),
    "LlamaTokenizerFast": ({"vocab_file": "tokenizer.model"}, _spm(LlamaConverter)),
    "GemmaTokenizerFast": ({"vocab_file": "tokenizer.model"}, _spm(GemmaConverter)),
}


# Keyword defaults of the slow class that the fast class does not have: transformers copies the slow
# tokenizer's init kwargs into the fast one after converting, so they take effect (BERT's decoding
# cleans up tokenization spaces when it was converted from vocab.txt).
_SLOW_CLASS_DEFAULTS = {
    name: {"clean_up_tokenization_spaces": True, "do_basic_tokenize": True, "never_split": None}
    for name in ("BertTokenizerFast", "DistilBertTokenizerFast", "ElectraTokenizerFast")
}


def slow_class_defaults(class_name: str) -> dict[str, Any]:
    """Init kwargs the slow class adds when a tokenizer is converted from its files."""
    return dict(_SLOW_CLASS_DEFAULTS.get(class_name, {}))


def slow_file_names(class_name: str) -> dict[str, str]:
    """The slow files (init kwarg -> file name) a fast class can be built from; {} when none."""
    entry = SLOW_FILE_CONVERTERS.get(class_name)
    return dict(entry[0]) if entry else {}


def backend_from_slow_files(class_name: str, kwargs: dict[str, Any]) -> Tokenizer:
    """Convert the slow files named in `kwargs` (`vocab_file`, `merges_file`) for `class_name`."""
    if class_name not in SLOW_FILE_CONVERTERS:
        raise ValueError(
            f"{class_name} cannot be built from slow-tokenizer files here; supported classes: "
            f"{', '.join(sorted(SLOW_FILE_CONVERTERS))}. Save the tokenizer once with transformers "
            "(`save_pretrained`) so that the directory holds a tokenizer.json."
        )
    names, build = SLOW_FILE_CONVERTERS[class_name]
    missing = [key for key in names if not kwargs.get(key)]
    if missing:
        raise ValueError(f"{class_name} needs {', '.join(f'{key} ({names[key]})' for key in missing)} to be built "
                         "without a tokenizer.json.")
    return build({key: kwargs[key] for key in names}, kwargs)
