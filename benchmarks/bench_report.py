"""Cost of ``rayformers report`` on a big published output: sampled vs read whole.

Writes a synthetic published output (``--rows`` rows in ``--files`` Parquet files, row groups of
``--row-group`` rows: an id, a text column that the report never reads, a regression score, a
topic label, one error row in 2,000) with a manifest naming two models and a keep rule, then
times ``read_output_report`` at each ``--sample`` size in a fresh process and reports its wall
time and peak resident memory (``VmHWM`` of the child: ``ru_maxrss`` would carry over the
high-water mark of the parent that wrote the data, across ``fork``/``exec``).

    python benchmarks/bench_report.py --rows 2000000 --samples 100000 2000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TOPICS = ["science", "health", "sports", "news", "finance", "travel", "food", "tech"]


def write_output(path: str, rows: int, files: int, row_group: int) -> None:
    os.makedirs(path)
    rng = np.random.default_rng(0)
    per = rows // files
    listed = []
    for k in range(files):
        n = per if k < files - 1 else rows - per * (files - 1)
        errors = np.full(n, None, dtype=object)
        errors[rng.integers(0, n, size=max(1, n // 2000))] = "text: text is empty"
        ok = np.array([e is None for e in errors])
        score = np.where(ok, rng.normal(2.5, 1.0, n), np.nan)
        topic = np.array(TOPICS, dtype=object)[rng.integers(0, len(TOPICS), n)]
        table = pa.table({
            "id": pa.array([f"f{k}:{i}" for i in range(n)]),
            "text": pa.array(["lorem ipsum dolor sit amet " * 20] * n),
            "quality_score": pa.array(score, pa.float32(), mask=~ok),
            "topic_label": pa.array(np.where(ok, topic, None)),
            "error": pa.array(errors, pa.string()),
        })
        name = f"part-{k:04d}.parquet"
        pq.write_table(table, os.path.join(path, name), row_group_size=row_group)
        listed.append({"path": name, "rows": n, "errors": int((~ok).sum())})
    manifest = {
        "format": "rayformers-output/1", "status": "succeeded", "input_rows": rows, "output_rows": rows,
        "error_rows": sum(f["errors"] for f in listed), "id_column": "id", "output_files": listed,
        "keep": "quality_score >= 3", "kept_rows": None, "dropped_rows": None,
        "models": [{"name": "quality", "task": "classify", "model_type": "bert", "prediction_columns": ["quality_score"]},
                   {"name": "topic", "task": "classify", "model_type": "bert", "prediction_columns": ["topic_label"]}],
    }
    with open(os.path.join(path, "_manifest.json"), "w") as f:
        json.dump(manifest, f)
    open(os.path.join(path, "_SUCCESS"), "w").close()


PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])"

CHILD = """
import sys, time
from rayformers.pipeline.output_report import read_output_report
start = time.perf_counter()
r = read_output_report(sys.argv[1], sample_rows=int(sys.argv[2]))
wall = time.perf_counter() - start
print(wall, r.sampled_rows, sum(e.count for e in r.errors), """ + PEAK + """)
"""

WHOLE = """
import sys, time
import pyarrow.parquet as pq
start = time.perf_counter()
t = pq.read_table(sys.argv[1])
print(time.perf_counter() - start, t.num_rows, """ + PEAK + """)
"""
"""For contrast: the whole output read into memory at once (every column), what the report avoids."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--files", type=int, default=20)
    p.add_argument("--row-group", type=int, default=16384)
    p.add_argument("--samples", type=int, nargs="+", default=[100_000, 2_000_000])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        start = time.perf_counter()
        write_output(out, args.rows, args.files, args.row_group)
        size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
        print(f"output: {args.rows:,} rows, {args.files} files, {size / 2**20:.0f} MiB, written in "
              f"{time.perf_counter() - start:.1f} s")
        print("| --sample | rows read | error rows read | wall | peak RSS |")
        print("|---:|---:|---:|---:|---:|")
        for sample in args.samples:
            res = subprocess.run([sys.executable, "-c", CHILD, out, str(sample)], check=True, capture_output=True, text=True)
            wall, rows, errors, rss_kb = res.stdout.split()
            print(f"| {sample:,} | {int(rows):,} | {int(errors):,} | {float(wall):.2f} s | {int(rss_kb) / 1024:.0f} MiB |")
        res = subprocess.run([sys.executable, "-c", WHOLE, out], check=True, capture_output=True, text=True)
        wall, rows, rss_kb = res.stdout.split()
        print(f"| pq.read_table (all columns) | {int(rows):,} | | {float(wall):.2f} s | {int(rss_kb) / 1024:.0f} MiB |")


if __name__ == "__main__":
    main()
