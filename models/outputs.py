"""Model output dataclasses with transformers' field names.

User code written for transformers indexes outputs three ways: `out.logits`, `out["logits"]` and
`out[0]` (the first non-None field). `ModelOutput` supports all three so that code ports unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

import torch


class ModelOutput:
    """Base of every output dataclass: attribute, key and position access over non-None fields."""

    def _present(self) -> list[tuple[str, Any]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(value for _, value in self._present())

    def keys(self):
        return [name for name, _ in self._present()]

    def values(self):
        return [value for _, value in self._present()]

    def items(self):
        return self._present()

    def __getitem__(self, key):
        if isinstance(key, str):
            return dict(self._present())[key]
        return self.to_tuple()[key]

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._present())

    def get(self, key, default=None):
        return dict(self._present()).get(key, default)


Tensor = Optional[torch.Tensor]
Tensors = Optional[tuple[torch.Tensor, ...]]


@dataclass
class BaseModelOutput(ModelOutput):
    last_hidden_state: Tensor = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    last_hidden_state: Tensor = None
    pooler_output: Tensor = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class BaseModelOutputWithPastAndCrossAttentions(ModelOutput):
    last_hidden_state: Tensor = None
    past_key_values: Any = None
    hidden_states: Tensors = None
    attentions: Tensors = None
    cross_attentions: Tensors = None


@dataclass
class BaseModelOutputWithPast(ModelOutput):
    """Decoder-only LLMs (Llama, Qwen, Gemma, ...)."""

    last_hidden_state: Tensor = None
    past_key_values: Any = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class BaseModelOutputWithPoolingAndCrossAttentions(ModelOutput):
    last_hidden_state: Tensor = None
    pooler_output: Tensor = None
    hidden_states: Tensors = None
    past_key_values: Any = None
    attentions: Tensors = None
    cross_attentions: Tensors = None


@dataclass
class CausalLMOutputWithCrossAttentions(ModelOutput):
    loss: Tensor = None
    logits: Tensor = None
    past_key_values: Any = None
    hidden_states: Tensors = None
    attentions: Tensors = None
    cross_attentions: Tensors = None


@dataclass
class CausalLMOutputWithPast(ModelOutput):
    loss: Tensor = None
    logits: Tensor = None
    past_key_values: Any = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class SequenceClassifierOutputWithPast(ModelOutput):
    loss: Tensor = None
    logits: Tensor = None
    past_key_values: Any = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class _LossLogitsOutput(ModelOutput):
    """The fields (and their order) of every single-sequence head that returns `logits`."""

    loss: Tensor = None
    logits: Tensor = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class MaskedLMOutput(_LossLogitsOutput):
    pass


@dataclass
class SequenceClassifierOutput(_LossLogitsOutput):
    pass


@dataclass
class TokenClassifierOutput(_LossLogitsOutput):
    pass


@dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    loss: Tensor = None
    start_logits: Tensor = None
    end_logits: Tensor = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class MultipleChoiceModelOutput(_LossLogitsOutput):
    pass


@dataclass
class Seq2SeqModelOutput(ModelOutput):
    last_hidden_state: Tensor = None
    past_key_values: Any = None
    decoder_hidden_states: Tensors = None
    decoder_attentions: Tensors = None
    cross_attentions: Tensors = None
    encoder_last_hidden_state: Tensor = None
    encoder_hidden_states: Tensors = None
    encoder_attentions: Tensors = None


@dataclass
class _Seq2SeqHeadOutput(ModelOutput):
    """The fields (and their order) of every seq2seq head: its own loss and logits, then the model's."""

    loss: Tensor = None
    logits: Tensor = None
    past_key_values: Any = None
    decoder_hidden_states: Tensors = None
    decoder_attentions: Tensors = None
    cross_attentions: Tensors = None
    encoder_last_hidden_state: Tensor = None
    encoder_hidden_states: Tensors = None
    encoder_attentions: Tensors = None


@dataclass
class Seq2SeqLMOutput(_Seq2SeqHeadOutput):
    pass


@dataclass
class Seq2SeqSequenceClassifierOutput(_Seq2SeqHeadOutput):
    pass


# ---------------------------------------------------------------------------------- assembly helpers

# The fields a seq2seq output takes over from its decoder and encoder, after its own leading ones.
_SEQ2SEQ_SHARED_FIELDS = ("past_key_values", "decoder_hidden_states", "decoder_attentions", "cross_attentions",
                          "encoder_last_hidden_state", "encoder_hidden_states", "encoder_attentions")


def seq2seq_output(output_class, decoder_outputs, encoder_outputs, **leading_fields):
    """A seq2seq output (`Seq2SeqModelOutput`, `Seq2SeqLMOutput`, ...) from the decoder's and encoder's own
    outputs; `leading_fields` are the class's first fields (`last_hidden_state`, or `loss` and `logits`)."""
    return output_class(
        **leading_fields,
        past_key_values=decoder_outputs.past_key_values,
        decoder_hidden_states=decoder_outputs.hidden_states,
        decoder_attentions=decoder_outputs.attentions,
        cross_attentions=decoder_outputs.cross_attentions,
        encoder_last_hidden_state=encoder_outputs.last_hidden_state,
        encoder_hidden_states=encoder_outputs.hidden_states,
        encoder_attentions=encoder_outputs.attentions,
    )


def seq2seq_head_output(output_class, model_outputs: Seq2SeqModelOutput, **head_fields):
    """A head's seq2seq output over its base model's `Seq2SeqModelOutput` (all but `last_hidden_state`)."""
    return output_class(**head_fields, **{name: getattr(model_outputs, name) for name in _SEQ2SEQ_SHARED_FIELDS})


def as_tuple(outputs) -> tuple:
    """A model's outputs as the `return_dict=False` tuple, whichever form they are in."""
    return outputs.to_tuple() if isinstance(outputs, ModelOutput) else tuple(outputs)


def wrap_encoder_outputs(encoder_outputs) -> BaseModelOutput:
    """Accept a BaseModelOutput or a tuple (last_hidden_state, hidden_states?, attentions?)."""
    if isinstance(encoder_outputs, BaseModelOutput):
        return encoder_outputs
    if isinstance(encoder_outputs, torch.Tensor):
        return BaseModelOutput(last_hidden_state=encoder_outputs)
    if hasattr(encoder_outputs, "last_hidden_state"):
        return BaseModelOutput(
            last_hidden_state=encoder_outputs.last_hidden_state,
            hidden_states=getattr(encoder_outputs, "hidden_states", None),
            attentions=getattr(encoder_outputs, "attentions", None),
        )
    return BaseModelOutput(
        last_hidden_state=encoder_outputs[0],
        hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
        attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
    )


def encode_unless_given(encoder, encoder_outputs, return_dict: bool, **encoder_kwargs):
    """The encoder's outputs for a seq2seq forward: computed by `encoder`, or the caller's precomputed
    `encoder_outputs` (tensor, tuple or output) brought into the form `return_dict` asks for."""
    if encoder_outputs is None:
        return encoder(return_dict=return_dict, **encoder_kwargs)
    if return_dict:
        return wrap_encoder_outputs(encoder_outputs)
    if isinstance(encoder_outputs, torch.Tensor):
        return (encoder_outputs,)
    return encoder_outputs


def head_output(output_class, model_outputs, return_dict: bool, **head_fields):
    """A single-sequence head's output: its own fields (loss, logits, ...) plus the base model's
    `hidden_states` and `attentions`; with `return_dict=False` the tuple of its non-None fields."""
    out = output_class(**head_fields, hidden_states=model_outputs.hidden_states, attentions=model_outputs.attentions)
    return out if return_dict else out.to_tuple()


def with_loss(loss, output: tuple) -> tuple:
    """transformers' `return_dict=False` layout of a head: the loss first when there is one."""
    return ((loss,) + output) if loss is not None else output
