"""Quiet by default: what a successful run prints, and the demo that shows what the tool is for.

The filter is tested on real log records through Ray's own loggers; the demo runs for real in a
fresh process (its own local Ray cluster, real MiniLM weights), as ``make demo`` runs it."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest

from rayformers.pipeline import console
from rayformers.pipeline.cli import main as cli_main
from rayformers.pipeline.demo_data import QUERIES, TOPICS, make_documents

PROGRESS = logging.getLogger("ray.data._internal.progress.logging_progress")


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    console.quiet_ray_console(total_rows=400)
    yield
    console._FILTER.total_rows = None


def _ray_data_block(stages: dict[str, str]) -> None:
    """What Ray Data's non-terminal progress manager logs every 10 s (the same calls it makes)."""
    PROGRESS.info("======= Running Dataset: dataset_x_0 =======")
    PROGRESS.info("Total Progress: 0/?")
    PROGRESS.info("Active & requested resources: 0.5/2 CPU, 178.1KiB/3.5GiB object store")
    for name, count in stages.items():
        PROGRESS.info(f"{name}: {count}")
        PROGRESS.info("  Tasks: 0; Actors: 1; Queued blocks: 0 (0.0B); Resources: 0.0 CPU")
    PROGRESS.info("=" * 60)


def test_progress_block_becomes_one_line_and_info_is_hidden(quiet, capfd):
    _ray_data_block({
        "ReadReadParquetRows": "400/400", "StreamingRepartition[num_rows_per_block=1024,strict=False]": "400/400",
        "MapBatches(TokenizeOperator)": "400/400", "MapBatches(EmbedActor)": "128/?", "Write": "0/1",
    })
    logging.getLogger("ray.data._internal.execution.streaming_executor").info("Execution plan of Dataset ...")
    logging.getLogger("ray._private.worker").info("Started a local Ray instance.")
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].endswith("read 400/400 · tokenized 400/400 · scored 128/400 · written 0/400"), lines[0]


def _shown(logger_name: str, level: int, message: str) -> bool:
    """Would Ray's console handler for this logger print the record? (its own filters decide)"""
    owner = logging.getLogger(logger_name)
    while not owner.handlers and owner.parent is not None:
        owner = owner.parent
    record = logging.getLogger(logger_name).makeRecord(logger_name, level, __file__, 1, message, None, None)
    handlers = console._console_handlers(owner)
    assert handlers, owner.name
    return all(bool(h.filter(record)) for h in handlers) and bool(logging.getLogger(logger_name).filter(record))


def test_warnings_and_errors_still_reach_the_console(quiet):
    assert _shown("ray.data._internal.execution.streaming_executor", logging.WARNING, "a real warning")
    assert _shown("ray._private.worker", logging.ERROR, "a real error")
    assert not _shown("ray._private.worker", logging.INFO, "Started a local Ray instance.")
    assert not _shown("ray._private.authentication.authentication_token_setup", logging.WARNING,
                      "Token authentication is enabled for this Ray cluster.")


def test_verbose_leaves_ray_as_it_is(monkeypatch, capfd):
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    filtered = logging.getLogger("ray.data")
    before = [list(h.filters) for h in filtered.handlers]
    console.quiet_ray_console(400)  # a no-op when verbose
    assert [list(h.filters) for h in filtered.handlers] == before


def test_verbose_flag_anywhere_on_the_command_line(monkeypatch, capsys):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    assert cli_main(["describe", "--verbose"]) == 0
    assert os.environ.get(console.VERBOSE_ENV) == "1"
    assert "compute.batch_size" in capsys.readouterr().out


def test_demo_documents_are_distinct_and_cover_every_topic():
    rows = make_documents(400)
    texts = [t for _, t, _ in rows if isinstance(t, str) and t.strip()]
    assert len(texts) == len(set(texts)) == 396
    assert {topic for *_, topic in rows} == set(TOPICS)


def test_demo_runs_quietly_and_its_neighbours_make_sense(tmp_path):
    """``make demo`` in a fresh process: succeeds, no error-level or Ray start-up lines, nearest
    neighbours of the same topic that are not copies, and the questions answered on topic."""
    env = {**os.environ, "RAYFORMERS_DEMO_DIR": str(tmp_path), "TOKENIZERS_PARALLELISM": "false"}
    env.pop(console.VERBOSE_ENV, None)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "rayformers.pipeline.demo"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    noise = [line for line in proc.stderr.splitlines()
             if re.match(r"^\[[\d\- :,]+ [EWF] \d+", line) or " ERROR " in line or "Token authentication" in line
             or "Set ray log level" in line or "Started a local Ray instance" in line]
    assert not noise, noise
    out = proc.stdout
    assert "status        succeeded" in out and "errors        4" in out
    neighbours = re.findall(r"^  (doc-\d+) \[(\w+)\] .*\n +([\d.]+) +doc-\d+ \[(\w+)\]", out, re.M)
    assert len(neighbours) == 3, out
    for _, topic, cosine, neighbour_topic in neighbours:
        assert neighbour_topic == topic and float(cosine) < 0.999, out
    answers = re.findall(r"^  (.+)\n +[\d.]+  \[(\w+)\]", out.split("job 2")[1], re.M)
    assert dict(answers) == dict(zip(QUERIES, ["football", "cooking", "astronomy", "finance"])), out
