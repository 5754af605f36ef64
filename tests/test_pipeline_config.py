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
    compact_staged,
    prepare_output,
    publish,
    read_staged,
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
from rayformers.pipeline.source import (
    ROW_COLUMN,
    UNIT_COLUMN,
    discover_files,
    iter_row_group_slices,
    pack_units,
    plan_units,
    read_unit,
    rebatch,
    row_group_key,
)


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


def accepted_keys(cls, prefix: str = "") -> set[str]:
    """Every leaf key ``build_dataclass`` accepts for ``cls`` (nested sections walked)."""
    import dataclasses
    import typing

    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        optional = [a for a in typing.get_args(hints[f.name]) if dataclasses.is_dataclass(a)]
        if optional:  # an Optional section (model.head): the key itself (null) and its keys
            keys.add(prefix + f.name)
            keys |= accepted_keys(optional[0], f"{prefix}{f.name}.")
        elif dataclasses.is_dataclass(hints[f.name]):
            keys |= accepted_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.add(prefix + f.name)
    return keys


def test_describe_lists_every_key_the_config_classes_accept_and_every_choice(capsys):
    from rayformers.jobs.etl import EtlJobConfig
    from rayformers.jobs.train_config import _TRAIN_CHOICES, TrainJobConfig
    from rayformers.pipeline.config import _CHOICES, TASKS

    assert cli.main(["describe"]) == cli.EXIT_OK
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    described = {line.split(" = ", 1)[0]: line for line in lines}
    assert len(described) == len(lines)  # each key once
    assert set(described) == accepted_keys(JobConfig) | accepted_keys(TrainJobConfig) | accepted_keys(EtlJobConfig)
    assert all(line.split("  # ", 1)[1].strip() for line in lines), "every key documented"
    for task in TASKS:
        assert task in described["model.task"]
    for key in described:
        section, _, name = key.rpartition(".")  # "models" is a top-level key
        for choice in _CHOICES.get((section.split(".")[-1], name), ()) + _TRAIN_CHOICES.get(name, ()) * (section == "train"):
            assert choice in described[key], key


def test_run_ignores_the_sections_of_train_and_etl_in_a_shared_file(tmp_path, capsys):
    cfg = load_config({"model": {"path": "m"}, "etl": {"every": "15m"}, "train": {"epochs": 3}}, ["etl.cron=@daily"])
    assert cfg.model.path == "m" and not hasattr(cfg, "etl")
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config({"model": {"path": "m"}, "etls": {"every": "15m"}})  # a typo is still one
    p = write_yaml(tmp_path, "model: {path: m, task: embed}\netl: {every: 15m}\n")
    assert cli.main(["run", str(p)]) == cli.EXIT_BAD_CONFIG
    err = capsys.readouterr().err
    assert "output.path is empty" in err and "unknown" not in err  # past the config, refused by preflight


@pytest.mark.parametrize("input_keys, output_keys, where", [
    ({"id_column": "label"}, {}, "input.id_column"),
    ({"passthrough_columns": ["lang", "score"]}, {}, "input.passthrough_columns"),
    ({"text_column": "label"}, {"keep_text": True}, "input.text_column (kept by output.keep_text)"),
])
def test_input_columns_kept_under_an_output_columns_name_are_refused(tmp_path, input_keys, output_keys, where):
    """The prediction would silently replace the kept value (ids, passthrough, kept text)."""
    from rayformers.pipeline.preflight import preflight

    cfg = load_config({"input": {"path": str(tmp_path / "in"), **input_keys}, "model": {"path": "m", "task": "classify"},
                       "output": {"path": str(tmp_path / "out"), **output_keys}})
    with pytest.raises(PreflightError) as refused:
        preflight(cfg)
    assert str(refused.value).startswith(f"{where}: ")
    assert "would collide with output columns (" in str(refused.value)


def test_fingerprint_ignores_compute_but_not_model():
    a = load_config({"model": {"path": "m"}})
    assert a.fingerprint() == load_config({"model": {"path": "m"}, "compute": {"batch_size": 8}}).fingerprint()
    # allow_new_head changes no prediction of a checkpoint with its head: outputs staged before the key existed resume
    assert a.fingerprint() == load_config({"model": {"path": "m", "allow_new_head": True}}).fingerprint()
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
    # resume: rows 1 and 3-5 of row group 0, and all of row group 1, were staged before
    sliced = list(iter_row_group_slices(fs, files[0], [0, 1, 2], ["text"], None, 2, done={0: [(1, 2)], 1: [(0, 3)]}))
    assert [g for g, _ in sliced] == [0, 0, 2, 2]
    assert [t.column("id").to_pylist() for _, t in sliced] == [
        ["lang=en/a.parquet:0"], ["lang=en/a.parquet:2"], ["lang=en/a.parquet:6", "lang=en/a.parquet:7"],
        ["lang=en/a.parquet:8"],
    ]
    with pytest.raises(ValueError, match="does not exist"):
        discover_files(str(tmp_path / "missing"))


def test_small_files_share_read_tasks_and_are_recut_into_full_blocks(tmp_path):
    (tmp_path / "in").mkdir()
    for k, n in enumerate([5, 3, 9, 2]):
        pq.write_table(pa.table({"text": [f"f{k} r{i}" for i in range(n)]}), tmp_path / "in" / f"f{k}.parquet")
    fs, files = discover_files(str(tmp_path / "in"))
    units = plan_units(files, target_rows=8)
    tasks = pack_units(units, target_rows=8)
    # 5+3 fill a task; 9 is bigger than the target and alone; 2 starts the last task
    assert [[u.num_rows for u in t] for t in tasks] == [[5, 3], [9], [2]]
    slices = (t for u in units for _, t in iter_row_group_slices(fs, u.file, u.row_groups, ["text"], None, 4, tag=True))
    blocks = list(rebatch(slices, 4))
    assert [b.num_rows for b in blocks] == [4, 4, 4, 4, 3]
    texts = [x for b in blocks for x in b.column("text").to_pylist()]
    assert texts == [f"f{k} r{i}" for k, n in enumerate([5, 3, 9, 2]) for i in range(n)], "every row once, in order"
    assert len(set(blocks[1].column(UNIT_COLUMN).to_pylist())) == 2, "f0 row 4 and f1 rows 0-2 share a block"
    # pieces whose schemas cannot be unified pass unmerged, nothing dropped
    a, b = pa.table({"x": [1, 2]}), pa.table({"x": ["a"]})
    assert [t.num_rows for t in rebatch([a, b], 4)] == [2, 1]


# --- commit protocol ---------------------------------------------------------------------------

U1, U2 = "/in/a.parquet@100:7#rg0", "/in/a.parquet@100:7#rg1"


def part(ids, errors=None, unit=U1, start=0):
    """A block as the model stage emits it: predictions plus each row's place in the input."""
    errors = errors or [None] * len(ids)
    return pa.table({
        "id": ids, "label": ["x"] * len(ids), "num_tokens": [3] * len(ids), "error": pa.array(errors, pa.string()),
        UNIT_COLUMN: pa.array([unit] * len(ids)), ROW_COLUMN: pa.array(range(start, start + len(ids)), pa.int64()),
    })


def test_big_row_group_streams_in_slices_tagged_with_their_place(tmp_path):
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(1000)]}), tmp_path / "one.parquet", row_group_size=10_000)
    fs, files = discover_files(str(tmp_path / "one.parquet"))
    assert files[0].row_group_rows == [1000]
    sliced = [t for _, t in iter_row_group_slices(fs, files[0], [0], ["text"], None, 256, tag=True)]
    assert [t.num_rows for t in sliced] == [256, 256, 256, 232]
    key = row_group_key(files[0], 0)
    assert sliced[1].column(UNIT_COLUMN).cast(pa.string()).unique().to_pylist() == [key]
    assert sliced[1].column(ROW_COLUMN).to_pylist() == list(range(256, 512))
    assert sliced[3].column("id")[0].as_py() == "one.parquet:768"


def test_stage_publish_manifest_success_and_modes(tmp_path):
    fs = pafs.LocalFileSystem()
    out = str(tmp_path / "out")
    units = {U1: 3}
    st = prepare_output(fs, out, "error-if-exists", "fp1", {})
    assert st.data_dir.startswith(staging_path(out))
    write_part(fs, st.data_dir, part(["b", "c"], start=1), "snappy")
    write_part(fs, st.data_dir, part(["a"], ["text: empty"]), "snappy")
    counts = collect_staged(fs, st.data_dir, units)
    assert (counts.rows, counts.errors, counts.tokens) == (3, 1, 9)
    assert UNIT_COLUMN not in pq.read_table(st.data_dir).column_names
    publish(st, {"config_fingerprint": "fp1", "output_rows": 3}, counts.files)
    assert (tmp_path / "out" / SUCCESS).exists()
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["output_rows"] == 3 and sum(f["rows"] for f in manifest["output_files"]) == 3
    assert not (tmp_path / ".out.rayformers-staging").exists()
    with pytest.raises(OutputError, match="already exists"):
        prepare_output(fs, out, "error-if-exists", "fp1", {})
    assert prepare_output(fs, out, "resume", "fp1", {}).already_complete
    with pytest.raises(OutputError, match="different configuration"):
        prepare_output(fs, out, "resume", "fp2", {})
    st2 = prepare_output(fs, out, "overwrite", "fp2", {})
    write_part(fs, st2.data_dir, part(["z"]), "snappy")
    publish(st2, {"config_fingerprint": "fp2"}, collect_staged(fs, st2.data_dir, {U1: 1}).files)
    assert pq.read_table(out).column("id").to_pylist() == ["z"]


def test_resume_skips_staged_ranges_and_refuses_changed_config_or_input(tmp_path):
    fs = pafs.LocalFileSystem()
    out = str(tmp_path / "out")
    st = prepare_output(fs, out, "error-if-exists", "fp1", {})
    write_part(fs, st.data_dir, part(["a", "b"]), "snappy")
    write_part(fs, st.data_dir, part(["e"], unit=U2, start=1), "snappy")
    (tmp_path / ".out.rayformers-staging" / "data" / ".tmp-dead-part.parquet").write_bytes(b"PAR1 half")
    with pytest.raises(OutputError, match="interrupted run"):
        prepare_output(fs, out, "error-if-exists", "fp1", {})
    with pytest.raises(OutputError, match="different configuration"):
        prepare_output(fs, out, "resume", "fp9", {})
    with pytest.raises(OutputError, match="holds rows of input file /in/a.parquet, which changed or vanished"):
        prepare_output(fs, out, "resume", "fp1", {}, plan_units={U1: 3})
    st2 = prepare_output(fs, out, "resume", "fp1", {}, plan_units={U1: 3, U2: 2})
    assert st2.done == {U1: [(0, 2)], U2: [(1, 2)]} and st2.resumed_rows == 3
    assert not (tmp_path / ".out.rayformers-staging" / "data" / ".tmp-dead-part.parquet").exists()
    with pytest.raises(IncompleteOutputError, match=r"2 of 5 input rows are missing .*row group 0 of /in/a.parquet, rows 2-2"):
        collect_staged(fs, st2.data_dir, {U1: 3, U2: 2})


def test_retried_writes_are_kept_once_by_their_ranges(tmp_path):
    fs = pafs.LocalFileSystem()
    st = prepare_output(fs, str(tmp_path / "o"), "overwrite", "fp", {})
    write_part(fs, st.data_dir, part(["a", "b"]), "snappy")
    write_part(fs, st.data_dir, part(["a", "b"]), "snappy")  # the same block retried: same name
    assert len(read_staged(fs, st.data_dir)) == 1
    write_part(fs, st.data_dir, part(["b", "c"], start=1), "snappy")  # a retry bundled differently
    counts = collect_staged(fs, st.data_dir, {U1: 3})
    assert counts.rows == 3 and counts.duplicates_removed == 1
    assert sorted(pq.read_table(st.data_dir).column("id").to_pylist()) == ["a", "b", "c"]

    # several overlapping files over two row groups, errors counted once per kept row
    st = prepare_output(fs, str(tmp_path / "n"), "overwrite", "fp", {})
    write_part(fs, st.data_dir, part([0, 1], ["bad", None]), "snappy")
    write_part(fs, st.data_dir, part([1, 2], start=1), "snappy")
    write_part(fs, st.data_dir, pa.concat_tables([part([2], start=2), part([10, 11], unit=U2)]), "snappy")
    write_part(fs, st.data_dir, part([0, 2, 12], ["bad", None, None], unit=U1).slice(0, 1), "snappy")
    counts = collect_staged(fs, st.data_dir, {U1: 3, U2: 2})
    assert (counts.rows, counts.errors, counts.tokens) == (5, 1, 15)
    assert counts.duplicates_removed == 3
    assert sorted(pq.read_table(st.data_dir).column("id").to_pylist()) == [0, 1, 2, 10, 11]
    with pytest.raises(IncompleteOutputError, match="not part of this job's input"):
        collect_staged(fs, st.data_dir, {U1: 3})


def test_compaction_merges_small_files_and_survives_a_crash_midway(tmp_path):
    fs = pafs.LocalFileSystem()
    st = prepare_output(fs, str(tmp_path / "o"), "overwrite", "fp", {})
    for start in range(0, 40, 4):
        write_part(fs, st.data_dir, part(list(range(start, start + 4)), start=start), "snappy")
    counts = collect_staged(fs, st.data_dir, {U1: 40})
    assert len(counts.files) == 10
    size = counts.files[0].size
    merged = compact_staged(fs, st.data_dir, counts, target_bytes=int(size * 5.5), compression="snappy")
    assert len(merged.files) == 2 and merged.rows == 40
    assert len(read_staged(fs, st.data_dir)) == 2
    # a crash after a merged file was written but before its sources were deleted: a source
    # (here the first 4 rows of the first merged file) is still there, and the next check keeps
    # every row exactly once
    src = read_staged(fs, st.data_dir)[0]
    sub = pq.read_table(src.path).slice(0, 4)
    write_part(fs, st.data_dir, sub, "snappy", ranges=[src.ranges[0]])
    counts = collect_staged(fs, st.data_dir, {U1: 40})
    assert counts.rows == 40 and counts.duplicates_removed == 4
    assert sorted(pq.read_table(st.data_dir).column("id").to_pylist()) == list(range(40))


def test_tokenizer_pool_is_sized_to_the_model_pool_within_free_cpus():
    from rayformers.pipeline.preflight import size_tokenizer_pool

    def sized(cpus, **compute):
        return size_tokenizer_pool(load_config({"compute": compute}), cpus)

    assert sized(2) == 1                                   # this machine: one CPU model actor
    assert sized(16, model_max_actors=3) == 3              # CPU: one per model actor
    assert sized(8, model_num_gpus=1, model_max_actors=1) == 4    # a GPU node: 8 CPUs + 1 GPU
    assert sized(2, model_num_gpus=1, model_max_actors=2) == 2    # capped by the free CPUs
    assert sized(8, model_num_gpus=1, tokenizer_max_actors=6) == 6  # explicit wins


def test_tokenizer_pool_starts_whole_unless_a_minimum_is_set():
    from rayformers.pipeline.preflight import size_tokenizer_pool

    def pool(cpus, **compute):
        cfg = load_config({"compute": compute})
        size_tokenizer_pool(cfg, cpus)
        size_tokenizer_pool(cfg, cpus)  # idempotent: run() and the plan both call it
        return cfg.compute.tokenizer_min_actors, cfg.compute.tokenizer_max_actors

    assert pool(8, model_num_gpus=1) == (4, 4)               # every tokenizer starts with the job
    assert pool(8, tokenizer_max_actors=3) == (3, 3)         # an explicit maximum: min follows it
    assert pool(8, model_num_gpus=1, tokenizer_min_actors=1) == (1, 4)  # Ray Data autoscales 1..4
    assert pool(2, tokenizer_min_actors=2) == (2, 2)         # a minimum above the sized maximum lifts it


def test_block_rows_default_by_device_and_explicit_value_wins():
    assert load_config({}).compute.block_rows() == 1024
    assert load_config({"compute": {"model_num_gpus": 1}}).compute.block_rows() == 16384
    assert load_config({"compute": {"model_num_gpus": 1, "batch_size": 512}}).compute.block_rows() == 512


def test_model_num_gpus_above_one_is_refused_pointing_at_more_actors():
    """Several GPUs per actor left all but the first idle (the model is placed on one)."""
    for bad in (2, 1.5, 4):
        with pytest.raises(ConfigError, match=r"model_num_gpus=.*one model actor per GPU.*model_max_actors.*not built"):
            load_config({"compute": {"model_num_gpus": bad}})
    with pytest.raises(ConfigError, match="model_num_gpus"):
        load_config({"compute": {"model_num_gpus": -1}})
    assert load_config({"compute": {"model_num_gpus": 0.5}}).compute.model_num_gpus == 0.5  # actors sharing a GPU


def test_dtype_default_is_float32_on_cpu_and_auto_on_gpu_actors_with_fingerprints_kept():
    from rayformers.pipeline.config import resolved_dtype_setting

    cpu, gpu = load_config({"model": {"path": "m"}}), load_config({"model": {"path": "m"}, "compute": {"model_num_gpus": 1}})
    assert cpu.model.dtype is None and resolved_dtype_setting(cpu) == "float32" and resolved_dtype_setting(gpu) == "auto"
    assert resolved_dtype_setting(load_config({"model": {"dtype": "float32"}, "compute": {"model_num_gpus": 1}})) == "float32"
    # unset on CPU is the float32 of before: outputs written then still resume
    assert cpu.fingerprint() == load_config({"model": {"path": "m", "dtype": "float32"}}).fingerprint()
    assert gpu.fingerprint() == load_config({"model": {"path": "m", "dtype": "auto"}}).fingerprint()
    with pytest.raises(ConfigError, match="model.dtype"):
        load_config({"model": {"dtype": "fp8"}})
