"""``resume`` and the read against an input that changes: no silent wrong answer, no poisoned state.

A published output whose input gained files scores only the new ones; a changed or vanished file
is refused naming it and what changed (a same-size rewrite with its mtime kept included); the
error budget's advice is followed to a published output; id and text columns whose types differ
across files (integer widths, dictionary-encoded strings, large_string) are read as one type or
refused naming the files; an existing output is refused before Ray starts, by ``run`` and
``plan`` alike. Real Parquet, a tiny real classifier, one Ray session for the module.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rayformers.pipeline import PreflightError, cli, read_output, run
from rayformers.pipeline.commit import OutputError, collect_staged, prepare_output, publish, staging_path, write_part
from rayformers.pipeline.config import load_config
from rayformers.pipeline.preflight import check_unique_ids, preflight
from rayformers.pipeline.source import ROW_COLUMN, UNIT_COLUMN, discover_files, row_group_key, row_groups_of

from model_test_utils import tiny_bert


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("clf") / "model", hidden=16, head="BertForSequenceClassification",
                     num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2})


def texts(n: int, word: str = "great", start: int = 0) -> list[str]:
    """Rows of one length per ``word`` length: swapping a word for another of its length rewrites
    a file with the same byte size (uncompressed)."""
    return [f"review {i:05d}: a {word} product" for i in range(start, start + n)]


def write(path: Path, rows: list, row_group_size: int = 16, **columns) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": rows, **columns}), path, row_group_size=row_group_size, compression="none")
    return path


def rewrite_keeping_size_and_mtime(path: Path, rows: list) -> None:
    """What ``cp -p`` / ``rsync -t`` leave after an in-place edit: same byte size, same mtime."""
    st = path.stat()
    write(path, rows)
    assert path.stat().st_size == st.st_size, "test precondition: the rewrite keeps the byte size"
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns


def job_yaml(tmp_path: Path, inp: Path, out: Path, model: Path, name: str = "job.yaml", **extra) -> Path:
    sections = {"input": {"path": str(inp)}, "model": {"path": str(model), "task": "classify"},
                "output": {"path": str(out)}}
    for key, value in extra.items():
        sections[key].update(value)
    cfg = tmp_path / name
    cfg.write_text(json.dumps(sections))  # JSON is YAML
    return cfg


def error_line(stderr: str, command: str) -> str:
    """The CLI's own error line (stderr may also hold log lines of the Ray session)."""
    lines = [line for line in stderr.splitlines() if line.startswith(f"rayformers {command}: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def predictions(out: Path) -> dict:
    return {r["id"]: (r["label"], r["score"]) for r in read_output(str(out)).to_pylist()}


# --- identity of an input file: size, mtime and the footer's digest -------------------------------


def test_a_same_size_rewrite_with_its_mtime_kept_is_another_version(tmp_path):
    f = write(tmp_path / "in" / "a.parquet", texts(40))
    _, before = discover_files(str(tmp_path / "in"))
    _, again = discover_files(str(tmp_path / "in"))
    assert row_group_key(again[0], 0) == row_group_key(before[0], 0), "an untouched file keeps its identity"
    rewrite_keeping_size_and_mtime(f, texts(40, "GREAT"))
    _, after = discover_files(str(tmp_path / "in"))
    assert (after[0].size, after[0].mtime_ns) == (before[0].size, before[0].mtime_ns)
    assert row_group_key(after[0], 0) != row_group_key(before[0], 0)
    assert after[0].footer_sha1 != before[0].footer_sha1


# --- a published output: new files scored, changed / vanished files refused ------------------------


def test_resume_stages_a_published_output_again_for_new_files_only_with_its_own_config(tmp_path):
    """The commit side alone (no Ray): what ``resume`` stages when the input gained a file."""
    fs = pafs.LocalFileSystem()
    inp = tmp_path / "in"
    write(inp / "a.parquet", texts(3))
    _, files = discover_files(str(inp))
    key = row_group_key(files[0], 0)
    out = str(tmp_path / "out")
    st = prepare_output(fs, out, "error-if-exists", "fp", {})
    write_part(fs, st.data_dir, pa.table({"id": ["a:0", "a:1", "a:2"], "error": pa.array([None] * 3, pa.string()),
                                          UNIT_COLUMN: [key] * 3, ROW_COLUMN: [0, 1, 2]}), "snappy")
    publish(st, {"config_fingerprint": "fp", "input_files": [f.version() for f in files]},
            collect_staged(fs, st.data_dir, {key: 3}).files)
    assert prepare_output(fs, out, "resume", "fp", {}, {key: 3}, files).already_complete

    write(inp / "b.parquet", texts(2, start=3))
    _, grown = discover_files(str(inp))
    units = {g.key: g.num_rows for g in row_groups_of(grown)}
    # An interrupted overwrite of another configuration is staged: its rows must not be mixed in.
    prepare_output(fs, out, "overwrite", "other", {})
    with pytest.raises(OutputError, match="staged run .* used a different configuration"):
        prepare_output(fs, out, "resume", "fp", {}, units, grown)
    shutil.rmtree(staging_path(out))

    for attempt in range(2):  # the second as after a crash right after staging: the same state
        st = prepare_output(fs, out, "resume", "fp", {}, units, grown)
        assert (st.already_complete, st.new_input_files, st.resumed_rows) == (False, 1, 3)
        assert st.done == {key: [(0, 3)]}
        [published] = Path(out).glob("part-*.parquet")
        [staged] = Path(st.data_dir).glob("part-*.parquet")
        assert staged.name == published.name and staged.stat().st_ino == published.stat().st_ino  # a hard link


def test_resume_of_a_published_output_scores_new_files_and_refuses_changed_or_vanished_ones(
        ray_session, tmp_path, classifier, capsys):
    inp = tmp_path / "in"
    a = write(inp / "a.parquet", texts(30))
    write(inp / "b.parquet", texts(30, start=30))
    out = tmp_path / "out"
    cfg = job_yaml(tmp_path, inp, out, classifier)
    assert run(cfg).rows == 60
    published = predictions(out)

    # A scheduled job that always passes output.mode=resume: the new file is scored, nothing else.
    write(inp / "c.parquet", texts(20, start=60))
    report = run(cfg, ["output.mode=resume"])
    assert report.status == "succeeded"
    assert (report.rows, report.rows_scored, report.rows_resumed) == (80, 20, 60)
    assert "1 input files added" in report.message
    now = predictions(out)
    assert len(now) == 80 and {k: now[k] for k in published} == published
    assert {f"c.parquet:{i}" for i in range(20)} <= set(now)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["input_rows"] == manifest["output_rows"] == 80
    assert sorted(Path(f["path"]).name for f in manifest["input_files"]) == ["a.parquet", "b.parquet", "c.parquet"]
    assert not (tmp_path / ".out.rayformers-staging").exists()
    assert run(cfg, ["output.mode=resume"]).status == "already-complete"

    # 1,000 rows appended to a scored file (a rewrite): refused naming the file and what changed.
    original = a.read_bytes()
    mtime = a.stat().st_mtime_ns
    write(a, texts(1030))
    output_files = sorted(p.name for p in out.iterdir())
    assert cli.main(["run", str(cfg), "--set", "output.mode=resume"]) == cli.EXIT_BAD_CONFIG
    err = capsys.readouterr().err
    assert f"input file {a} changed since" in err and "rows 30 -> 1,030" in err and "output.mode=overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == output_files and predictions(out) == now

    # The same file rewritten in place with its size and mtime kept (cp -p, rsync -t).
    a.write_bytes(original)
    os.utime(a, ns=(mtime, mtime))
    assert run(cfg, ["output.mode=resume"]).status == "already-complete", "restored: the same version again"
    rewrite_keeping_size_and_mtime(a, texts(30, "GREAT"))
    with pytest.raises(OutputError, match=r"a.parquet changed since .*\(same size and modification time but a "
                                          r"different Parquet footer"):
        run(cfg, ["output.mode=resume"])

    # A scored file that is gone: its rows cannot be taken out by resume.
    a.write_bytes(original)
    os.utime(a, ns=(mtime, mtime))
    (inp / "c.parquet").unlink()
    with pytest.raises(OutputError, match=r"c.parquet, scored in .* is no longer in input.path"):
        run(cfg, ["output.mode=resume"])
    assert predictions(out) == now


# --- an unfinished output: the error budget's advice, followed ---------------------------------------


def test_error_budget_advice_works_and_staged_rows_of_a_rewritten_file_are_refused(
        ray_session, tmp_path, classifier, capsys):
    inp = tmp_path / "in"
    a = write(inp / "a.parquet", texts(24))
    b = write(inp / "b.parquet", texts(20, start=24) + [None, "", "   "])
    out = tmp_path / "out"
    cfg = job_yaml(tmp_path, inp, out, classifier)
    assert cli.main(["run", str(cfg)]) == cli.EXIT_ERROR_BUDGET
    err = capsys.readouterr().err
    assert "3 of 47 rows" in err
    assert "raise output.max_error_fraction and re-run with output.mode=resume" in err
    assert "correct the files and re-run with output.mode=overwrite" in err

    # A staged file's input rewritten with the same size and mtime: resuming would publish the old
    # version's predictions under the new version's ids.
    original, mtime = a.read_bytes(), a.stat().st_mtime_ns
    rewrite_keeping_size_and_mtime(a, texts(24, "GREAT"))
    with pytest.raises(OutputError, match=r"holds rows of input file .*a.parquet, which changed since they were "
                                          r"staged \(same size and modification time but a different Parquet footer"):
        run(cfg, ["output.mode=resume", "output.max_error_fraction=1"])
    a.write_bytes(original)
    os.utime(a, ns=(mtime, mtime))

    # Follow the advice: fix the input; resume refuses the fixed file (as the advice says)...
    write(b, texts(20, start=24) + ["fixed one", "fixed two", "fixed three"])
    assert cli.main(["run", str(cfg), "--set", "output.mode=resume"]) == cli.EXIT_BAD_CONFIG
    err = capsys.readouterr().err
    assert f"holds rows of input file {b}, which changed since they were staged" in err
    assert "output.mode=overwrite" in err
    # ... and overwrite publishes the fixed input.
    assert cli.main(["run", str(cfg), "--set", "output.mode=overwrite"]) == cli.EXIT_OK
    table = read_output(str(out))
    assert table.num_rows == 47 and table.column("error").null_count == 47


# --- column types across files ---------------------------------------------------------------------


def test_integer_ids_of_different_widths_are_one_type_and_a_string_id_is_refused(ray_session, tmp_path, classifier,
                                                                                   capsys):
    inp = tmp_path / "in"
    write(inp / "a.parquet", texts(20), id=pa.array(range(20), pa.int64()))
    write(inp / "b.parquet", texts(20, start=20), id=pa.array(range(20, 40), pa.int32()))
    fs, files = discover_files(str(inp))
    # The driver-side duplicate check on int32 + int64 (a duplicate across the two files).
    write(tmp_path / "dup" / "a.parquet", texts(2), id=pa.array([1, 2], pa.int64()))
    write(tmp_path / "dup" / "b.parquet", texts(2), id=pa.array([2, 3], pa.int32()))
    dup_cfg = job_yaml(tmp_path, tmp_path / "dup", tmp_path / "o", classifier, "dup.yaml", input={"id_column": "id"})
    with pytest.raises(PreflightError, match=r"1 ids occur more than once \(e.g. 2\)"):
        preflight(load_config(dup_cfg))

    # End to end, with the distributed duplicate check (over input.unique_ids_driver_rows).
    out = tmp_path / "out"
    cfg = job_yaml(tmp_path, inp, out, classifier, input={"id_column": "id", "unique_ids_driver_rows": 1})
    report = run(cfg)
    assert report.status == "succeeded" and report.rows == 40 and report.errors == 0
    table = read_output(str(out))
    assert table.schema.field("id").type == pa.int64()
    assert sorted(table.column("id").to_pylist()) == list(range(40))

    # int64 in one file, string in another: refused before any work, naming the files and types.
    write(inp / "c.parquet", texts(5, start=40), id=[f"x{i}" for i in range(5)])
    assert cli.main(["run", str(cfg), "--set", "output.mode=overwrite"]) == cli.EXIT_BAD_CONFIG
    err = error_line(capsys.readouterr().err, "run")
    assert err.startswith("rayformers run: error: input.id_column: column 'id' has different types across the input")
    assert f"int64 in {inp / 'a.parquet'}" in err and f"string in {inp / 'c.parquet'}" in err
    assert f"int32 in {inp / 'b.parquet'}" in err and "cast it to string" in err


def test_dictionary_encoded_and_large_string_columns_are_read_as_text(ray_session, tmp_path, classifier):
    """What pandas categoricals and Spark leave: dictionary<string> text, id and passthrough."""
    rows = texts(16) + ["a repeated category"] * 8
    ids = [f"r{i}" for i in range(len(rows))]
    inp = tmp_path / "in"
    write(inp / "plain.parquet", rows, id=[f"p-{i}" for i in ids], source=["plain"] * len(rows))
    write(inp / "dict.parquet", pa.array(rows).dictionary_encode(), id=pa.array([f"d-{i}" for i in ids]).dictionary_encode(),
          source=pa.array(["dict"] * len(rows)).dictionary_encode())
    write(inp / "large.parquet", pa.array(rows, pa.large_string()), id=pa.array([f"l-{i}" for i in ids], pa.large_string()),
          source=pa.array(["large"] * len(rows), pa.large_string()))
    assert pa.types.is_dictionary(pq.read_schema(inp / "dict.parquet").field("text").type)
    out = tmp_path / "out"
    cfg = job_yaml(tmp_path, inp, out, classifier, input={"id_column": "id", "passthrough_columns": ["source"]})
    # The driver-side duplicate check sees one id type too (a duplicate across dictionary / string).
    write(tmp_path / "dup" / "a.parquet", texts(2), id=["k1", "k2"])
    write(tmp_path / "dup" / "b.parquet", texts(2), id=pa.array(["k2", "k3"]).dictionary_encode())
    with pytest.raises(PreflightError, match=r"1 ids occur more than once \(e.g. 'k2'\)"):
        check_unique_ids(pafs.LocalFileSystem(), preflight(load_config(
            job_yaml(tmp_path, tmp_path / "dup", tmp_path / "o", classifier, "dup.yaml",
                     input={"id_column": "id", "check_unique_ids": False}))).files, "id")

    report = run(cfg)
    assert report.status == "succeeded" and report.rows == 72 and report.errors == 0
    table = read_output(str(out))
    for name in ("id", "source"):
        t = table.schema.field(name).type
        assert pa.types.is_string(t) or pa.types.is_large_string(t), (name, t)
    by_id = {r["id"]: r for r in table.to_pylist()}
    for i in ids:
        plain, dic, large = by_id[f"p-{i}"], by_id[f"d-{i}"], by_id[f"l-{i}"]
        assert (plain["source"], dic["source"], large["source"]) == ("plain", "dict", "large")
        assert plain["label"] == dic["label"] == large["label"]
        assert plain["score"] == pytest.approx(dic["score"], abs=1e-6) == pytest.approx(large["score"], abs=1e-6)
        assert plain["num_tokens"] == dic["num_tokens"] == large["num_tokens"]


# --- output.mode refusals come before Ray, in run and plan -------------------------------------------


def test_an_existing_output_is_refused_by_preflight_run_and_plan_before_ray(tmp_path, classifier, capsys):
    import ray

    ray_was_up = ray.is_initialized()
    inp = tmp_path / "in"
    write(inp / "a.parquet", texts(10))
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.csv").write_text("someone's\n")
    cfg = job_yaml(tmp_path, inp, out, classifier)
    with pytest.raises(OutputError, match="already exists"):
        preflight(load_config(cfg))
    for command in ("run", "plan"):
        assert cli.main([command, str(cfg)]) == cli.EXIT_BAD_CONFIG
        err = capsys.readouterr().err
        assert f"rayformers {command}: error: output.path {out} already exists" in err
    # overwrite refuses a directory that is not ours, before Ray too
    with pytest.raises(OutputError, match="not a rayformers output"):
        preflight(load_config(cfg, ["output.mode=overwrite"]))
    assert cli.main(["plan", str(cfg), "--set", "output.mode=overwrite"]) == cli.EXIT_BAD_CONFIG
    if not ray_was_up:
        assert not ray.is_initialized(), "refused without starting Ray"
    assert (out / "report.csv").read_text() == "someone's\n"
    shutil.rmtree(out)
