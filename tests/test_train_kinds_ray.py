"""Token classification and embedding training on a real local Ray cluster (Ray Train V2,
two gloo workers), then the checkpoints scored by the inference pipeline.

* ``ner_run``: a tiny BERT tagger trained with ``strategy: fsdp`` and gradient checkpointing;
  a worker is killed at step 13 and the group resumes from the step-10 checkpoint (full state
  dicts gathered from the FSDP shards). Entity F1 rises; ``rayformers run``'s token-classify
  task finds the entities with the best checkpoint; memory per worker is in the metrics.
* ``embed_run``: a tiny BERT embedder trained on (anchor, positive, negative) rows with
  negatives gathered across the two workers; the checkpoint is a sentence-transformers
  directory that ``SentenceTransformer`` loads, and ``rayformers run``'s embed task gives the
  same vectors.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from rayformers.jobs.checkpoints import latest_checkpoint, list_checkpoints, resolve_model_reference

from test_train_helpers import tiny_bert, write_parquet
from train_kinds_helpers import ner_rows, pair_rows

os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="module")
def ray_session(ray_training_session):
    """The shared 4-CPU training cluster (conftest)."""
    yield ray_training_session


@pytest.fixture(scope="module")
def ner_run(ray_session, tmp_path_factory):
    from rayformers.jobs.train import train

    root = tmp_path_factory.mktemp("ner")
    write_parquet(root / "train.parquet", ner_rows(400, 1))
    write_parquet(root / "eval.parquet", ner_rows(40, 2))
    model = str(tiny_bert(root / "model", hidden=32, layers=2))
    run_dir = os.path.join(root / "runs", "ner")
    marker = root / "killed-once"

    def kill_worker_once(step, rank):
        if step == 13 and rank == 1 and not marker.exists():
            import time

            while (latest_checkpoint(run_dir, committed_only=True) or type("c", (), {"step": 0})).step < 10:
                time.sleep(0.2)
            marker.touch()
            os._exit(1)

    config = {
        "model": {"path": model, "task": "token-classify"},
        "input": {"path": str(root / "train.parquet"), "text_column": "tokens"},
        "tokenizer": {"max_length": 32},
        "compute": {"torch_threads": 1},
        "train": {
            "name": "ner", "storage_path": str(root / "runs"), "eval_path": str(root / "eval.parquet"),
            "label_column": "tags", "batch_size_per_worker": 8, "num_workers": 2, "max_steps": 40,
            "eval_every": 20, "checkpoint_every": 10, "learning_rate": 5e-3, "lr_scheduler": "constant",
            "strategy": "fsdp", "gradient_checkpointing": True, "best_metric": "eval_f1", "max_failures": 1,
        },
    }
    result = train(config, on_step_end=kill_worker_once, verbose=False)
    return root, result, marker


def test_token_classification_learns_entities_under_fsdp_and_resumes_after_a_killed_worker(ner_run):
    _, result, marker = ner_run
    assert marker.exists(), "the worker was never killed"
    assert [h["resumed_from_step"] for h in result.log_history if "resumed_from_step" in h] == [10]
    assert result.global_step == 40
    evals = [h for h in result.log_history if "eval_f1" in h]
    assert [h["step"] for h in evals] == [10, 20, 30, 40]  # every checkpoint evaluates
    print("ner evals", [(h["step"], round(h["eval_f1"], 3)) for h in evals], result.metrics.get("peak_rss_mb_per_worker"))
    assert evals[-1]["eval_f1"] > evals[0]["eval_f1"]
    assert evals[-1]["eval_f1"] >= 0.9 and evals[-1]["eval_precision"] > 0 and evals[-1]["eval_recall"] > 0
    assert result.metrics["eval_accuracy"] >= 0.9
    # memory per worker, both workers
    assert len(result.metrics["peak_rss_mb_per_worker"]) == 2
    assert result.metrics["peak_rss_mb"] == max(result.metrics["peak_rss_mb_per_worker"]) > 50
    assert [c.step for c in list_checkpoints(result.run_dir)][-1] == 40


def test_pipeline_token_classify_scores_the_best_checkpoint(ner_run):
    import json

    from rayformers.pipeline import read_output, run

    root, result, _ = ner_run
    best = resolve_model_reference(f"{result.run_dir}@best")
    config = json.loads(open(os.path.join(best, "config.json")).read())
    assert config["architectures"] == ["BertForTokenClassification"]  # not FSDP's wrapper class
    assert set(config["id2label"].values()) == {"O", "B-PER", "B-LOC", "I-LOC"}
    texts = ["alice went to paris city", "the house and bob", "then rome city with carol"]
    write_parquet(root / "score.parquet", [{"text": t} for t in texts])
    report = run({
        "model": {"path": f"{result.run_dir}@best", "task": "token-classify"},
        "input": {"path": str(root / "score.parquet")},
        "task": {"aggregation_strategy": "first"},
        "output": {"path": str(root / "scored")},
    })
    assert report.rows == 3 and report.errors == 0
    table = read_output(str(root / "scored")).sort_by("id")
    found = [[(e["entity_group"], e["word"]) for e in row] for row in table["entities"].to_pylist()]
    assert found == [[("PER", "alice"), ("LOC", "paris city")], [("PER", "bob")],
                     [("LOC", "rome city"), ("PER", "carol")]]


@pytest.fixture(scope="module")
def embed_run(ray_session, tmp_path_factory):
    from rayformers.jobs.train import train

    root = tmp_path_factory.mktemp("embed")
    write_parquet(root / "train.parquet", pair_rows(160, 5, negatives=True))
    write_parquet(root / "eval.parquet", pair_rows(24, 6, negatives=True))
    model = str(tiny_bert(root / "model", hidden=32, layers=1))
    config = {
        "model": {"path": model, "task": "embed"},
        "input": {"path": str(root / "train.parquet"), "text_column": "anchor"},
        "tokenizer": {"max_length": 16},
        "compute": {"torch_threads": 1},
        "train": {
            "name": "emb", "storage_path": str(root / "runs"), "eval_path": str(root / "eval.parquet"),
            "negative_column": "negative", "batch_size_per_worker": 8, "num_workers": 2, "max_steps": 30,
            "eval_every": 15, "learning_rate": 3e-3, "lr_scheduler": "constant", "normalize": True,
        },
    }
    return root, train(config, verbose=False)


def test_embedding_training_lowers_the_ranking_loss(embed_run):
    _, result = embed_run
    evals = [h for h in result.log_history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [15, 30]
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    print("embed", [round(x, 3) for x in losses], [(h["eval_loss"], h["eval_accuracy"]) for h in evals])
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert result.metrics["eval_accuracy"] >= 0.5 and result.metrics["eval_rows"] == 24


def test_embedding_checkpoint_loads_in_sentence_transformers_and_the_pipeline_agrees(embed_run):
    from sentence_transformers import SentenceTransformer

    from rayformers.pipeline import read_output, run

    root, result = embed_run
    best = resolve_model_reference(f"{result.run_dir}@best")
    for name in ("modules.json", "sentence_bert_config.json", os.path.join("1_Pooling", "config.json")):
        assert os.path.isfile(os.path.join(best, name)), name
    st = SentenceTransformer(best, device="cpu")
    texts = ["a cat sleeps", "the ocean is blue", "soup for dinner", "guitar music"]
    expected = st.encode(texts, convert_to_numpy=True)
    assert np.allclose(np.linalg.norm(expected, axis=1), 1.0, atol=1e-5)  # the Normalize module
    write_parquet(root / "texts.parquet", [{"text": t} for t in texts])
    report = run({
        "model": {"path": f"{result.run_dir}@best", "task": "embed"},
        "input": {"path": str(root / "texts.parquet")},
        "output": {"path": str(root / "vectors")},
    })
    assert report.errors == 0
    table = read_output(str(root / "vectors")).sort_by("id")
    ours = np.array(table["embedding"].to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
