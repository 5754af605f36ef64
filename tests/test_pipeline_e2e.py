"""End to end on a local Ray cluster (2 CPUs, default compute): real Parquet, real checkpoints.

Each task runs through ``rayformers.pipeline.run`` / the CLI; predictions are compared with our
model called directly on each row (and with transformers, the reference). One Ray session for the
module; each test is one dataset execution, because starting actors is the slow part here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rayformers.pipeline import PreflightError, read_output, run
from rayformers.pipeline import cli

from model_test_utils import tiny_bert as shared_tiny_bert
from model_test_utils import with_minilm_tokenizer


def tiny_bert(path: Path, head: str, **config) -> Path:
    """A tiny random BERT checkpoint saved by transformers, with MiniLM's tokenizer."""
    return shared_tiny_bert(path, hidden=16, layers=2, head=head, intermediate=32, **config)


MIXED = [
    "hello world",
    "漢字 and عربي text with 🙂 emoji",
    "A much longer sentence that goes on and on, " * 5,
    "short",
    "The quick brown fox jumps over the lazy dog. " * 12,
] + [f"row {i}: " + "lorem ipsum dolor " * (i % 17) for i in range(60)]

POISON = [None, "", "   \t", "\u200b\u200b", "x " * 500_000]


def write_input(path: Path, texts: list, column_type=pa.string(), files: int = 2, **extra) -> Path:
    path.mkdir(parents=True)
    n = len(texts)
    per = (n + files - 1) // files
    for k in range(files):
        chunk = texts[k * per : (k + 1) * per]
        cols = {"text": pa.array(chunk, type=column_type), "source": [f"s{k}"] * len(chunk)}
        for name, values in extra.items():
            cols[name] = values[k * per : (k + 1) * per]
        pq.write_table(pa.table(cols), path / f"part{k}.parquet", row_group_size=16)
    return path


def per_row_reference(model, tokenizer, texts, max_length):
    """Our model on one unpadded row at a time: the ground truth the pipeline must reproduce."""
    outs = []
    for t in texts:
        enc = tokenizer([t], truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            outs.append(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]))
    return outs


def test_classify_poison_rows_budget_then_resume_publishes(ray_session, tmp_path, minilm_path, capsys):
    from transformers import AutoTokenizer as HFTokenizer

    from rayformers.models import AutoModelForSequenceClassification

    model_dir = tiny_bert(tmp_path / "clf", "BertForSequenceClassification",
        num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2},
    )
    texts = MIXED + POISON
    # Binary column: valid UTF-8 bytes are text, invalid bytes are an error record.
    raw = [None if t is None else t.encode() for t in texts] + [b"\xff\xfeinvalid"]
    inp = write_input(tmp_path / "in", raw, pa.binary())
    out = tmp_path / "out"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"input: {{path: {inp}, passthrough_columns: [source]}}\n"
        f"model: {{path: {model_dir}, task: classify}}\n"
        f"task: {{top_k: 2}}\n"
        f"output: {{path: {out}}}\n"
    )
    # Default budget 0: the job writes everything, then fails loudly with exit code 3.
    code = cli.main(["run", str(cfg)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR_BUDGET
    assert "5 of 71 rows" in err and "max_error_fraction=0" in err and "output.mode=resume" in err
    assert not out.exists(), "nothing published past the budget"

    # Raise the budget and resume: nothing is scored again, the staged rows are published.
    report = run(cfg, ["output.mode=resume", "output.max_error_fraction=0.1"])
    assert report.status == "succeeded" and report.rows_scored == 0 and report.rows_resumed == 71
    table = read_output(str(out))
    assert table.num_rows == 71 and len(set(table.column("id").to_pylist())) == 71
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["input_rows"] == 71 and manifest["error_rows"] == 5 and len(manifest["input_files"]) == 2
    assert manifest["max_length"] == 64  # unset: the checkpoint's limit, capped to its 64 positions, recorded

    rows = {r["id"]: r for r in table.to_pylist()}
    ordered = [rows[f"part{k}.parquet:{i}"] for k in range(2) for i in range(36 if k == 0 else 35)]
    errors = [r["error"] for r in ordered]
    assert [e is not None for e in errors] == [t is None or (isinstance(t, str) and not t.strip()) or t == "\u200b\u200b" for t in texts] + [True]
    assert "not valid UTF-8" in errors[-1] and "tokenizes to no tokens" in errors[68]
    assert {r["source"] for r in ordered} == {"s0", "s1"}

    ours = AutoModelForSequenceClassification.from_pretrained(model_dir)
    hf_tok = HFTokenizer.from_pretrained(model_dir)
    good = [(i, t) for i, t in enumerate(texts) if errors[i] is None]
    ref = per_row_reference(ours, hf_tok, [t for _, t in good], 64)
    for (i, _), out_i in zip(good, ref):
        probs = torch.softmax(out_i.logits[0], -1)
        top = torch.topk(probs, 2)
        assert ordered[i]["top_k_labels"] == [ours.config.id2label[int(j)] for j in top.indices]
        np.testing.assert_allclose(ordered[i]["top_k_scores"], top.values.numpy(), atol=1e-5)
        assert ordered[i]["num_tokens"] == min(len(hf_tok(texts[i])["input_ids"]), 64)


def test_text_pairs_cross_encoder_matches_transformers(ray_session, tmp_path, minilm_path):
    """``input.text_pair_column``: (query, passage) rows scored as pairs with token type ids, the
    way a cross-encoder (or NLI model) is run; a row with a null passage is an error record."""
    import transformers

    model_dir = tiny_bert(tmp_path / "xenc", "BertForSequenceClassification", num_labels=1, type_vocab_size=2)
    queries = ["what is ray", "capital of france", "long query " * 30, "emoji 🙂 query", "no passage"]
    passages = ["Ray is a framework for scaling Python.", "Paris is the capital.", "short", "漢字 passage " * 20, None]
    inp = write_input(tmp_path / "in", queries, files=1, passage=passages)
    report = run(
        {
            "input": {"path": str(inp), "text_pair_column": "passage"},
            "model": {"path": str(model_dir), "task": "classify"},
            "output": {"path": str(tmp_path / "out"), "max_error_fraction": 0.5},
        }
    )
    assert report.rows == 5 and report.errors == 1
    rows = {r["id"]: r for r in read_output(str(tmp_path / "out")).to_pylist()}
    assert rows["part0.parquet:4"]["error"] == "passage: text is null"

    ref = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    for i in range(4):
        enc = tok(queries[i], passages[i], truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            want = torch.sigmoid(ref(**enc).logits[0, 0]).item()  # one logit: sigmoid, as transformers' pipeline
        got = rows[f"part0.parquet:{i}"]
        assert got["error"] is None and got["num_tokens"] == enc["input_ids"].shape[1]
        assert got["score"] == pytest.approx(want, abs=1e-5)


def test_embed_minilm_equals_sentence_transformers_with_default_compute_on_2_cpus(ray_session, tmp_path, minilm_path):
    assert ray_session.cluster_resources()["CPU"] == 2.0  # default compute must not hang here
    from sentence_transformers import SentenceTransformer

    texts = MIXED[:40]
    inp = write_input(tmp_path / "in", texts, files=1, doc_id=[f"d{i}" for i in range(len(texts))])
    report = run(
        {
            "input": {"path": str(inp), "id_column": "doc_id"},
            "model": {"path": str(minilm_path), "task": "embed"},
            "output": {"path": str(tmp_path / "out")},
        }
    )
    assert report.rows == 40 and report.errors == 0 and report.tokens > 0
    table = read_output(str(tmp_path / "out"))
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    got = {r["doc_id"]: r["embedding"] for r in table.to_pylist()}
    st = SentenceTransformer(str(minilm_path), device="cpu")
    want = st.encode(texts, batch_size=8, convert_to_numpy=True)  # normalised, mean pooled, max 256 tokens
    np.testing.assert_allclose(np.array([got[f"d{i}"] for i in range(40)]), want, atol=1e-5)


def test_token_classify_matches_transformers_pipeline(ray_session, tmp_path, minilm_path):
    import transformers

    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    model_dir = tiny_bert(tmp_path / "ner", "BertForTokenClassification",
        num_labels=5, id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
    )
    texts = ["John Smith lives in New York", "unaffable Paris", "Ünïcödé names like José Müller", "a b c d e f g"]
    inp = write_input(tmp_path / "in", texts, files=1)
    for strategy in ("simple",):
        report = run(
            {
                "input": {"path": str(inp)},
                "model": {"path": str(model_dir), "task": "token-classify"},
                "task": {"aggregation_strategy": strategy, "ignore_labels": []},
                "output": {"path": str(tmp_path / f"out-{strategy}"), "keep_text": True},
            }
        )
        assert report.errors == 0
        rows = {r["id"]: r for r in read_output(str(tmp_path / f"out-{strategy}")).to_pylist()}
        ref = transformers.pipeline(
            "token-classification", model=str(model_dir), aggregation_strategy=strategy, ignore_labels=[]
        )
        for i, t in enumerate(texts):
            want = ref(t)
            got = rows[f"part0.parquet:{i}"]["entities"]
            assert rows[f"part0.parquet:{i}"]["text"] == t
            assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in got] == [
                (w["entity_group"], w["word"], w["start"], w["end"]) for w in want
            ]
            np.testing.assert_allclose([e["score"] for e in got], [float(w["score"]) for w in want], atol=1e-5)


def test_preflight_errors_before_any_work(tmp_path, minilm_path):
    inp = write_input(tmp_path / "in", ["a", "b"], files=1, num=[1, 2])
    base = {"input": {"path": str(inp)}, "model": {"path": str(minilm_path), "task": "embed"}, "output": {"path": str(tmp_path / "o")}}
    cases = [
        ({"input": {"path": str(tmp_path / "nope")}}, "does not exist"),
        ({"input": {"path": str(inp), "text_column": "body"}}, "column 'body' is not in input file"),
        ({"input": {"path": str(inp), "text_column": "num"}}, "has type int64, expected a string column"),
        ({"input": {"path": str(inp), "id_column": "source"}}, "ids occur more than once"),
        ({"model": {"path": str(tmp_path / "no-model"), "task": "embed"}}, "cannot load the model config"),
        ({"model": {"path": str(minilm_path), "task": "generate"}}, "not available for model.path"),
        ({"input": {"path": str(inp), "passthrough_columns": ["error"]}}, "collide with output columns"),
    ]
    for patch, needle in cases:
        cfg = {**base, **patch}
        with pytest.raises(PreflightError, match=needle):
            run(cfg)
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.rayformers-staging").exists()


# --- faults ------------------------------------------------------------------------------------


def _raylet_pid() -> int:
    """The raylet of this test's Ray session: its workers are its children (not other sessions')."""
    import ray

    node = ray._private.worker._global_node
    return node.all_processes[ray._private.ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def _pids_of(title: str, parent: int) -> list[int]:
    """Child processes of ``parent`` whose command line (Ray's process title) contains ``title``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if title in cmd and ppid == parent:
                pids.append(int(entry.name))
    return pids


def _staged_parts(out: Path) -> list[Path]:
    data = out.parent / f".{out.name}.rayformers-staging" / "data"
    return sorted(data.glob("part-*.parquet")) if data.exists() else []


def _wait_for(predicate, timeout: float = 240.0, interval: float = 0.05):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


EMBED_TEXTS = [f"document {i}: " + "some words of text " * (1 + i % 7) for i in range(240)]


def embed_job(inp: Path, out: Path, minilm: Path, **extra) -> dict:
    return {
        "input": {"path": str(inp)},
        "model": {"path": str(minilm), "task": "embed"},
        # Small Ray batches and staged files: many of them, so a kill always lands mid-run.
        "compute": {"batch_size": 12},
        "output": {"path": str(out), "stage_rows": 12, **extra},
    }


def test_killing_a_model_actor_mid_run_loses_and_duplicates_nothing(ray_session, tmp_path, minilm_path):
    import os
    import signal
    import threading

    inp = write_input(tmp_path / "in", EMBED_TEXTS, files=2)
    out = tmp_path / "out"
    killed = []
    raylet = _raylet_pid()

    def killer():
        _wait_for(lambda: _staged_parts(out))
        pids = _wait_for(lambda: _pids_of("MapWorker(MapBatches(EmbedActor))", raylet))
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    report = run(embed_job(inp, out, minilm_path))
    thread.join(timeout=5)
    assert killed, "the model actor was killed while the job ran"
    ids = read_output(str(out)).column("id").to_pylist()
    assert len(ids) == len(EMBED_TEXTS) == len(set(ids)) == report.rows
    assert report.errors == 0


def test_crash_and_resume_scores_only_missing_rows(ray_session, tmp_path, minilm_path):
    import os
    import signal
    import subprocess
    import sys

    inp = write_input(tmp_path / "in", EMBED_TEXTS, files=2)
    out = tmp_path / "out"
    job = embed_job(inp, out, minilm_path)
    address = ray_session.get_runtime_context().gcs_address
    script = (
        "import ray, sys, json\n"
        f"ray.init(address={address!r}, log_to_driver=False)\n"
        "from rayformers.pipeline import run\n"
        f"run(json.loads({json.dumps(json.dumps(job))}))\n"
    )
    log = tmp_path / "driver.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=sink, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: len(_staged_parts(out)) >= 2 or proc.poll() is not None)
        assert proc.poll() is None, f"driver ended early:\n{log.read_text()[-3000:]}"
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-run
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "_SUCCESS").exists(), "killed before publishing"
    staged = {i for p in _staged_parts(out) for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()}
    assert 0 < len(staged) < len(EMBED_TEXTS)

    report = run(job, ["output.mode=resume"])
    assert report.rows_resumed == len(staged)
    assert report.rows_scored == len(EMBED_TEXTS) - len(staged), "no staged row is scored again"
    table = read_output(str(out))
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == len(EMBED_TEXTS)
    # Rows from both attempts are the same predictions: compare a resumed and a new row with a fresh run.
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_path), device="cpu")
    by_id = {r["id"]: r["embedding"] for r in table.to_pylist()}
    per_file = (len(EMBED_TEXTS) + 1) // 2
    some = [next(iter(staged)), next(i for i in ids if i not in staged)]
    for i in some:
        f, row = i.split(":")
        k = int(f[len("part") : -len(".parquet")])
        text = EMBED_TEXTS[k * per_file + int(row)]
        np.testing.assert_allclose(by_id[i], st.encode([text])[0], atol=1e-5)


def tiny_bart(path: Path) -> Path:
    """A tiny random BART saved by transformers, speaking MiniLM's WordPiece vocabulary."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BartConfig(
        vocab_size=30522, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=101, eos_token_id=102, decoder_start_token_id=102, forced_bos_token_id=None,
        forced_eos_token_id=None,
    )
    transformers.BartForConditionalGeneration(cfg).eval().save_pretrained(path)
    return with_minilm_tokenizer(path)


def test_generate_matches_per_row_generate(ray_session, tmp_path, minilm_path):
    from transformers import BartForConditionalGeneration as HFBart

    from rayformers.models import AutoModelForSeq2SeqLM, AutoTokenizer

    model_dir = tiny_bart(tmp_path / "bart")
    texts = ["summarise this short text", "", "a longer input " * 9, "hi", "漢字 🙂 text"]
    inp = write_input(tmp_path / "in", texts, files=1)
    report = run(
        {
            "input": {"path": str(inp)},
            "model": {"path": str(model_dir), "task": "generate"},
            "task": {"generation": {"max_new_tokens": 6, "num_beams": 1}},
            "output": {"path": str(tmp_path / "out"), "max_error_fraction": 0.5},
        }
    )
    assert report.rows == 5 and report.errors == 1
    rows = {r["id"]: r for r in read_output(str(tmp_path / "out")).to_pylist()}
    ours = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    hf = HFBart.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    for i, t in enumerate(texts):
        row = rows[f"part0.parquet:{i}"]
        if not t:
            assert row["generated_text"] is None and "empty" in row["error"]
            continue
        enc = tok([t], truncation=True, max_length=64, return_tensors="pt")
        want = ours.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=6, num_beams=1)
        ref = hf.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=6, num_beams=1)
        assert want.tolist() == ref.tolist()
        assert row["generated_text"] == tok.batch_decode(want, skip_special_tokens=True)[0]


def test_chunked_mega_classifier_scores_like_any_classifier(ray_session, tmp_path, minilm_path):
    """A MEGA checkpoint (transformers 4.57.6 format) runs through `classify` unchanged.

    Chunking is on and most rows are longer than one chunk and not a multiple of it, so this
    also shows the operator pads micro-batches to whole chunks (`model.pad_to_multiple_of`).
    """
    import transformers

    from rayformers.models import AutoModelForSequenceClassification

    torch.manual_seed(0)
    cfg = transformers.MegaConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=1, intermediate_size=32, ema_projection_size=4,
        shared_representation_size=8, max_positions=64, use_chunking=True, chunk_size=8, num_labels=2,
        pad_token_id=0,
    )
    model_dir = tmp_path / "mega"
    transformers.MegaForSequenceClassification(cfg).eval().save_pretrained(model_dir)
    with_minilm_tokenizer(model_dir)
    texts = MIXED[:24]
    inp = write_input(tmp_path / "in", texts, files=1, doc_id=[f"m{i}" for i in range(len(texts))])
    report = run(
        {
            "input": {"path": str(inp), "id_column": "doc_id"},
            "model": {"path": str(model_dir), "task": "classify"},
            "tokenizer": {"max_length": 40},
            "output": {"path": str(tmp_path / "out")},
        }
    )
    assert report.rows == 24 and report.errors == 0
    rows = {r["doc_id"]: r for r in read_output(str(tmp_path / "out")).to_pylist()}
    assert len(rows) == 24

    ours = AutoModelForSequenceClassification.from_pretrained(model_dir)
    from rayformers.models import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    for i, text in enumerate(texts):
        enc = tok([text], truncation=True, max_length=40, padding="max_length")  # 40 = whole chunks
        with torch.no_grad():
            logits = ours(input_ids=torch.tensor(enc["input_ids"]), attention_mask=torch.tensor(enc["attention_mask"])).logits
        probs = torch.softmax(logits[0], -1)
        assert rows[f"m{i}"]["label"] == ours.config.id2label[int(probs.argmax())]
        assert abs(rows[f"m{i}"]["score"] - float(probs.max())) < 1e-5
