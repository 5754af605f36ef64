"""Curation jobs end to end on a local Ray cluster: every input column kept (``passthrough_columns:
"*"``), several models in one pass (``models:``), keep rules (``output.keep``, ``dropped_path``),
and a driver killed mid-run then resumed. Real Parquet, tiny random checkpoints saved by
transformers, predictions compared with transformers run on each row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rayformers.pipeline import PreflightError, read_output, run

from model_test_utils import tiny_bert
from test_pipeline_e2e import _staged_parts, _wait_for

TOPICS = {0: "science", 1: "health", 2: "sports"}
TEXTS = [f"document {i}: " + "words about things " * (1 + i % 9) for i in range(60)]
LONG = 12  # rows whose text is longer than the topic model's 24-token limit fail in that model only


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A regression head (quality), a 3-label classifier (topic) and a bare encoder (embedder)."""
    root = tmp_path_factory.mktemp("ckpt")
    quality = tiny_bert(root / "quality", hidden=16, layers=1, head="BertForSequenceClassification",
                        num_labels=1, problem_type="regression")
    topic = tiny_bert(root / "topic", hidden=16, layers=1, head="BertForSequenceClassification", num_labels=3,
                      id2label=TOPICS, label2id={v: k for k, v in TOPICS.items()})
    emb = tiny_bert(root / "emb", hidden=16, layers=1, head="BertModel")
    return {"quality": quality, "topic": topic, "emb": emb}


def write_corpus(path: Path, texts: list, files: int = 2, row_group_size: int = 8, **extra) -> Path:
    """Parquet with the text among other columns (an id, a language, a count, ``extra``), as
    crawls come."""
    path.mkdir(parents=True)
    per = (len(texts) + files - 1) // files
    for k in range(files):
        chunk = texts[k * per:(k + 1) * per]
        base = k * per
        pq.write_table(pa.table({
            "doc": [f"d{base + i}" for i in range(len(chunk))],
            "lang": ["en" if (base + i) % 3 else "fr" for i in range(len(chunk))],
            "text": chunk,
            "n": pa.array([base + i for i in range(len(chunk))], pa.int64()),
            **{name: values[base:base + len(chunk)] for name, values in extra.items()},
        }), path / f"part{k}.parquet", row_group_size=row_group_size)
    return path


def hf_logits(path: Path, texts: list, max_length: int = 64) -> np.ndarray:
    """transformers on one unpadded row at a time: the reference."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    out = []
    for t in texts:
        enc = tok([t], truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            out.append(model(**enc).logits[0].numpy())
    return np.stack(out)


def models_section(ck: dict, emb: bool = True) -> list:
    """quality, emb (same tokenizer settings as quality: it reads quality's tokens), topic (its
    own 24-token limit, longer rows an error)."""
    models = [{"name": "quality", "path": str(ck["quality"]), "task": "classify"}]
    if emb:
        models.append({"name": "emb", "path": str(ck["emb"]), "task": "embed", "task_options": {"pooling": "mean"}})
    models.append({"name": "topic", "path": str(ck["topic"]), "task": "classify",
                   "tokenizer": {"max_length": 24, "overflow": "error"}})
    return models


# Three models on 2 CPUs: each pool reserves a small share (reservations, not threads).
SMALL_POOLS = {"tokenizer_num_cpus": 0.1, "model_num_cpus": 0.2, "io_num_cpus": 0.25,
               "tokenizer_max_actors": 1, "torch_threads": 1}


# --- point 1: every input column ------------------------------------------------------------------


def test_all_input_columns_pass_through_in_their_order_with_predictions_appended(ray_session, tmp_path, checkpoints):
    inp = write_corpus(tmp_path / "in", TEXTS[:20], files=1)
    out = tmp_path / "out"
    report = run({"input": {"path": str(inp), "id_column": "doc", "passthrough_columns": "*"},
                  "model": {"path": str(checkpoints["topic"]), "task": "classify"},
                  "compute": {"batch_size": 8}, "output": {"path": str(out)}})
    table = read_output(str(out))
    assert table.column_names[:4] == ["doc", "lang", "text", "n"], table.column_names
    assert set(table.column_names[4:]) == {"label", "score", "num_tokens", "error"}
    original = pq.read_table(inp / "part0.parquet")
    table = table.sort_by("n")
    for name in ("doc", "lang", "text", "n"):
        assert table.column(name).to_pylist() == original.column(name).to_pylist()
        assert table.schema.field(name).type == original.schema.field(name).type
    assert report.rows == 20
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["models"] == [{"name": None, "task": "classify", "model_type": "bert",
                                   "prediction_columns": ["label", "score", "num_tokens"]}]
    assert manifest["keep"] is None and manifest["dropped_rows"] == 0 and manifest["kept_rows"] == 20


def test_an_input_column_named_like_a_prediction_fails_before_any_row_is_read(tmp_path, checkpoints):
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", "y"]}), inp / "p.parquet")
    out = tmp_path / "out"
    with pytest.raises(PreflightError, match=r"label would collide with output columns"):
        run({"input": {"path": str(inp), "passthrough_columns": "*"},
             "model": {"path": str(checkpoints["topic"]), "task": "classify"}, "output": {"path": str(out)}})
    pq.write_table(pa.table({"text": ["a", "b"], "topic_label": ["x", "y"]}), inp / "p.parquet")
    with pytest.raises(PreflightError, match=r"input column 'topic_label' has the name of model 'topic''s prediction "
                                             r"column 'label'"):
        run({"input": {"path": str(inp), "passthrough_columns": "*"}, "models": models_section(checkpoints),
             "output": {"path": str(out)}})
    assert not out.exists() and not (tmp_path / ".out.rayformers-staging").exists()


# --- point 2: several models in one pass ----------------------------------------------------------


def test_three_models_in_one_pass_match_each_model_and_name_the_model_a_row_failed_in(
        ray_session, tmp_path, checkpoints):
    texts = TEXTS[:30] + [None]
    inp = write_corpus(tmp_path / "in", texts, files=2)
    out = tmp_path / "out"
    report = run({"input": {"path": str(inp), "passthrough_columns": ["lang"]}, "models": models_section(checkpoints),
                  "compute": {"batch_size": 8, **SMALL_POOLS}, "output": {"path": str(out), "max_error_fraction": 1.0}})
    table = read_output(str(out))
    # input columns, then each model's columns under its name, one error column
    assert table.column_names == ["lang", "id", "quality_label", "quality_score", "quality_num_tokens",
                                  "emb_embedding", "emb_num_tokens", "topic_label", "topic_score",
                                  "topic_num_tokens", "error"]
    per_file = (len(texts) + 1) // 2
    rows = {r["id"]: r for r in table.to_pylist()}
    by_index = {}
    for i, r in rows.items():
        f, row = i.split(":")
        by_index[int(f[len("part"):-len(".parquet")]) * per_file + int(row)] = r
    assert sorted(by_index) == list(range(len(texts)))

    quality = hf_logits(checkpoints["quality"], texts[:30])
    topic = hf_logits(checkpoints["topic"], texts[:30], max_length=24)
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(checkpoints["topic"]))
    encoder = transformers.AutoModel.from_pretrained(str(checkpoints["emb"])).eval()
    for k in range(30):
        r = by_index[k]
        np.testing.assert_allclose(r["quality_score"], quality[k][0], atol=1e-5)  # regression: the raw logit
        enc = tok([texts[k]], truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():  # mean pooling of transformers' encoder: the embedder's reference
            mean = encoder(**enc).last_hidden_state[0].mean(0).numpy()
        np.testing.assert_allclose(r["emb_embedding"], mean, atol=1e-5)
        assert r["emb_num_tokens"] == r["quality_num_tokens"] == enc["input_ids"].shape[1]
        if len(tok(texts[k])["input_ids"]) > 24:  # over the topic model's limit: an error, naming the model
            assert r["error"].startswith("model topic: text: text has "), r["error"]
            assert r["topic_label"] is None
        else:
            assert r["error"] is None
            assert r["topic_label"] == TOPICS[int(topic[k].argmax())]
    assert by_index[30]["error"] == "model quality: text: text is null"
    failed_in_topic = sum(1 for r in rows.values() if (r["error"] or "").startswith("model topic"))
    assert failed_in_topic >= 5 and report.errors == failed_in_topic + 1
    manifest = json.loads((out / "_manifest.json").read_text())
    assert [m["name"] for m in manifest["models"]] == ["quality", "emb", "topic"]
    assert manifest["models"][1] == {"name": "emb", "task": "embed", "model_type": "bert", "model_dtype": "float32",
                                     "max_length": 64, "prediction_columns": ["emb_embedding", "emb_num_tokens"]}
    assert {"quality_tokenize", "quality_model", "topic_tokenize", "topic_model", "emb_model"} <= set(report.stage_s)
    assert "emb_tokenize" not in report.stage_s  # emb read the tokens quality's tokenizer pool made


def test_a_models_entry_is_checked_with_its_own_name(tmp_path, checkpoints):
    inp = write_corpus(tmp_path / "in", TEXTS[:4], files=1)
    bad = models_section(checkpoints)
    bad[2]["task_options"] = {"top_kk": 2}
    with pytest.raises(Exception, match=r"models\[2\]\.task_options\.top_kk"):
        run({"input": {"path": str(inp)}, "models": bad, "output": {"path": str(tmp_path / "o")}})
    bad = models_section(checkpoints)
    bad[1]["path"] = str(tmp_path / "missing")
    with pytest.raises(PreflightError, match=r"models\[emb\]: model.path"):
        run({"input": {"path": str(inp)}, "models": bad, "output": {"path": str(tmp_path / "o")}})


# --- point 3: keep rules --------------------------------------------------------------------------


def test_keep_rule_splits_rows_between_output_and_dropped_path_and_counts_every_row(
        ray_session, tmp_path, checkpoints):
    texts = TEXTS[:40] + [None, ""]
    # an input column named like what a classifier writes before its name prefixes it: kept as it is
    inp = write_corpus(tmp_path / "in", texts, files=2, score=[f"s{i}" for i in range(len(texts))])
    quality = hf_logits(checkpoints["quality"], TEXTS[:40])[:, 0]
    cut = float(np.sort(quality)[19] + np.sort(quality)[20]) / 2  # half of the rows pass, none on the edge
    rule = f"quality_score >= {cut!r} and lang in ['en']"
    out, dropped = tmp_path / "out", tmp_path / "dropped"
    report = run({"input": {"path": str(inp), "passthrough_columns": "*"},
                  "models": models_section(checkpoints, emb=False),
                  "compute": {"batch_size": 8, **SMALL_POOLS},
                  "output": {"path": str(out), "keep": rule, "dropped_path": str(dropped), "max_error_fraction": 1}})
    kept, gone = read_output(str(out)), read_output(str(dropped))
    assert kept.column_names == gone.column_names
    assert kept.column_names[:5] == ["doc", "lang", "text", "n", "score"]
    for r in kept.to_pylist() + gone.to_pylist():
        assert r["score"] == f"s{r['n']}"
    ok = [r for r in kept.to_pylist() if r["error"] is None]
    errors = [r for r in kept.to_pylist() if r["error"] is not None]
    for r in ok:
        assert r["quality_score"] >= cut and r["lang"] == "en"
    for r in gone.to_pylist():
        assert r["error"] is None, "error records are never dropped"
        assert not (r["quality_score"] >= cut and r["lang"] == "en")
    expected = {i for i in range(40) if quality[i] >= cut and i % 3}
    assert {r["n"] for r in ok} == expected - {r["n"] for r in errors}
    ids = kept.column("id").to_pylist() + gone.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == len(texts)  # every input row once, kept, dropped or error
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["input_rows"] == 42
    assert manifest["kept_rows"] == len(ok) and manifest["dropped_rows"] == gone.num_rows
    assert manifest["error_rows"] == len(errors) >= 2
    assert manifest["kept_rows"] + manifest["dropped_rows"] + manifest["error_rows"] == manifest["input_rows"]
    assert manifest["output_rows"] == kept.num_rows and manifest["keep"] == rule
    assert report.dropped == gone.num_rows
    side = json.loads((dropped / "_manifest.json").read_text())
    assert side["dropped_rows"] == gone.num_rows and side["config_fingerprint"] == manifest["config_fingerprint"]

    # Without dropped_path the dropped rows are only counted; the same rows are kept.
    out2 = tmp_path / "out2"
    run({"input": {"path": str(inp), "passthrough_columns": "*"}, "models": models_section(checkpoints, emb=False),
         "compute": {"batch_size": 8, **SMALL_POOLS}, "output": {"path": str(out2), "keep": rule,
                                                                "max_error_fraction": 1}})
    assert sorted(read_output(str(out2)).column("id").to_pylist()) == sorted(kept.column("id").to_pylist())
    assert json.loads((out2 / "_manifest.json").read_text())["dropped_rows"] == gone.num_rows
    assert not (tmp_path / ".out2.rayformers-staging").exists()  # nothing of the dropped rows is left behind


def test_a_keep_rule_with_an_unknown_column_or_a_syntax_error_fails_before_any_row(tmp_path, checkpoints):
    inp = write_corpus(tmp_path / "in", TEXTS[:4], files=1)
    job = {"input": {"path": str(inp), "passthrough_columns": ["lang"]}, "models": models_section(checkpoints),
           "output": {"path": str(tmp_path / "out")}}
    job["output"]["keep"] = "quality_score >= 3 and topic_lable in ['science']"
    with pytest.raises(PreflightError) as e:
        run(job)
    assert "unknown column 'topic_lable'" in str(e.value) and "at position 23" in str(e.value)
    assert "topic_label" in str(e.value)
    job["output"]["keep"] = "n > 3"  # an input column the output does not keep
    with pytest.raises(PreflightError, match="unknown column 'n'"):
        run(job)
    job["output"]["keep"] = "quality_score >= 3 and (lang == 'en'"
    with pytest.raises(PreflightError, match=r"expected '\)', found the end of the expression at position 36"):
        run(job)
    job["output"]["keep"] = "quality_score >= 'high'"
    with pytest.raises(PreflightError, match="compares a number with a string"):
        run(job)
    job["output"]["keep"] = None
    job["output"]["dropped_path"] = str(tmp_path / "dropped")
    with pytest.raises(PreflightError, match="dropped_path is set without output.keep"):
        run(job)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.rayformers-staging").exists()


# --- all together: killed mid-run, resumed -------------------------------------------------------


def test_three_models_and_a_keep_rule_killed_mid_run_then_resumed_account_every_row_once(
        ray_session, tmp_path, checkpoints):
    texts = TEXTS * 3 + [None]
    inp = write_corpus(tmp_path / "in", texts, files=2, row_group_size=12)
    out, dropped = tmp_path / "out", tmp_path / "dropped"
    job = {"input": {"path": str(inp), "passthrough_columns": "*"}, "models": models_section(checkpoints),
           "compute": {"batch_size": 6, **SMALL_POOLS},
           "output": {"path": str(out), "keep": "lang == 'en' and topic_label is not null",
                      "dropped_path": str(dropped), "stage_rows": 6, "max_error_fraction": 1.0}}
    address = ray_session.get_runtime_context().gcs_address
    script = (
        "import ray, json\n"
        f"ray.init(address={address!r}, log_to_driver=False)\n"
        "from rayformers.pipeline import run\n"
        f"run(json.loads({json.dumps(json.dumps(job))}))\n"
    )
    staging = tmp_path / ".out.rayformers-staging"
    log = tmp_path / "driver.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=sink, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: len(_staged_parts(out)) >= 3 or proc.poll() is not None)
        assert proc.poll() is None, f"driver ended early:\n{log.read_text()[-3000:]}"
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-run
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "_SUCCESS").exists(), "killed before publishing"

    def staged_ids(folder: str) -> set:
        return {i for p in sorted((staging / folder).glob("part-*.parquet"))
                for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()}

    kept_before, dropped_before = staged_ids("data"), staged_ids("dropped")
    assert dropped_before, "the kill came after some rows were dropped"
    assert 0 < len(kept_before | dropped_before) < len(texts)

    report = run(job, ["output.mode=resume"])
    assert report.rows_resumed == len(kept_before) + len(dropped_before)
    assert report.rows_scored == len(texts) - report.rows_resumed, "no staged row, kept or dropped, is scored again"
    kept, gone = read_output(str(out)), read_output(str(dropped))
    ids = kept.column("id").to_pylist() + gone.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == len(texts)
    assert dropped_before <= set(gone.column("id").to_pylist())
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["kept_rows"] + manifest["dropped_rows"] + manifest["error_rows"] == manifest["input_rows"] \
        == len(texts)
    for r in kept.to_pylist():
        assert r["error"] is not None or (r["lang"] == "en" and r["topic_label"] is not None)
    assert all(r["lang"] == "fr" for r in gone.to_pylist())
    assert not staging.exists()


def test_plan_estimates_each_model_and_names_the_bound(ray_session, tmp_path, checkpoints):
    from rayformers.pipeline.estimate import plan

    inp = write_corpus(tmp_path / "in", TEXTS[:24], files=1)
    report = plan({"input": {"path": str(inp)}, "models": models_section(checkpoints),
                   "compute": {"batch_size": 8, **SMALL_POOLS}, "output": {"path": str(tmp_path / "out")}},
                  sample_rows=24)
    assert [m["name"] for m in report.models] == ["quality", "emb", "topic"]
    emb = report.models[1]
    assert emb["tokenizer_rows_per_s_per_actor"] is None and emb["tokenizer_actors"] == 0  # quality's tokens
    assert emb["rows_per_s"] == pytest.approx(emb["model_rows_per_s_per_actor"] * emb["model_actors"])
    for m in (report.models[0], report.models[2]):
        assert m["model_rows_per_s_per_actor"] > 0 and m["tokenizer_rows_per_s_per_actor"] > 0
        assert m["rows_per_s"] == pytest.approx(min(m["model_rows_per_s_per_actor"] * m["model_actors"],
                                                    m["tokenizer_rows_per_s_per_actor"] * m["tokenizer_actors"]))
    slowest = min(report.models, key=lambda m: m["rows_per_s"])
    assert report.bottleneck == f"{slowest['bound']} actors of model {slowest['name']!r}"
    assert report.estimated_wall_s >= 24 / slowest["rows_per_s"]
    text = report.format()
    assert "quality" in text and "topic" in text and "emb" in text and report.bottleneck in text
    assert not (tmp_path / "out").exists()
