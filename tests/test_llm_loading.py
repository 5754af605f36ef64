"""Loading a decoder-only checkpoint builds each kind of layer once and copies it (`clone_empty`).

Module construction was most of what `from_pretrained` added to a read of the shards; the copies
must still be independent layers: each its own parameters, holding the checkpoint's values, and a
weight the checkpoint lacks initialised in that layer only.
"""

from __future__ import annotations

import safetensors.torch
import torch
import transformers

from rayformers.models import AutoModelForCausalLM
from rayformers.models import decoder

from model_test_utils import single_thread  # noqa: F401  (autouse: one thread per test module)

transformers.logging.set_verbosity_error()


def _checkpoint(path):
    torch.manual_seed(0)
    # 4 layers of two kinds: full attention (layers 0-1) and a sliding window (layers 2-3)
    config = transformers.Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                      use_sliding_window=True, sliding_window=3, max_window_layers=2,
                                      tie_word_embeddings=False)
    hf = transformers.Qwen2ForCausalLM(config).eval()
    hf.save_pretrained(path)
    return hf


def _count_layer_constructions(monkeypatch):
    built = []
    original = decoder.DecoderLayer.__init__

    def counting(self, spec, layer_idx):
        built.append(layer_idx)
        original(self, spec, layer_idx)

    monkeypatch.setattr(decoder.DecoderLayer, "__init__", counting)
    return built


def test_loading_constructs_one_layer_per_kind_and_the_copies_are_independent(tmp_path, monkeypatch):
    hf = _checkpoint(tmp_path)
    built = _count_layer_constructions(monkeypatch)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert built == [0, 2]  # layers 1 and 3 are copies of 0 and 2
    assert [layer.self_attn.sliding_window for layer in ours.model.layers] == [None, None, 3, 3]
    named = list(ours.named_parameters(remove_duplicate=False))
    assert len({id(p) for _, p in named}) == len(named), "no two weights share a parameter"
    reference = dict(hf.named_parameters())
    for name, param in named:
        assert not param.is_meta and torch.equal(param, reference[name]), name
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    torch.testing.assert_close(ours(ids).logits, hf(ids).logits, rtol=1e-5, atol=1e-5)

    built.clear()
    AutoModelForCausalLM.from_config(ours.config)  # a random model: every layer initialised on its own
    assert built == [0, 1, 2, 3]


def test_a_weight_missing_from_the_checkpoint_is_initialised_in_its_layer_only(tmp_path):
    hf = _checkpoint(tmp_path)
    shard = tmp_path / "model.safetensors"
    tensors = safetensors.torch.load_file(shard)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    safetensors.torch.save_file(tensors, shard, metadata={"format": "pt"})
    ours, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == ["model.layers.1.mlp.up_proj.weight"]
    layers = ours.model.layers
    assert layers[1].mlp.up_proj.weight is not layers[0].mlp.up_proj.weight
    assert not layers[1].mlp.up_proj.weight.is_meta
    for i in (0, 2, 3):
        assert torch.equal(layers[i].mlp.up_proj.weight, hf.model.layers[i].mlp.up_proj.weight)
    assert torch.equal(layers[1].mlp.down_proj.weight, hf.model.layers[1].mlp.down_proj.weight)
