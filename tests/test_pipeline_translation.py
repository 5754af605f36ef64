"""Translation through the pipeline: `input.source_language` / `task.target_language`.

A tiny random mBART-50 checkpoint whose tokenizer exists only as a SentencePiece model (trained
here), so the pipeline also exercises loading slow-tokenizer files. Generated text must equal
transformers' `generate` with `forced_bos_token_id` = the target language token on the ids its
tokenizer gives with `src_lang` (what transformers' translation pipeline does).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm
import torch
import transformers

from rayformers.pipeline import PreflightError, read_output, run
from rayformers.pipeline.preflight import preflight
from rayformers.pipeline.config import load_config

transformers.logging.set_verbosity_error()

CORPUS = ["The quick brown fox jumps over the lazy dog.", "Hello world, this is a tiny corpus.",
          "Translation models read one sentence and write another one."] * 30
TEXTS = ["Hello world", "the lazy dog jumps", "one sentence and another one, quick!", "x"]
LANGUAGES = ["fr_XX", "de_DE", "fr_XX", "ja_XX"]


@pytest.fixture(scope="module")
def mbart50_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mbart50")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_prefix=str(root / "sp"), vocab_size=80,
                                   model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
                                   minloglevel=2, num_threads=1)
    model_dir = root / "model"
    model_dir.mkdir()
    (model_dir / "sentencepiece.bpe.model").write_bytes((root / "sp.model").read_bytes())
    (model_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "MBart50Tokenizer"}))
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    config = transformers.MBartConfig(
        vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=tok.pad_token_id, bos_token_id=0, eos_token_id=tok.eos_token_id, decoder_start_token_id=2)
    transformers.MBartForConditionalGeneration(config).eval().save_pretrained(model_dir)
    return model_dir


def _write_input(path: Path) -> Path:
    path.mkdir()
    pq.write_table(pa.table({"text": TEXTS, "lang": LANGUAGES}), path / "part0.parquet")
    return path


def _config(model_dir, tmp_path, **sections):
    cfg = {
        "input": {"path": str(tmp_path / "in"), "source_language": "fr_XX"},
        "model": {"path": str(model_dir), "task": "generate"},
        "task": {"generation": {"max_new_tokens": 5, "num_beams": 1}, "target_language": "de_DE"},
        "output": {"path": str(tmp_path / "out")},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value}
    return cfg


def test_translation_languages_match_transformers(ray_session, mbart50_dir, tmp_path):
    """A per-row source language (input.source_language_column) and one target language."""
    _write_input(tmp_path / "in")
    report = run(_config(mbart50_dir, tmp_path, input={"source_language": None, "source_language_column": "lang"}))
    assert report.rows == len(TEXTS) and report.errors == 0
    rows = {r["id"]: r for r in read_output(str(tmp_path / "out")).to_pylist()}

    hf = transformers.MBartForConditionalGeneration.from_pretrained(mbart50_dir).eval()
    for i, (text, language) in enumerate(zip(TEXTS, LANGUAGES)):
        tok = transformers.AutoTokenizer.from_pretrained(mbart50_dir, src_lang=language)
        forced = tok.convert_tokens_to_ids("de_DE")
        enc = tok([text], return_tensors="pt")
        assert enc["input_ids"][0, 0].item() == tok.convert_tokens_to_ids(language)
        out = hf.generate(**enc, max_new_tokens=5, num_beams=1, forced_bos_token_id=forced)
        assert out[0, 1].item() == forced
        assert rows[f"part0.parquet:{i}"]["generated_text"] == tok.batch_decode(out, skip_special_tokens=True)[0]


def test_tokenize_operator_source_languages(mbart50_dir):
    from rayformers.operators import TokenizeOperator

    table = pa.table({"text": ["Hello world", "the lazy dog", "x", "y"], "lang": ["de_DE", None, "xx_XX", "fr_XX"]})
    per_row = TokenizeOperator(str(mbart50_dir), "text", max_length=32, source_language_column="lang")(table)
    ids, errors = per_row.column("input_ids").to_pylist(), per_row.column("error").to_pylist()
    for i, language in ((0, "de_DE"), (3, "fr_XX")):
        ref = transformers.AutoTokenizer.from_pretrained(mbart50_dir, src_lang=language)
        assert ids[i] == ref(table.column("text")[i].as_py())["input_ids"] and errors[i] is None
    assert "no source language code" in errors[1] and ids[1] is None
    assert "'xx_XX'" in errors[2] and "fr_XX" in errors[2]
    fixed = TokenizeOperator(str(mbart50_dir), "text", max_length=32, source_language="ja_XX")(table)
    ref = transformers.AutoTokenizer.from_pretrained(mbart50_dir, src_lang="ja_XX")
    assert fixed.column("input_ids").to_pylist() == ref(table.column("text").to_pylist())["input_ids"]


@pytest.mark.parametrize("sections,message", [
    ({"input": {"source_language": "xx_XX"}}, r"input.source_language.*'xx_XX'.*fr_XX"),
    ({"task": {"target_language": "german"}}, r"task.target_language.*'german'.*de_DE"),
    ({"input": {"source_language_column": "language"}}, r"input.source_language_column: column 'language'"),
    ({"input": {"source_language_column": "lang"}}, r"not both"),
])
def test_unknown_language_codes_fail_before_any_row_is_read(mbart50_dir, tmp_path, sections, message):
    _write_input(tmp_path / "in")
    with pytest.raises(PreflightError, match=message):
        preflight(load_config(_config(mbart50_dir, tmp_path, **sections)))
