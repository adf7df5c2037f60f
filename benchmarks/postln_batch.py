"""The paper's 25,000-token batches with post-LN (configs/bible-es-en-paper.yaml) against the same recipe at the
shipped model's 2,500 tokens an update (configs/bible-es-en-postln.yaml; benchmarks/postln_recipe.py): dev
perplexity, dev BLEU and how far the encoder keeps its positions apart (benchmarks/encoder_collapse.py), at equal
updates and at equal data. Issue 17, item 6; docs/paper.md.

Both runs read the same batches in the same order (2,500 target tokens each; an update of the paper's recipe
is ten of them), so step s of the 25k run has seen the data of step 10·s of the 2.5k run (less the few batches
left over at each epoch's end). Both follow equation (3) with 4,000 warm-up steps: at equal updates their
learning rates are equal, at equal data the 2.5k run's is higher.

    aiayn train configs/bible-es-en-paper.yaml          # resumable; max_minutes is the total training time
    python benchmarks/encoder_collapse.py --run runs/bible-es-en-paper \\
        --out benchmarks/results/paper/encoder_collapse_25k.json --plot docs/img/encoder_collapse_25k.png
    python benchmarks/postln_batch.py                   # scores each checkpoint on the test split, writes the table
    python benchmarks/paper_docs.py                     # copies the table into docs/paper.md and docs/zh/paper.md

The pre-LN column is the shipped recipe (configs/bible-es-en.yaml: pre-LN, 1,000 warm-up steps to 1.2e-3, 2,500
tokens an update) retrained with its curve kept: benchmarks/results/paper/preln_curve.json (benchmarks/run_curve.py).
Test scores are of each checkpoint alone; one deleted since (train.keep_last) keeps the score the previous results
file holds for it.

Writes benchmarks/results/paper/postln_batch.{json,md} and docs/img/postln_batch.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, write_results  # noqa: E402
from run_curve import previous_tests, test_scores  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "paper"
ACCUMULATED = 10  # batches of 2,500 target tokens per update in the paper's recipe (update_freq)


def last_layer(collapse: dict) -> dict[int, float]:
    """{step: variance across positions after the last encoder layer} of an encoder_collapse.json (0 = init)."""
    return {r["step"]: r["variance"][-1] for r in collapse["rows"] if not r.get("compare")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "runs" / "bible-es-en-paper"))
    ap.add_argument("--collapse", default=str(RESULTS / "encoder_collapse_25k.json"))
    ap.add_argument("--baseline", default=str(RESULTS / "postln.json"), help="the 2.5k run's results")
    ap.add_argument("--baseline-collapse", default=str(RESULTS / "encoder_collapse.json"))
    ap.add_argument("--preln", default=str(RESULTS / "preln_curve.json"), help="the shipped pre-LN recipe's curve")
    ap.add_argument("--test", default=str(ROOT / "data" / "bible-es-en" / "test.tsv"))
    ap.add_argument("--out", default=str(RESULTS / "postln_batch.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "img" / "postln_batch.png"))
    args = ap.parse_args()

    import torch

    from aiayn.train.checkpoint import run_checkpoints
    from aiayn.train.optim import inverse_sqrt_lr
    from aiayn.viz import read_log

    torch.set_num_threads(2)
    print(f"CPU: {describe()}")
    run = Path(args.run)
    trains, eval_records = read_log(run)
    evals = {r["step"]: r for r in eval_records}
    ours = last_layer(json.loads(Path(args.collapse).read_text()))
    base = json.loads(Path(args.baseline).read_text())
    base_dev = {r["step"]: r for r in base["dev_curve"]}
    base_var = last_layer(json.loads(Path(args.baseline_collapse).read_text()))
    preln = json.loads(Path(args.preln).read_text())
    pre = {r["step"]: r for r in preln["rows"]}

    # Each checkpoint alone: checkpoints are 250 updates (half an hour) apart and the run is still warming up, so
    # an average of the last ones would mix very different models (the paper averaged the last 5 of checkpoints
    # written every 10 minutes, at the end of training).
    tests = test_scores(run, args.test, previous_tests(args.out, run))
    rows = []
    for step in sorted(set(evals) | set(ours) | set(tests)):
        r = evals.get(step, {})
        rows.append({"step": step, "lr": inverse_sqrt_lr(step, 256, 4000) if step else 0.0,
                     "minutes": round(r["time"] / 60) if r else None,
                     "dev_ppl": round(r["ppl"], 2) if r else None, "dev_bleu": r.get("val_bleu"),
                     "test": tests.get(step), "variance": ours.get(step),
                     "equal_updates": {"ppl": base_dev.get(step, {}).get("ppl"), "variance": base_var.get(step)},
                     "equal_data": {"step": step * ACCUMULATED, "ppl": base_dev.get(step * ACCUMULATED, {}).get("ppl"),
                                    "variance": base_var.get(step * ACCUMULATED)},
                     "preln_equal_updates": {"ppl": pre.get(step, {}).get("dev_ppl"),
                                             "test_bleu": (pre.get(step, {}).get("test") or {}).get("bleu")}})
    newest = run_checkpoints(run)[-1]
    last = int(newest.name.split("_")[1])
    meta = json.loads((newest / "config.json").read_text())  # training time and epoch at that update
    test = {"step": last, **tests[last]}
    rate = sum(r["tokens_per_s"] for r in trains[1:]) / max(1, len(trains) - 1)  # the first includes start-up
    record = write_results("postln_batch", {
        "run": f"runs/{run.name}", "updates": last, "minutes": round(meta["elapsed_seconds"] / 60),
        "epochs": meta["epoch"], "target_tokens_per_s": round(rate), "rows": rows, "test": test,
        "shipped_test_bleu": next(r["test"]["bleu"] for r in base["rows"] if r["model"].startswith("shipped")),
        "preln": {"results": "benchmarks/results/paper/preln_curve.json", "date": preln["date"],
                  "cpu": preln["machine"]["cpu"], "recipe": preln["recipe"]}},
        args.out)
    result = json.loads(record.read_text())
    record.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    plot(result, base, base_var, preln, args.plot)


def _f(x, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def markdown(r: dict) -> str:
    m, t, p = r["machine"], r["test"], r["preln"]
    lines = [f"Measured {r['date']} on {m['cpu']} ({m['cores']} cores), 2 threads: {r['updates']:,} updates of ≈ 25,000 "
             f"target tokens in {r['minutes']} minutes of training ({r['epochs']} epochs, ≈ {r['target_tokens_per_s']:,} "
             "target tokens/s). Dev: perplexity per word piece (teacher-forced, whole dev split) and greedy BLEU on its "
             "first 200 verses; variance: across positions after the last encoder layer (normalised vectors; 0.8 in the "
             "shipped pre-LN model); test: sacreBLEU of the checkpoint alone, beam 4, α = 0.6. The post-LN 2.5k run's "
             "figures are from benchmarks/results/paper/postln.json and encoder_collapse.json; the pre-LN column is the "
             f"shipped recipe retrained with its curve kept (benchmarks/results/paper/preln_curve.json, {p['date']}, "
             f"{p['cpu']}).", "",
             "| updates | lr | minutes | dev ppl | dev BLEU | test BLEU | variance "
             "| post-LN 2.5k, equal updates: ppl / variance | post-LN 2.5k, equal data: step, ppl / variance "
             "| pre-LN (shipped recipe), equal updates: ppl / test BLEU |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        eu, ed, pre = row["equal_updates"], row["equal_data"], row["preln_equal_updates"]
        lines.append(f"| {row['step']:,} | {row['lr']:.1e} | {_f(row['minutes'], 'd')} | {_f(row['dev_ppl'], '.1f')} | "
                     f"{_f(row['dev_bleu'], '.2f')} | {_f((row['test'] or {}).get('bleu'), '.2f')} | "
                     f"{_f(row['variance'], '.2g')} | {_f(eu['ppl'], '.1f')} / {_f(eu['variance'], '.2g')} | "
                     f"{ed['step']:,}: {_f(ed['ppl'], '.1f')} / {_f(ed['variance'], '.2g')} | "
                     f"{_f(pre['ppl'], '.1f')} / {_f(pre['test_bleu'], '.2f')} |")
    lines += ["", f"Test split, the last checkpoint (step {t['step']:,}; still in the warm-up, so not averaged), beam 4, "
                  f"α = 0.6: sacreBLEU **{t['bleu']:.2f}**, chrF2 {t['chrf']:.2f} (shipped pre-LN model, 6,007 "
                  f"updates: {r['shipped_test_bleu']:.2f})."]
    return "\n".join(lines) + "\n"


def plot(r: dict, base: dict, base_var: dict[int, float], preln: dict, path: str) -> None:
    """Dev perplexity, test BLEU and the last layer's variance against updates (the two post-LN runs have the same
    learning rate at the same update; the pre-LN recipe warms up over 1,000 updates to 1.2e-3)."""
    from matplotlib.ticker import NullFormatter

    from aiayn.viz import pyplot, save_figure

    plt = pyplot()
    fig, (a, t, b) = plt.subplots(1, 3, figsize=(14, 3.8))
    small, paper, pre = "post-LN, 2,500 tokens an update", "post-LN, 25,000 (the paper's)", "pre-LN, shipped recipe"
    dev = [(x["step"], x["dev_ppl"]) for x in r["rows"] if x["dev_ppl"] is not None]
    var = [(x["step"], x["variance"]) for x in r["rows"] if x["variance"] is not None and x["step"]]
    a.plot(*zip(*[(x["step"], x["ppl"]) for x in base["dev_curve"]]), "o-", ms=3, label=small)
    a.plot(*zip(*dev), "s-", ms=3, label=paper)
    a.plot(*zip(*[(x["step"], x["dev_ppl"]) for x in preln["rows"] if x["dev_ppl"] is not None]), "^-", ms=3,
           label=pre)
    t.plot(*zip(*[(x["step"], x["test"]["bleu"]) for x in r["rows"] if x["test"]]), "s-", ms=3, color="C1",
           label=paper)
    t.plot(*zip(*[(x["step"], x["test"]["bleu"]) for x in preln["rows"] if x["test"]]), "^-", ms=3, color="C2",
           label=pre)
    b.plot(*zip(*sorted((s, v) for s, v in base_var.items() if s)), "o-", ms=3, label=small)
    b.plot(*zip(*var), "s-", ms=3, label=paper)
    for ax, title, logy in ((a, "dev perplexity", True), (t, "test BLEU, each checkpoint alone", False),
                            (b, "variance across positions, last encoder layer", True)):
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("updates")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("post-LN with equation (3), warm-up 4,000 updates, at the paper's batch and a tenth of it; "
                 "pre-LN as shipped", fontsize=10)
    fig.tight_layout()
    print(f"plot: {save_figure(fig, path)}")


if __name__ == "__main__":
    main()
