"""docs/api.md's example runs as written, on the toy corpus and a tiny model instead of the Bible."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)


def _run(code: str, where: str) -> tuple[dict, str]:
    out, namespace = io.StringIO(), {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, where, "exec"), namespace)  # the project's own documentation
    return namespace, out.getvalue()


def test_the_top_level_examples_run_with_the_shipped_models(monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace, out = _run(python_blocks(ROOT / "docs" / "api.md")[0], "docs/api.md")
    lines = out.splitlines()
    assert lines[0] and lines[1].startswith("['") and lines[2].startswith("[('")
    assert float(lines[3].strip("[]")) < 0 and 0 <= float(lines[4]) <= 100
    assert "'ppl'" in lines[-1] or '"ppl"' in lines[-1]
    assert namespace["model"].kind == "translation" and namespace["lm"].kind == "language model"
    with pytest.raises(ValueError, match="generate needs a language model"):
        namespace["model"].generate("x")
    _, out = _run(python_blocks(ROOT / "README.md")[0], "README.md")
    assert out.splitlines()[0].startswith("['") and float(out.splitlines()[1].strip("[]")) < 0


def test_the_api_example_in_the_docs_runs(toy_corpus, tmp_path, monkeypatch):
    code = python_blocks(ROOT / "docs" / "api.md")[1]
    config = tmp_path / "tiny.yaml"
    config.write_text("model:\n  preset: tiny\n  d_model: 32\n  d_ff: 64\ntrain:\n  warmup: 4\n  max_tokens: 300\n"
                      "  save_every: 2\n  eval_every: 2\n  eval_bleu_sentences: 5\n  threads: 1\n")
    for old, new in [("data/bible-es-en/train.tsv", str(toy_corpus["train"])),
                     ("data/bible-es-en/dev.tsv", str(toy_corpus["dev"])),
                     ("data/bible-es-en/test.tsv", str(toy_corpus["test"])), ("configs/bible-es-en.yaml", str(config)),
                     ('"max_steps": 200', '"max_steps": 6'), ("vocab_size=8000", "vocab_size=120"),
                     ("threads=2", "threads=1")]:
        assert old in code, old
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/api.md", "exec"), namespace)  # the project's own documentation
    assert namespace["result"]["step"] == 6 and "val_bleu" in namespace["result"]
    assert out.getvalue().startswith("['") and namespace["scores"]["n"] == 40
    assert (tmp_path / "runs" / "api" / "averaged" / "model.safetensors").is_file()


def test_top_level_prepare_and_train(toy_corpus, tmp_path):
    import aiayn

    manifest = aiayn.prepare(train=str(toy_corpus["train"]), out=str(tmp_path / "data"), dev=str(toy_corpus["dev"]),
                             vocab_size=120)
    assert manifest["kind"] == "parallel"
    result = aiayn.fit(None, model={"preset": "tiny", "d_model": 32, "d_ff": 64},
                         train={"data": str(tmp_path / "data"), "out": str(tmp_path / "run"), "max_steps": 2,
                                "warmup": 2, "max_tokens": 300, "eval_bleu_sentences": 2, "threads": 1})
    assert result["step"] == 2
    model = aiayn.load(tmp_path / "run" / "checkpoints" / "step_0000002", device="cpu")
    assert isinstance(model.translate("a b"), str) and len(model.score(["a"], ["A"])) == 1


def test_importing_aiayn_is_light():
    import subprocess
    import sys

    code = "import sys, aiayn; print('torch' in sys.modules, aiayn.__version__, callable(aiayn.load))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False" and out[2] == "True"
