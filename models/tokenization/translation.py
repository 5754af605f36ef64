"""Translation tokenizers: source/target language tokens (NLLB, mBART, mBART-50, M2M100) and Marian.

Why a subclass of the fast wrapper: these tokenizers change their special tokens with the language
(`src_lang` / `tgt_lang`) and encode `text_target` differently from `text` -- transformers does this
in `_switch_to_input_mode` / `_switch_to_target_mode`, which rewrite the backend's post-processor
(or, for Marian, swap the SentencePiece model). Everything else (padding, truncation, decoding,
saving) is the wrapper's.

Layouts, as in transformers 4.57.6 (X = the text):
- NLLB: `[lang] X </s>` (`legacy_behaviour=True`: `X </s> [lang]`), default source `eng_Latn`.
- mBART (cc25): `X </s> [lang]`, default `en_XX`. mBART-50 and M2M100: `[lang] X </s>`, default
  `en_XX` / `en` (M2M100 codes are plain `en`, their tokens `__en__`).
- Marian: `X </s>`; `text_target` is split with `target.spm`; both map pieces through `vocab.json`.

An unknown language code raises `UnknownLanguageCodeError` naming the code and the accepted ones
(transformers silently maps most of them to the unknown token, which would corrupt a translation).
"""

from __future__ import annotations

import os
import shutil
import warnings

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, Unigram

from .batch_encoding import _to_py_obj
from .converters import generate_merges, load_json_vocab
from .fast import PreTrainedTokenizerFast
from .files import TokenizerFormatError
from .language_codes import (
    FAIRSEQ_M2M100_CODES,
    FAIRSEQ_MBART50_CODES,
    FAIRSEQ_MBART_CODES,
    FAIRSEQ_NLLB_CODES,
    check_language_code,
)
from .sentencepiece_model import MODEL_UNIGRAM, PIECE_CONTROL, PIECE_UNKNOWN, load_sentencepiece_model


class LanguageCodeTokenizerFast(PreTrainedTokenizerFast):
    """NLLB / mBART / mBART-50 / M2M100: language tokens around the text, chosen by src_lang / tgt_lang."""

    # class name -> (language codes, default source language, "prefix" or "suffix" layout)
    _RULES = {
        "NllbTokenizerFast": (FAIRSEQ_NLLB_CODES, "eng_Latn", "prefix"),
        "MBartTokenizerFast": (FAIRSEQ_MBART_CODES, "en_XX", "suffix"),
        "MBart50TokenizerFast": (FAIRSEQ_MBART50_CODES, "en_XX", "prefix"),
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        codes, default_source, layout = self._RULES[self.tokenizer_class]
        if self.tokenizer_class == "NllbTokenizerFast" and self.legacy_behaviour:
            layout = "suffix"
        self._layout = layout
        self._codes = self._known_codes(codes)
        self.lang_code_to_id = {code: self.convert_tokens_to_ids(self.get_lang_token(code)) for code in self._codes}
        self._src_lang = self._check_code(self.init_kwargs.get("src_lang") or default_source, "src_lang")
        tgt_lang = self.init_kwargs.get("tgt_lang")
        self.tgt_lang = None if tgt_lang is None else self._check_code(tgt_lang, "tgt_lang")
        self.set_src_lang_special_tokens(self._src_lang)

    def _known_codes(self, codes) -> list[str]:
        """The language codes that have a token in this vocabulary (a checkpoint may carry fewer)."""
        vocab = self.get_vocab()
        known = [code for code in codes if self.get_lang_token(code) in vocab]
        if not known:
            raise TokenizerFormatError(
                f"{self.name_or_path}: none of the {len(codes)} language tokens of {self.tokenizer_class} "
                f"({', '.join(list(codes)[:5])}, ...) is in the vocabulary; the tokenizer files do not belong to "
                f"this class (tokenizer_class {self.tokenizer_class})."
            )
        return known

    def get_lang_token(self, code: str) -> str:
        return code

    def get_lang_id(self, code: str) -> int:
        return self.lang_code_to_id[self._check_code(code, "language")]

    @property
    def language_codes_accepted(self) -> list[str]:
        return list(self._codes)

    def _check_code(self, code, what: str) -> str:
        return check_language_code(code, self._codes, what, self.tokenizer_class)

    @property
    def src_lang(self) -> str:
        return self._src_lang

    @src_lang.setter
    def src_lang(self, code: str) -> None:
        self._src_lang = self._check_code(code, "src_lang")
        self.set_src_lang_special_tokens(self._src_lang)

    def set_src_lang_special_tokens(self, src_lang: str) -> None:
        """Reset the special tokens to the source-language setting (transformers' method of that name)."""
        self._set_language_tokens(self._check_code(src_lang, "src_lang"))

    def set_tgt_lang_special_tokens(self, tgt_lang: str) -> None:
        """Reset the special tokens to the target-language setting (used while encoding `text_target`)."""
        if tgt_lang is None:
            raise ValueError(f"{self.tokenizer_class}: encoding text_target needs a target language; pass "
                             f"tgt_lang= when loading the tokenizer or set tokenizer.tgt_lang (one of "
                             f"{', '.join(self._codes)}).")
        self._set_language_tokens(self._check_code(tgt_lang, "tgt_lang"))

    def _set_language_tokens(self, code: str) -> None:
        self.cur_lang_code = self.lang_code_to_id[code]
        self.cur_lang_code_id = self.cur_lang_code
        if self._layout == "prefix":
            self.prefix_tokens, self.suffix_tokens = [self.cur_lang_code], [self.eos_token_id]
        else:
            self.prefix_tokens, self.suffix_tokens = [], [self.eos_token_id, self.cur_lang_code]
        prefix = self.convert_ids_to_tokens(self.prefix_tokens)
        suffix = self.convert_ids_to_tokens(self.suffix_tokens)
        self._tokenizer.post_processor = processors.TemplateProcessing(
            single=prefix + ["$A"] + suffix, pair=prefix + ["$A", "$B"] + suffix,
            special_tokens=list(zip(prefix + suffix, self.prefix_tokens + self.suffix_tokens)),
        )

    def _switch_to_input_mode(self) -> None:
        self.set_src_lang_special_tokens(self._src_lang)

    def _switch_to_target_mode(self) -> None:
        self.set_tgt_lang_special_tokens(self.tgt_lang)


# --------------------------------------------------------------------------------------------------
# M2M100 and Marian: SentencePiece pieces mapped through vocab.json (no fast class in transformers)
# --------------------------------------------------------------------------------------------------


def _spm_normalizer(proto):
    """SentencePiece's own normalization: the precompiled map, then its extra-whitespace removal
    (leading, trailing and repeated spaces), which these slow tokenizers get from sentencepiece."""
    steps = []
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    if proto.normalizer_spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    return normalizers.Sequence(steps)


def _unreachable(index: int) -> str:
    """A vocabulary entry the model can never produce: Metaspace turns every space into '▁' first."""
    return f"<not in this SentencePiece model {index}>"


def backend_from_spm_and_vocab(spm_path: str, vocab_path: str, vocab: dict[str, int], keep=frozenset()) -> Tokenizer:
    """A backend that splits text as the SentencePiece model does and gives each piece its vocab.json id.

    The slow tokenizers run sentencepiece and look each piece up in vocab.json (a piece missing from
    it becomes the unknown token). A Unigram model here lists vocab.json in id order with the
    SentencePiece scores; entries the SentencePiece model lacks (e.g. target-language pieces of a
    shared vocabulary) are replaced by unreachable strings so the segmentation is the model's own --
    except `keep`, the special tokens, which are matched as added tokens before the model runs.
    A BPE model keeps vocab.json's ids and the merges recovered from the piece scores.
    """
    proto = load_sentencepiece_model(spm_path)
    scores = {piece.piece: piece.score for piece in proto.pieces}
    unk_token = proto.trainer_spec.unk_piece
    missing = [piece.piece for piece in proto.pieces
               if piece.piece not in vocab and piece.type not in (PIECE_CONTROL, PIECE_UNKNOWN)]
    if missing:
        warnings.warn(
            f"{len(missing)} pieces of {spm_path} are not in {vocab_path} (e.g. {missing[:3]}); the slow tokenizer "
            "maps them to the unknown token, here they are split into smaller pieces.", stacklevel=3)
    if "<unk>" not in vocab and unk_token not in vocab:
        raise TokenizerFormatError(f"{vocab_path} has no unknown token ({unk_token!r}); the vocabulary does not "
                                   f"belong to {spm_path}.")
    unk_in_vocab = unk_token if unk_token in vocab else "<unk>"
    size = max(vocab.values()) + 1
    by_id = {index: token for token, index in vocab.items()}
    if proto.trainer_spec.model_type == MODEL_UNIGRAM:
        # A character the SentencePiece model does not know becomes an unknown piece whose text the
        # slow tokenizer looks up in vocab.json -- a single character of the other language's
        # pieces does get its id. Such characters are kept at the unknown-piece score
        # (sentencepiece's min score - 10), so they are chosen exactly where sentencepiece emits an
        # unknown piece of one character.
        unknown_score = min(scores.values()) - 10.0
        entries = []
        for index in range(size):
            token = by_id.get(index)
            if token is not None and (token in scores or token == unk_in_vocab or token in keep):
                entries.append((token, scores.get(token, 0.0)))
            elif token is not None and len(token) == 1 and token != "▁":
                entries.append((token, unknown_score))
            else:
                entries.append((_unreachable(index), 0.0))
        model = Unigram(entries, unk_id=vocab[unk_in_vocab], byte_fallback=False)
    else:
        original = {piece.piece: index for index, piece in enumerate(proto.pieces)}
        merges = [(left, right) for left, right in generate_merges(original, [(p.piece, p.score) for p in proto.pieces])
                  if left in vocab and right in vocab and left + right in vocab]
        model = BPE({token: index for token, index in vocab.items()}, merges, unk_token=unk_in_vocab, fuse_unk=True,
                    byte_fallback=False, dropout=None)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = _spm_normalizer(proto)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tokenizer


def _copy_files(files: dict[str, str], save_directory: str, prefix: str) -> list[str]:
    written = []
    for name, source in files.items():
        target = os.path.join(save_directory, prefix + name)
        if source and os.path.isfile(source) and os.path.abspath(source) != os.path.abspath(target):
            shutil.copyfile(source, target)
            written.append(target)
    return written


class _SlowOnlyClass:
    """What the slow-only transformers classes (Marian, M2M100) do differently from the fast wrapper.

    save_pretrained also copies the SentencePiece models and vocabularies: transformers loads these
    classes from them, not from tokenizer.json. Decoded text is stripped, as their
    `convert_tokens_to_string` strips it.
    """

    def _slow_files(self) -> dict[str, str]:
        raise NotImplementedError

    def save_pretrained(self, save_directory, filename_prefix: str | None = None, **kwargs) -> tuple[str, ...]:
        written = super().save_pretrained(save_directory, filename_prefix, **kwargs)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        return written + tuple(_copy_files(self._slow_files(), os.fspath(save_directory), prefix))

    def decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None, **kwargs):
        return super().decode(token_ids, skip_special_tokens, clean_up_tokenization_spaces, **kwargs).strip()

    def batch_decode(self, sequences, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None,
                     **kwargs):
        texts = super().batch_decode(sequences, skip_special_tokens, clean_up_tokenization_spaces, **kwargs)
        return [text.strip() for text in texts]


class M2M100Tokenizer(_SlowOnlyClass, LanguageCodeTokenizerFast):
    """M2M100: `[__src__] X </s>`; pieces of `sentencepiece.bpe.model` mapped through `vocab.json`,
    language tokens `__xx__` appended after the vocabulary."""

    _RULES = {"M2M100Tokenizer": ((), "en", "prefix")}

    def __init__(self, *, vocab_file: str, spm_file: str, **kwargs):
        vocab = load_json_vocab(vocab_file)
        specials = {str(kwargs.get(key) or default) for key, default in (
            ("bos_token", "<s>"), ("eos_token", "</s>"), ("sep_token", "</s>"), ("pad_token", "<pad>"),
            ("unk_token", "<unk>"))}
        backend = backend_from_spm_and_vocab(spm_file, vocab_file, vocab, keep=specials)
        language_codes = kwargs.get("language_codes", "m2m100")
        if language_codes not in FAIRSEQ_M2M100_CODES:
            raise ValueError(f"language_codes={language_codes!r} is not known; use one of "
                             f"{', '.join(FAIRSEQ_M2M100_CODES)}.")
        codes = FAIRSEQ_M2M100_CODES[language_codes]
        # The language tokens take the ids after vocab.json, in this order. transformers' M2M100Tokenizer
        # never makes them special tokens (its membership test is always false): they are not skipped
        # when decoding and not counted in all_special_tokens -- mirrored here.
        backend.add_tokens([AddedToken(f"__{code}__", normalized=False, special=False) for code in codes])
        self._m2m100_codes = codes
        super().__init__(tokenizer_object=backend, tokenizer_class="M2M100Tokenizer", vocab_file=vocab_file,
                         spm_file=spm_file, **kwargs)

    def _known_codes(self, codes) -> list[str]:
        return super()._known_codes(self._m2m100_codes)

    def get_lang_token(self, code: str) -> str:
        return f"__{code}__"

    def _slow_files(self) -> dict[str, str]:
        return {"vocab.json": self.init_kwargs.get("vocab_file"),
                "sentencepiece.bpe.model": self.init_kwargs.get("spm_file")}


class MarianTokenizer(_SlowOnlyClass, PreTrainedTokenizerFast):
    """Marian (Helsinki-NLP/opus-mt-*): `X </s>`; `text` is split with source.spm, `text_target` with
    target.spm, both mapped through vocab.json (or target_vocab.json with `separate_vocabs`)."""

    def __init__(self, *, source_spm: str, target_spm: str, vocab: str, target_vocab_file: str | None = None,
                 **kwargs):
        separate_vocabs = kwargs.get("separate_vocabs", False)
        source_vocab = load_json_vocab(vocab)
        target_vocab = load_json_vocab(target_vocab_file) if separate_vocabs else source_vocab
        for token_key, default in (("unk_token", "<unk>"), ("pad_token", "<pad>")):
            token = str(kwargs.get(token_key) or default)
            if token not in source_vocab:
                raise TokenizerFormatError(f"{vocab} has no {token_key} {token!r}; MarianTokenizer needs it.")
        codes = [] if separate_vocabs else [t for t in source_vocab if t.startswith(">>") and t.endswith("<<")]
        specials = {str(kwargs.get(key) or default) for key, default in (
            ("unk_token", "<unk>"), ("eos_token", "</s>"), ("pad_token", "<pad>"))} | set(codes)
        source = backend_from_spm_and_vocab(source_spm, vocab, source_vocab, keep=specials)
        target = backend_from_spm_and_vocab(target_spm, target_vocab_file if separate_vocabs else vocab, target_vocab,
                                            keep=specials)
        self._vocab = source_vocab
        self._decoder_vocab = {index: token for token, index in target_vocab.items()}
        super().__init__(tokenizer_object=source, tokenizer_class="MarianTokenizer", source_spm=source_spm,
                         target_spm=target_spm, vocab=vocab, target_vocab_file=target_vocab_file, **kwargs)
        self._source_backend = self._tokenizer
        # The target model knows the same added/special tokens, at the same ids.
        target.add_tokens([token for _, token in sorted(self.added_tokens_decoder.items())])
        self._target_backend = target
        self.supported_language_codes = codes
        for backend in (self._tokenizer, target):
            self._set_eos_template(backend)
            if self.supported_language_codes:
                # ">>fr<<" at the start of a text is the target-language token, kept whole.
                backend.add_tokens([AddedToken(code, normalized=False) for code in self.supported_language_codes])

    def _set_eos_template(self, backend: Tokenizer) -> None:
        eos = self.eos_token
        backend.post_processor = processors.TemplateProcessing(
            single=["$A", eos], pair=["$A", "$B", eos], special_tokens=[(eos, self.eos_token_id)])

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def get_vocab(self) -> dict[str, int]:
        return {**self._vocab, **self.added_tokens_encoder}

    def convert_tokens_to_ids(self, tokens):
        """Through vocab.json (the backends only know the pieces of their own SentencePiece model)."""
        unk = self._vocab.get(self.unk_token)
        if isinstance(tokens, str):
            return self._token_id(tokens, unk)
        return [self._token_id(token, unk) for token in tokens]

    def _token_id(self, token: str, unk: int) -> int:
        index = self._vocab.get(token)
        if index is None:
            index = self.added_tokens_encoder.get(token, unk)
        return index

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        ids = _to_py_obj(ids)
        if isinstance(ids, int):
            return self._decoder_vocab.get(ids, self.unk_token)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._decoder_vocab.get(int(index), self.unk_token) for index in ids if int(index) not in special]

    def decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None, **kwargs):
        return self._with_backend(self._target_backend if not kwargs.get("use_source_tokenizer") else None,
                                  super().decode, token_ids, skip_special_tokens, clean_up_tokenization_spaces)

    def batch_decode(self, sequences, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None,
                     **kwargs):
        return self._with_backend(self._target_backend if not kwargs.get("use_source_tokenizer") else None,
                                  super().batch_decode, sequences, skip_special_tokens, clean_up_tokenization_spaces)

    def _with_backend(self, backend, call, *args):
        if backend is None:
            return call(*args)
        current, self._tokenizer = self._tokenizer, backend
        try:
            return call(*args)
        finally:
            self._tokenizer = current

    def _switch_to_input_mode(self) -> None:
        self._tokenizer = self._source_backend

    def _switch_to_target_mode(self) -> None:
        self._tokenizer = self._target_backend

    def _slow_files(self) -> dict[str, str]:
        files = {"source.spm": self.init_kwargs.get("source_spm"), "target.spm": self.init_kwargs.get("target_spm"),
                 "vocab.json": self.init_kwargs.get("vocab")}
        if self.init_kwargs.get("separate_vocabs"):
            files["target_vocab.json"] = self.init_kwargs.get("target_vocab_file")
        return files
