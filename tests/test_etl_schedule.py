"""The ETL's scheduling pieces without Ray: durations, the cron matcher, the loop, the lock."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta

import pytest

from rayformers.jobs.etl_state import RunLock, LockBusy
from rayformers.jobs.schedule import (
    CronSchedule,
    Interval,
    ScheduleError,
    parse_duration,
    parse_schedule,
    run_loop,
)


@pytest.mark.parametrize(
    "text, seconds",
    [("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("0.5s", 0.5), (" 2H ", 7200)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "m15", "15x", "0m", "15m junk", "-5m"])
def test_parse_duration_rejects(text):
    with pytest.raises(ScheduleError, match="expected a positive duration"):
        parse_duration(text)


def nxt(expr: str, when: str) -> str:
    return CronSchedule.parse(expr).next_after(datetime.fromisoformat(when)).isoformat(timespec="minutes")


@pytest.mark.parametrize(
    "expr, after, expected",
    [
        ("*/15 * * * *", "2024-03-10T10:07:31", "2024-03-10T10:15"),
        ("*/15 * * * *", "2024-03-10T10:45:00", "2024-03-10T11:00"),
        ("0 2 * * *", "2024-03-10T02:00:00", "2024-03-11T02:00"),
        ("30 9 * * mon-fri", "2024-03-08T10:00:00", "2024-03-11T09:30"),  # Friday → Monday
        ("0 0 1 * *", "2024-01-31T12:00:00", "2024-02-01T00:00"),
        ("0 0 29 2 *", "2024-03-01T00:00:00", "2028-02-29T00:00"),  # leap days only
        ("0 12 13 * 5", "2024-09-01T00:00:00", "2024-09-06T12:00"),  # day OR weekday (Friday 6th)
        ("0 0 * * 7", "2024-03-10T00:00:00", "2024-03-17T00:00"),  # 7 = Sunday
        ("5,10-12 3 * jan,DEC *", "2024-06-01T00:00:00", "2024-12-01T03:05"),
        ("5/20 * * * *", "2024-01-01T00:06:00", "2024-01-01T00:25"),
        ("@hourly", "2024-01-01T00:00:00", "2024-01-01T01:00"),
        ("@weekly", "2024-03-10T00:00:00", "2024-03-17T00:00"),
    ],
)
def test_cron_next_after(expr, after, expected):
    assert nxt(expr, after) == expected


def test_cron_next_after_agrees_with_minute_by_minute_matching():
    """The skipping search must find exactly the first minute ``matches`` accepts."""
    rng = random.Random(7)
    exprs = ["*/7 */5 * * *", "0 0 */3 * 1", "15 8-18/2 1-7 * mon", "*/30 * 31 * *", "0 6 * 2,8 sat,sun"]
    for expr in exprs:
        cron = CronSchedule.parse(expr)
        for _ in range(5):
            t = datetime(2024, 1, 1) + timedelta(minutes=rng.randrange(0, 60 * 24 * 200))
            got = cron.next_after(t)
            probe = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
            while not cron.matches(probe):
                probe += timedelta(minutes=1)
            assert got == probe, (expr, t)


@pytest.mark.parametrize(
    "expr, message",
    [
        ("* * * *", "expected 5 fields"),
        ("60 * * * *", "outside 0-59"),
        ("* * * 13 *", "outside 1-12"),
        ("*/0 * * * *", "must be a positive integer"),
        ("5-1 * * * *", "runs backwards"),
        ("* * * foo *", "not a number or a name"),
        ("0 0 30 2 *", "never matches"),
    ],
)
def test_cron_rejects_with_a_reason(expr, message):
    with pytest.raises(ScheduleError, match=message):
        CronSchedule.parse(expr).next_after(datetime(2024, 1, 1))


def test_parse_schedule_needs_exactly_one():
    assert parse_schedule(every="15m") == Interval(900)
    assert parse_schedule(cron="@daily").expression == "@daily"
    with pytest.raises(ScheduleError, match="exactly one"):
        parse_schedule("15m", "@daily")
    with pytest.raises(ScheduleError, match="exactly one"):
        parse_schedule()


def test_loop_never_overlaps_skips_covered_ticks_and_survives_failures():
    active, peak = [0], [0]
    calls = []

    def tick():
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            calls.append(time.monotonic())
            if len(calls) == 1:
                raise RuntimeError("first run fails")
            if len(calls) == 2:
                time.sleep(0.35)  # outlasts more than two 0.1 s intervals
            return len(calls)
        finally:
            active[0] -= 1

    records = run_loop(tick, Interval(0.1), max_ticks=4, clock=time.monotonic)
    assert [r.ok for r in records] == [False, True, True, True]
    assert isinstance(records[0].error, RuntimeError)
    assert peak[0] == 1
    for a, b in zip(records, records[1:]):
        assert b.started >= a.ended
    assert records[2].skipped_ticks >= 2  # ticks inside the long run were skipped, not queued
    assert records[3].skipped_ticks == 0


def test_loop_with_a_fake_clock_follows_cron_minutes():
    now = [datetime(2024, 5, 1, 10, 3, 20).timestamp()]
    starts = []

    def sleep(s):
        now[0] += s

    def tick():
        starts.append(datetime.fromtimestamp(now[0]).strftime("%H:%M"))
        now[0] += 30  # each run takes 30 s

    run_loop(tick, CronSchedule.parse("*/5 * * * *"), max_ticks=3, clock=lambda: now[0], sleep=sleep)
    assert starts == ["10:05", "10:10", "10:15"]


def test_lock_is_exclusive_across_descriptors(tmp_path):
    path = str(tmp_path / "etl.lock")
    with RunLock(path):
        with pytest.raises(LockBusy, match=f"pid {os.getpid()}"):
            RunLock(path).acquire()
    with RunLock(path) as again:
        assert again.previous_holder is None  # released cleanly: not stale


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    path = str(tmp_path / "etl.lock")
    code = (
        "import os, sys; from rayformers.jobs.etl_state import RunLock; "
        f"RunLock({path!r}).acquire(); sys.stdout.write(str(os.getpid())); sys.stdout.flush(); os._exit(9)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9
    holder = json.loads(open(path).read())
    assert holder["active"] and holder["pid"] == int(proc.stdout)
    lock = RunLock(path).acquire()
    try:
        assert lock.previous_holder["pid"] == int(proc.stdout)
    finally:
        lock.release()


def test_a_live_holder_in_another_process_blocks(tmp_path):
    path = str(tmp_path / "etl.lock")
    code = (
        "import sys, time; from rayformers.jobs.etl_state import RunLock; "
        f"l = RunLock({path!r}).acquire(); print('held', flush=True); sys.stdin.readline(); l.release()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockBusy, match=f"pid {proc.pid}"):
            RunLock(path).acquire()
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=30)
    RunLock(path).acquire().release()


def test_threads_sharing_one_output_never_run_together(tmp_path):
    """Two schedulers on one output: the lock serialises them (a busy tick is skipped)."""
    path = str(tmp_path / "etl.lock")
    inside, peak, skipped = [0], [0], [0]
    guard = threading.Lock()

    def tick():
        try:
            with RunLock(path):
                with guard:
                    inside[0] += 1
                    peak[0] = max(peak[0], inside[0])
                time.sleep(0.05)
                with guard:
                    inside[0] -= 1
        except LockBusy:
            with guard:
                skipped[0] += 1

    threads = [threading.Thread(target=run_loop, args=(tick, Interval(0.02)), kwargs={"max_ticks": 8}) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1
    assert skipped[0] > 0
