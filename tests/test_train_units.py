"""Training pieces without Ray Train: metrics, config, checkpoint references, the data plan,
bad-row handling, tokenization/collation, optimizer and schedule.

Everything runs in-process on real files (Parquet, safetensors, JSON); the Ray Train runs are in
``test_train_ray.py``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from rayformers.jobs import checkpoints as ckpt
from rayformers.jobs.metrics import MetricState, accuracy, f1_macro, lcs_length, metric_order, rouge_l
from rayformers.jobs.train_config import ConfigError, best_metric, load_train_config
from rayformers.jobs.train_data import (
    MICRO_COLUMN,
    Columns,
    DataError,
    LabelSpec,
    Tokenization,
    collate,
    eval_read_fn,
    pad_list_column,
    prepare_data,
    tokenize_batch,
    train_read_fn,
)
from rayformers.jobs.train_loop import lr_lambda, make_optimizer

from test_train_helpers import classify_config, minilm_dir, sentiment_rows, tiny_bert, worker_spec, write_parquet


# ------------------------------------------------------------------------------------------------
# Metrics.


def test_f1_macro_and_accuracy_match_hand_computed_values():
    refs = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp1 fp0 fn1 -> 2/3
    assert f1_macro(preds, refs) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert accuracy(preds, refs) == pytest.approx(4 / 6)
    # a class only predicted (never true) counts, as scikit-learn does without labels=
    assert f1_macro([3, 0], [0, 0]) == pytest.approx((2 / 3 + 0.0) / 2)


def test_metric_state_sums_across_shards_equal_whole_set_metrics():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(50, 4)), dtype=torch.float32)
    labels = torch.tensor(rng.integers(0, 4, size=50))
    whole = MetricState("single_label_classification", 4)
    whole.add_classification(logits, labels)
    shards = [MetricState("single_label_classification", 4) for _ in range(3)]
    for i, s in enumerate(shards):
        s.add_classification(logits[i::3], labels[i::3])
    summed = sum(s.vector() for s in shards)
    merged = MetricState("single_label_classification", 4)
    merged.load_vector(summed)
    preds = logits.argmax(-1).tolist()
    expected = {"eval_accuracy": accuracy(preds, labels.tolist()), "eval_f1_macro": f1_macro(preds, labels.tolist())}
    for state in (whole, merged):
        totals = state.totals()
        assert totals["eval_rows"] == 50
        assert totals["eval_accuracy"] == pytest.approx(expected["eval_accuracy"])
        assert totals["eval_f1_macro"] == pytest.approx(expected["eval_f1_macro"])


def test_multi_label_and_regression_metrics():
    state = MetricState("multi_label_classification", 3)
    logits = torch.tensor([[2.0, -1.0, 3.0], [-2.0, 1.0, -1.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    state.add_classification(logits, labels)
    out = state.totals()
    assert out["eval_accuracy"] == 0.5  # exact match of the label sets
    # label 0: tp1; label 1: fp1; label 2: tp1 fn1 -> f1 1, 0, 2/3
    assert out["eval_f1_macro"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    reg = MetricState("regression")
    reg.add_classification(torch.tensor([[1.0], [3.0]]), torch.tensor([2.0, 3.0]))
    reg.add_loss(1.0, 2)
    assert reg.totals()["eval_mse"] == pytest.approx(0.5)
    assert reg.totals()["eval_loss"] == pytest.approx(0.5)


def test_rouge_l():
    assert lcs_length("a b c d".split(), "a c d b".split()) == 3
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("", "the cat") == 0.0
    # pred 4 tokens, ref 3 tokens, LCS 2 -> P 0.5, R 2/3
    assert rouge_l("The cat, the dog.", "a cat dog") == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert rouge_l("漢字 テスト", "漢字") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert metric_order("eval_loss") == "min" and metric_order("eval_rougeL") == "max"


# ------------------------------------------------------------------------------------------------
# Config.


def test_config_loads_shared_sections_and_train_keys(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(
        "model: {path: some/model, task: classify}\n"
        "input: {path: data/, text_column: sentence}\n"
        "tokenizer: {max_length: 64}\n"
        "train: {name: run1, epochs: 3, eval_split: 0.1, best_metric: eval_accuracy}\n"
    )
    cfg = load_train_config(path, ["train.num_workers=2", "train.learning_rate=1e-4"])
    assert cfg.input.text_column == "sentence" and cfg.tokenizer.max_length == 64
    assert cfg.train.num_workers == 2 and cfg.train.learning_rate == 1e-4 and cfg.train.epochs == 3
    assert best_metric(cfg) == ("eval_accuracy", "max")
    assert best_metric(load_train_config(path, ["train.best_metric=auto"])) == ("eval_loss", "min")


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.typo=1", "unknown config key(s): train.typo"),
        ("train.bad_rows=drop", "'train.bad_rows': 'drop' is not one of fail, skip"),
        ("model.task=rerank", "training supports classify, generate, token-classify, embed, got 'rerank'"),
        ("train.name=", "'train.name' is empty"),
        ("train.eval_split=0", "no eval data"),
        ("train.batch_size_per_worker=0", "'train.batch_size_per_worker' must be at least 1"),
        ("train.eval_path=x.parquet", "exclusive"),
    ],
)
def test_config_errors_name_the_key(override, message):
    base = {
        "model": {"path": "m", "task": "classify"},
        "input": {"path": "d"},
        "train": {"name": "r", "eval_split": 0.2, "best_metric": "eval_accuracy"},
    }
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_train_config(base, [override])


# ------------------------------------------------------------------------------------------------
# Checkpoint references.


def _fake_checkpoint(run: Path, step: int, metrics: dict, complete: bool = True) -> Path:
    d = run / ckpt.checkpoint_dir_name(step)
    (d / ckpt.TRAINER_STATE_DIR).mkdir(parents=True)
    (d / "config.json").write_text("{}")
    if complete:
        (d / "model.safetensors").write_bytes(b"")
        state = {"global_step": step, "metrics": metrics, "best_metric": "eval_loss", "best_metric_order": "min"}
        (d / ckpt.TRAINER_STATE_DIR / ckpt.TRAINER_STATE_FILE).write_text(json.dumps(state))
    return d


def test_best_latest_and_step_references_follow_ray_snapshot(tmp_path):
    run = tmp_path / "runs" / "exp"
    _fake_checkpoint(run, 10, {"eval_loss": 0.5})
    _fake_checkpoint(run, 20, {"eval_loss": 0.3})
    _fake_checkpoint(run, 30, {"eval_loss": 0.4})
    _fake_checkpoint(run, 40, {"eval_loss": 0.1})  # uploaded but never committed by Ray
    _fake_checkpoint(run, 50, {}, complete=False)  # partial upload
    snapshot = {
        "checkpoint_results": [
            {"checkpoint_dir_name": ckpt.checkpoint_dir_name(s), "metrics": {}} for s in (10, 20, 30)
        ],
        "latest_checkpoint_result": {"checkpoint_dir_name": ckpt.checkpoint_dir_name(30), "metrics": {}},
    }
    (run / ckpt.RAY_SNAPSHOT_FILE).write_text(json.dumps(snapshot))
    assert [c.step for c in ckpt.list_checkpoints(str(run))] == [10, 20, 30]
    assert ckpt.resolve_model_reference(f"{run}@latest") == str(run / ckpt.checkpoint_dir_name(30))
    assert ckpt.resolve_model_reference(f"{run}@best") == str(run / ckpt.checkpoint_dir_name(20))
    assert ckpt.resolve_model_reference(f"{run}@step-10") == str(run / ckpt.checkpoint_dir_name(10))
    assert ckpt.best_checkpoint(str(run), "eval_loss", "max").step == 10
    with pytest.raises(ckpt.CheckpointError, match="kept steps: 10, 20, 30"):
        ckpt.resolve_model_reference(f"{run}@step-40")
    # Without Ray's snapshot (a copied run directory) every complete checkpoint counts.
    (run / ckpt.RAY_SNAPSHOT_FILE).unlink()
    assert [c.step for c in ckpt.list_checkpoints(str(run))] == [10, 20, 30, 40]
    assert ckpt.resolve_model_reference(f"{run}@best").endswith(ckpt.checkpoint_dir_name(40))


def test_plain_paths_and_hub_ids_pass_through(tmp_path):
    assert ckpt.resolve_model_reference(str(tmp_path)) == str(tmp_path)
    assert ckpt.resolve_model_reference("sentence-transformers/all-MiniLM-L6-v2") == (
        "sentence-transformers/all-MiniLM-L6-v2"
    )
    with pytest.raises(ckpt.CheckpointError, match="has no committed checkpoints"):
        ckpt.resolve_model_reference(f"{tmp_path}/missing@best")


def test_training_state_round_trip_restores_optimizer_scheduler_and_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    torch.manual_seed(123)
    ckpt.save_training_state(str(tmp_path), {"global_step": 7}, rank=0, optimizer=opt, scheduler=sched)
    expected_draw = torch.rand(3)
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (1 + s))
    torch.manual_seed(999)
    state = ckpt.load_training_state(str(tmp_path), rank=0, optimizer=opt2, scheduler=sched2)
    assert state["global_step"] == 7
    assert torch.equal(torch.rand(3), expected_draw)
    assert sched2.last_epoch == 1 and opt2.param_groups[0]["lr"] == pytest.approx(0.05)
    exp_avg = opt.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], exp_avg)


# ------------------------------------------------------------------------------------------------
# Data plan: the rows of each optimizer step do not depend on the number of workers.


@pytest.fixture(scope="module")
def sentiment_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_parquet(root / "train" / "a.parquet", sentiment_rows(70, 1), row_group_size=16)
    write_parquet(root / "train" / "b.parquet", sentiment_rows(45, 2))
    write_parquet(root / "eval.parquet", sentiment_rows(23, 3))
    model = tiny_bert(root / "model")
    return root, model


def _plan(root, model, **train):
    cfg = load_train_config(classify_config(model, str(root / "train"), str(root / "runs"), "r", **train))
    return cfg, prepare_data(cfg, cfg.train.num_workers, None)


def _stream_rows(plan, rank, start_step=0):
    """(micro index, text) of one worker's stream, read in-process through the real read tasks."""
    out = []
    for task in plan.tasks_for_rank(rank, start_step):
        for table in train_read_fn(plan, task, rank, start_step):
            out += list(zip(table.column(MICRO_COLUMN).to_pylist(), table.column("text").to_pylist()))
    return out


def _rows_per_step(plan, start_step=0):
    steps = defaultdict(list)
    for rank in range(plan.world_size):
        rows = _stream_rows(plan, rank, start_step)
        # a worker's stream is in micro-batch order, B rows per micro-batch
        assert [m for m, _ in rows] == sorted(m for m, _ in rows)
        for m, text in rows:
            steps[m // plan.accumulation].append(text)
    return {k: sorted(v) for k, v in steps.items()}


def test_each_step_sees_the_same_rows_for_any_worker_count(sentiment_files):
    root, model = sentiment_files
    _, one = _plan(root, model, batch_size_per_worker=8, num_workers=1, epochs=2)
    _, two = _plan(root, model, batch_size_per_worker=4, num_workers=2, epochs=2)
    _, accum = _plan(root, model, batch_size_per_worker=2, num_workers=2, gradient_accumulation_steps=2, epochs=2)
    reference = _rows_per_step(one.train)
    assert one.train.steps_per_epoch == 115 // 8 and len(reference) == 2 * (115 // 8)
    assert all(len(rows) == 8 for rows in reference.values())
    assert _rows_per_step(two.train) == reference
    assert _rows_per_step(accum.train) == reference
    # every row once per epoch (the incomplete last global batch is dropped), new order per epoch
    texts = sorted(r["text"] for r in sentiment_rows(70, 1) + sentiment_rows(45, 2))
    epoch0 = sorted(t for s in range(14) for t in reference[s])
    assert len(epoch0) == 112 and set(epoch0) <= set(texts)
    assert [reference[s] for s in range(14)] != [reference[s] for s in range(14, 28)]
    # reproducible: planning again gives the same order
    assert _stream_rows(_plan(root, model, batch_size_per_worker=8, epochs=2)[1].train, 0) == _stream_rows(one.train, 0)


def test_resumed_stream_starts_at_the_checkpoint_step(sentiment_files):
    root, model = sentiment_files
    _, two = _plan(root, model, batch_size_per_worker=4, num_workers=2, max_steps=20)
    full = _rows_per_step(two.train)
    resumed = _rows_per_step(two.train, start_step=9)
    assert sorted(resumed) == list(range(9, 20))
    assert all(resumed[s] == full[s] for s in resumed)
    assert two.train.epochs == 2  # 20 steps of 14 per epoch


def test_eval_split_is_stable_disjoint_and_dealt_to_every_worker(sentiment_files):
    root, model = sentiment_files
    _, data = _plan(root, model, eval_split=0.3, num_workers=2, batch_size_per_worker=4)
    eval_plan = data.eval
    n_eval = eval_plan.source.total
    assert 15 < n_eval < 55 and data.train.source.total == 115 - n_eval
    eval_texts = []
    for rank in range(2):
        for u, offset in enumerate(eval_plan.offsets()):
            for table in eval_read_fn(eval_plan, u, offset, rank):
                eval_texts += table.column("text").to_pylist()
    assert len(eval_texts) == n_eval
    train_texts = [t for s in _rows_per_step(data.train).values() for t in s]
    assert not set(eval_texts) & set(train_texts) - set(t for t in eval_texts if train_texts.count(t) > 1)
    _, again = _plan(root, model, eval_split=0.3, num_workers=2, batch_size_per_worker=4)
    assert again.eval.source.usable == eval_plan.source.usable


# ------------------------------------------------------------------------------------------------
# Labels and bad rows.


def test_label_space_from_data_model_or_config(tmp_path):
    model = tiny_bert(tmp_path / "model")

    def plan(rows, model_id2label=None, **train):
        path = write_parquet(tmp_path / "d.parquet", rows)
        cfg = load_train_config(classify_config(model, path, str(tmp_path), "r", batch_size_per_worker=2, **train))
        return prepare_data(cfg, 1, model_id2label).spec

    names = [{"text": "x y", "label": lab} for lab in ["b", "a", "c", "a"]]
    assert plan(names).names == ["a", "b", "c"]
    # a model with named labels covering the data keeps its order; placeholders do not count
    assert plan(names, {0: "c", 1: "b", 2: "a", 3: "d"}).names == ["c", "b", "a", "d"]
    assert plan(names, {0: "LABEL_0", 1: "LABEL_1"}).names == ["a", "b", "c"]
    assert plan(names, labels=["c", "a", "b"]).label2id == {"c": 0, "a": 1, "b": 2}

    ids = [{"text": "x", "label": i} for i in (0, 3, 1, 2)]
    assert plan(ids).names == ["LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3"]

    multi = plan([{"text": "x", "label": v} for v in (["a"], ["a", "b"], [], ["c"])])
    assert multi.problem_type == "multi_label_classification" and multi.names == ["a", "b", "c"]

    regression = plan([{"text": "x", "label": v} for v in (0.5, 1.5, 2.0, -1.0)])
    assert regression.problem_type == "regression" and regression.num_outputs == 1
    assert regression.model_kwargs()["num_labels"] == 1
    with pytest.raises(DataError, match="needs a list label column"):
        plan(names, problem_type="multi_label_classification")


def _bad_data(tmp_path):
    rows = sentiment_rows(30, 5)
    rows[3]["text"] = None
    rows[7]["text"] = "   "
    rows[11]["label"] = None
    rows[20]["label"] = "neutral"
    return write_parquet(tmp_path / "bad.parquet", rows)


def test_bad_rows_fail_by_default_naming_file_rows_and_reasons(tmp_path):
    model = tiny_bert(tmp_path / "model")
    path = _bad_data(tmp_path)
    cfg = load_train_config(classify_config(model, path, str(tmp_path), "r", labels=["negative", "positive"]))
    with pytest.raises(DataError) as err:
        prepare_data(cfg, 1, None)
    message = str(err.value)
    assert "4 bad row(s) of 30" in message and "bad_rows: skip" in message
    for row, reason in ((3, "text: text is null"), (7, "text: text is blank"), (11, "label: label is missing"),
                        (20, "unknown label name 'neutral'")):
        assert f"{path} row {row}: " in message and reason in message


def test_bad_rows_skipped_are_counted_and_never_streamed(tmp_path):
    model = tiny_bert(tmp_path / "model")
    path = _bad_data(tmp_path)
    cfg = load_train_config(classify_config(model, path, str(tmp_path), "r", labels=["negative", "positive"],
                                            bad_rows="skip", batch_size_per_worker=2))
    data = prepare_data(cfg, 1, None)
    report = data.reports[0]
    assert (report.rows, report.used, report.bad) == (30, 26, 4)
    assert sum(report.reasons.values()) == 4
    streamed = _stream_rows(data.train, 0)
    assert len(streamed) == 26
    assert all(text and text.strip() for _, text in streamed)


def test_empty_seq2seq_targets_are_bad_rows(tmp_path):
    from test_train_helpers import reverse_rows, tiny_bart

    model = tiny_bart(tmp_path / "model")
    rows = reverse_rows(10, 0)
    rows[2]["target"] = ""
    path = write_parquet(tmp_path / "s2s.parquet", rows)
    cfg = load_train_config({"model": {"path": model, "task": "generate"}, "input": {"path": path},
                             "train": {"name": "r", "batch_size_per_worker": 2}})
    with pytest.raises(DataError, match=r"row 2: target: text is empty"):
        prepare_data(cfg, 1, None)


# ------------------------------------------------------------------------------------------------
# Tokenization (the Ray Data stage function) and collation (padding in the worker).


def _tok(model: str, **kw) -> Tokenization:
    base = dict(tokenizer_path=model, revision=None, local_files_only=False, max_length=16, truncation="longest_first",
                max_target_length=8, pass_token_type_ids=True)
    base.update(kw)
    return Tokenization(**base)


def test_tokenize_and_collate_classification_labels(tmp_path):
    model = str(minilm_dir())
    texts = pa.array(["hello world", "a much longer sentence " * 10, "x"])
    single = LabelSpec("classify", "single_label_classification", "names", ["neg", "pos"], 2)
    batch = pa.table({"text": texts, "label": pa.array(["pos", "neg", "pos"])})
    out = collate(tokenize_batch(batch, _tok(model), Columns("text", None, "label"), single), pad_token_id=0)
    assert out["input_ids"].shape == (3, 16) and out["labels"].tolist() == [1, 0, 1]
    assert out["attention_mask"].sum(1).tolist() == [4, 16, 3]
    assert out["input_ids"][0, 4:].eq(0).all() and "token_type_ids" not in out

    multi = LabelSpec("classify", "multi_label_classification", "names", ["a", "b", "c"], 3)
    batch = pa.table({"text": texts, "pair": texts, "label": pa.array([["a", "c"], [], ["b"]])})
    out = collate(tokenize_batch(batch, _tok(model), Columns("text", "pair", "label"), multi), pad_token_id=0)
    assert out["labels"].tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]] and out["labels"].dtype == torch.float32
    assert out["token_type_ids"].shape == out["input_ids"].shape and out["token_type_ids"][0].max() == 1

    reg = LabelSpec("classify", "regression", "values", [], 1)
    batch = pa.table({"text": texts, "label": pa.array([0.5, 1.0, -2.0])})
    out = collate(tokenize_batch(batch, _tok(model), Columns("text", None, "label"), reg), pad_token_id=0)
    assert out["labels"].tolist() == [0.5, 1.0, -2.0]


def test_tokenize_seq2seq_targets_pads_labels_with_minus_100():
    model = str(minilm_dir())
    spec = LabelSpec("generate")
    batch = pa.table({"text": ["a b c", "d e"], "target": ["c b a", "e d f g h i j k l"]})
    out = collate(tokenize_batch(batch, _tok(model), Columns("text", None, "target"), spec), pad_token_id=0)
    # [CLS] c b a [SEP] then -100; the long target is cut to max_target_length 8
    assert out["labels"][0].tolist()[:5] == [101, 1039, 1038, 1037, 102]
    assert out["labels"][0].tolist()[5:] == [-100, -100, -100]
    assert out["labels"].shape == (2, 8) and out["labels"][1, -1] == 102


def test_pad_list_column_handles_sliced_chunked_arrays():
    arr = pa.chunked_array([pa.array([[1, 2], [3]]), pa.array([[4, 5, 6], []])]).slice(1, 3)
    padded, lengths = pad_list_column(arr, -1)
    assert padded.tolist() == [[3, -1, -1], [4, 5, 6], [-1, -1, -1]] and lengths.tolist() == [1, 3, 0]


# ------------------------------------------------------------------------------------------------
# Optimizer and schedule.


def test_schedules_and_weight_decay_groups():
    linear = lr_lambda("linear", warmup=2, total=10)
    assert [round(linear(s), 3) for s in (0, 1, 2, 6, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    assert lr_lambda("constant", 0, 10)(7) == 1.0
    assert lr_lambda("cosine", 0, 10)(5) == pytest.approx(0.5)

    class Spec:
        weight_decay, learning_rate, adam_epsilon = 0.01, 1e-3, 1e-8

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    groups = make_optimizer(model, Spec).param_groups
    assert [len(g["params"]) for g in groups] == [1, 3] and [g["weight_decay"] for g in groups] == [0.01, 0.0]


# ------------------------------------------------------------------------------------------------
# CLI.


def test_cli_describe_and_bad_config_exit_codes(tmp_path, capsys):
    from rayformers.jobs.train import main
    from rayformers.pipeline import cli

    assert cli.main(["train", "--describe"]) == 0
    out = capsys.readouterr().out
    assert "train.batch_size_per_worker = 8" in out and "train.bad_rows = 'fail'" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {path: m, task: classify}\ninput: {path: d}\ntrain: {name: r, epochz: 2}\n")
    assert main([str(bad)]) == 2
    assert "unknown config key(s): train.epochz" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# MEGA and EncoderDecoder train through the same Auto classes and optimizer step as BERT/BART.


def _steps(model, spec, micro_batches, n=8):
    import contextlib

    from rayformers.jobs.train_loop import _optimizer_step

    model.train()
    optimizer = make_optimizer(model, spec)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("constant", 0, n))
    return [float(_optimizer_step(model, model, optimizer, scheduler, micro_batches, spec, contextlib.nullcontext(), 1,
                                  torch.device("cpu"))) for _ in range(n)]


def test_mega_classifier_and_encoder_decoder_train_through_auto_classes(tmp_path):
    import transformers

    from rayformers.jobs.train_data import LabelSpec
    from rayformers.models import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    mega_cfg = transformers.MegaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, intermediate_size=24,
                                       ema_projection_size=4, shared_representation_size=8, nffn_hidden_size=20,
                                       max_positions=32, pad_token_id=1)
    transformers.MegaModel(mega_cfg).save_pretrained(tmp_path / "mega")
    spec = LabelSpec("classify", "single_label_classification", "names", ["x", "y", "z"], 3)
    mega = AutoModelForSequenceClassification.from_pretrained(tmp_path / "mega", **spec.model_kwargs())
    assert type(mega).__name__ == "MegaForSequenceClassification" and mega.config.id2label[2] == "z"
    ids = torch.randint(2, 64, (4, 7))
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 2, 1])}] * 2
    losses = _steps(mega, worker_spec("classify", learning_rate=1e-2), batches, n=12)
    assert losses[-1] < 0.5 * losses[0]

    bert = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=32, pad_token_id=1)
    dec = transformers.BertConfig(**{**bert.to_dict(), "is_decoder": True, "add_cross_attention": True})
    hf = transformers.EncoderDecoderModel(encoder=transformers.BertModel(bert), decoder=transformers.BertLMHeadModel(dec))
    hf.config.decoder_start_token_id, hf.config.pad_token_id = 2, 1
    hf.save_pretrained(tmp_path / "bert2bert")
    ed = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "bert2bert")
    assert type(ed).__name__ == "EncoderDecoderModel"
    labels = torch.randint(3, 64, (4, 5))
    labels[0, 3:] = -100
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}] * 2
    losses = _steps(ed, worker_spec("generate", learning_rate=1e-2), batches, n=12)
    assert losses[-1] < 0.7 * losses[0]
    # the step loss is the token-weighted mean over the whole (accumulated) batch
    ed.eval()
    with torch.no_grad():
        from rayformers.jobs.train_loop import token_loss_sum

        out = ed(**batches[0])
        expected = float(token_loss_sum(out.logits, labels)) / int((labels != -100).sum())
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)


def test_rng_state_round_trip_covers_python_numpy_and_torch(tmp_path):
    import random

    ckpt.save_training_state(str(tmp_path), {"global_step": 1}, rank=0)
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    ckpt.save_training_state(str(tmp_path), {}, rank=3)  # other ranks write only their RNG
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    ckpt.load_training_state(str(tmp_path), rank=3)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# ------------------------------------------------------------------------------------------------
# GPU readiness, proven on CPU: collectives on the worker's device, eval batches on the host, no
# host synchronisation per step, checkpoints written on a GPU resume elsewhere.


COLLECTIVES = {"all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor",
               "broadcast", "reduce", "all_to_all", "gather", "scatter", "barrier"}


def test_only_the_device_aware_helper_calls_torch_distributed_collectives():
    """NCCL rejects CPU tensors: a collective called with a host tensor anywhere in the jobs layer
    crashes the first multi-GPU run, though gloo (every CPU test) accepts it. So every collective
    goes through ``collectives.all_reduce_sum(tensor, device)``."""
    import ast

    jobs = Path(ckpt.__file__).resolve().parent
    offenders = []
    for path in sorted(jobs.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in COLLECTIVES:
                owner = node.func.value
                if isinstance(owner, ast.Name) and owner.id in ("dist", "distributed") and path.name != "collectives.py":
                    offenders.append(f"{path.name}:{node.lineno} {owner.id}.{node.func.attr}")
    assert offenders == []
    source = (jobs / "collectives.py").read_text()
    assert "tensor = tensor.to(torch.device(device))" in source.split("dist.all_reduce(")[0]


def test_all_reduce_sum_moves_the_tensor_to_the_worker_device():
    from rayformers.jobs.collectives import all_reduce_sum

    host = torch.tensor([1.0, 2.0])
    moved = all_reduce_sum(host, torch.device("meta"))  # without a process group: the move only
    assert moved.device.type == "meta" and moved.shape == host.shape
    assert all_reduce_sum(host, "cpu") is host


def test_every_all_reduce_of_a_two_rank_step_and_evaluation_gets_the_worker_device(tmp_path):
    """A real 2-process gloo group runs an accumulated classification step, a seq2seq step (token
    count + loss) and an evaluation; every tensor handed to ``torch.distributed.all_reduce`` is
    recorded. On CPU the worker's device is the CPU, so this proves the call sites and the sums;
    the device rule itself is the test above."""
    import json

    import torch.multiprocessing as mp

    from test_train_helpers import record_collectives_worker, tiny_letter_bart

    classify = tiny_bert(tmp_path / "bert", head="BertForSequenceClassification", num_labels=3)
    seq2seq = tiny_letter_bart(tmp_path / "bart", hidden=16)
    mp.spawn(record_collectives_worker, args=(2, str(tmp_path / "pg"), classify, seq2seq, str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for result in ranks:
        # classify: the step loss; seq2seq: the target-token count and the step loss; eval: metrics
        assert [c["shape"] for c in result["all_reduce"]] == [[], [], [], [6 + 9]]
        assert {c["device"] for c in result["all_reduce"]} == {result["worker_device"]}
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the reduced (global) loss on every rank
    assert ranks[0]["eval"]["eval_rows"] == ranks[1]["eval"]["eval_rows"] == 8  # 4 rows on each rank


def test_eval_batches_are_kept_on_the_host_and_moved_to_the_device_one_at_a_time():
    from rayformers.jobs.train_loop import EvalBatches

    reads = []

    def source():
        reads.append(1)
        for i in range(3):
            ids = torch.full((4, 5), i)
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros(4)}

    device = torch.device("meta")  # stands for the GPU: a device that is not the host
    batches = EvalBatches(source, device, cache_rows=12)
    for _ in range(2):
        seen = list(batches)
        assert len(seen) == 3 and all(t.device == device for b in seen for t in b.values())
    assert len(reads) == 1  # the second pass replays the host copy
    assert all(t.device.type == "cpu" for b in batches.cached for t in b.values())
    assert [int(b["input_ids"][0, 0]) for b in batches.cached] == [0, 1, 2]

    bounded = EvalBatches(source, device, cache_rows=8)  # 12 rows do not fit: streamed every time
    list(bounded), list(bounded)
    assert bounded.cached is None and len(reads) == 3


def test_training_steps_do_not_read_device_values_until_the_logging_step(tmp_path):
    """A host read of a device tensor (float, .item, .tolist, int, bool) waits for the GPU; the
    loop may do it once per logging window, never per micro-batch or step. Counted with a real
    ``TorchFunctionMode`` over the calls made from the jobs package."""
    import contextlib
    import sys

    from torch.overrides import TorchFunctionMode

    from rayformers.jobs import train_loop
    from rayformers.jobs.train_loop import StepLosses, _optimizer_step
    from rayformers.models import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    from test_train_helpers import tiny_letter_bart

    reads = []
    jobs_dir = Path(train_loop.__file__).parent  # the loop, the collectives and the metrics

    class CountHostReads(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in ("__float__", "__int__", "__bool__", "item", "tolist", "numpy", "cpu"):
                if Path(sys._getframe(1).f_code.co_filename).parent == jobs_dir:
                    reads.append(name)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    ids = torch.randint(4, 14, (4, 6))
    cases = [
        ("classify", AutoModelForSequenceClassification.from_pretrained(
            tiny_bert(tmp_path / "bert", head="BertForSequenceClassification", num_labels=3)),
         torch.tensor([0, 1, 2, 1])),
        ("generate", AutoModelForSeq2SeqLM.from_pretrained(tiny_letter_bart(tmp_path / "bart", hidden=16)),
         torch.tensor([[5, 6, -100], [7, 8, 9], [4, -100, -100], [6, 6, 6]])),
    ]
    for task, model, labels in cases:
        spec = worker_spec(task)
        model.train()
        optimizer = make_optimizer(model, spec)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("constant", 0, 4))
        micro_batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}] * 2
        window = StepLosses()
        reads.clear()
        with CountHostReads():
            for step in range(1, 5):
                window.add(step, _optimizer_step(model, model, optimizer, scheduler, micro_batches, spec,
                                                 contextlib.nullcontext(), 1, torch.device("cpu")), 0.1)
            assert reads == [], f"{task}: host reads during the steps: {reads}"
            entries = window.read()
        assert reads == ["tolist"]  # one synchronisation for the whole window
        assert [e["step"] for e in entries] == [1, 2, 3, 4] and all(isinstance(e["loss"], float) for e in entries)
        assert entries[-1]["loss"] < entries[0]["loss"] and window.read() == []


def test_checkpoint_written_on_a_gpu_resumes_on_a_cpu(tmp_path):
    """Optimizer, scheduler and RNG files whose tensors were saved on ``cuda:1`` (the storage
    location tag a GPU run writes, produced here by a location tagger in a separate process) load
    through the real resume path on a machine without that GPU."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import torch, torch.serialization
        from rayformers.jobs import checkpoints as ckpt
        # every CPU storage is written as if it lived on GPU 1
        torch.serialization.register_package(0, lambda s: "cuda:1" if s.device.type == "cpu" else None,
                                             lambda obj, location: None)
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
        model(torch.ones(1, 3)).sum().backward()
        opt.step(); sched.step()
        torch.manual_seed(123)
        ckpt.save_training_state({str(tmp_path)!r}, {{"global_step": 7}}, rank=0, optimizer=opt, scheduler=sched)
        torch.save(opt.state_dict()["state"][0]["exp_avg"], {str(tmp_path / "exp_avg.pt")!r})
        print(repr(torch.rand(3).tolist()))
    """)
    made = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    folder = tmp_path / ckpt.TRAINER_STATE_DIR
    with pytest.raises(RuntimeError, match="CUDA"):  # what a plain torch.load does with these files here
        torch.load(folder / "optimizer.pt", weights_only=True)

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    state = ckpt.load_training_state(str(tmp_path), rank=0, optimizer=opt, scheduler=sched)
    assert state["global_step"] == 7 and sched.last_epoch == 1
    assert torch.rand(3).tolist() == eval(made.stdout.strip().splitlines()[-1])  # RNG restored too
    exp_avg = opt.state_dict()["state"][0]["exp_avg"]
    assert exp_avg.device.type == "cpu"
    assert torch.equal(exp_avg, torch.load(tmp_path / "exp_avg.pt", map_location="cpu", weights_only=True))


def test_cuda_rng_state_is_restored_only_with_the_same_gpu_count(tmp_path):
    saved = {"cuda": [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]}
    assert ckpt.cuda_rng_states_to_restore(saved, 2) is saved["cuda"]
    for visible in (0, 1, 4):
        with pytest.warns(RuntimeWarning, match=f"CUDA RNG state of 2 GPU\\(s\\) but this worker sees {visible}"):
            assert ckpt.cuda_rng_states_to_restore(saved, visible) is None
    assert ckpt.cuda_rng_states_to_restore({}, 1) is None

    # the resume path on this machine (no GPU): warns, and restores the CPU generators
    torch.manual_seed(5)
    rng = {**ckpt.capture_rng_state(), **saved}
    expected = torch.rand(2)
    folder = tmp_path / ckpt.TRAINER_STATE_DIR
    folder.mkdir()
    (folder / ckpt.TRAINER_STATE_FILE).write_text("{}")
    torch.save(rng, folder / "rng_rank0.pt")
    torch.manual_seed(9)
    with pytest.warns(RuntimeWarning, match="CUDA RNG state not restored"):
        ckpt.load_training_state(str(tmp_path), rank=0)
    assert torch.equal(torch.rand(2), expected)
