"""Generation throughput: rayformers `generate` vs transformers 4.57.6 on the same weights and inputs.

Models have the SHAPES of BART-base and T5-small with random weights built by transformers (nothing
is downloaded); transformers saves them and ours loads the checkpoint, so both run identical weights.
Each source has 128 tokens and exactly 48 new tokens are generated (min_new_tokens = max_new_tokens
= 48, so eos cannot end rows early and both libraries do the same amount of decoding: the numbers
measure the engine, not early stopping). Outputs are checked token-identical.

    python benchmarks/bench_generate.py            # full table (about 3-4 minutes on 2 idle cores)
    python benchmarks/bench_generate.py --quick    # smaller batches and fewer tokens, a smoke run

Prints new tokens per second (returned sequences x new tokens / wall time) for each library and the
ratio ours / transformers.

A second table shows what forced lengths hide: real outputs stop at different lengths. A stop set of
token ids (used as `eos_token_id`) is chosen from the forced greedy outputs so that rows stop at
spread-out steps; the same inputs then run through transformers `generate` (batches of 16, finished
rows keep being computed as padding), our `generate` (finished rows leave the batch) and our
`stream_generate` (finished rows leave and their slots are refilled from the next inputs). Tokens/s
counts the tokens actually produced (up to and including the stop token).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
import transformers

from rayformers.models import AutoModelForSeq2SeqLM
from rayformers.models.generation import stream_generate
from rayformers.models.generation.continuous import _cut_after_eos

transformers.logging.set_verbosity_error()


def bart_base_shapes():
    return transformers.BartForConditionalGeneration, transformers.BartConfig(
        vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
        decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2,
    )


def t5_small_shapes():
    return transformers.T5ForConditionalGeneration, transformers.T5Config(
        vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
        relative_attention_num_buckets=32, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )


def build(factory, directory):
    cls, config = factory()
    torch.manual_seed(0)
    reference = cls(config).eval()
    reference.save_pretrained(directory)
    ours = AutoModelForSeq2SeqLM.from_pretrained(directory)
    return reference, ours


def timed(fn):
    """(result, wall seconds, CPU seconds of this process). On a shared machine CPU time is the steadier
    measure of the work done; wall time is what a user waits."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu


def stop_set(rows: list[list[int]], new_tokens: int) -> list[int]:
    """One token id per row that occurs in no other row, taken near step 2 + r * new_tokens / rows.

    Used as the eos list, row r then stops exactly there (tokens do not repeat within a row because of
    no_repeat_ngram_size=1): a deterministic spread of output lengths from a random-weight model.
    """
    seen_in = {}
    for r, row in enumerate(rows):
        for token in row[1:]:
            seen_in.setdefault(token, set()).add(r)
    chosen = []
    for r, row in enumerate(rows):
        generated = row[1:]
        target = min(len(generated) - 1, 2 + (r * new_tokens) // max(1, len(rows)))
        for token in generated[target:]:
            if seen_in[token] == {r}:
                chosen.append(token)
                break
    return chosen


def variable_lengths(name, reference, ours, src_len, new_tokens, quick):
    batch = 4 if quick else 16
    count = 2 * batch
    vocab = reference.config.vocab_size
    g = torch.Generator().manual_seed(2)
    input_ids = torch.randint(3, vocab, (count, src_len), generator=g)
    chunks = [input_ids[i:i + batch] for i in range(0, count, batch)]
    with torch.inference_mode():  # calibration, not timed: the unstopped outputs
        free = [ours.generate(c, max_new_tokens=new_tokens, no_repeat_ngram_size=1, eos_token_id=None) for c in chunks]
    stops = stop_set([r for c in free for r in c.tolist()], new_tokens)
    kwargs = dict(max_new_tokens=new_tokens, no_repeat_ngram_size=1, eos_token_id=stops)
    with torch.inference_mode():
        expected, t_ref, c_ref = timed(lambda: [reference.generate(c, **kwargs) for c in chunks])
        got, t_gen, c_gen = timed(lambda: [ours.generate(c, **kwargs) for c in chunks])
    expected_rows = [_cut_after_eos(r, stops, 1) for c in expected for r in c.tolist()]
    got_rows = [_cut_after_eos(r, stops, 1) for c in got for r in c.tolist()]
    inputs = [(i, row.tolist()) for i, row in enumerate(input_ids)]
    streamed, t_stream, c_stream = timed(lambda: dict(stream_generate(ours, inputs, max_batch_size=batch, **kwargs)))
    stream_rows = [streamed[i] for i in range(count)]
    identical = expected_rows == got_rows == stream_rows
    lengths = [len(r) - 1 for r in expected_rows]
    produced = sum(lengths)
    stats = f"{min(lengths)}/{sum(lengths) / len(lengths):.1f}/{max(lengths)}"
    mode = "refill" if getattr(ours, "_supports_left_padded_decoder", False) else "waves"
    print(f"  {name} variable lengths x{count}: transformers {t_ref:.1f}s (cpu {c_ref:.1f}s), ours generate "
          f"{t_gen:.1f}s (cpu {c_gen:.1f}s), ours stream {t_stream:.1f}s (cpu {c_stream:.1f}s, {mode}), "
          f"identical={identical}", flush=True)
    return (name, count, stats, produced / t_ref, produced / t_gen, produced / t_stream, c_ref / c_gen,
            c_ref / c_stream, mode, identical)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 4/2 and 8 new tokens")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--models", default="bart-base,t5-small")
    parser.add_argument("--skip-variable", action="store_true", help="only the forced-length table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    src_len, new_tokens = 128, (8 if args.quick else 48)
    scenarios = [("greedy", 4 if args.quick else 16, dict(num_beams=1)),
                 ("beam4", 2 if args.quick else 8, dict(num_beams=4, length_penalty=1.0, early_stopping=False))]
    factories = {"bart-base": bart_base_shapes, "t5-small": t5_small_shapes}
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load average at start {load:.1f}")
    print(f"src {src_len} tokens -> {new_tokens} new tokens (forced), fp32, CPU\n")
    rows = []
    variable = []
    all_identical = True
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as directory:
            reference, ours = build(factories[name], directory)
            vocab = reference.config.vocab_size
            for scenario, batch, settings in scenarios:
                g = torch.Generator().manual_seed(1)
                input_ids = torch.randint(3, vocab, (batch, src_len), generator=g)
                mask = torch.ones_like(input_ids)
                kwargs = dict(attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **settings)
                with torch.inference_mode():
                    ours.generate(input_ids[:1, :16], max_new_tokens=2)  # warm-up (allocator, kernels)
                    expected, t_ref, c_ref = timed(lambda: reference.generate(input_ids, **kwargs))
                    got, t_ours, c_ours = timed(lambda: ours.generate(input_ids, **kwargs))
                identical = torch.equal(got, expected)
                all_identical &= identical
                produced = got.shape[0] * new_tokens
                rows.append((name, f"{scenario} bs{batch}", produced / t_ref, produced / t_ours, c_ref / c_ours, identical))
                print(f"  {name} {scenario} bs{batch}: transformers {t_ref:.1f}s (cpu {c_ref:.1f}s), ours {t_ours:.1f}s "
                      f"(cpu {c_ours:.1f}s), identical={identical}", flush=True)
            if not args.skip_variable:
                variable.append(variable_lengths(name, reference, ours, src_len, new_tokens, args.quick))
                all_identical &= variable[-1][-1]
    print()
    print("| model | setting | transformers tok/s | rayformers tok/s | speed-up (wall) | speed-up (CPU time) "
          "| outputs identical |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, setting, ref_tps, ours_tps, cpu_ratio, identical in rows:
        print(f"| {name} | {setting} | {ref_tps:.1f} | {ours_tps:.1f} | {ours_tps / ref_tps:.2f}x | {cpu_ratio:.2f}x "
              f"| {identical} |")
    if variable:
        print("\nVariable output lengths (greedy, stop set chosen so rows stop at spread-out steps):\n")
        print("| model | inputs | new tokens min/mean/max | transformers generate tok/s | rayformers generate tok/s "
              "(wall / CPU speed-up) | rayformers stream_generate tok/s (wall / CPU speed-up) | stream mode "
              "| outputs identical |")
        print("|---|---:|---|---:|---:|---:|---|---|")
        for name, n, stats, ref_tps, gen_tps, stream_tps, gen_cpu, stream_cpu, mode, identical in variable:
            print(f"| {name} | {n} | {stats} | {ref_tps:.1f} | {gen_tps:.1f} ({gen_tps / ref_tps:.2f}x / "
                  f"{gen_cpu:.2f}x) | {stream_tps:.1f} ({stream_tps / ref_tps:.2f}x / {stream_cpu:.2f}x) | {mode} "
                  f"| {identical} |")
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")
    return 0 if all_identical else 1


if __name__ == "__main__":
    sys.exit(main())
