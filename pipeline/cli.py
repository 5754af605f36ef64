"""``rayformers`` command line.

    rayformers run JOB.yaml [--set key.sub=value ...] [--json]   batch inference (this package)
    rayformers train CONFIG [...]                                 Ray Train fine-tuning (rayformers.jobs.train)
    rayformers etl CONFIG [...]                                   scheduled incremental runs (rayformers.jobs.etl)
    rayformers plan JOB.yaml [--target 2h] [--json]               measured estimate of a run (nothing written)
    rayformers describe                                           every config key with its default and meaning
    rayformers report OUTPUT [--sample N] [--html F] [--json]    what a published output holds (labels, scores, errors)

``train`` and ``etl`` are dispatched lazily to ``rayformers.jobs.<name>:main(argv)`` so this
module never imports their dependencies; a new job only needs an entry in ``JOB_COMMANDS``.

Exit codes: 0 success, 1 unexpected failure, 2 bad config / input (nothing ran),
3 error budget exceeded (output staged, not published), 4 incomplete output (resume it; a full
disk while staging is one). With ``--json`` every exit prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Optional

from .console import VERBOSE_ENV

JOB_COMMANDS = {
    "train": ("rayformers.jobs.train", "fine-tune a model with Ray Train"),
    "etl": ("rayformers.jobs.etl", "scheduled incremental inference runs"),
}

EXIT_OK, EXIT_FAILED, EXIT_BAD_CONFIG, EXIT_ERROR_BUDGET, EXIT_INCOMPLETE = 0, 1, 2, 3, 4


def _failure(args: argparse.Namespace, code: int, status: str, label: str, error: Exception, report=None) -> int:
    """Say why the run failed on stderr and, with ``--json``, as the JSON report on stdout, so a
    caller parsing stdout always gets one object (``status``, ``reason``, ``exit_code``)."""
    if report is not None:
        print(report.format(), file=sys.stderr)
    print(f"rayformers run: {label}: {error}", file=sys.stderr)
    if args.json:
        out = {**(report.to_dict() if report is not None else {}), "status": status, "reason": str(error), "exit_code": code}
        print(json.dumps(out, default=str), flush=True)
    return code


def _run_command(args: argparse.Namespace) -> int:
    from .commit import ErrorBudgetExceeded, IncompleteOutputError, OutputError
    from .config import ConfigError
    from .preflight import PreflightError
    from .runner import run

    try:
        report = run(args.config, args.set)
    except (ConfigError, PreflightError, OutputError) as e:
        return _failure(args, EXIT_BAD_CONFIG, "refused", "error", e)
    except ErrorBudgetExceeded as e:
        return _failure(args, EXIT_ERROR_BUDGET, "error-budget-exceeded", "error budget exceeded", e, e.report)
    except IncompleteOutputError as e:
        return _failure(args, EXIT_INCOMPLETE, "incomplete", "incomplete output", e)
    if args.json:
        print(json.dumps({**report.to_dict(), "exit_code": EXIT_OK}, default=str))
    else:
        print(report.format())
    return EXIT_OK


def _plan_command(args: argparse.Namespace) -> int:
    from .commit import OutputError
    from .config import ConfigError
    from .estimate import plan
    from .preflight import PreflightError

    try:
        report = plan(args.config, args.set, target=args.target, sample_rows=args.sample_rows)
    except (ConfigError, PreflightError, OutputError) as e:
        print(f"rayformers plan: error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(json.dumps(report.to_dict()) if args.json else report.format())
    return EXIT_OK


def _report_command(args: argparse.Namespace) -> int:
    from .output_report import ReportError, read_output_report
    from .report_html import write_html
    from .report_text import format_report

    try:
        report = read_output_report(args.output, **({} if args.sample is None else {"sample_rows": args.sample}))
    except (ReportError, ValueError, OSError) as e:
        print(f"rayformers report: error: {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"status": "refused", "reason": str(e), "exit_code": EXIT_BAD_CONFIG}))
        return EXIT_BAD_CONFIG
    if args.html:
        write_html(report, args.html)
    if args.json:
        print(json.dumps({**report.to_dict(), "html": args.html, "exit_code": EXIT_OK}, default=str))
    else:
        print(format_report(report))
        if args.html:
            print(f"\nhtml report   {args.html}")
    return EXIT_OK


JOB_SECTIONS = {
    "train": ("rayformers.jobs.train_config", "describe_train"),
    "etl": ("rayformers.jobs.etl", "describe_etl"),
}
"""The section each job command adds to the shared config, and the function listing its keys."""


def describe_all() -> list[str]:
    """Every key a config file may hold: the sections every command shares (``rayformers run``),
    then each job command's own section (``rayformers run`` ignores those)."""
    from .config import JobConfig, describe

    lines = ["# input, model, tokenizer, task, compute, output: rayformers run, train and etl"]
    lines += describe(JobConfig)
    for name, (module_name, function) in JOB_SECTIONS.items():
        lines.append(f"# {name}: rayformers {name} only (rayformers run ignores this section)")
        lines += getattr(importlib.import_module(module_name), function)()
    return lines


def _describe_command(args: argparse.Namespace) -> int:
    print("\n".join(describe_all()))
    return EXIT_OK


def _dispatch_job(name: str, argv: list[str]) -> int:
    module_name, _ = JOB_COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            print(f"rayformers {name}: not available in this installation ({module_name} is missing)", file=sys.stderr)
            return EXIT_FAILED
        raise
    result = module.main(argv)
    return int(result or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayformers", description="Batch inference and fine-tuning of HF-format text models on Ray.")
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="show everything Ray logs (start-up, plan, per-stage progress); anywhere on the command line",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run a batch inference job from a YAML config")
    run_p.add_argument("config", help="job YAML file")
    run_p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set model.dtype=bfloat16 (repeatable; values parsed as YAML)",
    )
    run_p.add_argument("--json", action="store_true", help="print the report as JSON")
    run_p.set_defaults(func=_run_command)
    plan_p = sub.add_parser("plan", help="validate a job, score a sample and estimate the whole run (writes nothing)")
    plan_p.add_argument("config", help="job YAML file")
    plan_p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    plan_p.add_argument("--target", default=None, help="wall-time target, e.g. 2h: how many model actors it needs")
    plan_p.add_argument("--sample-rows", type=int, default=512, help="rows to score for the estimate (default 512)")
    plan_p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    plan_p.set_defaults(func=_plan_command)
    report_p = sub.add_parser("report", help="label distributions, score histograms, errors and stage times of a published output")
    report_p.add_argument("output", help="output directory (local path or URI) of a finished run")
    report_p.add_argument("--sample", type=int, default=None, metavar="N",
                          help="read at most N rows for the label and score figures (default 100000)")
    report_p.add_argument("--html", default=None, metavar="FILE", help="also write one self-contained HTML page with the plots")
    report_p.add_argument("--json", action="store_true", help="print the report as JSON")
    report_p.set_defaults(func=_report_command)
    desc = sub.add_parser("describe", help="list every config key with its default and documentation")
    desc.set_defaults(func=_describe_command)
    for name, (_, help_text) in JOB_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --verbose anywhere (before or after the subcommand, for every job command): the console
    # module reads it from the environment, so Ray's processes and job commands see it too.
    if "--verbose" in argv or "-v" in argv:
        argv = [a for a in argv if a not in ("--verbose", "-v")]
        os.environ[VERBOSE_ENV] = "1"
    # Job commands own their whole argument list (including --help).
    if argv and argv[0] in JOB_COMMANDS:
        return _dispatch_job(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
