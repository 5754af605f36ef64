"""Long inputs (``tokenizer.overflow: chunk``) without Ray: windows as transformers' fast
tokenizer cuts them, embed / classify / token-classify merged per row against transformers run
window by window, the staged-file accounting of one output row per window, and config errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import torch

from rayformers.operators import ClassifyOperator, EmbedOperator, TokenizeOperator
from rayformers.operators.records import ERROR_COLUMN
from rayformers.operators.token_classify import TokenClassifyOperator
from rayformers.pipeline.config import ConfigError, load_config

from model_test_utils import single_thread, tiny_bert  # noqa: F401 - single_thread applies to the module

MAX_LENGTH, STRIDE = 24, 5
WORDS = "the quick brown fox jumps over a lazy dog while Paris sleeps and Marie Curie writes unbelievably long notes"
TEXTS = [
    " ".join([WORDS] * 4),  # ~90 tokens: several windows
    "a short row",  # one window
    None,  # an error row: no windows
    "Héllo wörld, naïve café — " * 6 + "end.",  # accents and punctuation: offsets must map back
    WORDS + " " + WORDS,  # two or three windows
]


@pytest.fixture(scope="module")
def hf_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    tok.model_max_length = MAX_LENGTH
    return tok


def hf_windows(tok, texts):
    """transformers' own windows: ``return_overflowing_tokens`` with ``stride`` (row of each)."""
    good = [t for t in texts if t is not None]
    enc = tok(good, truncation=True, max_length=MAX_LENGTH, stride=STRIDE, return_overflowing_tokens=True,
              return_offsets_mapping=True, return_special_tokens_mask=True)
    index = [i for i, t in enumerate(texts) if t is not None]
    return enc, [index[s] for s in enc["overflow_to_sample_mapping"]]


def tokenized(path, texts, **kw):
    op = TokenizeOperator(str(path), "text", max_length=MAX_LENGTH, overflow="chunk", stride=STRIDE, **kw)
    return op(pa.table({"id": list(range(len(texts))), "text": texts}))


def split_rows(column, window_lengths):
    """A concatenated per-row list column → per-window lists (in row order)."""
    out = []
    for values, lengths in zip(column.to_pylist(), window_lengths.to_pylist()):
        if lengths is None:
            continue
        start = 0
        for n in lengths:
            out.append(values[start:start + n])
            start += n
    return out


def test_windows_ids_and_offsets_equal_transformers_overflowing_tokens(minilm_path, hf_tokenizer):
    out = tokenized(minilm_path, TEXTS, with_offsets=True)
    enc, rows = hf_windows(hf_tokenizer, TEXTS)
    lengths = out.column("window_lengths")
    assert lengths[2].as_py() is None and out.column(ERROR_COLUMN)[2].as_py() is not None
    assert [len(x) for x in lengths.to_pylist() if x] == [rows.count(r) for r in sorted(set(rows))]
    assert len(lengths[0].as_py()) >= 4 and lengths[1].as_py() == [5]
    assert split_rows(out.column("input_ids"), lengths) == enc["input_ids"]
    assert split_rows(out.column("offset_start"), lengths) == [[s for s, _ in w] for w in enc["offset_mapping"]]
    assert split_rows(out.column("offset_end"), lengths) == [[e for _, e in w] for w in enc["offset_mapping"]]
    assert split_rows(out.column("special_tokens_mask"), lengths) == enc["special_tokens_mask"]
    assert out.column("num_tokens").to_pylist() == [sum(x or [0]) for x in lengths.to_pylist()]


def test_chunking_does_not_pre_cut_very_long_texts(minilm_path, hf_tokenizer):
    """Past ``CHARS_PER_TOKEN_CAP * max_length`` characters truncation cuts the text before
    tokenizing; chunking must see all of it."""
    text = " ".join(f"w{i}" for i in range(700))  # > 32 * 24 characters
    out = tokenized(minilm_path, [text])
    enc, _ = hf_windows(hf_tokenizer, [text])
    assert split_rows(out.column("input_ids"), out.column("window_lengths")) == enc["input_ids"]


def test_stride_must_leave_room_in_each_window(minilm_path):
    with pytest.raises(ValueError, match="stride 22 must be .* below max_length 24 minus the 2 special tokens"):
        TokenizeOperator(str(minilm_path), "text", max_length=MAX_LENGTH, overflow="chunk", stride=22)


def test_overflow_error_names_the_token_count(minilm_path):
    op = TokenizeOperator(str(minilm_path), "text", max_length=MAX_LENGTH, overflow="error")
    err = op(pa.table({"text": TEXTS})).column(ERROR_COLUMN).to_pylist()
    assert err[1] is None and "more than max_length 24 (tokenizer.overflow is error)" in err[0]
    assert "window_lengths" not in op(pa.table({"text": TEXTS})).column_names


# --- model side against transformers, window by window -----------------------------------------


def reference_windows(model, tok, texts):
    """transformers' outputs for every window (padded batch), with the window's row."""
    enc, rows = hf_windows(tok, texts)
    batch = tok.pad({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out, batch["attention_mask"], np.asarray(rows)


def merged(values: np.ndarray, weights: np.ndarray, rows: np.ndarray, how: str) -> dict:
    out = {}
    for r in np.unique(rows):
        v, w = values[rows == r], weights[rows == r]
        out[int(r)] = v.max(axis=0) if how == "max" else (v * w[:, None]).sum(axis=0) / w.sum()
    return out


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    import transformers

    path = tiny_bert(tmp_path_factory.mktemp("enc") / "model", hidden=16)
    return path, transformers.BertModel.from_pretrained(path).eval()


@pytest.mark.parametrize("how", ["mean", "max"])
def test_embed_merges_window_vectors_per_row(encoder, minilm_path, hf_tokenizer, how):
    path, ref = encoder
    out, mask, rows = reference_windows(ref, hf_tokenizer, TEXTS)
    m = mask.unsqueeze(-1).float()
    pooled = ((out.last_hidden_state * m).sum(1) / m.sum(1)).numpy()
    expected = merged(pooled, mask.sum(1).numpy().astype(np.float32), rows, how)
    op = EmbedOperator(model_path=str(path), pooling="mean", normalize=True, chunk_aggregate=how,
                       torch_threads=1, max_tokens_per_batch=60)  # windows of one row in several micro-batches
    result = op(tokenized(minilm_path, TEXTS))
    assert result.num_rows == len(TEXTS) and "window_lengths" not in result.column_names
    got = result.column("embedding").to_pylist()
    assert got[2] is None
    for r, vec in expected.items():
        torch.testing.assert_close(torch.tensor(got[r]), torch.nn.functional.normalize(torch.tensor(vec), dim=0),
                                   rtol=0, atol=1e-5)


def test_embed_none_writes_one_row_per_window_with_its_character_span(encoder, minilm_path, hf_tokenizer):
    path, ref = encoder
    out, mask, rows = reference_windows(ref, hf_tokenizer, TEXTS)
    m = mask.unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((out.last_hidden_state * m).sum(1) / m.sum(1), dim=1)
    enc, _ = hf_windows(hf_tokenizer, TEXTS)
    op = EmbedOperator(model_path=str(path), pooling="mean", normalize=True, chunk_aggregate="none", torch_threads=1)
    batch = tokenized(minilm_path, TEXTS, with_offsets=True)
    result = op(batch)
    assert result.num_rows == len(rows) + 1  # every window, plus the error row as one row
    ids = result.column("id").to_pylist()
    assert ids == sorted(ids) and sorted(set(ids)) == list(range(len(TEXTS)))
    scored = [i for i, e in enumerate(result.column(ERROR_COLUMN).to_pylist()) if e is None]
    torch.testing.assert_close(torch.tensor([result.column("embedding")[i].as_py() for i in scored]), pooled,
                               rtol=0, atol=1e-5)
    chunk_index = result.column("chunk_index").to_pylist()
    assert chunk_index[ids.index(2)] is None and result.column("chunk_start")[ids.index(2)].as_py() is None
    assert [chunk_index[i] for i in scored] == [rows[:k].tolist().count(rows[k]) for k in range(len(rows))]
    for k, i in enumerate(scored):
        real = [o for o, s in zip(enc["offset_mapping"][k], enc["special_tokens_mask"][k]) if not s]
        assert (result.column("chunk_start")[i].as_py(), result.column("chunk_end")[i].as_py()) == (real[0][0], real[-1][1])
        assert result.column("num_tokens")[i].as_py() == len(enc["input_ids"][k])
    text = TEXTS[0]
    first = scored[0]
    assert text[result.column("chunk_start")[first].as_py():].startswith("the quick")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    import transformers

    path = tiny_bert(tmp_path_factory.mktemp("clf") / "model", hidden=16, head="BertForSequenceClassification",
                     num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2})
    return path, transformers.BertForSequenceClassification.from_pretrained(path).eval()


@pytest.mark.parametrize("how", ["mean", "max"])
def test_classify_merges_window_logits_before_softmax(classifier, minilm_path, hf_tokenizer, how):
    path, ref = classifier
    out, mask, rows = reference_windows(ref, hf_tokenizer, TEXTS)
    expected = merged(out.logits.numpy(), mask.sum(1).numpy().astype(np.float32), rows, how)
    op = ClassifyOperator(model_path=str(path), top_k=3, chunk_aggregate=how, torch_threads=1, max_tokens_per_batch=60)
    result = op(tokenized(minilm_path, TEXTS))
    assert result.column("label")[2].as_py() is None
    names = ["neg", "neu", "pos"]
    for r, logits in expected.items():
        probs = torch.softmax(torch.tensor(logits), dim=-1)
        order = torch.argsort(probs, descending=True).tolist()
        assert result.column("top_k_labels")[r].as_py() == [names[i] for i in order]
        torch.testing.assert_close(torch.tensor(result.column("top_k_scores")[r].as_py()), probs[order],
                                   rtol=0, atol=1e-5)


def test_a_window_that_breaks_the_model_fails_only_its_row(classifier, minilm_path, hf_tokenizer):
    path, _ = classifier
    marie = hf_tokenizer.convert_tokens_to_ids("marie")
    op = ClassifyOperator(model_path=str(path), torch_threads=1)
    forward = op.model.forward

    def fragile(input_ids, attention_mask, token_type_ids=None, **kw):
        if (input_ids == marie).any():  # only in some windows of rows 0 and 4
            raise RuntimeError("boom")
        return forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kw)

    op.model.forward = fragile
    batch = tokenized(minilm_path, TEXTS)
    result = op(batch)
    err = result.column(ERROR_COLUMN).to_pylist()
    assert "model failed on this row: RuntimeError: boom" in err[0] and "boom" in err[4]
    assert err[1] is None and err[3] is None and result.column("label")[3].as_py() is not None
    assert result.column("label")[0].as_py() is None and result.num_rows == len(TEXTS)


# --- token classification: transformers' pipeline with stride -------------------------------------


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    import transformers

    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    path = tiny_bert(tmp_path_factory.mktemp("ner") / "model", hidden=16, head="BertForTokenClassification",
                     num_labels=5, id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    return path, transformers.BertForTokenClassification.from_pretrained(path).eval()


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
def test_token_classify_merges_windows_as_transformers_pipeline_with_stride(tagger, minilm_path, hf_tokenizer, strategy):
    from transformers import pipeline

    path, ref = tagger
    texts = [t for t in TEXTS if t is not None]
    reference = pipeline("token-classification", model=ref, tokenizer=hf_tokenizer, aggregation_strategy=strategy,
                         stride=STRIDE, device="cpu")
    op = TokenClassifyOperator(model_path=str(path), tokenizer_path=str(minilm_path), aggregation_strategy=strategy,
                               torch_threads=1, max_tokens_per_batch=60)
    result = op(tokenized(minilm_path, texts, with_offsets=True))
    total = 0
    for text, got in zip(texts, result.column("entities").to_pylist()):
        expected = reference(text)
        total += len(expected)
        assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in got] == \
            [(e["entity_group"], e["word"], int(e["start"]), int(e["end"])) for e in expected]
        np.testing.assert_allclose([e["score"] for e in got], [float(e["score"]) for e in expected], rtol=0, atol=1e-5)
    assert total > 10, "the random tagger finds entities, so the merge is exercised"


# --- accounting: staged files count input rows, not windows -----------------------------------


def test_staged_files_count_input_rows_when_windows_fill_several_rows(tmp_path):
    from rayformers.pipeline.commit import collect_staged, row_ranges, write_part

    def windows_table(rows, counts):
        unit, row, index = [], [], []
        for r, c in zip(rows, counts):
            unit += ["f@rg0"] * max(c, 1)
            row += [r] * max(c, 1)
            index += list(range(c)) if c else [None]
        return pa.table({"__rf_unit": unit, "__rf_row": row, "chunk_index": pa.array(index, pa.int32()),
                         ERROR_COLUMN: pa.array([None if i is not None else "bad" for i in index], pa.string()),
                         "num_tokens": pa.array([1] * len(row), pa.int32())})

    table = windows_table([3, 0, 1, 2], [2, 3, 0, 1])
    _, ranges = row_ranges(table)
    assert ranges == [["f@rg0", 0, 4]]
    fs = pafs.LocalFileSystem()
    data = str(tmp_path / "data")
    stats = write_part(fs, data, table, "snappy")
    assert (stats["rows"], stats["errors"]) == (4, 1)
    # A retried write that bundled rows 2-5: rows 2-3 are already staged, so its file is rewritten
    # without them (its windows of rows 4 and 5 kept whole).
    retry = write_part(fs, data, windows_table([2, 3, 4, 5], [1, 2, 3, 2]), "snappy")
    assert retry["rows"] == 4
    counts = collect_staged(fs, data, units={"f@rg0": 6})
    assert (counts.rows, counts.errors, counts.duplicates_removed) == (6, 1, 2)
    import pyarrow.parquet as pq

    rewritten = [f for f in counts.files if f.ranges[0][1] == 4]
    assert pq.read_table(rewritten[0].path).column("chunk_index").to_pylist() == [0, 1, 2, 0, 1]


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings, message", [
    ({"model": {"task": "generate"}, "tokenizer": {"overflow": "chunk"}}, "overflow chunk is for model.task"),
    ({"model": {"task": "zero-shot-classify"}, "tokenizer": {"overflow": "chunk"}}, "overflow chunk is for model.task"),
    ({"model": {"task": "classify"}, "tokenizer": {"overflow": "chunk"}, "task": {"chunk_aggregate": "none"}},
     "'none' is not available for classify"),
    ({"model": {"task": "embed"}, "tokenizer": {"overflow": "chunk"}, "input": {"text_pair_column": "b"}},
     "cannot split text pairs"),
    ({"model": {"task": "token-classify"}, "tokenizer": {"overflow": "chunk"}, "task": {"aggregation_strategy": "none"}},
     "not none"),
    ({"model": {"task": "embed"}, "tokenizer": {"stride": 8}}, "only used with tokenizer.overflow chunk"),
    ({"model": {"task": "embed"}, "tokenizer": {"overflow": "chunk", "truncation": "none"}}, "truncation none"),
    ({"tokenizer": {"overflow": "split"}}, "'split' is not one of truncate, chunk, error"),
    ({"task": {"chunk_aggregate": "sum"}}, "'sum' is not one of mean, max, none"),
])
def test_config_errors_name_the_key(settings, message):
    with pytest.raises(ConfigError, match=message):
        load_config(settings)


def test_preflight_checks_stride_against_max_length_and_defaults_to_an_eighth(encoder):
    from rayformers.pipeline.preflight import PreflightError, resolve_processing

    path, _ = encoder
    base = {"model": {"path": str(path), "task": "embed"}, "tokenizer": {"overflow": "chunk", "max_length": 32}}
    assert resolve_processing(load_config(base)).stride == 4
    assert resolve_processing(load_config(base, ["task.chunk_aggregate=max"])).task_options["chunk_aggregate"] == "max"
    with pytest.raises(PreflightError, match="stride 30 must be .* below max_length 32 minus the 2 special tokens"):
        resolve_processing(load_config(base, ["tokenizer.stride=30"]))
    assert "chunk_aggregate" not in resolve_processing(load_config({"model": base["model"]})).task_options
