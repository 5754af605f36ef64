"""The pipeline on a real multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``:
a head and a worker node, each with its own raylet and object store): model actors run on both
nodes, then the worker node is killed mid-run and the job still publishes every row once.

Isolation from other Ray users of this machine: the cluster lives under its own ``RAY_TMPDIR``
(so its address file never makes another process's ``ray.init()`` join it), uses a free GCS
port, and only the processes it started are stopped.

Placement: the head has 2 CPUs and the worker 1; each model actor reserves 0.6 CPU, and the head
is started with ``scheduler_spread_threshold=0`` so that Ray puts each new actor on the least
loaded node (instead of packing the head first): the two model actors land on different nodes,
and after the worker dies the head still has room to restart the lost one.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
import ray.data  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from rayformers.pipeline import read_output, run  # noqa: E402

from model_test_utils import tiny_bert  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    import ray

    ray.shutdown()  # the shared single-node test cluster, if an earlier module started it
    # Short path: Ray's Unix sockets live under it (108-byte limit).
    tmp = tempfile.mkdtemp(prefix="rfmn", dir="/tmp")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    c = None
    try:
        c = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 2,
                "gcs_server_port": _free_port(),
                "dashboard_agent_listen_port": _free_port(),
                "include_dashboard": False,
                "object_store_memory": 200 * 1024 * 1024,
                "_system_config": {"scheduler_spread_threshold": 0.0},
            },
        )
        ray.init(address=c.address, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        if c is not None:
            try:
                c.shutdown()
            except ValueError:  # a driver reconnected (e.g. a failed test's thread): drop it, retry
                ray.shutdown()
                c.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> Path:
    return tiny_bert(
        tmp_path_factory.mktemp("tiny-bert"), hidden=16, head="BertForSequenceClassification", intermediate=32,
        num_labels=2,
    )


def job(tmp_path: Path, model: Path, rows: int, files: int) -> dict:
    inp = tmp_path / "in"
    inp.mkdir()
    per = rows // files
    for f in range(files):
        texts = [f"row {f}-{i} " + "word " * (i % 13) for i in range(per)]
        pq.write_table(pa.table({"text": texts}), inp / f"part-{f:03d}.parquet", row_group_size=32)
    return {
        "input": {"path": str(inp)},
        "model": {"path": str(model), "task": "classify"},
        "compute": {
            "tokenizer_num_cpus": 0.1,
            "model_num_cpus": 0.6,
            "model_min_actors": 2,
            "model_max_actors": 2,
            "io_num_cpus": 0.1,
            "torch_threads": 1,
            "batch_size": 32,
            "tokenizer_batch_size": 32,
        },
        "output": {"path": str(tmp_path / "out")},
    }


def model_actor_nodes() -> dict:
    """Actor id → (node id, state) of every model actor ever created, from the GCS actor table
    (Ray Data names its actor classes ``MapWorker(MapBatches(ClassifyActor))``)."""
    from ray._private import state

    return {
        a["ActorID"]: (a["Address"]["NodeID"], a["State"])
        for a in state.actors().values()
        if "ClassifyActor" in a.get("ActorClassName", "")
    }


def assert_every_id_once(out: Path, inp: Path) -> None:
    ids = read_output(str(out)).column("id").to_pylist()
    expected = {
        f"{p.name}:{i}" for p in inp.glob("*.parquet") for i in range(pq.ParquetFile(p).metadata.num_rows)
    }
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicate ids"
    assert set(ids) == expected, f"{len(expected - set(ids))} missing ids"


def test_actors_run_on_both_nodes_and_killing_the_worker_mid_run_loses_nothing(cluster, tiny_classifier, tmp_path):
    worker = cluster.add_node(num_cpus=1, object_store_memory=150 * 1024 * 1024)
    cluster.wait_for_nodes()
    before = set(model_actor_nodes())
    cfg = job(tmp_path, tiny_classifier, rows=3000, files=6)
    result: dict = {}
    # Start the model stage only when both model actors are up: a fresh node needs far longer to
    # import torch than an actor on the warm head, which would otherwise finish the work alone.
    ctx = ray.data.DataContext.get_current()
    saved_wait, ctx.wait_for_min_actors_s = ctx.wait_for_min_actors_s, 600

    def drive():
        try:
            result["report"] = run(cfg)
        except BaseException as e:  # noqa: BLE001 - surfaced by the assertion below
            result["error"] = e

    thread = threading.Thread(target=drive)
    thread.start()
    try:
        staged = tmp_path / ".out.rayformers-staging" / "data"
        head_id = cluster.head_node.node_id
        alive_on: set = set()  # nodes where a model actor of this run was ALIVE at some point
        seen = []  # what the polls saw, for failure messages
        deadline = time.monotonic() + 400
        rows_at_kill, head_alive_at_kill = 0, False
        while time.monotonic() < deadline and thread.is_alive():
            actors = {a: v for a, v in model_actor_nodes().items() if a not in before}
            now_alive = {node for node, st in actors.values() if st == "ALIVE"}
            alive_on |= now_alive
            parts = list(staged.glob("part-*.parquet")) if staged.exists() else []
            if not seen or seen[-1][1:] != (sorted(actors.values()), len(parts)):
                seen.append((round(time.monotonic(), 1), sorted(actors.values()), len(parts)))
            if worker.node_id in now_alive:
                # The worker's model actor is up and taking batches: let it work a moment, then
                # kill the whole node (raylet, object store with its blocks, actor processes).
                time.sleep(1.0)
                parts = list(staged.glob("part-*.parquet")) if staged.exists() else []
                rows_at_kill = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
                head_alive_at_kill = head_id in now_alive
                cluster.remove_node(worker, allow_graceful=False)
                break
            time.sleep(0.2)
        assert thread.is_alive(), f"the run ended before the worker could be killed: {result}; polls: {seen}"
        assert rows_at_kill < 3000, seen  # the node died mid-run
        while thread.is_alive() and time.monotonic() < deadline + 300:
            actors = {a: v for a, v in model_actor_nodes().items() if a not in before}
            alive_on |= {node for node, st in actors.values() if st == "ALIVE"}
            time.sleep(0.5)
    finally:
        thread.join(timeout=600)  # never leave a driver thread behind the cluster's shutdown
        ctx.wait_for_min_actors_s = saved_wait
    assert not thread.is_alive(), "the run did not finish after the worker node died"
    assert "error" not in result, result.get("error")
    report = result["report"]
    assert report.status == "succeeded" and report.rows == 3000
    # Model actors ran on both nodes: on the worker until it died, on the head (its own actor and
    # the worker's, restarted there) after.
    assert alive_on == {head_id, worker.node_id}, (alive_on, head_alive_at_kill, seen)
    assert_every_id_once(tmp_path / "out", tmp_path / "in")
