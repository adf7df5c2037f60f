"""Which CPU fast paths pay off on *this* machine, decided by measuring them once.

The project's machines are not one CPU: on an AMD Zen 4, oneDNN's float32 GEMM is 2–2.5× MKL's; on an
Intel Xeon with AMX, MKL's float32 is twice Zen 4's and the difference may vanish or reverse. A constant
measured on one of them is wrong on the other, so each fast path is timed against the plain PyTorch call
it replaces, on a shape typical of the work (a few milliseconds in all), and used only where it is at
least ``MARGIN`` faster. The answers are cached per CPU model, ISA features, PyTorch version, thread
count and :data:`VERSION` of this measurement in ``~/.cache/aiayn/accel.json`` (``AIAYN_CACHE_DIR`` moves
it), so each machine measures once, and again when the measurement changes.

A measurement must meet the shapes as the real work meets them. Decoding changes shape almost every step
(sentences finish, the next batch has other source lengths), and bf16 products go through oneDNN, which
pays a set-up the first time it meets a shape: timed on one repeated shape, equation (1) looked 1.3–1.9×
faster than SDPA for bf16 decoding on a Zen 4, while end to end it was ≈ 15 % slower. So the decoding
choice is timed over :func:`decoding_walk`, a batch's walk through shapes this process has not met.

``AIAYN_ACCEL=off`` turns every fast path off; ``AIAYN_ACCEL=on`` turns on every one that is available
(no measuring): for comparisons and tests.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

MARGIN = 1.05  # a fast path must be at least 5 % faster to be used
# Of measure(): part of the cache key, so a machine measures again when the measurement changes — or when
# its answers are known to be stale: v4 (2026-12-07) because v3 entries on the project's AMD EPYC kept
# equation (1) off for beam groups, which four fresh measurements there contradict (1.3–1.9× faster) and
# which end to end made beam 4 float32 3–7 % faster.
VERSION = 4


@dataclass(frozen=True)
class Choices:
    """The fast paths to use on this machine (all CPU-only)."""

    onednn_linear_training: bool = False  # float32 projections through oneDNN instead of MKL: forward + backward
    onednn_linear_decoding: bool = False  # the same, forward only, from prepacked weights
    fast_dropout: bool = False  # dropout masks from 16-bit slices of 64-bit random integers
    # Attention as equation (1)'s two products instead of PyTorch's fused SDPA, per dtype of the queries:
    explicit_training_f32: bool = False  # training (T_k ≤ 512), float32
    explicit_training_bf16: bool = False  # training under bf16 autocast
    explicit_decoding_f32: bool = False  # decoding, a few queries per sentence (beams, one step), float32
    explicit_decoding_bf16: bool = False  # the same with bf16 weights
    preallocated_cache: bool = False  # decoding caches written into a growing buffer (not measured: no copy per step)

    @classmethod
    def all(cls) -> Choices:
        from .linear import AVAILABLE

        return cls(AVAILABLE, AVAILABLE, True, True, True, True, True, True)

    def explicit_attention(self, training: bool, dtype: torch.dtype) -> bool:
        if dtype == torch.float32:
            return self.explicit_training_f32 if training else self.explicit_decoding_f32
        if dtype == torch.bfloat16:
            return self.explicit_training_bf16 if training else self.explicit_decoding_bf16
        return False

    @classmethod
    def none(cls) -> Choices:
        return cls()


def cpu_info() -> tuple[str, set[str]]:
    """This CPU's model name and ISA flags (from /proc/cpuinfo where there is one)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return name, flags


ISA_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")  # what decides the fast paths


def describe_cpu() -> dict:
    """The CPU a measurement ran on: model name, the ISA features of :data:`ISA_FEATURES` it has, cores."""
    name, flags = cpu_info()
    return {"cpu": name, "features": [f for f in ISA_FEATURES if f in flags], "cores": os.cpu_count()}


def cpu_key() -> str:
    """CPU model, the ISA features that matter here, PyTorch version, threads and the measurement's version."""
    name, flags = cpu_info()
    isa = "+".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    return f"{name} [{isa}] torch {torch.__version__} threads {torch.get_num_threads()} measure v{VERSION}"


def _cache_path() -> Path:
    root = os.environ.get("AIAYN_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "aiayn")
    return Path(root) / "accel.json"


def _best_times(fns: list[Callable[..., object]], repeat: int = 7, fresh: Callable[[], object] | None = None,
                ) -> list[float]:
    """Each function's best time over ``repeat`` rounds, the functions taking turns in every round (timed
    one after the other, the first would pay the process's warm-up: early in a process, MKL's float32
    training product looked slower than oneDNN's, later 20 % faster). With ``fresh``, every call (warm-up
    included) gets a new input from it, made outside the timing."""
    args = (lambda: ()) if fresh is None else (lambda: (fresh(),))
    for fn in fns:
        fn(*args())  # warm-up: kernels, allocations
    best = [math.inf] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            a = args()
            t0 = time.perf_counter()
            fn(*a)
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


_FRESH_SOURCE_LENGTH = itertools.count(17)  # each walk's source length: one this process has not decoded


def decoding_walk(dtype: torch.dtype, heads: int = 4, beams: int = 4, d_k: int = 64, layers: int = 6,
                  ) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """The encoder-decoder attention calls of one batch's beam search, as :class:`aiayn.accel.FastAttention`
    meets them: a fresh source length S, 32 sentences of which fewer stay alive as the steps go
    (32, 24, 16, 12, 8, 4, 2, 1), each sentence's ``beams`` queries as one group, one call per decoder
    layer. Returns (q (N, h, beams, d_k), k, v (N, h, S, d_k), key-padding mask (N, 1, 1, S)) per call."""
    s = next(_FRESH_SOURCE_LENGTH)
    calls = []
    for n in (32, 24, 16, 12, 8, 4, 2, 1):
        q = torch.randn(n, heads, beams, d_k, dtype=dtype)
        k, v = torch.randn(n, heads, s, d_k, dtype=dtype), torch.randn(n, heads, s, d_k, dtype=dtype)
        mask = torch.ones(n, 1, 1, s, dtype=torch.bool)
        mask[n // 2 :, ..., s - s // 4 :] = False  # half the sentences are shorter: padding
        calls += [(q, k, v, mask)] * layers
    return calls


_FRESH_ROWS = itertools.count()  # the decoding product's row counts: 96 … 159, each new to the process for 64 calls


def measure() -> Choices:
    """Time each fast path against what it replaces, on this machine (≈ 1 s)."""
    from .dropout import dropout as fast_dropout
    from .linear import AVAILABLE, inference_linear, linear

    def faster(fast: Callable[[], object], plain: Callable[[], object], repeat: int = 7) -> bool:
        t_fast, t_plain = _best_times([fast, plain], repeat)
        return t_plain > MARGIN * t_fast

    torch.manual_seed(0)
    with torch.enable_grad():  # a training step's FFN-sized product, forward and backward
        x, w = torch.randn(2048, 256, requires_grad=True), torch.randn(1024, 256, requires_grad=True)
        onednn_training = AVAILABLE and faster(lambda: linear(x, w).sum().backward(), lambda: F.linear(x, w).sum().backward(), 5)
    with torch.no_grad():  # a decoding step's output projection, from the prepacked weight, at row counts not met before
        w = torch.randn(8000, 256)
        onednn_decoding = False
        if AVAILABLE:  # (the warm-up call of _best_times packs the weight, as a model's first step does)
            t_fast, t_plain = _best_times([lambda x: inference_linear(x, w), lambda x: F.linear(x, w)], 7,
                                          fresh=lambda: torch.randn(96 + next(_FRESH_ROWS) % 64, 256))
            onednn_decoding = t_plain > MARGIN * t_fast
        h = torch.randn(2500, 256)
        drop = faster(lambda: fast_dropout(h, 0.1, True), lambda: F.dropout(h, 0.1, True))
    decoding, training = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        with torch.no_grad():  # each timed call a batch's walk through shapes not met before (see the top)
            t_explicit, t_sdpa = _best_times([_over_walk(_explicit), _over_walk(_sdpa)], 5,
                                             fresh=lambda: decoding_walk(dtype))
            decoding[dtype] = t_sdpa > MARGIN * t_explicit
        with torch.enable_grad():  # forward and backward over sentence-length sequences (the caller may be under no_grad)
            q, k, v = (torch.randn(32, 4, 30, 64, dtype=dtype, requires_grad=True) for _ in range(3))
            training[dtype] = faster(lambda: ((q @ k.transpose(-2, -1) / 8.0).softmax(-1) @ v).sum().backward(),
                                     lambda: F.scaled_dot_product_attention(q, k, v).sum().backward(), 5)
    return Choices(onednn_linear_training=bool(onednn_training), onednn_linear_decoding=bool(onednn_decoding),
                   fast_dropout=bool(drop),
                   explicit_training_f32=training[torch.float32], explicit_training_bf16=training[torch.bfloat16],
                   explicit_decoding_f32=decoding[torch.float32], explicit_decoding_bf16=decoding[torch.bfloat16],
                   preallocated_cache=True)


def _explicit(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    return (q @ k.transpose(-2, -1) / 8.0).masked_fill(~mask, float("-inf")).softmax(-1) @ v


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _over_walk(kernel: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]) -> Callable[[list], None]:
    """``kernel`` called on every (q, k, v, mask) of a :func:`decoding_walk`."""

    def run(walk: list[tuple[Tensor, Tensor, Tensor, Tensor]]) -> None:
        for q, k, v, mask in walk:
            kernel(q, k, v, mask)

    return run


_MEMO: dict[tuple[str, str], Choices] = {}


def choices() -> Choices:
    """This machine's choices: from ``AIAYN_ACCEL``, the cache, or a fresh measurement (then cached)."""
    mode = os.environ.get("AIAYN_ACCEL", "auto").lower()
    if mode in ("0", "off", "none"):
        return Choices.none()
    if mode in ("1", "on", "all"):
        return Choices.all()
    key, path = cpu_key(), _cache_path()
    if (key, str(path)) not in _MEMO:
        _MEMO[key, str(path)] = _cached_or_measured(key, path)
    return _MEMO[key, str(path)]


def _cached_or_measured(key: str, path: Path) -> Choices:
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key) if isinstance(cached, dict) else None
    if isinstance(entry, dict) and set(entry) == {f.name for f in fields(Choices)}:
        return Choices(**entry)  # (an entry written by another version of aiayn is measured again)
    found = measure()
    try:
        from ..atomic import write_json_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {**(cached if isinstance(cached, dict) else {}), key: asdict(found)})
    except OSError:
        pass  # a read-only home: measure again next time
    return found
