"""The pipeline's ``generate`` task vs the Ray-docs pattern, same Parquet, same model, one run.

    .venv/bin/python benchmarks/bench_pipeline_generate.py [--rows 512] [--new-tokens 32]
    .venv/bin/python benchmarks/bench_pipeline_generate.py --case instruct [--rows 512] [--new-tokens 32]

``--case summarise`` (default):

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

``--case instruct``: a chat-templated instruct job. Model: a Qwen2 with random weights (hidden 256,
4 layers, 4 query / 2 KV heads) and a byte-level BPE tokenizer trained on the benchmark's words,
with Qwen2.5's chat template. Each row is the prompt ``[system, user: "Summarise: {text}"]``;
greedy decoding of exactly ``--new-tokens`` tokens (eos suppressed until then) in both arms.

* ours: ``task.messages`` (rendered and tokenized in the tokenizer actors), continuous batching.
* docs: ``map_batches`` with transformers' ``apply_chat_template`` then ``generate`` on batches of
  16 rows (left-padded), the continuation decoded.
* ours + JSON schema: the same job with ``task.json_schema`` (one string property with a
  ``minLength`` no 32-token answer reaches, so every row still generates ``--new-tokens`` tokens
  and the two runs of ours do the same work): the mask's cost in generated tokens/s. Whole jobs
  include actor start-up, so the mask's own cost is also timed in the model layer alone: the first
  ``--mask-rows`` prompts through ``stream_generate`` with and without it, alternated ``--repeats``
  times, best of each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
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


INSTRUCT_MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "Summarise: {text}"}]
LONG_JSON = {"type": "object", "properties": {"summary": {"type": "string", "minLength": 400}},
             "required": ["summary"], "additionalProperties": False}


def build_instruct_model(path: Path, texts: list[str]) -> Path:
    """A random Qwen2 with a byte-level BPE tokenizer (trained on `texts`) and Qwen2.5's template."""
    import json

    import torch
    import transformers
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from test_llm_tokenizers import QWEN2_PATTERN

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=2000, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    tok.save(str(path / "tokenizer.json"))
    template = (HERE.parent / "tests" / "data" / "chat_templates" / "qwen2.5.jinja").read_text(encoding="utf-8")
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "padding_side": "left", "model_input_names": ["input_ids", "attention_mask"], "chat_template": template}))
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.05,
        pad_token_id=tok.token_to_id("<|endoftext|>"), eos_token_id=tok.token_to_id("<|im_end|>"), bos_token_id=None)
    transformers.Qwen2ForCausalLM(cfg).eval().save_pretrained(path)
    return path


class DocsInstruct:
    """The Ray-docs pattern for an instruct model: chat template, then HF generate, batches of 16."""

    def __init__(self, model_path: str, new_tokens: int, dtype: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(2)
        self.tok = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
        self.kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=1, do_sample=False)

    def __call__(self, batch: dict) -> dict:
        import torch

        chats = [[{"role": m["role"], "content": m["content"].format(text=t)} for m in INSTRUCT_MESSAGES]
                 for t in batch["text"]]
        prompts = self.tok.apply_chat_template(chats, add_generation_prompt=True, tokenize=False)
        enc = self.tok(prompts, padding=True, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(**enc, **self.kwargs)
        batch["generated_text"] = self.tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return batch


def run_docs_instruct(inp: Path, out: Path, model_path: str, new_tokens: int, dtype: str) -> tuple[float, dict]:
    import pyarrow.parquet as pq
    import ray

    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    ds = ray.data.read_parquet(str(inp)).map_batches(
        DocsInstruct, fn_constructor_args=(model_path, new_tokens, dtype), concurrency=1, batch_size=16,
        batch_format="numpy", num_cpus=1,
    )
    ds.write_parquet(str(out))
    wall = time.perf_counter() - t0
    table = pq.read_table(out)
    return wall, dict(zip(table.column("text").to_pylist(), table.column("generated_text").to_pylist()))


def run_ours_instruct(inp: Path, out: Path, model_path: str, new_tokens: int, dtype: str, max_batch: int,
                      json_schema: dict | None = None):
    from rayformers.pipeline import read_output, run

    generation = {"max_new_tokens": new_tokens, "num_beams": 1, "do_sample": False, "max_batch_size": max_batch}
    task = {"messages": INSTRUCT_MESSAGES, "generation": generation}
    if json_schema is None:
        generation["min_new_tokens"] = new_tokens
    else:
        task["json_schema"] = json_schema
    report = run({
        "input": {"path": str(inp)},
        "model": {"path": model_path, "task": "generate", "dtype": dtype},
        "task": task,
        "output": {"path": str(out), "mode": "overwrite", "keep_text": True},
    })
    table = read_output(str(out))
    texts = dict(zip(table.column("text").to_pylist(), table.column("generated_text").to_pylist()))
    return report, texts, sum(table.column("num_generated_tokens").to_pylist())


def mask_cost(model_path: Path, texts: list[str], new_tokens: int, max_batch: int, dtype: str,
              repeats: int) -> tuple[float, float]:
    """The JSON-schema mask's cost inside the model layer alone (no Ray, no start-up): the same prompts
    through `stream_generate` with and without the constraint, alternated `repeats` times; the best
    time of each (seconds). Both generate `new_tokens` per row (LONG_JSON cannot end sooner)."""
    import torch
    import transformers

    from rayformers.models import AutoModelForCausalLM
    from rayformers.models.generation import stream_generate
    from rayformers.models.generation.constraints import TokenConstraint

    torch.set_num_threads(2)
    tok = transformers.AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
    prompts = [(i, tok.apply_chat_template([{"role": m["role"], "content": m["content"].format(text=t)}
                                            for m in INSTRUCT_MESSAGES], add_generation_prompt=True, tokenize=True))
               for i, t in enumerate(texts)]
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    constraint = TokenConstraint.build("json_schema", LONG_JSON, tok, model.config.vocab_size, eos)
    best = {"plain": float("inf"), "masked": float("inf")}
    for _ in range(repeats):
        for name, extra in (("plain", {"min_new_tokens": new_tokens}), ("masked", {"constraint": constraint})):
            t0 = time.perf_counter()
            out = dict(stream_generate(model, prompts, max_new_tokens=new_tokens, do_sample=False,
                                       max_batch_size=max_batch, **extra))
            best[name] = min(best[name], time.perf_counter() - t0)
            assert all(len(ids) == new_tokens for ids in out.values()), name
    return best["plain"], best["masked"]


def main_instruct(args, dtype: str, native: bool) -> int:
    import pyarrow.parquet as pq
    import ray

    from bench_pipeline import make_dataset

    t0 = time.perf_counter()
    root = ROOT.parent / "pipeline_generate_instruct"
    root.mkdir(parents=True, exist_ok=True)
    inp, _ = make_dataset(root / "in", args.rows)
    texts = pq.read_table(inp).column("text").to_pylist()
    model = build_instruct_model(root / "model", texts)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"start-up (checkpoint, data, Ray): {time.perf_counter() - t0:.1f} s; dtype {dtype} "
          f"({'native bf16 on this CPU' if native else 'no native bf16 on this CPU'})")
    report, ours, ours_tokens = run_ours_instruct(inp, root / "ours", str(model), args.new_tokens, dtype,
                                                  args.max_batch)
    docs_wall, docs = run_docs_instruct(inp, root / "docs", str(model), args.new_tokens, dtype)
    masked, masked_texts, masked_tokens = run_ours_instruct(inp, root / "ours_json", str(model), args.new_tokens,
                                                            dtype, args.max_batch, LONG_JSON)
    same = sum(ours[t] == docs.get(t) for t in ours)
    rows = len(ours)
    print(f"\n{rows} rows, chat template, {args.new_tokens} new tokens each (greedy), Qwen2 hidden 256 4 layers, "
          "2 CPUs\n")
    print("| arm | wall | rows/s | generated tokens/s | vs docs |\n|---|---:|---:|---:|---:|")
    arms = (("ours (task.messages, continuous batching)", report.wall_s, ours_tokens),
            ("Ray-docs apply_chat_template + HF generate, batches of 16", docs_wall, rows * args.new_tokens),
            ("ours + task.json_schema mask", masked.wall_s, masked_tokens))
    for name, wall, tokens in arms:
        print(f"| {name} | {wall:.1f} s | {rows / wall:.1f} | {tokens / wall:,.0f} | {docs_wall / wall:.2f}x |")
    head = '{"summary": "'
    valid = sum(t.startswith(head) or head.startswith(t) for t in masked_texts.values())
    model_s, masked_model_s = report.stage_s.get("model", 0.0), masked.stage_s.get("model", 0.0)
    print(f"\nidentical outputs (ours vs docs): {same}/{rows} rows")
    print(f"JSON-schema mask: {masked_tokens} tokens generated ({valid}/{rows} rows a prefix the schema allows); "
          f"generated tokens/s, model stage: {ours_tokens / model_s:,.0f} unmasked, {masked_tokens / masked_model_s:,.0f} "
          f"masked ({1 - (masked_tokens / masked_model_s) / (ours_tokens / model_s):+.1%} cost); whole job: "
          f"{1 - (masked_tokens / masked.wall_s) / (ours_tokens / report.wall_s):+.1%} cost")
    print("ours by stage (s, summed over actors): " + ", ".join(f"{k} {v:.1f}" for k, v in report.stage_s.items()))
    ray.shutdown()
    # In a fresh process with the model actors' OpenMP settings (passive waits, 2 threads): this
    # driver's OpenMP runtime already spins, which on a shared machine times the load, not the mask.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    subprocess.run([sys.executable, __file__, "--mask-only", "--rows", str(args.mask_rows), "--new-tokens",
                    str(args.new_tokens), "--max-batch", str(args.max_batch), "--dtype", dtype, "--repeats",
                    str(args.repeats)], env=env, check=True)
    return 0 if same == rows or dtype != "float32" else 1


def main_mask_only(args) -> int:
    import pyarrow.parquet as pq

    root = ROOT.parent / "pipeline_generate_instruct"
    sample = pq.read_table(root / "in").column("text").to_pylist()[: args.rows]
    plain_s, masked_s = mask_cost(root / "model", sample, args.new_tokens, args.max_batch, args.dtype, args.repeats)
    tokens = len(sample) * args.new_tokens
    print(f"\nJSON-schema mask inside the model layer (stream_generate, {len(sample)} prompts x {args.new_tokens} "
          f"tokens, best of {args.repeats}): {tokens / plain_s:,.0f} tokens/s unmasked ({plain_s:.2f} s), "
          f"{tokens / masked_s:,.0f} masked ({masked_s:.2f} s): cost {1 - plain_s / masked_s:.1%} of tokens/s")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=("summarise", "instruct"), default="summarise")
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--mask-rows", type=int, default=128, help="instruct: prompts of the model-layer mask timing")
    p.add_argument("--repeats", type=int, default=3, help="instruct: alternated runs of the mask timing")
    p.add_argument("--mask-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=128)
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="both arms' dtype; auto: bfloat16 where this CPU computes it natively, else float32 "
                        "(instruct: float32)")
    args = p.parse_args(argv)
    if args.mask_only:
        return main_mask_only(args)

    import ray

    from bench_pipeline import make_dataset
    from rayformers.operators.loading import cpu_has_native_bf16

    native = cpu_has_native_bf16()
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if native else "float32")
    if args.case == "instruct":
        # Identical outputs are the point of this case: bf16 in two implementations splits near-ties
        # of a random model's logits differently, so auto means float32 here.
        dtype = "float32" if args.dtype == "auto" else dtype
        return main_instruct(args, dtype, native)
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
