"""Nothing lost, nothing spoiled (issue 14): outputs never replace what aiayn did not write, bad settings
and inputs get one-line errors, a killed training resumes exactly with a clean log, signals stop cleanly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from aiayn.atomic import OutputError, atomic_directory, check_replaceable
from aiayn.config import ConfigError, preset
from aiayn.data.prepare import PrepareConfig, prepare
from aiayn.model import build_model
from aiayn.train.checkpoint import CheckpointError, average_checkpoints, load_model_dir
from aiayn.train.loop import Trainer, train

from .conftest import make_pairs, write_tsv
from .test_cli import ENV, ROOT, aiayn
from .test_train import run_cfg


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its content: what must survive untouched."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_run(toy_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rel") / "run"
    train(run_cfg(toy_data, out, max_steps=4, save_every=2))
    return out


# --- 1. data loss --------------------------------------------------------------------------------
def test_prepare_refuses_a_users_folder(toy_corpus, tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    before = tree(mine)
    r = aiayn("prepare", "--train", str(toy_corpus["train"]), "--out", str(mine), "--vocab-size", "100", check=False)
    assert r.returncode == 2 and r.stderr.startswith("aiayn: error: ") and "not written by aiayn" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = aiayn("prepare", "--train", str(toy_corpus["train"]), "--out", str(mine), "--vocab-size", "100", "--overwrite",
              check=False)
    assert r.returncode == 2 and tree(mine) == before


def test_average_never_replaces_its_own_run_or_a_foreign_folder(small_run, tmp_path):
    before = tree(small_run)
    r = aiayn("average", "--run", str(small_run), "--last", "2", "--out", str(small_run), check=False)
    assert r.returncode == 2 and "aiayn: error:" in r.stderr
    r = aiayn("average", "--run", str(small_run), "--last", "2", "--overwrite",
              "--out", str(small_run / "checkpoints" / "step_0000004"), check=False)
    assert r.returncode == 2 and "being averaged" in r.stderr
    assert tree(small_run) == before
    ckpts = sorted((small_run / "checkpoints").glob("step_*"))
    out = tmp_path / "avg"
    average_checkpoints(ckpts, out)
    with pytest.raises(OutputError, match="--overwrite"):
        average_checkpoints(ckpts, out)
    average_checkpoints(ckpts, out, overwrite=True)  # an aiayn model directory may be replaced when asked
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"):
        average_checkpoints(ckpts, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_replacing_needs_the_right_kind_of_aiayn_directory(small_run, tmp_path):
    with pytest.raises(OutputError):  # a run directory is not a model directory
        check_replaceable(small_run, overwrite=True, what="model directory")
    with pytest.raises(OutputError):  # a model directory is not a data directory
        check_replaceable(small_run / "checkpoints" / "step_0000004", overwrite=True, what="data directory")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        check_replaceable(f, overwrite=True)


def test_training_refuses_a_users_folder_as_its_run_directory(toy_data, tmp_path):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "config.yaml").write_text("# my own notes\n")
    with pytest.raises(OutputError, match="config.yaml that aiayn did not write"):
        train(run_cfg(toy_data, mine, max_steps=1))
    assert (mine / "config.yaml").read_text() == "# my own notes\n"


@pytest.mark.parametrize("key,value", [("keep_last", 0), ("keep_last", -1), ("save_every", 0), ("eval_every", 0),
                                       ("log_every", 0), ("update_freq", 0), ("warmup", 0), ("max_tokens", 0)])
def test_settings_that_would_crash_or_delete_are_refused(toy_data, tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        run_cfg(toy_data, tmp_path / "r", **{key: value})


def test_a_killed_write_leaves_the_old_version_and_no_litter(tmp_path):
    final = tmp_path / "m"
    with atomic_directory(final) as d:
        (d / "config.json").write_text('{"format": "aiayn-model/1"}')
    with pytest.raises(RuntimeError):
        with atomic_directory(final, overwrite=True) as d:
            (d / "config.json").write_text("half")
            raise RuntimeError("killed")
    assert json.loads((final / "config.json").read_text())["format"] == "aiayn-model/1"
    # What a SIGKILL leaves: a temporary directory of a dead process, and an old version caught mid-swap.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / f".m.tmp-{dead}-abc").mkdir()
    old = tmp_path / f".m.old-{dead}-abc"
    old.mkdir()
    os.replace(final, old / "m")
    with atomic_directory(final, overwrite=True) as d:
        (d / "config.json").write_text('{"format": "aiayn-model/1", "new": 1}')
    assert json.loads((final / "config.json").read_text())["new"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# --- 7/8. clear errors, no silent wrong results ----------------------------------------------------
def test_damaged_or_non_finite_weights_are_refused(small_run, tmp_path):
    import shutil

    src = small_run / "checkpoints" / "step_0000004"
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    w = load_file(str(bad / "model.safetensors"))
    w[next(iter(w))][0, 0] = float("nan")
    save_file(w, str(bad / "model.safetensors"), metadata={"format": "aiayn-model/1"})
    with pytest.raises(CheckpointError, match="checksum"):
        load_model_dir(bad)
    config = json.loads((bad / "config.json").read_text())
    del config["weights_sha256"]  # a directory from before checksums: the NaN itself is caught
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not finite"):
        load_model_dir(bad)
    model, vocab, _ = load_model_dir(src)
    with torch.no_grad():
        next(model.parameters())[0] = float("inf")
    with pytest.raises(CheckpointError, match="not finite"):
        from aiayn.train.checkpoint import save_model_dir

        save_model_dir(tmp_path / "never", model, model.cfg, vocab)
    assert not (tmp_path / "never").exists()


def test_absurd_shapes_are_refused_before_allocating():
    for kw in ({"vocab_size": 10**12}, {"n_encoder_layers": 10**7}):
        with pytest.raises(ConfigError, match="parameters"):
            build_model(preset("tiny", **kw))


def test_a_damaged_latest_json_is_a_clear_error(toy_data, tmp_path):
    out = tmp_path / "run"
    train(run_cfg(toy_data, out, max_steps=2, save_every=1))
    (out / "checkpoints" / "latest.json").write_text('{"step": 2}')
    with pytest.raises(CheckpointError, match="latest.json"):
        Trainer(run_cfg(toy_data, out, max_steps=3))
    (out / "checkpoints" / "latest.json").write_text('{"path": "../../elsewhere"}')
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        Trainer(run_cfg(toy_data, out, max_steps=3))


def test_translate_keeps_lines_aligned_and_names_the_bad_line(small_run, tmp_path):
    model = str(small_run / "checkpoints" / "step_0000004")
    inp = tmp_path / "in.txt"
    # A lone \r inside line 1, a CRLF line, then line 3 with invalid UTF-8, then a good line.
    inp.write_bytes(b"la casa\r el de\nlos se\r\n\xff\xfe bad\ny a en\n")
    ok = aiayn("translate", "--model", model, "-i", str(inp), "--beam", "1", "--skip-invalid")
    out = ok.stdout.split("\n")
    assert len(out) == 5 and out[2] == "" and out[4] == ""  # four outputs for four lines, the bad one empty
    assert "line 3" in ok.stderr
    r = aiayn("translate", "--model", model, "-i", str(inp), "--beam", "1", check=False)
    assert r.returncode == 2 and f"{inp}:3: invalid UTF-8" in r.stderr
    assert r.stdout.split("\n")[:2] == out[:2]  # the good lines before it were written
    r = aiayn("translate", "--model", model, "--beam", "1", "--max-tokens", "64", check=False,
              stdin="la casa\n" + " ".join(["ñ"] * 600) + "\ny a\n")
    assert r.returncode == 2 and "stdin:2:" in r.stderr and "tokens" in r.stderr and len(r.stdout.splitlines()) == 1


@pytest.mark.parametrize("args,expected", [
    (["translate", "--nbest", "0"], "nbest"), (["translate", "--max-len-b", "-1"], "max-len-b"),
    (["translate", "--max-len-a", "-1"], "max-len-a"), (["evaluate", "--test", "x.tsv", "--limit", "-1"], "--limit"),
    (["evaluate", "--test", "x.tsv", "--output", "."], "is a directory"),
])
def test_bad_decoding_options_are_one_line_errors(small_run, args, expected):
    model = str(small_run / "checkpoints" / "step_0000004")
    r = aiayn(*args, "--model", model, check=False, stdin="la casa\n")
    assert r.returncode == 2 and r.stderr.startswith("aiayn: error:") and expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_prepare_refuses_bad_options_and_inputs(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world\n" * 50)
    cases = [(["--lm", "--vocab", "char", "--valid-fraction", "1.5"], "valid-fraction"),
             (["--vocab-size", "0"], "vocab-size"), (["--vocab-size", "5"], "vocab-size"),
             (["--spm-model", str(text)], "not a usable SentencePiece model")]
    for extra, expected in cases:
        r = aiayn("prepare", "--train", str(text), "--out", str(tmp_path / "o"), *extra, check=False)
        assert r.returncode == 2 and expected in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = aiayn("prepare", "--lm", "--vocab", "char", "--train", str(empty), "--out", str(tmp_path / "o"), check=False)
    assert r.returncode == 2 and "no text" in r.stderr
    nul = tmp_path / "nul.tsv"
    nul.write_bytes(b"a\tb\nc\x00d\te\n")
    r = aiayn("prepare", "--train", str(nul), "--out", str(tmp_path / "o"), check=False)
    assert r.returncode == 2 and f"{nul}:2: NUL" in r.stderr
    assert not (tmp_path / "o").exists()


# --- 6. kill -9 at any moment, then resume ------------------------------------------------------------
KILLER = r"""
import os, signal, sys
from aiayn.train import loop
point, k = os.environ["KILL_POINT"], int(os.environ["KILL_AT"])
calls = 0
def counting(f):
    def wrapped(*a, **kw):
        global calls
        calls += 1
        if calls == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return f(*a, **kw)
    return wrapped
if point == "step":
    loop.Trainer.train_step = counting(loop.Trainer.train_step)
elif point == "weights":   # inside a checkpoint write, after the weights, before the rest
    import aiayn.train.checkpoint as ck
    ck.save_model = counting(ck.save_model)
elif point == "rename":    # any rename: the atomic swap of a checkpoint, latest.json, the log
    os.replace = counting(os.replace)
elif point == "rmtree":    # removing an old checkpoint
    loop.shutil.rmtree = counting(loop.shutil.rmtree)
from aiayn.cli import main
main(sys.argv[1:])
"""

COMMON = ["model.preset=tiny", "model.d_model=32", "model.d_ff=64", "train.max_steps=8", "train.warmup=4",
          "train.max_tokens=300", "train.eval_bleu_sentences=0", "train.threads=1", "train.log_every=1",
          "train.save_every=2", "train.keep_last=2", "train.eval_every=4"]


def _train(toy_data, out, env_extra=None):
    env = {**ENV, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", KILLER, "train", "--set", *COMMON, f"train.data={toy_data}",
                           f"train.out={out}"], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


def _check_resumed_run(out: Path, reference: Path) -> None:
    final = "checkpoints/step_0000008/model.safetensors"
    a, b = load_file(str(out / final)), load_file(str(reference / final))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ from the uninterrupted run"
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == list(range(1, 9)), steps  # every step once, in order
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()  # TensorBoard's own reader, which honours the purge written on resume
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))
    for ck in (out / "checkpoints").glob("step_*"):
        load_model_dir(ck)
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def reference_run(toy_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    r = _train(toy_data, out, {"KILL_POINT": "none", "KILL_AT": "0"})
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.mark.parametrize("point,k", [("step", 5), ("weights", 2), ("rename", 4), ("rmtree", 1)])
def test_kill_9_anywhere_then_resume_is_exact(toy_data, tmp_path, reference_run, point, k):
    out = tmp_path / "run"
    r = _train(toy_data, out, {"KILL_POINT": point, "KILL_AT": str(k)})
    assert r.returncode == -signal.SIGKILL, (point, k, r.returncode, r.stderr[-1500:])
    r = _train(toy_data, out, {"KILL_POINT": "none", "KILL_AT": "0"})
    assert r.returncode == 0, r.stderr[-2000:]
    _check_resumed_run(out, reference_run)


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_is_exact(toy_data, tmp_path, reference_run):
    """The long version: 24 kills at random points, each resumed (pytest -m slow)."""
    rng = random.Random(int(os.environ.get("AIAYN_FAULT_SEED", "14")))
    for i in range(24):
        point = rng.choice(["step", "weights", "rename", "rmtree"])
        highest = {"step": 8, "weights": 4, "rename": 14, "rmtree": 2}[point]
        k = rng.randint(1, highest)
        out = tmp_path / f"run{i}"
        r = _train(toy_data, out, {"KILL_POINT": point, "KILL_AT": str(k)})
        if r.returncode == 0:  # the point was never reached: nothing to resume
            continue
        assert r.returncode == -signal.SIGKILL, r.stderr[-1500:]
        assert _train(toy_data, out, {"KILL_POINT": "none", "KILL_AT": "0"}).returncode == 0
        _check_resumed_run(out, reference_run)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_at_the_next_step_then_exit(toy_data, tmp_path, sig):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "aiayn", "train", "--set", *COMMON, "train.max_steps=100000", "train.save_every=100000",
           f"train.data={toy_data}", f"train.out={out}"]
    p = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "log.jsonl").is_file():
        time.sleep(0.1)
    time.sleep(0.5)
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == (143 if sig == signal.SIGTERM else 130), stderr[-2000:]
    assert "Traceback" not in stderr and "resumes" in stderr
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert latest["step"] == max(steps) > 0  # saved at the step it stopped after
    load_model_dir(out / "checkpoints" / latest["path"])


def test_disk_errors_are_one_line_and_keep_the_last_checkpoint(toy_data, tmp_path):
    out = tmp_path / "run"
    assert _train(toy_data, out, {"KILL_POINT": "none", "KILL_AT": "0"}).returncode == 0
    before = tree(out / "checkpoints")
    # A full disk: every file write fails with ENOSPC (a patched writer: no small tmpfs needed).
    full = KILLER.replace("from aiayn.cli import main", """
import builtins, errno, io
real_open = builtins.open
def full_open(file, mode="r", *a, **kw):
    if any(c in mode for c in "wax"):
        raise OSError(errno.ENOSPC, "No space left on device", str(file))
    return real_open(file, mode, *a, **kw)
builtins.open = full_open
import safetensors.torch as st
def no_space(*a, **kw):
    raise OSError(errno.ENOSPC, "No space left on device", "model.safetensors")
import aiayn.train.checkpoint as ck
ck.save_model = no_space
from aiayn.cli import main""")
    r = subprocess.run([sys.executable, "-c", full, "train", "--set", *COMMON, "train.max_steps=10",
                        f"train.data={toy_data}", f"train.out={out}"],
                       env={**ENV, "KILL_POINT": "none", "KILL_AT": "0"}, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 2 and "aiayn: error:" in r.stderr and "No space left" in r.stderr and "Traceback" not in r.stderr
    assert tree(out / "checkpoints") == before
    if os.geteuid() != 0:  # root ignores permissions: a read-only directory only bites other users
        os.chmod(out / "checkpoints", 0o555)
        r = _train(toy_data, out, {"KILL_POINT": "none", "KILL_AT": "0"})
        os.chmod(out / "checkpoints", 0o755)
        assert r.returncode == 2 and "aiayn: error:" in r.stderr and "Traceback" not in r.stderr


def test_prepare_with_changed_inputs_needs_overwrite(tmp_path):
    train_tsv = write_tsv(tmp_path / "t.tsv", make_pairs(80))
    cfg = PrepareConfig(train=str(train_tsv), out=str(tmp_path / "d"), vocab_size=100)
    prepare(cfg)
    write_tsv(train_tsv, make_pairs(90, seed=5))
    with pytest.raises(OutputError, match="--overwrite"):
        prepare(cfg)


# --- 5. several processes, one clock ------------------------------------------------------------------
SKEWED_CLOCK = r"""
import os, sys, time
if os.environ.get("RANK") == "1":  # this process's clock runs 5x fast: it alone would think time is up early
    from aiayn.train import loop
    real = time.perf_counter
    start = real()
    class FastClock:
        def __getattr__(self, name):
            return getattr(time, name)
        @staticmethod
        def perf_counter():
            return start + 5 * (real() - start)
    loop.time = FastClock()
from aiayn.cli import main
main(sys.argv[1:])
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_a_time_budget_under_torchrun_is_decided_by_one_process(toy_data, tmp_path):
    """Defect: each process decided from its own clock when max_minutes was over (and computed a time-driven
    learning rate from it), so processes could stop after different steps and hang. Rank 0 decides."""
    script = tmp_path / "skewed.py"
    script.write_text(SKEWED_CLOCK)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
                        "train", "--set", "model.preset=tiny", "model.d_model=32", "model.d_ff=64", f"train.data={toy_data}",
                        f"train.out={out}", "train.max_minutes=0.05", "train.lr_schedule=cosine", "train.warmup=2",
                        "train.max_tokens=300", "train.eval_bleu_sentences=0", "train.threads=1", "train.log_every=1",
                        "train.eval_every=100000", "train.save_every=100000"],
                       env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["elapsed"] >= 3.0  # rank 0's 3 seconds, not rank 1's fast clock
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == summary["step"] > 1


def test_more_bad_arguments_are_one_line_errors(small_run, tmp_path):
    model = str(small_run / "checkpoints" / "step_0000004")
    r = subprocess.run([sys.executable, "-m", "aiayn", "translate", "--model", model, "--beam", "1"],
                       input=b"la casa\n\xc3\x28 bad\n", capture_output=True, env=ENV, cwd=ROOT)
    assert r.returncode == 2 and b"stdin:2: invalid UTF-8" in r.stderr and len(r.stdout.splitlines()) == 1
    assert aiayn("evaluate", "--model", model, "--test", "x", "--block-size", "-5", check=False).returncode == 2
    no_model = tmp_path / "nomodel"
    no_model.mkdir()
    (no_model / "config.json").write_text('{"format": "aiayn-model/1"}')
    r = aiayn("average", str(no_model), "--out", str(tmp_path / "avg"), check=False)
    assert r.returncode == 2 and '"model"' in r.stderr and "Traceback" not in r.stderr


def test_sampling_options_are_checked():
    from aiayn.decode.sampling import SampleConfig, generate_text

    for kw in ({"top_p": 0.0}, {"top_p": 1.5}, {"temperature": -1.0}, {"top_k": -1}, {"seed": 2**63}):
        with pytest.raises(ValueError):
            SampleConfig(**kw)
    with pytest.raises(ValueError, match="stop"):
        generate_text(None, None, "x", SampleConfig(), stop=[""])


@pytest.mark.parametrize("beam", [1, 4])
@pytest.mark.parametrize("rows,scale", [(slice(None), 1e38), (7, float("nan"))])
def test_non_finite_activations_stop_decoding_with_an_error(small_run, beam, rows, scale):
    from aiayn.decode.translate import DecodeConfig, Translator

    model, vocab, _ = load_model_dir(small_run / "checkpoints" / "step_0000004")
    with torch.no_grad():
        model.output.tied.weight[rows] *= scale  # finite weights and infinite logits; or one word's logit NaN
    with pytest.raises(FloatingPointError, match="non-finite"):
        Translator(model, vocab, DecodeConfig(beam=beam)).translate(["la casa"])


def test_averaging_warns_when_it_reaches_into_early_training(small_run, caplog):
    from aiayn.train.checkpoint import last_checkpoints

    with caplog.at_level("WARNING"):
        found = last_checkpoints(small_run, 2)  # steps 2 and 4: step 2 is in the first half
    assert [p.name for p in found] == ["step_0000002", "step_0000004"] and "first half of training" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert [p.name for p in last_checkpoints(small_run, 2, min_step=3)] == ["step_0000004"]
    assert "first half" not in caplog.text
    with pytest.raises(CheckpointError, match="no checkpoint at step 9"):
        last_checkpoints(small_run, 2, min_step=9)


def test_a_warm_up_as_long_as_training_is_warned_about(toy_data, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        run_cfg(toy_data, tmp_path / "r", warmup=4000, max_steps=2000)
    assert "never leaves warm-up" in caplog.text


def test_old_checkpoint_cleanup_leaves_what_aiayn_did_not_write(toy_data, tmp_path):
    """keep_last removes old step_NNNNNNN checkpoints aiayn wrote, and nothing else under checkpoints/."""
    out = tmp_path / "run"
    train(run_cfg(toy_data, out, max_steps=1, save_every=1, keep_last=2))  # an aiayn run (a foreign one is refused)
    mine = out / "checkpoints" / "step_0000000"  # then a user's directory with a checkpoint-like name, oldest of all
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (out / "checkpoints" / "README").write_text("also mine")
    train(run_cfg(toy_data, out, max_steps=6, save_every=1, keep_last=2))
    assert (mine / "notes.txt").read_text() == "mine" and (out / "checkpoints" / "README").read_text() == "also mine"
    from aiayn.train.checkpoint import run_checkpoints

    assert [p.name for p in run_checkpoints(out)] == ["step_0000005", "step_0000006"]


def test_processes_leave_the_group_in_order(monkeypatch):
    """A finished run waits for every process (rank 0 may still be writing its last checkpoint) and then
    destroys the process group; a run that raised destroys it without waiting (the others may never come)."""
    import torch.distributed as dist

    from aiayn.train.process import Processes

    calls: list[str] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    procs = Processes(distributed=True, rank=1, world=2, device=torch.device("cpu"))
    procs.end(finished=True)
    assert calls == ["barrier", "destroy"]
    calls.clear()
    procs.end(finished=False)
    assert calls == ["destroy"]
    calls.clear()
    Processes(distributed=False, rank=0, world=1, device=torch.device("cpu")).end(finished=True)
    assert calls == []
