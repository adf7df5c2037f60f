"""Does an encoder keep its positions apart? The variance of each encoder layer's output *across positions*
(averaged over features and sentences), for every checkpoint of a run — the measurement behind docs/paper.md's
post-LN section (and docs/results.md's collapsed post-LN run).

A collapsed encoder gives (nearly) the same vector at every position: the variance across positions of its
(normalised) output vectors falls towards 0, every
encoder-decoder attention head becomes uniform, and the decoder can only act as a language model.

    python benchmarks/encoder_collapse.py --run runs/bible-es-en-postln --compare models/bible-es-en

Writes benchmarks/results/paper/encoder_collapse.json and docs/img/encoder_collapse.png. Not a timing: it reads
the first ``--sentences`` dev verses through each model once. A run keeps only its last checkpoints
(train.keep_last): the rows of those deleted since are kept from the results file they were measured into
(``--previous``, by default ``--out`` itself), marked ``carried``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, write_results  # noqa: E402


def position_variance(model, src) -> list[float]:
    """Per encoder layer (0 = the embedded input), the variance across the real positions of each sentence,
    averaged over features and sentences, of the layer's output vectors each normalised to mean 0 and variance 1
    over its features (a LayerNorm without parameters: pre-LN's growing residual stream and post-LN's normalised
    one compare on one scale; 1 would be positions as different as independent vectors). src: (B, S) token ids."""
    import torch
    import torch.nn.functional as F

    from aiayn.model.transformer import padding_mask

    mask = padding_mask(src)
    real = mask[:, 0, 0, :]

    def across_positions(x) -> float:
        x = F.layer_norm(x.float(), x.shape[-1:])
        return sum(x[i, real[i]].var(0).mean().item() for i in range(x.size(0))) / x.size(0)

    with torch.no_grad():
        x = model.encoder.input(src)
        out = [across_positions(x)]
        for layer in model.encoder.layers:
            x = layer(x, mask)
            out.append(across_positions(x))
    return out


def carried(previous: str | Path, run: str | Path, measured: set[int], sentences: int) -> list[dict]:
    """The run's rows of an earlier results file for the steps not measured now (their checkpoints deleted since by
    train.keep_last), marked "carried"; none when that file is of another run, read a different number of sentences,
    or is absent."""
    import json

    path = Path(previous)
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    if Path(earlier.get("run", "")).name != Path(run).name or earlier.get("sentences") != sentences:
        return []
    return [{**r, "carried": True} for r in earlier["rows"] if not r.get("compare") and r["step"] not in measured]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a training run directory (its checkpoints/step_*)")
    ap.add_argument("--compare", nargs="*", default=[], help="model directories to measure beside it")
    ap.add_argument("--dev", default=str(ROOT / "data" / "bible-es-en" / "dev.tsv"))
    ap.add_argument("--sentences", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "paper" / "encoder_collapse.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "img" / "encoder_collapse.png"))
    ap.add_argument("--previous", help="a results file whose rows to keep for checkpoints deleted since "
                                       "(train.keep_last; default: --out)")
    args = ap.parse_args()

    import torch

    from aiayn.data.batching import source_tensor
    from aiayn.evaluate import read_test_pairs
    from aiayn.model import build_model
    from aiayn.train.checkpoint import load_model_dir
    from aiayn.viz import pyplot, save_figure

    print(f"CPU: {describe()}")
    checkpoints = sorted(p for p in (Path(args.run) / "checkpoints").glob("step_*") if p.is_dir())
    if not checkpoints:
        raise SystemExit(f"aiayn: error: {args.run}: no checkpoints")
    model, vocab, config = load_model_dir(checkpoints[0])
    src = source_tensor(vocab.encode_batch(read_test_pairs(args.dev, limit=args.sentences)[0]))
    torch.manual_seed(0)
    rows = [{"name": "initialisation (seed 0)", "step": 0, "variance": position_variance(build_model(model.cfg).eval(), src)}]
    for path in checkpoints:
        model, _, config = load_model_dir(path)
        rows.append({"name": path.name, "step": config["step"], "variance": position_variance(model, src)})
    rows += carried(args.previous or args.out, args.run, {r["step"] for r in rows}, args.sentences)
    rows.sort(key=lambda r: r["step"])
    for path in args.compare:
        model, _, config = load_model_dir(path)
        where = Path(path).resolve()
        rows.append({"name": str(where.relative_to(ROOT) if where.is_relative_to(ROOT) else path),
                     "step": config.get("step"), "norm": model.cfg.norm,
                     "variance": position_variance(model, src), "compare": True})
    for r in rows:
        print(f"{r['name']:<28} " + " ".join(f"{v:8.2g}" for v in r["variance"]))
    write_results("encoder_collapse", {"run": str(args.run), "sentences": args.sentences, "rows": rows}, args.out)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    own = [r for r in rows if not r.get("compare")]
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(own):
        ax.plot(r["variance"], marker="o", ms=3, color=cmap(i / max(1, len(own) - 1)), label=f"step {r['step']:,}")
    for r in rows:
        if r.get("compare"):
            ax.plot(r["variance"], "k--", marker="s", ms=3, label=f"{r['name']} ({r['norm']}-LN, step {r['step']:,})")
    ax.set_yscale("log")
    ax.set_xlabel("encoder layer (0 = embedded input)")
    ax.set_ylabel("variance across positions (normalised vectors)")
    ax.set_title(f"{args.run}: does the encoder keep positions apart?", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    print(f"plot: {save_figure(fig, args.plot)}")


if __name__ == "__main__":
    main()
