"""word2vec: aiayn against gensim's compiled trainer, the same corpus and settings, in one run.

The corpus is the English of the shipped Bible corpora (King James and World English Bible, every
split of data/bible-kjv-web) plus tiny Shakespeare: ≈1.7M words, tokenized once by aiayn's tokenizer
for both. Both train with dimension 100, window 5, 5 negatives, min_count 5, sample 1e-3, 5 epochs,
α 0.025 → 0.0001, on 2 threads (gensim's workers; aiayn's ``--workers``). For each model (CBOW,
skip-gram) and seed: training words/s
(raw corpus words × epochs / training seconds; reading and vocabulary building not counted for
either), WordSim-353 and SimLex-999 Spearman, and analogy accuracy on the covered questions (the sets
gensim ships, scored by aiayn's evaluation for both). aiayn runs twice: its default engine (numba, one
prediction at a time, compiled; the kernels are compiled before the clock starts, as gensim's were at
installation) and its PyTorch engine (batched updates). Writes benchmarks/results/word2vec_vs_gensim.json.

    python benchmarks/word2vec_vs_gensim.py             # 3 seeds (WordSim covers only ~90 pairs: noisy)
    python benchmarks/word2vec_vs_gensim.py --seeds 1 --models cbow --implementations gensim aiayn
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import describe, write_results  # noqa: E402

SETTINGS = dict(dim=100, window=5, negative=5, min_count=5, sample=1e-3, epochs=5, alpha=0.025, min_alpha=0.0001)


def build_corpus(path: Path) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for split in ("train", "dev", "test"):
            for line in (ROOT / "data" / "bible-kjv-web" / f"{split}.tsv").read_text(encoding="utf-8").splitlines():
                _, kjv, web = line.split("\t")
                out.write(kjv + "\n" + web + "\n")
        out.write((ROOT / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8"))


def run_gensim(corpus: Path, model: str, seed: int, threads: int):
    from gensim.models import Word2Vec

    from aiayn.word2vec import WordVectors, read_corpus

    sentences = list(read_corpus([str(corpus)]))
    s = SETTINGS
    w2v = Word2Vec(vector_size=s["dim"], window=s["window"], negative=s["negative"], min_count=s["min_count"],
                   sample=s["sample"], epochs=s["epochs"], alpha=s["alpha"], min_alpha=s["min_alpha"],
                   sg=1 if model == "skipgram" else 0, workers=threads, seed=seed)
    w2v.build_vocab(sentences)
    start = time.perf_counter()
    w2v.train(sentences, total_examples=w2v.corpus_count, epochs=w2v.epochs)
    seconds = time.perf_counter() - start
    words = sum(len(x) for x in sentences)
    vectors = WordVectors(list(w2v.wv.index_to_key), w2v.wv.vectors)
    return vectors, words * s["epochs"] / seconds


def run_aiayn(corpus: Path, model: str, seed: int, threads: int, engine: str):
    from aiayn.config import Word2VecConfig
    from aiayn.word2vec import train_word2vec

    vectors, stats = train_word2vec(Word2VecConfig(input=[str(corpus)], out="-", model=model, seed=seed, workers=threads,
                                                   engine=engine, **SETTINGS))
    return vectors, stats["words_per_second"]


IMPLEMENTATIONS = {"gensim": "gensim 4.x, compiled (Cython + BLAS)",
                   "aiayn": "aiayn --engine numba: one prediction at a time, compiled by Numba",
                   "aiayn-torch": "aiayn --engine torch: batched updates on PyTorch tensors"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--models", nargs="*", default=["cbow", "skipgram"])
    ap.add_argument("--implementations", nargs="*", default=list(IMPLEMENTATIONS), choices=list(IMPLEMENTATIONS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "word2vec_vs_gensim.json"))
    args = ap.parse_args()

    from aiayn.runtime import configure_process

    configure_process(args.threads)
    print(f"machine: {describe()}; {args.threads} threads for both")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        build_corpus(corpus)
        for model in args.models:
            for impl in args.implementations:
                runs = []
                for seed in range(1, args.seeds + 1):
                    vectors, wps = (run_gensim(corpus, model, seed, args.threads) if impl == "gensim" else
                                    run_aiayn(corpus, model, seed, args.threads, "torch" if impl == "aiayn-torch" else "numba"))
                    runs.append({"seed": seed, "words_per_second": round(wps), **vectors.evaluate()})
                    r = runs[-1]
                    print(f"{model:>8} {impl:>11} seed {seed}: {wps:>11,.0f} words/s  WordSim-353 {r['wordsim353']:.4f}  "
                          f"SimLex-999 {r['simlex999']:.4f}  analogies {r['analogy_accuracy']:.4f}", flush=True)
                mean = {k: round(statistics.mean(r[k] for r in runs), 4)
                        for k in ("words_per_second", "wordsim353", "simlex999", "analogy_accuracy")}
                rows.append({"model": model, "implementation": impl, "mean": mean, "runs": runs})
    print(f"\n{'model':>8} {'':>11} {'words/s':>11} {'WS-353':>7} {'SL-999':>7} {'analogy':>7}   (means over {args.seeds} seeds)")
    summary: dict = {}
    for model in args.models:
        mean = {r["implementation"]: r["mean"] for r in rows if r["model"] == model}
        for name, m in mean.items():
            print(f"{model:>8} {name:>11} {m['words_per_second']:>11,.0f} {m['wordsim353']:>7.4f} {m['simlex999']:>7.4f} "
                  f"{m['analogy_accuracy']:>7.4f}")
        g = mean.get("gensim")
        for name, a in mean.items():
            if name == "gensim" or g is None:
                continue
            s = {"speed_ratio": round(a["words_per_second"] / g["words_per_second"], 3),
                 **{f"{k}_difference": round(a[k] - g[k], 4) for k in ("wordsim353", "simlex999", "analogy_accuracy")}}
            summary.setdefault(model, {})[name] = s
            print(f"{model:>8}  {name}/gensim speed {s['speed_ratio']:.2f}×; {name} − gensim: WordSim "
                  f"{s['wordsim353_difference']:+.4f}, SimLex {s['simlex999_difference']:+.4f}, "
                  f"analogies {s['analogy_accuracy_difference']:+.4f}")
    write_results("word2vec_vs_gensim", {"settings": SETTINGS, "threads": args.threads, "seeds": args.seeds,
                                         "implementations": {k: IMPLEMENTATIONS[k] for k in args.implementations},
                                         "summary": summary, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
