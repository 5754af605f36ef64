"""An :class:`~.output_report.OutputReport` as terminal text (``rayformers report OUTPUT``).

Plain text that reads in a terminal, a CI log or an email: bars drawn with ``#``, no colours.
"""

from __future__ import annotations

from typing import Optional

from .output_report import LabelDistribution, OutputReport, ScoreHistogram

BAR_WIDTH = 40
MAX_LABELS = 20
MAX_REASONS = 20


def _count(value: Optional[int]) -> str:
    return "n/a" if value is None else f"{value:,}"


def _bar(count: int, largest: int) -> str:
    return "#" * (round(BAR_WIDTH * count / largest) if largest else 0)


def model_title(model: str, column: str) -> str:
    return f"{column} (model {model})" if model else column


def format_counts(r: OutputReport) -> list[str]:
    lines = [
        f"output        {r.path}",
        f"status        {r.status}" + (f" ({r.created_at})" if r.created_at else ""),
        f"input rows    {_count(r.input_rows)}",
        f"output rows   {_count(r.output_rows)}",
        f"error rows    {_count(r.error_rows)}",
    ]
    lines.append(f"keep rule     {r.keep}" if r.keep else "keep rule     none (every scored row is in the output)")
    if r.keep or r.kept_rows is not None or r.dropped_rows is not None:
        lines.append(f"kept          {_count(r.kept_rows)}")
        lines.append(f"dropped       {_count(r.dropped_rows)}")
    for m in r.models:
        name = f"{m.name}: " if m.name else ""
        lines.append(f"model         {name}{m.task}" + (f" ({m.model_type})" if m.model_type else "")
                     + f", columns {', '.join(m.prediction_columns) or 'none'}")
    sample = (f"{r.sampled_rows:,} of {r.total_rows:,} rows (random row groups)" if r.sampled
              else f"all {r.total_rows:,} rows")
    lines.append(f"figures from  {sample}")
    return lines


def format_labels(d: LabelDistribution) -> list[str]:
    how = {"elements": ", every label of a row", "first": ", top label"}.get(d.how, "")
    lines = [f"labels: {model_title(d.model, d.column)}{how}"]
    largest = max((n for _, n in d.counts), default=0)
    total = sum(n for _, n in d.counts)
    width = max((len(label) for label, _ in d.counts[:MAX_LABELS]), default=0)
    for label, n in d.counts[:MAX_LABELS]:
        lines.append(f"  {label:<{width}}  {n:>10,}  {100 * n / total:5.1f}%  {_bar(n, largest)}")
    if len(d.counts) > MAX_LABELS:
        rest = d.counts[MAX_LABELS:]
        lines.append(f"  ... {len(rest)} more labels, {sum(n for _, n in rest):,} rows")
    if d.missing:
        lines.append(f"  (no label: {d.missing:,} rows)")
    return lines


def format_histogram(h: ScoreHistogram) -> list[str]:
    how = ", top label's score" if h.how == "first" else ""
    lines = [f"scores: {model_title(h.model, h.column)}{how}"]
    if not h.values:
        return lines + ["  no scores"]
    lines.append(f"  {h.values:,} rows, min {h.minimum:.4g}, mean {h.mean:.4g}, max {h.maximum:.4g}"
                 + (f", no score: {h.missing:,}" if h.missing else ""))
    largest = max(h.counts)
    for i, n in enumerate(h.counts):
        low, high = h.edges[i], h.edges[i + 1]
        marks = [t.text() for t in h.thresholds if low <= t.value < high or (i == len(h.counts) - 1 and t.value == high)]
        mark = f"  <- keep: {', '.join(marks)}" if marks else ""
        lines.append(f"  [{low:>9.4g}, {high:>9.4g}{']' if i == len(h.counts) - 1 else ')'} {n:>10,}  {_bar(n, largest)}{mark}")
    if h.passing is not None:
        lines.append(f"  pass {', '.join(t.text() for t in h.thresholds)}: {h.passing:,} of {h.values:,} "
                     f"({100 * h.passing / h.values:.1f}%)")
    return lines


def format_errors(r: OutputReport) -> list[str]:
    if not r.errors:
        return ["errors: none"]
    scope = "" if r.errors_complete else f" (first {r.error_rows_read:,} error rows read)"
    lines = [f"errors: {sum(e.count for e in r.errors):,} rows{scope}"]
    for e in r.errors[:MAX_REASONS]:
        examples = f"  e.g. {', '.join(e.examples)}" if e.examples else ""
        lines.append(f"  {e.count:>10,}  {e.reason}{examples}")
    if len(r.errors) > MAX_REASONS:
        lines.append(f"  ... {len(r.errors) - MAX_REASONS} more reasons")
    return lines


def format_stages(r: OutputReport) -> list[str]:
    if not r.stages:
        return ["stages: not recorded"]
    lines = ["stages (seconds summed over actors/tasks; rows per stage-second)"]
    for s in r.stages:
        rate = f"{s.rows_per_s:>12,.1f} rows/s" if s.rows_per_s is not None else ""
        lines.append(f"  {s.stage:<10} {s.seconds:>10.2f} s  {rate}")
    if r.wall_s is not None:
        whole = f"  whole run  {r.wall_s:>10.2f} s"
        if r.rows_per_s is not None:
            whole += f"  {r.rows_per_s:>12,.1f} rows/s"
        if r.tokens_per_s:
            whole += f", {r.tokens_per_s:,.0f} tokens/s"
        lines.append(whole)
    return lines


def format_report(r: OutputReport) -> str:
    sections = [format_counts(r)]
    sections += [format_labels(d) for d in r.labels]
    sections += [format_histogram(h) for h in r.scores]
    sections += [format_errors(r), format_stages(r)]
    return "\n\n".join("\n".join(s) for s in sections)
