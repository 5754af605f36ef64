"""`BatchEncoding`: what a tokenizer call returns (transformers' container, as a plain dict)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from tokenizers import Encoding

from .files import SUPPORTED_TENSOR_TYPES

logger = logging.getLogger(__name__)


class BatchEncoding(dict):
    """The output of a tokenizer call: a dict of model inputs with attribute access.

    A plain `dict` subclass (so `model(**batch)`, `dict(batch)` and pickling through Ray just work)
    that also keeps the backend `tokenizers.Encoding` objects, which know the token <-> character
    alignment (`tokens()`, `word_ids()`, `char_to_token()`...). `batch[i]` with an int gives the i-th
    `Encoding`, as in transformers.
    """

    def __init__(
        self,
        data: Mapping[str, Any] | None = None,
        encoding: Encoding | list[Encoding] | None = None,
        tensor_type: str | None = None,
        prepend_batch_axis: bool = False,
        n_sequences: int | None = None,
    ):
        super().__init__(data or {})
        if isinstance(encoding, Encoding):
            encoding = [encoding]
        self._encodings = encoding
        if n_sequences is None and encoding:
            n_sequences = encoding[0].n_sequences
        self._n_sequences = n_sequences
        self.convert_to_tensors(tensor_type=tensor_type, prepend_batch_axis=prepend_batch_axis)

    def __getitem__(self, item):
        if isinstance(item, str):
            return dict.__getitem__(self, item)
        if self._encodings is not None:
            return self._encodings[item]
        if isinstance(item, slice):
            return {key: value[item] for key, value in self.items()}
        raise KeyError(
            f"BatchEncoding keys are strings ({', '.join(self.keys())}); an int index returns the backend "
            "Encoding of that row (only when the tokenizer produced them), and a slice subsets every field."
        )

    def __getattr__(self, item: str):
        if item.startswith("__") or item in ("_encodings", "_n_sequences"):
            raise AttributeError(item)
        try:
            return dict.__getitem__(self, item)
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {item!r} (fields: {list(self.keys())})") from None

    @property
    def data(self) -> dict:
        """The fields themselves (transformers' `BatchEncoding.data`); here the object is the dict."""
        return self

    @property
    def encodings(self) -> list[Encoding] | None:
        """The backend `tokenizers.Encoding` per row, or None when built from plain lists (`pad`)."""
        return self._encodings

    @property
    def n_sequences(self) -> int | None:
        """1 for single texts, 2 for pairs, None when unknown."""
        return self._n_sequences

    @property
    def is_fast(self) -> bool:
        return self._encodings is not None

    def _encoding(self, batch_index: int, what: str) -> Encoding:
        if not self._encodings:
            raise ValueError(f"{what}() needs the backend encodings, which this BatchEncoding does not have.")
        return self._encodings[batch_index]

    def tokens(self, batch_index: int = 0) -> list[str]:
        return self._encoding(batch_index, "tokens").tokens

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        return self._encoding(batch_index, "word_ids").word_ids

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        return self._encoding(batch_index, "sequence_ids").sequence_ids

    def token_to_chars(self, batch_or_token_index: int, token_index: int | None = None):
        batch_index, token_index = (0, batch_or_token_index) if token_index is None else (
            batch_or_token_index, token_index)
        return self._encoding(batch_index, "token_to_chars").token_to_chars(token_index)

    def char_to_token(self, batch_or_char_index: int, char_index: int | None = None, sequence_index: int = 0):
        batch_index, char_index = (0, batch_or_char_index) if char_index is None else (
            batch_or_char_index, char_index)
        return self._encoding(batch_index, "char_to_token").char_to_token(char_index, sequence_index)

    def convert_to_tensors(self, tensor_type: str | None = None, prepend_batch_axis: bool = False) -> BatchEncoding:
        """Turn every list field into a `torch.Tensor` ("pt") or `np.ndarray` ("np"), in place."""
        if tensor_type is None:
            return self
        tensor_type = getattr(tensor_type, "value", tensor_type)
        if tensor_type not in SUPPORTED_TENSOR_TYPES:
            raise ValueError(
                f"return_tensors={tensor_type!r} is not supported; use 'pt' (PyTorch), 'np' (NumPy) or None (lists)."
            )
        if tensor_type == "pt":
            import torch

            def as_tensor(value):
                if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
                    return torch.from_numpy(np.array(value))
                if not _flatten(value):
                    return torch.tensor(value, dtype=torch.int64)
                return torch.tensor(value)

            is_tensor = torch.is_tensor
        else:

            def as_tensor(value, dtype=None):
                if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple, np.ndarray)):
                    if len({len(row) for row in value}) > 1 and dtype is None:
                        # Ragged rows become an object array of rows, as in transformers.
                        value = as_tensor([np.asarray(row) for row in value], dtype=object)
                if not _flatten(value) and dtype is None:
                    dtype = np.int64
                return np.asarray(value, dtype=dtype)

            def is_tensor(value):
                return isinstance(value, np.ndarray)

        for key, value in list(self.items()):
            try:
                if prepend_batch_axis:
                    value = [value]
                if not is_tensor(value):
                    dict.__setitem__(self, key, as_tensor(value))
            except Exception as err:
                raise ValueError(
                    f"Unable to create a tensor for `{key}`: its rows have different lengths. Pass padding=True "
                    "(and truncation=True for long texts) so that every row has the same length, or leave "
                    "return_tensors=None to get lists."
                ) from err
        return self

    def to(self, device, *, non_blocking: bool = False) -> BatchEncoding:
        """Move every tensor field to `device` (PyTorch only); other fields are left as they are.

        Only devices are accepted (a str, an int or a `torch.device`): casting token ids to a dtype
        would corrupt them, so `batch.to(torch.float16)` is refused as in transformers.
        """
        if not (isinstance(device, (str, int)) or type(device).__name__ == "device"):
            logger.warning("Attempting to cast a BatchEncoding to %s. This is not supported.", device)
            return self
        for key, value in list(self.items()):
            if hasattr(value, "to") and callable(value.to):
                dict.__setitem__(self, key, value.to(device=device, non_blocking=non_blocking))
        return self


def _flatten(value) -> list:
    """All leaves of a nested list (used to spot empty inputs, which need an explicit int dtype)."""
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            out.extend(_flatten(item))
        return out
    return [value]


def _to_py_obj(obj):
    """Torch tensors / NumPy arrays / nested lists -> plain Python ints and lists (as transformers)."""
    if isinstance(obj, (int, float, str)) or obj is None:
        return obj
    if isinstance(obj, Mapping):
        return {key: _to_py_obj(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_py_obj(item) for item in obj]
    if hasattr(obj, "tolist"):  # torch.Tensor, np.ndarray, np.number
        return obj.tolist()
    return obj


