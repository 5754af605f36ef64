"""Tokenizers whose bos/eos around the text follow `add_bos_token` / `add_eos_token` (Llama, Gemma).

Why a subclass: transformers' LlamaTokenizerFast and GemmaTokenizerFast do not trust the
post-processor in tokenizer.json; they rebuild it at load from `add_bos_token` (default True) and
`add_eos_token` (default False) of tokenizer_config.json, and again whenever either attribute is set.
A Mistral or Llama-2 checkpoint whose tokenizer.json carries a different template, or a config
with `"add_eos_token": true`, therefore gets other ids than the file alone would give.
"""

from __future__ import annotations

from tokenizers import processors

from .fast import PreTrainedTokenizerFast


class BosEosTokenizerFast(PreTrainedTokenizerFast):
    """`PreTrainedTokenizerFast` plus transformers' `update_post_processor` of Llama and Gemma."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_bos_token = self.init_kwargs.get("add_bos_token", True)
        self._add_eos_token = self.init_kwargs.get("add_eos_token", False)
        self.update_post_processor()

    def update_post_processor(self) -> None:
        """`bos $A eos` (pair: `bos $A eos bos $B eos`), each part only when its flag is set."""
        bos, eos = self.bos_token, self.eos_token
        if bos is None and self.add_bos_token:
            raise ValueError("add_bos_token = True but bos_token = None; set a bos_token or add_bos_token=False.")
        if eos is None and self.add_eos_token:
            raise ValueError("add_eos_token = True but eos_token = None; set an eos_token or add_eos_token=False.")
        single = f"{(bos + ':0 ') if self.add_bos_token else ''}$A:0{(' ' + eos + ':0') if self.add_eos_token else ''}"
        pair = (f"{single}{(' ' + bos + ':1') if self.add_bos_token else ''} $B:1"
                f"{(' ' + eos + ':1') if self.add_eos_token else ''}")
        special_tokens = []
        if self.add_bos_token:
            special_tokens.append((bos, self.bos_token_id))
        if self.add_eos_token:
            special_tokens.append((eos, self.eos_token_id))
        self._tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                                       special_tokens=special_tokens)

    @property
    def add_bos_token(self):
        return self._add_bos_token

    @add_bos_token.setter
    def add_bos_token(self, value) -> None:
        self._add_bos_token = value
        self.update_post_processor()

    @property
    def add_eos_token(self):
        return self._add_eos_token

    @add_eos_token.setter
    def add_eos_token(self, value) -> None:
        self._add_eos_token = value
        self.update_post_processor()
