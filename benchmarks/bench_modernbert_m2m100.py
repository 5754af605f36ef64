"""Forward speed of ModernBERT and M2M100 (NLLB architecture), ours vs transformers, same weights.

Random weights in base-sized shapes are built by transformers, saved to a temporary directory and
loaded by both. Every measure is the median of `--repeats` runs, ours and transformers alternating
so machine load hits both alike; outputs are checked equal. Prints a table with ratios.

- ModernBERT-base shape (22 layers, hidden 768, GeGLU 1152, window 128, vocab 50368): mixed-length
  rows (16 to --max-length tokens, past the 128-token sliding window), batches of 8, once length-sorted
  (as the pipeline batches) and once in arrival order (much padding). The padded fraction of each
  layout is printed: it bounds what an unpadded (varlen) path could save.
- M2M100 in a BART-base-like shape (6+6 layers, d_model 768, FFN 3072, vocab 32000; NLLB-600M is
  1024 / 12+12 / 256k): teacher-forced forward of padded batches of 8, and greedy generate.

    .venv/bin/python benchmarks/bench_modernbert_m2m100.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

import torch


def median_pair(ours_fn, ref_fn, repeats: int) -> tuple[float, float]:
    ours, ref = [], []
    for _ in range(repeats):
        for fn, times in ((ours_fn, ours), (ref_fn, ref)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(ours), statistics.median(ref)


def padded_batches(lengths: list[int], batch_size: int, vocab: int, pad: int, seed: int = 0):
    rng = random.Random(seed)
    batches = []
    for start in range(0, len(lengths), batch_size):
        group = lengths[start:start + batch_size]
        width = max(group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, n in enumerate(group):
            ids[row, :n] = torch.tensor([rng.randrange(5, vocab) for _ in range(n)])
            mask[row, :n] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def padding_fraction(batches) -> float:
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    total = sum(b["attention_mask"].numel() for b in batches)
    return 1 - real / total


def row(name: str, tokens: int, ours_s: float, ref_s: float, note: str = "") -> None:
    print(f"| {name} | {tokens / ref_s:,.0f} | {tokens / ours_s:,.0f} | {ref_s / ours_s:.2f}x | {note} |", flush=True)


def bench_modernbert(args, transformers) -> None:
    from rayformers.models import AutoModel

    config = transformers.ModernBertConfig(reference_compile=False)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as path:
        transformers.ModernBertModel(config).save_pretrained(path)
        ref = transformers.ModernBertModel.from_pretrained(path, attn_implementation="sdpa").eval()
        ours = AutoModel.from_pretrained(path)
    rng = random.Random(1)
    lengths = [rng.randint(16, args.max_length) for _ in range(args.rows)]
    layouts = {"length-sorted": sorted(lengths, reverse=True), "arrival order": lengths}
    for layout, ordered in layouts.items():
        batches = padded_batches(ordered, 8, config.vocab_size, config.pad_token_id)
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)

        def run(model, batches=batches):
            with torch.inference_mode():
                return [model(**b).last_hidden_state for b in batches]

        got, want = run(ours), run(ref)
        diff = max(((g - w).abs() * b["attention_mask"][..., None]).max().item()
                   for g, w, b in zip(got, want, batches))
        ours_s, ref_s = median_pair(lambda: run(ours), lambda: run(ref), args.repeats)
        row(f"ModernBERT-base, {layout}, bs8", tokens, ours_s, ref_s,
            f"padding {padding_fraction(batches):.0%}, max diff {diff:.1e}")


def bench_m2m100(args, transformers) -> None:
    from rayformers.models import AutoModelForSeq2SeqLM

    config = transformers.M2M100Config(vocab_size=32000, d_model=768, encoder_layers=6, decoder_layers=6,
                                       encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                                       decoder_ffn_dim=3072)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as path:
        transformers.M2M100ForConditionalGeneration(config).save_pretrained(path)
        ref = transformers.M2M100ForConditionalGeneration.from_pretrained(path).eval()
        ours = AutoModelForSeq2SeqLM.from_pretrained(path)
    rng = random.Random(2)
    lengths = sorted((rng.randint(8, 128) for _ in range(args.rows)), reverse=True)
    batches = padded_batches(lengths, 8, config.vocab_size, config.pad_token_id)
    for b in batches:
        b["decoder_input_ids"] = b["input_ids"][:, :32].clone()
        b["decoder_input_ids"][:, 0] = config.decoder_start_token_id
    tokens = sum(int(b["attention_mask"].sum()) + b["decoder_input_ids"].numel() for b in batches)

    def run(model):
        with torch.inference_mode():
            return [model(**b, use_cache=False).logits for b in batches]

    diff = max((g - w).abs().max().item() for g, w in zip(run(ours), run(ref)))
    ours_s, ref_s = median_pair(lambda: run(ours), lambda: run(ref), args.repeats)
    row("M2M100 (6+6, d768), teacher-forced fwd, bs8", tokens, ours_s, ref_s, f"max diff {diff:.1e}")

    source = batches[0]
    settings = dict(max_new_tokens=24, min_new_tokens=24, num_beams=1, do_sample=False)
    with torch.inference_mode():
        same = torch.equal(ours.generate(**{k: source[k] for k in ("input_ids", "attention_mask")}, **settings),
                           ref.generate(**{k: source[k] for k in ("input_ids", "attention_mask")}, **settings))

    def generate(model):
        with torch.inference_mode():
            model.generate(input_ids=source["input_ids"], attention_mask=source["attention_mask"], **settings)

    ours_s, ref_s = median_pair(lambda: generate(ours), lambda: generate(ref), args.repeats)
    row("M2M100 greedy generate, 24 new tokens, bs8", 24 * source["input_ids"].shape[0], ours_s, ref_s,
        f"token-identical: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=16, help="rows per workload (batches of 8)")
    parser.add_argument("--max-length", type=int, default=384, help="longest ModernBERT row (window: 128)")
    parser.add_argument("--only", choices=("modernbert", "m2m100"), help="run one family")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import transformers

    transformers.logging.set_verbosity_error()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, "
          f"fp32, median of {args.repeats}, load average {os.getloadavg()[0]:.1f}", flush=True)
    print("| workload | transformers tok/s | rayformers tok/s | ours vs transformers | notes |")
    print("|---|---:|---:|---:|---|")
    if args.only != "m2m100":
        bench_modernbert(args, transformers)
    if args.only != "modernbert":
        bench_m2m100(args, transformers)


if __name__ == "__main__":
    main()
