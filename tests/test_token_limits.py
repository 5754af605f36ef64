"""``tokenizer.max_length`` above what the model can take is refused, never cut silently.

Before, ``max_length: 4096`` on a 512-position model was cut to 512 while the config (and the
manifest) said 4096. An explicit value is now checked against the positions a row can really
use; the checkpoint's own defaults are still capped, and the limit used is in the manifest
(``max_length``; the e2e classify test checks it).
"""

from __future__ import annotations

import pytest
from model_test_utils import tiny_bert

from rayformers.models.auto import AutoConfig
from rayformers.pipeline import build_processor
from rayformers.pipeline.config import load_config
from rayformers.pipeline.preflight import PreflightError, resolve_max_length


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("clf") / "m", hidden=16, head="BertForSequenceClassification")


def processor_config(path, **tokenizer) -> dict:
    return {"model": {"path": str(path), "task": "classify"}, "tokenizer": tokenizer}


def test_an_explicit_max_length_above_the_positions_is_refused_naming_both_numbers(classifier):
    with pytest.raises(PreflightError) as refused:
        build_processor(processor_config(classifier, max_length=4096))
    message = str(refused.value)
    assert message.startswith("tokenizer.max_length 4096 is more than the 64 tokens a row can have")
    assert "max_position_embeddings 64" in message and "Set tokenizer.max_length to 64 or less" in message


def test_a_max_length_the_model_can_take_or_the_default_is_used_as_is(classifier):
    assert build_processor(processor_config(classifier, max_length=64)).spec.max_length == 64
    assert build_processor(processor_config(classifier, max_length=20)).spec.max_length == 20
    # unset: MiniLM's tokenizer says 512; capped to the checkpoint's 64 positions (not the user's number)
    assert build_processor(processor_config(classifier)).spec.max_length == 64


def test_positions_reserved_by_roberta_ids_and_a_causal_continuation_count():
    roberta = AutoConfig.for_model("roberta", max_position_embeddings=66)
    cfg = load_config({"model": {"path": "m", "task": "embed"}, "tokenizer": {"max_length": 66}})
    with pytest.raises(PreflightError, match=r"64 tokens .*max_position_embeddings 66, less 2 before the first token"):
        resolve_max_length(cfg, None, roberta, {})
    assert resolve_max_length(load_config({"model": {"path": "m", "task": "embed"}}), None, roberta, {}) == 64

    decoder = AutoConfig.for_model("bert", max_position_embeddings=64, is_decoder=True)
    job = {"model": {"path": "m", "task": "generate"}, "task": {"generation": {"max_new_tokens": 16}}}
    with pytest.raises(PreflightError, match=r"tokenizer.max_length 64 is more than the 48 tokens.*less 16 for the "
                                             r"continuation \(task.generation.max_new_tokens\)"):
        resolve_max_length(load_config({**job, "tokenizer": {"max_length": 64}}), None, decoder, {})
    assert resolve_max_length(load_config({**job, "tokenizer": {"max_length": 48}}), None, decoder, {}) == 48
    assert resolve_max_length(load_config(job), None, decoder, {}) == 48


def test_training_refuses_the_same_explicit_max_length(tmp_path, classifier):
    from test_train_helpers import classify_config

    from rayformers.jobs import train as train_job
    from rayformers.jobs.train_config import load_train_config
    from rayformers.pipeline.config import ConfigError

    cfg = load_train_config(classify_config(str(classifier), str(tmp_path), str(tmp_path / "runs"), "r"),
                            ["tokenizer.max_length=4096"])
    model_config = train_job._model_config(cfg, str(classifier))
    with pytest.raises(ConfigError, match="tokenizer.max_length 4096 is more than the 64 tokens"):
        train_job._tokenizer_settings(cfg, str(classifier), model_config)
