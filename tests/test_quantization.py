"""int8 on CPU: torch's dynamic quantisation of the Linear layers, and the agreement check that
runs on a sample of the job's own rows before any scoring (real Ray, real MiniLM)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rayformers.operators.loading import load_model
from rayformers.pipeline import PreflightError, read_output, run
from rayformers.pipeline.config import load_config
from rayformers.pipeline.preflight import preflight


def write_input(path, n=48):
    path.mkdir()
    texts = [f"a review of product {i}: " + "really good value " * (i % 5) for i in range(n)]
    pq.write_table(pa.table({"text": texts}), path / "p.parquet")
    return path


def test_int8_dynamic_quantises_every_linear_and_stays_close(minilm_path):
    fp32 = load_model("embed", str(minilm_path))
    int8 = load_model("embed", str(minilm_path), quantization="int8-dynamic")
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert sum(isinstance(m, dynamic) for m in int8.modules()) == sum(isinstance(m, torch.nn.Linear) for m in fp32.modules())
    assert not any(type(m) is torch.nn.Linear for m in int8.modules())
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        a = fp32(input_ids=ids).last_hidden_state.mean(1)
        b = int8(input_ids=ids).last_hidden_state.mean(1)
    # int8 costs MiniLM-L6 real accuracy (transformers' model quantised the same way: 0.92 too),
    # which is why jobs check agreement on their own rows before they start
    assert 0.85 < torch.nn.functional.cosine_similarity(a, b).item() < 0.999
    with pytest.raises(ValueError, match="CPU only"):
        load_model("embed", str(minilm_path), quantization="int8-dynamic", device="cuda")


def test_preflight_refuses_quantization_off_cpu_or_off_float32(minilm_path, tmp_path):
    inp = write_input(tmp_path / "in")
    base = {"input": {"path": str(inp)}, "output": {"path": str(tmp_path / "out")}}
    for model, compute in (({"dtype": "bfloat16"}, {}), ({}, {"model_num_gpus": 1})):
        cfg = load_config({**base, "model": {"path": str(minilm_path), "task": "embed", "quantization": "int8-dynamic",
                                             **model}, "compute": compute})
        with pytest.raises(PreflightError, match="runs on CPU actors in float32"):
            preflight(cfg)


def test_agreement_is_reported_and_a_low_agreement_stops_the_job(ray_session, minilm_path, tmp_path):
    inp = write_input(tmp_path / "in")
    job = {"input": {"path": str(inp)},
           "model": {"path": str(minilm_path), "task": "embed", "quantization": "int8-dynamic", "agreement_rows": 32,
                     "min_agreement": 0.8},
           "output": {"path": str(tmp_path / "out")}}
    report = run(job)
    check = report.checks["quantization"]
    assert check["metric"] == "cosine" and check["rows"] == 32 and 0.85 < check["agreement"] < 1.0
    assert report.rows == 48 and read_output(str(tmp_path / "out")).num_rows == 48
    assert "quantization" in report.format()

    job["model"]["min_agreement"] = 1.0001  # no quantised model agrees better than perfectly
    job["output"]["path"] = str(tmp_path / "out2")
    with pytest.raises(PreflightError, match=r"cosine with float32 is 0\.\d+ on 32 rows .* below model.min_agreement"):
        run(job)
    assert not (tmp_path / "out2").exists() and not (tmp_path / ".out2.rayformers-staging").exists()
