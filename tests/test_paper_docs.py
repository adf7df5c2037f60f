"""docs/paper.md (and its Chinese version) quote the result files of `aiayn reproduce` exactly, and
every `aiayn` command on them parses as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from aiayn.cli import build_parser

from .test_lineage_docs import commands

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "docs" / "paper.md", ROOT / "docs" / "zh" / "paper.md"]
RESULTS = ROOT / "benchmarks" / "results" / "paper"


def quoted(page: Path) -> dict[str, str]:
    """{'table1.md': the text between <!-- table1.md --> and <!-- /table1.md -->, …} (and the others')"""
    text = page.read_text(encoding="utf-8")
    names = r"table\d\.md|table2_budgets\.md|postln\.md|postln_batch\.md"
    return {name: body.lstrip("\n") for name, body in re.findall(rf"<!-- ({names}) -->\n(.*?)<!-- /\1 -->", text, re.S)}


@pytest.mark.parametrize("page", PAGES, ids=["en", "zh"])
def test_the_pages_quote_the_measurements_as_written(page):
    blocks = quoted(page)
    assert set(blocks) == {"table1.md", "table2.md", "table2_budgets.md", "table3.md", "postln.md", "postln_batch.md"}
    for name, body in blocks.items():
        measured = RESULTS / name
        assert body == (measured.read_text(encoding="utf-8") if measured.exists() else ""), name
    for image in re.findall(r"\]\((\.\./)+(benchmarks/results/paper/[\w.]+\.png)\)", page.read_text(encoding="utf-8")):
        assert (ROOT / image[1]).is_file(), image


@pytest.mark.parametrize("page", PAGES, ids=["en", "zh"])
def test_every_command_parses(page):
    found = commands(page)
    assert len(found) >= 6
    for line in found:
        build_parser().parse_args(shlex.split(line)[1:])


def test_scale_page_quotes_the_memory_measurements_as_written():
    """docs/scale.md's memory table is benchmarks/results/scale_memory.md, which is the JSON results drawn as a table."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("scale_memory", ROOT / "benchmarks" / "scale_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = ROOT / "benchmarks" / "results" / "scale_memory"
    table = results.with_suffix(".md").read_text(encoding="utf-8")
    assert table == bench.table(json.loads(results.with_suffix(".json").read_text(encoding="utf-8")))
    page = (ROOT / "docs" / "scale.md").read_text(encoding="utf-8")
    assert re.search(r"<!-- scale_memory.md -->\n(.*?)<!-- /scale_memory.md -->", page, re.S).group(1) == table


def test_table2_at_several_budgets_is_read_from_the_runs(tmp_path):
    """benchmarks/table2_budgets.py: each system's BLEU (steps) per budget, the BLEU gained per doubling of
    counted FLOPs between the first and last budget, and the machine; a run at the same budget twice is an error."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("table2_budgets", ROOT / "benchmarks" / "table2_budgets.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def run(minutes, bleu, flops):
        return {"table": "2", "date": "2026-12-07", "machine": {"cpu": "CPU X", "threads": 2},
                "budget": {"minutes": minutes}, "rows": {"rnnsearch": {"test_bleu": bleu, "steps": minutes * 40,
                                                                       "flops_counted": flops}}}

    runs = [run(20, 9.0, 4e13), run(10, 3.0, 1e13), run(10, 1.0, 1e13)]
    paths = [tmp_path / f"table2_{i}.json" for i in range(3)]
    for p, r in zip(paths, runs):
        p.write_text(json.dumps(r))
    loaded = bench.load(paths[:2])
    assert [r["budget"]["minutes"] for r in loaded] == [10, 20]
    text = bench.markdown(loaded)
    assert "CPU X (2 threads), 2026-12-07" in text.splitlines()[0]
    row = next(line for line in text.splitlines() if line.startswith("| RNNsearch"))
    assert row == "| RNNsearch (Bahdanau et al. 2014) | 3.00 (400) | 9.00 (800) | +3.0 |"  # 6 BLEU over two doublings
    assert "| LSTM encoder-decoder (Sutskever et al. 2014) | not run | not run | — |" in text
    with pytest.raises(SystemExit, match="same budget"):
        bench.load(paths)
    (tmp_path / "other.json").write_text(json.dumps({"table": "3"}))
    with pytest.raises(SystemExit, match="not a result of"):
        bench.load([tmp_path / "other.json"])


def test_the_25k_table_is_its_results_file_drawn():
    """benchmarks/postln_batch.md (quoted by docs/paper.md) is postln_batch.json through the script's own markdown()."""
    import json

    from .test_benchmark_docs import benchmark

    bench = benchmark("postln_batch")
    result = json.loads((RESULTS / "postln_batch.json").read_text(encoding="utf-8"))
    assert (RESULTS / "postln_batch.md").read_text(encoding="utf-8") == bench.markdown(result)


def test_a_run_curve_keeps_the_score_of_a_deleted_checkpoint_and_makes_none_up(tmp_path):
    """benchmarks/run_curve.py: dev figures come from the run's log, test scores from checkpoints on disk or, for
    one deleted since, from the previous results file; a step with neither has no test score."""
    import json

    from .test_benchmark_docs import benchmark

    bench = benchmark("run_curve")
    run = tmp_path / "run"
    run.mkdir()
    log = [{"kind": "train", "step": 50, "time": 30.0, "loss": 5.0},
           {"kind": "eval", "step": 250, "time": 150.0, "ppl": 40.0, "val_bleu": 3.5},
           {"kind": "eval", "step": 500, "time": 301.0, "ppl": 20.0, "val_bleu": 8.25}]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    previous = tmp_path / "previous.json"
    previous.write_text(json.dumps({"run": "runs/run", "rows": [{"step": 250, "test": {"bleu": 4.0, "chrf": 20.0}},
                                             {"step": 100, "test": {"bleu": 1.0, "chrf": 9.0}},
                                             {"step": 500, "test": None}]}))
    tests = bench.test_scores(run, tmp_path / "unused.tsv", bench.previous_tests(previous, run))  # no checkpoints left
    assert tests == {100: {"bleu": 1.0, "chrf": 9.0}, 250: {"bleu": 4.0, "chrf": 20.0}}
    assert bench.curve(run, tests) == [
        {"step": 100, "minutes": None, "dev_ppl": None, "dev_bleu": None, "test": {"bleu": 1.0, "chrf": 9.0}},
        {"step": 250, "minutes": 2.5, "dev_ppl": 40.0, "dev_bleu": 3.5, "test": {"bleu": 4.0, "chrf": 20.0}},
        {"step": 500, "minutes": 5.0, "dev_ppl": 20.0, "dev_bleu": 8.25, "test": None}]
    assert bench.previous_tests(tmp_path / "absent.json", run) == {}
    assert bench.previous_tests(previous, tmp_path / "another-run") == {}  # another run's scores are not this one's


def test_encoder_collapse_keeps_the_rows_of_deleted_checkpoints_measured_alike(tmp_path):
    """benchmarks/encoder_collapse.py: a step measured before but whose checkpoint is gone keeps its earlier row,
    marked carried; not a model compared beside the run, not a step measured now, not from another run or sentence
    count."""
    import json

    from .test_benchmark_docs import benchmark

    bench = benchmark("encoder_collapse")
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"run": "runs/r", "sentences": 64, "rows": [
        {"name": "step_0000250", "step": 250, "variance": [0.8, 0.01]},
        {"name": "step_0000500", "step": 500, "variance": [0.8, 0.02]},
        {"name": "models/x", "step": 6007, "variance": [0.9, 0.8], "compare": True}]}))
    assert bench.carried(earlier, "runs/r", {0, 500}, 64) == [{"name": "step_0000250", "step": 250, "variance": [0.8, 0.01],
                                                     "carried": True}]
    assert bench.carried(earlier, "runs/r", {0}, 32) == []
    assert bench.carried(earlier, "runs/other", {0}, 64) == []
    assert bench.carried(tmp_path / "absent.json", "runs/r", set(), 64) == []
