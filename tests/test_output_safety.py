"""Never destroy or mix data that is not the job's own: overlap, ownership and one-writer rules.

The rule checks run on real directories (no Ray); the pipeline tests run real jobs on a local
Ray cluster (one per module) and check that every refused target is byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rayformers.pipeline import PreflightError, read_output, run
from rayformers.pipeline.commit import OutputError
from rayformers.pipeline.locks import FileLock, LockBusy, ObjectLease, lock_path_for
from rayformers.pipeline.output_safety import (
    UnsafeOutputError,
    check_disjoint,
    check_replaceable,
    location,
)

from model_test_utils import tiny_bert

LOCAL = pafs.LocalFileSystem()


def snapshot(root: Path) -> dict:
    """Every file under ``root`` with its bytes' hash: what 'left alone' is checked against."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- inputs and outputs never overlap ------------------------------------------------------------


def overlap(inp: str, out: str, fs: pafs.FileSystem = LOCAL) -> None:
    check_disjoint([location(fs, inp)], [("output.path", location(fs, out))])


def test_overlap_is_refused_after_resolving_links_dots_slashes_and_globs(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(data)
    for inp, out, how in [
        (data, data, "is the same path as"),
        (f"{data}/", f"{tmp_path}/x/../data", "is the same path as"),
        (data, tmp_path / "link", "is the same path as"),
        (data, data / "sub" / "out", "lies inside"),
        (data / "sub", tmp_path / "link", "contains"),
        (f"{data}/*.parquet", data / "preds", "lies inside"),  # fnmatch's * matches "/": it would read preds back
    ]:
        with pytest.raises(UnsafeOutputError, match=how):
            overlap(str(inp), str(out))
    overlap(str(data), str(tmp_path / "data2"))  # a shared name prefix is not containment
    overlap(str(data / "sub"), str(data / "subway"))


def test_overlap_on_object_stores_compares_bucket_and_prefix():
    s3 = pafs.S3FileSystem(anonymous=True, region="us-east-1")
    with pytest.raises(UnsafeOutputError, match="lies inside"):
        overlap("bucket/in/", "bucket//in/out", s3)
    with pytest.raises(UnsafeOutputError, match="contains"):
        overlap("bucket/in/2024", "bucket/in", s3)
    overlap("bucket/in", "bucket/input", s3)
    overlap("bucket/in", "other/in", s3)
    check_disjoint([location(s3, "bucket/in")], [("output.path", location(LOCAL, "/bucket/in"))])  # other filesystem


# --- overwrite only what is ours -----------------------------------------------------------------


def test_replace_refuses_foreign_files_and_names_what_it_found(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    for i in range(12):
        (mine / f"photo{i}.jpg").write_bytes(b"x" * i)
    before = snapshot(mine)
    with pytest.raises(UnsafeOutputError, match=r"12 files, not a rayformers output .*photo0.jpg"):
        check_replaceable(LOCAL, str(mine))
    assert snapshot(mine) == before
    assert check_replaceable(LOCAL, str(tmp_path / "new")) is False
    (tmp_path / "empty").mkdir()
    assert check_replaceable(LOCAL, str(tmp_path / "empty")) is False
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UnsafeOutputError, match="is a file"):
        check_replaceable(LOCAL, str(tmp_path / "afile"))

    ours = tmp_path / "ours"
    ours.mkdir()
    pq.write_table(pa.table({"id": [1]}), ours / "part-a.parquet")
    (ours / "_SUCCESS").write_text("")
    (ours / "_manifest.json").write_text(json.dumps(
        {"format": "rayformers-output/1", "config_fingerprint": "f", "output_files": [{"path": "part-a.parquet"}]}))
    assert check_replaceable(LOCAL, str(ours)) is True
    (ours / "notes.txt").write_text("mine, not the job's")
    with pytest.raises(UnsafeOutputError, match=r"a rayformers output plus 1 entries its manifest does not list \(notes.txt\)"):
        check_replaceable(LOCAL, str(ours))

    etl = tmp_path / "etl"
    etl.mkdir()
    (etl / "_etl_state.json").write_text("{}")
    with pytest.raises(UnsafeOutputError, match="incremental ETL output"):
        check_replaceable(LOCAL, str(etl))


# --- one writer per output -----------------------------------------------------------------------


def _holder(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_file_lock_refuses_a_second_writer_and_is_free_once_its_holder_is_killed(tmp_path, caplog):
    path = str(tmp_path / ".out.rayformers-lock")
    proc = _holder(
        "from rayformers.pipeline.locks import FileLock; import sys; "
        f"FileLock({path!r}).acquire(); print('held', flush=True); sys.stdin.readline()"
    )
    try:
        with pytest.raises(LockBusy, match=f"pid {proc.pid}"):
            FileLock(path).acquire()
        os.kill(proc.pid, signal.SIGKILL)  # a driver killed mid-run never releases
        proc.wait()
        lock = FileLock(path).acquire()
        assert lock.previous_holder["pid"] == proc.pid  # taken over at once, and said so
        assert "taking over the lock" in caplog.text
        lock.release()
    finally:
        proc.kill()


def test_object_lease_refuses_while_renewed_and_is_taken_over_after_expiry(tmp_path):
    """The lease protocol needs only object reads and writes; a local directory stands in for the
    bucket here (the S3 pipeline test runs it against a real S3 server)."""
    path = str(tmp_path / ".out.rayformers-lease")
    first = ObjectLease(LOCAL, path, ttl_s=0.6, settle_s=0.05).acquire()
    try:
        time.sleep(0.9)  # past one ttl: still held, because it is renewed every ttl/3
        with pytest.raises(LockBusy, match=f"pid {os.getpid()}.*expires"):
            ObjectLease(LOCAL, path, ttl_s=0.6, settle_s=0.05).acquire()
        first.abandon()  # what a killed driver leaves: a lease nobody renews
        time.sleep(0.7)
        second = ObjectLease(LOCAL, path, ttl_s=5, settle_s=0.05).acquire()
        assert second.previous_holder["owner"] == first.owner
        with pytest.raises(LockBusy, match="no longer held by this run"):
            first.verify()  # the stalled first run must never publish now
        second.verify()
        second.release()
        assert not Path(path).exists()
    finally:
        first.abandon()


# --- the rules in real jobs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("clf") / "model", hidden=16, head="BertForSequenceClassification")


def write_input(path: Path, n: int = 40) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": [f"row {i} " + "word " * (i % 7) for i in range(n)]}), path / "part0.parquet")
    return path


def job(inp, out, model, **output) -> dict:
    return {"input": {"path": str(inp)}, "model": {"path": str(model), "task": "classify"},
            "output": {"path": str(out), **output}}


def test_overwrite_of_someones_directory_is_refused_before_any_work(ray_session, tmp_path, classifier):
    inp = write_input(tmp_path / "in")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    for i in range(3):
        (theirs / f"report{i}.csv").write_text(f"{i}\n")
    before = snapshot(theirs)
    with pytest.raises(OutputError, match=r"3 files, not a rayformers output"):
        run(job(inp, theirs, classifier, mode="overwrite"))
    assert snapshot(theirs) == before
    assert not (tmp_path / ".theirs.rayformers-staging").exists()


@pytest.mark.parametrize("mode", ["error-if-exists", "overwrite", "resume"])
def test_outputs_overlapping_the_input_are_refused_in_every_mode(ray_session, tmp_path, classifier, mode):
    inp = write_input(tmp_path / "data" / "in")
    (tmp_path / "alias").symlink_to(tmp_path / "data" / "in")
    before = snapshot(tmp_path / "data")
    for out, how in [
        (inp, "is the same path as"),
        (tmp_path / "alias", "is the same path as"),
        (tmp_path / "data", "contains"),
        (inp / "preds", "lies inside"),
    ]:
        with pytest.raises(PreflightError, match=how):
            run(job(inp, out, classifier, mode=mode))
    assert snapshot(tmp_path / "data") == before


def test_a_second_run_on_the_same_output_is_refused_before_it_scores_anything(ray_session, tmp_path, classifier):
    inp = write_input(tmp_path / "in")
    out = tmp_path / "out"
    other = tiny_bert(tmp_path / "other", hidden=16, head="BertForSequenceClassification", num_labels=3)
    first_staged = threading.Event()
    release = threading.Event()
    outcome: dict = {}

    def hold_at_publish(report):
        first_staged.set()
        release.wait(120)

    def first():
        outcome["first"] = run(job(inp, out, classifier), before_publish=hold_at_publish)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert first_staged.wait(240), "the first run never reached its publish"
        staged = snapshot(tmp_path / ".out.rayformers-staging")
        t0 = time.perf_counter()
        with pytest.raises(LockBusy, match=f"pid {os.getpid()}"):
            run(job(inp, out, other, mode="overwrite"))
        assert time.perf_counter() - t0 < 30, "refused at once, not after scoring"
        assert snapshot(tmp_path / ".out.rayformers-staging") == staged, "the second run touched nothing"
    finally:
        release.set()
        thread.join(240)
    assert outcome["first"].status == "succeeded"
    ids = read_output(str(out)).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 40


def test_a_killed_drivers_lock_is_taken_over_by_the_next_run(ray_session, tmp_path, classifier):
    inp = write_input(tmp_path / "in")
    out = tmp_path / "out"
    proc = _holder(
        "import os, signal, pyarrow.fs as pafs; from rayformers.pipeline.locks import output_lock; "
        f"output_lock(pafs.LocalFileSystem(), {str(out)!r}).acquire(); print('held', flush=True); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc.wait()
    assert Path(lock_path_for(str(out), "lock")).exists()
    report = run(job(inp, out, classifier))
    assert report.status == "succeeded" and report.rows == 40


# --- training runs and ETL roots follow the same rules --------------------------------------------


def test_training_run_directory_must_not_overlap_its_data_and_has_one_trainer(ray_session, tmp_path, classifier):
    from rayformers.jobs.train import train
    from rayformers.jobs.train_config import ConfigError

    from test_train_helpers import classify_config

    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"text": ["good", "bad"] * 8, "label": ["pos", "neg"] * 8}), data / "t.parquet")
    before = snapshot(data)
    with pytest.raises(ConfigError, match="run directory .* lies inside the input"):
        train(classify_config(str(classifier), str(data), str(data), "run"), verbose=False)
    with pytest.raises(ConfigError, match="run directory .* lies inside the input"):
        train(classify_config(str(classifier), str(tmp_path / "x" / "*.parquet"), str(tmp_path / "x"), "r"), verbose=False)
    assert snapshot(data) == before

    run_dir = tmp_path / "runs" / "sentiment"
    holder = FileLock(lock_path_for(str(run_dir), "lock")).acquire()
    try:
        with pytest.raises(LockBusy, match="another training run holds"):
            train(classify_config(str(classifier), str(data), str(tmp_path / "runs"), "sentiment"), verbose=False)
    finally:
        holder.release()
    assert not run_dir.exists(), "refused before Ray Train wrote anything"


def test_etl_root_must_not_overlap_its_input(tmp_path, classifier):
    from rayformers.jobs.etl import run_once
    from rayformers.pipeline.config import ConfigError

    inp = write_input(tmp_path / "landing")
    before = snapshot(inp)
    for root in (inp, tmp_path, inp / "scored"):
        with pytest.raises(ConfigError, match="the ETL root"):
            run_once(job(inp, root, classifier))
    assert snapshot(inp) == before
