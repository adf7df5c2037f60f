"""Table 2 (§6.1): translation quality against training cost, at the scale of this CPU.

The paper sets the Transformer's BLEU and training FLOPs beside the recurrent and convolutional
systems of the day. Here the recurrent baselines of the lineage (Sutskever-style seq2seq, Bahdanau's
RNNsearch) and base-like and big-like Transformers (Table 3's CPU base and big rows) each train for the
same budget of minutes on Bible es→en, and each is scored on the test split (beam 4, α = 0.6, the
last five checkpoints averaged, §6.1). Training cost is counted two ways:

* **the paper's way** (its footnote 5): training time × the sustained floating-point rate of the
  hardware. The rate is measured here — matrix products of the training's precision on this CPU with
  these threads — where the paper took a rate per GPU model (2.8 to 9.5 TFLOPS);
* **counted**: PyTorch's ``FlopCounterMode`` over a forward and backward pass of real training batches
  (plus a rule for the fused LSTM kernel it does not know), per target token, × the target tokens trained.

Their ratio is the fraction of the machine's matrix-product rate that training sustained.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_json_atomic
from ..config import ConfigError, DecodeConfig, load_run_config
from ..viz import pyplot, save_figure
from . import claim_directory, finished, machine, prepare_corpus, result_done, save_table
from .table3 import BASE_MODEL, BASE_TRAIN, BY_ID


@dataclass(frozen=True)
class System:
    id: str
    label: str
    model: dict
    train: dict = field(default_factory=dict)


RECURRENT_TRAIN = dict(lr_schedule="cosine", lr=2e-3, min_lr=1e-5, warmup=200, clip_norm=1.0, label_smoothing=0.1,
                       max_tokens=2500, dtype="float32")
TRANSFORMER_TRAIN = {**BASE_TRAIN, "warmup": 200}
SYSTEMS = [
    System("rnn-seq2seq", "LSTM encoder-decoder (Sutskever et al. 2014)", {"preset": "rnn-seq2seq-small"}, RECURRENT_TRAIN),
    System("rnnsearch", "RNNsearch (Bahdanau et al. 2014)", {"preset": "rnnsearch-small"}, RECURRENT_TRAIN),
    System("transformer-base", "Transformer, base-like (Table 3's CPU base)", BASE_MODEL, TRANSFORMER_TRAIN),
    System("transformer-big", "Transformer, big-like (Table 3's big row)", {**BASE_MODEL, **BY_ID["big"].model},
           TRANSFORMER_TRAIN),
]
BY_ID_2 = {s.id: s for s in SYSTEMS}

# The paper's Table 2: BLEU on newstest2014 and training cost in FLOPs (EN-DE, EN-FR), as printed there.
PAPER = [
    ("ByteNet", 23.75, None, None, None),
    ("Deep-Att + PosUnk", None, 39.2, None, 1.0e20),
    ("GNMT + RL", 24.6, 39.92, 2.3e19, 1.4e20),
    ("ConvS2S", 25.16, 40.46, 9.6e18, 1.5e20),
    ("MoE", 26.03, 40.56, 2.0e19, 1.2e20),
    ("Deep-Att + PosUnk Ensemble", None, 40.4, None, 8.0e20),
    ("GNMT + RL Ensemble", 26.30, 41.16, 1.8e20, 1.1e21),
    ("ConvS2S Ensemble", 26.36, 41.29, 7.7e19, 1.2e21),
    ("Transformer (base model)", 27.3, 38.1, 3.3e18, 3.3e18),
    ("Transformer (big)", 28.4, 41.8, 2.3e19, 2.3e19),
]


@dataclass
class Table2Config:
    corpus: str = "data/bible-es-en"  # train.tsv, dev.tsv, test.tsv
    out: str = "reproduce"
    systems: tuple[str, ...] = tuple(BY_ID_2)
    minutes: float = 10.0  # training budget of every system
    test_sentences: int = 0  # 0 = the whole test split
    vocab_size: int = 8000
    threads: int = 0
    count_batches: int = 8  # training batches whose FLOPs are counted

    def budget(self) -> dict:
        return {"minutes": self.minutes, "test_sentences": self.test_sentences, "vocab_size": self.vocab_size}


def select_systems(spec: str) -> tuple[str, ...]:
    if spec == "all":
        return tuple(BY_ID_2)
    chosen = tuple(p.strip() for p in spec.split(",") if p.strip())
    unknown = [c for c in chosen if c not in BY_ID_2]
    if unknown or not chosen:
        names = ", ".join(unknown) or repr(spec)
        raise ConfigError(f"unknown Table 2 system {names}; systems: {', '.join(BY_ID_2)} (or all)")
    return chosen


# --- counting FLOPs -------------------------------------------------------------------------------
def _rnn_layer_flops(input_shape, w_ih, w_hh, *args, **kwargs) -> int:
    """aten.mkldnn_rnn_layer (the CPU LSTM kernel): every position multiplies its input and the previous
    hidden state by the stacked gate matrices."""
    positions = int(input_shape[0]) * int(input_shape[1])
    return 2 * positions * (int(np.prod(w_ih)) + int(np.prod(w_hh)))


def _rnn_layer_backward_flops(input_shape, w_ih, w_hh, *args, **kwargs) -> int:
    return 2 * _rnn_layer_flops(input_shape, w_ih, w_hh)  # gradients of the input, the state and the weights


def count_training_flops(model, batches) -> tuple[int, int]:
    """(FLOPs of forward + backward, target tokens) over ``batches`` of (src, tgt_in, tgt_out), counted
    by PyTorch's ``FlopCounterMode`` (matrix products and convolutions; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..config import PAD_ID

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "mkldnn_rnn_layer"):
        mapping = {aten.mkldnn_rnn_layer: _rnn_layer_flops, aten.mkldnn_rnn_layer_backward: _rnn_layer_backward_flops}
    model.train()
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    tokens = 0
    with counter:
        for src, tgt_in, tgt_out in batches:
            logits = model(src, tgt_in)
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD_ID).backward()
            # on the meta device (shapes only: a count for a model too big to run here) every position is a token
            tokens += tgt_out.numel() if tgt_out.device.type == "meta" else int((tgt_out != PAD_ID).sum())
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops(), tokens


def sustained_flops(dtype: torch.dtype, size: int = 1024, seconds: float = 1.0) -> float:
    """Floating-point operations per second of (size × size) matrix products at ``dtype`` on this CPU."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - start)


# --- the runs ------------------------------------------------------------------------------------
def run_system(system: System, cfg: Table2Config, work: Path, data: Path, rates: dict, progress=print) -> dict:
    from ..data.batching import ParallelData, collate, token_batches
    from ..evaluate import evaluate_translation
    from ..model import build_model, count_parameters
    from ..train.checkpoint import average_checkpoints, last_checkpoints, load_model_dir
    from ..train.loop import train

    sys_dir = work / system.id
    done = sys_dir / "result.json"
    before = result_done(done, cfg.budget(), system.id)
    if before is not None:
        progress(f"table2: {system.id} done before (test BLEU {before['test_bleu']:.2f}); skipped")
        return before
    train_cfg = {**system.train, "data": str(data), "out": str(sys_dir / "run"), "max_minutes": cfg.minutes,
                 "threads": cfg.threads, "keep_last": 5, "eval_every": 10**9,
                 "save_every": max(5, int(cfg.minutes * 60 / 0.6 / 25))}  # ≈ 25 checkpoints over the budget
    run = load_run_config(None, {"model": system.model, "train": train_cfg})
    progress(f"table2: {system.id} — training {cfg.minutes:g} minutes")
    trained = train(run)
    ckpts = last_checkpoints(sys_dir / "run", 5)
    model, vocab, _ = load_model_dir(average_checkpoints(ckpts, sys_dir / "averaged", overwrite=True))
    scores, _ = evaluate_translation(model, vocab, Path(cfg.corpus) / "test.tsv", DecodeConfig(), limit=cfg.test_sentences)

    train_data = ParallelData(data, "train")
    batches = token_batches(train_data.src_lens, train_data.tgt_lens, run.train.max_tokens, seed=run.train.seed)
    tokens_per_batch = float(np.mean([int(train_data.tgt_lens[b].sum()) for b in batches]))  # y + </s> per sentence
    sample = [collate(train_data, b) for b in batches[: cfg.count_batches]]
    flops, tokens = count_training_flops(build_model(model.cfg), sample)  # the plain model: the FLOPs of its products
    tokens_trained = trained["step"] * run.train.update_freq * tokens_per_batch
    counted = flops / tokens * tokens_trained
    rate = rates["bfloat16" if run.train.dtype == "bfloat16" else "float32"]
    result = {
        "system": system.id, "budget": cfg.budget(), "steps": trained["step"], "train_seconds": round(trained["elapsed"], 1),
        "test_bleu": scores["bleu"], "test_chrf": scores["chrf"], "signature": scores["signature"],
        "parameters": count_parameters(model), "dtype": run.train.dtype,
        "flops_per_target_token": flops / tokens, "target_tokens_trained": round(tokens_trained),
        "flops_counted": counted, "flops_paper_way": trained["elapsed"] * rate, "sustained_flops_per_s": rate,
        "model": system.model, "train": system.train,
    }
    result["utilisation"] = result["flops_counted"] / result["flops_paper_way"]
    write_json_atomic(done, result)
    progress(f"table2: {system.id} test BLEU {result['test_bleu']:.2f}; {result['flops_counted']:.3g} FLOPs counted, "
             f"{result['flops_paper_way']:.3g} the paper's way ({result['steps']} steps)")
    return result


def run(cfg: Table2Config, progress=print) -> dict:
    out = claim_directory(cfg.out)
    work = out / "table2"
    work.mkdir(exist_ok=True)
    data = prepare_corpus(cfg.corpus, work, cfg.vocab_size, ("train", "dev", "test"))
    rates = {"float32": sustained_flops(torch.float32), "bfloat16": sustained_flops(torch.bfloat16)}
    progress(f"table2: sustained matrix-product rate {rates['float32'] / 1e9:.0f} GFLOP/s float32, "
             f"{rates['bfloat16'] / 1e9:.0f} GFLOP/s bfloat16")
    for sid in cfg.systems:
        run_system(BY_ID_2[sid], cfg, work, data, rates, progress)
    return collect(out, cfg)


def collect(out: str | Path, cfg: Table2Config) -> dict:
    rows = finished(Path(out) / "table2", BY_ID_2, cfg.budget())
    return {"table": "2", "machine": machine(), "date": time.strftime("%Y-%m-%d"), "budget": cfg.budget(), "rows": rows}


def markdown(results: dict) -> str:
    m, b = results["machine"], results["budget"]
    test = f"the first {b['test_sentences']} sentences of the test split" if b["test_sentences"] else "test split"
    lines = [f"Measured on {m['cpu']} ({m['threads']} threads), {results['date']}: every system {b['minutes']:g} minutes "
             f"of training on Bible es→en, {test}, beam 4, α = 0.6, last 5 checkpoints averaged, sacreBLEU.", "",
             "| system | params ×10⁶ | steps | test BLEU | chrF | FLOPs counted | FLOPs the paper's way | utilisation |",
             "|---|---|---|---|---|---|---|---|"]
    for s in SYSTEMS:
        r = results["rows"].get(s.id)
        if r:
            lines.append(f"| {s.label} | {r['parameters'] / 1e6:.1f} | {r['steps']} | {r['test_bleu']:.2f} | "
                         f"{r['test_chrf']:.1f} | {r['flops_counted']:.2e} | {r['flops_paper_way']:.2e} | "
                         f"{r['utilisation']:.0%} |")
        else:
            lines.append(f"| {s.label} | not run | | | | | | |")
    lines += ["", "The paper's Table 2 (newstest2014; quoted from the paper, not measured here):", "",
              "| model | EN-DE BLEU | EN-FR BLEU | EN-DE FLOPs | EN-FR FLOPs |", "|---|---|---|---|---|"]
    for name, de, fr, fde, ffr in PAPER:
        cells = [f"{de}" if de else "", f"{fr}" if fr else "", f"{fde:.1e}" if fde else "", f"{ffr:.1e}" if ffr else ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str | Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for s in SYSTEMS:
        r = results["rows"].get(s.id)
        if r:
            ax.scatter(r["flops_counted"], r["test_bleu"], s=40)
            ax.annotate(s.id, (r["flops_counted"], r["test_bleu"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (counted)")
    ax.set_ylabel("test BLEU (Bible es→en)")
    ax.set_title(f"Table 2 at CPU scale: {results['budget']['minutes']:g} minutes each — {results['machine']['cpu']}",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def save(results: dict, out: str | Path) -> list[Path]:
    return save_table(out, "table2", results, markdown, plot if results["rows"] else None)
