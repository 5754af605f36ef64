"""Failures of the environment end in one clear message and leave nothing poisoned behind.

The bad environments are real: a read-only filesystem and a full disk are tmpfs mounts made by
the test (skipped, saying why, where mounting is not permitted; a chmod would not stop root), a
publish killed half-way is a ``LocalFileSystem`` whose ``delete_dir`` dies like a killed process
at the chosen step, and an unreachable Hub is a closed port on localhost.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rayformers.pipeline import cli, read_output, run
from rayformers.pipeline.commit import (
    collect_staged,
    prepare_output,
    publish,
    read_manifest,
    staging_path,
)
from rayformers.pipeline.config import load_config

from model_test_utils import tiny_bert

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("clf") / "model", hidden=16, head="BertForSequenceClassification")


def write_input(path: Path, texts: list) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), path / "part0.parquet")
    return path


def job(inp, out, model, **output) -> dict:
    return {"input": {"path": str(inp)}, "model": {"path": str(model), "task": "classify"},
            "output": {"path": str(out), **output}}


def yaml_file(tmp_path: Path, cfg: dict) -> str:
    import yaml

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _mount(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(name, size, read_only)``: a real, separately mounted filesystem under tmp_path."""
    mounted = []

    def make(name: str, size: str = "1m", read_only: bool = False) -> Path:
        where = tmp_path / name
        where.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        try:
            res = _mount(["-t", "tmpfs", "-o", opts, "tmpfs", str(where)])
        except FileNotFoundError:
            pytest.skip("no mount command on this machine: a read-only / full filesystem cannot be made")
        if res.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here ({res.stderr.strip()}); chmod would not stop root")
        mounted.append(where)
        return where

    yield make
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


# --- 9 and 13: a read-only output location; --json always prints the report --------------------


def test_a_read_only_output_location_is_one_clear_error_and_json_says_so(ray_session, tmp_path, tmpfs, classifier, capsys):
    inp = write_input(tmp_path / "in", ["a b", "c d"])
    ro = tmpfs("ro", read_only=True)
    cfg = yaml_file(tmp_path, job(inp, ro / "out", classifier))

    code = cli.main(["run", cfg, "--json"])
    captured = capsys.readouterr()
    assert code == cli.EXIT_BAD_CONFIG
    assert "Traceback" not in captured.err
    assert str(ro) in captured.err and "not writable" in captured.err and "output.path" in captured.err
    report = json.loads(captured.out)
    assert report["status"] == "refused" and report["exit_code"] == 2 and str(ro) in report["reason"]

    from rayformers.jobs import etl

    etl_cfg = yaml_file(tmp_path, job(inp, ro / "etl-root", classifier))
    root_handlers = list(logging.getLogger().handlers)
    try:
        assert etl.main([etl_cfg, "--once"]) == 2
    finally:  # its logging.basicConfig handler writes to this test's captured stderr
        logging.getLogger().handlers = root_handlers
    err = capsys.readouterr().err
    assert "Traceback" not in err and "not writable" in err and str(ro) in err


def test_a_read_only_output_is_refused_before_a_cluster_starts(tmp_path, tmpfs, classifier):
    """The command line in a fresh process, no cluster running: refused before ``ray.init``."""
    inp = write_input(tmp_path / "in", ["a b"])
    ro = tmpfs("ro", read_only=True)
    cfg = yaml_file(tmp_path, job(inp, ro / "nested" / "out", classifier))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run([sys.executable, "-m", "rayformers.pipeline.cli", "run", cfg, "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == cli.EXIT_BAD_CONFIG, res.stderr
    assert "Ray instance" not in res.stderr and "Traceback" not in res.stderr
    assert "Read-only file system" in res.stderr and str(ro / "nested" / ".out.rayformers-lock") in res.stderr
    assert json.loads(res.stdout)["status"] == "refused"


def test_json_report_on_stdout_for_an_error_budget_failure(ray_session, tmp_path, classifier, capsys):
    inp = write_input(tmp_path / "in", ["a b", None, "c d"])
    cfg = yaml_file(tmp_path, job(inp, tmp_path / "out", classifier))
    code = cli.main(["run", cfg, "--json"])
    captured = capsys.readouterr()
    assert code == cli.EXIT_ERROR_BUDGET
    report = json.loads(captured.out)
    assert report["status"] == "error-budget-exceeded" and report["exit_code"] == 3
    assert report["errors"] == 1 and report["rows"] == 3 and "max_error_fraction" in report["reason"]


# --- 7: leftovers of a publish killed half-way ----------------------------------------------------


class Killed(BaseException):
    """What a killed process does: nothing after this point runs (no ``except Exception`` either)."""


class KilledAt(pafs.LocalFileSystem):
    """A local filesystem whose process dies when ``method`` is called on a path ``when`` accepts."""

    def __init__(self, method: str, when):
        super().__init__()
        self.method, self.when = method, when

    def _die(self, method: str, path: str) -> None:
        if method == self.method and self.when(path):
            raise Killed(f"{method} {path}")

    def delete_dir(self, path):
        self._die("delete_dir", path)
        return super().delete_dir(path)

    def move(self, src, dest):
        self._die("move", src)
        return super().move(src, dest)


def _republish_killed(out: Path, cfg: dict, fs: KilledAt) -> None:
    """Publish ``out``'s own rows again (as an overwrite would) on ``fs``, which dies half-way."""
    fingerprint = load_config(cfg).fingerprint()
    state = prepare_output(fs, str(out), "overwrite", fingerprint, {"config": cfg})
    for part in out.glob("part-*.parquet"):
        fs.copy_file(str(part), f"{state.data_dir}/{part.name}")
    counts = collect_staged(fs, state.data_dir)
    manifest = {k: v for k, v in read_manifest(fs, str(out)).items() if k != "output_files"}
    with pytest.raises(Killed):
        publish(state, manifest, counts.files)


def test_leftovers_of_a_publish_killed_half_way_are_removed_by_the_next_run_but_not_a_users_files(
    ray_session, tmp_path, classifier
):
    inp = write_input(tmp_path / "in", [f"row {i}" for i in range(12)])
    out = tmp_path / "out"
    cfg = job(inp, out, classifier, mode="overwrite")
    assert run(cfg).status == "succeeded"
    staging = Path(staging_path(str(out)))
    users = tmp_path / ".out.rayformers-staging-old-0badc0de"  # named like ours, but not ours
    users.mkdir()
    (users / "notes.txt").write_text("mine")

    def leftovers() -> list[str]:
        return sorted(p.name for p in tmp_path.glob(".out.rayformers-staging*") if p != users)

    # Killed after _SUCCESS, before the previous output (moved aside) was deleted.
    _republish_killed(out, cfg, KilledAt("delete_dir", lambda p: "-old-" in p))
    old = [n for n in leftovers() if "-old-" in n]
    assert len(old) == 1 and (tmp_path / old[0] / "_manifest.json").exists()
    assert sorted(p.name for p in staging.iterdir()) == ["job.json"]
    report = run(cfg, ["output.mode=resume"])
    assert report.status == "already-complete"
    assert leftovers() == []
    assert (users / "notes.txt").read_text() == "mine"
    assert read_output(str(out)).num_rows == 12

    # Killed after the previous output was moved aside, before the new one was moved in: the
    # resume publishes the staged rows and removes the previous output.
    _republish_killed(out, cfg, KilledAt("move", lambda p: p.endswith("/data")))
    assert not out.exists() and len([n for n in leftovers() if "-old-" in n]) == 1
    report = run(cfg, ["output.mode=resume"])
    assert report.status == "succeeded" and report.rows_scored == 0 and report.rows_resumed == 12
    assert leftovers() == []
    assert (users / "notes.txt").read_text() == "mine"
    assert read_output(str(out)).num_rows == 12


# --- 10: disk full while staging ------------------------------------------------------------------


def test_disk_full_while_staging_is_one_message_and_resume_continues(ray_session, tmp_path, tmpfs, classifier):
    import random

    rng = random.Random(0)
    texts = ["".join(rng.choice("abcdefghij klmnop") for _ in range(120)) for _ in range(3000)]
    inp = write_input(tmp_path / "in", texts)
    small = tmpfs("small", size="160k")
    out = small / "out"
    cfg = job(inp, out, classifier, keep_text=True, stage_rows=400)
    cfg["compute"] = {"batch_size": 400}
    path = yaml_file(tmp_path, cfg)

    # The command line in its own process (joining this cluster), so that its stderr is exactly
    # what a user sees, Ray Data's log records included.
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    res = subprocess.run([sys.executable, "-m", "rayformers.pipeline.cli", "run", path, "--json"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == cli.EXIT_INCOMPLETE, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "Ray Data or Ray Core internal code" not in res.stderr
    assert "No space left on device" not in res.stderr  # the OS's words appear only in Ray's traces
    report = json.loads(res.stdout)
    assert report["status"] == "incomplete" and report["exit_code"] == cli.EXIT_INCOMPLETE
    reason = report["reason"]
    assert reason.startswith(f"no space left on the device holding {small}/.out.rayformers-staging")
    assert "--set output.mode=resume" in reason
    staged = int(reason.split(" of 3000 input rows are staged there and kept")[0].rsplit(" ", 1)[1])
    assert 0 < staged < 3000
    data = small / ".out.rayformers-staging" / "data"
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in data.glob("part-*.parquet")) == staged

    # Space freed: the resume scores only the rest, and every row is there exactly once.
    res = _mount(["-o", "remount,size=16m", str(small)])
    assert res.returncode == 0, res.stderr
    report = run(path, ["output.mode=resume"])
    assert report.status == "succeeded" and report.rows_resumed == staged and report.rows_scored == 3000 - staged
    ids = read_output(str(out)).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 3000


# --- 11: a model path that is neither a local directory nor on a reachable Hub ---------------------

_RESOLVE = """
import sys, time
from rayformers.pipeline.config import load_config
from rayformers.pipeline.preflight import resolve_model
cfg = load_config({"input": {"path": "in"}, "model": {"path": sys.argv[1], "task": "classify"},
                   "output": {"path": "out"}})
t0 = time.perf_counter()
try:
    print("loaded", type(resolve_model(cfg)).__name__)
except Exception as e:
    print(f"{type(e).__name__}: {e}")
print(f"elapsed {time.perf_counter() - t0:.2f}")
"""


def _resolve_in_fresh_process(model_path: str, hf_home: Path, **env) -> tuple[str, float]:
    """Pre-flight's model check in a new interpreter: huggingface_hub reads HF_* at import."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full.update(HF_HOME=str(hf_home), **env)
    res = subprocess.run([sys.executable, "-c", _RESOLVE, model_path], capture_output=True, text=True, env=full, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    return lines[-2], float(lines[-1].split()[1])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_hub_id_that_cannot_be_reached_fails_fast_and_says_why(tmp_path):
    port = _closed_port()
    message, elapsed = _resolve_in_fresh_process(
        "someorg/no-such-model", tmp_path / "hf", HF_ENDPOINT=f"http://127.0.0.1:{port}"
    )
    assert message.startswith("PreflightError: model.path 'someorg/no-such-model'")
    assert "is not a local directory" in message and f"127.0.0.1:{port} could not be reached" in message
    assert "HF_HUB_OFFLINE" in message and "HF_HOME" in message and str(tmp_path / "hf") in message
    assert "downloads are disabled" not in message  # they were not
    assert elapsed < 10, f"took {elapsed:.1f}s: retried instead of failing fast"


def test_a_hub_id_offline_is_looked_up_in_the_cache_only(tmp_path, classifier):
    from conftest import fill_hub_cache

    message, elapsed = _resolve_in_fresh_process("someorg/no-such-model", tmp_path / "hf", HF_HUB_OFFLINE="1")
    assert message.startswith("PreflightError: model.path 'someorg/no-such-model'")
    assert "is not a local directory" in message and "downloads are disabled (HF_HUB_OFFLINE=1" in message
    assert str(tmp_path / "hf") in message and elapsed < 10

    fill_hub_cache(tmp_path / "hf" / "hub", "someorg/tiny-classifier", classifier)
    message, _ = _resolve_in_fresh_process("someorg/tiny-classifier", tmp_path / "hf", HF_HUB_OFFLINE="1")
    assert message == "loaded BertConfig"
