"""Translation speed on this CPU: aiayn's own decoder against Hugging Face ``generate`` and CTranslate2.

    pip install -e '.[bench]'
    python benchmarks/translate_speed.py                    # 500 test sentences, batch 32, beam 4 and greedy
    python benchmarks/translate_speed.py --sentences 100    # a quick look

The shipped Spanish→English model (models/bible-es-en) is exported once to a HF model directory
(``aiayn export --to hf``; pre-LN → PegasusForConditionalGeneration) and to CTranslate2, so every engine
runs the same weights. Every engine gets the same batches: the first ``--sentences`` verses of the test
split, sorted by source length and cut into batches of ``--batch`` sentences, already tokenized (the
tokenizer is not timed). Maximum output length: source length + 50 (per sentence in aiayn, per batch
in HF and CTranslate2, which only take one limit per call). Length penalty: aiayn's GNMT α = 0.6;
HF and CTranslate2 take α = 0.6 in their own form (log P / |Y|^α). Stopping: every engine stops a
sentence's beam search once k hypotheses have ended (HF ``early_stopping=True``, CTranslate2's default,
aiayn ``stopping="count"``), so all do the same amount of search; ``aiayn-float32-bound`` is aiayn's
default, exact stopping rule (``stopping="bound"``, more steps), measured beside them for information.
Each engine runs in a process of its own (sharing one, the engines slowed each other), translates the
first batch once untimed (warm-up), then everything, timed; this is done ``--rounds`` times with the
engines taking turns (aiayn, HF, CTranslate2, aiayn, …), and each engine's best round counts (one round
moved a ratio by 25 % between two machines of the same kind). Reported: target
tokens per second (tokens produced, </s> excluded), the ratio to HF and to CTranslate2 at the same
precision — of the best rounds, and the range of each round's own ratio (its engines ran one after the
other), which decides the goal: met when every round reaches it, at the edge when the rounds fall on
both sides (see ``machine.goal_call``) — and each engine's sacreBLEU on those sentences. The last line is
a one-line summary of the ratios; the tables are also written as markdown beside the JSON (docs/inference.md quotes them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from machine import GOALS, describe, goal_call, ratio_cell, write_results  # noqa: E402

Batch = list[list[int]]
Engine = Callable[[Batch], list[list[int]]]


def _aiayn(model, compute_type: str, beam: int, stopping: str = "count") -> Engine:
    from aiayn.accel import for_inference
    from aiayn.data.batching import source_tensor
    from aiayn.decode.search import beam_search, greedy_search, max_lengths

    m = for_inference(model, compute_type)

    def run(batch: Batch) -> list[list[int]]:
        src = source_tensor(batch)
        limit = max_lengths(src)
        if beam == 1:
            return [h.tokens for h in greedy_search(m, src, limit)]
        return [h[0].tokens for h in beam_search(m, src, limit, beam, stopping=stopping)]

    return run


def _hf_input(batch: Batch):
    """A batch of source ids as HF's model takes them: each followed by </s>, padded with <pad>: (B, S + 1)."""
    import torch

    from aiayn.config import EOS_ID, PAD_ID

    ids = torch.full((len(batch), max(map(len, batch)) + 1), PAD_ID, dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, : len(x) + 1] = torch.tensor(x + [EOS_ID])
    return ids


def _hf(path: Path, beam: int) -> Engine:
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from aiayn.config import EOS_ID, PAD_ID

    hf = AutoModelForSeq2SeqLM.from_pretrained(path).eval()

    @torch.no_grad()
    def run(batch: Batch) -> list[list[int]]:
        ids = _hf_input(batch)
        n = ids.size(1)
        out = hf.generate(input_ids=ids, attention_mask=ids != PAD_ID, num_beams=beam, do_sample=False,
                          length_penalty=0.6, max_new_tokens=n - 1 + 50, early_stopping=True)
        res = []
        for row in out.tolist():
            row = row[1:]
            row = row[: row.index(EOS_ID)] if EOS_ID in row else row
            res.append([t for t in row if t != PAD_ID])
        return res

    return run


def _ct2(path: Path, compute_type: str, beam: int, threads: int, vocab) -> Engine:
    import ctranslate2

    tr = ctranslate2.Translator(str(path), device="cpu", compute_type=compute_type, intra_threads=threads, inter_threads=1)

    def run(batch: Batch) -> list[list[int]]:
        res = tr.translate_batch([vocab.pieces(x) for x in batch], beam_size=beam, length_penalty=0.6,
                                 max_decoding_length=max(map(len, batch)) + 50, max_batch_size=len(batch))
        return [[vocab.sp.piece_to_id(p) for p in r.hypotheses[0]] for r in res]

    return run


def _aiayn_encoder(model, compute_type: str) -> Engine:
    """Only the encoder of aiayn's search (what ``model.start`` runs before the first step)."""
    from aiayn.accel import for_inference
    from aiayn.data.batching import source_tensor

    m = for_inference(model, compute_type)
    return lambda batch: [m.encode(source_tensor(batch))[0]]


def _hf_encoder(path: Path) -> Engine:
    """Only the encoder of HF's ``generate``, on the same input."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from aiayn.config import PAD_ID

    encoder = AutoModelForSeq2SeqLM.from_pretrained(path).eval().get_encoder()

    @torch.no_grad()
    def run(batch: Batch) -> list:
        ids = _hf_input(batch)
        return [encoder(input_ids=ids, attention_mask=ids != PAD_ID).last_hidden_state]

    return run


def _time(engine: Engine, batches: list[Batch]) -> tuple[float, list[list[int]]]:
    engine(batches[0])  # warm-up
    t0 = time.perf_counter()
    outs = [y for b in batches for y in engine(b)]
    return time.perf_counter() - t0, outs


def engine_name(name: str) -> tuple[str, str, str]:
    """'aiayn-float32-bound' → ('aiayn', 'float32', 'bound'); 'ct2-int8' → ('ct2', 'int8', ''): who, compute
    type, and (aiayn only) a stopping rule other than the peers' ``count``."""
    kind, _, rest = name.partition("-")
    ctype, _, stopping = rest.partition("-")
    return kind, ctype, stopping


PEERS = {"hf": "HF `generate` (exported Pegasus)", "ct2": "CTranslate2"}


def goal_verdict(rounds: list[list[float] | None], goal: float) -> str:
    """'met' when every round's ratio of every measured search (beam 4, greedy) reaches the goal, else which
    searches are at the edge (rounds on both sides) or not met (no round reaches it)."""
    calls = [(search, goal_call(r, goal)) for search, r in zip(("beam 4", "greedy"), rounds) if r]
    short = {call: [search for search, c in calls if c == call] for call in ("at the edge", "not met")}
    return "; ".join(f"{call} ({', '.join(searches)})" for call, searches in short.items() if searches) or "met"


def markdown(record: dict) -> str:
    """The results as the tables docs/inference.md quotes (between its <!-- translate_speed.md --> markers)."""
    tok, bleu, ratios = record["tok_s"], record["bleu"], record["ratios"]
    m = record["machine"]
    names = list(dict.fromkeys(key.split(" ", 1)[1] for key in tok))

    def label(name: str) -> str:
        kind, ctype, stopping = engine_name(name)
        if kind != "aiayn":
            return f"{PEERS[kind]} {ctype}"
        return f"aiayn {ctype}, `stopping=\"{stopping}\"`" if stopping else f"**aiayn {ctype}**"

    def cell(table: dict, key: str, fmt: str) -> str:
        return format(table[key], fmt) if key in table else "—"

    lines = [f"{record['date']}, {m['cpu']} ({m['cores']} cores; {' '.join(m['features'])}), {record['threads']} threads, "
             f"torch {record['torch']}; {record['sentences']} test verses, batches of {record['batch']}"
             + (f"; each engine in a process of its own, its best of {record['rounds']} rounds, the engines taking turns:"
                if record.get("rounds", 1) > 1 else ":"), "",
             "| engine | beam 4: tok/s | BLEU | greedy: tok/s | BLEU |", "|---|---:|---:|---:|---:|"]
    for name in names:
        lines.append(f"| {label(name)} | {cell(tok, 'beam4 ' + name, ',')} | {cell(bleu, 'beam4 ' + name, '.2f')} | "
                     f"{cell(tok, 'beam1 ' + name, ',')} | {cell(bleu, 'beam1 ' + name, '.2f')} |")
    lines += ["", "| ratio | beam 4 | greedy | goal |", "|---|---:|---:|---|"]
    pairs = dict.fromkeys(key.split(" ", 1)[1] for key in ratios)
    per_round = record.get("ratio_rounds", {})
    mark = {"met": " ✓", "at the edge": " ≈", "not met": ""}
    for pair in pairs:
        ours, peer = pair.split("/")
        goal = GOALS[peer.split("-")[0]]
        keys = [f"beam{b} {pair}" for b in (4, 1)]
        got = [per_round.get(k, [ratios[k]]) if k in ratios else None for k in keys]
        shown = ["—" if r is None else ratio_cell(ratios[k], r) + mark[goal_call(r, goal)] for k, r in zip(keys, got)]
        lines.append(f"| {label(ours).strip('*')} / {label(peer)} | {shown[0]} | {shown[1]} | ≥ {goal}: "
                     f"{goal_verdict(got, goal)} |")
    if per_round:
        lines += ["", "Each ratio is of the two engines' best rounds; in brackets, the lowest and highest of the rounds' "
                      "own ratios (in a round the engines ran one after the other). The goal is met (✓) when every round "
                      "reaches it, at the edge (≈) when the rounds fall on both sides."]
    enc, secs = record.get("encoder_seconds", {}), record.get("seconds", {})
    if {"aiayn-float32", "hf-float32"} <= enc.keys() and {"beam1 aiayn-float32", "beam1 hf-float32"} <= secs.keys():
        ours, theirs = secs["beam1 aiayn-float32"], secs["beam1 hf-float32"]
        lines += ["", f"The encoder alone, float32, the same batches: aiayn {enc['aiayn-float32']:.2f} s, HF "
                      f"{enc['hf-float32']:.2f} s; in greedy search it is {enc['aiayn-float32'] / ours:.0%} of aiayn's "
                      f"{ours:.2f} s and {enc['hf-float32'] / theirs:.0%} of HF's {theirs:.2f} s. Were aiayn's decoder "
                      f"free, greedy float32 would be at most {theirs / enc['aiayn-float32']:.2f}× HF."]
    return "\n".join(lines) + "\n"


def _setup(args: argparse.Namespace):
    """The model, its vocabulary and every engine's batches (the same in the parent and in each worker)."""
    import torch

    from aiayn.evaluate import read_test_pairs
    from aiayn.runtime import keep_freed_memory
    from aiayn.train.checkpoint import load_model_dir

    keep_freed_memory()  # as `aiayn translate` does
    torch.set_num_threads(args.threads)
    model, vocab, _ = load_model_dir(args.model)
    src, refs = read_test_pairs(args.test, limit=args.sentences)
    ids = vocab.encode_batch(src)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = [[ids[i] for i in order[j: j + args.batch]] for j in range(0, len(order), args.batch)]
    return model, vocab, batches, [refs[i] for i in order], src, ids


def _engine(name: str, beam: int, model, vocab, work: Path, threads: int) -> Engine:
    if name == "aiayn-encoder":
        return _aiayn_encoder(model, "float32")
    if name == "hf-encoder":
        return _hf_encoder(work / "hf")
    kind, ctype, stopping = engine_name(name)
    if kind == "aiayn":
        return _aiayn(model, ctype, beam, stopping or "count")
    if kind == "hf":
        return _hf(work / "hf", beam)
    return _ct2(work / "ct2", ctype, beam, threads, vocab)


def _worker(args: argparse.Namespace) -> None:
    """One engine, one timed run, in a process of its own; the result as JSON in ``--worker-out``."""
    import torch

    model, vocab, batches, *_ = _setup(args)
    engine = _engine(args.worker, args.worker_beam, model, vocab, Path(args.workdir), args.threads)
    with torch.no_grad():
        seconds, outs = _time(engine, batches)
    encoder = args.worker.endswith("-encoder")
    Path(args.worker_out).write_text(json.dumps({"seconds": seconds, "outs": None if encoder else outs}))


def _in_process(args: argparse.Namespace, name: str, beam: int) -> tuple[float, list[list[int]] | None]:
    """Time ``name`` in a fresh process: engines sharing one process slowed each other (aiayn greedy fell
    from 2,374 to 1,926 tok/s over four rounds that alternated with CTranslate2 in one process, and stayed
    at 2,229–2,677 alone; two thread pools in one process are the likely cause, not isolated further)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        argv = [sys.executable, __file__, "--model", args.model, "--test", args.test, "--sentences", str(args.sentences),
                "--batch", str(args.batch), "--threads", str(args.threads), "--workdir", args.workdir,
                "--worker", name, "--worker-beam", str(beam), "--worker-out", str(out)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"aiayn: error: {name} (beam {beam}) failed:\n{done.stderr[-2000:]}")
        r = json.loads(out.read_text())
        return r["seconds"], r["outs"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "bible-es-en"))
    ap.add_argument("--test", default=str(ROOT / "data" / "bible-es-en" / "test.tsv"))
    ap.add_argument("--sentences", type=int, default=500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--beams", default="4,1", help="beam sizes to measure (1 = greedy)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3,
                    help="timed rounds, engines taking turns; the best counts, the rounds' range decides the goal")
    ap.add_argument("--engines", default="aiayn-float32,aiayn-bfloat16,aiayn-int8,hf-float32,ct2-float32,ct2-int8,"
                                          "aiayn-float32-bound")
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "translate_speed"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "translate_speed.json"), help="results file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: time this one engine in this process
    ap.add_argument("--worker-beam", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(args)

    import sacrebleu
    import torch

    model, vocab, batches, sorted_refs, src, ids = _setup(args)
    work = Path(args.workdir)
    engines = args.engines.split(",")
    if any(e.startswith("hf") for e in engines):
        from aiayn.export.hf import to_hf

        to_hf(model, vocab, work / "hf", overwrite=True)
    if any(e.startswith("ct2") for e in engines):
        from aiayn.export.ctranslate2 import to_ctranslate2

        to_ctranslate2(model, vocab, work / "ct2", overwrite=True)

    print(f"CPU: {describe()}")
    print(f"{len(src)} sentences ({sum(map(len, ids))} source tokens), batch {args.batch}, {args.threads} threads, "
          f"torch {torch.__version__}; each engine in a process of its own, {args.rounds} rounds taking turns")
    results: dict[tuple[str, int], dict] = {}
    beams = [int(x) for x in args.beams.split(",")]
    for beam in beams:
        timed = [n for n in engines if not (engine_name(n)[2] and beam == 1)]  # greedy has no stopping rule to vary
        rounds: dict[str, list[float]] = {n: [] for n in timed}
        outputs: dict[str, list[list[int]]] = {}
        for r in range(args.rounds):
            for name in timed:
                seconds, outs = _in_process(args, name, beam)
                if name in outputs and outs != outputs[name]:
                    raise SystemExit(f"aiayn: error: {name} translated differently in round {r + 1}")
                outputs[name] = outs  # type: ignore[assignment]
                rounds[name].append(seconds)
                print(f"beam {beam}  round {r + 1}  {name:<19} {sum(map(len, outs)) / seconds:8.0f} tok/s  "  # type: ignore[arg-type]
                      f"{seconds:6.1f} s", flush=True)
        for name in timed:
            outs, seconds = outputs[name], min(rounds[name])
            n_tok = sum(map(len, outs))
            bleu = sacrebleu.corpus_bleu([vocab.decode(o) for o in outs], [sorted_refs]).score
            results[(name, beam)] = {"tok_s": n_tok / seconds, "seconds": seconds, "rounds": rounds[name],
                                     "tokens": n_tok, "bleu": bleu}
            print(f"beam {beam}  {name:<19} {n_tok / seconds:8.0f} tok/s (best of {len(rounds[name])})  "
                  f"{n_tok:6d} tokens  BLEU {bleu:5.2f}", flush=True)

    # Where greedy search's time goes: the encoder (large float32 matrix products, the same BLAS for both) or
    # the decoder's steps. Were aiayn's decoder free, its greedy time would be its encoder time: HF's greedy
    # time over that is the ceiling of the ratio that faster decoding steps could reach.
    encoder_s = {}
    if "aiayn-float32" in engines and "hf-float32" in engines and 1 in beams:
        for _ in range(args.rounds):  # taking turns, as the engines above
            for name in ("aiayn-encoder", "hf-encoder"):
                key = name.replace("encoder", "float32")
                encoder_s[key] = min(encoder_s.get(key, float("inf")), _in_process(args, name, 1)[0])
        print("encoder alone: " + ", ".join(f"{k} {v:.2f} s" for k, v in encoder_s.items()))

    summary, paired = {}, {}
    for (name, beam), r in results.items():
        kind, ctype, stopping = engine_name(name)
        if kind != "aiayn" or stopping:  # ratios at the same stopping rule only
            continue
        for peer in ("hf-float32", f"ct2-{ctype}"):
            if (peer, beam) in results:
                summary[f"beam{beam} {name}/{peer}"] = round(r["tok_s"] / results[(peer, beam)]["tok_s"], 2)
                # each round's own ratio: tokens/s of ours over the peer's in the same round
                theirs = results[(peer, beam)]
                paired[f"beam{beam} {name}/{peer}"] = [round(r["tokens"] / a / (theirs["tokens"] / p), 3) for a, p in
                                                       zip(r["rounds"], theirs["rounds"])]
    print("ratios: " + json.dumps(summary))
    path = write_results("translate_speed", {"sentences": len(src), "batch": args.batch, "threads": args.threads,
                                             "torch": torch.__version__,
                                             "tok_s": {f"beam{b} {n}": round(r["tok_s"]) for (n, b), r in results.items()},
                                             "bleu": {f"beam{b} {n}": round(r["bleu"], 2) for (n, b), r in results.items()},
                                             "ratios": summary, "ratio_rounds": paired,
                                             "seconds": {f"beam{b} {n}": round(r["seconds"], 3)
                                                         for (n, b), r in results.items()},
                                             "rounds": args.rounds,
                                             "seconds_per_round": {f"beam{b} {n}": [round(t, 3) for t in r["rounds"]]
                                                                   for (n, b), r in results.items()},
                                             "encoder_seconds": {k: round(v, 3) for k, v in encoder_s.items()}},
                         args.out)
    path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())), encoding="utf-8")
    print(f"table: {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
