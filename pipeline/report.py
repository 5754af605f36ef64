"""The final report of a job: what was scored, how fast, where the time went."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class JobReport:
    """Returned by :func:`rayformers.pipeline.run` and printed by ``rayformers run``."""

    status: str
    """``succeeded``, ``already-complete`` or ``error-budget-exceeded``."""
    output_path: str
    rows: int
    """Rows in the output (all of them, including rows written by an earlier, resumed attempt)."""
    errors: int
    """Rows with an error record."""
    rows_scored: int
    """Rows processed by this run (``rows`` minus rows resumed from an earlier attempt)."""
    rows_resumed: int
    tokens: int
    """Tokens fed to the model by this run (after truncation)."""
    wall_s: float
    stage_s: dict = field(default_factory=dict)
    """Seconds spent per stage, summed over actors/tasks (tokenize, model, write), plus ``plan``
    (the wall time of the Ray execution) and ``finalize`` (checks, manifest, publish)."""
    duplicates_removed: int = 0
    checks: dict = field(default_factory=dict)
    """Checks run before scoring, e.g. ``quantization``: agreement with float32 on a sample."""
    manifest_path: Optional[str] = None
    message: str = ""
    model_dtype: Optional[str] = None
    """The precision the model actors computed in (``model.dtype`` resolved for their device)."""
    dropped: int = 0
    """Rows an ``output.keep`` rule dropped (not in ``rows``; with ``rows`` they are the input)."""
    keep: Optional[str] = None
    """The keep rule (``output.keep``), if any."""

    @property
    def rows_per_s(self) -> float:
        return self.rows_scored / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def error_fraction(self) -> float:
        return self.errors / self.rows if self.rows else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(rows_per_s=self.rows_per_s, tokens_per_s=self.tokens_per_s, error_fraction=self.error_fraction)
        return d

    def format(self) -> str:
        lines = [
            f"status        {self.status}",
            f"output        {self.output_path}",
            f"rows          {self.rows} ({self.rows_scored} scored now, {self.rows_resumed} from an earlier attempt)",
            f"errors        {self.errors} ({100 * self.error_fraction:.2f}%)",
            f"throughput    {self.rows_per_s:.1f} rows/s, {self.tokens_per_s:.0f} tokens/s",
            f"wall time     {self.wall_s:.2f} s",
        ]
        if self.keep is not None:
            lines.append(f"keep          {self.rows - self.errors} kept, {self.dropped} dropped, {self.errors} errors "
                         f"(kept if: {self.keep})")
        if self.model_dtype:
            lines.append(f"model dtype   {self.model_dtype}")
        if self.stage_s:
            stages = ", ".join(f"{k} {v:.2f}s" for k, v in self.stage_s.items())
            lines.append(f"stages        {stages}")
        for name, c in self.checks.items():
            if "agreement" in c:
                lines.append(f"{name:<13} {c.get('quantization', '')}: {c['metric']} with float32 {c['agreement']:.4f} "
                             f"on {c['rows']} sampled rows")
        if self.duplicates_removed:
            lines.append(f"deduplicated  {self.duplicates_removed} rows written twice by retried tasks")
        if self.manifest_path:
            lines.append(f"manifest      {self.manifest_path}")
        if self.message:
            lines.append(self.message)
        return "\n".join(lines)
