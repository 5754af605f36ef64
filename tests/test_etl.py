"""Incremental ETL end to end: real Parquet, a real tiny BERT classifier, real Ray, real crashes.

A crash is injected with ``RAYFORMERS_ETL_CRASH_AT`` (an exception no handler catches, so the
files on disk are exactly what a killed process leaves); the re-run must finish the job with
every input row exactly once in the committed output.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rayformers.jobs.etl import (
    CRASH_ENV,
    ConfigChangedError,
    EtlError,
    InjectedCrash,
    committed_run_paths,
    main,
    read_etl_output,
    run_once,
)
from rayformers.jobs.etl_state import LOCK_FILE, RunLock, load_state
from rayformers.jobs.schedule import Interval, run_loop

from model_test_utils import tiny_bert

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> Path:
    """A random 1-layer BERT with 3 labels and the real MiniLM WordPiece tokenizer."""
    return tiny_bert(
        tmp_path_factory.mktemp("tiny-bert"), hidden=16, head="BertForSequenceClassification", intermediate=32,
        num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2},
    )


def write_input(root: Path, rel: str, texts: list[str]) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts}), path)


def config(tmp_path: Path, model: Path, **sections) -> dict:
    cfg = {
        "input": {"path": str(tmp_path / "in"), "passthrough_columns": ["day"]},
        "model": {"path": str(model), "task": "classify"},
        "compute": {"batch_size": 64, "tokenizer_batch_size": 64},
        "output": {"path": str(tmp_path / "out"), "keep_text": True},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


def expected_ids(input_root: Path) -> set[str]:
    ids = set()
    for p in sorted(input_root.rglob("*.parquet")):
        rel = p.relative_to(input_root).as_posix()
        ids.update(f"{rel}:{i}" for i in range(pq.ParquetFile(p).metadata.num_rows))
    return ids


def assert_exactly_once(out: Path, input_root: Path) -> pa.Table:
    table = read_etl_output(str(out))
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicate ids in the committed output"
    assert set(ids) == expected_ids(input_root), "committed output does not hold every input row"
    assert table.column("error").null_count == table.num_rows
    return table


def snapshot(root: Path) -> dict:
    """Every file under the output with size and mtime; the lock file is the only one a run may touch."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and p.name != LOCK_FILE
    }


def test_three_incremental_runs_changed_file_and_unchanged_rerun(ray_session, tiny_classifier, tmp_path, capsys, monkeypatch):
    inp, out = tmp_path / "in", tmp_path / "out"
    cfg = config(tmp_path, tiny_classifier)
    write_input(inp, "day=1/a.parquet", [f"alpha {i}" for i in range(30)])
    write_input(inp, "day=1/b.parquet", [f"beta {i}" for i in range(25)])

    first = run_once(cfg)
    assert first.status == "published" and [r.run_id for r in first.runs] == ["run-000001"]
    assert (first.new_files, first.changed_files) == (2, 0)
    assert_exactly_once(out, inp)

    write_input(inp, "day=2/a.parquet", [f"gamma {i}" for i in range(20)])
    second = run_once(cfg)
    assert [(r.run_id, r.files, r.rows) for r in second.runs] == [("run-000002", 1, 20)]
    assert (second.new_files, second.unchanged_files) == (1, 2)
    assert_exactly_once(out, inp)

    # Third run: one new file and one rewritten file (fewer rows, new text). Its old rows must
    # leave run-000001 (a new directory run-000001-v2), the new ones arrive in run-000003.
    time.sleep(0.01)
    write_input(inp, "day=1/a.parquet", [f"alpha-v2 {i}" for i in range(12)])
    write_input(inp, "day=3/c.parquet", [f"delta {i}" for i in range(7)])
    # ...crashing once after the older run was rewritten but before the commit: readers still
    # see the old committed state (old version of a.parquet, no run-000003) until the re-run.
    monkeypatch.setenv(CRASH_ENV, "after-retract")
    with pytest.raises(InjectedCrash):
        run_once(cfg)
    monkeypatch.delenv(CRASH_ENV)
    assert (out / "run-000001-v2" / "_SUCCESS").exists() and (out / "run-000003" / "_SUCCESS").exists()
    assert [Path(p).name for p in committed_run_paths(str(out))] == ["run-000001", "run-000002"]
    assert sum(t.startswith("alpha ") for t in read_etl_output(str(out)).column("text").to_pylist()) == 30
    third = run_once(cfg)
    assert [(r.run_id, r.files, r.rows, r.recovered) for r in third.runs] == [("run-000003", 2, 19, True)]
    assert third.runs[0].retracted == {"run-000001": "run-000001-v2"}
    table = assert_exactly_once(out, inp)
    texts = table.column("text").to_pylist()
    assert sum(t.startswith("alpha-v2") for t in texts) == 12
    assert not any(t.startswith("alpha ") for t in texts)
    days = dict(zip(table.column("id").to_pylist(), table.column("day").to_pylist()))
    assert days["day=3/c.parquet:0"] == "3"  # hive partition kept through the per-run file selection
    assert [Path(p).name for p in committed_run_paths(str(out))] == ["run-000001-v2", "run-000002", "run-000003"]
    assert not (out / "run-000001").exists()  # superseded directory removed after the commit
    state = load_state(pafs.LocalFileSystem(), str(out))
    assert state.files[str(inp / "day=1/a.parquet")]["run_id"] == "run-000003"

    # Nothing new: nothing written, and the CLI says so.
    before = snapshot(out)
    capsys.readouterr()
    assert main([_yaml(tmp_path, cfg), "--once"]) == 0
    assert "nothing new" in capsys.readouterr().out
    assert snapshot(out) == before
    assert main([_yaml(tmp_path, cfg), "--status"]) == 0
    status = capsys.readouterr().out
    assert "run-000001-v2" in status and "run-000003" in status and "4 input files tracked" in status


def _yaml(tmp_path: Path, cfg: dict) -> str:
    import yaml

    path = tmp_path / "etl.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def crash(monkeypatch, point: str, cfg: dict) -> None:
    monkeypatch.setenv(CRASH_ENV, point)
    with pytest.raises(InjectedCrash):
        run_once(cfg)
    monkeypatch.delenv(CRASH_ENV)


def test_crashes_before_publish_and_before_state_advance_then_rerun(ray_session, tiny_classifier, tmp_path, monkeypatch):
    inp, out = tmp_path / "in", tmp_path / "out"
    cfg = config(tmp_path, tiny_classifier)
    fs = pafs.LocalFileSystem()

    # 1. Crash after every row is staged, before the pipeline publishes.
    write_input(inp, "day=1/a.parquet", [f"alpha {i}" for i in range(20)])
    crash(monkeypatch, "before-publish", cfg)
    state = load_state(fs, str(out))
    assert state.pending.run_id == "run-000001" and state.runs == []
    staged = list((out / ".run-000001.rayformers-staging" / "data").glob("part-*.parquet"))
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in staged) == 20
    assert not (out / "run-000001").exists()
    assert committed_run_paths(str(out)) == [] and read_etl_output(str(out)).num_rows == 0
    again = run_once(cfg)
    assert [(r.run_id, r.recovered, r.rows) for r in again.runs] == [("run-000001", True, 20)]
    assert_exactly_once(out, inp)

    # 2. Crash after the publish, before the state is advanced: readers still see only run 1.
    write_input(inp, "day=2/b.parquet", [f"beta {i}" for i in range(30)])
    crash(monkeypatch, "after-publish", cfg)
    state = load_state(fs, str(out))
    assert state.pending.run_id == "run-000002" and [r.run_id for r in state.runs] == ["run-000001"]
    assert (out / "run-000002" / "_SUCCESS").exists()
    assert [Path(p).name for p in committed_run_paths(str(out))] == ["run-000001"]
    assert read_etl_output(str(out)).num_rows == 20
    published = {p.name: p.stat().st_mtime_ns for p in (out / "run-000002").iterdir()}
    again = run_once(cfg)
    assert [(r.run_id, r.recovered, r.rows) for r in again.runs] == [("run-000002", True, 30)]
    # Adopted as published, not scored or written again.
    assert {p.name: p.stat().st_mtime_ns for p in (out / "run-000002").iterdir()} == published
    assert_exactly_once(out, inp)
    assert run_once(cfg).status == "nothing-new"


def test_config_change_refused_unless_reprocess_and_ids_unique_across_runs(ray_session, tiny_classifier, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    cfg = config(tmp_path, tiny_classifier, input={"id_column": "rid", "passthrough_columns": []})
    pq.write_table(pa.table({"rid": [1, 2, 3], "text": ["a b", "c d", "e f"]}), _mk(inp / "x.parquet"))
    run_once(cfg)

    # An id that is already committed (from another file) is refused before any work.
    pq.write_table(pa.table({"rid": [3, 4], "text": ["g", "h"]}), inp / "y.parquet")
    with pytest.raises(EtlError, match=r"already in committed run run-000001 \(e.g. 3\)"):
        run_once(cfg)
    (inp / "y.parquet").unlink()

    changed = config(tmp_path, tiny_classifier, input={"id_column": "rid", "passthrough_columns": []}, task={"top_k": 2})
    with pytest.raises(ConfigChangedError, match=r"task\.top_k.*--reprocess"):
        run_once(changed)
    assert [Path(p).name for p in committed_run_paths(str(out))] == ["run-000001"]

    rebuilt = run_once(changed, reprocess=True)  # the refused run above consumed no run number
    assert [(r.run_id, r.files, r.rows) for r in rebuilt.runs] == [("run-000002", 1, 3)]
    table = read_etl_output(str(out))
    assert sorted(table.column("rid").to_pylist()) == [1, 2, 3]
    assert all(len(k) == 2 for k in table.column("top_k_labels").to_pylist())
    assert [Path(p).name for p in committed_run_paths(str(out))] == ["run-000002"]
    assert not (out / "run-000001").exists()
    assert run_once(changed).status == "nothing-new"


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_schedule_survives_a_failed_first_run_and_never_overlaps(ray_session, tiny_classifier, tmp_path, caplog):
    inp, out = tmp_path / "in", tmp_path / "out"
    cfg = config(tmp_path, tiny_classifier)
    write_input(inp, "day=1/a.parquet", [f"alpha {i}" for i in range(10)])
    _mk(inp / "day=1/broken.parquet").write_bytes(b"not parquet at all")

    def repair(record):
        if record.number == 1:  # the operator fixes the file between the two ticks
            write_input(inp, "day=1/broken.parquet", ["fixed 0", "fixed 1"])

    caplog.set_level("INFO", logger="rayformers.etl")
    records = run_loop(lambda: run_once(cfg), Interval(1.0), max_ticks=2, on_tick=repair)
    assert [r.ok for r in records] == [False, True]
    # Refused by the pre-flight that validates a run's files before it is recorded (bad input).
    from rayformers.pipeline.preflight import PreflightError

    assert isinstance(records[0].error, PreflightError) and "broken.parquet" in str(records[0].error)
    assert "retrying at the next tick" in caplog.text
    assert records[1].result.status == "published"
    assert records[1].started >= records[0].ended  # sequential: no overlap
    assert_exactly_once(out, inp)


def test_cli_rejects_a_bad_schedule_before_doing_anything(tmp_path, capsys):
    cfg = {"input": {"path": str(tmp_path)}, "model": {"path": "x"}, "output": {"path": str(tmp_path / "out")}}
    assert main([_yaml(tmp_path, cfg), "--cron", "*/0 * * * *"]) == 2
    assert "must be a positive integer" in capsys.readouterr().err
    assert main([_yaml(tmp_path, cfg), "--every", "soon"]) == 2
    assert "expected a positive duration" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_run_in_progress_holds_off_a_second_one(tmp_path):
    """The lock is taken before anything is read: a second invocation does nothing (no Ray)."""
    out = tmp_path / "out"
    out.mkdir()
    cfg = {"input": {"path": str(tmp_path / "missing")}, "model": {"path": "x"}, "output": {"path": str(out)}}
    with RunLock(str(out / LOCK_FILE)):
        outcome = run_once(cfg)
    assert outcome.status == "locked" and "another ETL run holds" in outcome.message
    assert not (out / "_etl_state.json").exists()


@pytest.mark.parametrize("pattern", [None, "*/*.parquet"])
def test_listing_and_per_file_selection_match_the_pipelines_discovery(tmp_path, pattern):
    """The ETL lists inputs without opening them and hands the pipeline one file at a time; both
    must see the same files with the same relpaths (ids ``<relpath>:<row>``, hive columns)."""
    from rayformers.jobs.etl_state import list_input_files
    from rayformers.pipeline.source import InputError, discover_files

    root = tmp_path / "in"
    for rel in ("day=1/a.parquet", "day=1/[x]*?.parquet", "!bang/b.parquet", "day=2/c d.parquet", "_hidden/z.parquet"):
        write_input(root, rel, ["t"])
    raw = str(root / pattern) if pattern else str(root)
    fs, discovered = discover_files(raw)
    listed = list_input_files(fs, [(raw, raw)])
    assert [(f.path, f.relpath) for f in listed] == [(f.path, f.relpath) for f in discovered]
    assert len(listed) == (4 if pattern is None else 5)  # as the pipeline: globs do not skip _hidden
    for f in listed:
        _, one = discover_files(raw, only=[f.path])
        assert [(g.path, g.relpath, g.partition) for g in one] == [
            (d.path, d.relpath, d.partition) for d in discovered if d.path == f.path
        ]
    with pytest.raises(InputError, match="is not covered by input.path"):
        discover_files(raw, only=[str(tmp_path / "elsewhere.parquet")])
    with pytest.raises(InputError, match="nothing to do"):
        discover_files(raw, only=[])


def test_a_config_that_cannot_run_records_nothing_and_does_not_pin_the_root(ray_session, tiny_classifier, tmp_path, monkeypatch):
    """A run refused by pre-flight (missing model, wrong text column) leaves no pending run whose
    fingerprint would then refuse the corrected config; nor does a pending run that staged nothing."""
    from rayformers.pipeline.preflight import PreflightError

    inp, out = tmp_path / "in", tmp_path / "out"
    write_input(inp, "day=1/a.parquet", [f"alpha {i}" for i in range(6)])
    good = config(tmp_path, tiny_classifier)

    # A fresh root: nothing at all is written, not even the root or its lock.
    with pytest.raises(PreflightError, match="model.path"):
        run_once(config(tmp_path, tmp_path / "no-such-model"))
    with pytest.raises(PreflightError, match="body"):
        run_once(config(tmp_path, tiny_classifier, input={"text_column": "body"}))
    assert not out.exists()
    assert [r.run_id for r in run_once(good).runs] == ["run-000001"]

    # An existing root: a refused --reprocess records nothing either.
    write_input(inp, "day=2/b.parquet", [f"beta {i}" for i in range(4)])
    state_before = (out / "_etl_state.json").read_text()
    with pytest.raises(PreflightError, match="body"):
        run_once(config(tmp_path, tiny_classifier, input={"text_column": "body"}), reprocess=True)
    assert (out / "_etl_state.json").read_text() == state_before

    # A run planned under another config but killed before it staged a row pins nothing.
    monkeypatch.setenv(CRASH_ENV, "after-plan")
    with pytest.raises(InjectedCrash):
        run_once(config(tmp_path, tiny_classifier, tokenizer={"max_length": 16}), reprocess=True)
    monkeypatch.delenv(CRASH_ENV)
    assert load_state(pafs.LocalFileSystem(), str(out)).pending.run_id == "run-000002"
    outcome = run_once(good)
    assert [(r.run_id, r.files, r.rows) for r in outcome.runs] == [("run-000003", 1, 4)]
    assert_exactly_once(out, inp)


def test_a_folder_that_is_not_an_etl_output_is_refused_without_writing_into_it(tmp_path):
    """No lock file (nor anything else) is left behind, so the folder stays usable by others."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_input(inp, "a.parquet", ["x"])
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cfg = {"input": {"path": str(inp)}, "model": {"path": "x"}, "output": {"path": str(out)}}
    with pytest.raises(EtlError, match="not an ETL output"):
        run_once(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
