"""`zero-shot-classify` against transformers' `zero-shot-classification` pipeline.

A tiny random NLI BERT (contradiction / neutral / entailment, saved by transformers with MiniLM's
tokenizer; large initial weights so that the labels' scores differ clearly). The operator is checked on its own (no Ray) for single- and multi-label scoring and
error rows, then once through `rayformers.pipeline.run` on real Parquet.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from rayformers.operators import TokenizeOperator, ZeroShotClassifyOperator
from rayformers.pipeline import PreflightError, read_output, run
from rayformers.pipeline.config import load_config
from rayformers.pipeline.preflight import preflight

from model_test_utils import tiny_bert

transformers.logging.set_verbosity_error()

NLI_LABELS = {0: "contradiction", 1: "neutral", 2: "entailment"}
TEXTS = ["I love this new phone, the battery lasts forever.", "", "The match ended in a draw after extra time.",
         "Stocks fell sharply on Monday " * 6, "short", None, "漢字 and emoji 🙂"]
CANDIDATES = ["technology", "sports", "finance", "politics"]
TEMPLATE = "This text is about {}."


@pytest.fixture(scope="module")
def nli_dir(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("nli"), hidden=16, layers=2, head="BertForSequenceClassification",
                     intermediate=32, num_labels=3, id2label=NLI_LABELS,
                     label2id={v: k for k, v in NLI_LABELS.items()}, initializer_range=0.5)


def reference(nli_dir, texts, candidates, multi_label):
    pipe = transformers.pipeline("zero-shot-classification", model=str(nli_dir), device="cpu")
    return {t: pipe(t, candidate_labels=candidates, hypothesis_template=TEMPLATE, multi_label=multi_label)
            for t in texts if t}


def assert_same_ranking(row, want):
    """Same score per label (fp32 tolerance), same order wherever two scores are not tied."""
    ours = dict(zip(row["labels"], row["scores"]))
    theirs = dict(zip(want["labels"], want["scores"]))
    assert ours.keys() == theirs.keys()
    for label, score in theirs.items():
        assert abs(ours[label] - score) < 1e-5, (label, ours[label], score)
    assert row["scores"] == sorted(row["scores"], reverse=True)
    for first, second in zip(want["labels"], want["labels"][1:]):
        if theirs[first] - theirs[second] > 1e-5:
            assert row["labels"].index(first) < row["labels"].index(second)


def run_operator(nli_dir, texts, candidates, multi_label, **budget):
    tokenize = TokenizeOperator(str(nli_dir), "text", max_length=64)
    batch = tokenize(pa.table({"text": pa.array(texts, type=pa.string())}))
    op = ZeroShotClassifyOperator(model_path=str(nli_dir), candidate_labels=candidates, hypothesis_template=TEMPLATE,
                                  multi_label=multi_label, text_column="text", tokenizer_path=str(nli_dir),
                                  max_length=64, **budget)
    return op(batch).to_pylist()


@pytest.mark.parametrize("multi_label,candidates", [(False, CANDIDATES), (True, CANDIDATES), (False, ["sports"])])
def test_operator_scores_equal_transformers_pipeline(nli_dir, multi_label, candidates):
    want = reference(nli_dir, TEXTS, candidates, multi_label)
    # A small token budget forces several length-sorted micro-batches of mixed pairs.
    rows = run_operator(nli_dir, TEXTS, candidates, multi_label, max_tokens_per_batch=96)
    for text, row in zip(TEXTS, rows):
        if not text:
            assert row["labels"] is None and row["error"]
            continue
        assert row["error"] is None
        assert_same_ranking(row, want[text])


def _write_input(path: Path) -> Path:
    path.mkdir()
    pq.write_table(pa.table({"text": pa.array(TEXTS, type=pa.string())}), path / "part0.parquet")
    return path


def _config(nli_dir, tmp_path, **task):
    return {
        "input": {"path": str(tmp_path / "in")},
        "model": {"path": str(nli_dir), "task": "zero-shot-classify"},
        "task": {"candidate_labels": CANDIDATES, "hypothesis_template": TEMPLATE, **task},
        "output": {"path": str(tmp_path / "out"), "max_error_fraction": 0.5},
    }


def test_pipeline_zero_shot_equals_transformers(nli_dir, tmp_path, ray_session):
    _write_input(tmp_path / "in")
    report = run(_config(nli_dir, tmp_path, multi_label=True))
    assert report.rows == len(TEXTS) and report.errors == 2
    rows = {r["id"]: r for r in read_output(str(tmp_path / "out")).to_pylist()}
    want = reference(nli_dir, TEXTS, CANDIDATES, True)
    for i, text in enumerate(TEXTS):
        row = rows[f"part0.parquet:{i}"]
        if not text:
            assert row["error"] and row["labels"] is None
            continue
        assert_same_ranking(row, want[text])


@pytest.mark.parametrize("task,message", [
    ({"candidate_labels": []}, "candidate_labels must be a non-empty list"),
    ({"hypothesis_template": "no placeholder"}, "has no {}"),
])
def test_zero_shot_settings_fail_before_any_row_is_read(nli_dir, tmp_path, task, message):
    _write_input(tmp_path / "in")
    with pytest.raises(PreflightError, match=message):
        preflight(load_config(_config(nli_dir, tmp_path, **task)))
