"""LoRA supervised fine-tuning of a decoder-only LM with ``rayformers train`` (Ray Train V2, two
gloo workers), then ``rayformers run`` scoring with ``runs/<name>@best``.

One run (a module fixture): a tiny Qwen2 over a 14-letter vocabulary learns to reverse letter
sequences through LoRA adapters on every linear layer, with packing, an eval set (loss and
ROUGE-L of generations), ``merge: true``, and rank 1 killed at step 13 on the first attempt
(restart from the step-10 adapter checkpoint). Each test asserts one property of it.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from rayformers.jobs.checkpoints import list_checkpoints, resolve_model_reference
from test_train_helpers import letter_tokenizer, reverse_rows, write_parquet

os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

STEPS = 30


@pytest.fixture(scope="module")
def ray_session(ray_training_session):
    """The shared 4-CPU training cluster (conftest)."""
    yield ray_training_session


def _tiny_qwen(path) -> str:
    import transformers

    letter_tokenizer(path)
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=14, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        tie_word_embeddings=False)
    transformers.Qwen2ForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def lora_run(ray_session, tmp_path_factory):
    from rayformers.jobs.train import train

    root = tmp_path_factory.mktemp("lora-sft")
    model = _tiny_qwen(root / "base")
    write_parquet(root / "train.parquet", [{"prompt": r["text"], "response": r["target"]}
                                           for r in reverse_rows(2000, 31)])
    write_parquet(root / "eval.parquet", [{"prompt": r["text"], "response": r["target"]}
                                          for r in reverse_rows(32, 32)])
    run_dir = os.path.join(str(root / "runs"), "reverse-lora")
    marker = root / "killed-once"

    def kill_worker_once(step, rank):
        if step == 13 and rank == 1 and not marker.exists():
            import time

            from rayformers.jobs.checkpoints import latest_checkpoint

            while (latest_checkpoint(run_dir, committed_only=True) or type("c", (), {"step": 0})).step < 10:
                time.sleep(0.2)
            marker.touch()
            os._exit(1)

    config = {
        "model": {"path": model, "task": "generate"},
        "input": {"path": str(root / "train.parquet")},
        "tokenizer": {"max_length": 32},
        "compute": {"torch_threads": 1},
        "task": {"generation": {"max_new_tokens": 7}},
        "train": {
            "name": "reverse-lora", "storage_path": str(root / "runs"), "eval_path": str(root / "eval.parquet"),
            "prompt_column": "prompt", "response_column": "response", "packing": True,
            "num_workers": 2, "batch_size_per_worker": 16, "max_steps": STEPS, "eval_every": 30,
            "checkpoint_every": 10, "learning_rate": 1e-2, "lr_scheduler": "constant", "max_failures": 1,
            "lora": {"r": 8, "alpha": 16, "target_modules": "all-linear", "merge": True},
        },
    }
    result = train(config, on_step_end=kill_worker_once, verbose=False)
    return root, model, result, marker


def test_lora_sft_learns_and_resumes_after_a_worker_is_killed(lora_run):
    _, _, result, marker = lora_run
    assert marker.exists(), "the worker was never killed"
    assert [h["resumed_from_step"] for h in result.log_history if "resumed_from_step" in h] == [10]
    assert result.global_step == STEPS
    evals = [h for h in result.log_history if "eval_rougeL" in h]
    assert [h["step"] for h in evals] == list(range(10, STEPS + 1, 10))  # every checkpoint evaluates
    # A random 2-layer model learns reversal slowly through rank-8 adapters; it must still learn.
    assert evals[-1]["eval_loss"] < 0.95 * evals[0]["eval_loss"], evals
    assert evals[-1]["eval_rougeL"] > evals[0]["eval_rougeL"] + 0.1, evals


def test_checkpoints_are_peft_adapters_that_peft_loads(lora_run):
    import peft
    import transformers

    _, model, result, _ = lora_run
    best = resolve_model_reference(f"{result.run_dir}@best")
    assert os.path.isfile(os.path.join(best, "adapter_config.json"))
    assert os.path.isfile(os.path.join(best, "adapter_model.safetensors"))
    assert not os.path.exists(os.path.join(best, "model.safetensors"))
    assert json.load(open(os.path.join(best, "adapter_config.json")))["base_model_name_or_path"] == model
    assert all(c.path for c in list_checkpoints(result.run_dir))
    inputs = dict(input_ids=torch.tensor([[2, 4, 5, 6, 3]]))
    with torch.no_grad():
        adapted = peft.PeftModel.from_pretrained(transformers.Qwen2ForCausalLM.from_pretrained(model), best).eval()
        merged = transformers.Qwen2ForCausalLM.from_pretrained(os.path.join(best, "merged")).eval()
        base = transformers.Qwen2ForCausalLM.from_pretrained(model).eval()
        expected = adapted(**inputs).logits
        torch.testing.assert_close(merged(**inputs).logits, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(base(**inputs).logits, expected, atol=1e-3)


def test_pipeline_scores_with_the_best_adapter(lora_run):
    import peft
    import transformers

    from rayformers.models import AutoTokenizer
    from rayformers.pipeline import read_output, run

    root, model, result, _ = lora_run
    rows = reverse_rows(12, 33)
    write_parquet(root / "score.parquet", [{"text": r["text"]} for r in rows])
    report = run({
        "model": {"path": f"{result.run_dir}@best", "task": "generate"},
        "input": {"path": str(root / "score.parquet")},
        "tokenizer": {"max_length": 32},
        "task": {"generation": {"max_new_tokens": 7}},
        "output": {"path": str(root / "scored")},
    })
    assert report.rows == 12 and report.errors == 0
    table = read_output(str(root / "scored")).sort_by("id")
    generated = {int(i.split(":")[1]): t for i, t in zip(table["id"].to_pylist(), table["generated_text"].to_pylist())}

    best = resolve_model_reference(f"{result.run_dir}@best")
    tokenizer = AutoTokenizer.from_pretrained(best)
    reference = peft.PeftModel.from_pretrained(transformers.Qwen2ForCausalLM.from_pretrained(model), best).eval()
    for i, r in enumerate(rows):
        prompt = torch.tensor([tokenizer(r["text"])["input_ids"]])
        with torch.no_grad():
            out = reference.generate(input_ids=prompt, max_new_tokens=7, do_sample=False, pad_token_id=0)
        assert generated[i] == tokenizer.decode(out[0, prompt.shape[1]:].tolist(), skip_special_tokens=True)
    assert any(generated.values())
