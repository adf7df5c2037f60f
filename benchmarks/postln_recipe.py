"""The paper's post-LN and its schedule against the shipped pre-LN model (issue 17, item 6; docs/paper.md): test
scores at equal updates and at equal training time, dev curves from the run's log, and whether the encoder keeps
its positions apart (benchmarks/encoder_collapse.py). Writes benchmarks/results/paper/postln.{json,md}.

    aiayn train configs/bible-es-en-postln.yaml         # 80 minutes of training time, resumable
    python benchmarks/encoder_collapse.py --run runs/bible-es-en-postln --compare models/bible-es-en
    python benchmarks/postln_recipe.py                  # averages, scores the test split (beam 4), writes the table
    python benchmarks/paper_docs.py                     # copies the table into docs/paper.md and docs/zh/paper.md
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "runs" / "bible-es-en-postln"))
    ap.add_argument("--shipped", default=str(ROOT / "models" / "bible-es-en"))
    ap.add_argument("--test", default=str(ROOT / "data" / "bible-es-en" / "test.tsv"))
    ap.add_argument("--equal-updates", type=int, default=6000, help="the step closest to the shipped model's 6,007")
    ap.add_argument("--collapse", default=str(ROOT / "benchmarks" / "results" / "paper" / "encoder_collapse.json"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "paper" / "postln.json"))
    args = ap.parse_args()

    import torch

    from aiayn.config import DecodeConfig
    from aiayn.evaluate import evaluate_translation
    from aiayn.train.checkpoint import average_checkpoints, load_model_dir, run_checkpoints

    torch.set_num_threads(2)
    print(f"CPU: {describe()}")
    run = Path(args.run)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    evals = {r["step"]: r for r in log if r.get("kind") == "eval"}
    steps = {int(p.name.split("_")[1]): p for p in run_checkpoints(run)}
    last = max(steps)
    n = args.equal_updates
    equal = [s for s in sorted(steps) if n - 2000 <= s <= n and s % 500 == 0]  # as the shipped: 5 over 2,000 steps
    final = sorted(steps)[-5:]

    def score(directory: Path) -> dict:
        model, vocab, _ = load_model_dir(directory)
        scores, _ = evaluate_translation(model, vocab, args.test, DecodeConfig())
        print(f"{directory}: test BLEU {scores['bleu']:.2f}, chrF2 {scores['chrf']:.2f}")
        return {"bleu": round(scores["bleu"], 2), "chrf": round(scores["chrf"], 2)}

    rows = []
    shipped = json.loads((Path(args.shipped) / "config.json").read_text())
    m = shipped["metrics"]
    rows.append({"model": "shipped (pre-LN, warm-up 1,000 steps to 1.2e-3)", "updates": shipped["step"],
                 "minutes": round(shipped["elapsed_seconds"] / 60), "dev_ppl": round(m["dev_ppl"], 2),
                 "dev_bleu": m["dev_bleu"], "test": score(Path(args.shipped)), "averaged": len(shipped["averaged"])})
    for label, averaged, step in (("post-LN, warm-up 4,000 steps to 9.9e-4: equal updates", equal, n),
                                  ("post-LN, warm-up 4,000 steps to 9.9e-4: equal time", final, last)):
        avg = average_checkpoints([steps[s] for s in averaged], run / f"averaged-{step}", overwrite=True)
        rows.append({"model": label, "updates": step, "minutes": round(evals[step]["time"] / 60),
                     "dev_ppl": round(evals[step]["ppl"], 2), "dev_bleu": evals[step]["val_bleu"],
                     "test": score(avg), "test_last_alone": score(steps[step]), "averaged": len(averaged),
                     "averaged_steps": averaged})
    collapse = json.loads(Path(args.collapse).read_text())["rows"]
    last_layer = {r["name"]: r["variance"][-1] for r in collapse}
    curve = [{"step": s, "ppl": round(r["ppl"], 2), "bleu": r["val_bleu"]} for s, r in sorted(evals.items())]
    record = write_results("postln_recipe", {"run": f"runs/{run.name}", "rows": rows, "dev_curve": curve,
                                             "last_encoder_layer_variance": last_layer}, args.out)
    table = markdown(json.loads(record.read_text()))
    record.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Measured {r['date']} on {m['cpu']} ({m['cores']} cores), 2 threads. Dev: the whole dev split "
             "teacher-forced (perplexity per word piece) and greedy BLEU on its first 200 verses, at the last step; "
             "test: sacreBLEU / chrF2 of the averaged checkpoints, beam 4, α = 0.6.", "",
             "| model | updates | minutes | dev ppl | dev BLEU | test BLEU | chrF2 | last checkpoint alone |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        alone = row.get("test_last_alone")
        lines.append(f"| {row['model']} | {row['updates']:,} | {row['minutes']} | {row['dev_ppl']:.2f} | "
                     f"{row['dev_bleu']:.2f} | {row['test']['bleu']:.2f} | {row['test']['chrf']:.2f} | "
                     f"{'—' if alone is None else format(alone['bleu'], '.2f')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
