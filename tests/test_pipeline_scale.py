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
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


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
    from rayformers.pipeline.plan import build_dataset

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
