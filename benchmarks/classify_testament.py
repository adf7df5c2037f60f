"""Sentence classification with an encoder-only model, on the shipped Bible corpus: is an English verse
(World English Bible) from the Old or the New Testament? The label comes from the verse's book.

Three systems, each on the same data and the same number of fine-tuning minutes:

* the majority class (what a classifier must beat);
* an encoder trained on the labels from scratch;
* the same encoder first pretrained by masked-token prediction (BERT) on the English side of the training
  split, then fine-tuned (``train.init_from``: a fresh classification head).

Both fine-tunings use the same recipe (cosine schedule from ``--lr``, 50 warm-up steps, batches of 2,048
tokens, no label smoothing); the pretraining minutes come on top of the pretrained system's budget.

    python benchmarks/classify_testament.py                       # 6 min pretraining, 3 min fine-tuning
    python benchmarks/classify_testament.py --pretrain-minutes 1 --finetune-minutes 1 --out runs/ct-quick

Writes benchmarks/results/classify_testament.json (docs/lm.md quotes it); the CPU is printed and recorded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NEW_TESTAMENT = {"Matt", "Mark", "Luke", "John", "Acts", "Rom", "1Cor", "2Cor", "Gal", "Eph", "Phil", "Col", "1Thess",
                 "2Thess", "1Tim", "2Tim", "Titus", "Phlm", "Heb", "Jas", "1Pet", "2Pet", "1John", "2John", "3John",
                 "Jude", "Rev"}


def write_split(src: Path, out: Path) -> dict[str, int]:
    """verse id, Spanish, English → ``English<TAB>old|new``; returns the label counts."""
    counts = {"old": 0, "new": 0}
    with open(src, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as g:
        for line in f:
            ref, _, english = line.rstrip("\n").split("\t")
            label = "new" if ref.split(".")[0] in NEW_TESTAMENT else "old"
            counts[label] += 1
            g.write(f"{english}\t{label}\n")
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-minutes", type=float, default=6.0)
    ap.add_argument("--finetune-minutes", type=float, default=3.0)
    ap.add_argument("--out", default=str(ROOT / "runs" / "classify_testament"))
    ap.add_argument("--lr", type=float, default=5e-4, help="fine-tuning's peak learning rate (both systems)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "classify_testament.json"))
    args = ap.parse_args()

    import logging

    from machine import describe, write_results

    import aiayn

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    print(f"CPU: {describe()}")
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)  # a budget comparison starts from scratch
    out.mkdir(parents=True)
    data = ROOT / "data" / "bible-es-en"
    counts = {s: write_split(data / f"{s}.tsv", out / f"{s}.tsv") for s in ("train", "dev", "test")}
    (out / "english.txt").write_text("".join(line.split("\t")[0] + "\n" for line in (out / "train.tsv").read_text().splitlines()))
    aiayn.prepare(train=str(out / "english.txt"), out=str(out / "lm"), kind="lm", vocab_size=4000)
    encoder = {"preset": "encoder-small", "d_model": 256, "d_ff": 1024, "n_heads": 4, "n_encoder_layers": 4,
               "max_positions": 128, "norm": "pre", "activation": "gelu", "dropout": 0.1}
    t0 = time.perf_counter()
    pre = aiayn.fit(model=encoder, train={
        "data": str(out / "lm"), "out": str(out / "pretrain"), "max_minutes": args.pretrain_minutes, "max_steps": 0,
        "batch_size": 32, "block_size": 128, "lr_schedule": "cosine", "lr": 1e-3, "warmup": 100, "label_smoothing": 0.0,
        "threads": args.threads, "eval_every": 10**9, "save_every": 10**9})
    pretrain_s = time.perf_counter() - t0
    pretrained = out / "pretrain" / "checkpoints" / f"step_{pre['step']:07d}"
    aiayn.prepare(train=str(out / "train.tsv"), dev=str(out / "dev.tsv"), test=str(out / "test.tsv"),
                  out=str(out / "data"), kind="classify", vocab_from=str(pretrained))

    finetune = {"data": str(out / "data"), "max_minutes": args.finetune_minutes, "max_steps": 0, "max_tokens": 2048,
                "lr_schedule": "cosine", "warmup": 50, "label_smoothing": 0.0, "threads": args.threads,
                "eval_every": 10**9, "save_every": 10**9}
    systems: dict[str, dict] = {}
    for name, extra, model in [
        ("from scratch", {"lr": args.lr}, encoder),
        ("pretrained (masked tokens), fine-tuned", {"lr": args.lr, "init_from": str(pretrained)}, None),
    ]:
        run = out / name.split(" ")[0]
        t0 = time.perf_counter()
        res = aiayn.fit(model=model or {}, train={**finetune, **extra, "out": str(run)}) if model else \
            aiayn.fit(train={**finetune, **extra, "out": str(run)})
        seconds = time.perf_counter() - t0
        clf = aiayn.load(run / "checkpoints" / f"step_{res['step']:07d}", device="cpu")
        test = clf.evaluate(out / "test.tsv")
        systems[name] = {"steps": res["step"], "seconds": round(seconds, 1), "dev_accuracy": round(res["val_acc"], 4),
                         "test_accuracy": round(test["accuracy"], 4), "test_per_label": test["per_label"]}
        print(f"{name}: {res['step']} steps in {seconds:.0f} s; dev accuracy {res['val_acc']:.4f}, "
              f"test accuracy {test['accuracy']:.4f} {test['per_label']}")
    majority = max(counts["test"].values()) / sum(counts["test"].values())
    print(f"majority class ('old'): test accuracy {majority:.4f}")
    results = {"task": "English verse (WEB) → Old or New Testament", "counts": counts,
               "pretrain": {"minutes": args.pretrain_minutes, "steps": pre["step"], "seconds": round(pretrain_s, 1),
                            "mlm_val_loss": round(pre.get("val_loss", float("nan")), 4)},
               "finetune_minutes": args.finetune_minutes, "finetune_lr": args.lr,
               "majority_test_accuracy": round(majority, 4), "systems": systems,
               "command": "python benchmarks/classify_testament.py " + " ".join(sys.argv[1:])}
    write_results("classify_testament", results, args.results)
    print(json.dumps({k: v["test_accuracy"] for k, v in systems.items()}))


if __name__ == "__main__":
    main()
