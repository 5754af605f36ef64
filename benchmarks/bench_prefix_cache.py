"""Prefix caching, measured before building it: is prefilling a shared system prompt once per batch
(and reusing its KV cache for every row) faster than prefilling each row's whole prompt?

A Qwen2-shaped model (hidden 512, 4 layers, GQA 8/2 heads, vocab 32,000; random weights, fp32, CPU),
`--rows` prompts that all start with the same `--prefix` tokens (a chat template's system prompt)
followed by each row's own 16-64 tokens (the user text and the assistant header). Timed:

- "whole prompts": what the engine does today: `DecoderOnlyRows.prefill` of the rows (prompts of
  similar length prefilled together, left-padded, each forward over the whole prompt);
- "prefix once": one forward over the prefix alone (1 row), its cache repeated for every row, then
  one forward over the rows' suffixes (left-padded among themselves) on top of it; the attention
  mask marks the padding between prefix and suffix, positions come from the mask, so each row's last
  logits equal the whole-prompt prefill's (checked).

Both are prefill only; the decode steps after it cost the same either way (the same cache length),
so the end-to-end gain for a job is the prefill gain times prefill's share of the job, which is
printed too for `--new-tokens` greedy steps (the decode time is measured on the same rows).

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
    from rayformers.models.generation.causal_session import CausalSession
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
    strategy = DecoderOnlyRows(model, _RowLimits(model, cfg, {"max_new_tokens": args.new_tokens}), pad_id=0, nrs=1,
                               device=torch.device("cpu"))

    def whole():
        session, logits, _, _ = strategy.prefill(group)
        return session, logits

    def prefix_once():
        head = CausalSession(model, torch.ones(1, len(prefix), dtype=torch.long))
        head.step(torch.tensor([prefix]))
        width = max(len(s) for s in suffixes)
        ids = torch.tensor([[0] * (width - len(s)) + s for s in suffixes])
        mask = torch.tensor([[1] * len(prefix) + [0] * (width - len(s)) + [1] * len(s) for s in suffixes])
        past = tuple(tuple(t.expand(len(suffixes), *t.shape[1:]) for t in layer) for layer in head.past_key_values)
        session = CausalSession(model, mask)
        logits, session.past_key_values = session._forward(ids, mask, past)
        return session, logits

    def decode(session, logits):
        tokens = logits.argmax(-1, keepdim=True)
        for _ in range(args.new_tokens - 1):
            tokens = session.step(tokens).argmax(-1, keepdim=True)

    with torch.inference_mode():
        reference = whole()[1]
        got = prefix_once()[1]
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


if __name__ == "__main__":
    main()
