"""Parity of our ModernBERT with transformers 4.57.6 on tiny random checkpoints.

Checkpoints of every head are written by transformers and read by ours; both run the same padded
batch, longer than the sliding window so local attention really differs from global attention, under
transformers' "eager" and "sdpa" attention. Our save_pretrained output is read back by transformers.
The pipeline's classify and embed operators run on the checkpoints as plain callables.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import torch
import transformers

from rayformers.models import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from rayformers.models import modernbert as ours_mb
from rayformers.operators import ClassifyOperator, EmbedOperator
from rayformers.operators.records import ERROR_COLUMN

from model_test_utils import ATOL_KW, assert_all_close, single_thread  # noqa: F401  (autouse fixture)

transformers.logging.set_verbosity_error()

VOCAB = 99
PAD = 0

# Two architectures: the released defaults (no biases, cls pooling, local layers between globals) and
# every switch flipped (biases everywhere, mean pooling, a global layer every 3rd, another activation).
CONFIGS = {
    "default": dict(),
    "biased-mean": dict(norm_bias=True, attention_bias=True, mlp_bias=True, classifier_bias=True,
                        classifier_pooling="mean", global_attn_every_n_layers=3, local_rope_theta=500.0,
                        global_rope_theta=1000.0, hidden_activation="silu", decoder_bias=False, num_hidden_layers=4),
}

HEADS = {
    "base": (transformers.ModernBertModel, AutoModel, ours_mb.ModernBertModel),
    "masked_lm": (transformers.ModernBertForMaskedLM, AutoModelForMaskedLM, ours_mb.ModernBertForMaskedLM),
    "sequence_classification": (transformers.ModernBertForSequenceClassification,
                                AutoModelForSequenceClassification, ours_mb.ModernBertForSequenceClassification),
    "token_classification": (transformers.ModernBertForTokenClassification, AutoModelForTokenClassification,
                             ours_mb.ModernBertForTokenClassification),
    "question_answering": (transformers.ModernBertForQuestionAnswering, AutoModelForQuestionAnswering,
                           ours_mb.ModernBertForQuestionAnswering),
    "multiple_choice": (transformers.ModernBertForMultipleChoice, AutoModelForMultipleChoice,
                        ours_mb.ModernBertForMultipleChoice),
}


def _config(name: str, **extra):
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                max_position_embeddings=64, local_attention=4, global_attn_every_n_layers=2, pad_token_id=PAD,
                bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, num_labels=3,
                reference_compile=False, initializer_range=0.2)
    return transformers.ModernBertConfig(**{**base, **CONFIGS[name], **extra})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(config name, head) -> directory written by transformers."""
    out = {}
    for config_name in CONFIGS:
        for head, (hf_cls, _, _) in HEADS.items():
            torch.manual_seed(0)
            extra = dict(num_labels=2) if head == "question_answering" else {}  # start / end logits
            model = hf_cls(_config(config_name, **extra)).eval()
            path = tmp_path_factory.mktemp(f"{config_name}-{head}")
            model.save_pretrained(path)
            out[config_name, head] = path
    return out


def _hf(path, head, impl):
    return HEADS[head][0].from_pretrained(path, attn_implementation=impl).eval()


def _batch(rows=3, width=13):
    """Right-padded rows (one full, two shorter), longer than the 4-token window; a [CLS] first."""
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, VOCAB, (rows, width), generator=g)
    input_ids[:, 0] = 1
    mask = torch.ones_like(input_ids)
    for row, length in enumerate([width, 9, 3, 6][:rows]):
        mask[row, length:] = 0
    input_ids[mask == 0] = PAD
    return input_ids, mask


def _inputs(head):
    input_ids, mask = _batch()
    if head == "multiple_choice":
        input_ids, mask = _batch(rows=4)
        return dict(input_ids=input_ids.view(2, 2, -1), attention_mask=mask.view(2, 2, -1), labels=torch.tensor([1, 0]))
    labels = {
        "masked_lm": torch.where(mask.bool(), torch.randint(0, VOCAB, input_ids.shape), -100),
        "sequence_classification": torch.tensor([0, 2, 1]),
        "token_classification": torch.where(mask.bool(), torch.randint(0, 3, input_ids.shape), -100),
    }
    kwargs = dict(input_ids=input_ids, attention_mask=mask)
    if head == "question_answering":
        kwargs.update(start_positions=torch.tensor([1, 4, 0]), end_positions=torch.tensor([3, 7, 2]))
    elif head in labels:
        kwargs["labels"] = labels[head]
    return kwargs


def _assert_outputs_equal(ref, got):
    for key in ref.keys():
        if key in ("hidden_states", "attentions"):
            assert_all_close(ref[key], got[key])
        else:
            torch.testing.assert_close(got[key], ref[key], **ATOL_KW, msg=lambda m: f"{key}: {m}")
    assert list(got.keys()) == list(ref.keys())


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("head", list(HEADS))
def test_every_head_matches_transformers_with_padding(checkpoints, head, config_name, impl):
    path = checkpoints[config_name, head]
    hf = _hf(path, head, impl)
    ours, info = HEADS[head][1].from_pretrained(path, output_loading_info=True, attn_implementation=impl)
    assert type(ours) is HEADS[head][2]
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    inputs = _inputs(head)
    torch.manual_seed(3)
    with torch.no_grad():
        ref = hf(**inputs, output_hidden_states=True)
        got = ours(**inputs, output_hidden_states=True)
    _assert_outputs_equal(ref, got)
    # the tuple form (return_dict=False) has transformers' layout per head
    with torch.no_grad():
        ref_tuple = hf(**inputs, return_dict=False)
        got_tuple = ours(**inputs, return_dict=False)
    assert_all_close(ref_tuple, got_tuple)


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_attention_probabilities_match_eager(checkpoints, config_name):
    path = checkpoints[config_name, "base"]
    hf = _hf(path, "base", "eager")
    ours = AutoModel.from_pretrained(path)  # sdpa by default: output_attentions switches to the explicit path
    input_ids, mask = _batch()
    with torch.no_grad():
        ref = hf(input_ids=input_ids, attention_mask=mask, output_attentions=True)
        got = ours(input_ids=input_ids, attention_mask=mask, output_attentions=True)
    assert_all_close(ref.attentions, got.attentions)
    torch.testing.assert_close(got.last_hidden_state, ref.last_hidden_state, **ATOL_KW)
    # Local layers really are windowed: query 0 gives no weight beyond local_attention // 2 = 2 tokens.
    local = [i for i in range(len(got.attentions)) if i % hf.config.global_attn_every_n_layers != 0]
    assert local and bool((got.attentions[local[0]][0, :, 0, 3:] == 0).all())
    assert bool((got.attentions[0][0, :, 0, 3:] > 0).all())  # layer 0 is global


def test_real_tokens_do_not_depend_on_padding_or_batch_mates(checkpoints):
    """A row's outputs equal those of the row alone, unpadded (padding never leaks into real tokens)."""
    ours = AutoModelForTokenClassification.from_pretrained(checkpoints["default", "token_classification"])
    input_ids, mask = _batch()
    with torch.no_grad():
        batched = ours(input_ids=input_ids, attention_mask=mask).logits
        for row in range(input_ids.shape[0]):
            length = int(mask[row].sum())
            alone = ours(input_ids=input_ids[row:row + 1, :length]).logits
            torch.testing.assert_close(batched[row, :length], alone[0], **ATOL_KW)


def test_inputs_embeds_and_position_ids_match_transformers(checkpoints):
    path = checkpoints["biased-mean", "base"]
    hf = _hf(path, "base", "sdpa")
    ours = AutoModel.from_pretrained(path)
    input_ids, mask = _batch()
    embeds = hf.get_input_embeddings()(input_ids)
    positions = torch.arange(3, 3 + input_ids.shape[1])[None]
    with torch.no_grad():
        ref = hf(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        got = ours(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
    torch.testing.assert_close(got.last_hidden_state, ref.last_hidden_state, **ATOL_KW)


@pytest.mark.parametrize("head", ["masked_lm", "sequence_classification", "question_answering"])
def test_our_save_loads_in_transformers_with_identical_outputs(checkpoints, tmp_path, head):
    ours = HEADS[head][1].from_pretrained(checkpoints["biased-mean", head])
    ours.save_pretrained(tmp_path)
    hf, info = HEADS[head][0].from_pretrained(tmp_path, output_loading_info=True, attn_implementation="sdpa")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    inputs = _inputs(head)
    with torch.no_grad():
        _assert_outputs_equal(hf.eval()(**inputs), ours(**inputs))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "modernbert" and "reference_compile" not in saved


def test_config_matches_transformers_and_validates_pooling(checkpoints):
    path = checkpoints["biased-mean", "base"]
    ours = AutoConfig.from_pretrained(path)
    ref = transformers.AutoConfig.from_pretrained(path)
    assert type(ours) is ours_mb.ModernBertConfig
    for key in ("local_attention", "global_attn_every_n_layers", "global_rope_theta", "local_rope_theta", "norm_bias",
                "classifier_pooling", "cls_token_id", "sep_token_id", "hidden_activation"):
        assert getattr(ours, key) == getattr(ref, key), key
    with pytest.raises(ValueError, match="classifier_pooling"):
        ours_mb.ModernBertConfig(classifier_pooling="max")


def test_unpadded_inputs_and_bad_masks_raise_clear_errors(checkpoints):
    ours = AutoModel.from_pretrained(checkpoints["default", "base"])
    input_ids, mask = _batch()
    with pytest.raises(NotImplementedError, match="padded batches only"):
        ours(input_ids=input_ids, attention_mask=mask, cu_seqlens=torch.tensor([0, 13]))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        ours(input_ids=input_ids, attention_mask=mask[:, :5])
    with pytest.raises(ValueError, match="outside this model's vocabulary"):
        ours(input_ids=input_ids + VOCAB)


# ---------------------------------------------------------------------------------- operators


def _token_table(input_ids, mask):
    rows = [ids[: int(m.sum())].tolist() for ids, m in zip(input_ids, mask)]
    return pa.table({"id": list(range(len(rows))), "input_ids": rows, ERROR_COLUMN: [None] * len(rows)}), rows


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_classify_operator_matches_transformers(checkpoints, config_name):
    path = checkpoints[config_name, "sequence_classification"]
    hf = _hf(path, "sequence_classification", "sdpa")
    op = ClassifyOperator(model=AutoModelForSequenceClassification.from_pretrained(path), max_tokens_per_batch=20,
                          top_k=2)
    table, rows = _token_table(*_batch(rows=4))
    out = op(table)
    for i, ids in enumerate(rows):
        with torch.no_grad():
            probs = torch.softmax(hf(input_ids=torch.tensor([ids])).logits[0], -1)
        assert out.column("label")[i].as_py() == hf.config.id2label[int(probs.argmax())]
        assert abs(out.column("score")[i].as_py() - float(probs.max())) < 1e-5
        assert out.column(ERROR_COLUMN)[i].as_py() is None


def test_embed_operator_matches_transformers_mean_pooling(checkpoints):
    path = checkpoints["default", "base"]
    hf = _hf(path, "base", "sdpa")
    op = EmbedOperator(model=AutoModel.from_pretrained(path), pooling="mean", normalize=True, max_tokens_per_batch=30)
    table, rows = _token_table(*_batch(rows=4))
    out = op(table)
    for i, ids in enumerate(rows):
        with torch.no_grad():
            expected = torch.nn.functional.normalize(hf(input_ids=torch.tensor([ids])).last_hidden_state.mean(1), dim=-1)
        torch.testing.assert_close(torch.tensor(out.column("embedding")[i].as_py()), expected[0], **ATOL_KW)
