"""``cluster.yaml`` is a launcher config Ray accepts: its JSON schema, then the launcher's own
preparation and checks (``ray up`` runs the same ones before creating any machine)."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray.autoscaler
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA.read_text())


def test_validates_against_the_schema_shipped_with_ray(cluster, schema):
    jsonschema.validate(cluster, schema)


def test_passes_the_launchers_own_preparation_and_checks(cluster):
    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"
    # setup_commands run on every node: the workers get the project too.
    assert any("pip install" in c and "-e ~/rayformers" in c for c in prepared["worker_setup_commands"])
    assert any("pip install" in c and "-e ~/rayformers" in c for c in prepared["head_setup_commands"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(gpu_node=0.5), "is not of type 'integer'"),
        (lambda c: c["available_node_types"]["cpu_worker"].update(min_worker=1), "Additional properties"),
        (lambda c: c.pop("provider"), "'provider' is a required property"),
    ],
)
def test_the_schema_check_catches_mistakes(cluster, schema, mutate, message):
    broken = copy.deepcopy(cluster)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError, match=message):
        jsonschema.validate(broken, schema)


def test_node_types_have_one_job_each(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # the driver only: no task or actor on the head
    cpu, gpu = types["cpu_worker"], types["gpu_worker"]
    assert cpu["resources"] == {"cpu_node": 1} and gpu["resources"] == {"gpu_node": 1}
    assert re.match(r"^(g|p)\d", gpu["node_config"]["InstanceType"])  # an AWS GPU instance family
    for t in (cpu, gpu):
        assert 0 <= t["min_workers"] <= t["max_workers"]
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cluster["max_workers"]
    assert cluster["file_mounts"] == {"~/rayformers": "."}


def documented_compute() -> dict:
    """The ``compute:`` section of the job config printed in cluster.yaml's header."""
    header = [ln[2:] if ln.startswith("# ") else ln[1:] for ln in CLUSTER_YAML.read_text().splitlines() if ln.startswith("#")]
    start = header.index("  compute:")
    block = []
    for ln in header[start:]:
        if block and not ln.startswith("    "):
            break
        block.append(ln)
    return yaml.safe_load("\n".join(block))["compute"]


def test_the_documented_compute_section_places_actors_with_the_node_markers(cluster):
    """The job config printed in cluster.yaml's header must load and use the markers defined in
    ``available_node_types``."""
    from rayformers.pipeline.config import ComputeConfig, JobConfig, load_config

    documented = documented_compute()
    markers = {k for t in cluster["available_node_types"].values() for k in t["resources"] if k not in ("CPU", "GPU")}
    assert set(documented["tokenizer_resources"]) | set(documented["model_resources"]) <= markers
    if "model_resources" not in {f.name for f in dataclasses.fields(ComputeConfig)}:
        pytest.skip("the pipeline config has no compute.tokenizer_resources/model_resources yet")
    cfg = load_config({"compute": documented}, cls=JobConfig)
    assert cfg.compute.model_resources == {"gpu_node": 0.001}


GPUS_PER_INSTANCE = {"g5.xlarge": 1, "g5.2xlarge": 1, "g5.4xlarge": 1, "g5.12xlarge": 4, "g5.48xlarge": 8,
                     "g6.2xlarge": 1, "g6.12xlarge": 4, "p4d.24xlarge": 8, "p5.48xlarge": 8}
"""GPUs of the AWS instance types a gpu_worker may use (add the type when cluster.yaml changes it)."""


def test_the_documented_model_pool_has_one_actor_per_gpu(cluster):
    """One GPU per model actor and no more actors than the GPU nodes have GPUs (an actor past
    that waits forever for a GPU; two GPUs per actor would leave one idle)."""
    documented = documented_compute()
    gpu = cluster["available_node_types"]["gpu_worker"]
    gpus = gpu["max_workers"] * GPUS_PER_INSTANCE[gpu["node_config"]["InstanceType"]]
    assert documented["model_num_gpus"] == 1
    assert documented["model_max_actors"] == gpus
