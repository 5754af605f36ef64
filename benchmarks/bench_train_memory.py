"""Peak host memory per training worker under DDP, FSDP2 and gradient checkpointing (CPU, gloo).

    python benchmarks/bench_train_memory.py [--hidden 768] [--layers 6] [--batch 8] [--seq 128] [--steps 3]

Each variant runs in a fresh pair of processes (peak RSS is a per-process high-water mark): two
gloo ranks build the same random BERT token classifier, wrap it as ``rayformers train`` does
(``_wrap_model``), run ``--steps`` AdamW steps on random tokens, then report their peak RSS and
the seconds per step. Printed as a Markdown table (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

VARIANTS = [
    ("ddp", "ddp", "float32", False),
    ("ddp + checkpointing", "ddp", "float32", True),
    ("fsdp float32", "fsdp", "float32", False),
    ("fsdp bf16 compute (auto)", "fsdp", "auto", False),
    ("fsdp + checkpointing", "fsdp", "float32", True),
]


def worker(rank: int, world: int, init_file: str, model_dir: str, out: str, variant: tuple, args: dict) -> None:
    import contextlib

    import torch.distributed as dist

    from rayformers.jobs import strategies
    from rayformers.jobs.train_loop import _optimizer_step, _wrap_model, lr_lambda, make_optimizer
    from rayformers.models import AutoModelForTokenClassification
    from test_train_helpers import worker_spec

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    _, strategy, dtype, checkpointing = variant
    device = torch.device("cpu")
    model = AutoModelForTokenClassification.from_pretrained(model_dir)
    model.train()
    spec = worker_spec("token-classify", world_size=world, strategy=strategy, fsdp_param_dtype=dtype,
                       gradient_checkpointing=checkpointing, accumulation=1)
    wrapped = _wrap_model(model, spec, device, world, rank, torch.nn.parallel.DistributedDataParallel)
    optimizer = make_optimizer(model, spec)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("constant", 0, 1))
    torch.manual_seed(rank)
    ids = torch.randint(1000, 20000, (args["batch"], args["seq"]))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 9, ids.shape)}
    times = []
    for _ in range(args["steps"]):
        start = time.perf_counter()
        _optimizer_step(wrapped, model, optimizer, scheduler, [batch], spec, contextlib.nullcontext(), world, device)
        times.append(time.perf_counter() - start)
    memory = strategies.memory_metrics(device)
    dist.barrier()
    del wrapped
    dist.destroy_process_group()
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"peak_rss_mb": memory["peak_rss_mb"], "step_s": min(times[1:] or times),
                   "dtype": str(strategies.fsdp_param_dtype(dtype, device))}, f)


def main() -> None:
    import torch.multiprocessing as mp
    import transformers

    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    args = vars(parser.parse_args())
    with tempfile.TemporaryDirectory() as tmp:
        cfg = transformers.BertConfig(hidden_size=args["hidden"], num_hidden_layers=args["layers"],
                                      num_attention_heads=args["hidden"] // 64, intermediate_size=4 * args["hidden"],
                                      num_labels=9)
        model = transformers.BertForTokenClassification(cfg)
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(f"{tmp}/model")
        del model
        print(f"BERT token classifier: {params / 1e6:.1f}M parameters, 2 gloo workers, batch {args['batch']} x "
              f"{args['seq']} tokens per worker, torch {torch.__version__}")
        print("| variant | peak RSS rank 0 (MB) | peak RSS rank 1 (MB) | s/step | compute dtype |")
        print("|---|---:|---:|---:|---|")
        for i, variant in enumerate(VARIANTS):
            out = f"{tmp}/v{i}"
            os.makedirs(out)
            mp.spawn(worker, args=(2, f"{tmp}/pg{i}", f"{tmp}/model", out, variant, args), nprocs=2)
            r = [json.load(open(f"{out}/rank{k}.json")) for k in range(2)]
            print(f"| {variant[0]} | {r[0]['peak_rss_mb']:.0f} | {r[1]['peak_rss_mb']:.0f} | "
                  f"{max(x['step_s'] for x in r):.2f} | {r[0]['dtype']} |", flush=True)


if __name__ == "__main__":
    main()
