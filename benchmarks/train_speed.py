"""Training throughput on this CPU: aiayn against Hugging Face ``MarianMTModel``, same architecture, same batches.

    pip install -e '.[bench]'
    python benchmarks/train_speed.py                       # the shipped model's shape and the paper's base shape
    python benchmarks/train_speed.py --shapes small --steps 10

For each shape, both models are built with the same architecture (post-LN, sinusoidal positions, tied
embeddings, ReLU; aiayn's weights are exported into the HF model, so even the numbers are the same),
and each runs the same training steps: the same token-bucketed batches of the Bible corpus, a
label-smoothed loss (ε = 0.1) on the logits, and Adam with the same settings. Each side trains as its
own trainer would: aiayn with its loss (``label_smoothed_loss``) and optimizer (``make_optimizer``:
fused Adam); HF with PyTorch's ``F.cross_entropy(label_smoothing=0.1)`` (the fastest a user gets: HF
Trainer's own ``LabelSmoother`` is slower) and fused AdamW without weight decay (HF Trainer's default
``optim`` on torch >= 2.8 is ``adamw_torch_fused``, ``weight_decay`` 0). Timed: forward, loss,
backward and the optimizer step, after ``--warmup`` untimed steps, in float32 and under bf16 autocast;
each model first runs all the batches once untimed (kernels for every batch shape), then ``--rounds``
rounds, each timing aiayn and then HF, and each side's best round counts. Reported: source + target
tokens (padding excluded) per second, the ratio aiayn / HF of the best rounds, and the range of each
round's own ratio, which decides the goal (met when every round reaches it, at the edge when the
rounds fall on both sides: ``machine.goal_call``). The last line is a one-line summary of the ratios.

Then one more pass of each side under ``torch.profiler`` gives the share of its step spent in matrix
products (``aten::mm``, ``addmm``, ``bmm``, ``baddbmm``, oneDNN's linear): both sides call the same BLAS
on the same shapes, so aiayn's ratio cannot exceed ``ratio / share`` (its step with every other operation
free). Writes benchmarks/results/train_speed.{json,md}; docs/inference.md quotes the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from machine import GOALS, describe, goal_call, ratio_cell, write_results  # noqa: E402

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise")
GOAL = GOALS["hf"]

SHAPES = {  # name: ModelConfig overrides (post-LN: the paper's, and the one HF Marian has)
    "small": dict(preset="small", n_encoder_layers=6, n_decoder_layers=3),  # the shipped model's shape
    "paper-base": dict(preset="paper-base"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="small,paper-base")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds, aiayn then HF in each; the best counts")
    ap.add_argument("--max-tokens", type=int, default=2500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "train_speed"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_speed.json"), help="results file")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from aiayn.accel import accelerate
    from aiayn.config import PAD_ID, preset
    from aiayn.data.batching import ParallelData, collate, token_batches
    from aiayn.data.prepare import PrepareConfig, prepare
    from aiayn.export.hf import to_hf
    from aiayn.model import build_model
    from aiayn.runtime import keep_freed_memory
    from aiayn.train.loop import autocast_context
    from aiayn.train.optim import label_smoothed_loss, make_optimizer

    keep_freed_memory()  # as `aiayn train` does; both models run in this process and both benefit
    torch.set_num_threads(args.threads)
    d = ROOT / "data" / "bible-es-en"
    data_dir = Path(args.workdir) / "data"
    prepare(PrepareConfig(train=str(d / "train.tsv"), out=str(data_dir), vocab_size=8000))
    data = ParallelData(data_dir, "train")
    n_batches = args.warmup + args.steps
    t0 = time.perf_counter()
    batches = [collate(data, ix) for ix in token_batches(data.src_lens, data.tgt_lens, args.max_tokens, seed=1)[:n_batches]]
    collate_ms = (time.perf_counter() - t0) / n_batches * 1000
    real = sum(int((s != PAD_ID).sum() + (t != PAD_ID).sum()) for s, _, t in batches)
    padded = sum(s.numel() + t.numel() for s, _, t in batches)

    def run(model, side, dtype: str) -> float:
        forward, loss_fn, opt = side
        model.train()
        tokens, t0 = 0, 0.0
        for i, (src, tgt_in, tgt_out) in enumerate(batches):
            if i == args.warmup:
                t0 = time.perf_counter()
            with autocast_context(torch.device("cpu"), dtype):
                logits = forward(model, src, tgt_in)
            loss = loss_fn(logits, tgt_out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= args.warmup:
                tokens += int((src != PAD_ID).sum() + (tgt_out != PAD_ID).sum())
        return tokens / (time.perf_counter() - t0)

    def aiayn_loss(logits, target):
        return label_smoothed_loss(logits, target, 0.1)[0]

    def hf_loss(logits, target):
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=PAD_ID,
                               label_smoothing=0.1, reduction="sum")

    def aiayn_fwd(m, src, tgt_in):
        return m(src, tgt_in)

    def hf_fwd(m, src, tgt_in):
        return m(input_ids=src, attention_mask=src != PAD_ID, decoder_input_ids=tgt_in,
                 decoder_attention_mask=tgt_in != PAD_ID).logits

    print(f"CPU: {describe()}")
    print(f"{args.steps} timed steps of ≤{args.max_tokens} tokens per side, {args.threads} threads, torch {torch.__version__}")
    print(f"batches: {1 - real / padded:.1%} padding; building one (bucketing + collate) takes {collate_ms:.1f} ms")
    summary, paired, tok_s, chosen, gemm = {}, {}, {}, {}, {}
    for shape in args.shapes.split(","):
        over = dict(SHAPES[shape])
        cfg = preset(over.pop("preset"), **over, vocab_size=8000, norm="post", dropout=0.1)
        torch.manual_seed(0)
        ours = build_model(cfg)
        theirs = to_hf(ours, _NoVocab(), Path(args.workdir) / f"hf-{shape}", overwrite=True)
        chosen[shape] = accelerate(ours, training=True)  # as `aiayn train` does (train.accelerate)
        for line in chosen[shape]:
            print(f"  accelerate: {line}")
        ours_side = (aiayn_fwd, aiayn_loss, make_optimizer(ours, 1e-4, (0.9, 0.98), 1e-9, 0.0))
        theirs_side = (hf_fwd, hf_loss, torch.optim.AdamW(theirs.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9,
                                                          weight_decay=0.0, fused=True))
        for dtype in args.dtypes.split(","):
            # First passes untimed: oneDNN builds a kernel per new matrix shape (and bucketed batches have
            # many shapes), so whichever model ran first would pay for both. Then the best of two timed runs.
            run(ours, ours_side, dtype), run(theirs, theirs_side, dtype)
            timed = [(run(ours, ours_side, dtype), run(theirs, theirs_side, dtype)) for _ in range(args.rounds)]
            a, h = max(t[0] for t in timed), max(t[1] for t in timed)
            summary[f"{shape} {dtype}"] = round(a / h, 2)
            paired[f"{shape} {dtype}"] = [round(x / y, 3) for x, y in timed]
            tok_s[f"{shape} {dtype}"] = {"aiayn": round(a), "hf": round(h)}
            print(f"{shape:<10} {dtype:<8}  aiayn {a:7.0f} tok/s   HF Marian {h:7.0f} tok/s   ratio {a / h:.2f}x "
                  f"(rounds {', '.join(f'{x / y:.2f}' for x, y in timed)})", flush=True)
            gemm[f"{shape} {dtype}"] = {"aiayn": gemm_share(lambda: run(ours, ours_side, dtype)),
                                        "hf": gemm_share(lambda: run(theirs, theirs_side, dtype))}
            print(f"{'':<20} matrix products: {gemm[f'{shape} {dtype}']['aiayn']:.0%} of aiayn's step, "
                  f"{gemm[f'{shape} {dtype}']['hf']:.0%} of HF's", flush=True)
    print("ratios aiayn/HF: " + json.dumps(summary))
    path = write_results("train_speed", {"steps": args.steps, "max_tokens": args.max_tokens, "threads": args.threads,
                                         "torch": torch.__version__, "accelerate": chosen, "tok_s": tok_s,
                                         "rounds": args.rounds, "ratios": summary, "ratio_rounds": paired,
                                         "gemm_share": gemm}, args.out)
    path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())), encoding="utf-8")
    print(f"table: {path.with_suffix('.md')}")


def gemm_share(step: Callable[[], object]) -> float:
    """The share of ``step``'s operator time (self time, summed over threads' ops) spent in matrix products."""
    from torch.profiler import profile

    with profile() as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return round(sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS) / total, 3)


def markdown(record: dict) -> str:
    """The results as the table docs/inference.md quotes (between its <!-- train_speed.md --> markers)."""
    m = record["machine"]
    lines = [f"{record['date']}, {m['cpu']} ({m['cores']} cores; {' '.join(m['features'])}), {record['threads']} "
             f"threads, torch {record['torch']}; {record['steps']} timed steps of ≤ {record['max_tokens']:,} tokens a side"
             + (f", each side's best of {record['rounds']} rounds (aiayn then HF in each):" if record.get("rounds", 1) > 1
                else ":"),
             "", "| shape | precision | aiayn tok/s | HF Marian tok/s | aiayn / HF | matrix products: aiayn · HF "
             f"| ceiling | goal ≥ {GOAL} |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for key, ratio in record["ratios"].items():
        shape, dtype = key.split(" ")
        tok, share = record["tok_s"][key], record.get("gemm_share", {}).get(key)
        ceiling = ratio / share["aiayn"] if share else None
        rounds = record.get("ratio_rounds", {}).get(key, [ratio])
        verdict = goal_call(rounds, GOAL)
        if verdict != "met" and ceiling is not None and ceiling < GOAL:
            verdict += "; out of reach (ceiling)"
        lines.append(f"| {shape} | {'bf16 autocast' if dtype == 'bfloat16' else dtype} | {tok['aiayn']:,} | {tok['hf']:,} | "
                     f"**{ratio_cell(ratio, rounds)}** | "
                     + (f"{share['aiayn']:.0%} · {share['hf']:.0%} | {ceiling:.2f}" if share else "— | —") + f" | {verdict} |")
    lines += ["", "aiayn / HF: of the two sides' best rounds; in brackets, the lowest and highest of the rounds' own ratios. "
                  "The goal is met when every round reaches it, at the edge when the rounds fall on both sides. "
                  "Ceiling: the ratio aiayn would reach if everything but its matrix products took no time "
                  "(ratio ÷ aiayn's share); both sides run the same products through the same BLAS."]
    return "\n".join(lines) + "\n"


class _NoVocab:
    """to_hf writes tokenizer files from a vocabulary; the speed test needs none."""

    proto = None

    def __len__(self) -> int:
        return 8000

    def pieces(self, ids):
        return [f"▁{i}" for i in ids]


if __name__ == "__main__":
    main()
