"""Parity of models/bert.py (BERT, RoBERTa, CamemBERT, XLM-RoBERTa) with transformers 4.57.6.

Every checkpoint here is built and saved by transformers (or saved by us and read by transformers);
outputs are compared with `torch.testing.assert_close(rtol=0, atol=1e-5)` on batches WITH padding,
both on the fused SDPA path and on the explicit path that returns attention probabilities.
"""

from __future__ import annotations

import json
import os

import pytest
import safetensors.torch
import torch
import transformers

from rayformers.models import auto
from rayformers.models import bert as ours

from model_test_utils import assert_same_outputs, assert_tree_close, run_both, single_thread  # noqa: F401

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64)
FAMILIES = ["bert", "roberta", "camembert", "xlm-roberta"]
TASKS = ["base", "sequence_classification", "token_classification", "question_answering", "multiple_choice",
         "masked_lm", "causal_lm"]
ATOL = 1e-5


# ------------------------------------------------------------------------------------------ helpers


def class_name(model_type: str, task: str) -> str:
    return auto.MODEL_NAMES[model_type][task]


def config_name(model_type: str) -> str:
    return auto.CONFIG_MAPPING_NAMES[model_type]


def reference_model(model_type: str, task: str, **config_kwargs):
    """A seeded tiny transformers model in eval mode."""
    if task == "causal_lm":
        config_kwargs.setdefault("is_decoder", True)
    config = getattr(transformers, config_name(model_type))(**TINY, **config_kwargs)
    torch.manual_seed(0)
    return getattr(transformers, class_name(model_type, task))(config).eval()


def padded_batch(pad_token_id: int, batch: int = 3, seq: int = 9, seed: int = 0) -> dict:
    """Token ids with right padding in two rows and a second segment, as a tokenizer would produce."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, TINY["vocab_size"], (batch, seq), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 3:] = 0
    input_ids[attention_mask == 0] = pad_token_id
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 4:] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def task_inputs(task: str, config) -> dict:
    """Inputs and labels of a head (labels exercise the loss of every head)."""
    batch = padded_batch(config.pad_token_id)
    ignore_padding = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    if task == "multiple_choice":
        other = padded_batch(config.pad_token_id, seed=1)
        batch = {k: torch.stack([batch[k], other[k]], dim=1) for k in batch}
        batch["labels"] = torch.tensor([0, 1, 1])
    elif task == "sequence_classification":
        batch["labels"] = torch.tensor([0, 1, 1])
    elif task == "token_classification":
        batch["labels"] = (batch["input_ids"] % config.num_labels).masked_fill(batch["attention_mask"] == 0, -100)
    elif task == "question_answering":
        # 50 lies outside the sequence: clamped and ignored by the loss, as in transformers.
        batch["start_positions"] = torch.tensor([1, 3, 50])
        batch["end_positions"] = torch.tensor([2, 5, 0])
    elif task in ("masked_lm", "causal_lm"):
        batch["labels"] = ignore_padding
    return batch


FLAG_SETS = [{}, {"output_hidden_states": True, "output_attentions": True}]


@pytest.fixture(scope="module")
def saved_references(tmp_path_factory):
    """(model_type, task) -> (transformers model, checkpoint dir); each built once per module."""
    cache = {}

    def get(model_type: str, task: str):
        if (model_type, task) not in cache:
            reference = reference_model(model_type, task)
            path = tmp_path_factory.mktemp(f"{model_type}-{task}")
            reference.save_pretrained(path)
            cache[(model_type, task)] = (reference, path)
        return cache[(model_type, task)]

    return get


# ------------------------------------------------------------------------------------------ parity per head


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_head_matches_transformers(model_type, task, saved_references):
    reference, path = saved_references(model_type, task)
    inputs = task_inputs(task, reference.config)
    for loader in (auto.TASK_TO_AUTO_CLASS[task], getattr(ours, class_name(model_type, task))):
        model, info = loader.from_pretrained(path, output_loading_info=True)
        assert type(model).__name__ == class_name(model_type, task)
        assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
        assert not model.training
        for flags in FLAG_SETS:
            expected, actual = run_both(reference, model, inputs, **flags)
            assert_same_outputs(expected, actual)
            if task != "base":
                assert actual.loss is not None and torch.isfinite(actual.loss)


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("problem_type, num_labels, make_labels", [
    ("regression", 1, lambda: torch.tensor([0.5, -1.0, 2.0])),
    ("single_label_classification", 3, lambda: torch.tensor([0, 2, 1])),
    ("multi_label_classification", 3, lambda: torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])),
])
def test_sequence_classification_losses_per_problem_type(model_type, problem_type, num_labels, make_labels, tmp_path):
    # problem_type is left unset: both implementations must infer it from num_labels and the label dtype.
    reference = reference_model(model_type, "sequence_classification", num_labels=num_labels)
    reference.save_pretrained(tmp_path)
    model = auto.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    inputs = {**padded_batch(reference.config.pad_token_id), "labels": make_labels()}
    expected, actual = run_both(reference, model, inputs)
    assert model.config.problem_type == reference.config.problem_type == problem_type
    assert_same_outputs(expected, actual)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_optional_inputs_match_transformers(model_type, saved_references):
    """Default buffers (token types, positions) and caller-provided position ids / embeddings."""
    reference, path = saved_references(model_type, "base")
    model = ours.BertModel.from_pretrained(path) if model_type == "bert" else ours.RobertaModel.from_pretrained(path)
    batch = padded_batch(reference.config.pad_token_id)
    no_token_types = {k: v for k, v in batch.items() if k != "token_type_ids"}
    positions = torch.arange(2, 11).expand(3, -1)
    embeds = reference.get_input_embeddings()(batch["input_ids"]).detach()
    for inputs in (batch, no_token_types, {**batch, "position_ids": positions},
                   {"inputs_embeds": embeds, "attention_mask": batch["attention_mask"]}):
        assert_same_outputs(*run_both(reference, model, inputs, output_hidden_states=True))
    # Buffers exist but are not part of checkpoints, exactly like transformers.
    buffers = dict(model.named_buffers())
    assert {"embeddings.position_ids", "embeddings.token_type_ids"} <= set(buffers)
    assert not {"embeddings.position_ids", "embeddings.token_type_ids"} & set(model.state_dict())
    with pytest.raises(ValueError, match="both input_ids and inputs_embeds"):
        model(input_ids=batch["input_ids"], inputs_embeds=embeds)


def test_roberta_positions_skip_padding():
    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1]])
    expected = transformers.models.roberta.modeling_roberta.create_position_ids_from_input_ids(ids, 1, 3)
    got = ours.create_position_ids_from_input_ids(ids, 1, 3)
    assert torch.equal(got, expected)
    assert got[0].tolist() == [5, 6, 7, 8, 1, 1]


@pytest.mark.parametrize("model_type, task", [("bert", "base"), ("bert", "masked_lm"), ("roberta", "causal_lm"),
                                              ("xlm-roberta", "question_answering")])
def test_tuple_outputs_match_transformers(model_type, task, saved_references):
    """`return_dict=False` gives transformers' tuple layout (including BertModel's pooled slot)."""
    reference, path = saved_references(model_type, task)
    model = auto.TASK_TO_AUTO_CLASS[task].from_pretrained(path)
    inputs = task_inputs(task, reference.config)
    if task == "causal_lm":
        inputs.pop("labels")  # labels disable the cache; keep it to check the past_key_values slot
    expected, actual = run_both(reference, model, inputs, return_dict=False, output_hidden_states=True)
    assert isinstance(actual, tuple) and len(actual) == len(expected)
    for i, (e, a) in enumerate(zip(expected, actual)):
        if hasattr(e, "to_legacy_cache"):
            e = legacy_cache(e)
        assert_tree_close(e, a, path=f"tuple[{i}]")
    if task == "base":
        # Without a pooler the slot stays (None), so outputs[2:] means the same as in transformers.
        assert ours.BertModel(model.config, add_pooling_layer=False)(**inputs, return_dict=False)[1] is None


def test_head_mask_matches_transformers(saved_references):
    reference, path = saved_references("bert", "sequence_classification")
    model = auto.AutoModelForSequenceClassification.from_pretrained(path)
    inputs = padded_batch(0)
    per_layer = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.5]])
    for head_mask in (per_layer, per_layer[0]):
        for flags in FLAG_SETS:
            assert_same_outputs(*run_both(reference, model, {**inputs, "head_mask": head_mask}, **flags))


@pytest.mark.parametrize("position_embedding_type", ["relative_key", "relative_key_query"])
def test_relative_position_embeddings_match_transformers(position_embedding_type, tmp_path):
    reference = reference_model("bert", "base", position_embedding_type=position_embedding_type)
    reference.save_pretrained(tmp_path)
    model, info = auto.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    for flags in FLAG_SETS:
        assert_same_outputs(*run_both(reference, model, padded_batch(0), **flags))


def test_roberta_family_shares_the_bert_implementation():
    for prefix in ("Roberta", "Camembert", "XLMRoberta"):
        for role, bert_class in [("Model", ours.BertModel), ("ForMaskedLM", ours.BertForMaskedLM),
                                 ("ForCausalLM", ours.BertLMHeadModel),
                                 ("ForSequenceClassification", ours.BertForSequenceClassification)]:
            cls = getattr(ours, prefix + role)
            assert issubclass(cls, bert_class)
            assert "__init__" not in vars(cls) and "forward" not in vars(cls)


# ------------------------------------------------------------------------------------------ decoders


def decoder_pair(model_type: str, tmp_path, **config_kwargs):
    reference = reference_model(model_type, "causal_lm", **config_kwargs)
    reference.save_pretrained(tmp_path)
    model, info = auto.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    return reference, model


def encoder_states(batch=3, length=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, length, TINY["hidden_size"], generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, 3:] = 0
    return {"encoder_hidden_states": states, "encoder_attention_mask": mask}


def legacy_cache(reference_cache) -> tuple:
    """transformers' cache object as the project's tuple format (its empty cross-attention slots dropped)."""
    return tuple(tuple(t for t in layer if t is not None) for layer in reference_cache.to_legacy_cache())


def assert_cache_equal(reference_cache, cache, entries_per_layer):
    legacy = legacy_cache(reference_cache)
    assert len(cache) == len(legacy) == TINY["num_hidden_layers"]
    for expected_layer, layer in zip(legacy, cache):
        assert len(layer) == len(expected_layer) == entries_per_layer
        assert_tree_close(tuple(expected_layer), tuple(layer), path="past_key_values")


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_decoder_with_cross_attention_matches_transformers(model_type, tmp_path):
    reference, model = decoder_pair(model_type, tmp_path, add_cross_attention=True)
    inputs = {**padded_batch(reference.config.pad_token_id), **encoder_states()}
    for flags in FLAG_SETS:
        expected, actual = run_both(reference, model, inputs, use_cache=True, **flags)
        assert_same_outputs(expected, actual)
        if flags:
            assert len(actual.cross_attentions) == TINY["num_hidden_layers"]
        assert_cache_equal(expected.past_key_values, actual.past_key_values, entries_per_layer=4)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    expected, actual = run_both(reference, model, {**inputs, "labels": labels})
    assert actual.past_key_values is None  # labels switch the cache off, as in transformers
    assert_same_outputs(expected, actual)
    # Gradient accumulation divides the summed loss by the tokens of the whole accumulated batch.
    assert_same_outputs(*run_both(reference, model, {**inputs, "labels": labels, "num_items_in_batch": torch.tensor(40)}))


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_incremental_decoding_equals_full_forward(model_type, tmp_path):
    reference, model = decoder_pair(model_type, tmp_path, add_cross_attention=True)
    batch = padded_batch(reference.config.pad_token_id)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    encoder = encoder_states()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, **encoder).logits
        # Token by token, with the mask of the whole sequence so far.
        past, steps = None, []
        for t in range(ids.shape[1]):
            out = model(input_ids=ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=past,
                        use_cache=True, **encoder)
            past, steps = out.past_key_values, steps + [out.logits]
        assert_tree_close(full, torch.cat(steps, dim=1), path="token-by-token")
        assert past[0][0].shape[2] == ids.shape[1] and past[0][2].shape[2] == encoder["encoder_hidden_states"].shape[1]

        # A 4-token prefix then the rest in one step, against transformers doing the same with its cache.
        ours_prefix = model(input_ids=ids[:, :4], attention_mask=mask[:, :4], use_cache=True, **encoder)
        ours_rest = model(input_ids=ids[:, 4:], attention_mask=mask, past_key_values=ours_prefix.past_key_values,
                          use_cache=True, **encoder)
        ref_prefix = reference(input_ids=ids[:, :4], attention_mask=mask[:, :4], use_cache=True, **encoder)
        # transformers' Cache object is accepted too (read only; transformers' next call extends it in place).
        from_their_cache = model(input_ids=ids[:, 4:], attention_mask=mask, use_cache=True, **encoder,
                                 past_key_values=ref_prefix.past_key_values)
        assert_tree_close(ours_rest.logits, from_their_cache.logits, path="from transformers' cache")
        ref_rest = reference(input_ids=ids[:, 4:], attention_mask=mask, past_key_values=ref_prefix.past_key_values,
                             use_cache=True, **encoder)
        assert_tree_close(ref_rest.logits, ours_rest.logits, path="continuation")
        assert_cache_equal(ref_rest.past_key_values, ours_rest.past_key_values, entries_per_layer=4)
        assert_tree_close(full[:, 4:], ours_rest.logits, path="continuation vs full")


def test_cache_rows_can_be_reordered_and_dropped(tmp_path):
    """Generation reorders/drops rows with index_select on every cache tensor; nothing else holds row state."""
    _, model = decoder_pair("bert", tmp_path, add_cross_attention=True)
    batch = padded_batch(0)
    ids, mask = batch["input_ids"], torch.ones_like(batch["input_ids"])
    encoder = encoder_states()
    order = torch.tensor([2, 0])
    with torch.no_grad():
        prefix = model(input_ids=ids[:, :5], attention_mask=mask[:, :5], use_cache=True, **encoder)
        reordered_cache = tuple(tuple(t.index_select(0, order) for t in layer) for layer in prefix.past_key_values)
        reordered_encoder = {k: v.index_select(0, order) for k, v in encoder.items()}
        step = model(input_ids=ids[order, 5:6], attention_mask=mask[order, :6], past_key_values=reordered_cache,
                     use_cache=True, **reordered_encoder)
        full = model(input_ids=ids[order, :6], attention_mask=mask[order, :6], **reordered_encoder)
    assert_tree_close(full.logits[:, 5:6], step.logits)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_decoder_without_cross_attention_matches_transformers(model_type, tmp_path):
    reference, model = decoder_pair(model_type, tmp_path)
    batch = padded_batch(reference.config.pad_token_id)
    for flags in FLAG_SETS:
        expected, actual = run_both(reference, model, batch, use_cache=True, **flags)
        assert_same_outputs(expected, actual)
        assert_cache_equal(expected.past_key_values, actual.past_key_values, entries_per_layer=2)
    with torch.no_grad():
        step = model(input_ids=batch["input_ids"][:, -1:], attention_mask=batch["attention_mask"],
                     past_key_values=model(**{k: v[:, :-1] for k, v in batch.items()}, use_cache=True).past_key_values,
                     token_type_ids=batch["token_type_ids"][:, -1:], use_cache=True)
        full = model(**batch).logits
    assert_tree_close(full[:, -1:], step.logits)


def test_decoder_misuse_gets_clear_errors(tmp_path):
    _, model = decoder_pair("bert", tmp_path)
    ids = torch.randint(3, 99, (2, 4))
    with pytest.raises(ValueError, match="add_cross_attention=True"):
        model(input_ids=ids, **encoder_states(batch=2))
    past = model(input_ids=ids, use_cache=True).past_key_values
    with pytest.raises(ValueError, match="4 cached"):
        model(input_ids=ids[:, :1], attention_mask=torch.ones(2, 1), past_key_values=past)
    with pytest.raises(ValueError, match="decoder model if cross attention"):
        ours.BertModel(ours.BertConfig(**TINY, add_cross_attention=True))


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("model_type", FAMILIES)
def test_our_checkpoint_loads_in_transformers(model_type, task, tmp_path):
    """A model we build and save reads back in transformers with no key left over and equal outputs."""
    config_kwargs = {"is_decoder": True} if task == "causal_lm" else {}
    config = getattr(ours, config_name(model_type))(**TINY, **config_kwargs)
    torch.manual_seed(1)
    model = getattr(ours, class_name(model_type, task))(config).eval()
    model.save_pretrained(tmp_path)
    loaded = getattr(transformers, class_name(model_type, task)).from_pretrained(tmp_path, output_loading_info=True)
    reference, info = loaded
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [class_name(model_type, task)]
    inputs = task_inputs(task, config)
    assert_same_outputs(*run_both(reference, model, inputs, output_hidden_states=True))


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_save_writes_what_transformers_writes(model_type, saved_references, tmp_path):
    """Same tensor names (tied tensors once, under the same name) and bit-identical values after a reload."""
    reference, path = saved_references(model_type, "masked_lm")
    model = auto.AutoModelForMaskedLM.from_pretrained(path)
    model.save_pretrained(tmp_path)
    theirs = safetensors.torch.load_file(os.path.join(path, "model.safetensors"))
    mine = safetensors.torch.load_file(os.path.join(tmp_path, "model.safetensors"))
    assert sorted(mine) == sorted(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    inputs = padded_batch(reference.config.pad_token_id)
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, reference(**inputs).logits)


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta"])
def test_untied_lm_head_round_trips(model_type, tmp_path):
    reference = reference_model(model_type, "masked_lm", tie_word_embeddings=False)
    with torch.no_grad():
        reference.get_output_embeddings().weight.add_(1.0)  # make the untied head observably different
    reference.save_pretrained(tmp_path / "theirs")
    model, info = auto.AutoModelForMaskedLM.from_pretrained(tmp_path / "theirs", output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    assert_same_outputs(*run_both(reference, model, padded_batch(reference.config.pad_token_id)))
    model.save_pretrained(tmp_path / "ours")
    back = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "ours").eval()
    assert_same_outputs(*run_both(back, model, padded_batch(reference.config.pad_token_id)))


@pytest.mark.parametrize("model_type, task", [("bert", "sequence_classification"), ("roberta", "masked_lm"),
                                              ("camembert", "causal_lm")])
def test_sharded_transformers_checkpoint_loads(model_type, task, tmp_path):
    reference = reference_model(model_type, task)
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert not (tmp_path / "model.safetensors").exists()
    model, info = auto.TASK_TO_AUTO_CLASS[task].from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert_same_outputs(*run_both(reference, model, task_inputs(task, reference.config)))


# ------------------------------------------------------------------------------------------ real checkpoint

SENTENCES = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog, then takes a long nap under the old oak tree.",
    "Ray schedules tasks.",
    "Padding must not change the embedding of a short sentence.",
]


@pytest.fixture(scope="module")
def minilm(minilm_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # the batch really has padding
    reference = transformers.AutoModel.from_pretrained(minilm_path).eval()
    model, info = auto.AutoModel.from_pretrained(minilm_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    return reference, model, dict(batch)


def test_minilm_hidden_states_match_transformers(minilm):
    reference, model, batch = minilm
    assert isinstance(model, ours.BertModel)
    for flags in ({}, {"output_hidden_states": True}):
        expected, actual = run_both(reference, model, batch, **flags)
        assert_same_outputs(expected, actual)
    assert len(actual.hidden_states) == 7


def test_minilm_sentence_embeddings_match_sentence_transformers(minilm, minilm_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    _, model, batch = minilm
    with torch.no_grad():
        tokens = model(**batch).last_hidden_state
    weights = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
    embeddings = torch.nn.functional.normalize((tokens * weights).sum(1) / weights.sum(1).clamp(min=1e-9), dim=-1)
    encoder = sentence_transformers.SentenceTransformer(str(minilm_path), device="cpu")
    expected = encoder.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(embeddings, expected, rtol=0, atol=ATOL)
