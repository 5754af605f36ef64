"""Decoder-only generation throughput: rayformers vs transformers 4.57.6 on a BERT-family causal head.

A `BertLMHeadModel` (or `RobertaForCausalLM`) with random weights in BERT-base shapes (12 layers,
hidden 768, vocabulary 30522) is built and saved by transformers (nothing is downloaded); ours loads
the checkpoint, so both run identical weights. Prompts are a LEFT-padded batch of mixed lengths
(16..64 tokens). The first table forces exactly `new` new tokens (min_new_tokens = max_new_tokens),
so both libraries decode the same amount: it measures the engine. The second lets rows stop at
spread-out steps (a stop set of token ids used as eos, chosen from the forced outputs) and adds our
`stream_generate`, whose finished rows leave and whose free slots are refilled from the next prompts.
Outputs are checked token-identical (stream: each continuation equals the row's own generate).

    python benchmarks/bench_generate_causal.py            # full tables (a few minutes on 2 idle cores)
    python benchmarks/bench_generate_causal.py --quick    # small batches, few tokens: a smoke run

Tokens/s counts new tokens (returned sequences x new tokens, or tokens actually produced up to and
including the stop token) per wall second; CPU-time ratios are steadier on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
import transformers

from bench_generate import stop_set, timed
from rayformers.models import AutoModelForCausalLM
from rayformers.models.generation import stream_generate
from rayformers.models.generation.continuous_causal import _continuation

transformers.logging.set_verbosity_error()

SHAPES = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
              intermediate_size=3072, max_position_embeddings=512, is_decoder=True)
HEADS = {
    "bert-base": (transformers.BertLMHeadModel, transformers.BertConfig(**SHAPES, pad_token_id=0)),
    "roberta-base": (transformers.RobertaForCausalLM, transformers.RobertaConfig(
        **{**SHAPES, "vocab_size": 50265, "max_position_embeddings": 514}, pad_token_id=1, bos_token_id=0,
        eos_token_id=2)),
}


def build(name, directory):
    cls, config = HEADS[name]
    torch.manual_seed(0)
    reference = cls(config).eval()
    reference.save_pretrained(directory)
    return reference, AutoModelForCausalLM.from_pretrained(directory)


def prompts(count: int, vocab: int, pad: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` left-padded prompts of 16..64 tokens."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, 65, (count,), generator=g)
    width = int(lengths.max())
    input_ids = torch.randint(3, vocab, (count, width), generator=g)
    mask = (torch.arange(width)[None, :] >= (width - lengths)[:, None]).long()
    return input_ids.masked_fill(mask == 0, pad), mask


def forced(reference, ours, settings, batch, new_tokens):
    input_ids, mask = prompts(batch, reference.config.vocab_size, reference.config.pad_token_id, seed=1)
    kwargs = dict(attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
                  **settings)
    with torch.inference_mode():
        ours.generate(input_ids[:1, -8:], max_new_tokens=2)  # warm-up (allocator, kernels)
        torch.manual_seed(7)  # sampling: both draw from the same generator state
        expected, t_ref, c_ref = timed(lambda: reference.generate(input_ids, **kwargs))
        torch.manual_seed(7)
        got, t_ours, c_ours = timed(lambda: ours.generate(input_ids, **kwargs))
    produced = got.shape[0] * new_tokens
    return produced / t_ref, produced / t_ours, c_ref / c_ours, torch.equal(got, expected), (t_ref, t_ours)


def variable(reference, ours, batch, new_tokens):
    count = 2 * batch
    pad = reference.config.pad_token_id
    input_ids, mask = prompts(count, reference.config.vocab_size, pad, seed=2)
    chunks = [(input_ids[i:i + batch], mask[i:i + batch]) for i in range(0, count, batch)]
    width = input_ids.shape[1]
    with torch.inference_mode():  # calibration, not timed: the unstopped outputs
        free = [ours.generate(c, attention_mask=m, max_new_tokens=new_tokens, no_repeat_ngram_size=1,
                              eos_token_id=None) for c, m in chunks]
    stops = stop_set([row[width - 1:] for c in free for row in c.tolist()], new_tokens)
    kwargs = dict(max_new_tokens=new_tokens, no_repeat_ngram_size=1, eos_token_id=stops)
    with torch.inference_mode():
        expected, t_ref, c_ref = timed(lambda: [reference.generate(c, attention_mask=m, **kwargs) for c, m in chunks])
        got, t_gen, c_gen = timed(lambda: [ours.generate(c, attention_mask=m, **kwargs) for c, m in chunks])
    expected_rows = [_continuation(r, width, stops) for c in expected for r in c.tolist()]
    got_rows = [_continuation(r, width, stops) for c in got for r in c.tolist()]
    inputs = [(i, input_ids[i, mask[i] == 1].tolist()) for i in range(count)]
    streamed, t_stream, c_stream = timed(lambda: dict(stream_generate(ours, inputs, max_batch_size=batch, **kwargs)))
    with torch.inference_mode():  # the stream's reference: each prompt alone (not timed)
        alone = [_continuation(ours.generate(torch.tensor([ids]), **kwargs)[0].tolist(), len(ids), stops)
                 for _, ids in inputs]
    identical = expected_rows == got_rows and [streamed[i] for i in range(count)] == alone
    lengths = [len(r) for r in expected_rows]
    produced = sum(lengths)
    stats = f"{min(lengths)}/{produced / len(lengths):.1f}/{max(lengths)}"
    return (count, stats, produced / t_ref, produced / t_gen, produced / t_stream, c_ref / c_gen, c_ref / c_stream,
            identical)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 4/2 and 8 new tokens")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--models", default="bert-base")
    parser.add_argument("--skip-variable", action="store_true", help="only the forced-length table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    new_tokens = 8 if args.quick else 32
    scenarios = [("greedy", 4 if args.quick else 16, dict(num_beams=1)),
                 ("beam4", 2 if args.quick else 4, dict(num_beams=4)),
                 ("sample-top-k", 4 if args.quick else 16, dict(do_sample=True, top_k=50))]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load average at start {os.getloadavg()[0]:.1f}")
    print(f"left-padded prompts of 16..64 tokens -> {new_tokens} new tokens, fp32, CPU\n")
    rows, variable_rows, all_identical = [], [], True
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as directory:
            reference, ours = build(name, directory)
            for scenario, batch, settings in scenarios:
                ref_tps, ours_tps, cpu_ratio, identical, walls = forced(reference, ours, settings, batch, new_tokens)
                all_identical &= identical
                rows.append((name, f"{scenario} bs{batch}", ref_tps, ours_tps, cpu_ratio, identical))
                print(f"  {name} {scenario} bs{batch}: transformers {walls[0]:.1f}s, ours {walls[1]:.1f}s, "
                      f"identical={identical}", flush=True)
            if not args.skip_variable:
                variable_rows.append((name,) + variable(reference, ours, 4 if args.quick else 16, new_tokens))
                all_identical &= variable_rows[-1][-1]
    print()
    print("| model | setting | transformers tok/s | rayformers tok/s | speed-up (wall) | speed-up (CPU time) "
          "| outputs identical |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, setting, ref_tps, ours_tps, cpu_ratio, identical in rows:
        print(f"| {name} | {setting} | {ref_tps:.1f} | {ours_tps:.1f} | {ours_tps / ref_tps:.2f}x | {cpu_ratio:.2f}x "
              f"| {identical} |")
    if variable_rows:
        print("\nVariable output lengths (greedy, stop set chosen so rows stop at spread-out steps):\n")
        print("| model | prompts | new tokens min/mean/max | transformers generate tok/s | rayformers generate tok/s "
              "(wall / CPU speed-up) | rayformers stream_generate tok/s (wall / CPU speed-up) | outputs identical |")
        print("|---|---:|---|---:|---:|---:|---|")
        for name, n, stats, ref_tps, gen_tps, stream_tps, gen_cpu, stream_cpu, identical in variable_rows:
            print(f"| {name} | {n} | {stats} | {ref_tps:.1f} | {gen_tps:.1f} ({gen_tps / ref_tps:.2f}x / "
                  f"{gen_cpu:.2f}x) | {stream_tps:.1f} ({stream_tps / ref_tps:.2f}x / {stream_cpu:.2f}x) "
                  f"| {identical} |")
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")
    return 0 if all_identical else 1


if __name__ == "__main__":
    sys.exit(main())
