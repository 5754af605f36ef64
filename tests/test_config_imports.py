"""Reading a checkpoint's config and checking the task has a class for it import no torch.

The job driver does both before the first row is read (`preflight.resolve_model`); importing torch
there costs seconds of CPU at every job start. Each check runs in a fresh interpreter, since this
test process has torch loaded already.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model_test_utils import tiny_bert
from rayformers.models import auto
from rayformers.models import EncoderDecoderConfig, PretrainedConfig, PreTrainedModel
from rayformers.models.auto import (
    CONFIG_MAPPING_NAMES,
    MODEL_NAMES,
    TASK_TO_AUTO_CLASS,
    AutoConfig,
    AutoModelForTokenClassification,
)


def run_without_torch(code: str) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line. Fails if torch got imported."""
    script = textwrap.dedent(code) + textwrap.dedent("""
        import sys
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("rayformers"))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def minimal_config(model_type: str, directory) -> None:
    """The smallest config.json of `model_type` (its defaults), with a dtype name to carry through."""
    if model_type == "encoder-decoder":
        bert = AutoConfig.for_model("bert", dtype="bfloat16")
        config = EncoderDecoderConfig.from_encoder_decoder_configs(bert, AutoConfig.for_model("bert"))
    else:
        config = AutoConfig.for_model(model_type, dtype="bfloat16")
    config.save_pretrained(directory)


def test_every_model_type_loads_and_is_checked_without_torch(tmp_path):
    dirs, cases = {}, []
    for model_type in CONFIG_MAPPING_NAMES:
        dirs[model_type] = str(tmp_path / model_type)
        minimal_config(model_type, dirs[model_type])
        tasks = MODEL_NAMES[model_type]
        unsupported = next(t for t in TASK_TO_AUTO_CLASS if t not in tasks)
        cases.append((model_type, next(iter(tasks)), unsupported))
    result = run_without_torch(f"""
        import json
        import rayformers.models as models
        from rayformers.models.auto import TASK_TO_AUTO_CLASS, AutoConfig

        assert models.GenerationConfig(max_new_tokens=2).max_new_tokens == 2
        dirs, out = {dirs!r}, {{}}
        for model_type, supported, unsupported in {cases!r}:
            config = AutoConfig.from_pretrained(dirs[model_type])
            TASK_TO_AUTO_CLASS[supported].check_supported(config)
            try:
                TASK_TO_AUTO_CLASS[unsupported].check_supported(config)
                message = None
            except ValueError as err:
                message = str(err)
            out[model_type] = [type(config).__name__, config.model_type, message,
                               config.to_dict().get("dtype"), type(config) is getattr(models, type(config).__name__)]
        print(json.dumps(out))
    """)
    assert set(result) == set(CONFIG_MAPPING_NAMES)
    for model_type, (class_name, loaded_type, message, dtype, exported) in result.items():
        assert (class_name, loaded_type, exported) == (CONFIG_MAPPING_NAMES[model_type], model_type, True)
        assert message is not None and "Unrecognized configuration class" in message, model_type
        if model_type != "encoder-decoder":
            assert dtype == "bfloat16", model_type  # kept as a name, written back unchanged


def test_check_supported_raises_the_message_of_from_config():
    config = AutoConfig.for_model("t5", num_layers=1)
    with pytest.raises(ValueError) as checked:
        AutoModelForTokenClassification.check_supported(config)
    with pytest.raises(ValueError) as built:
        AutoModelForTokenClassification.from_config(config)
    assert str(checked.value) == str(built.value)
    assert "model_type 't5'" in str(checked.value) and "bert" in str(checked.value)


def test_registered_config_and_model_pass_the_check(monkeypatch):
    # Fresh registries, so the toy classes do not outlive this test.
    monkeypatch.setattr(auto, "_REGISTERED_CONFIGS", {})
    monkeypatch.setattr(auto, "_REGISTERED_MODELS", {})

    class ToyTaggerConfig(PretrainedConfig):
        model_type = "toy-tagger"

    class ToyTagger(PreTrainedModel):
        config_class = ToyTaggerConfig

    AutoConfig.register("toy-tagger", ToyTaggerConfig, exist_ok=True)
    config = AutoConfig.for_model("toy-tagger")
    with pytest.raises(ValueError, match="toy-tagger"):
        AutoModelForTokenClassification.check_supported(config)
    AutoModelForTokenClassification.register(ToyTaggerConfig, ToyTagger, exist_ok=True)
    AutoModelForTokenClassification.check_supported(config)
    assert AutoModelForTokenClassification._model_class(config) is ToyTagger
    with pytest.raises(ValueError, match=r"one of .*ToyTaggerConfig"):  # registered classes are listed
        AutoModelForTokenClassification.check_supported(AutoConfig.for_model("t5"))


def test_dtype_name_becomes_a_torch_dtype_when_read():
    import torch

    config = AutoConfig.for_model("bert", dtype="bfloat16")
    assert config.dtype is torch.bfloat16 and config.torch_dtype is torch.bfloat16
    assert config.to_dict()["dtype"] == "bfloat16"


def test_preflight_of_a_classifier_job_imports_no_torch(tmp_path):
    model = tiny_bert(tmp_path / "model", hidden=16, head="BertForSequenceClassification")
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(10)]}), tmp_path / "in" / "part0.parquet")
    job = {"input": {"path": str(tmp_path / "in")}, "model": {"path": str(model), "task": "classify"},
           "output": {"path": str(tmp_path / "out")}}
    result = run_without_torch(f"""
        import json
        from rayformers.pipeline.config import load_config
        from rayformers.pipeline.preflight import preflight

        resolved = preflight(load_config({job!r}))
        print(json.dumps({{"model_type": resolved.model_type, "files": len(resolved.files)}}))
    """)
    assert result["model_type"] == "bert" and result["files"] == 1
