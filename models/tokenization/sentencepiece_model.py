"""Read a SentencePiece `.model` file (a `ModelProto` protobuf) without the sentencepiece library.

Why: the slow-tokenizer checkpoints (T5's `spiece.model`, XLM-R's `sentencepiece.bpe.model`,
DeBERTa-v3's `spm.model`, Marian's `source.spm`...) only need the pieces, their scores and types,
the model type and the normalizer's precompiled character map to be rebuilt as a `tokenizers`
Unigram or BPE model -- which is exactly what transformers' converters read. `protobuf` is already
installed with Ray, so the schema is declared here (only the fields we read, with the field numbers
and defaults of sentencepiece's `sentencepiece_model.proto`; every other field is skipped by the
parser) instead of adding the sentencepiece runtime.
"""

from __future__ import annotations

import functools
import os

from .files import TokenizerFormatError

# SentencePiece.Type and TrainerSpec.ModelType values.
PIECE_NORMAL, PIECE_UNKNOWN, PIECE_CONTROL, PIECE_USER_DEFINED, PIECE_UNUSED, PIECE_BYTE = 1, 2, 3, 4, 5, 6
MODEL_UNIGRAM, MODEL_BPE, MODEL_WORD, MODEL_CHAR = 1, 2, 3, 4


@functools.lru_cache(maxsize=1)
def _model_proto_class():
    """Build the `ModelProto` message class from a descriptor declared in code (proto2, like the original)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FieldDescriptorProto
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="rayformers_sentencepiece_model.proto", package="rayformers_sentencepiece", syntax="proto2")

    def add_field(message, name, number, kind, default=None, label=fdp.LABEL_OPTIONAL, type_name=None):
        field = message.field.add(name=name, number=number, type=kind, label=label)
        if default is not None:
            field.default_value = default
        if type_name is not None:
            field.type_name = type_name

    trainer = file_proto.message_type.add(name="TrainerSpec")
    add_field(trainer, "model_type", 3, fdp.TYPE_INT32, "1")
    add_field(trainer, "vocab_size", 4, fdp.TYPE_INT32, "8000")
    add_field(trainer, "byte_fallback", 35, fdp.TYPE_BOOL, "false")
    add_field(trainer, "unk_id", 40, fdp.TYPE_INT32, "0")
    add_field(trainer, "bos_id", 41, fdp.TYPE_INT32, "1")
    add_field(trainer, "eos_id", 42, fdp.TYPE_INT32, "2")
    add_field(trainer, "pad_id", 43, fdp.TYPE_INT32, "-1")
    add_field(trainer, "unk_piece", 45, fdp.TYPE_STRING, "<unk>")

    normalizer = file_proto.message_type.add(name="NormalizerSpec")
    add_field(normalizer, "name", 1, fdp.TYPE_STRING)
    add_field(normalizer, "precompiled_charsmap", 2, fdp.TYPE_BYTES)
    add_field(normalizer, "add_dummy_prefix", 3, fdp.TYPE_BOOL, "true")
    add_field(normalizer, "remove_extra_whitespaces", 4, fdp.TYPE_BOOL, "true")

    model = file_proto.message_type.add(name="ModelProto")
    piece = model.nested_type.add(name="SentencePiece")
    add_field(piece, "piece", 1, fdp.TYPE_STRING)
    add_field(piece, "score", 2, fdp.TYPE_FLOAT)
    add_field(piece, "type", 3, fdp.TYPE_INT32, "1")  # an enum in the original; same wire format
    prefix = ".rayformers_sentencepiece."
    add_field(model, "pieces", 1, fdp.TYPE_MESSAGE, label=fdp.LABEL_REPEATED,
              type_name=prefix + "ModelProto.SentencePiece")
    add_field(model, "trainer_spec", 2, fdp.TYPE_MESSAGE, type_name=prefix + "TrainerSpec")
    add_field(model, "normalizer_spec", 3, fdp.TYPE_MESSAGE, type_name=prefix + "NormalizerSpec")

    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("rayformers_sentencepiece.ModelProto"))


def load_sentencepiece_model(path: str):
    """The parsed `ModelProto` of a `.model`/`.spm` file, or a `TokenizerFormatError` naming the file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise TokenizerFormatError(f"Could not read the SentencePiece model {path}: {err}") from err
    proto = _model_proto_class()()
    try:
        proto.ParseFromString(data)
    except Exception as err:
        raise TokenizerFormatError(
            f"{path} is not a valid SentencePiece model ({type(err).__name__}: {err}); the file is corrupt or "
            "truncated. Re-download it from the checkpoint."
        ) from err
    if not proto.pieces:
        raise TokenizerFormatError(
            f"{path} holds no SentencePiece vocabulary (0 pieces; {os.path.getsize(path)} bytes); the file is corrupt "
            "or not a SentencePiece model. Re-download it from the checkpoint."
        )
    if proto.trainer_spec.model_type not in (MODEL_UNIGRAM, MODEL_BPE):
        raise TokenizerFormatError(
            f"{path} is a SentencePiece model of type {proto.trainer_spec.model_type} (WORD/CHAR); only Unigram (1) "
            "and BPE (2) models can be converted, as in transformers."
        )
    return proto
