"""Parity of models/deberta_v2.py with transformers 4.57.6 DeBERTa-v2/v3: every head, every attention
variant (c2p / p2c, shared keys, log buckets, conv layer, position-biased input, normalised relative
embeddings, narrow embeddings), padding in the batch."""

from __future__ import annotations

import pytest
import torch
import transformers

from rayformers.models import auto
from rayformers.models import deberta_v2 as ours

from model_test_utils import (  # noqa: F401
    assert_same_gradients,
    assert_same_outputs,
    assert_tree_close,
    head_inputs,
    run_both,
    single_thread,
)

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
VARIANTS = {
    # DeBERTa-v1-like: absolute positions only, token types.
    "absolute": dict(type_vocab_size=2),
    # DeBERTa-v2-xlarge-like: separate position projections, no buckets, the conv layer.
    "v2": dict(relative_attention=True, pos_att_type="c2p|p2c", share_att_key=False, position_buckets=-1,
               max_relative_positions=16, conv_kernel_size=3, norm_rel_ebd="layer_norm"),
    # DeBERTa-v3: shared keys, log buckets, LayerNorm'ed relative embeddings, no absolute positions.
    "v3": dict(relative_attention=True, pos_att_type=["p2c", "c2p"], share_att_key=True, position_buckets=4,
               max_relative_positions=32, norm_rel_ebd="layer_norm", position_biased_input=False),
    "c2p-narrow-embeddings": dict(relative_attention=True, pos_att_type=["c2p"], share_att_key=False,
                                  embedding_size=24, type_vocab_size=2, pooler_hidden_act="tanh"),
    "p2c-conv-gelu": dict(relative_attention=True, pos_att_type=["p2c"], share_att_key=True, position_buckets=-1,
                          conv_kernel_size=3, conv_act="gelu", norm_rel_ebd="none", position_biased_input=False),
}
TASKS = ["base", "sequence_classification", "token_classification", "question_answering", "multiple_choice",
         "masked_lm"]
FLAG_SETS = [{}, {"output_hidden_states": True, "output_attentions": True}]


def class_name(task: str) -> str:
    return auto.MODEL_NAMES["deberta-v2"][task]


def reference_config(variant: str, **overrides):
    return transformers.DebertaV2Config(**{**TINY, **VARIANTS[variant], **overrides})


def reference_model(task: str, variant: str = "v3", **overrides):
    torch.manual_seed(0)
    return getattr(transformers, class_name(task))(reference_config(variant, **overrides)).eval()


def padded_batch(config, batch: int = 3, seq: int = 11, seed: int = 0) -> dict:
    """Three rows, two padded (one of them to 3 tokens): distances beyond the buckets' exact range."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, TINY["vocab_size"], (batch, seq), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    attention_mask[2, 3:] = 0
    input_ids[attention_mask == 0] = 0
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if config.type_vocab_size > 0:
        out["token_type_ids"] = (torch.arange(seq) >= seq // 2).long().expand(batch, seq) * attention_mask
    return out


def task_inputs(task: str, config) -> dict:
    return head_inputs(task, lambda seed: padded_batch(config, seed=seed), config.num_labels)


def assert_loads_cleanly(info):
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []


def assert_matches(reference, model, inputs):
    for flags in FLAG_SETS:
        assert_same_outputs(*run_both(reference, model, inputs, **flags))
    expected, actual = run_both(reference, model, inputs, return_dict=False, output_hidden_states=True)
    assert isinstance(actual, tuple)
    assert_tree_close(expected, actual, path="tuple")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("task", TASKS)
def test_every_head_and_variant_matches_transformers(task, variant, tmp_path):
    reference = reference_model(task, variant)
    reference.save_pretrained(tmp_path)
    model, info = auto.TASK_TO_AUTO_CLASS[task].from_pretrained(tmp_path, output_loading_info=True)
    assert type(model).__name__ == class_name(task)
    assert_loads_cleanly(info)
    inputs = task_inputs(task, reference.config)
    assert_matches(reference, model, inputs)
    if task != "base":
        assert torch.isfinite(run_both(reference, model, inputs)[1].loss)


@pytest.mark.parametrize("task", TASKS)
def test_our_checkpoint_loads_in_transformers(task, tmp_path):
    torch.manual_seed(1)
    model = getattr(ours, class_name(task))(ours.DebertaV2Config(**TINY, **VARIANTS["v3"])).eval()
    model.save_pretrained(tmp_path)
    reference, info = getattr(transformers, class_name(task)).from_pretrained(tmp_path, output_loading_info=True)
    assert_loads_cleanly(info)
    assert_same_outputs(*run_both(reference.eval(), model, task_inputs(task, model.config), output_hidden_states=True))


@pytest.mark.parametrize("variant", ["v2", "c2p-narrow-embeddings"])
def test_our_checkpoint_of_other_variants_loads_in_transformers(variant, tmp_path):
    torch.manual_seed(2)
    model = ours.DebertaV2ForMaskedLM(ours.DebertaV2Config(**TINY, **VARIANTS[variant])).eval()
    model.save_pretrained(tmp_path)
    reference, info = transformers.DebertaV2ForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert_loads_cleanly(info)
    assert_same_outputs(*run_both(reference.eval(), model, task_inputs("masked_lm", model.config),
                                  output_hidden_states=True))


@pytest.mark.parametrize("problem_type, num_labels, labels", [
    # problem_type unset: DeBERTa's own rules (not inferred and stored as BERT does).
    (None, 1, torch.tensor([0.5, -1.0, 2.0])),                   # MSE, logits returned flattened
    (None, 3, torch.tensor([0, -1, 2])),                         # cross-entropy over labels >= 0 only
    (None, 3, torch.tensor([-1, -1, -1])),                       # nothing labelled: zero loss
    (None, 3, torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])),  # soft labels
    ("regression", 1, torch.tensor([0.5, -1.0, 2.0])),
    ("single_label_classification", 3, torch.tensor([0, 2, 1])),
    ("multi_label_classification", 3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])),
])
def test_sequence_classification_losses(problem_type, num_labels, labels, tmp_path):
    reference = reference_model("sequence_classification", num_labels=num_labels, problem_type=problem_type)
    reference.save_pretrained(tmp_path)
    model = auto.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    expected, actual = run_both(reference, model, {**padded_batch(reference.config), "labels": labels})
    assert_same_outputs(expected, actual)
    assert model.config.problem_type == reference.config.problem_type == problem_type


def test_non_legacy_masked_lm_head_matches_transformers(tmp_path):
    # transformers' legacy=False head only works untied (tied, it ties `dense` to the embeddings).
    reference = reference_model("masked_lm", legacy=False, tie_word_embeddings=False)
    reference.save_pretrained(tmp_path)
    model, info = auto.AutoModelForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert_loads_cleanly(info)
    assert hasattr(model, "lm_predictions") and not hasattr(model, "cls")
    assert_matches(reference, model, task_inputs("masked_lm", reference.config))


def test_legacy_masked_lm_decoder_is_tied_to_word_embeddings(tmp_path):
    reference = reference_model("masked_lm", "c2p-narrow-embeddings")
    reference.save_pretrained(tmp_path)
    model = auto.AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert model.cls.predictions.decoder.weight is model.deberta.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight.shape == (99, 24)


def test_eager_attention_inputs_embeds_and_unpadded_batches_match(tmp_path):
    reference = reference_model("base", "v2")
    reference.save_pretrained(tmp_path)
    batch = padded_batch(reference.config)
    embeds = reference.get_input_embeddings()(batch["input_ids"]).detach()
    eager = auto.AutoModel.from_pretrained(tmp_path, attn_implementation="eager")
    fused = auto.AutoModel.from_pretrained(tmp_path)
    for model in (eager, fused):
        for inputs in ({"inputs_embeds": embeds, "attention_mask": batch["attention_mask"]},
                       {"input_ids": batch["input_ids"][:1]},
                       {"input_ids": batch["input_ids"], "attention_mask": torch.ones_like(batch["input_ids"])},
                       {**batch, "position_ids": torch.arange(11).flip(0).expand(3, 11)}):
            for flags in FLAG_SETS:
                assert_same_outputs(*run_both(reference, model, inputs, **flags))


def test_log_bucket_positions_match_transformers():
    from transformers.models.deberta_v2 import modeling_deberta_v2 as theirs

    for buckets, max_position in ((4, 32), (256, 512), (8, 16)):
        expected = theirs.build_relative_position(torch.zeros(1, 300, 1), torch.zeros(1, 300, 1), buckets,
                                                  max_position)[0]
        actual = ours.build_relative_position(300, 300, buckets, max_position, "cpu")
        assert torch.equal(actual, expected)


def test_config_json_matches_transformers(tmp_path):
    reference = reference_config("v3")
    theirs = reference.to_diff_dict()
    theirs.pop("transformers_version")
    assert ours.DebertaV2Config(**TINY, **VARIANTS["v3"]).to_diff_dict() == theirs
    reference.save_pretrained(tmp_path)
    loaded = auto.AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, ours.DebertaV2Config)
    assert loaded.pos_att_type == ["p2c", "c2p"] and loaded.position_buckets == 4 and loaded.share_att_key
    assert ours.DebertaV2Config(pos_att_type="C2P|p2c").pos_att_type == ["c2p", "p2c"]


def test_bad_inputs_are_named():
    model = ours.DebertaV2Model(ours.DebertaV2Config(**TINY, **VARIANTS["v3"])).eval()
    ids = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \[batch, seq\]"):
        model(input_ids=ids, attention_mask=torch.ones(2, 5, 5))
    with pytest.raises(ValueError, match="pos_att_type"):
        ours.DebertaV2Model(ours.DebertaV2Config(**TINY, relative_attention=True, pos_att_type="c2p|p2p"))


def test_unused_absolute_position_table_in_a_v3_checkpoint_is_ignored(tmp_path):
    """v3 checkpoints (position_biased_input=False) may still carry the absolute table; transformers
    ignores it on load, and so do we."""
    from safetensors.torch import load_file, save_file

    reference = reference_model("base", "v3")
    reference.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["embeddings.position_embeddings.weight"] = torch.randn(64, 32)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model, info = auto.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert_loads_cleanly(info)
    assert model.embeddings.position_embeddings is None
    assert_same_outputs(*run_both(reference, model, padded_batch(reference.config)))


@pytest.mark.parametrize("variant", ["v2", "v3", "p2c-conv-gelu"])
@pytest.mark.parametrize("seq", [1, 2, 40, 64])
def test_sequences_shorter_and_longer_than_the_relative_span_match(variant, seq, tmp_path):
    """Only the window of relative embeddings a length can reach is projected: check lengths from
    one token to past `max_relative_positions` (16 for v2, 32 for v3) and the position table."""
    reference = reference_model("base", variant)
    reference.save_pretrained(tmp_path)
    model = auto.AutoModel.from_pretrained(tmp_path)
    input_ids = torch.randint(1, TINY["vocab_size"], (2, seq), generator=torch.Generator().manual_seed(seq))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, seq // 2 + 1:] = 0
    assert_same_outputs(*run_both(reference, model, {"input_ids": input_ids, "attention_mask": attention_mask},
                                  output_hidden_states=True))


@pytest.mark.parametrize("variant", ["v2", "v3"])
def test_fine_tuning_gradients_match_transformers(variant, tmp_path):
    """The relative-position bias needs gradients through the fused attention kernel."""
    reference = reference_model("sequence_classification", variant)
    reference.save_pretrained(tmp_path)
    model = auto.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert_same_gradients(reference, model, task_inputs("sequence_classification", reference.config))
