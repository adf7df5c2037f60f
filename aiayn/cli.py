"""The ``aiayn`` command: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from pathlib import Path

from .config import LANGUAGE_MODELS, MASKED_LANGUAGE_MODELS, TRANSLATION_MODELS

log = logging.getLogger("aiayn")


def _die(msg: str, code: int = 2) -> None:
    print(f"aiayn: error: {msg}", file=sys.stderr)
    raise SystemExit(code)


def _threads(n: int) -> None:
    from .runtime import configure_process

    configure_process(n)


# --- params ------------------------------------------------------------------------------------
def cmd_params(a: argparse.Namespace) -> None:
    from .config import preset
    from .model import build_model, count_parameters, parameter_breakdown

    overrides = {"vocab_size": a.vocab_size} if a.vocab_size else {}
    model = build_model(preset(a.preset, **overrides))
    for name, n in parameter_breakdown(model).items():
        print(f"{name:<28} {n:>14,}")
    print(count_parameters(model))


# --- accel -------------------------------------------------------------------------------------
def cmd_accel(a: argparse.Namespace) -> None:
    from .accel.choose import report, report_lines

    _threads(a.threads)
    print("\n".join(report_lines(report(again=a.measure))))


# --- prepare -----------------------------------------------------------------------------------
def cmd_prepare(a: argparse.Namespace) -> None:
    from .data.prepare import PrepareConfig, prepare
    from .options import options_from

    m = prepare(options_from(PrepareConfig, a, kind="lm" if a.lm else "classify" if a.classify else "parallel"))
    if m.get("up_to_date"):
        print(f"{a.out}: up to date, nothing to do")
    for split, info in m["splits"].items():
        dropped = info.get("dropped", {})
        extra = f", dropped {sum(dropped.values())} ({', '.join(f'{k} {v}' for k, v in dropped.items())})" if dropped else ""
        if "pairs" in info:
            count = f"{info['pairs']:,} pairs, {info['src_tokens']:,} + {info['tgt_tokens']:,} tokens"
        elif "sentences" in info:
            per_label = ", ".join(f"{k}: {v:,}" for k, v in info["per_label"].items())
            count = f"{info['sentences']:,} sentences, {info['tokens']:,} tokens ({per_label})"
        else:
            count = f"{info['tokens']:,} tokens"
        print(f"{split}: {count}{extra}")
    print(f"vocabulary: {m['vocab']['kind']} ({m['vocab']['size']:,} entries) → {a.out}")


# --- train -------------------------------------------------------------------------------------
def cmd_train(a: argparse.Namespace) -> None:
    from .config import parse_overrides
    from .train.loop import TrainingDiverged, load_run_config, train

    run = load_run_config(a.config, parse_overrides(a.set or []))
    _threads(run.train.threads)
    try:
        result = train(run)
    except KeyboardInterrupt:
        print(f"aiayn: interrupted; the same command resumes from the last checkpoint in {run.train.out}/checkpoints",
              file=sys.stderr)
        raise SystemExit(130) from None
    except TrainingDiverged as e:
        _die(str(e), 1)
    if os.environ.get("RANK", "0") == "0":  # one summary line, from the first process
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}))
    if result.get("stopped_by"):
        print(f"aiayn: stopped by {result['stopped_by']} at step {result['step']}, saved; the same command resumes",
              file=sys.stderr)
        raise SystemExit(143 if result["stopped_by"] == "SIGTERM" else 130)


# --- average -----------------------------------------------------------------------------------
def cmd_average(a: argparse.Namespace) -> None:
    from .train.checkpoint import average_checkpoints, last_checkpoints

    dirs = last_checkpoints(a.run, a.last, a.min_step) if a.run else [Path(d) for d in a.checkpoints]
    if not dirs:
        _die("name checkpoint directories, or --run RUN_DIR with --last N")
    out = average_checkpoints(dirs, a.out, half=a.half, overwrite=a.overwrite)
    print(f"averaged {len(dirs)} checkpoints ({', '.join(d.name for d in dirs)}) → {out}")


# --- translate ---------------------------------------------------------------------------------
def _decode_cfg(a: argparse.Namespace):
    from .config import DecodeConfig
    from .options import options_from

    return options_from(DecodeConfig, a)


def _load(path: str, device: str = "cpu"):
    from .train.checkpoint import load_model_dir

    return load_model_dir(path, device)


def _arch(config: dict) -> str:
    from .train.checkpoint import model_arch

    return model_arch(config)


def cmd_translate(a: argparse.Namespace) -> None:
    from .data.corpus import input_lines
    from .decode.translate import BadInput, Translator, as_they_arrive

    _threads(a.threads)
    model, vocab, config = _load(a.model, a.device)
    if _arch(config) not in TRANSLATION_MODELS:
        _die(f"{a.model} is a {_arch(config)} model; use `aiayn generate` for language models")
    if a.chunk < 1:
        _die(f"--chunk {a.chunk}: must be at least 1")
    tr = Translator(model, vocab, _decode_cfg(a))
    name = a.input or "stdin"
    src = open(a.input, "rb") if a.input else sys.stdin.buffer
    dst = open(a.output, "w", encoding="utf-8") if a.output else sys.stdout
    try:
        lines = input_lines(src) if not a.input else input_lines(_progress(src, a.input))
        if not a.input:  # stdin may be a terminal or a pipe that stays open: answer each line as it arrives
            lines = as_they_arrive(lines)
        if a.format == "jsonl":
            for i, d in enumerate(tr.stream_detailed(lines, a.chunk, a.skip_invalid), 1):
                dst.write(json.dumps({"line": i, **(d if d is not None else {"translation": "", "skipped": True})},
                                     ensure_ascii=False) + "\n")
                dst.flush()
        elif a.format == "tsv":
            for hyps in tr.translate_nbest_stream(lines, a.chunk, a.skip_invalid):
                dst.write("\t".join(f"{score:.4f}\t{text}" for text, score in hyps) + "\n")
                dst.flush()
        elif a.nbest > 1:
            for i, hyps in enumerate(tr.translate_nbest_stream(lines, a.chunk, a.skip_invalid)):
                for text, score in hyps:
                    dst.write(f"{i}\t{score:.4f}\t{text}\n")
        else:
            for out in tr.stream(lines, chunk=a.chunk, skip_invalid=a.skip_invalid):
                dst.write(out + "\n")
                dst.flush()
    except BadInput as e:
        dst.flush()
        _die(f"{name}:{e.line}: {e.reason} (the lines before it were translated; --skip-invalid writes an empty "
             "line in place of such a line and goes on)")
    finally:
        if a.input:
            src.close()
        if a.output:
            dst.close()


def _progress(f, name: str):
    from tqdm import tqdm

    return tqdm(f, desc=name, unit=" lines", file=sys.stderr, disable=None)


# --- evaluate ----------------------------------------------------------------------------------
def cmd_evaluate(a: argparse.Namespace) -> None:
    if a.limit < 0:
        _die(f"--limit {a.limit}: must be 0 (all) or more")
    if a.block_size < 0:
        _die(f"--block-size {a.block_size}: must be 0 (the model's) or more")
    if not 0.0 <= a.tail_fraction < 1.0:
        _die(f"--tail-fraction {a.tail_fraction}: must be in [0, 1)")
    if a.output and Path(a.output).is_dir():
        _die(f"--output {a.output}: is a directory; give a file name for the translations")
    _threads(a.threads)
    model, vocab, config = _load(a.model, a.device)
    if config.get("labels"):  # a classifier
        from .evaluate import evaluate_classifier

        res, predicted = evaluate_classifier(model, vocab, config["labels"], a.test, a.limit)
        if a.output:
            Path(a.output).write_text("\n".join(predicted) + "\n", encoding="utf-8")
        print(f"{a.test}: {res['n']:,} sentences, accuracy {100 * res['accuracy']:.2f} %")
        print(json.dumps({"accuracy": round(res["accuracy"], 4), "n": res["n"], "per_label": res["per_label"]}))
        return
    if _arch(config) in LANGUAGE_MODELS + MASKED_LANGUAGE_MODELS:
        from .evaluate import evaluate_lm_text

        res = evaluate_lm_text(model, vocab, a.test, a.tail_fraction, a.block_size)
        print(f"{a.test}: {res['tokens']:,} tokens, loss {res['val_loss']:.4f} nats/token, perplexity {res['ppl']:.3f}")
        print(json.dumps({"val_loss": round(res["val_loss"], 4), "ppl": round(res["ppl"], 4), "tokens": res["tokens"]}))
        return
    from .evaluate import evaluate_translation

    scores, hyps = evaluate_translation(model, vocab, a.test, _decode_cfg(a), limit=a.limit, tokenize=a.tokenize,
                                        tokenized_bleu_lang=a.paper_bleu)
    if a.output:
        Path(a.output).write_text("\n".join(hyps) + "\n", encoding="utf-8")
    print(f"{a.test}: {scores['n']} sentences")
    print(f"  {scores['bleu_detail']}")
    print(f"  chrF2 = {scores['chrf']:.2f}")
    print(f"  signature: {scores['signature']}")
    keys = ["bleu", "chrf", "signature", "chrf_signature", "n"]
    if "tokenized_bleu" in scores:
        print(f"  tokenized BLEU (Moses tokens + multi-bleu, the paper's kind; not sacreBLEU) = {scores['tokenized_bleu']:.2f}")
        keys.append("tokenized_bleu")
    print(json.dumps({k: scores[k] for k in keys}))


# --- classify ----------------------------------------------------------------------------------
def cmd_classify(a: argparse.Namespace) -> None:
    import aiayn

    from .data.corpus import CorpusError, input_lines

    _threads(a.threads)
    model = aiayn.load(a.model, a.device)
    if model.kind != "classifier":
        _die(f"{a.model} is a {model.arch} model ({model.kind}): classify needs a fine-tuned classifier")
    name = a.input or "<stdin>"
    with open(a.input, "rb") if a.input else sys.stdin.buffer as f:
        lines = list(input_lines(f))
    for n, line in enumerate(lines, 1):
        if isinstance(line, CorpusError):
            _die(f"{name}:{n}: {line}")
    out = model.classify(lines, probability=True) if lines else []
    text = "".join(f"{label}\t{p:.4f}\n" if a.probability else f"{label}\n" for label, p in out)
    if a.output:
        Path(a.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


# --- score -------------------------------------------------------------------------------------
def cmd_score(a: argparse.Namespace) -> None:
    import aiayn

    from .evaluate import read_test_pairs

    _threads(a.threads)
    model = aiayn.load(a.model, a.device)
    sources, targets = read_test_pairs(a.test)
    total = 0.0
    for i in range(0, len(sources), a.batch):
        for logp in model.score(sources[i : i + a.batch], targets[i : i + a.batch]):
            print(f"{logp:.4f}")
            total += logp
    print(f"{a.test}: {len(sources)} pairs, total log P {total:.2f} nats", file=sys.stderr)


# --- generate ----------------------------------------------------------------------------------
def cmd_generate(a: argparse.Namespace) -> None:
    from .decode.sampling import SampleConfig, generate_text

    _threads(a.threads)
    model, vocab, config = _load(a.model, a.device)
    if _arch(config) not in LANGUAGE_MODELS:
        _die(f"{a.model} is not a language model (arch {_arch(config)}); use `aiayn translate`")
    if a.prompt is not None and a.prompt_file:
        _die("give --prompt or --prompt-file, not both")
    if a.num_samples < 1:
        _die(f"--num-samples {a.num_samples}: must be at least 1")
    try:
        prompt = Path(a.prompt_file).read_text(encoding="utf-8") if a.prompt_file else (a.prompt or "")
    except UnicodeDecodeError as e:
        _die(f"{a.prompt_file}: invalid UTF-8 ({e.reason} at byte {e.start})")
    from .options import options_from

    cfg = options_from(SampleConfig, a)
    for i in range(a.num_samples):
        text = generate_text(model, vocab, prompt, cfg, stop=a.stop)
        sys.stdout.write(prompt + text + "\n")
        if i + 1 < a.num_samples:
            sys.stdout.write("---\n")
        if cfg.seed is not None:
            cfg.seed += 1


# --- viz ---------------------------------------------------------------------------------------
def cmd_viz(a: argparse.Namespace) -> None:
    from . import viz

    if a.what == "curves":
        path = viz.plot_curves(a.run, a.out or Path(a.run) / "curves.png")
    elif a.what == "positional":
        path = viz.plot_positional(a.out or "positional.png", a.positions, a.d_model)
    else:
        model, vocab, config = _load(a.model)
        if _arch(config) not in ("encoder-decoder", "rnnsearch"):
            _die(f"attention pictures need a translation model with attention (a Transformer or rnnsearch), "
                 f"not {_arch(config)}")

        def parse(spec: str | None) -> list[int] | None:
            if spec is None or spec == "all":
                return None
            try:
                return [int(x) for x in spec.split(",")]
            except ValueError:
                _die(f"{spec!r}: expected comma-separated numbers")

        layers = parse(a.layers) if a.layers else "last"
        path = viz.plot_attention(model, vocab, a.text, a.out or "attention.png", tuple(a.kinds.split(",")),
                                  layers, parse(a.heads))
    print(path)


# --- word2vec ----------------------------------------------------------------------------------
def cmd_word2vec(a: argparse.Namespace) -> None:
    from . import word2vec

    if a.what == "train":
        from .config import Word2VecConfig
        from .options import options_from

        _threads(a.threads)
        cfg = options_from(Word2VecConfig, a)
        vectors, stats = word2vec.train_word2vec(cfg)
        out = word2vec.save(cfg.out, vectors, cfg, stats)
        print(f"{stats['words']:,} words, {stats['vocabulary']:,} in the vocabulary, {stats['words_per_second']:,} words/s "
              f"→ {out}/vectors.txt")
        print(json.dumps(stats))
        return
    vectors = word2vec.load(a.vectors)
    if a.what == "nearest":
        positive, negative = word2vec.parse_query(a.query)
        for word, sim in vectors.most_similar(positive, negative, topn=a.k):
            print(f"{word}\t{sim:.4f}")
    else:
        scores = vectors.evaluate()
        print(f"WordSim-353 Spearman {scores['wordsim353']:.4f} ({scores['wordsim353_pairs']} pairs covered), "
              f"SimLex-999 Spearman {scores['simlex999']:.4f} ({scores['simlex999_pairs']} pairs), "
              f"analogies {scores['analogy_accuracy']:.2%} of {scores['analogy_questions']:,} covered questions")
        print(json.dumps(scores))


# --- reproduce ---------------------------------------------------------------------------------
def cmd_reproduce(a: argparse.Namespace) -> None:
    _threads(a.threads)
    from .reproduce import table1, table2, table3

    if a.what == "table1":
        table, cfg = table1, table1.Table1Config.quick() if a.quick else table1.Table1Config()
    elif a.what == "table2":
        table, cfg = table2, table2.Table2Config(
            corpus=a.corpus, out=a.out, systems=table2.select_systems(a.systems), minutes=a.minutes,
            test_sentences=a.test_sentences, vocab_size=a.vocab_size, threads=a.threads)
    else:
        table, cfg = table3, table3.Table3Config(
            corpus=a.corpus, out=a.out, rows=table3.select_rows(a.rows), steps=a.steps, minutes=a.minutes,
            dev_sentences=a.dev_sentences, vocab_size=a.vocab_size, threads=a.threads)
    results = table.run(cfg, progress=lambda line: print(line, file=sys.stderr, flush=True))
    paths = table.save(results, a.out)
    print(table.markdown(results), end="")
    print(f"→ {', '.join(map(str, paths))}")


# --- serve -------------------------------------------------------------------------------------
def cmd_serve(a: argparse.Namespace) -> None:
    try:
        from .serve.app import Limits, serve
    except ImportError as e:
        _die(f"serving needs FastAPI and uvicorn: pip install 'aiayn[serve]' ({e})")
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: reachable from other machines", a.host)
    from .options import options_from

    serve(a.model, a.host, a.port, a.threads, options_from(Limits, a), a.device)


# --- export ------------------------------------------------------------------------------------
def cmd_export(a: argparse.Namespace) -> None:
    model, vocab, _ = _load(a.model)
    if a.to == "ctranslate2":
        try:
            from .export.ctranslate2 import to_ctranslate2
        except ImportError as e:
            _die(f"exporting to CTranslate2 needs its package: pip install ctranslate2 ({e})")
        out = to_ctranslate2(model, vocab, a.out, a.quantization, overwrite=a.overwrite)
    elif a.to == "hf":
        try:
            from .export.hf import ExportError, to_hf
            from .export.hf_lm import to_hf_causal_lm
        except ImportError as e:
            _die(f"exporting to Hugging Face needs transformers: pip install 'aiayn[export]' ({e})")
        export = to_hf_causal_lm if model.cfg.arch == "decoder-only" else to_hf  # GPT-2/GPT-NeoX, or Marian/Pegasus
        try:
            hf = export(model, vocab, a.out, overwrite=a.overwrite)
        except ExportError as e:
            _die(str(e))
        out = f"{a.out} ({type(hf).__name__})"
    else:
        try:
            from .export.onnx import to_onnx
        except ImportError as e:
            _die(f"exporting to ONNX needs the onnx package: pip install 'aiayn[export]' ({e})")
        out = to_onnx(model, vocab, a.out, beam=a.beam, nbest=a.nbest, alpha=a.alpha, extra=a.max_len_b,
                      overwrite=a.overwrite)
    print(out)


# --- import ------------------------------------------------------------------------------------
def cmd_import(a: argparse.Namespace) -> None:
    from .api import import_hf

    print(import_hf(a.src, a.out, overwrite=a.overwrite))


# --- demo --------------------------------------------------------------------------------------
def cmd_demo(a: argparse.Namespace) -> None:
    from .demo import run_demo

    _threads(a.threads)
    run_demo(a.model, a.n, device=a.device)


def _decode_args(p: argparse.ArgumentParser, nbest: bool = False) -> None:
    from .config import DecodeConfig
    from .options import add_options

    names = ["beam", "alpha", "stopping", "max_len_a", "max_len_b", "max_tokens", "compute_type"] + (["nbest"] if nbest else [])
    add_options(p.add_argument_group("search (§6.1)"), DecodeConfig, names)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = PyTorch's default)")
    _device_arg(p)


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N")


def build_parser() -> argparse.ArgumentParser:
    """The command line; every default comes from the library's configuration classes (aiayn.config)."""
    from . import __version__
    from .config import DecodeConfig, Limits, PrepareConfig, SampleConfig, Word2VecConfig
    from .options import add_options

    ap = argparse.ArgumentParser(prog="aiayn",
                                 description="The Transformer of 'Attention Is All You Need': train, translate, evaluate.")
    ap.add_argument("--version", action="version", version=f"aiayn {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="translate a few Spanish sentences with the shipped model and score 100 test verses")
    p.add_argument("--model", default=None, help="model directory (default: the shipped models/bible-es-en)")
    p.add_argument("--n", type=int, default=100, help="test verses to score")
    p.add_argument("--threads", type=int, default=0)
    _device_arg(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("params", help="count a preset's parameters (per component, total on the last line)")
    p.add_argument("--preset", default="paper-base")
    p.add_argument("--vocab-size", type=int, default=0, help="vocabulary size (default: the preset's)")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("accel", help="which CPU fast paths this machine uses, and the times that chose them")
    p.add_argument("--measure", action="store_true", help="measure again now (≈ 1 s) and keep the answer")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = PyTorch's default); each count measures apart")
    p.set_defaults(func=cmd_accel)

    p = sub.add_parser("prepare", help="validate a corpus, build the vocabulary, encode it for training")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--lm", action="store_true", help="monolingual text for a language model")
    kind.add_argument("--classify", action="store_true",
                      help="labelled sentences (TEXT<TAB>LABEL) to fine-tune an encoder-only model as a classifier")
    add_options(p, PrepareConfig)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train (or resume) a model from a YAML config")
    p.add_argument("config", nargs="?", help="YAML file with model: and train: sections")
    p.add_argument("--set", nargs="+", action="extend", metavar="SECTION.KEY=VALUE",
                   help="override config values, e.g. train.max_steps=100 (several after one --set, or --set again; "
                        "a key given twice takes the last value)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("average", help="average checkpoints into a new model directory (§6.1)")
    p.add_argument("checkpoints", nargs="*", help="checkpoint directories")
    p.add_argument("--run", help="a run directory: average its last --last checkpoints")
    p.add_argument("--last", type=int, default=5)
    p.add_argument("--min-step", type=int, default=0, help="with --run: only checkpoints from this step on")
    p.add_argument("--out", required=True)
    p.add_argument("--half", action="store_true", help="store the weights in float16")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it is a model directory aiayn wrote (never anything else)")
    p.set_defaults(func=cmd_average)

    p = sub.add_parser("translate", help="translate lines from stdin (or --input) to stdout (or --output)")
    p.add_argument("--model", required=True)
    p.add_argument("--input", "-i")
    p.add_argument("--output", "-o")
    p.add_argument("--chunk", type=int, default=256, help="lines read before translating (streaming)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="an input line that cannot be translated (invalid UTF-8, NUL, too long) becomes an empty "
                        "output line and a warning, instead of an error")
    _decode_args(p, nbest=True)  # --nbest N > 1 writes 'line<TAB>score<TAB>text'
    p.add_argument("--format", choices=["text", "tsv", "jsonl"], default="text",
                   help="text: the translation; tsv: score<TAB>translation (the n best, tab-separated); jsonl: "
                        "scores, tokens, per-token log-probabilities, alignments and the n best, one object per line")
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("evaluate", help="BLEU/chrF of a translation model, or loss/perplexity of a language model")
    p.add_argument("--model", required=True)
    p.add_argument("--test", required=True, help="TSV/JSONL test set (text file for a language model)")
    p.add_argument("--limit", type=int, default=0, help="only the first N sentences")
    p.add_argument("--output", help="write the translations here")
    p.add_argument("--block-size", type=int, default=0, help="language model: window size (default: the model's)")
    p.add_argument("--tail-fraction", type=float, default=0.0,
                   help="language model: score only the last fraction of the text (0.1 = nanoGPT's validation split)")
    p.add_argument("--tokenize", default="13a", help="sacreBLEU's tokenizer (13a, intl, zh, ja-mecab, char, none, …)")
    p.add_argument("--paper-bleu", metavar="LANG",
                   help="also the paper's kind of BLEU: Moses-tokenized for target language LANG, then multi-bleu "
                        "(needs aiayn[paper]; not comparable with sacreBLEU)")
    _decode_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score", help="forced decoding: log P(target | source) in nats of each pair of a test file")
    p.add_argument("--model", required=True)
    p.add_argument("--test", required=True, help="TSV, JSONL, or SRC_FILE,TGT_FILE: the pairs to score")
    p.add_argument("--batch", type=int, default=32, help="pairs per forward pass")
    p.add_argument("--threads", type=int, default=0)
    _device_arg(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("generate", help="continue a prompt with a language model (sampling)")
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", help="the text to continue")
    p.add_argument("--prompt-file", help="read the prompt from this file")
    add_options(p, SampleConfig)
    p.add_argument("--stop", action="append", help="cut the text before this string (repeatable)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    _device_arg(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("word2vec", help="word vectors (CBOW, skip-gram): train, nearest words and analogies, evaluate")
    ws = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    q = ws.add_parser("train", help="learn vectors from plain text; writes OUT/vectors.txt (word2vec text format)")
    add_options(q, Word2VecConfig)
    q.add_argument("--threads", type=int, default=0, help="CPU threads (0 = PyTorch's default)")
    q = ws.add_parser("nearest", help="the words nearest to a word or to an expression: 'king - man + woman'")
    q.add_argument("--vectors", required=True, help="a directory word2vec train wrote, or a word2vec text file")
    q.add_argument("query", help="a word, or words joined by + and -")
    q.add_argument("-k", type=int, default=10, help="how many words (default 10)")
    q = ws.add_parser("evaluate", help="WordSim-353, SimLex-999 and the analogy questions (sets from the gensim package)")
    q.add_argument("--vectors", required=True)
    p.set_defaults(func=cmd_word2vec)

    p = sub.add_parser("reproduce", help="the paper's tables measured on this machine (docs/paper.md)")
    rs = p.add_subparsers(dest="what", metavar="TABLE", required=True)
    q = rs.add_parser("table1", help="time per layer against n, sequential operations and path length (a few minutes)")
    q.add_argument("--quick", action="store_true", help="short lengths and d = 64: seconds, for a check")
    q = rs.add_parser("table2", help="test BLEU against training FLOPs: recurrent baselines and Transformers, equal minutes")
    q.add_argument("--systems", default="all", help="rnn-seq2seq, rnnsearch, transformer-base, transformer-big, or all")
    q.add_argument("--minutes", type=float, default=10.0, help="training minutes of every system (default 10)")
    q.add_argument("--corpus", default="data/bible-es-en", help="a directory with train.tsv, dev.tsv and test.tsv")
    q.add_argument("--test-sentences", type=int, default=0, help="test sentences translated (0 = all)")
    q.add_argument("--vocab-size", type=int, default=8000, help="shared BPE vocabulary of the prepared corpus")
    q = rs.add_parser("table3", help="the variations of the base model at CPU scale, one run per row (resumable)")
    q.add_argument("--rows", default="all", help="rows (base, A1 … E, big), groups (A … E), comma-separated, or all")
    q.add_argument("--steps", type=int, default=400, help="training steps per row, the same for every row (big: 3×)")
    q.add_argument("--minutes", type=float, default=0.0, help="or also a budget of training minutes per row")
    q.add_argument("--corpus", default="data/bible-es-en", help="a directory with train.tsv and dev.tsv")
    q.add_argument("--dev-sentences", type=int, default=0, help="dev sentences translated for BLEU (0 = all)")
    q.add_argument("--vocab-size", type=int, default=8000, help="shared BPE vocabulary of the prepared corpus")
    for q in rs.choices.values():
        q.add_argument("-o", "--out", default="reproduce", help="output directory (default ./reproduce)")
        q.add_argument("--threads", type=int, default=0, help="CPU threads (0 = PyTorch's default)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("viz", help="pictures: training curves, positional encoding, attention (PNG)")
    vs = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    q = vs.add_parser("curves", help="loss, dev BLEU and learning rate of a run")
    q.add_argument("run", help="a run directory (with log.jsonl)")
    q.add_argument("-o", "--out", help="PNG (default RUN/curves.png)")
    q = vs.add_parser("positional", help="the sinusoidal encoding as heatmaps (both layouts) and waves")
    q.add_argument("-o", "--out")
    q.add_argument("--positions", type=int, default=50)
    q.add_argument("--d-model", type=int, default=512)
    q = vs.add_parser("attention", help="encoder, decoder and encoder-decoder attention for one translation")
    q.add_argument("--model", required=True)
    q.add_argument("--text", required=True)
    q.add_argument("-o", "--out")
    q.add_argument("--kinds", default="cross", help="comma-separated subset of encoder,decoder,cross (default cross)")
    q.add_argument("--layers", help="comma-separated layer numbers, or 'all' (default: each kind's last layer)")
    q.add_argument("--heads", help="comma-separated head numbers (default all)")
    p.set_defaults(func=cmd_viz)

    p = sub.add_parser("serve", help="REST API (/translate, /generate, /info, /health, /docs) and a web page at /")
    p.add_argument("--model", required=True)
    p.add_argument("--host", default="127.0.0.1", help="default: this machine only")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=0)
    _device_arg(p)
    add_options(p.add_argument_group("limits"), Limits)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("classify", help="label each line of stdin (or --input) with a fine-tuned classifier")
    p.add_argument("--model", required=True)
    p.add_argument("--input", "-i")
    p.add_argument("--output", "-o")
    p.add_argument("--probability", action="store_true", help="write LABEL<TAB>probability")
    p.add_argument("--threads", type=int, default=0)
    _device_arg(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("export",
                       help="write a model for another engine: CTranslate2 (translation and language models), "
                            "Hugging Face (Marian/Pegasus, GPT-2/GPT-NeoX), ONNX (translation)")
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--to", choices=["ctranslate2", "hf", "onnx"], required=True)
    p.add_argument("--quantization", choices=["int8", "int8_float32", "float16", "bfloat16"], help="CTranslate2 weight type")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is an export aiayn wrote (never anything else)")
    g = p.add_argument_group("ONNX beam search (baked into beam_search.onnx)")
    add_options(g, DecodeConfig, ["beam", "nbest", "alpha", "max_len_b"])
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="turn another toolkit's translation model into an aiayn model directory: "
                                      "Hugging Face Marian (OPUS-MT) or Pegasus")
    p.add_argument("src", help="the model directory (config.json, weights, vocab.json, source.spm, target.spm)")
    p.add_argument("out", help="the aiayn model directory to write")
    p.add_argument("--from", dest="kind", choices=["hf"], required=True,
                   help="hf: a Hugging Face MarianMTModel/Pegasus directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it is a model directory aiayn wrote (never anything else)")
    p.set_defaults(func=cmd_import)
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = build_parser()
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if not getattr(a, "func", None):
        ap.print_help()
        raise SystemExit(2)
    from .config import ConfigError
    from .data.corpus import CorpusError
    from .train.checkpoint import CheckpointError

    try:
        a.func(a)
    except (ConfigError, CorpusError, CheckpointError, ValueError, FloatingPointError) as e:
        _die(str(e))
    except BrokenPipeError:
        pass
    except OSError as e:  # disk full, read-only, permissions, no such file: the environment, not a bug
        where = f"{e.filename}: " if e.filename else ""
        _die(f"{where}{e.strerror or e}" + (" (disk full: nothing was left half-written)" if e.errno == errno.ENOSPC else ""))


if __name__ == "__main__":
    main()
