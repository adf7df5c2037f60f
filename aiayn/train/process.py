"""Where a training process runs: its device, its place among ``torchrun``'s processes, mixed precision,
and the signals that ask it to stop."""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..runtime import pick_device

log = logging.getLogger(__name__)


@dataclass
class Processes:
    """This process's rank among ``world`` (1 without ``torchrun``) and its device."""

    distributed: bool
    rank: int
    world: int
    device: torch.device

    @classmethod
    def start(cls, device: str) -> Processes:
        """Join ``torchrun``'s process group if there is one (NCCL on GPUs, gloo on CPUs); pick the device
        (under torchrun on GPUs: the one ``LOCAL_RANK`` names)."""
        distributed = dist.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        if distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        dev = pick_device(device)
        if dev.type == "cuda" and distributed:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        rank = dist.get_rank() if distributed else 0
        world = dist.get_world_size() if distributed else 1
        return cls(distributed, rank, world, dev)

    def agree(self, elapsed: float, stop_requested: bool) -> tuple[float, bool]:
        """One clock and one decision for all processes: rank 0's training time becomes everyone's (the
        time budget and a time-driven learning rate), and a stop asked of any process stops all of them
        after the same step."""
        if not self.distributed:
            return elapsed, stop_requested
        t = torch.tensor([elapsed if self.rank == 0 else 0.0, float(stop_requested)], dtype=torch.float64)
        dist.all_reduce(t)
        return t[0].item(), t[1].item() > 0

    def end(self, finished: bool) -> None:
        """Leave the process group. ``finished``: this process ended its run normally, so every process
        reaches this point; they wait for each other here (rank 0 may still be writing the last
        checkpoint), so that no process tears its connections down while another still uses them.
        Call it once nothing holds the group any more (the DDP wrapper released): the group's threads are
        then joined here, while the interpreter is whole, not during its shutdown."""
        if not (self.distributed and dist.is_initialized()):
            return
        if finished:
            dist.barrier()
        gc.collect()  # a wrapper caught in a reference cycle would otherwise keep the group to the interpreter's exit
        dist.destroy_process_group()


def autocast_context(device: torch.device, dtype: str):
    """bf16/fp16 autocast on the device, or nothing for float32."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (what schedulers and ``kill`` send) ask training to stop after the
    current step, once it is saved. A second signal stops at once (the last checkpoint stays intact).
    Only in the main thread; elsewhere signals keep their usual behaviour."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        log.warning("%s: stopping after this step, once it is saved (send it again to stop at once)", self.received)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
