"""Memory and time of `aiayn prepare` and of the first training steps on generated corpora of millions of
pairs: does the peak memory stay bounded as the corpus grows (issue 19, corpora larger than memory)?

For each corpus size it generates a parallel corpus (random words from a 3,000-word list, 3–20 words a
sentence; the target is the source in upper case) and measures, each in a fresh process (peak resident
memory from the kernel's VmHWM, minus the process's memory before the work; and the peak of the process's
own memory, RssAnon sampled every 5 ms, which leaves out the pages of memory-mapped token files: those
are the kernel's page cache, dropped under pressure, not memory the process holds):

* ``prepare`` with the default --shard-size (1,000,000 pairs a shard), and with everything in one shard;
* ``prepare --lm`` of the source side as one text;
* the batches of 200 updates (the data side of training alone: offsets, length-sorted batches, reading);
* 30 training steps of a small Transformer on each prepared directory (peak memory and tokens per second).

    python benchmarks/scale_memory.py                       # 1M and 4M pairs (about 12 minutes, 2.5 GB of disk)
    python benchmarks/scale_memory.py --pairs 200000 --out runs/scale-quick

Writes benchmarks/results/scale_memory.json and .md, the table docs/scale.md quotes (put there by this
script; a test holds the page equal to the file); the CPU is printed and recorded.
A character vocabulary keeps SentencePiece's own sampling (at most 2M sentences, its memory) out of the
figures: what is measured is aiayn's reading, encoding and batching.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEAK = """
import re, sys, threading, time
{setup}
def status(key):
    return int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1))
anon = [0]
def watch():  # the process's own memory (RssAnon: not the pages of memory-mapped files), sampled every 5 ms
    while True:
        anon[0] = max(anon[0], status('RssAnon'))
        time.sleep(0.005)
open('/proc/self/clear_refs', 'w').write('5')  # reset the peak
before, before_anon = status('VmRSS'), status('RssAnon')
threading.Thread(target=watch, daemon=True).start()
t0 = time.perf_counter()
{work}
seconds = time.perf_counter() - t0
time.sleep(0.02)
print('PEAK', before, status('VmHWM'), before_anon, anon[0], seconds)
"""
IMPORTS = ("import torch, numpy\nfrom aiayn.data.prepare import prepare, PrepareConfig\n"
           "from aiayn.train.loop import train, load_run_config\nfrom aiayn.train.feed import Feed")


def measured(work: str) -> dict:
    """Run ``work`` in a fresh Python process (aiayn and PyTorch already imported); its peak memory (MB), the
    peak above the memory before the work, and seconds."""
    code = PEAK.format(setup=IMPORTS, work=work)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"})
    if r.returncode != 0:
        raise SystemExit(f"failed:\n{work}\n{r.stderr[-3000:]}")
    line = [x for x in r.stdout.splitlines() if x.startswith("PEAK")][-1].split()
    before, peak, before_anon, peak_anon = map(int, line[1:5])
    return {"peak_mb": round(peak / 1024, 1), "above_start_mb": round((peak - before) / 1024, 1),
            "own_above_start_mb": round((peak_anon - before_anon) / 1024, 1), "seconds": round(float(line[5]), 1)}


def generate(path: Path, pairs: int, seed: int = 0) -> int:
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=rng.integers(2, 10))) for _ in range(3000)]
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, pairs, 100_000):
            n = min(100_000, pairs - start)
            lengths = rng.integers(3, 21, size=n)
            ids = rng.integers(0, len(words), size=int(lengths.sum()))
            at = 0
            lines = []
            for k in lengths:
                s = " ".join(words[i] for i in ids[at : at + k])
                at += k
                lines.append(f"{s}\t{s.upper()}\n")
            f.writelines(lines)
    return path.stat().st_size


def table(results: dict) -> str:
    """The Markdown table docs/scale.md quotes (between <!-- scale_memory.md --> markers)."""
    def mb(m: dict) -> str:
        return f"{m['own_above_start_mb']:,.0f} MB ({m['above_start_mb']:,.0f} MB)"

    lines = ["| pairs (text) | prepare, shards of 1M | prepare, one shard | prepare --lm (source side) "
             "| batches of 200 updates, shards of 1M | the same, one shard | 30 training steps, shards of 1M "
             "| the same, one shard |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        cells = [f"{r['pairs']:,} ({r['text_mb']:,.0f} MB)"]
        cells += [f"{mb(r[k])}, {r[k]['seconds']:,.0f} s" for k in ("prepare_sharded", "prepare_one_shard", "prepare_lm")]
        cells += [mb(r[k]) for k in ("batches_sharded", "batches_one_shard")]
        cells += [f"{mb(r[k])}, {r[k]['tokens_per_s']:,} tokens/s" for k in ("train_sharded", "train_one_shard")]
        lines.append("| " + " | ".join(cells) + " |")
    m = results["machine"]
    lines.append("")
    lines.append(f"Peak memory above the process's start: its own (in brackets: with the pages of memory-mapped files). "
                 f"{m['cpu']}, {m['cores']} cores, {results['date']}; `benchmarks/results/scale_memory.json`.")
    return "\n".join(lines) + "\n"


def quote_in_docs(results_md: Path) -> None:
    """Put the table into docs/scale.md between its markers."""
    import re

    page = ROOT / "docs" / "scale.md"
    text = page.read_text(encoding="utf-8")
    body = results_md.read_text(encoding="utf-8")
    text = re.sub(r"(<!-- scale_memory.md -->\n).*?(<!-- /scale_memory.md -->)", lambda m: m.group(1) + body + m.group(2),
                  text, flags=re.S)
    page.write_text(text, encoding="utf-8")


def main() -> None:
    from machine import describe, write_results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=lambda s: [int(x) for x in s.split(",")], default=[1_000_000, 4_000_000],
                    help="corpus sizes, comma-separated")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="runs/scale-memory")
    ap.add_argument("--results", default=str(ROOT / "benchmarks/results/scale_memory.json"))
    a = ap.parse_args()
    print("machine:", describe())
    out = Path(a.out)
    rows = []
    for n in a.pairs:
        d = out / f"{n}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        t0 = time.perf_counter()
        size = generate(d / "corpus.tsv", n)
        print(f"{n:,} pairs: {size / 1e6:.0f} MB of text generated in {time.perf_counter() - t0:.0f} s")
        subprocess.run(["bash", "-c", f"cut -f1 {d}/corpus.tsv > {d}/text.txt"], check=True)
        row = {"pairs": n, "text_mb": round(size / 1e6, 1)}
        for name, shard in (("sharded", 1_000_000), ("one_shard", 10 * n)):
            row[f"prepare_{name}"] = measured(
                f"prepare(PrepareConfig(train='{d}/corpus.tsv', out='{d}/{name}', vocab='char', shard_size={shard}))")
            print(f"  prepare ({name}): {row[f'prepare_{name}']}")
        row["prepare_lm"] = measured(f"prepare(PrepareConfig(train='{d}/text.txt', out='{d}/lm', vocab='char', kind='lm'))")
        print(f"  prepare --lm ({size / 2e6:.0f} MB): {row['prepare_lm']}")
        for name in ("sharded", "one_shard"):  # the data side alone: the batches of 200 updates
            work = (f"run = load_run_config(None, {{'model': {{'preset': 'small'}}, 'train': {{'data': '{d}/{name}', "
                    "'max_tokens': 4096}})\n"
                    f"feed = Feed(run, 'parallel', __import__('json').load(open('{d}/{name}/manifest.json'))['splits'])\n"
                    "for _ in range(200): feed.next_update(0, 1)")
            row[f"batches_{name}"] = measured(work)
            print(f"  batches of 200 updates ({name}): {row[f'batches_{name}']}")
        for name in ("sharded", "one_shard"):
            run = d / f"train-{name}"
            work = (f"train(load_run_config(None, {{'model': {{'preset': 'small'}}, 'train': {{'data': '{d}/{name}', "
                    f"'out': '{run}', 'max_steps': {a.steps}, 'max_tokens': 4096, 'warmup': 100, 'log_every': 10, "
                    f"'eval_every': 100000, 'save_every': 100000, 'eval_bleu_sentences': 0, 'threads': 2}}}}))")
            m = measured(work)
            log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
            m["tokens_per_s"] = round(sum(r["tokens_per_s"] for r in log if r["kind"] == "train" and r["step"] > 1)
                                      / max(1, sum(1 for r in log if r["kind"] == "train" and r["step"] > 1)))
            row[f"train_{name}"] = m
            print(f"  train {a.steps} steps ({name}): {m}")
        rows.append(row)
        shutil.rmtree(d)  # gigabytes: keep only the figures
    path = write_results("scale_memory", {"steps": a.steps, "model": "small", "vocab": "char", "rows": rows}, a.results)
    md = path.with_suffix(".md")
    md.write_text(table(json.loads(path.read_text())), encoding="utf-8")
    if path.resolve() == (ROOT / "benchmarks/results/scale_memory.json").resolve():
        quote_in_docs(md)


if __name__ == "__main__":
    main()
