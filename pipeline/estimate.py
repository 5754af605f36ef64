"""``rayformers plan job.yaml``: what a job will cost, measured on a sample, before running it.

Validates like a run (pre-flight: config, input, columns, model, tokenizer, output location;
nothing is written), reads a sample of rows spread over the input files, scores it on the
configured actor pools (the same plan as ``run()``), and extrapolates from the measured stage
times: rows, files and tokens of the whole input, rows/s and tokens/s per model and tokenizer
actor, the wall time at the configured actor counts, and how many model actors finish in a
target time. The sample is scored in at least three blocks (``compute.batch_size`` rows, or
fewer so that a small sample still makes three): the first is excluded (it pays for lazy
initialisation inside the actor) and each rate is the median of the other blocks' rates, so one
block slowed by a neighbour process does not move the estimate. Actor start-up is reported on
its own line.

Limits: the estimate assumes the sample's length distribution holds for the whole input (rows
are taken from the first row group of up to ``sample_files`` files spread over the input), and
that actors scale linearly (true until reads, the object store or the network bind).
"""

from __future__ import annotations

import math
import re
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import pyarrow as pa

from .commit import input_row_starts
from .config import ConfigError, JobConfig, load_config
from .preflight import check_cluster_cpus, preflight
from .source import sample_input

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``45s``, ``15m``, ``2h``, ``1.5d`` → seconds."""
    m = _DURATION.match(str(text))
    if not m:
        raise ConfigError(f"cannot read duration {text!r}: use e.g. 45s, 15m, 2h or 1d")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def _fmt_s(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class PlanReport:
    """What ``plan()`` measured and estimated (``format()`` prints it)."""

    input_files: int
    input_rows: int
    sample_rows: int
    sample_errors: int
    tokens_per_row: float
    estimated_tokens: int
    model_actors: int
    tokenizer_actors: int
    model_rows_per_s_per_actor: float
    model_tokens_per_s_per_actor: float
    tokenizer_rows_per_s_per_actor: float
    bottleneck: str
    estimated_wall_s: float
    startup_s: float
    target_s: Optional[float] = None
    model_actors_for_target: Optional[int] = None
    models: list = field(default_factory=list)
    """A ``models:`` job: per model ``{name, model_actors, tokenizer_actors,
    model_rows_per_s_per_actor, tokenizer_rows_per_s_per_actor, rows_per_s}`` (``rows_per_s``:
    the slower of its two pools at the configured actor counts); the job runs at the slowest
    of all pools, named in ``bottleneck``."""

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lines = [
            f"input         {self.input_rows:,} rows in {self.input_files:,} files, ~{self.estimated_tokens:,} tokens "
            f"({self.tokens_per_row:.1f} per row in the sample)",
            f"sample        {self.sample_rows} rows scored ({self.sample_errors} error records)",
            f"model actor   {self.model_rows_per_s_per_actor:,.1f} rows/s, {self.model_tokens_per_s_per_actor:,.0f} tokens/s each "
            f"(x{self.model_actors} configured)",
            f"tokenizer     {self.tokenizer_rows_per_s_per_actor:,.0f} rows/s each (x{self.tokenizer_actors} configured)",
            f"estimate      {_fmt_s(self.estimated_wall_s)} for the whole input at the configured actor counts "
            f"(bound by the {self.bottleneck})",
            f"start-up      {self.startup_s:.1f} s (actors starting, model loading; paid once per run)",
        ]
        for m in self.models:
            tok = ("the previous model's tokens" if m["tokenizer_rows_per_s_per_actor"] is None else
                   f"tokenizer {m['tokenizer_rows_per_s_per_actor']:,.0f} rows/s x{m['tokenizer_actors']}")
            lines.insert(-2, f"  {m['name']:<11} model {m['model_rows_per_s_per_actor']:,.1f} rows/s "
                             f"x{m['model_actors']}, {tok}: {m['rows_per_s']:,.1f} rows/s")
        if self.target_s is not None:
            lines.append(
                f"target        {_fmt_s(self.target_s)}: {self.model_actors_for_target} model actors "
                f"(and tokenizer actors to keep up) at the measured rate"
            )
        return "\n".join(lines)


def plan(
    config: JobConfig | dict | str | Path,
    overrides: Optional[list[str]] = None,
    *,
    target: Optional[str | float] = None,
    sample_rows: int = 512,
    sample_files: int = 8,
    ray_init_kwargs: Optional[dict] = None,
) -> PlanReport:
    """Validate a job, score a sample on its actors and estimate the whole run (nothing written)."""
    import ray

    from .processor import Processor
    from .runner import ensure_ray

    cfg = config if isinstance(config, JobConfig) and not overrides else load_config(config, overrides)
    target_s = parse_duration(target) if isinstance(target, str) else target
    job = preflight(cfg)
    ensure_ray(ray_init_kwargs)
    if job.models:
        from .multi_model import check_cluster_cpus as check_models_cpus

        check_models_cpus(job.models, float(ray.cluster_resources().get("CPU", 0)))
    else:
        check_cluster_cpus(cfg, float(ray.cluster_resources().get("CPU", 0)))
    sample = sample_input(job.input_fs, job.files, job.read_columns, cfg.input.id_column, sample_rows, sample_files)

    block = sample_block_rows(cfg.compute.block_rows(), sample.num_rows)
    sample_job = replace(job, config=replace(cfg, compute=replace(cfg.compute, batch_size=block)))
    t0 = time.perf_counter()
    scored_ds = Processor(sample_job)(ray.data.from_arrow(sample), keep_stage_times=True)
    blocks = [ray.get(ref) for ref in scored_ds.to_arrow_refs()]
    wall = time.perf_counter() - t0
    blocks = [b for b in blocks if b.num_rows]

    def stage(b: pa.Table, name: str) -> float:
        col = f"_stage_{name}_s"
        return float(sum(b.column(col).to_pylist())) if col in b.column_names else 0.0

    def input_rows(b: pa.Table) -> int:  # one output row per window with chunk_aggregate none
        return len(input_row_starts(b)) - 1

    # The first block pays for lazy initialisation inside the actors: rates come from the rest,
    # as the median of per-block rates (robust to one block slowed by a neighbour).
    steady = blocks[1:] if len(blocks) > 1 else blocks

    def median_rate(name: str) -> float:
        return statistics.median(input_rows(b) / max(stage(b, name), 1e-9) for b in steady)

    all_rows = sum(input_rows(b) for b in blocks)
    tokens_column = f"{job.models[0].name}_num_tokens" if job.models else "num_tokens"
    tokens = sum(int(sum(v or 0 for v in b.column(tokens_column).to_pylist())) for b in blocks
                 if tokens_column in b.column_names)
    errors = sum(b.num_rows - b.column("error").null_count for b in blocks if "error" in b.column_names)
    tokens_per_row = tokens / max(1, all_rows - errors)

    c = cfg.compute
    per_model = []
    if job.models:
        for m in job.models:
            mc = m.config.compute
            m_rps = median_rate(f"{m.name}_model")
            # a model reading the previous model's tokens has no tokenizer pool of its own
            t_rps = None if m.shares_tokenizer else median_rate(f"{m.name}_tokenize")
            model_total = m_rps * mc.model_max_actors
            tok_total = float("inf") if t_rps is None else t_rps * mc.tokenizer_max_actors
            per_model.append({"name": m.name, "model_actors": mc.model_max_actors,
                              "tokenizer_actors": 0 if m.shares_tokenizer else mc.tokenizer_max_actors,
                              "model_rows_per_s_per_actor": m_rps, "tokenizer_rows_per_s_per_actor": t_rps,
                              "rows_per_s": min(model_total, tok_total),
                              "bound": "model" if model_total <= tok_total else "tokenizer"})
        slowest = min(per_model, key=lambda m: m["rows_per_s"])
        c = next(m.config.compute for m in job.models if m.name == slowest["name"])
        model_rps = slowest["model_rows_per_s_per_actor"]
        tok_rps = slowest["tokenizer_rows_per_s_per_actor"] or min(
            m["tokenizer_rows_per_s_per_actor"] for m in per_model if m["tokenizer_rows_per_s_per_actor"] is not None)
        bottleneck = f"{slowest['bound']} actors of model {slowest['name']!r}"
        rate = slowest["rows_per_s"]
        names = [f"{m.name}_{k}" for m in job.models for k in ("model", "tokenize")]
    else:
        model_rps = median_rate("model")
        tok_rps = median_rate("tokenize")
        model_total, tok_total = model_rps * c.model_max_actors, tok_rps * c.tokenizer_max_actors
        bottleneck = "model actors" if model_total <= tok_total else "tokenizer actors"
        rate = min(model_total, tok_total)
        names = ["model", "tokenize"]
    work_s = sum(stage(b, n) for b in blocks for n in names)
    startup = max(0.0, wall - work_s)
    report = PlanReport(
        input_files=len(job.files),
        input_rows=job.total_rows,
        sample_rows=all_rows,
        sample_errors=errors,
        tokens_per_row=tokens_per_row,
        estimated_tokens=int(round(tokens_per_row * job.total_rows)),
        model_actors=c.model_max_actors,
        tokenizer_actors=c.tokenizer_max_actors,
        model_rows_per_s_per_actor=model_rps,
        model_tokens_per_s_per_actor=model_rps * tokens_per_row,
        tokenizer_rows_per_s_per_actor=tok_rps,
        bottleneck=bottleneck,
        estimated_wall_s=job.total_rows / rate + startup,
        startup_s=startup,
        models=per_model,
    )
    if target_s is not None:
        if target_s <= startup:
            raise ConfigError(f"target {_fmt_s(target_s)} is shorter than the measured start-up ({startup:.0f} s)")
        report.target_s = target_s
        report.model_actors_for_target = max(1, math.ceil(job.total_rows / (model_rps * (target_s - startup))))
    return report


def sample_block_rows(batch_size: int, sample_rows: int, min_blocks: int = 3) -> int:
    """Rows per block for scoring the sample: the job's block size, or smaller so the sample makes
    at least ``min_blocks`` blocks (the first is left out of the rates; the median of the rest is
    kept). A smaller block than the run's errs slow where a model's time is mostly per block."""
    return max(1, min(batch_size, math.ceil(sample_rows / min_blocks)))


__all__ = ["PlanReport", "parse_duration", "plan", "sample_block_rows"]
