"""Typed job config, the Ray Data plan, the output commit protocol and the CLI.

Python API::

    from rayformers.pipeline import run, load_config
    report = run("job.yaml", overrides=["model.dtype=bfloat16"])
    print(report.format())
"""

from .commit import ErrorBudgetExceeded, IncompleteOutputError, OutputError
from .config import ConfigError, JobConfig, load_config
from .preflight import PreflightError
from .report import JobReport
from .runner import read_output, run

__all__ = [
    "ConfigError",
    "ErrorBudgetExceeded",
    "IncompleteOutputError",
    "JobConfig",
    "JobReport",
    "OutputError",
    "PreflightError",
    "load_config",
    "read_output",
    "run",
]
