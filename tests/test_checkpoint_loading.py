"""from_pretrained / save_pretrained: every loading case of transformers, checked against it."""

from __future__ import annotations

import copy
import json
import os

import pytest
import safetensors.torch
import torch
import transformers

from rayformers.models import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from rayformers.models.auto import AutoModelForSeq2SeqLM
from rayformers.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel
from rayformers.models.checkpoint_io import CorruptCheckpointError
from rayformers.models.hub import CheckpointNotFoundError

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2)


def _batch():
    torch.manual_seed(0)
    input_ids = torch.randint(1, 99, (3, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 3:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def ref_classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref-cls")
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(**TINY, num_labels=3)).eval()
    model.save_pretrained(path)
    return model, path


def test_single_safetensors_file(ref_classifier):
    ref, path = ref_classifier
    ours, info = AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True)
    assert isinstance(ours, BertForSequenceClassification) and not ours.training
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    with torch.no_grad():
        _close(ours(**_batch()).logits, ref(**_batch()).logits)


def test_sharded_safetensors_and_bin(tmp_path, ref_classifier):
    ref, _ = ref_classifier
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ref.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "pytorch_model.bin").exists()
    ref.save_pretrained(tmp_path / "bin-sharded", safe_serialization=False, max_shard_size="20KB")
    for name in ("sharded", "bin", "bin-sharded"):
        ours = AutoModelForSequenceClassification.from_pretrained(tmp_path / name)
        with torch.no_grad():
            _close(ours(**_batch()).logits, ref(**_batch()).logits)


def test_bin_is_loaded_with_weights_only(tmp_path, ref_classifier):
    _, path = ref_classifier
    target = tmp_path / "evil"
    target.mkdir()
    (target / "config.json").write_text((path / "config.json").read_text())
    torch.save({"weight": torch.zeros(1), "payload": os.system}, target / "pytorch_model.bin")
    with pytest.raises(CorruptCheckpointError, match="weights_only"):
        AutoModelForSequenceClassification.from_pretrained(target)


def test_base_checkpoint_into_head_and_head_into_base(tmp_path, ref_classifier):
    ref_head, head_path = ref_classifier
    torch.manual_seed(1)
    ref_base = transformers.BertModel(transformers.BertConfig(**TINY)).eval()
    ref_base.save_pretrained(tmp_path / "base")

    head, info = BertForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=3, output_loading_info=True)
    ref_head2, ref_info = transformers.BertForSequenceClassification.from_pretrained(
        tmp_path / "base", num_labels=3, output_loading_info=True)
    assert sorted(info["missing_keys"]) == sorted(ref_info["missing_keys"])
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    with torch.no_grad():
        _close(head.bert(**_batch()).last_hidden_state, ref_base(**_batch()).last_hidden_state)

    base, info = AutoModel.from_pretrained(head_path, output_loading_info=True)
    _, ref_info = transformers.AutoModel.from_pretrained(head_path, output_loading_info=True)
    assert info["missing_keys"] == ref_info["missing_keys"] == []
    assert sorted(info["unexpected_keys"]) == sorted(ref_info["unexpected_keys"])
    with torch.no_grad():
        _close(base(**_batch()).last_hidden_state, ref_head.bert(**_batch()).last_hidden_state)


def test_legacy_gamma_beta_names(tmp_path, ref_classifier):
    ref, path = ref_classifier
    state = safetensors.torch.load_file(path / "model.safetensors")
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in state.items()}
    assert any(k.endswith("LayerNorm.gamma") for k in legacy)
    target = tmp_path / "legacy"
    target.mkdir()
    (target / "config.json").write_text((path / "config.json").read_text())
    safetensors.torch.save_file(legacy, target / "model.safetensors", metadata={"format": "pt"})
    ours, info = AutoModelForSequenceClassification.from_pretrained(target, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    with torch.no_grad():
        _close(ours(**_batch()).logits, ref(**_batch()).logits)


def test_tied_weights_load_and_are_saved_once(tmp_path):
    torch.manual_seed(0)
    ref = transformers.BertForMaskedLM(transformers.BertConfig(**TINY)).eval()
    ref.save_pretrained(tmp_path / "ref")
    ours, info = AutoModelForMaskedLM.from_pretrained(tmp_path / "ref", output_loading_info=True)
    assert info["missing_keys"] == []
    assert ours.get_output_embeddings().weight is ours.get_input_embeddings().weight
    ours.save_pretrained(tmp_path / "ours")
    keys = safetensors.torch.load_file(tmp_path / "ours" / "model.safetensors").keys()
    assert "bert.embeddings.word_embeddings.weight" in keys
    assert "cls.predictions.decoder.weight" not in keys
    back = transformers.BertForMaskedLM.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        _close(back(**_batch()).logits, ref(**_batch()).logits)
        _close(ours(**_batch()).logits, ref(**_batch()).logits)


def test_round_trip_ours_to_transformers_sharded(tmp_path, ref_classifier):
    ref, path = ref_classifier
    ours = BertForSequenceClassification.from_pretrained(path)
    ours.save_pretrained(tmp_path / "out", max_shard_size="20KB")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and config["model_type"] == "bert"
    back = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        _close(back(**_batch()).logits, ref(**_batch()).logits)
    # Saving again unsharded removes the stale shards and index.
    ours.save_pretrained(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]


def test_unexpected_and_mismatched_keys(tmp_path, ref_classifier):
    _, path = ref_classifier
    state = safetensors.torch.load_file(path / "model.safetensors")
    state["bert.extra.weight"] = torch.zeros(2)
    target = tmp_path / "extra"
    target.mkdir()
    (target / "config.json").write_text((path / "config.json").read_text())
    safetensors.torch.save_file(state, target / "model.safetensors", metadata={"format": "pt"})
    _, info = AutoModelForSequenceClassification.from_pretrained(target, output_loading_info=True)
    assert info["unexpected_keys"] == ["bert.extra.weight"]

    with pytest.raises(RuntimeError, match=r"(?s)size mismatch for classifier.weight.*ignore_mismatched_sizes=True"):
        AutoModelForSequenceClassification.from_pretrained(path, num_labels=5)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True)
    assert sorted(k for k, _, _ in info["mismatched_keys"]) == ["classifier.bias", "classifier.weight"]
    assert model.classifier.weight.shape == (5, 32) and not model.classifier.weight.is_meta


def test_dtype_options(tmp_path, ref_classifier):
    ref, path = ref_classifier
    copy.deepcopy(ref).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "bf16").dtype == torch.float32
    auto = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert auto.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in auto.parameters())
    half = AutoModelForSequenceClassification.from_pretrained(path, torch_dtype=torch.float16)
    assert half.dtype == torch.float16 and half.config.dtype == torch.float16
    with pytest.raises(ValueError, match="not a torch dtype"):
        AutoModelForSequenceClassification.from_pretrained(path, dtype="float33")


def test_state_dict_argument(ref_classifier):
    ref, path = ref_classifier
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    state["classifier.bias"] = torch.tensor([1.0, 2.0, 3.0])
    ours = AutoModelForSequenceClassification.from_pretrained(path, state_dict=state)
    assert torch.equal(ours.classifier.bias, torch.tensor([1.0, 2.0, 3.0]))


def test_no_parameter_left_on_meta_and_missing_keys_initialised(tmp_path):
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**TINY)).save_pretrained(tmp_path)
    model = BertForMaskedLM.from_pretrained(tmp_path)
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    bias = model.cls.predictions.bias
    assert torch.all(bias == 0)  # missing head bias initialised like transformers (zeros)
    # the random init skipped while building on meta is back afterwards, also after a failed load
    assert float(model.cls.predictions.transform.dense.weight.detach().std()) > 0
    with pytest.raises(RuntimeError, match="size mismatch"):
        BertForSequenceClassification.from_pretrained(tmp_path, vocab_size=TINY["vocab_size"] + 1)
    fresh = BertModel(BertConfig(**TINY))
    assert 0.01 < float(fresh.encoder.layer[0].intermediate.dense.weight.std()) < 0.03  # std 0.02 init
    assert float(torch.nn.Linear(8, 8).weight.abs().sum()) > 0


def test_hub_id_offline_from_cache_with_revision(tmp_path, ref_classifier, hub_cache):
    ref, path = ref_classifier
    hub_cache("org/tiny-cls", path, commit="a" * 40, refs=("main", "v1"))
    for revision in (None, "v1", "a" * 40):
        ours = AutoModelForSequenceClassification.from_pretrained(
            "org/tiny-cls", cache_dir=hub_cache.cache_dir, revision=revision)
        with torch.no_grad():
            _close(ours(**_batch()).logits, ref(**_batch()).logits)
    with pytest.raises(CheckpointNotFoundError):
        AutoModelForSequenceClassification.from_pretrained("org/tiny-cls", cache_dir=hub_cache.cache_dir,
                                                           revision="v2")


def test_clear_errors(tmp_path, ref_classifier):
    _, path = ref_classifier
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        AutoModel.from_pretrained(tmp_path / "nowhere")
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    (only_config / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(CheckpointNotFoundError, match="no weights found"):
        AutoModel.from_pretrained(only_config)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((path / "config.json").read_text())
    data = (path / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="damaged or truncated"):
        AutoModel.from_pretrained(corrupt)
    with pytest.raises(ValueError, match="Unrecognized configuration class BertConfig .* AutoModelForSeq2SeqLM"):
        AutoModelForSeq2SeqLM.from_pretrained(path)
    with pytest.raises(TypeError, match="needs a PretrainedConfig"):
        BertModel({"hidden_size": 8})


def test_auto_model_from_config_init_and_register(tmp_path):
    config = AutoConfig.for_model("bert", **TINY)
    model = AutoModel.from_config(config)
    assert isinstance(model, BertModel) and not any(p.is_meta for p in model.parameters())
    with pytest.raises(EnvironmentError, match="from_pretrained"):
        AutoModel()

    class ToyConfig(PretrainedConfig):
        model_type = "toy-registered"

        def __init__(self, width=4, **kwargs):
            self.width = width
            super().__init__(**kwargs)

    class ToyModel(PreTrainedModel):
        config_class = ToyConfig

        def __init__(self, config):
            super().__init__(config)
            self.proj = torch.nn.Linear(config.width, config.width)
            self.post_init()

        def forward(self, x):
            return self.proj(x)

    AutoConfig.register("toy-registered", ToyConfig, exist_ok=True)
    AutoModel.register(ToyConfig, ToyModel, exist_ok=True)
    ToyModel(ToyConfig(width=3)).save_pretrained(tmp_path / "toy")
    loaded = AutoModel.from_pretrained(tmp_path / "toy")
    assert isinstance(loaded, ToyModel) and loaded.proj.weight.shape == (3, 3)
