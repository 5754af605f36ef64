"""Loading a sharded bf16 LLM checkpoint: `from_pretrained` vs a raw safetensors read of its shards.

The checkpoint is a random Llama-shaped model (hidden 1024, 8 layers, GQA 16/4 heads, vocab 32,000,
untied head; ~155M parameters, ~310 MB in bfloat16; `--layers 32`: ~435M, ~870 MB) written once by our `save_pretrained` as
safetensors shards of at most `--shard-mb` MB with a `model.safetensors.index.json`, under ``.bench/``.
"raw" opens every shard with `safetensors.torch.load_file` (memory-mapped: no byte is read until a
tensor is used); "ours" is `AutoModelForCausalLM.from_pretrained(path, dtype="auto")` (index resolved,
model built on the meta device, the mapped tensors assigned in place, bf16 kept, no copy). Both are
lazy, so the "+ read" rows also touch every 4 KiB page of every tensor (the bytes then really come in
from the page cache), which is what a first forward pass pays: that is the raw read the load is
compared with. "raw file read" reads every shard's bytes into memory (`read()`: what a loader that
copies instead of mapping pays, with the page cache warm a memory copy). Runs alternate and the
median is reported (a first round warms the page cache for all). With `--transformers`,
transformers' own load is timed too.

    .venv/bin/python benchmarks/bench_load.py [--repeats 7] [--shard-mb 100] [--transformers]
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import time

import safetensors.torch
import torch

SHAPE = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
             num_key_value_heads=4, max_position_embeddings=4096, tie_word_embeddings=False)


def build_checkpoint(path: str, shard_mb: int, layers: int) -> None:
    from rayformers.models import AutoModelForCausalLM, LlamaConfig

    if os.path.exists(os.path.join(path, "model.safetensors.index.json")):
        return
    model = AutoModelForCausalLM.from_config(LlamaConfig(**{**SHAPE, "num_hidden_layers": layers}), dtype=torch.bfloat16)
    model.save_pretrained(path, max_shard_size=f"{shard_mb}MB")


def touch(tensors) -> None:
    """Read one element per 4 KiB page of every tensor, so every byte is paged in."""
    total = 0.0
    for t in tensors:
        flat = t.detach().reshape(-1)
        total += float(flat[:: max(1, 4096 // t.element_size())].float().sum())


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a machine shared with other jobs the CPU time
    is the steadier measure of the work done."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    del result  # freeing the model or the tensors is not part of the load
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shard-mb", type=int, default=100)
    parser.add_argument("--layers", type=int, default=8, help="decoder layers (8: ~310 MB, 32: ~870 MB)")
    parser.add_argument("--transformers", action="store_true", help="also time transformers' from_pretrained")
    args = parser.parse_args()

    from rayformers.models import AutoModelForCausalLM

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".bench", f"llama-{args.layers}l-bf16-{args.shard_mb}mb")
    build_checkpoint(path, args.shard_mb, args.layers)
    shards = sorted(glob.glob(os.path.join(path, "model-*.safetensors")))
    size_mb = sum(os.path.getsize(s) for s in shards) / 1e6

    def raw():
        tensors = {}
        for shard in shards:
            tensors.update(safetensors.torch.load_file(shard, device="cpu"))
        return tensors

    def ours():
        return AutoModelForCausalLM.from_pretrained(path, dtype="auto")

    model = ours()
    assert model.dtype == torch.bfloat16, model.dtype
    assert not any(p.is_meta for p in model.parameters())
    del model

    def file_read():
        data = []
        for shard in shards:
            with open(shard, "rb") as f:
                data.append(f.read())
        return data

    runs = {
        "raw safetensors open": raw,
        "ours from_pretrained": ours,
        "raw open + read": lambda: touch(raw().values()),
        "ours from_pretrained + read": lambda: touch(ours().parameters()),
        "raw file read": file_read,
    }
    if args.transformers:
        import transformers

        transformers.logging.set_verbosity_error()
        runs["transformers from_pretrained"] = lambda: transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype="auto")
    times = {name: [] for name in runs}
    cpu_times = {name: [] for name in runs}
    for name, fn in runs.items():  # warm the page cache and imports once
        timed(fn)
    for _ in range(args.repeats):
        for name, fn in runs.items():
            wall, cpu = timed(fn)
            times[name].append(wall)
            cpu_times[name].append(cpu)

    baseline = {name: statistics.median(times["raw open + read" if "+ read" in name else "raw safetensors open"])
                for name in times}
    baseline["raw file read"] = statistics.median(times["raw file read"])
    print(f"checkpoint: {len(shards)} shards, {size_mb:.0f} MB bf16, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.repeats} alternating runs")
    cpu_base = {name: statistics.median(cpu_times["raw open + read" if "+ read" in name else "raw safetensors open"])
                for name in times}
    cpu_base["raw file read"] = statistics.median(cpu_times["raw file read"])
    print(f"{'':32s} {'median s':>9s} {'min s':>7s} {'vs raw':>7s} {'cpu s':>7s} {'cpu vs raw':>10s}")
    for name, values in times.items():
        median, cpu = statistics.median(values), statistics.median(cpu_times[name])
        print(f"{name:32s} {median:9.3f} {min(values):7.3f} {median / baseline[name]:6.2f}x {cpu:7.3f} "
              f"{cpu / cpu_base[name]:9.2f}x")
    ours_read = statistics.median(times["ours from_pretrained + read"])
    print(f"ours from_pretrained + read / raw file read: {ours_read / baseline['raw file read']:.2f}x wall, "
          f"{statistics.median(cpu_times['ours from_pretrained + read']) / cpu_base['raw file read']:.2f}x cpu")


if __name__ == "__main__":
    main()
