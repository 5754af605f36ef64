"""Typed job config, the Ray Data plan, the output commit protocol and the CLI.

Python API::

    from rayformers.pipeline import run, load_config, build_processor, plan
    report = run("job.yaml", overrides=["model.dtype=bfloat16"])    # Parquet -> Parquet, exactly once
    print(report.format())
    scored = build_processor("job.yaml")(ray.data.from_pandas(df))   # any Dataset -> lazy Dataset
    print(plan("job.yaml", target="2h").format())                    # measured estimate, nothing written
"""

import importlib

# Imported on first use (PEP 562), for the same reason as ``rayformers.operators``: read and write
# tasks import ``rayformers.pipeline.source`` / ``.commit``, which must not load torch.
_HOME = {
    "ErrorBudgetExceeded": "commit", "IncompleteOutputError": "commit", "OutputError": "commit",
    "ConfigError": "config", "JobConfig": "config", "load_config": "config",
    "PlanReport": "estimate", "plan": "estimate", "PreflightError": "preflight",
    "Processor": "processor", "build_processor": "processor", "JobReport": "report",
    "read_output": "runner", "run": "runner",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)


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
