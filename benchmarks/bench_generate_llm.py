"""Greedy `generate` of a Llama-shaped decoder: ours vs transformers, same weights, same left-padded batch.

A random Llama (hidden 512, 6 layers, GQA 8/2 heads, vocab 8,000; ~25M parameters) built and saved
by transformers, loaded by ours; 8 prompts of 48 tokens, half of them left-padded to 28, 32 new
tokens, fp32, no eos (every row runs to the end). Alternating runs, median; the outputs must be
token-identical.

    .venv/bin/python benchmarks/bench_generate_llm.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    import transformers

    from rayformers.models import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    config = transformers.LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
                                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
                                      pad_token_id=0)
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as path:
        reference.save_pretrained(path)
        ours = AutoModelForCausalLM.from_pretrained(path)
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, config.vocab_size, (8, 48), generator=g)
    mask = torch.ones_like(input_ids)
    mask[::2, :20] = 0
    input_ids[mask == 0] = 0
    settings = dict(max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)

    def run(model):
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=mask, **settings)
        return time.perf_counter() - start, out.tolist()

    run(reference), run(ours)  # warm-up
    times = {"transformers": [], "ours": []}
    for _ in range(args.repeats):
        seconds, expected = run(reference)
        times["transformers"].append(seconds)
        seconds, actual = run(ours)
        times["ours"].append(seconds)
        assert actual == expected, "outputs differ"
    new_tokens = input_ids.shape[0] * args.new_tokens
    ref, mine = statistics.median(times["transformers"]), statistics.median(times["ours"])
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} alternating runs, token-identical")
    print(f"transformers {ref:.2f} s ({new_tokens / ref:.0f} new tok/s)  ours {mine:.2f} s "
          f"({new_tokens / mine:.0f} new tok/s)  ours vs transformers {ref / mine:.2f}x")


if __name__ == "__main__":
    main()
