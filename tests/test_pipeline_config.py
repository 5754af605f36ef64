"""Config loading, overrides and strict validation; CLI dispatch; the commit protocol on real files."""

from __future__ import annotations

import json
import sys
import types

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rayformers.pipeline import cli
from rayformers.pipeline.commit import (
    SUCCESS,
    IncompleteOutputError,
    OutputError,
    collect_staged,
    part_name,
    prepare_output,
    publish,
    staging_path,
    write_part,
)
from rayformers.pipeline.config import (
    ComputeConfig,
    ConfigError,
    InputConfig,
    JobConfig,
    ModelConfig,
    TokenizerConfig,
    describe,
    load_config,
    parse_overrides,
)
from rayformers.pipeline.preflight import PreflightError, check_cluster_cpus
from rayformers.pipeline.source import discover_files, plan_units, read_unit


def write_yaml(tmp_path, text: str):
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


def test_yaml_with_overrides_builds_typed_config(tmp_path):
    p = write_yaml(
        tmp_path,
        "input: {path: data/, text_column: body, passthrough_columns: [lang]}\n"
        "model: {path: m, task: embed}\n"
        "compute: {batch_size: 64}\n",
    )
    cfg = load_config(p, ["model.dtype=bfloat16", "compute.max_tokens_per_batch=4096", "task.generation.num_beams=4"])
    assert isinstance(cfg.input, InputConfig) and cfg.input.text_column == "body"
    assert cfg.input.passthrough_columns == ["lang"]
    assert cfg.model.dtype == "bfloat16" and cfg.compute.batch_size == 64
    assert cfg.compute.max_tokens_per_batch == 4096 and cfg.task.generation.num_beams == 4
    assert cfg.task.generation.generate_kwargs() == {"num_beams": 4}
    assert cfg.compute.model_num_cpus == 0.5  # fractional by default


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["model.pth=x"], "unknown config key(s): model.pth"),
        (["modle.path=x"], "unknown config key(s): modle"),
        (["model.task=summarize"], "'model.task': 'summarize' is not one of"),
        (["compute.batch_size=many"], "'compute.batch_size': expected an integer"),
        (["output.mode=append"], "'output.mode'"),
        (["model.dtype"], "--set expects key.sub=value"),
    ],
)
def test_bad_keys_and_values_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config({}, overrides)
    assert needle in str(e.value)


def test_shared_sections_are_importable_dataclasses_with_docs():
    for cls in (InputConfig, ModelConfig, TokenizerConfig, ComputeConfig):
        assert cls.__dataclass_fields__
    lines = describe(JobConfig)
    assert any(line.startswith("compute.model_num_cpus = 0.5  # CPUs reserved") for line in lines)
    assert all("#" in line and line.split("# ", 1)[1] for line in lines), "every field documented"


def test_fingerprint_ignores_compute_but_not_model():
    a = load_config({"model": {"path": "m"}})
    assert a.fingerprint() == load_config({"model": {"path": "m"}, "compute": {"batch_size": 8}}).fingerprint()
    assert a.fingerprint() != load_config({"model": {"path": "m", "dtype": "bfloat16"}}).fingerprint()


def test_parse_overrides_types():
    assert parse_overrides(["a.b=3", "a.c=true", "d=[x, y]", "e=null"]) == {"a": {"b": 3, "c": True}, "d": ["x", "y"], "e": None}


def test_cpu_budget_refuses_plans_that_would_starve_reads():
    check_cluster_cpus(load_config({}), 2.0)  # defaults fit 2 CPUs
    with pytest.raises(PreflightError, match="would hang"):
        check_cluster_cpus(load_config({}, ["compute.model_num_cpus=2"]), 2.0)


def test_cli_dispatches_job_commands_lazily(monkeypatch):
    seen = {}
    fake = types.ModuleType("rayformers.jobs.train")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "rayformers.jobs.train", fake)
    assert cli.main(["train", "cfg.yaml", "--set", "x=1"]) == 0
    assert seen["argv"] == ["cfg.yaml", "--set", "x=1"]


def test_cli_run_bad_config_exits_2_with_message(tmp_path, capsys):
    p = write_yaml(tmp_path, "model: {path: m, tsk: embed}\n")
    assert cli.main(["run", str(p)]) == cli.EXIT_BAD_CONFIG
    assert "unknown config key(s): model.tsk" in capsys.readouterr().err


# --- input discovery ---------------------------------------------------------------------------


def test_discovery_dirs_globs_hive_and_stable_ids(tmp_path):
    for lang in ("en", "fr"):
        d = tmp_path / "in" / f"lang={lang}"
        d.mkdir(parents=True)
        pq.write_table(pa.table({"text": [f"{lang}{i}" for i in range(10)]}), d / "a.parquet", row_group_size=3)
    (tmp_path / "in" / "_ignored.txt").write_text("x")
    fs, files = discover_files(str(tmp_path / "in"))
    assert [f.relpath for f in files] == ["lang=en/a.parquet", "lang=fr/a.parquet"]
    assert files[0].num_rows == 10 and files[0].row_group_rows == [3, 3, 3, 1] and files[0].partition == {"lang": "en"}
    _, globbed = discover_files(str(tmp_path / "in" / "*" / "*.parquet"))
    assert len(globbed) == 2
    units = plan_units(files, target_rows=5)
    tables = [read_unit(fs, u, ["text", "lang"], None) for u in units]
    ids = [i for t in tables for i in t.column("id").to_pylist()]
    assert ids[:4] == ["lang=en/a.parquet:0", "lang=en/a.parquet:1", "lang=en/a.parquet:2", "lang=en/a.parquet:3"]
    assert len(set(ids)) == 20 and tables[0].column("lang")[0].as_py() == "en"
    skip = pa.array(["lang=en/a.parquet:1"])
    assert read_unit(fs, units[0], ["text"], None, skip).column("id").to_pylist() == ["lang=en/a.parquet:0", "lang=en/a.parquet:2"]
    with pytest.raises(ValueError, match="does not exist"):
        discover_files(str(tmp_path / "missing"))


# --- commit protocol ---------------------------------------------------------------------------


def part(ids, errors=None):
    errors = errors or [None] * len(ids)
    return pa.table({"id": ids, "label": ["x"] * len(ids), "num_tokens": [3] * len(ids), "error": pa.array(errors, pa.string())})


def test_stage_publish_manifest_success_and_modes(tmp_path):
    fs = pafs.LocalFileSystem()
    out = str(tmp_path / "out")
    st = prepare_output(fs, out, "error-if-exists", "fp1", "id", {})
    assert st.data_dir.startswith(staging_path(out))
    write_part(fs, st.data_dir, part(["a", "b"]), "id", "snappy")
    write_part(fs, st.data_dir, part(["c"], ["text: empty"]), "id", "snappy")
    counts = collect_staged(fs, st.data_dir, "id", expected_rows=3)
    assert (counts.rows, counts.errors, counts.tokens) == (3, 1, 9)
    publish(st, {"config_fingerprint": "fp1", "output_rows": 3})
    assert (tmp_path / "out" / SUCCESS).exists()
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["output_rows"] == 3
    assert not (tmp_path / ".out.rayformers-staging").exists()
    with pytest.raises(OutputError, match="already exists"):
        prepare_output(fs, out, "error-if-exists", "fp1", "id", {})
    assert prepare_output(fs, out, "resume", "fp1", "id", {}).already_complete
    with pytest.raises(OutputError, match="different configuration"):
        prepare_output(fs, out, "resume", "fp2", "id", {})
    st2 = prepare_output(fs, out, "overwrite", "fp2", "id", {})
    write_part(fs, st2.data_dir, part(["z"]), "id", "snappy")
    publish(st2, {"config_fingerprint": "fp2"})
    assert pq.read_table(out).column("id").to_pylist() == ["z"]


def test_resume_reads_staged_ids_and_refuses_changed_config(tmp_path):
    fs = pafs.LocalFileSystem()
    out = str(tmp_path / "out")
    st = prepare_output(fs, out, "error-if-exists", "fp1", "id", {})
    write_part(fs, st.data_dir, part(["a", "b"]), "id", "snappy")
    (tmp_path / ".out.rayformers-staging" / "data" / ".tmp-dead-part.parquet").write_bytes(b"PAR1 half")
    with pytest.raises(OutputError, match="interrupted run"):
        prepare_output(fs, out, "error-if-exists", "fp1", "id", {})
    with pytest.raises(OutputError, match="different configuration"):
        prepare_output(fs, out, "resume", "fp9", "id", {})
    st2 = prepare_output(fs, out, "resume", "fp1", "id", {})
    assert sorted(st2.done_ids.to_pylist()) == ["a", "b"]
    assert not (tmp_path / ".out.rayformers-staging" / "data" / ".tmp-dead-part.parquet").exists()
    with pytest.raises(IncompleteOutputError, match="1 of 3 input rows are missing"):
        collect_staged(fs, st2.data_dir, "id", expected_rows=3)


def test_retried_write_is_idempotent_and_overlaps_are_deduplicated(tmp_path):
    fs = pafs.LocalFileSystem()
    st = prepare_output(fs, str(tmp_path / "o"), "overwrite", "fp", "id", {})
    write_part(fs, st.data_dir, part(["a", "b"]), "id", "snappy")
    write_part(fs, st.data_dir, part(["a", "b"]), "id", "snappy")  # same block retried: same name
    assert len([p for p in (tmp_path / ".o.rayformers-staging" / "data").iterdir()]) == 1
    write_part(fs, st.data_dir, part(["b", "c"]), "id", "snappy")  # re-split retry overlapping "b"
    counts = collect_staged(fs, st.data_dir, "id", expected_rows=3)
    assert counts.rows == 3 and counts.duplicates_removed == 1
    ids = pq.read_table(st.data_dir).column("id").to_pylist()
    assert sorted(ids) == ["a", "b", "c"]
    assert part_name(pa.array(["a"])) != part_name(pa.array(["b"]))

    # integer ids, several overlapping parts, errors counted once per kept row
    st = prepare_output(fs, str(tmp_path / "n"), "overwrite", "fp", "id", {})
    write_part(fs, st.data_dir, part([1, 2], ["bad", None]), "id", "snappy")
    write_part(fs, st.data_dir, part([2, 3]), "id", "snappy")
    write_part(fs, st.data_dir, part([4]), "id", "snappy")
    write_part(fs, st.data_dir, part([1, 3, 5], ["bad", None, None]), "id", "snappy")
    counts = collect_staged(fs, st.data_dir, "id", expected_rows=5)
    assert (counts.rows, counts.duplicates_removed, counts.errors, counts.tokens) == (5, 3, 1, 15)
    assert sorted(pq.read_table(st.data_dir).column("id").to_pylist()) == [1, 2, 3, 4, 5]
