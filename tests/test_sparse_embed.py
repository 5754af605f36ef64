"""``sparse-embed`` (SPLADE): weights equal the formula on transformers' own MLM logits, cut by
threshold / top-k, in row order with error rows null; the pipeline resolves the task."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
import torch

from rayformers.models import AutoTokenizer
from rayformers.operators import SparseEmbedOperator, TokenizeOperator

from model_test_utils import tiny_bert

TEXTS = ["sparse retrieval", None, "a longer sentence about hybrid search with many words", "bm25 and splade", ""]


@pytest.fixture(scope="module")
def mlm(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("mlm") / "m", hidden=16, head="BertForMaskedLM")


def tokenized(path, texts):
    op = TokenizeOperator("", "text", max_length=32, tokenizer=AutoTokenizer.from_pretrained(path))
    return op(pa.table({"id": list(range(len(texts))), "text": texts}))


def reference_weights(path, text) -> torch.Tensor:
    """SPLADE's formula on transformers' logits for the row alone (no padding)."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.BertForMaskedLM.from_pretrained(path).eval()
    enc = tok([text], truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0]
    return torch.log1p(torch.relu(logits)).max(dim=0).values


@pytest.mark.parametrize("threshold,top_k", [(0.0, None), (0.05, None), (0.0, 7)])
def test_weights_equal_the_formula_on_transformers_logits(mlm, threshold, top_k):
    from rayformers.models import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(mlm).eval()
    op = SparseEmbedOperator(model=model, threshold=threshold, top_k=top_k, max_tokens_per_batch=40,
                             max_rows_per_batch=2, with_tokens=True, tokenizer=AutoTokenizer.from_pretrained(mlm))
    out = op(tokenized(mlm, TEXTS))
    rows = out.column("sparse_embedding").to_pylist()
    nnz = out.column("sparse_nnz").to_pylist()
    assert rows[1] is None and rows[4] is None and nnz[1] is None  # error rows stay null
    hf_tok = AutoTokenizer.from_pretrained(mlm)
    for i in (0, 2, 3):
        ref = reference_weights(mlm, TEXTS[i])
        keep = torch.nonzero(ref > threshold).flatten()
        expected = {int(v): float(ref[v]) for v in keep}
        if top_k is not None:
            cut = sorted(expected.values(), reverse=True)[top_k - 1]
            expected = {v: w for v, w in expected.items() if w >= cut - 1e-5}
        got = {e["token_id"]: e["weight"] for e in rows[i]}
        weights = [e["weight"] for e in rows[i]]
        assert weights == sorted(weights, reverse=True), "largest first"
        assert nnz[i] == len(got) == (top_k if top_k is not None else len(expected))
        assert set(got) <= set(expected)
        for v, w in got.items():
            assert math.isclose(w, expected[v], abs_tol=1e-5)
        assert [e["token"] for e in rows[i]] == hf_tok.convert_ids_to_tokens([e["token_id"] for e in rows[i]])


def test_pipeline_resolves_sparse_embed_on_a_masked_lm_checkpoint(mlm, tmp_path):
    from rayformers.pipeline import PreflightError
    from rayformers.pipeline.config import load_config
    from rayformers.pipeline.preflight import preflight

    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"text": ["a b c"]}), tmp_path / "in" / "p.parquet")
    job = {"input": {"path": str(tmp_path / "in")}, "model": {"path": str(mlm), "task": "sparse-embed"},
           "task": {"sparse_top_k": 64, "sparse_threshold": 0.1}, "output": {"path": str(tmp_path / "out")}}
    resolved = preflight(load_config(job))
    assert resolved.task_options["top_k"] == 64 and resolved.task_options["threshold"] == 0.1
    job["task"]["sparse_top_k"] = 0
    with pytest.raises(PreflightError, match="sparse_top_k must be at least 1"):
        preflight(load_config(job))
