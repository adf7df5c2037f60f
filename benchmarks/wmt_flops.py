"""Training FLOPs of the paper's WMT14 recipes, counted (not estimated) from the model, and what they mean in
time on several GPUs — on paper, since no GPU runs here. Writes benchmarks/results/wmt_flops.json (docs/scale.md).

The model is built on PyTorch's meta device (shapes only), so counting needs no memory and no compute;
PyTorch's FlopCounterMode counts the matrix products of a forward and backward pass of a batch of
sentences of WMT14 En-De's typical length (27 source and 27 target BPE tokens + </s>).

    python benchmarks/wmt_flops.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiayn.config import load_run_config
from aiayn.model import build_model, count_parameters
from aiayn.reproduce.table2 import count_training_flops
from benchmarks.machine import describe, write_results

ROOT = Path(__file__).resolve().parents[1]
# Dense peak rates (FLOP/s) from the vendors' data sheets: quoted, not measured here.
GPUS = {"P100 (fp32, the paper's)": 9.3e12, "V100 (fp16 tensor cores)": 125e12, "A100 (bf16)": 312e12,
        "H100 SXM (bf16)": 989e12}
PAPER = {"wmt14-en-de-base": {"gpus": 8, "hours": 12, "flops": 3.3e18},
         "wmt14-en-de-big": {"gpus": 8, "hours": 84, "flops": 2.3e19}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "wmt_flops.json"))
    args = ap.parse_args()
    print(f"machine: {describe()} (counting on the meta device: the CPU does not change the counts)")
    rows = {}
    for name in PAPER:
        run = load_run_config(ROOT / "configs" / f"{name}.yaml")
        run.model.vocab_size = 37000
        model = build_model(run.model).to("meta")
        b, s, t = 100, 28, 28
        batch = [(torch.randint(4, 37000, (b, s), device="meta"), torch.randint(4, 37000, (b, t), device="meta"),
                  torch.randint(4, 37000, (b, t), device="meta"))]
        flops, tokens = count_training_flops(model, batch)
        per_token = flops / tokens
        tokens_per_update = run.train.max_tokens * run.train.update_freq
        total = per_token * tokens_per_update * run.train.max_steps
        paper = PAPER[name]
        utilisation = total / paper["flops"]  # the paper's FLOPs are its time × its GPUs' peak
        hours = {gpu: {str(u): total / (paper["gpus"] * peak * u) / 3600 for u in (utilisation, 0.10)}
                 for gpu, peak in GPUS.items()}
        rows[name] = {"parameters": count_parameters(model), "flops_per_target_token": per_token,
                      "target_tokens_per_update": tokens_per_update, "updates": run.train.max_steps,
                      "training_flops": total, "paper_flops": paper["flops"],
                      "paper_implied_utilisation": utilisation, "hours_on_8_gpus": hours}
        print(f"{name}: {count_parameters(model):,} parameters, {per_token:.3g} FLOPs per target token, "
              f"{total:.3g} training FLOPs (the paper's estimate {paper['flops']:.2g}: {utilisation:.0%} of its GPUs' peak)")
        for gpu, h in hours.items():
            print(f"    8 × {gpu}: " + ", ".join(f"{v:.1f} h at {float(u):.0%}" for u, v in h.items()))
    write_results("wmt_flops", {"gpus_peak_flops_quoted": GPUS, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
