"""Translation quality per CPU-minute: train aiayn's best recipe for a fixed wall-clock budget on
the Spanish→English Bible corpus, average the last checkpoints, and report test sacreBLEU.

    python benchmarks/mt_budget.py --minutes 30            # the issue's budget
    python benchmarks/mt_budget.py --minutes 2 --out /tmp/b # a quick look

The recipe is configs/bible-es-en-30min.yaml (4 + 2 layers, pre-LN, cosine decay over the budget);
only the time budget and the checkpoint spacing change. The last line is one JSON object with ``bleu``,
``chrf``, ``minutes``, ``steps``.
The Hugging Face MarianMTModel baseline of the same size reached 28.6 sacreBLEU in 30 minutes on
this machine (measured outside this script; see docs/results.md), printed as a reference ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HF_MARIAN_30MIN_BLEU = 28.6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--config", default=str(ROOT / "configs" / "bible-es-en-30min.yaml"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "mt_budget"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--average", type=int, default=5, help="checkpoints averaged at the end")
    args = ap.parse_args()

    import logging

    import torch

    from aiayn.data.prepare import PrepareConfig, prepare
    from aiayn.evaluate import evaluate_translation
    from aiayn.train.checkpoint import average_checkpoints, load_model_dir
    from aiayn.train.loop import load_run_config, train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = out / "data"
    d = ROOT / "data" / "bible-es-en"
    prepare(PrepareConfig(train=str(d / "train.tsv"), dev=str(d / "dev.tsv"), test=str(d / "test.tsv"), out=str(data),
                          vocab_size=8000))
    # Checkpoints every ~1/20 of the budget, so that the last few span its final quarter.
    run = load_run_config(args.config, {"train": {"data": str(data), "out": str(out / "run"), "max_minutes": args.minutes,
                                                  "threads": args.threads, "keep_last": args.average,
                                                  "save_every": 10**9, "eval_every": 10**9}})
    run.train.save_every = max(25, int(args.minutes * 60 / 0.5 / 30))  # ≈ 0.5 s per step on 2 cores
    result = train(run)
    ckpts = sorted((out / "run" / "checkpoints").glob("step_*"))[-args.average :]
    model_dir = average_checkpoints(ckpts, out / "averaged")
    model, vocab, _ = load_model_dir(model_dir)
    scores, _ = evaluate_translation(model, vocab, d / "test.tsv")
    print(f"aiayn, {args.minutes:g} min on {args.threads} threads: {result['step']} steps, average of {len(ckpts)} checkpoints")
    print(f"test sacreBLEU {scores['bleu']:.2f}  chrF {scores['chrf']:.2f}  ({scores['signature']})")
    if args.minutes == 30:
        print(f"ratio to HF Marian in 30 min ({HF_MARIAN_30MIN_BLEU}): {scores['bleu'] / HF_MARIAN_30MIN_BLEU:.2f}x")
    print(json.dumps({"bleu": scores["bleu"], "chrf": scores["chrf"], "minutes": args.minutes, "steps": result["step"],
                      "signature": scores["signature"]}))


if __name__ == "__main__":
    main()
