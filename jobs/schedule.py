"""When the built-in ETL loop runs: ``--every 15m`` intervals and 5-field cron expressions.

Why our own matcher: a scheduled job on one machine needs only "when is the next tick", and the
cron packages on PyPI are not runtime dependencies of this project. The matcher follows Vixie
cron (the crontab(5) man page): ``minute hour day-of-month month day-of-week`` with ``*``,
``a-b``, ``*/n``, ``a-b/n``, lists, month and weekday names, ``7`` as Sunday, the ``@hourly`` /
``@daily`` / ``@weekly`` / ``@monthly`` / ``@yearly`` shorthands, and the classic rule that when
both day fields are restricted a day matches if *either* matches. Times are local wall-clock
times, as in cron.

:func:`run_loop` never overlaps ticks (the next tick is the first one after the previous run
ended; missed ticks are skipped and counted) and survives a failing tick (it logs the error and
waits for the next one).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Optional, Union

logger = logging.getLogger("rayformers.etl")


class ScheduleError(ValueError):
    """An ``--every`` duration or cron expression that cannot be parsed; the message says why."""


# ------------------------------------------------------------------------------------------------
# Durations

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")


def parse_duration(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``, ``"1h30m"`` → seconds (> 0)."""
    s = str(text).strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s) or total <= 0:
        raise ScheduleError(
            f"--every {text!r}: expected a positive duration such as 30s, 15m, 2h, 1d or 1h30m"
        )
    return total


@dataclass(frozen=True)
class Interval:
    """Fixed-rate ticks ``start, start + every, start + 2·every, ...`` (the first one at once)."""

    seconds: float

    def next_after(self, start: float, now: float) -> float:
        """The first tick strictly after ``now`` on the grid anchored at ``start``."""
        return start + (self.index(start, now) + 1) * self.seconds

    def index(self, start: float, t: float) -> int:
        """Number of the last tick at or before ``t`` (robust to float error on tick times)."""
        return int((t - start) / self.seconds + 1e-9) if t >= start else -1

    def describe(self) -> str:
        return f"every {self.seconds:g}s"


# ------------------------------------------------------------------------------------------------
# Cron

_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), start=1)}
_WEEKDAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
_SHORTHANDS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# (name, low, high, names)
_FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _WEEKDAYS),
)


def _parse_value(token: str, field: str, low: int, high: int, names: dict, expr: str) -> int:
    t = token.lower()
    if t in names:
        return names[t]
    if not t.isdigit():
        raise ScheduleError(f"cron {expr!r}: {field} field has {token!r}, not a number or a name")
    v = int(t)
    if not low <= v <= high:
        raise ScheduleError(f"cron {expr!r}: {field} value {v} is outside {low}-{high}")
    return v


def _parse_field(text: str, field: str, low: int, high: int, names: dict, expr: str) -> frozenset:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ScheduleError(f"cron {expr!r}: empty item in the {field} field")
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"cron {expr!r}: {field} step {step_text!r} must be a positive integer")
            step = int(step_text)
        if part == "*":
            a, b = low, high
        elif "-" in part:
            a_text, b_text = part.split("-", 1)
            a = _parse_value(a_text, field, low, high, names, expr)
            b = _parse_value(b_text, field, low, high, names, expr)
            if b < a:
                raise ScheduleError(f"cron {expr!r}: {field} range {part!r} runs backwards")
        else:
            a = _parse_value(part, field, low, high, names, expr)
            b = high if step > 1 else a  # "5/15" means 5-max/15, as in Vixie cron
        values.update(range(a, b + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed 5-field cron expression; :meth:`next_after` gives the next matching minute."""

    expression: str
    minutes: frozenset
    hours: frozenset
    days: frozenset
    months: frozenset
    weekdays: frozenset  # 0 = Sunday
    day_restricted: bool
    weekday_restricted: bool

    @classmethod
    def parse(cls, expression: str) -> "CronSchedule":
        expr = expression.strip()
        text = _SHORTHANDS.get(expr.lower(), expr)
        parts = text.split()
        if len(parts) != 5:
            raise ScheduleError(
                f"cron {expression!r}: expected 5 fields 'minute hour day-of-month month day-of-week' "
                f"(e.g. '*/15 * * * *') or one of {', '.join(_SHORTHANDS)}; got {len(parts)} fields"
            )
        sets = [_parse_field(p, *spec, expression) for p, spec in zip(parts, _FIELDS)]
        weekdays = frozenset(0 if d == 7 else d for d in sets[4])
        return cls(
            expression=expression,
            minutes=sets[0],
            hours=sets[1],
            days=sets[2],
            months=sets[3],
            weekdays=weekdays,
            day_restricted=not parts[2].startswith("*"),
            weekday_restricted=not parts[4].startswith("*"),
        )

    def _day_matches(self, dt: datetime) -> bool:
        dom = dt.day in self.days
        dow = (dt.isoweekday() % 7) in self.weekdays
        if self.day_restricted and self.weekday_restricted:
            return dom or dow
        return dom and dow

    def matches(self, dt: datetime) -> bool:
        return (
            dt.minute in self.minutes
            and dt.hour in self.hours
            and dt.month in self.months
            and self._day_matches(dt)
        )

    def next_after(self, dt: datetime) -> datetime:
        """The first matching minute strictly after ``dt`` (naive local time)."""
        t = dt.replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = t + timedelta(days=366 * 5)  # Feb 29 on a Monday can take years; 5 covers it
        while t <= limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
                continue
            if not self._day_matches(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
                continue
            if t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
                continue
            if t.minute not in self.minutes:
                t += timedelta(minutes=1)
                continue
            return t
        raise ScheduleError(f"cron {self.expression!r} never matches (e.g. February 30)")

    def describe(self) -> str:
        return f"cron '{self.expression}'"


Schedule = Union[Interval, CronSchedule]


def parse_schedule(every: Optional[str] = None, cron: Optional[str] = None) -> Schedule:
    """Exactly one of ``every`` (a duration) or ``cron`` (an expression or ``@daily``...)."""
    if bool(every) == bool(cron):
        raise ScheduleError("give exactly one of --every DURATION or --cron 'EXPRESSION'")
    if every:
        return Interval(parse_duration(every))
    return CronSchedule.parse(cron)  # type: ignore[arg-type]


def next_tick(schedule: Schedule, start: float, now: float) -> float:
    """Epoch seconds of the first tick strictly after ``now``."""
    if isinstance(schedule, Interval):
        return schedule.next_after(start, now)
    return schedule.next_after(datetime.fromtimestamp(now)).timestamp()


# ------------------------------------------------------------------------------------------------
# The loop


def _ticks_between(schedule: Schedule, start: float, a: float, b: float) -> int:
    """Ticks strictly between tick times ``a`` and ``b``."""
    if isinstance(schedule, Interval):
        return max(0, schedule.index(start, b) - schedule.index(start, a) - 1)
    count, t = 0, a
    while True:  # cron ticks are at least a minute apart, so this always advances
        t = next_tick(schedule, start, t)
        if t >= b:
            return count
        count += 1


@dataclass
class TickRecord:
    """What one tick did (kept by :func:`run_loop` and handed to ``on_tick``)."""

    number: int
    started: float
    ended: float
    ok: bool
    result: object = None
    error: Optional[BaseException] = None
    skipped_ticks: int = 0


def run_loop(
    tick: Callable[[], object],
    schedule: Schedule,
    *,
    max_ticks: Optional[int] = None,
    run_first_at_once: Optional[bool] = None,
    on_tick: Optional[Callable[[TickRecord], None]] = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> list[TickRecord]:
    """Call ``tick()`` on the schedule until ``max_ticks`` ticks ran (forever when ``None``).

    Runs are sequential, so they never overlap: when a run outlasts the interval, the ticks it
    covered are skipped (logged) and the next run starts at the first tick after it ended. An
    exception in ``tick`` is logged with its traceback and the loop waits for the next tick; only
    ``KeyboardInterrupt``/``SystemExit`` stop it. ``--every`` runs once at start, cron waits for
    its first matching minute (``run_first_at_once`` overrides either)."""
    records: list[TickRecord] = []
    start = clock()
    if run_first_at_once is None:
        run_first_at_once = isinstance(schedule, Interval)
    due = start if run_first_at_once else next_tick(schedule, start, start)
    number = 0
    skipped = 0
    while max_ticks is None or number < max_ticks:
        wait = due - clock()
        if wait > 0:
            logger.info("etl: next run at %s (%s)", datetime.fromtimestamp(due).isoformat(timespec="seconds"), schedule.describe())
            sleep(wait)
        number += 1
        rec = TickRecord(number=number, started=clock(), ended=0.0, ok=False, skipped_ticks=skipped)
        try:
            rec.result = tick()
            rec.ok = True
        except Exception as e:  # noqa: BLE001 - a failed run must not stop the schedule
            rec.error = e
            logger.exception("etl: run %d failed (%s: %s); retrying at the next tick", number, type(e).__name__, e)
        rec.ended = clock()
        records.append(rec)
        if on_tick is not None:
            on_tick(rec)
        if max_ticks is not None and number >= max_ticks:
            break
        now = clock()
        nxt = next_tick(schedule, start, now)
        # Ticks that fell inside the run we just finished are skipped, never run late in a burst.
        skipped = _ticks_between(schedule, start, due, nxt)
        if skipped:
            logger.warning("etl: the run took %.1fs and covered %d scheduled tick(s); they were skipped", rec.ended - rec.started, skipped)
        due = nxt
    return records
