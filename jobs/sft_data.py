"""Supervised fine-tuning rows of a decoder-only LM: checks, tokenization with the chat template,
completion-only labels, and packing.

A row is either (prompt, response) — two text columns — or one ``messages`` column (a list of
``{"role", "content"}`` whose last message is the assistant's answer). Each row becomes

    input_ids = tokens(prompt rendered with add_generation_prompt) + tokens(response)
    labels    = -100 for every prompt token, the token id for every response token

exactly as TRL's completion-only loss: with the chat template the full conversation is rendered
and tokenized once, and the prompt's tokens are the rendering of the conversation without the
answer (``add_generation_prompt=True``), which must be a token prefix of the full rendering (an
error otherwise). Without a chat template (``train.chat_template: none``, or a tokenizer without
one) the prompt is tokenized with the tokenizer's special tokens and the response follows it with
the EOS token appended. The first token of a row never has a label (nothing precedes it; with
packing it would otherwise be predicted from the previous row).

``prompt_length`` travels with each row so that evaluation can generate from the prompt alone.

Packing (``train.packing``) happens per micro-batch in the worker's collate: the micro-batch's rows
are laid end to end into as few sequences of at most ``max_length`` tokens as first-fit allows,
position ids restart at 0 for every row and no attention mask is passed, which makes the decoder
attend block-diagonally (see ``rayformers.models.decoder.packed_sequence_ids``). The rows of each
optimizer step stay exactly the planned ones, so sharding, resuming and the loss (summed over
response tokens, divided by their count) are unchanged; only padding disappears.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa

from rayformers.operators.records import text_problem

NO_TEMPLATE = "none"
PROMPT_LENGTH_COLUMN = "prompt_length"


def _message_problem(messages: Any, column: str) -> Optional[str]:
    if messages is None:
        return f"{column}: messages are missing (null)"
    if not isinstance(messages, (list, tuple)) or not messages:
        return f"{column}: expected a non-empty list of {{role, content}} messages"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            return f"{column}: message {i} is not a {{role, content}} mapping"
    last = messages[-1]
    if last["role"] != "assistant":
        return f"{column}: the last message has role {last['role']!r}; it must be the assistant's response"
    reason = text_problem(last.get("content"), column)[1]
    if reason is not None:
        return f"{column}: the assistant response (last message) " + reason.split(": text ", 1)[-1]
    return None


def sft_row_problems(table: pa.Table, text_column: str, response_column: Optional[str], messages: bool) -> list:
    """One reason (or None) per row: a missing or empty prompt, response or assistant message."""
    if messages:
        return [_message_problem(m, text_column) for m in table.column(text_column).to_pylist()]
    prompts = table.column(text_column).to_pylist()
    responses = table.column(response_column).to_pylist()
    problems = []
    for p, r in zip(prompts, responses):
        reason = text_problem(p, text_column)[1]
        if reason is None:
            reason = text_problem(r, response_column)[1]
        problems.append(reason)
    return problems


def _conversations(batch: pa.Table, text_column: str, response_column: Optional[str], messages: bool):
    """(prompt messages, full messages) per row, or (prompt text, response text) without messages."""
    if messages:
        rows = batch.column(text_column).to_pylist()
        return [(list(m[:-1]), list(m)) for m in rows]
    prompts = [text_problem(v, text_column)[0] for v in batch.column(text_column).to_pylist()]
    responses = [text_problem(v, response_column)[0] for v in batch.column(response_column).to_pylist()]
    return [([{"role": "user", "content": p}], [{"role": "user", "content": p}, {"role": "assistant", "content": r}])
            for p, r in zip(prompts, responses)]


def encode_row(tokenizer: Any, prompt_messages: list, full_messages: list, chat_template: Optional[str],
               max_length: Optional[int]) -> tuple[list, list, int]:
    """``(input_ids, labels, prompt_length)`` of one row (see the module docstring)."""
    if chat_template is not None:
        prompt_text = tokenizer.apply_chat_template(prompt_messages, chat_template=chat_template, tokenize=False,
                                                    add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(full_messages, chat_template=chat_template, tokenize=False)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
        if full_ids[:len(prompt_ids)] != prompt_ids:
            raise ValueError(
                "the chat template's rendering of the prompt (add_generation_prompt) is not a token prefix of the "
                "rendered conversation, so the response tokens cannot be told apart; use another "
                "train.chat_template or train.chat_template: none"
            )
    else:
        prompt_text = "\n".join(m["content"] for m in prompt_messages)
        response = full_messages[-1]["content"]
        prompt_ids = tokenizer(prompt_text)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        eos = getattr(tokenizer, "eos_token_id", None)
        full_ids = prompt_ids + response_ids + ([eos] if eos is not None else [])
    if max_length is not None:
        full_ids = full_ids[:max_length]
    n_prompt = min(len(prompt_ids), len(full_ids))
    labels = [-100] * n_prompt + full_ids[n_prompt:]
    if labels:
        labels[0] = -100
    return full_ids, labels, n_prompt


def tokenize_sft(batch: pa.Table, tokenizer: Any, text_column: str, response_column: Optional[str],
                 messages: bool, chat_template: Optional[str], max_length: Optional[int]) -> dict:
    """Ray Data stage body for SFT: ``input_ids``, ``labels`` and ``prompt_length`` columns."""
    ids, labels, prompt_lengths = [], [], []
    for prompt_messages, full_messages in _conversations(batch, text_column, response_column, messages):
        i, lab, n = encode_row(tokenizer, prompt_messages, full_messages, chat_template, max_length)
        ids.append(i)
        labels.append(lab)
        prompt_lengths.append(n)
    return {
        "input_ids": pa.array(ids, type=pa.list_(pa.int32())),
        "labels": pa.array(labels, type=pa.list_(pa.int32())),
        PROMPT_LENGTH_COLUMN: pa.array(prompt_lengths, type=pa.int32()),
    }


def pack_rows(ids: list, labels: list, capacity: int, pad_token_id: int) -> dict:
    """Rows laid end to end, first-fit into sequences of at most ``capacity`` tokens (a row longer
    than ``capacity`` gets a sequence of its own). Returns int64 arrays ``input_ids``, ``labels``
    and ``position_ids`` (restarting at 0 per row; the tail padding is one more restarted run with
    labels -100, so it attends only to itself)."""
    bins: list = []
    for k, row in enumerate(ids):
        for b in bins:
            if b["len"] + len(row) <= capacity:
                b["rows"].append(k)
                b["len"] += len(row)
                break
        else:
            bins.append({"rows": [k], "len": len(row)})
    width = max(b["len"] for b in bins)
    n = len(bins)
    out_ids = np.full((n, width), pad_token_id, dtype=np.int64)
    out_labels = np.full((n, width), -100, dtype=np.int64)
    out_pos = np.zeros((n, width), dtype=np.int64)
    for i, b in enumerate(bins):
        at = 0
        for k in b["rows"]:
            length = len(ids[k])
            out_ids[i, at:at + length] = ids[k]
            out_labels[i, at:at + length] = labels[k]
            out_pos[i, at:at + length] = np.arange(length)
            at += length
        out_pos[i, at:] = np.arange(width - at)
    return {"input_ids": out_ids, "labels": out_labels, "position_ids": out_pos}


def causal_token_loss_sum(logits, labels):
    """Summed next-token cross entropy: position t's logits predict token t+1 (labels -100 ignored).

    The labels are shifted (as transformers' ``ForCausalLMLoss``), not the logits: slicing the
    logits would copy the largest tensor of the step."""
    import torch

    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100, reduction="sum",
    )


def left_padded_prompts(input_ids, prompt_length, pad_token_id: int):
    """``(input_ids, attention_mask)`` of each row's prompt alone, left-padded (for ``generate``)."""
    import torch

    lengths = prompt_length.tolist()
    width = max(max(lengths), 1)
    out = torch.full((len(lengths), width), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    mask = torch.zeros((len(lengths), width), dtype=torch.long, device=input_ids.device)
    for i, n in enumerate(lengths):
        if n:
            out[i, width - n:] = input_ids[i, :n]
            mask[i, width - n:] = 1
    return out, mask


__all__ = [
    "NO_TEMPLATE",
    "PROMPT_LENGTH_COLUMN",
    "causal_token_loss_sum",
    "encode_row",
    "left_padded_prompts",
    "pack_rows",
    "sft_row_problems",
    "tokenize_sft",
]
