"""Shared builders for the training tests (no tests here): tiny checkpoints and synthetic data.

Tiny models are saved by transformers (the reference) with the real all-MiniLM-L6-v2 tokenizer,
so the files are exactly what a user would bring; dropout is off so runs are bit-for-bit
comparable across worker counts.
"""

from __future__ import annotations

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
