"""Bar charts and histograms as inline SVG text, for a report that is one self-contained file.

Inline SVG rather than a plotting library: a report page must open anywhere (an air-gapped
cluster, an email attachment) without fetching scripts or fonts, and drawing a few bar charts
does not justify a new runtime dependency. Every mark carries its numbers as ``data-*``
attributes and a ``<title>`` (the browser's tooltip), so the page can be checked by a parser
and read without JavaScript.
"""

from __future__ import annotations

from html import escape
from typing import Sequence

WIDTH = 640
BAR_HEIGHT = 18
LABEL_WIDTH = 180
PLOT_HEIGHT = 200
MARGIN = 30
BAR_COLOUR = "#4c78a8"
THRESHOLD_COLOUR = "#d62728"


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _number(value: float) -> str:
    return f"{value:.6g}"


def bar_chart(column: str, counts: Sequence[tuple[str, int]], kind: str = "labels") -> str:
    """Horizontal bars, one per ``(label, count)``, largest first as given."""
    largest = max((n for _, n in counts), default=0) or 1
    span = WIDTH - LABEL_WIDTH - 80
    height = MARGIN + BAR_HEIGHT * max(1, len(counts)) + 10
    parts = [f'<svg class="plot" data-kind="{_attr(kind)}" '
             f'data-column="{_attr(column)}" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
             f'role="img" aria-label="{_attr(column)}">',
             f'<text x="0" y="16" font-weight="bold">{escape(column)}</text>']
    for i, (label, n) in enumerate(counts):
        y = MARGIN + i * BAR_HEIGHT
        w = span * n / largest
        parts.append(f'<text x="{LABEL_WIDTH - 6}" y="{y + 13}" text-anchor="end">{escape(_short(label))}</text>')
        parts.append(f'<rect class="bar" x="{LABEL_WIDTH}" y="{y + 2}" width="{w:.2f}" height="{BAR_HEIGHT - 4}" '
                     f'fill="{BAR_COLOUR}" data-label="{_attr(label)}" data-count="{n}">'
                     f'<title>{escape(label)}: {n}</title></rect>')
        parts.append(f'<text x="{LABEL_WIDTH + w + 4:.2f}" y="{y + 13}">{n:,}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram_chart(column: str, edges: Sequence[float], counts: Sequence[int],
                    thresholds: Sequence[tuple[str, float]] = (), kind: str = "scores") -> str:
    """Vertical bars over ``edges`` (``len(counts) + 1`` of them), with a vertical line at each
    ``(operator, value)`` threshold."""
    largest = max(counts, default=0) or 1
    low, high = edges[0], edges[-1]
    left, right, top, bottom = 50, WIDTH - 10, MARGIN, MARGIN + PLOT_HEIGHT
    height = bottom + 40

    def x_of(v: float) -> float:
        return left + (right - left) * (v - low) / (high - low)

    parts = [f'<svg class="plot" data-kind="{_attr(kind)}" '
             f'data-column="{_attr(column)}" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
             f'role="img" aria-label="{_attr(column)}">',
             f'<text x="0" y="16" font-weight="bold">{escape(column)}</text>',
             f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>',
             f'<text x="{left - 4}" y="{top + 10}" text-anchor="end">{largest:,}</text>',
             f'<text x="{left - 4}" y="{bottom}" text-anchor="end">0</text>']
    for i, n in enumerate(counts):
        x0, x1 = x_of(edges[i]), x_of(edges[i + 1])
        h = (bottom - top) * n / largest
        parts.append(f'<rect class="bin" x="{x0:.2f}" y="{bottom - h:.2f}" width="{max(0.0, x1 - x0 - 1):.2f}" '
                     f'height="{h:.2f}" fill="{BAR_COLOUR}" data-start="{_number(edges[i])}" '
                     f'data-end="{_number(edges[i + 1])}" data-count="{n}">'
                     f'<title>[{_number(edges[i])}, {_number(edges[i + 1])}): {n}</title></rect>')
    for v in (low, (low + high) / 2, high):
        parts.append(f'<text x="{x_of(v):.2f}" y="{bottom + 16}" text-anchor="middle">{_number(v)}</text>')
    for op, value in thresholds:
        x = x_of(value)
        parts.append(f'<line class="threshold" x1="{x:.2f}" y1="{top - 6}" x2="{x:.2f}" y2="{bottom}" '
                     f'stroke="{THRESHOLD_COLOUR}" stroke-width="2" stroke-dasharray="6,3" '
                     f'data-op="{_attr(op)}" data-value="{_number(value)}">'
                     f'<title>keep: {escape(column)} {escape(op)} {_number(value)}</title></line>')
        parts.append(f'<text x="{x + 4:.2f}" y="{bottom + 32}" fill="{THRESHOLD_COLOUR}">'
                     f'keep {escape(op)} {_number(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _short(label: str, limit: int = 28) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"
