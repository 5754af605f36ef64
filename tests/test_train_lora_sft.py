"""LoRA training and supervised fine-tuning of decoder-only models, in process (no Ray).

* one LoRA step's gradients on the adapter weights equal transformers + peft on the same batch
  (tiny Qwen2, fp32), and the adapter we save loads in peft (and in our own loader, and as the
  merged checkpoint) with the same logits;
* LoRA on a classifier trains the new head as a module to save, and peft loads that too;
* a LoRA target that matches nothing, or matches a non-linear module, is refused by name;
* SFT labels mask every prompt token, and the loss equals a hand computation over the response;
* packing rows gives the same per-row losses as unpacked padded rows, and our decoder's packed
  attention matches transformers' (position ids restarting per row, no attention mask).
"""

from __future__ import annotations

import json

import peft
import pyarrow as pa
import pytest
import torch
import transformers

from model_test_utils import single_thread  # noqa: F401  (autouse fixture)
from rayformers.jobs.lora import (
    LoraError,
    LoraSettings,
    apply_lora,
    load_adapter_weights,
    merged_state_dict,
    save_adapter,
)
from rayformers.jobs.sft_data import causal_token_loss_sum, encode_row, tokenize_sft
from rayformers.jobs.train_data import collate
from rayformers.models import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from test_train_helpers import letter_tokenizer

transformers.logging.set_verbosity_error()

QWEN = dict(vocab_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=3,
            attention_dropout=0.0, tie_word_embeddings=False)
TEMPLATE = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}assistant {% endif %}")
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen") / "base"
    letter_tokenizer(path)
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**QWEN)).save_pretrained(path)
    return str(path)


def _sft_batch(tokenizer, rows, chat_template=TEMPLATE):
    table = pa.table({"prompt": [p for p, _ in rows], "response": [r for _, r in rows]})
    out = tokenize_sft(table, tokenizer, "prompt", "response", False, chat_template, 32)
    return collate(pa.table(out), pad_token_id=0)


ROWS = [("a b c", "c b a"), ("d e", "e d"), ("f g h i", "i h g f")]


def _randomize(named_params, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in named_params:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)


def _peft_name(name: str) -> str:
    """Our parameter name for a peft parameter (``base_model.model.`` and the adapter name dropped)."""
    return name.replace("base_model.model.", "", 1).replace(".default", "").replace(".modules_to_save", "")


def _lora_pair(qwen_dir, settings: LoraSettings, peft_config: peft.LoraConfig):
    """(ours, peft model) with the same random adapter weights."""
    ours = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32)
    apply_lora(ours, settings, "generate")
    reference = peft.get_peft_model(transformers.Qwen2ForCausalLM.from_pretrained(qwen_dir), peft_config)
    trainable = [(n, p) for n, p in reference.named_parameters() if p.requires_grad]
    _randomize(trainable)
    ours_params = dict(ours.named_parameters())
    with torch.no_grad():
        for name, p in trainable:
            ours_params[_peft_name(name)].copy_(p)
    assert {_peft_name(n) for n, _ in trainable} == {n for n, p in ours.named_parameters() if p.requires_grad}
    return ours.train(), reference.train()


def test_lora_step_gradients_equal_transformers_and_peft(qwen_dir):
    tokenizer = AutoTokenizer.from_pretrained(qwen_dir)
    batch = _sft_batch(tokenizer, ROWS)
    settings = LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True)
    ours, reference = _lora_pair(qwen_dir, settings, peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True, lora_dropout=0.0))

    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    tokens = (batch["labels"][:, 1:] != -100).sum()
    (causal_token_loss_sum(ours(**inputs).logits, batch["labels"]) / tokens).backward()
    reference(**inputs, labels=batch["labels"]).loss.backward()

    ours_grads = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    checked = 0
    for name, p in reference.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(ours_grads[_peft_name(name)], p.grad, **TOL)
            assert p.grad.abs().sum() > 0
            checked += 1
    assert checked == 2 * 2 * 3  # A and B of 3 targets in 2 layers
    assert all(p.grad is None for n, p in ours.named_parameters() if not p.requires_grad)


def test_saved_adapter_loads_in_peft_and_merged_with_the_same_logits(qwen_dir, tmp_path):
    settings = LoraSettings(r=4, alpha=16, target_modules="all-linear", merge=True)
    ours, _ = _lora_pair(qwen_dir, settings, peft.LoraConfig(r=4, lora_alpha=16, target_modules="all-linear"))
    ours.eval()
    save_adapter(str(tmp_path / "adapter"), ours, qwen_dir, "CAUSAL_LM")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and "lm_head" not in config["target_modules"]

    inputs = dict(input_ids=torch.tensor([[2, 5, 6, 7, 3], [2, 8, 9, 3, 0]]),
                  attention_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]))
    with torch.no_grad():
        expected = ours(**inputs).logits
        loaded = peft.PeftModel.from_pretrained(transformers.Qwen2ForCausalLM.from_pretrained(qwen_dir),
                                                str(tmp_path / "adapter")).eval()
        torch.testing.assert_close(loaded(**inputs).logits, expected, **TOL)
        # Our own loader merges the adapter (what `rayformers run` does with an adapter checkpoint).
        ours_loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "adapter"), dtype=torch.float32).eval()
        torch.testing.assert_close(ours_loaded(**inputs).logits, expected, **TOL)
        # The merged full checkpoint, in transformers.
        ours.save_pretrained(str(tmp_path / "merged"), state_dict=merged_state_dict(ours))
        merged = transformers.Qwen2ForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
        torch.testing.assert_close(merged(**inputs).logits, expected, **TOL)
        # Resuming: the adapter loads back into a freshly wrapped model.
        again = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32)
        apply_lora(again, settings, "generate")
        load_adapter_weights(again, str(tmp_path / "adapter"))
        torch.testing.assert_close(again.eval()(**inputs).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["qwen2", "bert"])
def test_lora_classifier_trains_and_saves_its_new_head(tmp_path, family):
    torch.manual_seed(0)
    base = tmp_path / "base"
    if family == "qwen2":
        hf_class, targets, head = transformers.Qwen2ForSequenceClassification, ["q_proj"], "score"
        hf_class(transformers.Qwen2Config(**QWEN, num_labels=3)).save_pretrained(base)
    else:
        hf_class, targets, head = transformers.BertForSequenceClassification, ["query", "value"], "classifier"
        hf_class(transformers.BertConfig(vocab_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=48, num_labels=3)).save_pretrained(base)
    ours = AutoModelForSequenceClassification.from_pretrained(str(base), dtype=torch.float32)
    info = apply_lora(ours, LoraSettings(r=2, alpha=4, target_modules=targets), "classify")
    assert info["modules_to_save"] == [head]
    assert {n.split(".")[0] for n, p in ours.named_parameters() if p.requires_grad and "lora_" not in n} == {head}
    _randomize([(n, p) for n, p in ours.named_parameters() if p.requires_grad], seed=3)
    save_adapter(str(tmp_path / "adapter"), ours, str(base), "SEQ_CLS")
    inputs = dict(input_ids=torch.tensor([[2, 5, 6, 7, 3]]))
    reference = peft.PeftModel.from_pretrained(hf_class.from_pretrained(base), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(reference(**inputs).logits, ours.eval()(**inputs).logits, **TOL)


def test_a_lora_target_that_matches_nothing_is_refused(qwen_dir):
    model = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32)
    with pytest.raises(LoraError, match=r"matches no module.*q_proj"):
        apply_lora(model, LoraSettings(target_modules=["query"]), "generate")
    with pytest.raises(LoraError, match="not a linear layer"):
        apply_lora(model, LoraSettings(target_modules=["mlp"]), "generate")
    with pytest.raises(LoraError, match="modules_to_save"):
        apply_lora(model, LoraSettings(modules_to_save=["classifier"]), "generate")


def test_sft_labels_mask_the_prompt_and_the_loss_is_the_response_cross_entropy(qwen_dir):
    tokenizer = AutoTokenizer.from_pretrained(qwen_dir)
    ids, labels, n_prompt = encode_row(tokenizer, [{"role": "user", "content": "a b c"}],
                                       [{"role": "user", "content": "a b c"},
                                        {"role": "assistant", "content": "c b a"}], TEMPLATE, None)
    prompt = tokenizer("user a b c assistant", add_special_tokens=False)["input_ids"]
    response = tokenizer("c b a", add_special_tokens=False)["input_ids"]
    assert ids == prompt + response and n_prompt == len(prompt)
    assert labels == [-100] * len(prompt) + response

    # Without a template: the tokenizer's framing around the prompt, then the response and EOS.
    ids, labels, n_prompt = encode_row(tokenizer, [{"role": "user", "content": "a b"}],
                                       [{"role": "user", "content": "a b"},
                                        {"role": "assistant", "content": "b a"}], None, None)
    assert ids == [2, 4, 5, 3, 5, 4, 3] and labels == [-100, -100, -100, -100, 5, 4, 3]

    model = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32).eval()
    batch = _sft_batch(tokenizer, ROWS)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    hand, count = 0.0, 0
    for b, (prompt_text, response_text) in enumerate(ROWS):
        n = len(tokenizer(f"user {prompt_text} assistant", add_special_tokens=False)["input_ids"])
        targets = tokenizer(response_text, add_special_tokens=False)["input_ids"]
        for k, token in enumerate(targets):
            log_probs = torch.log_softmax(logits[b, n + k - 1].double(), -1)
            hand -= float(log_probs[token])
            count += 1
    assert int((batch["labels"][:, 1:] != -100).sum()) == count
    got = float(causal_token_loss_sum(logits, batch["labels"])) / count
    assert got == pytest.approx(hand / count, rel=1e-5)


def test_packing_gives_the_same_per_row_loss_as_unpacked_rows(qwen_dir):
    tokenizer = AutoTokenizer.from_pretrained(qwen_dir)
    rows = ROWS + [("j", "j"), ("a c e g", "g e c a")]
    table = pa.table({"prompt": [p for p, _ in rows], "response": [r for _, r in rows]})
    tokenized = pa.table(tokenize_sft(table, tokenizer, "prompt", "response", False, TEMPLATE, 32))
    lengths = [len(x) for x in tokenized.column("input_ids").to_pylist()]
    padded = collate(tokenized, pad_token_id=0)
    packed = collate(tokenized, pad_token_id=0, pack_capacity=24)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] < len(rows)
    assert packed["input_ids"].shape[1] <= 24

    model = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        unpacked_logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        packed_logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits
        reference = transformers.Qwen2ForCausalLM.from_pretrained(qwen_dir).eval()
        hf_logits = reference(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                              use_cache=False).logits
    torch.testing.assert_close(packed_logits, hf_logits, **TOL)

    per_row = [float(causal_token_loss_sum(unpacked_logits[i:i + 1, :n], padded["labels"][i:i + 1, :n]))
               for i, n in enumerate(lengths)]
    # Find every row inside the packed sequences by its position-id run and compare its loss.
    found = []
    for b in range(packed["input_ids"].shape[0]):
        starts = (packed["position_ids"][b] == 0).nonzero().flatten().tolist() + [packed["input_ids"].shape[1]]
        for s, e in zip(starts, starts[1:]):
            if (packed["labels"][b, s:e] != -100).any():
                loss = causal_token_loss_sum(packed_logits[b:b + 1, s:e], packed["labels"][b:b + 1, s:e])
                found.append((packed["input_ids"][b, s:e].tolist(), float(loss)))
    assert len(found) == len(rows)
    for i, n in enumerate(lengths):
        row_ids = padded["input_ids"][i, :n].tolist()
        loss = next(value for ids, value in found if ids == row_ids)
        assert loss == pytest.approx(per_row[i], rel=1e-5)
    total_packed = float(causal_token_loss_sum(packed_logits, packed["labels"]))
    assert total_packed == pytest.approx(sum(per_row), rel=1e-5)


def test_messages_rows_train_on_the_last_assistant_message_only(qwen_dir):
    tokenizer = AutoTokenizer.from_pretrained(qwen_dir)
    conversation = [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "b a"},
                    {"role": "user", "content": "c d"}, {"role": "assistant", "content": "d c"}]
    table = pa.table({"messages": [conversation]})
    out = tokenize_sft(table, tokenizer, "messages", "messages", True, TEMPLATE, None)
    ids, labels = out["input_ids"].to_pylist()[0], out["labels"].to_pylist()[0]
    response = tokenizer("d c", add_special_tokens=False)["input_ids"]
    assert [t for t in labels if t != -100] == response and ids[-len(response):] == response
    assert out["prompt_length"].to_pylist() == [len(ids) - len(response)]


def _sft_config(qwen_dir, data, **train):
    from rayformers.jobs.train_config import load_train_config

    section = {"name": "sft", "storage_path": "runs", "batch_size_per_worker": 2, "prompt_column": "prompt",
               "response_column": "response", **train}
    return load_train_config({"model": {"path": qwen_dir, "task": "generate"}, "input": {"path": data},
                              "tokenizer": {"max_length": 32}, "train": section})


def test_an_empty_response_is_named_or_skipped_and_counted(qwen_dir, tmp_path):
    from rayformers.jobs.sft_data import sft_row_problems
    from rayformers.jobs.train_data import DataError, prepare_data
    from test_train_helpers import write_parquet

    rows = [{"prompt": "a b", "response": "b a"}] * 4 + [{"prompt": "c d", "response": ""}]
    data = write_parquet(tmp_path / "train.parquet", rows)
    with pytest.raises(DataError, match=r"(?s)train.parquet row 4: response: text is empty.*bad_rows: skip"):
        prepare_data(_sft_config(qwen_dir, data), 1, None, causal_lm=True)
    prepared = prepare_data(_sft_config(qwen_dir, data, bad_rows="skip"), 1, None, causal_lm=True)
    assert (prepared.reports[0].rows, prepared.reports[0].used, prepared.reports[0].bad) == (5, 4, 1)
    conversations = [[{"role": "user", "content": "a"}],
                     [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]]
    problems = sft_row_problems(pa.table({"m": conversations}), "m", "m", True)
    assert "must be the assistant's response" in problems[0]
    assert "assistant response (last message) is blank" in problems[1]


def test_a_lora_target_is_checked_before_any_worker_starts(qwen_dir, tmp_path):
    from rayformers.jobs.train import _model_config
    from rayformers.pipeline.config import ConfigError

    cfg = _sft_config(qwen_dir, str(tmp_path / "x.parquet"), lora={"target_modules": ["qkv"]})
    with pytest.raises(ConfigError, match="matches no module of Qwen2ForCausalLM"):
        _model_config(cfg, qwen_dir)
    with pytest.raises(ConfigError, match="train.lora.r"):
        _sft_config(qwen_dir, "x.parquet", lora={"r": 0})
    from rayformers.jobs.train_config import load_train_config

    with pytest.raises(ConfigError, match="train.packing"):
        load_train_config({"model": {"path": qwen_dir, "task": "classify"}, "input": {"path": "x.parquet"},
                           "train": {"name": "x", "packing": True}})


def test_lora_on_a_seq2seq_model_loads_in_peft(tmp_path):
    from rayformers.models import AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    base = tmp_path / "bart"
    transformers.BartForConditionalGeneration(transformers.BartConfig(
        vocab_size=14, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=32,
        pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=3)).save_pretrained(base)
    ours = AutoModelForSeq2SeqLM.from_pretrained(str(base), dtype=torch.float32)
    info = apply_lora(ours, LoraSettings(r=2, alpha=4, target_modules=["q_proj", "v_proj"]), "generate")
    assert len(info["targets"]) == 2 * 3 and info["modules_to_save"] == []  # encoder self, decoder self + cross
    _randomize([(n, p) for n, p in ours.named_parameters() if p.requires_grad], seed=5)
    save_adapter(str(tmp_path / "adapter"), ours, str(base), "SEQ_2_SEQ_LM")
    inputs = dict(input_ids=torch.tensor([[2, 5, 6, 7, 3]]), decoder_input_ids=torch.tensor([[3, 2, 8]]))
    reference = peft.PeftModel.from_pretrained(transformers.BartForConditionalGeneration.from_pretrained(base),
                                               str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(reference(**inputs).logits, ours.eval()(**inputs).logits, **TOL)
    again = AutoModelForSeq2SeqLM.from_pretrained(str(base), dtype=torch.float32)
    apply_lora(again, LoraSettings(r=4, alpha=4, target_modules=["q_proj", "v_proj"]), "generate")
    with pytest.raises(LoraError, match="has shape"):
        load_adapter_weights(again, str(tmp_path / "adapter"))


def test_training_loop_pieces_for_lora_sft(qwen_dir, tmp_path):
    """The worker's own functions, in process: the LoRA model it builds, one optimizer step on packed
    rows equal to the unpacked step, evaluation (loss + generations) and the checkpoint it writes."""
    import contextlib

    from rayformers.jobs.train_loop import EvalBatches, _optimizer_step, evaluate, load_model, save_checkpoint_files
    from test_train_helpers import worker_spec

    tokenizer = AutoTokenizer.from_pretrained(qwen_dir)
    spec = worker_spec("generate", model_path=qwen_dir, causal_lm=True, pad_token_id=0, accumulation=1,
                       lora=LoraSettings(r=4, alpha=8, target_modules="all-linear", merge=True),
                       eval_generate=True, generation_kwargs={"max_new_tokens": 4, "do_sample": False})
    table = pa.table(tokenize_sft(pa.table({"p": [p for p, _ in ROWS], "r": [r for _, r in ROWS]}), tokenizer, "p",
                                  "r", False, None, 32))
    inputs = lambda batch: {k: v for k, v in batch.items() if k != "prompt_length"}  # noqa: E731
    losses, weights = [], []
    for pack in (None, 32):
        torch.manual_seed(0)
        model = load_model(spec, None)
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {
            n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        batch = inputs(collate(table, 0, pack))
        losses.append(float(_optimizer_step(model, model, optimizer, scheduler, [batch], spec,
                                            contextlib.nullcontext(), 1, torch.device("cpu"))))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-6)

    eval_batch = collate(table, 0)
    metrics = evaluate(model, spec, tokenizer, EvalBatches(lambda: iter([eval_batch]), torch.device("cpu")),
                       torch.device("cpu"))
    assert metrics["eval_rows"] == len(ROWS) and 0.0 <= metrics["eval_rougeL"] <= 1.0
    with torch.no_grad():
        logits = model.eval()(input_ids=eval_batch["input_ids"], attention_mask=eval_batch["attention_mask"]).logits
    tokens = (eval_batch["labels"][:, 1:] != -100).sum()
    assert metrics["eval_loss"] == pytest.approx(float(causal_token_loss_sum(logits, eval_batch["labels"]) / tokens),
                                                 rel=1e-5)

    save_checkpoint_files(str(tmp_path / "ckpt"), model, tokenizer, spec)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(("adapter", "merged"))) == [
        "adapter_config.json", "adapter_model.safetensors", "merged"]
    reloaded = load_model(spec, str(tmp_path / "ckpt"))
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ckpt" / "merged"), dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(input_ids=eval_batch["input_ids"]).logits,
                                   merged(input_ids=eval_batch["input_ids"]).logits, rtol=1e-5, atol=1e-5)


def test_every_new_head_module_trains_by_default(tmp_path):
    """DistilBERT's head is pre_classifier + classifier, both new for a base checkpoint: both train."""
    from rayformers.models import AutoModelForSequenceClassification as Auto

    base = tmp_path / "distilbert"
    transformers.DistilBertModel(transformers.DistilBertConfig(
        vocab_size=14, dim=32, n_layers=1, n_heads=2, hidden_dim=48)).save_pretrained(base)
    model = Auto.from_pretrained(str(base), num_labels=2, dtype=torch.float32)
    info = apply_lora(model, LoraSettings(target_modules=["q_lin", "v_lin"]), "classify")
    assert info["modules_to_save"] == ["pre_classifier", "classifier"]
