"""Prefix caching: is prefilling a shared system prompt once per batch
(and reusing its KV cache for every row) faster than prefilling each row's whole prompt?

A Qwen2-shaped model (hidden 512, 4 layers, GQA 8/2 heads, vocab 32,000; random weights, fp32, CPU),
`--rows` prompts that all start with the same `--prefix` tokens (a chat template's system prompt)
followed by each row's own 16-64 tokens (the user text and the assistant header). Timed:

- "whole prompts": `DecoderOnlyRows.prefill` of the rows with `share_prefix=False` (prompts of
  similar length prefilled together, left-padded, each forward over the whole prompt);
- "prefix once": the same with `share_prefix=True` (the engine's default): one forward over the
  prefix alone (1 row), its cache expanded to every row, then the rows' own tokens on top of it and
  the padding moved to the left; each row's last logits equal the whole-prompt prefill's (checked).

Both are prefill only; the decode steps after it cost the same either way (the same cache length),
so the end-to-end gain for a job is the prefill gain times prefill's share of the job, which is
printed too for `--new-tokens` greedy steps (the decode time is measured on the same rows). Last,
the whole job through `stream_generate` (all rows admitted at once, `--new-tokens` greedy tokens, no
eos) with `share_prefix` False and True, outputs compared.

    .venv/bin/python benchmarks/bench_prefix_cache.py [--rows 32] [--prefix 48] [--repeats 5] [--threads 2]

Wall and process CPU time are both printed: on a machine shared with other jobs wall time swings
several-fold between runs, and with `--threads 1` the CPU time is the work done.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--prefix", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import transformers

    from rayformers.models import AutoModelForCausalLM
    from rayformers.models.generation.continuous_causal import DecoderOnlyRows, _RowLimits
    from rayformers.models.generation.continuous_inputs import _Input
    from rayformers.models.generation.utils import prepare_decoding

    transformers.logging.set_verbosity_error()
    config = transformers.Qwen2Config(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as path:
        transformers.Qwen2ForCausalLM(config).save_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()

    rng = random.Random(0)
    prefix = [rng.randrange(3, 32000) for _ in range(args.prefix)]
    suffixes = sorted(([rng.randrange(3, 32000) for _ in range(rng.randrange(16, 65))] for _ in range(args.rows)),
                      key=len, reverse=True)
    group = [_Input(i, i, prefix + s) for i, s in enumerate(suffixes)]
    cfg, _, _ = prepare_decoding(model, None, None, {"max_new_tokens": args.new_tokens})
    limits = _RowLimits(model, cfg, {"max_new_tokens": args.new_tokens})
    plain = DecoderOnlyRows(model, limits, pad_id=0, nrs=1, device=torch.device("cpu"), share_prefix=False)
    sharing = DecoderOnlyRows(model, limits, pad_id=0, nrs=1, device=torch.device("cpu"), share_prefix=True)

    def whole():
        session, logits, _, _ = plain.prefill(group)
        return session, logits

    def prefix_once():
        session, logits, _, _ = sharing.prefill(group)
        return session, logits

    def decode(session, logits):
        tokens = logits.argmax(-1, keepdim=True)
        for _ in range(args.new_tokens - 1):
            tokens = session.step(tokens).argmax(-1, keepdim=True)

    with torch.inference_mode():
        reference = whole()[1]
        got = prefix_once()[1]
        assert sharing.stats.get("shared_prefix_tokens") == args.prefix, sharing.stats
        difference = (reference - got).abs().max().item()
        assert torch.equal(reference.argmax(-1), got.argmax(-1)), "prefix-cached prefill changed a greedy token"
        times = {"whole prompts": [], "prefix once": [], "decode": []}
        cpu = {name: [] for name in times}

        def timed(name, fn, *fn_args):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn(*fn_args)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)

        for _ in range(args.repeats):
            timed("whole prompts", whole)
            timed("prefix once", prefix_once)
            timed("decode", decode, *whole())
        from rayformers.models.generation import stream_generate

        inputs = [(x.key, x.ids) for x in group]
        jobs = {True: [], False: []}
        outputs = {}
        for _ in range(args.repeats):
            for share in (False, True):
                start_cpu = time.process_time()
                outputs[share] = dict(stream_generate(model, iter(inputs), max_batch_size=args.rows, share_prefix=share,
                                                      max_new_tokens=args.new_tokens, eos_token_id=None))
                jobs[share].append(time.process_time() - start_cpu)
        assert outputs[True] == outputs[False], "prefix sharing changed an output"
    tokens = sum(len(x.ids) for x in group)
    print(f"{args.rows} rows, shared prefix {args.prefix} tokens, suffixes 16-64 ({tokens} prompt tokens), "
          f"{args.threads} threads, {args.repeats} runs, max |logit difference| {difference:.2e}")
    for label, table in (("wall", times), ("cpu", cpu)):
        med = {name: statistics.median(v) for name, v in table.items()}
        print(f"{label}: " + ", ".join(f"{name} {value:.3f} s" for name, value in med.items()))
        gain = med["whole prompts"] - med["prefix once"]
        job = med["whole prompts"] + med["decode"]
        print(f"{label}: prefill prefix once / whole prompts = {med['prefix once'] / med['whole prompts']:.2f}x; "
              f"a {args.new_tokens}-token job (prefill + decode) saves {100 * gain / job:.1f}%")
    off, on = statistics.median(jobs[False]), statistics.median(jobs[True])
    print(f"stream_generate, {args.new_tokens} new tokens, cpu: share_prefix=False {off:.3f} s, True {on:.3f} s "
          f"({on / off:.2f}x), outputs identical")


if __name__ == "__main__":
    main()
