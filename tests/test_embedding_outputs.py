"""Embedding outputs people store: Matryoshka truncation, quantised precisions and the
checkpoint's prompts, each against sentence-transformers (the reference) on the real MiniLM."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayformers.operators import EmbedOperator, TokenizeOperator
from rayformers.operators.embedding_outputs import calibration_ranges, quantize

TEXTS = ["hybrid search over a billion rows", "cheap storage for embeddings", None, "query expansion", "x y z"]


@pytest.fixture(scope="module")
def st_model(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


def embed(path, texts, prefix="", **options):
    tok = TokenizeOperator(str(path), "text", max_length=256, text_prefix=prefix)
    batch = tok(pa.table({"id": list(range(len(texts))), "text": texts}))
    return EmbedOperator(model_path=str(path), pooling="mean", normalize=True, torch_threads=1, **options)(batch)


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_quantize_equals_sentence_transformers(precision):
    from sentence_transformers.quantization import quantize_embeddings

    rng = np.random.default_rng(0)
    calibration = rng.normal(size=(200, 24)).astype(np.float32)
    emb = rng.normal(size=(7, 24)).astype(np.float32)
    ranges = calibration_ranges(calibration)
    expected = quantize_embeddings(emb, precision, calibration_embeddings=calibration)
    np.testing.assert_array_equal(quantize(emb, precision, ranges), expected)
    assert quantize(emb, precision, ranges).dtype == expected.dtype


def test_truncate_dim_then_renormalise_and_packed_bits(minilm_path, st_model):
    out = embed(minilm_path, TEXTS, truncate_dim=128)
    col = out.column("embedding")
    assert col.type.list_size == 128 and col[2].as_py() is None
    good = [t for t in TEXTS if t is not None]
    ref = st_model.encode(good, truncate_dim=128)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)  # Matryoshka: normalise what is kept
    ours = np.array([v for v in col.to_pylist() if v is not None])
    np.testing.assert_allclose(ours, ref, atol=1e-5)

    packed = embed(minilm_path, TEXTS, precision="ubinary").column("embedding")
    assert packed.type == pa.list_(pa.uint8(), 48)
    ours_bits = np.array([v for v in packed.to_pylist() if v is not None], dtype=np.uint8)
    np.testing.assert_array_equal(ours_bits, st_model.encode(good, precision="ubinary"))
    half = embed(minilm_path, TEXTS[:2], precision="float16").column("embedding")
    assert half.type == pa.list_(pa.float16(), 384)
    with pytest.raises(ValueError, match="needs calibration ranges"):
        embed(minilm_path, TEXTS, precision="int8")


def test_the_checkpoints_prompts_are_applied_by_default(minilm_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    from rayformers.pipeline import PreflightError
    from rayformers.pipeline.config import load_config
    from rayformers.pipeline.preflight import preflight

    model = tmp_path / "e5-like"
    shutil.copytree(minilm_path, model)
    (model / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": "query"}))
    st = SentenceTransformer(str(model), device="cpu")
    good = [t for t in TEXTS if t is not None]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"text": good}), tmp_path / "in" / "p.parquet")

    def job(**task):
        return load_config({"input": {"path": str(tmp_path / "in")}, "model": {"path": str(model), "task": "embed"},
                            "task": task, "output": {"path": str(tmp_path / "out")}})

    assert preflight(job()).text_prefix == "query: "
    assert preflight(job(prompt_name="passage")).text_prefix == "passage: "
    assert preflight(job(prompt="")).text_prefix == ""
    with pytest.raises(PreflightError, match=r"'doc' is not among the checkpoint's prompts \(passage, query\)"):
        preflight(job(prompt_name="doc"))
    for prompt_name in ("query", "passage"):
        prefix = preflight(job(prompt_name=prompt_name)).text_prefix
        ours = np.array(embed(model, good, prefix=prefix).column("embedding").to_pylist())
        np.testing.assert_allclose(ours, st.encode(good, prompt_name=prompt_name), atol=1e-5)


def test_int8_job_calibrates_on_its_own_rows_and_records_the_ranges(minilm_path, tmp_path, st_model, ray_session):
    from sentence_transformers.quantization import quantize_embeddings

    from rayformers.pipeline import read_output, run

    texts = [f"document {i} about " + "storage " * (i % 6) for i in range(40)]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"text": texts}), tmp_path / "in" / "p.parquet")
    report = run({"input": {"path": str(tmp_path / "in")}, "model": {"path": str(minilm_path), "task": "embed"},
                  "task": {"embedding_precision": "int8", "calibration_rows": 32},
                  "output": {"path": str(tmp_path / "out"), "keep_text": True}})
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    ranges = np.asarray(manifest["embedding_ranges"], dtype=np.float32)
    assert report.rows == 40 and ranges.shape == (2, 384)
    np.testing.assert_allclose(ranges, calibration_ranges(st_model.encode(texts[:32])), atol=1e-5)
    table = read_output(str(tmp_path / "out"))
    assert table.schema.field("embedding").type == pa.list_(pa.int8(), 384)
    got = {t: np.array(v, dtype=np.int8) for t, v in zip(table.column("text").to_pylist(), table.column("embedding").to_pylist())}
    expected = quantize_embeddings(st_model.encode(texts), "int8", ranges=ranges)
    # floor() of values computed in two libraries: a value on a step boundary may land one apart
    diff = np.abs(np.stack([got[t] for t in texts]).astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
