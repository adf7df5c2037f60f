"""FSDP (train.parallel: fsdp): the updates of DDP, sharded checkpoints, resuming across DDP, FSDP and one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from aiayn.config import ConfigError
from aiayn.train.checkpoint import load_model_dir, load_trainer_state

from .test_train import ROOT, losses, run_cfg

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")


def assert_same_updates(one, two, step: int = 4, d_model: int = 32) -> None:
    """The same logged losses and weights at ``step``, except for the attention layers' key biases: their
    gradient is zero in exact arithmetic (softmax does not change when every key score moves by the same
    amount), so what Adam makes of it (≈ noise / |noise|) depends on the order of float additions, which
    FSDP's reduce-scatter and DDP's all-reduce do not share."""
    for a, b in zip(losses(one), losses(two), strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    wa, wb = (load_file(str(r / "checkpoints" / f"step_{step:07d}" / "model.safetensors")) for r in (one, two))
    for k in wa:
        a, b = wa[k], wb[k]
        if k.endswith("in_proj.bias"):  # (q | k | v) biases: leave out the middle third
            keep = torch.ones_like(a, dtype=torch.bool)
            keep[d_model : 2 * d_model] = False
            a, b = a[keep], b[keep]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=k)


def _train(out, common, processes: int, *extra: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # a crash prints its stacks
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    r = subprocess.run([sys.executable, *launcher, "-m", "aiayn", "train", "--set", *common, f"train.out={out}", *extra],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr


def test_fsdp_makes_ddps_updates_and_checkpoints_resume_across_ddp_fsdp_and_one_process(toy_data, tmp_path):
    """Two processes with FSDP make the updates of two with DDP (dropout, gradient accumulation and clipping
    included); the FSDP checkpoint holds whole weights and a sharded optimizer; a DDP checkpoint resumes under
    FSDP and an FSDP one in a single process, each continuing as the DDP run continues."""
    common = ["model.preset=tiny", "model.d_model=32", "model.d_ff=64", "model.dropout=0.1", f"train.data={toy_data}",
              "train.warmup=2", "train.max_tokens=300", "train.eval_bleu_sentences=0", "train.threads=1",
              "train.log_every=1", "train.save_every=2", "train.eval_every=2", "train.update_freq=2",
              "train.clip_norm=0.5", "train.accelerate=false", "train.max_steps=4"]
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    _train(ddp, common, 2)
    log = _train(fsdp, common, 2, "train.parallel=fsdp")
    assert "fsdp: the model is sharded over 2 processes in 5 units" in log  # 2 + 2 layers and the root
    assert_same_updates(ddp, fsdp)

    ckpt = fsdp / "checkpoints" / "step_0000004"
    assert (ckpt / "optimizer" / ".metadata").is_file() and len(list((ckpt / "optimizer").glob("*.distcp"))) == 2
    assert "optimizer" not in load_trainer_state(ckpt)
    model, _, config = load_model_dir(ckpt)  # every other command reads it as any checkpoint
    assert config["step"] == 4 and (fsdp / "best" / "model.safetensors").is_file()
    assert not [p for p in (fsdp / "checkpoints").iterdir() if p.name.startswith(".")]  # no staging left behind

    # Each resumed run is compared with the DDP checkpoint resumed the same way (one process draws other
    # dropout masks than two, so "the same way" includes the number of processes).
    reference, reference_one = tmp_path / "reference", tmp_path / "reference-one"
    shutil.copytree(ddp, reference)
    shutil.copytree(ddp, reference_one)
    more, one = ["train.max_steps=6"], ["train.update_freq=4"]
    _train(reference, common, 2, *more)  # DDP → DDP
    _train(ddp, common, 2, *more, "train.parallel=fsdp")  # DDP → FSDP (the whole optimizer state, then sharded)
    assert_same_updates(reference, ddp, step=6)
    _train(reference_one, common, 1, *more, *one)  # DDP → one process
    _train(fsdp, common, 1, *more, *one)  # FSDP → one process (the sharded optimizer state read whole)
    assert_same_updates(reference_one, fsdp, step=6)


def test_fsdp_refuses_what_it_cannot_shard(toy_data, tmp_path):
    with pytest.raises(ConfigError, match="muon with train.parallel: fsdp"):
        run_cfg(toy_data, tmp_path / "r", parallel="fsdp", optimizer="muon")
    with pytest.raises(ConfigError, match="compile with train.parallel: fsdp"):
        run_cfg(toy_data, tmp_path / "r", parallel="fsdp", compile=True)
    with pytest.raises(ConfigError, match="parallel"):
        run_cfg(toy_data, tmp_path / "r", parallel="zero3")


def test_fsdp_mixed_precision_follows_train_dtype(toy_data, tmp_path):
    """train.dtype bfloat16 under FSDP: layers compute with bfloat16 copies of the float32 shards (gradients
    reduced in float32); the losses follow DDP's bfloat16 autocast within bfloat16's precision, and the saved
    weights stay float32."""
    common = ["model.preset=tiny", "model.d_model=32", "model.d_ff=64", "model.dropout=0.0", f"train.data={toy_data}",
              "train.warmup=2", "train.max_tokens=300", "train.eval_bleu_sentences=0", "train.threads=1",
              "train.log_every=1", "train.accelerate=false", "train.max_steps=3", "train.dtype=bfloat16"]
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    _train(ddp, common, 2)
    _train(fsdp, common, 2, "train.parallel=fsdp")
    a, b = losses(ddp), losses(fsdp)
    assert len(a) == len(b) == 3 and a != b  # not the same arithmetic…
    assert b == pytest.approx(a, rel=2e-2)  # …but the same training
    weights = load_file(str(fsdp / "checkpoints" / "step_0000003" / "model.safetensors"))
    assert all(w.dtype == torch.float32 for w in weights.values())


def test_fsdp_with_activation_checkpointing_makes_the_same_updates(toy_data, tmp_path):
    """Layers recomputed in the backward pass (train.activation_checkpointing) under FSDP, whose units gather
    their weights again for the recomputation: the same losses and weights as FSDP without it."""
    common = ["model.preset=tiny", "model.d_model=32", "model.d_ff=64", "model.dropout=0.1", f"train.data={toy_data}",
              "train.warmup=2", "train.max_tokens=300", "train.eval_bleu_sentences=0", "train.threads=1",
              "train.log_every=1", "train.accelerate=false", "train.max_steps=3", "train.save_every=3",
              "train.parallel=fsdp"]
    plain, recomputed = tmp_path / "plain", tmp_path / "recomputed"
    _train(plain, common, 2)
    log = _train(recomputed, common, 2, "train.activation_checkpointing=true")
    assert "activation checkpointing: 4 layers recomputed" in log
    assert_same_updates(plain, recomputed, step=3)
