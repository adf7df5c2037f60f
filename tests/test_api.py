"""docs/api.md's example runs as written, on the toy corpus and a tiny model instead of the Bible."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_api_example_in_the_docs_runs(toy_corpus, tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S).group(1)
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
