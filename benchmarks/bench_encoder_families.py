"""Forward speed of encoder families, ours vs transformers, at base-model shapes with random weights.

Both models hold the same weights (transformers builds the model, ours loads its state dict 1:1),
see the same padded batches (row lengths drawn from `--min-len`..`--seq`, padding in every batch)
and run under `inference_mode`; each measure is the median of `--repeats` timed passes over all
batches after one warm-up pass, ours and transformers alternating within each repeat. Prints
real (non-padding) tokens per second and the ratio.

    .venv/bin/python benchmarks/bench_encoder_families.py [--families deberta-v3-base mpnet-base]
        [--batch-size 8] [--seq 128] [--batches 4] [--repeats 5] [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

# name -> (transformers config class, its arguments, model class prefix, our module)
FAMILIES = {
    "deberta-v3-base": ("DebertaV2Config", dict(
        vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=512, relative_attention=True, pos_att_type="p2c|c2p", position_buckets=256,
        max_relative_positions=-1, share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
        type_vocab_size=0, layer_norm_eps=1e-7), "DebertaV2", "deberta_v2"),
    "mpnet-base": ("MPNetConfig", dict(vocab_size=30527), "MPNet", "mpnet"),
}


def interleaved_medians(fns, repeats: int, device: str) -> list[float]:
    """Median seconds of each function, timed in turn within every repeat so that a load change on a
    shared machine hits all of them alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def make_batches(n: int, batch_size: int, seq: int, min_len: int, pad_id: int, vocab: int, device: str):
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n):
        lengths = torch.randint(min_len, seq + 1, (batch_size,), generator=generator)
        lengths[0] = seq  # every batch is padded to the full length
        ids = torch.randint(3, vocab, (batch_size, seq), generator=generator)
        mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
        ids = ids.masked_fill(mask == 0, pad_id)
        batches.append({"input_ids": ids.to(device), "attention_mask": mask.to(device)})
    return batches


def bench_family(name: str, args) -> tuple[float, float, float]:
    import importlib

    import transformers

    config_name, config_args, prefix, module = FAMILIES[name]
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    ref_config = getattr(transformers, config_name)(**config_args)
    ref = getattr(transformers, f"{prefix}Model")(ref_config).eval()
    ours_module = importlib.import_module(f"rayformers.models.{module}")
    ours = getattr(ours_module, f"{prefix}Model")(getattr(ours_module, config_name)(**config_args)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref, ours = ref.to(args.device, dtype), ours.to(args.device, dtype)
    batches = make_batches(args.batches, args.batch_size, args.seq, args.min_len, ref_config.pad_token_id,
                           ref_config.vocab_size, args.device)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)

    def run(model):
        with torch.inference_mode():
            for batch in batches:
                model(**batch)

    run(ours), run(ref)  # warm up
    ours_s, ref_s = interleaved_medians([lambda: run(ours), lambda: run(ref)], args.repeats, args.device)
    with torch.inference_mode():
        b = batches[0]
        keep = b["attention_mask"].bool()
        diff = (ours(**b).last_hidden_state[keep].float() - ref(**b).last_hidden_state[keep].float()).abs().max()
    return tokens / ours_s, tokens / ref_s, float(diff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--min-len", type=int, default=16)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, {args.dtype}, {args.batches} batches of {args.batch_size} x "
          f"{args.seq} (rows {args.min_len}..{args.seq} tokens), median of {args.repeats}")
    print(f"{'family':18} {'ours tok/s':>11} {'transformers':>13} {'ours/ref':>9} {'max |diff|':>11}")
    for name in args.families:
        ours_tps, ref_tps, diff = bench_family(name, args)
        print(f"{name:18} {ours_tps:11.0f} {ref_tps:13.0f} {ours_tps / ref_tps:8.2f}x {diff:11.2e}", flush=True)


if __name__ == "__main__":
    main()
