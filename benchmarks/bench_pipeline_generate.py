"""The pipeline's ``generate`` task vs the Ray-docs pattern, same Parquet, same model, one run.

    .venv/bin/python benchmarks/bench_pipeline_generate.py [--rows 512] [--new-tokens 32]

Model: a BART with random weights at a distilbart-like shape (d_model 512, 3+3 layers; no
seq2seq weights can be downloaded here) speaking MiniLM's WordPiece vocabulary; greedy decoding
of ``--new-tokens`` tokens per row, with eos suppressed until ``min_new_tokens`` so every row does
the same work in both arms. Inputs: mixed-length English texts (truncated at 128 tokens).

* ours: ``rayformers.pipeline.run`` with task ``generate`` (tokenizer actor, one model actor,
  length-sorted continuous batching of ``--max-batch`` rows, staged write), fp32, or bf16 when
  this CPU computes bf16 natively (detected, never assumed; ``--dtype`` forces one).
* docs: Ray's batch-inference docs pattern: ``read_parquet`` → ``map_batches`` with a callable
  class holding transformers' ``BartForConditionalGeneration`` + tokenizer, batches of 16 rows
  in file order padded to their longest, ``generate``, ``batch_decode`` → ``write_parquet``.

Both arms end to end (job wall time incl. actor start-up, read and write), and the outputs are
compared row by row (identical text expected in fp32). Start-up is reported on its own line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent / ".bench" / "pipeline_generate"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))


def build_model(path: Path) -> Path:
    import torch
    import transformers

    from model_test_utils import with_minilm_tokenizer

    torch.manual_seed(0)
    cfg = transformers.BartConfig(
        vocab_size=30522, d_model=512, encoder_layers=3, decoder_layers=3, encoder_attention_heads=8,
        decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=256,
        pad_token_id=0, bos_token_id=101, eos_token_id=102, decoder_start_token_id=102, forced_bos_token_id=None,
        forced_eos_token_id=None,
    )
    transformers.BartForConditionalGeneration(cfg).eval().save_pretrained(path)
    return with_minilm_tokenizer(path)


class DocsGenerator:
    """The Ray-docs pattern: a callable class holding the HF model, batches of 16 in file order."""

    def __init__(self, model_path: str, new_tokens: int, dtype: str):
        import torch
        from transformers import AutoTokenizer, BartForConditionalGeneration

        torch.set_num_threads(2)
        self.tok = AutoTokenizer.from_pretrained(model_path)
        self.model = BartForConditionalGeneration.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
        self.kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=1, do_sample=False)

    def __call__(self, batch: dict) -> dict:
        import torch

        enc = self.tok(list(batch["text"]), padding=True, truncation=True, max_length=128, return_tensors="pt",
                       return_token_type_ids=False)
        with torch.inference_mode():
            out = self.model.generate(**enc, **self.kwargs)
        batch["generated_text"] = self.tok.batch_decode(out, skip_special_tokens=True)
        return batch


def run_docs(inp: Path, out: Path, model_path: str, new_tokens: int, dtype: str) -> tuple[float, dict]:
    import pyarrow.parquet as pq
    import ray

    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    ds = ray.data.read_parquet(str(inp)).map_batches(
        DocsGenerator, fn_constructor_args=(model_path, new_tokens, dtype), concurrency=1, batch_size=16,
        batch_format="numpy", num_cpus=1,
    )
    ds.write_parquet(str(out))
    wall = time.perf_counter() - t0
    table = pq.read_table(out)
    return wall, dict(zip(table.column("text").to_pylist(), table.column("generated_text").to_pylist()))


def run_ours(inp: Path, out: Path, model_path: str, new_tokens: int, dtype: str, max_batch: int):
    from rayformers.pipeline import read_output, run

    report = run({
        "input": {"path": str(inp)},
        "model": {"path": model_path, "task": "generate", "dtype": dtype},
        "tokenizer": {"max_length": 128},
        "task": {"generation": {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "num_beams": 1,
                                "max_batch_size": max_batch}},
        "output": {"path": str(out), "mode": "overwrite", "keep_text": True},
    })
    table = read_output(str(out))
    return report, dict(zip(table.column("text").to_pylist(), table.column("generated_text").to_pylist()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=128)
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="both arms' dtype; auto: bfloat16 where this CPU computes it natively, else float32")
    args = p.parse_args(argv)

    import ray

    from bench_pipeline import make_dataset
    from rayformers.operators.loading import cpu_has_native_bf16

    native = cpu_has_native_bf16()
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if native else "float32")
    t0 = time.perf_counter()
    ROOT.mkdir(parents=True, exist_ok=True)
    model = build_model(ROOT / "model")
    inp, _ = make_dataset(ROOT / "in", args.rows)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"start-up (checkpoint, data, Ray): {time.perf_counter() - t0:.1f} s; dtype {dtype} "
          f"({'native bf16 on this CPU' if native else 'no native bf16 on this CPU'})")

    report, ours = run_ours(inp, ROOT / "ours", str(model), args.new_tokens, dtype, args.max_batch)
    docs_wall, docs = run_docs(inp, ROOT / "docs", str(model), args.new_tokens, dtype)
    same = sum(ours[t] == docs.get(t) for t in ours)
    rows = len(ours)
    print(f"\n{rows} rows, {args.new_tokens} new tokens each (greedy), BART d_model 512 3+3 layers, 2 CPUs\n")
    print("| arm | wall | rows/s | generated tokens/s | vs docs |\n|---|---:|---:|---:|---:|")
    for name, wall in (("ours (continuous batching)", report.wall_s), ("Ray-docs HF generate, batches of 16", docs_wall)):
        print(f"| {name} | {wall:.1f} s | {rows / wall:.1f} | {rows * args.new_tokens / wall:,.0f} | "
              f"{docs_wall / wall:.2f}x |")
    print(f"\nidentical outputs: {same}/{rows} rows")
    print("ours by stage (s, summed over actors): " + ", ".join(f"{k} {v:.1f}" for k, v in report.stage_s.items()))
    return 0 if same == rows or dtype != "float32" else 1


if __name__ == "__main__":
    sys.exit(main())
