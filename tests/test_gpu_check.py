"""The GPU check's dry run on CPU, so the script keeps working where no GPU is (CI)."""

from __future__ import annotations

import sys
from pathlib import Path


def test_gpu_check_dry_run_passes_on_cpu(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import gpu_check

    # The Ray pipeline part runs the same code as the pipeline tests and bench_pipeline.py; this
    # test keeps the in-process checks (precision parity, generate against transformers) working.
    assert gpu_check.main(["--cpu", "--skip-pipeline"]) == 0
    out = capsys.readouterr().out
    assert "[FAIL]" not in out and out.count("[PASS]") == 3 and "3/3 checks passed" in out
