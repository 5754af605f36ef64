"""The GPU path of the inference pipeline, on machines without a GPU.

A Ray cluster that advertises one GPU (``ray.init(num_gpus=1)``) schedules the GPU plan exactly
as on a GPU node (model actors asking for ``num_gpus``, an explicit block-size batch, the GPU
defaults of block size, token budget, tokenizer pool and precision); the test-only switch
``RAYFORMERS_TEST_GPU_ON_CPU=1`` lets the "GPU" model actor compute on the CPU. What needs CUDA
itself (kernels, page-locked copies, TF32) is not exercised here: ``benchmarks/gpu_check.sh``
checks it on a GPU machine.

This module runs its own cluster: the CPU-only one other modules share (``ray_session``) is shut
down first, and this one is shut down at the end, so the next module's ``ray_session`` starts a
fresh CPU cluster.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.overrides import TorchFunctionMode

from rayformers.operators import ClassifyOperator, TokenizeOperator, iter_micro_batches
from rayformers.operators.batching import TokenLists
from rayformers.operators.loading import GPU_ON_CPU_ENV, device_facts, load_model, pick_device, resolve_dtype_name
from rayformers.operators.records import ERROR_COLUMN
from rayformers.pipeline.source import ID_COLUMN

from model_test_utils import tiny_bert, with_minilm_tokenizer

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU stand-in of a GPU actor")

LABELS = {0: "neg", 1: "neu", 2: "pos"}


@pytest.fixture(scope="module")
def gpu_cluster():
    """A 2-CPU cluster advertising 1 GPU, its workers started with the test-only switch (they
    inherit the driver's environment)."""
    import ray

    ray.shutdown()  # the CPU-only cluster an earlier module may have left running
    saved = os.environ.get(GPU_ON_CPU_ENV)
    os.environ[GPU_ON_CPU_ENV] = "1"
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop(GPU_ON_CPU_ENV, None)
        else:
            os.environ[GPU_ON_CPU_ENV] = saved


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("clf") / "m", hidden=16, layers=2, head="BertForSequenceClassification",
                     intermediate=32, num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})


TEXTS = [f"row {i}: " + "lorem ipsum dolor sit amet " * (i % 9) + ("good" if i % 3 else "bad") for i in range(150)]


def write_input(path: Path) -> Path:
    """Two files, row groups of 16: several read units, each ending in a short block."""
    path.mkdir(parents=True)
    for k, part in enumerate((TEXTS[:90], TEXTS[90:])):
        pq.write_table(pa.table({"text": part}), path / f"part{k}.parquet", row_group_size=16)
    return path


def job(classifier: Path, inp: Path, out: Path, **compute) -> dict:
    return {"input": {"path": str(inp)}, "model": {"path": str(classifier), "task": "classify"},
            "output": {"path": str(out)}, "compute": compute}


# --- the plan, end to end through rayformers.pipeline.run -------------------------------------


def scored(out: Path) -> dict:
    """``{input text: (label, score)}`` of a published output, checking every row is there once."""
    from rayformers.pipeline import read_output

    table = read_output(str(out))
    ids = table.column(ID_COLUMN).to_pylist()
    assert len(ids) == len(set(ids)) == len(TEXTS)  # every row exactly once
    assert table.column(ERROR_COLUMN).null_count == len(TEXTS)
    files = {"part0.parquet": TEXTS[:90], "part1.parquet": TEXTS[90:]}
    texts = [files[i.rsplit(":", 1)[0].rsplit("/", 1)[-1]][int(i.rsplit(":", 1)[1])] for i in ids]
    assert sorted(texts) == sorted(TEXTS)
    return dict(zip(texts, zip(table.column("label").to_pylist(), table.column("score").to_pylist())))


@pytest.fixture(scope="module")
def cpu_run(gpu_cluster, classifier, tmp_path_factory):
    """The input, and the CPU plan's predictions of it (the reference of the GPU plan)."""
    from rayformers.pipeline import run

    root = tmp_path_factory.mktemp("plan")
    inp = write_input(root / "in")
    report = run(job(classifier, inp, root / "cpu"))
    assert report.model_dtype == "float32"
    return inp, scored(root / "cpu")


def test_gpu_plan_scores_every_row_once_as_the_cpu_plan_does(cpu_run, classifier, tmp_path):
    """GPU actors in float32 with 64-row blocks (read units of 16-row groups leave short blocks
    to be topped up to a batch): the same predictions as the CPU plan."""
    from rayformers.pipeline import run
    from rayformers.pipeline.config import load_config
    from rayformers.pipeline.dataflow import model_batch_rows

    inp, want = cpu_run
    assert model_batch_rows(load_config({"compute": {"model_num_gpus": 1, "batch_size": 64}}).compute) == 64
    assert model_batch_rows(load_config({"compute": {"model_num_gpus": 1}}).compute) == 16384
    assert model_batch_rows(load_config({}).compute) is None  # CPU: blocks as they come
    report = run(job(classifier, inp, tmp_path / "gpu32", model_num_gpus=1, batch_size=64), ["model.dtype=float32"])
    got = scored(tmp_path / "gpu32")
    assert report.model_dtype == "float32" and report.errors == 0
    assert {t: label for t, (label, _) in got.items()} == {t: label for t, (label, _) in want.items()}
    np.testing.assert_allclose([got[t][1] for t in TEXTS], [want[t][1] for t in TEXTS], atol=1e-5)
    manifest = json.loads((tmp_path / "gpu32" / "_manifest.json").read_text())
    assert manifest["model_dtype"] == "float32" and manifest["model_device"]["gpu"] is True


def test_gpu_defaults_resolve_auto_precision_and_record_it(cpu_run, classifier, tmp_path):
    """Unset model.dtype on a GPU actor is auto: bfloat16 on the stand-in GPU (as on Ampere and
    later), with the GPU's default block size (16,384 rows) and tokenizer pool."""
    from rayformers.pipeline import run

    inp, want = cpu_run
    report = run(job(classifier, inp, tmp_path / "gpu", model_num_gpus=1))
    assert report.model_dtype == "bfloat16" and "model dtype   bfloat16" in report.format()
    manifest = json.loads((tmp_path / "gpu" / "_manifest.json").read_text())
    assert manifest["model_dtype"] == "bfloat16" and manifest["config"]["model"]["dtype"] is None
    assert manifest["report"]["model_dtype"] == "bfloat16"
    assert manifest["config"]["compute"]["tokenizer_max_actors"] == 4  # per GPU model actor, within the CPUs
    got = scored(tmp_path / "gpu")
    np.testing.assert_allclose([got[t][1] for t in TEXTS], [want[t][1] for t in TEXTS], atol=0.03)


# --- the model actor on a GPU node -------------------------------------------------------------


def test_gpu_actor_takes_the_gpu_defaults_on_the_cpu_stand_in(classifier, monkeypatch):
    monkeypatch.setenv(GPU_ON_CPU_ENV, "1")
    gpu = ClassifyOperator(model_path=str(classifier), dtype=None, num_gpus=1, torch_threads=1)
    assert (gpu.gpu, gpu.device, gpu.max_tokens) == (True, "cpu", ClassifyOperator.default_token_budget["cuda"])
    assert gpu.model.dtype == torch.bfloat16  # unset dtype: auto for a GPU actor
    cpu = ClassifyOperator(model_path=str(classifier), dtype=None, torch_threads=1)
    assert (cpu.gpu, cpu.max_tokens, cpu.model.dtype) == (False, 2048, torch.float32)


def test_a_gpu_actor_whose_torch_has_no_cuda_fails_naming_the_install_fix(monkeypatch):
    monkeypatch.delenv(GPU_ON_CPU_ENV, raising=False)
    assert pick_device(0) == "cpu"
    for call in (lambda: pick_device(1), lambda: device_facts(1)):
        with pytest.raises(RuntimeError) as err:
            call()
        message = str(err.value)
        assert "CUDA is not available" in message and torch.__version__ in message
        assert "download.pytorch.org/whl/cu" in message and "model_num_gpus: 0" in message
    monkeypatch.setenv(GPU_ON_CPU_ENV, "1")
    assert pick_device(1) == "cpu" and device_facts(1)["cuda_bf16"] is True


def test_dtype_resolution_per_device_and_hardware():
    # unset: auto on GPU actors, float32 on CPU actors whatever the CPU
    assert resolve_dtype_name(None, gpu=True, cuda_bf16=True) == "bfloat16"
    assert resolve_dtype_name(None, gpu=True, cuda_bf16=False) == "float16"  # Volta / Turing
    assert resolve_dtype_name(None, gpu=True, model_type="t5", cuda_bf16=False) == "float32"  # overflows float16
    assert resolve_dtype_name(None, gpu=True, model_type="t5", cuda_bf16=True) == "bfloat16"
    assert resolve_dtype_name(None, gpu=False, cpu_bf16=True) == "float32"
    assert resolve_dtype_name("auto", gpu=False, cpu_bf16=True) == "bfloat16"
    assert resolve_dtype_name("float32", gpu=True, cuda_bf16=True) == "float32"  # explicit wins
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype_name("fp8", gpu=True)


def test_auto_loads_through_the_same_path_as_the_explicit_dtype(tmp_path, monkeypatch):
    """float32 buffers (ModernBERT's rotary inv_freq) stay float32 under auto as under an
    explicit bfloat16; casting a float32-loaded model afterwards made them bfloat16."""
    import transformers

    monkeypatch.setenv(GPU_ON_CPU_ENV, "1")  # a stand-in GPU with bfloat16: auto is bfloat16
    cfg = transformers.ModernBertConfig(vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=64, local_attention=4,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
                                        reference_compile=False)
    torch.manual_seed(0)
    transformers.ModernBertModel(cfg).save_pretrained(tmp_path)
    auto = load_model("embed", str(tmp_path), "auto", device="cpu", gpu=True)
    explicit = load_model("embed", str(tmp_path), "bfloat16", device="cpu", gpu=True)
    dtypes = lambda m: {n: t.dtype for n, t in [*m.named_buffers(), *m.named_parameters()]}  # noqa: E731
    assert dtypes(auto) == dtypes(explicit)
    inv_freq = {n: d for n, d in dtypes(auto).items() if n.endswith("inv_freq")}
    assert inv_freq and set(inv_freq.values()) == {torch.float32}
    assert auto.dtype == torch.bfloat16


# --- token ids past the model's embeddings ----------------------------------------------------


@pytest.fixture(scope="module")
def small_vocab_classifier(tmp_path_factory) -> Path:
    """A classifier embedding 2,000 ids next to MiniLM's 30,522-id tokenizer."""
    import transformers

    path = tmp_path_factory.mktemp("small-vocab")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=2000, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64, num_labels=3, id2label=LABELS,
                                  label2id={v: k for k, v in LABELS.items()})
    transformers.BertForSequenceClassification(cfg).eval().save_pretrained(path)
    return with_minilm_tokenizer(path)


def test_preflight_refuses_a_tokenizer_bigger_than_the_models_embeddings(small_vocab_classifier, tmp_path):
    from rayformers.pipeline import PreflightError
    from rayformers.pipeline.config import load_config
    from rayformers.pipeline.preflight import resolve_processing

    cfg = load_config({"model": {"path": str(small_vocab_classifier), "task": "classify"}})
    with pytest.raises(PreflightError) as err:
        resolve_processing(cfg)
    message = str(err.value)
    assert "30522 token ids" in message and "embeds only 2000" in message and str(small_vocab_classifier) in message


def test_an_out_of_range_id_fails_its_rows_before_the_device_copy(small_vocab_classifier):
    """ "a b" and "b a" tokenize below id 2,000; "hello" is 7,592: only its row fails, with the
    host check's message (never the embedding's index error, a device assert on a GPU)."""
    from rayformers.models import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(small_vocab_classifier)
    batch = TokenizeOperator(str(small_vocab_classifier), "text", max_length=32)(pa.table({"text": ["a b", "hello", "b a"]}))
    out = ClassifyOperator(model=model, max_tokens_per_batch=4096)(batch)  # one micro-batch for all three
    errors = out.column(ERROR_COLUMN).to_pylist()
    assert errors[0] is None and errors[2] is None and out.column("label")[0].as_py() is not None
    assert "token id 7592 is outside the model's input embeddings (2000 ids)" in errors[1]


def test_loops_without_micro_batches_drop_out_of_range_rows_first(small_vocab_classifier):
    """Generation's continuous batching feeds rows to the model itself: rows with an id past the
    embeddings are taken out first (one max over the flat ids) and become error records."""
    from rayformers.models import AutoModelForSequenceClassification

    op = ClassifyOperator(model=AutoModelForSequenceClassification.from_pretrained(small_vocab_classifier))
    tokens = TokenLists.from_lists([[101, 1037, 102], [101, 7592, 102], [], [101, 1999, 102]])
    failures: dict = {}
    kept = op.drop_out_of_vocab_rows(tokens, np.array([0, 1, 3]), failures)
    assert kept.tolist() == [0, 3] and list(failures) == [1] and "token id 7592" in failures[1]
    assert op.drop_out_of_vocab_rows(tokens, np.array([0, 3]), {}).tolist() == [0, 3]


# --- device results stay on the device inside predict -----------------------------------------


SYNCS = {"cpu", "numpy", "item", "tolist", "__bool__", "nonzero", "masked_select", "__int__", "__float__", "__index__"}
"""Tensor calls that wait for a CUDA device. ``.to("cpu")`` does too, but on a CPU machine it
cannot be told from the no-op ``.to(tensor.device)``, so it is left out: the operators copy to the
host with ``.cpu()`` (``ModelOperator.to_host``)."""
OPERATORS_DIR = str(Path(sys.modules["rayformers.operators"].__file__).parent)


class HostSyncs(TorchFunctionMode):
    """Records every tensor call made by operator code (not the model) that makes the host wait
    for a CUDA device: copies to the host, scalars, and boolean-mask indexing (the host must learn
    the result's size). CPU tensors go through the same calls, so the structure is checkable here."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        frame = sys._getframe(1)
        while frame is not None and "/torch/" in frame.f_code.co_filename:
            frame = frame.f_back
        if frame is not None and frame.f_code.co_filename.startswith(OPERATORS_DIR):
            where = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"
            boolean_index = name == "__getitem__" and any(
                isinstance(a, torch.Tensor) and a.dtype == torch.bool for a in args[1:])
            if name in SYNCS or boolean_index:
                self.calls.append(f"{name} at {where}")
        return func(*args, **kwargs)


def predict_first_micro_batch(op, batch):
    tokens = TokenLists.from_arrow(batch.column("input_ids"))
    mb = op._to_device(next(iter_micro_batches(tokens, np.arange(batch.num_rows), op.pad_token_id, 4096, 128)))
    with torch.inference_mode(), HostSyncs() as syncs:
        result = op.predict(mb, batch)
    return result, syncs.calls


def test_predict_leaves_results_on_the_device_for_every_tensor_task(tmp_path):
    from rayformers.models import AutoModelForMaskedLM, AutoModelForTokenClassification
    from rayformers.operators import SparseEmbedOperator, TokenClassifyOperator, ZeroShotClassifyOperator

    texts = pa.table({"text": ["John Smith lives in New York", "a b c", "unaffable bankers"]})
    tagger = tiny_bert(tmp_path / "ner", hidden=16, head="BertForTokenClassification", num_labels=5,
                       id2label=dict(enumerate(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])))
    mlm = tiny_bert(tmp_path / "mlm", hidden=16, head="BertForMaskedLM")
    nli = tiny_bert(tmp_path / "nli", hidden=16, head="BertForSequenceClassification", num_labels=3,
                    id2label={0: "contradiction", 1: "neutral", 2: "entailment"})
    with_offsets = TokenizeOperator(str(tagger), "text", max_length=32, with_offsets=True)(texts)
    plain = TokenizeOperator(str(mlm), "text", max_length=32)(texts)
    operators = {
        "token-classify": (TokenClassifyOperator(model=AutoModelForTokenClassification.from_pretrained(tagger),
                                                 tokenizer_path=str(tagger), ignore_labels=[]), with_offsets),
        "sparse-embed": (SparseEmbedOperator(model=AutoModelForMaskedLM.from_pretrained(mlm), top_k=8), plain),
        "zero-shot-classify": (ZeroShotClassifyOperator(model_path=str(nli), tokenizer_path=str(nli),
                                                        candidate_labels=["x", "y"]), plain),
        "classify": (ClassifyOperator(model_path=str(nli)), plain),
    }
    waits, kinds = {}, {}
    for task, (op, batch) in operators.items():
        result, waits[task] = predict_first_micro_batch(op, batch)
        kinds[task] = isinstance(result, dict) and all(isinstance(v, torch.Tensor) for k, v in result.items()
                                                       if k != "num_classes")
    assert waits == {task: [] for task in operators}  # no call in predict waits for the device
    assert kinds == {task: True for task in operators}  # results are device tensors
