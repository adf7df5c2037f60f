"""The lineage's language-model ladder: every step on character-level tiny Shakespeare, each given the
same wall-clock budget of training, then scored on the whole validation split (the last 10 %, every
character predicted once in windows of the model's block, the rule of docs/lm.md):

    bigram and Kneser-Ney 5-gram (counted: seconds, whatever the budget), Bengio's MLP
    (configs/shakespeare-mlp.yaml), a 2-layer LSTM (configs/shakespeare-lstm.yaml) and the Transformer
    (configs/shakespeare-char-10min.yaml), each with its recipe's budget replaced by --minutes.

    python benchmarks/lineage.py                   # 10 minutes per trained model (about 35 minutes)
    python benchmarks/lineage.py --minutes 2       # a quick look

Writes benchmarks/results/lineage_lm.json and docs/img/lineage_lm.png (validation loss on the first
20,000 validation characters against training minutes, one line per model; the final full-split
figure is the table's).

``--ladder mt``: translation on Bible es→en with the same budget each (default 30 minutes) for
Sutskever's LSTM encoder-decoder (configs/bible-es-en-rnn-seq2seq.yaml), Bahdanau's RNNsearch
(configs/bible-es-en-rnnsearch.yaml) and the Transformer (configs/bible-es-en-30min.yaml): the last
5 checkpoints averaged, then test sacreBLEU and chrF with the paper's search (beam 4, α 0.6), steps,
target tokens/s and training FLOPs estimated as 6 × parameters × tokens (source + target).
Writes benchmarks/results/lineage_mt.json.
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

from machine import describe, write_results  # noqa: E402

TRAINED = {"mlp": "shakespeare-mlp.yaml", "lstm": "shakespeare-lstm.yaml", "transformer": "shakespeare-char-10min.yaml"}
TRANSLATORS = {"rnn-seq2seq": "bible-es-en-rnn-seq2seq.yaml", "rnnsearch": "bible-es-en-rnnsearch.yaml",
               "transformer": "bible-es-en-30min.yaml"}


def throughput(log: list[dict], save_every: int) -> float:
    """Target tokens per second of training: the median of the logged windows' rates, leaving out windows
    with a checkpoint save in them (until 2026-12-07 the trainer's rate of such a window counted the tokens
    of the whole window over the time since the save: too high)."""
    import numpy as np

    train = [r for r in log if r["kind"] == "train"]
    rates = [r["tokens_per_s"] for prev, r in zip(train, train[1:]) if r["step"] // save_every == prev["step"] // save_every]
    return float(np.median(rates or [r["tokens_per_s"] for r in train]))


def mt_ladder(args) -> None:
    import numpy as np

    from aiayn.data.batching import ParallelData
    from aiayn.data.prepare import PrepareConfig, prepare
    from aiayn.evaluate import evaluate_translation
    from aiayn.model import count_parameters
    from aiayn.train.checkpoint import average_checkpoints, load_model_dir
    from aiayn.train.loop import load_run_config, train

    minutes = args.minutes if args.minutes_given else 30.0
    print(f"machine: {describe()}; {args.threads} threads; {minutes:g} minutes of training per model")
    work = Path(args.work) / "mt"
    d = ROOT / "data" / "bible-es-en"
    data = work / "data"
    prepare(PrepareConfig(train=str(d / "train.tsv"), dev=str(d / "dev.tsv"), test=str(d / "test.tsv"), out=str(data),
                          vocab_size=8000))
    train_data = ParallelData(data, "train")
    tokens_per_epoch = int(np.asarray(train_data.src_lens).sum() + np.asarray(train_data.tgt_lens).sum())
    rows = []
    for name in args.models or list(TRANSLATORS):
        out = work / name
        if out.exists():
            shutil.rmtree(out)
        run = load_run_config(ROOT / "configs" / TRANSLATORS[name], {"train": {
            "data": str(data), "out": str(out / "run"), "max_minutes": minutes, "threads": args.threads, "keep_last": 5,
            "save_every": 10**9, "eval_every": 10**9}})
        run.train.save_every = max(25, int(minutes * 60 / 0.5 / 30))
        result = train(run)
        ckpts = sorted((out / "run" / "checkpoints").glob("step_*"))[-5:]
        model, vocab, _ = load_model_dir(average_checkpoints(ckpts, out / "averaged"))
        scores, _ = evaluate_translation(model, vocab, d / "test.tsv")
        log = [json.loads(line) for line in (out / "run" / "log.jsonl").read_text().splitlines()]
        tgt_tokens_per_s = throughput(log, run.train.save_every)
        epochs = tgt_tokens_per_s * result["elapsed"] / max(1, int(np.asarray(train_data.tgt_lens).sum()))
        params = count_parameters(model)
        row = {"model": name, "bleu": round(scores["bleu"], 2), "chrf": round(scores["chrf"], 2), "steps": result["step"],
               "train_seconds": round(result["elapsed"], 1), "parameters": params,
               "target_tokens_per_second": round(tgt_tokens_per_s), "epochs_approx": round(epochs, 2),
               "train_flops_estimate": float(f"{6 * params * tokens_per_epoch * epochs:.3g}"), "signature": scores["signature"]}
        rows.append(row)
        print(f"{name:>12}: test BLEU {row['bleu']:.2f}  chrF {row['chrf']:.2f}  {row['steps']:,} steps  "
              f"{row['target_tokens_per_second']:,} target tokens/s  {params:,} parameters", flush=True)
    path = Path(args.out).with_name("lineage_mt.json")
    if args.models and path.is_file():  # a run of some models replaces their rows and keeps the others'
        old = json.loads(path.read_text())
        if old.get("minutes") == minutes and old.get("machine", {}).get("cpu") == describe().split(" (")[0]:
            done = {r["model"] for r in rows}
            rows = [r for r in old["rows"] if r["model"] not in done] + rows
            rows.sort(key=lambda r: list(TRANSLATORS).index(r["model"]))
    write_results("lineage_mt", {"minutes": minutes, "threads": args.threads, "rows": rows}, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ladder", choices=["lm", "mt"], default="lm")
    ap.add_argument("--minutes", type=float, default=None, help="per model (default 10 for lm, 30 for mt)")
    ap.add_argument("--models", nargs="*", default=None, help="lm: bigram kn5 mlp lstm transformer; "
                    "mt: rnn-seq2seq rnnsearch transformer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(ROOT / "runs" / "lineage"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lineage_lm.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "img" / "lineage_lm.png"))
    args = ap.parse_args()
    args.minutes_given = args.minutes is not None
    if args.ladder == "mt":
        from aiayn.runtime import configure_process

        configure_process(args.threads)
        return mt_ladder(args)
    args.minutes = args.minutes if args.minutes_given else 10.0
    args.models = args.models or ["bigram", "kn5", *TRAINED]

    import logging

    import numpy as np

    from aiayn.data.prepare import PrepareConfig, prepare
    from aiayn.evaluate import lm_loss
    from aiayn.model import count_parameters
    from aiayn.runtime import configure_process
    from aiayn.train.loop import Trainer, load_run_config, train

    logging.basicConfig(level=logging.WARNING)
    configure_process(args.threads)
    print(f"machine: {describe()}; {args.threads} threads; {args.minutes:g} minutes of training per trained model")
    work = Path(args.work)
    data = work / "data"
    prepare(PrepareConfig(train=str(ROOT / "data" / "tinyshakespeare" / "input.txt"), out=str(data), kind="lm", vocab="char"))
    valid = np.load(data / "valid.tokens.npy")
    rows, curves = [], {}
    for name in args.models:
        out = work / name
        if out.exists():
            shutil.rmtree(out)  # a budget run starts from scratch
        start = time.perf_counter()
        if name in ("bigram", "kn5"):
            run = load_run_config(None, {"model": {"preset": "kn5", "order": 2 if name == "bigram" else 5},
                                         "train": {"data": str(data), "out": str(out)}})
            result = train(run)
            row = {"model": name, "val_loss": round(result["val_loss"], 4), "steps": 1,
                   "train_seconds": round(result["elapsed"], 1), "parameters": 0, "tokens_per_second": None}
        else:
            run = load_run_config(ROOT / "configs" / TRAINED[name], {"train": {
                "data": str(data), "out": str(out), "max_minutes": args.minutes, "max_steps": 0, "threads": args.threads,
                "eval_lm_tokens": 20000, "save_every": 10**9, "keep_last": 1}})
            trainer = Trainer(run, resume=False)
            result = trainer.fit()
            res = lm_loss(trainer.model, valid, trainer.feed.block)
            log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            curves[name] = [(r["time"] / 60, r["val_loss"]) for r in log if r["kind"] == "eval"]
            tokens = result["step"] * run.train.batch_size * trainer.feed.block * run.train.update_freq
            row = {"model": name, "val_loss": round(res["val_loss"], 4), "steps": result["step"],
                   "train_seconds": round(result["elapsed"], 1), "parameters": count_parameters(trainer.model),
                   "tokens_per_second": round(tokens / result["elapsed"])}
            trainer.procs.end()
        row["wall_seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(f"{name:>12}: validation loss {row['val_loss']:.4f} nats/char, {row['steps']:,} steps, "
              f"{row['train_seconds']:.0f} s of training, {row['parameters']:,} parameters", flush=True)

    from aiayn.viz import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    for i, (name, pts) in enumerate(curves.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=2.5, label=name, color=f"C{i + 2}")
    for i, row in enumerate(r for r in rows if r["model"] in ("bigram", "kn5")):
        label = f"{row['model']} (counted in {row['train_seconds']:.1f} s)"
        ax.axhline(row["val_loss"], ls="--", lw=1, color=f"C{i}", label=label)
    ax.set_xlabel("training minutes")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title(f"tiny Shakespeare, {args.minutes:g} minutes each ({describe().split(' (')[0]}, {args.threads} threads)")
    ax.set_ylim(1.3, 2.7)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, args.plot)
    print(f"plot: {args.plot}")
    write_results("lineage_lm", {"minutes": args.minutes, "threads": args.threads, "rows": rows,
                                 "curves": {k: [[round(a, 3), round(b, 4)] for a, b in v] for k, v in curves.items()}},
                  args.out)


if __name__ == "__main__":
    main()
