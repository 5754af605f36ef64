"""Billion-row mechanics on a small scale, with real Ray and Parquet: blocks of ``batch_size``
whatever the row groups, staged files merged to size, the distributed duplicate-id check."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayformers.pipeline import PreflightError, read_output, run
from rayformers.pipeline.config import load_config
from rayformers.pipeline.preflight import preflight

from model_test_utils import tiny_bert


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("clf") / "model", hidden=16, head="BertForSequenceClassification")


def spark_like_input(path: Path, rows: int, **extra) -> Path:
    """One file, one big row group: what Spark writes for short rows (128 MB groups)."""
    path.mkdir(parents=True)
    table = pa.table({"text": [f"row {i} " + "token " * (i % 5) for i in range(rows)], **extra})
    pq.write_table(table, path / "big.parquet", row_group_size=rows)
    return path


def test_one_big_row_group_flows_as_blocks_of_batch_size(ray_session, tmp_path, classifier):
    from rayformers.pipeline.dataflow import build_dataset

    inp = spark_like_input(tmp_path / "in", 2000)
    cfg = load_config({
        "input": {"path": str(inp)}, "model": {"path": str(classifier), "task": "classify"},
        "compute": {"batch_size": 300}, "output": {"path": str(tmp_path / "out")},
    })
    job = preflight(cfg)
    assert [f.row_group_rows for f in job.files] == [[2000]]
    sizes = build_dataset(job).map_batches(
        lambda t: pa.table({"rows": [t.num_rows]}), batch_size=None, batch_format="pyarrow"
    ).take_all()
    # every model call got one block of at most batch_size rows; together exactly the input
    assert sorted(r["rows"] for r in sizes) == [200] + [300] * 6


def test_many_small_files_flow_as_full_blocks_and_publish_every_row_once(ray_session, tmp_path, classifier):
    from rayformers.pipeline.dataflow import build_dataset

    inp = tmp_path / "in"
    inp.mkdir()
    for k in range(7):
        pq.write_table(pa.table({"text": [f"file {k} row {i}" for i in range(50)]}), inp / f"f{k}.parquet")
    job = {"input": {"path": str(inp)}, "model": {"path": str(classifier), "task": "classify"},
           "compute": {"batch_size": 128}, "output": {"path": str(tmp_path / "out")}}
    sizes = build_dataset(preflight(load_config(job))).map_batches(
        lambda t: pa.table({"rows": [t.num_rows]}), batch_size=None, batch_format="pyarrow"
    ).take_all()
    assert sorted(r["rows"] for r in sizes) == [94, 128, 128], "7 files of 50 rows packed into 128-row blocks"
    report = run(job)
    ids = read_output(report.output_path).column("id").to_pylist()
    assert report.rows == 350 and len(set(ids)) == 350 == len(ids)


def test_small_staged_files_are_merged_before_publishing(ray_session, tmp_path, classifier):
    inp = spark_like_input(tmp_path / "in", 400)
    out = tmp_path / "out"
    report = run({
        "input": {"path": str(inp)}, "model": {"path": str(classifier), "task": "classify"},
        "compute": {"batch_size": 32}, "output": {"path": str(out), "stage_rows": 64},
    })
    assert report.rows == 400 and report.rows_scored == 400
    parts = sorted(out.glob("part-*.parquet"))
    manifest = json.loads((out / "_manifest.json").read_text())
    assert len(parts) == 1 == len(manifest["output_files"]), "7 staged files of ~64 rows merged into one"
    assert manifest["output_files"][0]["rows"] == 400
    ids = read_output(str(out)).column("id").to_pylist()
    assert sorted(ids) == sorted(f"big.parquet:{i}" for i in range(400))


def test_duplicate_ids_are_found_without_a_driver_side_set(ray_session, tmp_path, classifier):
    ids = list(range(300)) + [7, 42]
    inp = spark_like_input(tmp_path / "in", 302, doc=pa.array(ids, pa.int64()))
    job = {
        "input": {"path": str(inp), "id_column": "doc", "unique_ids_driver_rows": 10},
        "model": {"path": str(classifier), "task": "classify"}, "output": {"path": str(tmp_path / "out")},
    }
    assert preflight(load_config(job)).id_check_deferred
    with pytest.raises(PreflightError, match=r"2 ids occur more than once \(e.g. (7, 42|42, 7)\)"):
        run(job)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.rayformers-staging").exists()


# --- Dataset in, Dataset out; a measured estimate before a big job --------------------------------


def test_processor_on_any_dataset_equals_run(ray_session, tmp_path, classifier):
    import pandas as pd
    import ray

    from rayformers.pipeline import build_processor

    texts = [f"review {i}: " + "great " * (i % 9) for i in range(60)] + [None, "   "]
    df = pd.DataFrame({"doc": range(len(texts)), "text": texts, "shop": ["a", "b"] * (len(texts) // 2)})
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), inp / "p.parquet")
    config = {
        "input": {"path": str(inp), "id_column": "doc", "passthrough_columns": ["shop"]},
        "model": {"path": str(classifier), "task": "classify"},
        "output": {"path": str(tmp_path / "out"), "max_error_fraction": 0.5},
    }
    expected = {r["doc"]: r for r in read_output(run(config).output_path).to_pylist()}

    processor = build_processor({k: v for k, v in config.items() if k != "output"})
    rows = processor(ray.data.from_pandas(df)).take_all()
    assert len(rows) == len(texts) and set(rows[0]) == {"doc", "shop", "num_tokens", "label", "score", "error"}
    for r in rows:
        e = expected[r["doc"]]
        assert (r["label"], r["error"], r["shop"]) == (e["label"], e["error"], e["shop"])
        if r["error"] is None:
            assert r["score"] == pytest.approx(e["score"], abs=1e-6)
    assert sum(r["error"] is not None for r in rows) == 2
    with pytest.raises(PreflightError, match="no column 'text'"):
        processor(ray.data.from_pandas(df.rename(columns={"text": "body"})))


def test_processor_refuses_a_dataset_column_named_like_a_prediction_as_run_does(ray_session, tmp_path, classifier):
    """A ``label`` column in the caller's data would come out as the predicted label."""
    import ray

    from rayformers.pipeline import build_processor

    processor = build_processor({"model": {"path": str(classifier), "task": "classify"}})
    with pytest.raises(PreflightError) as from_processor:
        processor(ray.data.from_items([{"text": "a fine day", "label": "gold"}]))
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.table({"text": ["a fine day"], "label": ["gold"]}), inp / "p.parquet")
    with pytest.raises(PreflightError) as from_run:
        preflight(load_config({"input": {"path": str(inp), "passthrough_columns": ["label"]},
                               "model": {"path": str(classifier), "task": "classify"},
                               "output": {"path": str(tmp_path / "out")}}))
    assert str(from_processor.value).startswith("the dataset's columns: label would collide with output columns (")
    assert str(from_run.value).startswith("input.passthrough_columns: label would collide with output columns (")
    for refused in (from_processor, from_run):
        assert str(refused.value).endswith("labels, num_tokens, score, top_k_labels, top_k_scores); rename or drop them before scoring")


def test_plan_estimates_within_2x_of_a_real_run_and_writes_nothing(ray_session, tmp_path, classifier, capsys):
    from rayformers.pipeline import cli

    inp = spark_like_input(tmp_path / "in", 3000)
    out = tmp_path / "out"
    # 256-row blocks: the 1,024-row sample is four blocks of the run's size; the rates are the
    # median of the last three (the first pays for lazy initialisation). The tiny model's time is
    # mostly per block, so the sample's blocks must be the run's size to compare.
    job = {"input": {"path": str(inp)}, "model": {"path": str(classifier), "task": "classify"},
           "compute": {"batch_size": 256}, "output": {"path": str(out)}}
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(job))
    assert cli.main(["plan", str(path), "--target", "10m", "--sample-rows", "1024", "--json"]) == 0
    est = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not out.exists() and not (tmp_path / ".out.rayformers-staging").exists(), "plan writes nothing"
    assert est["input_rows"] == 3000 and est["input_files"] == 1 and est["sample_rows"] == 1024
    assert est["tokens_per_row"] > 2 and est["estimated_tokens"] == pytest.approx(3000 * est["tokens_per_row"], rel=1e-3)
    assert est["model_actors_for_target"] >= 1 and est["estimated_wall_s"] > est["startup_s"]

    report = run(job)
    measured = report.rows / report.stage_s["model"]
    assert 0.5 < est["model_rows_per_s_per_actor"] / measured < 2.0, (est["model_rows_per_s_per_actor"], measured)
    assert cli.main(["plan", str(path), "--target", "soon"]) == 2


def test_plan_scores_its_sample_in_at_least_three_blocks():
    from rayformers.pipeline.estimate import sample_block_rows

    assert sample_block_rows(256, 1024) == 256  # four blocks of the run's size
    assert sample_block_rows(1024, 512) == 171  # CPU default: three blocks of a small sample
    assert sample_block_rows(1024, 2) == 1


def test_two_model_actors_on_two_cpus_do_not_starve_the_block_shaping(ray_session, tmp_path, classifier):
    """Two model actors and a tokenizer reserve 1.25 of 2 CPUs: Ray's repartition tasks, which ask
    for a whole CPU by default, would never start (the job hung); they get the read/write share."""
    inp = spark_like_input(tmp_path / "in", 600)
    report = run({
        "input": {"path": str(inp)}, "model": {"path": str(classifier), "task": "classify"},
        "compute": {"model_max_actors": 2, "model_min_actors": 2, "batch_size": 100},
        "output": {"path": str(tmp_path / "out")},
    })
    assert report.rows == 600 and report.errors == 0


def test_embed_one_row_per_window_publishes_verifies_and_resumes_counting_input_rows(ray_session, tmp_path):
    """``overflow: chunk`` with ``chunk_aggregate: none``: the output has more rows than the input
    (one per window), yet the staged ranges, the counts, the budget and resume are by input row."""
    from rayformers.pipeline.commit import ErrorBudgetExceeded

    encoder = tiny_bert(tmp_path / "enc", hidden=16)  # max_position_embeddings 64: max_length 64
    texts = [("long " if i % 3 == 0 else "") * (40 + 7 * i) + f"row {i}" if i % 9 != 4 else None for i in range(40)]
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.table({"text": texts}), inp / "docs.parquet", row_group_size=20)
    out = tmp_path / "out"
    job = {"input": {"path": str(inp)}, "model": {"path": str(encoder), "task": "embed"},
           "tokenizer": {"overflow": "chunk", "stride": 8}, "task": {"chunk_aggregate": "none"},
           "compute": {"batch_size": 6}, "output": {"path": str(out), "stage_rows": 8, "target_file_mb": 1}}
    with pytest.raises(ErrorBudgetExceeded, match="4 of 40 rows"):
        run(job)  # four null texts: error records, over the default budget of 0
    staging = out.parent / f".{out.name}.rayformers-staging" / "data"
    parts = sorted(staging.glob("part-*.parquet"))
    assert len(parts) > 2
    lost = pq.read_table(parts[1])
    lost_rows = len(set(lost.column("id").to_pylist()))
    assert lost.num_rows > lost_rows, "the staged file holds several windows of some row"
    parts[1].unlink()  # as if that write never happened
    report = run(job, ["output.mode=resume", "output.max_error_fraction=0.2"])
    assert (report.rows, report.errors) == (40, 4)
    assert report.rows_scored == lost_rows and report.rows_resumed == 40 - lost_rows
    manifest = json.loads((out / "_manifest.json").read_text())
    assert sum(f["rows"] for f in manifest["output_files"]) == 40
    table = read_output(str(out)).sort_by([("id", "ascending"), ("chunk_index", "ascending")])
    assert table.num_rows > 40 + 10
    by_id: dict = {}
    for row in table.select(["id", "chunk_index", "chunk_start", "error"]).to_pylist():
        by_id.setdefault(row["id"], []).append(row)
    assert sorted(by_id) == sorted(f"docs.parquet:{i}" for i in range(40)), "every input row, once"
    for key, rows in by_id.items():
        i = int(key.split(":")[1])
        if texts[i] is None:
            assert len(rows) == 1 and rows[0]["chunk_index"] is None and rows[0]["error"]
        else:
            assert [r["chunk_index"] for r in rows] == list(range(len(rows)))
            assert (len(rows) > 1) == (len(texts[i].split()) > 62) and rows[0]["chunk_start"] == 0

    from rayformers.pipeline.estimate import plan

    est = plan(job, [f"output.path={tmp_path / 'planned'}"])
    # the sample is one row group (20 rows, 2 of them null) whose windows are many more rows
    assert (est.sample_rows, est.sample_errors) == (20, 2), "the plan counts input rows, not windows"
