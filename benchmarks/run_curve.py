"""A training run's curve, checkpoint by checkpoint: the dev figures its log holds at each evaluation (teacher-forced
perplexity per word piece, greedy BLEU) and the test split scored from each checkpoint still on disk (beam 4,
α = 0.6, the checkpoint alone: no averaging). Issue 17, item 6: the shipped pre-LN recipe's curve, the column
docs/paper.md compares the paper's post-LN recipe with at equal updates (benchmarks/postln_batch.py).

    aiayn train configs/bible-es-en.yaml --set train.out=runs/bible-es-en-prelncurve train.max_steps=2500
    python benchmarks/run_curve.py --run runs/bible-es-en-prelncurve

Writes benchmarks/results/paper/preln_curve.json. A run keeps only its last checkpoints (train.keep_last): the
test score of one deleted since is carried over from the results file it was measured into (``--previous``,
by default ``--out`` itself), never made up; a step with neither has no test score.
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

RESULTS = ROOT / "benchmarks" / "results" / "paper"


def test_scores(run: Path, test: str | Path, previous: dict[int, dict] | None = None) -> dict[int, dict]:
    """{step: {"bleu", "chrf"}} for every checkpoint of ``run`` (beam 4, α 0.6, alone), plus the steps of
    ``previous`` whose checkpoints are gone. A checkpoint still on disk is always scored afresh."""
    from aiayn.config import DecodeConfig
    from aiayn.evaluate import evaluate_translation
    from aiayn.train.checkpoint import load_model_dir, run_checkpoints

    scores = dict(previous or {})
    for path in run_checkpoints(run):
        step = int(path.name.split("_")[1])
        model, vocab, _ = load_model_dir(path)
        s, _ = evaluate_translation(model, vocab, test, DecodeConfig())
        scores[step] = {"bleu": round(s["bleu"], 2), "chrf": round(s["chrf"], 2)}
        print(f"{path}: test BLEU {s['bleu']:.2f}, chrF2 {s['chrf']:.2f}")
    return dict(sorted(scores.items()))


def previous_tests(path: str | Path, run: str | Path) -> dict[int, dict]:
    """The test scores a results file of this kind holds for ``run``: its rows with a "test" ({} when there is no
    such file or it is of another run)."""
    path = Path(path)
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if Path(earlier.get("run", "")).name != Path(run).name:
        return {}
    return {r["step"]: r["test"] for r in earlier["rows"] if r.get("test")}


def curve(run: Path, tests: dict[int, dict]) -> list[dict]:
    """One row per evaluated or scored step: minutes of training, dev perplexity and BLEU, test scores."""
    from aiayn.viz import read_log

    _, evals = read_log(run)
    dev = {r["step"]: r for r in evals}
    return [{"step": s, "minutes": round(dev[s]["time"] / 60, 1) if s in dev else None,
             "dev_ppl": round(dev[s]["ppl"], 2) if s in dev else None,
             "dev_bleu": dev[s].get("val_bleu") if s in dev else None, "test": tests.get(s)}
            for s in sorted(set(dev) | set(tests))]


def recipe(run: Path) -> dict:
    """What the run's config.yaml says about the recipe (the rest is the config file named in the docs)."""
    import yaml

    c = yaml.safe_load((run / "config.yaml").read_text())
    return {"norm": c["model"]["norm"], **{k: c["train"][k] for k in
                                           ("warmup", "lr_scale", "max_tokens", "update_freq", "dtype", "threads")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "runs" / "bible-es-en-prelncurve"))
    ap.add_argument("--test", default=str(ROOT / "data" / "bible-es-en" / "test.tsv"))
    ap.add_argument("--out", default=str(RESULTS / "preln_curve.json"))
    ap.add_argument("--previous", help="a results file whose test scores to keep for deleted checkpoints "
                                       "(default: --out)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    print(f"CPU: {describe()}")
    run = Path(args.run)
    rows = curve(run, test_scores(run, args.test, previous_tests(args.previous or args.out, run)))
    write_results("run_curve", {"run": f"runs/{run.name}", "recipe": recipe(run), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
