"""The `aiayn` command as a user runs it: each stage on a toy corpus, errors, the README's demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def aiayn(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "aiayn", *args], input=stdin, capture_output=True, text=True, env=ENV, cwd=ROOT)
    if check and r.returncode != 0:
        raise AssertionError(f"aiayn {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def test_params_prints_the_total_last():
    out = aiayn("params", "--preset", "paper-base", "--vocab-size", "37000").stdout.strip().splitlines()
    assert out[-1] == "63082496"
    assert any("decoder layer 5" in line for line in out)


def test_help_lists_commands():
    out = aiayn("--help").stdout
    for cmd in ("prepare", "train", "average", "translate", "evaluate", "generate", "demo", "params", "serve", "viz", "export"):
        assert cmd in out


def test_prepare_train_average_translate_evaluate(toy_corpus, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    aiayn("prepare", "--train", str(toy_corpus["train"]), "--dev", str(toy_corpus["dev"]), "--out", str(data), "--vocab-size",
          "120")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model:\n  preset: tiny\n  d_model: 32\n  d_ff: 64\ntrain:\n  data: {data}\n  out: {run}\n"
                   "  warmup: 20\n  max_tokens: 300\n  max_steps: 6\n  save_every: 3\n  eval_every: 3\n"
                   "  eval_bleu_sentences: 5\n")
    r = aiayn("train", str(cfg))
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["step"] == 6 and "val_loss" in last
    # Not a terminal: no progress bar, one line per log_every steps (50 by default: step 1 only here).
    assert "step 1: loss" in r.stderr and "\r" not in r.stderr
    aiayn("average", "--run", str(run), "--last", "2", "--out", str(tmp_path / "avg"), "--half")
    lines = "la casa\n\nel de que\n"
    out = aiayn("translate", "--model", str(tmp_path / "avg"), "--beam", "2", stdin=lines).stdout
    assert len(out.splitlines()) == 3 and out.splitlines()[1] == ""
    ev = aiayn("evaluate", "--model", str(tmp_path / "avg"), "--test", str(toy_corpus["test"]), "--limit", "10").stdout
    result = json.loads(ev.strip().splitlines()[-1])
    assert result["n"] == 10 and {"bleu", "chrf", "signature"} <= set(result)


def test_set_given_twice_keeps_both():
    """`--set a=1 --set b=2` sets both, as `--set a=1 b=2` does (with nargs alone the second --set replaced the first,
    and a run given train.out in the first went into the config's own directory); a key given twice: the last."""
    from aiayn.cli import build_parser
    from aiayn.config import parse_overrides

    a = build_parser().parse_args(["train", "c.yaml", "--set", "train.out=runs/x", "--set", "train.max_steps=9",
                                   "train.eval_every=3", "--set", "train.max_steps=10"])
    assert parse_overrides(a.set) == {"train": {"out": "runs/x", "max_steps": "10", "eval_every": "3"}}
    assert build_parser().parse_args(["train", "c.yaml"]).set is None


def test_bad_inputs_are_clear_errors(toy_corpus, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"a\tb\n\xff\tc\n")
    r = aiayn("prepare", "--train", str(bad), "--out", str(tmp_path / "d"), check=False)
    assert r.returncode == 2 and "bad.tsv:2: invalid UTF-8" in r.stderr
    r = aiayn("train", "--set", "model.preset=tiny", "train.nonsense=1", check=False)
    assert r.returncode == 2 and "unknown key" in r.stderr
    r = aiayn("translate", "--model", str(tmp_path), stdin="hola\n", check=False)
    assert r.returncode == 2 and "not an aiayn model directory" in r.stderr
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    r = aiayn("evaluate", "--model", str(ROOT / "models" / "bible-es-en"), "--test", str(empty), check=False)
    assert r.returncode == 2 and "empty" in r.stderr


def test_demo_runs_the_shipped_model():
    """The README's first command: the shipped model translates and scores test verses."""
    r = aiayn("demo", "--n", "20")
    assert "es: En el principio creó Dios los cielos y la tierra." in r.stdout
    assert "BLEU" in r.stdout
    english = [x.strip()[4:] for x in r.stdout.splitlines() if x.strip().startswith("en:")]
    assert len(english) == 6 and "beginning" in english[0] and "brother" in english[-1]


@pytest.mark.slow
def test_shipped_model_scores_on_the_test_split():
    r = aiayn("evaluate", "--model", str(ROOT / "models" / "bible-es-en"), "--test",
              str(ROOT / "data" / "bible-es-en" / "test.tsv"))
    assert json.loads(r.stdout.strip().splitlines()[-1])["bleu"] > 30


def test_options_come_from_the_configuration_fields():
    # Each option's default is the field's own: parsing no options gives the class's defaults, and
    # every option the CLI builds from a class carries the field's help text.
    from aiayn.cli import build_parser
    from aiayn.config import DecodeConfig, Limits, PrepareConfig, SampleConfig
    from aiayn.options import options_from

    ap = build_parser()
    a = ap.parse_args(["translate", "--model", "m"])
    assert options_from(DecodeConfig, a) == DecodeConfig()
    a = ap.parse_args(["translate", "--model", "m", "--beam", "6", "--compute-type", "int8", "--nbest", "2"])
    assert options_from(DecodeConfig, a) == DecodeConfig(beam=6, compute_type="int8", nbest=2)
    assert options_from(SampleConfig, ap.parse_args(["generate", "--model", "m"])) == SampleConfig()
    assert options_from(Limits, ap.parse_args(["serve", "--model", "m", "--timeout", "3"])) == Limits(timeout_s=3.0)
    a = ap.parse_args(["prepare", "--train", "t.tsv", "--out", "o"])
    assert options_from(PrepareConfig, a) == PrepareConfig(train="t.tsv", out="o")
    with pytest.raises(SystemExit):
        ap.parse_args(["prepare", "--out", "o"])  # --train is required: the field has no default
    helps = {x.dest: x.help for x in ap._subparsers._group_actions[0].choices["generate"]._actions}
    assert helps["temperature"].startswith("divides the logits") and "(default 0.8)" in helps["temperature"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message where there is no GPU")
def test_device_selection_errors_are_one_line(tmp_path):
    model = str(ROOT / "models" / "bible-es-en")
    ok = aiayn("translate", "--model", model, "--device", "cpu", "--beam", "1", stdin="Dios\n")
    assert ok.stdout.count("\n") == 1
    for args, message in ((["--device", "cuda"], "aiayn: error: device cuda: CUDA is not available here"),
                          (["--device", "tpu"], "aiayn: error: device 'tpu': expected auto, cpu, cuda or cuda:N"),
                          (["--compute-type", "float16"], "aiayn: error: float16 decoding is for GPUs")):
        r = aiayn("translate", "--model", model, *args, stdin="Dios\n", check=False)
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(message), r.stderr
        assert "Traceback" not in r.stderr
    for command in (["generate", "--model", str(ROOT / "models" / "shakespeare-char")], ["demo"], ["serve", "--model", model],
                    ["evaluate", "--model", model, "--test", "x"]):
        r = aiayn(*command, "--device", "cuda:1", check=False)
        assert r.returncode == 2 and "CUDA is not available" in r.stderr, (command, r.stderr)


def test_low_precision_copies_stay_on_their_device():
    """int8 is a CPU path and float16 a GPU one: each refuses the other device in one sentence (a model
    on the meta device stands in for a GPU one here)."""
    import torch

    from aiayn.accel.quantize import lower_precision
    from aiayn.config import preset
    from aiayn.model import Transformer

    off_cpu = Transformer(preset("tiny")).to("meta")
    with pytest.raises(ValueError, match="int8 decoding runs on the CPU"):
        lower_precision(off_cpu, "int8")
    assert next(lower_precision(off_cpu, "float16").parameters()).dtype == torch.float16
    with pytest.raises(ValueError, match="float16 decoding is for GPUs"):
        lower_precision(Transformer(preset("tiny")), "float16")


def test_score_prints_one_log_probability_per_pair(tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("Dios es amor.\tGod is love.\nDios es amor.\tLove is a dog.\n", encoding="utf-8")
    r = aiayn("score", "--model", str(ROOT / "models" / "bible-es-en"), "--test", str(pairs), "--device", "cpu")
    good, bad = map(float, r.stdout.split())
    assert bad < good < 0 and "2 pairs" in r.stderr


def test_translate_formats_tsv_and_jsonl(tmp_path):
    model = str(ROOT / "models" / "bible-es-en")
    r = aiayn("translate", "--model", model, "--format", "jsonl", "--nbest", "2", "--skip-invalid",
              stdin="Y dijo Dios: Sea la luz.\nbad\x00line\nDios es amor.\n")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["line"] for row in rows] == [1, 2, 3] and rows[1]["skipped"] is True
    for row in (rows[0], rows[2]):
        # the forced-decoding pass over the hypothesis gives back the search's log-probability, token by token
        assert sum(row["token_log_probs"]) == pytest.approx(row["log_prob"], abs=1e-3)
        assert len(row["token_log_probs"]) == len(row["tokens"]) == len(row["alignment"])
        assert all(0 <= j < len(row["source_tokens"]) for j in row["alignment"])
        assert len(row["nbest"]) == 2 and row["nbest"][0]["translation"] == row["translation"]
    assert rows[2]["alignment"][:3] == [0, 1, 2]  # God ← Dios, is ← es, love ← amor
    r = aiayn("translate", "--model", model, "--format", "tsv", "--nbest", "2", stdin="Dios es amor.\n")
    fields = r.stdout.rstrip("\n").split("\t")
    assert len(fields) == 4 and fields[1] == "God is love." and float(fields[0]) > float(fields[2])


def test_translate_answers_each_line_of_an_open_pipe_as_it_arrives():
    import select

    p = subprocess.Popen([sys.executable, "-m", "aiayn", "translate", "--model", str(ROOT / "models" / "bible-es-en"),
                          "--beam", "1", "--device", "cpu"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for line in ["Dios es amor.", "Y dijo Dios: Sea la luz."]:
            p.stdin.write(line + "\n")
            p.stdin.flush()  # the pipe stays open: the answer must come before any further input
            ready, _, _ = select.select([p.stdout], [], [], 60)
            assert ready, f"no answer to {line!r} while stdin stayed open"
            assert p.stdout.readline().strip()
        p.stdin.close()
        assert p.wait(timeout=60) == 0
    finally:
        p.kill()


def test_an_installed_wheel_finds_the_shipped_models(tmp_path):
    """`pip install .` (not editable) then `aiayn demo`: the wheel carries the shipped models and the demo's
    test verses (in <prefix>/share/aiayn). Built here and installed into a fresh venv, which borrows only
    the dependencies (torch …) from this environment."""
    import site
    import sysconfig

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], check=True,
                             capture_output=True, text=True).stdout.strip()
    deps = [p for p in site.getsitepackages() + [sysconfig.get_path("purelib")] if Path(p).is_dir()]
    (Path(purelib) / "deps.pth").write_text("\n".join(deps) + "\n")  # a path line: the editable aiayn is not loaded
    wheel = next((tmp_path / "dist").glob("aiayn-*.whl"))
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    r = subprocess.run([str(venv / "bin" / "aiayn"), "demo", "--n", "3", "--device", "cpu"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"model {venv}/share/aiayn/models/bible-es-en" in r.stdout and "3 test verses" in r.stdout
    located = subprocess.run([str(py), "-c", "import aiayn; print(aiayn.__file__)"], capture_output=True, text=True,
                             cwd=tmp_path).stdout
    assert located.startswith(str(venv))  # the installed copy, not this checkout
