"""The pipeline's model operators (plain callables, no Ray) on tiny DeBERTa-v3 and MPNet checkpoints:
length-sorted, padded micro-batches give what transformers gives for each row alone."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
import transformers

from rayformers.operators import ClassifyOperator, EmbedOperator
from rayformers.operators.records import ERROR_COLUMN

from model_test_utils import single_thread  # noqa: F401

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, num_labels=3)
FAMILIES = {
    # DeBERTa-v3 with the conv layer: padding must not leak into real tokens through any path.
    "deberta-v2": (transformers.DebertaV2Config, dict(relative_attention=True, pos_att_type="p2c|c2p",
                                                      share_att_key=True, position_buckets=4,
                                                      max_relative_positions=32, norm_rel_ebd="layer_norm",
                                                      position_biased_input=False, conv_kernel_size=3), "DebertaV2"),
    "mpnet": (transformers.MPNetConfig, {}, "MPNet"),
}


def save_checkpoint(family: str, head: str, path):
    config_class, extra, prefix = FAMILIES[family]
    torch.manual_seed(0)
    config = config_class(**TINY, **extra, id2label={0: "neg", 1: "neu", 2: "pos"},
                          label2id={"neg": 0, "neu": 1, "pos": 2})
    reference = getattr(transformers, f"{prefix}{head}")(config).eval()
    reference.save_pretrained(path)
    return reference


def tokenized_rows(pad_token_id: int, rows: int = 9):
    """Rows of 1..38 ids (none equal to the padding id), one error row: what TokenizeOperator emits."""
    rng = np.random.default_rng(0)
    ids = [[int(t) for t in rng.integers(3, TINY["vocab_size"], size=n) if t != pad_token_id]
           for n in rng.integers(1, 39, size=rows)]
    ids[4] = None
    errors = [None] * rows
    errors[4] = "text: text is null"
    table = pa.table({"id": list(range(rows)), "input_ids": pa.array(ids, type=pa.list_(pa.int32())),
                      ERROR_COLUMN: pa.array(errors, type=pa.string())})
    return table, ids


def row_alone(reference, ids):
    with torch.no_grad():
        return reference(input_ids=torch.tensor([ids]))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_classify_operator_matches_transformers_row_by_row(family, tmp_path):
    reference = save_checkpoint(family, "ForSequenceClassification", tmp_path)
    table, ids = tokenized_rows(reference.config.pad_token_id)
    op = ClassifyOperator(model_path=str(tmp_path), max_tokens_per_batch=80, max_rows_per_batch=4, top_k=3)
    assert type(op.model).__module__ == f"rayformers.models.{family.replace('-', '_')}"
    out = op(table)
    errors = out.column(ERROR_COLUMN).to_pylist()
    for row, row_ids in enumerate(ids):
        if row_ids is None:
            assert errors[row] == "text: text is null" and out.column("label")[row].as_py() is None
            continue
        assert errors[row] is None
        probs = torch.softmax(row_alone(reference, row_ids).logits[0], -1)
        expected = [reference.config.id2label[i] for i in torch.argsort(probs, descending=True).tolist()]
        assert out.column("top_k_labels")[row].as_py() == expected
        np.testing.assert_allclose(out.column("top_k_scores")[row].as_py(), sorted(probs.tolist(), reverse=True),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_embed_operator_matches_transformers_row_by_row(family, pooling, tmp_path):
    reference = save_checkpoint(family, "Model", tmp_path)
    table, ids = tokenized_rows(reference.config.pad_token_id)
    op = EmbedOperator(model_path=str(tmp_path), pooling=pooling, normalize=True, max_tokens_per_batch=80,
                       max_rows_per_batch=4)
    column = op(table).column("embedding")
    assert pa.types.is_fixed_size_list(column.type) and column.type.list_size == TINY["hidden_size"]
    for row, row_ids in enumerate(ids):
        if row_ids is None:
            assert column[row].as_py() is None
            continue
        hidden = row_alone(reference, row_ids).last_hidden_state[0]
        expected = torch.nn.functional.normalize(hidden.mean(0) if pooling == "mean" else hidden[0], dim=0)
        np.testing.assert_allclose(column[row].as_py(), expected.numpy(), rtol=0, atol=1e-5)
