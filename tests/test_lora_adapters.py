"""LoRA adapters as PEFT saves them, loaded by `from_pretrained(adapter_dir)` with the adapter merged.

Each test builds a tiny base model with transformers, wraps it with peft's
`get_peft_model(LoraConfig(...))`, sets every adapter tensor (and modules_to_save copies, trained
biases) to random non-zero values, and saves the adapter (`adapter_config.json` +
`adapter_model.safetensors`). Our loader must give the same logits as peft's unmerged PeftModel
within 1e-5: BERT classifiers and a decoder-only LM (BERT as a causal decoder), target_modules as a
list, a regex and `all-linear`, rank_pattern / alpha_pattern, rsLoRA, lora_bias, bias="all",
fan_in_fan_out, a base named by Hub id (read from the Hub cache), and base_model= given. What cannot
be merged exactly (DoRA, other PEFT methods, LoRA on embeddings) is refused with a clear error.
"""

from __future__ import annotations

import json

import peft
import pytest
import safetensors.torch
import torch
import transformers

from model_test_utils import ATOL, single_thread  # noqa: F401  (autouse fixture)
from rayformers.models import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from rayformers.models.adapters import AdapterError
from rayformers.models.bert import BertForSequenceClassification

transformers.logging.set_verbosity_error()

BERT = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=64, num_labels=3)
INPUTS = dict(input_ids=torch.tensor([[2, 15, 77, 9, 101, 3], [2, 40, 41, 3, 0, 0]]),
              attention_mask=torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]))


def _randomize_adapter(model: peft.PeftModel, seed: int = 0, biases: bool = False) -> None:
    """LoRA B starts at zero (a no-op adapter); give every trainable adapter tensor real values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name or (biases and name.endswith(".bias")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def _build(tmp_path, lora_config: peft.LoraConfig, *, head: str = "cls", base_as_encoder: bool = False,
           seed: int = 0, biases: bool = False, safe_serialization: bool = True):
    """(peft model in eval mode, adapter dir, base dir)."""
    torch.manual_seed(seed)
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    if head == "cls":
        config = transformers.BertConfig(**BERT)
        base = transformers.BertForSequenceClassification(config).eval()
        (transformers.BertModel(config) if base_as_encoder else base).save_pretrained(base_dir)
        base = transformers.BertForSequenceClassification.from_pretrained(base_dir, num_labels=3).eval()
    else:
        config = transformers.BertConfig(**BERT, is_decoder=True)
        transformers.BertLMHeadModel(config).save_pretrained(base_dir)
        base = transformers.BertLMHeadModel.from_pretrained(base_dir).eval()
    model = peft.get_peft_model(base, lora_config)
    _randomize_adapter(model, seed, biases)
    model.eval()
    model.save_pretrained(adapter_dir, safe_serialization=safe_serialization)
    return model, adapter_dir, base_dir


def _logits(model, **inputs):
    with torch.no_grad():
        return model(**(inputs or INPUTS)).logits


CLASSIFIER_CONFIGS = {
    "list-with-patterns": dict(r=4, lora_alpha=8, target_modules=["query", "value", "dense"],
                               rank_pattern={"value": 2, r"layer\.1\.output\.dense": 6},
                               alpha_pattern={"layer.1.attention.self.query": 3}),
    "regex-rslora-lora-bias": dict(r=8, lora_alpha=5, target_modules=r".*\.(query|key|intermediate\.dense)$",
                                   use_rslora=True, lora_bias=True),
    "all-linear-bias-all": dict(r=2, lora_alpha=16, target_modules="all-linear", bias="all"),
}


@pytest.mark.parametrize("case", list(CLASSIFIER_CONFIGS))
def test_classifier_adapter_matches_peft(tmp_path, case):
    options = CLASSIFIER_CONFIGS[case]
    reference, adapter_dir, _ = _build(tmp_path, peft.LoraConfig(task_type="SEQ_CLS", **options),
                                       biases=options.get("bias") == "all")
    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert saved["target_modules"] == options["target_modules"] or case != "regex-rslora-lora-bias"
    ours = AutoModelForSequenceClassification.from_pretrained(adapter_dir)
    expected = _logits(reference)
    torch.testing.assert_close(_logits(ours), expected, rtol=0, atol=ATOL)
    # The adapter changes the outputs: without it the base model scores differently.
    with reference.disable_adapter():
        without = _logits(reference)
    assert (without - expected).abs().max() > 1e-2


def test_encoder_checkpoint_base_with_trained_head(tmp_path):
    """The base checkpoint is a plain BertModel (no 'bert.' prefix, no classifier); the adapter's
    modules_to_save brings the classifier, its LoRA keys name bert.encoder...."""
    reference, adapter_dir, _ = _build(tmp_path, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                                 target_modules=["query", "value"]),
                                       base_as_encoder=True, seed=1)
    ours, info = AutoModelForSequenceClassification.from_pretrained(adapter_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # the classifier came from the adapter
    torch.testing.assert_close(_logits(ours), _logits(reference), rtol=0, atol=ATOL)
    # The model class itself takes the adapter too, and AutoConfig reads the base's config.
    direct = BertForSequenceClassification.from_pretrained(adapter_dir)
    torch.testing.assert_close(_logits(direct), _logits(reference), rtol=0, atol=ATOL)
    assert AutoConfig.from_pretrained(adapter_dir).num_labels == 3


def test_decoder_only_lm_adapter_matches_peft(tmp_path):
    reference, adapter_dir, _ = _build(tmp_path, peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=32,
                                                                 target_modules="all-linear"), head="lm", seed=2)
    ours = AutoModelForCausalLM.from_pretrained(adapter_dir)
    torch.testing.assert_close(_logits(ours), _logits(reference), rtol=0, atol=ATOL)


def test_fan_in_fan_out_weights_are_transposed(tmp_path):
    """PEFT sets fan_in_fan_out for Conv1D-style (in, out) weights; the same update written for that
    layout (A' = B^T, B' = A^T) must give the same merged model."""
    reference, adapter_dir, _ = _build(tmp_path, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                                 target_modules=["query", "value"]), seed=3)
    weights_file = adapter_dir / "adapter_model.safetensors"
    tensors = safetensors.torch.load_file(weights_file)
    swapped = {}
    for key, tensor in tensors.items():
        if ".lora_A." in key:
            swapped[key] = tensors[key.replace(".lora_A.", ".lora_B.")].T.contiguous()
        elif ".lora_B." in key:
            swapped[key] = tensors[key.replace(".lora_B.", ".lora_A.")].T.contiguous()
        else:
            swapped[key] = tensor
    safetensors.torch.save_file(swapped, weights_file)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["fan_in_fan_out"] = True
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    ours = AutoModelForSequenceClassification.from_pretrained(adapter_dir)
    torch.testing.assert_close(_logits(ours), _logits(reference), rtol=0, atol=ATOL)


def test_base_named_by_hub_id_loads_from_the_hub_cache(tmp_path, hub_cache):
    reference, adapter_dir, base_dir = _build(tmp_path, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                                        target_modules=["query"]), seed=4)
    hub_cache("org/tiny-bert-base", base_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "org/tiny-bert-base"
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    ours = AutoModelForSequenceClassification.from_pretrained(adapter_dir, cache_dir=hub_cache.cache_dir)
    torch.testing.assert_close(_logits(ours), _logits(reference), rtol=0, atol=ATOL)
    # The adapter itself may be a Hub repo as well.
    hub_cache("org/tiny-bert-lora", adapter_dir)
    ours = AutoModelForSequenceClassification.from_pretrained("org/tiny-bert-lora", cache_dir=hub_cache.cache_dir)
    torch.testing.assert_close(_logits(ours), _logits(reference), rtol=0, atol=ATOL)


def test_base_model_argument_overrides_and_a_missing_base_is_named(tmp_path):
    reference, adapter_dir, base_dir = _build(tmp_path, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                                        target_modules=["value"]), seed=5)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = ""
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="base_model="):
        AutoModelForSequenceClassification.from_pretrained(adapter_dir)
    ours = AutoModelForSequenceClassification.from_pretrained(adapter_dir, base_model=str(base_dir))
    torch.testing.assert_close(_logits(ours), _logits(reference), rtol=0, atol=ATOL)


@pytest.mark.parametrize("case,config,match", [
    ("dora", peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query"], use_dora=True), "use_dora"),
    ("ia3", peft.IA3Config(task_type="SEQ_CLS", target_modules=["key", "value", "output.dense"],
                           feedforward_modules=["output.dense"]), "peft_type is 'IA3'"),
    ("embedding", peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["word_embeddings"]), "lora_embedding"),
])
def test_unsupported_adapters_are_refused(tmp_path, case, config, match):
    _build(tmp_path, config, seed=6)
    with pytest.raises(AdapterError, match=match):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "adapter")


def test_pickled_adapter_weights_load_and_missing_weights_are_named(tmp_path):
    reference, adapter_dir, _ = _build(tmp_path, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                                 target_modules=["key"]), seed=8,
                                       safe_serialization=False)
    assert (adapter_dir / "adapter_model.bin").is_file()
    ours = AutoModelForSequenceClassification.from_pretrained(adapter_dir)
    torch.testing.assert_close(_logits(ours), _logits(reference), rtol=0, atol=ATOL)
    (adapter_dir / "adapter_model.bin").unlink()
    with pytest.raises(AdapterError, match="no adapter weights"):
        AutoModelForSequenceClassification.from_pretrained(adapter_dir)


def test_adapter_from_another_base_is_named(tmp_path):
    _, adapter_dir, _ = _build(tmp_path, peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query"]))
    other = tmp_path / "other"
    transformers.BertForSequenceClassification(transformers.BertConfig(**{**BERT, "hidden_size": 16})).save_pretrained(
        other)
    with pytest.raises(AdapterError, match="shape"):
        AutoModelForSequenceClassification.from_pretrained(adapter_dir, base_model=str(other))


def test_pipeline_loaders_take_an_adapter_directory_and_its_base_tokenizer(tmp_path):
    """`model.path` of a job may be an adapter directory: the operators' loaders get the merged model,
    and the tokenizer comes from the base when the adapter was saved without one."""
    from rayformers.operators.loading import load_model, load_tokenizer

    reference, adapter_dir, base_dir = _build(tmp_path, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                                        target_modules=["query", "value"]), seed=7)
    (base_dir / "vocab.txt").write_text("".join(f"{t}\n" for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                                                 + [f"w{i}" for i in range(BERT["vocab_size"] - 5)]))
    (base_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    tokenizer = load_tokenizer(str(adapter_dir))
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(base_dir).get_vocab()
    model = load_model("classify", str(adapter_dir))
    inputs = tokenizer(["w1 w2 w3", "w4"], padding=True, return_tensors="pt")
    inputs = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    torch.testing.assert_close(_logits(model, **inputs), _logits(reference, **inputs), rtol=0, atol=ATOL)
