"""Greedy decoding of a decoder-only LLM: ours vs transformers, same weights, token-identical outputs.

Weights are random, built and saved by transformers, loaded by ours; fp32. Ours and transformers run
alternately, medians are printed side by side (wall time, the median of per-pair ratios, and process
CPU time, which a machine shared with other processes disturbs less; with `--threads 1` it is the
work done); the first (warm-up) call of each is printed on its own line as the fixed start-up cost.

- `--shape llama` (default; `--batch` ignored): a Llama (hidden 512, 6 layers, GQA 8/2 heads, vocab
  8,000); 8 prompts of 48 tokens, half left-padded to 28, 32 new tokens, no eos: `generate` vs
  `generate`.
- `--shape qwen2 --batch 1`: a Qwen2 (hidden 512, 4 layers, GQA 8/2 heads, vocab 32,000); one
  32-token prompt, `--new-tokens` (default 64) new tokens, no eos: `generate` vs `generate`.
- `--shape qwen2 --batch 32`: the same Qwen2 on 32 prompts of mixed lengths (8-96 tokens) up to
  `--new-tokens` (default 48) new tokens with per-row stops: eos is a set of tokens that the rows'
  own greedy continuations reach at different steps (picked from the warm-up run), as a real batch
  job's rows end at different lengths. Ours: `stream_generate` (continuous batching, finished rows
  leave, max_batch_size 32); transformers: `generate` on the 32 prompts left-padded together (rows
  that finished keep decoding padding until the last one ends). Tokens/s counts real tokens only
  (up to and including each row's eos).

    .venv/bin/python benchmarks/bench_generate_llm.py [--shape llama|qwen2] [--batch 1|32]
        [--repeats 3] [--threads 2] [--new-tokens N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch


def _llama(transformers):
    return transformers.LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
                                    num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
                                    pad_token_id=0)


def _qwen2(transformers):
    return transformers.Qwen2Config(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                                    num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                                    pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


def _cut_at_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens


def _pick_stops(continuations: list[list[int]], rows: int) -> set[int]:
    """Tokens that end the rows at spread-out steps: for row i, the token it generates at a step spread
    over [6, len) (the earliest-reached token wins where several rows share one)."""
    stops: set[int] = set()
    for i, tokens in enumerate(continuations):
        if i % 4 == 3:  # a quarter of the rows run to the length limit (unless another row's stop hits them)
            continue
        step = 6 + (i * 7) % max(1, len(tokens) - 6)
        stops.add(tokens[step])
    return stops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["llama", "qwen2"], default="llama")
    parser.add_argument("--batch", type=int, choices=[1, 32], default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=None)
    args = parser.parse_args()

    import transformers

    from rayformers.models import AutoModelForCausalLM
    from rayformers.models.generation import stream_generate

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    config = _llama(transformers) if args.shape == "llama" else _qwen2(transformers)
    torch.manual_seed(0)
    reference = transformers.AutoModelForCausalLM.from_config(config).eval()
    with tempfile.TemporaryDirectory() as path:
        reference.save_pretrained(path)
        ours = AutoModelForCausalLM.from_pretrained(path)
    g = torch.Generator().manual_seed(0)
    vocab = config.vocab_size

    if args.shape == "llama" or args.batch == 1:
        if args.shape == "llama":
            new_tokens = args.new_tokens or 32
            input_ids = torch.randint(3, vocab, (8, 48), generator=g)
            mask = torch.ones_like(input_ids)
            mask[::2, :20] = 0
            input_ids[mask == 0] = 0
        else:
            new_tokens = args.new_tokens or 64
            input_ids = torch.randint(3, vocab, (1, 32), generator=g)
            mask = torch.ones_like(input_ids)
        settings = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)

        def run_reference():
            out = reference.generate(input_ids=input_ids, attention_mask=mask, **settings)
            return out[:, input_ids.shape[1]:].tolist()

        def run_ours():
            out = ours.generate(input_ids=input_ids, attention_mask=mask, **settings)
            return out[:, input_ids.shape[1]:].tolist()

        count = lambda outputs: sum(len(x) for x in outputs)  # noqa: E731
        what = f"{input_ids.shape[0]} x {input_ids.shape[1]}-token prompt(s), {new_tokens} new tokens, no eos"
        warm_up = None
    else:
        new_tokens = args.new_tokens or 48
        lengths = [8 + (i * 37) % 89 for i in range(32)]  # 8..96 tokens, mixed
        prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]
        width = max(lengths)
        input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        # Warm-up and stop picking: every row's continuation without eos.
        start = time.perf_counter()
        with torch.inference_mode():
            free = reference.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=new_tokens,
                                      do_sample=False, pad_token_id=0, eos_token_id=None)[:, width:].tolist()
        warm_up = {"transformers": time.perf_counter() - start}
        stops = _pick_stops(free, len(prompts))
        eos = sorted(stops)
        settings = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=eos)

        def run_reference():
            out = reference.generate(input_ids=input_ids, attention_mask=mask, **settings)[:, width:].tolist()
            return [_cut_at_eos(row, stops) for row in out]

        def run_ours():
            results = dict(stream_generate(ours, list(enumerate(prompts)), max_batch_size=32, **settings))
            return [list(results[i]) for i in range(len(prompts))]

        count = lambda outputs: sum(len(x) for x in outputs)  # noqa: E731
        what = (f"32 prompts of {min(lengths)}-{max(lengths)} tokens, up to {new_tokens} new tokens, "
                f"{len(eos)} stop tokens")

    def timed(fn):
        start, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            out = fn()
        cpu_seconds[0] = time.process_time() - cpu
        return time.perf_counter() - start, out

    cpu_seconds = [0.0]

    first_ref, expected = timed(run_reference)
    first_ours, actual = timed(run_ours)
    if warm_up is not None:
        first_ref = warm_up["transformers"]
    assert actual == expected, "outputs differ"
    times = {"transformers": [], "ours": []}
    cpu = {"transformers": [], "ours": []}
    for _ in range(args.repeats):
        seconds, expected = timed(run_reference)
        times["transformers"].append(seconds)
        cpu["transformers"].append(cpu_seconds[0])
        seconds, actual = timed(run_ours)
        times["ours"].append(seconds)
        cpu["ours"].append(cpu_seconds[0])
        assert actual == expected, "outputs differ"
    tokens = count(expected)
    ref, mine = statistics.median(times["transformers"]), statistics.median(times["ours"])
    label = args.shape if args.shape == "llama" else f"qwen2 batch {args.batch}"
    print(f"{label}: {what}; {tokens} generated tokens; token-identical per row")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, "
          f"{args.repeats} alternating runs, load average {os.getloadavg()[0]:.1f}")
    note = " (transformers: its eos-free run that picks the stops)" if warm_up is not None else ""
    print(f"start-up (first call){note}: transformers {first_ref:.2f} s  ours {first_ours:.2f} s")
    print(f"transformers {ref:.2f} s ({tokens / ref:.0f} tok/s)  ours {mine:.2f} s ({tokens / mine:.0f} tok/s)  "
          f"ours vs transformers {ref / mine:.2f}x   (runs: transformers "
          f"{', '.join(f'{t:.2f}' for t in times['transformers'])}; ours {', '.join(f'{t:.2f}' for t in times['ours'])})")
    pairs = statistics.median(r / o for r, o in zip(times["transformers"], times["ours"]))
    ref_cpu, our_cpu = statistics.median(cpu["transformers"]), statistics.median(cpu["ours"])
    print(f"median of per-pair ratios {pairs:.2f}x; process CPU time (less sensitive to other processes): "
          f"transformers {ref_cpu:.2f} s  ours {our_cpu:.2f} s  ours vs transformers {ref_cpu / our_cpu:.2f}x")


if __name__ == "__main__":
    main()
