"""The pipeline against an object store: Parquet read from ``s3://``, predictions staged, published
and read back through S3, with Ray workers talking to the store themselves.

The store is a local S3 server (moto, a test-only dependency: nothing leaves the machine); the
pyarrow filesystem options travel in the job config, as they would for a real bucket. Object
stores have no directory rename, so this is the path where publishing copies file by file and
``_SUCCESS`` is what makes the output visible.
"""

from __future__ import annotations

import socket

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

from rayformers.pipeline import read_output, run

from test_pipeline_e2e import tiny_bert


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {
        "endpoint_override": f"127.0.0.1:{port}", "scheme": "http", "access_key": "test",
        "secret_key": "test", "region": "us-east-1",
    }
    fs = pafs.S3FileSystem(**options, allow_bucket_creation=True)
    fs.create_dir("bucket")
    yield fs, options
    server.stop()


def test_classify_reads_from_and_publishes_to_s3(s3, ray_session, tmp_path, minilm_path):
    from rayformers.models import AutoModelForSequenceClassification, AutoTokenizer

    fs, options = s3
    texts = [f"document {i} " + "words " * (i % 13) for i in range(40)] + [None]
    for k, chunk in enumerate((texts[:20], texts[20:])):
        pq.write_table(pa.table({"text": chunk}), f"bucket/in/day={k}/part.parquet", filesystem=fs)
    model_dir = tiny_bert(tmp_path / "clf", "BertForSequenceClassification", num_labels=2)
    config = {
        "input": {"path": "s3://bucket/in/", "passthrough_columns": ["day"], "filesystem": {"options": options}},
        "model": {"path": str(model_dir), "task": "classify"},
        "output": {"path": "s3://bucket/out", "filesystem": {"options": options}, "max_error_fraction": 0.1},
    }
    report = run(config)
    assert report.status == "succeeded" and report.rows == 41 and report.errors == 1

    table = read_output("bucket/out", filesystem=fs)
    rows = {r["id"]: r for r in table.to_pylist()}
    assert len(rows) == table.num_rows == 41  # every input row exactly once
    assert {r["day"] for r in rows.values()} == {"0", "1"}  # hive partition column from the S3 keys
    names = {info.path.rsplit("/", 1)[-1]
             for info in fs.get_file_info(pafs.FileSelector("bucket/out", recursive=True))}
    assert {"_SUCCESS", "_manifest.json"} <= names
    assert not [i for i in fs.get_file_info(pafs.FileSelector("bucket", recursive=True)) if "staging" in i.path]

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for key, text in (("day=0/part.parquet:3", texts[3]), ("day=1/part.parquet:19", texts[39])):
        enc = tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(**enc).logits[0], -1)
        assert rows[key]["label"] == model.config.id2label[int(probs.argmax())]
        assert rows[key]["score"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert rows["day=1/part.parquet:20"]["error"] == "text: text is null"

    # resume of a complete output does nothing; with a new input file it scores that file only
    # (the published objects are copied into the staging prefix server-side, then published anew)
    assert run(config, ["output.mode=resume"]).status == "already-complete"
    pq.write_table(pa.table({"text": ["a new day", "of rows"]}), "bucket/in/day=2/part.parquet", filesystem=fs)
    grown = run(config, ["output.mode=resume"])
    assert (grown.status, grown.rows, grown.rows_scored, grown.rows_resumed) == ("succeeded", 43, 2, 41)
    table = read_output("bucket/out", filesystem=fs)
    assert table.num_rows == len(set(table.column("id").to_pylist())) == 43
    assert {r["id"]: r["score"] for r in table.to_pylist() if r["id"] in rows} == {k: r["score"] for k, r in rows.items()}
    # overwrite replaces it in place (copy, not rename)
    again = run(config, ["output.mode=overwrite"])
    assert again.status == "succeeded" and again.rows_scored == 43
    assert read_output("bucket/out", filesystem=fs).num_rows == 43
    # the run's lease object was released, and no staging is left
    assert not [i for i in fs.get_file_info(pafs.FileSelector("bucket", recursive=True)) if "rayformers-lease" in i.path]


def test_one_writer_per_s3_output_through_a_lease_object(s3, ray_session, tmp_path, minilm_path):
    """A second run on an S3 output held by another driver's lease is refused at once, naming the
    holder; once that driver is gone and its lease expires, the next run takes it over."""
    from rayformers.pipeline.locks import LockBusy, ObjectLease, lock_path_for

    fs, options = s3
    pq.write_table(pa.table({"text": [f"t {i}" for i in range(10)]}), "bucket/lease-in/p.parquet", filesystem=fs)
    model_dir = tiny_bert(tmp_path / "clf", "BertForSequenceClassification", num_labels=2)
    config = {
        "input": {"path": "s3://bucket/lease-in/", "filesystem": {"options": options}},
        "model": {"path": str(model_dir), "task": "classify"},
        "output": {"path": "s3://bucket/lease-out", "filesystem": {"options": options}, "lock_ttl_s": 2},
    }
    other = ObjectLease(fs, lock_path_for("bucket/lease-out", "lease"), ttl_s=2, settle_s=0.2).acquire()
    try:
        with pytest.raises(LockBusy, match="another run holds the lease .*lease-out.rayformers-lease"):
            run(config)
    finally:
        other.abandon()  # its driver is killed: the lease is no longer renewed
    assert fs.get_file_info("bucket/lease-out").type == pafs.FileType.NotFound, "refused before writing"
    import time

    time.sleep(2.5)
    report = run(config)
    assert report.status == "succeeded" and report.rows == 10
    with pytest.raises(LockBusy):
        other.verify()
