"""MEGA: parity with transformers 4.57.6 (the last release with MEGA) over a grid of tiny configs.

Every reference model has all its weights (and batch-norm statistics) perturbed before saving, so
that no parameter sits at an init value that would hide a wrong formula (zero biases, unit norm
gains). Outputs are compared with rtol=0, atol=1e-5 in fp32.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from rayformers.models import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from rayformers.models import mega

from model_test_utils import single_thread  # noqa: F401

transformers.logging.set_verbosity_error()

VOCAB = 64
PAD = 1
TINY = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, intermediate_size=24, ema_projection_size=4,
            shared_representation_size=8, nffn_hidden_size=20, max_positions=32)

# Each switch of the issue appears in at least one variant; "length" is the padded batch length.
VARIANTS = {
    # bidirectional EMA, softmax, rotary bias, scalenorm before, normalized FFN
    "default": dict(length=9),
    "laplace-simple-layernorm-postnorm-tokentypes": dict(
        length=9, attention_activation="laplace", relative_positional_bias="simple", normalization_type="layernorm",
        normalize_before_mega=False, normalize_before_ffn=False, add_token_type_embeddings=True, activation="relu"),
    "relu2-rmsnorm-unidirectional-truncation": dict(
        length=9, attention_activation="relu2", normalization_type="rmsnorm", bidirectional=False, truncation=5,
        activation="linear"),
    "batchnorm-no-nffn-featuredropout-no-lm-dense": dict(
        length=9, normalization_type="batchnorm", use_normalized_ffn=False, use_feature_dropout=True,
        activation="gelu", add_lm_hidden_dense_layer=False),
    # two chunks of 4; the short row leaves its whole second chunk padded
    "chunked-softmax-simple-syncbatchnorm": dict(
        length=8, use_chunking=True, chunk_size=4, relative_positional_bias="simple",
        normalization_type="syncbatchnorm", activation="gelu_accurate"),
    "chunked-laplace-truncation-no-affine": dict(
        length=8, use_chunking=True, chunk_size=4, attention_activation="laplace", truncation=3, norm_affine=False),
    # a sequence shorter than one chunk is one (short) chunk
    "chunked-shorter-than-chunk": dict(length=3, use_chunking=True, chunk_size=4, attention_activation="relu2"),
    # REFERENCE QUIRK: the simple bias is sized by chunk_size even with use_chunking=False
    "simple-bias-sized-by-chunk-size": dict(length=9, relative_positional_bias="simple", chunk_size=12),
}

HEADS = ["MegaModel", "MegaForSequenceClassification", "MegaForTokenClassification", "MegaForQuestionAnswering",
         "MegaForMultipleChoice", "MegaForMaskedLM", "MegaForCausalLM"]


def _close(actual, expected, path="output"):
    """Recursive rtol=0 / atol=1e-5 comparison over tensors, tuples (None kept) and ModelOutputs."""
    if expected is None:
        assert actual is None, f"{path}: expected None, got {type(actual).__name__}"
    elif isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{path}: expected a tensor, got {type(actual).__name__}"
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5, msg=lambda m: f"{path}: {m}")
    elif isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)) and len(actual) == len(expected), f"{path}: structure differs"
        for i, (a, e) in enumerate(zip(actual, expected)):
            _close(a, e, f"{path}[{i}]")
    else:
        raise AssertionError(f"{path}: unexpected type {type(expected).__name__}")


def _close_outputs(ours, ref):
    assert list(ours.keys()) == list(ref.keys())
    for key in ref.keys():
        _close(ours[key], ref[key], key)


def _perturb(model: torch.nn.Module, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.3)
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.3)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)


def _config_kwargs(variant: str, head: str) -> tuple[dict, int]:
    kwargs = dict(VARIANTS[variant])
    length = kwargs.pop("length")
    if head == "MegaForCausalLM":
        kwargs.update(is_decoder=True, bidirectional=False)
        if kwargs.get("use_chunking"):
            length = 8  # a chunked decoder needs whole chunks
    num_labels = 2 if head == "MegaForQuestionAnswering" else 3  # QA splits its logits into start/end
    return {**TINY, "num_labels": num_labels, **kwargs}, length


def _reference(head: str, config_kwargs: dict, path, seed: int = 0):
    torch.manual_seed(seed)
    model = getattr(transformers, head)(transformers.MegaConfig(**config_kwargs))
    _perturb(model)
    model.eval().save_pretrained(path)
    return model


def _batch(head: str, length: int, token_types: bool, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    shape = (2, 3, length) if head == "MegaForMultipleChoice" else (3, length)
    input_ids = torch.randint(3, VOCAB, shape, generator=generator)
    mask = torch.ones_like(input_ids)
    mask[..., 1, length - 2:] = 0  # right padding
    mask[..., 2, min(3, length - 1):] = 0
    input_ids = input_ids.masked_fill(mask == 0, PAD)
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if token_types:
        batch["token_type_ids"] = (torch.arange(length) >= length // 2).long().expand(shape).clone()
    rows = shape[0]
    if head == "MegaForSequenceClassification":
        batch["labels"] = torch.tensor([0, 2, 1])
    elif head == "MegaForTokenClassification":
        batch["labels"] = torch.randint(0, 3, shape, generator=generator).masked_fill(mask == 0, -100)
    elif head == "MegaForQuestionAnswering":
        batch["start_positions"] = torch.tensor([0, 2, length + 5])  # the last is out of range: ignored
        batch["end_positions"] = torch.tensor([1, 3, 2])
    elif head == "MegaForMultipleChoice":
        batch["labels"] = torch.tensor([2, 0])
    elif head in ("MegaForMaskedLM", "MegaForCausalLM"):
        batch["labels"] = input_ids.masked_fill(mask == 0, -100)
    assert rows in (2, 3)
    return batch


def _grid() -> list[tuple[str, str]]:
    """Every variant through the bare model and the causal LM (the decoder path differs per
    variant); every other head on three variants that change the body the most."""
    cases = [(variant, head) for variant in VARIANTS for head in ("MegaModel", "MegaForCausalLM")]
    for head in HEADS:
        if head not in ("MegaModel", "MegaForCausalLM"):
            for variant in ("default", "laplace-simple-layernorm-postnorm-tokentypes",
                            "chunked-softmax-simple-syncbatchnorm"):
                cases.append((variant, head))
    return cases


AUTO_CLASSES = {
    "MegaModel": AutoModel,
    "MegaForSequenceClassification": AutoModelForSequenceClassification,
    "MegaForTokenClassification": AutoModelForTokenClassification,
    "MegaForQuestionAnswering": AutoModelForQuestionAnswering,
    "MegaForMultipleChoice": AutoModelForMultipleChoice,
    "MegaForMaskedLM": AutoModelForMaskedLM,
    "MegaForCausalLM": AutoModelForCausalLM,
}


@pytest.mark.filterwarnings("ignore:dropout2d")
@pytest.mark.parametrize("variant,head", _grid())
def test_parity_grid(variant, head, tmp_path):
    """Loading (through the Auto class for the default variant, the concrete class otherwise) and
    every output, with padding and labels, in dict and tuple form."""
    config_kwargs, length = _config_kwargs(variant, head)
    ref = _reference(head, config_kwargs, tmp_path)
    loader = AUTO_CLASSES[head] if variant == "default" else getattr(mega, head)
    ours, info = loader.from_pretrained(tmp_path, output_loading_info=True)
    assert type(ours) is getattr(mega, head)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    assert set(ours.state_dict()) == set(ref.state_dict())

    batch = _batch(head, length, config_kwargs.get("add_token_type_embeddings", False))
    flags = dict(output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        expected = ref(**batch, **flags)
        actual = ours(**batch, **flags)
        _close_outputs(actual, expected)
        # the tuple form keeps transformers' positions (MEGA's tuples keep None entries)
        _close(ours(**batch, **flags, return_dict=False), ref(**batch, **flags, return_dict=False), "tuple")
    if head != "MegaModel":
        assert expected["loss" if "loss" in expected else "logits"] is not None
        assert "loss" in actual.keys()
    assert actual["hidden_states"][0].shape[1] == length
    assert len(actual["attentions"]) == TINY["num_hidden_layers"]


def test_parity_checker_catches_a_wrong_weight(tmp_path):
    """The grid above can fail: a single changed weight is detected."""
    config_kwargs, length = _config_kwargs("default", "MegaModel")
    ref = _reference("MegaModel", config_kwargs, tmp_path)
    ours = mega.MegaModel.from_pretrained(tmp_path)
    with torch.no_grad():
        ours.layers[1].mega_layer.ema_gate.decay_factor[0, 0, 0] += 0.05
        batch = _batch("MegaModel", length, False)
        with pytest.raises(AssertionError):
            _close_outputs(ours(**batch), ref(**batch))


@pytest.mark.parametrize("problem_type,num_labels,labels", [
    ("regression", 1, torch.tensor([0.5, -1.0, 2.0])),
    ("multi_label_classification", 3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])),
])
def test_classification_losses(problem_type, num_labels, labels, tmp_path):
    config_kwargs = {**TINY, "num_labels": num_labels}
    ref = _reference("MegaForSequenceClassification", config_kwargs, tmp_path)
    ours = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    batch = {k: v for k, v in _batch("MegaForSequenceClassification", 7, False).items() if k != "labels"}
    with torch.no_grad():
        expected, actual = ref(**batch, labels=labels), ours(**batch, labels=labels)
    _close_outputs(actual, expected)
    assert ours.config.problem_type == ref.config.problem_type == problem_type


def test_inputs_embeds_and_token_types_without_ids(tmp_path):
    config_kwargs = {**TINY, "add_token_type_embeddings": True}
    ref = _reference("MegaModel", config_kwargs, tmp_path)
    ours = AutoModel.from_pretrained(tmp_path)
    batch = _batch("MegaModel", 6, True)
    embeds = ref.embedding_layer.word_embeddings(batch["input_ids"]).detach()
    with torch.no_grad():
        for extra in ({"token_type_ids": batch["token_type_ids"]}, {}):  # missing ids -> type 0 everywhere
            expected = ref(inputs_embeds=embeds, attention_mask=batch["attention_mask"], **extra)
            actual = ours(inputs_embeds=embeds, attention_mask=batch["attention_mask"], **extra)
            _close_outputs(actual, expected)


def test_training_mode_matches_reference_without_dropout(tmp_path):
    """Train mode changes real code paths (batch statistics, no EMA kernel cache); with dropout off
    the loss, logits and gradients still match transformers."""
    zero_dropout = dict(dropout_prob=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        nffn_activation_dropout_prob=0.0)
    config_kwargs = {**TINY, "num_labels": 3, "normalization_type": "batchnorm", "attention_activation": "laplace",
                     **zero_dropout}
    ref = _reference("MegaForSequenceClassification", config_kwargs, tmp_path).train()
    ours = mega.MegaForSequenceClassification.from_pretrained(tmp_path).train()
    batch = _batch("MegaForSequenceClassification", 8, False)
    expected, actual = ref(**batch), ours(**batch)
    _close_outputs(actual, expected)
    expected.loss.backward()
    actual.loss.backward()
    ref_grads = dict(ref.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, ref_grads[name].grad, rtol=0, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_feature_dropout_trains(tmp_path):
    config = mega.MegaConfig(**TINY, num_labels=2, use_feature_dropout=True, dropout_prob=0.5, hidden_dropout_prob=0.5)
    torch.manual_seed(0)
    model = mega.MegaForSequenceClassification(config).train()
    batch = _batch("MegaForSequenceClassification", 8, False)
    batch["labels"] = torch.tensor([0, 1, 1])
    first, second = model(**batch), model(**batch)
    assert not torch.equal(first.logits, second.logits)  # dropout is active
    first.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------------- decoder and cache


@pytest.mark.parametrize("attention", [
    dict(attention_activation="softmax", relative_positional_bias="rotary"),
    dict(attention_activation="laplace", relative_positional_bias="simple", normalization_type="layernorm"),
])
def test_decoder_with_cross_attention_and_cache_matches_step_by_step(attention, tmp_path):
    config_kwargs = {**TINY, "is_decoder": True, "bidirectional": False, "add_cross_attention": True, **attention}
    ref = _reference("MegaForCausalLM", config_kwargs, tmp_path)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(ours, mega.MegaForCausalLM)
    generator = torch.Generator().manual_seed(3)
    encoder_states = torch.randn(2, 5, TINY["hidden_size"], generator=generator)
    encoder_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    prompt = torch.randint(3, VOCAB, (2, 4), generator=generator)
    prompt_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    common = dict(encoder_hidden_states=encoder_states, encoder_attention_mask=encoder_mask,
                  output_attentions=True, output_hidden_states=True)
    with torch.no_grad():
        expected = ref(input_ids=prompt, attention_mask=prompt_mask, use_cache=True, **common)
        actual = ours(input_ids=prompt, attention_mask=prompt_mask, use_cache=True, **common)
        _close_outputs(actual, expected)
        assert len(actual.past_key_values[0]) == 5  # self k, self v, EMA state, cross k, cross v
        ref_cache, our_cache, mask = expected.past_key_values, actual.past_key_values, prompt_mask
        for step in range(2):
            token = expected.logits[:, -1].argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            expected = ref(input_ids=token, attention_mask=mask, past_key_values=ref_cache, use_cache=True, **common)
            actual = ours(input_ids=token, attention_mask=mask, past_key_values=our_cache, use_cache=True, **common)
            _close_outputs(actual, expected)
            ref_cache, our_cache = expected.past_key_values, actual.past_key_values
        assert our_cache[0][0].shape[1] == 6

        # labels switch the cache off and give the shifted next-token loss
        labels = prompt.masked_fill(prompt_mask == 0, -100)
        expected = ref(input_ids=prompt, attention_mask=prompt_mask, labels=labels, **common)
        actual = ours(input_ids=prompt, attention_mask=prompt_mask, labels=labels, **common)
        _close_outputs(actual, expected)
        assert actual.past_key_values is None


def test_cache_reorders_by_index_select(tmp_path):
    config_kwargs = {**TINY, "is_decoder": True, "bidirectional": False}
    _reference("MegaForCausalLM", config_kwargs, tmp_path)
    ours = mega.MegaForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(3, VOCAB, (3, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = ours(input_ids=ids, use_cache=True).past_key_values
        order = torch.tensor([2, 0])
        reordered = ours._reorder_cache(cache, order)
        next_token = torch.tensor([[7], [9]])
        stepped = ours(input_ids=next_token, past_key_values=reordered, use_cache=True).logits
        full = ours(input_ids=torch.cat([ids[order], next_token], dim=1), use_cache=True).logits[:, -1:]
    torch.testing.assert_close(stepped, full, rtol=0, atol=1e-5)


def test_bidirectional_decoder_with_cache_fails_like_reference(tmp_path):
    config_kwargs = {**TINY, "is_decoder": True}  # bidirectional=True by default
    ref = _reference("MegaForCausalLM", config_kwargs, tmp_path)
    ours = mega.MegaForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(3, VOCAB, (2, 5))
    with pytest.raises(RuntimeError, match="Bidirectional EMA"):
        ref(input_ids=ids)
    with pytest.raises(RuntimeError, match="bidirectional=False"):
        ours(input_ids=ids)
    with torch.no_grad():  # without the cache it runs, as in the reference
        _close_outputs(ours(input_ids=ids, use_cache=False), ref(input_ids=ids, use_cache=False))


# ---------------------------------------------------------------------------------- chunking


@pytest.fixture(scope="module")
def chunked_pair(tmp_path_factory):
    path = tmp_path_factory.mktemp("mega-chunked")
    ref = _reference("MegaForSequenceClassification", {**TINY, "use_chunking": True, "chunk_size": 4}, path)
    return ref, mega.MegaForSequenceClassification.from_pretrained(path)


def test_length_not_a_multiple_of_chunk_size_is_refused_like_reference(chunked_pair):
    ref, ours = chunked_pair
    ids = torch.randint(3, VOCAB, (2, 6))  # longer than one chunk (4), not a multiple
    with pytest.raises(RuntimeError):
        ref(input_ids=ids)  # transformers: "shape '[2, 1, 4, 8]' is invalid for input of size 96"
    with pytest.raises(mega.MegaSequenceLengthError) as excinfo:
        ours(input_ids=ids)
    assert isinstance(excinfo.value, RuntimeError) and isinstance(excinfo.value, ValueError)
    message = str(excinfo.value)
    assert "chunk_size=4" in message and "6 tokens" in message and "pad" in message.lower()


def test_chunked_decoder_needs_whole_chunks(tmp_path):
    config_kwargs = {**TINY, "is_decoder": True, "bidirectional": False, "use_chunking": True, "chunk_size": 4}
    ref = _reference("MegaForCausalLM", config_kwargs, tmp_path)
    ours = mega.MegaForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(3, VOCAB, (2, 3))  # shorter than a chunk: fine for an encoder, not for a decoder
    with pytest.raises(RuntimeError):
        ref(input_ids=ids)
    with pytest.raises(mega.MegaSequenceLengthError, match="multiple of config.chunk_size=4"):
        ours(input_ids=ids)
    with torch.no_grad():  # whole chunks: the cache holds no keys (reset at the chunk boundary), as in the reference
        ids = torch.randint(3, VOCAB, (2, 8))
        expected, actual = ref(input_ids=ids), ours(input_ids=ids)
        _close_outputs(actual, expected)
        assert actual.past_key_values[0][0] is None and actual.past_key_values[0][2] is not None


def test_chunking_without_chunk_size_is_refused(tmp_path):
    config = mega.MegaConfig(**TINY, use_chunking=True)  # chunk_size stays -1
    model = mega.MegaModel(config).eval()
    with pytest.raises(mega.MegaSequenceLengthError, match="positive config.chunk_size"):
        model(input_ids=torch.randint(3, VOCAB, (1, 5)))


def test_right_padding_to_a_chunk_multiple_keeps_real_tokens(chunked_pair):
    """What batching code should do with a chunked model: pad to `pad_to_multiple_of`."""
    _, ours = chunked_pair
    assert ours.pad_to_multiple_of == 4
    ids = torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(5))
    outputs = []
    with torch.no_grad():
        for padded_length in (8, 12):
            padded = torch.full((1, padded_length), PAD)
            padded[:, :6] = ids
            mask = (torch.arange(padded_length) < 6).long()[None]
            outputs.append(ours.mega(input_ids=padded, attention_mask=mask).last_hidden_state[:, :6])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-5)


def test_simple_bias_longer_than_its_span_is_refused_like_reference(tmp_path):
    ref = _reference("MegaModel", {**TINY, "relative_positional_bias": "simple", "max_positions": 8}, tmp_path)
    ours = mega.MegaModel.from_pretrained(tmp_path)
    ids = torch.randint(3, VOCAB, (1, 9))
    with pytest.raises(ValueError, match="beyond max length 8"):
        ref(input_ids=ids)
    with pytest.raises(ValueError, match="at most 8 positions"):
        ours(input_ids=ids)


# ---------------------------------------------------------------------------------- EMA kernel cache


def test_eval_kernel_cache_is_reused_and_rebuilt_after_weight_edits(tmp_path):
    ref = _reference("MegaModel", {**TINY, "truncation": None}, tmp_path)
    ours = mega.MegaModel.from_pretrained(tmp_path)
    ema = ours.layers[0].mega_layer.ema_gate
    ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours(input_ids=ids)
        cached = ema._cache["kernel"][1]
        assert cached.shape[-1] == 12
        short = ours(input_ids=ids[:, :5]).last_hidden_state  # served from the longer cached kernel
        assert ema._cache["kernel"][1] is cached
        _close(short, ref(input_ids=ids[:, :5]).last_hidden_state)

        before = ref(input_ids=ids).last_hidden_state
        for model in (ref, ours):
            model.layers[0].mega_layer.ema_gate.kernel_projection_matrix.mul_(2.0)
        fresh = mega.MegaModel(ours.config).eval()
        fresh.load_state_dict(ours.state_dict())
        # transformers keeps serving its stale kernel; ours rebuilds it
        _close(ref(input_ids=ids).last_hidden_state, before)
        _close(ours(input_ids=ids).last_hidden_state, fresh(input_ids=ids).last_hidden_state)
        with pytest.raises(AssertionError):
            _close(ours(input_ids=ids).last_hidden_state, before)


# ---------------------------------------------------------------------------------- norms


def test_rmsnorm_reproduces_reference_quirk():
    """transformers' MegaRMSNorm never normalises (its result is discarded): output = x * weight."""
    x = torch.randn(2, 3, 8) * 5
    ours = mega.MegaRMSNorm(8)
    ref = transformers.models.deprecated.mega.modeling_mega.MegaRMSNorm(8)
    with torch.no_grad():
        ours.weight.copy_(torch.linspace(0.5, 2.0, 8))
        ref.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    torch.testing.assert_close(ours(x), x * ours.weight, rtol=0, atol=0)


def test_layernorm_without_affine_builds(tmp_path):
    """transformers cannot build layernorm + norm_affine=False (its init touches a None bias); ours
    can, and equals an affine layer norm with unit gain and zero bias."""
    with pytest.raises(AttributeError):
        transformers.MegaModel(transformers.MegaConfig(**TINY, normalization_type="layernorm", norm_affine=False))
    ref = _reference("MegaModel", {**TINY, "normalization_type": "layernorm"}, tmp_path)
    with torch.no_grad():
        for module in ref.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
    ours = mega.MegaModel(mega.MegaConfig(**TINY, normalization_type="layernorm", norm_affine=False)).eval()
    incompatible = ours.load_state_dict(ref.state_dict(), strict=False)
    assert incompatible.missing_keys == []
    assert all(".norm.norm." in key for key in incompatible.unexpected_keys)
    batch = _batch("MegaModel", 7, False)
    with torch.no_grad():
        _close_outputs(ours(**batch), ref(**batch))


# ---------------------------------------------------------------------------------- config, auto, save


@pytest.mark.parametrize("kwargs", [{}, dict(use_chunking=True, chunk_size=16, truncation=8, num_labels=4),
                                    dict(normalization_type="rmsnorm", is_decoder=True, bidirectional=False)])
def test_config_matches_transformers(kwargs, tmp_path):
    ours, ref = mega.MegaConfig(**kwargs), transformers.MegaConfig(**kwargs)
    def strip(d):
        return {k: v for k, v in d.items() if k not in ("transformers_version", "_name_or_path")}

    assert strip(ours.to_dict()) == strip(ref.to_dict())
    assert strip(ours.to_diff_dict()) == strip(ref.to_diff_dict())
    ours.save_pretrained(tmp_path)
    assert strip(transformers.AutoConfig.from_pretrained(tmp_path).to_dict()) == strip(ref.to_dict())
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, mega.MegaConfig) and loaded == ours
    assert loaded.pad_token_id == 1 and loaded.model_type == "mega"


@pytest.mark.filterwarnings("ignore:dropout2d")
@pytest.mark.parametrize("head,variant", [
    ("MegaForMaskedLM", "default"),  # tied LM head
    ("MegaForCausalLM", "laplace-simple-layernorm-postnorm-tokentypes"),
    ("MegaForSequenceClassification", "chunked-softmax-simple-syncbatchnorm"),
    ("MegaForMultipleChoice", "batchnorm-no-nffn-featuredropout-no-lm-dense"),
])
def test_ours_saved_loads_in_transformers(head, variant, tmp_path):
    config_kwargs, length = _config_kwargs(variant, head)
    _reference(head, config_kwargs, tmp_path / "ref")
    ours = getattr(mega, head).from_pretrained(tmp_path / "ref")
    ours.save_pretrained(tmp_path / "ours")
    theirs, info = getattr(transformers, head).from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    batch = _batch(head, length, config_kwargs.get("add_token_type_embeddings", False))
    with torch.no_grad():
        _close_outputs(ours(**batch), theirs.eval()(**batch))
    if head == "MegaForMaskedLM":
        assert ours.mlm_head.weight is ours.mega.embedding_layer.word_embeddings.weight


def test_half_precision_loading(tmp_path):
    """dtype="bfloat16"/"float16" at load time runs and is as accurate as transformers' model cast
    with .to(dtype) (bit-equality is not expected: we run batch-first, transformers sequence-first,
    and half-precision matmuls round differently for the two layouts). transformers' own
    from_pretrained(dtype=bfloat16) fails: it leaves the rotary bias' `_float_tensor` buffer in
    float32, then mixes dtypes; ours casts it with the rest."""
    _reference("MegaForSequenceClassification", {**TINY, "num_labels": 2}, tmp_path)
    batch = {k: v for k, v in _batch("MegaForSequenceClassification", 9, False).items() if k != "labels"}
    with pytest.raises(RuntimeError, match="dtype"):
        transformers.MegaForSequenceClassification.from_pretrained(tmp_path, dtype=torch.bfloat16)(**batch)
    with torch.no_grad():
        exact = transformers.MegaForSequenceClassification.from_pretrained(tmp_path).eval()(**batch).logits
        for dtype in (torch.bfloat16, torch.float16):
            ours = AutoModelForSequenceClassification.from_pretrained(tmp_path, dtype=str(dtype).split(".")[1])
            ref = transformers.MegaForSequenceClassification.from_pretrained(tmp_path).to(dtype).eval()
            ours_logits, ref_logits = ours(**batch).logits, ref(**batch).logits
            assert ours_logits.dtype == dtype and ours.dtype == dtype
            ours_error = (ours_logits.float() - exact).abs().max().item()
            ref_error = (ref_logits.float() - exact).abs().max().item()
            assert ours_error <= 2 * ref_error + 2 * torch.finfo(dtype).eps, (dtype, ours_error, ref_error)


from rayformers.models import MegaConfig as _ExportedConfig  # noqa: E402  (the package-level lazy export)


def test_package_exports():
    assert _ExportedConfig is mega.MegaConfig


def test_classifier_runs_with_ids_and_mask_only(tmp_path):
    """What the scoring pipeline calls: input_ids + attention_mask in, .logits out."""
    _reference("MegaForSequenceClassification", {**TINY, "num_labels": 2}, tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert model.config.pad_token_id == PAD and not model.training
    batch = _batch("MegaForSequenceClassification", 5, False)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
