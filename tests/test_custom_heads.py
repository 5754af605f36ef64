"""Classifier heads users bring: a ``PyTorchModelHubMixin`` checkpoint (backbone + dropout + Linear,
NVIDIA quality-classifier style) scored through ``model.head`` without its Python class.

The checkpoint is built the way such models are: a small ``nn.Module`` with a transformers
backbone (``AutoModel.from_pretrained(config["base_model"])``), a dropout and a Linear ``fc``,
saved with the mixin's own ``save_pretrained`` (``model.safetensors`` + ``config.json`` holding
the module's config dict). Reference logits come from that module; ours must equal them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from rayformers.models.custom_head_config import CustomHeadError
from rayformers.models.custom_heads import LinearHeadClassifier, load_linear_head_classifier
from rayformers.operators import ClassifyOperator
from rayformers.operators.records import ERROR_COLUMN
from rayformers.pipeline import PreflightError, read_output, run

from model_test_utils import single_thread  # noqa: F401
from model_test_utils import tiny_bert

LABELS = {"0": "High", "1": "Low", "2": "Medium"}
DEBERTA = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
               max_position_embeddings=64, relative_attention=True, pos_att_type="p2c|c2p", share_att_key=True,
               position_buckets=4, max_relative_positions=32, norm_rel_ebd="layer_norm", position_biased_input=False,
               type_vocab_size=0)


class QualityModel(nn.Module, PyTorchModelHubMixin):
    """The shape of NVIDIA's quality / domain classifiers: CLS token of the backbone into a Linear
    (``pooling: mean`` makes it average the attended tokens instead)."""

    def __init__(self, config: dict):
        super().__init__()
        self.model = transformers.AutoModel.from_pretrained(config["base_model"])
        self.dropout = nn.Dropout(config["fc_dropout"])
        self.fc = nn.Linear(self.model.config.hidden_size, len(config["id2label"]))
        self.pooling = config.get("pooling", "cls")

    def forward(self, input_ids, attention_mask):
        features = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        outputs = self.fc(self.dropout(features))
        if self.pooling == "cls":
            return outputs[:, 0, :]
        mask = attention_mask.unsqueeze(-1).float()
        return (outputs * mask).sum(1) / mask.sum(1)  # the Linear commutes with the mean


def mixin_checkpoint(root: Path, backbone: str = "deberta", pooling: str = "cls") -> tuple[QualityModel, Path]:
    """Save a backbone with transformers, build the module on it, save it the mixin's way."""
    torch.manual_seed(0)
    base = root / "base"
    if backbone == "deberta":
        transformers.DebertaV2Model(transformers.DebertaV2Config(**DEBERTA)).save_pretrained(base)
    else:
        tiny_bert(base, hidden=16, layers=1, head="BertModel")
    torch.manual_seed(1)
    module = QualityModel({"base_model": str(base), "fc_dropout": 0.2, "id2label": LABELS, "pooling": pooling}).eval()
    out = root / "classifier"
    module.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config.setdefault("architectures", ["QualityModel"])  # what published mixin checkpoints carry
    (out / "config.json").write_text(json.dumps(config))
    if backbone == "bert":
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (base / name).exists():
                shutil.copy(base / name, out / name)
    return module, out


def token_rows(rows: int = 8, vocab: int = 99):
    rng = np.random.default_rng(0)
    ids = [[int(t) for t in rng.integers(3, vocab, size=n)] for n in rng.integers(2, 30, size=rows)]
    ids[3] = None
    errors = [None] * rows
    errors[3] = "text: text is null"
    return pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())), ERROR_COLUMN: pa.array(errors, pa.string())}), ids


HEAD = {"type": "linear", "weights": "fc", "backbone_prefix": "model.", "pooling": "cls", "backbone_config": None}


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_mixin_deberta_checkpoint_scores_like_its_own_module(tmp_path, pooling):
    reference, path = mixin_checkpoint(tmp_path, "deberta", pooling)
    saved = json.loads((path / "config.json").read_text())
    assert "model_type" not in saved and saved["architectures"] == ["QualityModel"]
    assert {"model.embeddings.word_embeddings.weight", "fc.weight", "fc.bias"} <= set(
        __import__("safetensors.torch", fromlist=["load_file"]).load_file(path / "model.safetensors"))

    op = ClassifyOperator(model_path=str(path), head={**HEAD, "pooling": pooling}, top_k=3,
                          max_tokens_per_batch=64, max_rows_per_batch=3)
    assert isinstance(op.model, LinearHeadClassifier) and type(op.model.backbone).__name__ == "DebertaV2Model"
    assert op.config.id2label == {0: "High", 1: "Low", 2: "Medium"}
    table, ids = token_rows()
    out = op(table)
    for row, row_ids in enumerate(ids):
        if row_ids is None:
            assert out.column(ERROR_COLUMN)[row].as_py() == "text: text is null"
            continue
        with torch.no_grad():
            logits = reference(torch.tensor([row_ids]), torch.ones(1, len(row_ids), dtype=torch.long))[0]
        probs = torch.softmax(logits, -1)
        order = torch.argsort(probs, descending=True).tolist()
        assert out.column("top_k_labels")[row].as_py() == [LABELS[str(i)] for i in order]
        np.testing.assert_allclose(out.column("top_k_scores")[row].as_py(), probs[order].numpy(), rtol=0, atol=1e-5)


def test_padded_batches_give_each_rows_logits(tmp_path):
    reference, path = mixin_checkpoint(tmp_path, "deberta")
    ours = load_linear_head_classifier(str(path), HEAD)
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        batch = ours(input_ids=ids, attention_mask=mask).logits
        alone = reference(ids[1:, :3], mask[1:, :3])
    torch.testing.assert_close(batch[1:], alone, rtol=0, atol=1e-5)


def test_declarations_that_do_not_fit_the_checkpoint_are_refused(tmp_path):
    _, path = mixin_checkpoint(tmp_path, "deberta")
    with pytest.raises(CustomHeadError, match=r"no tensor head\.weight .* top-level weight names are fc, model"):
        load_linear_head_classifier(str(path), {**HEAD, "weights": "head"})
    with pytest.raises(CustomHeadError, match="do not fit DebertaV2Model"):
        load_linear_head_classifier(str(path), {**HEAD, "backbone_prefix": ""})
    with pytest.raises(CustomHeadError, match="pooling 'max' is not supported"):
        load_linear_head_classifier(str(path), {**HEAD, "pooling": "max"})

    # A second layer the declaration does not describe: refused, never silently dropped.
    from safetensors.torch import load_file, save_file

    weights = load_file(path / "model.safetensors")
    save_file({**weights, "fc2.weight": torch.zeros(3, 3)}, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CustomHeadError, match="outside the declared backbone .*fc2.weight"):
        load_linear_head_classifier(str(path), HEAD)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})

    # The base model is not here (a Hub id offline): the error says to set backbone_config...
    shutil.move(tmp_path / "base", tmp_path / "elsewhere")
    with pytest.raises(CustomHeadError, match="set model.head.backbone_config"):
        load_linear_head_classifier(str(path), HEAD)
    # ...which loads it from the backbone's own config.json.
    model = load_linear_head_classifier(str(path), {**HEAD, "backbone_config": str(tmp_path / "elsewhere")})
    assert model.config.num_labels == 3


def test_pipeline_scores_a_mixin_bert_classifier(ray_session, tmp_path):
    reference, path = mixin_checkpoint(tmp_path, "bert")
    texts = [f"row {i}: " + "lorem ipsum dolor " * (i % 5) for i in range(20)] + [None]
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.table({"text": texts}), inp / "part0.parquet")
    job = {"input": {"path": str(inp)}, "model": {"path": str(path), "task": "classify", "head": {"weights": "fc"}},
           "output": {"path": str(tmp_path / "out"), "max_error_fraction": 0.1}}
    with pytest.raises(PreflightError, match="model.head is for model.task classify"):
        run({**job, "model": {**job["model"], "task": "embed"}})
    with pytest.raises(PreflightError, match="has no tensor classifier.weight"):
        run({**job, "model": {**job["model"], "head": {"weights": "classifier"}}})
    report = run(job)
    assert report.status == "succeeded" and report.errors == 1
    table = read_output(str(tmp_path / "out"))
    rows = {r["id"]: r for r in table.to_pylist()}
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    for i, text in enumerate(texts[:-1]):
        enc = tokenizer([text], return_tensors="pt", truncation=True, max_length=64)
        with torch.no_grad():
            probs = torch.softmax(reference(enc["input_ids"], enc["attention_mask"])[0], -1)
        row = rows[f"part0.parquet:{i}"]
        assert row["label"] == LABELS[str(int(probs.argmax()))]
        assert row["score"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_fineweb_edu_shaped_regression_head_loads_as_bert(tmp_path):
    """FineWeb-Edu's classifier is a plain ``BertForSequenceClassification`` with one output (its
    config names that architecture and ``model_type: bert``): it needs no ``model.head``. Its score
    is the raw regression value with ``function_to_apply: none`` (or a config saying
    ``problem_type: regression``); a one-logit config without it gets transformers' sigmoid."""
    path = tiny_bert(tmp_path / "edu", hidden=16, layers=1, head="BertForSequenceClassification", num_labels=1)
    reference = transformers.BertForSequenceClassification.from_pretrained(path).eval()
    table, ids = token_rows(vocab=1000)
    raw = ClassifyOperator(model_path=str(path), function_to_apply="none")(table)
    squashed = ClassifyOperator(model_path=str(path))(table)
    for row, row_ids in enumerate(ids):
        if row_ids is None:
            continue
        with torch.no_grad():
            logit = float(reference(input_ids=torch.tensor([row_ids])).logits[0, 0])
        assert raw.column("score")[row].as_py() == pytest.approx(logit, abs=1e-5)
        assert squashed.column("score")[row].as_py() == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-5)


def test_model_head_config_keys():
    from rayformers.pipeline.config import ConfigError, HeadConfig, load_config

    plain = load_config({"model": {"path": "x"}})
    cfg = load_config({"model": {"path": "x", "head": {"weights": "fc", "pooling": "mean"}}})
    assert cfg.model.head == HeadConfig(weights="fc", pooling="mean") and plain.model.head is None
    assert cfg.fingerprint() != plain.fingerprint()  # another head, other predictions
    assert plain.fingerprint() == "26f96989ba37b650"  # unset: the fingerprint of a job from before the key
    with pytest.raises(ConfigError, match="model.head.pooling.*not one of cls, mean"):
        load_config({"model": {"path": "x", "head": {"pooling": "max"}}})
    with pytest.raises(ConfigError, match="unknown config key.*model.head.from"):
        load_config({"model": {"path": "x", "head": {"from": "fc"}}})


def test_a_transformers_style_config_with_a_custom_architecture_is_its_own_backbone_config(tmp_path):
    """Some custom-head checkpoints save the backbone's full transformers config (``model_type``
    and sizes) with their own ``architectures``: no base_model is needed."""
    reference, path = mixin_checkpoint(tmp_path, "deberta")
    backbone = json.loads((tmp_path / "base" / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**backbone, "architectures": ["QualityModel"], "id2label": LABELS}))
    shutil.rmtree(tmp_path / "base")
    ours = load_linear_head_classifier(str(path), HEAD)
    assert ours.config.model_type == "deberta-v2" and ours.config.architectures == ["QualityModel"]
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids, attention_mask=torch.ones_like(ids)).logits,
                                   reference(ids, torch.ones_like(ids)), rtol=0, atol=1e-5)
