"""Process-wide settings for running on a CPU, made in one place by the entry points (the CLI, the
server, the benchmarks) with :func:`configure_process` — never by a library constructor.

:func:`keep_freed_memory` — glibc's ``malloc`` serves every allocation above a threshold (at most
32 MB by default) with a fresh ``mmap`` and returns it to the kernel on ``free``. A training step of
a translation model makes several tensors that large each step (the (tokens × vocabulary) logits,
their log-softmax and its gradient: 80 MB each for 2,500 tokens and 8,000 types), so every step pays
for the kernel zeroing those pages again on first touch. On this project's 2-core machine the
label-smoothed loss with its backward took 54 ms with the default and 17 ms once freed memory stays
in the process (a 80 MB ``torch.exp``: 21 → 6 ms). Intel's PyTorch CPU guide gets the same effect by
preloading jemalloc or tcmalloc; this needs nothing installed: ``mallopt`` raises the threshold to
1 GiB and stops trimming, so the process keeps its peak heap and reuses it. The cost is that memory
freed by the process is not given back to the system while it runs — what a long training or
translation process wants. ``AIAYN_KEEP_FREED_MEMORY=0`` turns it off; it does nothing where the C
library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_done = False


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (once per process); True if it is in effect."""
    global _done
    if _done:
        return True
    if os.environ.get("AIAYN_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    _done = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    return _done


def pick_device(name: str = "auto"):
    """``auto`` (a GPU if PyTorch sees one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` as a
    :class:`torch.device`; a GPU that is not there is a one-line ``ValueError``, not a CUDA traceback."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch has no CUDA support" if not torch.backends.cuda.is_built() else "no GPU is visible"
            raise ValueError(f"device {name}: CUDA is not available here ({why}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name}: there are {torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        raise ValueError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    return device


def configure_process(threads: int = 0) -> None:
    """What an aiayn process sets once at start: keep freed memory (above) and, when ``threads`` > 0, the
    number of CPU threads PyTorch uses."""
    keep_freed_memory()
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
