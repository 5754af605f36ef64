"""Shared builders for the training tests (no tests here): tiny checkpoints and synthetic data.

Tiny models are saved by transformers (the reference) with the real all-MiniLM-L6-v2 tokenizer,
so the files are exactly what a user would bring; dropout is off so runs are bit-for-bit
comparable across worker counts.
"""

from __future__ import annotations

import contextlib
import gc
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from model_test_utils import minilm_dir, with_minilm_tokenizer  # noqa: F401 - minilm_dir re-exported
from model_test_utils import tiny_bert as shared_tiny_bert

WORDS = "the a cat dog house tree car river book table window city green blue small large".split()
POSITIVE = ("good", "great", "excellent")
NEGATIVE = ("bad", "awful", "terrible")
LETTERS = list("abcdefghij")


def tiny_bert(path: Path, hidden: int = 32, layers: int = 1, head: str = "BertModel", **config) -> str:
    """A tiny random BERT (base model, or with a head) saved by transformers."""
    return str(shared_tiny_bert(path, hidden=hidden, layers=layers, head=head, **config))


def tiny_bart(path: Path, hidden: int = 32) -> str:
    """A tiny random BART speaking MiniLM's WordPiece vocabulary ([CLS]/[SEP] as bos/eos)."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BartConfig(
        vocab_size=30522, d_model=hidden, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=2 * hidden, decoder_ffn_dim=2 * hidden,
        max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, pad_token_id=0, bos_token_id=101,
        eos_token_id=102, decoder_start_token_id=102, forced_eos_token_id=None,
    )
    transformers.BartForConditionalGeneration(cfg).save_pretrained(path)
    return str(with_minilm_tokenizer(path))


def letter_tokenizer(path: Path) -> str:
    """A word-level tokenizer over the letters a-j with BERT-style [CLS] x [SEP] framing: a
    14-token vocabulary keeps a seq2seq model small enough to learn in a test."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{c: i + 4 for i, c in enumerate(LETTERS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]", "unk_token": "[UNK]",
        "cls_token": "[CLS]", "sep_token": "[SEP]", "bos_token": "[CLS]", "eos_token": "[SEP]",
        "model_max_length": 32,
    }))
    return str(path)


def tiny_letter_bart(path: Path, hidden: int = 64) -> str:
    """A tiny random BART over :func:`letter_tokenizer`'s vocabulary."""
    import transformers

    letter_tokenizer(path)
    torch.manual_seed(0)
    cfg = transformers.BartConfig(
        vocab_size=14, d_model=hidden, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=2 * hidden, decoder_ffn_dim=2 * hidden,
        max_position_embeddings=32, dropout=0.0, attention_dropout=0.0, pad_token_id=0, bos_token_id=2,
        eos_token_id=3, decoder_start_token_id=3, forced_eos_token_id=None,
    )
    transformers.BartForConditionalGeneration(cfg).save_pretrained(path)
    return str(path)


def sentiment_rows(n: int, seed: int) -> list[dict]:
    """A learnable task: the label is decided by one keyword hidden among neutral words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["negative", "positive"])
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def reverse_rows(n: int, seed: int) -> list[dict]:
    """seq2seq: the target is the source letters in reverse order."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        letters = [rng.choice(LETTERS) for _ in range(rng.randint(3, 5))]
        rows.append({"text": " ".join(letters), "target": " ".join(reversed(letters))})
    return rows


def write_parquet(path: Path, rows: list[dict], row_group_size: int | None = None, schema=None) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path, row_group_size=row_group_size)
    return str(path)


def classify_config(model: str, train_path: str, storage: str, name: str, **train) -> dict:
    """A training config dict for the sentiment task (override ``train.*`` keys by keyword)."""
    section = {
        "name": name, "storage_path": storage, "batch_size_per_worker": 8, "learning_rate": 5e-3,
        "lr_scheduler": "constant", "max_grad_norm": None, "log_every": 5,
    }
    section.update(train)
    return {
        "model": {"path": model, "task": "classify"},
        "input": {"path": train_path},
        "tokenizer": {"max_length": 32},
        "compute": {"torch_threads": 1},
        "train": section,
    }


def worker_spec(task: str, **kw):
    """A :class:`WorkerSpec` for in-process steps (tiny batches, no Ray)."""
    from rayformers.jobs.train_loop import WorkerSpec

    base = dict(
        task=task, model_path="", tokenizer_path="", revision=None, local_files_only=False, label_kwargs={},
        metric_kind="seq2seq" if task == "generate" else "single_label_classification", num_labels=3,
        ignore_mismatched_sizes=True, pad_token_id=1, batch_size=4, accumulation=2, world_size=1, total_steps=8,
        steps_per_epoch=8, eval_every=8, checkpoint_every=8, log_every=8, learning_rate=3e-3, weight_decay=0.0,
        adam_epsilon=1e-8, lr_scheduler="constant", warmup_steps=0, max_grad_norm=1.0, bf16=False, seed=0,
        has_eval=False, eval_generate=False, generation_kwargs={}, eval_batch_size=4, best_metric="train_loss",
        best_metric_order="min", torch_threads=None, data_fingerprint="x",
    )
    base.update(kw)
    return WorkerSpec(**base)


def record_collectives_worker(rank: int, world: int, init_file: str, classify_model: str, seq2seq_model: str,
                              result_dir: str) -> None:
    """One rank of a real 2-process gloo group (``torch.multiprocessing.spawn`` target): an
    accumulated classification step, a seq2seq step and an evaluation, with every
    ``torch.distributed.all_reduce`` call recorded (device, shape) on its way to gloo."""
    import json

    import torch.distributed as dist

    from rayformers.jobs.train_loop import EvalBatches, _optimizer_step, evaluate, lr_lambda, make_optimizer
    from rayformers.models import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    seen: list = []
    real_all_reduce = dist.all_reduce

    def recording_all_reduce(tensor, *args, **kwargs):
        seen.append({"device": str(tensor.device), "shape": list(tensor.shape)})
        return real_all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = recording_all_reduce
    try:
        device = torch.device("cpu")  # this worker's device
        torch.manual_seed(rank)
        ids = torch.randint(5, 100, (4, 6))
        batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 2, 1])}] * 2
        model = AutoModelForSequenceClassification.from_pretrained(classify_model)
        spec = worker_spec("classify", world_size=world)
        losses = {}
        for name, mdl, sp, mbs in [
            ("classify", model, spec, batches),
            ("seq2seq", AutoModelForSeq2SeqLM.from_pretrained(seq2seq_model), worker_spec("generate", world_size=world),
             [{"input_ids": ids % 14, "attention_mask": torch.ones_like(ids),
               "labels": torch.tensor([[5, 6, -100], [7, 8, 9], [4, -100, -100], [6, 6, 6]])}] * 2),
        ]:
            mdl.train()
            ddp = torch.nn.parallel.DistributedDataParallel(mdl)
            optimizer = make_optimizer(mdl, sp)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("constant", 0, 1))
            losses[name] = float(_optimizer_step(ddp, mdl, optimizer, scheduler, mbs, sp, contextlib.nullcontext(),
                                                 world, device))
            # DDP holds the process group: one still alive when the interpreter exits tears gloo
            # down after destroy_process_group, and the rank aborts ("terminate called ...").
            del ddp
        metrics = evaluate(model, spec, None, EvalBatches(lambda: iter(batches[:1]), device), device)
        real_all_reduce(torch.zeros(()))  # neither rank tears its side down while the other still sends
    finally:
        dist.all_reduce = real_all_reduce
        gc.collect()
        dist.destroy_process_group()
    with open(f"{result_dir}/rank{rank}.json", "w") as f:
        json.dump({"worker_device": str(device), "all_reduce": seen, "losses": losses, "eval": metrics}, f)
