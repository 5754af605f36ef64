"""Token classification, embedding models, FSDP2 and gradient checkpointing, without Ray Train:
entity F1 by seqeval's rules, tag alignment, bad rows, the MultipleNegativesRankingLoss against
sentence-transformers, the sentence-transformers directory, and two-rank gloo groups for the
gathered loss and the strategies. The Ray Train runs are in ``test_train_kinds_ray.py``."""

from __future__ import annotations

import json

import pytest
import torch

from rayformers.jobs.entity_metrics import entity_scores, get_entities
from rayformers.jobs.metrics import MetricState
from rayformers.jobs.train_config import ConfigError, load_train_config
from rayformers.jobs.train_data import DataError, prepare_data

from test_train_helpers import minilm_dir, tiny_bert, write_parquet
from train_kinds_helpers import ner_rows, pair_rows


# ------------------------------------------------------------------------------------------------
# Entity-level scores (seqeval is not installed: the expected numbers are seqeval's documented
# examples and hand computations with its rules, spelled out below).


def test_entity_scores_equal_seqeval_on_its_documented_examples():
    # seqeval's README / docstrings: get_entities(['B-PER', 'I-PER', 'O', 'B-LOC'])
    # == [('PER', 0, 1), ('LOC', 3, 3)]
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    # seqeval's README: f1_score / precision_score / recall_score of this pair are all 0.50
    # (MISC predicted one word early: wrong; PER: right; 1 of 2 entities each way).
    y_true = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    y_pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    assert entity_scores(y_true, y_pred) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}


def test_entity_scores_follow_seqeval_default_lenient_rules():
    """By hand with seqeval's default (conlleval) rules: an I- after O starts an entity; a change
    of type inside a chunk ends it and starts another.

    true: B-PER I-PER O I-LOC I-LOC B-ORG  -> PER(0,1) LOC(3,4) ORG(5,5)
    pred: B-PER I-LOC O B-LOC I-LOC I-ORG  -> PER(0,0) LOC(1,1) LOC(3,4) ORG(5,5)
    correct: LOC(3,4), ORG(5,5) -> precision 2/4, recall 2/3, F1 = 2·(1/2)(2/3)/(1/2+2/3) = 4/7."""
    true = [["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-ORG"]]
    pred = [["B-PER", "I-LOC", "O", "B-LOC", "I-LOC", "I-ORG"]]
    assert get_entities(true[0]) == [("PER", 0, 1), ("LOC", 3, 4), ("ORG", 5, 5)]
    assert get_entities(pred[0]) == [("PER", 0, 0), ("LOC", 1, 1), ("LOC", 3, 4), ("ORG", 5, 5)]
    scores = entity_scores(true, pred)
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(4 / 7)
    # IOBES: S- is a one-word entity, E- closes one
    assert get_entities(["S-PER", "B-LOC", "E-LOC", "O"]) == [("PER", 0, 0), ("LOC", 1, 2)]
    # nothing predicted and nothing true: 0, as seqeval (zero_division 0)
    assert entity_scores([["O"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_tagging_metric_state_sums_shards_to_the_whole_set_scores():
    """Two eval shards reduced (as across workers) give the F1 of the whole set; predictions are
    read at the labelled (first sub-token) positions only."""
    id2label = {0: "O", 1: "B-PER", 2: "I-PER"}
    # logits favour the given ids; -100 marks special tokens / continuation sub-tokens
    def batch(pred_ids, label_ids):
        logits = torch.nn.functional.one_hot(torch.tensor(pred_ids), 3).float()
        return logits, torch.tensor(label_ids)

    a = batch([[0, 1, 2, 2, 0]], [[-100, 1, 2, -100, 0]])   # PER(0,1) right
    b = batch([[0, 1, 0, 0, 0]], [[-100, 1, 2, 0, -100]])   # PER(0,0) vs PER(0,1): wrong
    whole, shards = MetricState("token_classification"), [MetricState("token_classification") for _ in range(2)]
    for state, (logits, labels) in zip(shards, (a, b)):
        state.add_tagging(logits, labels, id2label)
    whole.add_tagging(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]), id2label)
    summed = MetricState("token_classification")
    summed.load_vector(shards[0].vector() + shards[1].vector())
    expected = entity_scores([["B-PER", "I-PER", "O"], ["B-PER", "I-PER", "O"]],
                             [["B-PER", "I-PER", "O"], ["B-PER", "O", "O"]])
    for state in (whole, summed):
        totals = state.totals()
        assert totals["eval_f1"] == pytest.approx(expected["f1"]) == pytest.approx(0.5)
        assert totals["eval_accuracy"] == pytest.approx(5 / 6)


# ------------------------------------------------------------------------------------------------
# Token-classification data.


def _ner_config(model: str, path: str, tmp_path, **train) -> dict:
    section = {"name": "ner", "storage_path": str(tmp_path / "runs"), "label_column": "tags", "batch_size_per_worker": 2}
    section.update(train)
    return {"model": {"path": model, "task": "token-classify"}, "input": {"path": path, "text_column": "tokens"},
            "tokenizer": {"max_length": 32}, "train": section}


def test_word_tags_align_to_first_sub_tokens_as_transformers_run_ner(tmp_path):
    """Each word's first sub-token carries its tag, the rest -100 (run_ner with
    label_all_tokens=False, computed here with transformers' own tokenizer and word_ids)."""
    import pyarrow as pa
    import transformers

    from rayformers.jobs.train_data import Columns, LabelSpec, Tokenization, collate, tokenize_batch

    words = [["Unbelievably", "Alice", "visited", "Ljubljana"], ["hi", "Bob"]]
    tags = [["O", "B-PER", "O", "B-LOC"], ["O", "B-PER"]]
    spec = LabelSpec("token-classify", "token_classification", "names", ["O", "B-PER", "B-LOC"], 3)
    tok = Tokenization(str(minilm_dir()), None, True, 32, "longest_first", None, False)
    out = tokenize_batch(pa.table({"tokens": words, "tags": tags}), tok, Columns("tokens", None, "tags"), spec)
    hf = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
    enc = hf(words, is_split_into_words=True, truncation=True, max_length=32)
    expected = []
    for i, row in enumerate(tags):
        previous, labels = None, []
        for w in enc.word_ids(i):
            labels.append(-100 if w is None or w == previous else spec.label2id[row[w]])
            previous = w
        expected.append(labels)
    assert out.column("input_ids").to_pylist() == enc["input_ids"]
    assert out.column("labels").to_pylist() == expected
    assert sum(1 for x in expected[0] if x != -100) == 4 and len(expected[0]) > 6  # sub-words ignored
    batch = collate(out, 0)
    assert batch["labels"].shape == batch["input_ids"].shape and int(batch["labels"][1, -1]) == -100


def test_tag_outside_the_label_set_names_the_row_or_is_skipped_and_counted(tmp_path):
    model = tiny_bert(tmp_path / "model")
    rows = ner_rows(20, 1)
    rows[6]["tags"][0] = "B-ORG"
    rows[9]["tags"] = rows[9]["tags"][:-1]
    path = write_parquet(tmp_path / "ner.parquet", rows)
    labels = ["O", "B-PER", "B-LOC", "I-LOC"]
    with pytest.raises(DataError) as err:
        prepare_data(load_train_config(_ner_config(model, path, tmp_path, labels=labels)), 1, None)
    message = str(err.value)
    assert f"{path} row 6: tags: tag 'B-ORG' of word 0 is outside the label set" in message
    assert f"{path} row 9: tags: " in message and "tags for" in message
    data = prepare_data(load_train_config(_ner_config(model, path, tmp_path, labels=labels, bad_rows="skip")), 1, None)
    assert (data.reports[0].rows, data.reports[0].bad) == (20, 2)
    # without train.labels the tag set comes from the data (sorted), B-ORG included
    data = prepare_data(load_train_config(_ner_config(model, path, tmp_path, bad_rows="skip")), 1, None)
    assert data.spec.names == ["B-LOC", "B-ORG", "B-PER", "I-LOC", "O"] and data.reports[0].bad == 1
    assert data.spec.model_kwargs()["id2label"][1] == "B-ORG"


# ------------------------------------------------------------------------------------------------
# Embedding models.


def _pair_config(model: str, path: str, tmp_path, **train) -> dict:
    section = {"name": "emb", "storage_path": str(tmp_path / "runs"), "batch_size_per_worker": 4}
    section.update(train)
    return {"model": {"path": model, "task": "embed"}, "input": {"path": path, "text_column": "anchor"},
            "tokenizer": {"max_length": 32}, "train": section}


def test_empty_positive_names_the_row(tmp_path):
    rows = pair_rows(12, 2, negatives=True)
    rows[4]["positive"] = ""
    rows[8]["negative"] = None
    path = write_parquet(tmp_path / "pairs.parquet", rows)
    model = tiny_bert(tmp_path / "model")
    with pytest.raises(DataError) as err:
        prepare_data(load_train_config(_pair_config(model, path, tmp_path, negative_column="negative")), 1, None)
    assert f"{path} row 4: positive: text is empty" in str(err.value)
    assert f"{path} row 8: negative: text is null" in str(err.value)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps' must be 1 for model.task embed"):
        load_train_config(_pair_config(model, path, tmp_path, gradient_accumulation_steps=2))


def _stacked_batch(tokenizer, rows: list, negatives: bool) -> dict:
    """Anchors, positives (and negatives) padded together, as the training collate does."""
    import pyarrow as pa

    from rayformers.jobs.embedding_training import collate_pairs, tokenize_pairs

    texts = {"anchor": [r["anchor"] for r in rows], "positive": [r["positive"] for r in rows]}
    if negatives:
        texts["negative"] = [r["negative"] for r in rows]
    return collate_pairs(pa.table(tokenize_pairs(tokenizer, texts, 32, True)), 0)


@pytest.mark.parametrize("negatives", [False, True])
def test_loss_equals_sentence_transformers_multiple_negatives_ranking_loss(negatives):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from rayformers.jobs.embedding_training import EmbeddingSettings, step_loss
    from rayformers.models import AutoModel, AutoTokenizer

    from train_kinds_helpers import PAIR_WORDS

    rows = pair_rows(6, 3, negatives=negatives, words=PAIR_WORDS[:4])  # much overlap: a hard batch
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    st.eval()
    columns = ["anchor", "positive"] + (["negative"] if negatives else [])
    features = [st.tokenize([r[c] for r in rows]) for c in columns]
    with torch.no_grad():
        expected = float(MultipleNegativesRankingLoss(st)(features, None))
        model = AutoModel.from_pretrained(str(minilm_dir())).eval()
        batch = _stacked_batch(AutoTokenizer.from_pretrained(str(minilm_dir())), rows, negatives)
        ours = float(step_loss(model, batch, EmbeddingSettings(roles=len(columns)), len(rows), torch.device("cpu")))
    assert ours == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert ours > 0.3  # a real ranking problem, not a trivially solved one


def test_saved_directory_loads_in_sentence_transformers_with_equal_embeddings(tmp_path):
    from sentence_transformers import SentenceTransformer

    from rayformers.jobs.embedding_training import EmbeddingSettings, embed, save_sentence_transformers
    from rayformers.models import AutoModel, AutoTokenizer

    base = tiny_bert(tmp_path / "base")
    model = AutoModel.from_pretrained(str(base)).eval()
    with torch.no_grad():  # a trained-looking model: not the random init the base dir has
        model.embeddings.word_embeddings.weight.mul_(1.5)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    texts = ["a cat on the mat", "the ocean is blue and wide", "bread"]
    for pooling, normalize in (("mean", True), ("cls", False)):
        out = tmp_path / f"st-{pooling}"
        save_sentence_transformers(str(out), model, tokenizer, EmbeddingSettings(pooling, normalize, 20.0, 32))
        st = SentenceTransformer(str(out), device="cpu")
        assert st.max_seq_length == 32
        expected = torch.from_numpy(st.encode(texts, convert_to_numpy=True))
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            ours = embed(model, enc["input_ids"], enc["attention_mask"], pooling)
        if normalize:
            ours = torch.nn.functional.normalize(ours, dim=1)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
        modules = json.loads((out / "modules.json").read_text())
        assert [m["path"] for m in modules] == (["", "1_Pooling", "2_Normalize"] if normalize else ["", "1_Pooling"])


def test_two_worker_gathered_loss_and_gradients_equal_one_worker_with_the_whole_batch(tmp_path):
    """A real 2-process gloo group: each rank embeds half of the batch, gathers the other rank's
    candidates (with gradients) and computes its loss; their mean and the DDP-averaged gradient
    equal one process computing the loss of the whole batch."""
    import torch.multiprocessing as mp

    from rayformers.jobs.embedding_training import EmbeddingSettings, step_loss
    from rayformers.models import AutoModel, AutoTokenizer

    from train_kinds_helpers import gather_loss_worker

    base = str(tiny_bert(tmp_path / "base", layers=1))
    rows = pair_rows(8, 4, negatives=True)
    batch = _stacked_batch(AutoTokenizer.from_pretrained(base), rows, True)
    torch.save({**batch, "rows": 8, "roles": 3}, tmp_path / "batch.pt")
    model = AutoModel.from_pretrained(base)
    whole = step_loss(model, batch, EmbeddingSettings(roles=3), 8, torch.device("cpu"))
    whole.backward()
    whole_grad = model.embeddings.word_embeddings.weight.grad.sum(dim=1)
    mp.spawn(gather_loss_worker, args=(2, str(tmp_path / "pg"), base, str(tmp_path / "batch.pt"), str(tmp_path)),
             nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(float(whole.detach()), abs=1e-5)
    assert ranks[0]["loss"] != pytest.approx(ranks[1]["loss"], abs=1e-4)  # each rank its own anchors
    for r in ranks:  # DDP averaged: the same gradient on both ranks, that of the whole batch
        torch.testing.assert_close(torch.tensor(r["grad"]), whole_grad, atol=1e-5, rtol=1e-4)
    assert float(whole_grad.abs().sum()) > 0


# ------------------------------------------------------------------------------------------------
# Strategies.


def test_transformer_layers_are_found_in_encoders_and_seq2seq_models(tmp_path):
    from test_train_helpers import tiny_bart

    from rayformers.jobs.strategies import transformer_layers
    from rayformers.models import AutoModelForSeq2SeqLM, AutoModelForTokenClassification

    bert = AutoModelForTokenClassification.from_pretrained(str(tiny_bert(tmp_path / "b", layers=3)), num_labels=2)
    assert [type(m).__name__ for m in transformer_layers(bert)] == ["BertLayer"] * 3
    bart = AutoModelForSeq2SeqLM.from_pretrained(tiny_bart(tmp_path / "bart"))
    assert [type(m).__name__ for m in transformer_layers(bart)] == ["BartEncoderLayer", "BartDecoderLayer"]


def test_fsdp_and_gradient_checkpointing_match_ddp_on_two_gloo_workers(tmp_path):
    """Two gloo ranks run three accumulated token-classification steps under DDP, FSDP2 in
    float32, FSDP2 with the detected parameter dtype, and DDP with gradient checkpointing. float32
    FSDP and checkpointing equal DDP to float rounding; bfloat16 compute within bf16 tolerance.
    The full state dict gathered from the FSDP shards equals DDP's weights after the steps."""
    import torch.multiprocessing as mp

    from rayformers.jobs.strategies import bf16_supported

    from train_kinds_helpers import strategy_worker

    model = str(tiny_bert(tmp_path / "m", layers=2, head="BertForTokenClassification", num_labels=3))
    variants = [("ddp", "ddp", "float32", False), ("fsdp32", "fsdp", "float32", False),
                ("fsdp_auto", "fsdp", "auto", False), ("ddp_ckpt", "ddp", "float32", True),
                ("fsdp_ckpt", "fsdp", "float32", True)]
    mp.spawn(strategy_worker, args=(2, str(tmp_path / "pg"), model, str(tmp_path), variants), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    r0 = ranks[0]
    ddp = torch.tensor(r0["ddp"]["losses"])
    assert ddp[-1] < ddp[0]  # it trains
    for name in ("fsdp32", "ddp_ckpt", "fsdp_ckpt"):
        torch.testing.assert_close(torch.tensor(r0[name]["losses"]), ddp, atol=1e-5, rtol=1e-5)
        assert r0[name]["checksum"] == pytest.approx(r0["ddp"]["checksum"], rel=1e-5)
    assert r0["fsdp32"]["sharded"] and not r0["ddp"]["sharded"]
    assert r0["fsdp_auto"]["dtype"] == ("torch.bfloat16" if bf16_supported(torch.device("cpu")) else "torch.float32")
    torch.testing.assert_close(torch.tensor(r0["fsdp_auto"]["losses"]), ddp, atol=3e-2, rtol=3e-2)
    assert ranks[1]["fsdp32"]["checksum"] is None  # the full state is gathered to rank 0 only
    # evaluation over uneven shards (2 batches on rank 0, 1 on rank 1) completes in step
    for name in ("fsdp32", "fsdp_ckpt", "ddp_ckpt"):
        assert r0[name]["eval"]["eval_rows"] == r0["ddp"]["eval"]["eval_rows"] == 12
        assert r0[name]["eval"]["eval_loss"] == pytest.approx(r0["ddp"]["eval"]["eval_loss"], rel=1e-5)
        assert r0[name]["eval"]["eval_accuracy"] == pytest.approx(r0["ddp"]["eval"]["eval_accuracy"])
    assert all(r["memory"]["peak_rss_mb"] > 50 for r in ranks)
