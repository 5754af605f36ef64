"""Builders and ``torch.multiprocessing`` targets for the token-classification, embedding and
FSDP tests (no tests here): NER-like rows, embedding pairs, and two-rank gloo workers."""

from __future__ import annotations

import contextlib
import gc
import json
import random

import torch

PEOPLE = ["alice", "bob", "carol", "dave"]
PLACES = ["paris", "london", "berlin", "rome"]
FILLER = "the a went to saw with and then city house".split()


def ner_rows(n: int, seed: int) -> list[dict]:
    """Word lists with B-PER/B-LOC/I-LOC/O tags: names and places are recognisable by their words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(3, 6)):
            kind = rng.random()
            if kind < 0.25:
                words.append(rng.choice(PEOPLE)), tags.append("B-PER")
            elif kind < 0.45:
                words += [rng.choice(PLACES), "city"]
                tags += ["B-LOC", "I-LOC"]
            else:
                words.append(rng.choice(FILLER)), tags.append("O")
        rows.append({"tokens": words, "tags": tags})
    return rows


PAIR_WORDS = ("apple river stone cloud tiger piano rocket garden silver candle forest window "
              "dragon pencil ocean castle violin mirror desert lemon").split()


def pair_rows(n: int, seed: int, negatives: bool = False, words: tuple = tuple(PAIR_WORDS)) -> list[dict]:
    """(anchor, positive[, negative]): the positive restates the anchor's two words in another
    frame; the hard negative shares one of them. Learnable from word overlap by a tiny encoder."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b, c = rng.sample(list(words), 3)
        row = {"anchor": f"{a} {b}", "positive": f"the {b} and the {a}"}
        if negatives:
            row["negative"] = f"the {a} and the {c}"
        rows.append(row)
    return rows


def _spec(task: str, **kw):
    from test_train_helpers import worker_spec

    return worker_spec(task, **kw)


def gather_loss_worker(rank: int, world: int, init_file: str, model_dir: str, batch_file: str, result_dir: str) -> None:
    """One rank of a 2-process gloo group: embeds its half of a fixed batch, computes the
    MultipleNegativesRankingLoss against the gathered candidates, and writes its loss and the
    gradient of one weight (after DDP's averaging)."""
    import torch.distributed as dist

    from rayformers.jobs.embedding_training import EmbeddingSettings, step_loss
    from rayformers.models import AutoModel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        batch = torch.load(batch_file)
        rows = batch["rows"] // world
        mine = _rows_of(batch, rank, rows, world)
        model = AutoModel.from_pretrained(model_dir)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        loss = step_loss(ddp, mine, EmbeddingSettings(roles=batch["roles"]), rows, torch.device("cpu"))
        loss.backward()
        grad = model.embeddings.word_embeddings.weight.grad.sum(dim=1)
        with open(f"{result_dir}/rank{rank}.json", "w") as f:
            json.dump({"loss": float(loss), "grad": grad.tolist()}, f)
        del ddp
        dist.barrier()
    finally:
        gc.collect()
        dist.destroy_process_group()


def _rows_of(batch: dict, rank: int, rows: int, world: int) -> dict:
    """This rank's slice of a stacked [roles x B] batch (anchors, positives, negatives)."""
    total = batch["rows"]
    index = torch.cat([torch.arange(r * total + rank * rows, r * total + (rank + 1) * rows) for r in range(batch["roles"])])
    return {"input_ids": batch["input_ids"][index], "attention_mask": batch["attention_mask"][index]}


def strategy_worker(rank: int, world: int, init_file: str, model_dir: str, result_dir: str, variants: list) -> None:
    """One rank of a 2-process gloo group: the same three accumulated token-classification steps
    under each variant (strategy, param dtype, gradient checkpointing); writes the step losses,
    the full state dict's checksum, and this rank's peak RSS."""
    import torch.distributed as dist

    from rayformers.jobs import strategies
    from rayformers.jobs.train_loop import EvalBatches, _optimizer_step, _wrap_model, evaluate, lr_lambda, make_optimizer
    from rayformers.models import AutoModelForTokenClassification

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    out = {}
    try:
        device = torch.device("cpu")
        torch.manual_seed(100 + rank)  # each rank its own rows
        ids = torch.randint(1000, 2000, (4, 7))
        labels = torch.randint(0, 3, (4, 7))
        labels[:, 0] = -100
        labels[0, 5:] = -100
        batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}] * 2
        for name, strategy, dtype, checkpointing in variants:
            model = AutoModelForTokenClassification.from_pretrained(model_dir)
            model.train()
            spec = _spec("token-classify", world_size=world, strategy=strategy, fsdp_param_dtype=dtype,
                         gradient_checkpointing=checkpointing, learning_rate=1e-2, metric_kind="token_classification",
                         label_kwargs={"id2label": {0: "O", 1: "B-X", 2: "I-X"}})
            wrapped = _wrap_model(model, spec, device, world, rank, torch.nn.parallel.DistributedDataParallel)
            optimizer = make_optimizer(model, spec)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("constant", 0, 1))
            losses = [float(_optimizer_step(wrapped, model, optimizer, scheduler, batches, spec,
                                            contextlib.nullcontext(), world, device)) for _ in range(3)]
            # uneven eval shards: rank 0 has two batches, rank 1 one (FSDP must stay in step)
            metrics = evaluate(model, spec, None, EvalBatches(lambda: iter(batches[: 2 - rank]), device), device)
            state = strategies.full_model_state(model)
            if state is None:
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            checksum = float(sum(v.double().sum() for v in state.values())) if state else None
            out[name] = {"losses": losses, "checksum": checksum, "eval": metrics, "sharded": strategies.is_sharded(model),
                         "dtype": str(strategies.fsdp_param_dtype(dtype, device))}
            del wrapped
            gc.collect()
        out["memory"] = strategies.memory_metrics(device)
        dist.barrier()
    finally:
        gc.collect()
        dist.destroy_process_group()
    with open(f"{result_dir}/rank{rank}.json", "w") as f:
        json.dump(out, f)
