"""A checkpoint without the task's head is refused for inference, never scored with a random head.

all-MiniLM-L6-v2 is a bare BertModel: loaded for ``classify`` its classifier is initialised at
random (every row ``LABEL_0``), for ``sparse-embed`` its masked-LM head (tens of thousands of random
non-zeros per row). The driver refuses from the checkpoint's tensor names (safetensors header,
no torch), the model actors refuse from what loading really left missing; ``model.allow_new_head``
opts in; tied heads are not missing; training still starts a new head from a base checkpoint.
"""

from __future__ import annotations

import json
import logging
import re
import struct

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from model_test_utils import minilm_dir, tiny_bert, with_minilm_tokenizer
from test_config_imports import run_without_torch

from rayformers.models.auto import MODEL_NAMES, AutoConfig, _import_class
from rayformers.models.head_weights import HEAD_WEIGHTS, TIED_HEAD_WEIGHTS, absent_head, head_weight_names
from rayformers.models.modeling_utils import init_empty_weights
from rayformers.models.weight_names import checkpoint_weight_names
from rayformers.operators.loading import MissingHeadError, load_model
from rayformers.pipeline.config import load_config
from rayformers.pipeline.preflight import PreflightError, resolve_model

LOADER_TASK = {"classify": "AutoModelForSequenceClassification", "token-classify": "AutoModelForTokenClassification",
               "sparse-embed": "AutoModelForMaskedLM"}


def job(path, task: str, **model) -> dict:
    return {"model": {"path": str(path), "task": task, **model}}


# ------------------------------------------------------------------------------------------------
# The table of head weights is the model classes' own.


def real_head(model_type: str, head: str) -> tuple[list[str], list[str]]:
    """(own, tied) head parameters of a class: those its base class lacks, less those the loader
    ignores when missing; tied = listed in the class's tied weights (default config)."""
    config = AutoConfig.for_model(model_type)
    if head == "causal_lm":
        config.is_decoder = True
    cls = _import_class(model_type, MODEL_NAMES[model_type][head])
    with init_empty_weights():
        model = cls(config)
        base = _import_class(model_type, MODEL_NAMES[model_type]["base"])(config)
    base_keys, prefix = set(base.state_dict()), model.base_model_prefix + "."
    names = [k for k in model.state_dict() if k.removeprefix(prefix) not in base_keys]
    names = [k for k in names if not any(re.search(p, k) for p in cls._keys_to_ignore_on_load_missing or [])]
    tied = set(model.tied_weight_keys())
    return [k for k in names if k not in tied], [k for k in names if k in tied]


def test_head_table_lists_every_class_and_its_real_head_parameters():
    seen = set()
    for model_type, heads in MODEL_NAMES.items():
        for head, class_name in heads.items():
            if head == "base" or model_type == "encoder-decoder":
                continue
            own, tied = real_head(model_type, head)
            assert list(HEAD_WEIGHTS[class_name]) == own, class_name
            assert list(TIED_HEAD_WEIGHTS.get(class_name, ())) == tied, class_name
            seen.add(class_name)
    assert set(HEAD_WEIGHTS) == seen and set(TIED_HEAD_WEIGHTS) <= seen  # no stale rows


def test_encoder_decoder_head_is_its_decoders_lm_head():
    from rayformers.models import EncoderDecoderConfig
    from rayformers.models.encoder_decoder import EncoderDecoderModel

    bert = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        AutoConfig.for_model("bert", **bert), AutoConfig.for_model("bert", is_decoder=True, add_cross_attention=True, **bert))
    names = head_weight_names("EncoderDecoderModel", config)
    assert names and all(n.startswith("decoder.cls.predictions.") for n in names)
    with init_empty_weights():
        keys = set(EncoderDecoderModel(config).state_dict())
    assert set(names) <= keys


# ------------------------------------------------------------------------------------------------
# The driver refuses, from tensor names only, exactly what loading would leave random.


@pytest.mark.parametrize("task", ["classify", "token-classify", "sparse-embed"])
def test_preflight_refuses_a_bare_encoder_for_a_head_task_naming_what_loading_would_miss(task):
    import rayformers.models as models

    with pytest.raises(PreflightError) as refused:
        resolve_model(load_config(job(minilm_dir(), task)))
    message = str(refused.value)
    _, info = getattr(models, LOADER_TASK[task]).from_pretrained(minilm_dir(), output_loading_info=True)
    assert info["missing_keys"]  # what the reviewer saw: the loader knows
    for key in info["missing_keys"]:
        assert key in message
    assert "model.task: embed" in message and "model.allow_new_head" in message and "BertModel" in message


def test_embed_on_the_bare_encoder_and_the_opt_in_pass_the_opt_in_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="rayformers.pipeline.preflight"):
        resolve_model(load_config(job(minilm_dir(), "embed")))
        assert not caplog.text
        resolve_model(load_config(job(minilm_dir(), "classify", allow_new_head=True)))
    assert "running with a random head" in caplog.text and "classifier.weight" in caplog.text


def test_weight_names_come_from_the_safetensors_header_or_the_shard_index(tmp_path):
    header = json.dumps({"__metadata__": {"format": "pt"}, "a.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 4)
    assert checkpoint_weight_names(str(tmp_path / "one")) == ["a.weight"]
    (tmp_path / "sharded").mkdir()
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"classifier.bias": "model-00002-of-00002.safetensors", "x": "model-00001-of-00002.safetensors"}}))
    assert checkpoint_weight_names(str(tmp_path / "sharded")) == ["classifier.bias", "x"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "pytorch_model.bin").write_bytes(b"not a zip")
    assert checkpoint_weight_names(str(tmp_path / "bad")) is None  # unreadable here: the loader says why
    config = AutoConfig.for_model("bert")
    assert absent_head("BertForSequenceClassification", config, ["classifier.bias", "x"]) == []
    assert absent_head("BertForSequenceClassification", config, ["x"]) == ["classifier.weight", "classifier.bias"]


def test_a_pytorch_model_bin_is_read_from_its_pickle_without_loading_it(tmp_path):
    import transformers

    config = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)
    model = transformers.BertModel(config)
    model.save_pretrained(tmp_path / "safe")
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert not (tmp_path / "bin" / "model.safetensors").exists()
    assert sorted(checkpoint_weight_names(str(tmp_path / "bin"))) == sorted(checkpoint_weight_names(str(tmp_path / "safe")))
    with pytest.raises(PreflightError, match=r"classifier\.weight, classifier\.bias"):
        resolve_model(load_config(job(tmp_path / "bin", "classify")))


def test_the_driver_check_imports_no_torch():
    result = run_without_torch(f"""
        import json
        from rayformers.pipeline.config import load_config
        from rayformers.pipeline.preflight import PreflightError, resolve_model

        try:
            resolve_model(load_config({job(minilm_dir(), "classify")!r}))
            out = None
        except PreflightError as e:
            out = str(e)
        print(json.dumps({{"message": out}}))
    """)
    assert result["message"] and "classifier.weight" in result["message"]


def test_run_and_build_processor_refuse_before_ray_starts(tmp_path, capsys):
    import ray

    from rayformers.pipeline import build_processor
    from rayformers.pipeline.cli import EXIT_BAD_CONFIG, main

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"text": ["a good day", "a bad day"]}), tmp_path / "in" / "part.parquet")
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({**job(minilm_dir(), "sparse-embed"), "input": {"path": str(tmp_path / "in")},
                                  "output": {"path": str(tmp_path / "out")}}))
    was_up = ray.is_initialized()
    assert main(["run", str(config)]) == EXIT_BAD_CONFIG
    assert not (tmp_path / "out").exists() and ray.is_initialized() == was_up
    assert "cls.predictions.transform.dense.weight" in capsys.readouterr().err
    with pytest.raises(PreflightError, match=r"classifier\.weight"):
        build_processor(job(minilm_dir(), "classify"))


# ------------------------------------------------------------------------------------------------
# The model actors refuse what loading really left random (defence in depth).


def test_load_model_refuses_a_missing_head_and_logs_it_when_allowed(caplog):
    with pytest.raises(MissingHeadError, match=r"classifier\.weight, classifier\.bias"):
        load_model("classify", str(minilm_dir()))
    with caplog.at_level(logging.WARNING, logger="rayformers.operators.loading"):
        model = load_model("classify", str(minilm_dir()), allow_new_head=True)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert "random head" in caplog.text and "classifier.weight" in caplog.text
    assert type(load_model("embed", str(minilm_dir()))).__name__ == "BertModel"


def test_a_partly_present_head_passes_the_driver_but_not_the_actors(tmp_path):
    import safetensors.torch

    path = tiny_bert(tmp_path / "m", hidden=16, head="BertForSequenceClassification")
    weights = safetensors.torch.load_file(path / "model.safetensors")
    del weights["classifier.bias"]
    safetensors.torch.save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    resolve_model(load_config(job(path, "classify")))  # a head is there: the exact check is the loader's
    with pytest.raises(MissingHeadError, match=r"\(classifier\.bias\)"):
        load_model("classify", str(path))


# ------------------------------------------------------------------------------------------------
# Tied heads are not missing; untied, they are.


@pytest.mark.parametrize("tied", [True, False])
def test_a_seq2seq_lm_head_tied_to_the_embeddings_is_not_missing(tmp_path, tied):
    import transformers

    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=30522, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                   decoder_start_token_id=0, tie_word_embeddings=tied)
    transformers.T5Model(config).save_pretrained(tmp_path)  # the bare encoder-decoder: no lm_head.weight
    with_minilm_tokenizer(tmp_path)
    assert "lm_head.weight" not in checkpoint_weight_names(str(tmp_path))
    cfg = load_config(job(tmp_path, "generate"))
    if tied:
        resolve_model(cfg)
        assert type(load_model("generate", str(tmp_path))).__name__ == "T5ForConditionalGeneration"
    else:
        with pytest.raises(PreflightError, match=r"T5ForConditionalGeneration head \(lm_head\.weight\)"):
            resolve_model(cfg)
        with pytest.raises(MissingHeadError, match=r"lm_head\.weight"):
            load_model("generate", str(tmp_path))


@pytest.mark.parametrize("tied", [True, False])
def test_rerank_on_a_causal_llm_with_a_tied_lm_head_is_not_refused(tmp_path, tied):
    """A yes/no reranker loads the causal LM; its tied lm_head is no missing head. Untied and
    saved as a bare decoder, the LM head really is missing and the job is refused."""
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen3Config(vocab_size=30522, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                      max_position_embeddings=64, tie_word_embeddings=tied)
    (transformers.Qwen3ForCausalLM if tied else transformers.Qwen3Model)(config).save_pretrained(tmp_path)
    with_minilm_tokenizer(tmp_path)
    assert "lm_head.weight" not in checkpoint_weight_names(str(tmp_path))
    cfg = load_config(job(tmp_path, "rerank"))
    if tied:
        resolve_model(cfg)
        assert type(load_model("rerank", str(tmp_path))).__name__ == "Qwen3ForCausalLM"
    else:
        with pytest.raises(PreflightError, match=r"Qwen3ForCausalLM head \(lm_head\.weight\)"):
            resolve_model(cfg)


def test_rerank_on_a_bare_encoder_is_refused_as_a_missing_cross_encoder_head():
    with pytest.raises(PreflightError, match=r"BertForSequenceClassification head \(classifier\.weight"):
        resolve_model(load_config(job(minilm_dir(), "rerank")))


# ------------------------------------------------------------------------------------------------
# Fine-tuning starts a new head from a base checkpoint: that is not refused.


def test_training_still_starts_a_new_head_from_a_base_checkpoint(tmp_path):
    from test_train_helpers import classify_config, sentiment_rows, write_parquet

    from rayformers.jobs import train as train_job
    from rayformers.jobs.train_config import load_train_config
    from rayformers.jobs.train_data import prepare_data
    from rayformers.jobs.train_loop import load_model as load_model_to_train

    base = tiny_bert(tmp_path / "model", hidden=16)
    write_parquet(tmp_path / "train.parquet", sentiment_rows(16, 1))
    cfg = load_train_config(classify_config(str(base), str(tmp_path / "train.parquet"), str(tmp_path / "runs"), "r"))
    model_config = train_job._model_config(cfg, str(base))
    tok, pad = train_job._tokenizer_settings(cfg, str(base), model_config)
    data = prepare_data(cfg, 1, getattr(model_config, "id2label", None))
    spec = train_job._worker_spec(cfg, data, str(base), tok, pad, None)
    model = load_model_to_train(spec, None)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.classifier.weight.shape[0] == len(data.spec.names)
