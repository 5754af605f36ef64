"""PretrainedConfig / AutoConfig behave like transformers' and their JSON is interchangeable."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from rayformers.models import AutoConfig, PretrainedConfig
from rayformers.models.bert import BertConfig
from rayformers.models.hub import CheckpointNotFoundError


def _without_version(d: dict) -> dict:
    d = dict(d)
    d.pop("transformers_version", None)
    return d


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37},
        {"num_labels": 5, "problem_type": "multi_label_classification"},
        {"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}, "dtype": "bfloat16"},
        {"is_decoder": True, "add_cross_attention": True, "custom_field": [1, 2]},
    ],
)
def test_diff_dict_and_full_dict_match_transformers(kwargs):
    ours = BertConfig(**kwargs)
    ref = transformers.BertConfig(**kwargs)
    assert _without_version(ours.to_diff_dict()) == _without_version(ref.to_diff_dict())
    assert _without_version(ours.to_dict()) == _without_version(ref.to_dict())


def test_transformers_reads_ours_and_we_read_theirs(tmp_path):
    ours = BertConfig(hidden_size=48, num_labels=3, id2label={0: "a", 1: "b", 2: "c"},
                      label2id={"a": 0, "b": 1, "c": 2}, problem_type="single_label_classification")
    ours.save_pretrained(tmp_path / "ours")
    theirs = transformers.AutoConfig.from_pretrained(tmp_path / "ours")
    assert isinstance(theirs, transformers.BertConfig)
    assert theirs.hidden_size == 48 and theirs.id2label == {0: "a", 1: "b", 2: "c"}
    assert theirs.problem_type == "single_label_classification"

    ref = transformers.BertConfig(vocab_size=99, num_labels=4, dtype=torch.float16)
    ref.save_pretrained(tmp_path / "theirs")
    back = AutoConfig.from_pretrained(tmp_path / "theirs")
    assert isinstance(back, BertConfig)
    assert back.vocab_size == 99 and back.num_labels == 4 and back.dtype == torch.float16
    assert back.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2", 3: "LABEL_3"}


def test_from_pretrained_dir_file_dict_and_json(tmp_path):
    BertConfig(hidden_size=40).save_pretrained(tmp_path)
    from_dir = BertConfig.from_pretrained(tmp_path)
    from_file = BertConfig.from_pretrained(tmp_path / "config.json")
    from_json = BertConfig.from_json_file(tmp_path / "config.json")
    raw, unused = BertConfig.get_config_dict(tmp_path, foo=1)
    assert raw["hidden_size"] == 40 and unused == {"foo": 1}
    from_dict = BertConfig.from_dict(raw)
    assert from_dir == from_file == from_json == from_dict
    assert json.loads(from_dir.to_json_string())["hidden_size"] == 40


def test_kwargs_override_and_return_unused(tmp_path):
    BertConfig(hidden_size=40).save_pretrained(tmp_path)
    config, unused = BertConfig.from_pretrained(tmp_path, hidden_size=64, not_a_field=3, return_unused_kwargs=True)
    assert config.hidden_size == 64
    assert unused == {"not_a_field": 3}
    config = AutoConfig.from_pretrained(tmp_path, num_labels=7)
    assert config.num_labels == 7 and len(config.label2id) == 7


def test_label_maps_and_num_labels():
    config = BertConfig(id2label={"0": "x", "1": "y"})
    assert config.id2label == {0: "x", 1: "y"}  # JSON string keys become ints
    config.num_labels = 3
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert config.label2id == {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}
    with pytest.raises(ValueError, match="num_labels=2 disagrees"):
        BertConfig.from_dict({}, num_labels=2, id2label={0: "a"})


def test_problem_type_is_validated():
    with pytest.raises(ValueError, match="problem_type"):
        BertConfig(problem_type="ranking")


def test_update_and_update_from_string():
    config = BertConfig()
    config.update({"hidden_dropout_prob": 0.5, "new_attr": "x"})
    assert config.hidden_dropout_prob == 0.5 and config.new_attr == "x"
    config.update_from_string("hidden_size=16,is_decoder=true,hidden_dropout_prob=0.25,hidden_act=relu")
    assert (config.hidden_size, config.is_decoder, config.hidden_dropout_prob, config.hidden_act) == (16, True, 0.25, "relu")
    with pytest.raises(ValueError, match="isn't in the original config"):
        config.update_from_string("nope=1")
    with pytest.raises(ValueError, match="can't derive true or false"):
        config.update_from_string("is_decoder=maybe")


def test_attribute_map_aliases():
    class AliasConfig(PretrainedConfig):
        model_type = "alias-test"
        attribute_map = {"hidden_size": "d_model"}

        def __init__(self, d_model=8, **kwargs):
            self.d_model = d_model
            super().__init__(**kwargs)

    config = AliasConfig(hidden_size=12)
    assert config.d_model == 12 and config.hidden_size == 12
    config.hidden_size = 20
    assert config.to_dict()["d_model"] == 20 and "hidden_size" not in config.to_dict()


def test_auto_config_errors(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        AutoConfig.from_pretrained(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match="has no 'model_type'"):
        AutoConfig.from_pretrained(tmp_path)
    named = tmp_path / "my-bert-checkpoint"
    named.mkdir()
    (named / "config.json").write_text(json.dumps({"hidden_size": 8}))
    assert isinstance(AutoConfig.from_pretrained(named), BertConfig)  # resolved by name pattern
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt-unknown"}))
    with pytest.raises(ValueError, match="Supported model types: .*bert"):
        AutoConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(OSError, match="not valid JSON"):
        AutoConfig.from_pretrained(tmp_path)
    with pytest.raises(EnvironmentError, match="from_pretrained"):
        AutoConfig()


def test_config_from_hub_id_offline(tmp_path, hub_cache):
    source = tmp_path / "src"
    BertConfig(hidden_size=24).save_pretrained(source)
    hub_cache("org/tiny-bert", source)
    config = AutoConfig.from_pretrained("org/tiny-bert", cache_dir=hub_cache.cache_dir)
    assert isinstance(config, BertConfig) and config.hidden_size == 24
    with pytest.raises(CheckpointNotFoundError, match="not in the local Hugging Face cache"):
        AutoConfig.from_pretrained("org/absent", cache_dir=hub_cache.cache_dir)
