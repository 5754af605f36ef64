"""Typed job config, the Ray Data plan, the output commit protocol and the CLI.

Python API::

    from rayformers.pipeline import run, load_config, build_processor, plan
    report = run("job.yaml", overrides=["model.dtype=bfloat16"])    # Parquet -> Parquet, exactly once
    print(report.format())
    scored = build_processor("job.yaml")(ray.data.from_pandas(df))   # any Dataset -> lazy Dataset
    print(plan("job.yaml", target="2h").format())                    # measured estimate, nothing written
"""

from .commit import ErrorBudgetExceeded, IncompleteOutputError, OutputError
from .config import ConfigError, JobConfig, load_config
from .estimate import PlanReport, plan
from .preflight import PreflightError
from .processor import Processor, build_processor
from .report import JobReport
from .runner import read_output, run

__all__ = [
    "ConfigError",
    "ErrorBudgetExceeded",
    "IncompleteOutputError",
    "JobConfig",
    "JobReport",
    "OutputError",
    "PlanReport",
    "PreflightError",
    "Processor",
    "build_processor",
    "load_config",
    "plan",
    "read_output",
    "run",
]
