"""Parity of models/mpnet.py with transformers 4.57.6 MPNet (every head, padding in the batch)."""

from __future__ import annotations

import pytest
import torch
import transformers

from rayformers.models import auto
from rayformers.models import mpnet as ours

from model_test_utils import (  # noqa: F401
    assert_same_gradients,
    assert_same_outputs,
    assert_tree_close,
    head_inputs,
    run_both,
    saved_reference_cache,
    single_thread,
)

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TASKS = ["base", "sequence_classification", "token_classification", "question_answering", "multiple_choice",
         "masked_lm"]
FLAG_SETS = [{}, {"output_hidden_states": True, "output_attentions": True}]
PAD = 1


def class_name(task: str) -> str:
    return auto.MODEL_NAMES["mpnet"][task]


def reference_model(task: str, **config_kwargs):
    torch.manual_seed(0)
    config = transformers.MPNetConfig(**{**TINY, **config_kwargs})
    return getattr(transformers, class_name(task))(config).eval()


def padded_batch(batch: int = 3, seq: int = 40, seed: int = 0) -> dict:
    """40 positions reach past the 8 exact buckets into the logarithmic ones; padding id is 1."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, TINY["vocab_size"], (batch, seq), generator=generator)
    input_ids[:, 0] = 0
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 25:] = 0
    attention_mask[2, 4:] = 0
    input_ids[attention_mask == 0] = PAD
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def task_inputs(task: str, config) -> dict:
    return head_inputs(task, padded_batch, config.num_labels)


def assert_loads_cleanly(info):
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []


@pytest.fixture(scope="module")
def saved_references(tmp_path_factory):
    return saved_reference_cache(tmp_path_factory, "mpnet", reference_model)


@pytest.mark.parametrize("task", TASKS)
def test_every_head_matches_transformers(task, saved_references):
    reference, path = saved_references(task)
    inputs = task_inputs(task, reference.config)
    for loader in (auto.TASK_TO_AUTO_CLASS[task], getattr(ours, class_name(task))):
        model, info = loader.from_pretrained(path, output_loading_info=True)
        assert type(model).__name__ == class_name(task)
        assert_loads_cleanly(info)
        for flags in FLAG_SETS:
            expected, actual = run_both(reference, model, inputs, **flags)
            assert_same_outputs(expected, actual)
            if task != "base":
                assert torch.isfinite(actual.loss)
        expected, actual = run_both(reference, model, inputs, return_dict=False, output_hidden_states=True)
        assert isinstance(actual, tuple)
        assert_tree_close(expected, actual, path="tuple")


@pytest.mark.parametrize("task", TASKS)
def test_our_checkpoint_loads_in_transformers(task, tmp_path):
    torch.manual_seed(1)
    model = getattr(ours, class_name(task))(ours.MPNetConfig(**TINY)).eval()
    model.save_pretrained(tmp_path)
    reference, info = getattr(transformers, class_name(task)).from_pretrained(tmp_path, output_loading_info=True)
    assert_loads_cleanly(info)
    assert_same_outputs(*run_both(reference.eval(), model, task_inputs(task, model.config), output_hidden_states=True))


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


def test_inputs_embeds_head_mask_position_ids_and_eager_match(saved_references, tmp_path):
    reference, path = saved_references("base")
    batch = padded_batch()
    embeds = reference.get_input_embeddings()(batch["input_ids"]).detach()
    head_mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.5, 1.0]])
    for model in (ours.MPNetModel.from_pretrained(path),
                  ours.MPNetModel.from_pretrained(path, attn_implementation="eager")):
        for inputs in ({"inputs_embeds": embeds, "attention_mask": batch["attention_mask"]},
                       {**batch, "head_mask": head_mask}, {"input_ids": batch["input_ids"]},
                       {**batch, "position_ids": torch.arange(2, 42).expand(3, 40)}):
            for flags in FLAG_SETS:
                assert_same_outputs(*run_both(reference, model, inputs, **flags))


def test_more_buckets_only_size_the_table_as_in_transformers(tmp_path):
    reference = reference_model("base", relative_attention_num_buckets=48)
    reference.save_pretrained(tmp_path)
    model = auto.AutoModel.from_pretrained(tmp_path)
    assert model.encoder.relative_attention_bias.weight.shape == (48, 4)
    assert_same_outputs(*run_both(reference, model, padded_batch(), output_hidden_states=True))


def test_relative_buckets_match_transformers():
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    positions = torch.arange(300)
    relative = positions[None, :] - positions[:, None]
    assert torch.equal(ours.relative_position_bucket(relative), MPNetEncoder.relative_position_bucket(relative))


def test_config_json_matches_transformers(tmp_path):
    reference = transformers.MPNetConfig(**TINY)
    theirs = reference.to_diff_dict()
    theirs.pop("transformers_version")
    assert ours.MPNetConfig(**TINY).to_diff_dict() == theirs
    reference.save_pretrained(tmp_path)
    loaded = auto.AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, ours.MPNetConfig) and loaded.pad_token_id == 1


def test_masked_lm_decoder_is_tied_to_word_embeddings(saved_references):
    _, path = saved_references("masked_lm")
    model = auto.AutoModelForMaskedLM.from_pretrained(path)
    assert model.lm_head.decoder.weight is model.mpnet.embeddings.word_embeddings.weight
    assert model.lm_head.decoder.bias is model.lm_head.bias


def test_fine_tuning_gradients_match_transformers(tmp_path):
    """Including the relative-position bias table, trained through the fused attention kernel."""
    reference = reference_model("sequence_classification")
    reference.save_pretrained(tmp_path)
    model = auto.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert_same_gradients(reference, model, task_inputs("sequence_classification", reference.config))
