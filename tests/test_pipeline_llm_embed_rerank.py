"""Decoder embedders (last-token pooling) and the ``rerank`` task, through whole pipeline jobs.

References, all run here on the same tiny random checkpoints:

* ``embed`` on a Qwen3 / Qwen2 checkpoint saved as a sentence-transformers model (lasttoken
  Pooling, Normalize, Qwen3-Embedding's prompts, its left-padding tokenizer that appends
  ``<|endoftext|>``) equals ``SentenceTransformer.encode`` row by row within 1e-5;
* ``rerank`` with a BERT cross-encoder equals ``CrossEncoder.predict`` (Sigmoid for one label,
  Identity for three);
* ``rerank`` with a Qwen3 causal LM equals P("yes") of transformers' model on the Qwen3-Reranker
  prompt, computed row by row;
* ``classify`` with a Qwen2ForSequenceClassification equals transformers row by row.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rayformers.pipeline import read_output, run

from model_test_utils import tiny_bert

QUERIES = ["what is a fox", "numbers", "yes or no", "the lazy dog sleeps", "apple banana", "hello world again"]
DOCUMENTS = ["The quick brown fox jumps over the lazy dog.", "Numbers like 1,000 and 3.14 appear here too.",
             "no", "Hello world, this is a small corpus for tiny tokenizers. " * 3, "cherry", "a b c"]
CORPUS = QUERIES + DOCUMENTS + ["yes no yes no", "Instruct Query Document Judge whether the answer can only be",
                                "Given a web search query, retrieve relevant passages that answer the query",
                                "system user assistant think requirements based on provided Note"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")
QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"


def qwen_tokenizer(directory: Path, corpus: list = CORPUS) -> int:
    """A byte-level BPE tokenizer in Qwen3-Embedding's layout: ``<|endoftext|>`` appended to every
    text by the post-processor, and ``padding_side: left``. Returns its vocabulary size."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.train_from_iterator(corpus * 5, trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    eos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        processors.TemplateProcessing(single="$A <|endoftext|>", pair="$A <|endoftext|> $B:1 <|endoftext|>:1",
                                      special_tokens=[("<|endoftext|>", eos)]),
    ])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "padding_side": "left", "model_max_length": 512,
        "clean_up_tokenization_spaces": False}))
    return tok.get_vocab_size()


def qwen_model(directory: Path, family: str, head: str, corpus: list = CORPUS, **config):
    """A tiny random ``<family>`` model with ``head``, saved by transformers next to the tokenizer."""
    import transformers

    vocab = qwen_tokenizer(directory, corpus)
    torch.manual_seed(0)
    cls = {"qwen3": transformers.Qwen3Config, "qwen2": transformers.Qwen2Config}[family]
    cfg = cls(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, max_position_embeddings=512, initializer_range=0.2,
              tie_word_embeddings=True, **config)
    model = getattr(transformers, head)(cfg).eval()
    model.save_pretrained(directory)
    return model


def write_input(directory: Path, **columns) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), directory / "part0.parquet")
    return directory


def job_rows(tmp_path: Path, name: str, model_dir: Path, task: dict, columns: dict, model_task: str,
             max_error_fraction: float = 0.0, **inp) -> list:
    """Run one pipeline job on ``columns``; its output rows in input order."""
    source = write_input(tmp_path / f"{name}-in", **columns)
    run({"input": {"path": str(source), **inp}, "model": {"path": str(model_dir), "task": model_task},
         "task": task, "compute": {"max_rows_per_batch": 4},
         "output": {"path": str(tmp_path / f"{name}-out"), "max_error_fraction": max_error_fraction}})
    rows = {r["id"]: r for r in read_output(str(tmp_path / f"{name}-out")).to_pylist()}
    return [rows[f"part0.parquet:{i}"] for i in range(len(rows))]


def sentence_transformer(tmp_path: Path, family: str, prompts: dict):
    """A Qwen-family sentence-transformers embedder: Transformer, lasttoken Pooling, Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer

    qwen_model(tmp_path / f"{family}-base", family, {"qwen3": "Qwen3Model", "qwen2": "Qwen2Model"}[family])
    transformer = Transformer(str(tmp_path / f"{family}-base"))
    pooling = Pooling(transformer.get_word_embedding_dimension(), "lasttoken")
    saved = tmp_path / f"{family}-st"
    SentenceTransformer(modules=[transformer, pooling, Normalize()], prompts=prompts, device="cpu").save(str(saved))
    return saved, SentenceTransformer(str(saved), device="cpu")


def test_decoder_embedder_equals_sentence_transformers_encode(ray_session, tmp_path):
    """Qwen3-Embedding layout: lasttoken pooling and the prompts read from the checkpoint; ST pads
    on the left (its tokenizer says so), our micro-batches on the right: same vectors."""
    saved, reference = sentence_transformer(tmp_path, "qwen3", {"query": QUERY_PROMPT, "document": ""})
    assert reference.tokenizer.padding_side == "left"
    pooling = json.loads((saved / "1_Pooling" / "config.json").read_text())
    assert pooling.get("pooling_mode") == "lasttoken" or pooling.get("pooling_mode_lasttoken")
    texts = QUERIES + DOCUMENTS
    for prompt_name in ("query", "document"):
        rows = job_rows(tmp_path, f"qwen3-{prompt_name}", saved, {"prompt_name": prompt_name}, {"text": texts}, "embed")
        want = reference.encode(texts, prompt_name=prompt_name, batch_size=4, convert_to_numpy=True)
        got = np.array([r["embedding"] for r in rows], dtype=np.float32)
        assert all(r["error"] is None for r in rows)
        assert np.linalg.norm(got, axis=1) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # The query prompt really changes the vectors (it is prepended, not ignored).
    assert not np.allclose(reference.encode(texts[:1], prompt_name="query"), reference.encode(texts[:1]))


def test_explicit_lasttoken_pooling_with_truncate_dim(ray_session, tmp_path):
    """Qwen2, ``task.pooling: lasttoken`` set explicitly and a Matryoshka cut, against ST's
    ``truncate_dim`` (ST cuts after its Normalize module; the job normalises what it keeps, as
    for every embedder, so the reference is normalised again)."""
    from sentence_transformers import SentenceTransformer

    saved, _ = sentence_transformer(tmp_path, "qwen2", {})
    texts = QUERIES + DOCUMENTS
    rows = job_rows(tmp_path, "qwen2", saved, {"pooling": "lasttoken", "truncate_dim": 16}, {"text": texts}, "embed")
    want = SentenceTransformer(str(saved), device="cpu", truncate_dim=16).encode(texts, batch_size=3)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), want, atol=1e-5, rtol=0)


def test_lasttoken_pooling_takes_the_last_attended_token_on_either_side():
    from rayformers.operators.embed import pool

    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "lasttoken")[:, 0].tolist() == [1.0, 7.0]
    assert pool(hidden, left, "lasttoken")[:, 0].tolist() == [3.0, 7.0]


@pytest.mark.parametrize("num_labels", [1, 3])
def test_cross_encoder_rerank_equals_cross_encoder_predict(ray_session, tmp_path, num_labels):
    from sentence_transformers import CrossEncoder

    base = tiny_bert(tmp_path / "bert-ce", head="BertForSequenceClassification", num_labels=num_labels)
    saved = tmp_path / "ce"
    CrossEncoder(str(base), device="cpu").save(str(saved))
    rows = job_rows(tmp_path, f"ce{num_labels}", saved, {}, {"q": QUERIES, "d": DOCUMENTS}, "rerank",
                    text_column="q", text_pair_column="d")
    want = CrossEncoder(str(saved), device="cpu").predict(list(zip(QUERIES, DOCUMENTS)), batch_size=4)
    assert all(r["error"] is None for r in rows)
    if num_labels == 1:
        got = np.array([r["score"] for r in rows])
        assert ((got > 0) & (got < 1)).all()  # the Sigmoid CrossEncoder applies to one label
    else:
        got = np.array([r["scores"] for r in rows])
        assert (got < 0).any()  # Identity for several labels: raw logits
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def yes_no_reference(model, tokenizer, prompt: str, query: str, document: str) -> float:
    """The Qwen3-Reranker model card's score for one pair, with transformers' model alone."""
    ids = tokenizer(prompt.format(query=query, document=document), add_special_tokens=False,
                    return_tensors="pt")["input_ids"]
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    return torch.log_softmax(torch.stack([logits[no], logits[yes]]), dim=0)[1].exp().item()


def test_yes_no_llm_rerank_equals_the_model_card_computation(ray_session, tmp_path):
    from transformers import AutoTokenizer

    from rayformers.operators.rerank_settings import DEFAULT_RERANK_PROMPT

    model_dir = tmp_path / "qwen3-reranker"
    model = qwen_model(model_dir, "qwen3", "Qwen3ForCausalLM")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    custom = "<|im_start|>user\nDoes {document} answer {query}?<|im_end|>\n<|im_start|>assistant\n"
    too_long = "a b c " * 200  # the prompt would pass the 512 tokens: an error record, never cut
    for name, prompt, task in (("default", DEFAULT_RERANK_PROMPT, {}), ("custom", custom, {"rerank_prompt": custom})):
        rows = job_rows(tmp_path, f"yes-no-{name}", model_dir, task, {"q": QUERIES + ["q"], "d": DOCUMENTS + [too_long]},
                        "rerank", max_error_fraction=0.2, text_column="q", text_pair_column="d")
        assert "more than tokenizer.max_length 512" in rows.pop()["error"]
        assert all(r["error"] is None for r in rows)
        want = [yes_no_reference(model, tokenizer, prompt, q, d) for q, d in zip(QUERIES, DOCUMENTS)]
        np.testing.assert_allclose([r["score"] for r in rows], want, atol=1e-5, rtol=0)
        assert [r["num_tokens"] for r in rows] == [  # the prompt's tokens
            len(tokenizer(prompt.format(query=q, document=d), add_special_tokens=False)["input_ids"])
            for q, d in zip(QUERIES, DOCUMENTS)]
        assert len({round(w, 6) for w in want}) > 1  # the pairs really score differently


def test_qwen2_sequence_classifier_classify_equals_transformers(ray_session, tmp_path):
    """A decoder classifier scores the last non-pad token: padded batches equal rows alone."""
    from transformers import AutoTokenizer

    model_dir = tmp_path / "qwen2-cls"
    model = qwen_model(model_dir, "qwen2", "Qwen2ForSequenceClassification", num_labels=3, pad_token_id=0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.pad_token_id != 0  # the config's pad id is not the tokenizer's
    texts = QUERIES + DOCUMENTS
    rows = job_rows(tmp_path, "qwen2-cls", model_dir, {"top_k": 3}, {"text": texts}, "classify")
    for text, row in zip(texts, rows):
        with torch.no_grad():
            probs = torch.softmax(model(**tokenizer(text, return_tensors="pt")).logits[0], dim=-1)
        order = torch.argsort(probs, descending=True)
        assert row["label"] == model.config.id2label[int(order[0])]
        np.testing.assert_allclose(row["top_k_scores"], probs[order].numpy(), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------
# Refused before the job, naming what to change.


def test_rerank_settings_are_checked_before_the_job(tmp_path):
    from rayformers.pipeline.config import load_config
    from rayformers.pipeline.preflight import PreflightError, resolve_processing

    llm = tmp_path / "llm"
    qwen_model(llm, "qwen3", "Qwen3ForCausalLM")
    pairs = {"text_column": "q", "text_pair_column": "d"}

    def resolve(model_dir, task="rerank", inp=pairs, **task_settings):
        return resolve_processing(load_config({"input": inp, "model": {"path": str(model_dir), "task": task},
                                               "task": task_settings}))

    assert resolve(llm).task_options["rerank_prompt"].count("{document}") == 1
    with pytest.raises(PreflightError, match="input.text_pair_column"):
        resolve(llm, inp={"text_column": "q"})
    with pytest.raises(PreflightError, match=r"\{query\} and \{document\}"):
        resolve(llm, rerank_prompt="Is {doc} about {query}?")
    with pytest.raises(PreflightError, match="task.rerank_prompt is for model.task rerank"):
        resolve(llm, task="embed", inp={"text_column": "q"}, rerank_prompt="{query} {document}")
    no_yes = tmp_path / "no-yes"
    qwen_model(no_yes, "qwen3", "Qwen3ForCausalLM", corpus=["many words without the answer", "maybe nope"])
    with pytest.raises(PreflightError, match="encodes 'yes' as .* tokens"):
        resolve(no_yes)
    cross_encoder = tiny_bert(tmp_path / "ce", head="BertForSequenceClassification", num_labels=1)
    assert resolve(cross_encoder).task_options == {"activation": "sigmoid"}
    with pytest.raises(PreflightError, match="cross-encoder"):
        resolve(cross_encoder, rerank_prompt="{query} {document}")
    config = json.loads((cross_encoder / "config.json").read_text())
    (cross_encoder / "config.json").write_text(json.dumps({**config, "sentence_transformers": {
        "activation_fn": "torch.nn.modules.linear.Identity"}}))
    assert resolve(cross_encoder).task_options == {"activation": "none"}


def test_a_pooling_config_embed_cannot_follow_is_refused(tmp_path):
    from rayformers.pipeline.config import load_config
    from rayformers.pipeline.preflight import PreflightError, resolve_processing

    model_dir = tiny_bert(tmp_path / "st")
    (model_dir / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (model_dir / "1_Pooling").mkdir()
    for pooling, error in (({"pooling_mode": "weightedmean"}, "'weightedmean' is not available"),
                           ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}, "together")):
        (model_dir / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 32, **pooling}))
        with pytest.raises(PreflightError, match=error):
            resolve_processing(load_config({"model": {"path": str(model_dir), "task": "embed"}}))
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True,
                                                                     "include_prompt": False}))
    options = resolve_processing(load_config({"model": {"path": str(model_dir), "task": "embed"},
                                              "task": {"prompt": "query: "}})).task_options
    assert options["pooling"] == "lasttoken"  # the last token is never the prompt's: no difference
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "mean", "include_prompt": False}))
    with pytest.raises(PreflightError, match="include_prompt: false"):
        resolve_processing(load_config({"model": {"path": str(model_dir), "task": "embed"}, "task": {"prompt": "q: "}}))
    assert resolve_processing(load_config({"model": {"path": str(model_dir), "task": "embed"}})).text_prefix == ""


def test_auto_pooling_without_a_pooling_config_follows_sentence_transformers(tmp_path):
    """No sentence-transformers files: a checkpoint made as a causal LM pools its last token, any
    other the mean, as ``SentenceTransformer(path)`` would build it."""
    from sentence_transformers import SentenceTransformer

    from rayformers.pipeline.config import load_config
    from rayformers.pipeline.preflight import resolve_processing

    qwen_model(tmp_path / "causal", "qwen3", "Qwen3ForCausalLM")
    qwen_model(tmp_path / "base", "qwen3", "Qwen3Model")
    for name, want in (("causal", "lasttoken"), ("base", "mean")):
        path = str(tmp_path / name)
        assert SentenceTransformer(path, device="cpu")[1].pooling_mode == want
        options = resolve_processing(load_config({"model": {"path": path, "task": "embed"}})).task_options
        assert options["pooling"] == want


def test_decoder_classifier_without_a_pad_id_scores_each_row_alone(tmp_path, caplog):
    """Without config.pad_token_id transformers takes the last position, so only unpadded rows
    are right: the operator runs one row per forward (and says so), equal to transformers."""
    import logging

    from transformers import AutoTokenizer

    from rayformers.operators.classify import ClassifyOperator

    model_dir = tmp_path / "qwen2-no-pad"
    model = qwen_model(model_dir, "qwen2", "Qwen2ForSequenceClassification", num_labels=2)
    assert model.config.pad_token_id is None
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = QUERIES + DOCUMENTS
    ids = tokenizer(texts)["input_ids"]
    with caplog.at_level(logging.WARNING, logger="rayformers.operators.classify"):
        operator = ClassifyOperator(model_path=str(model_dir), pad_token_id=tokenizer.pad_token_id, top_k=2)
    assert operator.max_rows == 1 and "one row per forward" in caplog.text
    out = operator(pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())),
                             "error": pa.array([None] * len(ids), pa.string())})).to_pylist()
    for row, row_ids in zip(out, ids):
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=torch.tensor([row_ids])).logits[0], dim=-1)
        np.testing.assert_allclose(sorted(row["top_k_scores"], reverse=True), sorted(probs.tolist(), reverse=True),
                                   atol=1e-5, rtol=0)


def test_rerank_operator_reads_binary_text_and_keeps_the_schema_of_an_all_error_block(tmp_path):
    from rayformers.operators.rerank import RerankOperator

    llm = tmp_path / "llm"
    qwen_model(llm, "qwen3", "Qwen3ForCausalLM")
    operator = RerankOperator(model_path=str(llm), text_column="q", text_pair_column="d", tokenizer_path=str(llm),
                              max_length=512)

    def block(queries, documents, errors, kind=pa.string()):
        return pa.table({"q": pa.array(queries, kind), "d": pa.array(documents, kind),
                         "input_ids": pa.array([[1]] * len(queries), pa.list_(pa.int32())),
                         "error": pa.array(errors, pa.string())})

    as_text = operator(block(QUERIES, DOCUMENTS, [None] * 6)).column("score").to_pylist()
    as_bytes = operator(block([q.encode() for q in QUERIES], [d.encode() for d in DOCUMENTS], [None] * 6,
                              pa.binary())).column("score").to_pylist()
    assert as_bytes == as_text and None not in as_text  # the UTF-8 text, not "b'...'"
    cross_encoder = tiny_bert(tmp_path / "ce", head="BertForSequenceClassification", num_labels=3)
    out = RerankOperator(model_path=str(cross_encoder), activation="none")(block(["a"], ["b"], ["q: text is empty"]))
    assert out.schema.field("scores").type == pa.list_(pa.float32(), 3) and out.column("scores").to_pylist() == [None]


def test_quantized_rerank_scores_agree_within_the_tolerance():
    from rayformers.pipeline.agreement import METRIC, _row_agreement

    assert METRIC["rerank"] == "score within 0.05"
    assert _row_agreement("rerank", {"score": 0.90, "error": None}, {"score": 0.93, "error": None}) == 1.0
    assert _row_agreement("rerank", {"score": 0.90, "error": None}, {"score": 0.80, "error": None}) == 0.0
    assert _row_agreement("rerank", {"scores": [1.0, -2.0], "error": None}, {"scores": [1.01, -1.9], "error": None}) == 0.0
