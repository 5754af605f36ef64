"""One host-device synchronisation per decode step, proven on CPU.

On a GPU every device read by the host (`.item()`, `bool(t)`, `.tolist()`, `.cpu()`, `nonzero`,
boolean-mask indexing, a blocking copy of host data to the device) waits for every queued kernel.
A CPU run cannot time such stalls, so the tests look at what the decode loops ask torch to do:

- `SyncRecorder` is a `TorchDispatchMode` that sees every aten op the loops run and records those
  that synchronise on a GPU (`_local_scalar_dense` behind item/bool/int, `nonzero`,
  `masked_select`, boolean-index `index`/`index_put_`, `lift_fresh` = a tensor made from host data,
  ...), except inside the model's own forward (model code is not the decode loop) and inside the
  two functions of generation/transfer.py through which the loops move data on purpose: `to_host`
  (each call is one sync, counted) and `to_device` / `bitmask_to_device` (non-blocking copies, allowed). Recording starts
  at the first decoder forward: `generate` validates its input batch once per call before that
  (empty rows, padding side), which is not per step.
- `.tolist()` / `.cpu()` do not dispatch an op on a CPU tensor, so an AST check makes sure the step
  code never calls them (or `.item()`, `.numpy()`, `.nonzero()`) outside transfer.py.

Asserted: no unrouted sync at all, and `to_host` at most once between two decoder forwards, i.e. at
most one sync per decode step, for greedy search and sampling with the common processors (and beam
search / beam sampling in `generate`), for `generate` and `stream_generate`, encoder-decoder and
decoder-only.
"""

from __future__ import annotations

import ast
import inspect
import random
import textwrap

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rayformers.models.bart import BartForConditionalGeneration
from rayformers.models.bert import BertLMHeadModel
from rayformers.models.configuration_bart import BartConfig
from rayformers.models.configuration_bert import BertConfig
from rayformers.models.generation import (causal_session, constraints, continuous_causal, continuous_engine, continuous_seq2seq,
                                          decoding, logits_process, session, stream_generate, transfer)

from model_test_utils import single_thread  # noqa: F401  (autouse: one thread per test module)

VOCAB = 60
EOS_LIST = [2] + list(range(30, 45))  # many eos ids: rows stop at different steps, slots get refilled

_SYNCING_OPS = {"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "lift_fresh", "unique",
                "_unique", "_unique2", "unique_consecutive", "unique_dim", "equal", "is_nonzero"}
_BOOL_INDEXED_OPS = {"index", "index_put", "index_put_", "_index_put_impl_"}


class SyncRecorder(TorchDispatchMode):
    """Records the events of a decode loop: 'F' per decoder forward, 'S' per `to_host`, and any op that
    would synchronise a GPU outside the model and outside transfer.py (`unrouted`)."""

    def __init__(self, model, monkeypatch):
        super().__init__()
        self.events: list[str] = []
        self.unrouted: list[str] = []
        self._exempt = 0
        modules = [model] + ([model.get_encoder()] if model.config.is_encoder_decoder else [])
        self._hooks = []
        for module in modules:
            self._hooks.append(module.register_forward_pre_hook(self._enter))
            self._hooks.append(module.register_forward_hook(self._leave_forward(module is model)))
        real_to_host, real_to_device, real_bitmask = transfer.to_host, transfer.to_device, transfer.bitmask_to_device

        def to_host(*args, **kwargs):
            self.events.append("S")
            with self._exempted():
                return real_to_host(*args, **kwargs)

        def to_device(*args, **kwargs):
            with self._exempted():
                return real_to_device(*args, **kwargs)

        def bitmask_to_device(*args, **kwargs):
            with self._exempted():
                return real_bitmask(*args, **kwargs)

        monkeypatch.setattr(transfer, "to_host", to_host)
        monkeypatch.setattr(transfer, "to_device", to_device)
        monkeypatch.setattr(transfer, "bitmask_to_device", bitmask_to_device)

    def _exempted(self):
        recorder = self

        class _Exempt:
            def __enter__(self):
                recorder._exempt += 1

            def __exit__(self, *exc):
                recorder._exempt -= 1

        return _Exempt()

    def _enter(self, module, args):
        self._exempt += 1

    def _leave_forward(self, is_decoder_step: bool):
        def hook(module, args, output):
            self._exempt -= 1
            if is_decoder_step:
                self.events.append("F")
        return hook

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self._exempt and "F" in self.events:  # the decode loop: from the first decoder forward on
            name = func.overloadpacket.__name__
            if name in _SYNCING_OPS:
                self.unrouted.append(name)
            elif name in _BOOL_INDEXED_OPS and any(
                    isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or [])):
                self.unrouted.append(f"{name} with a boolean mask")
        return func(*args, **kwargs)

    def close(self):
        for hook in self._hooks:
            hook.remove()

    def syncs(self) -> int:
        return self.events.count("S")

    def max_syncs_between_forwards(self, final: int = 0) -> int:
        """The most `to_host` calls between two decoder forwards, leaving out `final` reads after the
        last step (beam search reads the output length once per call)."""
        most = run = 0
        for event in self.events[:len(self.events) - final]:
            run = run + 1 if event == "S" else 0
            most = max(most, run)
        return most


def _record(model, monkeypatch, fn):
    recorder = SyncRecorder(model, monkeypatch)
    try:
        with torch.inference_mode(), recorder:
            result = fn()
    finally:
        recorder.close()
    return recorder, result


@pytest.fixture(scope="module")
def bart():
    torch.manual_seed(0)
    config = BartConfig(vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, max_position_embeddings=64,
                        init_std=0.3, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                        forced_eos_token_id=2)
    return BartForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def bert_lm():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=64, is_decoder=True, pad_token_id=1,
                        bos_token_id=0, eos_token_id=2, initializer_range=0.5)
    return BertLMHeadModel(config).eval()


def _inputs(n=9, seed=0):
    rng = random.Random(seed)
    return [(f"doc-{i}", [rng.randrange(3, 29) for _ in range(rng.randrange(1, 9))]) for i in range(n)]


SETTINGS = {
    # greedy with the common processors (penalty, n-gram ban, min length, forced eos, an eos list)
    "greedy": dict(max_new_tokens=12, eos_token_id=EOS_LIST, repetition_penalty=1.3, no_repeat_ngram_size=2,
                   min_new_tokens=2, bad_words_ids=[[5], [6, 7]]),
    # sampling with temperature / top-k / top-p and two samples per input
    "sample": dict(max_new_tokens=12, eos_token_id=EOS_LIST, do_sample=True, temperature=0.8, top_k=20, top_p=0.9,
                   num_return_sequences=2, repetition_penalty=1.2, min_length=3),
}
BEAM_SETTINGS = {  # generate only (stream_generate runs batched generate for beams)
    "beam": dict(max_new_tokens=10, eos_token_id=EOS_LIST, num_beams=3, num_return_sequences=2,
                 no_repeat_ngram_size=2, length_penalty=0.7),
    "beam-sample": dict(max_new_tokens=10, eos_token_id=EOS_LIST, num_beams=3, do_sample=True, top_k=15,
                        early_stopping=True),
}


def _assert_one_sync_per_step(recorder, final: int = 0):
    assert recorder.unrouted == [], f"device reads outside transfer.to_host: {sorted(set(recorder.unrouted))}"
    assert recorder.syncs() >= 3, recorder.events  # the loop ran several steps through to_host
    assert recorder.max_syncs_between_forwards(final) == 1, "".join(recorder.events)
    assert recorder.syncs() - final <= recorder.events.count("F")


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("kind", ["encoder-decoder", "decoder-only"])
def test_stream_generate_reads_the_device_once_per_step(bart, bert_lm, monkeypatch, kind, name):
    model = bart if kind == "encoder-decoder" else bert_lm
    inputs = _inputs()
    recorder, out = _record(model, monkeypatch, lambda: list(stream_generate(
        model, iter(inputs), max_batch_size=4, seed=7, **SETTINGS[name])))
    assert sorted(k for k, _ in out) == sorted(k for k, _ in inputs)
    _assert_one_sync_per_step(recorder)
    # rows finished at different steps and slots were refilled, so finishing and admission were exercised
    assert recorder.events.count("F") > max(len(v) if isinstance(v[0], int) else max(map(len, v)) for _, v in out)


def _letters_constraint():
    """A regex constraint over a word-level vocabulary of VOCAB tokens ("a".."z" among them)."""
    from tokenizers import Tokenizer, decoders, models

    from rayformers.models.generation.constraints import TokenConstraint

    letters = [chr(ord("a") + i) for i in range(26)]
    vocab = {f"<{i}>": i for i in range(3)} | {c: 3 + i for i, c in enumerate(letters)}
    vocab |= {f"w{i}": i for i in range(len(vocab), VOCAB)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<0>"))
    tokenizer.decoder = decoders.ByteLevel()  # the grammar engine reads token bytes through the decoder
    return TokenConstraint.build("regex", "[a-z]{2,30}", tokenizer, VOCAB, [2])


@pytest.mark.parametrize("name", ["greedy", "sample"])
@pytest.mark.parametrize("kind", ["encoder-decoder", "decoder-only"])
def test_constrained_stream_generate_reads_the_device_once_per_step(bart, bert_lm, monkeypatch, kind, name):
    """The constraint's mask goes to the device without waiting; its tokens come from the step's one read."""
    model = bart if kind == "encoder-decoder" else bert_lm
    settings = {"greedy": dict(max_new_tokens=12, eos_token_id=2, repetition_penalty=1.3),
                "sample": dict(max_new_tokens=12, eos_token_id=2, do_sample=True, top_k=20,
                               num_return_sequences=2)}[name]
    inputs = _inputs()
    constraint = _letters_constraint()
    recorder, out = _record(model, monkeypatch, lambda: list(stream_generate(
        model, iter(inputs), max_batch_size=4, seed=7, constraint=constraint, forced_eos_token_id=None, **settings)))
    assert sorted(k for k, _ in out) == sorted(k for k, _ in inputs)
    _assert_one_sync_per_step(recorder)
    for _, value in out:
        for ids in ([value] if isinstance(value[0], int) else value):
            body = ids[1:] if kind == "encoder-decoder" else ids  # the decoder start token first
            assert all(3 <= t < 29 for t in body[:-1]) and (body[-1] == 2 or len(body) == 12), ids


@pytest.mark.parametrize("kind", ["encoder-decoder", "decoder-only"])
def test_constrained_generate_reads_the_device_once_per_step(bart, bert_lm, monkeypatch, kind):
    model = bart if kind == "encoder-decoder" else bert_lm
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]])
    recorder, out = _record(model, monkeypatch, lambda: model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, eos_token_id=2, forced_eos_token_id=None,
        constraint=_letters_constraint()))
    _assert_one_sync_per_step(recorder)
    assert out.shape[0] == 3


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("kind", ["encoder-decoder", "decoder-only"])
def test_generate_reads_the_device_once_per_step(bart, bert_lm, monkeypatch, kind, name):
    model = bart if kind == "encoder-decoder" else bert_lm
    input_ids = torch.tensor([[5, 8, 9, 11, 4], [1, 1, 7, 3, 12], [1, 1, 1, 20, 21]])
    mask = (input_ids != 1).long()
    torch.manual_seed(3)
    recorder, out = _record(model, monkeypatch, lambda: model.generate(input_ids, attention_mask=mask, **SETTINGS[name]))
    _assert_one_sync_per_step(recorder)
    assert recorder.syncs() == recorder.events.count("F")  # one read per step, every step


@pytest.mark.parametrize("name", list(BEAM_SETTINGS))
@pytest.mark.parametrize("kind", ["encoder-decoder", "decoder-only"])
def test_beam_search_reads_the_device_once_per_step(bart, bert_lm, monkeypatch, kind, name):
    model = bart if kind == "encoder-decoder" else bert_lm
    input_ids = torch.tensor([[5, 8, 9, 11, 4], [1, 1, 7, 3, 12], [1, 1, 1, 20, 21]])
    mask = (input_ids != 1).long()
    torch.manual_seed(3)
    recorder, _ = _record(model, monkeypatch, lambda: model.generate(input_ids, attention_mask=mask,
                                                                     **BEAM_SETTINGS[name]))
    _assert_one_sync_per_step(recorder, final=1)
    assert recorder.events[-2:] == ["S", "S"]  # the last step's read, then the output length


def test_the_recorder_catches_a_device_read(bart, monkeypatch):
    """The recorder is not blind: an engine step that reads the device is reported."""
    original = continuous_engine.ContinuousEngine._is_padded

    def reads_the_device(self):
        bool((self.state["lengths"] != self.state["history"].shape[1]).any())  # the pre-fix padding check
        return original(self)

    monkeypatch.setattr(continuous_engine.ContinuousEngine, "_is_padded", reads_the_device)
    recorder, _ = _record(bart, monkeypatch, lambda: list(stream_generate(
        bart, iter(_inputs(4)), max_batch_size=2, max_new_tokens=4)))
    assert "is_nonzero" in recorder.unrouted  # bool(tensor)


# ---------------------------------------------------------------------------------- static check

# The code that runs every decode step: the engine, both strategies, the sessions' per-step methods,
# every logits processor and generate's greedy / sampling loop.
_STEP_CODE = [
    continuous_engine.ContinuousEngine, continuous_seq2seq.EncoderDecoderRows, continuous_causal.DecoderOnlyRows,
    decoding.greedy_or_sample, decoding.beam_search, decoding.read_step, decoding.invalid_probability_rows,
    decoding._BeamState.keep, decoding._gather_beams,
    session.DecoderSession.step, session.DecoderSession.keep, session.DecoderSession.trim_left,
    session.DecoderSession.pad_self_attention, session.DecoderSession.append,
    causal_session.CausalSession.step, causal_session.CausalSession._forward, causal_session.CausalSession.keep,
    causal_session.CausalSession.trim_left, causal_session.CausalSession.pad_self_attention,
    causal_session.CausalSession.append,
    constraints.TokenConstraint.fill, constraints.TokenConstraint.initial, constraints.TokenConstraint.apply,
    constraints.TokenConstraint.consume, constraints.TokenConstraint.complete,
] + [obj for _, obj in inspect.getmembers(logits_process, inspect.isclass) if obj.__module__ == logits_process.__name__
     and obj.__name__ not in ("ProcessorList",)] + [logits_process._ban_eos, logits_process._row_lengths]

_READS = {"item", "tolist", "cpu", "numpy", "nonzero", "any", "all"}


def _device_reads(obj) -> list[str]:
    """Calls in `obj`'s source that read the device: `x.item()` etc., and `bool(...)` / `int(...)` /
    `float(...)` of a call result (as in `bool(t.any())`)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in _READS - {"any", "all"}:
            found.append(f"line {node.lineno}: .{func.attr}()")
        host_only = (isinstance(node.args[0], ast.Call) and isinstance(node.args[0].func, ast.Name)
                     and node.args[0].func.id in ("getattr", "hasattr", "isinstance", "len")) if node.args else False
        if isinstance(func, ast.Name) and func.id in ("bool", "int", "float") and node.args and isinstance(
                node.args[0], (ast.Call, ast.Subscript, ast.Compare)) and not host_only:
            found.append(f"line {node.lineno}: {func.id}({ast.unparse(node.args[0])})")
    return found


@pytest.mark.parametrize("obj", _STEP_CODE, ids=lambda o: o.__qualname__)
def test_step_code_reads_the_device_only_through_transfer(obj):
    assert _device_reads(obj) == [], f"{obj.__qualname__} reads the device outside transfer.to_host"


def test_the_static_check_is_not_blind():
    def step(t):
        n = t.tolist()
        return bool(t.any()), n, int(t.max())

    assert len(_device_reads(step)) == 3


def test_padding_mask_of_an_accelerator_tensor_is_built_without_reading_the_device():
    """An encoder forward must not ask the device whether a mask is all ones (a sync per forward
    that serialises host and device); a meta tensor stands for the accelerator: reading its values
    raises, so the old ``bool(mask.all())`` fails here."""
    from rayformers.models.layers import expand_padding_mask

    on_device = expand_padding_mask(torch.ones(2, 5, dtype=torch.long, device="meta"), torch.float32, "mask")
    assert on_device is not None and on_device.shape[-1] == 5 and on_device.device.type == "meta"
    assert expand_padding_mask(torch.ones(2, 5, dtype=torch.long), torch.float32, "mask") is None  # CPU: fused path


def test_token_ids_on_an_accelerator_are_not_read_back_by_the_model():
    """The models' id range check reads values only on the CPU (a meta tensor stands for the
    accelerator, where the operators check ids on the host before the copy)."""
    from rayformers.models.layers import check_input_ids

    check_input_ids(torch.full((2, 3), 10**6, dtype=torch.long, device="meta"), 100, "input_ids")
    with pytest.raises(ValueError, match="outside this model's vocabulary"):
        check_input_ids(torch.full((2, 3), 10**6, dtype=torch.long), 100, "input_ids")
