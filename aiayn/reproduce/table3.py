"""Table 3 ("Variations on the Transformer architecture"), at the scale of this CPU.

The paper changes one thing at a time in the base model and reports perplexity per word piece and
BLEU on the development set (newstest2013), with beam search and no checkpoint averaging, after the
same number of training steps (100K; the big model 300K). Here every row is scaled to a CPU base on
Bible es→en — each dimension of the paper's base halved (N = 3, d_model = 256, d_ff = 1024,
d_k = d_v = 32) with h = 8 kept — and each change scaled the same way (h = 1 … 32 at constant
compute for (A), d_k = 8 and 16 for (B), N = 1, 2, 4, d_model 128 and 512, d_ff 512 and 2048 for (C)).

The training recipe is the one that trains reliably at this scale in a few hundred steps (pre-LN,
cosine learning rate with a short warm-up, bf16 autocast on CPU; docs/paper.md says why), the same for
every row, so that the rows differ only where the paper's do. Each row is its own run directory,
``OUT/table3/ROW``, with its result in ``result.json``: rerunning skips finished rows and resumes an
interrupted one from its last checkpoint, so the table can be built over several sittings.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_json_atomic
from ..config import ConfigError, DecodeConfig, load_run_config
from ..viz import pyplot, save_figure
from . import claim_directory, finished, machine, prepare_corpus, result_done, save_table


@dataclass(frozen=True)
class Row:
    id: str
    paper: str  # what the paper changed, in its notation
    ppl: float  # the paper's dev perplexity per word piece
    bleu: float  # the paper's dev BLEU
    params: float | None  # the paper's parameter count, millions (printed only for some rows)
    model: dict = field(default_factory=dict)  # our change to the CPU base model
    train: dict = field(default_factory=dict)  # our change to the CPU base recipe
    steps_factor: float = 1.0  # the big model trains 3× as long (300K against 100K)


BASE_MODEL = dict(preset="small", n_heads=8, n_encoder_layers=3, n_decoder_layers=3, d_model=256, d_ff=1024,
                  dropout=0.1, norm="pre")
BASE_TRAIN = dict(label_smoothing=0.1, lr_schedule="cosine", lr=1.5e-3, min_lr=1e-5, max_tokens=2500, dtype="bfloat16",
                  eval_every=10**9, save_every=100, keep_last=1, log_every=25)
WARMUP_FRACTION = 0.15  # of the steps: linear warm-up, then the cosine

# The paper's Table 3 (dev = newstest2013, PPL per word piece, BLEU, parameters × 10⁶) and our scaled rows.
ROWS = [
    Row("base", "N=6, d_model=512, d_ff=2048, h=8, d_k=d_v=64, P_drop=0.1, ε_ls=0.1", 4.92, 25.8, 65),
    Row("A1", "h=1, d_k=d_v=512", 5.29, 24.9, None, {"n_heads": 1}),
    Row("A2", "h=4, d_k=d_v=128", 5.00, 25.5, None, {"n_heads": 4}),
    Row("A3", "h=16, d_k=d_v=32", 4.91, 25.8, None, {"n_heads": 16}),
    Row("A4", "h=32, d_k=d_v=16", 5.01, 25.4, None, {"n_heads": 32}),
    Row("B1", "d_k=16", 5.16, 25.1, 58, {"key_size": 8}),
    Row("B2", "d_k=32", 5.01, 25.4, 60, {"key_size": 16}),
    Row("C1", "N=2", 6.11, 23.7, 36, {"n_encoder_layers": 1, "n_decoder_layers": 1}),
    Row("C2", "N=4", 5.19, 25.3, 50, {"n_encoder_layers": 2, "n_decoder_layers": 2}),
    Row("C3", "N=8", 4.88, 25.5, 80, {"n_encoder_layers": 4, "n_decoder_layers": 4}),
    Row("C4", "d_model=256, d_k=d_v=32", 5.75, 24.5, 28, {"d_model": 128}),
    Row("C5", "d_model=1024, d_k=d_v=128", 4.66, 26.0, 168, {"d_model": 512}),
    Row("C6", "d_ff=1024", 5.12, 25.4, 53, {"d_ff": 512}),
    Row("C7", "d_ff=4096", 4.75, 26.2, 90, {"d_ff": 2048}),
    Row("D1", "P_drop=0.0", 5.77, 24.6, None, {"dropout": 0.0}),
    Row("D2", "P_drop=0.2", 4.95, 25.5, None, {"dropout": 0.2}),
    Row("D3", "ε_ls=0.0", 4.67, 25.3, None, {}, {"label_smoothing": 0.0}),
    Row("D4", "ε_ls=0.2", 5.47, 25.7, None, {}, {"label_smoothing": 0.2}),
    Row("E", "positional embedding instead of sinusoids", 4.92, 25.7, None, {"positional": "learned"}),
    Row("big", "N=6, d_model=1024, d_ff=4096, h=16, P_drop=0.3, 300K steps", 4.33, 26.4, 213,
        {"d_model": 512, "d_ff": 2048, "n_heads": 16, "dropout": 0.3}, {}, 3.0),
]
BY_ID = {r.id: r for r in ROWS}


@dataclass
class Table3Config:
    corpus: str = "data/bible-es-en"  # train.tsv, dev.tsv
    out: str = "reproduce"
    rows: tuple[str, ...] = tuple(BY_ID)
    steps: int = 400  # training steps of every row (× 3 for big), as the paper trains every row equally long
    minutes: float = 0.0  # or (also) a budget of training minutes per row
    dev_sentences: int = 0  # dev sentences translated for BLEU (0 = all)
    vocab_size: int = 8000
    threads: int = 0

    def budget(self) -> dict:
        return {"steps": self.steps, "minutes": self.minutes, "dev_sentences": self.dev_sentences,
                "vocab_size": self.vocab_size}


def select_rows(spec: str) -> tuple[str, ...]:
    """``A`` (a group), ``A1`` (a row), comma-separated, or ``all``."""
    if spec == "all":
        return tuple(BY_ID)
    chosen: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        group = [r.id for r in ROWS if r.id == part or (len(part) == 1 and r.id[:1] == part and r.id[1:].isdigit())]
        if not group:
            raise ConfigError(f"unknown Table 3 row {part!r}; rows: {', '.join(BY_ID)} (or a group A … E, or all)")
        chosen += [g for g in group if g not in chosen]
    return tuple(chosen)


def run_row(row: Row, cfg: Table3Config, work: Path, data: Path, progress=print) -> dict:
    """Train one row (or resume it), then score it on the dev set; returns and writes ``result.json``."""
    from ..data.batching import ParallelData
    from ..evaluate import corpus_loss, evaluate_translation
    from ..model import count_parameters
    from ..train.checkpoint import latest_checkpoint, load_model_dir
    from ..train.loop import train

    row_dir = work / row.id
    done = row_dir / "result.json"
    before = result_done(done, cfg.budget(), f"row {row.id}")
    if before is not None:
        progress(f"table3: {row.id} done before ({before['dev_ppl']:.2f} ppl, BLEU {before['dev_bleu']:.2f}); skipped")
        return before
    steps = round(cfg.steps * row.steps_factor)
    train_cfg = {**BASE_TRAIN, **row.train, "data": str(data), "out": str(row_dir / "run"), "max_steps": steps,
                 "max_minutes": cfg.minutes * row.steps_factor, "warmup": max(1, round(WARMUP_FRACTION * steps)),
                 "threads": cfg.threads}
    if cfg.minutes and not cfg.steps:  # a budget of minutes only: the cosine follows the clock
        train_cfg["max_steps"] = 0
    run = load_run_config(None, {"model": {**BASE_MODEL, **row.model}, "train": train_cfg})
    progress(f"table3: {row.id} ({row.paper}) — training {steps or '∞'} steps"
             + (f" / {cfg.minutes * row.steps_factor:g} minutes" if cfg.minutes else ""))
    started = time.perf_counter()
    trained = train(run)
    model, vocab, _ = load_model_dir(latest_checkpoint(row_dir / "run"))  # the last checkpoint: no averaging
    loss = corpus_loss(model, ParallelData(data, "dev"), max_tokens=4000)
    scores, _ = evaluate_translation(model, vocab, Path(cfg.corpus) / "dev.tsv", DecodeConfig(), limit=cfg.dev_sentences)
    result = {
        "row": row.id, "date": time.strftime("%Y-%m-%d"), "budget": cfg.budget(), "steps": trained["step"],
        "train_seconds": round(trained["elapsed"], 1),
        "seconds_with_evaluation": round(time.perf_counter() - started, 1),
        "dev_ppl": loss["ppl"], "dev_loss": loss["val_loss"], "dev_bleu": scores["bleu"], "signature": scores["signature"],
        "parameters": count_parameters(model), "model": {**BASE_MODEL, **row.model}, "train": {**BASE_TRAIN, **row.train},
    }
    write_json_atomic(done, result)
    progress(f"table3: {row.id} dev ppl {result['dev_ppl']:.2f}, dev BLEU {result['dev_bleu']:.2f} "
             f"({result['steps']} steps, {result['train_seconds']:.0f} s)")
    return result


def run(cfg: Table3Config, progress=print) -> dict:
    """Train and score the chosen rows (skipping finished ones); returns every finished row's result."""
    out = claim_directory(cfg.out)
    work = out / "table3"
    work.mkdir(exist_ok=True)
    data = prepare_corpus(cfg.corpus, work, cfg.vocab_size, ("train", "dev"))
    for rid in cfg.rows:
        run_row(BY_ID[rid], cfg, work, data, progress)
    return collect(out, cfg)


def collect(out: str | Path, cfg: Table3Config) -> dict:
    """Every finished row under ``out`` (measured with ``cfg``'s budget), the claims they test, and the machine."""
    rows = finished(Path(out) / "table3", BY_ID, cfg.budget())
    return {"table": "3", "machine": machine(), "date": time.strftime("%Y-%m-%d"), "budget": cfg.budget(),
            "base_model": BASE_MODEL, "base_train": BASE_TRAIN, "rows": rows, "claims": claims(rows)}


def claims(rows: dict) -> list[dict]:
    """The paper's conclusions from Table 3 (§6.2), each checked against the measured rows where they exist."""
    def ppl(r):
        return rows[r]["dev_ppl"]

    def bleu(r):
        return rows[r]["dev_bleu"]

    def have(*ids):
        return all(i in rows for i in ids)

    checks = [
        ("A: single-head attention is worse than the best setting (0.9 BLEU in the paper)",
         ("base", "A1", "A2", "A3", "A4"), lambda: bleu("A1") < max(bleu(r) for r in ("base", "A2", "A3", "A4"))),
        ("A: quality also drops off with too many heads (h = 32 below the best)",
         ("base", "A1", "A2", "A3", "A4"), lambda: bleu("A4") < max(bleu(r) for r in ("base", "A1", "A2", "A3"))),
        ("B: reducing the attention key size d_k hurts model quality (perplexity)",
         ("base", "B1", "B2"), lambda: ppl("B1") > ppl("base") and ppl("B2") > ppl("base")),
        ("C: bigger models are better — more layers (perplexity falls from N/3 to 4N/3)",
         ("C1", "C2", "base", "C3"), lambda: ppl("C1") > ppl("C2") > ppl("base") > ppl("C3")),
        ("C: bigger models are better — wider d_model", ("C4", "base", "C5"), lambda: ppl("C4") > ppl("base") > ppl("C5")),
        ("C: bigger models are better — wider d_ff", ("C6", "base", "C7"), lambda: ppl("C6") > ppl("base") > ppl("C7")),
        ("D: dropout is very helpful in avoiding over-fitting (P_drop = 0 worse)", ("base", "D1"),
         lambda: bleu("D1") < bleu("base") and ppl("D1") > ppl("base")),
        ("D: label smoothing hurts perplexity (ε_ls = 0 has the lower perplexity) …", ("base", "D3"),
         lambda: ppl("D3") < ppl("base")),
        ("D: … but improves BLEU (ε_ls = 0 has the lower BLEU)", ("base", "D3"), lambda: bleu("D3") < bleu("base")),
        ("E: learned positional embeddings give nearly identical results (within 0.5 BLEU)", ("base", "E"),
         lambda: abs(bleu("E") - bleu("base")) <= 0.5),
        ("big: the big model is better than base", ("base", "big"),
         lambda: bleu("big") > bleu("base") and ppl("big") < ppl("base")),
    ]
    return [{"claim": text, "rows": list(ids), "reproduced": (bool(test()) if have(*ids) else None)}
            for text, ids, test in checks]


def markdown(results: dict) -> str:
    m, b = results["machine"], results["budget"]
    budget = f"{b['steps']} steps" if b["steps"] else f"{b['minutes']:g} minutes"
    dates = sorted({r.get("date", results["date"]) for r in results["rows"].values()} or {results["date"]})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"  # rows resumed in later sessions
    lines = [f"Measured on {m['cpu']} ({m['threads']} threads), {when}: every row {budget} of training "
             "(big: 3×), Bible es→en dev set, beam 4, α = 0.6, last checkpoint (no averaging), sacreBLEU.", "",
             "| row | the paper's change | paper PPL | paper BLEU | paper params ×10⁶ | our change (CPU base) "
             "| PPL | BLEU | params ×10⁶ | steps | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ROWS:
        res = results["rows"].get(r.id)
        ours = ", ".join(f"{k}={v}" for k, v in {**r.model, **r.train}.items()) or "N=3, d_model=256, d_ff=1024, h=8"
        measured = (f"{res['dev_ppl']:.2f} | {res['dev_bleu']:.2f} | {res['parameters'] / 1e6:.1f} | {res['steps']} | "
                    f"{res['train_seconds']:.0f}") if res else "not run | | | |"
        lines.append(f"| {r.id} | {r.paper} | {r.ppl:.2f} | {r.bleu:.1f} | {r.params or ''} | {ours} | {measured} |")
    lines += ["", "| the paper's conclusion | rows | reproduced here |", "|---|---|---|"]
    for c in results["claims"]:
        verdict = {True: "yes", False: "no", None: "not measured"}[c["reproduced"]]
        lines.append(f"| {c['claim']} | {', '.join(c['rows'])} | {verdict} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str | Path) -> Path:
    plt = pyplot()
    ids = [r.id for r in ROWS if r.id in results["rows"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, paper_key, label in ((axes[0], "dev_ppl", "ppl", "dev perplexity per word piece"),
                                      (axes[1], "dev_bleu", "bleu", "dev BLEU")):
        xs = range(len(ids))
        ax.bar([x - 0.2 for x in xs], [results["rows"][i][key] for i in ids], 0.4, label="measured (CPU scale)")
        twin = ax.twinx()
        twin.plot(list(xs), [getattr(BY_ID[i], paper_key) for i in ids], "o", color="C1", label="paper (right axis)")
        ax.set_xticks(list(xs), ids, fontsize=8)
        ax.set_ylabel(label)
        twin.set_ylabel(f"paper: {label}", color="C1")
        if key == "dev_ppl":
            base = results["rows"].get("base", {}).get(key)
            if base is not None and math.isfinite(base):
                ax.axhline(base, color="gray", lw=0.8, ls="--")
        ax.legend(loc="upper left", fontsize=7)
        twin.legend(loc="upper right", fontsize=7)
    fig.suptitle(f"Table 3 at CPU scale — {results['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def save(results: dict, out: str | Path) -> list[Path]:
    return save_table(out, "table3", results, markdown, plot if results["rows"] else None)
