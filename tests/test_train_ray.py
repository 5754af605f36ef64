"""Fine-tuning on a real local Ray cluster with Ray Train V2 (TorchTrainer, DDP over gloo).

Starting a Ray Train worker group is the slow part here, so the runs are module fixtures and
each test asserts one property of them:

* ``sentiment_runs``: the same learnable task trained twice at global batch 8 —
  - 2 workers x 4 rows, with a worker process killed (``os._exit``) at step 13 on the first
    attempt: ``FailureConfig(max_failures=1)`` restarts the group from the step-10 checkpoint;
  - 1 worker x 8 rows, whose first driver (a subprocess) is SIGKILLed after the step-20
    checkpoint; re-running the same config in this process resumes the run.
  Both must report the same per-step loss (the data plan gives every step the same rows for
  any worker count, and resuming restores weights, optimizer, schedule and data position).
* ``minilm_run``: the real all-MiniLM-L6-v2 fine-tuned through the ``rayformers train`` CLI,
  then ``rayformers run`` scores Parquet with the best checkpoint.
* ``seq2seq_run``: a tiny BART learns to reverse letter sequences; ROUGE-L of ``generate`` rises.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rayformers.jobs.checkpoints import (
    TRAINER_STATE_DIR,
    list_checkpoints,
    read_training_state,
    resolve_model_reference,
)

from test_train_helpers import (
    classify_config,
    minilm_dir,
    reverse_rows,
    sentiment_rows,
    tiny_bert,
    write_parquet,
)

# Test-session settings: worker groups may start slowly on a loaded 2-core machine; the
# preemption watcher actor is not needed on a local cluster.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

STEPS = 40


@pytest.fixture(scope="module")
def ray_session(ray_training_session):
    """The shared 4-CPU training cluster (conftest)."""
    yield ray_training_session


# ------------------------------------------------------------------------------------------------
# Classification: 1 vs 2 workers, worker failure, driver crash.


DRIVER_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import ray
    ray.init(address=sys.argv[2], log_to_driver=False)
    from rayformers.jobs.checkpoints import latest_checkpoint
    from rayformers.jobs.train import train

    config = json.load(open(sys.argv[1]))
    run_dir = os.path.join(config["train"]["storage_path"], config["train"]["name"])
    driver = os.getpid()

    def crash_driver(step, rank):
        # After the step-20 checkpoint is committed, the driver process dies without warning.
        if step == 21 and rank == 0:
            while (latest_checkpoint(run_dir, committed_only=True) or type("c", (), {"step": 0})).step < 20:
                time.sleep(0.2)
            os.kill(driver, signal.SIGKILL)
            time.sleep(600)

    train(config, on_step_end=crash_driver)
    """
)


@pytest.fixture(scope="module")
def sentiment_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sentiment")
    write_parquet(root / "train" / "part-0.parquet", sentiment_rows(200, 1), row_group_size=64)
    write_parquet(root / "train" / "part-1.parquet", sentiment_rows(120, 2))
    write_parquet(root / "eval.parquet", sentiment_rows(100, 3))
    return root, tiny_bert(root / "model")


@pytest.fixture(scope="module")
def sentiment_runs(ray_session, sentiment_data):
    root, model = sentiment_data
    storage = str(root / "runs")
    common = dict(max_steps=STEPS, eval_path=str(root / "eval.parquet"), eval_every=20, checkpoint_every=10,
                  num_to_keep=2, best_metric="eval_accuracy")

    marker = root / "killed-once"
    two_dir = os.path.join(storage, "two-workers")

    def kill_worker_once(step, rank):
        # Ray registers a reported checkpoint when its controller next polls the workers; wait
        # for the step-10 checkpoint to be committed so the restart point is deterministic.
        if step == 13 and rank == 1 and not marker.exists():
            import time

            from rayformers.jobs.checkpoints import latest_checkpoint

            while (latest_checkpoint(two_dir, committed_only=True) or type("c", (), {"step": 0})).step < 10:
                time.sleep(0.2)
            marker.touch()
            os._exit(1)

    from rayformers.jobs.train import train

    two = train(
        classify_config(model, str(root / "train"), storage, "two-workers", num_workers=2, batch_size_per_worker=4,
                        max_failures=1, **common),
        on_step_end=kill_worker_once,
        verbose=False,
    )

    one_config = classify_config(model, str(root / "train"), storage, "one-worker", num_workers=1,
                                 batch_size_per_worker=8, max_failures=0, **common)
    config_file = root / "one-worker.json"
    config_file.write_text(json.dumps(one_config))
    script = root / "driver.py"
    script.write_text(DRIVER_SCRIPT)
    address = ray_session.get_runtime_context().gcs_address
    crashed = subprocess.run(
        [sys.executable, str(script), str(config_file), address],
        capture_output=True, text=True, timeout=900, cwd=root,
    )
    after_crash = [c.step for c in list_checkpoints(os.path.join(storage, "one-worker"))]
    one = train(one_config, verbose=False)
    return {"two": two, "one": one, "marker": marker, "crashed": crashed, "after_crash": after_crash}


def _losses(result) -> list:
    return [(h["step"], h["loss"]) for h in result.log_history if "loss" in h]


def test_two_workers_match_one_worker_loss_curve(sentiment_runs):
    one, two = _losses(sentiment_runs["one"]), _losses(sentiment_runs["two"])
    assert [s for s, _ in one] == list(range(1, STEPS + 1)) == [s for s, _ in two]
    torch.testing.assert_close(torch.tensor([l for _, l in two]), torch.tensor([l for _, l in one]), atol=1e-5, rtol=0)
    # ... and a learning curve, not a constant
    assert max(l for _, l in one) - min(l for _, l in one) > 0.3


def test_loss_falls_and_held_out_accuracy_is_high(sentiment_runs):
    for result in (sentiment_runs["one"], sentiment_runs["two"]):
        losses = [l for _, l in _losses(result)]
        assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
        assert result.metrics["eval_accuracy"] >= 0.9
        assert result.metrics["eval_rows"] == 100
        assert result.global_step == STEPS


def test_worker_killed_mid_run_resumes_from_its_last_checkpoint(sentiment_runs):
    two = sentiment_runs["two"]
    assert sentiment_runs["marker"].exists(), "the worker was never killed"
    resumed = [h for h in two.log_history if "resumed_from_step" in h]
    assert [h["resumed_from_step"] for h in resumed] == [10]
    assert two.global_step == STEPS
    kept = [c.step for c in list_checkpoints(two.run_dir)]
    assert STEPS in kept and len(kept) <= 3  # best 2 by eval_accuracy, plus the latest


def test_rerun_after_driver_crash_resumes_the_run(sentiment_runs):
    crashed = sentiment_runs["crashed"]
    assert crashed.returncode == -9, crashed.stdout[-2000:] + crashed.stderr[-4000:]
    assert max(sentiment_runs["after_crash"]) == 20
    one = sentiment_runs["one"]
    assert [h["resumed_from_step"] for h in one.log_history if "resumed_from_step" in h] == [20]
    assert one.global_step == STEPS


def test_checkpoint_loads_in_transformers_with_identical_outputs(sentiment_runs):
    import transformers

    from rayformers.models import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_reference(f"{sentiment_runs['two'].run_dir}@latest")
    assert os.path.isdir(os.path.join(path, TRAINER_STATE_DIR))
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    ours = AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert ref.config.id2label == {0: "negative", 1: "positive"}
    assert ref.config.problem_type == "single_label_classification"
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    texts = ["the cat is good", "a terrible small river", "green"]
    enc = hf_tok(texts, padding=True, return_tensors="pt")
    assert AutoTokenizer.from_pretrained(path)(texts, padding=True)["input_ids"] == enc["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(ours(**enc).logits, ref(**enc).logits, atol=1e-5, rtol=0)
    best = resolve_model_reference(f"{sentiment_runs['two'].run_dir}@best")
    best_state = read_training_state(best)
    assert best_state["metrics"]["eval_accuracy"] == max(
        c.metrics["eval_accuracy"] for c in list_checkpoints(sentiment_runs["two"].run_dir)
    )


# ------------------------------------------------------------------------------------------------
# The real all-MiniLM-L6-v2, through the CLI, then scored by the inference pipeline.


@pytest.fixture(scope="module")
def minilm_run(ray_session, tmp_path_factory):
    from rayformers.pipeline import cli

    root = tmp_path_factory.mktemp("minilm")
    write_parquet(root / "train.parquet", sentiment_rows(256, 11))
    write_parquet(root / "eval.parquet", sentiment_rows(64, 12))
    config = root / "train.yaml"
    config.write_text(textwrap.dedent(f"""
        model: {{path: {minilm_dir()}, task: classify}}
        input: {{path: {root / 'train.parquet'}}}
        tokenizer: {{max_length: 32}}
        compute: {{torch_threads: 2}}
        train:
          name: minilm
          storage_path: {root / 'runs'}
          eval_path: {root / 'eval.parquet'}
          batch_size_per_worker: 16
          learning_rate: 2e-4
          warmup_ratio: 0.1
          best_metric: eval_accuracy
    """))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["train", str(config), "--set", "train.epochs=1", "--json"])
    assert code == 0, out.getvalue()[-3000:]
    return root, json.loads(out.getvalue().strip().splitlines()[-1])


def test_minilm_fine_tune_reaches_high_held_out_accuracy(minilm_run):
    _, result = minilm_run
    assert result["global_step"] == 256 // 16
    assert result["metrics"]["eval_accuracy"] >= 0.9
    losses = [h["loss"] for h in result["log_history"] if "loss" in h]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4


def test_pipeline_scores_parquet_with_the_best_checkpoint(minilm_run):
    from rayformers.pipeline import read_output, run

    root, result = minilm_run
    rows = sentiment_rows(80, 13)
    write_parquet(root / "score.parquet", [{"text": r["text"]} for r in rows])
    assert resolve_model_reference(f"{result['run_dir']}@best") == result["best_checkpoint"]
    report = run({
        "model": {"path": f"{result['run_dir']}@best", "task": "classify"},  # resolved by the pipeline
        "input": {"path": str(root / "score.parquet")},
        "tokenizer": {"max_length": 32},
        "output": {"path": str(root / "scored")},
    })
    assert report.rows == 80 and report.errors == 0
    table = read_output(str(root / "scored")).sort_by("id")
    by_row = {int(i.split(":")[1]): label for i, label in zip(table["id"].to_pylist(), table["label"].to_pylist())}
    correct = sum(by_row[i] == r["label"] for i, r in enumerate(rows))
    assert correct / len(rows) >= 0.9


# ------------------------------------------------------------------------------------------------
# seq2seq: a tiny BART learns to reverse letters; its generations improve.


@pytest.fixture(scope="module")
def seq2seq_run(ray_session, tmp_path_factory):
    from test_train_helpers import tiny_letter_bart

    from rayformers.jobs.train import train

    root = tmp_path_factory.mktemp("seq2seq")
    model = tiny_letter_bart(root / "model")
    write_parquet(root / "train.parquet", reverse_rows(2400, 21))
    write_parquet(root / "eval.parquet", reverse_rows(48, 22))
    config = {
        "model": {"path": model, "task": "generate"},
        "input": {"path": str(root / "train.parquet")},
        "compute": {"torch_threads": 2},
        "train": {
            "name": "reverse", "storage_path": str(root / "runs"), "eval_path": str(root / "eval.parquet"),
            "max_steps": 120, "eval_every": 40, "batch_size_per_worker": 16, "learning_rate": 6e-3,
            "lr_scheduler": "constant", "max_target_length": 8, "best_metric": "eval_rougeL",
        },
        "task": {"generation": {"max_new_tokens": 7}},
    }
    return train(config, verbose=False)


def test_seq2seq_learns_to_reverse_and_generations_improve(seq2seq_run):
    evals = [h for h in seq2seq_run.log_history if "eval_rougeL" in h]
    assert [h["step"] for h in evals] == [40, 80, 120]
    assert evals[-1]["eval_rougeL"] >= 0.8
    assert evals[-1]["eval_rougeL"] > evals[0]["eval_rougeL"] + 0.2
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    best = resolve_model_reference(f"{seq2seq_run.run_dir}@best")
    assert os.path.isfile(os.path.join(best, "generation_config.json"))
