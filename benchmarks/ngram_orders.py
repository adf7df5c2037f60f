"""Kneser-Ney n-gram language models of every order on character-level tiny Shakespeare: counting
time, model size and the full validation loss (the last 10 % of the text, every character predicted
once, by the same rule as the Transformer LMs of docs/lm.md). Writes benchmarks/results/ngram_orders.json.

    python benchmarks/ngram_orders.py                 # orders 1 … 8
    python benchmarks/ngram_orders.py --orders 2 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import describe, write_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, nargs="*", default=list(range(1, 9)))
    ap.add_argument("--text", default=str(ROOT / "data" / "tinyshakespeare" / "input.txt"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ngram_orders.json"))
    args = ap.parse_args()

    import numpy as np

    from aiayn.config import ModelConfig
    from aiayn.data.prepare import PrepareConfig, prepare
    from aiayn.evaluate import lm_loss
    from aiayn.model import build_model
    from aiayn.runtime import configure_process

    configure_process(2)
    print(f"machine: {describe()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prepare(PrepareConfig(train=args.text, out=f"{tmp}/data", kind="lm", vocab="char"))
        train = np.load(f"{tmp}/data/train.tokens.npy")
        valid = np.load(f"{tmp}/data/valid.tokens.npy")
        vocab_size = int(max(train.max(), valid.max())) + 1
        print(f"{len(train):,} training and {len(valid):,} validation characters\n")
        print(f"{'order':>5} {'count s':>8} {'n-grams':>11} {'val loss':>9} {'ppl':>7} {'eval s':>7}")
        for n in args.orders:
            start = time.perf_counter()
            model = build_model(ModelConfig(arch="ngram", order=n, vocab_size=vocab_size, max_positions=1024)).fit(train)
            counted = time.perf_counter() - start
            start = time.perf_counter()
            res = lm_loss(model, valid, 1024)
            scored = time.perf_counter() - start
            grams = sum(getattr(model, f"keys{m}").numel() for m in range(1, n + 1))
            rows.append({"order": n, "count_seconds": round(counted, 2), "ngrams": grams,
                         "val_loss": round(res["val_loss"], 4), "ppl": round(res["ppl"], 3),
                         "eval_seconds": round(scored, 2), "discounts": [round(d, 3) for d in model.discounts.tolist()]})
            print(f"{n:>5} {counted:>8.2f} {grams:>11,} {res['val_loss']:>9.4f} {res['ppl']:>7.3f} {scored:>7.2f}")
    write_results("ngram_orders", {"text": "tinyshakespeare (char, last 10 % = validation)", "rows": rows}, args.out)


if __name__ == "__main__":
    main()
