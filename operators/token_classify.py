"""``token-classify``: entities with character spans, aggregated as transformers' pipeline does.

Strategies ``none`` (one entry per token), ``simple`` (adjacent tokens with the same tag merged),
``first`` / ``average`` / ``max`` (word-level agreement first, then merging). The logic mirrors
``transformers.TokenClassificationPipeline`` (4.57) so results are comparable row for row; the
output column ``entities`` is a list of {entity_group, score, word, start, end}.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa

from .batching import MicroBatch
from .model_operator import ModelOperator, label_name, rows_in_order
from .records import column_to_pylist

ENTITY_TYPE = pa.struct(
    [
        pa.field("entity_group", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("word", pa.string()),
        pa.field("start", pa.int32()),
        pa.field("end", pa.int32()),
    ]
)


def get_tag(entity_name: str) -> tuple[str, str]:
    if entity_name.startswith("B-"):
        return "B", entity_name[2:]
    if entity_name.startswith("I-"):
        return "I", entity_name[2:]
    return "I", entity_name


class EntityAggregator:
    """Post-processing of per-token class probabilities into entities (no model, no Ray)."""

    def __init__(self, config: Any, backend_tokenizer: Any, unk_token_id: Optional[int], strategy: str, ignore_labels):
        self.config = config
        self.backend = backend_tokenizer
        self.unk_token_id = unk_token_id
        self.strategy = strategy
        self.ignore_labels = set(ignore_labels or [])
        self.word_aware = bool(getattr(getattr(backend_tokenizer, "model", None), "continuing_subword_prefix", None))

    def tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self.backend.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def __call__(self, sentence: str, input_ids, scores: np.ndarray, starts, ends, special) -> list[dict]:
        pre = []
        for idx in range(len(input_ids)):
            if special[idx]:
                continue
            word = self.backend.id_to_token(int(input_ids[idx]))
            s, e = int(starts[idx]), int(ends[idx])
            word_ref = sentence[s:e]
            if self.word_aware:
                is_subword = len(word) != len(word_ref)
            else:
                is_subword = s > 0 and " " not in sentence[s - 1 : s + 1]
            if self.unk_token_id is not None and int(input_ids[idx]) == self.unk_token_id:
                word = word_ref
                is_subword = False
            pre.append({"word": word, "scores": scores[idx], "start": s, "end": e, "index": idx, "is_subword": is_subword})
        if self.strategy in ("none", "simple"):
            entities = []
            for p in pre:
                i = int(p["scores"].argmax())
                entities.append(
                    {"entity": label_name(self.config, i), "score": float(p["scores"][i]), "word": p["word"], "start": p["start"], "end": p["end"]}
                )
        else:
            entities = self._aggregate_words(pre)
        if self.strategy != "none":
            entities = self._group_entities(entities)
        out = []
        for ent in entities:
            name = ent.get("entity_group", ent.get("entity"))
            if name in self.ignore_labels:
                continue
            out.append({"entity_group": name, "score": float(ent["score"]), "word": ent["word"], "start": ent["start"], "end": ent["end"]})
        return out

    def _aggregate_word(self, entities: list[dict]) -> dict:
        word = self.tokens_to_string([e["word"] for e in entities])
        if self.strategy == "first":
            scores = entities[0]["scores"]
        elif self.strategy == "max":
            scores = max(entities, key=lambda e: e["scores"].max())["scores"]
        else:  # average
            scores = np.nanmean(np.stack([e["scores"] for e in entities]), axis=0)
        i = int(scores.argmax())
        return {"entity": label_name(self.config, i), "score": float(scores[i]), "word": word, "start": entities[0]["start"], "end": entities[-1]["end"]}

    def _aggregate_words(self, pre: list[dict]) -> list[dict]:
        words, group = [], None
        for p in pre:
            if group is None:
                group = [p]
            elif p["is_subword"]:
                group.append(p)
            else:
                words.append(self._aggregate_word(group))
                group = [p]
        if group is not None:
            words.append(self._aggregate_word(group))
        return words

    def _group_sub_entities(self, entities: list[dict]) -> dict:
        return {
            "entity_group": entities[0]["entity"].split("-", 1)[-1],
            "score": float(np.mean(np.nanmean([e["score"] for e in entities]))),
            "word": self.tokens_to_string([e["word"] for e in entities]),
            "start": entities[0]["start"],
            "end": entities[-1]["end"],
        }

    def _group_entities(self, entities: list[dict]) -> list[dict]:
        groups, current = [], []
        for ent in entities:
            if not current:
                current.append(ent)
                continue
            bi, tag = get_tag(ent["entity"])
            _, last_tag = get_tag(current[-1]["entity"])
            if tag == last_tag and bi != "B":
                current.append(ent)
            else:
                groups.append(self._group_sub_entities(current))
                current = [ent]
        if current:
            groups.append(self._group_sub_entities(current))
        return groups


def aggregate_overlapping_entities(entities: list[dict]) -> list[dict]:
    """transformers' ``TokenClassificationPipeline.aggregate_overlapping_entities`` (4.57): sorted
    by start, an entity starting inside the previous one replaces it if longer (or as long and
    higher-scoring), else is dropped."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda x: x["start"])
    out, previous = [], entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            length, previous_length = entity["end"] - entity["start"], previous["end"] - previous["start"]
            if length > previous_length or length == previous_length and entity["score"] > previous["score"]:
                previous = entity
        else:
            out.append(previous)
            previous = entity
    out.append(previous)
    return out


def token_probabilities(logits):
    """Softmax over the classes in float32, on the logits' device (as transformers' pipeline
    computes it in numpy: the max subtracted before ``exp``)."""
    logits = logits.float()
    e = (logits - logits.amax(dim=-1, keepdim=True)).exp()
    return e / e.sum(dim=-1, keepdim=True)


class TokenClassifyOperator(ModelOperator):
    task = "token-classify"

    def setup(
        self,
        text_column: str = "text",
        tokenizer_path: Optional[str] = None,
        aggregation_strategy: str = "simple",
        ignore_labels=("O",),
        tokenizer: Any = None,
    ) -> None:
        if tokenizer is None:
            from .loading import load_tokenizer

            tokenizer = load_tokenizer(tokenizer_path, self.revision, self.local_files_only)
        self.text_column = text_column
        self.aggregator = EntityAggregator(
            self.config,
            tokenizer.backend_tokenizer,
            getattr(tokenizer, "unk_token_id", None),
            aggregation_strategy,
            ignore_labels,
        )

    def predict(self, mb: MicroBatch, batch: pa.Table) -> dict:
        """Per-token class probabilities (float32, left on the device); the entities are built
        from them on the host in :meth:`host_result`, while the next micro-batch runs."""
        return {"probs": token_probabilities(self.forward(mb).logits)}

    def host_result(self, units: np.ndarray, result: dict, batch: pa.Table) -> list:
        """Entities of each unit (a row, or a window of a long row: its tokens' offsets point into
        the row's whole text, so window entities are already in the row's coordinates)."""
        probs = result["probs"]
        texts = column_to_pylist(batch.column(self.text_column).take(pa.array(self.batch_rows(units))))
        ids, starts, ends, special = (self.unit_lists(batch, c)
                                      for c in ("input_ids", "offset_start", "offset_end", "special_tokens_mask"))
        rows = []
        for r, unit in enumerate(units.tolist()):
            a, n = int(starts.starts[unit]), int(starts.lengths[unit])
            text = texts[r].decode("utf-8") if isinstance(texts[r], bytes) else texts[r]
            i, b, e = int(ids.starts[unit]), int(special.starts[unit]), int(ends.starts[unit])
            rows.append(self.aggregator(text, ids.values[i:i + n].tolist(), probs[r, :n], starts.values[a:a + n].tolist(),
                                        ends.values[e:e + n].tolist(), special.values[b:b + n].tolist()))
        return rows

    def merge_windows(self, chunks: list, windows, num_rows: int) -> list:
        """A long row's entities as transformers' pipeline with ``stride`` merges them: every
        window's entities (each aggregated and filtered on its own), then of the entities that
        overlap, the longer one, or on equal length the higher-scoring one."""
        per_window = rows_in_order(chunks, len(windows))
        rows = np.unique(np.concatenate([windows.row[r] for r, _ in chunks])) if chunks else np.zeros(0, np.int64)
        merged = []
        for row in rows.tolist():
            first, count = int(windows.first[row]), int(windows.count[row])
            entities = [ent for w in range(first, first + count) for ent in per_window[w]]
            merged.append(aggregate_overlapping_entities(entities) if count > 1 else entities)
        return [(rows, merged)] if len(rows) else []

    def output_fields(self) -> list[pa.Field]:
        return [pa.field("entities", pa.list_(ENTITY_TYPE))]

    def to_arrays(self, chunks: list, num_rows: int) -> list[pa.Array]:
        # Entities are per-row Python by nature (transformers' aggregation walks the tokens).
        return [pa.array(rows_in_order(chunks, num_rows), type=pa.list_(ENTITY_TYPE))]
