"""word2vec: aiayn against gensim's compiled trainer, the same corpus and settings, in one run.

The corpus is the English of the shipped Bible corpora (King James and World English Bible, every
split of data/bible-kjv-web) plus tiny Shakespeare: ≈1.7M words, tokenized once by aiayn's tokenizer
for both. Both train with dimension 100, window 5, 5 negatives, min_count 5, sample 1e-3, 5 epochs,
α 0.025 → 0.0001, on 2 threads (gensim's workers; aiayn's ``--workers``). For each model (CBOW,
skip-gram) and seed: training words/s
(raw corpus words × epochs / training seconds; reading and vocabulary building not counted for
either), WordSim-353 and SimLex-999 Spearman, and analogy accuracy on the covered questions (the sets
gensim ships, scored by aiayn's evaluation for both). Writes benchmarks/results/word2vec_vs_gensim.json.

    python benchmarks/word2vec_vs_gensim.py             # 3 seeds (WordSim covers only ~90 pairs: noisy)
    python benchmarks/word2vec_vs_gensim.py --seeds 1 --models cbow
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


def run_aiayn(corpus: Path, model: str, seed: int, threads: int):
    from aiayn.config import Word2VecConfig
    from aiayn.word2vec import train_word2vec

    vectors, stats = train_word2vec(Word2VecConfig(input=[str(corpus)], out="-", model=model, seed=seed, workers=threads,
                                                   **SETTINGS))
    return vectors, stats["words_per_second"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--models", nargs="*", default=["cbow", "skipgram"])
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
            for impl in ("gensim", "aiayn"):
                runs = []
                for seed in range(1, args.seeds + 1):
                    vectors, wps = (run_gensim(corpus, model, seed, args.threads) if impl == "gensim"
                                    else run_aiayn(corpus, model, seed, args.threads))
                    runs.append({"seed": seed, "words_per_second": round(wps), **vectors.evaluate()})
                    r = runs[-1]
                    print(f"{model:>8} {impl:>6} seed {seed}: {wps:>11,.0f} words/s  WordSim-353 {r['wordsim353']:.4f}  "
                          f"SimLex-999 {r['simlex999']:.4f}  analogies {r['analogy_accuracy']:.4f}", flush=True)
                mean = {k: round(statistics.mean(r[k] for r in runs), 4)
                        for k in ("words_per_second", "wordsim353", "simlex999", "analogy_accuracy")}
                rows.append({"model": model, "implementation": impl, "mean": mean, "runs": runs})
    print(f"\n{'model':>8} {'':>6} {'words/s':>11} {'WS-353':>7} {'SL-999':>7} {'analogy':>7}   (means over {args.seeds} seeds)")
    summary = {}
    for model in args.models:
        g, a = (next(r["mean"] for r in rows if r["model"] == model and r["implementation"] == i) for i in ("gensim", "aiayn"))
        for name, m in (("gensim", g), ("aiayn", a)):
            print(f"{model:>8} {name:>6} {m['words_per_second']:>11,.0f} {m['wordsim353']:>7.4f} {m['simlex999']:>7.4f} "
                  f"{m['analogy_accuracy']:>7.4f}")
        summary[model] = {"speed_ratio": round(a["words_per_second"] / g["words_per_second"], 3),
                          **{f"{k}_difference": round(a[k] - g[k], 4) for k in ("wordsim353", "simlex999", "analogy_accuracy")}}
        s = summary[model]
        d = {k: s[f"{k}_difference"] for k in ("wordsim353", "simlex999", "analogy_accuracy")}
        print(f"{model:>8}  aiayn/gensim speed {s['speed_ratio']:.2f}×; aiayn − gensim: WordSim {d['wordsim353']:+.4f}, "
              f"SimLex {d['simlex999']:+.4f}, analogies {d['analogy_accuracy']:+.4f}")
    write_results("word2vec_vs_gensim", {"settings": SETTINGS, "threads": args.threads, "seeds": args.seeds,
                                         "summary": summary, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
