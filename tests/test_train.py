"""The training loop: schedule, loss, exact resume, accumulation = multi-process, checkpoints."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aiayn.config import ConfigError
from aiayn.train.checkpoint import CheckpointError, average_checkpoints, load_model_dir, load_trainer_state
from aiayn.train.loop import Trainer, load_run_config, train
from aiayn.train.optim import inverse_sqrt_lr, label_smoothed_loss

ROOT = Path(__file__).resolve().parents[1]


def run_cfg(data: Path, out: Path, dropout: float = 0.1, **train_kw):
    t = {"data": str(data), "out": str(out), "warmup": 20, "max_tokens": 300, "eval_every": 1000, "save_every": 1000,
         "log_every": 1, "eval_bleu_sentences": 0, "threads": 1, "seed": 7}
    t.update(train_kw)
    return load_run_config(None, {"model": {"preset": "tiny", "d_model": 32, "d_ff": 64, "dropout": dropout}, "train": t})


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def assert_same_updates(one: Path, two: Path, step: int = 4) -> None:
    """Two runs made the same updates: the same logged losses, the same weights at ``step``."""
    for a, b in zip(losses(one), losses(two)):
        assert a == pytest.approx(b, rel=1e-5)
    wa = load_file(str(one / "checkpoints" / f"step_{step:07d}" / "model.safetensors"))
    wb = load_file(str(two / "checkpoints" / f"step_{step:07d}" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_paper_schedule_peaks_at_warmup():
    d, w = 512, 4000
    peak = inverse_sqrt_lr(w, d, w)
    assert peak == pytest.approx(512**-0.5 * 4000**-0.5)  # ≈ 7.0e-4 (§5.3)
    assert peak == pytest.approx(7.0e-4, rel=0.01)
    assert inverse_sqrt_lr(w // 2, d, w) == pytest.approx(peak / 2)
    assert inverse_sqrt_lr(4 * w, d, w) == pytest.approx(peak / 2)


def test_label_smoothing_loss():
    logits = torch.randn(5, 11)
    target = torch.tensor([1, 2, 0, 4, 5])  # one padding position
    loss, nll = label_smoothed_loss(logits, target, 0.1)
    logp = logits.log_softmax(-1)
    keep = target != 0
    expected_nll = -logp[keep, target[keep]].sum()
    expected = 0.9 * expected_nll + 0.1 * (-logp[keep].mean(-1)).sum()
    torch.testing.assert_close(nll, expected_nll)
    torch.testing.assert_close(loss, expected)
    # …which is PyTorch's own label-smoothed cross-entropy, gradients included.
    x = logits.clone().requires_grad_()
    ours = label_smoothed_loss(x, target, 0.1)[0]
    (g,) = torch.autograd.grad(ours, x)
    y = logits.clone().requires_grad_()
    ref = torch.nn.functional.cross_entropy(y, target, ignore_index=0, label_smoothing=0.1, reduction="sum")
    (g_ref,) = torch.autograd.grad(ref, y)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_label_smoothing_loss_shapes_dtypes_and_scaled_gradients(smoothing):
    """(B, T, V) logits, bf16 logits (gradient in bf16), and an upstream factor on the loss."""
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 13)
    target = torch.randint(0, 13, (3, 4))
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
        x = logits.to(dtype).requires_grad_()
        loss, nll = label_smoothed_loss(x, target, smoothing)
        (g,) = torch.autograd.grad(2.5 * loss, x)
        y = logits.to(dtype).float().requires_grad_()
        flat = y.reshape(-1, 13), target.reshape(-1)
        ref = torch.nn.functional.cross_entropy(*flat, ignore_index=0, label_smoothing=smoothing, reduction="sum")
        (g_ref,) = torch.autograd.grad(2.5 * ref, y)
        assert g.dtype == dtype and g.shape == x.shape
        torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(nll, torch.nn.functional.cross_entropy(*flat, ignore_index=0, reduction="sum"))
        torch.testing.assert_close(g.float(), g_ref, atol=tol, rtol=tol)


def test_unknown_config_keys_are_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  preset: tiny\ntrain:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match="unknown key.*max_stepz"):
        load_run_config(p)
    p.write_text("modle: {}\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_run_config(p)


@pytest.mark.parametrize("optimizer", ["adam", "muon"])
def test_resume_continues_exactly(toy_data, tmp_path, optimizer):
    straight = tmp_path / "straight"
    train(run_cfg(toy_data, straight, max_steps=10, optimizer=optimizer))
    resumed = tmp_path / "resumed"
    train(run_cfg(toy_data, resumed, max_steps=4, save_every=4, optimizer=optimizer))  # "killed" after step 4
    train(run_cfg(toy_data, resumed, max_steps=10, optimizer=optimizer))  # the same command again resumes
    assert losses(resumed) == losses(straight)
    a = load_file(str(straight / "checkpoints" / "step_0000010" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step_0000010" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_on_shards_resumes_exactly(toy_corpus, tmp_path):
    """A corpus prepared in shards (prepare --shard-size): forty updates cross shards and an epoch, and a run
    stopped inside a shard resumes to the same losses and weights."""
    from aiayn.data.prepare import PrepareConfig, prepare

    data = tmp_path / "data"
    prepare(PrepareConfig(train=str(toy_corpus["train"]), dev=str(toy_corpus["dev"]), out=str(data), vocab_size=120,
                          shard_size=130))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = train(run_cfg(data, straight, max_steps=40, max_tokens=150))
    assert result["epoch"] >= 1
    train(run_cfg(data, resumed, max_steps=7, save_every=7, max_tokens=150))
    train(run_cfg(data, resumed, max_steps=40, max_tokens=150))
    assert losses(resumed) == losses(straight)
    a, b = (load_file(str(r / "checkpoints" / "step_0000040" / "model.safetensors")) for r in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_muon_takes_the_layers_matrices_and_adamw_the_rest():
    """optimizer: muon — Muon for attention / FFN matrices; embeddings, positions, norms, biases and the
    output layer with AdamW; the schedule's learning rate reaches both; each orthogonalised update has
    the RMS Moonshot matched to AdamW's (lr · 0.2·√max(A, B) on an orthogonal (A, B) matrix, whose RMS is
    1/√max(A, B): 0.2 · lr) and the loss goes down."""
    from aiayn.config import preset
    from aiayn.model import build_model
    from aiayn.train.optim import MuonWithAdamW, make_optimizer

    torch.manual_seed(0)
    model = build_model(preset("gpt-nano", d_model=32, d_ff=64, n_heads=2, n_decoder_layers=2, vocab_size=20, max_positions=16,
                               tie="none"))
    opt = make_optimizer(model, 1e-2, (0.9, 0.98), 1e-9, 0.0, "muon")
    assert isinstance(opt, MuonWithAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert muon | adamw == set(names.values()) and not muon & adamw
    assert muon and all(".layers." in n and n.endswith("weight") and "norm" not in n for n in muon)
    assert {n for n in adamw if "emb" in n or "table" in n or n.startswith("output")} and all(
        model.get_parameter(n).dim() == 2 for n in muon)
    for g in opt.param_groups:
        g["lr"] = 3e-3
    assert all(g["lr"] == 3e-3 for g in opt.muon.param_groups + opt.adamw.param_groups)
    tokens = torch.randint(4, 20, (8, 16))
    first = None
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        first = first if first is not None else loss.item()
        before = {n: model.get_parameter(n).detach().clone() for n in muon}
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.5 * first
    for n, w0 in before.items():
        rms = (model.get_parameter(n).detach() - w0).pow(2).mean().sqrt()
        assert rms.item() == pytest.approx(0.2 * 3e-3, rel=0.35), n  # Newton–Schulz: singular values ≈ 0.7–1.1
    with pytest.raises(ValueError, match="another optimizer"):
        opt.load_state_dict(torch.optim.Adam(model.parameters()).state_dict())


def test_gradient_accumulation_matches_one_big_update(toy_data, tmp_path):
    """Two micro-batches accumulated = their union in one batch (the loss is normalised per update)."""
    tr = Trainer(run_cfg(toy_data, tmp_path / "a", dropout=0.0, update_freq=2, warmup=1), resume=False)
    micro, total = tr.feed.next_update(tr.rank, tr.world)
    ref = Trainer(run_cfg(toy_data, tmp_path / "b", dropout=0.0, warmup=1), resume=False)
    ref.model.load_state_dict(tr.model.state_dict())
    # SGD: the update is the gradient itself (Adam's first step is ≈ sign(g) and would amplify rounding).
    tr.optimizer = torch.optim.SGD(tr.model.parameters(), lr=1.0)
    ref.optimizer = torch.optim.SGD(ref.model.parameters(), lr=1.0)
    tr.feed.batch_in_epoch = 0  # replay the same two batches through the accumulating trainer
    s1 = tr.train_step()
    # The same two batches as one padded batch.
    from aiayn.data.batching import pad

    src = pad([r for b in micro for r in b[0]])
    tgt_in = pad([r for b in micro for r in b[1]])
    tgt_out = pad([r for b in micro for r in b[2]])
    loss, _ = label_smoothed_loss(ref.model(src, tgt_in), tgt_out, 0.1)
    (loss / total).backward()
    for g in ref.optimizer.param_groups:
        g["lr"] = s1["lr"]
    ref.optimizer.step()
    for (n, p), q in zip(tr.model.named_parameters(), ref.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-7, rtol=1e-5, msg=n)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_processes_equal_one_process_with_update_freq_2(toy_data, tmp_path):
    common = ["model.preset=tiny", "model.d_model=32", "model.d_ff=64", "model.dropout=0.0", f"train.data={toy_data}",
              "train.max_steps=4", "train.warmup=2", "train.max_tokens=300", "train.eval_bleu_sentences=0",
              "train.threads=1", "train.log_every=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # a crash prints its stacks
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "aiayn", "train", "--set", *common, f"train.out={one}", "train.update_freq=2"],
                   check=True, env=env, capture_output=True, timeout=600)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "aiayn", "train", "--set", *common, f"train.out={two}"], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_updates(one, two)


def test_checkpoints_load_and_fail_clearly(toy_data, tmp_path):
    out = tmp_path / "run"
    train(run_cfg(toy_data, out, max_steps=4, save_every=2, keep_last=5))
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    assert [c.name for c in ckpts] == ["step_0000002", "step_0000004"]
    assert not list((out / "checkpoints").glob(".*"))  # no temporary directories left behind
    model, vocab, config = load_model_dir(ckpts[-1])
    assert config["step"] == 4 and len(vocab) == model.cfg.vocab_size
    assert load_trainer_state(ckpts[-1])["step"] == 4

    avg = average_checkpoints(ckpts, tmp_path / "avg")
    a, b, m = (load_file(str(p / "model.safetensors")) for p in (*ckpts, avg))
    for k in m:
        torch.testing.assert_close(m[k], (a[k] + b[k]) / 2)

    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(ckpts[-1], broken)
    (broken / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model_dir(broken)
    (broken / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="not an aiayn model"):
        load_model_dir(broken)
    with pytest.raises(CheckpointError, match="no such model directory"):
        load_model_dir(tmp_path / "nothing")
    (broken / "trainer_state.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot read trainer state"):
        load_trainer_state(broken)


def test_tiny_translation_model_learns(tmp_path):
    """The paper's model (post-LN, tiny) learns a toy copy task (upper-casing each word) in 250 steps."""
    from aiayn.data.prepare import PrepareConfig, prepare

    from .conftest import make_pairs, write_tsv

    train_f = write_tsv(tmp_path / "train.tsv", make_pairs(600, 1, reverse=False))
    dev_f = write_tsv(tmp_path / "dev.tsv", make_pairs(40, 2, reverse=False))
    prepare(PrepareConfig(train=str(train_f), dev=str(dev_f), out=str(tmp_path / "data"), vocab_size=120))
    run = load_run_config(None, {"model": {"preset": "tiny", "dropout": 0.0},
                                 "train": {"data": str(tmp_path / "data"), "out": str(tmp_path / "run"), "warmup": 50,
                                           "lr_scale": 0.25, "max_tokens": 600, "max_steps": 250, "eval_every": 250,
                                           "eval_bleu_sentences": 40, "threads": 1}})
    result = train(run)
    assert result["val_loss"] < 1.0 and math.isfinite(result["val_loss"])
    assert result["val_bleu"] > 30


def test_float16_training_scales_the_loss_skips_overflows_and_resumes_the_scale(toy_data, tmp_path):
    """train.dtype: float16 uses a GradScaler (CPU autocast here; the same code on CUDA): an update whose
    gradients overflow is skipped and the scale halves; the scale is saved and resumed."""
    tr = Trainer(run_cfg(toy_data, tmp_path / "fp16", dtype="float16", max_steps=4, save_every=2), resume=False)
    assert tr.scaler.is_enabled()
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # large enough to overflow float16 gradients
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.train_step()
    assert tr.skipped_updates == 1 and tr.scaler.get_scale() == 2.0**39
    assert all(torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))  # nothing was applied
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    s = tr.train_step()
    assert math.isfinite(s["loss"]) and tr.skipped_updates == 1
    assert not all(torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    tr.save()
    again = Trainer(run_cfg(toy_data, tmp_path / "fp16", dtype="float16", max_steps=4, save_every=2))
    assert again.step == 2 and again.scaler.get_scale() == tr.scaler.get_scale()
    assert "grad_scaler" in load_trainer_state(tmp_path / "fp16" / "checkpoints" / "step_0000002")
    assert not Trainer(run_cfg(toy_data, tmp_path / "fp32"), resume=False).scaler.is_enabled()


def test_fine_tuning_starts_from_a_model_with_a_fresh_optimizer(toy_data, toy_corpus, tmp_path):
    train(run_cfg(toy_data, tmp_path / "pre", max_steps=3, save_every=3, dropout=0.0))
    source = tmp_path / "pre" / "checkpoints" / "step_0000003"
    # No model section: the architecture comes from the model directory; dropout is changed for fine-tuning.
    run = load_run_config(None, {"model": {"dropout": 0.2}, "train": {
        "data": str(toy_data), "out": str(tmp_path / "ft"), "init_from": str(source), "max_steps": 2, "warmup": 20,
        "max_tokens": 300, "eval_every": 1000, "save_every": 1000, "eval_bleu_sentences": 0, "threads": 1}})
    assert (run.model.d_model, run.model.dropout) == (32, 0.2)
    tr = Trainer(run)
    pretrained, _, _ = load_model_dir(source)
    assert all(torch.equal(a, b) for a, b in zip(tr.model.state_dict().values(), pretrained.state_dict().values()))
    assert tr.step == 0 and not tr.optimizer.state  # a fresh optimizer and schedule
    tr.fit()
    assert Trainer(run).step == 2  # a fine-tuning run resumes from its own checkpoint, not from init_from

    with pytest.raises(ConfigError, match="model.preset with train.init_from"):
        load_run_config(None, {"model": {"preset": "tiny"}, "train": {"init_from": str(source)}})
    with pytest.raises(ConfigError, match="not a model directory"):
        load_run_config(None, {"train": {"init_from": str(tmp_path)}})
    from aiayn.data.prepare import PrepareConfig, prepare

    other = tmp_path / "other-data"
    prepare(PrepareConfig(train=str(toy_corpus["train"]), out=str(other), vocab_size=100))
    with pytest.raises(ConfigError, match="uses another vocabulary .* --vocab-from"):
        Trainer(load_run_config(None, {"train": {"data": str(other), "out": str(tmp_path / "x"), "init_from": str(source)}}))


def test_best_checkpoint_by_beam_bleu_and_early_stopping(toy_data, tmp_path):
    # A learning rate too small to change anything: dev BLEU never improves after the first evaluation.
    run = run_cfg(toy_data, tmp_path / "es", lr_schedule="constant", lr=1e-12, warmup=1, max_steps=50, eval_every=1,
                  eval_bleu_sentences=4, eval_beam=2, best_by="val_bleu", patience=2)
    result = train(run)
    assert result["stopped_by"] == "patience" and result["step"] == 3  # best at step 1, then 2 without improvement
    best = json.loads((tmp_path / "es" / "best" / "config.json").read_text())
    assert best["step"] == 1 and best["best_by"] == "val_bleu"
    assert (tmp_path / "es" / "checkpoints" / "step_0000003").is_dir()  # the last step is saved before stopping
    assert load_trainer_state(tmp_path / "es" / "checkpoints" / "step_0000003")["evals_since_best"] == 2
    with pytest.raises(ConfigError, match="val_bleu needs train.eval_bleu_sentences"):
        run_cfg(toy_data, tmp_path / "x", best_by="val_bleu", eval_bleu_sentences=0)


def test_the_papers_recipe_at_cpu_scale_is_the_papers(toy_data, tmp_path):
    """configs/bible-es-en-paper.yaml (docs/paper.md, issue 17 item 6): post-LN, equation (3) with 4,000
    warm-up steps, ≈25k target tokens per update; it trains."""
    cfg = load_run_config(ROOT / "configs" / "bible-es-en-paper.yaml")
    m, t = cfg.model, cfg.train
    assert (m.norm, m.dropout, m.positional, m.tie) == ("post", 0.1, "sinusoidal", "three_way")
    assert (t.lr_schedule, t.warmup, t.lr_scale, t.adam_betas, t.adam_eps, t.label_smoothing, t.clip_norm) == \
        ("inverse_sqrt", 4000, 1.0, (0.9, 0.98), 1e-9, 0.1, 0.0)
    assert t.max_tokens * t.update_freq == 25000
    run = load_run_config(ROOT / "configs" / "bible-es-en-paper.yaml", {"train": {
        "data": str(toy_data), "out": str(tmp_path / "p"), "max_steps": 2, "max_tokens": 200, "update_freq": 2,
        "eval_every": 2, "save_every": 2, "eval_bleu_sentences": 2, "threads": 1}})
    assert train(run)["step"] == 2


def test_the_post_ln_recipe_is_the_shipped_one_with_the_papers_norm_and_schedule():
    """configs/bible-es-en-postln.yaml (docs/paper.md): the shipped model's recipe except the two things the
    paper does differently — post-LN, and equation (3) with 4,000 warm-up steps at scale 1."""
    from dataclasses import replace

    shipped = load_run_config(ROOT / "configs" / "bible-es-en.yaml")
    post = load_run_config(ROOT / "configs" / "bible-es-en-postln.yaml")
    assert (post.model.norm, shipped.model.norm) == ("post", "pre")
    assert replace(post.model, norm="pre") == shipped.model
    t = post.train
    assert (t.lr_schedule, t.warmup, t.lr_scale, t.adam_betas, t.adam_eps) == ("inverse_sqrt", 4000, 1.0, (0.9, 0.98), 1e-9)
    assert replace(t, warmup=shipped.train.warmup, lr_scale=shipped.train.lr_scale, out=shipped.train.out,
                   keep_last=shipped.train.keep_last) == shipped.train


@pytest.mark.parametrize("name,preset,steps,keep", [("wmt14-en-de-base", "paper-base", 100000, 5),
                                                    ("wmt14-en-de-big", "paper-big", 300000, 20)])
def test_the_paper_wmt_configs_hold_the_papers_values(name, preset, steps, keep):
    cfg = load_run_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.model == load_run_config(None, {"model": {"preset": preset}}).model and cfg.model.norm == "post"
    t = cfg.train
    assert (t.lr_schedule, t.warmup, t.lr_scale, t.adam_betas, t.adam_eps, t.label_smoothing) == \
        ("inverse_sqrt", 4000, 1.0, (0.9, 0.98), 1e-9, 0.1)
    assert t.max_tokens * t.update_freq == 25000  # ≈25k source (and target) tokens per update on one process
    assert (t.max_steps, t.keep_last) == (steps, keep)


# the big model's two steps take ≈ 26 s of a 2-core CPU: in the slow run (the base one's take the same path)
@pytest.mark.parametrize("name", ["wmt14-en-de-base", pytest.param("wmt14-en-de-big", marks=pytest.mark.slow)])
def test_the_paper_wmt_configs_build_and_train_two_steps(toy_data, tmp_path, name):
    """The paper's recipes as shipped: two real updates on a tiny slice (post-LN, bf16)."""
    run = load_run_config(ROOT / "configs" / f"{name}.yaml", {"train": {
        "data": str(toy_data), "out": str(tmp_path / name), "max_steps": 2, "max_tokens": 200, "update_freq": 1,
        "eval_every": 2, "save_every": 2, "eval_bleu_sentences": 2, "threads": 1}})
    result = train(run)
    assert result["step"] == 2 and math.isfinite(result["val_loss"])


def test_two_nodes_through_torchrun_rendezvous_equal_one_process(toy_data, tmp_path):
    """Two torchrun launchers ("nodes" on localhost, one process each, gloo, c10d rendezvous) make the updates
    of one process with update_freq=2; only global rank 0 writes checkpoints; the run resumes with one process."""
    import socket

    common = ["model.preset=tiny", "model.d_model=32", "model.d_ff=64", "model.dropout=0.0", f"train.data={toy_data}",
              "train.max_steps=4", "train.warmup=2", "train.max_tokens=300", "train.eval_bleu_sentences=0",
              "train.threads=1", "train.log_every=1", "train.save_every=2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # a crash prints its stacks
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "aiayn", "train", "--set", *common, f"train.out={one}", "train.update_freq=2"],
                   check=True, env=env, capture_output=True, timeout=600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
              f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=aiayn-test", "-m", "aiayn", "train", "--set", *common,
              f"train.out={two}"]
    nodes = [subprocess.Popen(launch, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]
    assert_same_updates(one, two)
    assert sorted(p.name for p in (two / "checkpoints").iterdir() if p.name.startswith("step_")) == \
        ["step_0000002", "step_0000004"]
    # the two-node run goes on as one process (a different world size), from its step 4
    r = subprocess.run([sys.executable, "-m", "aiayn", "train", "--set", *common, f"train.out={two}", "train.max_steps=5",
                        "train.update_freq=2"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "resumed from" in r.stderr and "saved by 2 process(es), resuming with 1" in r.stderr


@pytest.mark.parametrize("preset", ["tiny", "gpt-nano"])
def test_activation_checkpointing_gives_the_same_gradients(preset):
    """Recomputed layers (train.activation_checkpointing) draw the same dropout masks and give the same
    loss and gradients; decoding with caches and evaluation are untouched."""
    from aiayn.config import preset as make
    from aiayn.model import build_model
    from aiayn.train.memory import checkpoint_activations

    torch.manual_seed(0)
    plain = build_model(make(preset, vocab_size=50, dropout=0.1))
    ckpt = build_model(make(preset, vocab_size=50, dropout=0.1))
    ckpt.load_state_dict(plain.state_dict())
    from aiayn.model.layers import DecoderLayer, EncoderLayer

    assert checkpoint_activations(ckpt) == sum(isinstance(m, (EncoderLayer, DecoderLayer)) for m in ckpt.modules()) > 0
    assert checkpoint_activations(ckpt) == 0  # idempotent
    x = torch.randint(4, 50, (3, 9))
    grads = []
    for m in (plain, ckpt):
        torch.manual_seed(1)
        out = m(x, x) if preset == "tiny" else m(x)
        loss = out.float().square().mean()
        grads.append((loss.item(), torch.autograd.grad(loss, list(m.parameters()))))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    plain.eval(), ckpt.eval()
    with torch.no_grad():
        state_a, state_b = (m.start(x) if preset == "tiny" else m.start() for m in (plain, ckpt))
        torch.testing.assert_close(plain.step(x[:, :4], state_a), ckpt.step(x[:, :4], state_b))


def test_training_with_activation_checkpointing(toy_data, tmp_path):
    result = train(run_cfg(toy_data, tmp_path / "ac", activation_checkpointing=True, max_steps=2, eval_every=2))
    assert result["step"] == 2 and math.isfinite(result["val_loss"])


def test_several_dev_sets_are_evaluated_and_logged_apart(toy_corpus, tmp_path):
    """prepare --more-dev NAME=FILE;…: each extra dev set is prepared as its own split and evaluated with the
    main one (val_loss@NAME, ppl@NAME, val_bleu@NAME); the main dev set alone picks OUT/best."""
    from aiayn.data.prepare import PrepareConfig, prepare
    from aiayn.evaluate import corpus_loss

    from .conftest import make_pairs, write_tsv

    other = write_tsv(tmp_path / "other.tsv", make_pairs(30, 9, reverse=False))
    manifest = prepare(PrepareConfig(train=str(toy_corpus["train"]), dev=str(toy_corpus["dev"]), out=str(tmp_path / "data"),
                                     vocab_size=100, more_dev=f"copy={other};same={toy_corpus['dev']}"))
    assert {"dev", "dev.copy", "dev.same"} <= set(manifest["splits"]) and manifest["splits"]["dev.copy"]["pairs"] == 30
    result = train(run_cfg(tmp_path / "data", tmp_path / "run", max_steps=4, warmup=2, eval_every=2,
                           eval_bleu_sentences=5))
    evals = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert len(evals) == 2
    for r in evals:
        assert {"val_loss", "val_bleu", "val_loss@copy", "ppl@copy", "val_bleu@copy", "val_loss@same"} <= set(r)
        assert r["val_loss@same"] == pytest.approx(r["val_loss"], rel=1e-6)  # the same sentences: the same loss
        assert r["val_loss@copy"] != r["val_loss"]
    model, _, _ = load_model_dir(tmp_path / "run" / "checkpoints" / "step_0000004")
    from aiayn.data.batching import ParallelData

    assert corpus_loss(model, ParallelData(tmp_path / "data", "dev.copy"), 300)["val_loss"] == pytest.approx(
        result["val_loss@copy"], rel=1e-5)
    best = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert best["best_by"] == "val_loss"
    for bad, message in [("copy", "NAME=FILE"), ("a b=x.tsv", "NAME=FILE"), (f"x={other};x={other}", "twice")]:
        with pytest.raises(ConfigError, match=message):
            PrepareConfig(train=str(toy_corpus["train"]), dev=str(toy_corpus["dev"]), out=str(tmp_path / "d2"), more_dev=bad)
    with pytest.raises(ConfigError, match="adds development sets to --dev"):
        PrepareConfig(train=str(toy_corpus["train"]), out=str(tmp_path / "d2"), more_dev=f"x={other}")


def test_a_language_model_evaluates_more_validation_texts_apart(tmp_path):
    """prepare --lm --more-dev NAME=FILE: each text is its own validation split, logged as val_loss@NAME and
    ppl@NAME beside the main one (which alone picks OUT/best); a missing or blank one is refused by name."""
    from aiayn.data.prepare import PrepareConfig, prepare
    from aiayn.evaluate import lm_validation

    text = "".join(f"line {i} of the main text, with words\n" for i in range(300))
    (tmp_path / "main.txt").write_text(text)
    (tmp_path / "other.txt").write_text("".join(f"A DIFFERENT TEXT {i}\n" for i in range(40)))
    manifest = prepare(PrepareConfig(train=str(tmp_path / "main.txt"), out=str(tmp_path / "data"), kind="lm", vocab="char",
                                     more_dev=f"other={tmp_path / 'other.txt'};same={tmp_path / 'main.txt'}"))
    assert {"train", "valid", "valid.other", "valid.same"} == set(manifest["splits"])
    assert manifest["splits"]["valid.same"]["chars"] == len(text)
    run = load_run_config(None, {"model": {"preset": "gpt-nano", "d_model": 32, "d_ff": 64, "n_heads": 2,
                                           "n_decoder_layers": 1, "max_positions": 32},
                                 "train": {"data": str(tmp_path / "data"), "out": str(tmp_path / "run"), "max_steps": 4,
                                           "warmup": 2, "eval_every": 2, "batch_size": 4, "threads": 1}})
    result = train(run)
    assert {"val_loss", "ppl", "val_loss@other", "ppl@other", "val_loss@same"} <= set(result)
    assert result["val_loss@other"] != result["val_loss"]
    assert result["val_loss@same"] != result["val_loss"]  # the whole text, not its last tenth
    model, _, _ = load_model_dir(tmp_path / "run" / "checkpoints" / "step_0000004")
    import numpy as np

    other = np.load(tmp_path / "data" / "valid.other.tokens.npy")
    assert lm_validation(model, other, 32)["val_loss"] == pytest.approx(result["val_loss@other"], rel=1e-5)
    (tmp_path / "blank.txt").write_text("\n\n")
    from aiayn.data.corpus import CorpusError

    with pytest.raises(CorpusError, match="blank.txt: no validation text"):
        prepare(PrepareConfig(train=str(tmp_path / "main.txt"), out=str(tmp_path / "d2"), kind="lm", vocab="char",
                              more_dev=f"b={tmp_path / 'blank.txt'}"))
