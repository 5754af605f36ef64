"""An :class:`~.output_report.OutputReport` as one self-contained HTML page (``--html``).

Everything is inline: the style sheet, the plots (:mod:`.svg_plots`), the tables. Nothing is
fetched from elsewhere (no script, font, image or style sheet address), so the file opens the
same offline, on a cluster without internet access or as an attachment.
"""

from __future__ import annotations

from html import escape
from typing import Optional

from .output_report import OutputReport
from .report_text import MAX_LABELS, MAX_REASONS, model_title
from .svg_plots import bar_chart, histogram_chart

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 60em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
svg text { font-size: 12px; font-family: sans-serif; }
.note { color: #666; }
"""


def _n(value: Optional[int]) -> str:
    return "n/a" if value is None else f"{value:,}"


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _counts_section(r: OutputReport) -> str:
    rows = [["input rows", _n(r.input_rows)], ["output rows", _n(r.output_rows)], ["error rows", _n(r.error_rows)]]
    rows.append(["keep rule", f"<code>{escape(r.keep)}</code>" if r.keep else "none (every scored row is in the output)"])
    if r.keep or r.kept_rows is not None or r.dropped_rows is not None:
        rows += [["kept rows", _n(r.kept_rows)], ["dropped rows", _n(r.dropped_rows)]]
    models = [[escape(m.name or "-"), escape(m.task), escape(m.model_type or ""),
               escape(", ".join(m.prediction_columns))] for m in r.models]
    sample = (f"{r.sampled_rows:,} of {r.total_rows:,} rows (random row groups)" if r.sampled
              else f"all {r.total_rows:,} rows")
    return ('<h2>Rows</h2><div id="counts">' + _table(["", ""], rows) + "</div>"
            + "<h2>Models</h2>" + _table(["name", "task", "model type", "prediction columns"], models)
            + f'<p class="note">Label and score figures from {sample}.</p>')


def _label_section(r: OutputReport) -> str:
    if not r.labels:
        return ""
    parts = ["<h2>Label distributions</h2>"]
    for d in r.labels:
        shown = d.counts[:MAX_LABELS]
        rest = d.counts[MAX_LABELS:]
        parts.append(f"<h3>{escape(model_title(d.model, d.column))}</h3>")
        parts.append(bar_chart(d.column, shown))
        notes = []
        if rest:
            notes.append(f"{len(rest)} more labels, {sum(n for _, n in rest):,} rows")
        if d.missing:
            notes.append(f"no label: {d.missing:,} rows")
        if notes:
            parts.append(f'<p class="note">{escape("; ".join(notes))}</p>')
    return "".join(parts)


def _score_section(r: OutputReport) -> str:
    if not r.scores:
        return ""
    parts = ["<h2>Score histograms</h2>"]
    for h in r.scores:
        parts.append(f"<h3>{escape(model_title(h.model, h.column))}</h3>")
        parts.append(histogram_chart(h.column, h.edges, h.counts, [(t.op, t.value) for t in h.thresholds]))
        if h.values:
            line = (f"{h.values:,} rows, min {h.minimum:.4g}, mean {h.mean:.4g}, max {h.maximum:.4g}"
                    + (f"; no score: {h.missing:,}" if h.missing else ""))
            if h.passing is not None:
                rule = ", ".join(t.text() for t in h.thresholds)
                line += f"; pass {rule}: {h.passing:,} ({100 * h.passing / h.values:.1f}%)"
            parts.append(f'<p class="note">{escape(line)}</p>')
    return "".join(parts)


def _error_section(r: OutputReport) -> str:
    if not r.errors:
        return '<h2>Errors</h2><p id="errors">none</p>'
    scope = "" if r.errors_complete else f" (first {r.error_rows_read:,} error rows read)"
    rows = [[f"{e.count:,}", escape(e.reason), escape(", ".join(e.examples))] for e in r.errors[:MAX_REASONS]]
    more = f'<p class="note">{len(r.errors) - MAX_REASONS} more reasons</p>' if len(r.errors) > MAX_REASONS else ""
    return (f"<h2>Errors{escape(scope)}</h2><div id=\"errors\">"
            + _table(["rows", "reason", "example ids"], rows, numeric={0}) + "</div>" + more)


def _stage_section(r: OutputReport) -> str:
    if not r.stages:
        return "<h2>Stages</h2><p>not recorded</p>"
    rows = [[escape(s.stage), f"{s.seconds:.2f}", "" if s.rows_per_s is None else f"{s.rows_per_s:,.1f}"] for s in r.stages]
    if r.wall_s is not None:
        rows.append(["whole run (wall)", f"{r.wall_s:.2f}", "" if r.rows_per_s is None else f"{r.rows_per_s:,.1f}"])
    return ('<h2>Stages</h2><p class="note">Seconds summed over the actors and tasks of each stage; '
            "rows scored per stage-second.</p>"
            + _table(["stage", "seconds", "rows/s"], rows, numeric={1, 2}))


def render_html(r: OutputReport) -> str:
    """The whole page as one string."""
    title = f"rayformers report: {r.path}"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1><p>status {escape(r.status)}"
        + (f", published {escape(r.created_at)}" if r.created_at else "") + "</p>"
        + _counts_section(r) + _label_section(r) + _score_section(r) + _error_section(r) + _stage_section(r)
        + "</body></html>\n"
    )


def write_html(r: OutputReport, path: str) -> None:
    """Write the page to a local file (next to a ``.tmp`` first, so a reader never sees half)."""
    import os

    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(render_html(r))
    os.replace(tmp, path)
