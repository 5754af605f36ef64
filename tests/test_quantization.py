"""int8 on CPU: Linear layers with a scale per weight output channel and per activation row
(``models.int8``), kept close to float32 on the real MiniLM and a tiny classifier, and the
agreement check that runs on a sample of the job's own rows before any scoring (real Ray)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from rayformers.models.int8 import (Int8Linear, cpu_int8_dot_product, head_module_names, quantize_linear_int8,
                                    quantize_rows)
from rayformers.models.tokenization import AutoTokenizer
from rayformers.operators.loading import load_model
from rayformers.pipeline import PreflightError, read_output, run
from rayformers.pipeline.config import load_config
from rayformers.pipeline.preflight import preflight

SENTENCES = [
    "A man is eating food.", "The new movie is awesome and everyone should see it.",
    "Two dogs play in the snow while their owner watches from the porch.", "hi",
    "Quantum entanglement links particles across large distances.",
    "Stock markets fell sharply on Monday after the central bank raised interest rates again.",
    "How do I reset my password if I no longer have access to my email account?",
    "The patient was prescribed 20mg of atorvastatin daily for high cholesterol.",
    "Paris is the capital of France.", "I absolutely hated the ending of this book; it felt rushed and unearned.",
    "Install the package with pip, then run the tests before opening a pull request.",
    "Quarterly revenue grew by 12% year over year, driven by cloud services.",
    "What's the weather like in Tokyo tomorrow?", "A red fox jumped over the lazy brown dog near the river bank.",
    "Machine learning models can inherit the biases of their training data.",
    "Please deliver the parcel to the back door and ring twice.",
    "The symphony's second movement is slow and melancholic.",
    "Error: connection refused on port 5432 (is the database running?)",
    "She scored the winning goal in the final minute of extra time.",
    "The recipe calls for two cups of flour, three eggs and a pinch of salt.",
]


def mean_pooled(model, tokenizer, texts):
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def test_int8_linear_is_the_per_row_per_channel_integer_product():
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 20)
    x = torch.randn(2, 5, 48)
    x[0, 1] *= 100  # one outlier token: with its own scale it costs the other rows nothing
    layer = Int8Linear(linear)
    qx, sx = quantize_rows(x.reshape(-1, 48))
    w = linear.weight.detach()
    sw = w.abs().amax(1) / 127
    qw = torch.round(w / sw[:, None])
    want = (qx.double() @ qw.double().T * sx.double() * sw.double() + linear.bias.double()).float()
    got = layer(x)
    assert got.shape == (2, 5, 20)
    torch.testing.assert_close(got.reshape(-1, 20), want, rtol=1e-5, atol=1e-5)
    exact = linear(x).detach()
    relative = (got - exact).norm(dim=-1) / exact.norm(dim=-1)
    assert relative.max() < 0.02  # every row, the outlier's neighbours included


def test_rows_quantised_once_for_layers_sharing_an_input_but_never_stale():
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"q": torch.nn.Linear(32, 32), "k": torch.nn.Linear(32, 32)})
    reference = {k: torch.nn.Linear(32, 32) for k in model}
    for k in model:
        reference[k].load_state_dict(model[k].state_dict())
    assert quantize_linear_int8(model) == ["q", "k"]
    assert model["q"]._shared is model["k"]._shared
    x = torch.randn(4, 32)
    first = model["q"](x)
    x.mul_(3)  # same tensor object, changed in place: its cached int8 copy must not be reused
    for k in model:
        torch.testing.assert_close(model[k](x), reference[k](x).detach(), rtol=0.05, atol=0.05)
    torch.testing.assert_close(model["q"](x), 3 * first - 2 * reference["q"].bias.detach(), rtol=0, atol=1e-2)
    with torch.inference_mode():  # no version counter there: every call quantises its input afresh
        y = torch.randn(4, 32)
        before = model["q"](y)
        y.mul_(3)
        torch.testing.assert_close(model["k"](y), reference["k"](y), rtol=0.05, atol=0.05)
        torch.testing.assert_close(model["q"](y), 3 * before - 2 * reference["q"].bias, rtol=0, atol=1e-2)


def test_narrow_layers_and_the_task_head_stay_float32(tmp_path):
    # torch._int_mm on CPU sums wrongly over an inner dimension of 1 (torch 2.13): such layers stay float
    narrow = torch.nn.Sequential(torch.nn.Linear(1, 3), torch.nn.Linear(3, 32), torch.nn.Linear(32, 8))
    assert quantize_linear_int8(narrow) == ["2"] and type(narrow[0]) is torch.nn.Linear

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64, num_labels=3)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path)
    model = load_model("classify", str(tmp_path), quantization="int8-dynamic")
    assert "classifier" in head_module_names(model) and not any(n.startswith("bert") for n in head_module_names(model))
    assert type(model.classifier) is torch.nn.Linear
    int8 = [n for n, m in model.named_modules() if isinstance(m, Int8Linear)]
    assert len(int8) == 2 * 6 + 1 and not any(type(m) is torch.nn.Linear for m in model.bert.modules())
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 32))
    assert quantize_linear_int8(model, keep_float=["1"]) == ["0"]


def test_int8_keeps_minilm_embeddings_at_cosine_099(minilm_path):
    fp32 = load_model("embed", str(minilm_path))
    int8 = load_model("embed", str(minilm_path), quantization="int8-dynamic")
    assert sum(isinstance(m, Int8Linear) for m in int8.modules()) == 37  # 6 x (q, k, v, out, up, down) + pooler
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path))
    cosine = (mean_pooled(fp32, tokenizer, SENTENCES) * mean_pooled(int8, tokenizer, SENTENCES)).sum(-1)
    # torch's per-tensor dynamic quantisation gave a mean of 0.91-0.95 on the same model
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.98, cosine
    with pytest.raises(ValueError, match="CPU only"):
        load_model("embed", str(minilm_path), quantization="int8-dynamic", device="cuda")


def test_int8_classifier_keeps_every_label_that_is_not_a_near_tie(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=500, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=256, max_position_embeddings=64, num_labels=4,
                                     initializer_range=0.1)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path)
    fp32 = load_model("classify", str(tmp_path))
    int8 = load_model("classify", str(tmp_path), quantization="int8-dynamic")
    ids = torch.randint(1, 500, (400, 24))
    mask = torch.ones_like(ids)
    mask[::3, 12:] = 0
    with torch.no_grad():
        a, b = fp32(input_ids=ids, attention_mask=mask).logits, int8(input_ids=ids, attention_mask=mask).logits
    assert len(set(a.argmax(-1).tolist())) > 1  # a classifier that always says one label would prove nothing
    top2 = a.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.1  # random weights: ~5% of rows are near-ties (logits' std ~0.75)
    same = a.argmax(-1) == b.argmax(-1)
    assert clear.float().mean() > 0.9 and same[clear].all()
    # all rows, near-ties included (the stock per-tensor quantisation: 0.99 with twice the logit error)
    assert same.float().mean() >= 0.98 and (a - b).abs().max() < 0.1


def test_int8_dot_product_flags_are_read_not_assumed(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse avx2 avx512f avx512_vnni\n")
    assert cpu_int8_dot_product(str(info)) == ("avx512_vnni",)
    info.write_text("processor : 0\nflags : fpu sse avx2\n")
    assert cpu_int8_dot_product(str(info)) == ()
    assert cpu_int8_dot_product(str(tmp_path / "absent")) == ()


def write_input(path, n=48):
    path.mkdir()
    texts = [f"a review of product {i}: " + "really good value " * (i % 5) for i in range(n)]
    pq.write_table(pa.table({"text": texts}), path / "p.parquet")
    return path


def test_preflight_refuses_quantization_off_cpu_or_off_float32(minilm_path, tmp_path):
    inp = write_input(tmp_path / "in")
    base = {"input": {"path": str(inp)}, "output": {"path": str(tmp_path / "out")}}
    for model, compute in (({"dtype": "bfloat16"}, {}), ({}, {"model_num_gpus": 1})):
        cfg = load_config({**base, "model": {"path": str(minilm_path), "task": "embed", "quantization": "int8-dynamic",
                                             **model}, "compute": compute})
        with pytest.raises(PreflightError, match="runs on CPU actors in float32"):
            preflight(cfg)


def test_agreement_passes_the_default_bar_and_a_higher_bar_stops_the_job(ray_session, minilm_path, tmp_path):
    inp = write_input(tmp_path / "in")
    job = {"input": {"path": str(inp)},
           "model": {"path": str(minilm_path), "task": "embed", "quantization": "int8-dynamic", "agreement_rows": 32},
           "output": {"path": str(tmp_path / "out")}}
    report = run(job)  # the default model.min_agreement (0.95), which the stock int8 quantisation missed
    check = report.checks["quantization"]
    assert check["metric"] == "cosine" and check["rows"] == 32 and 0.99 <= check["agreement"] < 1.0
    assert report.rows == 48 and read_output(str(tmp_path / "out")).num_rows == 48
    assert "quantization" in report.format()

    job["model"]["min_agreement"] = 1.0001  # no quantised model agrees better than perfectly
    job["output"]["path"] = str(tmp_path / "out2")
    with pytest.raises(PreflightError, match=r"cosine with float32 is 0\.\d+ on 32 rows .* below model.min_agreement"):
        run(job)
    assert not (tmp_path / "out2").exists() and not (tmp_path / ".out2.rayformers-staging").exists()
