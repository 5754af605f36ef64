"""Parity of models/distilbert.py with transformers 4.57.6 DistilBERT (every head, padding in the batch)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from rayformers.models import auto
from rayformers.models import distilbert as ours

from model_test_utils import assert_same_outputs, assert_tree_close, run_both, single_thread  # noqa: F401

# transformers' aliases: hidden_size -> dim, num_hidden_layers -> n_layers, num_attention_heads -> n_heads.
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, hidden_dim=37,
            max_position_embeddings=64)
TASKS = ["base", "sequence_classification", "token_classification", "question_answering", "multiple_choice",
         "masked_lm"]
ATOL = 1e-5
FLAG_SETS = [{}, {"output_hidden_states": True, "output_attentions": True}]


def class_name(task: str) -> str:
    return auto.MODEL_NAMES["distilbert"][task]


def reference_model(task: str, **config_kwargs):
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(**TINY, **config_kwargs)
    return getattr(transformers, class_name(task))(config).eval()


def padded_batch(batch: int = 3, seq: int = 9, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, TINY["vocab_size"], (batch, seq), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 3:] = 0
    input_ids[attention_mask == 0] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def task_inputs(task: str, config) -> dict:
    batch = padded_batch()
    if task == "multiple_choice":
        other = padded_batch(seed=1)
        batch = {k: torch.stack([batch[k], other[k]], dim=1) for k in batch}
        batch["labels"] = torch.tensor([1, 0, 1])
    elif task == "sequence_classification":
        batch["labels"] = torch.tensor([0, 1, 1])
    elif task == "token_classification":
        batch["labels"] = (batch["input_ids"] % config.num_labels).masked_fill(batch["attention_mask"] == 0, -100)
    elif task == "question_answering":
        batch["start_positions"] = torch.tensor([1, 3, 50])
        batch["end_positions"] = torch.tensor([2, 5, 0])
    elif task == "masked_lm":
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


@pytest.fixture(scope="module")
def saved_references(tmp_path_factory):
    cache = {}

    def get(task: str):
        if task not in cache:
            reference = reference_model(task)
            path = tmp_path_factory.mktemp(f"distilbert-{task}")
            reference.save_pretrained(path)
            cache[task] = (reference, path)
        return cache[task]

    return get


@pytest.mark.parametrize("task", TASKS)
def test_every_head_matches_transformers(task, saved_references):
    reference, path = saved_references(task)
    inputs = task_inputs(task, reference.config)
    for loader in (auto.TASK_TO_AUTO_CLASS[task], getattr(ours, class_name(task))):
        model, info = loader.from_pretrained(path, output_loading_info=True)
        assert type(model).__name__ == class_name(task)
        assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
        for flags in FLAG_SETS:
            expected, actual = run_both(reference, model, inputs, **flags)
            assert_same_outputs(expected, actual)
            if task != "base":
                assert torch.isfinite(actual.loss)
        expected, actual = run_both(reference, model, inputs, return_dict=False, output_hidden_states=True)
        assert isinstance(actual, tuple)
        assert_tree_close(expected, actual, path="tuple")


@pytest.mark.parametrize("problem_type, num_labels, labels", [
    ("regression", 1, torch.tensor([0.5, -1.0, 2.0])),
    ("single_label_classification", 3, torch.tensor([0, 2, 1])),
    ("multi_label_classification", 3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])),
])
def test_sequence_classification_losses_per_problem_type(problem_type, num_labels, labels, tmp_path):
    reference = reference_model("sequence_classification", num_labels=num_labels)
    reference.save_pretrained(tmp_path)
    model = auto.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    expected, actual = run_both(reference, model, {**padded_batch(), "labels": labels})
    assert model.config.problem_type == reference.config.problem_type == problem_type
    assert_same_outputs(expected, actual)


def test_inputs_embeds_and_head_mask_match_transformers(saved_references):
    reference, path = saved_references("base")
    model = ours.DistilBertModel.from_pretrained(path)
    batch = padded_batch()
    embeds = reference.get_input_embeddings()(batch["input_ids"]).detach()
    head_mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.5, 1.0]])
    for inputs in ({"inputs_embeds": embeds, "attention_mask": batch["attention_mask"]},
                   {**batch, "head_mask": head_mask}, {"input_ids": batch["input_ids"]}):
        for flags in FLAG_SETS:
            assert_same_outputs(*run_both(reference, model, inputs, **flags))
    assert "embeddings.position_ids" in dict(model.named_buffers())
    assert "embeddings.position_ids" not in model.state_dict()


def test_config_aliases_and_json_match_transformers(tmp_path):
    config = ours.DistilBertConfig(**TINY)
    assert (config.dim, config.n_layers, config.n_heads) == (32, 2, 4)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 4)
    config.hidden_size = 48
    assert config.dim == 48
    reference = transformers.DistilBertConfig(**TINY)
    theirs = reference.to_diff_dict()
    theirs.pop("transformers_version")
    assert ours.DistilBertConfig(**TINY).to_diff_dict() == theirs
    reference.save_pretrained(tmp_path)
    loaded = auto.AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, ours.DistilBertConfig) and loaded.hidden_size == 32


def test_sinusoidal_positions_match_transformers(tmp_path):
    reference = reference_model("base", sinusoidal_pos_embds=True)
    expected = reference.embeddings.position_embeddings.weight
    model = ours.DistilBertModel(ours.DistilBertConfig(**TINY, sinusoidal_pos_embds=True))
    table = model.embeddings.position_embeddings.weight
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-6)
    assert not table.requires_grad
    reference.save_pretrained(tmp_path)
    loaded = auto.AutoModel.from_pretrained(tmp_path)
    assert_same_outputs(*run_both(reference, loaded, padded_batch()))


def test_question_answering_needs_two_labels():
    with pytest.raises(ValueError, match="num_labels should be 2"):
        ours.DistilBertForQuestionAnswering(ours.DistilBertConfig(**TINY, num_labels=3))


@pytest.mark.parametrize("task", TASKS)
def test_our_checkpoint_loads_in_transformers(task, tmp_path):
    torch.manual_seed(1)
    model = getattr(ours, class_name(task))(ours.DistilBertConfig(**TINY)).eval()
    model.save_pretrained(tmp_path)
    reference, info = getattr(transformers, class_name(task)).from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    assert_same_outputs(*run_both(reference.eval(), model, task_inputs(task, model.config), output_hidden_states=True))


def test_masked_lm_ties_projector_to_embeddings(saved_references, tmp_path):
    reference, path = saved_references("masked_lm")
    model = auto.AutoModelForMaskedLM.from_pretrained(path)
    assert model.vocab_projector.weight is model.get_input_embeddings().weight
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["DistilBertForMaskedLM"] and saved["dim"] == 32


def test_sharded_transformers_checkpoint_loads(tmp_path):
    reference = reference_model("sequence_classification")
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    model, info = auto.AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert_same_outputs(*run_both(reference, model, task_inputs("sequence_classification", reference.config)))
